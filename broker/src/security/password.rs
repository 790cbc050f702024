//! Password hashes: argon2id with OWASP's parameters (19 MiB, 2 passes, one
//! lane), salted with 16 random bytes, stored as a PHC string.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::{random_bytes, SecurityError};

/// Memory per hash, in KiB (OWASP: 19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory (OWASP: 2).
pub const ARGON2_ITERATIONS: u32 = 2;
/// Lanes (OWASP: 1).
pub const ARGON2_PARALLELISM: u32 = 1;
/// Shortest password accepted when one is set.
pub const PASSWORD_BYTES_MIN: usize = 12;
/// Longest password accepted (hashing cost does not depend on it, but a
/// bound keeps requests small).
pub const PASSWORD_BYTES_MAX: usize = 1024;

fn argon2() -> Argon2<'static> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password against the length rules.
pub fn check_new_password(password: &str) -> Result<(), SecurityError> {
    if password.len() < PASSWORD_BYTES_MIN || password.len() > PASSWORD_BYTES_MAX {
        return Err(SecurityError::Invalid(format!(
            "a password must be {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes long"
        )));
    }
    Ok(())
}

/// Hashes `password` with a fresh salt (about 50 ms of CPU: never on an
/// event loop).
pub fn hash_password(password: &str) -> Result<String, SecurityError> {
    check_new_password(password)?;
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| SecurityError::Internal(format!("salt: {e}")))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SecurityError::Internal(format!("argon2: {e}")))
}

/// Whether `password` matches the stored PHC string (constant time in the
/// password; about 50 ms of CPU).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    password.len() <= PASSWORD_BYTES_MAX
        && argon2().verify_password(password.as_bytes(), &hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse battery!", &hash));
        assert!(!verify_password("anything", "not a hash"));
        // Salted: the same password hashes differently.
        assert_ne!(hash, hash_password("correct horse battery").unwrap());
        assert!(hash_password("short").is_err());
    }
}
