//! SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, from a server-known plaintext secret.
//!
//! No channel binding (we do not advertise the -PLUS variant), so the GS2 header must be
//! `n,,` or `y,,` (an authzid equal to the user is tolerated).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Secrets, Step};
use crate::i18n::Key;

/// PBKDF2 rounds announced to clients (RFC 7677's minimum).
pub const ITERATIONS: u32 = 4096;
const DUMMY_SECRET: &str = "apopd dummy secret";

/// Where the exchange is.
#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for client-first.
    Start,
    /// server-first sent; waiting for client-final.
    Sent { user: String, secret: Option<String>, client_first_bare: String, server_first: String, nonce: String },
    /// server-final sent; waiting for the empty acknowledgement.
    Verified { user: String },
    /// Nothing more is accepted.
    Done,
}

/// One SCRAM-SHA-256 exchange.
#[derive(Debug, Clone)]
pub struct Scram {
    server_nonce: String,
    salt: Vec<u8>,
    phase: Phase,
}

/// 24 random bytes, base64: the server's part of the nonce.
pub fn random_nonce() -> String {
    let mut bytes = [0u8; 24];
    // An RNG failure leaves zeros; the nonce is still combined with the client's.
    let _ = getrandom::fill(&mut bytes);
    BASE64.encode(bytes)
}

/// 16 random bytes of salt.
pub fn random_salt() -> Vec<u8> {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    bytes.to_vec()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `=2C` and `=3D` unescaping of a SCRAM user name; `None` for any other `=` sequence.
fn unescape_name(name: &str) -> Option<String> {
    let rest = name.replace("=2C", "").replace("=3D", "");
    (!rest.contains('=')).then(|| name.replace("=2C", ",").replace("=3D", "="))
}

impl Scram {
    /// A new exchange with this server nonce and salt (random in production, fixed in tests).
    pub fn new(server_nonce: String, salt: Vec<u8>) -> Self {
        Scram { server_nonce, salt, phase: Phase::Start }
    }

    /// Feed the next client message.
    pub fn step(&mut self, response: &[u8], secrets: &dyn Secrets) -> Step {
        let Ok(text) = std::str::from_utf8(response) else { return Step::Malformed(Key::ScramNotUtf8) };
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start => self.client_first(text, secrets),
            Phase::Sent { user, secret, client_first_bare, server_first, nonce } => {
                self.client_final(text, user, secret, &client_first_bare, &server_first, &nonce)
            }
            Phase::Verified { user } if text.is_empty() => Step::Authenticated { user },
            Phase::Verified { .. } => Step::Malformed(Key::ScramExpectedEmpty),
            Phase::Done => Step::Malformed(Key::SaslFinished),
        }
    }

    fn client_first(&mut self, text: &str, secrets: &dyn Secrets) -> Step {
        let mut header = text.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (header.next(), header.next(), header.next()) else {
            return Step::Malformed(Key::ScramBadFirst);
        };
        if cbind != "n" && cbind != "y" {
            return Step::Malformed(Key::ScramChannelBinding);
        }
        let mut attrs = bare.split(',');
        let (Some(name), Some(client_nonce)) =
            (attrs.next().and_then(|a| a.strip_prefix("n=")), attrs.next().and_then(|a| a.strip_prefix("r=")))
        else {
            return Step::Malformed(Key::ScramFirstFields);
        };
        let Some(user) = unescape_name(name) else { return Step::Malformed(Key::ScramBadName) };
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Step::Malformed(Key::ScramBadNonce);
        }
        if !authzid.is_empty() && authzid.strip_prefix("a=").and_then(unescape_name).as_deref() != Some(user.as_str()) {
            return Step::Failed { user: Some(user) };
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", BASE64.encode(&self.salt));
        let challenge = server_first.clone().into_bytes();
        self.phase = Phase::Sent {
            secret: secrets.secret_of(&user),
            user,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Step::Challenge(challenge)
    }

    fn client_final(
        &mut self,
        text: &str,
        user: String,
        secret: Option<String>,
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
    ) -> Step {
        let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
            return Step::Malformed(Key::ScramFinalProof);
        };
        let mut attrs = without_proof.split(',');
        let (Some(cbind), Some(final_nonce)) =
            (attrs.next().and_then(|a| a.strip_prefix("c=")), attrs.next().and_then(|a| a.strip_prefix("r=")))
        else {
            return Step::Malformed(Key::ScramFinalFields);
        };
        let Ok(cbind) = BASE64.decode(cbind) else { return Step::Malformed(Key::ScramBadCbind) };
        if !(cbind.starts_with(b"n,") || cbind.starts_with(b"y,")) || final_nonce != nonce {
            return Step::Failed { user: Some(user) };
        }
        let Ok(proof) = BASE64.decode(proof) else { return Step::Malformed(Key::ScramBadProof) };

        let password = secret.as_deref().unwrap_or(DUMMY_SECRET);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &self.salt, ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        if proof.len() != 32 {
            return Step::Failed { user: Some(user) };
        }
        let recovered: Vec<u8> = proof.iter().zip(client_signature).map(|(p, s)| p ^ s).collect();
        let valid = bool::from(Sha256::digest(&recovered).as_slice().ct_eq(stored_key.as_slice()));
        if !(valid && secret.is_some()) {
            return Step::Failed { user: Some(user) };
        }
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        self.phase = Phase::Verified { user };
        Step::Challenge(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixed;
    use super::*;

    /// RFC 7677 §3.
    #[test]
    fn rfc7677_vector() {
        let secrets = Fixed("user", "pencil");
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut scram = Scram::new("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(), salt);
        let first = scram.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &secrets);
        assert_eq!(
            first,
            Step::Challenge(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_vec()
            )
        );
        let last = scram.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &secrets,
        );
        assert_eq!(last, Step::Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()));
        assert_eq!(scram.step(b"", &secrets), Step::Authenticated { user: "user".into() });
    }

    #[test]
    fn wrong_proof_and_unknown_user_fail_alike() {
        for (user, secret) in [("user", "pencil"), ("user", "crayon")] {
            let secrets = Fixed(user, secret);
            let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
            let mut scram = Scram::new("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(), salt);
            let _ = scram.step(b"n,,n=other,r=rOprNGfwEbeRWgbNEkqO", &secrets);
            let last = scram.step(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                &secrets,
            );
            assert_eq!(last, Step::Failed { user: Some("other".into()) });
        }
    }

    #[test]
    fn malformed_messages() {
        let secrets = Fixed("user", "pencil");
        for bad in [&b"p=tls-unique,,n=user,r=x"[..], b"n,,r=x", b"garbage", b"n,,n=user,r="] {
            let mut scram = Scram::new("s".into(), vec![1, 2, 3]);
            assert!(matches!(scram.step(bad, &secrets), Step::Malformed(_)), "{bad:?}");
        }
        let mut scram = Scram::new("s".into(), vec![1, 2, 3]);
        let _ = scram.step(b"n,,n=user,r=abc", &secrets);
        assert_eq!(scram.step(b"c=biws,r=abcWRONG,p=AAAA", &secrets), Step::Failed { user: Some("user".into()) });
    }
}
