//! Reading an audit directory: the chain checks shared by recovery, `verify`
//! and `export`, and the two offline readers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use super::codec::{
    decode_record, record_hash, AuditRecord, ChainHash, Checkpoint, Decoded, SegmentHeader,
    CHECKPOINT_BYTES, ENTRY_FIXED_BYTES, GENESIS_HASH, SEGMENT_HEADER_BYTES,
};
use super::key::verify_checkpoint;
use super::AuditError;

/// Suffix of segment file names (`00000000000000000001.audit`).
const SEGMENT_SUFFIX: &str = ".audit";
/// Digits of the first seq in a segment file name.
const SEGMENT_NAME_DIGITS: usize = 20;
/// The file holding a copy of the newest signed checkpoint.
pub(crate) const HEAD_FILE_NAME: &str = "HEAD";

/// The name of the segment whose first entry has seq `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:0SEGMENT_NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The segment files of `dir`, oldest first: (first seq from the name, path).
/// Other files (`LOCK`, `HEAD`, temporary files) are not segments.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|error| AuditError::io("list", dir, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| AuditError::io("list", dir, error))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(first_seq) if stem.len() == SEGMENT_NAME_DIGITS => {
                segments.push((first_seq, entry.path()))
            }
            _ => {
                return Err(AuditError::Tampered {
                    path: entry.path(),
                    position: 0,
                    detail: format!(
                        "segment file name is not {SEGMENT_NAME_DIGITS} digits and {SEGMENT_SUFFIX}"
                    ),
                })
            }
        }
    }
    segments.sort();
    Ok(segments)
}

/// Where the chain stands after the records read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainState {
    /// Seq the next entry must have.
    pub next_seq: u64,
    /// Hash of the last record.
    pub last_hash: ChainHash,
    /// Timestamp of the last record (records never go back in time).
    pub last_timestamp_ms: u64,
    /// Entries after the last checkpoint.
    pub entries_since_checkpoint: u64,
}

impl ChainState {
    /// The state before the first record of a log.
    pub fn genesis() -> ChainState {
        ChainState {
            next_seq: 1,
            last_hash: GENESIS_HASH,
            last_timestamp_ms: 0,
            entries_since_checkpoint: 0,
        }
    }
}

/// What [`scan_segment`] found.
#[derive(Debug, Default)]
pub(crate) struct SegmentScan {
    /// Records read.
    pub records: u64,
    /// Whether the last record read is a checkpoint.
    pub ends_with_checkpoint: bool,
    /// Where valid records end.
    pub valid_bytes: u64,
    /// A torn tail of the last segment: (position, bytes).
    pub torn: Option<(u64, u64)>,
    /// The segment's header, if it is valid.
    pub header: Option<SegmentHeader>,
    /// The bytes of the segment's last checkpoint.
    pub last_checkpoint: Option<[u8; CHECKPOINT_BYTES]>,
}

/// A record as the scan hands it to its visitor.
pub(crate) struct Visit<'a> {
    pub path: &'a Path,
    pub position: u64,
    pub record: AuditRecord<'a>,
    pub bytes: &'a [u8],
}

/// Reads one segment's records, checking header, checksums, seqs, the hash
/// chain and timestamps. `state` is the chain before the segment; `None`
/// takes it from the header (recovery reads only the last segment).
///
/// In the last segment (`is_last`), bad bytes with no valid record after them
/// are a torn tail, reported in [`SegmentScan::torn`]; anywhere else they are
/// [`AuditError::Tampered`].
pub(crate) fn scan_segment(
    path: &Path,
    first_seq: u64,
    bytes: &[u8],
    state: &mut Option<ChainState>,
    is_last: bool,
    visit: &mut dyn FnMut(Visit<'_>) -> Result<(), AuditError>,
) -> Result<SegmentScan, AuditError> {
    let tampered = |position: usize, detail: String| AuditError::Tampered {
        path: path.to_path_buf(),
        position: position as u64,
        detail,
    };
    let mut scan = SegmentScan::default();
    let header = match SegmentHeader::decode(bytes) {
        Ok(header) => header,
        Err(_) if is_last && !valid_record_after(bytes, 0) => {
            scan.torn = Some((0, bytes.len() as u64));
            return Ok(scan);
        }
        Err(detail) => return Err(tampered(0, detail)),
    };
    if header.first_seq != first_seq {
        return Err(tampered(
            0,
            format!(
                "segment header says its first seq is {}, its file name says {first_seq}: the file was renamed or replaced",
                header.first_seq
            ),
        ));
    }
    scan.header = Some(header);
    let state = state.get_or_insert_with(|| ChainState {
        next_seq: header.first_seq,
        last_hash: header.previous_hash,
        last_timestamp_ms: 0,
        entries_since_checkpoint: 0,
    });
    if header.first_seq != state.next_seq {
        return Err(tampered(
            0,
            format!(
                "segment starts at seq {} where seq {} was expected: entries were deleted or inserted (a segment file removed or added?)",
                header.first_seq, state.next_seq
            ),
        ));
    }
    if header.previous_hash != state.last_hash {
        return Err(tampered(
            0,
            "segment header's previous hash does not match the last record of the segment before: that segment was altered or replaced".into(),
        ));
    }
    let mut at = SEGMENT_HEADER_BYTES;
    scan.valid_bytes = at as u64;
    while at < bytes.len() {
        let (record, used) = match decode_record(&bytes[at..]) {
            Ok(Decoded::Complete { record, bytes_used }) => (record, bytes_used),
            Ok(Decoded::NeedMore) if is_last => {
                scan.torn = Some((at as u64, (bytes.len() - at) as u64));
                break;
            }
            Ok(Decoded::NeedMore) => {
                return Err(tampered(
                    at,
                    "a sealed segment ends inside a record: it was truncated".into(),
                ))
            }
            Err(_) if is_last && !valid_record_after(bytes, at + 1) => {
                scan.torn = Some((at as u64, (bytes.len() - at) as u64));
                break;
            }
            Err(detail) => {
                return Err(tampered(
                    at,
                    format!("{detail}: the record was edited or damaged"),
                ))
            }
        };
        let record_bytes = &bytes[at..at + used];
        check_link(state, &record).map_err(|detail| tampered(at, detail))?;
        visit(Visit {
            path,
            position: at as u64,
            record,
            bytes: record_bytes,
        })?;
        state.last_hash = record_hash(record_bytes);
        state.last_timestamp_ms = record.timestamp_ms();
        match record {
            AuditRecord::Entry(_) => {
                state.next_seq += 1;
                state.entries_since_checkpoint += 1;
            }
            AuditRecord::Checkpoint(_) => state.entries_since_checkpoint = 0,
        }
        scan.records += 1;
        scan.ends_with_checkpoint = matches!(record, AuditRecord::Checkpoint(_));
        if scan.ends_with_checkpoint {
            scan.last_checkpoint = record_bytes.try_into().ok();
        }
        at += used;
        scan.valid_bytes = at as u64;
    }
    Ok(scan)
}

/// Checks that `record` follows the chain `state` describes.
fn check_link(state: &ChainState, record: &AuditRecord<'_>) -> Result<(), String> {
    match record {
        AuditRecord::Entry(entry) if entry.seq != state.next_seq => {
            return Err(format!(
                "entry has seq {} where seq {} was expected: entries were deleted, inserted or reordered",
                entry.seq, state.next_seq
            ))
        }
        AuditRecord::Checkpoint(checkpoint) if checkpoint.seq + 1 != state.next_seq => {
            return Err(format!(
                "checkpoint claims to cover entries up to seq {}, but the entries before it end at seq {}: entries were deleted, inserted or reordered, or the checkpoint was moved",
                checkpoint.seq,
                state.next_seq - 1
            ))
        }
        _ => {}
    }
    if *record.previous_hash() != state.last_hash {
        return Err(format!(
            "seq {}: its previous_hash does not match the hash of the record before it: that record was edited, or records were deleted, inserted or reordered",
            record.seq()
        ));
    }
    if record.timestamp_ms() < state.last_timestamp_ms {
        return Err(format!(
            "seq {}: timestamp {} ms is earlier than the record before it ({} ms): records were reordered or edited",
            record.seq(),
            record.timestamp_ms(),
            state.last_timestamp_ms
        ));
    }
    Ok(())
}

/// Whether a valid record starts anywhere in `bytes` at or after `from`
/// (which makes bad bytes before it corruption rather than a torn tail).
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(ENTRY_FIXED_BYTES - 1))
        .any(|at| matches!(decode_record(&bytes[at..]), Ok(Decoded::Complete { .. })))
}

/// Reads `HEAD`: the newest signed checkpoint's record, and its hash.
pub(crate) fn read_head(dir: &Path) -> Result<Option<(Checkpoint, ChainHash)>, AuditError> {
    let path = dir.join(HEAD_FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(AuditError::io("read", &path, error)),
    };
    let bad = |detail: String| AuditError::Tampered {
        path: path.clone(),
        position: 0,
        detail,
    };
    match decode_record(&bytes) {
        Ok(Decoded::Complete {
            record: AuditRecord::Checkpoint(checkpoint),
            bytes_used: CHECKPOINT_BYTES,
        }) if bytes.len() == CHECKPOINT_BYTES => Ok(Some((checkpoint, record_hash(&bytes)))),
        Err(detail) => Err(bad(format!("HEAD is not a valid checkpoint: {detail}"))),
        _ => Err(bad(format!(
            "HEAD is not one checkpoint record of {CHECKPOINT_BYTES} bytes"
        ))),
    }
}

/// What walking a whole audit directory found.
#[derive(Debug, Default)]
struct Walk {
    segments: u64,
    entries: u64,
    checkpoints: u64,
    last_seq: u64,
    last_signed: Option<(u64, PathBuf, u64)>,
    /// Hashes of every checkpoint, by the seq it covers (to match `HEAD`).
    checkpoint_hashes: HashMap<u64, HashSet<ChainHash>>,
    torn: Option<(PathBuf, u64, u64)>,
    end: Option<(PathBuf, u64)>,
}

fn walk(
    dir: &Path,
    visit: &mut dyn FnMut(Visit<'_>) -> Result<(), AuditError>,
) -> Result<Walk, AuditError> {
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        // An opened log always has its first segment.
        return Err(AuditError::Truncated {
            detail: format!(
                "{} holds no audit segment files (*.audit): it is not an audit log directory, or every segment was deleted",
                dir.display()
            ),
        });
    }
    let mut state = Some(ChainState::genesis());
    let mut walk = Walk::default();
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(|error| AuditError::io("read", path, error))?;
        let is_last = index + 1 == segments.len();
        let scan = scan_segment(path, *first_seq, &bytes, &mut state, is_last, &mut |v| {
            match v.record {
                AuditRecord::Entry(entry) => {
                    walk.entries += 1;
                    walk.last_seq = entry.seq;
                }
                AuditRecord::Checkpoint(checkpoint) => {
                    walk.checkpoints += 1;
                    walk.last_signed = Some((checkpoint.seq, v.path.to_path_buf(), v.position));
                    walk.checkpoint_hashes
                        .entry(checkpoint.seq)
                        .or_default()
                        .insert(record_hash(v.bytes));
                }
            }
            visit(v)
        })?;
        if !is_last && !scan.ends_with_checkpoint {
            return Err(AuditError::Tampered {
                path: path.clone(),
                position: scan.valid_bytes,
                detail: "a sealed segment does not end with a checkpoint: its end was cut off"
                    .into(),
            });
        }
        walk.segments += 1;
        walk.torn = scan
            .torn
            .map(|(position, bytes)| (path.clone(), position, bytes));
        walk.end = Some((path.clone(), scan.valid_bytes));
    }
    Ok(walk)
}

/// What `starling audit verify` reports for a log that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerifyReport {
    /// Segment files read.
    pub segments: u64,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// Seq of the last entry (0: none).
    pub last_seq: u64,
    /// The last entry a verified checkpoint covers (0: none).
    pub last_signed_seq: u64,
    /// File and byte offset of that checkpoint.
    pub last_signed_at: Option<(PathBuf, u64)>,
    /// Entries after the last checkpoint: not yet covered by a signature.
    pub unsigned_entries: u64,
    /// The seq `HEAD` covers, if there is a `HEAD`.
    pub head_seq: Option<u64>,
}

/// Checks a whole audit directory with the public keys (one, or the old and
/// new keys of a rotation; each checkpoint names its key's id): every record's
/// checksum, seq and hash link, every checkpoint's signature, `HEAD`
/// against the log, and (if given) that signed checkpoints cover at least
/// `expect_signed_seq` entries. Reads only; needs no lock.
///
/// The first problem is the error, naming the file and byte offset.
pub fn verify_audit_dir(
    dir: &Path,
    keys: &[VerifyingKey],
    expect_signed_seq: Option<u64>,
) -> Result<AuditVerifyReport, AuditError> {
    // HEAD is read first: on a running log it can then only lag what the
    // walk reads, never lead it.
    let head = read_head(dir)?;
    let walk = walk(dir, &mut |v| match v.record {
        AuditRecord::Checkpoint(checkpoint) => {
            verify_checkpoint(keys, &checkpoint).map_err(|detail| AuditError::BadSignature {
                path: v.path.to_path_buf(),
                position: v.position,
                seq: checkpoint.seq,
                detail,
            })
        }
        AuditRecord::Entry(_) => Ok(()),
    })?;
    let end = match &walk.end {
        Some((path, position)) => format!("byte {position} of {}", path.display()),
        None => "no segment files".into(),
    };
    let head_path = dir.join(HEAD_FILE_NAME);
    if let Some((checkpoint, hash)) = &head {
        verify_checkpoint(keys, checkpoint).map_err(|detail| AuditError::BadSignature {
            path: head_path.clone(),
            position: 0,
            seq: checkpoint.seq,
            detail,
        })?;
        if checkpoint.seq > walk.last_seq {
            return Err(AuditError::Truncated {
                detail: format!(
                    "HEAD (a signed copy of the newest checkpoint) covers entries up to seq {}, but the log's last entry is seq {} (the log ends at {end}): entries {}..={} and the checkpoint were removed",
                    checkpoint.seq,
                    walk.last_seq,
                    walk.last_seq + 1,
                    checkpoint.seq
                ),
            });
        }
        if !walk
            .checkpoint_hashes
            .get(&checkpoint.seq)
            .is_some_and(|hashes| hashes.contains(hash))
        {
            return Err(AuditError::Tampered {
                path: head_path,
                position: 0,
                detail: format!(
                    "HEAD's signed checkpoint at seq {} is not in the log: the log was rewritten from there on",
                    checkpoint.seq
                ),
            });
        }
    } else if walk.checkpoints > 0 && read_head(dir)?.is_none() {
        // (A HEAD that appeared during the walk was written by a running
        // log's first checkpoint.)
        return Err(AuditError::Truncated {
            detail: format!(
                "{} is missing although the log has {} checkpoints; it was deleted, perhaps to hide a cut at the end of the log (the log ends at {end})",
                head_path.display(),
                walk.checkpoints
            ),
        });
    }
    if let Some((path, position, bytes)) = &walk.torn {
        return Err(AuditError::Truncated {
            detail: format!(
                "the log ends inside a record at byte {position} of {} ({bytes} bytes of an incomplete record after the last entry, seq {}): it was cut in the middle of a record, or a crash interrupted a write (opening the log removes the incomplete record, which was never acknowledged)",
                path.display(),
                walk.last_seq
            ),
        });
    }
    let last_signed_seq = walk.last_signed.as_ref().map_or(0, |(seq, _, _)| *seq);
    if let Some(expected) = expect_signed_seq {
        if last_signed_seq < expected {
            return Err(AuditError::Truncated {
                detail: format!(
                    "signed checkpoints cover entries up to seq {last_signed_seq}, fewer than the {expected} expected (the log ends at {end})"
                ),
            });
        }
    }
    Ok(AuditVerifyReport {
        segments: walk.segments,
        entries: walk.entries,
        checkpoints: walk.checkpoints,
        last_seq: walk.last_seq,
        last_signed_seq,
        last_signed_at: walk.last_signed.map(|(_, path, position)| (path, position)),
        unsigned_entries: walk.last_seq - last_signed_seq,
        head_seq: head.map(|(checkpoint, _)| checkpoint.seq),
    })
}

/// Reads every record of an audit directory in order (entries with seq ≥
/// `from_seq` and the checkpoints after them), checking checksums, seqs and
/// the hash chain but not signatures (no key needed), and hands each to
/// `visit` with its hash. Stops quietly at a torn tail (a write in progress
/// or interrupted), which is returned. Reads only; needs no lock.
pub fn read_audit_dir(
    dir: &Path,
    from_seq: u64,
    visit: &mut dyn FnMut(&AuditRecord<'_>, &ChainHash) -> std::io::Result<()>,
) -> Result<Option<(PathBuf, u64)>, AuditError> {
    let walk = walk(dir, &mut |v| {
        if v.record.seq() < from_seq {
            return Ok(());
        }
        visit(&v.record, &record_hash(v.bytes))
            .map_err(|error| AuditError::io("write the export of", v.path, error))
    })?;
    Ok(walk.torn.map(|(path, position, _)| (path, position)))
}
