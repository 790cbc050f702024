//! How an adapter plugs into a shard: a [`Protocol`] makes one [`Session`] per
//! accepted connection. The shard owns the socket and the buffers; the session
//! only turns bytes into [`Command`]s and replies into bytes. This is the
//! whole surface an adapter sees, so the broker never branches on a protocol.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use starling_protocol::Message;

use crate::auth::{Action, Authorizer, Denied, Principal};
use crate::command::{Command, Reply};
use crate::mailbox::ConnRef;
use crate::metrics::Metrics;

/// A wire protocol served on a listener.
pub trait Protocol: Send + Sync + 'static {
    /// Short name for logs and metrics (`native`, `mqtt`, …).
    fn name(&self) -> &'static str;
    /// A new session for a connection accepted from `peer`.
    fn new_session(&self, peer: SocketAddr) -> Box<dyn Session>;
    /// Encodes one delivery of `messages` (all of one channel). The shard calls
    /// this once per protocol per delivery and shares the bytes with every
    /// subscriber of that protocol, so it must not depend on session state.
    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes;
    /// True when deliveries must first be offered to each connection's
    /// [`Session::on_delivery`] (per-connection packet ids and windows, as
    /// MQTT's QoS 1 and 2 need). False, the default, keeps the shared path.
    fn per_connection_delivery(&self) -> bool {
        false
    }
}

/// The fewest messages a catch-up page is asked for (fewer when the
/// engine's `page_messages_max` is smaller): a connection whose
/// [`Session::delivery_room`] is below this waits for more room first.
pub const FETCH_ROOM_MIN: usize = 256;

/// Something a thread outside the event loops hands to one session through a
/// [`crate::Notifier`] (for example the result of an adapter's slow
/// operation). The session downcasts it to the type it expects.
pub type SessionEvent = Box<dyn Any + Send>;

/// Why a session asks the shard to close its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub reason: String,
}

/// One connection's protocol state.
pub trait Session: Send {
    /// Consumes the complete frames at the front of `input`, leaving a partial
    /// frame in place. Requests go to [`SessionContext::submit`]; bytes to send
    /// go to [`SessionContext::out`]. Returning `Err` closes the connection
    /// after what was written to `out` has been sent.
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close>;
    /// Handles the reply to request `request_id`: encodes it into
    /// [`SessionContext::out`], and may submit follow-up requests (an adapter
    /// operation that takes several broker requests continues here).
    /// Returning `Err` closes the connection as for [`Session::on_input`].
    fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close>;
    /// Called at or after the deadline last asked for with
    /// [`SessionContext::set_timer`] (keep-alive, read timeouts). The shard
    /// keeps one timer per connection and may call this early when the
    /// session asked for a later deadline than one already armed, so the
    /// session checks its own deadlines and re-arms.
    fn on_timer(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let _ = context;
        Ok(())
    }
    /// Encodes a delivery for this connection alone (asked only when the
    /// protocol says [`Protocol::per_connection_delivery`]). `None` uses the
    /// protocol's shared encoding. The bytes count against the connection's
    /// outbound bound like any delivery.
    /// Returning `Err` closes the connection (a client that does not
    /// acknowledge what it was sent).
    fn on_delivery(
        &mut self,
        channel: &str,
        messages: &[Message],
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Bytes>, Close> {
        let _ = (channel, messages, context);
        Ok(None)
    }
    /// How many more messages this connection takes now before it would
    /// rather read them later from the log (MQTT: the room left in its queue
    /// of messages waiting for the client's in-flight window). A
    /// subscription to one channel whose live delivery is larger than this
    /// falls back to reading the channel from the log, from the first message
    /// it did not get, a page of at most this many at a time while there is
    /// room, and then goes live again: a client that acknowledges slower than
    /// messages come is not closed for it. A session with nothing waiting
    /// should report at least [`FETCH_ROOM_MIN`]. The default has no limit
    /// (the connection's outbound bytes still do).
    fn delivery_room(&self) -> usize {
        usize::MAX
    }
    /// Whether the client has identified itself to this session's protocol
    /// (an MQTT CONNECT): a principal from an earlier protocol on the same
    /// connection (an HTTP request before an upgrade) does not count. The
    /// default says yes.
    fn identified(&self) -> bool {
        true
    }
    /// True while the session wants no more input: the shard stops reading
    /// the socket (the client's bytes wait in the kernel, which pushes back
    /// on the client) and reads again after a later callback of the session
    /// finds it false. For a protocol that answers one request at a time
    /// (HTTP/1.1), so what a client pipelines behind a slow request is not
    /// buffered without bound.
    fn input_paused(&self) -> bool {
        false
    }
    /// The connection is closing (whoever closed it). Requests submitted here
    /// are carried out, but their replies go nowhere: this is for last
    /// actions such as publishing an MQTT will.
    fn on_closed(&mut self, context: &mut SessionContext<'_>) {
        let _ = context;
    }
    /// Handles an event sent to this connection through a
    /// [`crate::Notifier`]. Returning `Err` closes the connection.
    fn on_event(
        &mut self,
        event: SessionEvent,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let _ = (event, context);
        Ok(())
    }
    /// Encodes a last word to the client before the server closes the
    /// connection for `reason` (slow consumer, shutdown, …).
    fn on_server_close(
        &mut self,
        code: starling_protocol::ErrorCode,
        reason: &str,
        out: &mut BytesMut,
    );
}

/// What a session may touch while it handles input.
pub struct SessionContext<'a> {
    pub(crate) out: &'a mut BytesMut,
    pub(crate) commands: &'a mut Vec<(u32, Command)>,
    pub(crate) principal: &'a mut Option<Principal>,
    pub(crate) authorizer: &'a dyn Authorizer,
    pub(crate) peer: SocketAddr,
    /// The user named by the client's verified TLS certificate, when the
    /// listener maps certificates to users (`[tls] client_cert_user`).
    pub(crate) certificate_user: Option<Arc<str>>,
    pub(crate) now: Instant,
    pub(crate) timer: Option<Instant>,
    pub(crate) protocol: Option<Arc<dyn Protocol>>,
    pub(crate) metrics: &'a Metrics,
    pub(crate) conn: Option<ConnRef>,
    pub(crate) server_commands: Vec<(u32, Command)>,
    pub(crate) notifications: Vec<(ConnRef, SessionEvent)>,
}

impl<'a> SessionContext<'a> {
    /// Builds a context at `now` (the shard's clock of this turn); the
    /// shard does this, and tests of adapters may too.
    pub fn new(
        out: &'a mut BytesMut,
        commands: &'a mut Vec<(u32, Command)>,
        principal: &'a mut Option<Principal>,
        authorizer: &'a dyn Authorizer,
        peer: SocketAddr,
        metrics: &'a Metrics,
        now: Instant,
    ) -> SessionContext<'a> {
        SessionContext {
            out,
            commands,
            principal,
            authorizer,
            peer,
            certificate_user: None,
            now,
            timer: None,
            protocol: None,
            metrics,
            conn: None,
            server_commands: Vec::new(),
            notifications: Vec::new(),
        }
    }

    /// This connection, as a [`crate::Notifier`] addresses it. `None` only in
    /// tests that drive a session without a shard.
    pub fn conn(&self) -> Option<ConnRef> {
        self.conn
    }

    /// The time of this event, as the shard saw it (sessions take their
    /// clock from here, not from the system, so tests can drive them).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sets the time of this event (for tests that drive a session).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Asks for [`Session::on_timer`] at `deadline`. Of several requests in
    /// one call the earliest wins.
    pub fn set_timer(&mut self, deadline: Instant) {
        self.timer = Some(self.timer.map_or(deadline, |armed| armed.min(deadline)));
    }

    /// The deadline asked for during this call, if any.
    pub fn timer(&self) -> Option<Instant> {
        self.timer
    }

    /// From now on, deliveries to this connection are encoded by `protocol`
    /// (a connection that upgrades, such as HTTP to WebSocket, switches the
    /// wire format of what it is sent).
    pub fn set_protocol(&mut self, protocol: Arc<dyn Protocol>) {
        self.protocol = Some(protocol);
    }

    /// Hands `event` to the session of another connection (on any shard),
    /// through [`Session::on_event`]; dropped if that connection is gone.
    /// An MQTT session uses this to close an older connection of the same
    /// client id.
    pub fn notify(&mut self, conn: ConnRef, event: SessionEvent) {
        self.notifications.push((conn, event));
    }

    /// Takes back a protocol switch asked for during this call (a session
    /// that wraps another, such as a WebSocket tunnel, wraps the switch of
    /// the inner one and sets it again).
    pub fn take_protocol_switch(&mut self) -> Option<Arc<dyn Protocol>> {
        self.protocol.take()
    }

    /// The engine's counters (for metrics endpoints).
    pub fn metrics(&self) -> &Metrics {
        self.metrics
    }

    /// Bytes to send to the client, in order.
    pub fn out(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Hands a request to the broker. The broker answers it through
    /// [`Session::on_reply`] with the same `request_id`.
    pub fn submit(&mut self, request_id: u32, command: Command) {
        self.commands.push((request_id, command));
    }

    /// Hands the broker a request made on the server's own behalf (as the
    /// system principal `$server`), for an adapter's bookkeeping in reserved
    /// `$` channels (MQTT retained messages). Only adapter code can call
    /// this; no client request reaches it. The reply comes back through
    /// [`Session::on_reply`] like any other.
    pub fn submit_as_server(&mut self, request_id: u32, command: Command) {
        self.server_commands.push((request_id, command));
    }

    /// Names this connection (for tests of adapters that drive several
    /// sessions without a shard and route their notifications).
    pub fn set_conn(&mut self, conn: ConnRef) {
        self.conn = Some(conn);
    }

    /// Takes the notifications sent to other connections during this call
    /// (for tests of adapters that drive sessions without a shard).
    pub fn take_notifications(&mut self) -> Vec<(ConnRef, SessionEvent)> {
        std::mem::take(&mut self.notifications)
    }

    /// Takes the requests made on the server's behalf during this call
    /// (for tests of adapters that drive a session without a shard, which
    /// answer them as the broker would).
    pub fn take_server_commands(&mut self) -> Vec<(u32, Command)> {
        std::mem::take(&mut self.server_commands)
    }

    /// Checks the client's credentials and, if they are good, makes the
    /// resulting principal the connection's. Without a token, a verified
    /// client certificate that names a user stands for one (see
    /// [`Authorizer::authenticate_certificate`]); a token always wins.
    pub fn authenticate(&mut self, client_name: &str, token: &str) -> Result<&Principal, Denied> {
        let principal = match &self.certificate_user {
            Some(user) if token.is_empty() => {
                self.authorizer
                    .authenticate_certificate(client_name, user, Some(self.peer))?
            }
            _ => self
                .authorizer
                .authenticate(client_name, token, Some(self.peer))?,
        };
        Ok(self.principal.insert(principal))
    }

    /// Sets the user a client certificate names (for tests of adapters
    /// that drive a session without a shard).
    pub fn set_certificate_user(&mut self, user: Option<&str>) {
        self.certificate_user = user.map(Arc::from);
    }

    /// Whether the connection's principal may do `action` on `channel`, as
    /// the broker checks a request of its own (false before it is
    /// authenticated). For what an adapter writes on its behalf as the
    /// server, and so gets no answer from the broker for.
    pub fn may(&self, action: Action, channel: &str) -> bool {
        self.principal.as_ref().is_some_and(|principal| {
            self.authorizer
                .authorize(principal, action, channel)
                .is_ok()
        })
    }

    /// The connection's principal, once authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The signed-in user, when the authorizer verifies user names (see
    /// [`Authorizer::verifies_users`]): what this user starts may be kept
    /// for them. `None` before authentication and on a loopback server.
    pub fn verified_user(&self) -> Option<Arc<str>> {
        let principal = self.principal.as_ref()?;
        self.authorizer
            .verifies_users()
            .then(|| principal.user.clone())
    }

    /// Records a request the session refused on its own account (the audit
    /// log has it when authentication is on); `target` names what was
    /// refused.
    pub fn refused(&self, target: &str, detail: &str) {
        if let Some(principal) = self.principal.as_ref() {
            self.authorizer.refused(principal, target, detail);
        }
    }
}
