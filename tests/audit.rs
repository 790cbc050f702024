//! Tamper tests of the audit log: a log written through the storage API,
//! altered on disk the way an attacker (or a broken disk) would, and checked
//! with the real `starling audit verify`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::run;
use starling_storage::audit::{
    decode_record, encode_entry, AuditConfig, AuditEntry, AuditKind, AuditLog, AuditRecord,
    AuditSigner, Checkpoint, Decoded, SigningKey, SEGMENT_HEADER_BYTES,
};

/// A checkpoint follows every 5 entries: 12 entries and a close make
/// records e1..e5 C5 e6..e10 C10 e11 e12 C12 (indexes 0 to 14).
const CHECKPOINT_INTERVAL_ENTRIES: u64 = 5;
const ENTRIES: u64 = 12;
/// Record indexes in the segment of the log [`Fixture::new`] writes.
const ENTRY_3: usize = 2;
const ENTRY_7: usize = 7;
const ENTRY_8: usize = 8;
const CHECKPOINT_10: usize = 11;
const ENTRY_11: usize = 12;
const ENTRY_12: usize = 13;

struct Fixture {
    _temporary: tempfile::TempDir,
    data: PathBuf,
    audit: PathBuf,
    private_key: PathBuf,
    public_key: PathBuf,
}

fn entry(n: u64) -> AuditEntry {
    AuditEntry::new(
        AuditKind::ALL[(n % 9) as usize],
        format!("user{n}"),
        format!("192.0.2.{n}:40000"),
        format!("channel/{n}"),
        format!("{{\"attempt\":{n}}}"),
    )
}

fn config() -> AuditConfig {
    AuditConfig {
        checkpoint_interval_entries: CHECKPOINT_INTERVAL_ENTRIES,
        ..AuditConfig::default()
    }
}

impl Fixture {
    /// A key pair made by `starling audit keygen`, and an empty data
    /// directory.
    fn keys_only() -> Fixture {
        let temporary = tempfile::tempdir().unwrap();
        let private_key = temporary.path().join("audit.key");
        let (ok, stdout, stderr) = run(
            &["audit", "keygen", "--out", private_key.to_str().unwrap()],
            &[],
        );
        assert!(ok, "{stderr}");
        assert!(stdout.contains("mode 0600"), "{stdout}");
        let data = temporary.path().join("data");
        Fixture {
            audit: data.join("audit"),
            data,
            public_key: temporary.path().join("audit.key.pub"),
            private_key,
            _temporary: temporary,
        }
    }

    /// Twelve entries, one at a time and in a batch, closed.
    fn new() -> Fixture {
        let fixture = Fixture::keys_only();
        let (mut log, _) = fixture.open();
        for n in 1..=4 {
            log.append(&entry(n)).unwrap();
        }
        log.append_batch(&(5..=ENTRIES).map(entry).collect::<Vec<_>>())
            .unwrap();
        log.close().unwrap();
        assert_eq!(fixture.records().len(), 15);
        fixture
    }

    fn open(&self) -> (AuditLog, starling_storage::audit::AuditRecovery) {
        let signer = AuditSigner::from_file(&self.private_key).unwrap();
        AuditLog::open(&self.audit, signer, config()).unwrap()
    }

    fn segment(&self) -> PathBuf {
        self.audit.join("00000000000000000001.audit")
    }

    /// (position, length) of every record of the segment.
    fn records(&self) -> Vec<(usize, usize)> {
        let bytes = fs::read(self.segment()).unwrap();
        let mut at = SEGMENT_HEADER_BYTES;
        let mut records = Vec::new();
        while at < bytes.len() {
            let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            records.push((at, length.min(bytes.len() - at)));
            at += length;
        }
        records
    }

    fn record(&self, index: usize) -> Vec<u8> {
        let (at, length) = self.records()[index];
        fs::read(self.segment()).unwrap()[at..at + length].to_vec()
    }

    /// Replaces the bytes of record `index` with `bytes`.
    fn replace_record(&self, index: usize, bytes: &[u8]) {
        let (at, length) = self.records()[index];
        let mut file = fs::read(self.segment()).unwrap();
        file.splice(at..at + length, bytes.iter().copied());
        fs::write(self.segment(), file).unwrap();
    }

    fn checkpoint(&self, index: usize) -> Checkpoint {
        match decode_record(&self.record(index)) {
            Ok(Decoded::Complete {
                record: AuditRecord::Checkpoint(checkpoint),
                ..
            }) => checkpoint,
            other => panic!("record {index} is not a checkpoint: {other:?}"),
        }
    }

    /// Writes `checkpoint` (with a valid checksum) over record `index`.
    fn replace_checkpoint(&self, index: usize, checkpoint: &Checkpoint) {
        let mut record = Vec::new();
        checkpoint.encode(&mut record);
        self.replace_record(index, &record);
    }

    fn truncate(&self, length: usize) {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.segment())
            .unwrap();
        file.set_len(length as u64).unwrap();
    }

    /// Runs `starling audit verify` on the data directory.
    fn verify(&self, extra: &[&str]) -> (bool, String, String) {
        let mut args = vec![
            "audit",
            "verify",
            self.data.to_str().unwrap(),
            "--public-key",
            self.public_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args, &[])
    }

    /// Verification must fail with a message holding every one of `needles`.
    fn assert_detected(&self, needles: &[&str]) -> String {
        let (ok, stdout, stderr) = self.verify(&[]);
        assert!(!ok, "verify passed a tampered log: {stdout}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
        }
        assert!(stderr.contains("verification FAILED"), "{stderr}");
        stderr
    }

    fn position_text(&self, index: usize) -> String {
        format!(
            "byte {} of {}",
            self.records()[index].0,
            self.segment().display()
        )
    }
}

fn decode_entry_fields(bytes: &[u8]) -> (u64, u64, [u8; 32], AuditEntry) {
    let Ok(Decoded::Complete {
        record: AuditRecord::Entry(view),
        ..
    }) = decode_record(bytes)
    else {
        panic!("not an entry");
    };
    (
        view.seq,
        view.timestamp_ms,
        view.previous_hash,
        AuditEntry::new(view.kind, view.actor, view.source, view.target, view.detail),
    )
}

#[test]
fn audit_keygen_writes_a_private_key_only_its_owner_reads() {
    let fixture = Fixture::keys_only();
    let mode = fs::metadata(&fixture.private_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = fs::read_to_string(&fixture.public_key).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    let (ok, _, stderr) = run(
        &[
            "audit",
            "keygen",
            "--out",
            fixture.private_key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("never overwrites"), "{stderr}");
}

#[test]
fn audit_verify_accepts_an_intact_log_and_reports_the_signed_position() {
    let fixture = Fixture::new();
    let (ok, stdout, stderr) = fixture.verify(&["--expect-signed", "12"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ok: 1 segments, 12 entries, 3 checkpoints checked"),
        "{stdout}"
    );
    let last_checkpoint = fixture.records()[14].0;
    assert!(
        stdout.contains(&format!(
            "last signed position: seq 12 (checkpoint at byte {last_checkpoint} of {})",
            fixture.segment().display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("every entry is covered by a signature"),
        "{stdout}"
    );
}

#[test]
fn audit_verify_reports_entries_not_yet_covered_by_a_signature() {
    let fixture = Fixture::keys_only();
    let (mut log, _) = fixture.open();
    for n in 1..=7 {
        log.append(&entry(n)).unwrap();
    }
    // The log is open and running: verify needs no lock.
    let (ok, stdout, stderr) = fixture.verify(&[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("last signed position: seq 5"), "{stdout}");
    assert!(
        stdout.contains("2 entries (seq 6..=7) are not yet covered by a signature"),
        "{stdout}"
    );
    // A cut inside the unsigned tail is still seen: the log ends inside a
    // record.
    let (at, length) = fixture.records()[7];
    fixture.truncate(at + length / 2);
    let stderr = fixture.assert_detected(&["truncated", "ends inside a record"]);
    assert!(stderr.contains(&fixture.position_text(7)), "{stderr}");
    drop(log);
}

#[test]
fn audit_verify_detects_an_edited_entry() {
    let fixture = Fixture::new();
    let mut record = fixture.record(ENTRY_3);
    let at = record.len() - 2;
    record[at] ^= 0x04;
    fixture.replace_record(ENTRY_3, &record);
    fixture.assert_detected(&[
        "checksum mismatch",
        "edited",
        &fixture.position_text(ENTRY_3),
    ]);
}

#[test]
fn audit_verify_detects_an_edited_entry_with_a_recomputed_checksum() {
    let fixture = Fixture::new();
    let (seq, timestamp_ms, previous_hash, mut edited) =
        decode_entry_fields(&fixture.record(ENTRY_3));
    edited.actor = "somebody-else".into();
    let mut record = Vec::new();
    encode_entry(seq, timestamp_ms, &previous_hash, &edited, &mut record);
    fixture.replace_record(ENTRY_3, &record);
    // The entry itself is well formed; the next one no longer links to it.
    fixture.assert_detected(&[
        "seq 4: its previous_hash does not match",
        &fixture.position_text(ENTRY_3 + 1),
    ]);
}

#[test]
fn audit_verify_detects_a_deleted_entry() {
    let fixture = Fixture::new();
    let position = fixture.position_text(ENTRY_7);
    fixture.replace_record(ENTRY_7, &[]);
    fixture.assert_detected(&["seq 8 where seq 7 was expected", &position]);
}

#[test]
fn audit_verify_detects_swapped_entries() {
    let fixture = Fixture::new();
    let (seventh, eighth) = (fixture.record(ENTRY_7), fixture.record(ENTRY_8));
    let position = fixture.position_text(ENTRY_7);
    let mut both = eighth.clone();
    both.extend_from_slice(&seventh);
    fixture.replace_record(ENTRY_8, &[]);
    fixture.replace_record(ENTRY_7, &both);
    fixture.assert_detected(&["seq 8 where seq 7 was expected", "reordered", &position]);
}

#[test]
fn audit_verify_detects_an_inserted_entry() {
    let fixture = Fixture::new();
    let mut doubled = fixture.record(ENTRY_7);
    doubled.extend_from_slice(&fixture.record(ENTRY_7));
    let position = fixture.position_text(ENTRY_8);
    fixture.replace_record(ENTRY_7, &doubled);
    fixture.assert_detected(&["seq 7 where seq 8 was expected", &position]);
}

#[test]
fn audit_verify_detects_truncation_in_the_middle_of_an_entry() {
    let fixture = Fixture::new();
    let (at, length) = fixture.records()[ENTRY_12];
    fixture.truncate(at + length / 2);
    // HEAD, the copy of the newest signed checkpoint, says entry 12 existed.
    fixture.assert_detected(&[
        "truncated",
        "covers entries up to seq 12, but the log's last entry is seq 11",
    ]);
}

#[test]
fn audit_verify_detects_truncation_at_an_entry_boundary() {
    let fixture = Fixture::new();
    let (at, _) = fixture.records()[ENTRY_12];
    fixture.truncate(at);
    let stderr = fixture.assert_detected(&[
        "truncated",
        "covers entries up to seq 12, but the log's last entry is seq 11",
        "entries 12..=12 and the checkpoint were removed",
    ]);
    assert!(stderr.contains(&format!("byte {at} of")), "{stderr}");

    // Deleting HEAD as well does not hide it.
    fs::remove_file(fixture.audit.join("HEAD")).unwrap();
    fixture.assert_detected(&["truncated", "HEAD is missing"]);
}

#[test]
fn audit_a_consistent_rollback_is_caught_only_by_an_outside_record_of_the_signed_position() {
    // Cutting the log back to checkpoint 10 and putting a copy of that
    // checkpoint in HEAD leaves a log that is consistent in itself: only
    // a position noted elsewhere (an earlier verify, the shipped export)
    // shows that it went further.
    let fixture = Fixture::new();
    let checkpoint_10 = fixture.record(CHECKPOINT_10);
    let (at, _) = fixture.records()[ENTRY_11];
    fixture.truncate(at);
    fs::write(fixture.audit.join("HEAD"), &checkpoint_10).unwrap();
    let (ok, stdout, stderr) = fixture.verify(&[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("last signed position: seq 10"), "{stdout}");
    let (ok, _, stderr) = fixture.verify(&["--expect-signed", "12"]);
    assert!(!ok);
    assert!(
        stderr
            .contains("signed checkpoints cover entries up to seq 10, fewer than the 12 expected"),
        "{stderr}"
    );
}

#[test]
fn audit_verify_detects_a_replaced_checkpoint_signature() {
    let fixture = Fixture::new();
    let mut checkpoint = fixture.checkpoint(CHECKPOINT_10);
    checkpoint.signature[10] ^= 0x55;
    fixture.replace_checkpoint(CHECKPOINT_10, &checkpoint);
    fixture.assert_detected(&[
        "the signature does not verify",
        "covering entries up to seq 10",
        &fixture.position_text(CHECKPOINT_10),
    ]);
}

#[test]
fn audit_verify_detects_a_checkpoint_signed_with_another_key() {
    let fixture = Fixture::new();
    let mut checkpoint = fixture.checkpoint(CHECKPOINT_10);
    AuditSigner::new(SigningKey::from_bytes(&[9; 32])).sign(&mut checkpoint);
    fixture.replace_checkpoint(CHECKPOINT_10, &checkpoint);
    fixture.assert_detected(&[
        "signed by another key",
        &fixture.position_text(CHECKPOINT_10),
    ]);
}

#[test]
fn audit_verify_with_the_wrong_public_key_fails() {
    let fixture = Fixture::new();
    let other = Fixture::keys_only();
    let (ok, _, stderr) = run(
        &[
            "audit",
            "verify",
            fixture.audit.to_str().unwrap(),
            "--public-key",
            other.public_key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("signed by another key"), "{stderr}");
}

#[test]
fn audit_verify_detects_a_signed_checkpoint_that_does_not_match_the_chain() {
    // Even the key's holder cannot slip a checkpoint in that vouches for a
    // different history: its previous_hash must be the hash of the record
    // before it.
    let fixture = Fixture::new();
    let mut checkpoint = fixture.checkpoint(CHECKPOINT_10);
    checkpoint.previous_hash[0] ^= 1;
    AuditSigner::from_file(&fixture.private_key)
        .unwrap()
        .sign(&mut checkpoint);
    fixture.replace_checkpoint(CHECKPOINT_10, &checkpoint);
    fixture.assert_detected(&[
        "seq 10: its previous_hash does not match",
        &fixture.position_text(CHECKPOINT_10),
    ]);
}

#[test]
fn audit_export_writes_json_lines_with_stable_fields() {
    let fixture = Fixture::new();
    let (ok, stdout, stderr) = run(
        &[
            "audit",
            "export",
            fixture.data.to_str().unwrap(),
            "--from",
            "11",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let first = &lines[0];
    assert_eq!(first["record"], "entry");
    assert_eq!(first["seq"], 11);
    assert_eq!(first["kind"], AuditKind::ALL[2].name());
    assert_eq!(first["kind_code"], 3);
    assert_eq!(first["actor"], "user11");
    assert_eq!(first["source"], "192.0.2.11:40000");
    assert_eq!(first["target"], "channel/11");
    assert_eq!(first["detail"], "{\"attempt\":11}");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["hash"], lines[1]["previous_hash"]);
    assert_eq!(lines[2]["record"], "checkpoint");
    assert_eq!(lines[2]["seq"], 12);
    assert_eq!(lines[2]["signature"].as_str().unwrap().len(), 128);
}

#[test]
fn audit_log_reopens_after_export_and_verify_and_keeps_its_chain() {
    let fixture = Fixture::new();
    let (mut log, recovery) = fixture.open();
    assert_eq!(recovery, Default::default());
    assert_eq!(
        log.append(&entry(13)).unwrap(),
        starling_storage::audit::AuditSeq(13)
    );
    log.close().unwrap();
    let (ok, stdout, stderr) = fixture.verify(&["--expect-signed", "13"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("13 entries, 4 checkpoints"), "{stdout}");
}
