//! What an audit entry says: its kind (with a stable code), who, from where,
//! on what, and the details; and the limits on each field.

use super::AuditError;

/// Longest actor (user id or principal), in bytes.
pub const ACTOR_BYTES_MAX: usize = 256;
/// Longest source address (`[ipv6%zone]:port` fits with room), in bytes.
pub const SOURCE_BYTES_MAX: usize = 128;
/// Longest target (a user, role, channel, token id, setting), in bytes.
pub const TARGET_BYTES_MAX: usize = 1024;
/// Longest detail (small JSON or key=value text), in bytes. An audit entry
/// records that something happened, not the data it touched.
pub const DETAIL_BYTES_MAX: usize = 8 * 1024;

/// The sequence number of an audit entry: gap-free from 1 in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditSeq(pub u64);

/// What happened. The code of each kind is part of the file format and of
/// the export: it never changes, and new kinds take new codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum AuditKind {
    /// A sign-in succeeded.
    SignInSucceeded = 1,
    /// A sign-in failed (wrong password, wrong second factor, unknown user).
    SignInFailed = 2,
    /// A session token was issued.
    TokenIssued = 3,
    /// A session token was revoked.
    TokenRevoked = 4,
    /// A role, permission or channel membership changed.
    PermissionChanged = 5,
    /// A user was added, disabled, removed, or changed password or factors.
    UserChanged = 6,
    /// Any other action through the admin API or console.
    AdminAction = 7,
    /// The configuration changed (file reloaded, setting changed).
    ConfigurationChanged = 8,
    /// A request was denied (authentication, permission, allow-list, limit).
    RequestDenied = 9,
}

impl AuditKind {
    /// Every kind, in code order.
    pub const ALL: [AuditKind; 9] = [
        AuditKind::SignInSucceeded,
        AuditKind::SignInFailed,
        AuditKind::TokenIssued,
        AuditKind::TokenRevoked,
        AuditKind::PermissionChanged,
        AuditKind::UserChanged,
        AuditKind::AdminAction,
        AuditKind::ConfigurationChanged,
        AuditKind::RequestDenied,
    ];

    /// The stable code stored on disk.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The kind with this code, if it is one.
    pub fn from_code(code: u16) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// The stable name used in exports (`sign_in_failed`).
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::SignInSucceeded => "sign_in_succeeded",
            AuditKind::SignInFailed => "sign_in_failed",
            AuditKind::TokenIssued => "token_issued",
            AuditKind::TokenRevoked => "token_revoked",
            AuditKind::PermissionChanged => "permission_changed",
            AuditKind::UserChanged => "user_changed",
            AuditKind::AdminAction => "admin_action",
            AuditKind::ConfigurationChanged => "configuration_changed",
            AuditKind::RequestDenied => "request_denied",
        }
    }
}

/// One audited event, as the caller describes it. The log adds the sequence
/// number, the timestamp and the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// What happened.
    pub kind: AuditKind,
    /// Who did it: a user id or principal (empty if unknown).
    pub actor: String,
    /// From where: the client's address, `ip:port` (empty if none).
    pub source: String,
    /// On what: a user, role, channel, token id or setting (may be empty).
    pub target: String,
    /// Details: small JSON or `key=value` text (may be empty).
    pub detail: String,
}

impl AuditEntry {
    /// An entry with every field given.
    pub fn new(
        kind: AuditKind,
        actor: impl Into<String>,
        source: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> AuditEntry {
        AuditEntry {
            kind,
            actor: actor.into(),
            source: source.into(),
            target: target.into(),
            detail: detail.into(),
        }
    }

    /// The entry with every field cut to its limit (at a character
    /// boundary, ending in `…` where cut): what a client sends (a user name,
    /// a client name, a channel) can be longer than a field may be, and an
    /// entry over a limit would be refused with the rest of its batch.
    pub fn within_limits(mut self) -> AuditEntry {
        for (value, limit) in [
            (&mut self.actor, ACTOR_BYTES_MAX),
            (&mut self.source, SOURCE_BYTES_MAX),
            (&mut self.target, TARGET_BYTES_MAX),
            (&mut self.detail, DETAIL_BYTES_MAX),
        ] {
            if value.len() > limit {
                const MARK: &str = "…";
                let mut end = limit - MARK.len();
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                value.truncate(end);
                value.push_str(MARK);
            }
        }
        self
    }

    /// Checks every field against its limit.
    pub fn check_limits(&self) -> Result<(), AuditError> {
        for (field, value, limit_name, limit) in [
            ("actor", &self.actor, "ACTOR_BYTES_MAX", ACTOR_BYTES_MAX),
            ("source", &self.source, "SOURCE_BYTES_MAX", SOURCE_BYTES_MAX),
            ("target", &self.target, "TARGET_BYTES_MAX", TARGET_BYTES_MAX),
            ("detail", &self.detail, "DETAIL_BYTES_MAX", DETAIL_BYTES_MAX),
        ] {
            if value.len() > limit {
                return Err(AuditError::TooLarge {
                    field,
                    bytes: value.len() as u64,
                    limit_name,
                    limit: limit as u64,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_over_their_limits_are_cut_at_a_character_boundary() {
        let long = "é".repeat(TARGET_BYTES_MAX);
        let entry = AuditEntry::new(AuditKind::RequestDenied, "a".repeat(300), "", long, "")
            .within_limits();
        assert!(entry.check_limits().is_ok());
        assert_eq!(entry.actor.len(), ACTOR_BYTES_MAX);
        assert!(entry.actor.ends_with('…'));
        assert!(entry.target.len() <= TARGET_BYTES_MAX);
        assert!(entry.target.ends_with("é…"));
        let short = AuditEntry::new(AuditKind::SignInFailed, "bob", "127.0.0.1:1", "bob", "x");
        assert_eq!(short.clone().within_limits(), short);
    }
}
