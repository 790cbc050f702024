//! A full disk, for real: the data directory sits on a tmpfs of a few MiB
//! (mounted in a user and mount namespace of the test's own, so no root is
//! needed and the host's mounts stay untouched). Publishers write until the
//! file system is full; writes then stop with an error that says so, reads
//! go on, and after the server is killed (SIGKILL, and the next time
//! stopped with SIGTERM), the file system grown and the server started
//! again, every acknowledged message is there exactly once, at its
//! acknowledged seq, and new writes are accepted. MQTT clients are told
//! too: an MQTT 5 PUBACK carries the reason, a 3.1.1 client is disconnected.
//! With a reserve of free space (`engine.disk_free_min_bytes`), publishes
//! are refused before the disk is full, and accepted again once there is
//! room, without a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::acked::{self, Acked};
use common::Server;
use starling_adapters::client::{Client, ClientError};
use starling_protocol::{kind, ErrorCode, HistoryQuery};

const PUBLISHERS: usize = 4;
const CHANNELS: usize = 8;
const BODY_BYTES: usize = 1000;

/// A tmpfs mounted at a directory inside a user and mount namespace that a
/// holder process keeps alive; programs run inside it with
/// [`SmallDisk::wrapper`].
struct SmallDisk {
    holder: Child,
    mount_point: PathBuf,
    pid: String,
}

impl SmallDisk {
    fn mount(mount_point: &Path, mib: u64) -> SmallDisk {
        let script = format!(
            "mount -t tmpfs -o size={mib}m tmpfs '{}' && echo mounted && exec sleep 3600",
            mount_point.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux) runs");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("piped"))
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "mounted",
            "mounting a tmpfs in a new user and mount namespace failed (does this kernel allow user namespaces?)"
        );
        let pid = holder.id().to_string();
        SmallDisk {
            holder,
            mount_point: mount_point.to_path_buf(),
            pid,
        }
    }

    /// `nsenter` into the holder's namespaces; it execs the program in place.
    fn wrapper(&self) -> [&str; 6] {
        ["nsenter", "-t", &self.pid, "--user", "--mount", "--"]
    }

    /// Runs `program args` inside the namespaces; returns its stdout.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new("nsenter")
            .args(["-t", &self.pid, "--user", "--mount", "--", program])
            .args(args)
            .output()
            .expect("nsenter runs");
        assert!(
            output.status.success(),
            "{program} {args:?} in the test's namespace failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn resize(&self, mib: u64) {
        let size = format!("remount,size={mib}m");
        let mount_point = self.mount_point.to_str().unwrap();
        self.run("mount", &["-o", &size, mount_point]);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The tmpfs goes with the last process of its namespace.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Publishes until the server refuses; returns the refusal.
fn publish_until_refused(
    server: std::net::SocketAddr,
    round: u64,
    publisher: usize,
    acked: Acked,
) -> ClientError {
    let mut client = Client::connect(server, "full-disk-publisher", "").unwrap();
    for n in 0u64.. {
        let channel = format!("full-{}", (publisher + n as usize) % CHANNELS);
        let mut body = format!("round {round} publisher {publisher} message {n} ").into_bytes();
        body.resize(BODY_BYTES, b'.');
        let id = format!("{round}-{publisher}-{n}");
        if let Err(error) = acked::publish(&mut client, &channel, Bytes::from(body), id, &acked) {
            return error;
        }
    }
    unreachable!("the loop returns")
}

/// Fills the disk; checks that every publisher was refused because the
/// disk is full, and that a refused write stays refused. Returns how many
/// publishes were acknowledged in this round.
fn fill(server: &Server, round: u64, acked: &Acked) -> usize {
    let before = acked.lock().unwrap().len();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let acked = acked.clone();
            let address = server.address;
            std::thread::spawn(move || publish_until_refused(address, round, p, acked))
        })
        .collect();
    for publisher in publishers {
        let error = publisher.join().unwrap();
        let ClientError::Server { code, message, .. } = &error else {
            panic!("a full disk is an error reply, not {error}");
        };
        assert_eq!(*code, ErrorCode::StorageFailed, "{message}");
        assert!(
            message.contains("file system holding it is full") && message.contains("restart"),
            "the refusal says the disk is full and what to do: {message}"
        );
    }
    // Every channel comes to a refusal (a write may still fit in a page
    // the file system had given out), and then stays refused: its
    // partition stopped. Reads go on.
    let mut client = Client::connect(server.address, "full-disk-reader", "").unwrap();
    for c in 0..CHANNELS {
        let channel = format!("full-{c}");
        let mut refusals = 0;
        for n in 0..10_000 {
            let body = Bytes::from(format!("round {round} last writes {n}"));
            let id = format!("{round}-last-{n}");
            match acked::publish(&mut client, &channel, body, id, acked) {
                Ok(()) => assert_eq!(refusals, 0, "{channel}: a write accepted after a refusal"),
                Err(ClientError::Server {
                    code: ErrorCode::StorageFailed,
                    ..
                }) => {
                    refusals += 1;
                    if refusals == 3 {
                        break;
                    }
                }
                Err(error) => panic!("{channel}: {error}"),
            }
        }
        assert_eq!(refusals, 3, "{channel}: never refused on a full disk");
    }
    // An MQTT 5 client is told why (PUBACK 0x83 with the reason string);
    // a 3.1.1 client, which has no negative PUBACK, is disconnected.
    let port = server.mqtt.port().to_string();
    for (version, expected) in [
        ("mqttv5", "the file system holding it is full"),
        ("mqttv311", "connection was lost"),
    ] {
        let output = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1"])
            .args(["-t", "full-0", "-m", "refused", "-i", "full-disk-mqtt"])
            .output()
            .expect("mosquitto_pub is installed (Debian's mosquitto-clients; `.ci/run` does)");
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains(expected),
            "mosquitto_pub -V {version} on a full disk: {text}"
        );
    }
    let page = client.history("full-0", HistoryQuery::Last, 1).unwrap();
    assert_eq!(page.messages.len(), 1, "history is served on a full disk");
    let written = acked.lock().unwrap().len() - before;
    assert!(written > 100, "round {round}: only {written} publishes fit");
    written
}

#[test]
fn a_full_disk_stops_writes_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), 24);
    let data = dir.path().join("data");
    // No reserve: the file system fills up for real.
    let env = [("STARLING_ENGINE_DISK_FREE_MIN_BYTES", "0")];
    let start = |disk: &SmallDisk| Server::start_wrapped(&disk.wrapper(), &data, &[], &env);
    let acked = acked::new();

    // Round 0: fill, SIGKILL, grow, restart.
    let server = start(&disk);
    let written = fill(&server, 0, &acked);
    eprintln!("round 0: {written} publishes acknowledged before the disk was full");
    server.kill();
    disk.resize(48);
    let server = start(&disk);
    assert_eq!(
        acked::verify(server.address, "full-", CHANNELS, &acked),
        acked.lock().unwrap().len()
    );

    // Round 1: writes go on where they stopped; fill again, stop with
    // SIGTERM (the clean stop meets a full disk), grow, restart.
    let written = fill(&server, 1, &acked);
    eprintln!("round 1: {written} more publishes acknowledged");
    let mut server = server;
    let log = std::mem::replace(&mut server.log, std::sync::mpsc::channel().1);
    let status = server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    let mut said = String::new();
    for line in log.try_iter() {
        if !line.contains("level=info") {
            eprintln!("server: {line}");
        }
        said.push_str(&line);
        said.push('\n');
    }
    // The stop cannot sync the partitions that failed: it says so, and the
    // exit status says so (a service manager sees it); what was
    // acknowledged is in the journals (checked after the restart below).
    assert!(
        !status.success(),
        "a stop on a full disk is not clean: {status}"
    );
    assert!(
        said.contains("not cleanly") && said.contains("replayed at the next start"),
        "the server says what happened:\n{said}"
    );
    disk.resize(96);
    let server = start(&disk);
    assert_eq!(
        acked::verify(server.address, "full-", CHANNELS, &acked),
        acked.lock().unwrap().len()
    );
    let mut client = Client::connect(server.address, "full-disk-after", "").unwrap();
    let ack = client.publish("full-0", kind::MESSAGE, "after").unwrap();
    assert!(ack.durable);
    drop(client);
    assert!(server.terminate().success());
    // Offline, the files check out too.
    let report = disk.run(common::BINARY, &["log", "verify", data.to_str().unwrap()]);
    assert!(
        report.lines().count() >= 16 && report.lines().all(|line| line.contains(": ok: ")),
        "starling log verify:\n{report}"
    );
}

/// With a reserve (`engine.disk_free_min_bytes`), publishes are refused
/// before the file system is full, as a temporary error, and accepted again
/// as soon as there is room: no partition stops, no restart.
#[test]
fn publishes_wait_for_room_when_the_disk_is_nearly_full() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), 64);
    let data = dir.path().join("data");
    let reserve = (32u64 << 20).to_string();
    let env = [("STARLING_ENGINE_DISK_FREE_MIN_BYTES", reserve.as_str())];
    let server = Server::start_wrapped(&disk.wrapper(), &data, &[], &env);
    let acked = acked::new();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let acked = acked.clone();
            let address = server.address;
            std::thread::spawn(move || publish_until_refused(address, 0, p, acked))
        })
        .collect();
    for publisher in publishers {
        let error = publisher.join().unwrap();
        let ClientError::Server {
            code,
            message,
            temporary,
        } = &error
        else {
            panic!("a nearly full disk is an error reply, not {error}");
        };
        assert_eq!(*code, ErrorCode::StorageFull, "{message}");
        assert!(temporary, "a refusal for want of room is temporary");
        assert!(
            message.contains("engine.disk_free_min_bytes") && message.contains("free space"),
            "the refusal names the setting and what to do: {message}"
        );
    }
    let written = acked.lock().unwrap().len();
    assert!(
        written > 1000,
        "only {written} publishes before the reserve"
    );
    let free: u64 = disk
        .run(
            "df",
            &["--output=avail", "-B1", dir.path().to_str().unwrap()],
        )
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free bytes");
    assert!(
        free > 16 << 20,
        "the reserve kept room on the disk: {free} bytes free"
    );
    eprintln!("{written} publishes acknowledged; refused with {free} bytes free");

    // Another program takes 8 MiB more, so that the engine's own files
    // (a checkpoint replaced, say) cannot bring the free space back above
    // the reserve while the MQTT client tries.
    let filler = dir.path().join("filler");
    disk.run("fallocate", &["-l", "8M", filler.to_str().unwrap()]);
    // A shard looks at the free space again when its last look is 100 ms
    // old: one whose last look came just before the reserve was reached
    // takes publishes until then.
    std::thread::sleep(Duration::from_millis(300));

    // MQTT 5 is told: PUBACK 0x97 (quota exceeded) with the reason.
    let text = common::mosquitto_pub_v5_stderr(server.mqtt, "full-0", "refused");
    assert!(
        text.contains("Quota exceeded") && text.contains("disk_free_min_bytes"),
        "mosquitto_pub -V 5 on a nearly full disk: {text}"
    );

    // Room again: publishes go on, on the same server.
    disk.resize(160);
    let mut client = Client::connect(server.address, "full-disk-after", "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        let body = Bytes::from(format!("after growing {n}"));
        match acked::publish(&mut client, "full-0", body, format!("after-{n}"), &acked) {
            Ok(()) => break,
            Err(ClientError::Server {
                code: ErrorCode::StorageFull,
                ..
            }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                n += 1;
            }
            Err(error) => panic!("publishing once there is room: {error}"),
        }
    }
    assert_eq!(
        acked::verify(server.address, "full-", CHANNELS, &acked),
        acked.lock().unwrap().len()
    );
}
