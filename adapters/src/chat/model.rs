//! The chat model kept in the log: channel state folded from the events of
//! `$chat/meta/<channel>`, a user's channel list folded from
//! `$chat/user/<user>`, and the names of the reserved channels. Pure
//! functions over records; no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use starling_protocol::Message;

/// Longest chat channel id a user may create.
pub const CHANNEL_ID_BYTES_MAX: usize = 64;
/// Most other users in one direct channel.
pub const DIRECT_USERS_MAX: usize = 8;
/// Most members a `channel_create` may name (more join or are invited):
/// each costs a durable record in the member's channel list.
pub const CREATE_MEMBERS_MAX: usize = 256;
/// Longest display name or topic.
pub const CHANNEL_TEXT_BYTES_MAX: usize = 1024;
/// Prefix of direct channels.
pub const DIRECT_PREFIX: &str = "dm/";

/// The reserved channel holding `channel`'s events.
pub fn meta_channel(channel: &str) -> String {
    format!("$chat/meta/{channel}")
}

/// The reserved channel holding `user`'s channel list.
pub fn user_channel(user: &str) -> String {
    format!("$chat/user/{user}")
}

/// The reserved channel listing public channels.
pub const DIRECTORY_CHANNEL: &str = "$chat/directory";

/// The reserved channel indexing the replies to `root` in `channel`.
pub fn thread_channel(channel: &str, root: u64) -> String {
    format!("$chat/thread/{channel}/{root}")
}

/// The reserved channel holding `user`'s presence changes.
pub fn presence_channel(user: &str) -> String {
    format!("$chat/presence/{user}")
}

/// Checks a channel id a user wants to create.
pub fn check_channel_id(channel: &str) -> Result<(), String> {
    let valid = !channel.is_empty()
        && channel.len() <= CHANNEL_ID_BYTES_MAX
        && channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "channel id {channel:?} is not valid: use 1 to {CHANNEL_ID_BYTES_MAX} characters of a-z, 0-9, '-', '_' and '.'"
        ))
    }
}

/// Checks a user name as it appears in direct channel ids and reserved
/// channel names.
pub fn check_user_name(user: &str) -> Result<(), String> {
    let valid = !user.is_empty()
        && user.len() <= CHANNEL_ID_BYTES_MAX
        && !user.starts_with('$')
        && user
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/' && c != '+');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "user name {user:?} is not valid: use 1 to {CHANNEL_ID_BYTES_MAX} characters without spaces, '/', '+' or a leading '$'"
        ))
    }
}

/// The id of the direct channel between `users` (order does not matter).
pub fn direct_channel_id(users: &BTreeSet<String>) -> String {
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    format!("{DIRECT_PREFIX}{}", names.join("+"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Public,
    Private,
    Direct,
}

/// One change of a channel, as stored in `$chat/meta/<channel>` (and copied
/// into the channel itself with `by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelEvent {
    Created {
        name: String,
        visibility: Visibility,
        topic: String,
        owner: String,
        members: Vec<String>,
    },
    Renamed {
        name: String,
    },
    Topic {
        topic: String,
    },
    MemberAdded {
        user: String,
    },
    MemberRemoved {
        user: String,
    },
}

/// A channel's state: its events folded in order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChannelMeta {
    /// False for a channel without events (one only MQTT or native clients
    /// used): public, no members, anyone may read and write.
    pub exists: bool,
    pub name: String,
    pub visibility: Visibility,
    pub topic: String,
    pub owner: String,
    pub members: BTreeSet<String>,
    /// The seq of the last record of `$chat/meta/<channel>` folded in (0:
    /// none): of two states of a channel, the higher version is the newer.
    pub version: u64,
}

impl ChannelMeta {
    /// Folds the records of `$chat/meta/<channel>`, oldest first. Records that
    /// do not parse are skipped (and logged), and a second `created` is
    /// ignored: the first creation wins.
    pub fn fold(channel: &str, records: &[Message]) -> ChannelMeta {
        let mut meta = ChannelMeta {
            name: channel.to_string(),
            ..ChannelMeta::default()
        };
        for record in records {
            meta.version = meta.version.max(record.seq);
            match serde_json::from_slice::<ChannelEvent>(&record.body) {
                Ok(event) => meta.apply(&event),
                Err(error) => log::warn!(
                    "chat: skipping unreadable event seq {} of channel {channel:?}: {error}",
                    record.seq
                ),
            }
        }
        meta
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &ChannelEvent) {
        match event {
            ChannelEvent::Created {
                name,
                visibility,
                topic,
                owner,
                members,
            } => {
                if self.exists {
                    return;
                }
                self.exists = true;
                self.name = name.clone();
                self.visibility = *visibility;
                self.topic = topic.clone();
                self.owner = owner.clone();
                self.members = members.iter().cloned().collect();
            }
            ChannelEvent::Renamed { name } => self.name = name.clone(),
            ChannelEvent::Topic { topic } => self.topic = topic.clone(),
            ChannelEvent::MemberAdded { user } => {
                self.members.insert(user.clone());
            }
            ChannelEvent::MemberRemoved { user } => {
                self.members.remove(user);
            }
        }
    }

    /// True when `user` may read and write the channel. A channel without
    /// events is open, except a direct channel's id: it names its users, and
    /// only they may use it before it is made (a predictable id must not let
    /// a third user subscribe ahead of the conversation).
    pub fn admits(&self, user: &str) -> bool {
        if !self.exists {
            return match self.name.strip_prefix(DIRECT_PREFIX) {
                Some(users) => users.split('+').any(|named| named == user),
                None => true,
            };
        }
        self.visibility == Visibility::Public || self.members.contains(user)
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains(user)
    }
}

/// One change of a user's channel list, in `$chat/user/<user>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MembershipEvent {
    Joined { channel: String },
    Left { channel: String },
}

/// Folds a user's channel list, in the order the user joined them.
pub fn fold_channel_list(records: &[Message]) -> Vec<String> {
    let mut channels: Vec<String> = Vec::new();
    for record in records {
        match serde_json::from_slice::<MembershipEvent>(&record.body) {
            Ok(MembershipEvent::Joined { channel }) => {
                if !channels.contains(&channel) {
                    channels.push(channel);
                }
            }
            Ok(MembershipEvent::Left { channel }) => channels.retain(|c| *c != channel),
            Err(error) => log::warn!(
                "chat: skipping unreadable membership record seq {}: {error}",
                record.seq
            ),
        }
    }
    channels
}

/// One record of `$chat/directory`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DirectoryEvent {
    Created { channel: String },
}

/// Presence states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Away,
    Offline,
}

/// The body of a presence record and of the ephemeral presence message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub user: String,
    pub status: Presence,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(seq: u64, event: &impl Serialize) -> Message {
        Message {
            seq,
            body: Bytes::from(serde_json::to_vec(event).unwrap()),
            ..Message::default()
        }
    }

    #[test]
    fn channel_state_folds_in_order_and_first_creation_wins() {
        let records = vec![
            record(
                1,
                &ChannelEvent::Created {
                    name: "HR".into(),
                    visibility: Visibility::Private,
                    topic: String::new(),
                    owner: "alice".into(),
                    members: vec!["alice".into()],
                },
            ),
            record(2, &ChannelEvent::MemberAdded { user: "bob".into() }),
            record(
                3,
                &ChannelEvent::Created {
                    name: "taken over".into(),
                    visibility: Visibility::Public,
                    topic: String::new(),
                    owner: "mallory".into(),
                    members: vec![],
                },
            ),
            record(
                4,
                &ChannelEvent::Renamed {
                    name: "People".into(),
                },
            ),
            record(
                5,
                &ChannelEvent::MemberRemoved {
                    user: "alice".into(),
                },
            ),
        ];
        let meta = ChannelMeta::fold("hr", &records);
        assert!(meta.exists);
        assert_eq!(meta.name, "People");
        assert_eq!(meta.owner, "alice");
        assert_eq!(meta.visibility, Visibility::Private);
        assert!(meta.admits("bob"));
        assert!(!meta.admits("alice"));
        assert!(!meta.admits("mallory"));
    }

    #[test]
    fn channel_without_events_is_open() {
        let meta = ChannelMeta::fold("sensors", &[]);
        assert!(!meta.exists);
        assert!(meta.admits("anyone"));
    }

    #[test]
    fn a_direct_channel_id_admits_only_its_users_before_it_is_made() {
        let meta = ChannelMeta::fold("dm/alice+bob", &[]);
        assert!(!meta.exists);
        assert!(meta.admits("alice"));
        assert!(meta.admits("bob"));
        assert!(!meta.admits("carol"));
        assert!(!meta.admits("alice+bob"));
    }

    #[test]
    fn channel_list_folds_joins_and_leaves() {
        let records = vec![
            record(
                1,
                &MembershipEvent::Joined {
                    channel: "a".into(),
                },
            ),
            record(
                2,
                &MembershipEvent::Joined {
                    channel: "b".into(),
                },
            ),
            record(
                3,
                &MembershipEvent::Left {
                    channel: "a".into(),
                },
            ),
            record(
                4,
                &MembershipEvent::Joined {
                    channel: "b".into(),
                },
            ),
            record(
                5,
                &MembershipEvent::Joined {
                    channel: "a".into(),
                },
            ),
        ];
        assert_eq!(fold_channel_list(&records), vec!["b", "a"]);
    }

    #[test]
    fn names() {
        assert!(check_channel_id("general").is_ok());
        assert!(check_channel_id("General").is_err());
        assert!(check_channel_id("a/b").is_err());
        assert!(check_channel_id("").is_err());
        assert!(check_user_name("$server").is_err());
        assert!(check_user_name("bob+eve").is_err());
        let users: BTreeSet<String> = ["carol", "alice"].iter().map(|s| s.to_string()).collect();
        assert_eq!(direct_channel_id(&users), "dm/alice+carol");
        assert_eq!(thread_channel("general", 7), "$chat/thread/general/7");
    }
}
