//! Delayed wills kept in the log, so that one pending when the server is
//! killed or stopped is published after the restart (MQTT 3.1.2.5, v5's
//! Will Delay Interval).
//!
//! The `left` record a persistent session writes when its connection ends
//! carries the will it leaves waiting (`will`: topic, payload, retain, the
//! header block as it will be published, when it is due, and the user and
//! roles it is published as), and the session's client id is listed in
//! `$mqtt/wills`. Later records of the session decide what became of it:
//! `back` (the client resumed the session: no will), `will-sent` (the
//! keeper published it), `start` or `end` (the session ended: the will is
//! due at once). After a restart the keeper reads `$mqtt/wills`, and for
//! each client id the tail of its session's records, and schedules the
//! wills still pending; when one is due it reads the tail again (a client
//! may have come back meanwhile) before it publishes it.

use std::collections::BTreeSet;

use data_encoding::BASE64;
use starling_broker::{LocalClient, Principal};

use super::*;

/// The index of sessions that left a delayed will, one client id per
/// record.
pub(super) const WILLS_INDEX: &str = "$mqtt/wills";
/// Records of a session read from its end to find its will: the `left`
/// record and what followed it (a resumed session writes `back` first).
const WILL_TAIL_RECORDS: u32 = 64;
/// Records per page of the wills index.
const WILLS_INDEX_PAGE: u32 = 500;

/// A will as its session's `left` record keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoredWill {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) retain: bool,
    /// The header block it is published with (its message expiry counted
    /// from when it is due).
    pub(super) headers: Bytes,
    /// When it is due, in ms since the Unix epoch.
    pub(super) due_ms: u64,
    pub(super) user: String,
    pub(super) roles: Vec<String>,
}

impl StoredWill {
    /// The record of `will`, due at `due_ms`, published as `principal`.
    pub(super) fn of(will: &Will, principal: &Principal, due_ms: u64) -> StoredWill {
        let marks = Marks {
            origin: None,
            retained: will.retain,
        };
        StoredWill {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            retain: will.retain,
            headers: headers_of(&will.properties, marks, due_ms),
            due_ms,
            user: principal.user.to_string(),
            roles: principal
                .roles
                .iter()
                .map(|role| role.to_string())
                .collect(),
        }
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "topic": self.topic,
            "payload": BASE64.encode(&self.payload),
            "retain": self.retain,
            "headers": BASE64.encode(&self.headers),
            "due_ms": self.due_ms,
            "user": self.user,
            "roles": self.roles,
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<StoredWill> {
        let bytes = |name: &str| -> Option<Bytes> {
            let text = value[name].as_str()?;
            BASE64.decode(text.as_bytes()).ok().map(Bytes::from)
        };
        Some(StoredWill {
            topic: value["topic"].as_str()?.to_string(),
            payload: bytes("payload")?,
            retain: value["retain"].as_bool()?,
            headers: bytes("headers")?,
            due_ms: value["due_ms"].as_u64()?,
            user: value["user"].as_str()?.to_string(),
            roles: value["roles"]
                .as_array()?
                .iter()
                .filter_map(|role| role.as_str().map(str::to_string))
                .collect(),
        })
    }

    /// Whom it is published as (in process, with the roles it had).
    pub(super) fn principal(&self) -> Principal {
        Principal {
            user: Arc::from(self.user.as_str()),
            roles: self
                .roles
                .iter()
                .map(|role| Arc::from(role.as_str()))
                .collect(),
            address: None,
            session: None,
        }
    }

    /// The broker commands that publish it.
    pub(super) fn commands(self) -> super::expiry::WillCommands {
        super::expiry::WillCommands::new(self.topic, self.payload, self.retain, self.headers)
    }
}

/// The will that the tail of a session's records (oldest first) leaves
/// pending, and when it is due (0: at once, its session ended).
pub(super) fn pending_will(records: &[Message]) -> Option<(u64, StoredWill)> {
    let events: Vec<serde_json::Value> = records
        .iter()
        .filter_map(|record| serde_json::from_slice(&record.body).ok())
        .collect();
    let left = events
        .iter()
        .rposition(|event| event["type"] == "left" && event["will"].is_object())?;
    let will = StoredWill::from_json(&events[left]["will"])?;
    let mut due_ms = will.due_ms;
    for event in &events[left + 1..] {
        match event["type"].as_str() {
            Some("back" | "will-sent") => return None,
            Some("start" | "end") => due_ms = 0,
            _ => {}
        }
    }
    Some((due_ms, will))
}

/// The tail of the records of `client_id`'s session.
fn session_tail(client: &mut LocalClient, client_id: &str) -> Option<Vec<Message>> {
    let channel = session_channel(client_id);
    match client.history(&channel, HistoryQuery::Last, WILL_TAIL_RECORDS) {
        Ok((_, records)) => Some(records),
        Err(error) => {
            log::warn!(
                "mqtt: the session of {client_id:?} could not be read for its will: {error}"
            );
            None
        }
    }
}

/// The wills pending in the log, by client id, with when each is due.
pub(super) fn load_wills(client: &mut LocalClient) -> Vec<(String, u64, StoredWill)> {
    let mut client_ids = BTreeSet::new();
    let mut from = 1;
    loop {
        let query = HistoryQuery::From(from);
        let (head_seq, records) = match client.history(WILLS_INDEX, query, WILLS_INDEX_PAGE) {
            Ok(page) => page,
            Err(error) => {
                log::error!(
                    "mqtt: the delayed wills index {WILLS_INDEX} could not be read ({error}); \
                     wills left before the restart are not published"
                );
                return Vec::new();
            }
        };
        for record in &records {
            client_ids.insert(String::from_utf8_lossy(&record.body).into_owned());
        }
        match records.last() {
            Some(last) if last.seq < head_seq => from = last.seq + 1,
            _ => break,
        }
    }
    client_ids
        .into_iter()
        .filter_map(|client_id| {
            let tail = session_tail(client, &client_id)?;
            let (due_ms, will) = pending_will(&tail)?;
            Some((client_id, due_ms, will))
        })
        .collect()
}

/// True when the will of `client_id` read from the log is still pending
/// (nobody resumed or ended the session since).
pub(super) fn still_pending(client: &mut LocalClient, client_id: &str, will: &StoredWill) -> bool {
    session_tail(client, client_id)
        .and_then(|tail| pending_will(&tail))
        .is_some_and(|(_, pending)| pending == *will)
}

impl Connected {
    /// Lists this session in the wills index (its `left` record carries a
    /// will).
    pub(super) fn index_will(&mut self, context: &mut SessionContext<'_>) {
        let request_id = next_request(self, Pending::Fire);
        context.submit_as_server(
            request_id,
            Command::Publish {
                channel: starling_protocol::Utf8Bytes::from_static(WILLS_INDEX),
                ephemeral: false,
                kind: kind::MESSAGE,
                // Listed once per dedupe window, however often it leaves.
                client_message_id: Bytes::copy_from_slice(self.client_id.as_bytes()),
                relation: 0,
                headers: Bytes::new(),
                body: Bytes::copy_from_slice(self.client_id.as_bytes()),
            },
        );
    }
}

/// Records that `client_id`'s will went out, so a restart does not publish
/// it again.
pub(super) fn record_will_sent(client: &mut LocalClient, client_id: &str) {
    let event = serde_json::json!({"type": "will-sent"});
    if let Err(error) = client.publish(&session_channel(client_id), event.to_string()) {
        log::warn!(
            "mqtt: that the will of {client_id:?} was published was not recorded ({error}); \
             a restart may publish it again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, event: serde_json::Value) -> Message {
        test_message(seq, 0, Bytes::from(event.to_string()))
    }

    fn stored() -> StoredWill {
        StoredWill {
            topic: "presence/a".into(),
            payload: Bytes::from_static(b"a is gone"),
            retain: true,
            headers: Bytes::from_static(&[1, 0, 2]),
            due_ms: 5_000,
            user: "a".into(),
            roles: vec!["member".into()],
        }
    }

    #[test]
    fn the_records_after_a_left_will_decide_it() {
        use serde_json::json;
        let left = record(
            1,
            json!({"type": "left", "at_ms": 1_000, "expiry_s": 60, "will": stored().to_json()}),
        );
        let alone = std::slice::from_ref(&left);
        assert_eq!(pending_will(alone), Some((5_000, stored())));
        let subscribed = record(0, json!({"type": "subscribe", "filter": "a", "qos": 1}));
        assert_eq!(
            pending_will(&[subscribed.clone(), left.clone()]),
            Some((5_000, stored()))
        );
        for (after, expected) in [
            ("back", None),
            ("will-sent", None),
            ("start", Some((0, stored()))),
            ("end", Some((0, stored()))),
        ] {
            let later = record(2, json!({ "type": after }));
            assert_eq!(pending_will(&[left.clone(), later]), expected, "{after}");
        }
        // A session ended and sent its will: nothing pending.
        let ended = [
            left.clone(),
            record(2, json!({"type": "start"})),
            record(3, json!({"type": "will-sent"})),
        ];
        assert_eq!(pending_will(&ended), None);
        let plain_left = record(1, json!({"type": "left", "at_ms": 0, "expiry_s": 60}));
        assert_eq!(pending_will(&[plain_left]), None);
        assert_eq!(pending_will(&[subscribed]), None);
    }

    #[test]
    fn a_stored_will_reads_back() {
        let will = stored();
        assert_eq!(StoredWill::from_json(&will.to_json()), Some(will.clone()));
        let principal = will.principal();
        assert_eq!(&*principal.user, "a");
        assert_eq!(principal.roles.len(), 1);
    }
}
