//! Users, sign-in, session tokens, roles, and the [`SecurityAuthorizer`]
//! that enforces them on every protocol (docs/SECURITY.md).
//!
//! One log is the truth here too: users and sessions are the fold of two
//! reserved channels, `$auth/users` and `$auth/sessions`, whose records are
//! JSON ([`store`]). Roles come from the configuration ([`roles`]). The
//! [`service`] thread does the slow and writing work (argon2id, tokens,
//! records); the authorizer only reads the folded state, on the shards,
//! behind a read lock taken once per connection sign-in and once per request.
//!
//! ```text
//!  POST /v1/auth/sign-in ─▶ service thread: argon2id, TOTP, token ─▶ $auth/sessions
//!                                         │ fold
//!  Hello / CONNECT / connect / Bearer ─▶ SecurityAuthorizer (SHA-256 of the token → session → user → roles)
//! ```

pub mod audit;
pub mod authorizer;
pub mod jwt;
pub mod password;
pub mod roles;
pub mod service;
pub mod store;
pub mod totp;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use audit::AuditWriter;
pub use authorizer::SecurityAuthorizer;
pub use roles::{Role, RoleConfig};
pub use service::{Actor, SecurityService};
pub use store::{AuthState, AUTH_SESSIONS_CHANNEL, AUTH_USERS_CHANNEL};

/// Failures of the security layer; the text is shown to the client or
/// operator.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecurityError {
    /// The request is not valid (a bad name, a short password).
    #[error("{0}")]
    Invalid(String),
    /// Wrong credentials, a disabled user, an expired session.
    #[error("{0}")]
    Denied(String),
    /// Too many failed sign-ins from this address (or for this account from
    /// it): wait, then try again.
    #[error("too many failed sign-ins; try again in {retry_after_s} s")]
    Throttled { retry_after_s: u64 },
    /// The user or session does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Writing or reading the log failed.
    #[error("the security records could not be stored: {0}; check the server log")]
    Internal(String),
}

/// `[auth]`: authentication and roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off (the default): loopback clients only, anyone (see
    /// `LoopbackAuthorizer`). On: every client needs a session token, and
    /// every request is denied unless one of the user's roles allows it.
    pub enabled: bool,
    /// A session ends after this long without use.
    pub session_idle_timeout_s: u64,
    /// A session ends this long after sign-in, used or not.
    pub session_absolute_timeout_s: u64,
    /// The issuer shown by authenticator apps.
    pub totp_issuer: String,
    /// Failed sign-ins from one address within `throttle_window_s` before
    /// that address has to wait.
    pub throttle_failures_per_address: u32,
    /// Failed sign-ins for one account from one address within the window
    /// before that pair has to wait (the account stays open from elsewhere).
    pub throttle_failures_per_account: u32,
    pub throttle_window_s: u64,
    /// The Ed25519 key (PEM, from `starling audit keygen`) that signs the
    /// audit log's checkpoints; empty: no audit log (a warning at start).
    pub audit_key_file: String,
    /// PEM public key (Ed25519 or RSA) of an external identity provider:
    /// JWTs it signs are accepted as tokens. Empty: none are.
    pub jwt_public_key_file: String,
    /// Required `iss` of such tokens (empty: not checked).
    pub jwt_issuer: String,
    /// Required `aud` of such tokens (empty: not checked).
    pub jwt_audience: String,
    pub roles: Vec<RoleConfig>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            enabled: false,
            session_idle_timeout_s: 8 * 3600,
            session_absolute_timeout_s: 7 * 24 * 3600,
            totp_issuer: "Starling".into(),
            throttle_failures_per_address: 20,
            throttle_failures_per_account: 5,
            throttle_window_s: 15 * 60,
            audit_key_file: String::new(),
            jwt_public_key_file: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            roles: Vec::new(),
        }
    }
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// Checks a user name: 1 to 64 bytes of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_user_name(user: &str) -> Result<(), SecurityError> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(SecurityError::Invalid(format!(
            "user name {user:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}
