//! What happens to a session after its connection ends: session expiry
//! (v5's Session Expiry Interval; v3.1.1's clean session 0 keeps a session
//! without end) and delayed will messages (v5's Will Delay Interval).
//!
//! A persistent session's last record when its connection ends is `left`,
//! with the time and the expiry interval then in force, so whoever reads the
//! session later (a reconnect, also after a restart) judges from the log
//! whether it has expired; nothing needs writing at the moment of expiry.
//! A thread of its own ([`SessionKeeper`]) does what cannot wait for a
//! reconnect: it publishes due wills (as their user) and frees the
//! in-memory state of expired sessions. Both are in memory only: after a
//! restart, a pending delayed will is not published.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use starling_broker::{Connector, Engine, Principal};

use crate::background::Background;

use super::*;

/// Sessions and delayed wills the keeper waits for, each at most. Past this,
/// a will is published at once rather than delayed, and an expiring session
/// is judged only when read again (its parked state is bounded on its own,
/// `PARKED_SESSIONS_MAX`).
pub const SCHEDULED_MAX: usize = 100_000;
/// How often the keeper looks for what is due: the precision of will
/// delays and of freeing expired sessions' memory.
const KEEPER_TICK: Duration = Duration::from_millis(100);

/// Things due at a time, one per client id.
struct Schedule<T> {
    by_due: BTreeSet<(Instant, String)>,
    items: HashMap<String, (Instant, T)>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            by_due: BTreeSet::new(),
            items: HashMap::new(),
        }
    }
}

impl<T> Schedule<T> {
    /// Schedules `item` for `client_id` at `due`; gives it back when full.
    fn insert(&mut self, client_id: &str, due: Instant, item: T) -> Result<(), T> {
        self.cancel(client_id);
        if self.items.len() >= SCHEDULED_MAX {
            return Err(item);
        }
        self.by_due.insert((due, client_id.to_string()));
        self.items.insert(client_id.to_string(), (due, item));
        Ok(())
    }

    fn cancel(&mut self, client_id: &str) -> Option<T> {
        let (due, item) = self.items.remove(client_id)?;
        self.by_due.remove(&(due, client_id.to_string()));
        Some(item)
    }

    /// Takes what is due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<(String, T)> {
        let mut due = Vec::new();
        while let Some((at, client_id)) = self.by_due.first().cloned() {
            if at > now {
                break;
            }
            self.by_due.pop_first();
            if let Some((_, item)) = self.items.remove(&client_id) {
                due.push((client_id, item));
            }
        }
        due
    }
}

/// A will waiting for its delay (or its session's end).
pub(super) struct DelayedWill {
    will: Will,
    /// Whose connection it was: the will is published as this user.
    principal: Principal,
}

/// What the keeper waits for, shared by the sessions of the listener.
#[derive(Default)]
pub(super) struct Timers {
    wills: Schedule<DelayedWill>,
    expiries: Schedule<()>,
}

pub(super) type SharedTimers = Arc<parking_lot::Mutex<Timers>>;

/// The broker command that publishes `will` (as whoever submits it).
pub(super) fn will_command(will: Will) -> Command {
    let marks = Marks {
        origin: None,
        retained: will.retain,
    };
    Command::Publish {
        channel: will.topic,
        ephemeral: false,
        kind: kind::MESSAGE,
        client_message_id: Bytes::new(),
        relation: 0,
        headers: headers_of(&will.properties, marks, wall_clock_ms()),
        body: will.payload,
    }
}

/// A session's expiry interval as the session's end: `None` for never.
pub(super) fn session_end(expiry_s: u32) -> Option<Duration> {
    (expiry_s != u32::MAX).then(|| Duration::from_secs(u64::from(expiry_s)))
}

impl MqttSession {
    /// A client id connects: its delayed will is not sent if it resumes its
    /// session, and is sent now if it starts a new one (the old session
    /// ended); its session no longer expires.
    pub(super) fn reconnected(&self, client_id: &str, clean_start: bool, now: Instant) {
        let mut timers = self.timers.lock();
        timers.expiries.cancel(client_id);
        if let Some(will) = timers.wills.cancel(client_id) {
            if clean_start {
                // Just taken out, so there is room again.
                let _ = timers.wills.insert(client_id, now, will);
            }
        }
    }

    /// The connection ends. If a newer connection took the client id over,
    /// it gets this one's in-flight state and delayed will (the session
    /// goes on). Otherwise a persistent session records that it left, and
    /// is parked until it expires, or ends now (expiry 0); and the will
    /// goes out now, or after its delay or at the session's end, whichever
    /// is first. Decided under the clients lock, so a CONNECT sees either
    /// this connection (and waits for its handoff) or what it left.
    pub(super) fn leave(&mut self, context: &mut SessionContext<'_>) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        // Its shares go to the other members of their groups first (with
        // what was not acknowledged).
        let shares: Vec<String> = state
            .extras
            .as_ref()
            .map(|extras| extras.shares.keys().cloned().collect())
            .unwrap_or_default();
        for filter in shares {
            state.leave_share(&self.groups, &filter, context);
        }
        let conn = context.conn();
        let will = state.will.take();
        let principal = context.principal().cloned();
        let clients = self.clients.clone();
        let mut clients = clients.lock();
        let owner = clients.get(&state.client_id).copied();
        let taker = owner.filter(|owner| Some(*owner) != conn);
        let end = session_end(state.session_expiry_s);
        let will = will.map(|will| {
            let delay = Duration::from_secs(u64::from(
                will.properties.will_delay_interval_s.unwrap_or(0),
            ));
            (will, end.map_or(delay, |end| delay.min(end)))
        });
        if let Some(taker) = taker {
            let parked = state.persistent.then(|| state.take_parked()).flatten();
            let mut delayed = None;
            match (will, principal) {
                (Some((will, delay)), Some(principal)) if !delay.is_zero() => {
                    delayed = Some(DelayedWill { will, principal });
                }
                (Some((will, _)), _) => context.submit(0, will_command(will)),
                (None, _) => {}
            }
            let handoff = Handoff {
                parked,
                will: delayed,
            };
            context.notify(taker, Box::new(handoff));
            return;
        }
        if owner.is_some() {
            clients.remove(&state.client_id);
        }
        let client_id = state.client_id.clone();
        if state.persistent {
            if end.is_some_and(|end| end.is_zero()) {
                // The session ends with its connection.
                state.record(serde_json::json!({"type": "end"}), context);
                self.forget_parked(&client_id);
            } else {
                let left = serde_json::json!({
                    "type": "left",
                    "at_ms": wall_clock_ms(),
                    "expiry_s": state.session_expiry_s,
                });
                state.record(left, context);
                if let Some(parked) = state.take_parked() {
                    self.park(&client_id, parked);
                }
                if let Some(end) = end {
                    self.schedule_expiry(&client_id, end, context.now());
                }
            }
        }
        drop(clients);
        if let Some((will, delay)) = will {
            match principal {
                Some(principal) if !delay.is_zero() => {
                    let delayed = DelayedWill { will, principal };
                    self.schedule_will(&client_id, delay, delayed, context);
                }
                _ => context.submit(0, will_command(will)),
            }
        }
    }

    /// Publishes `delayed` after `delay` (from the keeper's thread); at once
    /// from this connection when too many wait.
    pub(super) fn schedule_will(
        &self,
        client_id: &str,
        delay: Duration,
        delayed: DelayedWill,
        context: &mut SessionContext<'_>,
    ) {
        let due = context.now() + delay;
        if let Err(delayed) = self.timers.lock().wills.insert(client_id, due, delayed) {
            context.submit(0, will_command(delayed.will));
        }
    }

    /// A persistent session that outlives its connection for a while:
    /// free its in-memory state when that is over.
    fn schedule_expiry(&self, client_id: &str, end: Duration, now: Instant) {
        let _ = self.timers.lock().expiries.insert(client_id, now + end, ());
    }
}

/// Publishes delayed wills and frees expired sessions until dropped.
pub struct SessionKeeper {
    _thread: Background,
}

impl MqttProtocol {
    /// Starts the thread that publishes this listener's delayed wills and
    /// frees its expired sessions. Drop it before the engine shuts down.
    pub fn start_keeper(&self, engine: &Engine) -> SessionKeeper {
        let connector = engine.connector();
        let timers = self.timers.clone();
        let parked = self.parked.clone();
        SessionKeeper {
            _thread: Background::spawn("starling-mqtt-keeper", move |stop| {
                keep(&connector, &timers, &parked, stop)
            }),
        }
    }
}

fn keep(connector: &Connector, timers: &SharedTimers, parked: &ParkedSessions, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(KEEPER_TICK);
        let now = Instant::now();
        let (wills, expired) = {
            let mut timers = timers.lock();
            (timers.wills.take_due(now), timers.expiries.take_due(now))
        };
        if !expired.is_empty() {
            let mut parked = parked.lock();
            for (client_id, ()) in expired {
                parked.remove(&client_id);
            }
        }
        for (client_id, delayed) in wills {
            // Published as the will's user, with that user's permissions.
            let mut client = connector.connect(delayed.principal);
            if let Err(error) = client.publish_command(will_command(delayed.will)) {
                log::warn!("mqtt: the delayed will of {client_id:?} was refused: {error}");
            }
        }
    }
}
