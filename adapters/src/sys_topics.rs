//! `$SYS/broker/…`: the engine's counters published as ephemeral messages
//! every few seconds, for MQTT monitoring tools (and any subscriber of those
//! channels). Names follow Mosquitto's, so existing dashboards work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_broker::{Command, Engine, LocalClient, Metrics, MetricsHandle, Principal};
use starling_protocol::kind;

use crate::background::Background;

/// Publishes the `$SYS` topics until dropped.
pub struct SysTopics {
    _thread: Background,
}

impl SysTopics {
    /// Starts publishing every `interval` on a thread of its own (an
    /// in-process client acting as the system principal); `uptime` counts
    /// from `started`.
    pub fn start(engine: &Engine, interval: Duration, started: Instant) -> SysTopics {
        let client = engine.connect(Principal::system("$server"));
        let metrics = engine.metrics_handle();
        SysTopics {
            _thread: Background::spawn("starling-sys", move |stop| {
                run(client, &metrics, interval, started, stop)
            }),
        }
    }
}

/// The `$SYS` values as they are now, for a subscriber that should not wait
/// for the next round (MQTT sends them as retained messages at SUBSCRIBE,
/// as Mosquitto, which retains them, does).
pub struct SysSource {
    metrics: MetricsHandle,
    started: Instant,
}

impl SysSource {
    pub fn new(engine: &Engine, started: Instant) -> SysSource {
        SysSource {
            metrics: engine.metrics_handle(),
            started,
        }
    }

    /// The topics and their values now.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        sys_values(&self.metrics, self.started)
    }
}

/// The topics and their values now.
pub fn sys_values(metrics: &Metrics, started: Instant) -> Vec<(&'static str, String)> {
    let counters = metrics.snapshot();
    let get = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    let connected = get("connections_opened").saturating_sub(get("connections_closed"));
    vec![
        (
            "$SYS/broker/version",
            format!("starling {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", started.elapsed().as_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        (
            "$SYS/broker/messages/received",
            get("messages_in").to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            get("deliveries_out").to_string(),
        ),
        ("$SYS/broker/bytes/received", get("bytes_in").to_string()),
        ("$SYS/broker/bytes/sent", get("bytes_out").to_string()),
        ("$SYS/broker/store/fsyncs", get("fsyncs").to_string()),
    ]
}

fn run(
    mut client: LocalClient,
    metrics: &MetricsHandle,
    interval: Duration,
    started: Instant,
    stop: &AtomicBool,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            // Short sleeps, so a shutdown is not held up by the interval.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next += interval;
        for (topic, value) in sys_values(metrics, started) {
            let published = client.publish_command(Command::Publish {
                channel: topic.into(),
                ephemeral: true,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: Bytes::from(value),
            });
            if let Err(error) = published {
                log::debug!("$SYS: stopping: {error}");
                return;
            }
        }
    }
}
