//! The JSON chat protocol over a real WebSocket to the real binary: every
//! command, its error replies, and the close codes of bad frames.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{ChatClient, Server};
use serde_json::json;
use starling_adapters::client::Client;
use starling_protocol::SubscribeStart;

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

#[test]
fn connect_comes_first_and_names_the_user() {
    let (_dir, server) = server();
    let mut client = ChatClient::open(server.http);
    assert_eq!(
        client.error(json!({"type": "publish", "channel": "general", "text": "hi"})),
        "unauthenticated"
    );
    assert_eq!(
        client.error(json!({"type": "connect", "token": "$server"})),
        "denied"
    );
    let welcome = client.ok(json!({"type": "connect", "token": "alice"}));
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["protocol"], 1);
    assert!(welcome["heartbeat_s"].as_u64().unwrap() > 0);
    assert_eq!(
        client.error(json!({"type": "connect", "token": "bob"})),
        "invalid_argument"
    );
    assert_eq!(client.ok(json!({"type": "ping"})), json!({}));
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays() {
    let (_dir, server) = server();
    let mut client = ChatClient::connect(server.http, "alice");
    client
        .socket
        .send(tungstenite::Message::text("this is not json"))
        .unwrap();
    let reply = client.frame();
    assert_eq!(reply["id"], 0);
    assert_eq!(reply["error"]["code"], "malformed");
    assert_eq!(
        client.error(json!({"type": "publish", "channel": "x"})),
        "malformed"
    );
    assert_eq!(client.error(json!({"type": "teleport"})), "malformed");
    assert_eq!(
        client.error(json!({"type": "history", "channel": "$chat/user/bob"})),
        "invalid_argument"
    );
    assert_eq!(
        client.error(json!({"type": "subscribe", "channel": "x", "since": 1, "last": 2})),
        "invalid_argument"
    );
    // Still serving.
    let published = client.ok(json!({"type": "publish", "channel": "x", "text": "still here"}));
    assert_eq!(published["seq"], 1);
}

#[test]
fn publish_is_idempotent_and_subscribers_get_it_live() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    let subscribed = bob.ok(json!({"type": "subscribe", "channel": "general"}));
    assert_eq!(subscribed["head_seq"], 0);
    let first = alice
        .ok(json!({"type": "publish", "channel": "general", "text": "hello", "client_id": "m-1"}));
    assert_eq!(first["seq"], 1);
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["durable"], true);
    let retry = alice
        .ok(json!({"type": "publish", "channel": "general", "text": "hello", "client_id": "m-1"}));
    assert_eq!(retry["seq"], 1);
    assert_eq!(retry["duplicate"], true);
    let push = bob.next_message();
    assert_eq!(push["channel"], "general");
    assert_eq!(push["message"]["seq"], 1);
    assert_eq!(push["message"]["text"], "hello");
    assert_eq!(push["message"]["sender"], "alice");
    assert_eq!(push["message"]["client_id"], "m-1");
    alice.ok(json!({"type": "publish", "channel": "general", "text": "second"}));
    // The retry appended nothing: the next push is seq 2.
    assert_eq!(bob.next_message()["message"]["seq"], 2);
    bob.ok(json!({"type": "unsubscribe", "channel": "general"}));
    assert_eq!(
        bob.error(json!({"type": "unsubscribe", "channel": "general"})),
        "not_subscribed"
    );
}

#[test]
fn subscribe_since_recovers_exactly_what_was_missed() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    for n in 1..=5 {
        alice.ok(json!({"type": "publish", "channel": "room", "text": format!("m{n}")}));
    }
    let mut bob = ChatClient::connect(server.http, "bob");
    let subscribed = bob.ok(json!({"type": "subscribe", "channel": "room", "since": 2}));
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["head_seq"], 5);
    alice.ok(json!({"type": "publish", "channel": "room", "text": "m6"}));
    let seqs: Vec<u64> = (0..4)
        .map(|_| bob.next_of_kind("room", "message")["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    // A client that claims seqs the server never had is told it did not recover.
    let mut carol = ChatClient::connect(server.http, "carol");
    let ahead = carol.ok(json!({"type": "subscribe", "channel": "room", "since": 99}));
    assert_eq!(ahead["recovered"], false);
    // `last` then live.
    let mut dave = ChatClient::connect(server.http, "dave");
    dave.ok(json!({"type": "subscribe", "channel": "room", "last": 2}));
    assert_eq!(dave.next_of_kind("room", "message")["seq"], 5);
    assert_eq!(dave.next_of_kind("room", "message")["seq"], 6);
}

#[test]
fn subscribe_since_reports_records_removed_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    // One partition of small segments, and a rule that expires every
    // sealed segment holding only `old…` records at the next check (a
    // segment holding a record no rule covers is kept).
    let server = Server::start(
        dir.path(),
        &[
            ("STARLING_ENGINE_PARTITIONS", "1"),
            ("STARLING_ENGINE_SEGMENT_BYTES_MAX", "4096"),
            (
                "STARLING_ENGINE_RETENTION",
                r#"[{prefix = "old", max_age_ms = 1}]"#,
            ),
            ("STARLING_ENGINE_RETENTION_CHECK_MS", "50"),
            ("STARLING_LOG_LEVEL", "debug"),
        ],
    );
    let mut native = Client::connect(server.address, "test", "carol").unwrap();
    for n in 1..=60 {
        let body = format!("{n:03} {}", "x".repeat(150));
        native
            .publish("old", starling_protocol::kind::MESSAGE, body)
            .unwrap();
    }
    // A record no rule covers: from here on the active segment is never
    // deleted, whatever the chat writes to the partition later.
    native
        .publish("keep", starling_protocol::kind::MESSAGE, &b"kept"[..])
        .unwrap();
    // The server logs a marker after those writes (a client's close
    // reason), then two retention runs; the second comes a check period
    // after the first, so every segment sealed by the writes has expired
    // and is gone.
    let mut marker = ChatClient::open(server.http);
    marker
        .socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "retention-marker".into(),
        }))
        .unwrap();
    let next_line_with = |text: &str| loop {
        let line = server
            .log
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the server logs {text:?}"));
        if line.contains(text) {
            break;
        }
    };
    next_line_with("retention-marker");
    next_line_with("retention: RetentionReport");
    next_line_with("retention: RetentionReport");
    let page = native
        .history("old", starling_protocol::HistoryQuery::From(1), 1)
        .unwrap();
    let first_kept = page.messages.first().expect("some records are kept").seq;
    assert!(first_kept > 2, "sealed segments were deleted");
    let mut bob = ChatClient::connect(server.http, "bob");
    let mut subscribe = |since: u64| {
        let subscribed = bob.ok(json!({"type": "subscribe", "channel": "old", "since": since}));
        assert_eq!(subscribed["head_seq"], 60);
        let first = bob.next_of_kind("old", "message")["seq"].as_u64();
        bob.ok(json!({"type": "unsubscribe", "channel": "old"}));
        bob.pushes.clear();
        (subscribed["recovered"].as_bool().unwrap(), first.unwrap())
    };
    // Missed records were removed: not recovered; the catch-up starts at
    // the oldest record kept.
    assert_eq!(subscribe(0), (false, first_kept));
    assert_eq!(subscribe(first_kept - 2), (false, first_kept));
    // Everything missed is still there.
    assert_eq!(subscribe(first_kept - 1), (true, first_kept));
    assert_eq!(subscribe(first_kept), (true, first_kept + 1));
}

#[test]
fn history_pages_forward_and_back() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    for n in 1..=10 {
        alice.ok(json!({"type": "publish", "channel": "log", "text": format!("m{n}")}));
    }
    let seqs = |page: &serde_json::Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let last = alice.ok(json!({"type": "history", "channel": "log", "limit": 3}));
    assert_eq!(seqs(&last), vec![8, 9, 10]);
    assert_eq!(last["head_seq"], 10);
    let before = alice.ok(json!({"type": "history", "channel": "log", "before": 8, "limit": 3}));
    assert_eq!(seqs(&before), vec![5, 6, 7]);
    let after = alice.ok(json!({"type": "history", "channel": "log", "after": 8}));
    assert_eq!(seqs(&after), vec![9, 10]);
    let default = alice.ok(json!({"type": "history", "channel": "log"}));
    assert_eq!(seqs(&default).len(), 10);
}

#[test]
fn edits_deletes_reactions_and_threads() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    alice.ok(json!({"type": "channel_create", "channel": "team", "members": ["bob"]}));
    let root = alice.ok(json!({"type": "publish", "channel": "team", "text": "lunch?"}))["seq"]
        .as_u64()
        .unwrap();
    bob.ok(json!({"type": "subscribe", "channel": "team"}));

    assert_eq!(
        bob.error(json!({"type": "edit", "channel": "team", "seq": root, "text": "no"})),
        "denied"
    );
    assert_eq!(
        alice.error(json!({"type": "edit", "channel": "team", "seq": 999, "text": "x"})),
        "not_found"
    );
    let edit =
        alice.ok(json!({"type": "edit", "channel": "team", "seq": root, "text": "lunch at 12?"}));
    let pushed = bob.next_of_kind("team", "edit");
    assert_eq!(pushed["seq"], edit["seq"]);
    assert_eq!(pushed["relation"], root);
    assert_eq!(pushed["text"], "lunch at 12?");

    alice.ok(json!({"type": "react", "channel": "team", "seq": root, "emoji": "👍"}));
    let reaction = bob.next_of_kind("team", "reaction_add");
    assert_eq!(
        (reaction["relation"].as_u64(), reaction["text"].as_str()),
        (Some(root), Some("👍"))
    );
    alice.ok(
        json!({"type": "react", "channel": "team", "seq": root, "emoji": "👍", "remove": true}),
    );
    assert_eq!(bob.next_of_kind("team", "reaction_remove")["text"], "👍");
    assert_eq!(
        alice.error(json!({"type": "react", "channel": "team", "seq": root, "emoji": ""})),
        "invalid_argument"
    );

    let reply1 =
        bob.ok(json!({"type": "publish", "channel": "team", "text": "yes", "reply_to": root}));
    let reply2 = alice.ok(json!({"type": "publish", "channel": "team", "text": "ok", "reply_to": root, "client_id": "r2"}));
    // A retried reply is indexed once.
    alice.ok(json!({"type": "publish", "channel": "team", "text": "ok", "reply_to": root, "client_id": "r2"}));
    alice.ok(json!({"type": "publish", "channel": "team", "text": "unrelated"}));
    let thread = alice.ok(json!({"type": "thread", "channel": "team", "root": root}));
    let replies: Vec<(u64, String)> = thread["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        replies,
        vec![
            (reply1["seq"].as_u64().unwrap(), "yes".to_string()),
            (reply2["seq"].as_u64().unwrap(), "ok".to_string())
        ]
    );

    assert_eq!(
        bob.error(json!({"type": "delete", "channel": "team", "seq": root})),
        "denied"
    );
    alice.ok(json!({"type": "delete", "channel": "team", "seq": root}));
    assert_eq!(bob.next_of_kind("team", "delete")["relation"], root);
    // The original stays in the log.
    let history =
        alice.ok(json!({"type": "history", "channel": "team", "after": root - 1, "limit": 1}));
    assert_eq!(history["messages"][0]["text"], "lunch?");
    // Only messages can be edited.
    let event_seq = 1;
    assert_eq!(
        alice.error(json!({"type": "edit", "channel": "team", "seq": event_seq, "text": "x"})),
        "invalid_argument"
    );
}

#[test]
fn private_channels_admit_only_members() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    let mut eve = ChatClient::connect(server.http, "eve");
    let info = alice.ok(json!({"type": "channel_create", "channel": "hr", "visibility": "private", "name": "HR", "topic": "people"}));
    assert_eq!(info["visibility"], "private");
    assert_eq!(info["owner"], "alice");
    assert_eq!(info["members"], json!(["alice"]));
    assert_eq!(
        alice.error(json!({"type": "channel_create", "channel": "hr"})),
        "already_exists"
    );
    assert_eq!(
        alice.error(json!({"type": "channel_create", "channel": "Bad Name"})),
        "invalid_argument"
    );
    // A name other clients already wrote to is theirs, not a new channel.
    eve.ok(json!({"type": "publish", "channel": "squat", "text": "mine first"}));
    let reply =
        alice.send(json!({"type": "channel_create", "channel": "squat", "visibility": "private"}));
    assert_eq!(reply["error"]["code"], "already_exists", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in use"),
        "{reply}"
    );
    for request in [
        json!({"type": "publish", "channel": "hr", "text": "hi"}),
        json!({"type": "subscribe", "channel": "hr"}),
        json!({"type": "history", "channel": "hr"}),
        json!({"type": "typing", "channel": "hr"}),
        json!({"type": "channel_join", "channel": "hr"}),
        json!({"type": "members", "channel": "hr"}),
        json!({"type": "channel_info", "channel": "hr"}),
        json!({"type": "channel_rename", "channel": "hr", "name": "x"}),
    ] {
        assert_eq!(eve.error(request.clone()), "denied", "{request}");
    }
    alice.ok(json!({"type": "channel_invite", "channel": "hr", "user": "bob"}));
    bob.ok(json!({"type": "publish", "channel": "hr", "text": "thanks"}));
    let renamed = bob.ok(json!({"type": "channel_rename", "channel": "hr", "name": "People"}));
    assert_eq!(renamed["name"], "People");
    let topic = bob.ok(json!({"type": "channel_topic", "channel": "hr", "topic": "hiring"}));
    assert_eq!(topic["topic"], "hiring");
    assert_eq!(
        bob.error(json!({"type": "channel_remove", "channel": "hr", "user": "alice"})),
        "denied"
    );
    alice.ok(json!({"type": "channel_remove", "channel": "hr", "user": "bob"}));
    assert_eq!(
        bob.error(json!({"type": "publish", "channel": "hr", "text": "hello?"})),
        "denied"
    );
    // The channel's own log shows what happened.
    let history = alice.ok(json!({"type": "history", "channel": "hr"}));
    let events: Vec<String> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "channel_event")
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(m["text"].as_str().unwrap()).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        events,
        vec![
            "created",
            "member_added",
            "renamed",
            "topic",
            "member_removed"
        ]
    );
    // An owner who left has no say any more, and learns nothing.
    alice.ok(json!({"type": "channel_invite", "channel": "hr", "user": "bob"}));
    alice.ok(json!({"type": "channel_leave", "channel": "hr"}));
    let reply = alice.send(json!({"type": "channel_remove", "channel": "hr", "user": "bob"}));
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
    assert!(reply.get("result").is_none());
    // A new channel names a bounded number of members.
    let crowd: Vec<String> = (0..300).map(|n| format!("user{n}")).collect();
    assert_eq!(
        alice.error(json!({"type": "channel_create", "channel": "crowd", "members": crowd})),
        "invalid_argument"
    );
}

/// Reads `client`'s message pushes up to the marker text on `general`;
/// the texts seen on `channel` before it.
fn texts_until_marker(client: &mut ChatClient, channel: &str, marker: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let frame = client.next_message();
        let text = frame["message"]["text"].as_str().unwrap_or("").to_string();
        if frame["channel"] == "general" && text == marker {
            return texts;
        }
        if frame["channel"] == channel && frame["message"]["kind"] == "message" {
            texts.push(text);
        }
    }
}

#[test]
fn subscribers_the_channel_stops_admitting_are_cut_off() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    let mut carol = ChatClient::connect(server.http, "carol");
    alice.ok(json!({"type": "channel_create", "channel": "general"}));
    for client in [&mut bob, &mut carol] {
        client.ok(json!({"type": "channel_join", "channel": "general"}));
        client.ok(json!({"type": "subscribe", "channel": "general"}));
    }
    // A direct channel's id is predictable: before it is made, only the
    // users it names may use it.
    for request in [
        json!({"type": "subscribe", "channel": "dm/alice+bob"}),
        json!({"type": "publish", "channel": "dm/alice+bob", "text": "hi, it is bob"}),
        json!({"type": "history", "channel": "dm/alice+bob"}),
    ] {
        assert_eq!(carol.error(request.clone()), "denied", "{request}");
    }
    bob.ok(json!({"type": "subscribe", "channel": "dm/alice+bob"}));
    alice.ok(json!({"type": "direct", "users": ["bob"]}));
    alice.ok(json!({"type": "publish", "channel": "dm/alice+bob", "text": "psst"}));
    assert_eq!(bob.next_of_kind("dm/alice+bob", "message")["text"], "psst");

    // Carol follows a name nobody uses yet; Alice then makes it private.
    carol.ok(json!({"type": "subscribe", "channel": "hr"}));
    bob.ok(json!({"type": "subscribe", "channel": "hr"}));
    alice.ok(json!({"type": "channel_create", "channel": "hr", "visibility": "private", "members": ["bob"]}));
    let push = carol.next_push("unsubscribed");
    assert_eq!(push["channel"], "hr");
    assert!(
        push["reason"].as_str().unwrap().contains("not a member"),
        "{push}"
    );
    alice.ok(json!({"type": "publish", "channel": "hr", "text": "salaries"}));
    alice.ok(json!({"type": "publish", "channel": "general", "text": "marker 1"}));
    assert_eq!(
        texts_until_marker(&mut carol, "hr", "marker 1"),
        Vec::<String>::new()
    );
    assert_eq!(
        texts_until_marker(&mut bob, "hr", "marker 1"),
        vec!["salaries"]
    );

    // A removed member's open subscription ends with the removal.
    alice.ok(json!({"type": "channel_remove", "channel": "hr", "user": "bob"}));
    assert_eq!(bob.next_push("unsubscribed")["channel"], "hr");
    alice.ok(json!({"type": "publish", "channel": "hr", "text": "after bob"}));
    alice.ok(json!({"type": "publish", "channel": "general", "text": "marker 2"}));
    assert_eq!(
        texts_until_marker(&mut bob, "hr", "marker 2"),
        Vec::<String>::new()
    );
    assert_eq!(
        bob.error(json!({"type": "subscribe", "channel": "hr", "last": 5})),
        "denied"
    );

    // Invited again, the member subscribes again and hears the channel.
    alice.ok(json!({"type": "channel_invite", "channel": "hr", "user": "bob"}));
    bob.ok(json!({"type": "subscribe", "channel": "hr"}));
    alice.ok(json!({"type": "publish", "channel": "hr", "text": "welcome back"}));
    alice.ok(json!({"type": "publish", "channel": "general", "text": "marker 3"}));
    assert_eq!(
        texts_until_marker(&mut bob, "hr", "marker 3"),
        vec!["welcome back"]
    );

    // A refused subscribe leaves nothing registered: making the channel
    // private later ends nothing and tells nothing.
    let reply = carol.send(json!({"type": "subscribe", "channel": "vault", "since": 1, "last": 1}));
    assert_eq!(reply["error"]["code"], "invalid_argument", "{reply}");
    alice.ok(json!({"type": "channel_create", "channel": "vault", "visibility": "private"}));
    alice.ok(json!({"type": "publish", "channel": "general", "text": "marker 4"}));
    let mut frames = std::mem::take(&mut carol.pushes);
    while !frames
        .iter()
        .any(|frame| frame["message"]["text"] == "marker 4")
    {
        frames.push_back(carol.frame());
    }
    assert!(
        frames.iter().all(|frame| frame["push"] != "unsubscribed"),
        "{frames:?}"
    );
}

#[test]
fn public_channels_directory_join_and_leave() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    alice.ok(json!({"type": "channel_create", "channel": "random", "topic": "anything"}));
    alice.ok(json!({"type": "channel_create", "channel": "secret", "visibility": "private"}));
    let directory = bob.ok(json!({"type": "directory"}));
    assert_eq!(directory["channels"].as_array().unwrap().len(), 1);
    assert_eq!(directory["channels"][0]["channel"], "random");
    assert_eq!(
        bob.error(json!({"type": "channel_join", "channel": "nope"})),
        "not_found"
    );
    let joined = bob.ok(json!({"type": "channel_join", "channel": "random"}));
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    let channels = bob.ok(json!({"type": "channels"}));
    assert_eq!(channels["channels"][0]["channel"], "random");
    bob.ok(json!({"type": "channel_leave", "channel": "random"}));
    assert_eq!(bob.ok(json!({"type": "channels"}))["channels"], json!([]));
    assert_eq!(
        bob.error(json!({"type": "channel_leave", "channel": "random"})),
        "denied"
    );
}

#[test]
fn direct_channels_are_found_again() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    let first = alice.ok(json!({"type": "direct", "users": ["bob"]}));
    assert_eq!(first["channel"], "dm/alice+bob");
    assert_eq!(first["visibility"], "direct");
    let again = bob.ok(json!({"type": "direct", "users": ["alice"]}));
    assert_eq!(again["channel"], "dm/alice+bob");
    assert_eq!(
        bob.error(json!({"type": "direct", "users": []})),
        "invalid_argument"
    );
    assert_eq!(
        alice.error(json!({"type": "channel_invite", "channel": "dm/alice+bob", "user": "eve"})),
        "invalid_argument"
    );
    // Nor can its creator remove the other user for good.
    assert_eq!(
        alice.error(json!({"type": "channel_remove", "channel": "dm/alice+bob", "user": "bob"})),
        "invalid_argument"
    );
    let mut eve = ChatClient::connect(server.http, "eve");
    assert_eq!(
        eve.error(json!({"type": "history", "channel": "dm/alice+bob"})),
        "denied"
    );
}

#[test]
fn read_markers_unread_counts_and_read_by() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    alice.ok(json!({"type": "channel_create", "channel": "ops", "members": ["bob", "carol"]}));
    let mut last = 0;
    for n in 1..=3 {
        last = alice.ok(json!({"type": "publish", "channel": "ops", "text": format!("m{n}")}))
            ["seq"]
            .as_u64()
            .unwrap();
    }
    bob.ok(json!({"type": "publish", "channel": "ops", "text": "mine"}));
    let channels = bob.ok(json!({"type": "channels"}));
    let ops = &channels["channels"][0];
    assert_eq!(ops["unread"], 3, "{ops}");
    assert_eq!(ops["read_seq"], 0);
    assert_eq!(ops["last_message"]["text"], "mine");

    alice.ok(json!({"type": "subscribe", "channel": "ops"}));
    bob.ok(json!({"type": "read", "channel": "ops", "seq": last}));
    let notice = alice.next_of_kind("ops", "read");
    assert_eq!(
        (notice["sender"].as_str(), notice["relation"].as_u64()),
        (Some("bob"), Some(last))
    );
    let channels = bob.ok(json!({"type": "channels"}));
    assert_eq!(channels["channels"][0]["unread"], 0);
    assert_eq!(channels["channels"][0]["read_seq"], last);
    let read_by = alice.ok(json!({"type": "read_by", "channel": "ops", "seq": last}));
    assert_eq!(read_by, json!({"read": 1, "of": 2, "users": ["bob"]}));
}

#[test]
fn typing_and_presence_are_ephemeral() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    alice.ok(json!({"type": "channel_create", "channel": "desk", "members": ["bob"]}));
    alice.ok(json!({"type": "subscribe", "channel": "desk"}));
    let mut bob = ChatClient::connect(server.http, "bob");
    let online = alice.next_of_kind("desk", "presence");
    assert_eq!(online["seq"], 0);
    let change: serde_json::Value = serde_json::from_str(online["text"].as_str().unwrap()).unwrap();
    assert_eq!(change, json!({"user": "bob", "status": "online"}));
    bob.ok(json!({"type": "typing", "channel": "desk"}));
    let typing = alice.next_of_kind("desk", "typing");
    assert_eq!(
        (typing["seq"].as_u64(), typing["sender"].as_str()),
        (Some(0), Some("bob"))
    );
    bob.ok(json!({"type": "presence", "status": "away"}));
    assert_eq!(
        bob.error(json!({"type": "presence", "status": "asleep"})),
        "invalid_argument"
    );
    let away = alice.next_of_kind("desk", "presence");
    assert!(away["text"].as_str().unwrap().contains("away"));
    let members = alice.ok(json!({"type": "members", "channel": "desk"}));
    assert_eq!(
        members["members"],
        json!([{"user": "alice", "presence": "online"}, {"user": "bob", "presence": "away"}])
    );
    drop(bob);
    let offline = alice.next_of_kind("desk", "presence");
    assert!(offline["text"].as_str().unwrap().contains("offline"));
    // Nothing of this was stored in the channel.
    let history = alice.ok(json!({"type": "history", "channel": "desk"}));
    assert!(history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["kind"] == "channel_event"));
}

#[test]
fn native_and_websocket_clients_share_channels() {
    let (_dir, server) = server();
    let mut native = Client::connect(server.address, "test", "carol").unwrap();
    native.subscribe("bridge", SubscribeStart::Live).unwrap();
    let mut alice = ChatClient::connect(server.http, "alice");
    alice.ok(json!({"type": "subscribe", "channel": "bridge"}));
    alice.ok(json!({"type": "publish", "channel": "bridge", "text": "from the web"}));
    let (channel, messages) = native
        .next_delivery(std::time::Duration::from_secs(20))
        .unwrap()
        .expect("a delivery");
    assert_eq!(channel, "bridge");
    assert_eq!(&messages[0].body[..], b"from the web");
    assert_eq!(&messages[0].sender[..], b"alice");
    native
        .publish(
            "bridge",
            starling_protocol::kind::MESSAGE,
            &b"from native"[..],
        )
        .unwrap();
    let pushed = alice.next_of_kind("bridge", "message");
    let pushed = if pushed["text"] == "from the web" {
        alice.next_of_kind("bridge", "message")
    } else {
        pushed
    };
    assert_eq!(
        (pushed["text"].as_str(), pushed["sender"].as_str()),
        (Some("from native"), Some("carol"))
    );
    // A binary body reaches the web as base64.
    native
        .publish(
            "bridge",
            starling_protocol::kind::MESSAGE,
            &[0xffu8, 0x00][..],
        )
        .unwrap();
    assert_eq!(
        alice.next_of_kind("bridge", "message")["body_base64"],
        "/wA="
    );
}

/// Sends raw WebSocket bytes after a handshake and returns the close code.
fn close_code_after(server: &Server, frame: &[u8]) -> u16 {
    let client = ChatClient::open(server.http);
    let mut stream: TcpStream = client.socket.into_inner();
    stream.write_all(frame).unwrap();
    let mut socket =
        tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None);
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => return u16::from(frame.code),
            Ok(_) => {}
            Err(error) => panic!("expected a close frame, got {error}"),
        }
    }
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x80 | opcode];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 65535 {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn frames_split_anywhere_and_fragmented_arrive_whole() {
    let (_dir, server) = server();
    let mut stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    // The handshake and the first bytes of a frame in one write, the rest
    // of the frame after the upgrade.
    let connect = masked(0x1, br#"{"id":1,"type":"connect","token":"alice"}"#);
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.http
    )
    .into_bytes();
    bytes.extend_from_slice(&connect[..5]);
    stream.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        std::io::Read::read_exact(&mut stream, &mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream.write_all(&connect[5..]).unwrap();
    // A 100 KB publish in three fragments cut inside two-byte characters,
    // a ping between them, every frame written in two pieces.
    let text = "\u{e9}".repeat(50_000);
    let request = json!({"id": 2, "type": "publish", "channel": "general", "text": text});
    let request = request.to_string().into_bytes();
    let (first, rest) = request.split_at(33_333);
    let (second, third) = rest.split_at(33_333);
    let fragment = |opcode: u8, payload: &[u8], fin: bool| {
        let mut frame = masked(opcode, payload);
        if !fin {
            frame[0] &= 0x7f;
        }
        frame
    };
    for frame in [
        fragment(0x1, first, false),
        masked(0x9, b"p"),
        fragment(0x0, second, false),
        fragment(0x0, third, true),
    ] {
        let (a, b) = frame.split_at(frame.len() / 2);
        stream.write_all(a).unwrap();
        stream.flush().unwrap();
        stream.write_all(b).unwrap();
    }
    let mut socket =
        tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None);
    let (mut ponged, mut replies) = (false, Vec::new());
    while replies.len() < 2 {
        match socket.read().unwrap() {
            tungstenite::Message::Pong(payload) => {
                assert_eq!(&payload[..], b"p");
                ponged = true;
            }
            tungstenite::Message::Text(reply) => {
                let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
                assert!(reply.get("error").is_none(), "{reply}");
                replies.push(reply);
            }
            _ => {}
        }
    }
    assert!(ponged);
    replies.sort_by_key(|reply| reply["id"].as_u64());
    assert_eq!(replies[0]["result"]["user"], "alice");
    assert_eq!(replies[1]["result"]["seq"], 1);
    let mut bob = ChatClient::connect(server.http, "bob");
    let history = bob.ok(json!({"type": "history", "channel": "general"}));
    assert_eq!(history["messages"][0]["text"], text);
}

#[test]
fn permessage_deflate_is_not_offered() {
    let (_dir, server) = server();
    let stream = TcpStream::connect(server.http).unwrap();
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        server.http
    ))
    .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (mut socket, response) = tungstenite::client(request, stream).expect("handshake");
    assert_eq!(response.status(), 101);
    assert!(response.headers().get("Sec-WebSocket-Extensions").is_none());
    // Uncompressed frames, as without the offer.
    let connect = json!({"id": 1, "type": "connect", "token": "alice"});
    socket
        .send(tungstenite::Message::text(connect.to_string()))
        .unwrap();
    let reply = socket.read().unwrap().into_text().unwrap();
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["result"]["user"], "alice");
}

#[test]
fn bad_frames_close_with_rfc_codes_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("STARLING_HTTP_WEBSOCKET_MESSAGE_BYTES_MAX", "4096")],
    );
    assert_eq!(close_code_after(&server, &masked(0x1, &[0xc3, 0x28])), 1007);
    assert_eq!(close_code_after(&server, &masked(0x2, b"binary")), 1003);
    assert_eq!(close_code_after(&server, &masked(0x1, &[b'a'; 5000])), 1009);
    // Unmasked client frame.
    assert_eq!(close_code_after(&server, &[0x81, 0x01, b'a']), 1002);
    // Reserved opcode.
    assert_eq!(close_code_after(&server, &masked(0x3, b"")), 1002);
    // A continuation frame with nothing to continue.
    assert_eq!(close_code_after(&server, &masked(0x0, b"x")), 1002);
    // A frame over the limit is refused from its header.
    assert_eq!(
        close_code_after(&server, &masked(0x1, &[b'a'; 5000])[..8]),
        1009
    );
    let mut alice = ChatClient::connect(server.http, "alice");
    alice.ok(json!({"type": "ping"}));
}

#[test]
fn users_may_follow_their_own_channel_list() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    bob.ok(json!({"type": "subscribe", "channel": "$chat/user/bob"}));
    assert_eq!(
        bob.error(json!({"type": "subscribe", "channel": "$chat/user/alice"})),
        "invalid_argument"
    );
    assert_eq!(
        bob.error(json!({"type": "publish", "channel": "$chat/user/bob", "text": "x"})),
        "invalid_argument"
    );
    alice.ok(json!({"type": "direct", "users": ["bob"]}));
    let joined = bob.next_of_kind("$chat/user/bob", "channel_event");
    let event: serde_json::Value = serde_json::from_str(joined["text"].as_str().unwrap()).unwrap();
    assert_eq!(event, json!({"type": "joined", "channel": "dm/alice+bob"}));
}

/// The status line of a WebSocket handshake for `path` with `origin` (and
/// the `mqtt` subprotocol, which `/mqtt` needs and `/ws` ignores).
fn handshake_status(server: &Server, path: &str, origin: Option<&str>) -> String {
    use std::io::Read;
    let mut stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n",
        server.http
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && stream.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().trim_end().to_string()
}

/// A page of another site must not open a WebSocket as the user (the
/// browser would send their cookies or client certificate with it); the
/// server's own pages, configured origins and non-browser clients may.
#[test]
fn websockets_from_pages_of_other_sites_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[(
            "STARLING_HTTP_ALLOWED_ORIGINS",
            r#"["https://chat.example.com"]"#,
        )],
    );
    let own = format!("http://{}", server.http);
    for path in ["/ws", "/mqtt"] {
        for (origin, status) in [
            (None, "101"),
            (Some(own.as_str()), "101"),
            (Some("https://chat.example.com"), "101"),
            (Some("https://evil.example"), "403"),
            (Some("null"), "403"),
            (Some("http://127.0.0.1:1"), "403"),
        ] {
            let line = handshake_status(&server, path, origin);
            assert!(
                line.starts_with(&format!("HTTP/1.1 {status}")),
                "{path} from {origin:?}: {line}"
            );
        }
    }
}

#[test]
fn an_allowed_origin_that_is_not_an_origin_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["serve"])
        .current_dir(dir.path())
        .env(
            "STARLING_HTTP_ALLOWED_ORIGINS",
            r#"["chat.example.com/app"]"#,
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("http.allowed_origins") && stderr.contains("scheme://host"),
        "{stderr}"
    );
}

/// Reads one HTTP response with a Content-Length body off `stream`,
/// byte by byte (nothing after it is consumed).
fn read_one_response(stream: &mut TcpStream) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
}

/// The close frame's code and reason, reading past other frames.
fn close_frame(socket: &mut tungstenite::WebSocket<TcpStream>) -> (u16, String) {
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Ok(tungstenite::Message::Close(None)) => panic!("a close frame without a code"),
            Ok(_) => {}
            Err(error) => panic!("no close frame: {error}"),
        }
    }
}

/// A WebSocket that never signs in is closed like a plain connection that
/// never sends its first packet: the HTTP connection's own timers kept the
/// shard's handshake deadline from closing it, so an idle `/mqtt` tunnel
/// or a `/ws` that only pings stayed for ever.
#[test]
fn websockets_that_never_sign_in_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("STARLING_HTTP_REQUEST_READ_TIMEOUT_MS", "300")],
    );
    let mut chat = ChatClient::open(server.http);
    let (code, reason) = close_frame(&mut chat.socket);
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("no sign-in"), "{reason}");

    let stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/mqtt",
        server.http
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut mqtt, _) = tungstenite::client(request, stream).unwrap();
    let (code, reason) = close_frame(&mut mqtt);
    assert_eq!(code, 1008, "{reason}");

    // A bearer-token API request on the connection before the upgrade
    // signs in nothing of the tunnelled MQTT session.
    let mut stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let api = format!(
        "GET /v1/me/channels HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer alice\r\n\r\n",
        server.http
    );
    stream.write_all(api.as_bytes()).unwrap();
    read_one_response(&mut stream);
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/mqtt",
        server.http
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut mqtt, _) = tungstenite::client(request, stream).unwrap();
    let (code, reason) = close_frame(&mut mqtt);
    assert_eq!(code, 1008, "{reason}");

    // Signed in, a connection stays past that deadline.
    let mut alice = ChatClient::connect(server.http, "alice");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    alice.ok(json!({"type": "ping"}));
}

/// A request and a Close in one read: the answer goes out before the Close
/// echo, and nothing after it (RFC 6455 5.5.1; before, the answer followed
/// the Close and strict clients saw a protocol error).
#[test]
fn nothing_follows_the_close_echo() {
    let (_dir, server) = server();
    let client = ChatClient::connect(server.http, "alice");
    let mut stream: TcpStream = client.socket.into_inner();
    let mut bytes = masked(0x1, br#"{"id":5,"type":"ping"}"#);
    bytes.extend(masked(0x8, &1000u16.to_be_bytes()));
    stream.write_all(&bytes).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut received).unwrap();
    // Unmasked server frames: the text reply, then the Close, then the end.
    assert_eq!(received[0], 0x81, "a text frame first: {received:?}");
    let text_len = usize::from(received[1]);
    let text = std::str::from_utf8(&received[2..2 + text_len]).unwrap();
    assert!(text.contains("\"id\":5"), "{text}");
    let rest = &received[2 + text_len..];
    assert_eq!(rest[0], 0x88, "then the Close: {rest:?}");
    assert_eq!(
        rest.len(),
        2 + usize::from(rest[1]),
        "nothing after it: {rest:?}"
    );
}

/// MQTT's allow-list holds for MQTT over WebSocket on the HTTP port too
/// (before, `/mqtt` served MQTT to wherever HTTP was allowed).
#[test]
fn the_mqtt_allow_list_holds_at_the_websocket_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("STARLING_MQTT_ALLOW_FROM", r#"["127.0.0.5/32"]"#)],
    );
    let line = handshake_status(&server, "/mqtt", None);
    assert!(line.starts_with("HTTP/1.1 403"), "{line}");
    let line = handshake_status(&server, "/ws", None);
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
}

/// Two subscribes of one channel sent together (the second is answered
/// "already subscribed" before the first's page comes) leave the
/// subscription registered: a removal still ends it. Before, the refused
/// second unregistered it, and the removed member kept receiving.
#[test]
fn a_repeated_subscribe_does_not_escape_revocation() {
    let (_dir, server) = server();
    let mut alice = ChatClient::connect(server.http, "alice");
    let mut bob = ChatClient::connect(server.http, "bob");
    alice.ok(json!({"type": "channel_create", "channel": "hr", "visibility": "private", "members": ["bob"]}));
    // In one write, so the server reads both in one turn.
    for id in [100, 101] {
        let request = json!({"id": id, "type": "subscribe", "channel": "hr"});
        bob.socket
            .write(tungstenite::Message::text(request.to_string()))
            .unwrap();
    }
    bob.socket.flush().unwrap();
    let mut answered = 0;
    while answered < 2 {
        let frame = bob.frame();
        if frame.get("push").is_some() {
            continue;
        }
        answered += 1;
    }
    alice.ok(json!({"type": "channel_remove", "channel": "hr", "user": "bob"}));
    assert_eq!(bob.next_push("unsubscribed")["channel"], "hr");
}
