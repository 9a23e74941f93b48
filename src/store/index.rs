//! `apopd.index`: what the last scan of a maildir found, so the next login need not redo it.
//!
//! It lists every message (subdirectory, file name, file length, POP3 size) in session order,
//! with the modification times of `cur/` and `new/` at scan time. Any delivery, deletion or
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
use super::uidl::base_name;

/// The index's file name inside the maildir.
pub const INDEX_FILE: &str = "apopd.index";
const HEADER: &[u8] = b"apopd-index 1\n";
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

    fn tag(self) -> u8 {
        match self {
            Sub::Cur => b'c',
            Sub::New => b'n',
        }
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
    times: DirTimes,
    written: u64,
    entries: Vec<Entry>,
}

/// Recorded `(length, POP3 size)` by base name, for reusing sizes after a change.
#[derive(Debug, Default)]
pub struct Sizes(HashMap<Vec<u8>, (u64, u64)>);

impl Sizes {
    /// The POP3 size recorded for `base`, if the file still has length `len`.
    pub fn size_of(&self, base: &[u8], len: u64) -> Option<u64> {
        self.0.get(base).filter(|(l, _)| *l == len).map(|(_, size)| *size)
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

    /// True when the directories are exactly as they were at the last scan.
    pub fn is_current(&self, now: DirTimes) -> bool {
        let settled = self.times.iter().all(|&t| t.saturating_add(SETTLE.as_nanos() as u64) <= self.written);
        self.written != 0 && settled && self.times == now
    }

    /// The messages, when [`Index::is_current`]; the index is left empty.
    pub fn take_if_current(&mut self, now: DirTimes) -> Option<Vec<Entry>> {
        self.is_current(now).then(|| std::mem::take(&mut self.entries))
    }

    /// The recorded sizes by base name (built only when the directories must be listed).
    pub fn sizes(&self) -> Sizes {
        Sizes(self.entries.iter().map(|e| (base_name(&e.name).to_vec(), (e.len, e.size))).collect())
    }
}

fn parse(bytes: &[u8]) -> Option<Index> {
    let body = bytes.strip_prefix(HEADER)?;
    let mut lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let mut stamps = lines.next()?.strip_prefix(b"dirs ")?.split(|&b| b == b' ');
    let mut stamp = || -> Option<u64> { std::str::from_utf8(stamps.next()?).ok()?.parse().ok() };
    let (times, written) = ([stamp()?, stamp()?], stamp()?);
    let mut entries = Vec::new();
    for line in lines {
        let mut fields = line.splitn(4, |&b| b == b' ');
        let number = |field: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(field?).ok()?.parse().ok() };
        let len = number(fields.next())?;
        let size = number(fields.next())?;
        let sub = match fields.next()? {
            b"c" => Sub::Cur,
            b"n" => Sub::New,
            _ => return None,
        };
        let name = fields.next().filter(|n| !n.is_empty() && !n.contains(&b'/'))?.to_vec();
        entries.push(Entry { sub, name, len, size });
    }
    Some(Index { times, written, entries })
}

/// Replace the index of `maildir` with `entries`, scanned when the directories had `times`.
/// Failing to write only costs speed, so it is logged, not returned.
pub fn save(maildir: &Maildir, times: DirTimes, entries: &[Entry]) {
    if let Err(e) = write(maildir, times, entries) {
        tracing::warn!(dir = %maildir.path().display(), error = %e, "cannot write {INDEX_FILE}");
    }
}

fn write(maildir: &Maildir, times: DirTimes, entries: &[Entry]) -> io::Result<()> {
    let mut out = Vec::with_capacity(HEADER.len() + 64 + entries.len() * 64);
    out.extend_from_slice(HEADER);
    writeln!(out, "dirs {} {} {}", times[0], times[1], nanos(SystemTime::now()))?;
    for entry in entries {
        if entry.name.contains(&b'\n') {
            // Cannot be stored on one line: leave the index out rather than make it wrong.
            return Ok(());
        }
        write!(out, "{} {} ", entry.len, entry.size)?;
        out.push(entry.sub.tag());
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
        Entry { sub, name: name.as_bytes().to_vec(), len, size }
    }

    #[test]
    fn round_trip_and_trust_rules() {
        let dir = tempfile::tempdir().unwrap();
        let dir = maildir(&dir);
        let entries = vec![entry(Sub::Cur, "1.a.host:2,S", 10, 12), entry(Sub::New, "2.b.host", 5, 5)];
        let old = nanos(SystemTime::now()) - 10_000_000_000;
        save(&dir, [old, old], &entries);
        let mut index = Index::load(&dir);
        assert!(!index.is_current([old, old + 1]), "a directory changed");
        let sizes = index.sizes();
        assert_eq!(sizes.size_of(b"1.a.host", 10), Some(12));
        assert_eq!(sizes.size_of(b"1.a.host", 11), None, "another length is measured again");
        assert_eq!(index.take_if_current([old, old]), Some(entries.clone()));

        // Directories changed less than SETTLE before the index was written: not trusted.
        let recent = nanos(SystemTime::now());
        save(&dir, [recent, recent], &entries);
        assert!(!Index::load(&dir).is_current([recent, recent]));
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
            b"apopd-index 2\ndirs 1 2 9000000000\n1 1 c 1.a\n",
        ] {
            std::fs::write(tmp.path().join("box").join(INDEX_FILE), junk).unwrap();
            let index = Index::load(&dir);
            assert!(!index.is_current([1, 2]), "{junk:?}");
            assert_eq!(index.sizes().size_of(b"1.a", 1), None);
        }
    }
}
