//! Authentication on: users made with `starling user`, sign-in over HTTP,
//! session tokens on every protocol, roles on channel patterns, revocation
//! that closes open connections, TOTP codes that work once, sign-in
//! throttling that cannot lock a user out, and role allow-lists.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http, ChatClient, Server};
use serde_json::{json, Value};
use starling_adapters::client::{Client, ClientError, PublishRequest};
use starling_broker::security::totp;
use starling_protocol::{kind, ErrorCode, SubscribeStart};

const ADMIN_PASSWORD: &str = "root password 123";
const MEMBER_PASSWORD: &str = "member password 1";

/// Writes the configuration (roles, the audit key) and makes the users
/// offline, as an operator bootstraps a server.
fn setup(dir: &Path, admin_allow_from: &str) -> PathBuf {
    let config = write_config(dir, admin_allow_from);
    for (user, role, password) in [
        ("root", "admin", ADMIN_PASSWORD),
        ("alice", "member", MEMBER_PASSWORD),
        ("bob", "member", MEMBER_PASSWORD),
    ] {
        common::add_user(&config, user, role, password);
    }
    config
}

/// Writes the configuration (roles, the audit key) without users.
fn write_config(dir: &Path, admin_allow_from: &str) -> PathBuf {
    let config = dir.join("starling.toml");
    let key = dir.join("audit.key");
    let (ok, out, err) = common::run(&["audit", "keygen", "--out", key.to_str().unwrap()], &[]);
    assert!(ok, "{out}{err}");
    std::fs::write(
        &config,
        format!(
            r##"
[engine]
data_dir = "{data}"
[auth]
enabled = true
audit_key_file = "{key}"
throttle_failures_per_account = 3
throttle_failures_per_address = 6
[[auth.roles]]
name = "admin"
admin = true
publish = ["#"]
subscribe = ["#"]
history = ["#"]
allow_from = [{admin_allow_from}]
[[auth.roles]]
name = "member"
publish = ["team/#", "leavers", "lounge"]
subscribe = ["team/#", "$chat/user/{{user}}", "leavers", "lounge"]
history = ["team/#", "leavers"]
"##,
            data = dir.join("data").display(),
            key = key.display()
        ),
    )
    .unwrap();
    config
}

fn start(dir: &Path, config: &Path) -> Server {
    Server::start_with(
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    )
}

fn sign_in(server: &Server, user: &str, password: &str, code: Option<&str>) -> (u16, Value) {
    let mut body = json!({"user": user, "password": password});
    if let Some(code) = code {
        body["totp"] = json!(code);
    }
    let (status, _, value) = http(server.http, "POST", "/v1/auth/sign-in", None, Some(&body));
    (status, value)
}

fn token(server: &Server, user: &str, password: &str) -> String {
    let (status, value) = sign_in(server, user, password, None);
    assert_eq!(status, 200, "{value}");
    value["token"].as_str().unwrap().to_string()
}

/// `curl` from a chosen loopback source address.
fn curl_from(source: &str, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--interface",
            source,
        ])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

fn mosquitto_pub(server: &Server, token: &str, topic: &str) -> String {
    mosquitto_pub_with(server, token, topic, &[])
}

/// [`mosquitto_pub`] with more arguments (`extra`).
fn mosquitto_pub_with(server: &Server, token: &str, topic: &str, extra: &[&str]) -> String {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args([
            "-V", "mqttv5", "-u", "x", "-P", token, "-t", topic, "-m", "hi", "-q", "1", "-d",
        ])
        .args(extra)
        .output()
        .expect("mosquitto_pub runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts `mosquitto_sub` (MQTT 5, QoS 1) signed in with `token`.
fn mosquitto_sub(server: &Server, token: &str, args: &[&str]) -> common::ChildGuard {
    common::ChildGuard::new(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
            .args(["-V", "mqttv5", "-u", "x", "-P", token, "-q", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs"),
    )
}

#[test]
fn denied_means_denied_on_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    assert_eq!(sign_in(&server, "alice", "wrong password!", None).0, 401);

    // Native.
    let mut native = Client::connect(server.address, "test", &alice).unwrap();
    native
        .publish("team/red", kind::MESSAGE, "allowed")
        .unwrap();
    let error = native
        .publish("general", kind::MESSAGE, "not allowed")
        .unwrap_err();
    assert!(
        error.to_string().contains("may not publish general"),
        "{error}"
    );
    for bad in ["", "not-a-token"] {
        assert!(Client::connect(server.address, "test", bad).is_err());
    }

    // WebSocket chat.
    let mut chat = ChatClient::open(server.http);
    let reply = chat.send(json!({"type": "connect", "token": alice}));
    assert_eq!(reply["result"]["user"], "alice", "{reply}");
    let denied = chat.error(json!({"type": "publish", "channel": "general", "text": "x"}));
    assert!(denied.contains("denied"), "{denied}");
    let mut stranger = ChatClient::open(server.http);
    let denied = stranger.error(json!({"type": "connect", "token": "not-a-token"}));
    assert!(denied.contains("denied"), "{denied}");

    // MQTT: PUBACK 0x87 (not authorized) for a forbidden topic, CONNACK
    // refusal for a bad token.
    assert!(mosquitto_pub(&server, &alice, "team/red").contains("PUBACK (Mid: 1, RC:0)"));
    // A persistent session starts, resumes and is ended by a clean start,
    // though alice's roles do not allow reading the server's `$mqtt/…`
    // channels that keep it.
    let persistent = ["-i", "alice-durable", "-c", "-x", "3600"];
    for _ in 0..2 {
        let output = mosquitto_pub_with(&server, &alice, "team/red", &persistent);
        assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    }
    let output = mosquitto_pub_with(&server, &alice, "team/red", &["-i", "alice-durable"]);
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    assert!(mosquitto_pub(&server, &alice, "general").contains("RC:135"));
    let refused = mosquitto_pub(&server, "not-a-token", "team/red");
    assert!(
        refused.contains("CONNACK") && !refused.contains("PUBACK"),
        "{refused}"
    );

    // HTTP: no token 401, a member on the admin API 403, history of a
    // channel no role allows 403.
    let (status, _, _) = http(
        server.http,
        "GET",
        "/v1/channels/team%2Fred/messages",
        None,
        None,
    );
    assert_eq!(status, 401);
    let (status, _, _) = http(server.http, "GET", "/v1/admin/users", Some(&alice), None);
    assert_eq!(status, 403);
    let (status, _, body) = http(
        server.http,
        "GET",
        "/v1/channels/general/messages",
        Some(&alice),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(
        server.http,
        "GET",
        "/v1/channels/team%2Fred/messages",
        Some(&alice),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

/// Reads the WebSocket until the server closes it (or the test gives up).
fn closed_by_server(chat: &mut ChatClient) -> bool {
    chat.socket
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    loop {
        match chat.socket.read() {
            Ok(tungstenite::Message::Close(_)) => return true,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn revoked_sessions_and_disabled_users_lose_their_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let root = token(&server, "root", ADMIN_PASSWORD);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let alice_other = token(&server, "alice", MEMBER_PASSWORD);

    // Alice's native subscriber, her WebSocket, and an MQTT subscriber.
    let mut native = Client::connect(server.address, "test", &alice).unwrap();
    native.subscribe("team/red", SubscribeStart::Live).unwrap();
    let mut chat = ChatClient::open(server.http);
    chat.ok(json!({"type": "connect", "token": alice_other}));
    let mut mqtt = common::ChildGuard::new(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
            .args([
                "-u", "alice", "-P", &alice, "-t", "team/red", "-V", "mqttv5",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        mqtt.try_wait().unwrap().is_none(),
        "mosquitto_sub is connected"
    );

    // Sign-out of one session closes the connections of that session only.
    let (status, _, body) = http(server.http, "POST", "/v1/auth/sign-out", Some(&alice), None);
    assert_eq!(status, 200, "{body}");
    match native.next_delivery(Duration::from_secs(20)) {
        Err(starling_adapters::client::ClientError::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Denied);
            assert!(message.contains("revoked"), "{message}");
        }
        other => panic!("the native connection is closed with a reason: {other:?}"),
    }
    let (status, _, stderr) =
        common::wait_with_timeout(mqtt, Duration::from_secs(20), "mosquitto_sub");
    // It ends by itself (not killed by the timeout): the server closed the
    // connection and refuses the revoked token when it tries again.
    assert!(
        status.code().is_some(),
        "mosquitto_sub was cut off: {stderr}"
    );
    assert!(
        Client::connect(server.address, "test", &alice).is_err(),
        "the token is dead"
    );
    // The other session still works ...
    let reply = chat.send(json!({"type": "ping"}));
    assert!(reply.get("result").is_some(), "{reply}");

    // ... until an administrator disables the user.
    let (status, _, body) = http(
        server.http,
        "POST",
        "/v1/admin/users/alice/disable",
        Some(&root),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(closed_by_server(&mut chat), "the WebSocket is closed");
    assert_eq!(sign_in(&server, "alice", MEMBER_PASSWORD, None).0, 401);
    // A new password for bob ends bob's sessions too.
    let bob = token(&server, "bob", MEMBER_PASSWORD);
    let mut bob_native = Client::connect(server.address, "test", &bob).unwrap();
    bob_native
        .subscribe("team/blue", SubscribeStart::Live)
        .unwrap();
    let body = json!({"password": "a brand new password"});
    let (status, _, _) = http(
        server.http,
        "POST",
        "/v1/admin/users/bob/password",
        Some(&root),
        Some(&body),
    );
    assert_eq!(status, 200);
    assert!(bob_native.next_delivery(Duration::from_secs(20)).is_err());
    assert!(Client::connect(server.address, "test", &bob).is_err());
    assert_eq!(sign_in(&server, "bob", "a brand new password", None).0, 200);
}

#[test]
fn totp_codes_work_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let (status, _, body) = http(
        server.http,
        "POST",
        "/v1/auth/totp/enroll",
        Some(&alice),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Starling:alice?secret="),
        "{uri}"
    );
    let secret_text = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let secret = totp::secret_from_base32(secret_text).unwrap();
    let now_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let code_now = || format!("{:06}", totp::code_at(&secret, now_s() / totp::TOTP_STEP_S));
    let confirm = json!({"code": code_now()});
    let (status, _, body) = http(
        server.http,
        "POST",
        "/v1/auth/totp/confirm",
        Some(&alice),
        Some(&confirm),
    );
    assert_eq!(status, 200, "{body}");
    // From now on a code is needed, and each works once: the confirmation
    // used the current step, so the next sign-in needs the next step's code.
    let (status, body) = sign_in(&server, "alice", MEMBER_PASSWORD, None);
    assert_eq!(status, 401, "{body}");
    let replayed = confirm["code"].as_str().unwrap();
    let (status, _) = sign_in(&server, "alice", MEMBER_PASSWORD, Some(replayed));
    assert_eq!(status, 401, "a used code is refused");
    let next = format!(
        "{:06}",
        totp::code_at(&secret, now_s() / totp::TOTP_STEP_S + 1)
    );
    let (status, body) = sign_in(&server, "alice", MEMBER_PASSWORD, Some(&next));
    assert_eq!(status, 200, "{body}");
    let (status, _) = sign_in(&server, "alice", MEMBER_PASSWORD, Some(&next));
    assert_eq!(status, 401, "the same code twice is refused");
}

#[test]
fn throttled_sign_ins_do_not_lock_the_user_out_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let url = format!("http://{}/v1/auth/sign-in", server.http);
    let attempt = |source: &str, password: &str| {
        let body = json!({"user": "alice", "password": password}).to_string();
        curl_from(source, &["-X", "POST", "-d", &body, &url])
    };
    // An attacker at 127.0.0.3 guesses until throttled. The wait doubles
    // with every failure over the limit (1 s, 2 s, 4 s, …, counted from the
    // last failure), so on a slow machine, where an attempt may take longer
    // than the first waits, a few more guesses still reach it.
    let mut statuses = Vec::new();
    while !statuses.contains(&429) {
        assert!(statuses.len() < 12, "never throttled: {statuses:?}");
        statuses.push(attempt("127.0.0.3", "guess guess guess").0);
    }
    let (status, body) = attempt("127.0.0.3", MEMBER_PASSWORD);
    assert_eq!(status, 429, "even the right password waits there: {body}");
    assert!(body.contains("try again in"), "{body}");
    // Alice, from her own address, signs in at once.
    let (status, body) = attempt("127.0.0.4", MEMBER_PASSWORD);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn role_allow_lists_hold_for_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), r#""127.0.0.5/32", "2001:db8::/32""#);
    let server = start(dir.path(), &config);
    let body = json!({"user": "root", "password": ADMIN_PASSWORD}).to_string();
    let url = format!("http://{}", server.http);
    let (status, text) = curl_from(
        "127.0.0.1",
        &["-X", "POST", "-d", &body, &format!("{url}/v1/auth/sign-in")],
    );
    assert_eq!(status, 200, "{text}");
    let root: Value = serde_json::from_str(&text).unwrap();
    let bearer = format!("Authorization: Bearer {}", root["token"].as_str().unwrap());
    let users = format!("{url}/v1/admin/users");
    let (status, text) = curl_from("127.0.0.1", &["-H", &bearer, &users]);
    assert_eq!(
        status, 403,
        "the admin role does not count from 127.0.0.1: {text}"
    );
    let (status, text) = curl_from("127.0.0.5", &["-H", &bearer, &users]);
    assert_eq!(status, 200, "{text}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed["users"].as_array().unwrap().len(), 3);
    // Spoofing the forwarded address from an untrusted peer changes nothing.
    let (status, _) = curl_from(
        "127.0.0.1",
        &["-H", &bearer, "-H", "X-Forwarded-For: 127.0.0.5", &users],
    );
    assert_eq!(status, 403);
}

#[test]
fn sign_ins_changes_and_denials_are_in_the_verifiable_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    assert_eq!(sign_in(&server, "alice", "wrong password!", None).0, 401);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let root = token(&server, "root", ADMIN_PASSWORD);
    let mut native = Client::connect(server.address, "test", &alice).unwrap();
    assert!(native.publish("general", kind::MESSAGE, "no").is_err());
    let (status, _, _) = http(
        server.http,
        "POST",
        "/v1/admin/users/bob/disable",
        Some(&root),
        None,
    );
    assert_eq!(status, 200);
    assert!(
        server.terminate().success(),
        "a clean stop signs the audit log"
    );

    let audit = dir.path().join("data").join("audit");
    let public = format!("{}.pub", dir.path().join("audit.key").display());
    let verify = || {
        let args = [
            "audit",
            "verify",
            audit.to_str().unwrap(),
            "--public-key",
            &public,
        ];
        common::run(&args, &[])
    };
    let (ok, out, err) = verify();
    assert!(ok, "{out}{err}");
    let (entries, out) = audit_entries(&audit);
    let has = |kind: &str, actor: &str, target: &str| has_entry(&entries, kind, actor, target);
    // The users made with `starling user add` are there too.
    assert!(has("user_changed", "cli", "alice"), "{out}");
    assert!(has("sign_in_failed", "alice", "alice"), "{out}");
    assert!(has("sign_in_succeeded", "alice", "alice"), "{out}");
    assert!(has("token_issued", "root", ""), "{out}");
    assert!(has("user_changed", "root", "bob"), "{out}");
    assert!(has("token_revoked", "root", "bob"), "{out}");
    assert!(has("request_denied", "alice", "general"), "{out}");

    // And an edited entry is caught.
    let segment = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "audit"))
        .expect("an audit segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.windows(6).position(|w| w == b"alice,").unwrap_or(200);
    bytes[at] ^= 0x20;
    std::fs::write(&segment, bytes).unwrap();
    let (ok, out, err) = verify();
    assert!(!ok, "tampering detected: {out}{err}");
}

/// The entries of the audit log in `audit` (and the export's text).
fn audit_entries(audit: &Path) -> (Vec<Value>, String) {
    let (ok, out, err) = common::run(&["audit", "export", audit.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let entries = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|entry: &Value| entry["record"] == "entry")
        .collect();
    (entries, out)
}

/// Whether an entry of `kind` by `actor` about `target` (prefixes) is there.
fn has_entry(entries: &[Value], kind: &str, actor: &str, target: &str) -> bool {
    entries.iter().any(|e| {
        e["kind"] == kind
            && e["actor"].as_str().unwrap().starts_with(actor)
            && e["target"].as_str().unwrap().starts_with(target)
    })
}

#[test]
fn mqtt_client_ids_belong_to_the_user_whose_session_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let bob = token(&server, "bob", MEMBER_PASSWORD);
    let persistent = ["-i", "shared-id", "-c", "-x", "3600"];
    let subscriber = |server: &Server, extra: &[&str]| {
        let args = [&persistent[..], &["-t", "team/red"], extra].concat();
        mosquitto_sub(server, &alice, &args)
    };
    // Bob may neither take the client id over nor resume or end its
    // session, in MQTT 5 (CONNACK 0x87) or 3.1.1 (0x05); each try is
    // refused before anything of the session is touched.
    let bob_is_refused = |server: &Server| {
        for extra in [
            &persistent[..],
            &["-i", "shared-id"][..],
            &["-i", "shared-id", "-c", "-V", "mqttv311"][..],
            &["-i", "shared-id", "-V", "mqttv311"][..],
        ] {
            let output = mosquitto_pub_with(server, &bob, "team/red", extra);
            let code = if extra.contains(&"mqttv311") { 5 } else { 0x87 };
            assert!(
                !output.contains("PUBACK") && output.contains(&format!("CONNACK ({code})")),
                "bob with {extra:?}: {output}"
            );
        }
    };

    // Alice's persistent session is connected: bob cannot have its id.
    let mut connected = subscriber(&server, &[]);
    std::thread::sleep(Duration::from_millis(500));
    bob_is_refused(&server);
    assert!(
        connected.try_wait().unwrap().is_none(),
        "alice's connection was not taken over"
    );
    // Bob's own client ids are his to use.
    let output = mosquitto_pub_with(&server, &bob, "team/red", &["-i", "bob-phone"]);
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    connected.kill().unwrap();
    connected.wait().unwrap();

    // Her session waits for her, also across a restart.
    let output = mosquitto_pub_with(&server, &alice, "team/red", &["-i", "alice-laptop"]);
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    bob_is_refused(&server);
    server.kill();
    let server = start(dir.path(), &config);
    bob_is_refused(&server);
    // Alice's token is in the log, so it survived the restart too.
    let resumed = subscriber(&server, &["-C", "1", "-W", "20"]);
    let (status, stdout, stderr) =
        common::wait_with_timeout(resumed, Duration::from_secs(30), "mosquitto_sub");
    let log: Vec<String> = server.log.try_iter().collect();
    assert!(status.success(), "{stderr} {}", log.join("\n"));
    assert_eq!(
        stdout.trim(),
        "hi",
        "the message published while alice was away"
    );

    // Once she ends it (a clean start without expiry), the id is free.
    let output = mosquitto_pub_with(&server, &alice, "team/red", &["-i", "shared-id"]);
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    let output = mosquitto_pub_with(&server, &bob, "team/red", &["-i", "shared-id"]);
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");

    assert!(server.terminate().success());
    let (entries, out) = audit_entries(&dir.path().join("data").join("audit"));
    assert!(
        has_entry(
            &entries,
            "request_denied",
            "bob",
            "mqtt client id shared-id"
        ),
        "{out}"
    );
}

/// The server keeps MQTT retained messages and the topic index in its own
/// `$` channels, which no member's role names: a member still gets the
/// retained messages of the topics they may subscribe to, and the offline
/// messages of a persistent wildcard subscription.
#[test]
fn mqtt_retained_and_offline_wildcard_messages_reach_members() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let output = mosquitto_pub_with(&server, &alice, "team/red", &["-r"]);
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    let subscribe = |extra: &[&str]| {
        let args = [&["-v", "-C", "1", "-W", "20"], extra].concat();
        let child = mosquitto_sub(&server, &alice, &args);
        let (status, stdout, stderr) =
            common::wait_with_timeout(child, Duration::from_secs(30), "mosquitto_sub");
        assert!(status.success(), "{extra:?}: {stderr}");
        stdout.trim().to_string()
    };
    for filter in ["team/red", "team/#", "team/+"] {
        assert_eq!(subscribe(&["-t", filter]), "team/red hi", "{filter}");
    }

    // A persistent session with a wildcard filter, away while a message
    // goes to a topic it never saw.
    let durable = ["-i", "alice-wild", "-c", "-x", "3600", "-t", "team/+/news"];
    let output = std::process::Child::from(mosquitto_sub(
        &server,
        &alice,
        &[&durable[..], &["-E"]].concat(),
    ))
    .wait_with_output()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let output = mosquitto_pub(&server, &alice, "team/blue/news");
    assert!(output.contains("PUBACK (Mid: 1, RC:0)"), "{output}");
    assert_eq!(subscribe(&durable), "team/blue/news hi");
}

#[test]
fn a_trusted_proxy_forwards_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), r#""127.0.0.5/32""#);
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[("STARLING_HTTP_TRUSTED_PROXIES", r#"["127.0.0.7/32"]"#)],
    );
    let root = token(&server, "root", ADMIN_PASSWORD);
    let bearer = format!("Authorization: Bearer {root}");
    let users = format!("http://{}/v1/admin/users", server.http);
    let forwarded = "X-Forwarded-For: 198.51.100.1, 127.0.0.5";
    // From the trusted proxy, the forwarded client counts ...
    let (status, text) = curl_from("127.0.0.7", &["-H", &bearer, "-H", forwarded, &users]);
    assert_eq!(status, 200, "{text}");
    // ... from anyone else it does not.
    let (status, _) = curl_from("127.0.0.1", &["-H", &bearer, "-H", forwarded, &users]);
    assert_eq!(status, 403);
}

#[test]
fn listener_allow_lists_and_connection_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            (
                "STARLING_HTTP_ALLOW_FROM",
                r#"["127.0.0.9/32", "10.0.0.0/8"]"#,
            ),
            ("STARLING_ENGINE_CONNECTIONS_PER_ADDRESS_MAX", "3"),
        ],
    );
    let url = format!("http://{}/healthz", server.http);
    let (status, _) = curl_from("127.0.0.9", &[&url]);
    assert_eq!(status, 200);
    let (status, _) = curl_from("127.0.0.1", &[&url]);
    assert_eq!(status, 0, "closed before any answer");
    // Three native connections from one address, not four.
    let open: Vec<Client> = (0..3)
        .map(|_| Client::connect(server.address, "test", "alice").unwrap())
        .collect();
    assert!(Client::connect(server.address, "test", "alice").is_err());
    drop(open);
    // Closing frees the places (the server notices the closes shortly).
    let reopened = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        Client::connect(server.address, "test", "alice").is_ok()
    });
    assert!(reopened);
}

/// Allow-lists over IPv6 and IPv4-mapped IPv6: a listener on the mapped
/// loopback address sees IPv4 clients as `::ffff:a.b.c.d`, which IPv4
/// CIDRs still match; a listener on `::1` sees IPv6 clients.
#[test]
fn listener_allow_lists_hold_for_ipv6_and_ipv4_mapped_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let allow = r#"["127.0.0.9/32", "::1/128"]"#;
    let mapped = Server::start(
        &dir.path().join("mapped"),
        &[
            ("STARLING_HTTP_ADDRESS", "[::ffff:127.0.0.1]:0"),
            ("STARLING_HTTP_ALLOW_FROM", allow),
        ],
    );
    let url = format!("http://127.0.0.1:{}/healthz", mapped.http.port());
    assert_eq!(curl_from("127.0.0.9", &[&url]).0, 200, "mapped 127.0.0.9");
    assert_eq!(curl_from("127.0.0.1", &[&url]).0, 0, "mapped 127.0.0.1");
    drop(mapped);

    for (allow, allowed) in [
        (allow, true),
        (r#"["2001:db8::/32", "127.0.0.0/8"]"#, false),
    ] {
        let server = Server::start(
            &dir.path().join(format!("ipv6-{allowed}")),
            &[
                ("STARLING_HTTP_ADDRESS", "[::1]:0"),
                ("STARLING_HTTP_ALLOW_FROM", allow),
            ],
        );
        let url = format!("http://[::1]:{}/healthz", server.http.port());
        let (status, _) = curl_from("::1", &["-g", &url]);
        assert_eq!(status, if allowed { 200 } else { 0 }, "::1 with {allow}");
    }
}

#[test]
fn publish_rate_limits_per_connection_and_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            (
                "STARLING_ENGINE_PUBLISH_MESSAGES_PER_S_PER_CONNECTION",
                "20",
            ),
            ("STARLING_ENGINE_PUBLISH_MESSAGES_PER_S_PER_USER", "30"),
        ],
    );
    // One connection sends 100 at once: about a second's worth passes, the
    // rest is refused as temporary, with the limit named.
    let mut native = Client::connect(server.address, "test", "alice").unwrap();
    let results: Vec<_> = (0..100)
        .map(|i| native.publish("room", kind::MESSAGE, format!("m{i}")))
        .collect();
    let refused: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(refused.len() >= 50, "{} refused", refused.len());
    assert!(
        refused[0].contains("messages/s per connection"),
        "{}",
        refused[0]
    );
    // The user's other connections share the user's budget.
    let mut second = Client::connect(server.address, "test", "alice").unwrap();
    let refused_for_user = (0..100)
        .filter_map(|i| second.publish("room", kind::MESSAGE, format!("n{i}")).err())
        .map(|e| e.to_string())
        .find(|e| e.contains("per user"));
    assert!(refused_for_user.is_some());
    // Cursor writes are records too, and count alike.
    let mut marker = Client::connect(server.address, "test", "dave").unwrap();
    let refused_cursors = (0..100)
        .filter_map(|i| marker.cursor_set("dave", "room", i + 1).err())
        .count();
    assert!(refused_cursors >= 50, "{refused_cursors} refused");
    // MQTT: a refused QoS 1 publish gets PUBACK 0x97 (quota exceeded).
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.port().to_string()])
        .args([
            "-V", "mqttv5", "-u", "carol", "-t", "room", "-q", "1", "-d", "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..100 {
                writeln!(stdin, "line {i}").unwrap();
            }
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("RC:151"), "{text}");
}

/// A JWT signed with the PEM private key at `key` (`alg`: EdDSA or RS256).
fn jwt(key: &Path, alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    let pem = std::fs::read(key).unwrap();
    let encoding = match alg {
        jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &encoding).unwrap()
}

#[test]
fn signed_tokens_of_an_identity_provider() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (alg, genpkey) in [
        (
            jsonwebtoken::Algorithm::EdDSA,
            &["-algorithm", "ed25519"][..],
        ),
        (
            jsonwebtoken::Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path(), "");
        for name in ["idp", "other"] {
            let key = format!("{name}.key");
            let mut args = vec!["genpkey"];
            args.extend_from_slice(genpkey);
            args.extend_from_slice(&["-out", &key]);
            let ok = Command::new("openssl")
                .args(&args)
                .current_dir(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
            let ok = Command::new("openssl")
                .args([
                    "pkey",
                    "-in",
                    &key,
                    "-pubout",
                    "-out",
                    &format!("{name}.pub"),
                ])
                .current_dir(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let public = path_string(&dir.path().join("idp.pub"));
        let server = Server::start_with(
            &dir.path().join("data"),
            &["--config", config.to_str().unwrap()],
            &[
                ("STARLING_AUTH_JWT_PUBLIC_KEY_FILE", public.as_str()),
                ("STARLING_AUTH_JWT_ISSUER", "https://idp.example"),
                ("STARLING_ENGINE_SESSION_CHECK_MS", "200"),
            ],
        );
        let claims = |sub: &str, exp: u64, iss: &str| json!({"sub": sub, "roles": ["member"], "exp": exp, "iss": iss});
        let good = jwt(
            &dir.path().join("idp.key"),
            alg,
            &claims("dave", now + 600, "https://idp.example"),
        );
        let mut native = Client::connect(server.address, "test", &good).unwrap();
        native
            .publish("team/red", kind::MESSAGE, "from the idp")
            .unwrap();
        assert!(native.publish("general", kind::MESSAGE, "no").is_err());
        let (status, _, _) = http(
            server.http,
            "GET",
            "/v1/channels/team%2Fred/messages",
            Some(&good),
            None,
        );
        assert_eq!(status, 200);
        for (why, bad) in [
            (
                "expired",
                jwt(
                    &dir.path().join("idp.key"),
                    alg,
                    &claims("dave", now - 600, "https://idp.example"),
                ),
            ),
            (
                "another key",
                jwt(
                    &dir.path().join("other.key"),
                    alg,
                    &claims("dave", now + 600, "https://idp.example"),
                ),
            ),
            (
                "another issuer",
                jwt(
                    &dir.path().join("idp.key"),
                    alg,
                    &claims("dave", now + 600, "https://evil.example"),
                ),
            ),
            (
                "not valid before an hour from now",
                jwt(
                    &dir.path().join("idp.key"),
                    alg,
                    &json!({"sub": "dave", "roles": ["member"], "exp": now + 7200,
                        "nbf": now + 3600, "iss": "https://idp.example"}),
                ),
            ),
        ] {
            assert!(
                Client::connect(server.address, "test", &bad).is_err(),
                "{why} refused"
            );
        }
        // A connection signed in with a token is closed once the token
        // expires (this one is taken for 3 s more: the 30 s leeway).
        let at_sign_in = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let soon = jwt(
            &dir.path().join("idp.key"),
            alg,
            &claims("dave", at_sign_in - 27, "https://idp.example"),
        );
        let mut expiring = Client::connect(server.address, "test", &soon).unwrap();
        let started = std::time::Instant::now();
        let ended = loop {
            match expiring.ping() {
                Ok(_) if started.elapsed() < std::time::Duration::from_secs(20) => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Ok(_) => panic!("the connection outlived its token"),
                Err(error) => break error,
            }
        };
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(1),
            "{ended}"
        );
        // A disabled local user of the same name is refused, token or not.
        let alice = jwt(
            &dir.path().join("idp.key"),
            alg,
            &claims("alice", now + 600, "https://idp.example"),
        );
        assert!(Client::connect(server.address, "test", &alice).is_ok());
        let root = token(&server, "root", ADMIN_PASSWORD);
        let (status, _, _) = http(
            server.http,
            "POST",
            "/v1/admin/users/alice/disable",
            Some(&root),
            None,
        );
        assert_eq!(status, 200);
        assert!(Client::connect(server.address, "test", &alice).is_err());
    }
}

fn path_string(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn configuration_changes_are_in_the_verifiable_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    // No users: their password hashes would only slow the other tests.
    let config = write_config(dir.path(), "");
    let config_arg = ["--config", config.to_str().unwrap()];
    let data = dir.path().join("data");
    let server = start(dir.path(), &config);
    assert!(server.terminate().success());

    // A setting changed by the environment, then one in the file while the
    // server runs (SIGHUP re-reads it; it takes effect at the next start).
    // The same SIGHUP turns encryption at rest on, which applies at once
    // (its own entry; not among the pending changes).
    let server = Server::start_with(
        &data,
        &config_arg,
        &[("STARLING_AUTH_SESSION_IDLE_TIMEOUT_S", "600")],
    );
    let keys = dir.path().join("storage.keys");
    std::fs::write(&keys, format!("1 {}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "throttle_failures_per_account = 3",
            "throttle_failures_per_account = 4",
        )
        .replace(
            "[engine]\n",
            &format!(
                "[engine]\nencryption_key_file = {:?}\nencryption_key_id = 1\n",
                keys.to_str().unwrap()
            ),
        ),
    )
    .unwrap();
    let line = server.sighup_and_wait_for("SIGHUP: the configuration changed");
    assert!(
        line.contains("auth.throttle_failures_per_account") && !line.contains("encryption"),
        "{line}"
    );
    assert!(server.terminate().success());

    let audit = data.join("audit");
    let public = format!("{}.pub", dir.path().join("audit.key").display());
    let (ok, out, err) = common::run(
        &[
            "audit",
            "verify",
            audit.to_str().unwrap(),
            "--public-key",
            &public,
        ],
        &[],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = common::run(&["audit", "export", audit.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let changes: Vec<(String, Value)> = out
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|entry| entry["kind"] == "configuration_changed" && entry["target"] == "config")
        .map(|entry| {
            let detail = serde_json::from_str(entry["detail"].as_str().unwrap()).unwrap();
            (entry["source"].as_str().unwrap().to_string(), detail)
        })
        .collect();
    let sources: Vec<&str> = changes.iter().map(|(source, _)| source.as_str()).collect();
    assert_eq!(sources, ["start", "start", "SIGHUP"], "{out}");
    let (first, second, reload) = (&changes[0].1, &changes[1].1, &changes[2].1);
    assert_eq!(first["previous_digest"], Value::Null, "{first}");
    assert_eq!(first["changed"], json!([]), "{first}");
    assert_eq!(second["previous_digest"], first["digest"], "{second}");
    assert_ne!(second["digest"], first["digest"], "{second}");
    assert_eq!(
        second["changed"],
        json!(["auth.session_idle_timeout_s"]),
        "{second}"
    );
    assert_eq!(reload["previous_digest"], second["digest"], "{reload}");
    assert_eq!(
        reload["changed"],
        json!(["auth.throttle_failures_per_account"]),
        "{reload}"
    );
    assert_eq!(reload["applied"], false, "{reload}");
    let rotations: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|entry| entry["target"] == "encryption_key")
        .map(|entry| serde_json::from_str(entry["detail"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(rotations.len(), 1, "{out}");
    let rotation = &rotations[0];
    assert_eq!(rotation["applied"], true, "{rotation}");
    assert_eq!(rotation["old_key_id"], Value::Null, "{rotation}");
    assert_eq!(rotation["new_key_id"], 1, "{rotation}");
    assert_eq!(rotation["key_ids"], json!([1]), "{rotation}");
    assert!(!out.contains(&"ab".repeat(32)), "{out}");
}

/// A retained message needs the right to publish to its topic: a member
/// refused on a topic sets no retained message there, by a retained
/// publish or by a retained will; on her own topics she does.
#[test]
fn a_refused_retained_publish_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let root = token(&server, "root", ADMIN_PASSWORD);
    let output = mosquitto_pub_with(&server, &alice, "ops/secret", &["-r"]);
    assert!(output.contains("RC:135"), "not authorized: {output}");
    for topic in ["ops/down", "team/down"] {
        let will = [
            "-t",
            "team/x",
            "--will-topic",
            topic,
            "--will-payload",
            "gone",
            "--will-retain",
        ];
        let mut willer = mosquitto_sub(&server, &alice, &will);
        std::thread::sleep(Duration::from_millis(500));
        willer.kill().unwrap();
        willer.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let retained = |filter: &str| {
        let child = mosquitto_sub(&server, &root, &["-v", "-t", filter, "-C", "1", "-W", "3"]);
        let (_, stdout, _) =
            common::wait_with_timeout(child, Duration::from_secs(30), "mosquitto_sub");
        stdout.trim().to_string()
    };
    assert_eq!(
        retained("team/down"),
        "team/down gone",
        "her own topic keeps her will"
    );
    for topic in ["ops/secret", "ops/down"] {
        assert_eq!(
            retained(topic),
            "",
            "no retained message on {topic}, which alice may not publish to"
        );
    }
}

/// A member leaves a channel through the HTTP API with authentication on
/// (`DELETE /v1/channels/{c}/members/{me}`). Before, the route took it for a
/// leave only when the bearer token equalled the user name (loopback mode),
/// so with real tokens it was a removal, which only the owner may make: 403.
#[test]
fn a_member_leaves_a_channel_over_http_with_authentication_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let bob = token(&server, "bob", MEMBER_PASSWORD);
    let create = json!({"channel": "leavers", "visibility": "public"});
    let (status, _, body) = http(
        server.http,
        "POST",
        "/v1/channels",
        Some(&alice),
        Some(&create),
    );
    assert!((200..300).contains(&status), "{status} {body}");
    let path = "/v1/channels/leavers";
    let (status, _, body) = http(
        server.http,
        "POST",
        &format!("{path}/join"),
        Some(&bob),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(
        server.http,
        "DELETE",
        &format!("{path}/members/bob"),
        Some(&bob),
        None,
    );
    assert_eq!(status, 200, "bob leaves: {body}");
    let (_, _, members) = http(
        server.http,
        "GET",
        &format!("{path}/members"),
        Some(&alice),
        None,
    );
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(names, ["alice"]);
    // Removing someone else is still the owner's alone.
    let (status, _, _) = http(
        server.http,
        "DELETE",
        &format!("{path}/members/alice"),
        Some(&bob),
        None,
    );
    assert_eq!(status, 403);
}

/// The chat workers read and write as the server on a user's behalf; the
/// user's own rights are checked first. Before, a member could create a
/// chat channel on a name their role gives no right to, and their channel
/// list showed the last message of a channel their role does not let them
/// read.
#[test]
fn chat_work_done_for_a_user_needs_the_users_rights() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let call = |method: &str, path: &str, body: Option<Value>| {
        let (status, _, value) = http(server.http, method, path, Some(&alice), body.as_ref());
        (status, value)
    };
    // No `publish` right on "vault": not hers to create.
    let (status, body) = call("POST", "/v1/channels", Some(json!({"channel": "vault"})));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "denied");
    // "lounge": publish and subscribe, no history.
    let (status, body) = call("POST", "/v1/channels", Some(json!({"channel": "lounge"})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        "POST",
        "/v1/channels/lounge/messages",
        Some(json!({"text": "not for her eyes later"})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call("GET", "/v1/me/channels", None);
    assert_eq!(status, 200, "{body}");
    let lounge = &body["channels"][0];
    assert_eq!(lounge["channel"], "lounge", "{body}");
    assert_eq!(lounge["last_message"], Value::Null, "{body}");
    assert_eq!(lounge["unread"], 0, "{body}");
    for path in [
        "/v1/channels/lounge/members",
        "/v1/channels/lounge/threads/2",
        "/v1/channels/lounge/messages",
    ] {
        let (status, body) = call("GET", path, None);
        assert_eq!(status, 403, "{path}: {body}");
    }
    // Where she has the right, the same routes answer.
    call("POST", "/v1/channels", Some(json!({"channel": "leavers"})));
    let (status, body) = call("GET", "/v1/channels/leavers/members", None);
    assert_eq!(status, 200, "{body}");
    // The last N before live ones are history too.
    let mut chat = ChatClient::open(server.http);
    chat.ok(json!({"type": "connect", "token": alice}));
    assert_eq!(
        chat.error(json!({"type": "subscribe", "channel": "lounge", "last": 5})),
        "denied"
    );
    chat.ok(json!({"type": "subscribe", "channel": "lounge"}));
}

/// An open connection is use of its sign-in session: a user on one socket
/// all day can still reconnect with the token (before, the idle clock ran
/// from the sign-in alone). And a session that reaches its absolute expiry
/// closes the connections still open on it (before, they outlived it).
#[test]
fn open_connections_keep_their_session_in_use_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[
            ("STARLING_AUTH_SESSION_IDLE_TIMEOUT_S", "2"),
            ("STARLING_AUTH_SESSION_ABSOLUTE_TIMEOUT_S", "8"),
            ("STARLING_ENGINE_SESSION_CHECK_MS", "200"),
        ],
    );
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let mut first = ChatClient::open(server.http);
    first.ok(json!({"type": "connect", "token": alice}));
    // Longer than the idle timeout, with only the connection open.
    std::thread::sleep(Duration::from_secs(3));
    let mut second = ChatClient::open(server.http);
    second.ok(json!({"type": "connect", "token": alice}));
    // At the absolute expiry, both are closed with the reason.
    for client in [&mut first, &mut second] {
        let reason = loop {
            match client.socket.read() {
                Ok(tungstenite::Message::Close(frame)) => {
                    break frame.map(|f| f.reason.to_string()).unwrap_or_default()
                }
                Ok(_) => {}
                Err(error) => panic!("no close frame: {error}"),
            }
        };
        assert!(reason.contains("expired"), "{reason}");
    }
    let mut third = ChatClient::open(server.http);
    let reply = third.send(json!({"type": "connect", "token": alice}));
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
}

/// What a client sends can be longer than an audit field may be: a sign-in
/// with a 2,000-byte user name is refused as any wrong sign-in and audited
/// with the name cut. Before, the entry was over the field's limit: the
/// audit writer refused it with its whole batch, the sign-in failed with
/// an internal error, and denied requests queued beside it were lost.
#[test]
fn oversized_names_are_audited_cut_and_break_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let long = "x".repeat(2000);
    let (status, body) = sign_in(&server, &long, MEMBER_PASSWORD, None);
    assert_eq!(status, 401, "{body}");
    let mut chat = ChatClient::open(server.http);
    let reply = chat.send(json!({"type": "connect", "token": "not a token", "client": long}));
    assert_eq!(reply["error"]["code"], "denied", "{reply}");
    token(&server, "alice", MEMBER_PASSWORD);
    assert!(server.terminate().success());
    let (entries, out) = audit_entries(&dir.path().join("data").join("audit"));
    assert!(has_entry(&entries, "sign_in_failed", "xxxx", ""), "{out}");
    assert!(
        has_entry(&entries, "sign_in_succeeded", "alice", ""),
        "{out}"
    );
}

/// The chat layer's own refusals (a private channel's non-member, on the
/// connection's shard and in a chat worker) are audited like the broker's.
#[test]
fn chat_membership_refusals_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let alice = token(&server, "alice", MEMBER_PASSWORD);
    let bob = token(&server, "bob", MEMBER_PASSWORD);
    let create = json!({"channel": "leavers", "visibility": "private"});
    let (status, _, body) = http(
        server.http,
        "POST",
        "/v1/channels",
        Some(&alice),
        Some(&create),
    );
    assert_eq!(status, 201, "{body}");
    for path in [
        "/v1/channels/leavers/messages",
        "/v1/channels/leavers/members",
    ] {
        let (status, _, body) = http(server.http, "GET", path, Some(&bob), None);
        assert_eq!(status, 403, "{path}: {body}");
    }
    assert!(server.terminate().success());
    let (entries, out) = audit_entries(&dir.path().join("data").join("audit"));
    let denied = entries
        .iter()
        .filter(|e| {
            e["kind"] == "request_denied" && e["actor"] == "bob" && e["target"] == "leavers"
        })
        .count();
    assert_eq!(denied, 2, "{out}");
}

/// With authentication on, a native client may not write what the chat
/// layer checks (edits, deletes, channel events, presence: any member could
/// delete others' messages in every chat client), nor another user's read
/// markers (cursors of consumers not theirs).
#[test]
fn native_clients_cannot_forge_chat_records_or_others_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let bob = token(&server, "bob", MEMBER_PASSWORD);
    let mut native = Client::connect(server.address, "test", &bob).unwrap();
    let seq = native
        .publish("team/red", kind::MESSAGE, "mine")
        .unwrap()
        .seq;
    for forged in [
        kind::EDIT,
        kind::DELETE,
        kind::CHANNEL_EVENT,
        kind::PRESENCE,
    ] {
        let mut request = PublishRequest::new("team/red", forged, "x");
        request.relation = seq;
        match native.publish_with(request) {
            Err(ClientError::Server { code, message, .. }) => {
                assert_eq!(code, ErrorCode::Denied, "{message}");
                assert!(message.contains("chat protocol"), "{message}");
            }
            other => panic!("kind {forged}: {other:?}"),
        }
    }
    match native.cursor_set("alice", "team/red", seq) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Denied),
        other => panic!("{other:?}"),
    }
    native.cursor_set("bob", "team/red", seq).unwrap();
    native.cursor_set("bob+indexer", "team/red", seq).unwrap();
    assert_eq!(native.cursor_get("bob", "team/red").unwrap(), Some(seq));
    // Reactions and replies say who sent them, and stay open.
    let mut reaction = PublishRequest::new("team/red", kind::REACTION_ADD, "+1");
    reaction.relation = seq;
    native.publish_with(reaction).unwrap();
}

/// Turning a second factor on ends the user's other sessions opened
/// without a code (a stolen password's session kept access before), and a
/// session without a code cannot replace the factor once it is on.
#[test]
fn a_second_factor_ends_sessions_opened_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), "");
    let server = start(dir.path(), &config);
    let mine = token(&server, "alice", MEMBER_PASSWORD);
    let stolen = token(&server, "alice", MEMBER_PASSWORD);
    let post = |path: &str, token: &str, body: Option<Value>| {
        let (status, _, body) = http(server.http, "POST", path, Some(token), body.as_ref());
        (status, body)
    };
    let (status, body) = post("/v1/auth/totp/enroll", &mine, None);
    assert_eq!(status, 200, "{body}");
    let uri = body["otpauth_uri"].as_str().unwrap();
    let secret_text = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let secret = totp::secret_from_base32(secret_text).unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = format!("{:06}", totp::code_at(&secret, now_s / totp::TOTP_STEP_S));
    let (status, body) = post("/v1/auth/totp/confirm", &mine, Some(json!({"code": code})));
    assert_eq!(status, 200, "{body}");
    let channels = |token: &str| http(server.http, "GET", "/v1/me/channels", Some(token), None).0;
    assert_eq!(channels(&stolen), 401, "the other session ended");
    assert_eq!(channels(&mine), 200, "the enrolling session stays");
    let (status, body) = post("/v1/auth/totp/enroll", &mine, None);
    assert_eq!(status, 401, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("sign in with a TOTP code"), "{message}");
}
