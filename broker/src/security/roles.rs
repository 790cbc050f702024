//! Roles: what their holders may do to which channels, and from where.
//!
//! Permissions are channel patterns (`+` one level, `#` the rest; see
//! [`crate::pattern`]), in the spirit of NATS subject permissions. `{user}`
//! in a pattern stands for the holder's user name, so `$chat/user/{user}` lets
//! each user read their own event stream. Patterns that start with a
//! wildcard never match the server's `$` channels.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::SecurityError;
use crate::auth::Action;
use crate::pattern;

/// A role as written in the configuration (`[[auth.roles]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    pub name: String,
    /// Channel patterns the role may publish to.
    pub publish: Vec<String>,
    /// Channel patterns the role may subscribe to (and keep read markers on).
    pub subscribe: Vec<String>,
    /// Channel patterns whose history the role may read.
    pub history: Vec<String>,
    /// Manage users, sessions and the server (the admin API).
    pub admin: bool,
    /// Holders must sign in with a TOTP code.
    pub require_totp: bool,
    /// When not empty, the role counts only for connections from these
    /// networks (CIDRs, IPv4 or IPv6; IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub allow_from: Vec<String>,
}

/// A checked role.
#[derive(Clone, Debug)]
pub struct Role {
    pub name: String,
    publish: Vec<String>,
    subscribe: Vec<String>,
    history: Vec<String>,
    pub admin: bool,
    pub require_totp: bool,
    allow_from: Vec<IpNet>,
}

/// Parses CIDRs (a bare address is a /32 or /128).
pub fn parse_networks(what: &str, list: &[String]) -> Result<Vec<IpNet>, SecurityError> {
    list.iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    SecurityError::Invalid(format!(
                        "{what}: {text:?} is not a network like 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7"
                    ))
                })
        })
        .collect()
}

/// Whether `address` is in one of `networks`; an IPv4-mapped IPv6 address is
/// checked as the IPv4 address it carries.
pub fn address_in(networks: &[IpNet], address: IpAddr) -> bool {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|network| network.contains(&address))
}

impl Role {
    /// Checks a configured role.
    pub fn new(config: &RoleConfig) -> Result<Role, SecurityError> {
        if config.name.is_empty() || config.name.starts_with('$') {
            return Err(SecurityError::Invalid(format!(
                "role name {:?}: give a name that does not start with '$'",
                config.name
            )));
        }
        for list in [&config.publish, &config.subscribe, &config.history] {
            for pattern_text in list {
                let probe = pattern_text.replace("{user}", "user");
                if pattern::is_pattern(&probe) {
                    pattern::validate(&probe).map_err(|e| {
                        SecurityError::Invalid(format!("role {}: {e}", config.name))
                    })?;
                }
            }
        }
        Ok(Role {
            name: config.name.clone(),
            publish: config.publish.clone(),
            subscribe: config.subscribe.clone(),
            history: config.history.clone(),
            admin: config.admin,
            require_totp: config.require_totp,
            allow_from: parse_networks(
                &format!("role {} allow_from", config.name),
                &config.allow_from,
            )?,
        })
    }

    /// Whether the role counts for a connection from `address` (`None`: in
    /// process).
    pub fn applies_from(&self, address: Option<IpAddr>) -> bool {
        self.allow_from.is_empty() || address.is_some_and(|a| address_in(&self.allow_from, a))
    }

    /// Whether the role lets `user` do `action` on `channel`.
    pub fn allows(&self, user: &str, action: Action, channel: &str) -> bool {
        let lists: &[&Vec<String>] = match action {
            Action::Publish => &[&self.publish],
            Action::Subscribe => &[&self.subscribe],
            Action::History => &[&self.history],
            // A read marker belongs with reading the channel.
            Action::CursorWrite | Action::CursorRead => &[&self.subscribe, &self.history],
        };
        lists
            .iter()
            .flat_map(|list| list.iter())
            .any(|pattern_text| {
                // Only patterns naming `{user}` are rewritten: the check
                // runs for every request and allocates nothing otherwise.
                let pattern_text: std::borrow::Cow<'_, str> = if pattern_text.contains("{user}") {
                    pattern_text.replace("{user}", user).into()
                } else {
                    pattern_text.as_str().into()
                };
                match (
                    pattern::is_pattern(&pattern_text),
                    pattern::is_pattern(channel),
                ) {
                    // A pattern subscription: every channel it brings must
                    // be one the role allows (`team/+` does not allow
                    // `team/#`).
                    (true, true) => pattern::covers(&pattern_text, channel),
                    (true, false) => pattern::matches(&pattern_text, channel),
                    (false, _) => *pattern_text == *channel,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(publish: &[&str], allow_from: &[&str]) -> Role {
        Role::new(&RoleConfig {
            name: "member".into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: vec!["#".into(), "$chat/user/{user}".into()],
            allow_from: allow_from.iter().map(|s| s.to_string()).collect(),
            ..RoleConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn patterns_and_the_user_placeholder() {
        let member = role(&["team/+", "general"], &[]);
        assert!(member.allows("alice", Action::Publish, "general"));
        assert!(member.allows("alice", Action::Publish, "team/red"));
        assert!(!member.allows("alice", Action::Publish, "team/red/x"));
        assert!(!member.allows("alice", Action::Publish, "random"));
        assert!(member.allows("alice", Action::Subscribe, "anything/at/all"));
        assert!(!member.allows("alice", Action::Subscribe, "$chat/meta/general"));
        assert!(member.allows("alice", Action::Subscribe, "$chat/user/alice"));
        assert!(!member.allows("alice", Action::Subscribe, "$chat/user/bob"));
        assert!(!member.allows("alice", Action::History, "general"));
        assert!(member.allows("alice", Action::CursorWrite, "general"));
    }

    /// A pattern subscription is allowed only when every channel it
    /// brings is: a role's `team/+` allows `team/+` and `team/red`, not
    /// `team/#` (every depth) nor `#`.
    #[test]
    fn a_pattern_request_must_be_covered_by_the_role() {
        let member = Role::new(&RoleConfig {
            name: "member".into(),
            subscribe: vec!["team/+".into(), "+".into()],
            ..RoleConfig::default()
        })
        .unwrap();
        assert!(member.allows("alice", Action::Subscribe, "team/+"));
        assert!(member.allows("alice", Action::Subscribe, "team/red"));
        assert!(!member.allows("alice", Action::Subscribe, "team/#"));
        assert!(!member.allows("alice", Action::Subscribe, "team/+/x"));
        assert!(member.allows("alice", Action::Subscribe, "+"));
        assert!(!member.allows("alice", Action::Subscribe, "#"));
        assert!(!member.allows("alice", Action::Subscribe, "+/+"));
    }

    #[test]
    fn allow_lists_for_v4_v6_and_mapped_addresses() {
        let office = role(&["#"], &["10.1.0.0/16", "2001:db8::/32", "192.0.2.7"]);
        let at = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        assert!(office.applies_from(at("10.1.2.3")));
        assert!(!office.applies_from(at("10.2.0.1")));
        assert!(office.applies_from(at("2001:db8::1")));
        assert!(!office.applies_from(at("2001:db9::1")));
        assert!(office.applies_from(at("::ffff:10.1.9.9")), "IPv4-mapped");
        assert!(!office.applies_from(at("::ffff:10.2.9.9")));
        assert!(office.applies_from(at("192.0.2.7")));
        assert!(!office.applies_from(None));
        assert!(Role::new(&RoleConfig {
            name: "x".into(),
            allow_from: vec!["10.0.0.0/33".into()],
            ..RoleConfig::default()
        })
        .is_err());
    }
}
