//! The HTTP listener of the real binary over real sockets: the web client's
//! files, health and metrics, every `/v1/` route of the JSON API with its
//! error replies, keep-alive and pipelining, the framing refusals, the
//! Server-Sent Events stream, and the agreement of `/v1/openapi.json` with the
//! router.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{ChatClient, Server};
use serde_json::{json, Value};

/// Longest a test waits for one read from the server.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// The document the binary embeds.
const OPENAPI_SOURCE: &str = include_str!("../adapters/src/http/openapi.json");

fn server() -> (tempfile::TempDir, Server) {
    server_with(&[])
}

fn server_with(env: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    (dir, server)
}

/// One response read off a connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The status line and header fields, without the blank line.
    head: String,
    /// The body (empty for HEAD answers and for streamed responses, whose
    /// chunks stay in the connection).
    body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}\n{}", self.text(), self.head))
    }

    /// Checks the error shape and answers its code.
    fn error_code(&self) -> String {
        let value = self.json();
        let error = &value["error"];
        assert!(error["message"].is_string(), "{value}");
        assert!(error["temporary"].is_boolean(), "{value}");
        assert_eq!(value.as_object().unwrap().len(), 1, "{value}");
        assert_eq!(error.as_object().unwrap().len(), 3, "{value}");
        error["code"].as_str().expect("a code").to_string()
    }
}

/// A client connection that may carry several requests.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not consumed yet.
    buffer: Vec<u8>,
}

impl Conn {
    fn open(address: SocketAddr) -> Conn {
        let stream = TcpStream::connect(address).expect("connect to the HTTP listener");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Conn {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the server");
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(error) if error.kind() == ErrorKind::ConnectionReset => false,
            Err(error) => panic!("read from the server: {error}"),
        }
    }

    /// Reads the next response. `head_request` tells that it answers HEAD
    /// (so a Content-Length announces no body). A chunked (streamed) body is
    /// left in the buffer.
    fn response(&mut self, head_request: bool) -> Reply {
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at;
            }
            assert!(
                self.fill(),
                "the connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec()).expect("an ASCII head");
        self.buffer.drain(..head_end + 4);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        let mut reply = Reply {
            status,
            head,
            body: Vec::new(),
        };
        let chunked = reply
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if head_request || chunked {
            return reply;
        }
        let length: usize = reply
            .header("content-length")
            .map(|v| v.parse().expect("a numeric Content-Length"))
            .unwrap_or_else(|| panic!("a response without framing: {}", reply.head));
        while self.buffer.len() < length {
            assert!(self.fill(), "the connection closed inside a body");
        }
        reply.body = self.buffer.drain(..length).collect();
        reply
    }

    /// True when the server closes the connection with nothing more to read.
    fn closed(&mut self) -> bool {
        self.buffer.is_empty() && !self.fill()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request's bytes: HTTP/1.1, keep-alive unless `extra` says otherwise.
fn request_bytes(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra: &str,
) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: starling.test\r\n{extra}");
    if let Some(token) = token {
        text.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body {
        Some(body) => text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => text.push_str("\r\n"),
    }
    text.into_bytes()
}

/// One request on a new connection with `Connection: close`; checks that
/// the server then closes it.
fn call_raw(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut conn = Conn::open(address);
    conn.send(&request_bytes(
        method,
        path,
        token,
        body,
        "Connection: close\r\n",
    ));
    let reply = conn.response(method == "HEAD");
    assert_eq!(
        reply.header("connection").as_deref(),
        Some("close"),
        "{}",
        reply.head
    );
    assert!(
        conn.closed(),
        "the server keeps a `Connection: close` connection open"
    );
    reply
}

fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let body = body.map(|b| b.to_string());
    call_raw(address, method, path, token, body.as_deref())
}

/// A successful call's JSON, with the status checked.
fn ok(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let reply = call(address, method, path, Some(token), body);
    assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    reply.json()
}

/// A failed call's status and code.
fn fails(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let reply = call(address, method, path, token, body);
    (reply.status, reply.error_code())
}

/// A failed call with a raw body.
fn fails_raw(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let reply = call_raw(address, method, path, token, Some(body));
    (reply.status, reply.error_code())
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn published_shape(value: &Value) {
    assert_eq!(
        keys(value),
        ["duplicate", "durable", "seq", "timestamp_ms"],
        "{value}"
    );
    assert!(value["seq"].as_u64().unwrap() > 0);
    assert!(value["timestamp_ms"].as_u64().unwrap() > 0);
    assert_eq!(value["durable"], true);
}

fn history(address: SocketAddr, channel: &str, token: &str) -> Vec<Value> {
    let page = ok(
        address,
        "GET",
        &format!("/v1/channels/{channel}/messages"),
        token,
        None,
        200,
    );
    page["messages"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------
// The web client, the document, health and metrics.

#[test]
fn the_web_client_is_served_with_its_content_types() {
    let (_dir, server) = server();
    for (path, content_type, marker) in [
        ("/", "text/html; charset=utf-8", "<html"),
        ("/index.html", "text/html; charset=utf-8", "<html"),
        ("/app.js", "text/javascript; charset=utf-8", ""),
        ("/app.css", "text/css; charset=utf-8", ""),
    ] {
        let reply = call_raw(server.http, "GET", path, None, None);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some(content_type),
            "{path}"
        );
        assert_eq!(
            reply.header("cache-control").as_deref(),
            Some("no-cache"),
            "{path}"
        );
        assert!(!reply.body.is_empty(), "{path}");
        assert!(reply.text().contains(marker), "{path}");
        // HEAD: the same head with the GET's Content-Length, and no body.
        let head = call_raw(server.http, "HEAD", path, None, None);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type").as_deref(), Some(content_type));
        assert_eq!(
            head.header("content-length"),
            Some(reply.body.len().to_string()),
            "HEAD {path}"
        );
        assert!(head.body.is_empty());
    }
}

#[test]
fn a_head_answer_has_no_body_on_a_kept_connection() {
    let (_dir, server) = server();
    // If the HEAD answer carried a body, the next response would not parse.
    let mut conn = Conn::open(server.http);
    let mut bytes = request_bytes("HEAD", "/", None, None, "");
    bytes.extend(request_bytes("GET", "/healthz", None, None, ""));
    conn.send(&bytes);
    let head = conn.response(true);
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    let health = conn.response(false);
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    // The security routes too (here unconfigured: 404 without a body).
    let mut bytes = request_bytes("HEAD", "/v1/admin/users", Some("alice"), None, "");
    bytes.extend(request_bytes("GET", "/healthz", None, None, ""));
    conn.send(&bytes);
    assert_eq!(conn.response(true).status, 404);
    assert_eq!(conn.response(false).json(), json!({"status": "ok"}));
}

#[test]
fn the_openapi_document_is_served_and_parses() {
    let (_dir, server) = server();
    let reply = call_raw(server.http, "GET", "/v1/openapi.json", None, None);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reply.text(),
        OPENAPI_SOURCE,
        "the binary serves the document in the tree"
    );
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for schema in [
        "Message",
        "Published",
        "ChannelInfo",
        "Error",
        "History",
        "Subscribed",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    // Every local reference resolves.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => found.push(target),
                        _ => refs(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target.strip_prefix('#').expect("local references only");
        assert!(
            doc.pointer(pointer).is_some(),
            "dangling reference {target}"
        );
    }
    // Operation ids are unique.
    let mut ids = Vec::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, operation) in item.as_object().unwrap() {
            ids.push(
                operation["operationId"]
                    .as_str()
                    .expect("an operationId")
                    .to_string(),
            );
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operationIds");
}

/// The routes the tests in this file exercise, as (method, OpenAPI path).
const TESTED_ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("head", "/"),
    ("get", "/index.html"),
    ("get", "/app.js"),
    ("get", "/app.css"),
    ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/ws"),
    ("get", "/v1/me/channels"),
    ("put", "/v1/me/presence"),
    ("get", "/v1/directory"),
    ("post", "/v1/channels"),
    ("post", "/v1/direct"),
    ("get", "/v1/channels/{channel}"),
    ("patch", "/v1/channels/{channel}"),
    ("post", "/v1/channels/{channel}/join"),
    ("get", "/v1/channels/{channel}/members"),
    ("post", "/v1/channels/{channel}/members"),
    ("delete", "/v1/channels/{channel}/members/{user}"),
    ("post", "/v1/channels/{channel}/messages"),
    ("get", "/v1/channels/{channel}/messages"),
    ("patch", "/v1/channels/{channel}/messages/{seq}"),
    ("delete", "/v1/channels/{channel}/messages/{seq}"),
    ("post", "/v1/channels/{channel}/messages/{seq}/reactions"),
    (
        "delete",
        "/v1/channels/{channel}/messages/{seq}/reactions/{emoji}",
    ),
    ("get", "/v1/channels/{channel}/messages/{seq}/read-by"),
    ("get", "/v1/channels/{channel}/threads/{root}"),
    ("put", "/v1/channels/{channel}/read"),
    ("post", "/v1/channels/{channel}/typing"),
    ("get", "/v1/channels/{channel}/events"),
];

const METHODS: &[&str] = &["get", "head", "post", "put", "patch", "delete", "options"];

fn openapi() -> Value {
    serde_json::from_str(OPENAPI_SOURCE).expect("the OpenAPI document is JSON")
}

/// Every operation of the document as (method, path template, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                found.push((method.clone(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// A concrete path for a template, with sample path parameters.
fn concrete(template: &str) -> String {
    template
        .replace("{channel}", "general")
        .replace("{seq}", "1")
        .replace("{root}", "1")
        .replace("{user}", "bob")
        .replace("{emoji}", "%F0%9F%91%8D")
}

/// A valid body for a route, when it takes one.
fn sample_body(method: &str, template: &str) -> Option<Value> {
    Some(match (method, template) {
        ("put", "/v1/me/presence") => json!({"status": "away"}),
        ("post", "/v1/channels") => json!({"channel": "fresh"}),
        ("post", "/v1/direct") => json!({"users": ["bob"]}),
        ("patch", "/v1/channels/{channel}") => json!({"topic": "t"}),
        ("post", "/v1/channels/{channel}/members") => json!({"user": "carol"}),
        ("post", "/v1/channels/{channel}/messages") => json!({"text": "hi"}),
        ("patch", "/v1/channels/{channel}/messages/{seq}") => json!({"text": "edited"}),
        ("post", "/v1/channels/{channel}/messages/{seq}/reactions") => json!({"emoji": "👍"}),
        ("put", "/v1/channels/{channel}/read") => json!({"seq": 1}),
        _ => return None,
    })
}

/// Whether a reply is the router's "no route" answer.
fn is_no_route(reply: &Reply) -> bool {
    reply.status == 404
        && serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .map(|m| m.starts_with("no route"))
            })
            .unwrap_or(false)
}

#[test]
fn every_documented_route_is_routed_and_every_tested_route_is_documented() {
    let (_dir, server) = server();
    // A channel and a message so that the routes have something to act on.
    ok(
        server.http,
        "POST",
        "/v1/channels",
        "alice",
        Some(json!({"channel": "general"})),
        201,
    );
    ok(
        server.http,
        "POST",
        "/v1/channels/general/messages",
        "alice",
        Some(json!({"text": "first"})),
        201,
    );
    let doc = openapi();
    let operations = operations(&doc);
    assert!(operations.len() >= TESTED_ROUTES.len());
    for (method, template, operation) in &operations {
        let path = concrete(template);
        let upper = method.to_uppercase();
        let body = sample_body(method, template).map(|b| b.to_string());
        let mut conn = Conn::open(server.http);
        conn.send(&request_bytes(
            &upper,
            &path,
            Some("alice"),
            body.as_deref(),
            "Connection: close\r\n",
        ));
        let reply = conn.response(upper == "HEAD");
        assert!(
            !is_no_route(&reply),
            "{upper} {path} is documented but not routed: {}",
            reply.text()
        );
        // The status is one the document lists for the operation.
        let documented = &operation["responses"];
        assert!(
            documented.get(reply.status.to_string()).is_some(),
            "{upper} {template} answered {} which the document does not list: {}",
            reply.status,
            reply.text()
        );
    }
    for (method, template) in TESTED_ROUTES {
        assert!(
            doc["paths"][template][method].is_object(),
            "{method} {template} is tested but not documented"
        );
    }
    // The converse: every documented operation is exercised by these tests.
    for (method, template, _) in &operations {
        let tested = TESTED_ROUTES
            .iter()
            .any(|(m, t)| m == method && t == template);
        let head_of_tested_get = method == "head"
            && TESTED_ROUTES
                .iter()
                .any(|(m, t)| *m == "get" && t == template);
        assert!(
            tested || head_of_tested_get,
            "{method} {template} is documented but not tested"
        );
    }
}

#[test]
fn every_authenticated_route_needs_a_bearer_token() {
    let (_dir, server) = server();
    let doc = openapi();
    let mut checked = 0;
    for (method, template, operation) in operations(&doc) {
        if operation.get("security") == Some(&json!([])) {
            continue;
        }
        let upper = method.to_uppercase();
        let path = concrete(&template);
        let body = sample_body(&method, &template);
        assert_eq!(
            fails(server.http, &upper, &path, None, body.clone()),
            (401, "unauthenticated".to_string()),
            "{upper} {path}"
        );
        // A token that cannot be a user name, and another scheme.
        assert_eq!(
            fails(server.http, &upper, &path, Some("$server"), body.clone()),
            (401, "unauthenticated".to_string()),
            "{upper} {path}"
        );
        let body_text = body.map(|b| b.to_string());
        let mut conn = Conn::open(server.http);
        conn.send(&request_bytes(
            &upper,
            &path,
            None,
            body_text.as_deref(),
            "Authorization: Basic YWxpY2U6eA==\r\nConnection: close\r\n",
        ));
        let reply = conn.response(false);
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (401, "unauthenticated")
        );
        checked += 1;
    }
    assert!(
        checked >= 22,
        "only {checked} authenticated routes in the document"
    );
}

#[test]
fn authentication_is_checked_before_the_body() {
    let (_dir, server) = server();
    assert_eq!(
        fails(server.http, "POST", "/v1/channels", None, Some(json!({}))),
        (401, "unauthenticated".to_string())
    );
    assert_eq!(
        fails_raw(
            server.http,
            "POST",
            "/v1/channels/general/messages",
            None,
            "{not json"
        ),
        (401, "unauthenticated".to_string())
    );
}

#[test]
fn one_connection_serves_one_user() {
    let (_dir, server) = server();
    let mut conn = Conn::open(server.http);
    conn.send(&request_bytes(
        "GET",
        "/v1/me/channels",
        Some("alice"),
        None,
        "",
    ));
    assert_eq!(conn.response(false).status, 200);
    conn.send(&request_bytes(
        "GET",
        "/v1/me/channels",
        Some("bob"),
        None,
        "",
    ));
    let reply = conn.response(false);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_argument")
    );
    // The connection stays, for its user.
    conn.send(&request_bytes(
        "GET",
        "/v1/me/channels",
        Some("alice"),
        None,
        "",
    ));
    assert_eq!(conn.response(false).json(), json!({"channels": []}));
}

#[test]
fn health_and_readiness() {
    let (_dir, server) = server();
    let health = call_raw(server.http, "GET", "/healthz", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(
        health.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(health.json(), json!({"status": "ok"}));
    // Ready comes with the engine; give it a bounded number of looks.
    let mut ready = None;
    for _ in 0..100 {
        let reply = call_raw(server.http, "GET", "/readyz", None, None);
        if reply.status == 200 {
            ready = Some(reply);
            break;
        }
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json(), json!({"status": "starting"}));
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = ready.expect("the server becomes ready");
    assert_eq!(ready.json(), json!({"status": "ready"}));
    let head = call_raw(server.http, "HEAD", "/healthz", None, None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

/// The value of sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.parse().expect("a numeric sample"))
        })
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[test]
fn metrics_are_prometheus_text_and_count_traffic() {
    let (_dir, server) = server();
    let reply = call_raw(server.http, "GET", "/metrics", None, None);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4")
    );
    let before = reply.text();
    for line in before.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            assert_eq!(parts.len(), 2, "{line}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&parts[1]),
                "{line}"
            );
            assert!(parts[0].starts_with("starling_"), "{line}");
            if parts[1] == "counter" {
                assert!(parts[0].ends_with("_total"), "{line}");
            }
        } else if !line.starts_with("# HELP starling_") {
            // `name value` or `name{labels} value`.
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("starling_"), "{line}");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
        }
    }
    assert!(before.contains("# TYPE starling_connections_opened_total counter\n"));
    assert!(before.contains("# TYPE starling_connections gauge\n"));
    let opened = sample(&before, "starling_connections_opened_total");
    let messages = sample(&before, "starling_messages_in_total");
    assert!(opened >= 1, "this request's own connection counts");
    for n in 0..3 {
        ok(
            server.http,
            "POST",
            "/v1/channels/general/messages",
            "alice",
            Some(json!({"text": format!("m{n}")})),
            201,
        );
    }
    let after = call_raw(server.http, "GET", "/metrics", None, None).text();
    assert!(sample(&after, "starling_connections_opened_total") >= opened + 4);
    assert!(sample(&after, "starling_messages_in_total") >= messages + 3);
    assert!(sample(&after, "starling_bytes_in_total") > sample(&before, "starling_bytes_in_total"));
}

// ---------------------------------------------------------------------------
// Channels.

#[test]
fn channels_are_created_changed_joined_and_listed() {
    let (_dir, server) = server();
    let a = server.http;
    let created = ok(
        a,
        "POST",
        "/v1/channels",
        "alice",
        Some(json!({"channel": "general", "topic": "all hands"})),
        201,
    );
    assert_eq!(
        created,
        json!({"channel": "general", "name": "general", "visibility": "public", "topic": "all hands",
               "owner": "alice", "members": ["alice"], "head_seq": 1})
    );
    assert_eq!(
        ok(a, "GET", "/v1/channels/general", "carol", None, 200),
        created
    );
    let joined = ok(a, "POST", "/v1/channels/general/join", "bob", None, 200);
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    assert_eq!(joined["head_seq"], 2);
    // Joining again changes nothing.
    assert_eq!(
        ok(a, "POST", "/v1/channels/general/join", "bob", None, 200),
        joined
    );
    let renamed = ok(
        a,
        "PATCH",
        "/v1/channels/general",
        "bob",
        Some(json!({"name": "General"})),
        200,
    );
    assert_eq!(renamed["name"], "General");
    let topic = ok(
        a,
        "PATCH",
        "/v1/channels/general",
        "alice",
        Some(json!({"topic": "news"})),
        200,
    );
    assert_eq!(topic["topic"], "news");
    assert_eq!(topic["name"], "General");
    assert_eq!(
        ok(a, "GET", "/v1/channels/general/members", "carol", None, 200),
        json!({"channel": "general", "members": [
            {"user": "alice", "presence": "offline"}, {"user": "bob", "presence": "offline"}]})
    );
    assert_eq!(
        ok(a, "GET", "/v1/directory", "carol", None, 200),
        json!({"channels": [{"channel": "general", "name": "General", "topic": "news", "members": 2}]})
    );
    // The member's list, with the channel events as its last message.
    let mine = ok(a, "GET", "/v1/me/channels", "bob", None, 200);
    let channels = mine["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{mine}");
    let entry = &channels[0];
    assert_eq!(
        keys(entry),
        [
            "channel",
            "head_seq",
            "last_message",
            "members",
            "name",
            "read_seq",
            "topic",
            "unread",
            "visibility"
        ]
    );
    assert_eq!(entry["channel"], "general");
    assert_eq!(entry["name"], "General");
    assert_eq!(entry["members"], json!(["alice", "bob"]));
    assert_eq!(entry["head_seq"], 4);
    assert_eq!(entry["read_seq"], 0);
    assert_eq!(entry["unread"], 0);
    assert_eq!(entry["last_message"]["kind"], "channel_event");
    assert_eq!(entry["last_message"]["seq"], 4);
    assert_eq!(
        ok(a, "GET", "/v1/me/channels", "carol", None, 200),
        json!({"channels": []})
    );
    // PATCH takes exactly one change.
    for body in [json!({}), json!({"name": "x", "topic": "y"})] {
        assert_eq!(
            fails(
                a,
                "PATCH",
                "/v1/channels/general",
                Some("alice"),
                Some(body)
            ),
            (400, "invalid_argument".to_string())
        );
    }
    assert_eq!(
        fails(
            a,
            "PATCH",
            "/v1/channels/general",
            Some("carol"),
            Some(json!({"name": "mine"}))
        ),
        (403, "denied".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            "/v1/channels/nowhere",
            Some("alice"),
            Some(json!({"name": "x"}))
        ),
        (404, "not_found".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            "/v1/channels/general",
            Some("alice"),
            Some(json!({"name": 7}))
        ),
        (400, "malformed".to_string())
    );
}

#[test]
fn channel_creation_refuses_bad_requests() {
    let (_dir, server) = server();
    let a = server.http;
    let bad = [
        (json!({}), 400, "malformed"),
        (json!({"channel": 5}), 400, "malformed"),
        (json!({"channel": "x", "colour": "red"}), 400, "malformed"),
        (
            json!({"channel": "x", "visibility": "secret"}),
            400,
            "malformed",
        ),
        (json!({"channel": "x", "members": "bob"}), 400, "malformed"),
        (json!({"channel": "Not Valid"}), 400, "invalid_argument"),
        (json!({"channel": "$chat"}), 400, "invalid_argument"),
        (
            json!({"channel": "x", "visibility": "direct"}),
            400,
            "invalid_argument",
        ),
        (
            json!({"channel": "x", "members": ["bad/name"]}),
            400,
            "invalid_argument",
        ),
        (
            json!({"channel": "x", "topic": "t".repeat(2000)}),
            400,
            "invalid_argument",
        ),
    ];
    for (body, status, code) in bad {
        assert_eq!(
            fails(a, "POST", "/v1/channels", Some("alice"), Some(body.clone())),
            (status, code.to_string()),
            "{body}"
        );
    }
    for (text, what) in [
        ("{\"channel\":", "truncated"),
        ("[1, 2]", "not an object"),
        ("hello", "not JSON"),
    ] {
        assert_eq!(
            fails_raw(a, "POST", "/v1/channels", Some("alice"), text),
            (400, "malformed".to_string()),
            "{what}"
        );
    }
    // Nothing was created by the refusals.
    assert_eq!(
        ok(a, "GET", "/v1/directory", "alice", None, 200),
        json!({"channels": []})
    );
}

#[test]
fn creating_an_existing_channel_is_a_conflict() {
    let (_dir, server) = server();
    let body = json!({"channel": "general"});
    ok(
        server.http,
        "POST",
        "/v1/channels",
        "alice",
        Some(body.clone()),
        201,
    );
    assert_eq!(
        fails(server.http, "POST", "/v1/channels", Some("bob"), Some(body)),
        (409, "already_exists".to_string())
    );
}

#[test]
fn private_channels_admit_members_only() {
    let (_dir, server) = server();
    let a = server.http;
    let created = ok(
        a,
        "POST",
        "/v1/channels",
        "alice",
        Some(
            json!({"channel": "hr", "name": "People", "visibility": "private", "members": ["bob"]}),
        ),
        201,
    );
    assert_eq!(created["visibility"], "private");
    assert_eq!(created["name"], "People");
    assert_eq!(created["members"], json!(["alice", "bob"]));
    // Not in the directory.
    assert_eq!(
        ok(a, "GET", "/v1/directory", "carol", None, 200),
        json!({"channels": []})
    );
    let denied = (403, "denied".to_string());
    assert_eq!(
        fails(a, "GET", "/v1/channels/hr", Some("carol"), None),
        denied
    );
    assert_eq!(
        fails(a, "GET", "/v1/channels/hr/members", Some("carol"), None),
        denied
    );
    assert_eq!(
        fails(a, "POST", "/v1/channels/hr/join", Some("carol"), None),
        denied
    );
    assert_eq!(
        fails(
            a,
            "POST",
            "/v1/channels/hr/messages",
            Some("carol"),
            Some(json!({"text": "hi"}))
        ),
        denied
    );
    assert_eq!(
        fails(a, "GET", "/v1/channels/hr/messages", Some("carol"), None),
        denied
    );
    assert_eq!(
        fails(a, "POST", "/v1/channels/hr/typing", Some("carol"), None),
        denied
    );
    assert_eq!(
        fails(
            a,
            "POST",
            "/v1/channels/hr/members",
            Some("carol"),
            Some(json!({"user": "carol"}))
        ),
        denied
    );
    assert_eq!(
        fails(
            a,
            "PUT",
            "/v1/channels/hr/read",
            Some("carol"),
            Some(json!({"seq": 1}))
        ),
        denied
    );
    // A member invites; the invited user leaves by deleting themself.
    let invited = ok(
        a,
        "POST",
        "/v1/channels/hr/members",
        "bob",
        Some(json!({"user": "carol"})),
        200,
    );
    assert_eq!(invited["members"], json!(["alice", "bob", "carol"]));
    assert_eq!(
        ok(a, "GET", "/v1/channels/hr", "carol", None, 200)["name"],
        "People"
    );
    let left = ok(
        a,
        "DELETE",
        "/v1/channels/hr/members/carol",
        "carol",
        None,
        200,
    );
    assert_eq!(left["members"], json!(["alice", "bob"]));
    assert_eq!(
        fails(a, "GET", "/v1/channels/hr", Some("carol"), None),
        denied
    );
    assert_eq!(
        fails(
            a,
            "DELETE",
            "/v1/channels/hr/members/carol",
            Some("carol"),
            None
        ),
        denied
    );
    // Only the owner removes others; removing a non-member is not found.
    assert_eq!(
        fails(
            a,
            "DELETE",
            "/v1/channels/hr/members/alice",
            Some("bob"),
            None
        ),
        denied
    );
    assert_eq!(
        fails(
            a,
            "DELETE",
            "/v1/channels/hr/members/dave",
            Some("alice"),
            None
        ),
        (404, "not_found".to_string())
    );
    let removed = ok(
        a,
        "DELETE",
        "/v1/channels/hr/members/bob",
        "alice",
        None,
        200,
    );
    assert_eq!(removed["members"], json!(["alice"]));
    assert_eq!(
        ok(a, "GET", "/v1/me/channels", "bob", None, 200),
        json!({"channels": []})
    );
    // Invitation errors.
    assert_eq!(
        fails(
            a,
            "POST",
            "/v1/channels/hr/members",
            Some("alice"),
            Some(json!({}))
        ),
        (400, "malformed".to_string())
    );
    assert_eq!(
        fails(
            a,
            "POST",
            "/v1/channels/hr/members",
            Some("alice"),
            Some(json!({"user": "a/b"}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "POST",
            "/v1/channels/nowhere/members",
            Some("alice"),
            Some(json!({"user": "bob"}))
        ),
        (404, "not_found".to_string())
    );
}

#[test]
fn unknown_channels_cannot_be_joined_or_left() {
    let (_dir, server) = server();
    let not_found = (404, "not_found".to_string());
    assert_eq!(
        fails(
            server.http,
            "POST",
            "/v1/channels/nowhere/join",
            Some("alice"),
            None
        ),
        not_found
    );
    assert_eq!(
        fails(
            server.http,
            "DELETE",
            "/v1/channels/nowhere/members/alice",
            Some("alice"),
            None
        ),
        not_found
    );
    assert_eq!(
        fails(
            server.http,
            "DELETE",
            "/v1/channels/nowhere/members/bob",
            Some("alice"),
            None
        ),
        not_found
    );
    // A channel nobody created answers its info: public, without members.
    assert_eq!(
        ok(
            server.http,
            "GET",
            "/v1/channels/nowhere",
            "alice",
            None,
            200
        ),
        json!({"channel": "nowhere", "name": "nowhere", "visibility": "public", "topic": "",
               "owner": "", "members": [], "head_seq": 0})
    );
}

#[test]
fn direct_channels_travel_percent_encoded() {
    let (_dir, server) = server();
    let a = server.http;
    let direct = ok(
        a,
        "POST",
        "/v1/direct",
        "alice",
        Some(json!({"users": ["bob"]})),
        200,
    );
    assert_eq!(direct["channel"], "dm/alice+bob");
    assert_eq!(direct["visibility"], "direct");
    assert_eq!(direct["members"], json!(["alice", "bob"]));
    // Asking again, from either side, is the same channel.
    let again = ok(
        a,
        "POST",
        "/v1/direct",
        "bob",
        Some(json!({"users": ["alice"]})),
        200,
    );
    assert_eq!(again, direct);
    let path = "/v1/channels/dm%2Falice%2Bbob";
    assert_eq!(ok(a, "GET", path, "bob", None, 200), direct);
    assert_eq!(
        fails(a, "GET", path, Some("carol"), None),
        (403, "denied".to_string())
    );
    let published = ok(
        a,
        "POST",
        &format!("{path}/messages"),
        "bob",
        Some(json!({"text": "psst"})),
        201,
    );
    published_shape(&published);
    let page = ok(a, "GET", &format!("{path}/messages"), "alice", None, 200);
    assert_eq!(page["channel"], "dm/alice+bob");
    assert_eq!(
        page["messages"].as_array().unwrap().last().unwrap()["text"],
        "psst"
    );
    assert_eq!(
        fails(
            a,
            "POST",
            &format!("{path}/members"),
            Some("alice"),
            Some(json!({"user": "carol"}))
        ),
        (400, "invalid_argument".to_string())
    );
    for (body, code) in [
        (json!({"users": []}), "invalid_argument"),
        (json!({"users": ["alice"]}), "invalid_argument"),
        (json!({"users": ["a+b"]}), "invalid_argument"),
        (json!({"users": "bob"}), "malformed"),
        (json!({}), "malformed"),
    ] {
        assert_eq!(
            fails(a, "POST", "/v1/direct", Some("alice"), Some(body.clone())),
            (400, code.to_string()),
            "{body}"
        );
    }
}

#[test]
fn presence_is_set_over_http() {
    let (_dir, server) = server();
    let a = server.http;
    ok(
        a,
        "POST",
        "/v1/channels",
        "alice",
        Some(json!({"channel": "team", "members": ["bob"]})),
        201,
    );
    assert_eq!(
        ok(
            a,
            "PUT",
            "/v1/me/presence",
            "bob",
            Some(json!({"status": "away"})),
            200
        ),
        json!({})
    );
    // Recorded in the background: look a bounded number of times.
    let mut presence = Value::Null;
    for _ in 0..100 {
        let members = ok(a, "GET", "/v1/channels/team/members", "alice", None, 200);
        presence = members["members"][1]["presence"].clone();
        if presence == "away" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(presence, "away");
    assert_eq!(
        fails(
            a,
            "PUT",
            "/v1/me/presence",
            Some("bob"),
            Some(json!({"status": "busy"}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(a, "PUT", "/v1/me/presence", Some("bob"), Some(json!({}))),
        (400, "malformed".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PUT",
            "/v1/me/presence",
            Some("bob"),
            Some(json!({"status": true}))
        ),
        (400, "malformed".to_string())
    );
}

// ---------------------------------------------------------------------------
// Messages.

#[test]
fn publish_answers_the_record_and_is_idempotent() {
    let (_dir, server) = server();
    let a = server.http;
    let path = "/v1/channels/general/messages";
    let first = ok(
        a,
        "POST",
        path,
        "alice",
        Some(json!({"text": "hello", "client_id": "c-1"})),
        201,
    );
    published_shape(&first);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["duplicate"], false);
    let retry = ok(
        a,
        "POST",
        path,
        "alice",
        Some(json!({"text": "hello", "client_id": "c-1"})),
        201,
    );
    assert_eq!(retry["seq"], 1);
    assert_eq!(retry["duplicate"], true);
    // Another user's same client id is another message.
    let other = ok(
        a,
        "POST",
        path,
        "bob",
        Some(json!({"text": "hello", "client_id": "c-1"})),
        201,
    );
    assert_eq!(other["seq"], 2);
    assert_eq!(other["duplicate"], false);
    let page = ok(a, "GET", path, "carol", None, 200);
    assert_eq!(keys(&page), ["channel", "head_seq", "messages"]);
    assert_eq!(page["channel"], "general");
    assert_eq!(page["head_seq"], 2);
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "the retry appended nothing");
    assert_eq!(
        messages[0],
        json!({"seq": 1, "timestamp_ms": first["timestamp_ms"], "kind": "message", "sender": "alice",
               "client_id": "c-1", "relation": 0, "text": "hello"})
    );
    assert_eq!(messages[1]["sender"], "bob");
}

#[test]
fn publish_refuses_bad_bodies() {
    let (_dir, server) = server();
    let a = server.http;
    let path = "/v1/channels/general/messages";
    for (body, code) in [
        (json!({}), "malformed"),
        (json!({"text": 5}), "malformed"),
        (json!({"text": "x", "client_id": 1}), "malformed"),
        (json!({"text": "x", "reply_to": "one"}), "malformed"),
        (json!({"text": "x", "extra": true}), "malformed"),
    ] {
        assert_eq!(
            fails(a, "POST", path, Some("alice"), Some(body.clone())),
            (400, code.to_string()),
            "{body}"
        );
    }
    assert_eq!(
        fails_raw(a, "POST", path, Some("alice"), "{\"text\""),
        (400, "malformed".to_string())
    );
    assert_eq!(
        fails_raw(a, "POST", path, Some("alice"), "\"hi\""),
        (400, "malformed".to_string())
    );
    // An empty body is an empty object, which lacks `text`.
    assert_eq!(
        fails_raw(a, "POST", path, Some("alice"), ""),
        (400, "malformed".to_string())
    );
    // Reserved channels belong to the server.
    assert_eq!(
        fails(
            a,
            "POST",
            "/v1/channels/%24chat%2Fdirectory/messages",
            Some("alice"),
            Some(json!({"text": "x"}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "GET",
            "/v1/channels/%24chat%2Fuser%2Fbob/messages",
            Some("alice"),
            None
        ),
        (400, "invalid_argument".to_string())
    );
    assert!(history(a, "general", "alice").is_empty());
}

#[test]
fn history_pages_with_query_parameters() {
    let (_dir, server) = server();
    let a = server.http;
    for n in 1..=5 {
        ok(
            a,
            "POST",
            "/v1/channels/room/messages",
            "alice",
            Some(json!({"text": format!("m{n}")})),
            201,
        );
    }
    let seqs = |query: &str| -> Vec<u64> {
        let page = ok(
            a,
            "GET",
            &format!("/v1/channels/room/messages{query}"),
            "bob",
            None,
            200,
        );
        assert_eq!(page["head_seq"], 5);
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(""), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs("?limit=2"), vec![4, 5]);
    assert_eq!(seqs("?before=4&limit=2"), vec![2, 3]);
    assert_eq!(seqs("?after=2"), vec![3, 4, 5]);
    assert_eq!(seqs("?after=1&limit=2"), vec![2, 3]);
    assert_eq!(seqs("?after=5"), Vec::<u64>::new());
    // The largest seq: nothing after it (the next one wrapped to 0 before).
    assert_eq!(seqs("?after=18446744073709551615"), Vec::<u64>::new());
    let invalid = (400, "invalid_argument".to_string());
    let path = "/v1/channels/room/messages";
    assert_eq!(
        fails(
            a,
            "GET",
            &format!("{path}?before=3&after=1"),
            Some("bob"),
            None
        ),
        invalid
    );
    assert_eq!(
        fails(a, "GET", &format!("{path}?limit=ten"), Some("bob"), None),
        invalid
    );
    assert_eq!(
        fails(a, "GET", &format!("{path}?after=-1"), Some("bob"), None),
        invalid
    );
}

#[test]
fn edits_deletes_reactions_replies_and_read_markers() {
    let (_dir, server) = server();
    let a = server.http;
    ok(
        a,
        "POST",
        "/v1/channels",
        "alice",
        Some(json!({"channel": "team", "members": ["bob"]})),
        201,
    );
    // Seq 1 is the creation event.
    let base = "/v1/channels/team/messages";
    let root = ok(
        a,
        "POST",
        base,
        "bob",
        Some(json!({"text": "original"})),
        201,
    )["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(root, 2);

    // Edit: the sender only, messages only, existing ones only.
    let edit = ok(
        a,
        "PATCH",
        &format!("{base}/2"),
        "bob",
        Some(json!({"text": "edited", "client_id": "e1"})),
        200,
    );
    published_shape(&edit);
    assert_eq!(edit["seq"], 3);
    assert_eq!(
        fails(
            a,
            "PATCH",
            &format!("{base}/2"),
            Some("alice"),
            Some(json!({"text": "mine"}))
        ),
        (403, "denied".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            &format!("{base}/99"),
            Some("bob"),
            Some(json!({"text": "x"}))
        ),
        (404, "not_found".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            &format!("{base}/1"),
            Some("alice"),
            Some(json!({"text": "x"}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            &format!("{base}/two"),
            Some("bob"),
            Some(json!({"text": "x"}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            &format!("{base}/2"),
            Some("bob"),
            Some(json!({"text": ["x"]}))
        ),
        (400, "malformed".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PATCH",
            &format!("{base}/2"),
            Some("bob"),
            Some(json!({}))
        ),
        (400, "malformed".to_string())
    );

    // Reactions: add with a body, remove by path (percent-encoded emoji).
    let add = ok(
        a,
        "POST",
        &format!("{base}/2/reactions"),
        "alice",
        Some(json!({"emoji": "👍"})),
        200,
    );
    published_shape(&add);
    assert_eq!(add["seq"], 4);
    let remove = ok(
        a,
        "DELETE",
        &format!("{base}/2/reactions/%F0%9F%91%8D"),
        "alice",
        None,
        200,
    );
    assert_eq!(remove["seq"], 5);
    let remove_by_body = ok(
        a,
        "POST",
        &format!("{base}/2/reactions"),
        "bob",
        Some(json!({"emoji": "ok", "remove": true})),
        200,
    );
    assert_eq!(remove_by_body["seq"], 6);
    assert_eq!(
        fails(
            a,
            "POST",
            &format!("{base}/2/reactions"),
            Some("alice"),
            Some(json!({"emoji": ""}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "POST",
            &format!("{base}/2/reactions"),
            Some("alice"),
            Some(json!({"emoji": "x".repeat(65)}))
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "POST",
            &format!("{base}/2/reactions"),
            Some("alice"),
            Some(json!({}))
        ),
        (400, "malformed".to_string())
    );
    assert_eq!(
        fails(
            a,
            "DELETE",
            &format!("{base}/x/reactions/ok"),
            Some("alice"),
            None
        ),
        (400, "invalid_argument".to_string())
    );

    // A reply and its thread.
    let reply = ok(
        a,
        "POST",
        base,
        "alice",
        Some(json!({"text": "answer", "reply_to": 2})),
        201,
    );
    assert_eq!(reply["seq"], 7);
    let thread = ok(a, "GET", "/v1/channels/team/threads/2", "bob", None, 200);
    assert_eq!(keys(&thread), ["channel", "messages", "root"]);
    assert_eq!(thread["channel"], "team");
    assert_eq!(thread["root"], 2);
    let replies = thread["messages"].as_array().unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["seq"], 7);
    assert_eq!(replies[0]["kind"], "reply");
    assert_eq!(replies[0]["relation"], 2);
    assert_eq!(replies[0]["text"], "answer");
    assert_eq!(
        ok(
            a,
            "GET",
            "/v1/channels/team/threads/2?limit=0",
            "bob",
            None,
            200
        )["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        fails(
            a,
            "GET",
            "/v1/channels/team/threads/root",
            Some("bob"),
            None
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "GET",
            "/v1/channels/team/threads/2?limit=many",
            Some("bob"),
            None
        ),
        (400, "invalid_argument".to_string())
    );

    // Delete: the sender or the owner; not others, not a non-message.
    ok(
        a,
        "POST",
        "/v1/channels/team/members",
        "alice",
        Some(json!({"user": "carol"})),
        200,
    );
    assert_eq!(
        fails(a, "DELETE", &format!("{base}/2"), Some("carol"), None),
        (403, "denied".to_string())
    );
    assert_eq!(
        fails(a, "DELETE", &format!("{base}/4"), Some("alice"), None),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(a, "DELETE", &format!("{base}/99"), Some("alice"), None),
        (404, "not_found".to_string())
    );
    let deleted = ok(a, "DELETE", &format!("{base}/2"), "alice", None, 200);
    published_shape(&deleted);

    // The log holds every change as a record pointing at the original.
    let kinds: Vec<(String, u64)> = history(a, "team", "bob")
        .iter()
        .filter(|m| m["kind"] != "channel_event")
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_string(),
                m["relation"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("message", 0),
        ("edit", 2),
        ("reaction_add", 2),
        ("reaction_remove", 2),
        ("reaction_remove", 2),
        ("reply", 2),
        ("delete", 2),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    assert_eq!(kinds, expected);
    let edit_record = history(a, "team", "bob")
        .into_iter()
        .find(|m| m["kind"] == "edit")
        .unwrap();
    assert_eq!(edit_record["client_id"], "e1");
    assert_eq!(edit_record["text"], "edited");

    // Read markers and read-by.
    assert_eq!(
        ok(
            a,
            "PUT",
            "/v1/channels/team/read",
            "bob",
            Some(json!({"seq": 7})),
            200
        ),
        json!({})
    );
    assert_eq!(
        ok(
            a,
            "GET",
            "/v1/channels/team/messages/7/read-by",
            "alice",
            None,
            200
        ),
        json!({"read": 1, "of": 2, "users": ["bob"]})
    );
    assert_eq!(
        ok(
            a,
            "GET",
            "/v1/channels/team/messages/8/read-by",
            "alice",
            None,
            200
        ),
        json!({"read": 0, "of": 2, "users": []})
    );
    assert_eq!(
        fails(
            a,
            "GET",
            "/v1/channels/team/messages/x/read-by",
            Some("alice"),
            None
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PUT",
            "/v1/channels/team/read",
            Some("bob"),
            Some(json!({}))
        ),
        (400, "malformed".to_string())
    );
    assert_eq!(
        fails(
            a,
            "PUT",
            "/v1/channels/team/read",
            Some("bob"),
            Some(json!({"seq": "7"}))
        ),
        (400, "malformed".to_string())
    );
    let mine = ok(a, "GET", "/v1/me/channels", "bob", None, 200);
    assert_eq!(mine["channels"][0]["read_seq"], 7);

    // Typing is ephemeral: answered, never stored.
    let head_before = ok(a, "GET", base, "bob", None, 200)["head_seq"].clone();
    assert_eq!(
        ok(a, "POST", "/v1/channels/team/typing", "bob", None, 200),
        json!({})
    );
    assert_eq!(
        ok(a, "GET", base, "bob", None, 200)["head_seq"],
        head_before
    );
}

// ---------------------------------------------------------------------------
// Limits, routing, keep-alive and framing.

#[test]
fn bodies_over_the_limits_are_refused() {
    let (_dir, server) = server_with(&[
        ("STARLING_HTTP_BODY_BYTES_MAX", "1024"),
        ("STARLING_ENGINE_BODY_BYTES_MAX", "512"),
    ]);
    // A Content-Length over the HTTP limit is refused before the body.
    let mut conn = Conn::open(server.http);
    conn.send(
        b"POST /v1/channels/general/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n\
          Content-Length: 4096\r\n\r\n",
    );
    let reply = conn.response(false);
    assert_eq!(reply.status, 413);
    reply.error_code();
    assert!(conn.closed(), "the connection closes after a refused body");
    // A chunked body that grows over the limit.
    let mut conn = Conn::open(server.http);
    let chunk = "x".repeat(800);
    conn.send(
        format!(
            "POST /v1/channels/general/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n\
             Transfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(conn.response(false).status, 413);
    assert!(conn.closed());
    // A message over the log's limit, in a body within the HTTP limit.
    let big = "y".repeat(800);
    assert_eq!(
        fails(
            server.http,
            "POST",
            "/v1/channels/general/messages",
            Some("alice"),
            Some(json!({"text": big}))
        ),
        (413, "too_large".to_string())
    );
    // Within both limits.
    ok(
        server.http,
        "POST",
        "/v1/channels/general/messages",
        "alice",
        Some(json!({"text": "small"})),
        201,
    );
}

#[test]
fn unknown_routes_are_not_found() {
    let (_dir, server) = server();
    let a = server.http;
    for (method, path) in [
        ("GET", "/nope"),
        ("POST", "/"),
        ("DELETE", "/healthz"),
        ("GET", "/v1"),
        ("GET", "/v1/nope"),
        ("DELETE", "/v1/channels"),
        ("GET", "/v1/channels/general/messages/1/nope"),
        ("PUT", "/v1/channels/general/messages"),
        ("OPTIONS", "/v1/channels"),
        ("GET", "/v1/channels/general/events/more"),
    ] {
        let reply = call_raw(a, method, path, Some("alice"), None);
        assert_eq!(reply.status, 404, "{method} {path}");
        assert_eq!(reply.error_code(), "not_found", "{method} {path}");
        assert!(is_no_route(&reply), "{method} {path}: {}", reply.text());
    }
    // The WebSocket endpoint refuses what is not a WebSocket handshake.
    let reply = call_raw(a, "POST", "/ws", None, None);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (405, "bad_request")
    );
    let reply = call_raw(a, "GET", "/ws", None, None);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (426, "bad_request")
    );
}

#[test]
fn an_error_answer_to_head_has_no_body() {
    let (_dir, server) = server();
    let mut conn = Conn::open(server.http);
    let mut bytes = request_bytes("HEAD", "/nope", None, None, "");
    bytes.extend(request_bytes(
        "HEAD",
        "/v1/me/channels",
        Some("alice"),
        None,
        "",
    ));
    bytes.extend(request_bytes("GET", "/healthz", None, None, ""));
    conn.send(&bytes);
    let missing = conn.response(true);
    assert_eq!(missing.status, 404);
    let no_route = conn.response(true);
    assert_eq!(no_route.status, 404, "{}", no_route.head);
    let health = conn.response(false);
    assert_eq!(health.status, 200, "{}", health.head);
    assert_eq!(health.json(), json!({"status": "ok"}));
}

/// Servers whose request-read timeout is short (the idle one stays long).
fn server_with_short_request_timeout() -> (tempfile::TempDir, Server) {
    server_with(&[
        ("STARLING_HTTP_REQUEST_READ_TIMEOUT_MS", "200"),
        ("STARLING_HTTP_IDLE_TIMEOUT_MS", "60000"),
    ])
}

#[test]
fn a_request_that_stalls_is_answered_408_and_closed() {
    let (_dir, server) = server_with_short_request_timeout();
    // Half a head on a new connection.
    let mut conn = Conn::open(server.http);
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half");
    let reply = conn.response(false);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(conn.closed());
    // A head whose body does not come.
    let mut conn = Conn::open(server.http);
    conn.send(b"POST /v1/channels/general/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"te");
    let reply = conn.response(false);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(conn.closed());
}

#[test]
fn a_stalled_request_on_a_kept_connection_is_answered_408() {
    let (_dir, server) = server_with_short_request_timeout();
    let mut conn = Conn::open(server.http);
    conn.send(&request_bytes("GET", "/healthz", None, None, ""));
    assert_eq!(conn.response(false).status, 200);
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half");
    let reply = conn.response(false);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(conn.closed());
}

#[test]
fn an_idle_kept_connection_is_closed() {
    let (_dir, server) = server_with(&[("STARLING_HTTP_IDLE_TIMEOUT_MS", "200")]);
    let mut conn = Conn::open(server.http);
    conn.send(&request_bytes("GET", "/healthz", None, None, ""));
    assert_eq!(conn.response(false).status, 200);
    // Nothing more is sent: the server closes without an answer.
    assert!(conn.closed());
}

#[test]
fn keep_alive_answers_pipelined_requests_in_order() {
    let (_dir, server) = server();
    let mut conn = Conn::open(server.http);
    // A slow request (a worker's), a fast one, a broker one and another
    // worker one, all in one write.
    let mut bytes = request_bytes(
        "POST",
        "/v1/channels",
        Some("alice"),
        Some(r#"{"channel":"ops"}"#),
        "",
    );
    bytes.extend(request_bytes("GET", "/healthz", None, None, ""));
    bytes.extend(request_bytes(
        "POST",
        "/v1/channels/ops/messages",
        Some("alice"),
        Some(r#"{"text":"one"}"#),
        "",
    ));
    bytes.extend(request_bytes(
        "GET",
        "/v1/channels/ops",
        Some("alice"),
        None,
        "",
    ));
    bytes.extend(request_bytes("GET", "/nope", None, None, ""));
    conn.send(&bytes);
    let created = conn.response(false);
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["channel"], "ops");
    assert!(created.header("connection").is_none(), "kept alive");
    let health = conn.response(false);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let published = conn.response(false);
    assert_eq!(published.status, 201);
    assert_eq!(published.json()["seq"], 2);
    let info = conn.response(false);
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["head_seq"], 2);
    let missing = conn.response(false);
    assert_eq!(missing.status, 404);
    // The connection still serves; `Connection: close` ends it after the answer.
    conn.send(&request_bytes(
        "GET",
        "/v1/channels/ops/messages",
        Some("alice"),
        None,
        "Connection: close\r\n",
    ));
    let last = conn.response(false);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert_eq!(last.json()["messages"][1]["text"], "one");
    assert!(conn.closed(), "the server closes after `Connection: close`");
}

#[test]
fn an_http_1_0_request_closes_unless_kept_alive() {
    let (_dir, server) = server();
    let mut conn = Conn::open(server.http);
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let reply = conn.response(false);
    assert_eq!(reply.status, 200);
    assert!(conn.closed());
    let mut conn = Conn::open(server.http);
    conn.send(
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /readyz HTTP/1.0\r\n\r\n",
    );
    assert_eq!(conn.response(false).status, 200);
    assert_eq!(conn.response(false).status, 200);
    assert!(conn.closed());
}

/// Sends `bytes` on a new connection and expects one refusal and a close.
fn refused(address: SocketAddr, bytes: &[u8]) -> u16 {
    let mut conn = Conn::open(address);
    conn.send(bytes);
    let reply = conn.response(false);
    assert_eq!(reply.error_code(), "bad_request");
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    assert!(
        conn.closed(),
        "the server closes after refusing {:?}",
        String::from_utf8_lossy(bytes)
    );
    reply.status
}

#[test]
fn smuggling_shapes_and_limits_are_refused_at_the_socket() {
    let (_dir, server) = server();
    let a = server.http;
    // Both framings: 400, and whatever follows is not served.
    assert_eq!(
        refused(
            a,
            b"POST /v1/channels/general/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n\
              Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        400
    );
    assert_eq!(
        refused(
            a,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
        ),
        400
    );
    assert_eq!(
        refused(
            a,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc"
        ),
        400
    );
    assert_eq!(
        refused(
            a,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
        ),
        501
    );
    assert_eq!(
        refused(
            a,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        ),
        501
    );
    assert_eq!(refused(a, b"GET / HTTP/1.1\nHost: x\n\n"), 400);
    assert_eq!(
        refused(a, b"GET / HTTP/1.1\r\n\r\n"),
        400,
        "HTTP/1.1 needs a Host"
    );
    assert_eq!(refused(a, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
    // A head over 16 KiB.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(17 * 1024)
    );
    assert_eq!(refused(a, big.as_bytes()), 431);
    let many: String = (0..70).map(|n| format!("X-{n}: v\r\n")).collect();
    assert_eq!(
        refused(
            a,
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()
        ),
        431
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(17 * 1024));
    assert_eq!(refused(a, long.as_bytes()), 414);
    // None of the refused bodies was published.
    assert!(history(a, "general", "alice").is_empty());
}

#[test]
fn a_chunked_body_is_accepted_and_dechunked() {
    let (_dir, server) = server();
    let mut conn = Conn::open(server.http);
    let body = r#"{"text":"in three pieces"}"#;
    let (one, rest) = body.split_at(5);
    let (two, three) = rest.split_at(9);
    let request = format!(
        "POST /v1/channels/general/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{one}\r\n{:x};ext=1\r\n{two}\r\n{:X}\r\n{three}\r\n0\r\nX-Trailer: t\r\n\r\n",
        one.len(),
        two.len(),
        three.len()
    );
    // Sent in two writes, split inside a chunk.
    let (first, second) = request.as_bytes().split_at(request.len() / 2);
    conn.send(first);
    conn.send(second);
    let reply = conn.response(false);
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["seq"], 1);
    // The connection is in sync for the next request.
    conn.send(&request_bytes(
        "GET",
        "/v1/channels/general/messages",
        Some("alice"),
        None,
        "",
    ));
    let page = conn.response(false).json();
    assert_eq!(page["messages"][0]["text"], "in three pieces");
}

// ---------------------------------------------------------------------------
// Server-Sent Events.

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

/// An open event stream: de-chunks the body and splits it into events.
struct EventStream {
    conn: Conn,
    /// De-chunked text not split into events yet.
    text: String,
}

impl EventStream {
    /// Opens `GET path` with `extra` headers and checks the stream's head.
    fn open(address: SocketAddr, path: &str, token: &str, extra: &str) -> (EventStream, Event) {
        let mut conn = Conn::open(address);
        conn.send(&request_bytes("GET", path, Some(token), None, extra));
        let reply = conn.response(false);
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("text/event-stream")
        );
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(
            reply.header("transfer-encoding").as_deref(),
            Some("chunked")
        );
        assert!(reply.header("content-length").is_none());
        let mut stream = EventStream {
            conn,
            text: String::new(),
        };
        let subscribed = stream.next();
        assert_eq!(subscribed.event, "subscribed");
        assert_eq!(subscribed.id, None);
        (stream, subscribed)
    }

    /// Moves whole chunks from the connection's buffer into `text`.
    fn dechunk(&mut self) {
        loop {
            let buffer = &self.conn.buffer;
            let Some(line_end) = find(buffer, b"\r\n") else {
                return;
            };
            let size_text = std::str::from_utf8(&buffer[..line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size, got {size_text:?}"));
            if size == 0 {
                // The last chunk: stays for `dechunk_to_end`.
                return;
            }
            let start = line_end + 2;
            if buffer.len() < start + size + 2 {
                return;
            }
            assert_eq!(&buffer[start + size..start + size + 2], b"\r\n");
            self.text
                .push_str(std::str::from_utf8(&buffer[start..start + size]).unwrap());
            self.conn.buffer.drain(..start + size + 2);
        }
    }

    /// Reads on to the last chunk and the connection's close; no event may
    /// come before them.
    fn dechunk_to_end(&mut self) {
        while self.conn.fill() {}
        let rest = String::from_utf8(std::mem::take(&mut self.conn.buffer)).unwrap();
        assert!(self.text.is_empty(), "{:?}", self.text);
        assert_eq!(rest, "0\r\n\r\n");
    }

    /// The next event (comments skipped).
    fn next(&mut self) -> Event {
        loop {
            self.dechunk();
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = Event::default();
                let mut comment_only = true;
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    comment_only = false;
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = value.to_string(),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                        }
                        other => panic!("unexpected field {other:?} in {block:?}"),
                    }
                }
                if !comment_only {
                    return event;
                }
                continue;
            }
            assert!(
                !self.conn.buffer.starts_with(b"0\r\n"),
                "the event stream ended"
            );
            assert!(self.conn.fill(), "the event stream closed");
        }
    }

    /// The next `message` event's id and message, checking they agree.
    fn message(&mut self) -> (Option<u64>, Value) {
        let event = self.next();
        assert_eq!(event.event, "message", "{event:?}");
        let message = event.json();
        let id = event
            .id
            .as_ref()
            .map(|id| id.parse::<u64>().expect("a numeric id"));
        if let Some(id) = id {
            assert_eq!(message["seq"], id);
        }
        (id, message)
    }
}

fn publish(address: SocketAddr, channel: &str, user: &str, text: &str) -> u64 {
    let path = format!("/v1/channels/{channel}/messages");
    ok(
        address,
        "POST",
        &path,
        user,
        Some(json!({"text": text})),
        201,
    )["seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn an_event_stream_delivers_live_messages_and_resumes_after_last_event_id() {
    let (_dir, server) = server();
    let a = server.http;
    for n in 1..=3 {
        assert_eq!(publish(a, "room", "alice", &format!("m{n}")), n);
    }
    // Live only: the stream starts at the head.
    let (mut live, subscribed) = EventStream::open(a, "/v1/channels/room/events", "bob", "");
    assert_eq!(
        subscribed.json(),
        json!({"channel": "room", "head_seq": 3, "recovered": true})
    );
    assert_eq!(publish(a, "room", "alice", "m4"), 4);
    let (id, message) = live.message();
    assert_eq!(id, Some(4));
    assert_eq!(message["text"], "m4");
    assert_eq!(message["sender"], "alice");
    assert_eq!(message["kind"], "message");
    assert_eq!(
        keys(&message),
        [
            "client_id",
            "kind",
            "relation",
            "sender",
            "seq",
            "text",
            "timestamp_ms"
        ]
    );
    // Ephemeral records come without an id.
    ok(a, "POST", "/v1/channels/room/typing", "carol", None, 200);
    let (id, typing) = live.message();
    assert_eq!(id, None);
    assert_eq!(typing["kind"], "typing");
    assert_eq!(typing["seq"], 0);
    assert_eq!(typing["sender"], "carol");
    drop(live);

    // Reconnect after seq 2: exactly 3 and 4, then live ones.
    let (mut resumed, subscribed) =
        EventStream::open(a, "/v1/channels/room/events", "bob", "Last-Event-ID: 2\r\n");
    assert_eq!(
        subscribed.json(),
        json!({"channel": "room", "head_seq": 4, "recovered": true})
    );
    assert_eq!(resumed.message().0, Some(3));
    assert_eq!(resumed.message().0, Some(4));
    assert_eq!(publish(a, "room", "alice", "m5"), 5);
    let (id, message) = resumed.message();
    assert_eq!(id, Some(5));
    assert_eq!(message["text"], "m5");

    // `since` in the query does the same; the header wins over it.
    let (mut everything, _) = EventStream::open(a, "/v1/channels/room/events?since=0", "carol", "");
    let seqs: Vec<Option<u64>> = (0..5).map(|_| everything.message().0).collect();
    assert_eq!(seqs, (1..=5u64).map(Some).collect::<Vec<_>>());
    let (mut header_wins, _) = EventStream::open(
        a,
        "/v1/channels/room/events?since=0",
        "carol",
        "Last-Event-ID: 4\r\n",
    );
    assert_eq!(header_wins.message().0, Some(5));
    // Ahead of the head: not recovered.
    let (_, ahead) = EventStream::open(a, "/v1/channels/room/events?since=99", "dave", "");
    assert_eq!(ahead.json()["recovered"], false);
}

#[test]
fn an_event_stream_refuses_with_json_before_it_starts() {
    let (_dir, server) = server();
    let a = server.http;
    ok(
        a,
        "POST",
        "/v1/channels",
        "alice",
        Some(json!({"channel": "hr", "visibility": "private"})),
        201,
    );
    assert_eq!(
        fails(a, "GET", "/v1/channels/hr/events", Some("bob"), None),
        (403, "denied".to_string())
    );
    assert_eq!(
        fails(a, "GET", "/v1/channels/hr/events", None, None),
        (401, "unauthenticated".to_string())
    );
    let reply = {
        let mut conn = Conn::open(a);
        conn.send(&request_bytes(
            "GET",
            "/v1/channels/room/events",
            Some("bob"),
            None,
            "Last-Event-ID: yesterday\r\nConnection: close\r\n",
        ));
        conn.response(false)
    };
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_argument")
    );
    assert_eq!(
        fails(
            a,
            "GET",
            "/v1/channels/room/events?since=x",
            Some("bob"),
            None
        ),
        (400, "invalid_argument".to_string())
    );
    assert_eq!(
        fails(
            a,
            "GET",
            "/v1/channels/%24chat%2Fdirectory/events",
            Some("bob"),
            None
        ),
        (400, "invalid_argument".to_string())
    );
    // A member gets the stream of the private channel, with its creation event.
    let (mut stream, subscribed) =
        EventStream::open(a, "/v1/channels/hr/events?since=0", "alice", "");
    assert_eq!(subscribed.json()["head_seq"], 1);
    let (id, created) = stream.message();
    assert_eq!(id, Some(1));
    assert_eq!(created["kind"], "channel_event");
    let event: Value = serde_json::from_str(created["text"].as_str().unwrap()).unwrap();
    assert_eq!(event["type"], "created");
    assert_eq!(event["by"], "alice");
    // A member's stream ends when the member is removed.
    ok(
        a,
        "POST",
        "/v1/channels/hr/members",
        "alice",
        Some(json!({"user": "bob"})),
        200,
    );
    let (mut bobs, _) = EventStream::open(a, "/v1/channels/hr/events", "bob", "");
    ok(
        a,
        "DELETE",
        "/v1/channels/hr/members/bob",
        "alice",
        None,
        200,
    );
    let ended = bobs.next();
    assert_eq!(ended.event, "error", "{ended:?}");
    assert_eq!(ended.json()["code"], "denied");
    bobs.dechunk_to_end();
}

// ---------------------------------------------------------------------------
// Across protocols.

#[test]
fn a_message_posted_over_http_reaches_a_websocket_subscriber() {
    let (_dir, server) = server();
    let mut bob = ChatClient::connect(server.http, "bob");
    bob.ok(json!({"type": "subscribe", "channel": "general"}));
    let published = ok(
        server.http,
        "POST",
        "/v1/channels/general/messages",
        "alice",
        Some(json!({"text": "from http", "client_id": "h-1"})),
        201,
    );
    let message = bob.next_of_kind("general", "message");
    assert_eq!(message["seq"], published["seq"]);
    assert_eq!(message["text"], "from http");
    assert_eq!(message["sender"], "alice");
    assert_eq!(message["client_id"], "h-1");
    // And the other way: a WebSocket message is in the HTTP history and stream.
    let (mut stream, _) =
        EventStream::open(server.http, "/v1/channels/general/events", "carol", "");
    let sent = bob.ok(json!({"type": "publish", "channel": "general", "text": "from ws"}));
    let (id, message) = stream.message();
    assert_eq!(id, sent["seq"].as_u64());
    assert_eq!(message["text"], "from ws");
    assert_eq!(history(server.http, "general", "carol")[1]["sender"], "bob");
}

/// Thousands of pipelined requests answered at once, in one read: each
/// answer went on to the next request from inside the previous one, one
/// stack frame deeper per request, until the shard's thread overflowed its
/// stack and the process aborted. Now they are served in a loop.
#[test]
fn thousands_of_pipelined_requests_are_served_in_turn() {
    let (_dir, server) = server();
    let mut conn = Conn::open(server.http);
    let one = request_bytes(
        "PUT",
        "/v1/me/presence",
        Some("alice"),
        Some(r#"{"status":"away"}"#),
        "",
    );
    let requests = 3000;
    let all: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * requests)
        .collect();
    let writer = {
        let mut stream = conn.stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&all).unwrap())
    };
    for n in 0..requests {
        let reply = conn.response(false);
        assert_eq!(reply.status, 200, "request {n}: {}", reply.head);
    }
    writer.join().unwrap();
    assert_eq!(
        ok(server.http, "GET", "/healthz", "alice", None, 200)["status"],
        "ok"
    );
}
