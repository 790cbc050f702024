//! The `starling` binary's commands, run as a user would.

mod common;

use std::fs;

use common::{run, Server};

#[test]
fn config_default_is_valid_toml_with_honest_defaults() {
    let (ok, stdout, _) = run(&["config", "default"], &[]);
    assert!(ok);
    let value: toml::Value = toml::from_str(&stdout).expect("valid TOML");
    assert_eq!(value["engine"]["durability"].as_str(), Some("fsync"));
    assert_eq!(value["native"]["address"].as_str(), Some("127.0.0.1:7400"));
}

#[test]
fn a_non_loopback_listener_needs_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, stderr) = run(
        &["serve"],
        &[
            ("STARLING_NATIVE_ADDRESS", "0.0.0.0:0"),
            ("STARLING_ENGINE_DATA_DIR", data.to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("authentication"), "{stderr}");
}

#[test]
fn bad_configuration_is_named() {
    let (ok, _, stderr) = run(&["serve"], &[("STARLING_ENGINE_DURABILITY", "sometimes")]);
    assert!(!ok);
    assert!(
        stderr.contains("durability") || stderr.contains("sometimes"),
        "{stderr}"
    );
}

#[test]
fn pub_sub_history_and_offline_log_tools() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let address = server.address.to_string();
    let env = [("STARLING_SERVER", address.as_str())];

    let (ok, stdout, stderr) = run(
        &["pub", "general", "first-marker-AAAA", "second", "--id", "x"],
        &env,
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("seq=1") && stdout.contains("seq=2"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["pub", "general", "first-marker-AAAA", "--id", "x"], &env);
    assert!(ok);
    assert!(
        stdout.contains("seq=1") && stdout.contains("duplicate=true"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["pub", "general", "third"], &env);
    assert!(ok && stdout.contains("seq=3"), "{stdout}");

    let (ok, stdout, _) = run(&["history", "general", "--limit", "2"], &env);
    assert!(ok);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("general\t3\tanonymous\tthird"), "{stdout}");

    let (ok, stdout, _) = run(&["sub", "general", "--from", "2", "--count", "2"], &env);
    assert!(ok);
    assert_eq!(
        stdout,
        "general\t2\tanonymous\tsecond\ngeneral\t3\tanonymous\tthird\n"
    );
    // Fewer than asked before the idle exit: the exit status says so.
    let (ok, stdout, stderr) = run(
        &[
            "sub",
            "general",
            "--from",
            "2",
            "--count",
            "5",
            "--idle-exit-s",
            "1",
        ],
        &env,
    );
    assert!(!ok, "{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stderr.contains("received 2 of 5"), "{stderr}");

    assert!(
        server.terminate().success(),
        "SIGTERM stops the server cleanly"
    );

    // A directory without partitions has nothing to verify: said so.
    let empty = dir.path().join("empty");
    fs::create_dir_all(empty.join("partitions")).unwrap();
    let (ok, _, stderr) = run(&["log", "verify", empty.to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("no partitions"), "{stderr}");
    let data_arg = data.to_str().unwrap();
    let (ok, stdout, stderr) = run(&["log", "verify", data_arg], &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("ok:"), "{stdout}");
    let (ok, stdout, _) = run(&["log", "inspect", data_arg, "--channel", "general"], &[]);
    assert!(ok);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stdout.contains("seq=1") && stdout.contains("first-marker-AAAA"),
        "{stdout}"
    );

    // Flip one byte inside the first (not the last) batch: corruption, not a torn tail.
    let mut corrupted = None;
    for partition in fs::read_dir(data.join("partitions")).unwrap() {
        for file in fs::read_dir(partition.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let mut bytes = fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(4).position(|w| w == b"AAAA") {
                bytes[at] ^= 0x01;
                fs::write(&path, &bytes).unwrap();
                corrupted = Some(path);
            }
        }
    }
    let corrupted = corrupted.expect("the marker is in a segment file");
    let (ok, stdout, stderr) = run(&["log", "verify", data_arg], &[]);
    assert!(!ok, "verify fails on corruption");
    let name = corrupted.file_name().unwrap().to_str().unwrap();
    assert!(
        stdout.contains("CORRUPT") && stdout.contains(name),
        "{stdout}"
    );
    assert!(stderr.contains("corruption found"), "{stderr}");

    // A restart opens from the checkpoint without re-reading sealed data
    // (that is what makes it fast), but every read checks the checksum: the
    // damaged record is reported, never served, and nothing is dropped.
    let server = Server::start(&data, &[]);
    let address = server.address.to_string();
    let env = [("STARLING_SERVER", address.as_str())];
    let (ok, stdout, stderr) = run(&["history", "general", "--from", "1"], &env);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("corrupt") && stderr.contains(name),
        "{stderr}"
    );
    assert!(!stdout.contains("first-marker"), "{stdout}");
    assert!(server.terminate().success());
    let (ok, stdout, _) = run(&["log", "verify", data_arg], &[]);
    assert!(
        !ok && stdout.contains("CORRUPT"),
        "still reported: {stdout}"
    );
}

#[test]
fn bench_checks_delivery_and_prints_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let address = server.address.to_string();
    let summary = common::bench(&[
        "--server",
        &address,
        "--publishers",
        "2",
        "--subscribers",
        "3",
        "--channels",
        "4",
        "--rate",
        "2000",
        "--duration-s",
        "1",
        "--history-queries",
        "20",
    ]);
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["sent"], 2000);
    assert_eq!(summary["acked"], 2000);
    // Every message reaches the one subscriber of its channel (3 subscribers share 4 channels).
    assert_eq!(summary["delivered"], 2000);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicated"], 0);
    assert_eq!(summary["history"]["queries"], 20);
    assert!(summary["ack_latency_us"]["p99"].as_u64().unwrap() > 0);
    // A rate the publishers do not divide evenly: the run sends what was
    // asked (each publisher's share was rounded: 12 of 10 before).
    let summary = common::bench(&[
        "--server",
        &address,
        "--publishers",
        "4",
        "--rate",
        "10",
        "--duration-s",
        "1",
    ]);
    assert_eq!(summary["sent"], 10, "{summary}");
}

/// `bench --mqtt --latency-log FILE` writes one line per delivery, by
/// intended send time; without --mqtt the option is refused.
#[test]
fn mqtt_bench_writes_a_latency_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let log = dir.path().join("latency.csv");
    let mqtt = server.mqtt.to_string();
    let summary = common::bench(&[
        "--mqtt",
        "--mqtt-server",
        &mqtt,
        "--publishers",
        "2",
        "--subscribers",
        "2",
        "--topics",
        "2",
        "--qos",
        "1",
        "--rate",
        "1000",
        "--duration-s",
        "1",
        "--latency-log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(summary["ok"], true);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("intended_ms,latency_us,from_send_us"));
    let rows: Vec<(f64, u64, u64)> = lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len() as u64, summary["delivered"].as_u64().unwrap());
    assert!(
        rows.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "sorted by send time"
    );
    assert!(
        rows.iter().all(|row| row.1 >= row.2 && row.2 > 0),
        "from intended ≥ from send > 0"
    );
    assert!(
        rows.last().unwrap().0 < 1500.0,
        "send times within the 1 s run"
    );

    // A rate one message in flight cannot keep up with: every message due
    // is still sent, late (before, the run ended on the clock and left the
    // latest ones, the worst latencies, out).
    let summary = common::bench(&[
        "--mqtt",
        "--mqtt-server",
        &mqtt,
        "--qos",
        "1",
        "--mqtt-window",
        "1",
        "--rate",
        "20000",
        "--duration-s",
        "1",
    ]);
    assert_eq!(summary["sent"], 20000, "{summary}");
    assert_eq!(summary["acked"], 20000, "{summary}");
    let (ok, _, stderr) = run(
        &[
            "bench",
            "--mqtt",
            "--mqtt-server",
            &mqtt,
            "--mqtt-window",
            "70000",
        ],
        &[],
    );
    assert!(!ok && stderr.contains("--mqtt-window"), "{stderr}");

    let address = server.address.to_string();
    let (ok, _, stderr) = run(
        &["bench", "--server", &address, "--latency-log", "x.csv"],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--latency-log") && stderr.contains("--mqtt"),
        "{stderr}"
    );
}

#[test]
fn a_bad_live_only_filter_is_named() {
    let (ok, _, stderr) = run(
        &["serve"],
        &[("STARLING_MQTT_LIVE_ONLY_QOS0", r#"["a/#/b"]"#)],
    );
    assert!(!ok);
    assert!(stderr.contains("live_only_qos0"), "{stderr}");
    assert!(stderr.contains("a/#/b"), "{stderr}");
}
