//! The chat layer behind the WebSocket JSON protocol and the HTTP API: chat
//! semantics (channels with members, edits, reactions, threads, read markers,
//! presence) expressed as ordinary log records, so every protocol sees the
//! same conversation.
//!
//! ```text
//!  session (core loop) ──fast requests──▶ broker commands (publish, subscribe, history, …)
//!        │  └──slow requests (several reads, channel changes)──▶ ChatService worker
//!        │                                                          │ blocking LocalClient
//!        ◀────────────── Notifier: Done { outcome } ─────────────────┘
//! ```
//!
//! Requests that are one broker command (publish, react, typing, subscribe,
//! history, read) stay on the connection's core. Requests that need several
//! reads or change channel state run on a small pool of worker threads, each
//! with an in-process client acting as the server's system principal; a
//! channel's changes always go to the same worker, so they are serialised.
//! Records a user authors (edits, deletes, presence) are handed back to the
//! session and published under the user's own principal.
//!
//! Channel state is cached in memory ([`ChatService::meta`]): folded from the
//! log on first use and updated by the worker that changes it.

pub mod connection;
pub mod json;
pub mod model;
mod worker;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use starling_broker::{Action, Authorizer, ConnRef, Engine, Notifier, Principal};

pub use connection::{ChatConnection, Push, Response};
pub use json::{ChatError, Request};
pub use model::ChannelMeta;

use worker::{Job, Work};

/// The user name of the chat layer's system principal (records it appends to
/// reserved channels carry it as sender).
pub const SYSTEM_USER: &str = "$server";
/// Worker threads. Slow requests are rare next to messages; two keep one
/// blocked read from holding up the rest.
pub const WORKERS: usize = 2;
/// Jobs queued per worker before new slow requests are refused as
/// temporarily unavailable (a burst of sign-ins fits easily).
pub const WORKER_QUEUE_MAX: usize = 4096;
/// Channel states kept in memory. When the cache is full it is emptied and
/// refilled from the log on use: a simple bound that keeps a deployment with
/// millions of direct channels from growing without limit.
pub const META_CACHE_MAX: usize = 100_000;
/// Seconds between the server's keep-alive pings.
pub const HEARTBEAT_S: u64 = 30;

/// Shared by every chat connection of the process.
pub struct ChatService {
    cache: RwLock<HashMap<String, Arc<ChannelMeta>>>,
    workers: Vec<Sender<Job>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    notifier: Notifier,
    /// Checks the user's own rights for what the workers read and write as
    /// the server on the user's behalf.
    authorizer: Arc<dyn Authorizer>,
    /// Open chat connections per user, for presence.
    online: Mutex<HashMap<String, usize>>,
    /// Presence changes not recorded yet, newest per user, and whether a
    /// worker job to record them is queued: a sign-in storm of thousands of
    /// users takes one job, not one per user.
    presence_pending: Mutex<(HashMap<String, model::Presence>, bool)>,
    /// Chat subscriptions by channel: the connections and their users, so a
    /// change that stops admitting a user (a member removed, a channel
    /// created private under a name someone had subscribed to) ends that
    /// user's subscriptions at once ([`Revoked`]).
    followers: Mutex<HashMap<String, Vec<Follower>>>,
    pub server_name: String,
}

/// A connection subscribed to a channel, and its user.
type Follower = (ConnRef, Arc<str>);

/// Sent to a connection whose user the channel no longer admits: it ends
/// its subscription and tells the client.
pub(crate) struct Revoked {
    pub channel: String,
}

impl ChatService {
    /// Starts the workers on a running engine.
    pub fn start(engine: &Engine, server_name: &str) -> Arc<ChatService> {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..WORKERS {
            let (sender, receiver) = crossbeam_channel::bounded(WORKER_QUEUE_MAX);
            senders.push(sender);
            receivers.push(receiver);
        }
        let service = Arc::new(ChatService {
            cache: RwLock::new(HashMap::new()),
            workers: senders,
            handles: Mutex::new(Vec::new()),
            notifier: engine.notifier(),
            authorizer: engine.authorizer(),
            online: Mutex::new(HashMap::new()),
            presence_pending: Mutex::new((HashMap::new(), false)),
            followers: Mutex::new(HashMap::new()),
            server_name: server_name.to_string(),
        });
        let mut handles = Vec::new();
        for (index, receiver) in receivers.into_iter().enumerate() {
            let client = engine.connect(Principal::system(SYSTEM_USER));
            // The worker holds only a weak reference, so dropping the last
            // protocol that uses the service stops the workers.
            let weak = Arc::downgrade(&service);
            let handle = std::thread::Builder::new()
                .name(format!("starling-chat-{index}"))
                .spawn(move || worker::run(weak, client, receiver))
                .expect("the chat worker thread starts");
            handles.push(handle);
        }
        *service.handles.lock() = handles;
        service
    }

    /// The cached state of `channel`, if it is cached.
    pub fn meta(&self, channel: &str) -> Option<Arc<ChannelMeta>> {
        self.cache.read().get(channel).cloned()
    }

    /// Caches `meta`, unless a newer state of the channel is cached (a
    /// worker that only read the channel may have read it before another
    /// changed it): the newer one is kept and returned.
    fn cache_meta(&self, channel: &str, meta: ChannelMeta) -> Arc<ChannelMeta> {
        let mut cache = self.cache.write();
        if let Some(cached) = cache.get(channel).filter(|c| c.version > meta.version) {
            return cached.clone();
        }
        let meta = Arc::new(meta);
        if cache.len() >= META_CACHE_MAX {
            cache.clear();
        }
        cache.insert(channel.to_string(), meta.clone());
        meta
    }

    /// Registers `conn`'s subscription to `channel`. A connection registers
    /// *before* it checks that the channel admits its user, and a worker
    /// changes the cached state *before* it looks for followers to revoke:
    /// so either the check sees the change or the worker sees the follower.
    pub(crate) fn follow(&self, channel: &str, conn: ConnRef, user: &Arc<str>) {
        let mut followers = self.followers.lock();
        let list = followers.entry(channel.to_string()).or_default();
        if !list.iter().any(|(c, _)| *c == conn) {
            list.push((conn, user.clone()));
        }
    }

    /// The reverse of [`ChatService::follow`].
    pub(crate) fn unfollow(&self, channel: &str, conn: ConnRef) {
        let mut followers = self.followers.lock();
        if let Some(list) = followers.get_mut(channel) {
            list.retain(|(c, _)| *c != conn);
            if list.is_empty() {
                followers.remove(channel);
            }
        }
    }

    /// Tells every follower of `channel` whose user `meta` does not admit
    /// to end its subscription. Called after `meta` is cached.
    fn revoke_unadmitted(&self, channel: &str, meta: &ChannelMeta) {
        let revoked: Vec<ConnRef> = {
            let mut followers = self.followers.lock();
            let Some(list) = followers.get_mut(channel) else {
                return;
            };
            let mut revoked = Vec::new();
            list.retain(|(conn, user)| {
                let admitted = meta.admits(user);
                if !admitted {
                    revoked.push(*conn);
                }
                admitted
            });
            if list.is_empty() {
                followers.remove(channel);
            }
            revoked
        };
        for conn in revoked {
            self.notifier.notify(
                conn,
                Box::new(Revoked {
                    channel: channel.to_string(),
                }),
            );
        }
    }

    /// Whether `principal` (`None`: the server itself) may do `action` on
    /// `channel`, as the broker would check it.
    fn may(
        &self,
        principal: Option<&Principal>,
        action: Action,
        channel: &str,
    ) -> Result<(), json::ChatError> {
        match principal {
            None => Ok(()),
            Some(principal) => self
                .authorizer
                .authorize(principal, action, channel)
                .map_err(|denied| json::ChatError::denied(denied.0)),
        }
    }

    /// Audits a request the chat layer refused on its own account.
    fn refused(&self, principal: Option<&Principal>, target: &str, detail: &str) {
        if let Some(principal) = principal {
            self.authorizer.refused(principal, target, detail);
        }
    }

    /// Queues slow work. Work on one channel always goes to the same worker.
    fn submit(&self, job: Job) -> Result<(), json::ChatError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        job.work.route_key().hash(&mut hasher);
        let index = (hasher.finish() % self.workers.len() as u64) as usize;
        match self.workers[index].try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(json::ChatError::unavailable(
                "the server is busy with channel changes; retry in a moment",
            )),
            Err(TrySendError::Disconnected(_)) => Err(json::ChatError::unavailable(
                "the server is shutting down; reconnect later",
            )),
        }
    }

    fn notify(&self, conn: ConnRef, done: worker::Done) {
        self.notifier.notify(conn, Box::new(done));
    }

    /// Counts a signed-in connection of `user`; the first one makes the user
    /// online.
    pub(crate) fn connection_opened(&self, user: &str) {
        let first = {
            let mut online = self.online.lock();
            let count = online.entry(user.to_string()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.presence_changed(user, model::Presence::Online);
        }
    }

    /// The reverse of [`ChatService::connection_opened`]; the last one makes
    /// the user offline.
    pub(crate) fn connection_closed(&self, user: &str) {
        let last = {
            let mut online = self.online.lock();
            match online.get_mut(user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    online.remove(user);
                    true
                }
                None => false,
            }
        };
        if last {
            self.presence_changed(user, model::Presence::Offline);
        }
    }

    pub(crate) fn presence_changed(&self, user: &str, status: model::Presence) {
        let mut pending = self.presence_pending.lock();
        pending.0.insert(user.to_string(), status);
        if !pending.1 {
            self.queue_presence_job(&mut pending);
        }
    }

    /// A presence job recorded its batch: changes that came meanwhile get a
    /// job of their own, queued behind the others. False when that job
    /// could not be queued: the caller records them itself.
    fn presence_recorded(&self) -> bool {
        let mut pending = self.presence_pending.lock();
        pending.1 = false;
        if pending.0.is_empty() {
            return true;
        }
        self.queue_presence_job(&mut pending);
        if pending.1 {
            true
        } else {
            // `take_presence_changes` goes on with them.
            pending.1 = true;
            false
        }
    }

    /// Queues the job that records the pending presence changes, and notes
    /// that one is queued.
    fn queue_presence_job(&self, pending: &mut (HashMap<String, model::Presence>, bool)) {
        let job = Job {
            conn: None,
            id: 0,
            user: Arc::from(SYSTEM_USER),
            principal: None,
            work: Work::Presence,
        };
        match self.submit(job) {
            Ok(()) => pending.1 = true,
            Err(error) => log::warn!(
                "chat: {} presence changes wait: {}",
                pending.0.len(),
                error.message
            ),
        }
    }

    /// The presence changes to record now, or `None` (and no job queued any
    /// more) when there are none.
    fn take_presence_changes(&self) -> Option<HashMap<String, model::Presence>> {
        let mut pending = self.presence_pending.lock();
        if pending.0.is_empty() {
            pending.1 = false;
            None
        } else {
            Some(std::mem::take(&mut pending.0))
        }
    }
}

impl Drop for ChatService {
    fn drop(&mut self) {
        // Closing the queues ends the workers; they are not joined here
        // because the last reference may be dropped on a worker itself.
        self.workers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_broker::{EngineConfig, LoopbackAuthorizer};

    /// A worker that only read a channel (for a channel list) may cache
    /// what it read after the channel's own worker cached a change: the
    /// newer state stays (a removed member stayed admitted before).
    #[test]
    fn an_older_state_does_not_replace_a_newer_one_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            shards: 1,
            partitions: 1,
            data_dir: dir.path().to_path_buf(),
            ..EngineConfig::default()
        };
        let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
        let service = ChatService::start(&engine, "test");
        let state = |version: u64, members: &[&str]| ChannelMeta {
            exists: true,
            visibility: model::Visibility::Private,
            members: members.iter().map(|m| m.to_string()).collect(),
            version,
            ..ChannelMeta::default()
        };
        let newer = state(5, &["alice"]);
        service.cache_meta("hr", newer.clone());
        assert_eq!(
            *service.cache_meta("hr", state(4, &["alice", "bob"])),
            newer
        );
        assert_eq!(*service.meta("hr").unwrap(), newer);
        assert_eq!(service.cache_meta("hr", state(6, &[])).version, 6);
        drop(service);
        engine.shutdown().unwrap();
    }
}
