//! The OpenAPI document checked against the running server by schemathesis
//! (a property-based API tester from PyPI): generated requests for every
//! route must get no server error (5xx), only documented status codes and
//! content types, and bodies that match the documented schemas.
//!
//! Needs schemathesis: `.ci/run` installs it into `target/ci-venv`; elsewhere
//! set `STARLING_SCHEMATHESIS` to its executable.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;

/// Longest the tester may run (it also gets a time budget of its own).
const TESTER_TIMEOUT: Duration = Duration::from_secs(300);

fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("STARLING_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/schemathesis");
    assert!(
        venv.exists(),
        "this test needs schemathesis: run `.ci/run`, or `python3 -m venv target/ci-venv && \
         target/ci-venv/bin/pip install schemathesis`, or set STARLING_SCHEMATHESIS"
    );
    venv
}

/// Runs schemathesis once against `base`: (success, stdout, stderr).
fn run_tester(tester: &PathBuf, base: &str, seed: &str) -> (bool, String, String) {
    let child = Command::new(tester)
        .args([
            "run",
            &format!("{base}/v1/openapi.json"),
            "--url",
            base,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--header",
            "Authorization: Bearer schemathesis",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "40",
            "--max-time",
            "90",
            // Path parameters (channel ids) have a pattern that rejects
            // most random strings; that is a property of the generator's
            // input, not of the server.
            "--suppress-health-check",
            "filter_too_much",
            "--seed",
            seed,
            "--workers",
            "2",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis runs");
    let (status, stdout, stderr) = common::wait_with_timeout(child, TESTER_TIMEOUT, "schemathesis");
    (status.success(), stdout, stderr)
}

/// Whether a failed run found nothing about the server: no FAILURES
/// section, only errors inside the tester itself (its generator has been
/// seen to fail with "Runtime Error … Index out of range" in hypothesis's
/// optimiser).
fn only_tester_errors(stdout: &str) -> bool {
    !stdout.contains("FAILURES")
        && stdout.contains("Runtime Error")
        && stdout.contains("hypothesis")
}

#[test]
fn openapi_document_matches_the_server() {
    let tester = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = format!("http://{}", server.http);
    let (mut ok, mut stdout, mut stderr) = run_tester(&tester, &base, "1");
    if !ok && only_tester_errors(&stdout) {
        // The tester broke, not the server: once more with another seed.
        eprintln!("schemathesis failed inside itself; running it again:\n{stdout}");
        (ok, stdout, stderr) = run_tester(&tester, &base, "2");
    }
    assert!(ok, "schemathesis found problems:\n{stdout}\n{stderr}");
    println!("{stdout}");
}
