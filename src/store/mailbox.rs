//! A maildir opened for one POP3 session: locked, scanned once, numbered 1..n.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::protocol::response::WireSize;

use super::index::{self, Entry, Index, Sizes, Sub};
use super::lock::{LockError, MailboxLock};
use super::uidl::{base_name, uidl_of};

/// All subdirectories a maildir has.
const SUBDIRS: [&str; 3] = ["cur", "new", "tmp"];

/// One message as the session sees it (kept small: a session holds one per message).
#[derive(Debug, Clone)]
pub struct Message {
    /// The subdirectory the file was in at scan time.
    pub sub: Sub,
    /// Its file name at scan time.
    pub name: Box<[u8]>,
    /// Octets as transmitted: CRLF line endings, before byte-stuffing.
    pub size: u64,
    /// The RFC 1939 unique-id.
    pub uidl: Box<str>,
}

impl Message {
    fn from_entry(entry: Entry) -> Self {
        let uidl = uidl_of(&entry.name).into_boxed_str();
        Message { sub: entry.sub, name: entry.name.into_boxed_slice(), size: entry.size, uidl }
    }

    /// Where the file was at scan time, relative to the maildir (`cur/…` or `new/…`).
    pub fn relative_path(&self) -> PathBuf {
        Path::new(self.sub.dir()).join(OsStr::from_bytes(&self.name))
    }
}

/// Why a mailbox could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Someone else holds the lock.
    #[error("mailbox in use")]
    InUse,
    /// The disk said no.
    #[error("{0}")]
    Io(String),
}

impl From<LockError> for OpenError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::InUse => OpenError::InUse,
            e @ LockError::Io { .. } => OpenError::Io(e.to_string()),
        }
    }
}

/// What UPDATE did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Messages removed (or already gone).
    pub removed: usize,
    /// Messages that could not be removed, with the cause.
    pub failed: Vec<String>,
}

/// A locked, scanned maildir.
#[derive(Debug)]
pub struct Mailbox {
    dir: PathBuf,
    messages: Vec<Message>,
    _lock: MailboxLock,
}

impl Mailbox {
    /// Lock and scan the maildir at `dir`, creating `cur/`, `new/` and `tmp/` where missing.
    ///
    /// Blocking: call it from a blocking task.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        for sub in SUBDIRS {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| OpenError::Io(format!("cannot create {}: {e}", path.display())))?;
        }
        let lock = MailboxLock::try_acquire(dir)?;
        let messages = scan(dir).map_err(OpenError::Io)?;
        Ok(Mailbox { dir: dir.to_owned(), messages, _lock: lock })
    }

    /// The messages, numbered from 1 in this order.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The maildir's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove the messages at the given indexes (0-based). Each removal is one atomic unlink;
    /// a message another program renamed (a flag change) is found again by its base name.
    ///
    /// Blocking: call it from a blocking task.
    pub fn remove(&self, indexes: &[usize]) -> Removal {
        let mut result = Removal::default();
        if indexes.is_empty() {
            return result; // most QUITs delete nothing: no directory syncs for them
        }
        for &i in indexes {
            let Some(message) = self.messages.get(i) else { continue };
            match remove_one(&self.dir, message) {
                Ok(()) => result.removed += 1,
                Err(e) => result.failed.push(format!("{}: {e}", message.relative_path().display())),
            }
        }
        for sub in Sub::BOTH {
            // Make the unlinks durable; a failure here loses nothing, so it is only logged.
            if let Err(e) = File::open(self.dir.join(sub.dir())).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot sync maildir directory");
            }
        }
        result
    }
}

fn remove_one(dir: &Path, message: &Message) -> io::Result<()> {
    match fs::remove_file(dir.join(message.relative_path())) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match locate(dir, message)? {
            Some(path) => fs::remove_file(path),
            None => Ok(()), // already gone: the goal is reached
        },
        other => other,
    }
}

/// Open a message for reading, following it if another program renamed it since the scan.
///
/// Blocking: call it from a blocking task.
pub fn open_message(dir: &Path, message: &Message) -> io::Result<File> {
    let file = match File::open(dir.join(message.relative_path())) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match locate(dir, message)? {
            Some(path) => File::open(path)?,
            None => return Err(e),
        },
        other => other?,
    };
    // A directory opens fine and fails only at the first read, after +OK went out.
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Find the current path of `message` by its base name in `cur/` and `new/`.
fn locate(dir: &Path, message: &Message) -> io::Result<Option<PathBuf>> {
    let wanted = base_name(&message.name);
    for sub in Sub::BOTH {
        for entry in fs::read_dir(dir.join(sub.dir()))? {
            let entry = entry?;
            if base_name(entry.file_name().as_bytes()) == wanted {
                return Ok(Some(entry.path()));
            }
        }
    }
    Ok(None)
}

/// The mailbox's messages in session order: from the index when the directories have not
/// changed since it was written, else by listing `cur/` and `new/` (every regular, non-hidden
/// file is a message) and refreshing the index.
fn scan(dir: &Path) -> Result<Vec<Message>, String> {
    // Taken before listing: a change during the listing makes the next login list again.
    let times = index::dir_times(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut index = Index::load(dir);
    if let Some(entries) = index.take_if_current(times) {
        return Ok(entries.into_iter().map(Message::from_entry).collect());
    }
    let sizes = index.sizes();

    let mut found: Vec<(u64, OsString, Sub)> = Vec::new();
    for sub in Sub::BOTH {
        let path = dir.join(sub.dir());
        let entries = fs::read_dir(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name = entry.file_name();
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            found.push((delivery_time(name.as_bytes()), name, sub));
        }
    }
    // Oldest first: maildir names start with the delivery time in seconds.
    found.sort();

    let mut buf = vec![0u8; 64 * 1024]; // one read buffer for every file measured
    let mut entries = Vec::with_capacity(found.len());
    for (_, name, sub) in found {
        let path = dir.join(sub.dir()).join(&name);
        let name = name.into_vec();
        let (len, size) = match size_from_name(&name) {
            // The length is not needed when the name gives the size.
            Some(size) => (0, size),
            None => match indexed_or_measured(&path, base_name(&name), &sizes, &mut buf) {
                Ok(Some(found)) => found,
                Ok(None) => continue, // not a regular file
                Err(e) => {
                    // One unreadable file must not hide the rest of the mailbox.
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable message");
                    continue;
                }
            },
        };
        entries.push(Entry { sub, name, len, size });
    }
    index::save(dir, times, &entries);
    Ok(entries.into_iter().map(Message::from_entry).collect())
}

/// `(length, POP3 size)` of the file at `path`: the size from the index when the length still
/// matches, else counted by reading the file once. `None` when it is not a regular file.
fn indexed_or_measured(path: &Path, base: &[u8], sizes: &Sizes, buf: &mut [u8]) -> io::Result<Option<(u64, u64)>> {
    let metadata = fs::metadata(path)?;
    if !metadata.is_file() {
        return Ok(None);
    }
    if let Some(size) = sizes.size_of(base, metadata.len()) {
        return Ok(Some((metadata.len(), size)));
    }
    let mut file = File::open(path)?;
    let mut size = WireSize::default();
    let mut len = 0u64;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        size.push(&buf[..n]);
    }
    Ok(Some((len, size.finish())))
}

/// The leading decimal number of a maildir name (its delivery time), for ordering.
fn delivery_time(name: &[u8]) -> u64 {
    name.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
}

/// The CRLF size a Dovecot-style `,W=<size>` field in the base name announces.
fn size_from_name(name: &[u8]) -> Option<u64> {
    let base = base_name(name);
    let at = memchr::memmem::find(base, b",W=")?;
    let digits = &base[at + 3..];
    let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maildir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for sub in SUBDIRS {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        for (name, body) in files {
            fs::write(dir.path().join(name), body).unwrap();
        }
        dir
    }

    #[test]
    fn scans_new_and_cur_oldest_first_with_crlf_sizes() {
        let dir = maildir_with(&[
            ("new/300.a.host", b"Subject: b\n\nbody\n"),
            ("cur/100.b.host:2,S", b"Subject: a\r\n\r\nbody\r\n"),
            ("cur/.hidden", b"x"),
            ("tmp/200.c.host", b"in delivery"),
        ]);
        let mailbox = Mailbox::open(dir.path()).unwrap();
        let m = mailbox.messages();
        assert_eq!(m.len(), 2);
        assert_eq!(&*m[0].uidl, "100.b.host");
        assert_eq!(m[0].size, 20);
        assert_eq!(&*m[1].uidl, "300.a.host");
        assert_eq!(m[1].size, 20, "bare LFs count as CRLF");
    }

    #[test]
    fn size_field_in_name_is_used() {
        assert_eq!(size_from_name(b"1.M2P3.host,S=100,W=104:2,S"), Some(104));
        assert_eq!(size_from_name(b"1.M2P3.host,S=100:2,W=5"), None);
        let dir = maildir_with(&[("new/1.x,S=3,W=7", b"abc")]);
        assert_eq!(Mailbox::open(dir.path()).unwrap().messages()[0].size, 7);
    }

    /// Set both served directories' mtimes to `when`, as if nothing had changed since.
    fn settle(dir: &Path, when: std::time::SystemTime) {
        for sub in Sub::BOTH {
            File::open(dir.join(sub.dir())).unwrap().set_modified(when).unwrap();
        }
    }

    #[test]
    fn measured_sizes_are_indexed_and_revalidated() {
        let dir = maildir_with(&[("new/1.a.host", b"a\nb\n"), ("cur/2.b.host:2,S", b"c\n")]);
        let first: Vec<u64> = Mailbox::open(dir.path()).unwrap().messages().iter().map(|m| m.size).collect();
        assert_eq!(first, vec![6, 3], "new/1.a comes before cur/2.b: delivery time 1 < 2");
        // Directories changed just now: the next login lists them again, and a size is
        // taken from the index only while the file keeps its length.
        fs::write(dir.path().join("new/1.a.host"), b"a\nbc\n").unwrap();
        let again: Vec<u64> = Mailbox::open(dir.path()).unwrap().messages().iter().map(|m| m.size).collect();
        assert_eq!(again, vec![7, 3], "length changed: measured again");
    }

    #[test]
    fn a_settled_maildir_is_served_from_the_index_until_it_changes() {
        let dir = maildir_with(&[("new/1.a.host", b"a\n"), ("cur/2.b.host:2,S", b"bb\n")]);
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        settle(dir.path(), past);
        assert_eq!(Mailbox::open(dir.path()).unwrap().messages().len(), 2);
        // Proof that no directory is read now: a file rewritten in place (which maildir
        // writers never do) keeps its indexed size, and a file added behind our back with the
        // mtimes restored is not seen.
        fs::write(dir.path().join("new/1.a.host"), b"longer\n").unwrap();
        fs::write(dir.path().join("new/3.c.host"), b"c\n").unwrap();
        settle(dir.path(), past);
        let mailbox = Mailbox::open(dir.path()).unwrap();
        let seen: Vec<(String, u64)> = mailbox.messages().iter().map(|m| (m.uidl.to_string(), m.size)).collect();
        assert_eq!(seen, vec![("1.a.host".to_owned(), 3), ("2.b.host".to_owned(), 4)]);
        drop(mailbox);
        // Any real change (here a delivery) moves new/'s mtime: the directories are read again.
        fs::rename(dir.path().join("new/3.c.host"), dir.path().join("new/4.d.host")).unwrap();
        let uidls: Vec<String> =
            Mailbox::open(dir.path()).unwrap().messages().iter().map(|m| m.uidl.to_string()).collect();
        assert_eq!(uidls, vec!["1.a.host", "2.b.host", "4.d.host"]);
    }

    #[test]
    fn missing_subdirectories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::open(dir.path()).unwrap();
        assert!(mailbox.messages().is_empty());
        assert!(dir.path().join("tmp").is_dir());
    }

    #[test]
    fn remove_follows_renamed_files_and_reports_counts() {
        let dir = maildir_with(&[("new/1.a", b"a\n"), ("new/2.b", b"b\n"), ("cur/3.c:2,", b"c\n")]);
        let mailbox = Mailbox::open(dir.path()).unwrap();
        // Another program marks message 1 seen and deletes message 3 itself.
        fs::rename(dir.path().join("new/1.a"), dir.path().join("cur/1.a:2,S")).unwrap();
        fs::remove_file(dir.path().join("cur/3.c:2,")).unwrap();
        let removal = mailbox.remove(&[0, 2]);
        assert_eq!(removal, Removal { removed: 2, failed: vec![] });
        assert!(!dir.path().join("cur/1.a:2,S").exists());
        assert!(dir.path().join("new/2.b").exists());
    }

    #[test]
    fn open_message_follows_a_rename() {
        let dir = maildir_with(&[("new/1.a", b"hello\n")]);
        let mailbox = Mailbox::open(dir.path()).unwrap();
        fs::rename(dir.path().join("new/1.a"), dir.path().join("cur/1.a:2,S")).unwrap();
        let mut text = String::new();
        open_message(mailbox.dir(), &mailbox.messages()[0]).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello\n");
    }
}
