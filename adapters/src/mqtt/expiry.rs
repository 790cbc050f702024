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
//! in-memory state of expired sessions. What it waits for is in memory; a
//! delayed will is also in the session's `left` record, from which the
//! keeper takes it up again after a restart (`wills`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use starling_broker::{Action, Connector, Engine, LocalClient, Principal};

use crate::background::Background;

use super::wills::{load_wills, record_will_sent, still_pending};
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
    source: WillSource,
    /// Whose connection it was: the will is published as this user.
    principal: Principal,
}

/// Where a delayed will comes from.
enum WillSource {
    /// A connection of this process left it; `recorded` when its session's
    /// `left` record carries it (the keeper then records that it went out).
    Connection { will: Box<Will>, recorded: bool },
    /// Read from the log after a restart: published only if its session's
    /// records still say it is pending when it is due.
    Log(StoredWill),
}

/// What the keeper waits for, shared by the sessions of the listener.
#[derive(Default)]
pub(super) struct Timers {
    wills: Schedule<DelayedWill>,
    expiries: Schedule<()>,
}

pub(super) type SharedTimers = Arc<parking_lot::Mutex<Timers>>;

/// The broker command that publishes `will` (as whoever submits it).
pub(super) fn will_command(will: Will) -> WillCommands {
    let marks = Marks {
        origin: None,
        retained: will.retain,
    };
    let headers = headers_of(&will.properties, marks, wall_clock_ms());
    WillCommands::new(will.topic, will.payload, will.retain, headers)
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
        let mut timers = self.listener.timers.lock();
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
        let Some(state) = self.state.as_mut().filter(|state| state.claimed) else {
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
            state.leave_share(&self.listener.groups, &filter, context);
        }
        state.cursors_at_close(context);
        state.note_at_close(&self.listener.note_numbers, context);
        let conn = context.conn();
        let will = state.will.take().map(|will| *will);
        let principal = context.principal().cloned();
        let clients = self.listener.clients.clone();
        let mut clients = clients.lock();
        let owner = clients.get(&state.client_id).map(|client| client.conn);
        let taker = owner.filter(|owner| Some(*owner) != conn);
        let end = session_end(state.session_expiry_s);
        let will = will.map(|will| {
            let delay = Duration::from_secs(u64::from(
                will.properties.will_delay_interval_s.unwrap_or(0),
            ));
            (will, end.map_or(delay, |end| delay.min(end)))
        });
        if let Some(taker) = taker {
            let complete = state.knows_in_flight();
            let parked = state.persistent.then(|| state.take_parked()).flatten();
            let mut delayed = None;
            match (will, principal) {
                (Some((will, delay)), Some(principal)) if !delay.is_zero() => {
                    let source = WillSource::Connection {
                        will: Box::new(will),
                        recorded: false,
                    };
                    delayed = Some(DelayedWill { source, principal });
                }
                (Some((will, _)), _) => will_command(will).submit(context),
                (None, _) => {}
            }
            let handoff = Handoff {
                parked,
                complete,
                will: delayed,
            };
            context.notify(taker, Box::new(handoff));
            return;
        }
        if owner.is_some() {
            clients.remove(&state.client_id);
        }
        let client_id = state.client_id.clone();
        // A will that waits is kept in the session's `left` record, so a
        // restart does not lose it.
        let stored_will = match (&will, &principal) {
            (Some((will, delay)), Some(principal)) if !delay.is_zero() && state.persistent => {
                let due_ms = wall_clock_ms().saturating_add(delay.as_millis() as u64);
                Some(StoredWill::of(will, principal, due_ms))
            }
            _ => None,
        };
        if state.persistent {
            if end.is_some_and(|end| end.is_zero()) {
                // The session ends with its connection.
                state.record(serde_json::json!({"type": "end"}), context);
                self.forget_parked(&client_id);
            } else {
                let mut left = serde_json::json!({
                    "type": "left",
                    "at_ms": wall_clock_ms(),
                    "expiry_s": state.session_expiry_s,
                });
                if let Some(stored_will) = &stored_will {
                    left["will"] = stored_will.to_json();
                    state.index_will(context);
                }
                state.record(left, context);
                if let Some(parked) = state.take_parked() {
                    self.park(&client_id, parked);
                }
                if let Some(end) = end {
                    self.schedule_expiry(&client_id, end, context.now());
                }
            }
        }
        // The will's timer is set before the clients lock is let go: a
        // CONNECT of this client id on another core then either finds this
        // connection still registered (and gets the will in its handoff) or
        // finds the timer set (and cancels or fires it at once), never
        // neither (`reconnected`). The lock order is clients, then timers.
        if let Some((will, delay)) = will {
            match principal {
                Some(principal) if !delay.is_zero() => {
                    let recorded = stored_will.is_some();
                    let will = Box::new(will);
                    let source = WillSource::Connection { will, recorded };
                    let delayed = DelayedWill { source, principal };
                    let scheduled = self.schedule_will(&client_id, delay, delayed, context);
                    if let (false, true, Some(state)) = (scheduled, recorded, self.state.as_mut()) {
                        // Published at once: a restart must not again.
                        state.record(serde_json::json!({"type": "will-sent"}), context);
                    }
                }
                _ => will_command(will).submit(context),
            }
        }
        drop(clients);
    }

    /// Publishes `delayed` after `delay` (from the keeper's thread); at once
    /// from this connection when too many wait. Returns false then.
    pub(super) fn schedule_will(
        &self,
        client_id: &str,
        delay: Duration,
        delayed: DelayedWill,
        context: &mut SessionContext<'_>,
    ) -> bool {
        let due = context.now() + delay;
        match self
            .listener
            .timers
            .lock()
            .wills
            .insert(client_id, due, delayed)
        {
            Ok(()) => true,
            Err(delayed) => {
                delayed.commands().submit(context);
                false
            }
        }
    }

    /// A persistent session that outlives its connection for a while:
    /// free its in-memory state when that is over.
    fn schedule_expiry(&self, client_id: &str, end: Duration, now: Instant) {
        let _ = self
            .listener
            .timers
            .lock()
            .expiries
            .insert(client_id, now + end, ());
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
        let timers = self.listener.timers.clone();
        let parked = self.listener.parked.clone();
        SessionKeeper {
            _thread: Background::spawn("starling-mqtt-keeper", move |stop| {
                keep(&connector, &timers, &parked, stop)
            }),
        }
    }
}

fn keep(connector: &Connector, timers: &SharedTimers, parked: &ParkedSessions, stop: &AtomicBool) {
    // Reads and records wills in the sessions' `$` channels.
    let mut system = connector.connect(Principal::system("$mqtt-keeper"));
    restore_wills(connector, &mut system, timers);
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
            publish_will(connector, &mut system, &client_id, delayed);
        }
    }
}

impl DelayedWill {
    /// The broker commands that publish it.
    fn commands(self) -> WillCommands {
        match self.source {
            WillSource::Connection { will, .. } => will_command(*will),
            WillSource::Log(stored) => stored.commands(),
        }
    }
}

/// A will's publish, and for a retained will the records that keep it as
/// its topic's retained message (written as the server, in reserved
/// channels, only when its user may publish to the topic).
pub(super) struct WillCommands {
    topic: String,
    publish: Command,
    retained: Option<[Command; 2]>,
}

impl WillCommands {
    pub(super) fn new(topic: String, payload: Bytes, retain: bool, headers: Bytes) -> WillCommands {
        let retained = retain.then(|| {
            [
                // The seq of its message is not known yet: a will that
                // goes out as its connection closes keeps none (nobody
                // waits for the publish's answer); `publish_will` sets it.
                retained_command(&topic, headers.clone(), payload.clone(), 0),
                // Listed once per dedupe window, however often it goes out.
                stored_message(
                    RETAINED_INDEX.to_string(),
                    Bytes::from(topic.clone()),
                    Bytes::new(),
                    Bytes::from(topic.clone()),
                ),
            ]
        });
        let publish = stored_message(topic.clone(), Bytes::new(), headers, payload);
        WillCommands {
            topic,
            publish,
            retained,
        }
    }

    /// Hands them to the broker from the will's own connection (nobody
    /// waits for the answers: it is closing).
    fn submit(self, context: &mut SessionContext<'_>) {
        // A `$` topic is the server's: the will's publish is refused, and
        // its retained copy (written as the server) must not be kept.
        let allowed = !self.topic.starts_with('$') && context.may(Action::Publish, &self.topic);
        context.submit(0, self.publish);
        if let (Some(retained), true) = (self.retained, allowed) {
            for command in retained {
                context.submit_as_server(0, command);
            }
        }
    }
}

/// Publishes a due will as its user, with that user's permissions, and
/// records that it went out when its session's records carry it. A will
/// read from the log goes out only if the records still say it is pending.
fn publish_will(
    connector: &Connector,
    system: &mut LocalClient,
    client_id: &str,
    delayed: DelayedWill,
) {
    let recorded = match &delayed.source {
        WillSource::Connection { recorded, .. } => *recorded,
        WillSource::Log(stored) => {
            if !still_pending(system, client_id, stored) {
                return;
            }
            true
        }
    };
    let mut client = connector.connect(delayed.principal.clone());
    let mut commands = delayed.commands();
    match client.publish_command(commands.publish) {
        Ok(published) => {
            // Its user may publish there: keep it as the retained message,
            // a copy of the message just stored.
            if let Some([Command::Publish { relation, .. }, _]) = &mut commands.retained {
                *relation = published.seq;
            }
            for command in commands.retained.into_iter().flatten() {
                if let Err(error) = system.publish_command(command) {
                    log::warn!("mqtt: the retained will of {client_id:?} was not kept: {error}");
                }
            }
            if recorded {
                record_will_sent(system, client_id);
            }
        }
        Err(error) => log::warn!("mqtt: the delayed will of {client_id:?} was refused: {error}"),
    }
}

/// Takes up the delayed wills that were pending when the server last
/// stopped: each waits again for when it is due (a will whose time passed
/// goes out now), unless a connection of this process already left a newer
/// one.
fn restore_wills(connector: &Connector, system: &mut LocalClient, timers: &SharedTimers) {
    let now = Instant::now();
    let now_ms = wall_clock_ms();
    for (client_id, due_ms, stored) in load_wills(system) {
        let due = now + Duration::from_millis(due_ms.saturating_sub(now_ms));
        let delayed = DelayedWill {
            principal: stored.principal(),
            source: WillSource::Log(stored),
        };
        let mut timers_now = timers.lock();
        if timers_now.wills.items.contains_key(&client_id) {
            continue;
        }
        if let Err(delayed) = timers_now.wills.insert(&client_id, due, delayed) {
            drop(timers_now);
            publish_will(connector, system, &client_id, delayed);
        }
    }
}
