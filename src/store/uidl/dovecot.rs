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

use super::base_name;

/// One message's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The IMAP UID.
    pub uid: u32,
    /// The `P` field: `Some("")` means "the base name".
    pub pop3_uidl: Option<String>,
    /// The `G` field.
    pub guid: Option<String>,
}

/// A parsed uidlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList {
    /// The `V` header field.
    pub uid_validity: u32,
    /// The `N` header field.
    pub next_uid: u32,
    /// Records by base file name.
    pub records: HashMap<Vec<u8>, Record>,
}

impl UidList {
    /// The record of the message with file name `name` (any info part is ignored).
    pub fn get(&self, name: &[u8]) -> Option<&Record> {
        self.records.get(base_name(name))
    }
}

/// Parse a uidlist; the error names the first line Dovecot itself would call corrupted.
pub fn parse(bytes: &[u8]) -> Result<UidList, String> {
    let mut lines = bytes.split(|&b| b == b'\n');
    let header = lines.next().filter(|h| !h.is_empty()).ok_or("empty file")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
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
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}", n + 2);
        let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
        let uid: u32 = std::str::from_utf8(&line[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .filter(|&u| u != 0 && u != u32::MAX)
            .ok_or_else(|| bad("no UID"))?;
        let mut rest = line[digits..].strip_prefix(b" ").ok_or_else(|| bad("no space after the UID"))?;
        let mut record = Record { uid, pop3_uidl: None, guid: None };
        if version == "3" {
            // Extension fields up to the ':' that starts the file name.
            loop {
                while let Some(r) = rest.strip_prefix(b" ") {
                    rest = r;
                }
                match rest.first() {
                    None => return Err(bad("no file name")),
                    Some(b':') => {
                        rest = &rest[1..];
                        break;
                    }
                    Some(&key) => {
                        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
                        let value = String::from_utf8_lossy(&rest[1..end]).into_owned();
                        match key {
                            b'P' => record.pop3_uidl = Some(value),
                            b'G' => record.guid = Some(value),
                            _ => {}
                        }
                        rest = &rest[end..];
                    }
                }
            }
        }
        if rest.is_empty() || rest.contains(&b'/') {
            return Err(bad("broken file name"));
        }
        list.records.insert(base_name(rest).to_vec(), record);
    }
    Ok(list)
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
        assert_eq!(third.pop3_uidl.as_deref(), Some(""));
        assert_eq!(third.guid.as_deref(), Some("feedface"));
        assert_eq!(list.get(b"4.M4.host").unwrap().pop3_uidl.as_deref(), Some("qpopper-uidl-xyz"));
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
