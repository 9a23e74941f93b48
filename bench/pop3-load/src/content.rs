//! Deterministic message content: every message names itself in its Message-ID, so the
//! expected bytes can be regenerated from the message alone plus the run's seed.
//!
//! Files use LF line endings; some body lines start with '.', some are just "." or "..",
//! so dot-stuffing is exercised on every message. The CRLF variant (`populate --line-ends
//! crlf`) has CRLF line endings and no line starting with '.': a file already in wire form,
//! which a server may send as it is; its Message-ID domain says so.

/// The domain part of every generated Message-ID.
pub const ID_DOMAIN: &str = "pop3-load";
/// The domain part of the Message-ID of a CRLF message.
pub const CRLF_ID_DOMAIN: &str = "crlf.pop3-load";

/// Which message a Message-ID names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// The mailbox owner.
    pub user: String,
    /// The message number within the run (populate: 1..=M; delete-churn: the delivery sequence).
    pub index: u64,
    /// The requested file size in bytes.
    pub size: usize,
    /// CRLF line endings and no line starting with '.' (else LF, with dot lines).
    pub crlf: bool,
}

impl MessageKey {
    /// `<user.index.size.seed@pop3-load>` (`@crlf.pop3-load` for a CRLF message)
    pub fn message_id(&self, seed: u64) -> String {
        let domain = if self.crlf { CRLF_ID_DOMAIN } else { ID_DOMAIN };
        format!("<{}.{}.{}.{seed}@{domain}>", self.user, self.index, self.size)
    }
}

/// SplitMix64: tiny, fast and good enough for filler text.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// FNV-1a, to mix the user name into the per-message seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_=+/()!?'";

/// The file content of the message `key` in the run `seed`: headers, then filler lines until
/// the file is exactly `key.size` bytes (or the headers alone, when they are longer; a CRLF
/// message may be one byte longer).
pub fn message(seed: u64, key: &MessageKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.size.max(256));
    let nl: &[u8] = if key.crlf { b"\r\n" } else { b"\n" };
    let headers = format!(
        "From: load@{ID_DOMAIN}\nTo: {}@{ID_DOMAIN}\nSubject: load message {}\nMessage-ID: {}\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\n\n",
        key.user,
        key.index,
        key.message_id(seed)
    );
    for line in headers.split_inclusive('\n') {
        out.extend_from_slice(line.trim_end_matches('\n').as_bytes());
        out.extend_from_slice(nl);
    }
    let mut rng = Rng::new(seed ^ fnv1a(key.user.as_bytes()) ^ key.index.wrapping_mul(0x2545_F491_4F6C_DD1D));
    while out.len() < key.size {
        let remaining = key.size - out.len();
        // The last line takes exactly what is left (its newline included).
        let len = if remaining <= 80 { remaining.saturating_sub(nl.len()) } else { rng.below(79) as usize };
        // A CRLF message has no dot lines: it is meant to need no rewriting.
        let kind = rng.below(16);
        let line_start = out.len();
        match if key.crlf { 15 } else { kind } {
            0 => out.extend_from_slice(&b"..."[..len.min(1)]), // a lone "." (or empty)
            1 => out.extend_from_slice(&b".."[..len.min(2)]),
            2 | 3 => {
                if len > 0 {
                    out.push(b'.');
                }
                fill(&mut out, &mut rng, len.saturating_sub(1));
            }
            _ => fill(&mut out, &mut rng, len),
        }
        // The special lines may be shorter than `len`: only the last line must be exact.
        if remaining <= 80 {
            let written_line = out.len() - (key.size - remaining);
            fill(&mut out, &mut rng, len - written_line);
        }
        // Filler may start a line with '.' too: not in a CRLF message.
        if key.crlf && out.get(line_start) == Some(&b'.') {
            out[line_start] = b'_';
        }
        out.extend_from_slice(nl);
    }
    out
}

/// `n` filler characters, eight per random number (the verifier regenerates every message,
/// so this is on the client's hot path).
fn fill(out: &mut Vec<u8>, rng: &mut Rng, n: usize) {
    let mut left = n;
    while left > 0 {
        let mut x = rng.next_u64();
        let take = left.min(8);
        for _ in 0..take {
            out.push(ALPHABET[(x & 0xff) as usize % ALPHABET.len()]);
            x >>= 8;
        }
        left -= take;
    }
}

/// The size POP3 transmits for an LF file: every bare LF counts as CRLF, plus a final CRLF
/// when the file does not end in a newline.
pub fn crlf_size(file: &[u8]) -> u64 {
    let mut size = file.len() as u64;
    let mut prev = 0u8;
    for &b in file {
        if b == b'\n' && prev != b'\r' {
            size += 1;
        }
        prev = b;
    }
    if !file.is_empty() && !file.ends_with(b"\n") {
        size += 2;
    }
    size
}

/// Find the Message-ID header in the header block (LF or CRLF endings) and parse it.
pub fn parse_message_id(message: &[u8], seed: u64) -> Option<MessageKey> {
    let header_end = memchr::memmem::find(message, b"\n\n")
        .or_else(|| memchr::memmem::find(message, b"\r\n\r\n"))
        .unwrap_or(message.len());
    let headers = &message[..header_end];
    let line = headers.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"Message-ID: "))?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let inner = line.strip_prefix('<')?;
    let (inner, crlf) = match inner.strip_suffix(&format!("@{CRLF_ID_DOMAIN}>")) {
        Some(inner) => (inner, true),
        None => (inner.strip_suffix(&format!("@{ID_DOMAIN}>"))?, false),
    };
    // user may contain dots: split the three numbers off the right.
    let mut parts = inner.rsplitn(4, '.');
    let run_seed: u64 = parts.next()?.parse().ok()?;
    let size: usize = parts.next()?.parse().ok()?;
    let index: u64 = parts.next()?.parse().ok()?;
    let user = parts.next()?.to_owned();
    (run_seed == seed && !user.is_empty()).then_some(MessageKey { user, index, size, crlf })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: usize) -> MessageKey {
        MessageKey { user: "user.7".into(), index: 42, size, crlf: false }
    }

    #[test]
    fn crlf_messages_are_in_wire_form() {
        for size in [300, 301, 1000, 65536] {
            let k = MessageKey { crlf: true, ..key(size) };
            let m = message(5, &k);
            assert!(m.len() == size || m.len() == size + 1, "size {size}: {}", m.len());
            assert_eq!(crlf_size(&m), m.len() as u64, "every LF after a CR");
            assert!(m.ends_with(b"\r\n"));
            assert!(!m.starts_with(b".") && !m.windows(2).any(|w| w == b"\n."), "no dot lines");
            assert_eq!(parse_message_id(&m, 5), Some(k));
        }
    }

    #[test]
    fn exact_size_deterministic_and_dotted() {
        for size in [0, 10, 300, 301, 1000, 4096, 100_000] {
            let a = message(9, &key(size));
            assert_eq!(a, message(9, &key(size)));
            assert!(a.len() >= size.min(a.len()));
            if size > 250 {
                assert_eq!(a.len(), size, "size {size}");
            }
            assert!(a.ends_with(b"\n"));
            assert!(!a.contains(&b'\r'));
        }
        let big = message(9, &key(100_000));
        assert!(big.windows(2).any(|w| w == b"\n."), "some lines start with a dot");
        assert!(big.windows(3).any(|w| w == b"\n.\n"), "a lone dot line");
        assert_ne!(message(9, &key(5000)), message(10, &key(5000)));
    }

    #[test]
    fn message_id_round_trips() {
        let m = message(77, &key(2000));
        assert_eq!(parse_message_id(&m, 77), Some(key(2000)));
        assert_eq!(parse_message_id(&m, 78), None, "another run's message");
        assert_eq!(parse_message_id(b"Subject: x\n\nMessage-ID: <a.1.2.77@pop3-load>\n", 77), None);
    }

    #[test]
    fn crlf_size_counts_bare_lf() {
        assert_eq!(crlf_size(b"a\nb\n"), 6);
        assert_eq!(crlf_size(b"a\r\nb"), 6);
        assert_eq!(crlf_size(b""), 0);
    }
}
