//! `starling bench`: an open-loop load generator over the native protocol.
//!
//! Publishers send at a fixed target rate: message k of a publisher is due
//! at `start + k / rate`, and every latency is measured from that *intended*
//! time, so a stalled server shows up in the numbers instead of slowing the
//! load down (no coordinated omission). Subscribers check what they receive:
//! every seq from their starting head to the last acknowledged one, exactly
//! once, in order per channel. The last line printed is a JSON summary.
//!
//! Subscribers speak the native protocol, or with `--subscriber-protocol
//! websocket` the JSON chat protocol over WebSocket (publishers stay native);
//! `starling bench idle` holds idle WebSocket connections and reports the
//! server's memory per connection (both in `bench_ws.rs`).
//!
//! With `--tls` every native connection speaks TLS (`bench_tls.rs`). A
//! publisher is then one pacing thread, as in the plain case, plus one
//! thread that drives the TLS session in both directions; the timing, the
//! ack accounting and the delivery checks are the same code in both modes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bench_tls::{self, Answers, ReadOutcome, TlsClient, Wire};
use crate::bench_ws;
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use starling_adapters::client::{self, Client, ClientReader, ClientWriter};
use starling_protocol::{kind, Envelope, Frame, PublishFields, SubscribeStart};

/// Thread stack for the many bench threads: they hold little.
const BENCH_THREAD_STACK_BYTES: usize = 256 * 1024;
/// Bytes at the start of each body: publisher id, message index, intended
/// send time, actual send time.
const STAMP_BYTES: usize = 32;
/// Bytes one read of a publisher's acks takes at most (an ack is 35 bytes).
const ACK_READ_BYTES: usize = 64 * 1024;
/// Longest a pacing thread with a full window waits before it looks again
/// (the ack reader normally wakes it sooner).
const WINDOW_WAIT_MAX: Duration = Duration::from_millis(10);
/// How long subscribers may take after the last ack to receive everything.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriberProtocol {
    /// The native protocol, at `--server`.
    Native,
    /// The JSON chat protocol over WebSocket, at `--http-server`.
    Websocket,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum BenchCommand {
    /// Hold many idle WebSocket connections and report the server's
    /// resident memory per connection.
    Idle(bench_ws::IdleArgs),
}

#[derive(clap::Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Boxed: the idle options would make every `Command` as large as them.
    #[command(subcommand)]
    command: Option<Box<BenchCommand>>,
    /// Address of the server's native listener.
    #[arg(long, default_value = "127.0.0.1:7400")]
    server: String,
    /// Publisher connections (one sender and one ack reader thread each).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscriber connections. With at least as many subscribers as channels,
    /// subscriber i takes channel i mod channels; otherwise channels are dealt
    /// out among the subscribers.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Threads that read the subscriber connections (each runs a mio poll
    /// loop over its share of them).
    #[arg(long, default_value_t = 2)]
    subscriber_threads: usize,
    /// Channels the publishers write to, round-robin.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Message body size in bytes (at least 24).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Target publish rate over all publishers, messages/s.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long publishers send.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Unacknowledged publishes one publisher may have; when full, it waits
    /// (and the wait counts in the latency).
    #[arg(long, default_value_t = 10_000)]
    window: usize,
    /// Least time between two bursts of one publisher, in microseconds. 0
    /// (the default): each message leaves when it is due. Above 0, a
    /// publisher whose messages are due more often than this sends them in
    /// bursts this far apart, which spares both sides a wake-up, a system
    /// call and a read per message at fixed rates; the wait counts in the
    /// latency, which is still measured from each message's intended time.
    #[arg(long, default_value_t = 0)]
    burst_interval_us: u64,
    /// Channel name prefix, so runs do not mix.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// After publishing, read "the last --history-limit messages" of this many
    /// random channels (one request at a time) and report the latency.
    #[arg(long, default_value_t = 0)]
    history_queries: u64,
    #[arg(long, default_value_t = 50)]
    history_limit: u32,
    /// Give every publish a client message id (`p<publisher>-<n>`), so the
    /// server's idempotency window holds a key per message.
    #[arg(long)]
    client_message_ids: bool,
    /// What the subscribers speak (publishers always speak the native protocol).
    #[arg(long, value_enum, default_value_t = SubscriberProtocol::Native)]
    subscriber_protocol: SubscriberProtocol,
    /// Address of the server's HTTP listener (WebSocket subscribers connect
    /// to ws://ADDRESS/ws).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_server: String,
    /// WebSocket subscribers opened (and answered) before the next batch.
    #[arg(long, default_value_t = 100)]
    connect_batch: usize,
    /// Bind WebSocket subscriber sockets to 127.0.0.2, 127.0.0.3, …
    /// round-robin (for more than ~28,000 connections); 0: don't bind.
    #[arg(long, default_value_t = 0)]
    source_addresses: usize,
    /// Seconds to wait after every subscriber is subscribed before
    /// publishing (lets the server finish the work of a sign-in storm).
    #[arg(long, default_value_t = 0)]
    settle_s: u64,
    /// Speak MQTT 3.1.1 over TCP for publishers and subscribers, to
    /// `--mqtt-server` (any broker; see `bench_mqtt.rs`). `--channels` is
    /// ignored: use `--topics`.
    #[arg(long)]
    mqtt: bool,
    /// Address of the MQTT listener for `--mqtt`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_server: String,
    /// Topics the MQTT publishers write to (message k of publisher p goes to
    /// topic (p + k) mod topics; subscriber i takes topic i mod topics).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// QoS of the MQTT publishes and subscriptions, 0 or 1.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Unacknowledged QoS 1 publishes one MQTT publisher may have.
    #[arg(long, default_value_t = 1000)]
    mqtt_window: usize,
    /// User name sent in the MQTT CONNECTs (none by default).
    #[arg(long)]
    mqtt_username: Option<String>,
    /// MQTT subscribers connect without clean session (persistent sessions:
    /// cursors, and notes of their QoS 1 deliveries in flight).
    #[arg(long)]
    mqtt_persistent: bool,
    /// With --mqtt: write one line per delivery to this file, oldest
    /// first: `intended_ms,latency_us,from_send_us` (the message's intended
    /// send time in ms since the run started, and its delivery latency from
    /// the intended and the actual send time), to see when the tail
    /// happens. Kept in memory until the end: for runs of a few million
    /// deliveries at most.
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,
    /// Speak TLS to the native listener (publishers and native subscribers).
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// PEM file of the CA certificates to trust for `--tls`.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (DNS name or IP address);
    /// default: the IP address of `--server`.
    #[arg(long)]
    tls_server_name: Option<String>,
    /// PEM client certificate (then its intermediates) to present with `--tls`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

struct Stamp {
    publisher: u64,
    index: u64,
    intended_ns: u64,
    sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_BYTES`] of `body`.
    fn write(&self, body: &mut [u8]) {
        let fields = [self.publisher, self.index, self.intended_ns, self.sent_ns];
        for (place, value) in body[..STAMP_BYTES].chunks_exact_mut(8).zip(fields) {
            place.copy_from_slice(&value.to_le_bytes());
        }
    }
}

/// The intended send time stamped into a body (see [`stamp_body`]).
pub(crate) fn intended_ns_of(body: &[u8]) -> Option<u64> {
    let bytes = body.get(16..24)?;
    Some(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

/// The actual send time stamped into a body.
pub(crate) fn sent_ns_of(body: &[u8]) -> Option<u64> {
    let bytes = body.get(24..STAMP_BYTES)?;
    Some(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

/// Asks the kernel to wake this thread's sleeps on time (1 ns of timer
/// slack instead of 50 µs), so a late load generator does not pass its own
/// lateness off as server latency.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only
    // the calling thread's timer slack; no memory is passed.
    let result = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    if result != 0 {
        log::debug!("PR_SET_TIMERSLACK failed; sleeps may wake up to 50 us late");
    }
}

/// How many of a run's messages (`rate` × `duration_s`, rounded) each of
/// `publishers` sends: the first ones take one more when they do not divide
/// evenly (rounding each publisher's share sent 12 messages for `--rate 10
/// --publishers 4`, and none for `--rate 1`).
pub(crate) fn publisher_shares(rate: u64, duration_s: u64, publishers: usize) -> Result<Vec<u64>> {
    let total = (rate as f64 * duration_s as f64).round() as u64;
    if total == 0 {
        bail!("--rate {rate} for --duration-s {duration_s} is less than one message: raise either");
    }
    let n = publishers as u64;
    Ok((0..n)
        .map(|p| total / n + u64::from(p < total % n))
        .collect())
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct PublisherResult {
    sent: u64,
    acked: u64,
    errors: u64,
    /// Highest acknowledged seq per channel index (0: none).
    last_seq: Vec<u64>,
    latency_us: Option<Histogram<u64>>,
}

#[derive(Default)]
pub(crate) struct SubscriberResult {
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// From the intended send time (includes any lateness of the sender).
    pub(crate) latency_us: Option<Histogram<u64>>,
    /// From the actual send time (the server and the network only).
    pub(crate) from_send_us: Option<Histogram<u64>>,
    /// When the last delivery was read, ns since the run's epoch.
    pub(crate) last_delivery_ns: u64,
    /// Each delivery's (intended send time in ns since the epoch, latency
    /// from it in µs, latency from the actual send in µs), when asked for.
    pub(crate) samples: Option<Vec<(u64, u64, u64)>>,
}

impl SubscriberResult {
    /// Adds one subscriber thread's counts and histograms to the run's.
    pub(crate) fn absorb(&mut self, other: SubscriberResult) {
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        if let (Some(all), Some(one)) = (self.latency_us.as_mut(), other.latency_us) {
            all.add(one).expect("same histogram bounds");
        }
        if let (Some(all), Some(one)) = (self.from_send_us.as_mut(), other.from_send_us) {
            all.add(one).expect("same histogram bounds");
        }
        if let (Some(all), Some(mut one)) = (self.samples.as_mut(), other.samples) {
            all.append(&mut one);
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(command) = args.command {
        let BenchCommand::Idle(idle) = *command;
        return bench_ws::idle(idle);
    }
    if args.tls && (args.mqtt || args.subscriber_protocol == SubscriberProtocol::Websocket) {
        bail!("--tls speaks TLS to the native listener only; it cannot be combined with --mqtt or --subscriber-protocol websocket");
    }
    if args.tls && args.history_queries > 0 {
        bail!("--history-queries runs over plain TCP only; leave it out with --tls");
    }
    if args.mqtt && args.mqtt_window > 65_535 {
        bail!(
            "--mqtt-window {} is more than MQTT's 65,535 packet identifiers can keep apart; give at most 65535",
            args.mqtt_window
        );
    }
    if args.mqtt {
        return crate::bench_mqtt::run(crate::bench_mqtt::MqttBench {
            server: args.mqtt_server,
            publishers: args.publishers,
            subscribers: args.subscribers,
            topics: args.topics,
            size: args.size,
            qos: args.qos,
            rate: args.rate,
            duration_s: args.duration_s,
            window: args.mqtt_window,
            prefix: args.prefix,
            username: args.mqtt_username,
            persistent_subscribers: args.mqtt_persistent,
            latency_log: args.latency_log,
        });
    }
    if args.latency_log.is_some() {
        bail!("--latency-log is written by MQTT runs only: add --mqtt (and --mqtt-server)");
    }
    if args.size < STAMP_BYTES {
        bail!("--size must be at least {STAMP_BYTES} bytes (the latency stamp)");
    }
    if args.publishers == 0 || args.channels == 0 || args.rate == 0 {
        bail!("--publishers, --channels and --rate must be at least 1");
    }
    let address: SocketAddr = args
        .server
        .parse()
        .with_context(|| format!("--server {:?} is not an address", args.server))?;
    let tls = match (&args.tls_ca, args.tls) {
        (Some(ca_file), true) => Some(TlsClient::new(
            ca_file,
            args.tls_server_name.as_deref(),
            address,
            args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
        )?),
        _ => None,
    };
    let channels: Arc<Vec<String>> = Arc::new(
        (0..args.channels)
            .map(|i| format!("{}-{}-{i}", args.prefix, std::process::id()))
            .collect(),
    );
    let ws_target = match args.subscriber_protocol {
        SubscriberProtocol::Native => None,
        SubscriberProtocol::Websocket => Some(bench_ws::WsTarget::new(
            &format!("ws://{}/ws", args.http_server),
            args.source_addresses,
        )?),
    };
    // One descriptor per subscriber and publisher, and some to spare.
    bench_ws::raise_open_file_limit((args.subscribers + 2 * args.publishers + 64) as u64)?;
    let epoch = Instant::now();

    // Subscribers first, so they see every message. Subscriber i takes
    // channel i mod channels when there are at least as many subscribers as
    // channels; otherwise the channels are dealt out among them.
    let targets: Arc<Mutex<Option<Vec<u64>>>> = Arc::new(Mutex::new(None));
    let assignments: Vec<Vec<usize>> = (0..args.subscribers)
        .map(|i| {
            if args.subscribers >= args.channels {
                vec![i % args.channels]
            } else {
                (0..args.channels)
                    .filter(|c| c % args.subscribers == i)
                    .collect()
            }
        })
        .collect();
    let pools = args.subscriber_threads.clamp(1, args.subscribers.max(1));
    let mut subscriber_threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    for pool in 0..pools.min(args.subscribers) {
        let mine: Vec<(usize, Vec<usize>)> = assignments
            .iter()
            .cloned()
            .enumerate()
            .skip(pool)
            .step_by(pools)
            .collect();
        let channels = channels.clone();
        let targets = targets.clone();
        let ready = ready_tx.clone();
        let ws_target = ws_target.clone();
        let tls = tls.clone();
        let batch = args.connect_batch;
        let prefix = format!("{}-{}", args.prefix, std::process::id());
        let handle = spawn(format!("bench-sub-{pool}"), move || match ws_target {
            None => {
                let mine = mine.into_iter().map(|(_, channels)| channels).collect();
                let target = Target { address, tls };
                subscriber_pool(&target, &channels, mine, epoch, &targets, ready)
            }
            Some(target) => bench_ws::subscriber_pool(
                target, batch, &prefix, &channels, mine, epoch, &targets, ready,
            ),
        })?;
        subscriber_threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..subscriber_threads.len() {
        ready_rx
            .recv()
            .context("a subscriber thread died before subscribing")??;
    }

    if args.settle_s > 0 {
        eprintln!("subscribers ready; settling for {} s", args.settle_s);
        std::thread::sleep(Duration::from_secs(args.settle_s));
    }
    let shares = publisher_shares(args.rate, args.duration_s, args.publishers)?;
    let mut publisher_threads = Vec::new();
    let start_ns = epoch.elapsed().as_nanos() as u64 + 50_000_000;
    for (p, count) in shares.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let rate_each = count as f64 / args.duration_s.max(1) as f64;
        let args = args.clone();
        let channels = channels.clone();
        let tls = tls.clone();
        let handle = spawn(format!("bench-pub-{p}"), move || {
            let target = Target { address, tls };
            publisher(&target, p, &args, &channels, rate_each, epoch, start_ns)
        })?;
        publisher_threads.push(handle);
    }
    let mut published = PublisherResult {
        last_seq: vec![0; args.channels],
        latency_us: Some(histogram()),
        ..PublisherResult::default()
    };
    for handle in publisher_threads {
        let result = handle.join().expect("publisher thread panicked")?;
        published.sent += result.sent;
        published.acked += result.acked;
        published.errors += result.errors;
        for (all, one) in published.last_seq.iter_mut().zip(result.last_seq) {
            *all = (*all).max(one);
        }
        if let (Some(all), Some(one)) = (published.latency_us.as_mut(), result.latency_us) {
            all.add(one).expect("same histogram bounds");
        }
    }
    let publish_elapsed = epoch.elapsed().as_secs_f64() - start_ns as f64 / 1e9;
    *targets.lock().expect("targets lock") = Some(published.last_seq.clone());

    let mut delivered = SubscriberResult {
        latency_us: Some(histogram()),
        from_send_us: Some(histogram()),
        ..SubscriberResult::default()
    };
    for handle in subscriber_threads {
        delivered.absorb(handle.join().expect("subscriber thread panicked")?);
    }
    let history = if args.history_queries > 0 {
        Some(history_queries(
            address,
            &args,
            &channels,
            &published.last_seq,
        )?)
    } else {
        None
    };
    let delivery_window_s = delivered.last_delivery_ns.saturating_sub(start_ns) as f64 / 1e9;
    let ack_latency = published.latency_us.expect("set above");
    let delivery_latency = delivered.latency_us.expect("set above");
    let delivery_from_send = delivered.from_send_us.expect("set above");
    let ok = published.errors == 0
        && published.acked == published.sent
        && delivered.lost == 0
        && delivered.duplicated == 0
        && delivered.out_of_order == 0;
    let quantiles = |h: &Histogram<u64>| {
        serde_json::json!({
            "p50": h.value_at_quantile(0.50),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        })
    };
    eprintln!(
        "published {} acked {} ({:.0}/s); delivered {} ({:.0}/s; {:.0}/s up to the last delivery); ack p50 {} us p99 {} us; delivery p50 {} us p99 {} us; lost {} duplicated {} out of order {}",
        published.sent,
        published.acked,
        published.acked as f64 / publish_elapsed,
        delivered.delivered,
        delivered.delivered as f64 / publish_elapsed,
        delivered.delivered as f64 / delivery_window_s,
        ack_latency.value_at_quantile(0.5),
        ack_latency.value_at_quantile(0.99),
        delivery_latency.value_at_quantile(0.5),
        delivery_latency.value_at_quantile(0.99),
        delivered.lost,
        delivered.duplicated,
        delivered.out_of_order,
    );
    let summary = serde_json::json!({
        "tool": "starling-bench",
        "protocol": "native",
        "tls": args.tls,
        "subscriber_protocol": match args.subscriber_protocol {
            SubscriberProtocol::Native => "native",
            SubscriberProtocol::Websocket => "websocket",
        },
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "channels": args.channels,
        "size": args.size,
        "rate_target": args.rate,
        "burst_interval_us": args.burst_interval_us,
        "duration_s": publish_elapsed,
        "sent": published.sent,
        "acked": published.acked,
        "publish_errors": published.errors,
        "acked_per_s": published.acked as f64 / publish_elapsed,
        "delivered": delivered.delivered,
        "delivered_per_s": delivered.delivered as f64 / publish_elapsed,
        // From the first intended send to the last delivery read: lower than
        // `delivered_per_s` when deliveries lag behind the publishers.
        "delivery_window_s": delivery_window_s,
        "delivered_per_s_to_last_delivery": delivered.delivered as f64 / delivery_window_s,
        "ack_latency_us": quantiles(&ack_latency),
        "delivery_latency_us": quantiles(&delivery_latency),
        "delivery_latency_from_send_us": quantiles(&delivery_from_send),
        "lost": delivered.lost,
        "duplicated": delivered.duplicated,
        "out_of_order": delivered.out_of_order,
        "history": history.as_ref().map(|(queries, latency)| serde_json::json!({
            "queries": queries,
            "limit": args.history_limit,
            "latency_us": quantiles(latency),
        })),
        "ok": ok,
    });
    println!("{summary}");
    if !ok {
        bail!("the run found errors, losses, duplicates or reordering (see the summary)");
    }
    Ok(())
}

/// Reads the last `history_limit` messages of random channels, one request
/// at a time; checks each page ends at the channel's last acknowledged seq.
fn history_queries(
    address: SocketAddr,
    args: &BenchArgs,
    channels: &[String],
    last_seq: &[u64],
) -> Result<(u64, Histogram<u64>)> {
    let mut client = Client::connect(address, "bench-history", "")
        .with_context(|| format!("cannot connect to {address} for history queries"))?;
    let mut latency = histogram();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for _ in 0..args.history_queries {
        // xorshift64: cheap, seeded, good enough to pick channels.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let channel = (state % channels.len() as u64) as usize;
        let started = Instant::now();
        let page = client.history(
            &channels[channel],
            starling_protocol::HistoryQuery::Last,
            args.history_limit,
        )?;
        latency.saturating_record(started.elapsed().as_micros() as u64);
        let expected = last_seq.get(channel).copied().unwrap_or(0);
        if page.messages.last().map_or(0, |m| m.seq) < expected {
            bail!(
                "history of {} ends before its last acknowledged seq {expected}",
                channels[channel]
            );
        }
    }
    eprintln!(
        "history: {} queries of the last {}: p50 {} us p99 {} us",
        args.history_queries,
        args.history_limit,
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99)
    );
    Ok((args.history_queries, latency))
}

pub(crate) fn spawn<T: Send + 'static>(
    name: String,
    body: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(BENCH_THREAD_STACK_BYTES)
        .spawn(move || {
            tighten_timer_slack();
            body()
        })
        .context("cannot start a bench thread")
}

/// Where the native connections go.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    /// `Some` with `--tls`.
    tls: Option<TlsClient>,
}

/// Where a publisher's pacing thread puts its bursts.
enum PublishSink {
    /// Plain TCP: the pacing thread writes the socket itself.
    Plain(ClientWriter),
    /// TLS: each burst goes to the thread that drives the session.
    Tls {
        buffer: BytesMut,
        bursts: mpsc::Sender<Bytes>,
        waker: Arc<mio::Waker>,
    },
}

impl PublishSink {
    fn queue(&mut self, request_id: u32, fields: &PublishFields<'_>) -> Result<()> {
        match self {
            PublishSink::Plain(writer) => writer.queue_publish_fields(request_id, fields)?,
            PublishSink::Tls { buffer, .. } => {
                fields.validate()?;
                fields.encode(request_id, buffer);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            PublishSink::Plain(writer) => writer.flush()?,
            PublishSink::Tls {
                buffer,
                bursts,
                waker,
            } => {
                if bursts.send(buffer.split().freeze()).is_err() {
                    bail!("the TLS connection thread stopped");
                }
                waker.wake()?;
            }
        }
        Ok(())
    }
}

/// A publisher's answers as they arrive: request id k+1 answers message k.
struct AckTally {
    id: usize,
    publishers: usize,
    channel_count: usize,
    start_ns: u64,
    interval_ns: f64,
    epoch: Instant,
    /// Answers so far, for the pacing thread's window; stored once per read.
    acked: Arc<AtomicU64>,
    /// The pacing thread, woken after each read that answered something (it
    /// parks while its window is full).
    pacer: std::thread::Thread,
    /// Messages sent, once the pacing thread is done (`u64::MAX` until then).
    finished_sending: Arc<AtomicU64>,
    answered: u64,
    /// `answered` when the pacing thread was last told.
    answered_told: u64,
    /// When the last envelope was read, ns since `epoch`.
    last_progress_ns: u64,
    result: PublisherResult,
}

impl Answers for AckTally {
    /// Whether every message sent has been answered; an error when no answer
    /// came for [`DRAIN_TIMEOUT`].
    fn finished(&self) -> Result<bool> {
        let sent = self.finished_sending.load(Ordering::Acquire);
        if self.answered >= sent {
            return Ok(true);
        }
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        if now_ns.saturating_sub(self.last_progress_ns) > DRAIN_TIMEOUT.as_nanos() as u64 {
            bail!(
                "publisher {}: no ack for {DRAIN_TIMEOUT:?}; {} of {sent} answered",
                self.id,
                self.answered
            );
        }
        Ok(false)
    }

    fn on_envelope(&mut self, envelope: Envelope, now_ns: u64) {
        self.last_progress_ns = now_ns;
        let index = u64::from(envelope.request_id.wrapping_sub(1));
        match envelope.frame {
            Frame::PublishAck { seq, .. } => {
                self.result.acked += 1;
                let intended_ns = self.start_ns + (index as f64 * self.interval_ns) as u64;
                if let Some(histogram) = self.result.latency_us.as_mut() {
                    histogram.saturating_record(now_ns.saturating_sub(intended_ns) / 1000);
                }
                let channel = (self.id + index as usize * self.publishers) % self.channel_count;
                let last = &mut self.result.last_seq[channel];
                *last = (*last).max(seq);
            }
            Frame::Error { message, .. } => {
                self.result.errors += 1;
                log::warn!("publish failed: {message}");
            }
            _ => return,
        }
        self.answered += 1;
    }

    /// Publishes the window's new room and wakes the pacing thread: once per
    /// read rather than per answer, so a read of a thousand acks costs one
    /// store and at most one wake-up.
    fn after_read(&mut self) {
        if self.answered != self.answered_told {
            self.answered_told = self.answered;
            self.acked.store(self.answered, Ordering::Release);
            self.pacer.unpark();
        }
    }
}

impl AckTally {
    /// Reads a plain connection's answers until every message is answered.
    /// Each read takes whatever arrived (one commit's acks, often hundreds)
    /// and every answer of that read is timed at the same instant.
    fn read_plain(mut self, reader: ClientReader) -> Result<PublisherResult> {
        let (mut stream, mut buffer, pending) = reader.into_parts();
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        for envelope in pending {
            self.on_envelope(envelope, now_ns);
        }
        // Set once: the wait is the same at every read.
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut chunk = vec![0; ACK_READ_BYTES];
        while !self.finished()? {
            let now_ns = self.epoch.elapsed().as_nanos() as u64;
            while let Some(envelope) = bench_tls::next_envelope(&mut buffer)? {
                self.on_envelope(envelope, now_ns);
            }
            self.after_read();
            if self.finished()? {
                break;
            }
            match stream.read(&mut chunk) {
                Ok(0) => bail!("publisher {}: the server closed the connection", self.id),
                Ok(received) => buffer.extend_from_slice(&chunk[..received]),
                Err(error) if client::read_again(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(self.result)
    }
}

#[allow(clippy::too_many_arguments)]
fn publisher(
    target: &Target,
    id: usize,
    args: &BenchArgs,
    channels: &[String],
    rate: f64,
    epoch: Instant,
    start_ns: u64,
) -> Result<PublisherResult> {
    let address = target.address;
    let name = format!("bench-pub-{id}");
    let total = (rate * args.duration_s as f64).round() as u64;
    let interval_ns = 1e9 / rate;
    let window = args.window.max(1) as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let finished_sending = Arc::new(AtomicU64::new(u64::MAX));
    let mut tally = AckTally {
        id,
        publishers: args.publishers,
        channel_count: channels.len(),
        start_ns,
        interval_ns,
        epoch,
        acked: acked.clone(),
        pacer: std::thread::current(),
        finished_sending: finished_sending.clone(),
        answered: 0,
        answered_told: 0,
        last_progress_ns: epoch.elapsed().as_nanos() as u64,
        result: PublisherResult {
            last_seq: vec![0; channels.len()],
            latency_us: Some(histogram()),
            ..PublisherResult::default()
        },
    };
    let connect_error = || format!("publisher {id} cannot connect to {address}");
    let (mut sink, answers) = match &target.tls {
        None => {
            let client = Client::connect(address, &name, "").with_context(connect_error)?;
            let (writer, reader) = client.into_split();
            // A server that stops reading ends the run with an error, not a
            // publisher blocked in a write for good.
            writer.set_write_timeout(Some(DRAIN_TIMEOUT))?;
            let answers = spawn(format!("bench-ack-{id}"), move || tally.read_plain(reader))?;
            (PublishSink::Plain(writer), answers)
        }
        Some(tls) => {
            let (wire, buffer) = tls
                .connect(address, &name)
                .with_context(connect_error)?
                .into_wire()?;
            let poll = mio::Poll::new().context("cannot create a poll")?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), bench_tls::WAKER)?);
            let (bursts, receiver) = mpsc::channel();
            let answers = spawn(format!("bench-tls-{id}"), move || {
                bench_tls::drive_publisher(poll, wire, buffer, receiver, epoch, &mut tally)
                    .with_context(|| format!("publisher {id}"))?;
                Ok(tally.result)
            })?;
            let sink = PublishSink::Tls {
                buffer: BytesMut::new(),
                bursts,
                waker,
            };
            (sink, answers)
        }
    };

    // Every message due by now leaves in one write: the sender sleeps until
    // the next one is due and then catches up in a burst, so the load stays
    // open-loop without spinning (the bench shares the machine with the server).
    let mut sent = 0u64;
    // One body, restamped for each message: the stamp, then filler.
    let mut body = vec![b'x'; args.size];
    let mut client_message_id = String::new();
    let burst_interval_ns = args.burst_interval_us.saturating_mul(1000);
    let mut last_burst_ns = 0u64;
    let sending = (|| -> Result<()> {
        while sent < total {
            let intended_ns = |index: u64| start_ns + (index as f64 * interval_ns) as u64;
            let now_ns = epoch.elapsed().as_nanos() as u64;
            let next_ns = intended_ns(sent).max(last_burst_ns.saturating_add(burst_interval_ns));
            if now_ns < next_ns {
                std::thread::sleep(Duration::from_nanos(next_ns - now_ns));
                continue;
            }
            let due = (((now_ns - start_ns) as f64 / interval_ns) as u64 + 1).min(total);
            let room = window.saturating_sub(sent - acked.load(Ordering::Acquire));
            if room == 0 {
                if answers.is_finished() {
                    // It stopped (no answer for a while, or the connection
                    // closed): its error, joined below, says which.
                    break;
                }
                // The ack reader wakes this thread when a read frees room;
                // the timeout only bounds the wait should it stop.
                std::thread::park_timeout(WINDOW_WAIT_MAX);
                continue;
            }
            let burst_end = due.min(sent + room).max(sent + 1);
            let sent_ns = epoch.elapsed().as_nanos() as u64;
            last_burst_ns = sent_ns;
            while sent < burst_end {
                let channel = (id + sent as usize * args.publishers) % channels.len();
                let stamp = Stamp {
                    publisher: id as u64,
                    index: sent,
                    intended_ns: intended_ns(sent),
                    sent_ns,
                };
                stamp.write(&mut body);
                client_message_id.clear();
                if args.client_message_ids {
                    write!(client_message_id, "p{id}-{sent}").expect("writing to a String");
                }
                let fields = PublishFields {
                    ephemeral: false,
                    kind: kind::MESSAGE,
                    channel: &channels[channel],
                    client_message_id: client_message_id.as_bytes(),
                    relation: 0,
                    headers: &[],
                    body: &body,
                };
                // Request ids start at 1; 0 is for server pushes.
                sink.queue((sent as u32).wrapping_add(1), &fields)?;
                sent += 1;
            }
            sink.flush()?;
        }
        Ok(())
    })();
    finished_sending.store(sent, Ordering::Release);
    let answered = answers.join().expect("ack reader panicked");
    // A connection that failed stops the sender too; its error says why.
    let mut result = answered?;
    sending?;
    result.sent = sent;
    Ok(result)
}

/// One connection of a subscriber pool.
struct SubscriberConn {
    wire: Wire,
    buffer: BytesMut,
    /// Channel name → (channel index, next expected seq).
    next: HashMap<String, (usize, u64)>,
    /// Channel name → seqs skipped by a later one and not come yet (up to
    /// `MISSING_TRACKED_MAX` per channel): one that comes is late (out of
    /// order), not a duplicate; those still missing at the end are lost.
    missing: HashMap<String, std::collections::BTreeSet<u64>>,
    open: bool,
}

/// Skipped seqs remembered per channel; past this many, a gap counts as
/// lost at once.
const MISSING_TRACKED_MAX: usize = 100_000;

/// Counts delivered `seq` of a channel that expected `next_seq` and got
/// another: one skipped earlier comes late (out of order), one delivered
/// before again is a duplicate, and a later one leaves the seqs it skips
/// missing (lost if they never come).
pub(crate) fn account_out_of_turn(
    seq: u64,
    next_seq: &mut u64,
    missing: &mut std::collections::BTreeSet<u64>,
    result: &mut SubscriberResult,
) {
    if seq < *next_seq {
        if missing.remove(&seq) {
            result.out_of_order += 1;
        } else {
            result.duplicated += 1;
        }
        return;
    }
    let gap = seq - *next_seq;
    let tracked = gap.min(MISSING_TRACKED_MAX.saturating_sub(missing.len()) as u64);
    missing.extend(*next_seq..*next_seq + tracked);
    result.lost += gap - tracked;
    *next_seq = seq + 1;
}

/// Connects and subscribes every subscriber of `assignments` (one connection
/// each), then reads them all with one mio poll loop and checks every
/// delivery: each channel's seqs arrive once, in order, from the head at
/// subscribe time to the last acknowledged seq.
fn subscriber_pool(
    target: &Target,
    channels: &[String],
    assignments: Vec<Vec<usize>>,
    epoch: Instant,
    targets: &Mutex<Option<Vec<u64>>>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<SubscriberResult> {
    let setup = || -> Result<(mio::Poll, Vec<SubscriberConn>)> {
        let poll = mio::Poll::new().context("cannot create a poll")?;
        let mut conns = Vec::new();
        let address = target.address;
        let connect_error = || format!("subscriber cannot connect to {address}");
        for (index, mine) in assignments.iter().enumerate() {
            let mut next = HashMap::new();
            let (mut wire, buffer) = match &target.tls {
                None => {
                    let mut client =
                        Client::connect(address, "bench-sub", "").with_context(connect_error)?;
                    for &channel in mine {
                        let head = client.subscribe(&channels[channel], SubscribeStart::Live)?;
                        next.insert(channels[channel].clone(), (channel, head + 1));
                    }
                    let (_writer, reader) = client.into_split();
                    let (stream, buffer, pending) = reader.into_parts();
                    if !pending.is_empty() {
                        bail!("a delivery arrived before the run started");
                    }
                    stream.set_nonblocking(true)?;
                    (Wire::Plain(mio::net::TcpStream::from_std(stream)), buffer)
                }
                Some(tls) => {
                    let mut setup = tls
                        .connect(address, "bench-sub")
                        .with_context(connect_error)?;
                    for &channel in mine {
                        let subscribe = Frame::Subscribe {
                            channel: channels[channel].clone(),
                            start: SubscribeStart::Live,
                        };
                        let Frame::Subscribed { head_seq } = setup.call(subscribe)? else {
                            bail!("the server did not answer Subscribe with Subscribed");
                        };
                        next.insert(channels[channel].clone(), (channel, head_seq + 1));
                    }
                    setup.into_wire()?
                }
            };
            poll.registry()
                .register(wire.socket(), mio::Token(index), mio::Interest::READABLE)?;
            conns.push(SubscriberConn {
                wire,
                buffer,
                next,
                missing: HashMap::new(),
                open: true,
            });
        }
        Ok((poll, conns))
    };
    let (mut poll, mut conns) = match setup() {
        Ok(state) => {
            let _ = ready.send(Ok(()));
            state
        }
        Err(error) => {
            let _ = ready.send(Err(anyhow::anyhow!("{error:#}")));
            return Err(error);
        }
    };
    let mut result = SubscriberResult::default();
    let mut from_intended = histogram();
    let mut from_send = histogram();
    let mut events = mio::Events::with_capacity(1024);
    let mut last_progress = Instant::now();
    loop {
        // Once publishers are done, stop when every channel reached its last acked seq.
        if let Some(targets) = targets.lock().expect("targets lock").as_ref() {
            let complete = conns.iter().all(|conn| {
                conn.next.values().all(|(channel, next_seq)| {
                    *next_seq > targets.get(*channel).copied().unwrap_or(0)
                })
            });
            if complete {
                break;
            }
            if last_progress.elapsed() > DRAIN_TIMEOUT {
                for conn in &conns {
                    for (channel, next_seq) in conn.next.values() {
                        let target = targets.get(*channel).copied().unwrap_or(0);
                        result.lost += (target + 1).saturating_sub(*next_seq);
                    }
                }
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if !conn.open {
                continue;
            }
            // Read everything available (edge-triggered).
            if conn.wire.read_available(&mut conn.buffer)? == ReadOutcome::Closed {
                conn.open = false;
                bail!("the server closed a subscriber connection");
            }
            let now_ns = epoch.elapsed().as_nanos() as u64;
            while let Some(envelope) = bench_tls::next_envelope(&mut conn.buffer)? {
                let (channel, messages) = match envelope.frame {
                    Frame::Deliver { channel, messages } => (channel, messages),
                    Frame::Error { message, .. } => {
                        bail!("subscriber got an error from the server: {message}")
                    }
                    _ => continue,
                };
                last_progress = Instant::now();
                let Some((_, next_seq)) = conn.next.get_mut(&channel) else {
                    continue;
                };
                for message in &messages {
                    result.delivered += 1;
                    result.last_delivery_ns = now_ns;
                    if message.seq == *next_seq {
                        *next_seq += 1;
                    } else {
                        let missing = conn.missing.entry(channel.clone()).or_default();
                        account_out_of_turn(message.seq, next_seq, missing, &mut result);
                    }
                    if let Some(intended_ns) = intended_ns_of(&message.body) {
                        from_intended.saturating_record(now_ns.saturating_sub(intended_ns) / 1000);
                    }
                    if let Some(sent_ns) = sent_ns_of(&message.body) {
                        from_send.saturating_record(now_ns.saturating_sub(sent_ns) / 1000);
                    }
                }
            }
        }
    }
    // Skipped and never come.
    result.lost += conns
        .iter()
        .flat_map(|conn| conn.missing.values())
        .map(|missing| missing.len() as u64)
        .sum::<u64>();
    result.latency_us = Some(from_intended);
    result.from_send_us = Some(from_send);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's messages are shared out exactly: the first publishers take
    /// one more; a rate that comes to less than one message is refused.
    #[test]
    fn publisher_shares_add_up_to_the_run() {
        assert_eq!(publisher_shares(10, 1, 4).unwrap(), [3, 3, 2, 2]);
        assert_eq!(publisher_shares(1, 1, 4).unwrap(), [1, 0, 0, 0]);
        assert_eq!(publisher_shares(20_000, 10, 4).unwrap(), [50_000; 4]);
        assert!(publisher_shares(0, 10, 4).is_err());
    }

    /// The counts of one channel's deliveries in `seqs` (expecting 1, 2, …),
    /// as the subscriber pool takes them, with what is still missing lost.
    fn counts(seqs: &[u64]) -> (u64, u64, u64) {
        let mut result = SubscriberResult::default();
        let (mut next_seq, mut missing) = (1, std::collections::BTreeSet::new());
        for &seq in seqs {
            if seq == next_seq {
                next_seq += 1;
            } else {
                account_out_of_turn(seq, &mut next_seq, &mut missing, &mut result);
            }
        }
        result.lost += missing.len() as u64;
        (result.lost, result.duplicated, result.out_of_order)
    }

    #[test]
    fn deliveries_are_counted_lost_duplicated_or_late_as_they_are() {
        assert_eq!(counts(&[1, 2, 3]), (0, 0, 0));
        // A swap: nothing lost or twice, one late.
        assert_eq!(counts(&[1, 3, 2, 4]), (0, 0, 1));
        // A gap that never fills: lost, not out of order.
        assert_eq!(counts(&[1, 2, 5, 6]), (2, 0, 0));
        // The same message twice.
        assert_eq!(counts(&[1, 2, 2, 3]), (0, 1, 0));
        // Late, then again.
        assert_eq!(counts(&[2, 1, 1]), (0, 1, 1));
    }
}
