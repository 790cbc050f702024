//! Helpers to run the real `starling` binary in tests.

#![allow(dead_code)]

pub mod acked;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BINARY: &str = env!("CARGO_BIN_EXE_starling");

/// A `starling serve` process on a free loopback port.
pub struct Server {
    pub child: Child,
    /// The native listener.
    pub address: SocketAddr,
    /// The HTTP listener (web client, API, WebSocket).
    pub http: SocketAddr,
    /// The MQTT listener.
    pub mqtt: SocketAddr,
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        Server::start_with(data_dir, &[], extra_env)
    }

    /// [`Server::start`] with more arguments for `serve` (`--config FILE`).
    pub fn start_with(data_dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Server {
        Server::start_wrapped(&[], data_dir, args, extra_env)
    }

    /// [`Server::start_with`] through `wrapper` (a program and its
    /// arguments, e.g. `nsenter … --`), which must exec the binary in place
    /// (so that the child's PID is the server's). Empty: no wrapper.
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Server {
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .arg("serve")
            .args(args)
            .env("STARLING_ENGINE_DATA_DIR", data_dir)
            .env("STARLING_ENGINE_SHARDS", "2")
            .env("STARLING_NATIVE_ADDRESS", "127.0.0.1:0")
            .env("STARLING_HTTP_ADDRESS", "127.0.0.1:0")
            .env("STARLING_MQTT_ADDRESS", "127.0.0.1:0")
            // Small journal files: the tests switch journal files often
            // (and do not write 32 MiB of zeros per server).
            .env("STARLING_ENGINE_JOURNAL_FILE_BYTES", "1048576")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("starling serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (address_tx, address_rx) = mpsc::channel();
        let (log_tx, log) = mpsc::channel();
        // Drain stderr for the life of the process so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("address=").nth(1) {
                    let address = rest.trim_end_matches('"').to_string();
                    if line.contains("listening: protocol=native") {
                        let _ = address_tx.send(("native", address));
                    } else if line.contains("listening: protocol=http") {
                        let _ = address_tx.send(("http", address));
                    } else if line.contains("listening: protocol=mqtt") {
                        let _ = address_tx.send(("mqtt", address));
                    }
                }
                let _ = log_tx.send(line);
            }
        });
        let mut native = None;
        let mut http = None;
        let mut mqtt = None;
        while native.is_none() || http.is_none() || mqtt.is_none() {
            match address_rx.recv_timeout(Duration::from_secs(60)) {
                Ok((name, address)) => {
                    let address: SocketAddr = address.parse().expect("a socket address in the log");
                    match name {
                        "native" => native = Some(address),
                        "http" => http = Some(address),
                        _ => mqtt = Some(address),
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let lines: Vec<String> = log.try_iter().collect();
                    panic!("the server did not start listening:\n{}", lines.join("\n"));
                }
            }
        }
        Server {
            child,
            address: native.expect("loop ends with both"),
            http: http.expect("loop ends with both"),
            mqtt: mqtt.expect("loop ends with all three"),
            log,
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    /// Asks for a graceful stop with SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        self.child.wait().expect("reap the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Sends SIGHUP and returns the first log line after it that contains
    /// `needle` (panics if none comes within 20 s).
    pub fn sighup_and_wait_for(&self, needle: &str) -> String {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::iter::from_fn(|| self.log.recv_timeout(Duration::from_secs(20)).ok())
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("the server logged no line with {needle:?} after SIGHUP"))
    }
}

/// Adds `user` with `role` and `password` to the data directory of
/// `config` with `starling user add`, as an operator does while the server
/// is stopped.
pub fn add_user(config: &Path, user: &str, role: &str, password: &str) {
    let mut child = Command::new(BINARY)
        .args(["user", "add", user, "--role", role, "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{password}\n").as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// Runs `starling bench` with `args`, checks it succeeded and returns its
/// JSON summary (the last line it prints).
pub fn bench(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run(&[&["bench"], args].concat(), &[]);
    assert!(ok, "starling bench {args:?} failed:\n{stderr}\n{stdout}");
    serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("JSON")
}

/// Longest a command run by a test may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the binary with `args` and returns (success, stdout, stderr). A
/// command that does not finish within two minutes is killed and fails the
/// test, rather than hanging it.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the binary runs");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).ok();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).ok();
        text
    });
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`starling {}` did not finish within {COMMAND_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.success(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// A chat WebSocket client for tests: requests with ids, pushes kept aside.
pub struct ChatClient {
    pub socket: tungstenite::WebSocket<std::net::TcpStream>,
    next_id: u64,
    pub pushes: std::collections::VecDeque<serde_json::Value>,
}

/// Longest a test waits for one frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

impl ChatClient {
    /// Opens `ws://address/ws` without signing in.
    pub fn open(address: SocketAddr) -> ChatClient {
        let stream = std::net::TcpStream::connect(address).expect("connect to the HTTP listener");
        stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        let url = format!("ws://{address}/ws");
        let (socket, response) =
            tungstenite::client(url.as_str(), stream).expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        ChatClient {
            socket,
            next_id: 1,
            pushes: std::collections::VecDeque::new(),
        }
    }

    /// Opens a WebSocket and signs in as `user`.
    pub fn connect(address: SocketAddr, user: &str) -> ChatClient {
        let mut client = ChatClient::open(address);
        let reply = client.ok(serde_json::json!({"type": "connect", "token": user}));
        assert_eq!(reply["user"], user);
        client
    }

    /// The next JSON frame from the server.
    pub fn frame(&mut self) -> serde_json::Value {
        loop {
            match self.socket.read().expect("a frame from the server") {
                tungstenite::Message::Text(text) => {
                    return serde_json::from_str(&text).expect("the server sends JSON")
                }
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends `request` (an object without `id`) and returns the whole reply
    /// envelope; pushes that arrive first are kept in `pushes`.
    pub fn send(&mut self, mut request: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = serde_json::json!(id);
        self.socket
            .send(tungstenite::Message::text(request.to_string()))
            .expect("send a request");
        loop {
            let frame = self.frame();
            if frame.get("push").is_some() {
                self.pushes.push_back(frame);
            } else if frame["id"] == id {
                return frame;
            } else {
                panic!("reply to an unknown request: {frame}");
            }
        }
    }

    /// Sends `request` and returns its `result`, failing on an error reply.
    pub fn ok(&mut self, request: serde_json::Value) -> serde_json::Value {
        let reply = self.send(request.clone());
        assert!(reply.get("error").is_none(), "{request} failed: {reply}");
        reply["result"].clone()
    }

    /// Sends `request` and returns its error code, failing on success.
    pub fn error(&mut self, request: serde_json::Value) -> String {
        let reply = self.send(request.clone());
        let Some(code) = reply["error"]["code"].as_str() else {
            panic!("{request} should have failed: {reply}");
        };
        code.to_string()
    }

    /// The next `message` push (from those kept, then from the socket).
    pub fn next_message(&mut self) -> serde_json::Value {
        loop {
            let frame = match self.pushes.pop_front() {
                Some(frame) => frame,
                None => self.frame(),
            };
            if frame["push"] == "message" {
                return frame;
            }
        }
    }

    /// The next push named `push` (from those kept, then from the socket),
    /// keeping the others aside.
    pub fn next_push(&mut self, push: &str) -> serde_json::Value {
        if let Some(at) = self.pushes.iter().position(|frame| frame["push"] == push) {
            return self.pushes.remove(at).expect("found above");
        }
        loop {
            let frame = self.frame();
            if frame["push"] == push {
                return frame;
            }
            self.pushes.push_back(frame);
        }
    }

    /// The next `message` push of `kind` on `channel`, skipping others.
    pub fn next_of_kind(&mut self, channel: &str, kind: &str) -> serde_json::Value {
        loop {
            let frame = self.next_message();
            if frame["channel"] == channel && frame["message"]["kind"] == kind {
                return frame["message"].clone();
            }
        }
    }
}

/// One HTTP/1.1 request on a new connection: `(status, headers, body)`.
pub fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, String, serde_json::Value) {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let (status, head, body) = raw_http(address, request.as_bytes());
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&body).into_owned(),
        ))
    };
    (status, head, json)
}

/// Sends raw bytes and reads until the server closes: `(status, head, body)`.
pub fn raw_http(address: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head_len = head.len() + 4;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = response.get(head_len..).unwrap_or_default().to_vec();
    (status, head.to_string(), body)
}

/// A client process (`mosquitto_sub`, a browser, a script) that is killed
/// when the guard is dropped, so a test that fails half-way does not leave
/// it running. Derefs to the `Child`; `Child::from` takes it back.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("present until dropped")
    }
}

impl From<ChildGuard> for Child {
    fn from(mut guard: ChildGuard) -> Child {
        guard.0.take().expect("present until dropped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` at most `timeout` (then kills it and fails the test) and
/// returns its exit status, stdout and stderr.
pub fn wait_with_timeout(
    child: impl Into<Child>,
    timeout: Duration,
    what: &str,
) -> (std::process::ExitStatus, String, String) {
    let mut child = child.into();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().expect("collect the output");
    (
        status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Publishes `message` to `topic` once with Debian's `mosquitto_pub` over
/// MQTT 5 at QoS 1, and returns what it printed on stderr (where it reports
/// a refused publish's reason code and reason string).
pub fn mosquitto_pub_v5_stderr(mqtt: SocketAddr, topic: &str, message: &str) -> String {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-t", topic, "-m", message])
        .output()
        .expect("mosquitto_pub is installed (Debian's mosquitto-clients; `.ci/run` does)");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
