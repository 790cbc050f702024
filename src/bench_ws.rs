//! WebSocket clients of `starling bench`: subscribers that speak the JSON
//! chat protocol (`--subscriber-protocol websocket`), checked like the
//! native ones, and `starling bench idle`, which holds many idle WebSocket
//! connections open and reports the server's resident memory per connection.
//!
//! Each connection does its HTTP handshake with tungstenite's client on a
//! blocking socket; the socket then turns non-blocking and a
//! [`WebSocketContext`] is driven from the pool thread's mio poll loop, so one
//! thread holds thousands of connections. Connections open in batches: a
//! batch's handshakes, sign-ins and subscriptions are answered before the
//! next batch starts, so neither the accept backlog nor the server's queues
//! see the whole crowd at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tungstenite::client::IntoClientRequest;
use tungstenite::error::Error as WsError;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::bench::{histogram, intended_ns_of, sent_ns_of, spawn, SubscriberResult, DRAIN_TIMEOUT};

/// Bytes tungstenite reads from a socket at a time, per connection.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// How long a handshake or a batch's answers may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Base64 characters that hold the 32-byte latency stamp (11 groups of 4).
const STAMP_BASE64_CHARS: usize = 44;
/// MQTT keep-alive of the idle MQTT clients; they send PINGREQ at half of it.
const MQTT_KEEP_ALIVE_S: u16 = 60;
/// Pause before resending a sign-in or subscription the server answered
/// with a temporary error, and how often one request may be retried.
const RETRY_DELAY: Duration = Duration::from_millis(200);
const RETRIES_MAX: u32 = 300;

/// Where WebSocket clients connect.
#[derive(Clone, Debug)]
pub(crate) struct WsTarget {
    url: String,
    address: SocketAddr,
    /// Sources to bind client sockets to, round-robin by connection index
    /// (empty: let the kernel choose).
    sources: Arc<Vec<Ipv4Addr>>,
}

impl WsTarget {
    /// `url` is `ws://HOST:PORT/PATH`. With `source_addresses` > 0, client
    /// sockets bind to 127.0.0.2, 127.0.0.3, … round-robin: each source
    /// address has its own ~28,000 ephemeral ports towards one server port.
    pub(crate) fn new(url: &str, source_addresses: usize) -> Result<WsTarget> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url:?} is not a ws:// URL"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let address = authority
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority:?} of {url:?}"))?
            .next()
            .with_context(|| format!("{authority:?} resolves to no address"))?;
        if source_addresses > 0 && !address.ip().is_loopback() {
            bail!("--source-addresses binds to 127.0.0.x, so the server must be on loopback");
        }
        if source_addresses > 250 {
            bail!("--source-addresses is at most 250 (127.0.0.2 to 127.0.0.251)");
        }
        let sources = (0..source_addresses)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        Ok(WsTarget {
            url: url.to_string(),
            address,
            sources: Arc::new(sources),
        })
    }

    /// Connects connection number `index` and does the WebSocket handshake
    /// (blocking); returns the socket, non-blocking, ready for a
    /// [`WebSocketContext`].
    fn connect(&self, index: usize, subprotocol: Option<&str>) -> Result<TcpStream> {
        let source = (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
        let stream = match source {
            None => TcpStream::connect(self.address),
            Some(ip) => connect_from(ip, self.address),
        }
        .with_context(|| match source {
            Some(ip) => format!("cannot connect to {} from {ip}", self.address),
            None => format!("cannot connect to {}", self.address),
        })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
        stream.set_write_timeout(Some(SETUP_TIMEOUT))?;
        let mut request = self.url.as_str().into_client_request()?;
        if let Some(subprotocol) = subprotocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", subprotocol.parse()?);
        }
        let (socket, _response) =
            tungstenite::client::client_with_config(request, stream, Some(ws_config()))
                .map_err(|error| match error {
                    HandshakeError::Failure(error) => anyhow!(error),
                    HandshakeError::Interrupted(_) => anyhow!("the handshake did not finish"),
                })
                .with_context(|| format!("WebSocket handshake with {} failed", self.url))?;
        // The server sends nothing after its 101 until the client speaks, so
        // tungstenite has no bytes of ours buffered.
        let stream = socket.into_inner();
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

/// A blocking connection from a chosen source address (std's `connect`
/// cannot bind first).
fn connect_from(source: Ipv4Addr, address: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    socket.connect(&address.into())?;
    Ok(socket.into())
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
}

/// Raises this process's open-file limit to its hard limit and checks that
/// `needed` descriptors fit.
pub(crate) fn raise_open_file_limit(needed: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            bail!("setrlimit(RLIMIT_NOFILE): {}", io::Error::last_os_error());
        }
        eprintln!(
            "open files: soft limit raised from {} to the hard limit {}",
            limit.rlim_cur, limit.rlim_max
        );
    }
    let available: u64 = limit.rlim_max;
    if available < needed {
        bail!(
            "this run needs about {needed} open files but the hard limit (RLIMIT_NOFILE) is \
             {available}; raise it (as root: `ulimit -Hn`, or LimitNOFILE= for a service) or open \
             fewer connections"
        );
    }
    Ok(available)
}

/// What a connection speaks after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    Chat,
    Mqtt,
}

/// One client WebSocket of a pool.
struct WsConn {
    stream: mio::net::TcpStream,
    ws: WebSocketContext,
    speaks: Speaks,
    open: bool,
    /// Answers still due to the requests sent after the handshake.
    awaiting: usize,
    /// Chat: subscribe request id → channel index, until answered.
    subscribing: HashMap<u64, usize>,
    /// Chat: channel name → (channel index, next expected seq).
    next: HashMap<String, (usize, u64)>,
    /// Chat: channel name → seqs skipped and not come yet
    /// (`bench::account_out_of_turn`).
    missing: HashMap<String, std::collections::BTreeSet<u64>>,
    /// MQTT: bytes of an incomplete packet.
    mqtt_partial: Vec<u8>,
    /// Chat: requests sent during setup, by id, to resend after a temporary
    /// error (the server's chat workers refuse work while their queues are
    /// full).
    requests: HashMap<u64, String>,
    /// Chat: ids to resend at `retry_at`, and how many resends so far.
    retry: Vec<u64>,
    retry_at: Option<Instant>,
    retries: u32,
}

impl WsConn {
    fn new(stream: TcpStream, speaks: Speaks) -> WsConn {
        WsConn {
            stream: mio::net::TcpStream::from_std(stream),
            ws: WebSocketContext::new(Role::Client, Some(ws_config())),
            speaks,
            open: true,
            awaiting: 0,
            subscribing: HashMap::new(),
            next: HashMap::new(),
            missing: HashMap::new(),
            mqtt_partial: Vec::new(),
            requests: HashMap::new(),
            retry: Vec::new(),
            retry_at: None,
            retries: 0,
        }
    }

    /// Queues a message and writes what the socket takes; the rest goes out
    /// when it is writable.
    fn send(&mut self, message: Message) -> Result<()> {
        match self.ws.write(&mut self.stream, message) {
            Ok(()) => Ok(()),
            Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self.ws.flush(&mut self.stream) {
            Ok(()) => Ok(()),
            Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Reads every message available (answering pings on the way) into
    /// `messages`. Returns why the connection closed, if it did.
    fn receive(&mut self, messages: &mut Vec<Message>) -> Option<String> {
        loop {
            match self.ws.read(&mut self.stream) {
                Ok(Message::Close(frame)) => {
                    let _ = self.flush();
                    self.open = false;
                    return Some(match frame {
                        Some(frame) => format!(
                            "the server closed the WebSocket ({}: {})",
                            u16::from(frame.code),
                            frame.reason
                        ),
                        None => "the server closed the WebSocket".to_string(),
                    });
                }
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => messages.push(message),
                Ok(_) => {}
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    return None
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.open = false;
                    return Some(format!("the WebSocket failed: {error}"));
                }
            }
        }
    }

    fn close(&mut self) {
        if self.open {
            let _ = self.ws.close(&mut self.stream, None);
            let _ = self.flush();
            self.open = false;
        }
    }
}

/// A chat message or answer, with only the fields the bench reads.
#[derive(Deserialize)]
struct ChatIncoming<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    push: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<ChatMessage<'a>>,
    #[serde(default)]
    result: Option<ChatResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    seq: u64,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body_base64: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatResult {
    #[serde(default)]
    head_seq: Option<u64>,
}

fn chat_request(id: u64, kind: &str, field: &str, value: &str) -> String {
    serde_json::json!({ "id": id, "type": kind, field: value }).to_string()
}

/// Delivery checks of one subscriber pool thread.
struct Checker {
    result: SubscriberResult,
    from_intended: Histogram<u64>,
    from_send: Histogram<u64>,
    last_progress: Instant,
}

/// Handles one chat text message of `conn`: answers count down
/// `conn.awaiting` (a subscribe answer sets the channel's next expected
/// seq), and with a `checker`, message pushes are checked and timed.
fn on_chat_text(
    conn: &mut WsConn,
    text: &str,
    now_ns: u64,
    checker: Option<&mut Checker>,
) -> Result<()> {
    let incoming: ChatIncoming =
        serde_json::from_str(text).with_context(|| format!("unexpected text frame {text:?}"))?;
    if let Some(id) = incoming.id {
        if let Some(error) = incoming.error {
            let temporary = error.get("temporary") == Some(&serde_json::Value::Bool(true));
            if temporary && conn.requests.contains_key(&id) && conn.retries < RETRIES_MAX {
                conn.retries += 1;
                conn.retry.push(id);
                conn.retry_at = Some(Instant::now() + RETRY_DELAY);
                return Ok(());
            }
            bail!("the server refused request {id}: {error}");
        }
        conn.requests.remove(&id);
        conn.awaiting = conn.awaiting.saturating_sub(1);
        if let Some(channel) = conn.subscribing.remove(&id) {
            let head = incoming.result.and_then(|r| r.head_seq).unwrap_or(0);
            for (index, next) in conn.next.values_mut() {
                if *index == channel {
                    *next = head + 1;
                }
            }
        }
        return Ok(());
    }
    let (Some(checker), Some("message"), Some(channel), Some(message)) = (
        checker,
        incoming.push.as_deref(),
        incoming.channel,
        incoming.message,
    ) else {
        return Ok(());
    };
    let Some((_, next_seq)) = conn.next.get_mut(channel.as_ref()) else {
        return Ok(());
    };
    checker.last_progress = Instant::now();
    let result = &mut checker.result;
    result.delivered += 1;
    result.last_delivery_ns = now_ns;
    if message.seq == *next_seq {
        *next_seq += 1;
    } else {
        let missing = conn.missing.entry(channel.to_string()).or_default();
        crate::bench::account_out_of_turn(message.seq, next_seq, missing, result);
    }
    // Only the stamp at the front of the body is needed.
    let decoded;
    let body: &[u8] = match (&message.text, &message.body_base64) {
        (Some(text), _) => text.as_bytes(),
        (None, Some(base64)) => {
            let prefix = if base64.len() > STAMP_BASE64_CHARS {
                &base64[..STAMP_BASE64_CHARS]
            } else {
                base64.as_ref()
            };
            decoded = data_encoding::BASE64
                .decode(prefix.as_bytes())
                .context("body_base64 is not base64")?;
            &decoded
        }
        (None, None) => &[],
    };
    if let Some(intended_ns) = intended_ns_of(body) {
        checker
            .from_intended
            .saturating_record(now_ns.saturating_sub(intended_ns) / 1000);
    }
    if let Some(sent_ns) = sent_ns_of(body) {
        checker
            .from_send
            .saturating_record(now_ns.saturating_sub(sent_ns) / 1000);
    }
    Ok(())
}

/// Handles MQTT bytes (one binary WebSocket message may hold any part of
/// any number of packets): CONNACK and SUBACK count down `conn.awaiting`.
fn on_mqtt_bytes(conn: &mut WsConn, bytes: &[u8]) -> Result<()> {
    conn.mqtt_partial.extend_from_slice(bytes);
    loop {
        let buffer = &conn.mqtt_partial;
        // Fixed header: type and flags, then a 1–4 byte remaining length.
        let mut length = 0usize;
        let mut header = 1;
        loop {
            let Some(&byte) = buffer.get(header) else {
                return Ok(());
            };
            length |= usize::from(byte & 0x7f) << (7 * (header - 1));
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if header > 4 {
                bail!("malformed MQTT remaining length");
            }
        }
        if buffer.len() < header + length {
            return Ok(());
        }
        let packet_type = buffer[0] >> 4;
        let body = &buffer[header..header + length];
        match packet_type {
            // CONNACK: session present, return code.
            2 => {
                if body.get(1) != Some(&0) {
                    bail!("MQTT CONNACK refused the connection: {body:?}");
                }
                conn.awaiting = conn.awaiting.saturating_sub(1);
            }
            // SUBACK: packet id, then one return code per filter.
            9 => {
                if body.get(2) == Some(&0x80) {
                    bail!("MQTT SUBACK refused the subscription");
                }
                conn.awaiting = conn.awaiting.saturating_sub(1);
            }
            _ => {}
        }
        conn.mqtt_partial.drain(..header + length);
    }
}

fn mqtt_remaining_length(mut length: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
}

fn mqtt_string(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// An MQTT 3.1.1 CONNECT with a clean session.
fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string("MQTT", &mut body);
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&MQTT_KEEP_ALIVE_S.to_be_bytes());
    mqtt_string(client_id, &mut body);
    let mut packet = vec![0x10];
    mqtt_remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(&body);
    packet
}

/// An MQTT SUBSCRIBE to one topic at QoS 0.
fn mqtt_subscribe(packet_id: u16, topic: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    mqtt_string(topic, &mut body);
    body.push(0);
    let mut packet = vec![0x82];
    mqtt_remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(&body);
    packet
}

const MQTT_PINGREQ: [u8; 2] = [0xc0, 0x00];

/// One connection to open: what it speaks, where, and what it says first.
#[derive(Clone, Debug)]
struct ConnSpec {
    /// Index over all connections of the run (source address, names).
    index: usize,
    speaks: Speaks,
    target: WsTarget,
    /// Chat user name, or MQTT client id.
    name: String,
    /// Channels (chat) or topics (MQTT) to subscribe to, with the channel
    /// index they stand for.
    subscriptions: Vec<(usize, String)>,
}

/// Opens `specs` in batches of `batch`, registers each with `poll`, sends
/// the sign-in and subscriptions, and waits for a batch's answers before the
/// next batch.
fn open_all(
    poll: &mut mio::Poll,
    specs: &[ConnSpec],
    batch: usize,
    epoch: Instant,
    mut checker: Option<&mut Checker>,
) -> Result<Vec<WsConn>> {
    let mut conns: Vec<WsConn> = Vec::with_capacity(specs.len());
    let mut events = mio::Events::with_capacity(1024);
    let mut messages = Vec::new();
    for chunk in specs.chunks(batch.max(1)) {
        let first = conns.len();
        for spec in chunk {
            let subprotocol = (spec.speaks == Speaks::Mqtt).then_some("mqtt");
            let stream = spec.target.connect(spec.index, subprotocol)?;
            let mut conn = WsConn::new(stream, spec.speaks);
            poll.registry().register(
                &mut conn.stream,
                mio::Token(conns.len()),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )?;
            match spec.speaks {
                Speaks::Chat => {
                    conn.requests
                        .insert(1, chat_request(1, "connect", "token", &spec.name));
                    for (k, (channel, name)) in spec.subscriptions.iter().enumerate() {
                        let id = 2 + k as u64;
                        conn.subscribing.insert(id, *channel);
                        conn.next.insert(name.clone(), (*channel, 1));
                        conn.requests
                            .insert(id, chat_request(id, "subscribe", "channel", name));
                    }
                    let mut ids: Vec<u64> = conn.requests.keys().copied().collect();
                    ids.sort_unstable();
                    for id in ids {
                        let text = conn.requests[&id].clone();
                        conn.send(Message::text(text))?;
                    }
                }
                Speaks::Mqtt => {
                    conn.send(Message::binary(mqtt_connect(&spec.name)))?;
                    for (k, (_, topic)) in spec.subscriptions.iter().enumerate() {
                        conn.send(Message::binary(mqtt_subscribe(1 + k as u16, topic)))?;
                    }
                }
            }
            conn.awaiting = 1 + spec.subscriptions.len();
            conns.push(conn);
        }
        let mut started = Instant::now();
        let mut awaiting: usize = conns[first..].iter().map(|c| c.awaiting).sum();
        while awaiting > 0 {
            let now = Instant::now();
            for conn in conns[first..].iter_mut() {
                if conn.retry_at.is_some_and(|at| at <= now) {
                    conn.retry_at = None;
                    for id in std::mem::take(&mut conn.retry) {
                        let text = conn.requests[&id].clone();
                        conn.send(Message::text(text))?;
                    }
                }
            }
            let still: usize = conns[first..].iter().map(|c| c.awaiting).sum();
            if still < awaiting {
                awaiting = still;
                started = now;
            }
            if awaiting == 0 {
                break;
            }
            if started.elapsed() > SETUP_TIMEOUT {
                let waiting = conns[first..].iter().filter(|c| c.awaiting > 0).count();
                bail!(
                    "{waiting} connections of a batch still wait for answers to their sign-in or \
                     subscription after {SETUP_TIMEOUT:?} without progress ({} connections \
                     open before them)",
                    first
                );
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            for event in events.iter() {
                let conn = &mut conns[event.token().0];
                service(conn, event, epoch, &mut messages, checker.as_deref_mut())?;
            }
        }
    }
    let retried: u32 = conns.iter().map(|c| c.retries).sum();
    if retried > 0 {
        eprintln!(
            "{retried} sign-ins or subscriptions were resent after a temporary error \
             (\"unavailable\")"
        );
    }
    Ok(conns)
}

/// Handles one readiness event of `conn`.
fn service(
    conn: &mut WsConn,
    event: &mio::event::Event,
    epoch: Instant,
    messages: &mut Vec<Message>,
    mut checker: Option<&mut Checker>,
) -> Result<()> {
    if !conn.open {
        return Ok(());
    }
    if event.is_writable() {
        conn.flush()?;
    }
    if !(event.is_readable() || event.is_read_closed() || event.is_error()) {
        return Ok(());
    }
    messages.clear();
    let closed = conn.receive(messages);
    let now_ns = epoch.elapsed().as_nanos() as u64;
    for message in messages.drain(..) {
        match (conn.speaks, message) {
            (Speaks::Chat, Message::Text(text)) => {
                on_chat_text(conn, text.as_str(), now_ns, checker.as_deref_mut())?
            }
            (Speaks::Mqtt, Message::Binary(bytes)) => on_mqtt_bytes(conn, &bytes)?,
            (_, other) => bail!("unexpected {} message", kind_of(&other)),
        }
    }
    match closed {
        Some(reason) => Err(anyhow!("{reason}")),
        None => Ok(()),
    }
}

fn kind_of(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        _ => "control",
    }
}

/// Chat WebSocket subscribers of one pool thread: connects and subscribes
/// every subscriber of `assignments` (global connection index, channel
/// indices), then reads them all with one mio poll loop and checks every
/// delivery as the native subscribers do.
#[allow(clippy::too_many_arguments)]
pub(crate) fn subscriber_pool(
    target: WsTarget,
    batch: usize,
    prefix: &str,
    channels: &[String],
    assignments: Vec<(usize, Vec<usize>)>,
    epoch: Instant,
    targets: &Mutex<Option<Vec<u64>>>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<SubscriberResult> {
    let mut checker = Checker {
        result: SubscriberResult::default(),
        from_intended: histogram(),
        from_send: histogram(),
        last_progress: Instant::now(),
    };
    let specs: Vec<ConnSpec> = assignments
        .iter()
        .map(|(index, mine)| ConnSpec {
            index: *index,
            speaks: Speaks::Chat,
            target: target.clone(),
            name: format!("{prefix}-sub-{index}"),
            subscriptions: mine.iter().map(|&c| (c, channels[c].clone())).collect(),
        })
        .collect();
    let mut setup = || -> Result<(mio::Poll, Vec<WsConn>)> {
        let mut poll = mio::Poll::new().context("cannot create a poll")?;
        let conns = open_all(&mut poll, &specs, batch, epoch, Some(&mut checker))?;
        Ok((poll, conns))
    };
    let (mut poll, mut conns) = match setup() {
        Ok(state) => {
            let _ = ready.send(Ok(()));
            state
        }
        Err(error) => {
            let _ = ready.send(Err(anyhow!("{error:#}")));
            return Err(error);
        }
    };
    if checker.result.delivered > 0 {
        bail!("a delivery arrived before the run started");
    }
    let mut events = mio::Events::with_capacity(1024);
    let mut messages = Vec::new();
    checker.last_progress = Instant::now();
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
            if checker.last_progress.elapsed() > DRAIN_TIMEOUT {
                for conn in &conns {
                    for (channel, next_seq) in conn.next.values() {
                        let target = targets.get(*channel).copied().unwrap_or(0);
                        checker.result.lost += (target + 1).saturating_sub(*next_seq);
                    }
                }
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            service(conn, event, epoch, &mut messages, Some(&mut checker))
                .context("a WebSocket subscriber failed")?;
        }
    }
    for conn in &mut conns {
        conn.close();
    }
    let mut result = checker.result;
    // Skipped and never come.
    result.lost += conns
        .iter()
        .flat_map(|conn| conn.missing.values())
        .map(|missing| missing.len() as u64)
        .sum::<u64>();
    result.latency_us = Some(checker.from_intended);
    result.from_send_us = Some(checker.from_send);
    Ok(result)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleTarget {
    /// Starling's chat WebSocket (`--websocket`) and, with `--mqtt-url`,
    /// MQTT over WebSocket (`--mqtt`).
    Starling,
    /// Mosquitto's WebSocket listener at `--url`: every connection is an
    /// MQTT-over-WebSocket client (`--websocket` and `--mqtt` add up).
    MosquittoWs,
}

/// `starling bench idle`: many idle connections, and the server's memory.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Idle WebSocket connections. On Starling each signs in (`connect`, its
    /// own user) and subscribes to one channel; on Mosquitto each is an MQTT
    /// client that subscribes to one topic.
    #[arg(long, default_value_t = 0)]
    websocket: usize,
    /// Idle MQTT-over-WebSocket connections (subprotocol `mqtt`: CONNECT,
    /// SUBSCRIBE one topic, PINGREQ every 30 s) to `--mqtt-url`.
    #[arg(long, default_value_t = 0)]
    mqtt: usize,
    /// What the connections talk to.
    #[arg(long, value_enum, default_value_t = IdleTarget::Starling)]
    target: IdleTarget,
    /// WebSocket URL (default: ws://127.0.0.1:8080/ws on Starling; required
    /// for mosquitto-ws).
    #[arg(long)]
    url: Option<String>,
    /// URL of the MQTT-over-WebSocket listener for `--mqtt` on Starling.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// How long to hold the connections open after measuring.
    #[arg(long, default_value_t = 10)]
    hold_s: u64,
    /// The server's process id: its VmRSS is read from /proc/PID/status
    /// before opening and after the connections are open and settled.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after the last connection opened before reading RSS.
    #[arg(long, default_value_t = 3)]
    settle_s: u64,
    /// Channels (topics) the connections subscribe to, round-robin.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Distinct chat users: connection i signs in as user i mod USERS
    /// (default: one user per connection).
    #[arg(long)]
    users: Option<usize>,
    /// Threads holding the connections (one mio poll loop each).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections opened (and answered) before the next batch starts.
    #[arg(long, default_value_t = 100)]
    connect_batch: usize,
    /// Bind client sockets to 127.0.0.2, 127.0.0.3, … round-robin (each
    /// source address has its own ~28,000 ephemeral ports); 0: don't bind.
    #[arg(long, default_value_t = 0)]
    source_addresses: usize,
    /// Prefix of user names, channels, topics and MQTT client ids.
    #[arg(long, default_value = "idle")]
    prefix: String,
    /// Idle MQTT 3.1.1 connections over plain TCP to `--mqtt-server`
    /// (CONNECT with keep-alive 0, SUBSCRIBE one topic); measured on their
    /// own, not with `--websocket`/`--mqtt`.
    #[arg(long, default_value_t = 0)]
    mqtt_tcp: usize,
    /// Address of the MQTT listener for `--mqtt-tcp`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_server: String,
    /// User name in the `--mqtt-tcp` CONNECTs (none by default).
    #[arg(long)]
    mqtt_username: Option<String>,
}

/// Resident memory of a process, KiB: (VmRSS, RssAnon).
pub(crate) fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

/// Totals of the idle pool threads.
#[derive(Default)]
struct IdleShared {
    /// Connections closed by the server or failed while held.
    dropped: AtomicU64,
    stop: AtomicBool,
}

pub(crate) fn idle(args: IdleArgs) -> Result<()> {
    if args.mqtt_tcp > 0 {
        return crate::bench_mqtt::idle_tcp(
            &args.mqtt_server,
            args.mqtt_tcp,
            args.channels,
            &args.prefix,
            args.mqtt_username.as_deref(),
            args.server_pid,
            args.settle_s,
            args.hold_s,
        );
    }
    let total = args.websocket + args.mqtt;
    if total == 0 {
        bail!("give --websocket N and/or --mqtt N");
    }
    let channels = args.channels.max(1);
    raise_open_file_limit(total as u64 + 64)?;
    let pid = std::process::id();
    let mut specs = Vec::with_capacity(total);
    let (chat_target, mqtt_target) = match args.target {
        IdleTarget::Starling => {
            let url = args
                .url
                .clone()
                .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_string());
            let mqtt = match (&args.mqtt_url, args.mqtt) {
                (_, 0) => None,
                (Some(url), _) => Some(WsTarget::new(url, args.source_addresses)?),
                (None, _) => {
                    bail!("--mqtt needs --mqtt-url ws://HOST:PORT (Starling's MQTT over WebSocket)")
                }
            };
            (Some(WsTarget::new(&url, args.source_addresses)?), mqtt)
        }
        IdleTarget::MosquittoWs => {
            let url = args
                .url
                .as_ref()
                .context("--target mosquitto-ws needs --url ws://HOST:PORT")?;
            (None, Some(WsTarget::new(url, args.source_addresses)?))
        }
    };
    let users = args.users.unwrap_or(total).max(1);
    for index in 0..total {
        let channel = index % channels;
        let spec = match (&chat_target, index < args.websocket) {
            (Some(target), true) => ConnSpec {
                index,
                speaks: Speaks::Chat,
                target: target.clone(),
                name: format!("{}-u{}", args.prefix, index % users),
                subscriptions: vec![(channel, format!("{}-{channel}", args.prefix))],
            },
            _ => ConnSpec {
                index,
                speaks: Speaks::Mqtt,
                target: mqtt_target.clone().expect("an MQTT target"),
                name: format!("{}-{pid}-{index}", args.prefix),
                subscriptions: vec![(channel, format!("{}/{channel}", args.prefix))],
            },
        };
        specs.push(spec);
    }

    let before = args.server_pid.map(rss_kib).transpose()?;
    let threads = args.threads.clamp(1, total);
    let shared = Arc::new(IdleShared::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize>>();
    let started = Instant::now();
    let mut handles = Vec::new();
    for thread in 0..threads {
        let mine: Vec<ConnSpec> = specs
            .iter()
            .skip(thread)
            .step_by(threads)
            .cloned()
            .collect();
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let batch = args.connect_batch;
        handles.push(spawn(format!("bench-idle-{thread}"), move || {
            idle_pool(mine, batch, &shared, ready)
        })?);
    }
    drop(ready_tx);
    let mut opened = 0;
    let mut failure = None;
    for _ in 0..handles.len() {
        match ready_rx
            .recv()
            .context("an idle thread died before opening")?
        {
            Ok(count) => opened += count,
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failure {
        shared.stop.store(true, Ordering::Release);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(error.context("opening the idle connections failed"));
    }
    let open_s = started.elapsed().as_secs_f64();
    eprintln!(
        "{opened} connections open in {open_s:.1} s; settling for {} s",
        args.settle_s
    );
    std::thread::sleep(Duration::from_secs(args.settle_s));
    let after = args.server_pid.map(rss_kib).transpose()?;
    let per_connection = |field: fn(&(u64, u64)) -> u64| match (&before, &after) {
        (Some(before), Some(after)) => {
            serde_json::json!((field(after) as f64 - field(before) as f64) * 1024.0 / opened as f64)
        }
        _ => serde_json::Value::Null,
    };
    let measured = serde_json::json!({
        "tool": "starling-bench-idle",
        "target": format!("{:?}", args.target),
        "websocket": args.websocket,
        "mqtt": args.mqtt,
        "opened": opened,
        "open_s": open_s,
        "users": if chat_target.is_some() { Some(users.min(args.websocket)) } else { None },
        "channels": channels,
        "server_pid": args.server_pid,
        "rss_before_kib": before.map(|r| r.0),
        "rss_after_kib": after.map(|r| r.0),
        "rss_anon_before_kib": before.map(|r| r.1),
        "rss_anon_after_kib": after.map(|r| r.1),
        "bytes_per_connection": per_connection(|r| r.0),
        "anon_bytes_per_connection": per_connection(|r| r.1),
        "dropped": shared.dropped.load(Ordering::Acquire),
    });
    println!("{measured}");
    let hold_end = Instant::now() + Duration::from_secs(args.hold_s);
    while Instant::now() < hold_end {
        std::thread::sleep(Duration::from_millis(200).min(hold_end - Instant::now()));
    }
    let held = args.server_pid.map(rss_kib).transpose()?;
    shared.stop.store(true, Ordering::Release);
    for handle in handles {
        handle.join().expect("idle thread panicked")?;
    }
    let dropped = shared.dropped.load(Ordering::Acquire);
    let summary = serde_json::json!({
        "tool": "starling-bench-idle",
        "held_s": args.hold_s,
        "opened": opened,
        "dropped": dropped,
        "rss_end_of_hold_kib": held.map(|r| r.0),
        "ok": dropped == 0,
    });
    println!("{summary}");
    if dropped > 0 {
        bail!("{dropped} connections were closed or failed while held");
    }
    Ok(())
}

/// Opens this thread's share, reports how many opened, then keeps them
/// alive (answering the server's pings; MQTT PINGREQ every half keep-alive)
/// until told to stop, and closes them.
fn idle_pool(
    specs: Vec<ConnSpec>,
    batch: usize,
    shared: &IdleShared,
    ready: std::sync::mpsc::Sender<Result<usize>>,
) -> Result<()> {
    let epoch = Instant::now();
    let mut poll = match mio::Poll::new().context("cannot create a poll") {
        Ok(poll) => poll,
        Err(error) => {
            let _ = ready.send(Err(anyhow!("{error:#}")));
            return Err(error);
        }
    };
    let mut conns = match open_all(&mut poll, &specs, batch, epoch, None) {
        Ok(conns) => {
            let _ = ready.send(Ok(conns.len()));
            conns
        }
        Err(error) => {
            let _ = ready.send(Err(anyhow!("{error:#}")));
            return Err(error);
        }
    };
    let mut events = mio::Events::with_capacity(1024);
    let mut messages = Vec::new();
    let ping_every = Duration::from_secs(u64::from(MQTT_KEEP_ALIVE_S) / 2);
    let mut next_ping = Instant::now() + ping_every;
    while !shared.stop.load(Ordering::Acquire) {
        poll.poll(&mut events, Some(Duration::from_millis(200)))?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            let was_open = conn.open;
            if let Err(error) = service(conn, event, epoch, &mut messages, None) {
                if was_open {
                    log::warn!("an idle connection ended: {error:#}");
                    conn.open = false;
                    shared.dropped.fetch_add(1, Ordering::AcqRel);
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
            }
        }
        if Instant::now() >= next_ping {
            next_ping += ping_every;
            for conn in conns
                .iter_mut()
                .filter(|c| c.open && c.speaks == Speaks::Mqtt)
            {
                conn.send(Message::binary(MQTT_PINGREQ.to_vec()))?;
            }
        }
    }
    for conn in &mut conns {
        conn.close();
    }
    Ok(())
}
