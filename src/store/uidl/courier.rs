//! `courierpop3dsizelist`: the UIDLs Courier's pop3d numbered itself.
//!
//! Header `/3 <nextuid> <uidvalidity>` (or `/2 …`), then one line per message,
//! `<file name> <size> <uid>:<uidvalidity>[:<utf8>]`. Courier's UIDL is `UID<uid>-<uidv>`,
//! `UID<uid>` when the UIDVALIDITY is 0, and the base file name when the uid is 0. Lines are
//! found by base name; a later line for the same name wins. apopd only reads this file.

use std::collections::HashMap;

use super::base_name;

/// Courier's UIDLs by base file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SizeList {
    uidls: HashMap<Vec<u8>, String>,
}

impl SizeList {
    /// Courier's UIDL of the message with file name `name`, if it numbered it.
    pub fn get(&self, name: &[u8]) -> Option<&str> {
        self.uidls.get(base_name(name)).map(String::as_str)
    }
}

/// Parse a size list; the error names what is wrong.
pub fn parse(bytes: &[u8]) -> Result<SizeList, String> {
    let mut lines = bytes.split(|&b| b == b'\n');
    let header = lines.next().unwrap_or_default();
    if !(header.starts_with(b"/2 ") || header.starts_with(b"/3 ")) {
        return Err("header is not /2 or /3".to_owned());
    }
    let mut list = SizeList::default();
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: not <file name> <size> <uid>:<uidvalidity>", n + 2);
        let mut fields = line.rsplitn(3, |&b| b == b' ');
        let (ids, size, name) = (fields.next().ok_or_else(bad)?, fields.next().ok_or_else(bad)?, fields.next());
        let name = name.filter(|n| !n.is_empty() && !n.contains(&b'/')).ok_or_else(bad)?;
        if size.is_empty() || !size.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let ids = std::str::from_utf8(ids).map_err(|_| bad())?;
        let mut ids = ids.split(':');
        let uid: u64 = ids.next().and_then(|u| u.parse().ok()).ok_or_else(bad)?;
        let uidv: u64 = match ids.next() {
            Some(v) => v.parse().map_err(|_| bad())?,
            None => 0,
        };
        let base = base_name(name);
        let uidl = match (uid, uidv) {
            (0, _) => String::from_utf8_lossy(base).into_owned(),
            (uid, 0) => format!("UID{uid}"),
            (uid, uidv) => format!("UID{uid}-{uidv}"),
        };
        list.uidls.insert(base.to_vec(), uidl);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn courier_uidls() {
        let text = b"/3 5 1700000001\n\
            1700000000.123.host:2,S 1200 1:1700000001\n\
            1700000001.124.host 300 2:1700000001:1\n\
            1700000002.125.host 300 3:0\n\
            1700000003.126.host 300 0:0\n";
        let list = parse(text).unwrap();
        assert_eq!(list.get(b"1700000000.123.host:2,RS"), Some("UID1-1700000001"));
        assert_eq!(list.get(b"1700000001.124.host"), Some("UID2-1700000001"));
        assert_eq!(list.get(b"1700000002.125.host"), Some("UID3"));
        assert_eq!(list.get(b"1700000003.126.host"), Some("1700000003.126.host"));
        assert_eq!(list.get(b"1700000004.127.host"), None);
        assert!(parse(b"/2 1 1\na.b 10 4\n").unwrap().get(b"a.b") == Some("UID4"));
    }

    #[test]
    fn malformed_lists_are_errors() {
        for bad in [&b""[..], b"/1 1 1\n", b"/3 1 1\nname\n", b"/3 1 1\nname x 1:1\n", b"/3 1 1\na/b 1 1:1\n"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
