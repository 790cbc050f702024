//! One chat connection's state, the same for WebSocket and HTTP: turns
//! requests into broker commands or worker jobs, and broker replies and
//! worker results into JSON answers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use starling_broker::{Command, ConnRef, Reply, SessionContext, SessionEvent};
use starling_protocol::{kind, HistoryQuery, Message, SubscribeStart};

use super::json::{message_value, ChatError, Request, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX};
use super::model::{check_user_name, user_channel, Presence};
use super::worker::{Done, Job, Outcome, Work};
use super::{ChatService, Revoked};

/// Longest reaction (an emoji or a short code).
pub const EMOJI_BYTES_MAX: usize = 64;

/// An answer to the client's request `id`.
pub type Response = (u64, Result<Value, ChatError>);

/// What a pending broker request answers.
enum Shape {
    /// `{seq, timestamp_ms, durable, duplicate}`
    Published,
    /// A reply in a thread: index it, then answer as `Published`.
    Reply {
        channel: String,
        root: u64,
    },
    /// The first record kept after `since`, read before subscribing with
    /// `since`: retention may have removed what the client missed.
    RecoveryProbe {
        channel: String,
        since: u64,
    },
    Subscribed {
        channel: String,
        since: Option<u64>,
        /// Records after `since` were removed by retention.
        removed: bool,
    },
    /// `{}`
    Empty,
    History,
    /// A side request whose reply nobody waits for (the ephemeral `read`
    /// notice after a read marker moved).
    Ignore,
}

pub struct ChatConnection {
    service: Arc<ChatService>,
    user: Option<Arc<str>>,
    next_request_id: u32,
    /// Broker request id → (client request id, what to answer).
    pending: HashMap<u32, (u64, Shape)>,
    /// Requests waiting for their channel's state to be loaded.
    parked: HashMap<u64, Request>,
    /// Whether this connection makes its user online (a chat client's
    /// WebSocket does; a bot's HTTP requests do not).
    shows_presence: bool,
    /// This connection, once it has registered a subscription with the
    /// service (so closing it can unregister them).
    conn: Option<ConnRef>,
    /// Channels registered with [`ChatService::follow`], and whether the
    /// broker confirmed the subscription (a refused first subscribe
    /// unregisters; a refused re-subscribe leaves the one in place to the
    /// revocation).
    followed: HashMap<String, bool>,
}

/// Something to tell the client that no request asked for.
#[derive(Debug, PartialEq)]
pub enum Push {
    /// The subscription to `channel` ended because the channel no longer
    /// admits the user (removed from it, or it was made private).
    Unsubscribed { channel: String, reason: String },
}

impl ChatConnection {
    /// A connection of a chat client: while it is open, its user is online.
    pub fn new(service: Arc<ChatService>) -> ChatConnection {
        ChatConnection::with_presence(service, true)
    }

    fn with_presence(service: Arc<ChatService>, shows_presence: bool) -> ChatConnection {
        ChatConnection {
            service,
            user: None,
            next_request_id: 1,
            pending: HashMap::new(),
            parked: HashMap::new(),
            shows_presence,
            conn: None,
            followed: HashMap::new(),
        }
    }

    /// A connection that acts for a user without making them online (the
    /// HTTP API).
    pub fn without_presence(service: Arc<ChatService>) -> ChatConnection {
        ChatConnection::with_presence(service, false)
    }

    /// The signed-in user.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    pub fn service(&self) -> &Arc<ChatService> {
        &self.service
    }

    /// Handles request `id`. Answers that are ready now are pushed to
    /// `responses`; the others follow from [`ChatConnection::on_reply`] or
    /// [`ChatConnection::on_event`].
    pub fn request(
        &mut self,
        id: u64,
        request: Request,
        context: &mut SessionContext<'_>,
        responses: &mut Vec<Response>,
    ) {
        match self.dispatch(id, request, context) {
            Ok(Some(value)) => responses.push((id, Ok(value))),
            Ok(None) => {}
            Err(error) => responses.push((id, Err(error))),
        }
    }

    fn dispatch(
        &mut self,
        id: u64,
        request: Request,
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Value>, ChatError> {
        if let Request::Connect { token, client } = &request {
            return self.connect(token, client.as_deref(), context).map(Some);
        }
        let Some(user) = self.user.clone() else {
            return Err(ChatError::new(
                "unauthenticated",
                "send `connect` with a token before anything else",
            ));
        };
        if let Some(channel) = request.channel() {
            // A user may follow their own channel list (to hear at once when
            // someone adds them to a channel); every other `$` channel
            // belongs to the server.
            let own_list = channel == user_channel(&user)
                && matches!(
                    request,
                    Request::Subscribe { .. }
                        | Request::Unsubscribe { .. }
                        | Request::History { .. }
                );
            if channel.starts_with('$') && !own_list {
                return Err(ChatError::invalid(format!(
                    "channel {channel:?} is reserved: names starting with '$' belong to the server"
                )));
            }
        }
        // Requests on a channel need its state (private channels admit only
        // members); when it is not cached, a worker loads it first.
        let fast = matches!(
            request,
            Request::Publish { .. }
                | Request::React { .. }
                | Request::Typing { .. }
                | Request::Subscribe { .. }
                | Request::History { .. }
                | Request::Read { .. }
        );
        if fast {
            let channel = request.channel().expect("fast requests name a channel");
            if let Request::Subscribe { since, last, .. } = &request {
                if since.is_some() && last.is_some() {
                    return Err(ChatError::invalid("give `since` or `last`, not both"));
                }
                // Registered before the check (see `ChatService::follow`).
                self.follow(channel, &user, context);
            }
            match self.service.meta(channel) {
                Some(meta) if !meta.admits(&user) => {
                    self.unfollow_unconfirmed(channel);
                    context.refused(channel, "not a member of the channel");
                    return Err(ChatError::denied(format!(
                        "you are not a member of {channel:?}; ask a member to invite you"
                    )));
                }
                Some(_) => {}
                None => {
                    let channel = channel.to_string();
                    let work = Work::Resolve {
                        channel: channel.clone(),
                    };
                    if let Err(error) = self.send_to_worker(id, &user, work, context) {
                        self.unfollow_unconfirmed(&channel);
                        return Err(error);
                    }
                    self.parked.insert(id, request);
                    return Ok(None);
                }
            }
        }
        match request {
            Request::Connect { .. } => unreachable!("handled above"),
            Request::Ping {} => Ok(Some(json!({}))),
            Request::Publish {
                channel,
                text,
                client_id,
                reply_to,
            } => {
                let shape = match reply_to {
                    Some(root) => Shape::Reply {
                        channel: channel.clone(),
                        root,
                    },
                    None => Shape::Published,
                };
                let command = publish(
                    channel,
                    if reply_to.is_some() {
                        kind::REPLY
                    } else {
                        kind::MESSAGE
                    },
                    reply_to.unwrap_or(0),
                    text.into(),
                    client_id,
                    false,
                );
                self.submit(id, command, shape, context);
                Ok(None)
            }
            Request::React {
                channel,
                seq,
                emoji,
                remove,
            } => {
                if emoji.is_empty() || emoji.len() > EMOJI_BYTES_MAX {
                    return Err(ChatError::invalid(format!(
                        "a reaction is 1 to {EMOJI_BYTES_MAX} bytes"
                    )));
                }
                let kind = if remove {
                    kind::REACTION_REMOVE
                } else {
                    kind::REACTION_ADD
                };
                let command = publish(channel, kind, seq, emoji.into(), None, false);
                self.submit(id, command, Shape::Published, context);
                Ok(None)
            }
            Request::Typing { channel } => {
                let command = publish(channel, kind::TYPING, 0, Bytes::new(), None, true);
                self.submit(id, command, Shape::Empty, context);
                Ok(None)
            }
            Request::Subscribe {
                channel,
                since,
                last,
            } => {
                let start = match (since, last) {
                    (Some(_), Some(_)) => {
                        return Err(ChatError::invalid("give `since` or `last`, not both"))
                    }
                    (Some(since), None) => {
                        // Subscribes once the probe answers (`on_reply`).
                        let probe = Command::History {
                            channel: channel.clone(),
                            query: HistoryQuery::From(since.saturating_add(1)),
                            limit: 1,
                        };
                        self.submit(id, probe, Shape::RecoveryProbe { channel, since }, context);
                        return Ok(None);
                    }
                    (None, Some(last)) => SubscribeStart::LastN(u64::from(last)),
                    (None, None) => SubscribeStart::Live,
                };
                self.subscribe(id, channel, start, None, false, context);
                Ok(None)
            }
            Request::Unsubscribe { channel } => {
                self.unfollow(&channel);
                self.submit(id, Command::Unsubscribe { channel }, Shape::Empty, context);
                Ok(None)
            }
            Request::History {
                channel,
                before,
                after,
                limit,
            } => {
                let query = match (before, after) {
                    (Some(_), Some(_)) => {
                        return Err(ChatError::invalid("give `before` or `after`, not both"))
                    }
                    (Some(before), None) => HistoryQuery::Before(before),
                    (None, Some(after)) => HistoryQuery::From(after.saturating_add(1)),
                    (None, None) => HistoryQuery::Last,
                };
                let limit = limit
                    .unwrap_or(HISTORY_LIMIT_DEFAULT)
                    .clamp(1, HISTORY_LIMIT_MAX);
                let command = Command::History {
                    channel,
                    query,
                    limit,
                };
                self.submit(id, command, Shape::History, context);
                Ok(None)
            }
            Request::Read { channel, seq } => {
                let cursor = Command::CursorSet {
                    consumer: user.to_string(),
                    channel: channel.clone(),
                    seq,
                };
                self.submit(id, cursor, Shape::Empty, context);
                let notice = publish(channel, kind::CURSOR, seq, Bytes::new(), None, true);
                self.submit(0, notice, Shape::Ignore, context);
                Ok(None)
            }
            Request::Presence { status } => {
                let status = match status.as_str() {
                    "online" => Presence::Online,
                    "away" => Presence::Away,
                    other => {
                        return Err(ChatError::invalid(format!(
                            "presence {other:?} is not one of \"online\", \"away\""
                        )))
                    }
                };
                // Answered at once; the change is recorded in the background.
                self.service.presence_changed(&user, status);
                Ok(Some(json!({})))
            }
            other => self
                .send_to_worker(id, &user, Work::Request(other), context)
                .map(|()| None),
        }
    }

    fn connect(
        &mut self,
        token: &str,
        client: Option<&str>,
        context: &mut SessionContext<'_>,
    ) -> Result<Value, ChatError> {
        if self.user.is_some() {
            return Err(ChatError::invalid("this connection is already connected"));
        }
        let principal = context
            .authenticate(client.unwrap_or("chat"), token)
            .map_err(|denied| ChatError::denied(denied.0))?;
        let user = principal.user.clone();
        check_user_name(&user).map_err(ChatError::denied)?;
        self.user = Some(user.clone());
        if self.shows_presence {
            self.service.connection_opened(&user);
        }
        Ok(json!({
            "user": &*user,
            "server": self.service.server_name,
            "protocol": 1,
            "heartbeat_s": super::HEARTBEAT_S,
        }))
    }

    fn follow(&mut self, channel: &str, user: &Arc<str>, context: &SessionContext<'_>) {
        let Some(conn) = context.conn() else {
            return;
        };
        self.conn = Some(conn);
        if !self.followed.contains_key(channel) {
            self.service.follow(channel, conn, user);
            self.followed.insert(channel.to_string(), false);
        }
    }

    fn unfollow(&mut self, channel: &String) {
        if let (Some(conn), Some(_)) = (self.conn, self.followed.remove(channel)) {
            self.service.unfollow(channel, conn);
            release_if_empty(&mut self.followed);
        }
    }

    /// Unregisters a subscription the broker has not confirmed: a refused
    /// first subscribe leaves nothing registered (a refused re-subscribe
    /// leaves the one in place).
    fn unfollow_unconfirmed(&mut self, channel: &str) {
        // Another subscribe of the channel still on its way (a second one
        // answered "already subscribed" before the first's page came) keeps
        // the registration: the broker may hold that subscription.
        let pending = self.pending.values().any(|(_, shape)| {
            matches!(shape, Shape::Subscribed { channel: c, .. } | Shape::RecoveryProbe { channel: c, .. } if c == channel)
        }) || self
            .parked
            .values()
            .any(|request| matches!(request, Request::Subscribe { channel: c, .. } if c == channel));
        if !pending && self.followed.get(channel) == Some(&false) {
            self.unfollow(&channel.to_string());
        }
    }

    /// True when the cached state of `channel` says the user is not
    /// admitted (any more).
    fn refused(&self, channel: &str) -> bool {
        let user = self.user.as_deref().unwrap_or_default();
        self.service
            .meta(channel)
            .is_some_and(|meta| !meta.admits(user))
    }

    fn send_to_worker(
        &mut self,
        id: u64,
        user: &Arc<str>,
        work: Work,
        context: &mut SessionContext<'_>,
    ) -> Result<(), ChatError> {
        let Some(conn) = context.conn() else {
            return Err(ChatError::internal(
                "this connection cannot receive worker results",
            ));
        };
        self.service.submit(Job {
            conn: Some(conn),
            id,
            user: user.clone(),
            principal: context.principal().cloned(),
            work,
        })
    }

    fn subscribe(
        &mut self,
        id: u64,
        channel: String,
        start: SubscribeStart,
        since: Option<u64>,
        removed: bool,
        context: &mut SessionContext<'_>,
    ) {
        let command = Command::Subscribe {
            channel: channel.clone(),
            start,
        };
        let shape = Shape::Subscribed {
            channel,
            since,
            removed,
        };
        self.submit(id, command, shape, context);
    }

    fn submit(
        &mut self,
        id: u64,
        command: Command,
        shape: Shape,
        context: &mut SessionContext<'_>,
    ) {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        self.pending.insert(request_id, (id, shape));
        context.submit(request_id, command);
    }

    /// Handles the broker's reply to one of this connection's commands.
    pub fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
        responses: &mut Vec<Response>,
    ) {
        let Some((id, shape)) = self.pending.remove(&request_id) else {
            return;
        };
        release_if_empty(&mut self.pending);
        if let Reply::Error(error) = reply {
            if let Shape::Subscribed { channel, .. } | Shape::RecoveryProbe { channel, .. } = &shape
            {
                self.unfollow_unconfirmed(channel);
            }
            if !matches!(shape, Shape::Ignore) {
                responses.push((id, Err(error.clone().into())));
            }
            return;
        }
        let value = match (shape, reply) {
            (Shape::Ignore, _) => return,
            (Shape::Empty, _) => json!({}),
            (Shape::Published, Reply::Published { .. }) => published_value(reply),
            (Shape::Reply { channel, root }, Reply::Published { seq, .. }) => {
                let user = self.user.clone().expect("replies come after connect");
                let work = Work::IndexReply {
                    channel,
                    root,
                    reply_seq: *seq,
                    published: published_value(reply),
                };
                if let Err(error) = self.send_to_worker(id, &user, work, context) {
                    responses.push((id, Err(error)));
                }
                return;
            }
            (
                Shape::RecoveryProbe { channel, since },
                Reply::History {
                    head_seq, messages, ..
                },
            ) => {
                // Seqs have no gaps, so a first record kept past `since + 1`
                // means retention removed the ones between. The catch-up
                // then starts at the oldest record kept.
                if self.refused(&channel) {
                    self.unfollow(&channel);
                    responses.push((id, Err(not_admitted(&channel))));
                    return;
                }
                let first_kept = messages.first().map(|message| message.seq);
                let removed = *head_seq > since && first_kept != Some(since.saturating_add(1));
                let start = SubscribeStart::FromSeq(since.saturating_add(1));
                self.subscribe(id, channel, start, Some(since), removed, context);
                return;
            }
            (
                Shape::Subscribed {
                    channel,
                    since,
                    removed,
                },
                Reply::Subscribed { head_seq },
            ) => {
                if self.refused(&channel) {
                    // The revocation ends (or has ended) the subscription.
                    responses.push((id, Err(not_admitted(&channel))));
                    return;
                }
                if let Some(confirmed) = self.followed.get_mut(&channel) {
                    *confirmed = true;
                }
                json!({
                    "channel": channel,
                    "head_seq": head_seq,
                    // Not what the client missed: records removed by
                    // retention, or a client ahead of the head (it has seqs
                    // this server lost).
                    "recovered": !removed && since.is_none_or(|since| since <= *head_seq),
                })
            }
            (
                Shape::History,
                Reply::History {
                    channel,
                    head_seq,
                    messages,
                },
            ) => {
                let messages: Vec<Value> = messages.iter().map(message_value).collect();
                json!({ "channel": &**channel, "head_seq": head_seq, "messages": messages })
            }
            (_, other) => {
                responses.push((
                    id,
                    Err(ChatError::internal(format!(
                        "unexpected broker reply {other:?}"
                    ))),
                ));
                return;
            }
        };
        responses.push((id, Ok(value)));
    }

    /// Handles a worker's result or a revocation for this connection.
    pub fn on_event(
        &mut self,
        event: SessionEvent,
        context: &mut SessionContext<'_>,
        responses: &mut Vec<Response>,
        pushes: &mut Vec<Push>,
    ) {
        let event = match event.downcast::<Revoked>() {
            Ok(revoked) => return self.on_revoked(revoked.channel, context, pushes),
            Err(event) => event,
        };
        let Ok(done) = event.downcast::<Done>() else {
            return;
        };
        let Done { id, outcome } = *done;
        match outcome {
            Err(error) => {
                if let Some(Request::Subscribe { channel, .. }) = self.parked.remove(&id) {
                    self.unfollow_unconfirmed(&channel);
                }
                release_if_empty(&mut self.parked);
                responses.push((id, Err(error)));
            }
            Ok(Outcome::Value(value)) => responses.push((id, Ok(value))),
            Ok(Outcome::Publish(commands)) => {
                let mut shape = Some(Shape::Published);
                for command in commands {
                    let shape = shape.take().unwrap_or(Shape::Ignore);
                    self.submit(id, command, shape, context);
                }
            }
            Ok(Outcome::Retry) => {
                if let Some(request) = self.parked.remove(&id) {
                    release_if_empty(&mut self.parked);
                    self.request(id, request, context, responses);
                }
            }
        }
    }

    /// The channel stopped admitting the user: end the subscription (the
    /// service has unregistered it already), unless the user was admitted
    /// again since.
    fn on_revoked(
        &mut self,
        channel: String,
        context: &mut SessionContext<'_>,
        pushes: &mut Vec<Push>,
    ) {
        let Some(user) = self.user.clone() else {
            return;
        };
        // The service unregistered the subscription. Registered again
        // before the check, as at a subscribe: a member removed and invited
        // again meanwhile stays followed, for the next removal.
        if let (Some(conn), true) = (self.conn, self.followed.contains_key(&channel)) {
            self.service.follow(&channel, conn, &user);
        }
        if self
            .service
            .meta(&channel)
            .is_some_and(|meta| meta.admits(&user))
        {
            return;
        }
        self.unfollow(&channel);
        release_if_empty(&mut self.followed);
        let unsubscribe = Command::Unsubscribe {
            channel: channel.clone(),
        };
        self.submit(0, unsubscribe, Shape::Ignore, context);
        let reason = not_admitted(&channel).message;
        pushes.push(Push::Unsubscribed { channel, reason });
    }

    /// The connection closed: the user may go offline.
    pub fn on_closed(&mut self) {
        if let Some(conn) = self.conn {
            for channel in std::mem::take(&mut self.followed).into_keys() {
                self.service.unfollow(&channel, conn);
            }
        }
        if let Some(user) = self.user.take() {
            if self.shows_presence {
                self.service.connection_closed(&user);
            }
        }
    }
}

impl Drop for ChatConnection {
    fn drop(&mut self) {
        self.on_closed();
    }
}

/// Frees the table of an idle connection: a hash map keeps its buckets
/// when emptied, and most connections sit idle between a few requests.
fn release_if_empty<K, V>(table: &mut HashMap<K, V>) {
    if table.is_empty() && table.capacity() > 0 {
        *table = HashMap::new();
    }
}

fn publish(
    channel: String,
    kind: u8,
    relation: u64,
    body: Bytes,
    client_id: Option<String>,
    ephemeral: bool,
) -> Command {
    Command::Publish {
        channel: channel.into(),
        ephemeral,
        kind,
        client_message_id: client_id.map(Bytes::from).unwrap_or_default(),
        relation,
        headers: Bytes::new(),
        body,
    }
}

fn not_admitted(channel: &str) -> ChatError {
    ChatError::denied(format!(
        "you are not a member of {channel:?} (any more); ask a member to invite you"
    ))
}

fn published_value(reply: &Reply) -> Value {
    match reply {
        Reply::Published {
            seq,
            timestamp_ms,
            durable,
            duplicate,
            ..
        } => json!({
            "seq": seq,
            "timestamp_ms": timestamp_ms,
            "durable": durable,
            "duplicate": duplicate,
        }),
        _ => Value::Null,
    }
}

/// The JSON pushes for a delivery (used by the protocols' shared encoding).
pub fn delivery_texts(channel: &str, messages: &[Message]) -> Vec<String> {
    super::json::message_pushes(channel, messages)
}
