//! `apopd.index`: what the last scan of a maildir found, so the next login need not redo it.
//!
//! It lists every message (subdirectory, file name, file length, POP3 size, UIDL, and whether
//! the file goes out verbatim: an upper-case subdirectory tag) in session order, with the
//! modification times of `cur/` and `new/` at scan time and the `uidl_format`
//! the UIDLs were given under. It is also apopd's memory of the UIDL each message was first
//! given: a rescan keeps it (by base name) as long as `uidl_format` is unchanged, so a UIDL
//! never changes when, say, Dovecot's imap later numbers the message in `dovecot-uidlist`.
//! An index of version 1 (apopd before UIDL schemes) gave every message its base name; under
//! `uidl_format = "auto"` those UIDLs are kept too. Any delivery, deletion or
//! flag change renames a file and so changes a directory's mtime: while both mtimes still
//! match, and the index was written at least [`SETTLE`] after them (so a change within the
//! same timestamp tick cannot hide), the index is the mailbox and no directory is read. When
//! they differ, the directories are listed again and the index still spares the work that
//! matters: a message's POP3 size is taken from it as long as the file has the same length
//! (maildir files are never rewritten in place). A malformed index is ignored and rebuilt;
//! it is replaced atomically, under the mailbox lock.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::safe_fs::Maildir;
use super::uidl::{base_name, is_valid, uidl_of};

/// The index's file name inside the maildir.
pub const INDEX_FILE: &str = "apopd.index";
const HEADER: &[u8] = b"apopd-index 2\n";
const HEADER_V1: &[u8] = b"apopd-index 1\n";
/// How long after the directories' last change an index must have been written to be trusted
/// without listing them (covers file systems with timestamps as coarse as one second).
pub const SETTLE: Duration = Duration::from_secs(2);
/// A bigger index is not read (100,000 messages with long names take about 10 MB).
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// Which maildir subdirectory a message is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sub {
    /// `cur/`
    Cur,
    /// `new/`
    New,
}

impl Sub {
    /// Both, in the order a scan lists them.
    pub const BOTH: [Sub; 2] = [Sub::Cur, Sub::New];

    /// The directory name.
    pub fn dir(self) -> &'static str {
        match self {
            Sub::Cur => "cur",
            Sub::New => "new",
        }
    }

    /// The entry's tag: upper case when the file is known to go out verbatim.
    fn tag(self, verbatim: bool) -> u8 {
        let tag = match self {
            Sub::Cur => b'c',
            Sub::New => b'n',
        };
        if verbatim { tag.to_ascii_uppercase() } else { tag }
    }
}

/// One message as the index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the file is.
    pub sub: Sub,
    /// Its file name.
    pub name: Vec<u8>,
    /// Its length in bytes.
    pub len: u64,
    /// Its POP3 size.
    pub size: u64,
    /// Its UIDL.
    pub uidl: Box<str>,
    /// The file is known to need no rewriting on the wire (CRLF lines, none starting with
    /// `.`): RETR may send it as it is. False when unknown.
    pub verbatim: bool,
}

/// The modification times of `cur/` and `new/`, in nanoseconds since the epoch.
pub type DirTimes = [u64; 2];

/// Read the mtimes of `cur/` and `new/`.
pub fn dir_times(maildir: &Maildir) -> io::Result<DirTimes> {
    Ok([maildir.mtime(Sub::Cur)?, maildir.mtime(Sub::New)?])
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A loaded index.
#[derive(Debug, Default)]
pub struct Index {
    /// True when the maildir had a readable index (apopd has scanned it before).
    pub existed: bool,
    times: DirTimes,
    written: u64,
    /// The `uidl_format` the UIDLs were given under; `None` for a version 1 index.
    scheme: Option<String>,
    entries: Vec<Entry>,
}

/// What the last scan recorded per base name, for reuse after a change.
#[derive(Debug, Default)]
pub struct Previous {
    by_base: HashMap<Vec<u8>, (u64, u64, Box<str>, bool)>,
    keep_uidls: bool,
}

impl Previous {
    /// The POP3 size recorded for `base`, if the file still has length `len`.
    pub fn size_of(&self, base: &[u8], len: u64) -> Option<u64> {
        self.by_base.get(base).filter(|(l, _, _, _)| *l == len).map(|(_, size, _, _)| *size)
    }

    /// True when `base` was recorded as verbatim (see [`Entry::verbatim`]) with length `len`
    /// (for a file of unknown length whose name gives its size: pass that size, which a
    /// verbatim file's length equals).
    pub fn is_verbatim(&self, base: &[u8], len: u64) -> bool {
        self.by_base.get(base).is_some_and(|&(l, _, _, verbatim)| l == len && verbatim)
    }

    /// The UIDL `base` was given before, when it still holds under the current scheme.
    pub fn uidl_of(&self, base: &[u8]) -> Option<&str> {
        self.by_base.get(base).filter(|_| self.keep_uidls).map(|(_, _, uidl, _)| &**uidl)
    }
}

impl Index {
    /// Read the index of `maildir`; missing, malformed or not written by apopd means empty.
    pub fn load(maildir: &Maildir) -> Self {
        let Some(bytes) = maildir.read_own(INDEX_FILE, MAX_INDEX_BYTES) else { return Index::default() };
        parse(&bytes).unwrap_or_else(|| {
            tracing::warn!(dir = %maildir.path().display(), "ignoring a malformed {INDEX_FILE}; rebuilding it");
            Index::default()
        })
    }

    /// True when the directories are exactly as they were at the last scan, and the UIDLs
    /// were given under `scheme` (the config's `uidl_format`).
    pub fn is_current(&self, now: DirTimes, scheme: &str) -> bool {
        let settled = self.times.iter().all(|&t| t.saturating_add(SETTLE.as_nanos() as u64) <= self.written);
        self.written != 0 && settled && self.times == now && self.scheme.as_deref() == Some(scheme)
    }

    /// The messages, when [`Index::is_current`]; the index is left empty.
    pub fn take_if_current(&mut self, now: DirTimes, scheme: &str) -> Option<Vec<Entry>> {
        self.is_current(now, scheme).then(|| std::mem::take(&mut self.entries))
    }

    /// What was recorded, by base name (built only when the directories must be listed).
    /// UIDLs are kept under the scheme they were given with; a version 1 index's base-name
    /// UIDLs are kept under `auto` (the UIDLs apopd gave before stay what clients know).
    pub fn previous(&self, scheme: &str) -> Previous {
        let keep_uidls = match &self.scheme {
            Some(s) => s == scheme,
            None => scheme == "auto",
        };
        let by_base = self
            .entries
            .iter()
            .map(|e| (base_name(&e.name).to_vec(), (e.len, e.size, e.uidl.clone(), e.verbatim)))
            .collect();
        Previous { by_base, keep_uidls }
    }
}

fn parse(bytes: &[u8]) -> Option<Index> {
    let (body, v2) = match bytes.strip_prefix(HEADER) {
        Some(body) => (body, true),
        None => (bytes.strip_prefix(HEADER_V1)?, false),
    };
    let mut lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let mut stamps = lines.next()?.strip_prefix(b"dirs ")?.split(|&b| b == b' ');
    let mut stamp = || -> Option<u64> { std::str::from_utf8(stamps.next()?).ok()?.parse().ok() };
    let (times, written) = ([stamp()?, stamp()?], stamp()?);
    let scheme = match v2 {
        true => Some(String::from_utf8(lines.next()?.strip_prefix(b"uidl ")?.to_vec()).ok()?),
        false => None,
    };
    let mut entries = Vec::new();
    for line in lines {
        let mut fields = line.splitn(if v2 { 5 } else { 4 }, |&b| b == b' ');
        let number = |field: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(field?).ok()?.parse().ok() };
        let len = number(fields.next())?;
        let size = number(fields.next())?;
        // Upper case: known verbatim (version 2 only; an older apopd rebuilds such an index).
        let (sub, verbatim) = match fields.next()? {
            b"c" => (Sub::Cur, false),
            b"n" => (Sub::New, false),
            b"C" if v2 => (Sub::Cur, true),
            b"N" if v2 => (Sub::New, true),
            _ => return None,
        };
        let uidl = match v2 {
            true => Some(fields.next().filter(|u| is_valid(u))?),
            false => None,
        };
        let name = fields.next().filter(|n| !n.is_empty() && !n.contains(&b'/'))?.to_vec();
        let uidl = match uidl {
            Some(uidl) => String::from_utf8_lossy(uidl).into(),
            None => uidl_of(&name).into(),
        };
        entries.push(Entry { sub, name, len, size, uidl, verbatim });
    }
    Some(Index { existed: true, times, written, scheme, entries })
}

/// Replace the index of `maildir` with `entries`, scanned when the directories had `times`,
/// their UIDLs given under `scheme`. Failing to write is logged, not returned: the next scan
/// lists the directories again (and gives messages without a remembered UIDL one by the rules).
pub fn save(maildir: &Maildir, times: DirTimes, scheme: &str, entries: &[Entry]) {
    if let Err(e) = write(maildir, times, nanos(SystemTime::now()), scheme, entries) {
        tracing::warn!(dir = %maildir.path().display(), error = %e, "cannot write {INDEX_FILE}");
    }
}

/// Mark the files `learned` (name → length) verbatim in the index of `maildir`, as RETR found
/// them: the next scan can then send them with `sendfile` even when it does not read them
/// (`,W=` names). Everything else stays as it was, the time the index was written included,
/// so whether it is trusted does not change. Call it under the mailbox lock.
pub fn remember_verbatim(maildir: &Maildir, learned: &HashMap<&[u8], u64>) {
    if learned.is_empty() {
        return;
    }
    let Some(mut index) = maildir.read_own(INDEX_FILE, MAX_INDEX_BYTES).and_then(|bytes| parse(&bytes)) else {
        return;
    };
    let Some(scheme) = index.scheme.take() else { return };
    let mut changed = false;
    for entry in index.entries.iter_mut().filter(|e| !e.verbatim) {
        if let Some(&len) = learned.get(&entry.name[..]) {
            (entry.len, entry.verbatim, changed) = (len, true, true);
        }
    }
    if changed && let Err(e) = write(maildir, index.times, index.written, &scheme, &index.entries) {
        tracing::warn!(dir = %maildir.path().display(), error = %e, "cannot write {INDEX_FILE}");
    }
}

fn write(maildir: &Maildir, times: DirTimes, written: u64, scheme: &str, entries: &[Entry]) -> io::Result<()> {
    let mut out = Vec::with_capacity(HEADER.len() + 64 + entries.len() * 80);
    out.extend_from_slice(HEADER);
    writeln!(out, "dirs {} {} {written}", times[0], times[1])?;
    if scheme.contains('\n') {
        return Ok(());
    }
    writeln!(out, "uidl {scheme}")?;
    for entry in entries {
        if entry.name.contains(&b'\n') {
            // Cannot be stored on one line: leave the index out rather than make it wrong.
            return Ok(());
        }
        write!(out, "{} {} ", entry.len, entry.size)?;
        out.push(entry.sub.tag(entry.verbatim));
        out.push(b' ');
        out.extend_from_slice(entry.uidl.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&entry.name);
        out.push(b'\n');
    }
    // No fsync: the index is a cache. After a crash a torn or empty file is malformed and
    // rebuilt, so durability would only add a disk flush to logins.
    maildir.replace_own(INDEX_FILE, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::safe_fs::{Location, Policy};

    fn maildir(dir: &tempfile::TempDir) -> Maildir {
        Maildir::open(&Location::at(&dir.path().join("box"), "x"), &Policy::default(), true).unwrap()
    }

    fn entry(sub: Sub, name: &str, len: u64, size: u64) -> Entry {
        let uidl = format!("u-{name}").replace(':', "").into();
        Entry { sub, name: name.as_bytes().to_vec(), len, size, uidl, verbatim: false }
    }

    #[test]
    fn round_trip_and_trust_rules() {
        let dir = tempfile::tempdir().unwrap();
        let dir = maildir(&dir);
        let entries = vec![entry(Sub::Cur, "1.a.host:2,S", 10, 12), entry(Sub::New, "2.b.host", 5, 5)];
        let old = nanos(SystemTime::now()) - 10_000_000_000;
        save(&dir, [old, old], "auto", &entries);
        let mut index = Index::load(&dir);
        assert!(index.existed);
        assert!(!index.is_current([old, old + 1], "auto"), "a directory changed");
        assert!(!index.is_current([old, old], "%f"), "another uidl_format");
        let previous = index.previous("auto");
        assert_eq!(previous.size_of(b"1.a.host", 10), Some(12));
        assert_eq!(previous.size_of(b"1.a.host", 11), None, "another length is measured again");
        assert_eq!(previous.uidl_of(b"1.a.host"), Some("u-1.a.host2,S"));
        assert_eq!(index.previous("basename").uidl_of(b"1.a.host"), None, "given under another scheme");
        assert_eq!(index.take_if_current([old, old], "auto"), Some(entries.clone()));

        // Directories changed less than SETTLE before the index was written: not trusted.
        let recent = nanos(SystemTime::now());
        save(&dir, [recent, recent], "auto", &entries);
        assert!(!Index::load(&dir).is_current([recent, recent], "auto"));
    }

    #[test]
    fn the_verbatim_bit_round_trips_and_old_entries_read_as_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        let mut clean = entry(Sub::New, "1.a.host", 10, 10);
        clean.verbatim = true;
        let entries = vec![clean, entry(Sub::Cur, "2.b.host:2,", 5, 6)];
        save(&dir, [1, 2], "auto", &entries);
        let text = std::fs::read(tmp.path().join("box").join(INDEX_FILE)).unwrap();
        assert!(text.windows(4).any(|w| w == b" N u"), "{}", String::from_utf8_lossy(&text));
        let index = Index::load(&dir);
        assert_eq!(index.entries, entries);
        let previous = index.previous("auto");
        assert!(previous.is_verbatim(b"1.a.host", 10));
        assert!(!previous.is_verbatim(b"1.a.host", 11), "another length is checked again");
        assert!(!previous.is_verbatim(b"2.b.host", 5));
        // An index written before the bit existed: every entry is "not known verbatim".
        std::fs::write(tmp.path().join("box").join(INDEX_FILE), b"apopd-index 2\ndirs 1 2 9\nuidl auto\n4 4 c u 1.a\n")
            .unwrap();
        assert!(!Index::load(&dir).previous("auto").is_verbatim(b"1.a", 4));
    }

    #[test]
    fn verbatim_files_learnt_by_retr_are_remembered_without_changing_trust() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        let old = nanos(SystemTime::now()) - 10_000_000_000;
        let entries = vec![entry(Sub::New, "1.a.host,S=7,W=7", 0, 7), entry(Sub::New, "2.b.host", 5, 6)];
        save(&dir, [old, old], "auto", &entries);
        let before = Index::load(&dir).written;
        remember_verbatim(&dir, &HashMap::from([(&b"1.a.host,S=7,W=7"[..], 7)]));
        let index = Index::load(&dir);
        assert_eq!(index.written, before, "the trust stamp is kept");
        assert!(index.is_current([old, old], "auto"));
        assert!(index.entries[0].verbatim && index.entries[0].len == 7);
        assert!(!index.entries[1].verbatim);
        assert!(index.previous("auto").is_verbatim(b"1.a.host,S=7,W=7", 7));
    }

    #[test]
    fn a_version_1_index_keeps_base_name_uidls_under_auto() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        std::fs::write(tmp.path().join("box").join(INDEX_FILE), b"apopd-index 1\ndirs 1 2 9000000000\n5 6 c 1.a:2,S\n")
            .unwrap();
        let index = Index::load(&dir);
        assert!(!index.is_current([1, 2], "auto"), "rewritten as version 2 first");
        assert_eq!(index.previous("auto").uidl_of(b"1.a"), Some("1.a"));
        assert_eq!(index.previous("auto").size_of(b"1.a", 5), Some(6));
        assert_eq!(index.previous("%08Xu%08Xv").uidl_of(b"1.a"), None);
    }

    #[test]
    fn malformed_index_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        for junk in [
            &b"garbage"[..],
            b"apopd-index 1\ndirs 1 2\n",
            b"apopd-index 1\ndirs 1 2 3\n10 x c 1.a\n",
            b"apopd-index 1\ndirs 1 2 9000000000\n1 1 x 1.a\n",
            b"apopd-index 1\ndirs 1 2 9000000000\n1 1 c ../escape\n",
            b"apopd-index 3\ndirs 1 2 9000000000\n1 1 c 1.a\n",
            b"apopd-index 2\ndirs 1 2 9000000000\n1 1 c 1.a\n",
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n1 1 c 1.a\n",
        ] {
            std::fs::write(tmp.path().join("box").join(INDEX_FILE), junk).unwrap();
            let index = Index::load(&dir);
            assert!(!index.is_current([1, 2], "auto"), "{junk:?}");
            assert!(!index.existed, "{junk:?}");
            assert_eq!(index.previous("auto").size_of(b"1.a", 1), None);
        }
    }
}
