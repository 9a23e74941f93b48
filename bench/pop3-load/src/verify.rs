//! Checking what a server sent: multi-line decoding (dot-unstuffing), CRLF → LF, and the
//! comparison against the regenerated message and the LIST size.

use std::fmt;

use crate::content::{self, MessageKey};

/// Why a retrieved message is not what was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The multi-line response broke the protocol (no terminator, bare LF, …).
    Framing(String),
    /// The decoded length differs from what LIST announced.
    ListSize { listed: u64, received: u64 },
    /// No usable Message-ID: the message is not one of this run's.
    Unknown,
    /// The bytes differ from the regenerated message.
    Content { key: MessageKey, offset: usize, expected_len: usize, received_len: usize },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Framing(why) => write!(f, "framing: {why}"),
            Mismatch::ListSize { listed, received } => {
                write!(f, "LIST said {listed} octets, RETR delivered {received}")
            }
            Mismatch::Unknown => write!(f, "no Message-ID of this run"),
            Mismatch::Content { key, offset, expected_len, received_len } => write!(
                f,
                "{}#{}: first difference at byte {offset} (expected {expected_len} bytes, got {received_len})",
                key.user, key.index
            ),
        }
    }
}

/// Decode the body of a multi-line response: `raw` is everything after the status line's
/// CRLF up to and including the terminating ".\r\n". Returns the message with CRLF line
/// endings, dot-stuffing removed.
pub fn unstuff(raw: &[u8]) -> Result<Vec<u8>, Mismatch> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    loop {
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            return Err(Mismatch::Framing(if rest.is_empty() {
                "no terminating \".\" line".into()
            } else {
                "last line has no line ending".into()
            }));
        };
        let line = &rest[..=nl];
        rest = &rest[nl + 1..];
        if !line.ends_with(b"\r\n") {
            return Err(Mismatch::Framing(format!("bare LF at byte {}", raw.len() - rest.len() - 1)));
        }
        if line == b".\r\n" {
            if !rest.is_empty() {
                return Err(Mismatch::Framing(format!("{} bytes after the terminator", rest.len())));
            }
            return Ok(out);
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
}

/// CRLF → LF, as the maildir file has it. `crlf` must consist of CRLF-terminated lines.
pub fn crlf_to_lf(crlf: &[u8]) -> Result<Vec<u8>, Mismatch> {
    let mut out = Vec::with_capacity(crlf.len());
    let mut rest = crlf;
    while let Some(nl) = memchr::memchr(b'\n', rest) {
        if nl == 0 || rest[nl - 1] != b'\r' {
            return Err(Mismatch::Framing("bare LF in the decoded message".into()));
        }
        out.extend_from_slice(&rest[..nl - 1]);
        out.push(b'\n');
        rest = &rest[nl + 1..];
    }
    if !rest.is_empty() {
        return Err(Mismatch::Framing("message does not end with CRLF".into()));
    }
    Ok(out)
}

/// The index of the first differing byte, or None when equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

/// Check one RETR: the raw multi-line body, the size LIST gave for it, the run's seed.
/// Returns which message it was.
pub fn check_retr(raw: &[u8], listed: u64, seed: u64) -> Result<MessageKey, Mismatch> {
    let decoded = unstuff(raw)?;
    if decoded.len() as u64 != listed {
        return Err(Mismatch::ListSize { listed, received: decoded.len() as u64 });
    }
    let key = content::parse_message_id(&decoded, seed).ok_or(Mismatch::Unknown)?;
    // A CRLF message's file is what the client receives; an LF one's has the CRs removed.
    let file = if key.crlf { decoded } else { crlf_to_lf(&decoded)? };
    let expected = content::message(seed, &key);
    if content::crlf_size(&expected) != listed {
        return Err(Mismatch::ListSize { listed, received: content::crlf_size(&expected) });
    }
    match first_difference(&expected, &file) {
        None => Ok(key),
        Some(offset) => Err(Mismatch::Content { key, offset, expected_len: expected.len(), received_len: file.len() }),
    }
}

/// Encode a file the way a correct server sends it: LF → CRLF, dot-stuffing, terminator.
/// The reference for what `unstuff` undoes; used by the tests.
#[cfg(test)]
pub fn stuff(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() + file.len() / 8 + 8);
    for line in file.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{MessageKey, message};

    const SEED: u64 = 1234;

    fn sample() -> (Vec<u8>, u64) {
        let file = message(SEED, &MessageKey { user: "user1".into(), index: 3, size: 5000, crlf: false });
        let size = content::crlf_size(&file);
        (file, size)
    }

    #[test]
    fn unstuff_removes_one_leading_dot_and_needs_the_terminator() {
        assert_eq!(unstuff(b"a\r\n..b\r\n.c\r\n.\r\n").unwrap(), b"a\r\n.b\r\nc\r\n");
        assert_eq!(unstuff(b".\r\n").unwrap(), b"");
        assert_eq!(unstuff(b"...\r\n.\r\n").unwrap(), b"..\r\n");
        assert!(matches!(unstuff(b"a\r\nb\r\n"), Err(Mismatch::Framing(_))));
        assert!(matches!(unstuff(b"a\nb\r\n.\r\n"), Err(Mismatch::Framing(_))));
        assert!(matches!(unstuff(b"a\r\n.\r\nextra"), Err(Mismatch::Framing(_))));
        assert!(matches!(unstuff(b"a\r\n.\r"), Err(Mismatch::Framing(_))));
    }

    #[test]
    fn crlf_to_lf_rejects_bare_lf() {
        assert_eq!(crlf_to_lf(b"a\r\n\r\nb\r\n").unwrap(), b"a\n\nb\n");
        assert!(crlf_to_lf(b"a\nb\r\n").is_err());
        assert!(crlf_to_lf(b"a\r\nb").is_err());
    }

    #[test]
    fn stuff_then_unstuff_is_identity_in_crlf() {
        let (file, size) = sample();
        let wire = stuff(&file);
        let decoded = unstuff(&wire).unwrap();
        assert_eq!(decoded.len() as u64, size);
        assert_eq!(crlf_to_lf(&decoded).unwrap(), file);
    }

    #[test]
    fn a_correct_message_passes() {
        let (file, size) = sample();
        let key = check_retr(&stuff(&file), size, SEED).unwrap();
        assert_eq!(key.index, 3);
    }

    #[test]
    fn one_changed_byte_is_detected() {
        let (file, size) = sample();
        let mut wire = stuff(&file);
        let at = wire.len() / 2;
        // Change a filler character into another one, keeping the framing intact.
        let pos = (at..wire.len()).find(|&i| wire[i].is_ascii_alphanumeric()).unwrap();
        wire[pos] = if wire[pos] == b'x' { b'y' } else { b'x' };
        match check_retr(&wire, size, SEED) {
            Err(Mismatch::Content { offset, .. }) => assert!(offset > 0),
            other => panic!("not detected: {other:?}"),
        }
    }

    #[test]
    fn a_missing_dot_stuffing_is_detected() {
        let (file, size) = sample();
        // A server that forgot to stuff: lines starting with '.' go out as they are.
        let mut wire = Vec::new();
        for line in file.split_inclusive(|&b| b == b'\n') {
            wire.extend_from_slice(&line[..line.len() - 1]);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        assert!(file.windows(2).any(|w| w == b"\n."), "the sample has dot lines");
        assert!(check_retr(&wire, size, SEED).is_err());
    }

    #[test]
    fn a_missing_unstuffing_is_detected() {
        let (file, size) = sample();
        let wire = stuff(&file);
        // A decoder that forgot to remove the stuffed dots sees more bytes than LIST announced…
        let literal = &wire[..wire.len() - 3];
        assert_ne!(literal.len() as u64, size);
        // …and content that differs from the file.
        assert!(first_difference(&crlf_to_lf(literal).unwrap(), &file).is_some());
        // A server that stuffs twice leaves a dot after one unstuffing: caught.
        let twice = stuff(&crlf_to_lf(literal).unwrap());
        assert!(check_retr(&twice, size, SEED).is_err());
    }

    #[test]
    fn a_truncated_body_is_detected() {
        let (file, size) = sample();
        let mut truncated = file[..file.len() / 2].to_vec();
        truncated.push(b'\n');
        let wire = stuff(&truncated);
        assert!(matches!(check_retr(&wire, size, SEED), Err(Mismatch::ListSize { .. })));
        // Truncated and the LIST size truncated with it: still caught by the content check.
        let short = content::crlf_size(&truncated);
        assert!(matches!(check_retr(&wire, short, SEED), Err(Mismatch::ListSize { .. } | Mismatch::Content { .. })));
        // Cut off in the middle of the stream: no terminator.
        let full = stuff(&file);
        assert!(matches!(check_retr(&full[..full.len() / 2], size, SEED), Err(Mismatch::Framing(_))));
    }

    #[test]
    fn a_disagreeing_list_size_is_detected() {
        let (file, size) = sample();
        let wire = stuff(&file);
        assert_eq!(check_retr(&wire, size + 1, SEED), Err(Mismatch::ListSize { listed: size + 1, received: size }));
        assert!(check_retr(&wire, size - 1, SEED).is_err());
    }

    #[test]
    fn a_crlf_message_is_checked_byte_for_byte() {
        let file = message(SEED, &MessageKey { user: "user1".into(), index: 4, size: 5000, crlf: true });
        let size = file.len() as u64;
        let wire = [&file[..], b".\r\n"].concat();
        assert_eq!(check_retr(&wire, size, SEED).map(|k| k.crlf), Ok(true));
        let mut changed = wire.clone();
        let pos = (changed.len() / 2..changed.len()).find(|&i| changed[i].is_ascii_alphanumeric()).unwrap();
        changed[pos] = if changed[pos] == b'x' { b'y' } else { b'x' };
        assert!(matches!(check_retr(&changed, size, SEED), Err(Mismatch::Content { .. })));
    }

    #[test]
    fn a_foreign_message_is_unknown() {
        let file = b"Subject: hi\n\nbody\n";
        let wire = stuff(file);
        assert_eq!(check_retr(&wire, content::crlf_size(file), SEED), Err(Mismatch::Unknown));
    }
}
