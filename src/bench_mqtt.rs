//! `starling bench --mqtt`: the open-loop load generator speaking MQTT 3.1.1
//! over plain TCP for publishers and subscribers, so the same tool can be
//! pointed at any broker (Starling's MQTT listener, Mosquitto, nats-server).
//!
//! Message k of publisher p goes to topic (p + k) mod topics and is due at
//! `start + k / rate_each`; its payload carries the publisher, k, the
//! intended and the actual send time (MQTT has no seq, so loss, duplicates
//! and order are checked per publisher and topic from k). At QoS 1 a
//! publisher keeps at most `--window` unacknowledged publishes and times
//! its PUBACKs; subscribers PUBACK what they receive.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use starling_protocol::mqtt::{
    decode, Connect, Decoded, MqttLimits, Packet, Properties, ProtocolVersion, Publish,
    PublishResponse, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

use crate::bench::{histogram, publisher_shares, spawn, SubscriberResult};

const V311: ProtocolVersion = ProtocolVersion::V311;
const STAMP_BYTES: usize = 32;
/// Publishes encoded into one write when the publisher is behind schedule.
const WRITE_BATCH: usize = 64;
/// How long to wait for the last PUBACKs and deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A subscriber that has heard nothing for this long after the publishers
/// finished stops waiting (at QoS 0 a lost message never comes).
const QUIET_TIMEOUT: Duration = Duration::from_secs(3);

/// What the MQTT bench needs from `starling bench`'s options.
pub struct MqttBench {
    pub server: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub size: usize,
    pub qos: u8,
    pub rate: u64,
    pub duration_s: u64,
    pub window: usize,
    pub prefix: String,
    pub username: Option<String>,
    /// Subscribers connect without clean session.
    pub persistent_subscribers: bool,
    /// Write every delivery's send time and latencies here.
    pub latency_log: Option<std::path::PathBuf>,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A blocking MQTT 3.1.1 connection with a read buffer.
struct Conn {
    stream: TcpStream,
    buffer: BytesMut,
    limits: MqttLimits,
}

impl Conn {
    fn open(
        address: SocketAddr,
        client_id: &str,
        username: Option<&str>,
        clean_start: bool,
    ) -> Result<Conn> {
        let stream =
            TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buffer: BytesMut::with_capacity(64 * 1024),
            limits: MqttLimits::default(),
        };
        conn.send(&Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start,
            keep_alive_s: 0,
            client_id: client_id.into(),
            will: None,
            username: username.map(str::to_owned),
            password: None,
            properties: Properties::default(),
        })))?;
        conn.stream
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        match conn.next()? {
            Some(Packet::ConnAck(ack)) if ack.reason_code == ReasonCode::Success => Ok(conn),
            other => bail!("{client_id}: expected a successful CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut out = BytesMut::with_capacity(packet.encoded_len(V311));
        packet.encode(V311, &mut out);
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// The next packet; `None` when the read timed out.
    fn next(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(packet) = self.decoded()? {
                return Ok(Some(packet));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn decoded(&mut self) -> Result<Option<Packet>> {
        match decode(&self.buffer, V311, &self.limits) {
            Ok(Decoded::Complete { packet, used }) => {
                let _ = self.buffer.split_to(used);
                Ok(Some(packet))
            }
            Ok(Decoded::NeedMore { .. }) => Ok(None),
            Err(e) => bail!("undecodable packet from the server: {e}"),
        }
    }
}

fn stamp(publisher: u64, index: u64, intended_ns: u64, sent_ns: u64, size: usize) -> Bytes {
    let mut body = BytesMut::with_capacity(size);
    body.put_u64_le(publisher);
    body.put_u64_le(index);
    body.put_u64_le(intended_ns);
    body.put_u64_le(sent_ns);
    body.resize(size, b'x');
    body.freeze()
}

/// Writes `--latency-log`: one `intended_ms,latency_us,from_send_us` line
/// per delivery, by intended send time.
fn write_latency_log(
    path: &std::path::Path,
    samples: &mut [(u64, u64, u64)],
    start_ns: u64,
) -> Result<()> {
    samples.sort_unstable();
    let mut text = String::with_capacity(samples.len() * 24 + 40);
    text.push_str("intended_ms,latency_us,from_send_us\n");
    for (intended_ns, latency_us, from_send_us) in samples.iter() {
        let intended_ms = intended_ns.saturating_sub(start_ns) as f64 / 1e6;
        text.push_str(&format!("{intended_ms:.3},{latency_us},{from_send_us}\n"));
    }
    std::fs::write(path, text)
        .with_context(|| format!("cannot write --latency-log {}", path.display()))
}

fn field(body: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
}

#[derive(Default)]
struct PublisherResult {
    sent: u64,
    acked: u64,
    errors: u64,
    latency_us: Option<Histogram<u64>>,
}

/// How many of publisher p's first `sent` messages went to `topic`.
fn expected(p: usize, sent: u64, topic: usize, topics: usize) -> u64 {
    // Message k goes to (p + k) mod topics: the first k with that topic is
    // (topic - p) mod topics, then every `topics`-th.
    let first = ((topic + topics - p % topics) % topics) as u64;
    if sent <= first {
        0
    } else {
        (sent - first).div_ceil(topics as u64)
    }
}

pub fn run(bench: MqttBench) -> Result<()> {
    if bench.size < STAMP_BYTES {
        bail!("--size must be at least {STAMP_BYTES} bytes (the latency stamp)");
    }
    if bench.publishers == 0 || bench.topics == 0 || bench.rate == 0 {
        bail!("--publishers, --topics and --rate must be at least 1");
    }
    let qos = match bench.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => bail!("--qos must be 0 or 1"),
    };
    let address = bench
        .mqtt_address()
        .with_context(|| format!("--mqtt-server {:?} is not an address", bench.server))?;
    crate::bench_ws::raise_open_file_limit((bench.subscribers + 2 * bench.publishers + 64) as u64)?;
    let run_id = format!("{}-{}", bench.prefix, std::process::id());
    let topics: Arc<Vec<String>> =
        Arc::new((0..bench.topics).map(|t| format!("{run_id}/{t}")).collect());
    let epoch = Instant::now();
    // Sent count per publisher, once the publishers are done.
    let targets: Arc<Mutex<Option<Vec<u64>>>> = Arc::new(Mutex::new(None));

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let mut subscriber_threads = Vec::new();
    for i in 0..bench.subscribers {
        let topic = i % bench.topics;
        let topics = topics.clone();
        let targets = targets.clone();
        let ready = ready_tx.clone();
        let client_id = format!("{run_id}-s{i}");
        let username = bench.username.clone();
        let n_topics = bench.topics;
        let clean_start = !bench.persistent_subscribers;
        let keep_samples = bench.latency_log.is_some();
        let handle = spawn(format!("mqtt-sub-{i}"), move || {
            subscriber(
                address,
                &client_id,
                username.as_deref(),
                clean_start,
                topic,
                &topics,
                qos,
                n_topics,
                epoch,
                &targets,
                ready,
                keep_samples,
            )
        })?;
        subscriber_threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..subscriber_threads.len() {
        ready_rx
            .recv()
            .context("a subscriber thread died before subscribing")??;
    }

    // The run's messages shared out exactly (as the native bench does).
    let shares = publisher_shares(bench.rate, bench.duration_s, bench.publishers)?;
    let start_ns = now_ns(epoch) + 50_000_000;
    let mut publisher_threads = Vec::new();
    for (p, count) in shares.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let rate_each = count as f64 / bench.duration_s.max(1) as f64;
        let topics = topics.clone();
        let client_id = format!("{run_id}-p{p}");
        let username = bench.username.clone();
        let (size, duration_s, window) = (bench.size, bench.duration_s, bench.window);
        let handle = spawn(format!("mqtt-pub-{p}"), move || {
            publisher(
                address,
                &client_id,
                username.as_deref(),
                p,
                &topics,
                qos,
                size,
                rate_each,
                duration_s,
                window,
                epoch,
                start_ns,
            )
        })?;
        publisher_threads.push(handle);
    }
    let mut published = PublisherResult {
        latency_us: Some(histogram()),
        ..PublisherResult::default()
    };
    let mut sent_per_publisher = Vec::new();
    for handle in publisher_threads {
        let result = handle.join().expect("publisher thread panicked")?;
        published.sent += result.sent;
        published.acked += result.acked;
        published.errors += result.errors;
        sent_per_publisher.push(result.sent);
        if let (Some(all), Some(one)) = (published.latency_us.as_mut(), result.latency_us) {
            all.add(one).expect("same histogram bounds");
        }
    }
    let publish_elapsed = (now_ns(epoch) - start_ns) as f64 / 1e9;
    *targets.lock().expect("targets lock") = Some(sent_per_publisher);

    let mut delivered = SubscriberResult {
        latency_us: Some(histogram()),
        from_send_us: Some(histogram()),
        samples: bench.latency_log.as_ref().map(|_| Vec::new()),
        ..SubscriberResult::default()
    };
    for handle in subscriber_threads {
        delivered.absorb(handle.join().expect("subscriber thread panicked")?);
    }
    if let (Some(path), Some(samples)) = (&bench.latency_log, delivered.samples.as_mut()) {
        write_latency_log(path, samples, start_ns)?;
    }
    let delivery_window_s = delivered.last_delivery_ns.saturating_sub(start_ns) as f64 / 1e9;
    let ack_latency = published.latency_us.expect("set above");
    let delivery_latency = delivered.latency_us.expect("set above");
    let delivery_from_send = delivered.from_send_us.expect("set above");
    let ok = published.errors == 0
        && (qos == QoS::AtMostOnce || published.acked == published.sent)
        && delivered.lost == 0
        && delivered.duplicated == 0
        && delivered.out_of_order == 0;
    let quantiles = |h: &Histogram<u64>| {
        if h.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::json!({
            "p50": h.value_at_quantile(0.50),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        })
    };
    eprintln!(
        "mqtt qos {}: published {} acked {}; delivered {} ({:.0}/s; {:.0}/s up to the last delivery); delivery p50 {} us p99 {} us; lost {} duplicated {} out of order {}",
        bench.qos,
        published.sent,
        published.acked,
        delivered.delivered,
        delivered.delivered as f64 / publish_elapsed,
        delivered.delivered as f64 / delivery_window_s,
        delivery_latency.value_at_quantile(0.5),
        delivery_latency.value_at_quantile(0.99),
        delivered.lost,
        delivered.duplicated,
        delivered.out_of_order,
    );
    let summary = serde_json::json!({
        "tool": "starling-bench",
        "protocol": "mqtt-3.1.1",
        "server": bench.server,
        "qos": bench.qos,
        "publishers": bench.publishers,
        "subscribers": bench.subscribers,
        "topics": bench.topics,
        "size": bench.size,
        "rate_target": bench.rate,
        "window": bench.window,
        "publish_elapsed_s": publish_elapsed,
        "sent": published.sent,
        // Over the time publishing took (more than the run's duration
        // when the broker could not keep up).
        "sent_per_s": published.sent as f64 / publish_elapsed.max(bench.duration_s as f64),
        "acked": if qos == QoS::AtMostOnce { serde_json::Value::Null } else { published.acked.into() },
        "publish_errors": published.errors,
        "delivered": delivered.delivered,
        // From the first intended send to the last delivery read.
        "delivery_window_s": delivery_window_s,
        "delivered_per_s": delivered.delivered as f64 / delivery_window_s,
        "ack_latency_us": quantiles(&ack_latency),
        "delivery_latency_us": quantiles(&delivery_latency),
        "delivery_latency_from_send_us": quantiles(&delivery_from_send),
        "lost": delivered.lost,
        "duplicated": delivered.duplicated,
        "out_of_order": delivered.out_of_order,
        "ok": ok,
    });
    println!("{summary}");
    if !ok {
        bail!("the run found errors, losses, duplicates or reordering (see the summary)");
    }
    Ok(())
}

impl MqttBench {
    fn mqtt_address(&self) -> Result<SocketAddr> {
        self.server.to_socket_addrs()?.next().context("no address")
    }
}

#[allow(clippy::too_many_arguments)]
fn publisher(
    address: SocketAddr,
    client_id: &str,
    username: Option<&str>,
    p: usize,
    topics: &[String],
    qos: QoS,
    size: usize,
    rate_each: f64,
    duration_s: u64,
    window: usize,
    epoch: Instant,
    start_ns: u64,
) -> Result<PublisherResult> {
    let conn = Conn::open(address, client_id, username, true)?;
    let mut writer = conn.stream.try_clone()?;
    // A broker that stops reading ends the run with an error, not a
    // publisher blocked in a write for good.
    writer.set_write_timeout(Some(DRAIN_TIMEOUT))?;
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Intended send time of the publish in flight under each packet id.
    let in_flight: Arc<Vec<AtomicU64>> = Arc::new((0..65_536).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicU64::new(0));
    let reader = if qos == QoS::AtLeastOnce {
        let (acked, errors, in_flight, done) = (
            acked.clone(),
            errors.clone(),
            in_flight.clone(),
            done.clone(),
        );
        let mut conn = conn;
        conn.stream
            .set_read_timeout(Some(Duration::from_millis(20)))?;
        Some(spawn(format!("mqtt-pub-acks-{p}"), move || {
            let mut latency = histogram();
            while done.load(Ordering::Acquire) == 0 {
                match conn.next()? {
                    Some(Packet::PubAck(ack)) => {
                        let intended =
                            in_flight[usize::from(ack.packet_id)].load(Ordering::Acquire);
                        let now = now_ns(epoch);
                        latency
                            .record((now.saturating_sub(intended) / 1000).max(1))
                            .ok();
                        acked.fetch_add(1, Ordering::AcqRel);
                    }
                    Some(other) => {
                        log::warn!("publisher got an unexpected {other:?}");
                        errors.fetch_add(1, Ordering::AcqRel);
                    }
                    None => {}
                }
            }
            Ok(latency)
        })?)
    } else {
        None
    };
    let interval_ns = 1e9 / rate_each;
    // A fixed count, as the native bench: every message due in the run is
    // sent, however late (ending on the clock left out the ones that fell
    // behind, the worst latencies: coordinated omission).
    let total = (rate_each * duration_s as f64).round() as u64;
    let mut sent = 0u64;
    let mut out = BytesMut::with_capacity(WRITE_BATCH * (size + 64));
    let (mut last_acked, mut last_progress) = (0u64, Instant::now());
    while sent < total {
        let now = now_ns(epoch);
        if now < start_ns {
            std::thread::sleep(Duration::from_nanos(start_ns - now));
            continue;
        }
        let due = (((now - start_ns) as f64 / interval_ns) as u64 + 1).min(total);
        if sent >= due {
            let next = start_ns + (sent as f64 * interval_ns) as u64;
            std::thread::sleep(Duration::from_nanos(
                next.saturating_sub(now).min(1_000_000),
            ));
            continue;
        }
        let mut batch = 0;
        while sent < due && batch < WRITE_BATCH {
            if qos == QoS::AtLeastOnce && sent - acked.load(Ordering::Acquire) >= window as u64 {
                break;
            }
            let intended = start_ns + (sent as f64 * interval_ns) as u64;
            let topic = (p + sent as usize) % topics.len();
            let packet_id = if qos == QoS::AtLeastOnce {
                let id = (sent % 65_535 + 1) as u16;
                in_flight[usize::from(id)].store(intended, Ordering::Release);
                Some(id)
            } else {
                None
            };
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: topics[topic].clone(),
                packet_id,
                properties: Properties::default(),
                payload: stamp(p as u64, sent, intended, now_ns(epoch), size),
            })
            .encode(V311, &mut out);
            sent += 1;
            batch += 1;
        }
        if batch == 0 {
            // The window is full: wait for PUBACKs (the wait counts in
            // latency), unless none came for the drain timeout.
            let now_acked = acked.load(Ordering::Acquire);
            if now_acked != last_acked {
                (last_acked, last_progress) = (now_acked, Instant::now());
            } else if last_progress.elapsed() > DRAIN_TIMEOUT {
                errors.fetch_add(1, Ordering::AcqRel);
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        writer.write_all(&out)?;
        out.clear();
    }
    let mut latency_us = None;
    if let Some(reader) = reader {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while acked.load(Ordering::Acquire) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        done.store(1, Ordering::Release);
        latency_us = Some(reader.join().expect("ack reader panicked")?);
    }
    let mut disconnect = BytesMut::new();
    Packet::Disconnect(Default::default()).encode(V311, &mut disconnect);
    let _ = writer.write_all(&disconnect);
    Ok(PublisherResult {
        sent,
        acked: acked.load(Ordering::Acquire),
        errors: errors.load(Ordering::Acquire),
        latency_us,
    })
}

#[allow(clippy::too_many_arguments)]
fn subscriber(
    address: SocketAddr,
    client_id: &str,
    username: Option<&str>,
    clean_start: bool,
    topic: usize,
    topics: &[String],
    qos: QoS,
    n_topics: usize,
    epoch: Instant,
    targets: &Mutex<Option<Vec<u64>>>,
    ready: std::sync::mpsc::Sender<Result<()>>,
    keep_samples: bool,
) -> Result<SubscriberResult> {
    let setup = (|| -> Result<Conn> {
        let mut conn = Conn::open(address, client_id, username, clean_start)?;
        conn.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                topics[topic].clone(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: Properties::default(),
        }))?;
        match conn.next()? {
            Some(Packet::SubAck(_)) => Ok(conn),
            other => bail!("{client_id}: expected SUBACK, got {other:?}"),
        }
    })();
    let mut conn = match setup {
        Ok(conn) => {
            let _ = ready.send(Ok(()));
            conn
        }
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
            return Err(e);
        }
    };
    conn.stream
        .set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut result = SubscriberResult {
        latency_us: Some(histogram()),
        from_send_us: Some(histogram()),
        samples: keep_samples.then(Vec::new),
        ..SubscriberResult::default()
    };
    // Per publisher: seen bits by message index, and the highest index seen.
    let mut seen: HashMap<u64, (Vec<u64>, u64, u64)> = HashMap::new();
    let mut last_heard = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let mut expected_total: Option<u64> = None;
    let mut acks = BytesMut::new();
    loop {
        if expected_total.is_none() {
            if let Some(sent) = targets.lock().expect("targets lock").as_ref() {
                expected_total = Some(
                    sent.iter()
                        .enumerate()
                        .map(|(p, &n)| expected(p, n, topic, n_topics))
                        .sum(),
                );
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                last_heard = Instant::now();
            }
        }
        if let Some(total) = expected_total {
            let distinct: u64 = seen.values().map(|(_, _, count)| *count).sum();
            if distinct >= total
                || drain_deadline.is_some_and(|d| Instant::now() >= d)
                || last_heard.elapsed() >= QUIET_TIMEOUT
            {
                break;
            }
        }
        let packet = match conn.next()? {
            Some(packet) => packet,
            None => {
                if !acks.is_empty() {
                    conn.stream.write_all(&acks)?;
                    acks.clear();
                }
                continue;
            }
        };
        let Packet::Publish(publish) = packet else {
            continue;
        };
        let now = now_ns(epoch);
        last_heard = Instant::now();
        if let Some(id) = publish.packet_id {
            Packet::PubAck(PublishResponse::success(id)).encode(V311, &mut acks);
            // Write the PUBACKs of what has been read so far (one write per
            // read buffer's worth).
            if conn.buffer.len() < 2 || acks.len() > 4096 {
                conn.stream.write_all(&acks)?;
                acks.clear();
            }
        }
        let body = &publish.payload[..];
        if body.len() < STAMP_BYTES {
            continue;
        }
        let (p, k) = (field(body, 0), field(body, 8));
        result.delivered += 1;
        result.last_delivery_ns = now;
        let latency_us = (now.saturating_sub(field(body, 16)) / 1000).max(1);
        let from_send_us = (now.saturating_sub(field(body, 24)) / 1000).max(1);
        if let Some(h) = result.latency_us.as_mut() {
            h.record(latency_us).ok();
        }
        if let Some(h) = result.from_send_us.as_mut() {
            h.record(from_send_us).ok();
        }
        if let Some(samples) = result.samples.as_mut() {
            samples.push((field(body, 16), latency_us, from_send_us));
        }
        let (bits, highest, count) = seen.entry(p).or_insert((Vec::new(), 0, 0));
        let word = (k / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (k % 64);
        if bits[word] & bit != 0 {
            result.duplicated += 1;
            continue;
        }
        bits[word] |= bit;
        *count += 1;
        if *count > 1 && k < *highest {
            result.out_of_order += 1;
        }
        *highest = (*highest).max(k);
    }
    if !acks.is_empty() {
        let _ = conn.stream.write_all(&acks);
    }
    let distinct: u64 = seen.values().map(|(_, _, count)| *count).sum();
    result.lost = expected_total.unwrap_or(0).saturating_sub(distinct);
    let _ = conn.send(&Packet::Disconnect(Default::default()));
    Ok(result)
}

/// `starling bench idle --mqtt-tcp N`: N idle MQTT 3.1.1 connections over
/// plain TCP (CONNECT with keep-alive 0, SUBSCRIBE one topic), held open by
/// one thread; reports the server's resident memory per connection.
#[allow(clippy::too_many_arguments)]
pub fn idle_tcp(
    server: &str,
    count: usize,
    topics: usize,
    prefix: &str,
    username: Option<&str>,
    server_pid: Option<u32>,
    settle_s: u64,
    hold_s: u64,
) -> Result<()> {
    let address: SocketAddr = server
        .to_socket_addrs()
        .with_context(|| format!("--mqtt-server {server:?} is not an address"))?
        .next()
        .context("no address")?;
    crate::bench_ws::raise_open_file_limit(count as u64 + 64)?;
    let topics = topics.max(1);
    let before = server_pid.map(crate::bench_ws::rss_kib).transpose()?;
    let started = Instant::now();
    let pid = std::process::id();
    let mut conns = Vec::with_capacity(count);
    for index in 0..count {
        let client_id = format!("{prefix}-{pid}-{index}");
        let mut conn = Conn::open(address, &client_id, username, true)?;
        conn.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                format!("{prefix}/{}", index % topics),
                SubscriptionOptions::default(),
            )],
            properties: Properties::default(),
        }))?;
        match conn.next()? {
            Some(Packet::SubAck(_)) => {}
            other => bail!("{client_id}: expected SUBACK, got {other:?}"),
        }
        conns.push(conn);
    }
    let open_s = started.elapsed().as_secs_f64();
    eprintln!("{count} MQTT/TCP connections open in {open_s:.1} s; settling for {settle_s} s");
    std::thread::sleep(Duration::from_secs(settle_s));
    let after = server_pid.map(crate::bench_ws::rss_kib).transpose()?;
    let per_connection = |field: fn(&(u64, u64)) -> u64| match (&before, &after) {
        (Some(before), Some(after)) => {
            serde_json::json!((field(after) as f64 - field(before) as f64) * 1024.0 / count as f64)
        }
        _ => serde_json::Value::Null,
    };
    std::thread::sleep(Duration::from_secs(hold_s));
    // A connection the server closed reads as end of stream.
    let mut dropped = 0;
    for conn in &mut conns {
        conn.stream.set_nonblocking(true)?;
        let mut byte = [0u8; 1];
        match conn.stream.read(&mut byte) {
            Ok(0) => dropped += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => {}
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "tool": "starling-bench-idle",
            "mqtt_tcp": count,
            "server": server,
            "open_s": open_s,
            "server_pid": server_pid,
            "rss_before_kib": before.map(|r| r.0),
            "rss_after_kib": after.map(|r| r.0),
            "rss_anon_before_kib": before.map(|r| r.1),
            "rss_anon_after_kib": after.map(|r| r.1),
            "bytes_per_connection": per_connection(|r| r.0),
            "anon_bytes_per_connection": per_connection(|r| r.1),
            "held_s": hold_s,
            "dropped": dropped,
            "ok": dropped == 0,
        })
    );
    Ok(())
}
