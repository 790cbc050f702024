//! The web client in a real headless Chromium, driven by playwright-core
//! (`tests/browser/chat.test.mjs`): two users chat through the real server,
//! and one of them loses the network and recovers what it missed.
//!
//! Needs Debian's `chromium` and `npm ci --prefix tests/browser`; `.ci/run`
//! installs both.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;

/// Longest the browser script may run before it is killed.
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn two_users_chat_in_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    let playwright =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/playwright-core");
    assert!(
        chromium.exists() && playwright.exists(),
        "the browser test needs Debian's chromium (/usr/bin/chromium) and playwright-core \
         (`npm ci --prefix tests/browser`); `.ci/run` installs both"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Kept after the run as test artifacts (under target/, which CI keeps).
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let child = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/chat.test.mjs"))
        .env("STARLING_URL", format!("http://{}", server.http))
        .env("STARLING_SCREENSHOTS", &screenshots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let (status, stdout, stderr) =
        common::wait_with_timeout(child, BROWSER_TEST_TIMEOUT, "the browser test");
    assert!(
        status.success(),
        "the browser test failed ({status}):\n{stdout}\n{stderr}"
    );
    println!("{stdout}\nscreenshots: {}", screenshots.display());
}
