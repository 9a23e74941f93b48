//! Maildir flags in file names, as a POP3 session changes them beside an IMAP server.
//!
//! A name is `<base>[:2,<flags>]`, the flags in ASCII order: `D F P R S T` and Dovecot's
//! keyword letters `a`–`z`. A POP3 session (like Dovecot's pop3 and Courier's pop3d) moves the
//! messages it lists from `new/` to `cur/`, adding an empty `:2,` info part, and marks the
//! ones RETR sent as seen (`S`) at QUIT. Every other flag and keyword is kept; the base name,
//! hence the UIDL, never changes. An info part other than `2,…` is left alone.

/// The name a message in `new/` takes in `cur/`: `:2,` added when it has no info part.
pub fn cur_name(name: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    if memchr::memchr(b':', name).is_none() {
        out.extend_from_slice(b":2,");
    }
    out
}

/// The name with the seen flag `S` added in its ASCII place, or `None` when it already has it
/// or carries an info part apopd does not know.
pub fn seen_name(name: &[u8]) -> Option<Vec<u8>> {
    let colon = memchr::memrchr(b':', name);
    let (base, flags) = match colon {
        None => (name, &b""[..]),
        Some(i) => (&name[..i], name[i + 1..].strip_prefix(b"2,")?),
    };
    // Dovecot keeps a second `,`-separated flag set as it is; the first one is sorted.
    let end = memchr::memchr(b',', flags).unwrap_or(flags.len());
    let (sorted, rest) = flags.split_at(end);
    if sorted.contains(&b'S') {
        return None;
    }
    let at = sorted.iter().position(|&f| f > b'S').unwrap_or(sorted.len());
    let mut out = Vec::with_capacity(name.len() + 4);
    out.extend_from_slice(base);
    out.extend_from_slice(b":2,");
    out.extend_from_slice(&sorted[..at]);
    out.push(b'S');
    out.extend_from_slice(&sorted[at..]);
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_to_cur_adds_an_empty_info_part_once() {
        assert_eq!(cur_name(b"1.a.host,S=5"), b"1.a.host,S=5:2,");
        assert_eq!(cur_name(b"1.a.host:2,F"), b"1.a.host:2,F");
    }

    #[test]
    fn seen_keeps_every_other_flag_and_keyword_in_order() {
        let seen = |n: &[u8]| seen_name(n).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(seen(b"1.a").as_deref(), Some("1.a:2,S"));
        assert_eq!(seen(b"1.a:2,").as_deref(), Some("1.a:2,S"));
        assert_eq!(seen(b"1.a:2,DFR").as_deref(), Some("1.a:2,DFRS"));
        assert_eq!(seen(b"1.a:2,FTab").as_deref(), Some("1.a:2,FSTab"));
        assert_eq!(seen(b"1.a:2,ac").as_deref(), Some("1.a:2,Sac"));
        assert_eq!(seen(b"1.a,S=5:2,RS"), None, "already seen");
        assert_eq!(seen(b"1.a:1,experimental"), None, "unknown info");
    }
}
