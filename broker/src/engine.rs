//! Starting and stopping the engine, listeners, and the in-process client.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use mio::net::TcpListener;
use mio::{Events, Poll, Token, Waker};
use starling_protocol::{kind, HistoryQuery, Message, SubscribeStart};
use starling_storage::journal::PartitionJournal;
use starling_storage::{
    DataDir, Journal, Partition, PartitionConfig, PartitionOptions, RetentionRule, StorageError,
    SyncBatch,
};
use thiserror::Error;

use crate::auth::{Authorizer, Principal};
use crate::command::{BrokerError, Command, Reply};
use crate::config::EngineConfig;
use crate::mailbox::{ConnRef, Inbox, ShardMsg};
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::session::{Protocol, SessionEvent};
use crate::shard::{OwnedPartition, PartitionTable, Shard};
use crate::tls::TlsAcceptor;

/// Events queued to one in-process client before it counts as a slow
/// consumer, unless `EngineConfig::local_events_max` says otherwise. An
/// embedded client reads in its own thread; 64 Ki events give it tens of
/// milliseconds of slack at full speed.
pub const LOCAL_EVENTS_MAX: usize = 64 * 1024;
/// Longest an in-process client waits for a reply.
const LOCAL_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The file in the data directory that fixes the partition count.
const LAYOUT_FILE: &str = "layout.toml";

/// Failures to start the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {address}: {source}; choose a free address or stop the process that uses it")]
    Listen {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot read or write {path}: {source}")]
    Layout { path: PathBuf, source: io::Error },
    #[error("{path} is damaged ({detail}); it must say `partitions = N`, the partition count the data was written with")]
    LayoutDamaged { path: PathBuf, detail: String },
    #[error("the engine has {shards} shards; at most 64 are supported")]
    TooManyShards { shards: usize },
    #[error("the new key ring was not taken everywhere: {detail}; fix the key file and send SIGHUP again")]
    KeyRotation { detail: String },
    #[error("cannot start an event loop: {0}")]
    Poll(io::Error),
    #[error("{shards} shard(s) could not sync their partitions or close their journal while stopping (the errors are logged above); everything acknowledged is durable in the shard journals and is replayed at the next start: fix the cause (free disk space, say), then start the server")]
    UncleanStop { shards: usize },
}

/// What [`set_idle_memory_hook`] installed.
static IDLE_MEMORY_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Installs a function every shard calls on its own thread after it has
/// freed the buffers of its busy turns (once per idle spell, see
/// docs/BENCHMARKS.md, session 5): the binary passes its allocator's
/// "return what this thread freed to the operating system" call, which the
/// broker cannot name. The allocator is one per process, so is the hook; the
/// first one installed stays. Returns whether this one was installed.
pub fn set_idle_memory_hook(hook: fn()) -> bool {
    IDLE_MEMORY_HOOK.set(hook).is_ok()
}

/// Runs the hook of [`set_idle_memory_hook`], if any.
pub(crate) fn run_idle_memory_hook() {
    if let Some(hook) = IDLE_MEMORY_HOOK.get() {
        hook();
    }
}

/// State every shard reads: configuration, routing, inboxes, counters.
pub(crate) struct EngineShared {
    pub config: EngineConfig,
    pub routing: Routing,
    pub authorizer: Arc<dyn Authorizer>,
    pub inboxes: Vec<Inbox>,
    pub metrics: Metrics,
    /// Per-user publish limiters (looked up once per connection).
    pub user_limiters: crate::limits::UserLimiters,
    /// Connections per address (the acceptor counts, shards uncount).
    pub address_limits: crate::limits::AddressLimits,
    /// Encryption at rest (`encryption_key_file`), shared by every partition;
    /// replaced by [`Engine::rotate_keys`].
    pub keys: std::sync::Mutex<Option<Arc<starling_storage::KeyRing>>>,
}

/// What [`Engine::rotate_keys`] changed: key ids only, never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    /// The key id batches were sealed with before (`None`: plain).
    pub old_key_id: Option<u16>,
    /// The key id batches are sealed with from now on (`None`: plain).
    pub new_key_id: Option<u16>,
    /// Every key id the new ring holds.
    pub key_ids: Vec<u16>,
    /// The new ring differs from the running one (another current key or
    /// more keys); an unchanged ring is not handed to the shards again.
    pub changed: bool,
}

/// A protocol served on an address.
pub struct Listener {
    pub address: SocketAddr,
    pub protocol: Arc<dyn Protocol>,
    /// `Some`: the listener speaks TLS only (see [`crate::tls`]).
    pub tls: Option<Arc<TlsAcceptor>>,
    /// When not empty, only connections from these networks are accepted
    /// (IPv4-mapped IPv6 peers count as IPv4); others are closed at once.
    pub allow_from: Vec<ipnet::IpNet>,
}

/// The engine's counters, owned (see [`Engine::metrics_handle`]).
#[derive(Clone)]
pub struct MetricsHandle {
    shared: Arc<EngineShared>,
}

impl std::ops::Deref for MetricsHandle {
    type Target = Metrics;

    fn deref(&self) -> &Metrics {
        &self.shared.metrics
    }
}

/// Sends events from other threads to sessions (see
/// [`crate::Session::on_event`]).
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<EngineShared>,
}

impl Notifier {
    /// Hands `event` to the session of `conn`. Dropped without a word if the
    /// connection has closed. Blocks briefly while the shard's inbox is full.
    pub fn notify(&self, conn: ConnRef, event: SessionEvent) {
        self.shared.inboxes[conn.shard].send_blocking(ShardMsg::Notify { conn, event });
    }

    /// Closes, on every shard, the connections whose principal matches,
    /// telling each client `reason` (a revoked session, a disabled user).
    pub fn close_connections(&self, matching: ConnectionMatch, reason: &str) {
        let reason: Arc<str> = Arc::from(reason);
        for inbox in &self.shared.inboxes {
            inbox.send_blocking(ShardMsg::CloseMatching {
                matching: matching.clone(),
                reason: reason.clone(),
            });
        }
    }
}

/// Which connections [`Notifier::close_connections`] closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionMatch {
    /// Every connection of this user.
    User(Arc<str>),
    /// Every connection signed in with this session (its id).
    Session(Arc<str>),
}

impl ConnectionMatch {
    /// Whether `principal` is matched.
    pub fn matches(&self, principal: &Principal) -> bool {
        match self {
            ConnectionMatch::User(user) => principal.user == *user,
            ConnectionMatch::Session(id) => principal.session.as_ref() == Some(id),
        }
    }
}

/// Connects in-process clients from threads outside the event loops (see
/// [`Engine::connector`]).
#[derive(Clone)]
pub struct Connector {
    shared: Arc<EngineShared>,
    next_shard: Arc<AtomicUsize>,
}

impl Connector {
    /// A client inside this process, acting as `principal`, as
    /// [`Engine::connect`] makes. Blocks until a shard attached it.
    pub fn connect(&self, principal: Principal) -> LocalClient {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shared.routing.shards;
        attach_local(&self.shared, shard, principal)
    }
}

/// Attaches an in-process client acting as `principal` to `shard`, or to
/// the next one that runs if that one's thread has ended (a panic).
fn attach_local(shared: &Arc<EngineShared>, shard: usize, principal: Principal) -> LocalClient {
    // A queue that grows as events wait and gives the memory back as they
    // are read: a preallocated one of `local_events_max` slots kept ~4.5 MB
    // resident per client from its attach. The shard bounds it: deliveries
    // only while fewer than `local_events_max` events wait (the slow-consumer
    // policy otherwise), and beyond that only replies (`LocalClient::request`
    // waits for each one before the next) and the closing event, so a client
    // behind on its deliveries still gets both.
    let (events_tx, events) = crossbeam_channel::unbounded();
    let shards = shared.inboxes.len();
    let conn = (0..shards)
        .map(|k| (shard + k) % shards)
        .find_map(|shard| {
            let (attached_tx, attached) = crossbeam_channel::bounded(1);
            shared.inboxes[shard].send_blocking(ShardMsg::AttachLocal {
                principal: principal.clone(),
                events: events_tx.clone(),
                attached: attached_tx,
            });
            // An ended shard drops the message, and with it `attached_tx`.
            attached.recv().ok()
        })
        .expect("no shard of the engine runs any more (each stopped after a panic)");
    LocalClient {
        shared: shared.clone(),
        conn,
        events,
        next_request_id: 1,
        deliveries: VecDeque::new(),
        closed: None,
    }
}

/// A running engine. Dropping it shuts it down.
pub struct Engine {
    shared: Arc<EngineShared>,
    /// Each shard's thread; it ends with whether its stop was clean.
    shards: Vec<JoinHandle<bool>>,
    acceptor: Option<(JoinHandle<()>, Arc<Waker>)>,
    local_addresses: Vec<(&'static str, SocketAddr)>,
    next_local_shard: AtomicUsize,
    // Held for the engine's lifetime: the exclusive lock on the data directory.
    _data_dir: Arc<DataDir>,
}

impl Engine {
    /// Opens the data directory (recovering every partition), starts one
    /// event loop per shard and the listeners. Fails, with nothing left
    /// running, if any partition cannot be recovered or any address bound.
    pub fn start(
        config: EngineConfig,
        authorizer: Arc<dyn Authorizer>,
        listeners: Vec<Listener>,
    ) -> Result<Engine, EngineError> {
        let shards = config.resolved_shards();
        if shards > 64 {
            return Err(EngineError::TooManyShards { shards });
        }
        let data_dir = Arc::new(DataDir::open(&config.data_dir)?);
        let keys = config.key_ring()?.map(Arc::new);
        if let Some(keys) = &keys {
            log::info!(
                "encryption at rest: key ids {:?} from {}; new batches {}",
                keys.key_ids(),
                config.encryption_key_file,
                match keys.current() {
                    Some(id) => format!("sealed with key id {id}"),
                    None => "written plain (encryption_key_id = 0)".to_string(),
                }
            );
        }
        let partitions = fixed_partition_count(data_dir.path(), config.partitions)?;
        let routing = Routing::new(partitions, shards);

        let mut bound = Vec::new();
        for listener in listeners {
            let std_listener = std::net::TcpListener::bind(listener.address).map_err(|source| {
                EngineError::Listen {
                    address: listener.address,
                    source,
                }
            })?;
            std_listener
                .set_nonblocking(true)
                .map_err(|source| EngineError::Listen {
                    address: listener.address,
                    source,
                })?;
            let local = std_listener
                .local_addr()
                .map_err(|source| EngineError::Listen {
                    address: listener.address,
                    source,
                })?;
            bound.push(BoundListener {
                listener: TcpListener::from_std(std_listener),
                address: local,
                protocol: listener.protocol,
                tls: listener.tls,
                allow_from: listener.allow_from,
            });
        }

        let mut polls = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..shards {
            let poll = Poll::new().map_err(EngineError::Poll)?;
            let waker = Waker::new(poll.registry(), Token(0)).map_err(EngineError::Poll)?;
            inboxes.push(Inbox::new(waker));
            polls.push(poll);
        }
        let address_limits = crate::limits::AddressLimits::new(&config);
        let shared = Arc::new(EngineShared {
            config,
            routing,
            authorizer,
            inboxes,
            metrics: Metrics::new(shards),
            user_limiters: crate::limits::UserLimiters::default(),
            address_limits,
            keys: std::sync::Mutex::new(keys),
        });

        // The shard journals of the last run: each partition's unsynced tail
        // and the entries to replay over it. Read before any shard starts,
        // because the shard count may have changed since.
        let mut journals = starling_storage::journal::recover_journals(data_dir.path())?;
        if journals.entry_bytes() > 0 {
            log::info!(
                "shard journals of run {}: {} bytes of entries to check against the partitions",
                journals.run,
                journals.entry_bytes()
            );
        }
        let run = journals.run.wrapping_add(1).max(1);
        let generation = journals.generation + 1;
        let stale_journals = std::mem::take(&mut journals.directories);

        // Each shard recovers its own partitions in its own thread, so a
        // restart reads the log with every core. Two rounds: every shard
        // recovers (replays and syncs its partitions), then, once all have,
        // each starts its new journal; a journal of the last run is erased
        // only when no partition needs it any more.
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let mut handles = Vec::new();
        let mut go_senders = Vec::new();
        for (id, poll) in polls.into_iter().enumerate() {
            let shared = shared.clone();
            let data_dir = data_dir.clone();
            let ready = ready_tx.clone();
            let (go_tx, go_rx) = crossbeam_channel::bounded::<bool>(1);
            go_senders.push(go_tx);
            let replay: HashMap<u32, PartitionJournal> = shared
                .routing
                .partitions_of_shard(id)
                .filter_map(|p| journals.partitions.remove(&p).map(|j| (p, j)))
                .collect();
            let handle = std::thread::Builder::new()
                .name(format!("starling-shard-{id}"))
                .spawn(move || {
                    // However the thread ends (a panic too), senders stop
                    // waiting for room in its inbox.
                    let _ended = EndsInbox(shared.clone(), id);
                    let opened = open_partitions(&shared, &data_dir, id, replay, run);
                    let partitions = match opened {
                        Ok(partitions) => {
                            let _ = ready.send(Ok(()));
                            partitions
                        }
                        Err(error) => {
                            // The engine does not start: nothing to stop.
                            let _ = ready.send(Err(error));
                            return true;
                        }
                    };
                    if go_rx.recv() != Ok(true) {
                        return true;
                    }
                    let ends: Vec<(u32, u64)> = partitions
                        .iter()
                        .map(|(id, p)| (*id, p.log.end_position()))
                        .collect();
                    let journal = Journal::create(
                        data_dir.path(),
                        id,
                        run,
                        generation,
                        shared.config.journal_file_bytes,
                        &ends,
                    );
                    match journal {
                        Ok(journal) => {
                            let _ = ready.send(Ok(()));
                            Shard::new(id, poll, shared, partitions, journal).run()
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            true
                        }
                    }
                })
                .map_err(EngineError::Poll)?;
            handles.push(handle);
        }
        drop(ready_tx);
        let collect = |round: usize| {
            let mut failure = None;
            for _ in 0..round {
                match ready_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => failure = failure.or(Some(error)),
                    Err(_) => break,
                }
            }
            failure
        };
        let mut failure = collect(shards);
        if failure.is_none() {
            // Every partition is durable up to its end: journals of shards
            // that no longer exist are not needed.
            for directory in &stale_journals {
                let index = directory
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<usize>().ok());
                if index.is_none_or(|index| index >= shards) {
                    if let Err(error) = std::fs::remove_dir_all(directory) {
                        log::warn!(
                            "cannot remove the old journal {}: {error}",
                            directory.display()
                        );
                    }
                }
            }
        }
        for go in &go_senders {
            let _ = go.send(failure.is_none());
        }
        if failure.is_none() {
            failure = collect(shards);
        }
        if let Some(error) = failure {
            for inbox in &shared.inboxes {
                inbox.send_blocking(ShardMsg::Shutdown);
            }
            for handle in handles {
                let _ = handle.join();
            }
            return Err(error.into());
        }

        let local_addresses = bound
            .iter()
            .map(|b| (b.protocol.name(), b.address))
            .collect();
        let acceptor = if bound.is_empty() {
            None
        } else {
            Some(start_acceptor(shared.clone(), bound)?)
        };
        Ok(Engine {
            shared,
            shards: handles,
            acceptor,
            local_addresses,
            next_local_shard: AtomicUsize::new(0),
            _data_dir: data_dir,
        })
    }

    /// The addresses the listeners are bound to (useful with port 0).
    pub fn local_addresses(&self) -> &[(&'static str, SocketAddr)] {
        &self.local_addresses
    }

    /// The address of the first listener of protocol `name`.
    pub fn local_address(&self, name: &str) -> Option<SocketAddr> {
        self.local_addresses
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// The engine's authorizer, for work done outside the event loops on a
    /// principal's behalf (the chat workers check the user's rights with it).
    pub fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.shared.authorizer.clone()
    }

    /// A handle that threads outside the event loops use to send events to
    /// connections' sessions.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            shared: self.shared.clone(),
        }
    }

    /// The engine's counters, for a thread that outlives this borrow.
    pub fn metrics_handle(&self) -> MetricsHandle {
        MetricsHandle {
            shared: self.shared.clone(),
        }
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The routing table (partition count and shard count in use).
    pub fn routing(&self) -> Routing {
        self.shared.routing
    }

    /// A shard whose thread ended while the engine runs: only a panic (a
    /// bug) ends one before `shutdown`. Its connections are gone and its
    /// channels cannot be served; the engine cannot carry on without it,
    /// so whoever runs it should shut it down and start again (everything
    /// acknowledged is in the log). The `starling` binary checks this and
    /// exits with an error.
    pub fn failed_shard(&self) -> Option<usize> {
        self.shards.iter().position(JoinHandle::is_finished)
    }

    /// A client inside this process, acting as `principal`. Clients are spread
    /// over the shards round-robin.
    pub fn connect(&self, principal: Principal) -> LocalClient {
        let shard =
            self.next_local_shard.fetch_add(1, Ordering::Relaxed) % self.shared.routing.shards;
        attach_local(&self.shared, shard, principal)
    }

    /// A handle that threads outside the event loops use to connect
    /// in-process clients later, as any principal (an adapter's timers, such
    /// as MQTT's delayed will messages, which are published as their user).
    pub fn connector(&self) -> Connector {
        Connector {
            shared: self.shared.clone(),
            next_shard: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Replaces the encryption key ring with the one `config` names
    /// (`encryption_key_file`, `encryption_key_id`) while running: every
    /// partition seals the batches and checkpoints it writes from now on
    /// with the new current key id. The new ring must hold every key of the
    /// running one (batches sealed with them stay readable); otherwise, or if
    /// the key file cannot be read, nothing changes. Returns once every
    /// shard uses the new ring.
    pub fn rotate_keys(&self, config: &EngineConfig) -> Result<KeyRotation, EngineError> {
        let keys = config.key_ring()?.map(Arc::new);
        let mut running = self.shared.keys.lock().expect("key ring lock");
        starling_storage::KeyRing::check_replaces(running.as_deref(), keys.as_deref())?;
        let rotation = KeyRotation {
            old_key_id: running
                .as_deref()
                .and_then(starling_storage::KeyRing::current),
            new_key_id: keys.as_deref().and_then(starling_storage::KeyRing::current),
            key_ids: keys
                .as_deref()
                .map(starling_storage::KeyRing::key_ids)
                .unwrap_or_default(),
            changed: true,
        };
        let running_key_ids = running
            .as_deref()
            .map(starling_storage::KeyRing::key_ids)
            .unwrap_or_default();
        // `check_replaces` made sure every running key is in the new ring
        // with the same bytes: the same ids and current key is the same ring.
        if running_key_ids == rotation.key_ids && rotation.old_key_id == rotation.new_key_id {
            return Ok(KeyRotation {
                changed: false,
                ..rotation
            });
        }
        let (done, answers) = std::sync::mpsc::channel();
        for inbox in &self.shared.inboxes {
            inbox.send_blocking(ShardMsg::Keys {
                keys: keys.clone(),
                done: done.clone(),
            });
        }
        drop(done);
        *running = keys;
        for _ in &self.shared.inboxes {
            let (shard, answer) = answers.recv().map_err(|_| EngineError::KeyRotation {
                detail: "a shard stopped before answering (the server is stopping)".into(),
            })?;
            answer.map_err(|detail| EngineError::KeyRotation {
                detail: format!("shard {shard}: {detail}"),
            })?;
        }
        Ok(rotation)
    }

    /// Stops accepting, lets every shard write and sync what it has, closes
    /// every connection and waits for the threads. An error says that some
    /// shard could not sync its partitions or close its journal (a full
    /// disk, say): what was acknowledged is durable in the journals all the
    /// same, and the next start replays them.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        let unclean = self.stop();
        if unclean == 0 {
            return Ok(());
        }
        Err(EngineError::UncleanStop { shards: unclean })
    }

    /// Stops the acceptor and every shard; returns how many shards could
    /// not stop cleanly.
    fn stop(&mut self) -> usize {
        if let Some((handle, waker)) = self.acceptor.take() {
            let _ = waker.wake();
            let _ = handle.join();
        }
        if self.shards.is_empty() {
            return 0;
        }
        for inbox in &self.shared.inboxes {
            // Dropped for a shard that ended already (a panic).
            inbox.send_blocking(ShardMsg::Shutdown);
        }
        self.shards
            .drain(..)
            .map(|handle| handle.join().unwrap_or(false))
            .filter(|clean| !clean)
            .count()
    }
}

/// Marks shard `.1`'s inbox ended when dropped (`Inbox::end`).
struct EndsInbox(Arc<EngineShared>, usize);

impl Drop for EndsInbox {
    fn drop(&mut self) {
        self.0.inboxes[self.1].end();
        if std::thread::panicking() {
            log::error!(
                "shard {} stopped after a panic (a bug; the panic is printed above): its \
                 connections are closed and its channels cannot be served until the engine is \
                 started again — everything acknowledged is in the log; please report the panic",
                self.1
            );
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // An engine dropped without `shutdown` has no one to tell: its
        // shards log what failed.
        let _ = self.stop();
    }
}

/// Reads the partition count stored in the data directory, or stores
/// `configured` in a new one. Routing depends on it, so it never changes.
fn fixed_partition_count(dir: &Path, configured: u32) -> Result<u32, EngineError> {
    let path = dir.join(LAYOUT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let value = text
                .lines()
                .filter_map(|line| line.split_once('='))
                .find(|(key, _)| key.trim() == "partitions")
                .map(|(_, value)| value.trim().parse::<u32>());
            match value {
                Some(Ok(n)) if n > 0 => {
                    if n != configured {
                        log::info!(
                            "data directory {} was created with {n} partitions; using {n} (configured: {configured})",
                            dir.display()
                        );
                    }
                    Ok(n)
                }
                Some(Ok(_)) | None => Err(EngineError::LayoutDamaged {
                    path,
                    detail: "no positive partitions value".into(),
                }),
                Some(Err(error)) => Err(EngineError::LayoutDamaged {
                    path,
                    detail: error.to_string(),
                }),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let text = format!(
                "# Written when this data directory was created. Channels are routed by\n\
                 # this count, so it must never change while the data exists.\n\
                 partitions = {configured}\n"
            );
            let temporary = dir.join(format!("{LAYOUT_FILE}.new"));
            let layout_error = |source| EngineError::Layout {
                path: path.clone(),
                source,
            };
            fs::write(&temporary, text).map_err(layout_error)?;
            fs::File::open(&temporary)
                .and_then(|f| f.sync_all())
                .map_err(layout_error)?;
            fs::rename(&temporary, &path).map_err(layout_error)?;
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(layout_error)?;
            Ok(configured)
        }
        Err(source) => Err(EngineError::Layout { path, source }),
    }
}

fn open_partitions(
    shared: &EngineShared,
    data_dir: &DataDir,
    shard: usize,
    mut replay: HashMap<u32, PartitionJournal>,
    run: u32,
) -> Result<PartitionTable, StorageError> {
    let config = &shared.config;
    let partition_config = PartitionConfig {
        segment_bytes_max: config.segment_bytes_max,
        record_body_bytes_max: config.body_bytes_max,
        retention: config
            .retention
            .iter()
            .map(|r| RetentionRule {
                prefix: r.prefix.clone(),
                max_age_ms: r.max_age_ms,
                max_bytes: r.max_bytes,
            })
            .collect(),
        idempotency_window_ms: config.dedupe_window_ms,
        idempotency_entries_max: config.dedupe_entries_max,
    };
    let mut partitions = PartitionTable::default();
    for id in shared.routing.partitions_of_shard(shard) {
        let started = Instant::now();
        let journal = replay.remove(&id).unwrap_or_default();
        let options = PartitionOptions {
            run,
            unsynced_tail: journal.tail,
            keys: shared.keys.lock().expect("key ring lock").clone(),
            ..PartitionOptions::default()
        };
        let (mut log, report) =
            Partition::open_with(data_dir.path(), id, partition_config.clone(), options)?;
        let end_before = log.end_position();
        let mut replayed = 0;
        for entry in &journal.entries {
            replayed += log.replay(entry)?;
        }
        log::info!(
            "partition {id}: opened {} channels in {} segments in {} ms ({}; scanned {} bytes, {} records){}{}",
            report.channels,
            report.segments,
            started.elapsed().as_millis(),
            match report.checkpoint_position {
                Some(position) => format!("from the checkpoint at stream position {position}"),
                None => "full scan".to_string(),
            },
            report.scanned_bytes,
            report.records,
            match &report.truncated_at {
                Some((file, at)) => format!(
                    "; truncated a torn tail of {} bytes at byte {at} of {}",
                    report.truncated_bytes,
                    file.display()
                ),
                None => String::new(),
            },
            if replayed > 0 {
                format!(
                    "; {replayed} records ({} bytes) written again from the shard journal",
                    log.end_position() - end_before
                )
            } else {
                String::new()
            }
        );
        partitions.insert(id, OwnedPartition::new(log));
    }
    // The new run's journal starts empty: everything recovered or replayed
    // must be durable in the partitions first.
    let mut logs: Vec<&mut Partition> = partitions.values_mut().map(|p| &mut p.log).collect();
    for result in SyncBatch::new().sync_all(&mut logs) {
        result?;
    }
    Ok(partitions)
}

/// Token of the acceptor's shutdown waker; listener `i` uses `Token(i + 1)`.
const ACCEPTOR_WAKER: Token = Token(0);

/// A listening socket, what it serves, and how.
struct BoundListener {
    listener: TcpListener,
    address: SocketAddr,
    protocol: Arc<dyn Protocol>,
    tls: Option<Arc<TlsAcceptor>>,
    allow_from: Vec<ipnet::IpNet>,
}

fn start_acceptor(
    shared: Arc<EngineShared>,
    mut listeners: Vec<BoundListener>,
) -> Result<(JoinHandle<()>, Arc<Waker>), EngineError> {
    let mut poll = Poll::new().map_err(EngineError::Poll)?;
    let waker = Arc::new(Waker::new(poll.registry(), ACCEPTOR_WAKER).map_err(EngineError::Poll)?);
    for (index, bound) in listeners.iter_mut().enumerate() {
        poll.registry()
            .register(
                &mut bound.listener,
                Token(index + 1),
                mio::Interest::READABLE,
            )
            .map_err(EngineError::Poll)?;
    }
    let handle = std::thread::Builder::new()
        .name("starling-acceptor".into())
        .spawn(move || {
            let mut events = Events::with_capacity(64);
            let mut next_shard = 0usize;
            loop {
                if let Err(error) = poll.poll(&mut events, None) {
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    log::error!("acceptor: poll failed: {error}");
                    return;
                }
                for event in events.iter() {
                    if event.token() == ACCEPTOR_WAKER {
                        return;
                    }
                    let bound = &listeners[event.token().0 - 1];
                    loop {
                        match bound.listener.accept() {
                            Ok((stream, peer)) => {
                                if !bound.allow_from.is_empty()
                                    && !crate::security::roles::address_in(
                                        &bound.allow_from,
                                        peer.ip(),
                                    )
                                {
                                    shared.metrics.denied.add(1);
                                    log::debug!(
                                        "acceptor: {peer} is not in the allow-list of {}",
                                        bound.address
                                    );
                                    continue;
                                }
                                if let Err(why) = shared.address_limits.admit(peer.ip()) {
                                    shared.metrics.denied.add(1);
                                    log::warn!("acceptor: refused a connection: {why}");
                                    continue;
                                }
                                let _ = stream.set_nodelay(true);
                                let tls = match bound.tls.as_ref().map(|tls| tls.accept()) {
                                    None => None,
                                    Some(Ok(session)) => Some(Box::new(session)),
                                    Some(Err(error)) => {
                                        log::warn!("acceptor: no TLS session for {peer}: {error}");
                                        shared.address_limits.closed(peer.ip());
                                        continue;
                                    }
                                };
                                let shard = next_shard % shared.routing.shards;
                                next_shard = next_shard.wrapping_add(1);
                                shared.inboxes[shard].send_blocking(ShardMsg::Accept {
                                    stream,
                                    peer,
                                    protocol: bound.protocol.clone(),
                                    tls,
                                });
                            }
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                            Err(error) => {
                                // Out of file descriptors and the like: keep
                                // serving the connections that exist.
                                log::warn!("acceptor: accept failed: {error}");
                                std::thread::sleep(Duration::from_millis(10));
                                break;
                            }
                        }
                    }
                }
            }
        })
        .map_err(EngineError::Poll)?;
    Ok((handle, waker))
}

/// What a shard sends to an in-process client.
#[derive(Debug)]
pub enum LocalEvent {
    Reply {
        request_id: u32,
        reply: Reply,
    },
    Deliver {
        channel: Arc<str>,
        messages: Arc<[Message]>,
    },
    Closed {
        reason: String,
    },
}

/// The acknowledgement of a stored publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub durable: bool,
    pub duplicate: bool,
}

/// A client inside the embedding program: the same commands as a network
/// client, without a socket. Blocking; use one per thread.
pub struct LocalClient {
    shared: Arc<EngineShared>,
    conn: ConnRef,
    events: Receiver<LocalEvent>,
    next_request_id: u32,
    deliveries: VecDeque<(Arc<str>, Arc<[Message]>)>,
    closed: Option<String>,
}

impl LocalClient {
    /// Sends a command and waits for its reply; deliveries that arrive
    /// meanwhile are kept for [`LocalClient::next_delivery`].
    pub fn request(&mut self, command: Command) -> Result<Reply, BrokerError> {
        if let Some(reason) = &self.closed {
            return Err(BrokerError::InvalidArgument(format!(
                "the client is closed: {reason}"
            )));
        }
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        self.shared.inboxes[self.conn.shard].send_blocking(ShardMsg::LocalCommand {
            conn: self.conn,
            request_id,
            command,
        });
        let deadline = Instant::now() + LOCAL_REPLY_TIMEOUT;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(LocalEvent::Reply {
                    request_id: id,
                    reply,
                }) if id == request_id => {
                    return match reply {
                        Reply::Error(error) => Err(error),
                        reply => Ok(reply),
                    };
                }
                Ok(LocalEvent::Reply { .. }) => {}
                Ok(LocalEvent::Deliver { channel, messages }) => {
                    self.deliveries.push_back((channel, messages));
                }
                Ok(LocalEvent::Closed { reason }) => {
                    self.closed = Some(reason.clone());
                    return Err(BrokerError::InvalidArgument(format!(
                        "the client was closed: {reason}"
                    )));
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(BrokerError::ShuttingDown);
                }
            }
        }
    }

    /// Stores a message and waits until it is acknowledged.
    pub fn publish(
        &mut self,
        channel: &str,
        body: impl Into<Bytes>,
    ) -> Result<Published, BrokerError> {
        self.publish_command(Command::Publish {
            channel: channel.into(),
            ephemeral: false,
            kind: kind::MESSAGE,
            client_message_id: Bytes::new(),
            relation: 0,
            headers: Bytes::new(),
            body: body.into(),
        })
    }

    /// Sends any publish command (ephemeral, idempotent, with a relation).
    pub fn publish_command(&mut self, command: Command) -> Result<Published, BrokerError> {
        match self.request(command)? {
            Reply::Published {
                seq,
                offset,
                timestamp_ms,
                durable,
                duplicate,
            } => Ok(Published {
                seq,
                offset,
                timestamp_ms,
                durable,
                duplicate,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes; returns the channel's head seq at the seam.
    pub fn subscribe(&mut self, channel: &str, start: SubscribeStart) -> Result<u64, BrokerError> {
        match self.request(Command::Subscribe {
            channel: channel.to_string(),
            start,
        })? {
            Reply::Subscribed { head_seq } => Ok(head_seq),
            other => Err(unexpected(other)),
        }
    }

    pub fn unsubscribe(&mut self, channel: &str) -> Result<(), BrokerError> {
        self.request(Command::Unsubscribe {
            channel: channel.to_string(),
        })
        .map(|_| ())
    }

    /// A page of history: `(head_seq, messages)`.
    pub fn history(
        &mut self,
        channel: &str,
        query: HistoryQuery,
        limit: u32,
    ) -> Result<(u64, Vec<Message>), BrokerError> {
        match self.request(Command::History {
            channel: channel.to_string(),
            query,
            limit,
        })? {
            Reply::History {
                head_seq, messages, ..
            } => Ok((head_seq, messages)),
            other => Err(unexpected(other)),
        }
    }

    pub fn cursor_set(
        &mut self,
        consumer: &str,
        channel: &str,
        seq: u64,
    ) -> Result<(), BrokerError> {
        self.request(Command::CursorSet {
            consumer: consumer.to_string(),
            channel: channel.to_string(),
            seq,
        })
        .map(|_| ())
    }

    pub fn cursor_get(&mut self, consumer: &str, channel: &str) -> Result<u64, BrokerError> {
        match self.request(Command::CursorGet {
            consumer: consumer.to_string(),
            channel: channel.to_string(),
        })? {
            Reply::Cursor { seq } => Ok(seq),
            other => Err(unexpected(other)),
        }
    }

    /// The next delivery, waiting at most `timeout`.
    pub fn next_delivery(&mut self, timeout: Duration) -> Option<(Arc<str>, Arc<[Message]>)> {
        if let Some(delivery) = self.deliveries.pop_front() {
            return Some(delivery);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(LocalEvent::Deliver { channel, messages }) => return Some((channel, messages)),
                Ok(LocalEvent::Reply { .. }) => {}
                Ok(LocalEvent::Closed { reason }) => {
                    self.closed = Some(reason);
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Why the server closed this client, if it did.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }
}

/// How long a dropped in-process client waits for room in its shard's inbox
/// to say it is gone. A running shard drains its inbox every turn; a stopped
/// one never will, and then the detach does not matter.
const DETACH_WAIT: Duration = Duration::from_millis(200);

impl Drop for LocalClient {
    fn drop(&mut self) {
        let inbox = &self.shared.inboxes[self.conn.shard];
        let deadline = Instant::now() + DETACH_WAIT;
        let mut message = ShardMsg::DetachLocal { conn: self.conn };
        while let Err(back) = inbox.queue.push(message) {
            if Instant::now() > deadline {
                log::warn!("an in-process client could not detach: its shard's inbox stayed full");
                return;
            }
            message = back;
            std::thread::sleep(Duration::from_micros(50));
        }
        inbox.wake();
    }
}

fn unexpected(reply: Reply) -> BrokerError {
    BrokerError::InvalidArgument(format!("unexpected reply from the engine: {reply:?}"))
}
