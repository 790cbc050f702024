//! The only way work crosses cores: each shard has one bounded lock-free
//! inbox ([`crossbeam_queue::ArrayQueue`]) and a [`mio::Waker`]. Producers are
//! the other shards, the acceptor thread and in-process clients.
//!
//! A shard never blocks on a full inbox: what does not fit waits in the
//! sender's per-destination overflow queue (see `shard::Outbox`) and goes out
//! on a later turn, in order. Threads outside the event loops (the acceptor,
//! embedded clients) retry with a short sleep instead.

use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use starling_protocol::{HistoryQuery, Message, Utf8Bytes};

use crate::auth::Principal;
use crate::command::{BrokerError, Command, Reply};
use crate::engine::LocalEvent;
use crate::session::{Protocol, SessionEvent};

/// Messages one inbox holds. One loop turn drains the inbox, so this bounds the
/// work another core can hand over per turn: 64 Ki entries is a few MB of
/// pointers and far above one turn's traffic at millions of messages/s, while
/// a core that falls further behind pushes back on its senders.
pub const INBOX_CAPACITY: usize = 64 * 1024;

/// A connection anywhere in the engine. The generation makes a reference to a
/// closed connection harmless after its slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: usize,
    pub slot: u32,
    pub generation: u32,
}

/// One subscription: its connection and a number unique on that shard, so a
/// page meant for an earlier subscription to the same channel (unsubscribed
/// and subscribed again) is recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubRef {
    pub conn: ConnRef,
    pub id: u64,
}

/// How the owner of a channel should phrase a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyAs {
    /// The command's own reply (`Published`, `History`).
    Plain,
    /// A cursor operation stored as a record of a reserved channel.
    Cursor,
}

/// Where a subscription's catch-up starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FetchStart {
    Live,
    /// From `seq`, at most `limit` messages a page (and at most the
    /// engine's `page_messages_max`).
    From {
        seq: u64,
        limit: u32,
    },
    Last(u64),
}

/// A publish on its way to the channel's owner (`ShardMsg::Publish`).
pub(crate) struct Publish {
    pub from: ConnRef,
    pub request_id: u32,
    pub reply_as: ReplyAs,
    /// The command's own name (no copy: a slice of the frame's buffer when
    /// read by the native protocol); the owner needs a shared `Arc<str>`
    /// only for channels with subscribers.
    pub channel: Utf8Bytes,
    /// The channel's partition, computed once where the command arrived.
    pub partition: u32,
    /// The publishing user's name.
    pub sender: Bytes,
    pub ephemeral: bool,
    pub kind: u8,
    pub client_message_id: Bytes,
    pub relation: u64,
    pub headers: Bytes,
    pub body: Bytes,
}

/// Work for a shard.
pub(crate) enum ShardMsg {
    /// A connection accepted for this shard.
    /// Close the connections whose principal matches (revocation).
    CloseMatching {
        matching: crate::engine::ConnectionMatch,
        reason: Arc<str>,
    },
    Accept {
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        protocol: Arc<dyn Protocol>,
        /// The TLS session of a TLS listener's connection.
        tls: Option<Box<crate::tls::TlsSession>>,
    },
    /// An in-process client joins this shard.
    AttachLocal {
        principal: Principal,
        events: crossbeam_channel::Sender<LocalEvent>,
        attached: crossbeam_channel::Sender<ConnRef>,
    },
    LocalCommand {
        conn: ConnRef,
        request_id: u32,
        command: Command,
    },
    DetachLocal {
        conn: ConnRef,
    },
    /// To the channel's owner: store (or, if ephemeral, just deliver) a message.
    Publish(Publish),
    /// To the channel's owner: shard `shard` has (or no longer has)
    /// subscribers of `channel`.
    Interest {
        channel: Arc<str>,
        shard: usize,
        on: bool,
    },
    /// To every shard: shard `shard` gained (or lost) a subscription to the
    /// channels matching `pattern`. With `ack`, the receiver answers
    /// `PatternReady` once it counts the subscription, so the subscriber is
    /// told "subscribed" only when every owner will deliver to it.
    PatternInterest {
        pattern: Arc<str>,
        shard: usize,
        on: bool,
        ack: Option<(ConnRef, u32)>,
    },
    /// To a pattern subscriber's shard: one owner counts the subscription
    /// (`ack`: the number the subscriber's shard gave it).
    PatternReady {
        to: ConnRef,
        ack: u32,
    },
    /// To the channel's owner: the next catch-up page of a subscription.
    Fetch {
        subscriber: SubRef,
        channel: Arc<str>,
        start: FetchStart,
        /// The page's messages stay within this many bytes (at least one).
        bytes_max: usize,
    },
    /// To the channel's owner: a history read.
    Read {
        from: ConnRef,
        request_id: u32,
        reply_as: ReplyAs,
        channel: Arc<str>,
        query: HistoryQuery,
        limit: u32,
        /// The reply's messages stay within this many bytes (at least one).
        bytes_max: usize,
        /// The requesting shard's number for the page's share of the
        /// connection's bound (0: none reserved), handed back in
        /// [`ShardMsg::PageDone`] after the reply.
        page: u64,
    },
    /// From an owner, after the reply to a `Read` that reserved `page`: the
    /// page is queued, its share of the connection's bound is free.
    PageDone {
        conn: ConnRef,
        page: u64,
    },
    /// From an owner: the reply to a request of one of this shard's connections.
    Replied {
        to: ConnRef,
        request_id: u32,
        reply: Reply,
    },
    /// From an owner: one commit's replies (acknowledgements) to this
    /// shard's connections, in order: one message per commit and partition
    /// rather than one per publish.
    Replies(Vec<(ConnRef, u32, Reply)>),
    /// From an owner: a catch-up page. `complete` means the page reaches the
    /// channel's head as it was when read; live deliveries continue after it.
    Page {
        subscriber: SubRef,
        channel: Arc<str>,
        result: Result<Vec<Message>, BrokerError>,
        head_seq: u64,
        complete: bool,
    },
    /// From an owner: new messages of a channel this shard has subscribers of.
    Deliver {
        channel: Arc<str>,
        messages: Arc<[Message]>,
    },
    /// From a thread outside the loops (an adapter's worker): an event for
    /// one connection's session.
    Notify {
        conn: ConnRef,
        event: SessionEvent,
    },
    /// A new encryption key ring (a key rotation at reload): every
    /// partition of the shard uses it from now on. The shard answers on
    /// `done` with its id (an error names the partition that refused it).
    Keys {
        keys: Option<Arc<starling_storage::KeyRing>>,
        done: std::sync::mpsc::Sender<(usize, Result<(), String>)>,
    },
    Shutdown,
}

/// A shard's inbox.
pub(crate) struct Inbox {
    pub queue: ArrayQueue<ShardMsg>,
    pub waker: mio::Waker,
    /// The shard is about to wait in (or waits in) its poll: another shard
    /// that queued a message must wake it. While it runs, a message queued
    /// is seen by its next look at the queue, and waking it would only make
    /// its next poll return at once for nothing (see [`Inbox::wake_if_asleep`]).
    asleep: AtomicBool,
    /// The shard's thread has ended: nothing reads the queue any more.
    ended: AtomicBool,
}

impl Inbox {
    pub fn new(waker: mio::Waker) -> Inbox {
        Inbox {
            queue: ArrayQueue::new(INBOX_CAPACITY),
            waker,
            asleep: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    /// Set when the shard's thread ends, however (a panic too).
    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Called by the shard before a poll that may wait: from now on other
    /// shards wake it. Returns false when a message came in meanwhile (then
    /// the poll must not wait).
    pub fn going_to_sleep(&self) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        // Pairs with the fence in `wake_if_asleep`: either the sender sees
        // `asleep`, or this sees its message.
        fence(Ordering::SeqCst);
        self.queue.is_empty()
    }

    /// Called by the shard when its poll returned.
    pub fn awake(&self) {
        self.asleep.store(false, Ordering::Relaxed);
    }

    /// Wakes the shard after messages were queued for it, unless it is
    /// running (it then finds them before it next waits).
    pub fn wake_if_asleep(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Sends from a thread that is not an event loop: waits (briefly sleeping)
    /// while the inbox is full, then wakes the shard.
    /// A shard whose thread has ended (a panic) takes nothing: the message
    /// is dropped rather than waited with for good.
    pub fn send_blocking(&self, mut message: ShardMsg) {
        loop {
            if self.ended.load(Ordering::SeqCst) {
                return;
            }
            match self.queue.push(message) {
                Ok(()) => break,
                Err(back) => {
                    message = back;
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        self.wake();
    }

    pub fn wake(&self) {
        if let Err(error) = self.waker.wake() {
            log::error!("cannot wake a shard: {error}");
        }
    }
}
