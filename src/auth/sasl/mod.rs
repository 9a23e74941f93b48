//! SASL for POP3 AUTH (RFC 5034): PLAIN, LOGIN, CRAM-MD5 and SCRAM-SHA-256.
//!
//! Pure state machines: the session feeds decoded client responses in and sends out what
//! [`Step`] says. PLAIN and LOGIN carry a password, checked against the argon2 hash like
//! USER/PASS; CRAM-MD5 and SCRAM-SHA-256 prove knowledge of the server-known secret (the
//! APOP secret) without sending it.

mod cram_md5;
mod scram;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::i18n::Key;

/// Longest client response line we read during an exchange (base64 included).
pub const MAX_RESPONSE_LINE: usize = 2048;

/// A SASL mechanism we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mechanism {
    /// RFC 4616.
    #[serde(rename = "PLAIN")]
    Plain,
    /// The de-facto LOGIN mechanism (Outlook and older clients).
    #[serde(rename = "LOGIN")]
    Login,
    /// RFC 2195.
    #[serde(rename = "CRAM-MD5")]
    CramMd5,
    /// RFC 7677.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
}

impl Mechanism {
    /// All of them, in the order CAPA lists them.
    pub const ALL: [Mechanism; 4] = [Mechanism::ScramSha256, Mechanism::CramMd5, Mechanism::Plain, Mechanism::Login];

    /// The mechanism with this (case-insensitive) name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// True when the mechanism checks the server-known (APOP) secret rather than the password.
    pub fn needs_secret(self) -> bool {
        !self.sends_password()
    }

    /// True when the password itself crosses the wire (refused on unencrypted connections).
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

/// What the session must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `+ <base64 of this>` and feed the client's next line to [`Exchange::step`].
    Challenge(Vec<u8>),
    /// Check `password` against `user`'s hash (PLAIN, LOGIN).
    CheckPassword { user: String, password: Vec<u8> },
    /// The client proved it knows `user`'s secret (CRAM-MD5, SCRAM).
    Authenticated { user: String },
    /// Wrong credentials (for the log: the claimed user, if any).
    Failed { user: Option<String> },
    /// The client broke the protocol; the text is for `-ERR`.
    Malformed(Key),
}

/// One AUTH exchange in progress.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// Waiting for `authzid NUL authcid NUL password`.
    Plain,
    /// Waiting for the user name, then the password.
    Login { user: Option<String> },
    /// Waiting for `user hex-digest`.
    CramMd5(cram_md5::CramMd5),
    /// Waiting for client-first, client-final, then the empty acknowledgement.
    Scram(scram::Scram),
}

/// Where the exchange looks up server-known secrets (the APOP secrets).
pub trait Secrets {
    /// The plaintext secret of `user`, if they have one.
    fn secret_of(&self, user: &str) -> Option<String>;
}

impl Exchange {
    /// Begin `mechanism`; `challenge_id` is a unique `<…@host>` string for CRAM-MD5.
    /// Returns the exchange and its first step (which may consume `initial`, the decoded
    /// initial response of `AUTH mech initial`).
    pub fn start(
        mechanism: Mechanism,
        initial: Option<Vec<u8>>,
        challenge_id: String,
        secrets: &dyn Secrets,
    ) -> (Self, Step) {
        let mut exchange = match mechanism {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Login => Exchange::Login { user: None },
            Mechanism::CramMd5 => {
                if initial.is_some() {
                    return (Exchange::Plain, Step::Malformed(Key::CramNoInitial));
                }
                let cram = cram_md5::CramMd5::new(challenge_id);
                let challenge = cram.challenge().as_bytes().to_vec();
                return (Exchange::CramMd5(cram), Step::Challenge(challenge));
            }
            Mechanism::ScramSha256 => Exchange::Scram(scram::Scram::new(scram::random_nonce(), scram::random_salt())),
        };
        let step = match (initial, &exchange) {
            (Some(response), _) => exchange.step(&response, secrets),
            (None, Exchange::Login { .. }) => Step::Challenge(b"Username:".to_vec()),
            (None, _) => Step::Challenge(Vec::new()),
        };
        (exchange, step)
    }

    /// Feed the client's decoded response.
    pub fn step(&mut self, response: &[u8], secrets: &dyn Secrets) -> Step {
        match self {
            Exchange::Plain => plain(response),
            Exchange::Login { user: None } => match std::str::from_utf8(response) {
                Ok(name) if !name.is_empty() => {
                    *self = Exchange::Login { user: Some(name.to_owned()) };
                    Step::Challenge(b"Password:".to_vec())
                }
                _ => Step::Malformed(Key::SaslBadName),
            },
            Exchange::Login { user: Some(user) } => {
                Step::CheckPassword { user: std::mem::take(user), password: response.to_vec() }
            }
            Exchange::CramMd5(cram) => cram.finish(response, secrets),
            Exchange::Scram(scram) => scram.step(response, secrets),
        }
    }
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`; an authzid other than the authcid is refused.
fn plain(response: &[u8]) -> Step {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Malformed(Key::PlainFormat);
    };
    let Ok(user) = std::str::from_utf8(authcid) else { return Step::Malformed(Key::SaslNameNotUtf8) };
    if user.is_empty() || password.is_empty() {
        return Step::Malformed(Key::PlainEmpty);
    }
    if !authzid.is_empty() && authzid != authcid {
        // Acting as another user is a proxy feature we do not offer.
        return Step::Failed { user: Some(user.to_owned()) };
    }
    Step::CheckPassword { user: user.to_owned(), password: password.to_vec() }
}

/// Decode a client response line: base64, or `=` for an empty initial response.
pub fn decode_response(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(line).ok()
}

/// Encode a challenge for a `+ ` continuation line.
pub fn encode_challenge(challenge: &[u8]) -> String {
    BASE64.encode(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) struct Fixed(pub &'static str, pub &'static str);
    impl Secrets for Fixed {
        fn secret_of(&self, user: &str) -> Option<String> {
            (user == self.0).then(|| self.1.to_owned())
        }
    }

    #[test]
    fn plain_with_and_without_authzid() {
        let check = |user: &str, pw: &[u8]| Step::CheckPassword { user: user.into(), password: pw.to_vec() };
        assert_eq!(plain(b"\0tim\0tanstaaf"), check("tim", b"tanstaaf"));
        assert_eq!(plain(b"tim\0tim\0pass word"), check("tim", b"pass word"));
        assert_eq!(plain(b"root\0tim\0x"), Step::Failed { user: Some("tim".into()) });
        assert!(matches!(plain(b"tim\0x"), Step::Malformed(_)));
        assert!(matches!(plain(b"\0\0x"), Step::Malformed(_)));
        assert!(matches!(plain(b"a\0b\0c\0d"), Step::Malformed(_)));
    }

    #[test]
    fn login_asks_user_then_password() {
        let secrets = Fixed("x", "y");
        let (mut ex, step) = Exchange::start(Mechanism::Login, None, String::new(), &secrets);
        assert_eq!(step, Step::Challenge(b"Username:".to_vec()));
        assert_eq!(ex.step(b"alice", &secrets), Step::Challenge(b"Password:".to_vec()));
        assert_eq!(
            ex.step(b"secret", &secrets),
            Step::CheckPassword { user: "alice".into(), password: b"secret".to_vec() }
        );
    }

    #[test]
    fn plain_initial_response_is_used_at_once() {
        let (_, step) =
            Exchange::start(Mechanism::Plain, Some(b"\0bob\0builder".to_vec()), String::new(), &Fixed("", ""));
        assert_eq!(step, Step::CheckPassword { user: "bob".into(), password: b"builder".to_vec() });
        let (_, step) = Exchange::start(Mechanism::Plain, None, String::new(), &Fixed("", ""));
        assert_eq!(step, Step::Challenge(vec![]));
    }

    #[test]
    fn names_and_base64() {
        assert_eq!(Mechanism::from_name("cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
        assert_eq!(decode_response(b"="), Some(vec![]));
        assert_eq!(decode_response(b"AGJvYgBidWlsZGVy"), Some(b"\0bob\0builder".to_vec()));
        assert_eq!(decode_response(b"not base64!"), None);
    }
}
