//! Helpers to run the real `starling` binary in tests.

#![allow(dead_code)]

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
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .env("STARLING_ENGINE_DATA_DIR", data_dir)
            .env("STARLING_ENGINE_SHARDS", "2")
            .env("STARLING_NATIVE_ADDRESS", "127.0.0.1:0")
            .env("STARLING_HTTP_ADDRESS", "127.0.0.1:0")
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
                    }
                }
                let _ = log_tx.send(line);
            }
        });
        let mut native = None;
        let mut http = None;
        while native.is_none() || http.is_none() {
            match address_rx.recv_timeout(Duration::from_secs(60)) {
                Ok((name, address)) => {
                    let address: SocketAddr = address.parse().expect("a socket address in the log");
                    if name == "native" {
                        native = Some(address);
                    } else {
                        http = Some(address);
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
