//! `dovecot-uidlist`: the IMAP UIDs (and saved POP3 UIDLs) Dovecot gave a maildir's messages.
//!
//! Version 3: a header `3 V<uidvalidity> N<nextuid> G<guid> …`, then one line per message,
//! `<uid> [<key><value> …] :<file name>`, keys `S` (size), `W` (CRLF size), `P` (a saved POP3
//! UIDL; empty = the base name), `O` (POP3 order), `G` (GUID). Version 1 (Courier IMAP's
//! `courierimapuiddb` shape): `1 <uidvalidity> <nextuid>`, then `<uid> <file name>`. The
//! file name may still carry a stale `:2,…` info part, so records are found by base name;
//! when a base name is listed twice (lines appended after a rewrite), the last line wins, as
//! in Dovecot. apopd only reads this file.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::ops::Range;

use super::base_name;

/// One message's record, borrowed from the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The IMAP UID.
    pub uid: u32,
    /// The `P` field: `Some(b"")` means "the base name".
    pub pop3_uidl: Option<&'a [u8]>,
    /// The `G` field.
    pub guid: Option<&'a [u8]>,
}

/// Where a record's parts are in the file's bytes (no allocation per line: a 100,000-line
/// list is parsed in one pass over one buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    uid: u32,
    name: Range<u32>,
    pop3_uidl: Option<Range<u32>>,
    guid: Option<Range<u32>>,
}

/// A map keyed by an already random 64-bit hash: the hash is the bucket.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A parsed uidlist.
#[derive(Debug, Clone, Default)]
pub struct UidList {
    /// The `V` header field.
    pub uid_validity: u32,
    /// The `N` header field.
    pub next_uid: u32,
    text: Vec<u8>,
    lines: Vec<Line>,
    /// Keyed SipHash of a base name → index in `lines` (the last line for it); a lookup
    /// compares the name itself, so a hash collision can only miss, never mismatch.
    by_hash: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    hasher: RandomState,
}

impl UidList {
    /// The record of the message with file name `name` (any info part is ignored).
    pub fn get(&self, name: &[u8]) -> Option<Record<'_>> {
        let base = base_name(name);
        let line = &self.lines[*self.by_hash.get(&self.hasher.hash_one(base))? as usize];
        let slice = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        (slice(&line.name) == base).then(|| Record {
            uid: line.uid,
            pop3_uidl: line.pop3_uidl.as_ref().map(slice),
            guid: line.guid.as_ref().map(slice),
        })
    }

    /// How many messages it lists.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when it lists none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Parse a uidlist; the error names the first line Dovecot itself would call corrupted.
pub fn parse(bytes: &[u8]) -> Result<UidList, String> {
    if bytes.len() >= u32::MAX as usize {
        return Err("too large".to_owned());
    }
    let header_end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
    let header = std::str::from_utf8(&bytes[..header_end]).map_err(|_| "header is not text")?;
    if header.is_empty() {
        return Err("empty file".to_owned());
    }
    let (version, rest) = header.split_once(' ').ok_or("header has no version")?;
    let mut list = UidList::default();
    match version {
        "1" => {
            let mut fields = rest.split(' ');
            list.uid_validity = fields.next().and_then(|v| v.parse().ok()).ok_or("bad UIDVALIDITY in header")?;
            list.next_uid = fields.next().and_then(|v| v.parse().ok()).ok_or("bad next UID in header")?;
        }
        "3" => {
            for field in rest.split(' ').filter(|f| !f.is_empty()) {
                let (key, value) = field.split_at(1);
                match key {
                    "V" => list.uid_validity = value.parse().map_err(|_| "bad V in header")?,
                    "N" => list.next_uid = value.parse().map_err(|_| "bad N in header")?,
                    _ => {}
                }
            }
        }
        other => return Err(format!("unsupported version {other:?}")),
    }
    if list.uid_validity == 0 || list.next_uid == 0 {
        return Err("header without UIDVALIDITY or next UID".to_owned());
    }
    let count = memchr::memchr_iter(b'\n', bytes).count();
    list.lines.reserve(count);
    list.by_hash.reserve(count);
    let mut at = (header_end + 1).min(bytes.len());
    let mut number = 1;
    while at < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i);
        number += 1;
        if end > at {
            let line = parse_line(bytes, at, end, version == "3").ok_or_else(|| format!("line {number}: corrupt"))?;
            let base = &bytes[line.name.start as usize..line.name.end as usize];
            let index = list.lines.len() as u32;
            list.by_hash.insert(list.hasher.hash_one(base), index);
            list.lines.push(line);
        }
        at = end + 1;
    }
    list.text = bytes.to_vec();
    Ok(list)
}

/// One record line `bytes[start..end]`: `<uid> [<key><value> …] :<file name>` (version 3) or
/// `<uid> <file name>` (version 1).
fn parse_line(bytes: &[u8], start: usize, end: usize, v3: bool) -> Option<Line> {
    let line = &bytes[start..end];
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 10 || line.get(digits) != Some(&b' ') {
        return None;
    }
    let uid = line[..digits].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let uid = u32::try_from(uid).ok().filter(|&u| u != 0 && u != u32::MAX)?;
    let mut pos = digits;
    let (mut pop3_uidl, mut guid) = (None, None);
    let range = |from: usize, to: usize| (start + from) as u32..(start + to) as u32;
    if v3 {
        // Extension fields up to the ':' that starts the file name.
        loop {
            while line.get(pos) == Some(&b' ') {
                pos += 1;
            }
            match line.get(pos)? {
                b':' => {
                    pos += 1;
                    break;
                }
                &key => {
                    let field_end = memchr::memchr(b' ', &line[pos..]).map_or(line.len(), |i| pos + i);
                    match key {
                        b'P' => pop3_uidl = Some(range(pos + 1, field_end)),
                        b'G' => guid = Some(range(pos + 1, field_end)),
                        _ => {} // S, W, O: sizes and order, not needed for UIDLs
                    }
                    pos = field_end;
                }
            }
        }
    } else {
        pos += 1;
    }
    let name = &line[pos..];
    if name.is_empty() || name.contains(&b'/') {
        return None;
    }
    let base_len = base_name(name).len();
    Some(Line { uid, name: range(pos, pos + base_len), pop3_uidl, guid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_3_with_fields_info_parts_and_appended_lines() {
        let text = b"3 V1700000000 N5 G0123456789abcdef0123456789abcdef\n\
            1 :1.M1.host,S=5\n\
            2 W120 S118 :2.M2.host,S=118:2,S\n\
            3 P Gfeedface :3.M3.host\n\
            4 Pqpopper-uidl-xyz O7 :4.M4.host:2,RS\n\
            2 S118 :2.M2.host,S=118\n";
        let list = parse(text).unwrap();
        assert_eq!((list.uid_validity, list.next_uid), (1_700_000_000, 5));
        assert_eq!(list.get(b"1.M1.host,S=5:2,S").unwrap().uid, 1);
        assert_eq!(list.get(b"2.M2.host,S=118").unwrap().uid, 2);
        let third = list.get(b"3.M3.host").unwrap();
        assert_eq!(third.pop3_uidl, Some(&b""[..]));
        assert_eq!(third.guid, Some(&b"feedface"[..]));
        assert_eq!(list.get(b"4.M4.host").unwrap().pop3_uidl, Some(&b"qpopper-uidl-xyz"[..]));
        assert_eq!(list.len(), 4, "the appended line replaced the first for its name");
        assert_eq!(list.get(b"5.M5.host"), None);
    }

    #[test]
    fn version_1() {
        let list = parse(b"1 1234 3\n1 1.a.host:2,S\n2 2.b.host\n").unwrap();
        assert_eq!(list.uid_validity, 1234);
        assert_eq!(list.get(b"1.a.host").unwrap().uid, 1);
        assert_eq!(list.get(b"2.b.host:2,").unwrap().uid, 2);
    }

    #[test]
    fn corruption_is_an_error() {
        for bad in [
            &b""[..],
            b"2 V1 N1\n",
            b"3 N5\n",
            b"3 V1 N2\nx :a\n",
            b"3 V1 N2\n1 :\n",
            b"3 V1 N2\n1 :../a\n",
            b"3 V1 N2\n1 S5\n",
            b"1 1\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

/// Timing for the docs and the closing note (CPU time of this thread, so a loaded machine does
/// not inflate it): `cargo test --release --lib uidlist_speed -- --ignored --nocapture`.
#[cfg(test)]
mod speed {
    use super::super::{Scheme, Sources, assign};

    /// Nanoseconds of CPU this thread has used (first field of /proc/thread-self/schedstat).
    fn cpu_ns() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        stat.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    #[test]
    #[ignore = "a timing, not a check: run it in release mode by hand"]
    fn uidlist_speed() {
        use std::fmt::Write;
        let mut text = String::from("3 V1700000000 N100001 G0123456789abcdef0123456789abcdef\n");
        let mut names = Vec::new();
        for i in 1..=100_000u32 {
            let name = format!("{}.M{i}P42.pop3load,S=1080,W=1100:2,S", 1_700_000_000 + i);
            let _ = writeln!(text, "{i} W1100 S1080 :{name}");
            names.push(name);
        }
        const ROUNDS: u64 = 10;
        let start = cpu_ns();
        for _ in 0..ROUNDS {
            assert_eq!(super::parse(text.as_bytes()).unwrap().len(), 100_000);
        }
        let parse_ms = (cpu_ns() - start) as f64 / ROUNDS as f64 / 1e6;
        let sources = Sources { dovecot: Some(super::parse(text.as_bytes())), courier: None };
        let start = cpu_ns();
        for _ in 0..ROUNDS {
            for name in &names {
                assert_eq!(assign(&Scheme::Auto, &sources, name.as_bytes(), false, || None).0.len(), 16);
            }
        }
        let assign_ms = (cpu_ns() - start) as f64 / ROUNDS as f64 / 1e6;
        println!("100,000-line dovecot-uidlist, CPU: parse {parse_ms:.1} ms, every UIDL rendered {assign_ms:.1} ms");
    }
}
