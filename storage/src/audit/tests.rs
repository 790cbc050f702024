//! Unit tests of the audit log: pinned bytes, decoding at every split
//! point, recovery and verification.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

const TIMESTAMP_MS: u64 = 1_764_314_700_000;

fn fixed_clock() -> u64 {
    TIMESTAMP_MS
}

fn signer() -> AuditSigner {
    AuditSigner::new(SigningKey::from_bytes(&[7; 32]))
}

fn other_signer() -> AuditSigner {
    AuditSigner::new(SigningKey::from_bytes(&[8; 32]))
}

fn config(checkpoint_interval_entries: u64) -> AuditConfig {
    AuditConfig {
        checkpoint_interval_entries,
        clock: fixed_clock,
        ..AuditConfig::default()
    }
}

fn sample_entry(n: u64) -> AuditEntry {
    AuditEntry::new(
        AuditKind::ALL[(n % 9) as usize],
        format!("user{n}"),
        "192.0.2.7:5000",
        "channel/general",
        format!("{{\"n\":{n}}}"),
    )
}

fn first_segment(dir: &Path) -> PathBuf {
    dir.join("00000000000000000001.audit")
}

fn from_hex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

/// Record boundaries of a segment file: (position, record_bytes).
fn records_of(path: &Path) -> Vec<(usize, usize)> {
    let bytes = fs::read(path).unwrap();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut records = Vec::new();
    while at < bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        records.push((at, length));
        at += length;
    }
    records
}

#[test]
fn audit_kind_codes_and_names_are_stable() {
    let codes: Vec<(u16, &str)> = AuditKind::ALL
        .iter()
        .map(|kind| (kind.code(), kind.name()))
        .collect();
    assert_eq!(
        codes,
        [
            (1, "sign_in_succeeded"),
            (2, "sign_in_failed"),
            (3, "token_issued"),
            (4, "token_revoked"),
            (5, "permission_changed"),
            (6, "user_changed"),
            (7, "admin_action"),
            (8, "configuration_changed"),
            (9, "request_denied"),
        ]
    );
    assert_eq!(AuditKind::from_code(0), None);
    assert_eq!(AuditKind::from_code(10), None);
}

#[test]
fn audit_segment_header_bytes_are_pinned() {
    let header = SegmentHeader {
        first_seq: 1001,
        previous_hash: [0xab; 32],
    };
    let bytes = header.encode();
    let expected = from_hex(
        "53545241 01 000000 33cdc0d4 00000000 e903000000000000
         abababababababababababababababababababababababababababababababab",
    );
    assert_eq!(bytes.to_vec(), expected);
    assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
}

#[test]
fn audit_entry_bytes_are_pinned() {
    let entry = AuditEntry::new(
        AuditKind::SignInFailed,
        "alice",
        "192.0.2.7:5000",
        "",
        "reason=bad_password",
    );
    let mut bytes = Vec::new();
    encode_entry(1, TIMESTAMP_MS, &GENESIS_HASH, &entry, &mut bytes);
    assert_eq!(bytes.len(), entry_encoded_bytes(&entry));
    let expected = from_hex(
        "72000000 308b4edc 01 01 0200 00000000
         0100000000000000 e0d859c99a010000
         0000000000000000000000000000000000000000000000000000000000000000
         0500 0e00 0000 0000 13000000
         616c696365 3139322e302e322e373a35303030 72656173 6f6e3d6261645f70617373776f7264",
    );
    assert_eq!(bytes, expected);
    let Ok(Decoded::Complete { record, bytes_used }) = decode_record(&bytes) else {
        panic!("decode failed");
    };
    assert_eq!(bytes_used, bytes.len());
    assert_eq!(
        record,
        AuditRecord::Entry(EntryView {
            seq: 1,
            timestamp_ms: TIMESTAMP_MS,
            kind: AuditKind::SignInFailed,
            previous_hash: GENESIS_HASH,
            actor: "alice",
            source: "192.0.2.7:5000",
            target: "",
            detail: "reason=bad_password",
        })
    );
}

#[test]
fn audit_checkpoint_bytes_are_pinned() {
    let mut checkpoint = Checkpoint {
        seq: 1000,
        timestamp_ms: TIMESTAMP_MS,
        previous_hash: [0x11; 32],
        key_id: [0; KEY_ID_BYTES],
        signature: [0; SIGNATURE_BYTES],
    };
    signer().sign(&mut checkpoint);
    let mut bytes = Vec::new();
    checkpoint.encode(&mut bytes);
    let expected = from_hex(
        "88000000 adf85de0 02 01 0000 00000000
         e803000000000000 e0d859c99a010000
         1111111111111111111111111111111111111111111111111111111111111111
         fe812c12f3ab4ce6
         722056631b62fe681ca90b1a34b888af7a91bd5210022b79
         8c41db4cc4e412febd66a0aca4a602eb7419e8dee1a1677d4fc7bebbd01526d9
         c71308cf0272890d",
    );
    assert_eq!(bytes, expected);
    assert_eq!(bytes.len(), CHECKPOINT_BYTES);
    assert_eq!(
        verify_checkpoint(&[signer().verifying_key()], &checkpoint),
        Ok(())
    );
    let error = verify_checkpoint(&[other_signer().verifying_key()], &checkpoint).unwrap_err();
    assert!(error.contains("signed by another key"), "{error}");
}

#[test]
fn audit_decode_needs_more_at_every_split_point_and_byte_by_byte() {
    let mut bytes = Vec::new();
    encode_entry(7, TIMESTAMP_MS, &[3; 32], &sample_entry(7), &mut bytes);
    for split in 0..bytes.len() {
        assert_eq!(
            decode_record(&bytes[..split]),
            Ok(Decoded::NeedMore),
            "{split}"
        );
    }
    // Fed one byte at a time, the decoder answers NeedMore until the last.
    let mut fed = Vec::new();
    for byte in &bytes {
        fed.push(*byte);
        let complete = matches!(decode_record(&fed), Ok(Decoded::Complete { .. }));
        assert_eq!(complete, fed.len() == bytes.len());
    }
}

#[test]
fn audit_decode_rejects_any_changed_byte() {
    let mut bytes = Vec::new();
    encode_entry(7, TIMESTAMP_MS, &[3; 32], &sample_entry(7), &mut bytes);
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        assert!(
            !matches!(decode_record(&damaged), Ok(Decoded::Complete { .. })),
            "a flipped bit at {at} went unnoticed"
        );
    }
}

#[test]
fn audit_append_gives_gap_free_seqs_and_checkpoints_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, recovery) = AuditLog::open(dir.path(), signer(), config(4)).unwrap();
    assert_eq!(recovery, AuditRecovery::default());
    for n in 1..=5 {
        assert_eq!(log.append(&sample_entry(n)).unwrap(), AuditSeq(n));
    }
    assert_eq!(log.last_signed_seq(), 4);
    let batch: Vec<AuditEntry> = (6..=12).map(sample_entry).collect();
    let seqs = log.append_batch(&batch).unwrap();
    assert_eq!(seqs, (6..=12).map(AuditSeq).collect::<Vec<_>>());
    assert_eq!(log.last_signed_seq(), 12);
    log.close().unwrap();
    let report = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap();
    assert_eq!(
        (report.entries, report.checkpoints, report.last_signed_seq),
        (12, 3, 12)
    );
    assert_eq!(report.unsigned_entries, 0);
    assert_eq!(report.head_seq, Some(12));

    let mut exported = Vec::new();
    let torn = read_audit_dir(dir.path(), 10, &mut |record, _| {
        exported.push(record.seq());
        Ok(())
    })
    .unwrap();
    assert_eq!(torn, None);
    assert_eq!(exported, [10, 11, 12, 12]); // the last is the checkpoint
}

#[test]
fn audit_reopen_continues_the_chain_and_drop_signs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    log.append_batch(&[sample_entry(1), sample_entry(2), sample_entry(3)])
        .unwrap();
    drop(log);
    let (mut log, recovery) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    assert_eq!(recovery, AuditRecovery::default());
    assert_eq!(log.last_seq(), 3);
    assert_eq!(log.last_signed_seq(), 3);
    assert_eq!(log.append(&sample_entry(4)).unwrap(), AuditSeq(4));
    log.close().unwrap();
    let report = verify_audit_dir(dir.path(), &[signer().verifying_key()], Some(4)).unwrap();
    assert_eq!((report.entries, report.checkpoints), (4, 2));
}

#[test]
fn audit_torn_tail_is_truncated_at_open_and_unsigned_entries_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    log.append_batch(&[sample_entry(1), sample_entry(2)])
        .unwrap();
    log.close().unwrap();
    // What a crash leaves: two unsigned entries (copied from an encoding
    // that continues the chain) and half of a third.
    let segment = first_segment(dir.path());
    let bytes = fs::read(&segment).unwrap();
    let (last_at, last_bytes) = *records_of(&segment).last().unwrap();
    let mut tail = Vec::new();
    let mut previous = record_hash(&bytes[last_at..last_at + last_bytes]);
    for seq in 3..=5 {
        let start = tail.len();
        encode_entry(seq, TIMESTAMP_MS, &previous, &sample_entry(seq), &mut tail);
        previous = record_hash(&tail[start..]);
    }
    let cut = tail.len() - 20;
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&tail[..cut]).unwrap();
    drop(file);
    let error = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap_err();
    assert!(matches!(error, AuditError::Truncated { .. }), "{error}");

    let (log, recovery) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    let torn_at = (bytes.len() + tail.len() - sample_entry_bytes(5)) as u64;
    assert_eq!(
        recovery.truncated,
        Some((
            segment.clone(),
            torn_at,
            (sample_entry_bytes(5) - 20) as u64
        ))
    );
    assert_eq!(recovery.unsigned_entries_signed, 2);
    assert_eq!((log.last_seq(), log.last_signed_seq()), (4, 4));
    drop(log);
    let report = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap();
    assert_eq!((report.entries, report.checkpoints), (4, 2));
}

fn sample_entry_bytes(n: u64) -> usize {
    entry_encoded_bytes(&sample_entry(n))
}

#[test]
fn audit_damage_before_the_tail_refuses_open_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    log.append_batch(&[sample_entry(1), sample_entry(2), sample_entry(3)])
        .unwrap();
    log.close().unwrap();
    let segment = first_segment(dir.path());
    let (second_at, _) = records_of(&segment)[1];
    let mut bytes = fs::read(&segment).unwrap();
    bytes[second_at + 80] ^= 0x20;
    fs::write(&segment, &bytes).unwrap();
    let error = AuditLog::open(dir.path(), signer(), config(100)).unwrap_err();
    let AuditError::Tampered { path, position, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!((path, *position), (&segment, second_at as u64));
    assert_eq!(fs::read(&segment).unwrap(), bytes);
}

#[test]
fn audit_segments_roll_sealed_by_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        segment_bytes_max: SEGMENT_BYTES_MAX_MIN,
        ..config(1000)
    };
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config.clone()).unwrap();
    for n in 1..=100 {
        log.append(&sample_entry(n)).unwrap();
    }
    drop(log);
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config).unwrap();
    log.append(&sample_entry(101)).unwrap();
    log.close().unwrap();
    let report = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap();
    assert!(report.segments >= 3, "{report:?}");
    assert_eq!(report.entries, 101);
    assert_eq!(report.checkpoints, report.segments + 1);
}

#[test]
fn audit_head_ahead_of_the_log_refuses_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config(2)).unwrap();
    log.append_batch(&(1..=4).map(sample_entry).collect::<Vec<_>>())
        .unwrap();
    log.close().unwrap();
    let segment = first_segment(dir.path());
    // Cut inside entry 4: it and the checkpoint covering it are gone.
    let (fourth_at, _) = records_of(&segment)[4];
    let cut = fourth_at as u64 + 10;
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let error = AuditLog::open(dir.path(), signer(), config(2)).unwrap_err();
    assert!(
        matches!(&error, AuditError::Truncated { detail } if detail.contains("up to seq 4")),
        "{error}"
    );
    // The evidence is left as it was: not even the torn tail is removed.
    assert_eq!(fs::metadata(&segment).unwrap().len(), cut);
}

#[test]
fn audit_entry_over_a_limit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    let mut large = sample_entry(2);
    large.detail = "x".repeat(DETAIL_BYTES_MAX + 1);
    let error = log.append_batch(&[sample_entry(1), large]).unwrap_err();
    assert!(
        matches!(
            error,
            AuditError::TooLarge {
                field: "detail",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(log.last_seq(), 0);
    assert_eq!(log.append(&sample_entry(1)).unwrap(), AuditSeq(1));
}

#[test]
fn audit_second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    let error = AuditLog::open(dir.path(), signer(), config(100)).unwrap_err();
    assert!(error.to_string().contains("is locked"), "{error}");
}

#[test]
fn audit_key_files_round_trip_and_private_key_mode_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("audit.key");
    let public = generate_key_files(&private).unwrap();
    assert_eq!(public, dir.path().join("audit.key.pub"));
    let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(fs::read_to_string(&private)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let signing = load_signing_key(&private).unwrap();
    let verifying = load_verifying_key(&public).unwrap();
    assert_eq!(signing.verifying_key(), verifying);

    let error = generate_key_files(&private).unwrap_err();
    assert!(error.to_string().contains("never overwrites"), "{error}");

    fs::set_permissions(&private, fs::Permissions::from_mode(0o644)).unwrap();
    let error = load_signing_key(&private).unwrap_err();
    assert!(error.to_string().contains("chmod 600"), "{error}");

    let raw = dir.path().join("raw.key");
    fs::write(&raw, [7u8; 32]).unwrap();
    fs::set_permissions(&raw, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(load_signing_key(&raw).unwrap().to_bytes(), [7u8; 32]);
    let error = load_verifying_key(&raw.with_extension("missing")).unwrap_err();
    assert!(error.to_string().contains("failed to read"), "{error}");
}

#[test]
fn audit_checkpoints_of_another_key_fail_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), other_signer(), config(100)).unwrap();
    log.append(&sample_entry(1)).unwrap();
    log.close().unwrap();
    let error = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap_err();
    assert!(
        matches!(&error, AuditError::BadSignature { seq: 1, detail, .. } if detail.contains("another key")),
        "{error}"
    );
}

#[test]
fn audit_rotated_keys_verify_with_both_public_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), other_signer(), config(100)).unwrap();
    log.append(&sample_entry(1)).unwrap();
    log.close().unwrap();
    let (mut log, _) = AuditLog::open(dir.path(), signer(), config(100)).unwrap();
    log.append(&sample_entry(2)).unwrap();
    log.close().unwrap();
    let both = [other_signer().verifying_key(), signer().verifying_key()];
    let report = verify_audit_dir(dir.path(), &both, None).unwrap();
    assert_eq!((report.entries, report.checkpoints), (2, 2));
    let error = verify_audit_dir(dir.path(), &both[1..], None).unwrap_err();
    assert!(
        matches!(&error, AuditError::BadSignature { seq: 1, .. }),
        "{error}"
    );
}

#[test]
fn audit_verify_of_a_directory_without_segments_fails() {
    let dir = tempfile::tempdir().unwrap();
    let error = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap_err();
    assert!(
        error.to_string().contains("no audit segment files"),
        "{error}"
    );
    // A log just opened has its first segment and verifies.
    drop(AuditLog::open(dir.path(), signer(), config(100)).unwrap());
    let report = verify_audit_dir(dir.path(), &[signer().verifying_key()], None).unwrap();
    assert_eq!(
        (report.segments, report.entries, report.head_seq),
        (1, 0, None)
    );
}
