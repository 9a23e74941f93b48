//! Password schemes: parse a stored password and verify a login against it.
//!
//! A stored password is either Dovecot's `{SCHEME}value` (the scheme name case-insensitive,
//! optionally with Dovecot's `.B64`/`.HEX` suffix saying how the value is encoded) or a bare
//! crypt(3) string told apart by its `$id$` (Dovecot's passwd-file default scheme CRYPT, and
//! what /etc/shadow holds). New hashes are always argon2id ([`password::hash`]); the others
//! exist so that users imported from Dovecot or /etc/shadow keep their passwords, and are
//! replaced by argon2id on their first login (`rehash_on_login`).
//!
//! Every slow scheme is verified by a maintained crate (argon2, bcrypt, sha-crypt, yescrypt)
//! and has its cost capped, so a hostile or mistaken file cannot make one login take minutes.
//! The fast ones (SSHA, PLAIN) compare in constant time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::password;

/// Highest bcrypt cost we run (2^15 rounds: a few seconds per login). Dovecot's default is 5.
pub const MAX_BCRYPT_COST: u32 = 15;
/// Most SHA-crypt rounds we run. The default, and Dovecot's, is 5,000.
pub const MAX_SHA_CRYPT_ROUNDS: u32 = 1_000_000;
/// Most memory (bytes, 128·N·r·p) one yescrypt verification may take. Debian's default is 16 MiB.
pub const MAX_YESCRYPT_BYTES: u64 = 256 * 1024 * 1024;
/// Highest yescrypt `t` (extra time factor) we run. Debian's default is 0.
pub const MAX_YESCRYPT_T: u32 = 8;

/// A password scheme apopd can verify, named as Dovecot names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    /// `{ARGON2ID}` / `$argon2id$`: what apopd writes.
    Argon2id,
    /// `{ARGON2I}` / `$argon2i$`.
    Argon2i,
    /// `$argon2d$` (libargon2; no Dovecot name).
    Argon2d,
    /// `{BLF-CRYPT}` / `$2y$`, `$2b$`, `$2a$`: bcrypt.
    BlfCrypt,
    /// `{SHA512-CRYPT}` / `$6$`.
    Sha512Crypt,
    /// `{SHA256-CRYPT}` / `$5$`.
    Sha256Crypt,
    /// `$y$`: yescrypt, /etc/shadow's default on Debian 11 and later.
    Yescrypt,
    /// `{SSHA512}`: base64(SHA-512(password ‖ salt) ‖ salt).
    Ssha512,
    /// `{SSHA256}`: base64(SHA-256(password ‖ salt) ‖ salt).
    Ssha256,
    /// `{PLAIN}`, `{CLEAR}`, `{CLEARTEXT}`: the password itself.
    Plain,
}

impl Scheme {
    /// Dovecot's name for it (yescrypt, which Dovecot lacks, as `YESCRYPT`).
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Argon2i => "ARGON2I",
            Scheme::Argon2d => "ARGON2D",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::Yescrypt => "YESCRYPT",
            Scheme::Ssha512 => "SSHA512",
            Scheme::Ssha256 => "SSHA256",
            Scheme::Plain => "PLAIN",
        }
    }

    /// What verifies it, for reports.
    pub fn verifier(self) -> &'static str {
        match self {
            Scheme::Argon2id | Scheme::Argon2i | Scheme::Argon2d => "argon2 crate",
            Scheme::BlfCrypt => "bcrypt crate",
            Scheme::Sha512Crypt | Scheme::Sha256Crypt => "sha-crypt crate",
            Scheme::Yescrypt => "yescrypt crate",
            Scheme::Ssha512 | Scheme::Ssha256 => "sha2 crate, constant-time compare",
            Scheme::Plain => "constant-time compare",
        }
    }

    /// True for the argon2 variants (what the unknown-user dummy costs).
    pub fn is_argon2(self) -> bool {
        matches!(self, Scheme::Argon2id | Scheme::Argon2i | Scheme::Argon2d)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a stored password cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// A scheme apopd does not verify, e.g. `{MD5-CRYPT}` or a `$1$` string.
    #[error("unknown scheme {name}")]
    Unknown {
        /// The scheme as written, with its braces (`{MD5-CRYPT}`), or the crypt id (`$1$ (MD5-CRYPT)`).
        name: String,
    },
    /// A known scheme whose value is malformed or too costly to run.
    #[error("{scheme}: {why}")]
    Invalid {
        /// The scheme.
        scheme: Scheme,
        /// What is wrong.
        why: String,
    },
}

fn invalid(scheme: Scheme, why: impl Into<String>) -> SchemeError {
    SchemeError::Invalid { scheme, why: why.into() }
}

/// A parsed, checked stored password.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    scheme: Scheme,
    data: Data,
}

#[derive(Clone, PartialEq, Eq)]
enum Data {
    /// A crypt(3)/PHC string, verified by its crate.
    Crypt(String),
    /// SSHA: the digest and the salt.
    Salted { digest: Vec<u8>, salt: Vec<u8> },
    /// The password itself.
    Plain(Vec<u8>),
}

impl fmt::Debug for Stored {
    /// Names the scheme only: a stored password is never logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stored({})", self.scheme)
    }
}

/// How a `{SCHEME.SUFFIX}` value is encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    AsIs,
    Base64,
    Hex,
}

/// Parse and check a stored password: `{SCHEME}value` or a bare crypt(3)/PHC string.
pub fn parse(value: &str) -> Result<Stored, SchemeError> {
    let Some((name, rest)) = value.strip_prefix('{').and_then(|v| v.split_once('}')) else {
        return crypt(value.to_owned());
    };
    let unknown = || SchemeError::Unknown { name: format!("{{{name}}}") };
    let upper = name.to_ascii_uppercase();
    let (base, encoding) = match upper.rsplit_once('.') {
        Some((base, "B64")) => (base, Some(Encoding::Base64)),
        Some((base, "HEX")) => (base, Some(Encoding::Hex)),
        Some(_) => return Err(unknown()),
        None => (upper.as_str(), None),
    };
    let scheme = match base {
        "ARGON2ID" => Some(Scheme::Argon2id),
        "ARGON2I" => Some(Scheme::Argon2i),
        "BLF-CRYPT" => Some(Scheme::BlfCrypt),
        "SHA512-CRYPT" => Some(Scheme::Sha512Crypt),
        "SHA256-CRYPT" => Some(Scheme::Sha256Crypt),
        "SSHA512" => Some(Scheme::Ssha512),
        "SSHA256" => Some(Scheme::Ssha256),
        "PLAIN" | "CLEAR" | "CLEARTEXT" => Some(Scheme::Plain),
        "CRYPT" => None,
        _ => return Err(unknown()),
    };
    // SSHA is base64 unless said otherwise; every other scheme is stored as it is.
    let salted = matches!(scheme, Some(Scheme::Ssha512 | Scheme::Ssha256));
    let encoding = encoding.unwrap_or(if salted { Encoding::Base64 } else { Encoding::AsIs });
    let bytes = match encoding {
        Encoding::AsIs => Ok(rest.as_bytes().to_vec()),
        Encoding::Base64 => BASE64.decode(rest.trim()).map_err(|e| format!("not base64: {e}")),
        Encoding::Hex => base16ct::mixed::decode_vec(rest.trim()).map_err(|e| format!("not hex: {e}")),
    };
    let bytes = bytes.map_err(|why| invalid(scheme.unwrap_or(Scheme::Plain), why))?;
    match scheme {
        Some(scheme @ (Scheme::Ssha512 | Scheme::Ssha256)) => {
            let len = if scheme == Scheme::Ssha512 { 64 } else { 32 };
            if bytes.len() < len {
                return Err(invalid(scheme, format!("{} bytes is shorter than the {len}-byte digest", bytes.len())));
            }
            let (digest, salt) = bytes.split_at(len);
            Ok(Stored { scheme, data: Data::Salted { digest: digest.to_vec(), salt: salt.to_vec() } })
        }
        Some(Scheme::Plain) => {
            if bytes.is_empty() {
                return Err(invalid(Scheme::Plain, "empty password"));
            }
            Ok(Stored { scheme: Scheme::Plain, data: Data::Plain(bytes) })
        }
        expected => {
            let text = String::from_utf8(bytes).map_err(|_| {
                invalid(expected.unwrap_or(Scheme::Plain), "the decoded value is not a crypt string (not UTF-8)")
            })?;
            let stored = crypt(text)?;
            match expected {
                Some(expected) if expected != stored.scheme => {
                    Err(invalid(expected, format!("the value is a {} hash", stored.scheme)))
                }
                _ => Ok(stored),
            }
        }
    }
}

/// A bare crypt(3)/PHC string, told apart by its `$id$`.
fn crypt(value: String) -> Result<Stored, SchemeError> {
    let unknown = |name: &str| Err(SchemeError::Unknown { name: name.to_owned() });
    let scheme = match value.split('$').nth(1).filter(|_| value.starts_with('$')) {
        Some("argon2id") => Scheme::Argon2id,
        Some("argon2i") => Scheme::Argon2i,
        Some("argon2d") => Scheme::Argon2d,
        Some("2a" | "2b" | "2y") => Scheme::BlfCrypt,
        Some("6") => Scheme::Sha512Crypt,
        Some("5") => Scheme::Sha256Crypt,
        Some("y") => Scheme::Yescrypt,
        Some("1") => return unknown("$1$ (MD5-CRYPT)"),
        Some("2x") => return unknown("$2x$ (bcrypt with the pre-2011 sign bug)"),
        Some("7") => return unknown("$7$ (scrypt)"),
        Some("gy") => return unknown("$gy$ (gost-yescrypt)"),
        Some(id) => return unknown(&format!("${id}$")),
        None if value.is_empty() => return unknown("(empty password)"),
        None if value.len() == 13 => return unknown("DES-CRYPT"),
        None => return unknown("(not a crypt string)"),
    };
    match scheme {
        Scheme::Argon2id | Scheme::Argon2i | Scheme::Argon2d => {
            password::check_stored(&value).map_err(|why| invalid(scheme, why))?
        }
        Scheme::BlfCrypt => check_bcrypt(&value)?,
        Scheme::Sha512Crypt | Scheme::Sha256Crypt => check_sha_crypt(scheme, &value)?,
        _ => check_yescrypt(&value)?,
    }
    Ok(Stored { scheme, data: Data::Crypt(value) })
}

/// `$2y$NN$` + 53 characters, cost capped.
fn check_bcrypt(value: &str) -> Result<(), SchemeError> {
    if value.len() != 60 || !value.is_ascii() || value.as_bytes()[6] != b'$' {
        return Err(invalid(Scheme::BlfCrypt, "not a 60-character $2y$NN$… string"));
    }
    let cost: u32 = value[4..6].parse().map_err(|_| invalid(Scheme::BlfCrypt, "the cost is not a number"))?;
    if !(4..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(invalid(Scheme::BlfCrypt, format!("cost {cost} is outside 4..={MAX_BCRYPT_COST}")));
    }
    Ok(())
}

/// `$6$[rounds=N$]salt$hash` (or `$5$`), rounds capped.
fn check_sha_crypt(scheme: Scheme, value: &str) -> Result<(), SchemeError> {
    let fields: Vec<&str> = value.split('$').skip(2).collect();
    let (rounds, salt, hash) = match fields.as_slice() {
        [rounds, salt, hash] if rounds.starts_with("rounds=") => (Some(&rounds["rounds=".len()..]), salt, hash),
        [salt, hash] => (None, salt, hash),
        _ => return Err(invalid(scheme, "not a $id$[rounds=N$]salt$hash string")),
    };
    if let Some(rounds) = rounds {
        let rounds: u32 = rounds.parse().map_err(|_| invalid(scheme, "rounds= is not a number"))?;
        if !(1_000..=MAX_SHA_CRYPT_ROUNDS).contains(&rounds) {
            return Err(invalid(scheme, format!("rounds={rounds} is outside 1000..={MAX_SHA_CRYPT_ROUNDS}")));
        }
    }
    let hash_len = if scheme == Scheme::Sha512Crypt { 86 } else { 43 };
    if salt.len() > 16 || hash.len() != hash_len {
        return Err(invalid(
            scheme,
            format!("expected a salt of at most 16 characters and a {hash_len}-character hash"),
        ));
    }
    Ok(())
}

/// `$y$params$salt$hash`, memory and time capped.
fn check_yescrypt(value: &str) -> Result<(), SchemeError> {
    let fields: Vec<&str> = value.split('$').skip(2).collect();
    let [params, _salt, _hash] = fields.as_slice() else {
        return Err(invalid(Scheme::Yescrypt, "not a $y$params$salt$hash string"));
    };
    let params: yescrypt::Params =
        params.parse().map_err(|e| invalid(Scheme::Yescrypt, format!("bad parameters: {e}")))?;
    let bytes =
        128u64.saturating_mul(params.n()).saturating_mul(u64::from(params.r())).saturating_mul(u64::from(params.p()));
    // The crate has no getter for t; its Debug output names every field (checked by a test).
    let t = format!("{params:?}")
        .split_once(" t: ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok());
    match t {
        Some(t) if bytes <= MAX_YESCRYPT_BYTES && t <= MAX_YESCRYPT_T => Ok(()),
        _ => Err(invalid(
            Scheme::Yescrypt,
            format!(
                "parameters N={} r={} p={} t={t:?} exceed the caps ({} MiB, t={MAX_YESCRYPT_T})",
                params.n(),
                params.r(),
                params.p(),
                MAX_YESCRYPT_BYTES >> 20
            ),
        )),
    }
}

impl Stored {
    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The password itself, for `{PLAIN}` (what `--apop-from-plain` turns into an APOP secret).
    pub fn plain(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Plain(password) => Some(password),
            _ => None,
        }
    }

    /// True when `password` matches. Slow for the key-stretching schemes: run it on a blocking thread.
    pub fn verify(&self, password: &[u8]) -> bool {
        use argon2::password_hash::PasswordVerifier;
        match (&self.data, self.scheme) {
            (Data::Crypt(phc), Scheme::Argon2id | Scheme::Argon2i | Scheme::Argon2d) => password::verify(password, phc),
            // Truncating at 72 bytes, as Dovecot's and libxcrypt's bcrypt did when hashing.
            (Data::Crypt(hash), Scheme::BlfCrypt) => bcrypt::verify(password, hash).unwrap_or(false),
            (Data::Crypt(hash), Scheme::Sha512Crypt | Scheme::Sha256Crypt) => {
                sha_crypt::ShaCrypt::SHA512.verify_password(password, hash.as_str()).is_ok()
            }
            (Data::Crypt(hash), Scheme::Yescrypt) => {
                yescrypt::Yescrypt::default().verify_password(password, hash.as_str()).is_ok()
            }
            (Data::Salted { digest, salt }, Scheme::Ssha512) => {
                Sha512::new().chain_update(password).chain_update(salt).finalize().as_slice().ct_eq(digest).into()
            }
            (Data::Salted { digest, salt }, Scheme::Ssha256) => {
                Sha256::new().chain_update(password).chain_update(salt).finalize().as_slice().ct_eq(digest).into()
            }
            // Compare digests, so that not even the length leaks through timing.
            (Data::Plain(plain), _) => {
                Sha256::digest(password).as_slice().ct_eq(Sha256::digest(plain).as_slice()).into()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The password of every vector below.
    const PASSWORD: &[u8] = b"Correct horse 1";

    /// Made once with Dovecot 2.3's `doveadm pw -s SCHEME -p 'Correct horse 1'` (Debian
    /// dovecot-core), so that verification is tested on a machine without Dovecot too.
    const DOVEADM: &[&str] = &[
        "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$SyfBm2Kxcf/kjw9xeec4Aw$MOWTXbd8rDaHHL30Qb8DpkE5uMt0LzE4QXq5fMW6vP4",
        "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$tdkjbvE/4is8cdzJwu3xcw$fDhQXFxAnVMowa8VkL4WMNWorv5YUUl4kthPIdER1N0",
        "{BLF-CRYPT}$2y$05$U/K3tIqmgn9FwUKev5uubOOrEsxPM0x9oJ7XTMxMiPGSQipN9YZuy",
        "{SHA512-CRYPT}$6$Y4fV12nju8nptiQx$P94N3wz.7edef5QKapCzYinPWWRyQelALSzfO6YQ7qbVbUlaj9t9JtI3OCw49B7Uzj5qctsDX9KFc0XeJmZJX1",
        "{SHA256-CRYPT}$5$qYl2ypv7S3ov3gE5$Z7CAps4op84pMJgCT5lge0N5OB9ATM0bJ859.WfXth6",
        "{SSHA512}JhxZGgn+EOSjrMNbkHJcUzed3upaqiI7IhEuUDxbV+5aKAIYBNAN69E3feXgd5ewWTbB/p1AIU72giT2X26Qnk29Re0=",
        "{SSHA256}9V5BcfIr5VAvAe4BOQ8tuvObcOwrMttOiNozs9HXT7hbzAtF",
        "{PLAIN}Correct horse 1",
        "{CLEARTEXT}Correct horse 1",
        "{CLEAR}Correct horse 1",
        "{SHA512-CRYPT.B64}JDYkUGtQY3N3MHZsLnhNM0NSUCRiZ2VMZVNDaHZ3LzBFanlyVmdKVDl0OTRqU0NtcXZnTllIZk92a2Z0bzFGRUl0RjRsRkkxSXZNNlNCTHRaRGNvZ09ZWExpbjNTOFJXQWpWNUhvU3NtLg==",
        "{SSHA256.HEX}1cce2e667750308bdf2d644e2af3090f7f227b3c8dff59334add42ad220f740ebc856f51",
        "{PLAIN.B64}Q29ycmVjdCBob3JzZSAx",
        "{CRYPT}$2y$05$U3suOdRdNpcW.DntlaoCmu30IsfSXAUU7GW3HLF8cS3dWt29lf8Ge",
        "{SHA512-CRYPT}$6$rounds=10000$DVUOeFk0ipDbqPzc$gMBVmQaxDWjw.D8/9zap1SSuxMOlf7qM77R8j..C1ry5NUQrTdi9J04Nl/E/RUF1zrcdKgOA1ZYTGUqZ.yZTS0",
        "{BLF-CRYPT}$2y$10$ha3Z1GM5Q2qPjYqTy/ADvOOOOzY2AaIGYX6Rb31wB/Vu5mEUczEky",
    ];

    /// Made once with `mkpasswd -m yescrypt|sha-512|bcrypt` (Debian whois, libxcrypt): /etc/shadow's shapes.
    const SHADOW: &[&str] = &[
        "$y$j9T$1vijlcCOKEhKDQ3ktRbq4/$jHb66DkOUQMfJ5I3GpjbJ8JT1bc5/AQZaDx73bFv69C",
        "$6$s0l7/5HoN0SXWHkN$M.FwTysjJjP/kugaurc0mwYVxAz6dK1Vmr0Cgv0qMKAdV0egL621u7ecvLpySlQud5WHwkrSh3u7J5Ga4cdQl/",
        "$2b$05$9xJKx/JRxdIN93L0PiEK.eE12e61Zv06ISIvSfVGKZCnyimdnZkwa",
    ];

    #[test]
    fn every_doveadm_and_shadow_vector_verifies_and_a_wrong_password_fails() {
        for value in DOVEADM.iter().chain(SHADOW) {
            let stored = parse(value).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert!(stored.verify(PASSWORD), "{value} does not verify");
            assert!(!stored.verify(b"Correct horse 2"), "{value} accepts a wrong password");
            assert!(!stored.verify(b""), "{value} accepts an empty password");
        }
    }

    #[test]
    fn schemes_are_named_as_dovecot_names_them() {
        let names: Vec<&str> = DOVEADM.iter().chain(SHADOW).map(|v| parse(v).unwrap().scheme().name()).collect();
        assert_eq!(
            names,
            [
                "ARGON2I",
                "ARGON2ID",
                "BLF-CRYPT",
                "SHA512-CRYPT",
                "SHA256-CRYPT",
                "SSHA512",
                "SSHA256",
                "PLAIN",
                "PLAIN",
                "PLAIN",
                "SHA512-CRYPT",
                "SSHA256",
                "PLAIN",
                "BLF-CRYPT",
                "SHA512-CRYPT",
                "BLF-CRYPT",
                "YESCRYPT",
                "SHA512-CRYPT",
                "BLF-CRYPT"
            ]
        );
        assert_eq!(parse("{plain}x").unwrap().plain(), Some(&b"x"[..]));
        assert_eq!(parse("{ssha256}9V5BcfIr5VAvAe4BOQ8tuvObcOwrMttOiNozs9HXT7hbzAtF").unwrap().plain(), None);
    }

    #[test]
    fn apopd_own_argon2id_hashes_still_work_bare() {
        let phc = password::hash(PASSWORD).unwrap();
        let stored = parse(&phc).unwrap();
        assert_eq!(stored.scheme(), Scheme::Argon2id);
        assert!(stored.verify(PASSWORD));
        assert!(!stored.verify(b"x"));
    }

    #[test]
    fn unknown_schemes_are_refused_by_name() {
        let unknown = |v: &str| match parse(v) {
            Err(SchemeError::Unknown { name }) => name,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(unknown("{FOO}bar"), "{FOO}");
        assert_eq!(unknown("{MD5-CRYPT}$1$ZVgh5TjB$.UKyYGSXPtRm9yu1FTDlg/"), "{MD5-CRYPT}");
        assert_eq!(unknown("{PLAIN.ROT13}x"), "{PLAIN.ROT13}");
        assert_eq!(unknown("$1$ZVgh5TjB$.UKyYGSXPtRm9yu1FTDlg/"), "$1$ (MD5-CRYPT)");
        assert_eq!(unknown("{CRYPT}$1$ZVgh5TjB$.UKyYGSXPtRm9yu1FTDlg/"), "$1$ (MD5-CRYPT)");
        assert_eq!(unknown("abJnggxhB/yWI"), "DES-CRYPT");
        assert_eq!(unknown(""), "(empty password)");
        assert_eq!(parse("{FOO}bar").unwrap_err().to_string(), "unknown scheme {FOO}");
    }

    #[test]
    fn malformed_or_mislabelled_values_are_refused() {
        let why = |v: &str| parse(v).unwrap_err().to_string();
        assert!(
            why("{SHA512-CRYPT}$5$qYl2ypv7S3ov3gE5$Z7CAps4op84pMJgCT5lge0N5OB9ATM0bJ859.WfXth6")
                .contains("SHA256-CRYPT hash")
        );
        assert!(why("{SSHA512}AAAA").contains("shorter"));
        assert!(why("{SSHA256}not base64!").contains("base64"));
        assert!(why("{PLAIN}").contains("empty"));
        assert!(why("$6$salt$short").contains("86-character"));
        assert!(why("$2y$05$short").contains("60-character"));
    }

    #[test]
    fn absurd_costs_are_refused() {
        let why = |v: &str| parse(v).unwrap_err().to_string();
        assert!(why("$2y$31$U/K3tIqmgn9FwUKev5uubOOrEsxPM0x9oJ7XTMxMiPGSQipN9YZuy").contains("cost 31"));
        assert!(
            why("$6$rounds=999999999$DVUOeFk0ipDbqPzc$gMBVmQaxDWjw.D8/9zap1SSuxMOlf7qM77R8j..C1ry5NUQrTdi9J04Nl/E/RUF1zrcdKgOA1ZYTGUqZ.yZTS0")
                .contains("rounds=999999999")
        );
        // N = 2^30 with r = 32: 4 TiB.
        assert!(why("$y$jUT$1vijlcCOKEhKDQ3ktRbq4/$jHb66DkOUQMfJ5I3GpjbJ8JT1bc5/AQZaDx73bFv69C").contains("exceed"));
        assert!(
            why("{ARGON2ID}$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo")
                .contains("exceed")
        );
    }

    /// The yescrypt `t` cap reads the crate's Debug output: keep that honest.
    #[test]
    fn yescrypt_t_is_read_from_the_parameters() {
        let params = yescrypt::Params::new_with_all_params(yescrypt::Mode::default(), 4096, 32, 1, 9, 0).unwrap();
        let value = format!("$y${params}$1vijlcCOKEhKDQ3ktRbq4/$jHb66DkOUQMfJ5I3GpjbJ8JT1bc5/AQZaDx73bFv69C");
        assert!(parse(&value).unwrap_err().to_string().contains("t=Some(9)"), "{value}");
        let params = yescrypt::Params::new_with_all_params(yescrypt::Mode::default(), 4096, 32, 1, 2, 0).unwrap();
        assert!(
            parse(&format!("$y${params}$1vijlcCOKEhKDQ3ktRbq4/$jHb66DkOUQMfJ5I3GpjbJ8JT1bc5/AQZaDx73bFv69C")).is_ok()
        );
    }

    #[test]
    fn a_stored_password_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", parse("{PLAIN}hunter2").unwrap()), "Stored(PLAIN)");
    }
}
