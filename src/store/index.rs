//! `apopd.index`: what the last scan of a maildir found, so the next login need not redo it.
//!
//! It lists every message (subdirectory, file name, file length, POP3 size, UIDL) in session
//! order, with the modification times of `cur/` and `new/` at scan time and the `uidl_format`
//! the UIDLs were given under. It is also apopd's memory of the UIDL each message was first
//! given: a rescan keeps it (by base name) as long as `uidl_format` is unchanged, so a UIDL
//! never changes when, say, Dovecot's imap later numbers the message in `dovecot-uidlist`.
//! An index of version 1 (apopd before UIDL schemes) gave every message its base name; under
//! `uidl_format = "auto"` those UIDLs are kept too. Any delivery, deletion or
//! flag change renames a file and so changes a directory's mtime: while both mtimes still
//! match, and the listing was taken at least [`SETTLE`] after them (so a change within the
//! same timestamp tick cannot hide), the index is the mailbox and no directory is read. When
//! they differ, the directories are listed again and the index still spares the work that
//! matters: a message's POP3 size is taken from it as long as the file has the same length
//! (maildir files are never rewritten in place). A malformed index is ignored and rebuilt;
//! it is replaced atomically, under the mailbox lock.
//!
//! A session keeps the index's bytes as they were read and points into them ([`Listing`]):
//! loading 100,000 messages is one read and one pass, with no allocation per message.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::safe_fs::Maildir;
use super::uidl::{base_name, is_valid, uidl_of};

/// The index's file name inside the maildir.
pub const INDEX_FILE: &str = "apopd.index";
const HEADER: &[u8] = b"apopd-index 2\n";
const HEADER_V1: &[u8] = b"apopd-index 1\n";
/// How long after the directories' last change a listing must have been taken for its index
/// to be trusted without listing them (covers file systems with timestamps as coarse as one
/// second).
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

    /// The line's tag: upper case when the file is known to go out verbatim.
    fn tag(self, verbatim: bool) -> u8 {
        let tag = match self {
            Sub::Cur => b'c',
            Sub::New => b'n',
        };
        if verbatim { tag.to_ascii_uppercase() } else { tag }
    }
}

/// One message of a [`Listing`]: its size and where, in the listing's bytes, its line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its POP3 size: octets as transmitted (CRLF line endings, before byte-stuffing).
    pub size: u64,
    /// Start of its index line (`<len> <size> <c|n> <uidl> <name>\n`) in the listing's bytes.
    line: usize,
    /// Where the UIDL starts, from the start of the line.
    uidl_at: u16,
    uidl_len: u16,
    name_len: u16,
    /// The subdirectory the file is in.
    pub sub: Sub,
    /// The file is known to need no rewriting on the wire (CRLF lines, none starting with
    /// `.`), so its length is `size` and RETR may send it as it is. False when unknown.
    pub verbatim: bool,
}

/// Messages in session order, as index lines in one buffer that [`Slot`]s point into.
#[derive(Debug, Default)]
pub struct Listing {
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    /// A name holds a line feed: the listing cannot be stored as an index.
    unstorable: bool,
}

impl Listing {
    /// An empty listing with room for `messages` messages of `bytes` index bytes.
    pub fn with_capacity(messages: usize, bytes: usize) -> Self {
        Listing { bytes: Vec::with_capacity(bytes), slots: Vec::with_capacity(messages), unstorable: false }
    }

    /// Append a message; false (and nothing appended) when a field is too long to record,
    /// which no real maildir name or valid UIDL is.
    pub fn push(&mut self, sub: Sub, name: &[u8], len: u64, size: u64, verbatim: bool, uidl: &[u8]) -> bool {
        let (Ok(uidl_len), Ok(name_len)) = (u16::try_from(uidl.len()), u16::try_from(name.len())) else {
            return false;
        };
        let line = self.bytes.len();
        push_number(&mut self.bytes, len);
        self.bytes.push(b' ');
        push_number(&mut self.bytes, size);
        self.bytes.extend_from_slice(&[b' ', sub.tag(verbatim), b' ']);
        let uidl_at = (self.bytes.len() - line) as u16; // at most 20 + 1 + 20 + 3 digits and spaces
        self.bytes.extend_from_slice(uidl);
        self.bytes.push(b' ');
        self.bytes.extend_from_slice(name);
        self.bytes.push(b'\n');
        self.unstorable |= memchr::memchr(b'\n', name).is_some() || name.is_empty() || !is_valid(uidl);
        self.slots.push(Slot { size, line, uidl_at, uidl_len, name_len, sub, verbatim });
        true
    }

    /// The messages, in session order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The file name of `slot`.
    pub fn name(&self, slot: &Slot) -> &[u8] {
        let start = slot.line + usize::from(slot.uidl_at) + usize::from(slot.uidl_len) + 1;
        &self.bytes[start..start + usize::from(slot.name_len)]
    }

    /// The UIDL of `slot` (1 to 70 characters in 0x21–0x7E).
    pub fn uidl(&self, slot: &Slot) -> &[u8] {
        let start = slot.line + usize::from(slot.uidl_at);
        &self.bytes[start..start + usize::from(slot.uidl_len)]
    }

    /// The file length recorded for `slot` (the line's first field).
    pub fn file_len(&self, slot: &Slot) -> u64 {
        number(&self.bytes[slot.line..]).map_or(0, |(n, _)| n)
    }

    /// The whole index line of `slot`, line feed included.
    fn line(&self, slot: &Slot) -> &[u8] {
        let end =
            slot.line + usize::from(slot.uidl_at) + usize::from(slot.uidl_len) + 1 + usize::from(slot.name_len) + 1;
        &self.bytes[slot.line..end]
    }

    /// Record that message `i` is now `name` in `sub` (apopd moved it); its UIDL and sizes stay.
    pub fn rename(&mut self, i: usize, sub: Sub, name: &[u8]) {
        let Some(old) = self.slots.get(i).copied() else { return };
        let uidl = self.uidl(&old).to_vec();
        let len = self.file_len(&old);
        if self.push(sub, name, len, old.size, old.verbatim, &uidl)
            && let Some(new) = self.slots.pop()
        {
            self.slots[i] = new;
        }
    }

    /// Record that message `i`'s file, `len` long, goes out verbatim (a new line, as
    /// [`Listing::rename`] does).
    pub fn set_verbatim(&mut self, i: usize, len: u64) {
        let Some(old) = self.slots.get(i).copied() else { return };
        let (name, uidl) = (self.name(&old).to_vec(), self.uidl(&old).to_vec());
        if self.push(old.sub, &name, len, old.size, true, &uidl)
            && let Some(new) = self.slots.pop()
        {
            self.slots[i] = new;
        }
    }
}

/// The modification times of `cur/` and `new/`, in nanoseconds since the epoch.
pub type DirTimes = [u64; 2];

/// Read the mtimes of `cur/` and `new/`.
pub fn dir_times(maildir: &Maildir) -> io::Result<DirTimes> {
    Ok([maildir.mtime(Sub::Cur)?, maildir.mtime(Sub::New)?])
}

/// Now, in nanoseconds since the epoch (for the "listed as of" time of a scan).
pub fn now() -> u64 {
    nanos(SystemTime::now())
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// True when a listing taken at `as_of` of directories last changed at `times` can be trusted
/// for as long as their mtimes stay `times`: it began at least [`SETTLE`] after the last change,
/// so any later change falls in a later timestamp tick and moves an mtime.
pub fn settled(times: DirTimes, as_of: u64) -> bool {
    as_of != 0 && times.iter().all(|&t| t.saturating_add(SETTLE.as_nanos() as u64) <= as_of)
}

/// A loaded index.
#[derive(Debug, Default)]
pub struct Index {
    /// True when the maildir had a readable index (apopd has scanned it before).
    pub existed: bool,
    times: DirTimes,
    /// When the recorded listing was taken (the clock read before the directories' mtimes).
    as_of: u64,
    /// The `uidl_format` the UIDLs were given under; `None` for a version 1 index.
    scheme: Option<String>,
    listing: Listing,
}

/// What the last scan recorded per base name, for reuse after a change.
#[derive(Debug, Default)]
pub struct Previous<'a> {
    by_base: HashMap<&'a [u8], (u64, u64, &'a [u8], bool)>,
    keep_uidls: bool,
}

impl Previous<'_> {
    /// The POP3 size recorded for `base`, if the file still has length `len`.
    pub fn size_of(&self, base: &[u8], len: u64) -> Option<u64> {
        self.by_base.get(base).filter(|(l, ..)| *l == len).map(|(_, size, ..)| *size)
    }

    /// True when `base` was recorded as verbatim (see [`Slot::verbatim`]) with length `len`
    /// (for a file of unknown length whose name gives its size: pass that size, which a
    /// verbatim file's length equals).
    pub fn is_verbatim(&self, base: &[u8], len: u64) -> bool {
        self.by_base.get(base).is_some_and(|&(l, _, _, verbatim)| l == len && verbatim)
    }

    /// The UIDL `base` was given before, when it still holds under the current scheme.
    pub fn uidl_of(&self, base: &[u8]) -> Option<&str> {
        let (_, _, uidl, _) = self.by_base.get(base).filter(|_| self.keep_uidls)?;
        std::str::from_utf8(uidl).ok()
    }
}

impl Index {
    /// Read the index of `maildir`; missing, malformed or not written by apopd means empty.
    pub fn load(maildir: &Maildir) -> Self {
        let Some(bytes) = maildir.read_own(INDEX_FILE, MAX_INDEX_BYTES) else { return Index::default() };
        parse(bytes).unwrap_or_else(|| {
            tracing::warn!(dir = %maildir.path().display(), "ignoring a malformed {INDEX_FILE}; rebuilding it");
            Index::default()
        })
    }

    /// True when the directories are exactly as they were at the last scan, that scan was
    /// [`settled`], and the UIDLs were given under `scheme` (the config's `uidl_format`).
    pub fn is_current(&self, now: DirTimes, scheme: &str) -> bool {
        settled(self.times, self.as_of) && self.times == now && self.scheme.as_deref() == Some(scheme)
    }

    /// The messages, when [`Index::is_current`]; the index is left empty.
    pub fn take_if_current(&mut self, now: DirTimes, scheme: &str) -> Option<Listing> {
        self.is_current(now, scheme).then(|| std::mem::take(&mut self.listing))
    }

    /// What was recorded, by base name (built only when the directories must be listed).
    /// UIDLs are kept under the scheme they were given with; a version 1 index's base-name
    /// UIDLs are kept under `auto` (the UIDLs apopd gave before stay what clients know).
    pub fn previous(&self, scheme: &str) -> Previous<'_> {
        let keep_uidls = match &self.scheme {
            Some(s) => s == scheme,
            None => scheme == "auto",
        };
        let listing = &self.listing;
        let by_base = listing
            .slots
            .iter()
            .map(|s| (base_name(listing.name(s)), (listing.file_len(s), s.size, listing.uidl(s), s.verbatim)))
            .collect();
        Previous { by_base, keep_uidls }
    }
}

/// The decimal number at the start of `bytes` (1 to 20 digits, no overflow) and what follows
/// the space after it.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut n = 0u64;
    for &d in &bytes[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, bytes[digits..].strip_prefix(b" ")?))
}

/// [`is_valid`] without an early exit, so the compiler can check many bytes at once.
fn valid_uidl(uidl: &[u8]) -> bool {
    (1..=super::uidl::MAX_UIDL_LEN).contains(&uidl.len())
        && uidl.iter().fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
}

/// Append `n` in decimal.
fn push_number(out: &mut Vec<u8>, n: u64) {
    crate::protocol::response::push_number(out, n);
}

/// The `[start, end)` of the next non-empty line at or after `*at`, which must end in a line
/// feed (a torn last line makes the index malformed); `*at` moves past it.
fn next_line(bytes: &[u8], at: &mut usize) -> Option<Option<(usize, usize)>> {
    while *at < bytes.len() && bytes[*at] == b'\n' {
        *at += 1;
    }
    if *at == bytes.len() {
        return Some(None);
    }
    let end = *at + memchr::memchr(b'\n', &bytes[*at..])?;
    let line = (*at, end);
    *at = end + 1;
    Some(Some(line))
}

fn parse(bytes: Vec<u8>) -> Option<Index> {
    let (v2, mut at) = if bytes.starts_with(HEADER) {
        (true, HEADER.len())
    } else if bytes.starts_with(HEADER_V1) {
        (false, HEADER_V1.len())
    } else {
        return None;
    };
    let (start, end) = next_line(&bytes, &mut at)??;
    let mut stamps = bytes[start..end].strip_prefix(b"dirs ")?.split(|&b| b == b' ');
    let mut stamp = || -> Option<u64> { std::str::from_utf8(stamps.next()?).ok()?.parse().ok() };
    let (times, as_of) = ([stamp()?, stamp()?], stamp()?);
    if !v2 {
        return parse_v1(&bytes, at, times, as_of);
    }
    let (start, end) = next_line(&bytes, &mut at)??;
    let scheme = Some(String::from_utf8(bytes[start..end].strip_prefix(b"uidl ")?.to_vec()).ok()?);
    // Most lines are 60 to 120 bytes: one allocation for the slots, whatever the mailbox.
    let mut slots = Vec::with_capacity((bytes.len() - at) / 56 + 1);
    while let Some((start, end)) = next_line(&bytes, &mut at)? {
        slots.push(parse_line(&bytes[start..end], start)?);
    }
    let listing = Listing { bytes, slots, unstorable: false };
    Some(Index { existed: true, times, as_of, scheme, listing })
}

/// One version 2 line: `<len> <size> <c|n> <uidl> <name>`, starting at `line` in the bytes.
fn parse_line(text: &[u8], line: usize) -> Option<Slot> {
    let (_len, rest) = number(text)?;
    let (size, rest) = number(rest)?;
    // Upper case: known verbatim (an apopd without the bit rebuilds such an index).
    let (sub, verbatim, rest) = match rest {
        [b'c', b' ', rest @ ..] => (Sub::Cur, false, rest),
        [b'n', b' ', rest @ ..] => (Sub::New, false, rest),
        [b'C', b' ', rest @ ..] => (Sub::Cur, true, rest),
        [b'N', b' ', rest @ ..] => (Sub::New, true, rest),
        _ => return None,
    };
    let uidl_len = memchr::memchr(b' ', rest)?;
    let (uidl, name) = (&rest[..uidl_len], &rest[uidl_len + 1..]);
    if !valid_uidl(uidl) || name.is_empty() || memchr::memchr(b'/', name).is_some() {
        return None;
    }
    Some(Slot {
        size,
        line,
        uidl_at: u16::try_from(text.len() - rest.len()).ok()?,
        uidl_len: u16::try_from(uidl_len).ok()?,
        name_len: u16::try_from(name.len()).ok()?,
        sub,
        verbatim,
    })
}

/// Version 1 lines (`<len> <size> <c|n> <name>`): every UIDL was the base name (or its hash).
fn parse_v1(bytes: &[u8], mut at: usize, times: DirTimes, as_of: u64) -> Option<Index> {
    let mut listing = Listing::default();
    while let Some((start, end)) = next_line(bytes, &mut at)? {
        let text = &bytes[start..end];
        let (len, rest) = number(text)?;
        let (size, rest) = number(rest)?;
        let (sub, name) = match rest {
            [b'c', b' ', name @ ..] => (Sub::Cur, name),
            [b'n', b' ', name @ ..] => (Sub::New, name),
            _ => return None,
        };
        if name.is_empty()
            || name.contains(&b'/')
            || !listing.push(sub, name, len, size, false, uidl_of(name).as_bytes())
        {
            return None;
        }
    }
    Some(Index { existed: true, times, as_of, scheme: None, listing })
}

/// Replace the index of `maildir` with `listing`, taken `as_of` (see [`now`]) when the
/// directories had `times`, its UIDLs given under `scheme`. Failing to write is logged, not
/// returned: the next scan lists the directories again (and gives messages without a
/// remembered UIDL one by the rules).
/// Mark the files `learned` (name → length) verbatim in the index of `maildir`, as RETR found
/// them: the next scan can then send them with `sendfile` even when it does not read them
/// (`,W=` names). Everything else stays as it was, the listing's stamp included, so whether
/// the index is trusted does not change. Call it under the mailbox lock.
pub fn remember_verbatim(maildir: &Maildir, learned: &HashMap<&[u8], u64>) {
    if learned.is_empty() {
        return;
    }
    let Some(mut index) = maildir.read_own(INDEX_FILE, MAX_INDEX_BYTES).and_then(parse) else { return };
    let Some(scheme) = index.scheme.take() else { return };
    let listing = &mut index.listing;
    let mut changed = false;
    for i in 0..listing.slots.len() {
        let slot = listing.slots[i];
        if let (false, Some(&len)) = (slot.verbatim, learned.get(listing.name(&slot))) {
            listing.set_verbatim(i, len);
            changed = true;
        }
    }
    if changed && let Err(e) = write(maildir, index.times, index.as_of, &scheme, listing) {
        tracing::warn!(dir = %maildir.path().display(), error = %e, "cannot write {INDEX_FILE}");
    }
}

pub fn save(maildir: &Maildir, times: DirTimes, as_of: u64, scheme: &str, listing: &Listing) {
    if let Err(e) = write(maildir, times, as_of, scheme, listing) {
        tracing::warn!(dir = %maildir.path().display(), error = %e, "cannot write {INDEX_FILE}");
    }
}

fn write(maildir: &Maildir, times: DirTimes, as_of: u64, scheme: &str, listing: &Listing) -> io::Result<()> {
    if listing.unstorable || scheme.contains('\n') {
        // Cannot be stored one per line: leave the index out rather than make it wrong.
        return Ok(());
    }
    let mut out = Vec::with_capacity(HEADER.len() + 64 + scheme.len() + listing.bytes.len());
    out.extend_from_slice(HEADER);
    writeln!(out, "dirs {} {} {as_of}", times[0], times[1])?;
    writeln!(out, "uidl {scheme}")?;
    for slot in &listing.slots {
        out.extend_from_slice(listing.line(slot));
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

    fn listing(entries: &[(Sub, &str, u64, u64)]) -> Listing {
        let mut listing = Listing::default();
        for &(sub, name, len, size) in entries {
            assert!(listing.push(
                sub,
                name.as_bytes(),
                len,
                size,
                false,
                format!("u-{name}").replace([':', ' '], "").as_bytes()
            ));
        }
        listing
    }

    /// `(sub, name, file length, size, uidl)` of every message, for comparisons.
    fn contents(listing: &Listing) -> Vec<(Sub, String, u64, u64, String)> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        listing
            .slots()
            .iter()
            .map(|s| (s.sub, text(listing.name(s)), listing.file_len(s), s.size, text(listing.uidl(s))))
            .collect()
    }

    #[test]
    fn round_trip_and_trust_rules() {
        let dir = tempfile::tempdir().unwrap();
        let dir = maildir(&dir);
        let entries = listing(&[(Sub::Cur, "1.a.host:2,S", 10, 12), (Sub::New, "2.b host", 5, 5)]);
        let old = now() - 10_000_000_000;
        save(&dir, [old, old], now(), "auto", &entries);
        let mut index = Index::load(&dir);
        assert!(index.existed);
        assert!(!index.is_current([old, old + 1], "auto"), "a directory changed");
        assert!(!index.is_current([old, old], "%f"), "another uidl_format");
        let previous = index.previous("auto");
        assert_eq!(previous.size_of(b"1.a.host", 10), Some(12));
        assert_eq!(previous.size_of(b"1.a.host", 11), None, "another length is measured again");
        assert_eq!(previous.uidl_of(b"1.a.host"), Some("u-1.a.host2,S"));
        assert_eq!(index.previous("basename").uidl_of(b"1.a.host"), None, "given under another scheme");
        drop(previous);
        let loaded = index.take_if_current([old, old], "auto").unwrap();
        assert_eq!(contents(&loaded), contents(&entries));

        // Listed less than SETTLE after the directories changed: not trusted.
        let recent = now() - 1_000_000_000;
        save(&dir, [recent, old], now(), "auto", &entries);
        assert!(!Index::load(&dir).is_current([recent, old], "auto"));
        // The same directories listed again once settled: trusted.
        save(&dir, [recent, old], recent + SETTLE.as_nanos() as u64, "auto", &entries);
        assert!(Index::load(&dir).is_current([recent, old], "auto"));
    }

    #[test]
    fn renamed_messages_keep_their_uidl_and_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        let mut entries = listing(&[(Sub::New, "1.a.host", 10, 12), (Sub::New, "2.b.host", 5, 5)]);
        entries.rename(0, Sub::Cur, b"1.a.host:2,");
        let expected = vec![
            (Sub::Cur, "1.a.host:2,".to_owned(), 10, 12, "u-1.a.host".to_owned()),
            (Sub::New, "2.b.host".to_owned(), 5, 5, "u-2.b.host".to_owned()),
        ];
        assert_eq!(contents(&entries), expected);
        let old = now() - 10_000_000_000;
        save(&dir, [old, old], now(), "auto", &entries);
        assert_eq!(contents(&Index::load(&dir).take_if_current([old, old], "auto").unwrap()), expected);
    }

    #[test]
    fn a_name_with_a_line_feed_is_served_but_not_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        let entries = listing(&[(Sub::New, "1.a\nhost", 3, 4)]);
        assert_eq!(entries.name(&entries.slots()[0]), b"1.a\nhost");
        save(&dir, [1, 2], now(), "auto", &entries);
        assert!(!Index::load(&dir).existed);
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
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n1 1 c u\x01 1.a\n",
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n1 1 c u 1.a",
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n1 +1 c u 1.a\n",
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n1 99999999999999999999 c u 1.a\n",
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n1 1 c u \n",
        ] {
            std::fs::write(tmp.path().join("box").join(INDEX_FILE), junk).unwrap();
            let index = Index::load(&dir);
            assert!(!index.is_current([1, 2], "auto"), "{junk:?}");
            assert!(!index.existed, "{junk:?}");
            assert_eq!(index.previous("auto").size_of(b"1.a", 1), None);
        }
        // The same lines, well formed, load.
        std::fs::write(
            tmp.path().join("box").join(INDEX_FILE),
            b"apopd-index 2\ndirs 1 2 9000000000\nuidl auto\n\n1 1 c u 1.a\n",
        )
        .unwrap();
        assert_eq!(contents(&Index::load(&dir).listing), vec![(Sub::Cur, "1.a".to_owned(), 1, 1, "u".to_owned())]);
    }

    #[test]
    fn the_verbatim_bit_round_trips_and_old_lines_read_as_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        let mut listing = Listing::default();
        assert!(listing.push(Sub::New, b"1.a.host", 10, 10, true, b"u1"));
        assert!(listing.push(Sub::Cur, b"2.b.host:2,", 5, 6, false, b"u2"));
        save(&dir, [1, 2], 9, "auto", &listing);
        let text = std::fs::read(tmp.path().join("box").join(INDEX_FILE)).unwrap();
        assert!(text.windows(5).any(|w| w == b" N u1"), "{}", String::from_utf8_lossy(&text));
        let index = Index::load(&dir);
        let verbatim: Vec<bool> = index.listing.slots().iter().map(|s| s.verbatim).collect();
        assert_eq!(verbatim, [true, false]);
        let previous = index.previous("auto");
        assert!(previous.is_verbatim(b"1.a.host", 10));
        assert!(!previous.is_verbatim(b"1.a.host", 11), "another length is checked again");
        assert!(!previous.is_verbatim(b"2.b.host", 5));
        // A line written before the bit existed: "not known verbatim".
        std::fs::write(tmp.path().join("box").join(INDEX_FILE), b"apopd-index 2\ndirs 1 2 9\nuidl auto\n4 4 c u 1.a\n")
            .unwrap();
        assert!(!Index::load(&dir).previous("auto").is_verbatim(b"1.a", 4));
    }

    #[test]
    fn verbatim_files_learnt_by_retr_are_remembered_without_changing_trust() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = maildir(&tmp);
        let old = now() - 10_000_000_000;
        let mut listing = Listing::default();
        assert!(listing.push(Sub::New, b"1.a.host,S=7,W=7", 0, 7, false, b"u1"));
        assert!(listing.push(Sub::New, b"2.b.host", 5, 6, false, b"u2"));
        save(&dir, [old, old], now(), "auto", &listing);
        assert!(Index::load(&dir).is_current([old, old], "auto"));
        remember_verbatim(&dir, &HashMap::from([(&b"1.a.host,S=7,W=7"[..], 7)]));
        let index = Index::load(&dir);
        assert!(index.is_current([old, old], "auto"), "the trust stamp is kept");
        let slots = index.listing.slots();
        assert!(slots[0].verbatim && index.listing.file_len(&slots[0]) == 7);
        assert!(!slots[1].verbatim);
        assert_eq!(index.listing.uidl(&slots[0]), b"u1");
        assert!(index.previous("auto").is_verbatim(b"1.a.host,S=7,W=7", 7));
    }
}
