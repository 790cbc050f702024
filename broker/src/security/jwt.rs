//! Signed tokens from an external identity provider: JWTs signed with
//! Ed25519 (`EdDSA`) or RSA (`RS256`), checked against a public key from a
//! PEM file. The claims give the user (`sub`), the roles (`roles`, names of
//! configured roles) and the validity (`exp`, `nbf`; `iss` and `aud` when
//! configured). A local user of the same name that is disabled is refused.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::SecurityError;

/// The claims Starling reads.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Seconds since the Unix epoch when the token expires (required).
    pub exp: u64,
}

/// Seconds a token is still taken after its `exp` (and before its `nbf`):
/// clocks of the identity provider and the server differ a little.
pub const LEEWAY_S: u64 = 30;

/// Checks JWTs against one key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

/// Whether `token` has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

impl JwtVerifier {
    /// Reads the public key (Ed25519 or RSA, PEM); `issuer` and `audience`
    /// are checked when not empty.
    pub fn from_file(
        path: &Path,
        issuer: &str,
        audience: &str,
    ) -> Result<JwtVerifier, SecurityError> {
        let pem = std::fs::read(path).map_err(|e| {
            SecurityError::Invalid(format!(
                "cannot read the JWT public key {}: {e}",
                path.display()
            ))
        })?;
        let (key, algorithm) = match DecodingKey::from_ed_pem(&pem) {
            Ok(key) => (key, Algorithm::EdDSA),
            Err(_) => (
                DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    SecurityError::Invalid(format!(
                        "{} is neither an Ed25519 nor an RSA public key in PEM ({e})",
                        path.display()
                    ))
                })?,
                Algorithm::RS256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_S;
        // Off by default in jsonwebtoken: a token is not valid before its
        // `nbf`.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if !issuer.is_empty() {
            validation.set_issuer(&[issuer]);
        }
        if audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[audience]);
        }
        Ok(JwtVerifier { key, validation })
    }

    /// The claims of a valid token, or why it is not.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| format!("the signed token is not valid: {e}"))
    }
}
