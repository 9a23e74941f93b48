//! A per-maildir cache of POP3 sizes for messages whose names carry no `,W=` field.
//!
//! Counting a message's CRLF size means reading it; doing that for every message at every
//! login makes big mailboxes slow to open. `apopd.sizes` remembers, per base name, the file
//! length it measured and the POP3 size it found. An entry is used only while the file still
//! has that length (maildir messages are never rewritten in place), a malformed file is
//! ignored as a whole and rebuilt, and the file is replaced atomically under the mailbox lock.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The cache's file name inside the maildir.
pub const CACHE_FILE: &str = "apopd.sizes";
const HEADER: &[u8] = b"apopd-sizes 1\n";

/// Measured sizes by base name: `(file length, POP3 size)`.
#[derive(Debug, Default)]
pub struct SizeCache {
    entries: HashMap<Vec<u8>, (u64, u64)>,
    changed: bool,
}

impl SizeCache {
    /// Read the cache of the maildir at `dir`; missing or malformed means empty.
    pub fn load(dir: &Path) -> Self {
        let Ok(bytes) = fs::read(dir.join(CACHE_FILE)) else { return SizeCache::default() };
        match parse(&bytes) {
            Some(entries) => SizeCache { entries, changed: false },
            None => {
                tracing::warn!(dir = %dir.display(), "ignoring a malformed {CACHE_FILE}; rebuilding it");
                SizeCache { entries: HashMap::new(), changed: true }
            }
        }
    }

    /// The cached POP3 size of `base`, if it was measured at this file length.
    pub fn get(&self, base: &[u8], len: u64) -> Option<u64> {
        self.entries.get(base).filter(|(cached_len, _)| *cached_len == len).map(|(_, size)| *size)
    }

    /// Remember a measurement.
    pub fn insert(&mut self, base: &[u8], len: u64, size: u64) {
        self.entries.insert(base.to_vec(), (len, size));
        self.changed = true;
    }

    /// Drop entries for messages that are gone, then write the cache if anything changed.
    /// Failing to write only costs speed, so it is logged, not returned.
    pub fn save(mut self, dir: &Path, live: &dyn Fn(&[u8]) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|base, _| live(base));
        if !self.changed && self.entries.len() == before {
            return;
        }
        if let Err(e) = write(dir, &self.entries) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write {CACHE_FILE}");
        }
    }
}

fn parse(bytes: &[u8]) -> Option<HashMap<Vec<u8>, (u64, u64)>> {
    let body = bytes.strip_prefix(HEADER)?;
    let mut entries = HashMap::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(3, |&b| b == b' ');
        let len = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let size = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let base = fields.next().filter(|b| !b.is_empty())?;
        entries.insert(base.to_vec(), (len, size));
    }
    Some(entries)
}

fn write(dir: &Path, entries: &HashMap<Vec<u8>, (u64, u64)>) -> io::Result<()> {
    let tmp = dir.join(format!(".{CACHE_FILE}.tmp"));
    let mut out = Vec::with_capacity(HEADER.len() + entries.len() * 64);
    out.extend_from_slice(HEADER);
    for (base, (len, size)) in entries {
        if base.contains(&b'\n') {
            continue; // cannot be stored on one line; it will simply be measured again
        }
        write!(out, "{len} {size} ")?;
        out.extend_from_slice(base);
        out.push(b'\n');
    }
    let mut file = File::create(&tmp)?;
    file.write_all(&out)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CACHE_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = SizeCache::load(dir.path());
        cache.insert(b"1.a.host", 10, 12);
        cache.insert(b"2.b.host", 5, 5);
        cache.save(dir.path(), &|base| base != b"2.b.host");
        let cache = SizeCache::load(dir.path());
        assert_eq!(cache.get(b"1.a.host", 10), Some(12));
        assert_eq!(cache.get(b"1.a.host", 11), None, "a file of another length is measured again");
        assert_eq!(cache.get(b"2.b.host", 5), None, "pruned: no longer in the maildir");
    }

    #[test]
    fn malformed_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for junk in [&b"garbage"[..], b"apopd-sizes 1\n10 x 1.a\n", b"apopd-sizes 1\n10\n", b"apopd-sizes 2\n1 1 a\n"] {
            fs::write(dir.path().join(CACHE_FILE), junk).unwrap();
            assert_eq!(SizeCache::load(dir.path()).get(b"1.a", 10), None);
        }
    }
}
