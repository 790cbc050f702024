//! Connections on a shard: sockets driven by a protocol [`Session`], and
//! in-process clients fed through a channel. Reading, writing, command
//! routing and closing live here.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::Sender;
use mio::net::TcpStream;
use mio::{Interest, Token};
use starling_protocol::{kind, ErrorCode, HistoryQuery, SubscribeStart};

use super::subscriber::Feed;
use super::Shard;
use crate::auth::{Action, Principal};
use crate::command::{cursor_channel, validate, BrokerError, Command, Reply};
use crate::config::SlowConsumerPolicy;
use crate::engine::{EngineShared, LocalEvent};
use crate::mailbox::{ConnRef, FetchStart, Publish, ReplyAs, ShardMsg};
use crate::session::{Close, Protocol, Session, SessionContext};

/// The user name of requests an adapter makes on the server's behalf.
pub(crate) const SERVER_USER: &str = "$server";

/// Bytes read from one socket per turn before other connections get a turn.
const READ_BYTES_PER_TURN: usize = 256 * 1024;
/// Smallest free space made in a connection's input buffer before its reads
/// of a turn. The reads stop when the buffer is full (the connection reads
/// again next turn, after its frames were split off), so a busy connection
/// takes up to this much per turn without the buffer growing by
/// reallocation and copying mid-turn.
const READ_ROOM: usize = 64 * 1024;
/// Size of the shard's read buffer (`Shard::read_scratch`): the most one
/// read asks for. Reads go there, zeroed once, and what came is appended
/// to the connection's input: zeroing room in the connection's buffer
/// before each read (16 KiB at least) cost more than a small read's copy
/// (docs/BENCHMARKS.md, sessions 8 and 15).
pub(super) const READ_SCRATCH_BYTES: usize = READ_ROOM;
/// Room reserved in a connection's reply buffer per reply of a run before
/// its session encodes them: a publish acknowledgement is 34 bytes in the
/// native protocol and 4 in MQTT; a larger reply reserves the rest itself.
const REPLY_BYTES_EXPECTED: usize = 48;
/// Buffers handed to one `writev`.
const WRITE_SLICES_MAX: usize = 64;
/// Emptied [`SocketBuffers`] a shard keeps for the next connections to
/// become busy, so a connection that is busy for one message at a time (a
/// client publishing or receiving at a modest rate) does not allocate its
/// buffers' box for each one. A turn seldom has more connections reading
/// or writing than this; past it, a connection allocates its box (~110
/// bytes), next to the write queue it allocates anyway. At most ~110 KB
/// per shard, freed with the other buffers of an idle shard.
const SPARE_SOCKET_BUFFERS_MAX: usize = 1024;
/// How long a connection closed with a reason may take to receive it.
pub(super) const CLOSE_LINGER: Duration = Duration::from_secs(5);

pub(crate) struct Connection {
    pub generation: u32,
    pub principal: Option<Principal>,
    pub kind: ConnKind,
    /// Channels this connection subscribes to (for cleanup on close).
    pub subscriptions: Vec<Arc<str>>,
    /// Channel patterns this connection subscribes to, boxed while there
    /// are some (few connections have any).
    #[allow(
        clippy::box_collection,
        reason = "the box keeps an idle connection's share to one pointer, not a Vec's three words"
    )]
    pub patterns: Option<Box<Vec<Arc<str>>>>,
    /// Requests accepted and not yet answered.
    pub inflight: usize,
    /// Reading stopped because `inflight` reached its bound.
    pub read_paused: bool,
    /// The connection closes once its queued bytes are written.
    pub closing: bool,
    /// Nothing more will be read (the peer ended its stream, or the session
    /// ended the connection): the connection closes once every accepted
    /// request is answered and written.
    pub peer_done: bool,
    /// What only a publishing connection needs, made at its first publish
    /// or cursor write (subscribers and idle connections hold none).
    pub publishing: Option<Box<Publishing>>,
    /// Pages a socket connection is owed (history replies, subscription
    /// pages), counted against its outbound bound (none while it waits for
    /// none).
    pub reads: Option<Box<ReadBudget>>,
}

/// Pages a socket connection waits for, each reserving [`read_page_bytes`]
/// of its outbound bound until it arrives: a client that pipelines history
/// requests or subscriptions from a seq without reading its socket makes
/// its requests wait (and, at `inflight_requests_max`, its reading pause),
/// not its output grow by a page per request.
#[derive(Default)]
pub(crate) struct ReadBudget {
    /// The reads in flight.
    reserved: Vec<PageFor>,
    /// Reads waiting for room, in order, with their owner shard.
    waiting: VecDeque<(usize, ShardMsg)>,
}

/// What a page in flight answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageFor {
    /// A history read (its number on the connection's shard: request ids
    /// are the client's, and one may be reused while its read is out).
    Read(u64),
    /// A subscription's page (its id).
    Subscription(u64),
}

impl PageFor {
    /// The page a read message asks for (`None`: it asks for no messages).
    fn of(message: &ShardMsg) -> Option<PageFor> {
        match message {
            ShardMsg::Read { page, .. } => Some(PageFor::Read(*page)),
            ShardMsg::Fetch {
                start: FetchStart::Live,
                ..
            } => None,
            ShardMsg::Fetch { subscriber, .. } => Some(PageFor::Subscription(subscriber.id)),
            _ => None,
        }
    }
}

/// The bytes one page of a socket connection may hold (and reserves while
/// it is read): an eighth of the outbound bound, so a few reads go at once
/// and a page of large messages is cut to a size that leaves room for
/// deliveries.
pub(super) fn read_page_bytes(outbound_bytes_max: usize) -> usize {
    (outbound_bytes_max / 8).max(1)
}

impl Publishing {
    /// What a connection (its `publishing` field) needs to publish as
    /// `principal`, made now if it had not published yet, or again if the
    /// connection's principal changed (an HTTP request, then a tunnelled
    /// MQTT CONNECT as another user: its records and user limit are its
    /// own). The connection's own limiter stays: two users taking turns on
    /// one keep-alive connection do not reset it.
    fn of<'a>(
        publishing: &'a mut Option<Box<Publishing>>,
        principal: &Principal,
    ) -> &'a mut Publishing {
        let user = principal.user.as_bytes();
        if let Some(changed) = publishing.as_mut().filter(|p| p.sender != user) {
            changed.sender = Bytes::copy_from_slice(user);
            changed.user_limiter = None;
        }
        publishing.get_or_insert_with(|| {
            Box::new(Publishing {
                sender: Bytes::copy_from_slice(user),
                connection_limiter: None,
                user_limiter: None,
            })
        })
    }
}

/// What a connection needs once it publishes.
pub(crate) struct Publishing {
    /// The principal's user name as it is stored in records, made once.
    sender: Bytes,
    /// The connection's publish rate limiter, made at its first publish
    /// when limits are on.
    connection_limiter: Option<crate::limits::ConnectionLimiter>,
    /// The publishing user's limiter (shared by the user's connections).
    user_limiter: Option<Arc<crate::limits::UserLimiter>>,
}

pub(crate) enum ConnKind {
    Socket(SocketConn),
    Local { events: Sender<LocalEvent> },
}

pub(crate) struct SocketConn {
    stream: TcpStream,
    /// The TLS session on a TLS listener: reads and writes go through it
    /// (the session sees only plaintext).
    tls: Option<Box<crate::tls::TlsSession>>,
    peer: SocketAddr,
    session: Box<dyn Session>,
    pub protocol: Arc<dyn Protocol>,
    /// The deadline of the session's armed timer (see `Shard::timers`).
    timer_at: Option<Instant>,
    /// The buffers of a connection with bytes to read or write; `None` for
    /// an idle one.
    buffers: Option<Box<SocketBuffers>>,
}

/// What a connection uses only while it has bytes to read or write: lent
/// (from the shard's spares, [`SPARE_SOCKET_BUFFERS_MAX`]) when it reads,
/// is answered or is sent something, and given back once everything is
/// written and no partial frame waits, so an idle connection (most of them)
/// holds a pointer instead. A busy connection keeps them from turn to turn.
#[derive(Default)]
pub(super) struct SocketBuffers {
    input: BytesMut,
    output: VecDeque<Bytes>,
    output_bytes: usize,
    /// The front of `output` is partly written (so it must be finished
    /// before anything else, or the client sees half a frame).
    front_partial: bool,
    /// Small frames (replies) encoded since the last write; they leave as one
    /// buffer. Anything queued after them flushes them into `output` first,
    /// so frames keep their order.
    scratch: BytesMut,
}

/// A shard's emptied [`SocketBuffers`], at most [`SPARE_SOCKET_BUFFERS_MAX`].
#[derive(Default)]
pub(super) struct SpareBuffers(
    #[allow(
        clippy::vec_box,
        reason = "the boxes move between this list and connections, which hold one pointer"
    )]
    Vec<Box<SocketBuffers>>,
);

impl SpareBuffers {
    /// Keeps an emptied box for the next busy connection, unless enough are kept.
    fn give_back(&mut self, buffers: Box<SocketBuffers>) {
        if self.0.len() < SPARE_SOCKET_BUFFERS_MAX {
            self.0.push(buffers);
        }
    }
}

/// The buffers of a connection (`buffers`, its `SocketConn::buffers`),
/// taken from the shard's `spare` ones or made now if it had none.
fn lend_buffers<'a>(
    buffers: &'a mut Option<Box<SocketBuffers>>,
    spare: &mut SpareBuffers,
) -> &'a mut SocketBuffers {
    buffers.get_or_insert_with(|| spare.0.pop().unwrap_or_default())
}

impl SocketConn {
    /// Bytes queued for the client and not yet written (the replies
    /// encoded this turn, not yet moved behind the rest, counted too).
    pub(crate) fn output_bytes(&self) -> usize {
        self.buffers
            .as_ref()
            .map_or(0, |buffers| buffers.output_bytes + buffers.scratch.len())
    }

    /// See [`Session::delivery_room`].
    pub(crate) fn delivery_room(&self) -> usize {
        self.session.delivery_room()
    }

    fn output_is_empty(&self) -> bool {
        self.buffers
            .as_ref()
            .is_none_or(|buffers| buffers.output.is_empty())
    }

    /// Lets go of the buffers' memory once everything is written (the
    /// queue's and the reply buffer's; the read buffer went back to the
    /// shard after the read), and returns the emptied box when no partial
    /// frame waits, for the shard to keep or free.
    fn release_written_buffers(&mut self) -> Option<Box<SocketBuffers>> {
        let buffers = self.buffers.as_mut()?;
        if !buffers.output.is_empty() || !buffers.scratch.is_empty() {
            return None;
        }
        if buffers.scratch.capacity() > 0 {
            buffers.scratch = BytesMut::new();
        }
        if buffers.output.capacity() > 0 {
            buffers.output = VecDeque::new();
        }
        if !buffers.input.is_empty() {
            return None;
        }
        if buffers.input.capacity() > 0 {
            buffers.input = BytesMut::new();
        }
        self.buffers.take()
    }
}

impl SocketBuffers {
    /// Moves the encoded replies in `scratch` to the end of `output`.
    fn seal_scratch(&mut self) {
        if !self.scratch.is_empty() {
            let bytes = self.scratch.split().freeze();
            self.output_bytes += bytes.len();
            self.output.push_back(bytes);
        }
    }

    /// Queues an encoded frame (or frames) after everything queued before.
    fn push_output(&mut self, bytes: Bytes) {
        self.seal_scratch();
        self.output_bytes += bytes.len();
        self.output.push_back(bytes);
    }
}

impl Shard {
    pub(crate) fn connection(&self, conn: ConnRef) -> Option<&Connection> {
        debug_assert_eq!(conn.shard, self.id);
        self.connections
            .get(conn.slot as usize)?
            .as_deref()
            .filter(|c| c.generation == conn.generation)
    }

    pub(crate) fn connection_mut(&mut self, conn: ConnRef) -> Option<&mut Connection> {
        self.connections
            .get_mut(conn.slot as usize)?
            .as_deref_mut()
            .filter(|c| c.generation == conn.generation)
    }

    pub(crate) fn conn_ref(&self, slot: u32) -> ConnRef {
        ConnRef {
            shard: self.id,
            slot,
            generation: self.generations[slot as usize],
        }
    }

    fn allocate_slot(&mut self, connection: Connection) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.connections.push(None);
                self.generations.push(0);
                (self.connections.len() - 1) as u32
            }
        };
        let generation = self.generations[slot as usize];
        self.connections[slot as usize] = Some(Box::new(Connection {
            generation,
            ..connection
        }));
        slot
    }

    pub(super) fn accept(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        protocol: Arc<dyn Protocol>,
        tls: Option<Box<crate::tls::TlsSession>>,
    ) {
        let session = protocol.new_session(peer);
        let connection = Connection {
            generation: 0,
            principal: None,
            kind: ConnKind::Socket(SocketConn {
                stream,
                tls,
                peer,
                session,
                protocol,
                timer_at: None,
                buffers: None,
            }),
            subscriptions: Vec::new(),
            patterns: None,
            inflight: 0,
            read_paused: false,
            closing: false,
            peer_done: false,
            publishing: None,
            reads: None,
        };
        let slot = self.allocate_slot(connection);
        let registry = self.poll.registry();
        if let Some(Connection {
            kind: ConnKind::Socket(socket),
            ..
        }) = self.connections[slot as usize].as_deref_mut()
        {
            if let Err(error) = registry.register(
                &mut socket.stream,
                Token(slot as usize + 1),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!(
                    "shard {}: cannot register connection from {peer}: {error}",
                    self.id
                );
                self.shared.address_limits.closed(peer.ip());
                self.release_slot(slot);
                return;
            }
        }
        self.shared.metrics.connections_opened.add(1);
        let now = Instant::now();
        self.postpone_idle_release(now);
        let deadline = now + Duration::from_millis(self.shared.config.handshake_timeout_ms);
        self.handshakes
            .push_back((deadline, slot, self.generations[slot as usize]));
        // Bytes may already be waiting; edge-triggered polling would not say so again.
        self.read_again.push(slot);
    }

    /// Closes the connections whose handshake deadline passed while they had
    /// neither a principal (they never identified themselves) nor a session
    /// timer (their protocol times nothing of theirs yet): a client that
    /// connects and says nothing, or never finishes its TLS handshake,
    /// would otherwise hold its slot for ever.
    pub(super) fn close_unidentified(&mut self) {
        let now = self.now;
        let mut popped = false;
        while let Some(&(deadline, slot, generation)) = self.handshakes.front() {
            if deadline > now {
                break;
            }
            self.handshakes.pop_front();
            popped = true;
            if self.generations[slot as usize] != generation {
                continue;
            }
            let Some(connection) = self.connections[slot as usize].as_ref() else {
                continue;
            };
            let ConnKind::Socket(socket) = &connection.kind else {
                continue;
            };
            if connection.principal.is_some() || socket.timer_at.is_some() || connection.closing {
                continue;
            }
            let timeout_ms = self.shared.config.handshake_timeout_ms;
            log::debug!(
                "shard {}: closing the connection from {}: no handshake within {timeout_ms} ms",
                self.id,
                socket.peer
            );
            self.shared.metrics.handshake_timeouts.add(1);
            self.close_connection(
                slot,
                Some((
                    ErrorCode::Unavailable,
                    format!(
                        "no handshake within {timeout_ms} ms of connecting (engine.handshake_timeout_ms)"
                    ),
                )),
            );
        }
        if popped {
            // The room a storm of connections grew (24 bytes each) goes
            // once their deadlines have all passed, not only at an idle
            // release, which has usually run before that.
            super::release_if_empty(&mut self.handshakes);
        }
    }

    /// How long until the next handshake deadline ([`Duration::MAX`]: none).
    pub(super) fn next_handshake_deadline(&self) -> Duration {
        self.handshakes
            .front()
            .map_or(Duration::MAX, |(deadline, _, _)| {
                deadline.saturating_duration_since(Instant::now())
            })
    }

    pub(super) fn attach_local(
        &mut self,
        principal: Principal,
        events: Sender<LocalEvent>,
        attached: Sender<ConnRef>,
    ) {
        let connection = Connection {
            generation: 0,
            principal: Some(principal),
            kind: ConnKind::Local { events },
            subscriptions: Vec::new(),
            patterns: None,
            inflight: 0,
            read_paused: false,
            closing: false,
            peer_done: false,
            publishing: None,
            reads: None,
        };
        let slot = self.allocate_slot(connection);
        // The client may have given up waiting; then it detaches when dropped.
        let _ = attached.send(self.conn_ref(slot));
    }

    /// Reads what connection `slot` has (up to the turn's share) and hands
    /// it to its session. `to_would_block`: read until the socket says it
    /// would block; otherwise a plaintext read that returns less than it
    /// asked for ends the reading (the socket is drained, and epoll reports
    /// the next arrival: one `recv` fewer per wake-up). An event that
    /// reports the peer's end must read on to see it.
    pub(super) fn read_connection(&mut self, slot: u32, to_would_block: bool) {
        let mut peer_closed = false;
        {
            let Some(connection) = self
                .connections
                .get_mut(slot as usize)
                .and_then(|c| c.as_mut())
            else {
                return;
            };
            if connection.closing {
                return;
            }
            if connection.inflight >= self.shared.config.inflight_requests_max {
                connection.read_paused = true;
                return;
            }
            let ConnKind::Socket(socket) = &mut connection.kind else {
                return;
            };
            if socket.session.input_paused() {
                // `with_session` reads again once the session wants input.
                connection.read_paused = true;
                return;
            }
            if socket.output_bytes() >= 2 * self.shared.config.outbound_bytes_max {
                // A client that does not read what it asked for is not
                // read either (`write_dirty` reads again once its output is
                // back under the bound): each request answered at once (a
                // ping, a refusal, an HTTP health check) would grow its
                // output. Twice the bound: deliveries alone stay under it
                // (the slow-consumer policy), so a subscriber that reads
                // but lags is still read (its pings keep it connected).
                connection.read_paused = true;
                return;
            }
            let buffers = lend_buffers(&mut socket.buffers, &mut self.spare_buffers);
            if buffers.input.capacity() == 0 {
                buffers.input = std::mem::take(&mut self.spare_input);
            }
            let mut read_total = 0;
            let mut more = false;
            // A partial frame larger than the room doubles the buffer.
            let room = READ_ROOM.max(buffers.input.len());
            buffers.input.reserve(room);
            loop {
                if read_total >= READ_BYTES_PER_TURN {
                    more = true;
                    break;
                }
                let free = buffers.input.capacity() - buffers.input.len();
                if free == 0 {
                    more = true;
                    break;
                }
                let asked = free.min(self.read_scratch.len());
                match read_plaintext(
                    &mut socket.stream,
                    &mut socket.tls,
                    &mut self.read_scratch[..asked],
                ) {
                    Ok(0) => {
                        peer_closed = true;
                        break;
                    }
                    Ok(n) => {
                        buffers.input.extend_from_slice(&self.read_scratch[..n]);
                        read_total += n;
                        if n < asked && !to_would_block && socket.tls.is_none() {
                            break;
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        log::debug!(
                            "shard {}: read from {} failed: {error}",
                            self.id,
                            socket.peer
                        );
                        peer_closed = true;
                        break;
                    }
                }
            }
            self.shared.metrics.bytes_in.add(read_total as u64);
            if more && !peer_closed {
                self.read_again.push(slot);
            }
        }
        self.mark_dirty(slot);
        let has_input = matches!(
            self.connections[slot as usize].as_ref().map(|c| &c.kind),
            Some(ConnKind::Socket(socket))
                if socket.buffers.as_ref().is_some_and(|buffers| !buffers.input.is_empty())
        );
        let closed = has_input
            && !self.with_session(slot, |session, input, context| {
                session.on_input(input, context)
            });
        self.recycle_input(slot);
        if !closed && peer_closed {
            // Answer what was asked before the end of stream (a client may
            // send, shut down its side and then read), then close.
            if let Some(connection) = self.connections[slot as usize].as_mut() {
                connection.closing = true;
                connection.peer_done = true;
                let deadline = Instant::now() + CLOSE_LINGER;
                self.lingering.push((slot, connection.generation, deadline));
            }
        }
    }

    /// Takes back the read buffer of connection `slot` when it holds no
    /// partial frame.
    fn recycle_input(&mut self, slot: u32) {
        if let Some(Connection {
            kind: ConnKind::Socket(socket),
            ..
        }) = self
            .connections
            .get_mut(slot as usize)
            .and_then(|c| c.as_deref_mut())
        {
            let Some(buffers) = socket.buffers.as_mut() else {
                return;
            };
            if buffers.input.is_empty() && buffers.input.capacity() > 0 {
                let mut buffer = std::mem::take(&mut buffers.input);
                buffer.clear();
                if buffer.capacity() > self.spare_input.capacity() {
                    self.spare_input = buffer;
                }
            }
        }
    }

    /// Runs one callback of connection `slot`'s session, then carries out
    /// what the session asked for: a timer, a protocol switch, requests, and
    /// closing. Returns false when the session closed the connection.
    pub(super) fn with_session(
        &mut self,
        slot: u32,
        call: impl FnOnce(&mut dyn Session, &mut BytesMut, &mut SessionContext<'_>) -> Result<(), Close>,
    ) -> bool {
        let conn = self.conn_ref(slot);
        let (result, timer, mut commands, server_commands, notifications) = {
            let Some(connection) = self
                .connections
                .get_mut(slot as usize)
                .and_then(|c| c.as_mut())
            else {
                return false;
            };
            let ConnKind::Socket(socket) = &mut connection.kind else {
                return true;
            };
            let buffers = lend_buffers(&mut socket.buffers, &mut self.spare_buffers);
            // Taken, not borrowed: a reply to one of these commands may call
            // another session, which then makes a list of its own.
            let mut commands = std::mem::take(&mut self.spare_commands);
            let mut context = SessionContext::new(
                &mut buffers.scratch,
                &mut commands,
                &mut connection.principal,
                &*self.shared.authorizer,
                socket.peer,
                &self.shared.metrics,
                self.now,
            );
            context.conn = Some(conn);
            context.certificate_user = socket.tls.as_mut().and_then(|tls| tls.certificate_user());
            let result = call(&mut *socket.session, &mut buffers.input, &mut context);
            let timer = context.timer;
            if let Some(protocol) = context.protocol.take() {
                socket.protocol = protocol;
            }
            let server_commands = std::mem::take(&mut context.server_commands);
            let notifications = std::mem::take(&mut context.notifications);
            (result, timer, commands, server_commands, notifications)
        };
        if let Some(deadline) = timer {
            self.arm_timer(slot, deadline);
        }
        self.resume_paused_input(slot);
        self.mark_dirty(slot);
        for (request_id, command) in commands.drain(..) {
            self.handle_command(slot, request_id, command);
        }
        if commands.capacity() > self.spare_commands.capacity() {
            self.spare_commands = commands;
        }
        for (request_id, command) in server_commands {
            self.handle_command_as(slot, request_id, command, true);
        }
        for (to, event) in notifications {
            self.send(to.shard, ShardMsg::Notify { conn: to, event });
        }
        match result {
            Ok(()) => true,
            Err(close) => {
                log::debug!("shard {}: closing connection: {}", self.id, close.reason);
                if let Some(connection) = self.connections[slot as usize].as_mut() {
                    if !connection.closing {
                        connection.closing = true;
                        // Nothing more is read, and the session still gets
                        // the answers to what it already asked (an MQTT
                        // client's last retained message, its will) before
                        // the connection goes, within the linger time.
                        connection.peer_done = true;
                        let deadline = Instant::now() + CLOSE_LINGER;
                        self.lingering.push((slot, connection.generation, deadline));
                    }
                }
                false
            }
        }
    }

    /// Reads connection `slot` again if its reading was paused by its session
    /// ([`Session::input_paused`]) and neither the session nor the requests
    /// in flight hold it any more.
    fn resume_paused_input(&mut self, slot: u32) {
        let inflight_max = self.shared.config.inflight_requests_max;
        let Some(connection) = self.connections[slot as usize].as_mut() else {
            return;
        };
        let ConnKind::Socket(socket) = &connection.kind else {
            return;
        };
        if connection.read_paused
            && !connection.closing
            && connection.inflight <= inflight_max / 2
            && !socket.session.input_paused()
            && socket.output_bytes() < self.shared.config.outbound_bytes_max
        {
            connection.read_paused = false;
            self.read_again.push(slot);
        }
    }

    /// Arms connection `slot`'s timer for `deadline`, unless an earlier one
    /// is armed (that one fires first and the session re-arms).
    fn arm_timer(&mut self, slot: u32, deadline: Instant) {
        let generation = self.generations[slot as usize];
        let Some(ConnKind::Socket(socket)) = self.connections[slot as usize]
            .as_mut()
            .map(|c| &mut c.kind)
        else {
            return;
        };
        if socket.timer_at.is_some_and(|armed| armed <= deadline) {
            return;
        }
        socket.timer_at = Some(deadline);
        self.timers.push(Reverse((deadline, slot, generation)));
    }

    /// Calls the sessions whose timers are due.
    pub(super) fn fire_session_timers(&mut self) {
        let now = self.now;
        while let Some(&Reverse((deadline, slot, generation))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            if self.generations[slot as usize] != generation {
                continue;
            }
            let Some(connection) = self.connections[slot as usize].as_mut() else {
                continue;
            };
            if connection.closing {
                continue;
            }
            let ConnKind::Socket(socket) = &mut connection.kind else {
                continue;
            };
            // A stale entry: the timer was re-armed earlier than this one.
            if socket.timer_at != Some(deadline) {
                continue;
            }
            socket.timer_at = None;
            self.with_session(slot, |session, _, context| session.on_timer(context));
        }
    }

    /// How long until the next session timer is due, if one is armed.
    pub(super) fn next_session_timer(&self) -> Option<Duration> {
        self.timers
            .peek()
            .map(|Reverse((deadline, _, _))| deadline.saturating_duration_since(Instant::now()))
    }

    /// Authorizes and routes one command of connection `slot`.
    pub(super) fn handle_command(&mut self, slot: u32, request_id: u32, command: Command) {
        self.handle_command_as(slot, request_id, command, false);
    }

    /// As [`Shard::handle_command`]; with `as_server`, the command acts as
    /// the system principal (see `SessionContext::submit_as_server`).
    fn handle_command_as(&mut self, slot: u32, request_id: u32, command: Command, as_server: bool) {
        let from = self.conn_ref(slot);
        let Some(connection) = self.connections[slot as usize].as_mut() else {
            return;
        };
        connection.inflight += 1;
        let sender = match admit(&self.shared, connection, &command, as_server) {
            Ok(sender) => sender,
            Err(error) => {
                self.reply(from, request_id, Reply::Error(error));
                return;
            }
        };
        let page_max = self.shared.config.page_messages_max;
        match command {
            Command::Publish {
                channel,
                ephemeral,
                kind,
                client_message_id,
                relation,
                headers,
                body,
            } => {
                let partition = self.shared.routing.partition_of(&channel);
                let owner = self.shared.routing.shard_of_partition(partition);
                let publish = Publish {
                    from,
                    request_id,
                    reply_as: ReplyAs::Plain,
                    channel,
                    partition,
                    sender,
                    ephemeral,
                    kind,
                    client_message_id,
                    relation,
                    headers,
                    body,
                };
                self.route_publish(owner, publish);
            }
            Command::Subscribe { channel, start } => {
                self.subscribe(slot, request_id, channel, start);
            }
            Command::Unsubscribe { channel } => self.unsubscribe(slot, request_id, &channel),
            Command::SubscribePattern { pattern } => {
                self.subscribe_pattern(slot, request_id, Arc::from(pattern))
            }
            Command::UnsubscribePattern { pattern } => {
                self.unsubscribe_pattern(slot, request_id, &pattern)
            }
            Command::History {
                channel,
                query,
                limit,
            } => {
                let owner = self.shared.routing.shard_of(&channel);
                let message = ShardMsg::Read {
                    from,
                    request_id,
                    reply_as: ReplyAs::Plain,
                    channel: Arc::from(channel),
                    query,
                    limit: limit.min(page_max),
                    bytes_max: 0,
                    page: 0,
                };
                self.send_read(slot, owner, message, false);
            }
            Command::CursorSet {
                consumer,
                channel,
                seq,
            } => {
                let cursor = cursor_channel(&consumer, &channel);
                let partition = self.shared.routing.partition_of(&cursor);
                let owner = self.shared.routing.shard_of_partition(partition);
                let publish = Publish {
                    from,
                    request_id,
                    reply_as: ReplyAs::Cursor,
                    channel: cursor.into(),
                    partition,
                    sender,
                    ephemeral: false,
                    kind: kind::CURSOR,
                    client_message_id: Bytes::new(),
                    relation: seq,
                    headers: Bytes::new(),
                    body: Bytes::copy_from_slice(&seq.to_le_bytes()),
                };
                self.route_publish(owner, publish);
            }
            Command::CursorGet { consumer, channel } => {
                let cursor = cursor_channel(&consumer, &channel);
                let owner = self.shared.routing.shard_of(&cursor);
                let message = ShardMsg::Read {
                    from,
                    request_id,
                    reply_as: ReplyAs::Cursor,
                    channel: Arc::from(cursor),
                    query: HistoryQuery::Last,
                    limit: 1,
                    bytes_max: usize::MAX,
                    page: 0,
                };
                self.send(owner, message);
            }
        }
    }

    /// Sends `message` (a history read or a subscription's fetch of
    /// connection `slot`) to `owner`, its page cut to the connection's
    /// share; for a socket connection whose outbound bound has no room for
    /// another page (queued bytes and pages in flight), keeps it waiting
    /// ([`ReadBudget`]). `waited`: the message is the first of the waiting
    /// ones, which otherwise go first.
    pub(super) fn send_read(
        &mut self,
        slot: u32,
        owner: usize,
        mut message: ShardMsg,
        waited: bool,
    ) {
        let bound = self.shared.config.outbound_bytes_max;
        let page = read_page_bytes(bound);
        if let ShardMsg::Read { page, .. } = &mut message {
            if *page == 0 {
                self.next_read_page += 1;
                *page = self.next_read_page;
            }
        }
        let Some(connection) = self.connections[slot as usize].as_mut() else {
            return;
        };
        let bytes = match (&connection.kind, PageFor::of(&message)) {
            (ConnKind::Socket(socket), Some(page_for)) => {
                let budget = connection.reads.get_or_insert_with(Box::default);
                let in_flight = (budget.reserved.len() + 1) * page;
                let queue_first = !waited && !budget.waiting.is_empty();
                if queue_first || socket.output_bytes() + in_flight > bound {
                    budget.waiting.push_back((owner, message));
                    return;
                }
                budget.reserved.push(page_for);
                page
            }
            // An in-process client's events are bounded by its own queue.
            _ => bound / 2,
        };
        if let ShardMsg::Read { bytes_max, .. } | ShardMsg::Fetch { bytes_max, .. } = &mut message {
            *bytes_max = bytes;
        }
        self.send(owner, message);
    }

    /// The page `page_for` of connection `conn` arrived (or will not): its
    /// share of the bound is free again, and reads waiting for room go.
    pub(super) fn page_arrived(&mut self, conn: ConnRef, page_for: PageFor) {
        let Some(connection) = self.connection_mut(conn) else {
            return;
        };
        let Some(budget) = connection.reads.as_mut() else {
            return;
        };
        if let Some(at) = budget.reserved.iter().position(|p| *p == page_for) {
            budget.reserved.swap_remove(at);
        }
        self.send_waiting_reads(conn.slot);
    }

    /// Sends the waiting reads of connection `slot` that have room now
    /// (after a page arrived or queued bytes were written).
    fn send_waiting_reads(&mut self, slot: u32) {
        let bound = self.shared.config.outbound_bytes_max;
        let page = read_page_bytes(bound);
        loop {
            let Some(connection) = self.connections[slot as usize].as_mut() else {
                return;
            };
            let ConnKind::Socket(socket) = &connection.kind else {
                return;
            };
            let output = socket.output_bytes();
            let Some(budget) = connection.reads.as_mut() else {
                return;
            };
            let in_flight = (budget.reserved.len() + 1) * page;
            if budget.waiting.is_empty() || output + in_flight > bound {
                if budget.waiting.is_empty() && budget.reserved.is_empty() {
                    connection.reads = None;
                }
                return;
            }
            let (owner, message) = budget.waiting.pop_front().expect("not empty");
            self.send_read(slot, owner, message, true);
        }
    }

    /// Forgets the fetch of subscription `id` of connection `slot` that
    /// waits for room (its subscription ended before it was sent).
    pub(super) fn drop_waiting_fetch(&mut self, slot: u32, id: u64) {
        let Some(budget) = self.connections[slot as usize]
            .as_mut()
            .and_then(|connection| connection.reads.as_mut())
        else {
            return;
        };
        budget.waiting.retain(|(_, message)| {
            !matches!(message, ShardMsg::Fetch { subscriber, .. } if subscriber.id == id)
        });
    }

    /// Whether connection `slot` may have one more catch-up page in flight
    /// now; if so, the page is reserved (`page_for`).
    pub(super) fn reserve_page(&mut self, slot: u32, page_for: PageFor) -> bool {
        let bound = self.shared.config.outbound_bytes_max;
        let page = read_page_bytes(bound);
        let Some(connection) = self.connections[slot as usize].as_mut() else {
            return false;
        };
        let ConnKind::Socket(socket) = &connection.kind else {
            return true;
        };
        let output = socket.output_bytes();
        let budget = connection.reads.get_or_insert_with(Box::default);
        if !budget.waiting.is_empty() || output + (budget.reserved.len() + 1) * page > bound {
            if budget.waiting.is_empty() && budget.reserved.is_empty() {
                connection.reads = None;
            }
            return false;
        }
        budget.reserved.push(page_for);
        true
    }

    /// Hands a publish to the owner of its channel. When that is this shard
    /// and nothing it sent itself waits before it, the owner takes it at
    /// once, as the queue would have handed it over next: the record is
    /// copied into its batch while the bytes just read are still in the
    /// core's cache, and the message is not moved through the queue.
    fn route_publish(&mut self, owner: usize, publish: Publish) {
        if owner == self.id && self.self_queue.is_empty() {
            self.owner_publish(publish);
        } else {
            self.send(owner, ShardMsg::Publish(publish));
        }
    }

    /// Routes a reply to the shard of connection `to`.
    pub(crate) fn reply(&mut self, to: ConnRef, request_id: u32, reply: Reply) {
        if to.shard == self.id {
            self.deliver_reply(to, request_id, reply);
        } else {
            self.send(
                to.shard,
                ShardMsg::Replied {
                    to,
                    request_id,
                    reply,
                },
            );
        }
    }

    /// Hands a reply to one of this shard's connections.
    pub(super) fn deliver_reply(&mut self, to: ConnRef, request_id: u32, reply: Reply) {
        let mut run = std::mem::take(&mut self.spare_reply_run);
        run.push((request_id, reply));
        self.deliver_reply_run(to, run);
    }

    /// Hands replies to this shard's connections, in order (a commit's
    /// acknowledgements): each run of consecutive replies to one connection
    /// goes to its session in one call.
    pub(super) fn deliver_replies(&mut self, replies: Vec<(ConnRef, u32, Reply)>) {
        let mut replies = replies.into_iter().peekable();
        while let Some(&(to, _, _)) = replies.peek() {
            let mut run = std::mem::take(&mut self.spare_reply_run);
            while let Some((_, request_id, reply)) = replies.next_if(|(next, _, _)| *next == to) {
                run.push((request_id, reply));
            }
            self.deliver_reply_run(to, run);
        }
    }

    /// Hands `run`, replies to connection `to`, to its session in one call
    /// (or to an in-process client's events), then keeps the emptied list
    /// for the next run: per reply, a session call and two dirty marks cost
    /// more than encoding the reply (docs/BENCHMARKS.md, session 8).
    fn deliver_reply_run(&mut self, to: ConnRef, mut run: Vec<(u32, Reply)>) {
        let inflight_max = self.shared.config.inflight_requests_max;
        if let Some(connection) = self.connection_mut(to) {
            connection.inflight = connection.inflight.saturating_sub(run.len());
            let resume = connection.read_paused && connection.inflight <= inflight_max / 2;
            if resume {
                connection.read_paused = false;
            }
            match &mut connection.kind {
                ConnKind::Socket(_) => {
                    // Even a closing connection encodes its replies: a peer
                    // that ended its stream still gets the answers it asked
                    // for. Every reply is offered even if one closes it.
                    self.with_session(to.slot, |session, _, context| {
                        // One reservation for the run, not a regrowth of the
                        // reply buffer at every doubling.
                        context.out().reserve(run.len() * REPLY_BYTES_EXPECTED);
                        let mut result = Ok(());
                        for (request_id, reply) in &run {
                            let answered = session.on_reply(*request_id, reply, context);
                            result = result.and(answered);
                        }
                        result
                    });
                }
                ConnKind::Local { events } => {
                    // Replies pass beyond the delivery bound (each request of
                    // the client waits for its reply); an error only says the
                    // client has gone.
                    for (request_id, reply) in run.drain(..) {
                        let _ = events.send(LocalEvent::Reply { request_id, reply });
                    }
                }
            }
            if resume {
                self.read_again.push(to.slot);
            }
            self.mark_dirty(to.slot);
        }
        run.clear();
        if run.capacity() > self.spare_reply_run.capacity() {
            self.spare_reply_run = run;
        }
    }

    /// Queues a delivery (already encoded for socket connections) and applies
    /// the slow-consumer policy when the connection's queue is over its bound
    /// (what a [`Feed`] changes there). Returns false when the delivery was
    /// refused (and the caller makes the subscription read on from the log).
    pub(super) fn queue_delivery(
        &mut self,
        slot: u32,
        encoded: Bytes,
        event: impl FnOnce() -> LocalEvent,
        feed: Feed,
    ) -> bool {
        let bound = self.shared.config.outbound_bytes_max;
        let local_bound = self.shared.config.local_events_max;
        let policy = self.shared.config.slow_consumer;
        let Some(connection) = self.connections[slot as usize].as_mut() else {
            return true;
        };
        let over = match &mut connection.kind {
            ConnKind::Socket(socket) => {
                if socket.output_bytes() + encoded.len() > bound && feed != Feed::Page {
                    true
                } else {
                    lend_buffers(&mut socket.buffers, &mut self.spare_buffers).push_output(encoded);
                    false
                }
            }
            // The queue itself is unbounded: this is its bound for
            // deliveries (replies still pass).
            ConnKind::Local { events } if events.len() >= local_bound && feed != Feed::Page => true,
            ConnKind::Local { events } => {
                // An error only says the client has gone.
                let _ = events.send(event());
                false
            }
        };
        if !over {
            self.shared.metrics.messages_out.add(1);
            self.mark_dirty(slot);
            return true;
        }
        match policy {
            SlowConsumerPolicy::CatchUp if feed != Feed::Pattern => return false,
            SlowConsumerPolicy::Disconnect | SlowConsumerPolicy::CatchUp => {
                self.slow_consumer(slot)
            }
            SlowConsumerPolicy::Drop => self.shared.metrics.deliveries_dropped.add(1),
        }
        true
    }

    fn slow_consumer(&mut self, slot: u32) {
        self.shared.metrics.slow_consumer_disconnects.add(1);
        let reason = format!(
            "slow consumer: more than {} bytes queued for this connection; read faster, \
             then reconnect and resume from the last seq received",
            self.shared.config.outbound_bytes_max
        );
        // Rare and worth knowing about (the client loses its connection):
        // the operator sees who and why.
        if let Some(connection) = self.connections[slot as usize].as_ref() {
            let who = connection.principal.as_ref().map_or_else(
                || "a connection that has not identified itself".to_string(),
                |principal| match principal.address {
                    Some(address) => format!("user {} from {address}", principal.user),
                    None => format!("in-process user {}", principal.user),
                },
            );
            log::info!("shard {}: closing {who}: {reason}", self.id);
        }
        self.close_connection(slot, Some((ErrorCode::SlowConsumer, reason)));
    }

    pub(crate) fn mark_dirty(&mut self, slot: u32) {
        self.dirty.push(slot);
    }

    /// Writes what each touched connection has queued, until the socket would
    /// block. Connections marked `closing` close once their queue is empty.
    pub(super) fn write_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let mut to_close = Vec::new();
        let mut reads_wait = Vec::new();
        let mut paused = Vec::new();
        for slot in dirty {
            let Some(connection) = self
                .connections
                .get_mut(slot as usize)
                .and_then(|c| c.as_mut())
            else {
                continue;
            };
            let ConnKind::Socket(socket) = &mut connection.kind else {
                continue;
            };
            match write_queued(socket) {
                Ok(written) => {
                    self.shared.metrics.bytes_out.add(written as u64);
                    // Everything went out: let go of the buffers, so an
                    // idle connection holds none.
                    if let Some(spare) = socket.release_written_buffers() {
                        self.spare_buffers.give_back(spare);
                    }
                }
                Err(error) => {
                    log::debug!(
                        "shard {}: write to {} failed: {error}",
                        self.id,
                        socket.peer
                    );
                    to_close.push(slot);
                    continue;
                }
            }
            let answered = !connection.peer_done || connection.inflight == 0;
            if connection.closing && socket.output_is_empty() && answered {
                to_close.push(slot);
            }
            if connection
                .reads
                .as_ref()
                .is_some_and(|budget| !budget.waiting.is_empty())
            {
                reads_wait.push(slot);
            }
            if connection.read_paused {
                paused.push(slot);
            }
        }
        for slot in to_close {
            self.finish_close(slot);
        }
        for slot in reads_wait {
            self.send_waiting_reads(slot);
        }
        for slot in paused {
            self.resume_paused_input(slot);
        }
    }

    /// Closes connection `slot`. With a reason, the session gets to send a
    /// last word: what was queued and not yet started is dropped (the client
    /// resumes from its last seq), the last word is queued, and the
    /// connection stays open, reading nothing, until that is written or
    /// [`CLOSE_LINGER`] has passed.
    pub(crate) fn close_connection(&mut self, slot: u32, reason: Option<(ErrorCode, String)>) {
        let Some(connection) = self
            .connections
            .get_mut(slot as usize)
            .and_then(|c| c.as_mut())
        else {
            return;
        };
        let linger = match (&mut connection.kind, &reason) {
            (ConnKind::Socket(socket), Some((code, reason))) => {
                let buffers = lend_buffers(&mut socket.buffers, &mut self.spare_buffers);
                buffers.scratch.clear();
                let keep = usize::from(buffers.front_partial);
                while buffers.output.len() > keep {
                    let dropped = buffers.output.pop_back().expect("length checked");
                    buffers.output_bytes -= dropped.len();
                }
                socket
                    .session
                    .on_server_close(*code, reason, &mut buffers.scratch);
                buffers.seal_scratch();
                let _ = write_queued(socket);
                !socket.output_is_empty()
            }
            (ConnKind::Local { events }, Some((_, reason))) => {
                let _ = events.send(LocalEvent::Closed {
                    reason: reason.clone(),
                });
                false
            }
            _ => false,
        };
        let subscriptions = std::mem::take(&mut connection.subscriptions);
        let patterns = connection.patterns.take();
        if linger {
            connection.closing = true;
            self.lingering
                .push((slot, connection.generation, Instant::now() + CLOSE_LINGER));
        }
        for channel in subscriptions {
            self.remove_subscriber(&channel, slot);
        }
        for pattern in patterns.into_iter().flat_map(|patterns| *patterns) {
            self.remove_pattern_subscriber(&pattern, slot);
        }
        if !linger {
            self.finish_close(slot);
        }
    }

    /// Closes every connection whose principal `matching` matches, with
    /// `reason` as the last word (a revoked session, a disabled user).
    pub(super) fn close_matching(
        &mut self,
        matching: &crate::engine::ConnectionMatch,
        reason: &str,
    ) {
        let slots: Vec<u32> = self
            .connections
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.as_ref()
                    .and_then(|c| c.principal.as_ref())
                    .is_some_and(|p| matching.matches(p))
            })
            .map(|(slot, _)| slot as u32)
            .collect();
        for slot in slots {
            self.close_connection(slot, Some((ErrorCode::Denied, reason.to_string())));
        }
    }

    /// Every `session_check_ms`: asks the authorizer whether the sign-in
    /// session of each open connection that has one still stands, and
    /// closes those whose session has expired or gone.
    pub(super) fn check_sessions(&mut self, last: &mut Instant) {
        let every = Duration::from_millis(self.shared.config.session_check_ms);
        if self.now.saturating_duration_since(*last) < every {
            return;
        }
        *last = self.now;
        let authorizer = &*self.shared.authorizer;
        let ended: Vec<(u32, String)> = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                let principal = c.principal.as_ref().filter(|p| p.session.is_some())?;
                if c.closing || !matches!(c.kind, ConnKind::Socket(_)) {
                    return None;
                }
                let denied = authorizer.session_in_use(principal).err()?;
                Some((slot as u32, denied.0))
            })
            .collect();
        for (slot, reason) in ended {
            self.close_connection(slot, Some((ErrorCode::Denied, reason)));
        }
    }

    /// Closes lingering connections whose time is up.
    pub(super) fn close_lingering(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        // The closes below tell sessions the time (a will's delay): the
        // turn's clock may be behind by the turn.
        self.now = Instant::now();
        let now = self.now;
        let mut due = Vec::new();
        self.lingering.retain(|&(slot, generation, deadline)| {
            if deadline <= now {
                due.push((slot, generation));
                false
            } else {
                true
            }
        });
        for (slot, generation) in due {
            if self.generations[slot as usize] == generation {
                self.finish_close(slot);
            }
        }
    }

    /// Deregisters and drops connection `slot` now.
    fn finish_close(&mut self, slot: u32) {
        self.with_session(slot, |session, _, context| {
            session.on_closed(context);
            Ok(())
        });
        let Some(mut connection) = self
            .connections
            .get_mut(slot as usize)
            .and_then(|c| c.take())
        else {
            return;
        };
        if let ConnKind::Socket(socket) = &mut connection.kind {
            // Only sockets are counted open (in-process clients are not
            // connections of `clients/connected` or `/metrics`), so only
            // sockets are counted closed.
            self.shared.metrics.connections_closed.add(1);
            self.shared.address_limits.closed(socket.peer.ip());
            self.postpone_idle_release(Instant::now());
            if let Some(tls) = socket.tls.as_mut() {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut socket.stream);
            }
            let _ = self.poll.registry().deregister(&mut socket.stream);
            let _ = socket.stream.shutdown(std::net::Shutdown::Both);
        }
        for channel in std::mem::take(&mut connection.subscriptions) {
            self.remove_subscriber(&channel, slot);
        }
        for pattern in connection.patterns.take().into_iter().flat_map(|p| *p) {
            self.remove_pattern_subscriber(&pattern, slot);
        }
        self.release_slot(slot);
    }

    fn release_slot(&mut self, slot: u32) {
        self.connections[slot as usize] = None;
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free_slots.push(slot);
    }
}

/// Reads plaintext into `buffer`: straight from the socket, or through the
/// TLS session (TLS records are read until the session has plaintext or the
/// socket would block). `Ok(0)` is the end of the stream.
fn read_plaintext(
    stream: &mut TcpStream,
    tls: &mut Option<Box<crate::tls::TlsSession>>,
    buffer: &mut [u8],
) -> io::Result<usize> {
    let Some(tls) = tls else {
        return stream.read(buffer);
    };
    loop {
        match tls.reader().read(buffer) {
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(0);
        }
        if let Err(error) = tls.process_new_packets() {
            // Tell the peer why (a TLS alert), then give up on it.
            let _ = tls.write_tls(stream);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS: {error}"),
            ));
        }
    }
}

/// Hands queued plaintext to the TLS session and writes its records until
/// done or the socket would block; returns the bytes written to the socket.
fn write_queued_tls(socket: &mut SocketConn) -> io::Result<usize> {
    let tls = socket.tls.as_mut().expect("a TLS connection");
    let mut written_total = 0;
    loop {
        while tls.wants_write() {
            match tls.write_tls(&mut socket.stream) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
                Ok(n) => written_total += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(written_total)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let Some(buffers) = socket.buffers.as_deref_mut() else {
            return Ok(written_total);
        };
        let Some(front) = buffers.output.front_mut() else {
            return Ok(written_total);
        };
        let taken = tls.writer().write(front)?;
        if taken == 0 {
            return Ok(written_total);
        }
        buffers.output_bytes -= taken;
        if taken == front.len() {
            buffers.output.pop_front();
            buffers.front_partial = false;
        } else {
            front.advance(taken);
            buffers.front_partial = true;
        }
    }
}

/// Writes queued buffers with `writev` until done or the socket would block;
/// returns the bytes written.
fn write_queued(socket: &mut SocketConn) -> io::Result<usize> {
    if let Some(buffers) = socket.buffers.as_deref_mut() {
        buffers.seal_scratch();
    }
    if socket.tls.is_some() {
        return write_queued_tls(socket);
    }
    let Some(buffers) = socket.buffers.as_deref_mut() else {
        return Ok(0);
    };
    let mut written_total = 0;
    while !buffers.output.is_empty() {
        let slices: Vec<IoSlice<'_>> = buffers
            .output
            .iter()
            .take(WRITE_SLICES_MAX)
            .map(|b| IoSlice::new(b))
            .collect();
        match socket.stream.write_vectored(&slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
            Ok(mut written) => {
                written_total += written;
                buffers.output_bytes -= written;
                while written > 0 {
                    let front = buffers
                        .output
                        .front_mut()
                        .expect("written bytes were queued");
                    if written >= front.len() {
                        written -= front.len();
                        buffers.output.pop_front();
                        buffers.front_partial = false;
                    } else {
                        front.advance(written);
                        buffers.front_partial = true;
                        written = 0;
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(written_total)
}

/// The principal of commands a session makes on the server's behalf
/// (`SessionContext::submit_as_server`), made once rather than per command.
fn server_principal() -> &'static Principal {
    static SERVER: OnceLock<Principal> = OnceLock::new();
    SERVER.get_or_init(|| Principal::system(SERVER_USER))
}

/// Checks a command of `connection` (acting as the system principal with
/// `as_server`): signed in, valid, allowed, within the publish rate limits.
/// Returns the user name its records carry (empty for a command that
/// stores none); a refusal is the reply's error.
///
/// It borrows the principal where the connection keeps it, never clones
/// it: a clone per command changed reference counts that principals share
/// across connections on every core (the empty role list every principal
/// of the loopback authorizer holds, its anonymous user name), so a cache
/// line moved between cores with every message.
fn admit(
    shared: &EngineShared,
    connection: &mut Connection,
    command: &Command,
    as_server: bool,
) -> Result<Bytes, BrokerError> {
    let Connection {
        principal,
        publishing,
        ..
    } = connection;
    let principal = if as_server {
        server_principal()
    } else {
        principal.as_ref().ok_or_else(|| {
            BrokerError::Denied(
                "the connection is not authenticated; send Hello with a token first".into(),
            )
        })?
    };
    validate(command, shared.config.body_bytes_max, principal.is_system())?;
    let action = match command {
        Command::Publish { .. } => Action::Publish,
        Command::Subscribe { .. }
        | Command::Unsubscribe { .. }
        | Command::SubscribePattern { .. }
        | Command::UnsubscribePattern { .. } => Action::Subscribe,
        Command::History { .. } => Action::History,
        Command::CursorSet { .. } => Action::CursorWrite,
        Command::CursorGet { .. } => Action::CursorRead,
    };
    if let Err(denied) = shared
        .authorizer
        .authorize(principal, action, command.channel())
    {
        shared.metrics.denied.add(1);
        return Err(BrokerError::Denied(denied.0));
    }
    // The last N records before live ones are history: they need that
    // right too (a subscription from a seq resumes a reader, and needs
    // only `subscribe`).
    if let Command::Subscribe {
        channel,
        start: SubscribeStart::LastN(n),
    } = command
    {
        if *n > 0 {
            if let Err(denied) = shared
                .authorizer
                .authorize(principal, Action::History, channel)
            {
                shared.metrics.denied.add(1);
                return Err(BrokerError::Denied(denied.0));
            }
        }
    }
    // Everything of a record the client chose counts, not the body alone
    // (headers hold up to 16 KiB); a cursor write is a record too.
    let record_bytes = match command {
        Command::Publish {
            body,
            headers,
            client_message_id,
            ..
        } => Some(body.len() + headers.len() + client_message_id.len()),
        Command::CursorSet { consumer, .. } => Some(consumer.len() + 8),
        _ => None,
    };
    if let (Some(bytes), false) = (record_bytes, as_server || principal.is_system()) {
        if let Err(why) = admit_publish(shared, publishing, principal, bytes as u64) {
            shared.metrics.denied.add(1);
            return Err(BrokerError::RateLimited(why));
        }
    }
    if !matches!(command, Command::Publish { .. } | Command::CursorSet { .. }) {
        return Ok(Bytes::new());
    }
    if as_server {
        return Ok(Bytes::from_static(SERVER_USER.as_bytes()));
    }
    Ok(Publishing::of(publishing, principal).sender.clone())
}

/// Applies the publish rate limits of a connection (its `publishing` field)
/// and of its user.
fn admit_publish(
    shared: &EngineShared,
    publishing: &mut Option<Box<Publishing>>,
    principal: &Principal,
    bytes: u64,
) -> Result<(), String> {
    let config = &shared.config;
    let (per_connection, per_user) = (config.connection_limits(), config.user_limits());
    if per_connection.is_off() && per_user.is_off() {
        return Ok(());
    }
    let publishing = Publishing::of(publishing, principal);
    publishing
        .connection_limiter
        .get_or_insert_with(crate::limits::ConnectionLimiter::new)
        .admit(per_connection, bytes)?;
    publishing
        .user_limiter
        .get_or_insert_with(|| shared.user_limiters.get(&principal.user))
        .admit(per_user, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes a connection's state may take before this test fails: every
    /// idle connection costs this (boxed, plus a pointer in the slot
    /// vector; 256 is one of mimalloc's size classes, the next is 320), so
    /// a field that makes it grow should be boxed or made lazily (like
    /// `SocketBuffers` and `Publishing`) instead. Raise it only with a
    /// reason.
    const CONNECTION_BYTES_MAX: usize = 256;

    #[test]
    fn an_idle_connection_stays_small() {
        assert_eq!(
            std::mem::size_of::<Option<Box<Connection>>>(),
            std::mem::size_of::<usize>(),
            "a free slot costs a pointer"
        );
        assert!(
            std::mem::size_of::<Connection>() <= CONNECTION_BYTES_MAX,
            "a connection takes {} bytes, more than CONNECTION_BYTES_MAX ({CONNECTION_BYTES_MAX}): \
             box what idle connections do not use",
            std::mem::size_of::<Connection>()
        );
    }
}
