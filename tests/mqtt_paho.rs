//! MQTT interop with Eclipse Paho's Python client (`tests/paho/mqtt_paho.py`)
//! for 3.1.1 and 5.0 against the real binary.
//!
//! Needs paho-mqtt: `.ci/run` installs it into `target/ci-venv`; elsewhere
//! set `STARLING_PYTHON` to a Python that has it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;

/// Longest the script may run.
const PAHO_TIMEOUT: Duration = Duration::from_secs(240);

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("STARLING_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    assert!(
        venv.exists(),
        "this test needs paho-mqtt: run `.ci/run`, or `python3 -m venv target/ci-venv && \
         target/ci-venv/bin/pip install paho-mqtt`, or set STARLING_PYTHON"
    );
    venv
}

/// Runs the Paho script against `server` (only `phase`, when given) and
/// returns its output; fails the test when a check failed.
fn run_script(server: &Server, phase: Option<&str>) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho/mqtt_paho.py");
    let child = Command::new(python())
        .arg(script)
        .arg(server.mqtt.ip().to_string())
        .arg(server.mqtt.port().to_string())
        .args(phase)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let (status, stdout, stderr) =
        common::wait_with_timeout(child, PAHO_TIMEOUT, "the paho script");
    assert!(
        status.success(),
        "paho checks failed ({status}):\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn paho_clients_in_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    println!("{}", run_script(&server, None));
}

#[test]
fn paho_persistent_sessions_get_acknowledged_messages_once_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    run_script(&server, Some("before-kill"));
    server.kill();
    let server = Server::start(dir.path(), &[]);
    println!("{}", run_script(&server, Some("after-kill")));
}
