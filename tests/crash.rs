//! SIGKILL the real server while publishers are being acknowledged, 20
//! times; after every restart every acknowledged message is there exactly
//! once, at its acknowledged seq, in per-channel order, with gap-free seqs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::acked::{self, Acked};
use common::Server;
use starling_adapters::client::Client;

const KILLS: u64 = 20;
const PUBLISHERS: usize = 4;
const CHANNELS: usize = 8;

/// xorshift64*: a seeded generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn publish_until_killed(
    server: std::net::SocketAddr,
    round: u64,
    publisher: usize,
    acked: Acked,
    durable: bool,
) {
    let Ok(mut client) = Client::connect(server, "crash-publisher", &format!("p{publisher}"))
    else {
        return;
    };
    client.set_reply_timeout(Duration::from_secs(5));
    for n in 0u64.. {
        let channel = format!("crash-{}", (publisher + n as usize) % CHANNELS);
        let body = Bytes::from(format!("round {round} publisher {publisher} message {n}"));
        let id = format!("{round}-{n}");
        if acked::publish_under(&mut client, &channel, body, id, &acked, durable).is_err() {
            return; // the server was killed
        }
    }
}

/// Starts the publishers of one round; they stop when the server dies.
/// `durable`: the policy acknowledges durable writes (`fsync`).
fn start_publishers(
    server: std::net::SocketAddr,
    round: u64,
    acked: &Acked,
    durable: bool,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|p| {
            let acked = acked.clone();
            std::thread::spawn(move || publish_until_killed(server, round, p, acked, durable))
        })
        .collect()
}

fn verify(server: std::net::SocketAddr, acked: &Acked) -> usize {
    acked::verify(server, "crash-", CHANNELS, acked)
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    survive_sigkill(KILLS, &[], true);
}

/// A process crash loses nothing acknowledged under the policies that do
/// not wait for the disk either: what was written is in the page cache.
#[test]
fn acknowledged_messages_survive_sigkill_without_fsync() {
    for policy in ["interval", "none"] {
        survive_sigkill(5, &[("STARLING_ENGINE_DURABILITY", policy)], false);
    }
}

fn survive_sigkill(kills: u64, env: &[(&str, &str)], durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let acked: Acked = acked::new();
    let mut rng = Rng(0x5eed_5eed_1234_5678);
    let mut server = Server::start(dir.path(), env);
    for round in 0..kills {
        let publishers = start_publishers(server.address, round, &acked, durable);
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 300));
        let before = acked.lock().unwrap().len();
        server.kill();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        let after = acked.lock().unwrap().len();
        assert!(
            after > before.saturating_sub(1),
            "publishers were being acknowledged"
        );
        server = Server::start(dir.path(), env);
        let checked = verify(server.address, &acked);
        assert_eq!(checked, after, "every acknowledged message was checked");
        eprintln!("{env:?} round {round}: {after} acknowledged messages intact after SIGKILL");
    }
    assert!(acked.lock().unwrap().len() > kills as usize * 10);
}

/// What a power loss can leave of a partition: of the pages written after
/// the durable end the shard journal records, any may be lost (here: each
/// with probability 1/2, as zeros), so holes sit before written pages.
fn drop_unsynced_pages(data_dir: &std::path::Path, rng: &mut Rng) -> u64 {
    starling_storage::crash_image::lose_unsynced_partition_pages(data_dir, &mut || {
        rng.next().is_multiple_of(2)
    })
    .unwrap()
}

#[test]
fn acknowledged_messages_survive_lost_unsynced_partition_pages() {
    let dir = tempfile::tempdir().unwrap();
    survive_lost_unsynced_pages(dir.path(), &[]);
}

/// The same with encryption at rest: the journal replays sealed batches and
/// recovery authenticates what it scans.
#[test]
fn encrypted_acknowledged_messages_survive_lost_unsynced_partition_pages() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("7 {}\n", "5a".repeat(32))).unwrap();
    let data = dir.path().join("data");
    survive_lost_unsynced_pages(
        &data,
        &[
            (
                "STARLING_ENGINE_ENCRYPTION_KEY_FILE",
                keys.to_str().unwrap(),
            ),
            ("STARLING_ENGINE_ENCRYPTION_KEY_ID", "7"),
        ],
    );
}

fn survive_lost_unsynced_pages(data_dir: &std::path::Path, env: &[(&str, &str)]) {
    let acked: Acked = acked::new();
    let mut rng = Rng(0x0bad_c0de_0bad_c0de);
    let mut server = Server::start(data_dir, env);
    let mut dropped = 0;
    let mut replays = 0;
    for round in 0..5 {
        let publishers = start_publishers(server.address, round, &acked, true);
        std::thread::sleep(Duration::from_millis(200 + rng.next() % 300));
        server.kill();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        dropped += drop_unsynced_pages(data_dir, &mut rng);
        server = Server::start(data_dir, env);
        replays += server
            .log
            .try_iter()
            .filter(|line| line.contains("written again from the shard journal"))
            .count();
        let checked = verify(server.address, &acked);
        assert_eq!(checked, acked.lock().unwrap().len());
        eprintln!(
            "round {round}: {checked} acknowledged messages intact after losing unsynced pages"
        );
    }
    assert!(dropped > 0, "the test dropped pages");
    assert!(replays > 0, "partitions were repaired from the journal");
}
