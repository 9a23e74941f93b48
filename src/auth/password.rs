//! Password hashing and verification with argon2id PHC strings.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, Params};

/// Largest memory cost (KiB) we run for a stored hash: a hostile or mistaken users file must
/// not make one login take gigabytes.
pub const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Largest time cost we run.
pub const MAX_T_COST: u32 = 16;
/// Largest parallelism we run.
pub const MAX_P_COST: u32 = 16;

/// Hash `password` with argon2id at the crate defaults (m=19 MiB, t=2, p=1) and a fresh salt.
pub fn hash(password: &[u8]) -> Result<String, String> {
    Argon2::default().hash_password(password).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Why a stored hash cannot be used.
pub fn check_stored(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!("unsupported scheme {}", parsed.algorithm));
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST {
        return Err(format!(
            "argon2 parameters m={} t={} p={} exceed the caps m={MAX_M_COST_KIB} t={MAX_T_COST} p={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// True when `password` matches the stored PHC string (argon2id, argon2i or argon2d).
///
/// Slow on purpose (tens of milliseconds): run it on a blocking thread.
pub fn verify(password: &[u8], phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(check_stored(&phc).is_ok());
        assert!(verify(b"correct horse", &phc));
        assert!(!verify(b"correct hors", &phc));
        assert!(!verify(b"x", "not a hash"));
    }

    #[test]
    fn libargon2_reference_hash_verifies() {
        // The example in libargon2's README: `echo -n password | argon2 somesalt -t 2 -m 16 -p 4 -l 24`
        let phc = "$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        assert!(check_stored(phc).is_ok());
        assert!(verify(b"password", phc));
    }

    #[test]
    fn absurd_parameters_are_refused() {
        let phc = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo";
        assert!(check_stored(phc).unwrap_err().contains("exceed"));
        assert!(check_stored("$2y$10$abcdefghijklmnopqrstuv").is_err());
    }
}
