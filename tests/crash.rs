//! SIGKILL the real server while publishers are being acknowledged, 20
//! times; after every restart every acknowledged message is there exactly
//! once, at its acknowledged seq, in per-channel order, with gap-free seqs.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use starling_adapters::client::{Client, PublishRequest};
use starling_protocol::{kind, HistoryQuery};

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

/// (channel, seq) → body of every acknowledged publish.
type Acked = Arc<Mutex<HashMap<(String, u64), Bytes>>>;

fn publish_until_killed(server: std::net::SocketAddr, round: u64, publisher: usize, acked: Acked) {
    let Ok(mut client) = Client::connect(server, "crash-publisher", &format!("p{publisher}"))
    else {
        return;
    };
    client.set_reply_timeout(Duration::from_secs(5));
    for n in 0u64.. {
        let channel = format!("crash-{}", (publisher + n as usize) % CHANNELS);
        let body = Bytes::from(format!("round {round} publisher {publisher} message {n}"));
        let request = PublishRequest {
            client_message_id: Bytes::from(format!("{round}-{n}")),
            ..PublishRequest::new(channel.clone(), kind::MESSAGE, body.clone())
        };
        match client.publish_with(request) {
            Ok(ack) => {
                assert!(
                    ack.durable,
                    "the default policy acknowledges durable writes"
                );
                let previous = acked.lock().unwrap().insert((channel, ack.seq), body);
                assert!(previous.is_none(), "seq {} acknowledged twice", ack.seq);
            }
            Err(_) => return, // the server was killed
        }
    }
}

fn verify(server: std::net::SocketAddr, acked: &Acked) -> usize {
    let acked = acked.lock().unwrap();
    let mut client = Client::connect(server, "crash-verifier", "").unwrap();
    let mut checked = 0;
    for c in 0..CHANNELS {
        let channel = format!("crash-{c}");
        let mut seq = 1;
        let mut bodies = HashSet::new();
        loop {
            let page = client
                .history(&channel, HistoryQuery::From(seq), 1000)
                .unwrap();
            for message in &page.messages {
                assert_eq!(
                    message.seq, seq,
                    "{channel}: seqs are gap-free and in order"
                );
                assert!(
                    bodies.insert(message.body.clone()),
                    "{channel}: {:?} stored twice",
                    message.body
                );
                seq += 1;
            }
            if page.messages.is_empty() || seq > page.head_seq {
                assert_eq!(
                    seq,
                    page.head_seq + 1,
                    "{channel}: history reaches the head"
                );
                break;
            }
        }
        let head = seq - 1;
        for ((acked_channel, acked_seq), body) in acked.iter() {
            if *acked_channel != channel {
                continue;
            }
            assert!(
                *acked_seq <= head,
                "{channel}: acknowledged seq {acked_seq} lost (head {head})"
            );
            let page = client
                .history(&channel, HistoryQuery::From(*acked_seq), 1)
                .unwrap();
            assert_eq!(
                &page.messages[0].body, body,
                "{channel} seq {acked_seq} holds what was acknowledged"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    let mut rng = Rng(0x5eed_5eed_1234_5678);
    let mut server = Server::start(dir.path(), &[]);
    for round in 0..KILLS {
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let acked = acked.clone();
                let address = server.address;
                std::thread::spawn(move || publish_until_killed(address, round, p, acked))
            })
            .collect();
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
        server = Server::start(dir.path(), &[]);
        let checked = verify(server.address, &acked);
        assert_eq!(checked, after, "every acknowledged message was checked");
        eprintln!("round {round}: {after} acknowledged messages intact after SIGKILL");
    }
    assert!(acked.lock().unwrap().len() > KILLS as usize * 10);
}
