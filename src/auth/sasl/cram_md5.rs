//! CRAM-MD5 (RFC 2195): the client answers `user HMAC-MD5(secret, challenge)` in hex.

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use subtle::ConstantTimeEq;

use super::{Secrets, Step};
use crate::i18n::Key;

/// Stands in for unknown users so they cost the same work.
const DUMMY_SECRET: &str = "apopd dummy secret";

/// A CRAM-MD5 exchange after the challenge was sent.
#[derive(Debug, Clone)]
pub struct CramMd5 {
    challenge: String,
}

impl CramMd5 {
    /// An exchange with this unique `<…@host>` challenge.
    pub fn new(challenge: String) -> Self {
        CramMd5 { challenge }
    }

    /// The challenge to send.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// Check the client's `user digest` answer.
    pub fn finish(&self, response: &[u8], secrets: &dyn Secrets) -> Step {
        let Ok(text) = std::str::from_utf8(response) else { return Step::Malformed(Key::SaslNotText) };
        let Some((user, digest)) = text.rsplit_once(' ') else {
            return Step::Malformed(Key::CramArguments);
        };
        let secret = secrets.secret_of(user);
        let key = secret.as_deref().unwrap_or(DUMMY_SECRET);
        let Ok(mut mac) = <Hmac<Md5> as KeyInit>::new_from_slice(key.as_bytes()) else {
            return Step::Malformed(Key::SaslInternal);
        };
        mac.update(self.challenge.as_bytes());
        let expected = mac.finalize().into_bytes();
        let mut given = [0u8; 16];
        let matches = match base16ct::mixed::decode(digest.as_bytes(), &mut given) {
            Ok(decoded) if decoded.len() == 16 => bool::from(expected.as_slice().ct_eq(&given)),
            _ => false,
        };
        if matches && secret.is_some() {
            Step::Authenticated { user: user.to_owned() }
        } else {
            Step::Failed { user: Some(user.to_owned()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixed;
    use super::*;

    #[test]
    fn rfc2195_vector() {
        let cram = CramMd5::new("<1896.697170952@postoffice.reston.mci.net>".into());
        let secrets = Fixed("tim", "tanstaaftanstaaf");
        assert_eq!(
            cram.finish(b"tim b913a602c7eda7a495b4e6e7334d3890", &secrets),
            Step::Authenticated { user: "tim".into() }
        );
        assert_eq!(
            cram.finish(b"tim b913a602c7eda7a495b4e6e7334d3891", &secrets),
            Step::Failed { user: Some("tim".into()) }
        );
        assert_eq!(
            cram.finish(b"tom b913a602c7eda7a495b4e6e7334d3890", &secrets),
            Step::Failed { user: Some("tom".into()) }
        );
        assert!(matches!(cram.finish(b"nospace", &secrets), Step::Malformed(_)));
    }
}
