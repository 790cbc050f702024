//! Bad input on the HTTP listener: slow headers, bad WebSocket handshakes,
//! requests that are not JSON objects, garbage on the socket. Each gets its
//! documented answer, and the server keeps serving everyone else without
//! losing anything it acknowledged.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{raw_http, ChatClient, Server};
use serde_json::json;

fn server(env: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    (dir, server)
}

#[test]
fn slow_headers_are_answered_408_and_closed() {
    let (_dir, server) = server(&[("STARLING_HTTP_REQUEST_READ_TIMEOUT_MS", "300")]);
    let mut stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
    // Others are served meanwhile and after.
    let (status, _, _) = common::http(server.http, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
}

fn handshake(server: &Server, extra: &str) -> (u16, String) {
    let request = format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    let (status, head, body) = raw_http(server.http, request.as_bytes());
    (
        status,
        format!("{head}\n{}", String::from_utf8_lossy(&body)),
    )
}

#[test]
fn bad_websocket_handshakes_are_refused() {
    let (_dir, server) = server(&[]);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, text) = handshake(&server, "");
    assert_eq!(status, 426, "{text}");
    let (status, text) = handshake(
        &server,
        &format!("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n{key}"),
    );
    assert_eq!(status, 426, "{text}");
    assert!(text.contains("Sec-WebSocket-Version: 13"), "{text}");
    let (status, text) = handshake(
        &server,
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Sec-WebSocket-Key"), "{text}");
    let (status, text) = handshake(
        &server,
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n",
    );
    assert_eq!(status, 400, "{text}");
    let post = format!(
        "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}Content-Length: 0\r\n\r\n"
    );
    let (status, _, _) = raw_http(server.http, post.as_bytes());
    assert_eq!(status, 405);
    // A good handshake gets the accept key of RFC 6455's example.
    let good = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"
    );
    let mut stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(good.as_bytes()).unwrap();
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).unwrap();
    let text = String::from_utf8_lossy(&buffer[..n]);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(
        text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{text}"
    );
}

#[test]
fn requests_that_are_not_objects_get_malformed() {
    let (_dir, server) = server(&[]);
    let mut client = ChatClient::connect(server.http, "alice");
    for text in [
        "[1,2,3]",
        "\"publish\"",
        "42",
        "null",
        "{\"id\": 1.5, \"type\": \"ping\"}",
    ] {
        client
            .socket
            .send(tungstenite::Message::text(text))
            .unwrap();
        let reply = client.frame();
        assert_eq!(reply["error"]["code"], "malformed", "{text}: {reply}");
    }
    client.ok(json!({"type": "ping"}));
}

#[test]
fn garbage_from_some_clients_loses_nothing_acknowledged_by_others() {
    let (_dir, server) = server(&[]);
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut acknowledged = Vec::new();
    for round in 0..20 {
        // A client that sends garbage: a broken HTTP request, a broken frame.
        let mut bad = TcpStream::connect(server.http).unwrap();
        let _ = bad.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
        let mut raw = TcpStream::connect(server.address).unwrap();
        let _ = raw.write_all(&[0xff; 64]);
        let published =
            alice.ok(json!({"type": "publish", "channel": "steady", "text": format!("m{round}")}));
        acknowledged.push(published["seq"].as_u64().unwrap());
    }
    let history = alice.ok(json!({"type": "history", "channel": "steady", "limit": 100}));
    let stored: Vec<u64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, acknowledged);
    assert_eq!(stored, (1..=20).collect::<Vec<u64>>());
}

/// Whether the server closes `stream` (end of stream or a reset) before
/// `deadline_s` seconds pass; bytes it sends first (a reason) are read.
fn closed_by_server(stream: &mut TcpStream, deadline_s: u64) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(deadline_s)))
        .unwrap();
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn connections_that_never_identify_themselves_are_closed() {
    let (_dir, server) = server(&[("STARLING_ENGINE_HANDSHAKE_TIMEOUT_MS", "400")]);
    // An MQTT client that connects (keep-alive 0: no timer of its own) is
    // identified and stays.
    let mut identified = TcpStream::connect(server.mqtt).unwrap();
    identified
        .write_all(&[
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
        ])
        .unwrap();
    let mut connack = [0u8; 4];
    identified.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // Silent clients on every listener, and one that sends half an MQTT
    // CONNECT, are closed (the deadline is generous: the server has 400 ms).
    for (name, address, bytes) in [
        ("native", server.address, &b""[..]),
        ("mqtt", server.mqtt, &b""[..]),
        (
            "mqtt, half a CONNECT",
            server.mqtt,
            &[0x10u8, 0x0c, 0x00][..],
        ),
        ("http", server.http, &b""[..]),
    ] {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(bytes).unwrap();
        assert!(closed_by_server(&mut stream, 30), "{name} stayed open");
    }
    // The identified client is still served after the deadline passed.
    identified.write_all(&[0xc0, 0x00]).unwrap();
    let mut pingresp = [0u8; 2];
    identified.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xd0, 0x00]);
    let (_, _, metrics) = raw_http(
        server.http,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        metrics.contains("starling_handshake_timeouts_total 4"),
        "{metrics}"
    );
}
