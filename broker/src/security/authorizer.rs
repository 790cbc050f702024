//! The authorizer used once authentication is on: a session token names a
//! session, the session a user, the user's roles what they may do.
//!
//! `authenticate` takes the state's read lock once per sign-in of a
//! connection; `authorize` takes no lock at all (the user's roles travel in
//! the [`Principal`], the role definitions are fixed at start). A change of a
//! user's roles, a disabled user, a changed password or a revoked session
//! closes the user's connections (`Engine::close_connections`), so nothing
//! keeps running on stale rights.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use starling_storage::audit::{AuditEntry, AuditKind};

use super::audit::AuditWriter;
use super::jwt::{looks_like_jwt, JwtVerifier};
use super::roles::Role;
use super::store::{token_id, AuthState};
use super::{AuthConfig, SecurityError};
use crate::auth::{Action, Authorizer, Denied, Principal};

/// Enforces users, sessions and roles (see the module documentation).
pub struct SecurityAuthorizer {
    state: Arc<RwLock<AuthState>>,
    roles: HashMap<String, Role>,
    idle_ms: u64,
    /// The state was loaded from the log; until then every sign-in waits.
    loaded: AtomicBool,
    /// Denied requests are recorded here (without waiting).
    audit: OnceLock<Arc<AuditWriter>>,
    /// Checks signed tokens of an external identity provider.
    jwt: Option<JwtVerifier>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SecurityAuthorizer {
    /// Checks the configured roles.
    pub fn new(config: &AuthConfig) -> Result<Arc<SecurityAuthorizer>, SecurityError> {
        let mut roles = HashMap::new();
        for role in &config.roles {
            let checked = Role::new(role)?;
            if roles.insert(role.name.clone(), checked).is_some() {
                return Err(SecurityError::Invalid(format!(
                    "role {:?} is defined twice",
                    role.name
                )));
            }
        }
        let jwt = if config.jwt_public_key_file.is_empty() {
            None
        } else {
            Some(JwtVerifier::from_file(
                std::path::Path::new(&config.jwt_public_key_file),
                &config.jwt_issuer,
                &config.jwt_audience,
            )?)
        };
        Ok(Arc::new(SecurityAuthorizer {
            jwt,
            state: Arc::new(RwLock::new(AuthState::default())),
            roles,
            idle_ms: config.session_idle_timeout_s.saturating_mul(1000),
            loaded: AtomicBool::new(false),
            audit: OnceLock::new(),
        }))
    }

    /// The folded users and sessions (written by the security service).
    pub fn state(&self) -> &Arc<RwLock<AuthState>> {
        &self.state
    }

    /// The configured roles.
    pub fn roles(&self) -> &HashMap<String, Role> {
        &self.roles
    }

    /// Records denied requests in `audit` from now on.
    pub fn set_audit(&self, audit: Arc<AuditWriter>) {
        let _ = self.audit.set(audit);
    }

    fn audit_denial(&self, user: &str, address: Option<SocketAddr>, target: &str, detail: &str) {
        if let Some(audit) = self.audit.get() {
            let source = address.map_or_else(|| "local".to_string(), |a| a.to_string());
            audit.record_later(AuditEntry::new(
                AuditKind::RequestDenied,
                user,
                source,
                target,
                detail,
            ));
        }
    }

    /// Marks the state as loaded: sign-ins are served from now on.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether one of the principal's roles, counted from its address, has
    /// `admin`.
    pub fn is_admin(&self, principal: &Principal) -> bool {
        principal.is_system() || self.applicable_roles(principal).any(|role| role.admin)
    }

    fn applicable_roles<'a>(&'a self, principal: &'a Principal) -> impl Iterator<Item = &'a Role> {
        let address = principal.address.map(|a| a.ip());
        principal
            .roles
            .iter()
            .filter_map(|name| self.roles.get(&**name))
            .filter(move |role| role.applies_from(address))
    }

    /// Resolves a token to a principal, or says why not.
    pub fn principal_for(
        &self,
        token: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(Denied(
                "the server is still loading its users; try again in a moment".into(),
            ));
        }
        if token.is_empty() {
            return Err(Denied(
                "authentication is on: sign in (POST /v1/auth/sign-in) and present the session token"
                    .into(),
            ));
        }
        if let Some(jwt) = self.jwt.as_ref().filter(|_| looks_like_jwt(token)) {
            return self.principal_from_jwt(jwt, token, address);
        }
        let id = token_id(token);
        let now = now_ms();
        let state = self.state.read();
        let Some(session) = state.sessions.get(&id) else {
            return Err(Denied(
                "unknown, expired or revoked session token; sign in again".into(),
            ));
        };
        let idle = now.saturating_sub(session.last_used_ms.load(Ordering::Relaxed));
        if now >= session.expires_ms || idle >= self.idle_ms {
            return Err(Denied("the session has expired; sign in again".into()));
        }
        let Some(user) = state.users.get(&session.user) else {
            return Err(Denied("the session's user no longer exists".into()));
        };
        if user.disabled {
            return Err(Denied(format!("user {} is disabled", session.user)));
        }
        let needs_totp = user
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .any(|role| role.require_totp);
        if needs_totp && !session.mfa {
            return Err(Denied(format!(
                "a role of {} requires a TOTP code at sign-in; sign in again with one",
                session.user
            )));
        }
        session.last_used_ms.store(now, Ordering::Relaxed);
        Ok(Principal {
            user: Arc::from(session.user.as_str()),
            roles: user.roles.iter().map(|r| Arc::from(r.as_str())).collect(),
            address,
            session: Some(Arc::from(id.as_str())),
        })
    }
}

impl SecurityAuthorizer {
    fn principal_from_jwt(
        &self,
        jwt: &JwtVerifier,
        token: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        let claims = jwt.verify(token).map_err(Denied)?;
        super::check_user_name(&claims.sub).map_err(|e| Denied(e.to_string()))?;
        if let Some(role) = claims.roles.iter().find(|r| !self.roles.contains_key(*r)) {
            return Err(Denied(format!(
                "the signed token names role {role:?}, which this server does not define"
            )));
        }
        let state = self.state.read();
        if state
            .users
            .get(&claims.sub)
            .is_some_and(|user| user.disabled)
        {
            return Err(Denied(format!("user {} is disabled", claims.sub)));
        }
        if claims
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .any(|role| role.require_totp)
        {
            return Err(Denied(
                "a role in the signed token requires a TOTP sign-in; the identity provider's token cannot prove one"
                    .into(),
            ));
        }
        Ok(Principal {
            user: Arc::from(claims.sub.as_str()),
            roles: claims.roles.iter().map(|r| Arc::from(r.as_str())).collect(),
            address,
            // The token's expiry goes with it: connections signed in with
            // it are closed once it passes (`session_in_use`).
            session: Some(Arc::from(
                format!("jwt:{}:{}", &token_id(token)[..32], claims.exp).as_str(),
            )),
        })
    }
}

impl SecurityAuthorizer {
    /// A user named by a verified client certificate: they must exist and
    /// be enabled, and a certificate cannot stand in for a TOTP code.
    fn principal_from_certificate(
        &self,
        name: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        let state = self.state.read();
        let Some(user) = state.users.get(name) else {
            return Err(Denied(format!(
                "the client certificate names {name:?}, who is not a user of this server"
            )));
        };
        if user.disabled {
            return Err(Denied(format!("user {name} is disabled")));
        }
        if user
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .any(|role| role.require_totp)
        {
            return Err(Denied(format!(
                "a role of {name} requires a TOTP sign-in, which a certificate cannot prove; sign in with a password and code"
            )));
        }
        Ok(Principal {
            user: Arc::from(name),
            roles: user.roles.iter().map(|r| Arc::from(r.as_str())).collect(),
            address,
            session: None,
        })
    }
}

impl Authorizer for SecurityAuthorizer {
    fn authenticate(
        &self,
        client_name: &str,
        token: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        self.principal_for(token, address).inspect_err(|denied| {
            self.audit_denial("", address, client_name, &format!("sign-in: {}", denied.0));
        })
    }

    fn authenticate_certificate(
        &self,
        client_name: &str,
        user: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        self.principal_from_certificate(user, address)
            .inspect_err(|denied| {
                self.audit_denial(
                    user,
                    address,
                    client_name,
                    &format!("certificate sign-in: {}", denied.0),
                );
            })
    }

    fn session_in_use(&self, principal: &Principal) -> Result<(), Denied> {
        let Some(id) = principal.session.as_deref() else {
            return Ok(());
        };
        // A signed token's session is the token: in use until it expires.
        if let Some(token) = id.strip_prefix("jwt:") {
            let exp_s = token
                .rsplit_once(':')
                .and_then(|(_, exp)| exp.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if now_ms() / 1000 >= exp_s.saturating_add(super::jwt::LEEWAY_S) {
                return Err(Denied(
                    "the signed token has expired; sign in with a new one from the identity provider"
                        .into(),
                ));
            }
            return Ok(());
        }
        let state = self.state.read();
        let Some(session) = state.sessions.get(id) else {
            return Err(Denied(
                "the sign-in session has ended (revoked or expired); sign in again".into(),
            ));
        };
        let now = now_ms();
        if now >= session.expires_ms {
            return Err(Denied(
                "the sign-in session has expired (auth.session_absolute_timeout_s); sign in again"
                    .into(),
            ));
        }
        session.last_used_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    fn refused(&self, principal: &Principal, target: &str, detail: &str) {
        self.audit_denial(&principal.user, principal.address, target, detail);
    }

    fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        channel: &str,
    ) -> Result<(), Denied> {
        // The server's own components, and in-process clients of the
        // embedding program, are the program itself.
        if principal.is_system() || principal.address.is_none() {
            return Ok(());
        }
        if self
            .applicable_roles(principal)
            .any(|role| role.allows(&principal.user, action, channel))
        {
            return Ok(());
        }
        self.audit_denial(
            &principal.user,
            principal.address,
            channel,
            &action.to_string(),
        );
        Err(Denied(format!(
            "{} may not {action} {channel}: none of their roles allows it from this address",
            principal.user
        )))
    }
}
