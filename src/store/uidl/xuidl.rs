//! The `X-UIDL:` header qpopper stored in every message it served (kept by mbox-to-maildir
//! converters such as mb2md), as Dovecot's `pop3_reuse_xuidl` reads it.

use std::io::{self, Read};

use super::is_valid;

/// Headers longer than this are not searched (the header is near the top when present).
const MAX_HEADER: u64 = 64 * 1024;

/// The value of the first `X-UIDL:` header of the message in `reader`, when it is a valid
/// unique-id (1–70 characters in 0x21–0x7E, surrounding white space removed).
pub fn read(reader: impl Read) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(4096);
    reader.take(MAX_HEADER).read_to_end(&mut head)?;
    Ok(find(&head))
}

/// The `X-UIDL:` value in a message's first bytes.
pub fn find(head: &[u8]) -> Option<String> {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of the header
        }
        if line.len() > 7 && line[..7].eq_ignore_ascii_case(b"x-uidl:") {
            let value = line[7..].trim_ascii();
            return is_valid(value).then(|| String::from_utf8_lossy(value).into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_header_only_in_the_header() {
        let msg = b"Return-Path: <a@b>\nX-UIDL: 4a1f2c3d5e6f7a8b9c0d1e2f3a4b5c6d\nSubject: x\n\nX-UIDL: body\n";
        assert_eq!(find(msg).as_deref(), Some("4a1f2c3d5e6f7a8b9c0d1e2f3a4b5c6d"));
        assert_eq!(find(b"x-uidl:   abc  \r\n\r\n").as_deref(), Some("abc"));
        assert_eq!(find(b"Subject: x\n\nX-UIDL: abc\n"), None, "in the body");
        assert_eq!(find(b"X-UIDL: has space\n\n"), None, "not a valid unique-id");
        assert_eq!(find(b"X-UIDL:\n\n"), None);
    }
}
