//! Acknowledged publishes, recorded, and checked against the log after a
//! crash or a failure (tests/crash.rs, tests/full_disk.rs).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use starling_adapters::client::{Client, ClientError, PublishRequest};
use starling_protocol::{kind, HistoryQuery};

/// (channel, seq) → body of every acknowledged publish.
pub type Acked = Arc<Mutex<HashMap<(String, u64), Bytes>>>;

pub fn new() -> Acked {
    Arc::new(Mutex::new(HashMap::new()))
}

/// Publishes `body` to `channel` with the idempotency key `id` and records
/// the acknowledged seq (which must be new, and durable under the default
/// policy).
pub fn publish(
    client: &mut Client,
    channel: &str,
    body: Bytes,
    id: String,
    acked: &Acked,
) -> Result<(), ClientError> {
    publish_under(client, channel, body, id, acked, true)
}

/// [`publish`] under a policy whose acknowledgements are `durable` or not.
pub fn publish_under(
    client: &mut Client,
    channel: &str,
    body: Bytes,
    id: String,
    acked: &Acked,
    durable: bool,
) -> Result<(), ClientError> {
    let request = PublishRequest {
        client_message_id: Bytes::from(id),
        ..PublishRequest::new(channel, kind::MESSAGE, body.clone())
    };
    let ack = client.publish_with(request)?;
    if durable {
        assert!(
            ack.durable,
            "the default policy acknowledges durable writes"
        );
    }
    let previous = acked
        .lock()
        .unwrap()
        .insert((channel.to_string(), ack.seq), body);
    assert!(
        previous.is_none(),
        "{channel}: seq {} acknowledged twice",
        ack.seq
    );
    Ok(())
}

/// Every channel `{prefix}0` .. `{prefix}{channels - 1}` is gap-free up to
/// its head, holds no body twice, and holds every acknowledged message at
/// its seq. Returns how many acknowledged messages were checked.
pub fn verify(server: SocketAddr, prefix: &str, channels: usize, acked: &Acked) -> usize {
    let acked = acked.lock().unwrap();
    let mut client = Client::connect(server, "acked-verifier", "").unwrap();
    let mut checked = 0;
    for c in 0..channels {
        let channel = format!("{prefix}{c}");
        let mut stored = HashMap::new();
        let mut bodies = HashSet::new();
        let mut seq = 1;
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
                stored.insert(message.seq, message.body.clone());
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
        for ((acked_channel, acked_seq), body) in acked.iter() {
            if *acked_channel == channel {
                assert_eq!(
                    stored.get(acked_seq),
                    Some(body),
                    "{channel}: acknowledged seq {acked_seq} (head {}) holds what was acknowledged",
                    seq - 1
                );
                checked += 1;
            }
        }
    }
    checked
}
