//! The security service: everything that hashes, creates tokens or writes
//! `$auth/*` records. Plain sequential code over a blocking in-process
//! client acting as the system principal; never on an event loop (an
//! argon2id check takes tens of milliseconds).
//!
//! Each change is appended to the log (and so durable) before it is applied
//! to the in-memory state and answered. Changes that take rights away
//! (disable, new password, new roles, revoked session) close the affected
//! connections through the engine right after.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use starling_protocol::{kind, HistoryQuery};

use super::audit::AuditWriter;
use super::authorizer::now_ms;
use super::password::{hash_password, verify_password};
use super::store::{
    new_token, token_id, SessionRecord, User, AUTH_SESSIONS_CHANNEL, AUTH_USERS_CHANNEL,
};
use super::totp;
use super::{check_user_name, AuthConfig, SecurityAuthorizer, SecurityError};
use crate::engine::{ConnectionMatch, Notifier};
use crate::{LocalClient, Principal};
use starling_storage::audit::AuditKind;

/// Records read per history request while loading.
const LOAD_PAGE: u32 = 1000;
/// Tracked addresses and (account, address) pairs for sign-in throttling;
/// beyond it the oldest entries are forgotten (a flood of addresses cannot
/// grow memory without bound).
const THROTTLE_ENTRIES_MAX: usize = 100_000;

/// Who asks for a change, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The user (or `cli` for `starling user`).
    pub user: String,
    /// Where from (an address, or `local`).
    pub source: String,
}

impl Actor {
    /// The operator at the command line of the server machine.
    pub fn command_line() -> Actor {
        Actor {
            user: "cli".into(),
            source: "local".into(),
        }
    }
}

/// What a successful sign-in returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignedIn {
    pub user: String,
    pub token: String,
    pub expires_ms: u64,
}

/// A user as the admin API lists it (no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub user: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub totp: bool,
    pub sessions: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    count: u32,
    window_start_ms: u64,
    last_ms: u64,
}

/// Counts failed sign-ins per address and per (account, address). A locked
/// pair never blocks the account from another address, so an attacker
/// cannot lock a real user out.
#[derive(Default)]
struct Throttle {
    by_address: HashMap<IpAddr, Failures>,
    by_account: HashMap<(String, IpAddr), Failures>,
}

/// Seconds to wait after `count` failures over the limit: 1, 2, 4, … capped
/// at the window.
fn wait_s(failures: &Failures, limit: u32, window_s: u64, now_ms: u64) -> Option<u64> {
    if failures.count < limit || now_ms.saturating_sub(failures.window_start_ms) > window_s * 1000 {
        return None;
    }
    let over = failures.count - limit;
    let wait = (1u64 << over.min(20)).min(window_s);
    let until = failures.last_ms + wait * 1000;
    (now_ms < until).then(|| (until - now_ms).div_ceil(1000))
}

fn record_failure(map_failures: &mut Failures, window_s: u64, now_ms: u64) {
    if now_ms.saturating_sub(map_failures.window_start_ms) > window_s * 1000 {
        *map_failures = Failures {
            count: 0,
            window_start_ms: now_ms,
            last_ms: now_ms,
        };
    }
    map_failures.count += 1;
    map_failures.last_ms = now_ms;
}

fn bound<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Failures>) {
    if map.len() > THROTTLE_ENTRIES_MAX {
        let mut entries: Vec<(K, u64)> = map.iter().map(|(k, f)| (k.clone(), f.last_ms)).collect();
        entries.sort_by_key(|(_, last)| *last);
        for (key, _) in entries
            .into_iter()
            .take(map.len() - THROTTLE_ENTRIES_MAX / 2)
        {
            map.remove(&key);
        }
    }
}

/// Users, sessions and sign-in (see the module documentation).
pub struct SecurityService {
    authorizer: Arc<SecurityAuthorizer>,
    config: AuthConfig,
    client: Mutex<LocalClient>,
    throttle: Mutex<Throttle>,
    /// Closes connections whose rights were taken away (`None` offline).
    notifier: Option<Notifier>,
    /// Where every sign-in and change is recorded before it is answered.
    audit: Option<Arc<AuditWriter>>,
}

fn internal(error: impl std::fmt::Display) -> SecurityError {
    SecurityError::Internal(error.to_string())
}

impl SecurityService {
    /// A service writing through `client` (which must act as a system
    /// principal, see [`Principal::system`]). Loads the state from the log
    /// and marks the authorizer loaded.
    pub fn start(
        authorizer: Arc<SecurityAuthorizer>,
        config: AuthConfig,
        client: LocalClient,
        notifier: Option<Notifier>,
        audit: Option<Arc<AuditWriter>>,
    ) -> Result<SecurityService, SecurityError> {
        if let Some(audit) = &audit {
            authorizer.set_audit(audit.clone());
        }
        let service = SecurityService {
            authorizer,
            config,
            client: Mutex::new(client),
            throttle: Mutex::new(Throttle::default()),
            notifier,
            audit,
        };
        service.load()?;
        service.authorizer.set_loaded();
        Ok(service)
    }

    /// The principal the service's client must act as.
    pub fn principal() -> Principal {
        Principal::system("$security")
    }

    fn load(&self) -> Result<(), SecurityError> {
        let mut client = self.client.lock();
        let mut state = self.authorizer.state().write();
        for channel in [AUTH_USERS_CHANNEL, AUTH_SESSIONS_CHANNEL] {
            let mut from = 1;
            loop {
                let (head, messages) = client
                    .history(channel, HistoryQuery::From(from), LOAD_PAGE)
                    .map_err(internal)?;
                for message in &messages {
                    state.apply(channel, &message.body).map_err(|detail| {
                        SecurityError::Internal(format!(
                            "{channel} seq {} cannot be read ({detail})",
                            message.seq
                        ))
                    })?;
                    from = message.seq + 1;
                }
                if messages.is_empty() || from > head {
                    break;
                }
            }
        }
        state.prune(now_ms(), self.config.session_idle_timeout_s * 1000);
        Ok(())
    }

    /// Appends a record durably, then applies it.
    fn write(&self, channel: &str, body: Vec<u8>) -> Result<(), SecurityError> {
        let published = self
            .client
            .lock()
            .publish_command(crate::Command::Publish {
                channel: channel.into(),
                kind: kind::MESSAGE,
                ephemeral: false,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: Bytes::from(body.clone()),
            })
            .map_err(internal)?;
        if !published.durable {
            log::warn!("{channel}: a security record was acknowledged before it was durable (durability policy)");
        }
        self.authorizer
            .state()
            .write()
            .apply(channel, &body)
            .map_err(SecurityError::Internal)
    }

    fn write_user(&self, user: &str, state: &User) -> Result<(), SecurityError> {
        let body = serde_json::to_vec(&state.record(user)).map_err(internal)?;
        self.write(AUTH_USERS_CHANNEL, body)
    }

    fn write_session(&self, record: &SessionRecord) -> Result<(), SecurityError> {
        let body = serde_json::to_vec(record).map_err(internal)?;
        self.write(AUTH_SESSIONS_CHANNEL, body)
    }

    /// Records an entry durably (when there is an audit log).
    fn audit(
        &self,
        kind: AuditKind,
        by: &Actor,
        target: &str,
        detail: &str,
    ) -> Result<(), SecurityError> {
        match &self.audit {
            Some(audit) => audit.note(kind, &by.user, &by.source, target, detail),
            None => Ok(()),
        }
    }

    fn close(&self, matching: ConnectionMatch, reason: &str) {
        if let Some(notifier) = &self.notifier {
            notifier.close_connections(matching, reason);
        }
    }

    fn user(&self, user: &str) -> Result<User, SecurityError> {
        self.authorizer
            .state()
            .read()
            .users
            .get(user)
            .cloned()
            .ok_or_else(|| SecurityError::NotFound(format!("there is no user {user:?}")))
    }

    fn check_roles(&self, roles: &[String]) -> Result<(), SecurityError> {
        for role in roles {
            if !self.authorizer.roles().contains_key(role) {
                return Err(SecurityError::Invalid(format!(
                    "there is no role {role:?}; roles are defined in [[auth.roles]] of the configuration"
                )));
            }
        }
        Ok(())
    }

    /// Creates a user.
    pub fn add_user(
        &self,
        by: &Actor,
        user: &str,
        password: &str,
        roles: &[String],
    ) -> Result<(), SecurityError> {
        check_user_name(user)?;
        self.check_roles(roles)?;
        if self.authorizer.state().read().users.contains_key(user) {
            return Err(SecurityError::Invalid(format!(
                "user {user:?} exists already"
            )));
        }
        let state = User {
            password_hash: hash_password(password)?,
            roles: roles.to_vec(),
            disabled: false,
            totp_secret: None,
            totp_pending: None,
            totp_last_step: 0,
            changed_ms: now_ms(),
        };
        self.write_user(user, &state)?;
        self.audit(
            AuditKind::UserChanged,
            by,
            user,
            &format!("added roles={}", roles.join(",")),
        )
    }

    /// Ends every session of `user` and closes their connections.
    fn revoke_user(&self, by: &Actor, user: &str, reason: &str) -> Result<(), SecurityError> {
        self.write_session(&SessionRecord::RevokeUser {
            user: user.to_string(),
            before_ms: now_ms() + 1,
        })?;
        self.audit(
            AuditKind::TokenRevoked,
            by,
            user,
            &format!("every session: {reason}"),
        )?;
        self.close(ConnectionMatch::User(Arc::from(user)), reason);
        Ok(())
    }

    /// Sets a new password; every session of the user ends.
    pub fn set_password(
        &self,
        by: &Actor,
        user: &str,
        password: &str,
    ) -> Result<(), SecurityError> {
        let mut state = self.user(user)?;
        state.password_hash = hash_password(password)?;
        state.changed_ms = now_ms();
        self.write_user(user, &state)?;
        self.audit(AuditKind::UserChanged, by, user, "new password")?;
        self.revoke_user(by, user, "the password was changed; sign in again")
    }

    /// Disables or enables a user; disabling ends every session.
    pub fn set_disabled(
        &self,
        by: &Actor,
        user: &str,
        disabled: bool,
    ) -> Result<(), SecurityError> {
        let mut state = self.user(user)?;
        state.disabled = disabled;
        state.changed_ms = now_ms();
        self.write_user(user, &state)?;
        let what = if disabled { "disabled" } else { "enabled" };
        self.audit(AuditKind::UserChanged, by, user, what)?;
        if disabled {
            self.revoke_user(by, user, "the user was disabled")?;
        }
        Ok(())
    }

    /// Replaces a user's roles; open connections close (their rights were
    /// fixed when they signed in), sessions stay valid.
    pub fn set_roles(&self, by: &Actor, user: &str, roles: &[String]) -> Result<(), SecurityError> {
        self.check_roles(roles)?;
        let mut state = self.user(user)?;
        let before = state.roles.join(",");
        state.roles = roles.to_vec();
        state.changed_ms = now_ms();
        self.write_user(user, &state)?;
        self.audit(
            AuditKind::PermissionChanged,
            by,
            user,
            &format!("roles {before} -> {}", roles.join(",")),
        )?;
        self.close(
            ConnectionMatch::User(Arc::from(user)),
            "the user's roles changed; reconnect",
        );
        Ok(())
    }

    /// Every user, sorted by name.
    pub fn list_users(&self) -> Vec<UserInfo> {
        let state = self.authorizer.state().read();
        let mut users: Vec<UserInfo> = state
            .users
            .iter()
            .map(|(name, user)| UserInfo {
                user: name.clone(),
                roles: user.roles.clone(),
                disabled: user.disabled,
                totp: user.totp_secret.is_some(),
                sessions: state.sessions.values().filter(|s| &s.user == name).count(),
            })
            .collect();
        users.sort_by(|a, b| a.user.cmp(&b.user));
        users
    }

    /// Checks a password (and TOTP code) and issues a session token.
    /// Failures are throttled per address and per (account, address).
    pub fn sign_in(
        &self,
        user: &str,
        password: &str,
        totp_code: Option<&str>,
        address: IpAddr,
    ) -> Result<SignedIn, SecurityError> {
        let now = now_ms();
        let window_s = self.config.throttle_window_s;
        let waiting = {
            let throttle = self.throttle.lock();
            let by_address = throttle
                .by_address
                .get(&address)
                .copied()
                .unwrap_or_default();
            let by_account = throttle
                .by_account
                .get(&(user.to_string(), address))
                .copied()
                .unwrap_or_default();
            wait_s(
                &by_address,
                self.config.throttle_failures_per_address,
                window_s,
                now,
            )
            .max(wait_s(
                &by_account,
                self.config.throttle_failures_per_account,
                window_s,
                now,
            ))
        };
        // While throttled the password is not even checked, and the attempt
        // counts as a failure: an attacker who keeps trying keeps waiting,
        // longer each time.
        let result = match waiting {
            Some(retry_after_s) => Err(SecurityError::Throttled { retry_after_s }),
            None => self.check_credentials(user, password, totp_code, now),
        };
        let by = Actor {
            user: user.to_string(),
            source: address.to_string(),
        };
        if let Err(error) = &result {
            self.audit(AuditKind::SignInFailed, &by, user, &error.to_string())?;
            let mut throttle = self.throttle.lock();
            record_failure(
                throttle.by_address.entry(address).or_default(),
                window_s,
                now,
            );
            record_failure(
                throttle
                    .by_account
                    .entry((user.to_string(), address))
                    .or_default(),
                window_s,
                now,
            );
            bound(&mut throttle.by_address);
            bound(&mut throttle.by_account);
        }
        let mfa = result?;
        let token = new_token();
        let expires_ms = now + self.config.session_absolute_timeout_s * 1000;
        self.write_session(&SessionRecord::Issue {
            id: token_id(&token),
            user: user.to_string(),
            issued_ms: now,
            expires_ms,
            mfa,
        })?;
        self.audit(
            AuditKind::SignInSucceeded,
            &by,
            user,
            if mfa { "with TOTP" } else { "password" },
        )?;
        self.audit(
            AuditKind::TokenIssued,
            &by,
            &token_id(&token)[..16],
            &format!("expires_ms={expires_ms}"),
        )?;
        Ok(SignedIn {
            user: user.to_string(),
            token,
            expires_ms,
        })
    }

    /// Checks credentials; `Ok(true)` when a TOTP code was checked.
    fn check_credentials(
        &self,
        user: &str,
        password: &str,
        totp_code: Option<&str>,
        now: u64,
    ) -> Result<bool, SecurityError> {
        let bad = || SecurityError::Denied("wrong user name or password".into());
        let Ok(mut state) = self.user(user) else {
            // Spend the same time as for a real user, so timing does not
            // tell which names exist.
            let _ = verify_password(password, dummy_hash());
            return Err(bad());
        };
        if !verify_password(password, &state.password_hash) {
            return Err(bad());
        }
        if state.disabled {
            return Err(SecurityError::Denied(format!("user {user} is disabled")));
        }
        let Some(secret) = state
            .totp_secret
            .as_deref()
            .and_then(totp::secret_from_base32)
        else {
            return Ok(false);
        };
        let code = totp_code.ok_or_else(|| {
            SecurityError::Denied("this user has a second factor: send the TOTP code too".into())
        })?;
        let step = totp::check(&secret, code, now / 1000, state.totp_last_step)
            .ok_or_else(|| SecurityError::Denied("wrong or already used TOTP code".into()))?;
        // The step is stored before the code is accepted: it never works twice.
        state.totp_last_step = step;
        self.write_user(user, &state)?;
        Ok(true)
    }

    /// Ends the session of `token` and closes its connections.
    pub fn sign_out(&self, by: &Actor, token: &str) -> Result<(), SecurityError> {
        self.revoke_session(by, &token_id(token))
    }

    /// Ends session `id` (the hex SHA-256 of its token) and closes its
    /// connections.
    pub fn revoke_session(&self, by: &Actor, id: &str) -> Result<(), SecurityError> {
        if !self.authorizer.state().read().sessions.contains_key(id) {
            return Err(SecurityError::NotFound("no such session".into()));
        }
        self.write_session(&SessionRecord::Revoke { id: id.to_string() })?;
        self.audit(
            AuditKind::TokenRevoked,
            by,
            &id[..16.min(id.len())],
            "one session",
        )?;
        self.close(
            ConnectionMatch::Session(Arc::from(id)),
            "the session was revoked; sign in again",
        );
        Ok(())
    }

    /// Starts TOTP enrolment: a new secret, pending until a code confirms
    /// it. Returns the `otpauth://` URI to show as a QR code. A user whose
    /// second factor is on replaces it only from a session opened with a
    /// code (`session`: the asking session's id; `None` from the command
    /// line): a session opened with a stolen password before the factor
    /// was on cannot take it over.
    pub fn totp_enroll(
        &self,
        by: &Actor,
        user: &str,
        session: Option<&str>,
    ) -> Result<String, SecurityError> {
        let mut state = self.user(user)?;
        if state.totp_secret.is_some() && !self.session_has_code(session) {
            return Err(SecurityError::Denied(format!(
                "{user} has a second factor: sign in with a TOTP code to replace it"
            )));
        }
        let secret = totp::new_secret();
        state.totp_pending = Some(totp::secret_base32(&secret));
        state.changed_ms = now_ms();
        self.write_user(user, &state)?;
        self.audit(AuditKind::UserChanged, by, user, "TOTP enrolment started")?;
        Ok(totp::otpauth_uri(&self.config.totp_issuer, user, &secret))
    }

    /// Whether session `id` was opened with a TOTP code (`None`: the
    /// operator at the command line, who needs none).
    fn session_has_code(&self, id: Option<&str>) -> bool {
        let Some(id) = id else {
            return true;
        };
        let state = self.authorizer.state().read();
        state.sessions.get(id).is_some_and(|session| session.mfa)
    }

    /// Confirms enrolment with a code of the pending secret. The user's
    /// other sessions opened without a code end: they are what the second
    /// factor is to keep out (the asking `session` stays).
    pub fn totp_confirm(
        &self,
        by: &Actor,
        user: &str,
        code: &str,
        session: Option<&str>,
    ) -> Result<(), SecurityError> {
        let mut state = self.user(user)?;
        let pending = state
            .totp_pending
            .as_deref()
            .and_then(totp::secret_from_base32)
            .ok_or_else(|| SecurityError::Invalid("start enrolment first".into()))?;
        let step = totp::check(&pending, code, now_ms() / 1000, 0)
            .ok_or_else(|| SecurityError::Denied("wrong TOTP code".into()))?;
        state.totp_secret = state.totp_pending.take();
        state.totp_last_step = step;
        state.changed_ms = now_ms();
        self.write_user(user, &state)?;
        self.audit(AuditKind::UserChanged, by, user, "TOTP second factor on")?;
        let without_code: Vec<String> = {
            let state = self.authorizer.state().read();
            state
                .sessions
                .iter()
                .filter(|(id, s)| s.user == user && !s.mfa && Some(id.as_str()) != session)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in without_code {
            self.write_session(&SessionRecord::Revoke { id: id.clone() })?;
            self.audit(
                AuditKind::TokenRevoked,
                by,
                &id[..16.min(id.len())],
                "opened without a code before the second factor was on",
            )?;
            self.close(
                ConnectionMatch::Session(Arc::from(id.as_str())),
                "a second factor was turned on for this user; sign in again with a code",
            );
        }
        Ok(())
    }

    /// The authorizer this service feeds.
    pub fn authorizer(&self) -> &Arc<SecurityAuthorizer> {
        &self.authorizer
    }
}

/// A hash of a random password, checked against when the user does not
/// exist (made once).
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let password = data_encoding::HEXLOWER.encode(&super::random_bytes::<16>());
        hash_password(&password).expect("a random password hashes")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_backs_off_and_forgets_after_the_window() {
        let mut failures = Failures::default();
        let window = 900;
        for i in 0..5 {
            record_failure(&mut failures, window, 1000 + i);
        }
        assert_eq!(wait_s(&failures, 5, window, 1005), Some(1));
        record_failure(&mut failures, window, 1006);
        assert_eq!(wait_s(&failures, 5, window, 1006), Some(2));
        assert_eq!(wait_s(&failures, 5, window, 1006 + 2000), None);
        assert_eq!(wait_s(&failures, 5, window, 1000 + 901_000), None);
    }
}
