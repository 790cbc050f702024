//! The authorization hook. Every operation carries a [`Principal`]; the broker
//! asks the engine's [`Authorizer`] before it acts. The security work replaces
//! the default [`LoopbackAuthorizer`] with users, roles and channel patterns.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The role of [`Principal::system`].
pub const SYSTEM_ROLE: &str = "$system";

/// Who is asking: a user, the roles they hold and where they connect from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user: Arc<str>,
    pub roles: Arc<[Arc<str>]>,
    /// `None` for in-process (embedded) clients.
    pub address: Option<SocketAddr>,
    /// The id of the sign-in session the principal came from (the hex
    /// SHA-256 of its token), when there is one: revoking the session closes
    /// its connections.
    pub session: Option<Arc<str>>,
}

impl Principal {
    /// The principal of an in-process client of the embedding program.
    pub fn embedded(user: &str) -> Principal {
        Principal {
            user: Arc::from(user),
            roles: no_roles(),
            address: None,
            session: None,
        }
    }

    /// The principal of the server's own in-process components (the chat
    /// adapter's channel bookkeeping): the only principal that may append to
    /// reserved (`$`) channels. Its role name starts with `$`, which no
    /// authorizer may hand to a client.
    pub fn system(user: &str) -> Principal {
        Principal {
            user: Arc::from(user),
            roles: Arc::from(vec![Arc::from(SYSTEM_ROLE)]),
            address: None,
            session: None,
        }
    }

    /// True for [`Principal::system`] principals.
    pub fn is_system(&self) -> bool {
        self.address.is_none() && self.roles.iter().any(|role| &**role == SYSTEM_ROLE)
    }

    /// True when the principal connects from a loopback address or in process.
    pub fn is_local(&self) -> bool {
        match self.address {
            None => true,
            Some(address) => is_loopback(&address),
        }
    }
}

/// Loopback test that also accepts IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`).
pub fn is_loopback(address: &SocketAddr) -> bool {
    match address {
        SocketAddr::V4(v4) => v4.ip().is_loopback(),
        SocketAddr::V6(v6) => {
            v6.ip().is_loopback() || v6.ip().to_ipv4_mapped().is_some_and(|ip| ip.is_loopback())
        }
    }
}

/// What a principal wants to do to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
    History,
    CursorWrite,
    CursorRead,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::History => "history",
            Action::CursorWrite => "cursor write",
            Action::CursorRead => "cursor read",
        })
    }
}

/// Why a request was refused; the text is shown to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied(pub String);

/// Decides who may connect and what they may do. Called on the shard that
/// owns the connection, once per operation, so it must be cheap and must not
/// block.
pub trait Authorizer: Send + Sync + 'static {
    /// Turns the credentials a client presents into a principal.
    fn authenticate(
        &self,
        client_name: &str,
        token: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied>;

    /// Turns a verified client certificate that names `user` (the client
    /// gave no token) into a principal. The default refuses: an authorizer
    /// trusts certificates only if it says so.
    fn authenticate_certificate(
        &self,
        _client_name: &str,
        user: &str,
        _address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        Err(Denied(format!(
            "the client certificate names {user}, but this server does not sign in users by certificate; send a token"
        )))
    }

    /// Whether the sign-in session `principal` came from still stands, asked
    /// every `session_check_ms` for each open connection whose principal
    /// has one. A refusal closes the connection with its text. An
    /// authorizer with idle timeouts counts the open connection as use of
    /// its session. The default says yes.
    fn session_in_use(&self, principal: &Principal) -> Result<(), Denied> {
        let _ = principal;
        Ok(())
    }

    /// Allows or refuses `action` on `channel`.
    fn authorize(&self, principal: &Principal, action: Action, channel: &str)
        -> Result<(), Denied>;

    /// Whether principals' user names are verified (signed in), so that
    /// what a user starts (an MQTT client id's persistent session) can be
    /// kept for that user. The default says yes; the loopback authorizer,
    /// which takes any name as given, says no.
    fn verifies_users(&self) -> bool {
        true
    }

    /// Records a request that an adapter refused on its own account (for
    /// the audit log); `target` names what was refused.
    fn refused(&self, principal: &Principal, target: &str, detail: &str) {
        let _ = (principal, target, detail);
    }
}

/// An empty role list, shared: an `Arc` of its own, even empty, is an
/// allocation per connection, and most principals of a server without
/// authentication have no roles.
pub fn no_roles() -> Arc<[Arc<str>]> {
    static NO_ROLES: OnceLock<Arc<[Arc<str>]>> = OnceLock::new();
    NO_ROLES.get_or_init(|| Arc::from(Vec::new())).clone()
}

/// The user name of clients that give none, shared by their principals.
fn anonymous() -> Arc<str> {
    static ANONYMOUS: OnceLock<Arc<str>> = OnceLock::new();
    ANONYMOUS.get_or_init(|| Arc::from("anonymous")).clone()
}

/// The default before authentication is configured: anyone on loopback (or
/// in process) may do anything, under the user name given as the token (or
/// `anonymous`); every other address is refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopbackAuthorizer;

const NOT_CONFIGURED: &str = "authentication is not configured, so only loopback clients are \
     served; configure authentication (see docs/SECURITY.md) before serving other addresses";

impl Authorizer for LoopbackAuthorizer {
    fn authenticate(
        &self,
        _client_name: &str,
        token: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        let principal = Principal {
            user: if token.is_empty() {
                anonymous()
            } else {
                Arc::from(token)
            },
            roles: no_roles(),
            address,
            session: None,
        };
        if principal.is_local() {
            Ok(principal)
        } else {
            Err(Denied(NOT_CONFIGURED.to_string()))
        }
    }

    /// As with a token: the name is taken as given, and only loopback
    /// clients are served.
    fn authenticate_certificate(
        &self,
        client_name: &str,
        user: &str,
        address: Option<SocketAddr>,
    ) -> Result<Principal, Denied> {
        self.authenticate(client_name, user, address)
    }

    /// Names are taken as given, so nothing is kept for a user.
    fn verifies_users(&self) -> bool {
        false
    }

    fn authorize(&self, principal: &Principal, _: Action, _: &str) -> Result<(), Denied> {
        if principal.is_local() {
            Ok(())
        } else {
            Err(Denied(NOT_CONFIGURED.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rules() {
        let auth = LoopbackAuthorizer;
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let alice = auth.authenticate("cli", "alice", Some(local)).unwrap();
        assert_eq!(&*alice.user, "alice");
        assert!(auth.authenticate("cli", "", Some(mapped)).is_ok());
        assert!(auth.authenticate("cli", "bob", Some(remote)).is_err());
        assert!(auth.authorize(&alice, Action::Publish, "general").is_ok());
        let outsider = Principal {
            address: Some(remote),
            ..alice
        };
        assert!(auth
            .authorize(&outsider, Action::Subscribe, "general")
            .is_err());
    }
}
