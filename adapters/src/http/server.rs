//! The HTTP listener's protocol: one session per connection, on the core
//! event loops. A connection starts as HTTP/1.1 (keep-alive, one request at
//! a time, answered in order) and may become a WebSocket (`GET /ws`, the JSON
//! chat protocol) or a Server-Sent Events stream
//! (`GET /v1/channels/{channel}/events`).
//!
//! Routes: the web client (`/`, `/app.js`, `/app.css`), `/healthz`,
//! `/readyz`, `/metrics` (Prometheus text), `/ws`, and the JSON API under
//! `/v1/` (see `docs/PROTOCOL.md` and `/v1/openapi.json`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use starling_broker::{Close, Protocol, Reply, Session, SessionContext, SessionEvent};
use starling_protocol::{ErrorCode, Message};

use super::request::{HttpLimits, Method, Request, RequestParser};
use super::response::{
    write_chunk, write_chunked_head, write_error, write_last_chunk, write_response, Response,
};
use super::security::{SecurityApi, SecurityDone};
use super::tunnel::Tunnel;
use crate::chat::json::{message_pushes, parse_request, reply_text, write_message};
use crate::chat::{ChatConnection, ChatError, ChatService, Push, HEARTBEAT_S};
use crate::ws::{close_code, derive_accept_key, text_frame, WsFraming, WsLimits, WsMessage};

/// How long connections may take and stay idle.
#[derive(Clone, Copy, Debug)]
pub struct HttpTimeouts {
    /// How long a client may take to send a request's head and body once it
    /// has started (slow-header clients are answered 408 and closed).
    pub request_read: Duration,
    /// How long an idle keep-alive connection stays open.
    pub idle: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> HttpTimeouts {
        HttpTimeouts {
            request_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}
/// A WebSocket that sends nothing (not even a pong) for this many heartbeats
/// is closed.
pub const HEARTBEATS_MISSED_MAX: u32 = 3;
/// Seconds between comment lines that keep an idle event stream open
/// through proxies.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Shared state of the HTTP listener.
pub struct HttpProtocol {
    limits: HttpLimits,
    shared: Arc<Shared>,
}

/// What every session of the listener reads and none changes: one
/// allocation for all of them, not a copy in each (an idle connection's
/// memory is what limits how many a server holds).
struct Shared {
    chat: Arc<OnceLock<Arc<ChatService>>>,
    security: Arc<OnceLock<Arc<SecurityApi>>>,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins besides the server's own whose pages may open WebSockets.
    allowed_origins: Vec<String>,
    ws_limits: WsLimits,
    timeouts: HttpTimeouts,
    ready: Arc<AtomicBool>,
    websocket: Arc<dyn Protocol>,
    events: Arc<dyn Protocol>,
    tunnels: Vec<TunnelRoute>,
}

impl HttpProtocol {
    /// The chat service is set once the engine runs ([`HttpProtocol::chat_slot`]);
    /// until then chat requests are answered "unavailable".
    pub fn new(limits: HttpLimits, ws_limits: WsLimits, timeouts: HttpTimeouts) -> HttpProtocol {
        HttpProtocol {
            limits,
            shared: Arc::new(Shared {
                chat: Arc::new(OnceLock::new()),
                security: Arc::new(OnceLock::new()),
                trusted_proxies: Vec::new(),
                allowed_origins: Vec::new(),
                ws_limits,
                timeouts,
                ready: Arc::new(AtomicBool::new(false)),
                websocket: Arc::new(ChatWebSocketProtocol),
                events: Arc::new(EventStreamProtocol),
                tunnels: Vec::new(),
            }),
        }
    }

    /// Serves `protocol` in WebSocket binary frames at `path` (the client
    /// must offer `subprotocol`), as MQTT over WebSocket at `/mqtt`, to
    /// clients in `allow_from` (empty: from anywhere the listener takes):
    /// the tunnelled protocol's own allow-list holds here too.
    pub fn with_tunnel(
        mut self,
        path: &'static str,
        subprotocol: &'static str,
        protocol: Arc<dyn Protocol>,
        allow_from: Vec<ipnet::IpNet>,
    ) -> HttpProtocol {
        let shared = Arc::get_mut(&mut self.shared)
            .expect("tunnels are added before the listener makes sessions");
        shared.tunnels.push(TunnelRoute {
            path,
            subprotocol,
            protocol,
            allow_from: Arc::new(allow_from),
        });
        self
    }

    /// Believes `X-Forwarded-For` from these proxies (for the client address
    /// of sign-in throttling and role allow-lists of the security routes).
    pub fn with_trusted_proxies(mut self, proxies: Vec<ipnet::IpNet>) -> HttpProtocol {
        Arc::get_mut(&mut self.shared)
            .expect("proxies are set before the listener makes sessions")
            .trusted_proxies = proxies;
        self
    }

    /// Lets pages of these origins (`https://chat.example.com`, `*` for
    /// any) open WebSockets, besides the server's own pages.
    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> HttpProtocol {
        Arc::get_mut(&mut self.shared)
            .expect("origins are set before the listener makes sessions")
            .allowed_origins = origins;
        self
    }

    /// Where the chat service goes once the engine is started.
    pub fn chat_slot(&self) -> Arc<OnceLock<Arc<ChatService>>> {
        self.shared.chat.clone()
    }

    /// Where the security routes go once the engine is started with
    /// authentication on; without them `/v1/auth` and `/v1/admin` answer
    /// "not found".
    pub fn security_slot(&self) -> Arc<OnceLock<Arc<SecurityApi>>> {
        self.shared.security.clone()
    }

    /// Set once the server is ready to serve (`/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.shared.ready.clone()
    }
}

impl Protocol for HttpProtocol {
    fn name(&self) -> &'static str {
        "http"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        Box::new(HttpSession {
            shared: self.shared.clone(),
            token: None,
            parser: RequestParser::new(self.limits),
            peer: _peer,
            buffer: BytesMut::new(),
            mode: Mode::Http,
            chat: None,
            in_flight: None,
            request_started: None,
            last_activity: Instant::now(),
            upgraded_at: None,
            serving: false,
        })
    }

    fn encode_delivery(&self, _channel: &str, _messages: &[Message]) -> Bytes {
        // A plain HTTP connection subscribes to nothing; upgraded ones switch
        // to the WebSocket or event-stream encoding.
        Bytes::new()
    }
}

/// Deliveries to chat WebSockets: one text frame per message push.
struct ChatWebSocketProtocol;

impl Protocol for ChatWebSocketProtocol {
    fn name(&self) -> &'static str {
        "chat-ws"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        unreachable!("chat WebSockets start as HTTP connections")
    }

    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes {
        let mut out = BytesMut::new();
        for text in message_pushes(channel, messages) {
            text_frame(text.as_bytes(), &mut out);
        }
        out.freeze()
    }
}

/// Deliveries to event streams: one chunk of `message` events.
struct EventStreamProtocol;

impl Protocol for EventStreamProtocol {
    fn name(&self) -> &'static str {
        "sse"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        unreachable!("event streams start as HTTP connections")
    }

    fn encode_delivery(&self, _channel: &str, messages: &[Message]) -> Bytes {
        let mut events = String::new();
        for message in messages {
            // Ephemeral messages have no seq and so no id: a client resuming
            // with Last-Event-ID resumes after the last stored record.
            if message.seq > 0 {
                let _ = writeln!(events, "id: {}", message.seq);
            }
            events.push_str("event: message\ndata: ");
            write_message(message, &mut events);
            events.push_str("\n\n");
        }
        let mut out = BytesMut::new();
        write_chunk(&mut out, events.as_bytes());
        out.freeze()
    }
}

enum Mode {
    Http,
    /// The framing is a few words, so it is kept inline.
    WebSocket(WsFraming),
    Events,
    /// Another protocol in WebSocket binary frames (MQTT at `/mqtt`).
    Tunnel(Box<Tunnel>),
}

/// A protocol served in WebSocket binary frames at a path of the HTTP
/// listener.
#[derive(Clone)]
struct TunnelRoute {
    path: &'static str,
    subprotocol: &'static str,
    protocol: Arc<dyn Protocol>,
    allow_from: Arc<Vec<ipnet::IpNet>>,
}

/// The HTTP request being answered.
struct InFlight {
    id: u64,
    keep_alive: bool,
    head_only: bool,
    /// Status for a successful answer.
    status: u16,
    /// For an event stream: the subscription's channel.
    events_channel: Option<String>,
}

pub struct HttpSession {
    shared: Arc<Shared>,
    /// The bearer token this connection's chat requests signed in with.
    token: Option<Box<str>>,
    parser: RequestParser,
    peer: SocketAddr,
    /// Received bytes not parsed yet (HTTP mode answers one request at a
    /// time, so what follows waits here).
    buffer: BytesMut,
    mode: Mode,
    chat: Option<ChatConnection>,
    in_flight: Option<InFlight>,
    request_started: Option<Instant>,
    last_activity: Instant,
    /// When the connection became a WebSocket (`/ws`, `/mqtt`), until the
    /// client signs in on it (chat `connect`, MQTT CONNECT): one that does
    /// not within `timeouts.request_read` is closed, as the shard closes a
    /// plain connection that never identifies itself (it cannot here: the
    /// connection has timers of its own).
    upgraded_at: Option<Instant>,
    /// `serve_http` is on the stack: an answer given while it serves a
    /// request leaves the next request to its loop instead of serving it
    /// one frame deeper (thousands of pipelined requests answered at once
    /// overflowed the shard's stack).
    serving: bool,
}

/// Client request ids of HTTP requests (one at a time per connection).
const HTTP_REQUEST_ID: u64 = 1;

impl Session for HttpSession {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        self.last_activity = context.now();
        match self.mode {
            Mode::Http => {
                self.buffer.extend_from_slice(input);
                input.clear();
                self.serve_http(context)
            }
            Mode::Events => {
                // An event stream only sends; whatever the client sends is
                // ignored.
                input.clear();
                Ok(())
            }
            Mode::WebSocket(_) | Mode::Tunnel(_) if !self.buffer.is_empty() => {
                self.buffer.extend_from_slice(input);
                input.clear();
                self.serve_buffered_frames(context)
            }
            Mode::WebSocket(_) | Mode::Tunnel(_) => self.serve_frames(input, context),
        }
    }

    fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        if let Mode::Tunnel(tunnel) = &mut self.mode {
            return tunnel.on_reply(request_id, reply, context);
        }
        let mut responses = Vec::new();
        if let Some(chat) = self.chat.as_mut() {
            chat.on_reply(request_id, reply, context, &mut responses);
        }
        self.answer(responses, context)
    }

    fn on_event(
        &mut self,
        event: SessionEvent,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        if let Mode::Tunnel(tunnel) = &mut self.mode {
            return tunnel.on_event(event, context);
        }
        let event = match event.downcast::<SecurityDone>() {
            Ok(done) => return self.answer(vec![(HTTP_REQUEST_ID, done.result)], context),
            Err(event) => event,
        };
        let mut responses = Vec::new();
        let mut pushes = Vec::new();
        if let Some(chat) = self.chat.as_mut() {
            chat.on_event(event, context, &mut responses, &mut pushes);
        }
        for push in pushes {
            self.push(push, context)?;
        }
        self.answer(responses, context)
    }

    fn on_delivery(
        &mut self,
        channel: &str,
        messages: &[Message],
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Bytes>, Close> {
        match &mut self.mode {
            Mode::Tunnel(tunnel) => tunnel.on_delivery(channel, messages, context),
            _ => Ok(None),
        }
    }

    fn delivery_room(&self) -> usize {
        match &self.mode {
            Mode::Tunnel(tunnel) => tunnel.delivery_room(),
            _ => usize::MAX,
        }
    }

    /// HTTP/1.1 answers one request at a time: while one is in flight (a
    /// sign-in waiting for its worker), what the client sends behind it
    /// waits in the kernel, not in `buffer`.
    fn input_paused(&self) -> bool {
        matches!(self.mode, Mode::Http) && self.in_flight.is_some()
    }

    fn on_closed(&mut self, context: &mut SessionContext<'_>) {
        if let Mode::Tunnel(tunnel) = &mut self.mode {
            tunnel.on_closed(context);
        }
    }

    fn on_timer(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let now = context.now();
        if let Some(upgraded) = self.upgraded_at {
            if self.signed_in(context) {
                self.upgraded_at = None;
            } else if now.duration_since(upgraded) >= self.shared.timeouts.request_read {
                let reason = format!(
                    "no sign-in within {} s of the WebSocket upgrade: send `connect` (chat) or CONNECT (MQTT) first",
                    self.shared.timeouts.request_read.as_secs()
                );
                let code = close_code::POLICY_VIOLATION;
                match &mut self.mode {
                    Mode::WebSocket(framing) => {
                        framing.close(code, &reason, context.out());
                    }
                    Mode::Tunnel(tunnel) => tunnel.close(code, &reason, context.out()),
                    Mode::Http | Mode::Events => {}
                }
                return Err(close(&reason));
            } else {
                context.set_timer(upgraded + self.shared.timeouts.request_read);
            }
        }
        match &mut self.mode {
            // The tunnelled protocol keeps its own time (MQTT keep-alive).
            Mode::Tunnel(tunnel) => return tunnel.on_timer(context),
            Mode::Http => {
                if let Some(started) = self.request_started {
                    if now.duration_since(started) >= self.shared.timeouts.request_read {
                        write_error(
                            context.out(),
                            408,
                            "request_timeout",
                            "the request was not received in time; send it again",
                            false,
                        );
                        return Err(close("request read timeout"));
                    }
                } else if self.in_flight.is_none()
                    && now.duration_since(self.last_activity) >= self.shared.timeouts.idle
                {
                    return Err(close("idle keep-alive connection"));
                }
            }
            Mode::WebSocket(framing) => {
                let heartbeat = Duration::from_secs(HEARTBEAT_S);
                if now.duration_since(self.last_activity) >= heartbeat * HEARTBEATS_MISSED_MAX {
                    let closed = framing.close(
                        close_code::GOING_AWAY,
                        "no frame from the client for three heartbeats",
                        context.out(),
                    );
                    return Err(close(&closed.reason));
                }
                framing.ping(context.out());
            }
            Mode::Events => {
                write_chunk(context.out(), b": keep-alive\n\n");
            }
        }
        self.arm_timer(context);
        Ok(())
    }

    fn on_server_close(&mut self, code: ErrorCode, reason: &str, out: &mut BytesMut) {
        match &mut self.mode {
            Mode::Tunnel(tunnel) => tunnel.on_server_close(code, reason, out),
            Mode::WebSocket(framing) => {
                let code = if reason.starts_with("slow consumer") {
                    close_code::POLICY_VIOLATION
                } else {
                    close_code::GOING_AWAY
                };
                framing.close(code, reason, out);
            }
            Mode::Events => {
                let mut text = String::from("event: error\ndata: ");
                text.push_str(&json!({ "message": reason }).to_string());
                text.push_str("\n\n");
                write_chunk(out, text.as_bytes());
            }
            Mode::Http => {
                if self.in_flight.is_some() {
                    write_error(out, 503, "unavailable", reason, false);
                }
            }
        }
    }
}

/// The `host[:port]` of a web origin (`https://chat.example.com:8443`);
/// `None` for an opaque origin (`null`) or one that is not `scheme://host`.
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, authority) = origin.trim().split_once("://")?;
    let valid = !scheme.is_empty()
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' ']);
    valid.then_some(authority)
}

/// Checks one `http.allowed_origins` entry: `*` or `scheme://host[:port]`.
pub fn check_origin_setting(origin: &str) -> Result<(), String> {
    if origin == "*" || origin_authority(origin).is_some() {
        Ok(())
    } else {
        Err(format!(
            "{origin:?} is not a web origin: give scheme://host[:port] without a path, such as \"https://chat.example.com\", or \"*\" for any"
        ))
    }
}

fn close(reason: &str) -> Close {
    Close {
        reason: reason.to_string(),
    }
}

impl HttpSession {
    fn arm_timer(&mut self, context: &mut SessionContext<'_>) {
        let now = context.now();
        let deadline = match self.mode {
            Mode::Http => match self.request_started {
                Some(started) => started + self.shared.timeouts.request_read,
                // Not idle while a request is answered (the answer re-arms),
                // but timed: the shard closes a connection without a
                // principal and without a timer as one that never spoke.
                None if self.in_flight.is_some() => now + self.shared.timeouts.idle,
                None => self.last_activity + self.shared.timeouts.idle,
            },
            Mode::WebSocket(_) => now + Duration::from_secs(HEARTBEAT_S),
            Mode::Events => now + SSE_KEEPALIVE,
            // The inner session arms its own timers.
            Mode::Tunnel(_) => return,
        };
        context.set_timer(deadline.max(now));
    }

    /// The connection just became a WebSocket: it has `request_read` to
    /// sign in (unless it is signed in already, with an earlier request).
    fn sign_in_deadline(&mut self, context: &mut SessionContext<'_>) {
        if !self.signed_in(context) {
            let now = context.now();
            self.upgraded_at = Some(now);
            context.set_timer(now + self.shared.timeouts.request_read);
        }
    }

    /// Whether the client has signed in on its WebSocket: a chat `connect`
    /// or the tunnelled protocol's own sign-in (an HTTP request before the
    /// upgrade signed in neither).
    fn signed_in(&self, context: &SessionContext<'_>) -> bool {
        match &self.mode {
            Mode::WebSocket(_) => self.chat.as_ref().is_some_and(|chat| chat.user().is_some()),
            Mode::Tunnel(tunnel) => context.principal().is_some() && tunnel.identified(),
            _ => context.principal().is_some(),
        }
    }

    fn chat_service(&self) -> Result<Arc<ChatService>, ChatError> {
        self.shared
            .chat
            .get()
            .cloned()
            .ok_or_else(|| ChatError::unavailable("the server is starting; retry in a moment"))
    }

    /// Parses and serves buffered requests, one at a time.
    fn serve_http(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        if self.serving {
            return Ok(());
        }
        self.serving = true;
        let served = self.serve_buffered_requests(context);
        self.serving = false;
        served?;
        // The shard keeps the earliest deadline asked for, so this also
        // shortens an idle deadline to a request's read deadline.
        self.arm_timer(context);
        Ok(())
    }

    fn serve_buffered_requests(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        while self.in_flight.is_none() && matches!(self.mode, Mode::Http) {
            let request = match self.parser.parse(&mut self.buffer) {
                Ok(Some(request)) => request,
                Ok(None) => {
                    if self.parser.in_progress() || !self.buffer.is_empty() {
                        self.request_started.get_or_insert(context.now());
                    }
                    break;
                }
                Err(error) => {
                    write_error(
                        context.out(),
                        error.status,
                        "bad_request",
                        &error.message,
                        false,
                    );
                    return Err(close(&format!("bad HTTP request: {}", error.message)));
                }
            };
            self.request_started = None;
            self.route(request, context)?;
        }
        Ok(())
    }

    fn route(&mut self, request: Request, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let keep_alive = request.keep_alive;
        let head_only = request.method == Method::Head;
        let get = matches!(request.method, Method::Get | Method::Head);
        let path = request.target.split('?').next().unwrap_or("").to_string();
        let static_file = |body: &'static str, content_type: &str| {
            Response::new(200)
                .with_header("Content-Type", content_type.to_string())
                .with_header("Cache-Control", "no-cache")
                .with_body(Bytes::from_static(body.as_bytes()))
        };
        let simple = match (get, path.as_str()) {
            (true, "/") | (true, "/index.html") => {
                Some(static_file(INDEX_HTML, "text/html; charset=utf-8"))
            }
            (true, "/app.js") => Some(static_file(APP_JS, "text/javascript; charset=utf-8")),
            (true, "/app.css") => Some(static_file(APP_CSS, "text/css; charset=utf-8")),
            (true, "/v1/openapi.json") => Some(static_file(OPENAPI_JSON, "application/json")),
            (true, "/healthz") => Some(Response::json(200, &json!({ "status": "ok" }))),
            (true, "/readyz") => Some(if self.shared.ready.load(Ordering::Relaxed) {
                Response::json(200, &json!({ "status": "ready" }))
            } else {
                Response::json(503, &json!({ "status": "starting" }))
            }),
            (true, "/metrics") => Some(
                Response::new(200)
                    .with_header("Content-Type", "text/plain; version=0.0.4")
                    .with_body(prometheus_text(context.metrics())),
            ),
            _ => None,
        };
        if let Some(response) = simple {
            write_response(context.out(), &response, keep_alive, head_only);
            return if keep_alive {
                Ok(())
            } else {
                Err(close("the client asked to close"))
            };
        }
        if path == "/ws" {
            return self.upgrade(&request, context);
        }
        if let Some(route) = self.shared.tunnels.iter().find(|t| t.path == path).cloned() {
            return self.upgrade_tunnel(&request, route, context);
        }
        if let Some(rest) = path.strip_prefix("/v1/") {
            let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
            return self.api(&request, segments, context);
        }
        let error = ChatError::not_found(format!(
            "no route for {} {path}; see /v1/openapi.json",
            request.method.as_str()
        ));
        send_error(context.out(), &error, keep_alive, head_only);
        if keep_alive {
            Ok(())
        } else {
            Err(close("the client asked to close"))
        }
    }

    /// Checks a WebSocket handshake (RFC 6455 section 4.2) and returns the
    /// client's key, or writes the refusal and returns the close.
    fn check_handshake<'r>(
        request: &'r Request,
        context: &mut SessionContext<'_>,
    ) -> Result<&'r str, Close> {
        let refuse = |out: &mut BytesMut, status: u16, message: &str| {
            write_error(out, status, "bad_request", message, false);
            Err(close(message))
        };
        if request.method != Method::Get {
            return refuse(context.out(), 405, "the WebSocket endpoint takes GET only");
        }
        if !request.header_has_token("connection", "upgrade")
            || !request.header_has_token("upgrade", "websocket")
        {
            return refuse(
                context.out(),
                426,
                "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
            );
        }
        if request.header("sec-websocket-version") != Some("13") {
            let mut out = BytesMut::new();
            write_response(
                &mut out,
                &Response::new(426).with_header("Sec-WebSocket-Version", "13"),
                false,
                false,
            );
            context.out().extend_from_slice(&out);
            return Err(close("unsupported WebSocket version"));
        }
        let Some(key) = request.header("sec-websocket-key") else {
            return refuse(context.out(), 400, "Sec-WebSocket-Key is missing");
        };
        let decoded_len = data_encoding::BASE64
            .decode(key.as_bytes())
            .map(|k| k.len());
        if decoded_len != Ok(16) {
            return refuse(
                context.out(),
                400,
                "Sec-WebSocket-Key must be 16 bytes in base64",
            );
        }
        Ok(key)
    }

    /// Refuses a WebSocket handshake from a page of another site: a browser
    /// sends the page's `Origin`, and sends the user's cookies and client
    /// certificate with the handshake whatever the page, so without this
    /// check any site the user visits could act as them. The server's own
    /// origin (the `Host` the request was sent to) and
    /// `http.allowed_origins` are let in; a request without `Origin` is not
    /// from a browser page.
    fn check_origin(
        &self,
        request: &Request,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let Some(origin) = request.header("origin") else {
            return Ok(());
        };
        let allowed = &self.shared.allowed_origins;
        let own = origin_authority(origin)
            .zip(request.header("host"))
            .is_some_and(|(authority, host)| authority.eq_ignore_ascii_case(host.trim()));
        if own
            || allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(origin.trim()))
        {
            return Ok(());
        }
        let message = format!(
            "WebSockets from pages of {origin:?} are not allowed: add the origin to http.allowed_origins if its pages are meant to use this server"
        );
        write_error(context.out(), 403, "denied", &message, false);
        Err(close(&message))
    }

    /// `GET /mqtt` and the like: a protocol in WebSocket binary frames.
    fn upgrade_tunnel(
        &mut self,
        request: &Request,
        route: TunnelRoute,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let key = Self::check_handshake(request, context)?;
        self.check_origin(request, context)?;
        let client = client_address(self.peer, &self.shared.trusted_proxies, request);
        let allowed = route.allow_from.is_empty()
            || starling_broker::security::roles::address_in(&route.allow_from, client.ip());
        if !allowed {
            let message = format!(
                "{} is not served to {}: the tunnelled protocol's allow-list (mqtt.allow_from) does not name it",
                route.path,
                client.ip()
            );
            write_error(context.out(), 403, "denied", &message, false);
            return Err(close(&message));
        }
        if !request.header_has_token("sec-websocket-protocol", route.subprotocol) {
            let message = format!(
                "{} needs the WebSocket subprotocol {:?} (Sec-WebSocket-Protocol)",
                route.path, route.subprotocol
            );
            write_error(context.out(), 400, "bad_request", &message, false);
            return Err(close(&message));
        }
        let response = Response::new(101)
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade")
            .with_header("Sec-WebSocket-Accept", derive_accept_key(key.as_bytes()))
            .with_header("Sec-WebSocket-Protocol", route.subprotocol);
        write_response(context.out(), &response, true, false);
        let inner = route.protocol.new_session(self.peer);
        self.mode = Mode::Tunnel(Box::new(Tunnel::new(inner, self.shared.ws_limits)));
        self.sign_in_deadline(context);
        context.set_protocol(Arc::new(super::tunnel::TunnelDeliveries::new(
            route.protocol.clone(),
        )));
        self.serve_buffered_frames(context)
    }

    /// `GET /ws`: the chat WebSocket.
    fn upgrade(
        &mut self,
        request: &Request,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let refuse = |out: &mut BytesMut, status: u16, message: &str| {
            write_error(out, status, "bad_request", message, false);
            Err(close(message))
        };
        let key = Self::check_handshake(request, context)?;
        self.check_origin(request, context)?;
        let service = match self.chat_service() {
            Ok(service) => service,
            Err(error) => return refuse(context.out(), 503, &error.message),
        };
        let mut response = Response::new(101)
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade")
            .with_header("Sec-WebSocket-Accept", derive_accept_key(key.as_bytes()));
        if request.header_has_token("sec-websocket-protocol", "starling.chat.v1") {
            response = response.with_header("Sec-WebSocket-Protocol", "starling.chat.v1");
        }
        write_response(context.out(), &response, true, false);
        self.mode = Mode::WebSocket(WsFraming::server(self.shared.ws_limits));
        self.chat = Some(ChatConnection::new(service));
        context.set_protocol(self.shared.websocket.clone());
        self.arm_timer(context);
        self.sign_in_deadline(context);
        self.serve_buffered_frames(context)
    }

    /// Serves the frames in `buffer`: those the client sent right behind
    /// its upgrade request, and what follows while they end in a partial
    /// frame. A partial frame stays in `buffer`; once it is empty, frames
    /// are served from the shard's input, which keeps partial frames itself.
    fn serve_buffered_frames(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut buffered = std::mem::take(&mut self.buffer);
        let result = self.serve_frames(&mut buffered, context);
        if !buffered.is_empty() {
            self.buffer = buffered;
        }
        result
    }

    /// Serves WebSocket frames from `input`, leaving a partial one there.
    fn serve_frames(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        match &mut self.mode {
            Mode::Tunnel(tunnel) => tunnel.on_input(input, context),
            Mode::WebSocket(_) => self.serve_websocket(input, context),
            Mode::Http | Mode::Events => Ok(()),
        }
    }

    fn serve_websocket(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let Mode::WebSocket(framing) = &mut self.mode else {
            return Ok(());
        };
        let mut messages = Vec::new();
        // Control frames (pongs, the Close echo) go out after the answers
        // to what came before them: nothing may follow a Close.
        let mut control = BytesMut::new();
        let received = framing.receive(input, &mut control, |message, _| {
            messages.push(message);
            Ok(())
        });
        let mut responses = Vec::new();
        for message in messages {
            match message {
                WsMessage::Text(text) => match parse_request(&text) {
                    Ok((id, request)) => {
                        let chat = self.chat.as_mut().expect("a chat WebSocket has a chat");
                        chat.request(id, request, context, &mut responses);
                    }
                    Err((id, error)) => responses.push((id, Err(error))),
                },
                WsMessage::Binary(_) => {
                    let Mode::WebSocket(framing) = &mut self.mode else {
                        unreachable!()
                    };
                    context.out().extend_from_slice(&control);
                    if let Err(closed) = received {
                        return Err(close(&closed.reason));
                    }
                    let closed = framing.close(
                        close_code::UNSUPPORTED_DATA,
                        "binary frames are not part of the chat protocol; send JSON text frames",
                        context.out(),
                    );
                    return Err(close(&closed.reason));
                }
            }
        }
        let answered = self.answer(responses, context);
        context.out().extend_from_slice(&control);
        answered?;
        received.map_err(|closed| close(&closed.reason))
    }

    /// Tells the client what no request asked for: a push frame on a
    /// WebSocket; an event stream whose subscription ended is ended.
    fn push(&mut self, push: Push, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let Push::Unsubscribed { channel, reason } = push;
        match self.mode {
            Mode::WebSocket(_) => {
                let text = json!({ "push": "unsubscribed", "channel": channel, "reason": reason });
                text_frame(text.to_string().as_bytes(), context.out());
                Ok(())
            }
            Mode::Events => {
                let mut text = String::from("event: error\ndata: ");
                text.push_str(&json!({ "code": "denied", "message": reason }).to_string());
                text.push_str("\n\n");
                write_chunk(context.out(), text.as_bytes());
                write_last_chunk(context.out());
                Err(close(&format!("event stream of {channel:?}: {reason}")))
            }
            Mode::Http | Mode::Tunnel(_) => Ok(()),
        }
    }

    /// Sends answers: JSON replies on a WebSocket, the HTTP response of the
    /// request in flight otherwise.
    fn answer(
        &mut self,
        responses: Vec<(u64, Result<Value, ChatError>)>,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        if responses.is_empty() {
            return Ok(());
        }
        match self.mode {
            Mode::WebSocket(_) => {
                for (id, result) in responses {
                    text_frame(reply_text(id, &result).as_bytes(), context.out());
                }
                Ok(())
            }
            Mode::Events | Mode::Tunnel(_) => Ok(()),
            Mode::Http => {
                for (id, result) in responses {
                    let Some(in_flight) = self.in_flight.take_if(|f| f.id == id) else {
                        continue;
                    };
                    if let (Some(channel), Ok(value)) = (&in_flight.events_channel, &result) {
                        self.start_events(channel, value, context);
                        return Ok(());
                    }
                    respond(context.out(), &in_flight, result);
                    if !in_flight.keep_alive {
                        return Err(close("the client asked to close"));
                    }
                }
                self.serve_http(context)
            }
        }
    }

    /// The subscription of an event stream is in place: send the head.
    fn start_events(
        &mut self,
        channel: &str,
        subscribed: &Value,
        context: &mut SessionContext<'_>,
    ) {
        write_chunked_head(
            context.out(),
            200,
            &[
                ("Content-Type", "text/event-stream".to_string()),
                ("Cache-Control", "no-cache".to_string()),
                ("X-Accel-Buffering", "no".to_string()),
            ],
        );
        let mut text = String::from("event: subscribed\ndata: ");
        text.push_str(&subscribed.to_string());
        text.push_str("\n\n");
        write_chunk(context.out(), text.as_bytes());
        let _ = channel;
        self.mode = Mode::Events;
        context.set_protocol(self.shared.events.clone());
        self.arm_timer(context);
    }

    /// `/v1/…`: the JSON API. Each route becomes one chat request.
    fn api(
        &mut self,
        request: &Request,
        segments: Vec<String>,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let keep_alive = request.keep_alive;
        let head_only = request.method == Method::Head;
        let fail = |out: &mut BytesMut, error: ChatError| {
            send_error(out, &error, keep_alive, head_only);
            if keep_alive {
                Ok(())
            } else {
                Err(close("the client asked to close"))
            }
        };
        if matches!(segments.first().map(String::as_str), Some("auth" | "admin")) {
            return self.security(request, &segments, context);
        }
        // Who asks comes first: an unauthenticated request learns nothing
        // about routes or bodies.
        let token = bearer_token(request);
        if token.is_none() {
            return fail(
                context.out(),
                ChatError::new(
                    "unauthenticated",
                    "send `Authorization: Bearer <token>` with every request",
                ),
            );
        }
        let (chat_request, status, events_channel) = match api_request(request, &segments) {
            Ok(mapped) => mapped,
            Err(error) => return fail(context.out(), error),
        };
        let service = match self.chat_service() {
            Ok(service) => service,
            Err(error) => return fail(context.out(), error),
        };
        let chat = self
            .chat
            .get_or_insert_with(|| ChatConnection::without_presence(service));
        match (chat.user(), token) {
            (_, None) => {
                return fail(
                    context.out(),
                    ChatError::new(
                        "unauthenticated",
                        "send `Authorization: Bearer <token>` with every request",
                    ),
                )
            }
            (Some(_), Some(token)) if self.token.as_deref() != Some(token) => {
                return fail(
                    context.out(),
                    ChatError::invalid(
                        "one connection serves one user; open another connection for another token",
                    ),
                )
            }
            (Some(_), Some(_)) => {}
            (None, Some(token)) => {
                let mut responses = Vec::new();
                let connect = crate::chat::Request::Connect {
                    token: token.to_string(),
                    client: Some("http".to_string()),
                };
                chat.request(HTTP_REQUEST_ID, connect, context, &mut responses);
                if let Some((_, Err(error))) = responses.pop() {
                    let error = if error.code == "denied" {
                        ChatError::new("unauthenticated", error.message)
                    } else {
                        error
                    };
                    return fail(context.out(), error);
                }
                self.token = Some(Box::from(token));
            }
        }
        self.in_flight = Some(InFlight {
            id: HTTP_REQUEST_ID,
            keep_alive,
            head_only: request.method == Method::Head,
            status,
            events_channel,
        });
        let mut responses = Vec::new();
        let chat = self.chat.as_mut().expect("set above");
        chat.request(HTTP_REQUEST_ID, chat_request, context, &mut responses);
        self.answer(responses, context)
    }
}

impl HttpSession {
    /// `/v1/auth/…` and `/v1/admin/…`: handed to the security worker.
    fn security(
        &mut self,
        request: &Request,
        segments: &[String],
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let keep_alive = request.keep_alive;
        let head_only = request.method == Method::Head;
        let routed = match self.shared.security.get() {
            None => Err(ChatError::not_found(
                "authentication is not configured on this server ([auth] enabled = false)",
            )),
            Some(api) => api
                .route(
                    request.method == Method::Post,
                    request.method == Method::Delete,
                    segments,
                    || body_object(request),
                    bearer_token(request),
                    client_address(self.peer, &self.shared.trusted_proxies, request),
                )
                .and_then(|(op, status, by)| {
                    let conn = context
                        .conn()
                        .ok_or_else(|| ChatError::internal("no connection to answer"))?;
                    api.submit(conn, by, op).map(|()| status)
                }),
        };
        match routed {
            Ok(status) => {
                self.in_flight = Some(InFlight {
                    id: HTTP_REQUEST_ID,
                    keep_alive,
                    head_only,
                    status,
                    events_channel: None,
                });
                Ok(())
            }
            Err(error) => {
                send_error(context.out(), &error, keep_alive, head_only);
                if keep_alive {
                    Ok(())
                } else {
                    Err(close("the client asked to close"))
                }
            }
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the
/// last address of `X-Forwarded-For` that is not a trusted proxy itself.
fn client_address(peer: SocketAddr, trusted: &[ipnet::IpNet], request: &Request) -> SocketAddr {
    use starling_broker::security::roles::address_in;
    if trusted.is_empty() || !address_in(trusted, peer.ip()) {
        return peer;
    }
    let Some(forwarded) = request.header("x-forwarded-for") else {
        return peer;
    };
    let hops: Vec<std::net::IpAddr> = forwarded
        .split(',')
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !address_in(trusted, **ip))
        .or(hops.first())
        .map_or(peer, |ip| SocketAddr::new(*ip, 0))
}

fn respond(out: &mut BytesMut, in_flight: &InFlight, result: Result<Value, ChatError>) {
    match result {
        Ok(value) => write_response(
            out,
            &Response::json(in_flight.status, &value),
            in_flight.keep_alive,
            in_flight.head_only,
        ),
        Err(error) => send_error(out, &error, in_flight.keep_alive, in_flight.head_only),
    }
}

/// The JSON error answer of a route (no body for HEAD).
fn send_error(out: &mut BytesMut, error: &ChatError, keep_alive: bool, head_only: bool) {
    let body = json!({ "error": error });
    write_response(
        out,
        &Response::json(error.http_status(), &body),
        keep_alive,
        head_only,
    );
}

fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The JSON body as an object (an empty body is an empty object).
fn body_object(request: &Request) -> Result<Map<String, Value>, ChatError> {
    if request.body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&request.body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ChatError::malformed(
            "the request body must be a JSON object",
        )),
        Err(error) => Err(ChatError::malformed(format!(
            "the request body is not JSON: {error}"
        ))),
    }
}

fn query_u64(request: &Request, name: &str) -> Result<Option<Value>, ChatError> {
    match request.query_value(name) {
        None => Ok(None),
        Some(text) => text.parse::<u64>().map(|n| Some(json!(n))).map_err(|_| {
            ChatError::invalid(format!(
                "query parameter `{name}` must be a number, got {text:?}"
            ))
        }),
    }
}

fn seq_segment(text: &str) -> Result<u64, ChatError> {
    text.parse::<u64>()
        .map_err(|_| ChatError::invalid(format!("{text:?} is not a message seq")))
}

/// Maps a `/v1/` route to a chat request, the status of its success, and
/// (for an event stream) the channel.
fn api_request(
    request: &Request,
    segments: &[String],
) -> Result<(crate::chat::Request, u16, Option<String>), ChatError> {
    let method = &request.method;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut object = Map::new();
    let mut status = 200;
    let mut events = None;
    let kind = match (method, segments.as_slice()) {
        (Method::Get, ["me", "channels"]) => "channels",
        (Method::Get, ["directory"]) => "directory",
        (Method::Put, ["me", "presence"]) => {
            object = body_object(request)?;
            "presence"
        }
        (Method::Post, ["channels"]) => {
            object = body_object(request)?;
            status = 201;
            "channel_create"
        }
        (Method::Post, ["direct"]) => {
            object = body_object(request)?;
            "direct"
        }
        (Method::Get, ["channels", channel]) => {
            object.insert("channel".into(), json!(channel));
            "channel_info"
        }
        (Method::Patch, ["channels", channel]) => {
            object = body_object(request)?;
            object.insert("channel".into(), json!(channel));
            match (object.contains_key("name"), object.contains_key("topic")) {
                (true, false) => "channel_rename",
                (false, true) => "channel_topic",
                _ => {
                    return Err(ChatError::invalid(
                        "send either `name` or `topic` (one change per request)",
                    ))
                }
            }
        }
        (Method::Post, ["channels", channel, "join"]) => {
            object.insert("channel".into(), json!(channel));
            "channel_join"
        }
        (Method::Get, ["channels", channel, "members"]) => {
            object.insert("channel".into(), json!(channel));
            "members"
        }
        (Method::Post, ["channels", channel, "members"]) => {
            object = body_object(request)?;
            object.insert("channel".into(), json!(channel));
            "channel_invite"
        }
        (Method::Delete, ["channels", channel, "members", user]) => {
            // Removing oneself is leaving: the chat worker, which knows who
            // signed in, tells the two apart.
            object.insert("channel".into(), json!(channel));
            object.insert("user".into(), json!(user));
            "channel_remove"
        }
        (Method::Post, ["channels", channel, "messages"]) => {
            object = body_object(request)?;
            object.insert("channel".into(), json!(channel));
            status = 201;
            "publish"
        }
        (Method::Get, ["channels", channel, "messages"]) => {
            object.insert("channel".into(), json!(channel));
            for name in ["before", "after", "limit"] {
                if let Some(value) = query_u64(request, name)? {
                    object.insert(name.into(), value);
                }
            }
            "history"
        }
        (Method::Patch, ["channels", channel, "messages", seq]) => {
            object = body_object(request)?;
            object.insert("channel".into(), json!(channel));
            object.insert("seq".into(), json!(seq_segment(seq)?));
            "edit"
        }
        (Method::Delete, ["channels", channel, "messages", seq]) => {
            object.insert("channel".into(), json!(channel));
            object.insert("seq".into(), json!(seq_segment(seq)?));
            "delete"
        }
        (Method::Post, ["channels", channel, "messages", seq, "reactions"]) => {
            object = body_object(request)?;
            object.insert("channel".into(), json!(channel));
            object.insert("seq".into(), json!(seq_segment(seq)?));
            "react"
        }
        (Method::Delete, ["channels", channel, "messages", seq, "reactions", emoji]) => {
            object.insert("channel".into(), json!(channel));
            object.insert("seq".into(), json!(seq_segment(seq)?));
            object.insert("emoji".into(), json!(emoji));
            object.insert("remove".into(), json!(true));
            "react"
        }
        (Method::Get, ["channels", channel, "messages", seq, "read-by"]) => {
            object.insert("channel".into(), json!(channel));
            object.insert("seq".into(), json!(seq_segment(seq)?));
            "read_by"
        }
        (Method::Get, ["channels", channel, "threads", root]) => {
            object.insert("channel".into(), json!(channel));
            object.insert("root".into(), json!(seq_segment(root)?));
            if let Some(limit) = query_u64(request, "limit")? {
                object.insert("limit".into(), limit);
            }
            "thread"
        }
        (Method::Put, ["channels", channel, "read"]) => {
            object = body_object(request)?;
            object.insert("channel".into(), json!(channel));
            "read"
        }
        (Method::Post, ["channels", channel, "typing"]) => {
            object.insert("channel".into(), json!(channel));
            "typing"
        }
        (Method::Get, ["channels", channel, "events"]) => {
            object.insert("channel".into(), json!(channel));
            let since = match request.header("last-event-id") {
                Some(id) => Some(id.trim().parse::<u64>().map_err(|_| {
                    ChatError::invalid(format!("Last-Event-ID {id:?} is not a seq"))
                })?),
                None => query_u64(request, "since")?.and_then(|v| v.as_u64()),
            };
            if let Some(since) = since {
                object.insert("since".into(), json!(since));
            }
            events = Some(channel.to_string());
            "subscribe"
        }
        _ => {
            return Err(ChatError::not_found(format!(
                "no route for {} /v1/{}; see /v1/openapi.json",
                method.as_str(),
                segments.join("/")
            )))
        }
    };
    object.insert("type".into(), json!(kind));
    let chat_request = serde_json::from_value::<crate::chat::Request>(Value::Object(object))
        .map_err(|error| {
            ChatError::malformed(format!(
                "bad request: {error}; see /v1/openapi.json for the fields of this route"
            ))
        })?;
    Ok((chat_request, status, events))
}

/// Decodes `%XX` escapes of one path segment (so a channel id such as
/// `dm/alice+bob` travels as `dm%2Falice%2Bbob`). Invalid escapes stay as
/// they are.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                decoded.push(byte);
                index += 3;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The engine's counters in the Prometheus text format.
fn prometheus_text(metrics: &starling_broker::Metrics) -> Bytes {
    let mut text = String::new();
    for (name, value) in metrics.snapshot() {
        let _ = writeln!(text, "# TYPE starling_{name}_total counter");
        let _ = writeln!(text, "starling_{name}_total {value}");
    }
    let snapshot = metrics.snapshot();
    let get = |name: &str| {
        snapshot
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    let open = get("connections_opened").saturating_sub(get("connections_closed"));
    let _ = writeln!(text, "# TYPE starling_connections gauge");
    let _ = writeln!(text, "starling_connections {open}");
    let (buckets, sum_us) = metrics.commit_latency.snapshot();
    let _ = writeln!(
        text,
        "# HELP starling_commit_latency_seconds group commit (write and, under fsync, fdatasync) per loop turn"
    );
    let _ = writeln!(text, "# TYPE starling_commit_latency_seconds histogram");
    let mut count = 0;
    for (bound, cumulative) in buckets {
        let le = bound.map_or("+Inf".to_string(), |us| format!("{}", us as f64 / 1e6));
        let _ = writeln!(
            text,
            "starling_commit_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
        count = cumulative;
    }
    let _ = writeln!(
        text,
        "starling_commit_latency_seconds_sum {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(text, "starling_commit_latency_seconds_count {count}");
    for (name, gauges) in [
        ("inbox_depth", &metrics.inbox_depth),
        ("overflow_depth", &metrics.overflow_depth),
    ] {
        let _ = writeln!(text, "# TYPE starling_{name} gauge");
        for (shard, gauge) in gauges.iter().enumerate() {
            let _ = writeln!(text, "starling_{name}{{shard=\"{shard}\"}} {}", gauge.get());
        }
    }
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_segments() {
        assert_eq!(percent_decode("dm%2Falice%2Bbob"), "dm/alice+bob");
        assert_eq!(percent_decode("general"), "general");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn event_stream_encoding() {
        let protocol = EventStreamProtocol;
        let message = Message {
            seq: 4,
            body: Bytes::from_static(b"hi"),
            ..Message::default()
        };
        let bytes = protocol.encode_delivery("general", &[message]);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.contains("id: 4\nevent: message\ndata: {\"seq\":4,"),
            "{text}"
        );
        assert!(text.ends_with("\n\n\r\n"), "{text:?}");
    }
}
