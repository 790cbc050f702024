//! The chat workers: requests that need several reads of the log or change a
//! channel's state, run as plain sequential code over a blocking in-process
//! client. Results go back to the connection's session as a [`Done`] event.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use serde::Serialize;
use serde_json::{json, Value};
use starling_broker::{Action, BrokerError, Command, ConnRef, LocalClient, Principal};
use starling_protocol::{kind, HistoryQuery, Message};

use super::json::{message_value, ChatError, Request, THREAD_LIMIT_DEFAULT};
use super::model::{
    check_channel_id, check_user_name, direct_channel_id, meta_channel, presence_channel,
    thread_channel, user_channel, ChannelEvent, ChannelMeta, DirectoryEvent, MembershipEvent,
    Presence, PresenceChange, Visibility, CHANNEL_TEXT_BYTES_MAX, CREATE_MEMBERS_MAX,
    DIRECTORY_CHANNEL, DIRECT_USERS_MAX,
};
use super::ChatService;

/// Records read per history request while loading a whole reserved channel.
const LOAD_PAGE: u32 = 500;
/// Unread messages counted per channel; more show as "99+" anyway.
const UNREAD_COUNT_MAX: u32 = 100;

pub(crate) struct Job {
    /// The connection to answer; `None` for work nobody waits for.
    pub conn: Option<ConnRef>,
    /// The client's request id.
    pub id: u64,
    pub user: Arc<str>,
    /// The user's principal, whose rights the work is checked against;
    /// `None` for the server's own work.
    pub principal: Option<Principal>,
    pub work: Work,
}

pub(crate) enum Work {
    /// A request the session does not handle itself.
    Request(Request),
    /// Load `channel`'s state into the cache, then let the session retry.
    Resolve { channel: String },
    /// Index reply `reply_seq` of thread `root` in `channel`.
    IndexReply {
        channel: String,
        root: u64,
        reply_seq: u64,
        published: Value,
    },
    /// Record the pending presence changes (`ChatService::presence_changed`).
    Presence,
}

impl Work {
    /// Work on one channel goes to one worker, so changes of a channel are
    /// applied one after the other.
    pub fn route_key(&self) -> String {
        match self {
            Work::Request(Request::Direct { users }) => users.join("+"),
            Work::Request(request) => request.channel().unwrap_or_default().to_string(),
            Work::Resolve { channel } | Work::IndexReply { channel, .. } => channel.clone(),
            Work::Presence => String::new(),
        }
    }
}

/// The result of a job, sent to the session.
pub struct Done {
    pub id: u64,
    pub outcome: std::result::Result<Outcome, ChatError>,
}

pub enum Outcome {
    /// The answer.
    Value(Value),
    /// Publish these as the user; answer with the first one's result.
    Publish(Vec<Command>),
    /// The channel's state is cached now; run the request again.
    Retry,
}

pub(crate) fn run(service: Weak<ChatService>, client: LocalClient, jobs: Receiver<Job>) {
    let mut worker = Worker { client };
    while let Ok(job) = jobs.recv() {
        let Some(service) = service.upgrade() else {
            return;
        };
        let outcome = worker.handle(&service, &job.user, job.principal.as_ref(), job.work);
        if let Some(conn) = job.conn {
            service.notify(
                conn,
                Done {
                    id: job.id,
                    outcome,
                },
            );
        } else if let Err(error) = outcome {
            log::warn!(
                "chat: background work for {:?} failed: {}",
                job.user,
                error.message
            );
        }
    }
}

struct Worker {
    client: LocalClient,
}

type Result<T> = std::result::Result<T, ChatError>;

impl Worker {
    fn handle(
        &mut self,
        service: &ChatService,
        user: &str,
        principal: Option<&Principal>,
        work: Work,
    ) -> Result<Outcome> {
        match work {
            Work::Request(request) => {
                // The worker reads and writes as the server: the user's own
                // rights are checked first, as the broker checks them for
                // requests it gets from the user.
                let target = match &request {
                    Request::Direct { users } => direct_id(users, user),
                    other => other.channel().unwrap_or_default().to_string(),
                };
                if let Some(action) = needed_right(&request, user) {
                    service.may(principal, action, &target)?;
                }
                let outcome = self.request(service, user, principal, request);
                // The chat layer's own refusals (membership, ownership) are
                // audited as the broker's are (`may` audits its own).
                if let Err(error) = &outcome {
                    if error.code == "denied" {
                        service.refused(principal, &target, &error.message);
                    }
                }
                outcome
            }
            Work::Resolve { channel } => {
                self.meta(service, &channel)?;
                Ok(Outcome::Retry)
            }
            Work::IndexReply {
                channel,
                root,
                reply_seq,
                published,
            } => {
                // The client message id makes a retried reply (whose first
                // index entry did land) append no second entry.
                self.append_with_id(
                    &thread_channel(&channel, root),
                    kind::REPLY,
                    reply_seq,
                    Bytes::new(),
                    Bytes::from(format!("r{reply_seq}")),
                )?;
                Ok(Outcome::Value(published))
            }
            Work::Presence => {
                // One batch per job: changes that came meanwhile take a new
                // job behind the others, so a client that changes its
                // presence without pause does not hold the worker.
                while let Some(changes) = service.take_presence_changes() {
                    for (user, status) in changes {
                        if let Err(error) = self.record_presence(&user, status) {
                            log::warn!(
                                "chat: presence of {user:?} not recorded: {}",
                                error.message
                            );
                        }
                    }
                    // Queued behind the other work if it can be; with the
                    // queue full, recorded here (not left without a job).
                    if service.presence_recorded() {
                        break;
                    }
                }
                Ok(Outcome::Value(Value::Null))
            }
        }
    }

    fn request(
        &mut self,
        service: &ChatService,
        user: &str,
        principal: Option<&Principal>,
        request: Request,
    ) -> Result<Outcome> {
        let value = match request {
            Request::Edit {
                channel,
                seq,
                text,
                client_id,
            } => {
                self.admitted(service, &channel, user)?;
                let original = self.record(&channel, seq)?;
                editable(&original, &channel)?;
                if original.sender != user.as_bytes() {
                    return Err(ChatError::denied(format!(
                        "message {seq} of {channel:?} was sent by someone else; only its sender may edit it"
                    )));
                }
                return Ok(Outcome::Publish(vec![Command::Publish {
                    channel: channel.into(),
                    ephemeral: false,
                    kind: kind::EDIT,
                    client_message_id: client_id.map(Bytes::from).unwrap_or_default(),
                    relation: seq,
                    headers: Bytes::new(),
                    body: Bytes::from(text),
                }]));
            }
            Request::Delete {
                channel,
                seq,
                client_id,
            } => {
                let meta = self.admitted(service, &channel, user)?;
                let original = self.record(&channel, seq)?;
                editable(&original, &channel)?;
                if original.sender != user.as_bytes() && meta.owner != user {
                    return Err(ChatError::denied(format!(
                        "message {seq} of {channel:?} was sent by someone else; only its sender or the channel owner may delete it"
                    )));
                }
                return Ok(Outcome::Publish(vec![Command::Publish {
                    channel: channel.into(),
                    ephemeral: false,
                    kind: kind::DELETE,
                    client_message_id: client_id.map(Bytes::from).unwrap_or_default(),
                    relation: seq,
                    headers: Bytes::new(),
                    body: Bytes::new(),
                }]));
            }
            Request::Thread {
                channel,
                root,
                limit,
            } => {
                self.admitted(service, &channel, user)?;
                let limit = limit.unwrap_or(THREAD_LIMIT_DEFAULT).clamp(1, LOAD_PAGE);
                let (_, index) = self.history(
                    &thread_channel(&channel, root),
                    HistoryQuery::From(1),
                    limit,
                )?;
                let mut replies = Vec::new();
                for entry in index {
                    let reply = self.record(&channel, entry.relation)?;
                    replies.push(message_value(&reply));
                }
                json!({ "channel": channel, "root": root, "messages": replies })
            }
            Request::ReadBy { channel, seq } => {
                let meta = self.admitted(service, &channel, user)?;
                let mut readers = Vec::new();
                let others: Vec<&String> =
                    meta.members.iter().filter(|m| m.as_str() != user).collect();
                for member in &others {
                    let read = self.client.cursor_get(member, &channel)?;
                    if read >= seq {
                        readers.push(member.to_string());
                    }
                }
                json!({ "read": readers.len(), "of": others.len(), "users": readers })
            }
            Request::ChannelCreate {
                channel,
                name,
                visibility,
                topic,
                members,
            } => {
                check_channel_id(&channel).map_err(ChatError::invalid)?;
                let visibility = visibility.unwrap_or_default();
                if visibility == Visibility::Direct {
                    return Err(ChatError::invalid(
                        "direct channels are made with `direct`, not `channel_create`",
                    ));
                }
                let meta = self.meta(service, &channel)?;
                if meta.exists {
                    return Err(ChatError::new(
                        "already_exists",
                        format!("channel {channel:?} already exists; pick another id or join it"),
                    ));
                }
                // A channel other clients (MQTT, native, chat without
                // `channel_create`) already wrote to is theirs: making it a
                // chat channel would put their records, and whatever they
                // write next, under its members' names.
                let (head_seq, _) = self.history(&channel, HistoryQuery::Last, 1)?;
                if head_seq > 0 {
                    return Err(ChatError::new(
                        "already_exists",
                        format!(
                            "channel {channel:?} is in use ({head_seq} records written without `channel_create`); pick another id"
                        ),
                    ));
                }
                if members.len() > CREATE_MEMBERS_MAX {
                    return Err(ChatError::invalid(format!(
                        "a new channel names at most {CREATE_MEMBERS_MAX} members, not {}; invite the others after",
                        members.len()
                    )));
                }
                let mut all: BTreeSet<String> = BTreeSet::new();
                all.insert(user.to_string());
                for member in members {
                    check_user_name(&member).map_err(ChatError::invalid)?;
                    all.insert(member);
                }
                let name = name.unwrap_or_else(|| channel.clone());
                check_text("name", &name)?;
                let topic = topic.unwrap_or_default();
                check_text("topic", &topic)?;
                let event = ChannelEvent::Created {
                    name,
                    visibility,
                    topic,
                    owner: user.to_string(),
                    members: all.iter().cloned().collect(),
                };
                let meta = self.change(service, &channel, user, meta, event)?;
                for member in &all {
                    self.membership(member, &channel, true)?;
                }
                if visibility == Visibility::Public {
                    let entry = DirectoryEvent::Created {
                        channel: channel.clone(),
                    };
                    self.append(DIRECTORY_CHANNEL, kind::CHANNEL_EVENT, 0, to_body(&entry))?;
                }
                self.info(&channel, &meta)?
            }
            Request::Direct { users } => {
                let mut all: BTreeSet<String> = BTreeSet::new();
                for other in users {
                    check_user_name(&other).map_err(ChatError::invalid)?;
                    all.insert(other);
                }
                all.insert(user.to_string());
                if all.len() < 2 || all.len() > DIRECT_USERS_MAX + 1 {
                    return Err(ChatError::invalid(format!(
                        "a direct channel has 1 to {DIRECT_USERS_MAX} other users"
                    )));
                }
                let channel = direct_channel_id(&all);
                let meta = self.meta(service, &channel)?;
                let meta = if meta.exists {
                    meta
                } else {
                    let event = ChannelEvent::Created {
                        name: all.iter().cloned().collect::<Vec<_>>().join(", "),
                        visibility: Visibility::Direct,
                        topic: String::new(),
                        owner: user.to_string(),
                        members: all.iter().cloned().collect(),
                    };
                    let meta = self.change(service, &channel, user, meta, event)?;
                    for member in &all {
                        self.membership(member, &channel, true)?;
                    }
                    meta
                };
                self.info(&channel, &meta)?
            }
            Request::ChannelRename { channel, name } => {
                check_text("name", &name)?;
                let meta = self.member_of(service, &channel, user)?;
                let meta = self.change(
                    service,
                    &channel,
                    user,
                    meta,
                    ChannelEvent::Renamed { name },
                )?;
                self.info(&channel, &meta)?
            }
            Request::ChannelTopic { channel, topic } => {
                check_text("topic", &topic)?;
                let meta = self.member_of(service, &channel, user)?;
                let meta =
                    self.change(service, &channel, user, meta, ChannelEvent::Topic { topic })?;
                self.info(&channel, &meta)?
            }
            Request::ChannelInvite {
                channel,
                user: invited,
            } => {
                check_user_name(&invited).map_err(ChatError::invalid)?;
                let meta = self.member_of(service, &channel, user)?;
                if meta.visibility == Visibility::Direct {
                    return Err(ChatError::invalid(
                        "a direct channel's members are fixed; start a new direct channel instead",
                    ));
                }
                let meta = if meta.is_member(&invited) {
                    meta
                } else {
                    let event = ChannelEvent::MemberAdded {
                        user: invited.clone(),
                    };
                    let meta = self.change(service, &channel, user, meta, event)?;
                    self.membership(&invited, &channel, true)?;
                    meta
                };
                self.info(&channel, &meta)?
            }
            Request::ChannelRemove {
                channel,
                user: removed,
            } if removed == user => self.leave(service, &channel, user)?,
            Request::ChannelRemove {
                channel,
                user: removed,
            } => {
                // The owner, while a member: one who left has no say, and
                // learns nothing of the channel from the answer.
                let meta = self.member_of(service, &channel, user)?;
                if meta.visibility == Visibility::Direct {
                    return Err(ChatError::invalid(
                        "a direct channel's members are fixed; leave it instead",
                    ));
                }
                if meta.owner != user {
                    return Err(ChatError::denied(format!(
                        "only the channel's owner may remove members from {channel:?}"
                    )));
                }
                if !meta.is_member(&removed) {
                    return Err(ChatError::not_found(format!(
                        "{removed:?} is not a member of {channel:?}"
                    )));
                }
                let event = ChannelEvent::MemberRemoved {
                    user: removed.clone(),
                };
                let meta = self.change(service, &channel, user, meta, event)?;
                self.membership(&removed, &channel, false)?;
                self.info(&channel, &meta)?
            }
            Request::ChannelJoin { channel } => {
                let meta = self.existing(service, &channel)?;
                if meta.visibility != Visibility::Public && !meta.is_member(user) {
                    return Err(ChatError::denied(format!(
                        "{channel:?} is not public; a member has to invite you"
                    )));
                }
                let meta = if meta.is_member(user) {
                    meta
                } else {
                    let event = ChannelEvent::MemberAdded {
                        user: user.to_string(),
                    };
                    let meta = self.change(service, &channel, user, meta, event)?;
                    self.membership(user, &channel, true)?;
                    meta
                };
                self.info(&channel, &meta)?
            }
            Request::ChannelLeave { channel } => self.leave(service, &channel, user)?,
            Request::ChannelInfo { channel } => {
                let meta = self.admitted(service, &channel, user)?;
                self.info(&channel, &meta)?
            }
            Request::Members { channel } => {
                let meta = self.admitted(service, &channel, user)?;
                let mut members = Vec::new();
                for member in &meta.members {
                    members.push(json!({ "user": member, "presence": self.presence(member)? }));
                }
                json!({ "channel": channel, "members": members })
            }
            Request::Channels {} => {
                let mut channels = Vec::new();
                for channel in self.channel_list(user)? {
                    let meta = self.meta(service, &channel)?;
                    // What the user may not read is not shown: the last
                    // message and the unread count need `history`.
                    let readable = service.may(principal, Action::History, &channel).is_ok();
                    let (head_seq, last) = if readable {
                        self.history(&channel, HistoryQuery::Last, 1)?
                    } else {
                        (0, Vec::new())
                    };
                    let read_seq = self.client.cursor_get(user, &channel)?;
                    let unread = if readable && head_seq > read_seq {
                        let (_, after) = self.history(
                            &channel,
                            HistoryQuery::From(read_seq + 1),
                            UNREAD_COUNT_MAX,
                        )?;
                        after
                            .iter()
                            .filter(|m| {
                                (m.kind == kind::MESSAGE || m.kind == kind::REPLY)
                                    && m.sender != user.as_bytes()
                            })
                            .count()
                    } else {
                        0
                    };
                    let members: Vec<&String> = meta.members.iter().collect();
                    channels.push(json!({
                        "channel": channel,
                        "name": meta.name,
                        "visibility": meta.visibility,
                        "topic": meta.topic,
                        "members": members,
                        "head_seq": head_seq,
                        "read_seq": read_seq,
                        "unread": unread,
                        "last_message": last.first().map(message_value),
                    }));
                }
                json!({ "channels": channels })
            }
            Request::Directory {} => {
                let mut channels = Vec::new();
                let mut seen = BTreeSet::new();
                for record in self.load_all(DIRECTORY_CHANNEL)? {
                    let Ok(DirectoryEvent::Created { channel }) =
                        serde_json::from_slice::<DirectoryEvent>(&record.body)
                    else {
                        continue;
                    };
                    if !seen.insert(channel.clone()) {
                        continue;
                    }
                    let meta = self.meta(service, &channel)?;
                    if meta.visibility == Visibility::Public {
                        channels.push(json!({
                            "channel": channel,
                            "name": meta.name,
                            "topic": meta.topic,
                            "members": meta.members.len(),
                        }));
                    }
                }
                json!({ "channels": channels })
            }
            other => {
                return Err(ChatError::internal(format!(
                    "request {other:?} is not handled by the chat workers"
                )))
            }
        };
        Ok(Outcome::Value(value))
    }

    /// Keeps `user`'s new presence in the log and tells their channels.
    fn record_presence(&mut self, user: &str, status: Presence) -> Result<()> {
        let change = PresenceChange {
            user: user.to_string(),
            status,
        };
        let body = Bytes::from(serde_json::to_vec(&change).expect("serializes"));
        self.append(&presence_channel(user), kind::PRESENCE, 0, body.clone())?;
        for channel in self.channel_list(user)? {
            self.client
                .publish_command(Command::Publish {
                    channel: channel.into(),
                    ephemeral: true,
                    kind: kind::PRESENCE,
                    client_message_id: Bytes::new(),
                    relation: 0,
                    headers: Bytes::new(),
                    body: body.clone(),
                })
                .map_err(ChatError::from)?;
        }
        Ok(())
    }

    /// The channel's state (cached, or folded from the log and cached).
    fn meta(&mut self, service: &ChatService, channel: &str) -> Result<Arc<ChannelMeta>> {
        if let Some(meta) = service.meta(channel) {
            return Ok(meta);
        }
        let records = self.load_all(&meta_channel(channel))?;
        Ok(service.cache_meta(channel, ChannelMeta::fold(channel, &records)))
    }

    /// The state of a channel `user` may read and write.
    fn admitted(
        &mut self,
        service: &ChatService,
        channel: &str,
        user: &str,
    ) -> Result<Arc<ChannelMeta>> {
        let meta = self.meta(service, channel)?;
        if meta.admits(user) {
            Ok(meta)
        } else {
            Err(not_member(channel))
        }
    }

    /// The state of a channel created with `channel_create` or `direct`.
    fn existing(&mut self, service: &ChatService, channel: &str) -> Result<Arc<ChannelMeta>> {
        let meta = self.meta(service, channel)?;
        if meta.exists {
            Ok(meta)
        } else {
            Err(ChatError::not_found(format!(
                "channel {channel:?} does not exist; create it with `channel_create`"
            )))
        }
    }

    /// `user` leaves `channel` (a member, the owner too); the channel's
    /// info after.
    fn leave(&mut self, service: &ChatService, channel: &str, user: &str) -> Result<Value> {
        let meta = self.member_of(service, channel, user)?;
        let event = ChannelEvent::MemberRemoved {
            user: user.to_string(),
        };
        let meta = self.change(service, channel, user, meta, event)?;
        self.membership(user, channel, false)?;
        self.info(channel, &meta)
    }

    /// The state of a channel `user` is a member of.
    fn member_of(
        &mut self,
        service: &ChatService,
        channel: &str,
        user: &str,
    ) -> Result<Arc<ChannelMeta>> {
        let meta = self.existing(service, channel)?;
        if meta.is_member(user) {
            Ok(meta)
        } else {
            Err(not_member(channel))
        }
    }

    /// Appends `event` to the channel's state (the record that counts), then
    /// a copy into the channel for its subscribers, and updates the cache.
    fn change(
        &mut self,
        service: &ChatService,
        channel: &str,
        user: &str,
        meta: Arc<ChannelMeta>,
        event: ChannelEvent,
    ) -> Result<Arc<ChannelMeta>> {
        let version = self.append_seq(
            &meta_channel(channel),
            kind::CHANNEL_EVENT,
            0,
            to_body(&event),
            Bytes::new(),
        )?;
        let mut next = (*meta).clone();
        next.apply(&event);
        next.version = version;
        let meta = service.cache_meta(channel, next);
        service.revoke_unadmitted(channel, &meta);
        let mut shown = serde_json::to_value(&event).expect("serializes");
        shown["by"] = Value::String(user.to_string());
        self.append(channel, kind::CHANNEL_EVENT, 0, to_body(&shown))?;
        Ok(meta)
    }

    fn membership(&mut self, user: &str, channel: &str, joined: bool) -> Result<()> {
        let channel = channel.to_string();
        let event = if joined {
            MembershipEvent::Joined { channel }
        } else {
            MembershipEvent::Left { channel }
        };
        self.append(&user_channel(user), kind::CHANNEL_EVENT, 0, to_body(&event))
    }

    fn channel_list(&mut self, user: &str) -> Result<Vec<String>> {
        let records = self.load_all(&user_channel(user))?;
        Ok(super::model::fold_channel_list(&records))
    }

    fn presence(&mut self, user: &str) -> Result<Presence> {
        let (_, last) = self.history(&presence_channel(user), HistoryQuery::Last, 1)?;
        Ok(last
            .first()
            .and_then(|record| serde_json::from_slice::<PresenceChange>(&record.body).ok())
            .map_or(Presence::Offline, |change| change.status))
    }

    fn info(&mut self, channel: &str, meta: &ChannelMeta) -> Result<Value> {
        let (head_seq, _) = self.history(channel, HistoryQuery::Last, 1)?;
        Ok(json!({
            "channel": channel,
            "name": meta.name,
            "visibility": meta.visibility,
            "topic": meta.topic,
            "owner": meta.owner,
            "members": meta.members,
            "head_seq": head_seq,
        }))
    }

    /// The record `seq` of `channel`.
    fn record(&mut self, channel: &str, seq: u64) -> Result<Message> {
        let (_, messages) = self.history(channel, HistoryQuery::From(seq), 1)?;
        messages.into_iter().find(|m| m.seq == seq).ok_or_else(|| {
            ChatError::not_found(format!("channel {channel:?} has no message {seq}"))
        })
    }

    fn history(
        &mut self,
        channel: &str,
        query: HistoryQuery,
        limit: u32,
    ) -> Result<(u64, Vec<Message>)> {
        Ok(self.client.history(channel, query, limit)?)
    }

    /// Every record of a (small, reserved) channel, oldest first.
    fn load_all(&mut self, channel: &str) -> Result<Vec<Message>> {
        let mut records = Vec::new();
        let mut next = 1;
        loop {
            let (head_seq, page) = self.history(channel, HistoryQuery::From(next), LOAD_PAGE)?;
            let Some(last) = page.last() else {
                return Ok(records);
            };
            next = last.seq + 1;
            records.extend(page);
            if next > head_seq {
                return Ok(records);
            }
        }
    }

    fn append(&mut self, channel: &str, kind: u8, relation: u64, body: Bytes) -> Result<()> {
        self.append_with_id(channel, kind, relation, body, Bytes::new())
    }

    fn append_with_id(
        &mut self,
        channel: &str,
        kind: u8,
        relation: u64,
        body: Bytes,
        client_message_id: Bytes,
    ) -> Result<()> {
        self.append_seq(channel, kind, relation, body, client_message_id)
            .map(|_| ())
    }

    /// Appends a record; its seq.
    fn append_seq(
        &mut self,
        channel: &str,
        kind: u8,
        relation: u64,
        body: Bytes,
        client_message_id: Bytes,
    ) -> Result<u64> {
        self.client
            .publish_command(Command::Publish {
                channel: channel.into(),
                ephemeral: false,
                kind,
                client_message_id,
                relation,
                headers: Bytes::new(),
                body,
            })
            .map(|published| published.seq)
            .map_err(|error: BrokerError| error.into())
    }
}

/// The right `user` needs on a channel for a request the workers serve:
/// what the request makes the server read or write there for them.
fn needed_right(request: &Request, user: &str) -> Option<Action> {
    let action = match request {
        Request::Thread { .. }
        | Request::ReadBy { .. }
        | Request::ChannelInfo { .. }
        | Request::Members { .. } => Action::History,
        Request::ChannelJoin { .. } => Action::Subscribe,
        // Leaving needs no right: a user may always leave.
        Request::ChannelLeave { .. } => return None,
        Request::ChannelRemove { user: removed, .. } if removed == user => return None,
        Request::Direct { .. } => Action::Publish,
        _ => {
            request.channel()?;
            Action::Publish
        }
    };
    Some(action)
}

/// The id of the direct channel `user` asks for with `users` (as the
/// request makes it, names checked there).
fn direct_id(users: &[String], user: &str) -> String {
    let mut all: BTreeSet<String> = users.iter().cloned().collect();
    all.insert(user.to_string());
    direct_channel_id(&all)
}

fn to_body(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("chat events serialize"))
}

fn not_member(channel: &str) -> ChatError {
    ChatError::denied(format!(
        "you are not a member of {channel:?}; ask a member to invite you"
    ))
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.len() > CHANNEL_TEXT_BYTES_MAX {
        return Err(ChatError::invalid(format!(
            "the {what} is {} bytes; at most {CHANNEL_TEXT_BYTES_MAX} are allowed",
            text.len()
        )));
    }
    Ok(())
}

/// Only messages and replies can be edited or deleted.
fn editable(original: &Message, channel: &str) -> Result<()> {
    if original.kind == kind::MESSAGE || original.kind == kind::REPLY {
        Ok(())
    } else {
        Err(ChatError::invalid(format!(
            "record {} of {channel:?} is not a message; only messages can be edited or deleted",
            original.seq
        )))
    }
}
