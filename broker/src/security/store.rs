//! The records of users and sessions, and the state they fold into.
//!
//! `$auth/users` holds one JSON record per change of a user (the whole
//! user, so the last record is the state); `$auth/sessions` holds session
//! issues and revocations. A session token is 256 random bits, shown once
//! to the client; only its SHA-256 is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::random_bytes;

/// The channel of user records.
pub const AUTH_USERS_CHANNEL: &str = "$auth/users";
/// The channel of session records.
pub const AUTH_SESSIONS_CHANNEL: &str = "$auth/sessions";
/// Random bytes in a session token.
pub const TOKEN_BYTES: usize = 32;

/// One change of a user: the user's whole state after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserRecord {
    Put {
        user: String,
        #[serde(flatten)]
        state: User,
    },
}

/// One change of sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionRecord {
    Issue {
        /// Hex SHA-256 of the token.
        id: String,
        user: String,
        issued_ms: u64,
        expires_ms: u64,
        /// Signed in with a second factor.
        mfa: bool,
    },
    Revoke {
        id: String,
    },
    /// Every session of `user` issued before `before_ms` ends (a disabled
    /// user, a changed password).
    RevokeUser {
        user: String,
        before_ms: u64,
    },
}

/// A user as the fold knows it (and as its record stores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// PHC string (argon2id).
    pub password_hash: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    /// Base32 TOTP secret once enrolment is confirmed.
    pub totp_secret: Option<String>,
    /// Base32 TOTP secret waiting for its first code.
    pub totp_pending: Option<String>,
    /// The last TOTP step used: codes of it or earlier are refused.
    pub totp_last_step: u64,
    pub changed_ms: u64,
}

impl User {
    /// The record that stores this state for `user`.
    pub fn record(&self, user: &str) -> UserRecord {
        UserRecord::Put {
            user: user.to_string(),
            state: self.clone(),
        }
    }
}

/// A live session.
#[derive(Debug)]
pub struct Session {
    pub user: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
    pub mfa: bool,
    /// Last use (memory only: after a restart the idle clock starts again).
    pub last_used_ms: AtomicU64,
}

/// Users and sessions: the fold of the two channels.
#[derive(Debug, Default)]
pub struct AuthState {
    pub users: HashMap<String, User>,
    pub sessions: HashMap<String, Session>,
}

/// A new session token (base64url, no padding: 43 characters).
pub fn new_token() -> String {
    data_encoding::BASE64URL_NOPAD.encode(&random_bytes::<TOKEN_BYTES>())
}

/// The stored id of a token: hex SHA-256.
pub fn token_id(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

impl AuthState {
    /// Applies a record of `channel`; returns what is wrong with it.
    pub fn apply(&mut self, channel: &str, body: &[u8]) -> Result<(), String> {
        match channel {
            AUTH_USERS_CHANNEL => {
                let record: UserRecord =
                    serde_json::from_slice(body).map_err(|e| format!("a user record: {e}"))?;
                self.apply_user(record);
            }
            AUTH_SESSIONS_CHANNEL => {
                let record: SessionRecord =
                    serde_json::from_slice(body).map_err(|e| format!("a session record: {e}"))?;
                self.apply_session(record);
            }
            other => return Err(format!("{other} is not a security channel")),
        }
        Ok(())
    }

    pub fn apply_user(&mut self, record: UserRecord) {
        let UserRecord::Put { user, state } = record;
        self.users.insert(user, state);
    }

    pub fn apply_session(&mut self, record: SessionRecord) {
        match record {
            SessionRecord::Issue {
                id,
                user,
                issued_ms,
                expires_ms,
                mfa,
            } => {
                self.sessions.insert(
                    id,
                    Session {
                        user,
                        issued_ms,
                        expires_ms,
                        mfa,
                        last_used_ms: AtomicU64::new(issued_ms),
                    },
                );
            }
            SessionRecord::Revoke { id } => {
                self.sessions.remove(&id);
            }
            SessionRecord::RevokeUser { user, before_ms } => {
                self.sessions
                    .retain(|_, session| session.user != user || session.issued_ms >= before_ms);
            }
        }
    }

    /// Forgets sessions that have expired by `now_ms` (absolute expiry, or
    /// idle longer than `idle_ms`).
    pub fn prune(&mut self, now_ms: u64, idle_ms: u64) {
        self.sessions.retain(|_, session| {
            now_ms < session.expires_ms
                && now_ms.saturating_sub(session.last_used_ms.load(Ordering::Relaxed)) < idle_ms
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fold_into_state() {
        let mut state = AuthState::default();
        let user = User {
            password_hash: "$argon2id$x".into(),
            roles: vec!["member".into()],
            disabled: false,
            totp_secret: None,
            totp_pending: None,
            totp_last_step: 0,
            changed_ms: 1,
        };
        let body = serde_json::to_vec(&user.record("alice")).unwrap();
        state.apply(AUTH_USERS_CHANNEL, &body).unwrap();
        assert_eq!(state.users["alice"], user);
        let token = new_token();
        assert_eq!(token.len(), 43);
        let issue = SessionRecord::Issue {
            id: token_id(&token),
            user: "alice".into(),
            issued_ms: 10,
            expires_ms: 1000,
            mfa: false,
        };
        state
            .apply(AUTH_SESSIONS_CHANNEL, &serde_json::to_vec(&issue).unwrap())
            .unwrap();
        assert!(state.sessions.contains_key(&token_id(&token)));
        state.apply_session(SessionRecord::RevokeUser {
            user: "alice".into(),
            before_ms: 11,
        });
        assert!(state.sessions.is_empty());
        assert!(state
            .apply(AUTH_USERS_CHANNEL, b"{\"op\":\"nope\"}")
            .is_err());
    }
}
