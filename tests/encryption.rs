//! Encryption at rest through the real binary: `starling serve` with a key
//! file, messages published with `starling pub`, no message text anywhere in
//! the data directory's segments or journals (after a crash and after a clean
//! stop), everything read back after restarts and a key rotation, the
//! offline tools with and without the key, a refused start with a wrong or
//! missing key, and a key rotation on SIGHUP without a restart (with the
//! refusal of a key file that drops or changes a key in use).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{run, Server};

const SECRET: &str = "zebra-secret-7431";
const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const WRONG: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn write_keys(path: &Path, lines: &[(u16, &str)]) {
    let text: String = lines
        .iter()
        .map(|(id, key)| format!("{id} {key}\n"))
        .collect();
    fs::write(path, format!("# test keys\n{text}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every file under `dir` whose name ends with one of `suffixes`.
fn files_under(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
                found.push(path);
            }
        }
    }
    found
}

/// Like `strings | grep`: fails if any segment or journal file holds
/// `needle`, and checks that there are such files to look at.
fn assert_not_stored(data: &Path, needle: &str) {
    let files = files_under(data, &[".seg", ".journal"]);
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".seg")));
    assert!(files
        .iter()
        .any(|f| f.to_string_lossy().ends_with(".journal")));
    for file in files {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle:?} is readable in {}",
            file.display()
        );
    }
}

fn key_env<'a>(key_file: &'a str, key_id: &'a str) -> [(&'a str, &'a str); 2] {
    [
        ("STARLING_ENGINE_ENCRYPTION_KEY_FILE", key_file),
        ("STARLING_ENGINE_ENCRYPTION_KEY_ID", key_id),
    ]
}

fn publish(server: &Server, channel: &str, bodies: &[String]) {
    let address = server.address.to_string();
    let mut args = vec!["pub", channel];
    args.extend(bodies.iter().map(String::as_str));
    let (ok, stdout, stderr) = run(&args, &[("STARLING_SERVER", &address)]);
    assert!(ok, "{stdout}{stderr}");
}

/// The bodies of the channel's whole history, in order.
fn history(server: &Server, channel: &str) -> Vec<String> {
    let address = server.address.to_string();
    let (ok, stdout, stderr) = run(
        &["history", channel, "--from", "1", "--limit", "1000"],
        &[("STARLING_SERVER", &address)],
    );
    assert!(ok, "{stdout}{stderr}");
    stdout
        .lines()
        .map(|line| line.rsplit('\t').next().unwrap().to_string())
        .collect()
}

fn bodies(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{SECRET} message {n}")).collect()
}

/// `starling serve` as the tests start it, expected to refuse to start.
fn refused_start(data: &Path, env: &[(&str, &str)]) -> String {
    let data = data.to_str().unwrap();
    let mut all = vec![
        ("STARLING_ENGINE_DATA_DIR", data),
        ("STARLING_ENGINE_SHARDS", "2"),
        ("STARLING_NATIVE_ADDRESS", "127.0.0.1:0"),
        ("STARLING_HTTP_ADDRESS", "127.0.0.1:0"),
        ("STARLING_MQTT_ADDRESS", "127.0.0.1:0"),
        ("STARLING_ENGINE_JOURNAL_FILE_BYTES", "1048576"),
    ];
    all.extend_from_slice(env);
    let (ok, stdout, stderr) = run(&["serve"], &all);
    assert!(!ok, "the server started: {stdout}{stderr}");
    stderr
}

#[test]
fn encrypted_data_directory_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    let key_file = keys.to_str().unwrap();
    write_keys(&keys, &[(1, KEY_1)]);

    // Run 1: publish, then crash. The journal holds what the segments may
    // not have yet; neither may show the text (nor the channel names, which
    // are inside the records).
    let server = Server::start(&data, &key_env(key_file, "1"));
    publish(&server, "general", &bodies(0..20));
    publish(&server, "random-room", &bodies(20..25));
    server.kill();
    assert_not_stored(&data, SECRET);
    assert_not_stored(&data, "random-room");

    // Run 2 with the right key: everything is there (after the journal
    // replay). Then a rotation: key 2 joins the file and becomes current.
    let server = Server::start(&data, &key_env(key_file, "1"));
    assert_eq!(history(&server, "general"), bodies(0..20));
    assert_eq!(history(&server, "random-room"), bodies(20..25));
    assert!(server.terminate().success());
    write_keys(&keys, &[(1, KEY_1), (2, KEY_2)]);
    let server = Server::start(&data, &key_env(key_file, "2"));
    publish(&server, "general", &bodies(100..110));
    let mut expected = bodies(0..20);
    expected.extend(bodies(100..110));
    assert_eq!(history(&server, "general"), expected);
    assert!(server.terminate().success());
    assert_not_stored(&data, SECRET);

    // After clean stops the channel checkpoints exist, sealed too: no file
    // of the data directory names a channel or holds a message.
    for file in files_under(&data, &[""]) {
        let bytes = fs::read(&file).unwrap();
        for needle in [SECRET, "random-room"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} is readable in {}",
                file.display()
            );
        }
    }
    assert!(!files_under(&data, &["channels.checkpoint"]).is_empty());

    // Run 4 reads both keys' batches.
    let server = Server::start(&data, &key_env(key_file, "2"));
    assert_eq!(history(&server, "general"), expected);
    assert_eq!(history(&server, "random-room"), bodies(20..25));
    assert!(server.terminate().success());

    // The offline tools: without the key, checksums only and a clear note;
    // with it, authenticated and readable.
    let data_arg = data.to_str().unwrap();
    let (ok, stdout, stderr) = run(&["log", "verify", data_arg], &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("NOT authenticated"), "{stdout}");
    assert!(stdout.contains("could not authenticate"), "{stdout}");
    let (ok, stdout, stderr) = run(&["log", "verify", data_arg, "--key-file", key_file], &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("encrypted, authenticated"), "{stdout}");
    assert!(!stdout.contains("could not authenticate"), "{stdout}");
    let (ok, stdout, stderr) = run(
        &[
            "log",
            "inspect",
            data_arg,
            "--key-file",
            key_file,
            "--channel",
            "general",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 30, "{stdout}");
    assert!(
        stdout.contains(&format!("{SECRET} message 105")),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run(&["log", "inspect", data_arg], &[]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains(SECRET), "{stdout}");
    assert!(stderr.contains("encrypted batches not shown"), "{stderr}");

    // A wrong key 2 (the one the newest batches use): the server refuses to
    // start and says which partition, file, batch and key id.
    write_keys(&keys, &[(1, KEY_1), (2, WRONG)]);
    let stderr = refused_start(&data, &key_env(key_file, "2"));
    assert!(
        stderr.contains("fails authentication with key id 2") && stderr.contains("partition "),
        "{stderr}"
    );
    assert!(stderr.contains("channels.checkpoint"), "{stderr}");
    // No key file at all.
    let stderr = refused_start(&data, &[]);
    assert!(
        stderr.contains("no encryption key file is configured"),
        "{stderr}"
    );
    // A current key id the file does not hold.
    write_keys(&keys, &[(1, KEY_1), (2, KEY_2)]);
    let stderr = refused_start(&data, &key_env(key_file, "3"));
    assert!(stderr.contains("holds no key with id 3"), "{stderr}");

    // Nothing was changed by the refused starts.
    let server = Server::start(&data, &key_env(key_file, "2"));
    assert_eq!(history(&server, "general"), expected);
    assert!(server.terminate().success());
}

/// A configuration file naming the key file and the current key id.
fn write_key_config(path: &Path, key_file: &str, key_id: u16) {
    fs::write(
        path,
        format!("[engine]\nencryption_key_file = {key_file:?}\nencryption_key_id = {key_id}\n"),
    )
    .unwrap();
}

#[test]
fn key_rotation_on_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    let key_file = keys.to_str().unwrap();
    let config = dir.path().join("starling.toml");
    let config_arg = config.to_str().unwrap();
    write_keys(&keys, &[(1, KEY_1)]);
    write_key_config(&config, key_file, 1);

    let server = Server::start_with(&data, &["--config", config_arg], &[]);
    publish(&server, "general", &bodies(0..10));

    // Rotate: key 2 joins the file and becomes current, no restart.
    write_keys(&keys, &[(1, KEY_1), (2, KEY_2)]);
    write_key_config(&config, key_file, 2);
    let line = server.sighup_and_wait_for("encryption at rest: new batches sealed");
    assert!(line.contains("key id 2 (was 1)"), "{line}");
    assert!(line.contains("[1, 2]"), "{line}");
    assert!(!line.contains(KEY_2) && !line.contains(KEY_1), "{line}");
    publish(&server, "general", &bodies(10..20));
    assert_eq!(history(&server, "general"), bodies(0..20));
    // A SIGHUP that changes nothing rotates nothing (and is not audited as
    // a change).
    let line = server.sighup_and_wait_for("encryption at rest: the key ring is unchanged");
    assert!(line.contains("key id 2"), "{line}");

    // A key file without key 1 would leave the first batches unreadable:
    // refused, and the running ring (key 2 current) stays in use.
    write_keys(&keys, &[(2, KEY_2), (3, WRONG)]);
    write_key_config(&config, key_file, 3);
    let line = server.sighup_and_wait_for("encryption key rotation refused");
    assert!(line.contains("holds no key with id [1]"), "{line}");
    assert!(line.contains("sealed with key id 2"), "{line}");
    // A key id that keeps its id but changes its key: refused too.
    write_keys(&keys, &[(1, WRONG), (2, KEY_2)]);
    write_key_config(&config, key_file, 2);
    let line = server.sighup_and_wait_for("encryption key rotation refused");
    assert!(line.contains("different key for key id [1]"), "{line}");
    publish(&server, "general", &bodies(20..25));
    assert_eq!(history(&server, "general"), bodies(0..25));
    assert!(server.terminate().success());
    assert_not_stored(&data, SECRET);

    // The batches after the rotation are sealed with key 2: a start with key
    // 1 alone cannot read them.
    write_keys(&keys, &[(1, KEY_1)]);
    let stderr = refused_start(&data, &key_env(key_file, "1"));
    assert!(stderr.contains("key id 2"), "{stderr}");
    // With both keys everything reads back.
    write_keys(&keys, &[(1, KEY_1), (2, KEY_2)]);
    write_key_config(&config, key_file, 2);
    let server = Server::start_with(&data, &["--config", config_arg], &[]);
    assert_eq!(history(&server, "general"), bodies(0..25));
    assert!(server.terminate().success());
}
