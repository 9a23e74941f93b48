//! APOP (RFC 1939 §7): greeting timestamps and digest checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// The hex MD5 of `timestamp` (angle brackets included) followed by `secret`, in lowercase:
/// what `printf '%s%s' '<ts>' secret | md5sum` prints.
pub fn digest(timestamp: &str, secret: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret);
    base16ct::lower::encode_string(&md5.finalize())
}

/// True when the client's `answer` (32 hex digits, either case) is the digest of `timestamp`
/// and `secret`; compared in constant time.
pub fn verify(timestamp: &str, secret: &[u8], answer: &str) -> bool {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret);
    let expected = md5.finalize();
    let mut given = [0u8; 16];
    match base16ct::mixed::decode(answer.as_bytes(), &mut given) {
        Ok(decoded) if decoded.len() == 16 => bool::from(expected.as_slice().ct_eq(&given)),
        _ => false,
    }
}

/// Makes the unique per-connection timestamps of the greeting.
#[derive(Debug)]
pub struct TimestampMaker {
    host: String,
    counter: AtomicU64,
}

impl TimestampMaker {
    /// A maker for `hostname`, reduced to the characters every client accepts.
    pub fn new(hostname: &str) -> Self {
        let host: String =
            hostname.chars().filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).take(64).collect();
        let host = if host.is_empty() { "localhost".to_owned() } else { host };
        TimestampMaker { host, counter: AtomicU64::new(0) }
    }

    /// A fresh `<pid.counter.nanos@host>`: unique per connection and per process.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("<{}.{n}.{nanos}@{}>", std::process::id(), self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_TS: &str = "<1896.697170952@dbc.mtview.ca.us>";

    #[test]
    fn rfc1939_vector() {
        assert_eq!(digest(RFC_TS, b"tanstaaf"), "c4c9334bac560ecc979e58001b3e22fb");
        assert!(verify(RFC_TS, b"tanstaaf", "c4c9334bac560ecc979e58001b3e22fb"));
        assert!(verify(RFC_TS, b"tanstaaf", "C4C9334BAC560ECC979E58001B3E22FB"));
        assert!(!verify(RFC_TS, b"tanstaaF", "c4c9334bac560ecc979e58001b3e22fb"));
        assert!(!verify(RFC_TS, b"tanstaaf", "c4c9334bac560ecc979e58001b3e22f"));
        assert!(!verify(RFC_TS, b"tanstaaf", "zzc9334bac560ecc979e58001b3e22fb"));
        assert!(!verify(RFC_TS, b"tanstaaf", ""));
    }

    #[test]
    fn timestamps_are_unique_and_clean() {
        let maker = TimestampMaker::new("mail host=1.example");
        let a = maker.next();
        let b = maker.next();
        assert_ne!(a, b);
        for ts in [a, b] {
            let inner = ts.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap();
            assert!(inner.contains('@'));
            assert!(inner.chars().all(|c| c.is_ascii_alphanumeric() || "._@+/-".contains(c)), "{ts}");
        }
    }
}
