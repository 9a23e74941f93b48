//! Unique-ids (UIDL) derived from maildir file names.
//!
//! A maildir name is `<base>[:2,<flags>]`; the flags change when a client marks a message
//! read, the base never does. The UIDL is the base when it is a valid RFC 1939 unique-id
//! (1–70 characters in 0x21–0x7E), otherwise the hex MD5 of the base: deterministic, so it
//! is the same in every session.

use md5::{Digest, Md5};

/// The longest unique-id RFC 1939 allows.
pub const MAX_UIDL_LEN: usize = 70;

/// The part of a maildir file name that survives flag changes.
pub fn base_name(file_name: &[u8]) -> &[u8] {
    match memchr::memchr(b':', file_name) {
        Some(i) => &file_name[..i],
        None => file_name,
    }
}

/// The UIDL of the message stored under `file_name`.
pub fn uidl_of(file_name: &[u8]) -> String {
    let base = base_name(file_name);
    let usable = !base.is_empty() && base.len() <= MAX_UIDL_LEN && base.iter().all(u8::is_ascii_graphic);
    if usable {
        // All bytes are ASCII, so this cannot fail.
        String::from_utf8_lossy(base).into_owned()
    } else {
        base16ct::lower::encode_string(&Md5::digest(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flags_do_not_change_the_uidl() {
        assert_eq!(uidl_of(b"1700000000.M1P2.host,S=10"), "1700000000.M1P2.host,S=10");
        assert_eq!(uidl_of(b"1700000000.M1P2.host,S=10:2,S"), "1700000000.M1P2.host,S=10");
        assert_eq!(uidl_of(b"1700000000.M1P2.host,S=10:2,RS"), uidl_of(b"1700000000.M1P2.host,S=10"));
    }

    #[test]
    fn long_or_odd_names_are_hashed() {
        let long = "1".repeat(71);
        let uidl = uidl_of(long.as_bytes());
        assert_eq!(uidl.len(), 32);
        assert_eq!(uidl, uidl_of(format!("{long}:2,S").as_bytes()));
        assert_eq!(uidl_of(b"with space").len(), 32);
        assert_eq!(uidl_of("caf\u{e9}".as_bytes()).len(), 32);
    }

    proptest! {
        #[test]
        fn always_valid(name in proptest::collection::vec(any::<u8>(), 0..200)) {
            let u = uidl_of(&name);
            prop_assert!((1..=MAX_UIDL_LEN).contains(&u.len()));
            prop_assert!(u.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
