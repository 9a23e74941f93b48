//! `apopd migrate check`: what a switch to apopd would do to each maildir's UIDLs, read-only.
//!
//! For every message it asks the same [`uidl::assign_all`] a login uses (with the index apopd
//! may already have written, and the configured scheme), so the report is what clients will
//! see. Nothing is created, renamed, locked or written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::index::{Index, Sub};
use super::mailbox;
use super::safe_fs::{Location, Maildir, OwnerRule, Policy};
use super::uidl::{self, Origin, Scheme};

/// The report for one maildir.
#[derive(Debug)]
pub struct Survey {
    /// The maildir.
    pub path: PathBuf,
    /// The scheme the report is for.
    pub scheme: Scheme,
    /// Messages per UIDL origin; `None` = the UIDL apopd already gave (its index).
    pub counts: BTreeMap<Option<Origin>, usize>,
    /// What the other servers' files hold, or why they cannot be used.
    pub notes: Vec<String>,
}

impl Survey {
    /// Messages in the maildir.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

impl fmt::Display for Survey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} messages (uidl_format = \"{}\")", self.path.display(), self.total(), self.scheme)?;
        for (origin, count) in &self.counts {
            let what = match origin {
                None => "keep the UIDL apopd already gave (apopd.index)".to_owned(),
                Some(o @ Origin::BaseName(_)) => format!("new UIDL, {o}"),
                Some(o) => format!("keep {o}"),
            };
            writeln!(f, "  {count:>7}  {what}")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// The maildirs `dir` stands for: itself when it has `cur/` or `new/`, else each of its
/// subdirectories that has (a mail root such as `/srv/mail`), sorted; never deeper, and never
/// a maildir's own sub-folders (`.Sent`, …), which POP3 does not serve.
pub fn maildirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let is_maildir = |d: &Path| d.join("cur").is_dir() || d.join("new").is_dir();
    if is_maildir(dir) {
        return Ok(vec![dir.to_owned()]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
        if !hidden && entry.file_type()?.is_dir() && is_maildir(&entry.path()) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Survey the maildir at `path` under `scheme`.
///
/// Blocking.
pub fn survey(path: &Path, scheme: &Scheme) -> Result<Survey, String> {
    let policy = Policy { owner: OwnerRule::Any, uidl: scheme.clone(), ..Policy::default() };
    let maildir = Maildir::open_read_only(&Location::at(path, ""), &policy).map_err(|e| e.to_string())?;
    let index = Index::load(&maildir);
    let previous = index.previous(&scheme.to_string());
    let found = mailbox::list(&maildir, policy.max_message_size, &previous)?;
    let names: Vec<(Sub, &[u8])> = found.iter().map(|(sub, name, ..)| (*sub, &name[..])).collect();
    let mut counts = BTreeMap::new();
    for (_, origin) in uidl::assign_all(&maildir, scheme, &previous, !index.existed, &names) {
        *counts.entry(origin).or_insert(0) += 1;
    }
    Ok(Survey { path: path.to_owned(), scheme: scheme.clone(), counts, notes: notes(&maildir, scheme) })
}

/// One line per other server's file the scheme reads.
fn notes(maildir: &Maildir, scheme: &Scheme) -> Vec<String> {
    let sources = uidl::load_sources(maildir, scheme);
    let mut notes = Vec::new();
    match &sources.dovecot {
        Some(Ok(list)) => notes.push(format!(
            "{}: {} messages, UIDVALIDITY {}, next UID {}",
            uidl::DOVECOT_UIDLIST,
            list.len(),
            list.uid_validity,
            list.next_uid
        )),
        Some(Err(e)) => notes.push(format!("{} not used: {e}", uidl::DOVECOT_UIDLIST)),
        None if scheme.reads_dovecot() => notes.push(format!("no {}", uidl::DOVECOT_UIDLIST)),
        None => {}
    }
    match &sources.courier {
        Some(Ok(_)) => notes.push(format!("{} read", uidl::COURIER_SIZELIST)),
        Some(Err(e)) => notes.push(format!("{} not used: {e}", uidl::COURIER_SIZELIST)),
        None if scheme.reads_courier() => notes.push(format!("no {}", uidl::COURIER_SIZELIST)),
        None => {}
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_mixed_maildir_is_reported_without_a_change() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("alice");
        for sub in ["cur", "new", "tmp", ".Sent/cur"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("cur/1.a.host:2,S"), "a\n").unwrap();
        fs::write(dir.join("cur/2.b.host:2,"), "b\n").unwrap();
        fs::write(dir.join("new/3.c.host"), "c\n").unwrap();
        fs::write(dir.join("new/4.d.host"), "d\n").unwrap();
        fs::write(dir.join(".Sent/cur/9.z.host:2,S"), "z\n").unwrap();
        fs::write(dir.join("dovecot-uidlist"), "3 V7 N3\n1 :1.a.host\n2 Pold-uidl :2.b.host\n").unwrap();
        fs::write(dir.join("courierpop3dsizelist"), "/3 9 5\n3.c.host 2 8:5\n").unwrap();
        let before = fs::read_dir(&dir).unwrap().count();
        assert_eq!(maildirs(root.path()).unwrap(), vec![dir.clone()]);
        let survey = survey(&dir, &Scheme::Auto).unwrap();
        assert_eq!(survey.total(), 4, "the .Sent folder is not served");
        let count = |o: Origin| survey.counts.get(&Some(o)).copied().unwrap_or(0);
        assert_eq!(count(Origin::DovecotFormat), 1);
        assert_eq!(count(Origin::DovecotSaved), 1);
        assert_eq!(count(Origin::Courier), 1);
        assert_eq!(count(Origin::BaseName(uidl::Why::NotListed)), 1);
        let text = survey.to_string();
        assert!(text.contains("4 messages") && text.contains("UIDVALIDITY 7"), "{text}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), before, "nothing created");
        assert!(dir.join("new/3.c.host").exists(), "nothing moved");
    }
}
