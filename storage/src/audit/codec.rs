//! The audit log's bytes: segment header, entry and checkpoint records, and
//! the hash that chains them. A pure codec: no I/O.
//!
//! The layout is drawn in the module documentation (`audit/mod.rs`) and
//! in `docs/STORAGE-FORMAT.md`.
//!
//! `previous_hash` is the SHA-256 of the whole previous record (zeros before
//! the first record of the log). A checkpoint's signature is Ed25519 over
//! [`SIGNATURE_DOMAIN`] followed by bytes 8..72 of the checkpoint.

use sha2::{Digest, Sha256};

use super::entry::{
    AuditEntry, AuditKind, ACTOR_BYTES_MAX, DETAIL_BYTES_MAX, SOURCE_BYTES_MAX, TARGET_BYTES_MAX,
};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"STRA";
/// Version of the segment header and record formats.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 56;
/// Size of the header shared by entries and checkpoints.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Size of an entry without its four text fields.
pub const ENTRY_FIXED_BYTES: usize = 76;
/// Size of a checkpoint record.
pub const CHECKPOINT_BYTES: usize = 136;
/// Largest possible record: an entry with every field at its limit.
pub const RECORD_BYTES_MAX: usize =
    ENTRY_FIXED_BYTES + ACTOR_BYTES_MAX + SOURCE_BYTES_MAX + TARGET_BYTES_MAX + DETAIL_BYTES_MAX;
/// Size of a key id: the first bytes of the SHA-256 of the public key.
pub const KEY_ID_BYTES: usize = 8;
/// Size of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// What a checkpoint signature signs before the checkpoint's bytes, so that
/// a signature made for anything else never verifies as a checkpoint.
pub const SIGNATURE_DOMAIN: &[u8] = b"starling audit checkpoint v1\0";
/// The `previous_hash` of the first record of a log.
pub const GENESIS_HASH: ChainHash = [0; 32];

/// A SHA-256 hash of a record.
pub type ChainHash = [u8; 32];

const RECORD_TYPE_ENTRY: u8 = 1;
const RECORD_TYPE_CHECKPOINT: u8 = 2;
/// Bytes 8..72 of a checkpoint: what its signature covers.
const CHECKPOINT_SIGNED: std::ops::Range<usize> = 8..72;

/// The SHA-256 of a record's bytes: the next record's `previous_hash`.
pub fn record_hash(record: &[u8]) -> ChainHash {
    Sha256::digest(record).into()
}

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Seq of the segment's first entry (also the file name).
    pub first_seq: u64,
    /// Hash of the last record of the segment before (the checkpoint that
    /// sealed it); [`GENESIS_HASH`] for the first segment.
    pub previous_hash: ChainHash,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..4].copy_from_slice(&SEGMENT_MAGIC);
        bytes[4] = FORMAT_VERSION;
        bytes[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        bytes[24..56].copy_from_slice(&self.previous_hash);
        let crc = crc32c::crc32c(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Reads a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "segment header is {} bytes, shorter than {SEGMENT_HEADER_BYTES}",
                bytes.len()
            ));
        }
        let bytes = &bytes[..SEGMENT_HEADER_BYTES];
        if bytes[0..4] != SEGMENT_MAGIC {
            return Err("segment header does not start with the magic STRA".into());
        }
        let stored = u32_at(bytes, 8);
        let computed = crc32c::crc32c(&bytes[12..]);
        if stored != computed {
            return Err(format!(
                "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(format!("unknown segment format version {}", bytes[4]));
        }
        if bytes[5..8] != [0; 3] || u32_at(bytes, 12) != 0 {
            return Err("reserved bytes of the segment header are not zero".into());
        }
        Ok(SegmentHeader {
            first_seq: u64_at(bytes, 16),
            previous_hash: hash_at(bytes, 24),
        })
    }
}

/// A decoded entry, borrowing its text from the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView<'a> {
    /// Gap-free from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, never decreasing along the log.
    pub timestamp_ms: u64,
    /// What happened.
    pub kind: AuditKind,
    /// Hash of the record before.
    pub previous_hash: ChainHash,
    /// Who.
    pub actor: &'a str,
    /// From where.
    pub source: &'a str,
    /// On what.
    pub target: &'a str,
    /// Details.
    pub detail: &'a str,
}

/// A signed checkpoint: the signer vouches for every record before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Seq of the last entry before it: the number of entries it covers.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Hash of the record before it, which chains back to the first.
    pub previous_hash: ChainHash,
    /// Which key signed: the first 8 bytes of the SHA-256 of its public key.
    pub key_id: [u8; KEY_ID_BYTES],
    /// Ed25519 over [`SIGNATURE_DOMAIN`] and bytes 8..72 of the record.
    pub signature: [u8; SIGNATURE_BYTES],
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut record = Vec::with_capacity(CHECKPOINT_BYTES);
        self.encode(&mut record);
        let mut message = SIGNATURE_DOMAIN.to_vec();
        message.extend_from_slice(&record[CHECKPOINT_SIGNED]);
        message
    }

    /// Appends the checkpoint's [`CHECKPOINT_BYTES`] bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put_header(
            out,
            CHECKPOINT_BYTES,
            RECORD_TYPE_CHECKPOINT,
            0,
            self.seq,
            self.timestamp_ms,
            &self.previous_hash,
        );
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.signature);
        finish_record(&mut out[start..]);
    }
}

/// A decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRecord<'a> {
    /// An audited event.
    Entry(EntryView<'a>),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
}

impl AuditRecord<'_> {
    /// The entry's seq, or the last seq a checkpoint covers.
    pub fn seq(&self) -> u64 {
        match self {
            AuditRecord::Entry(entry) => entry.seq,
            AuditRecord::Checkpoint(checkpoint) => checkpoint.seq,
        }
    }

    /// The record's timestamp.
    pub fn timestamp_ms(&self) -> u64 {
        match self {
            AuditRecord::Entry(entry) => entry.timestamp_ms,
            AuditRecord::Checkpoint(checkpoint) => checkpoint.timestamp_ms,
        }
    }

    /// The hash of the record before it.
    pub fn previous_hash(&self) -> &ChainHash {
        match self {
            AuditRecord::Entry(entry) => &entry.previous_hash,
            AuditRecord::Checkpoint(checkpoint) => &checkpoint.previous_hash,
        }
    }
}

/// What [`decode_record`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid record and how many bytes it took.
    Complete {
        /// The record.
        record: AuditRecord<'a>,
        /// Its length.
        bytes_used: usize,
    },
    /// The bytes end before the record does.
    NeedMore,
}

/// The encoded size of an entry.
pub fn entry_encoded_bytes(entry: &AuditEntry) -> usize {
    ENTRY_FIXED_BYTES
        + entry.actor.len()
        + entry.source.len()
        + entry.target.len()
        + entry.detail.len()
}

/// Appends an entry record to `out`.
///
/// The caller has checked the entry's limits ([`AuditEntry::check_limits`]).
pub fn encode_entry(
    seq: u64,
    timestamp_ms: u64,
    previous_hash: &ChainHash,
    entry: &AuditEntry,
    out: &mut Vec<u8>,
) {
    assert!(
        entry.check_limits().is_ok(),
        "encode_entry of an entry over its limits"
    );
    let start = out.len();
    put_header(
        out,
        entry_encoded_bytes(entry),
        RECORD_TYPE_ENTRY,
        entry.kind.code(),
        seq,
        timestamp_ms,
        previous_hash,
    );
    for field in [&entry.actor, &entry.source, &entry.target] {
        out.extend_from_slice(&(field.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entry.detail.len() as u32).to_le_bytes());
    for field in [&entry.actor, &entry.source, &entry.target, &entry.detail] {
        out.extend_from_slice(field.as_bytes());
    }
    finish_record(&mut out[start..]);
}

/// Decodes the record at the start of `bytes`.
///
/// Running out of bytes is [`Decoded::NeedMore`], not an error; an error
/// says what is wrong with the record.
pub fn decode_record(bytes: &[u8]) -> Result<Decoded<'_>, String> {
    if bytes.len() < 4 {
        return Ok(Decoded::NeedMore);
    }
    let record_bytes = u32_at(bytes, 0) as usize;
    if !(ENTRY_FIXED_BYTES..=RECORD_BYTES_MAX).contains(&record_bytes) {
        return Err(format!(
            "record length {record_bytes} is impossible (records are {ENTRY_FIXED_BYTES} to {RECORD_BYTES_MAX} bytes)"
        ));
    }
    if bytes.len() < record_bytes {
        return Ok(Decoded::NeedMore);
    }
    let record = &bytes[..record_bytes];
    let stored = u32_at(record, 4);
    let computed = crc32c::crc32c(&record[8..]);
    if stored != computed {
        return Err(format!(
            "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if record[9] != FORMAT_VERSION {
        return Err(format!("unknown record format version {}", record[9]));
    }
    if u32_at(record, 12) != 0 {
        return Err("reserved bytes 12..16 of the record are not zero".into());
    }
    let kind_code = u16_at(record, 10);
    let seq = u64_at(record, 16);
    let timestamp_ms = u64_at(record, 24);
    let previous_hash = hash_at(record, 32);
    let record = match record[8] {
        RECORD_TYPE_ENTRY => {
            let kind = AuditKind::from_code(kind_code)
                .ok_or_else(|| format!("unknown entry kind code {kind_code}"))?;
            if u16_at(record, 70) != 0 {
                return Err("reserved bytes 70..72 of the entry are not zero".into());
            }
            let lengths = [
                u16_at(record, 64) as usize,
                u16_at(record, 66) as usize,
                u16_at(record, 68) as usize,
                u32_at(record, 72) as usize,
            ];
            if ENTRY_FIXED_BYTES + lengths.iter().sum::<usize>() != record_bytes {
                return Err(format!(
                    "entry field lengths {lengths:?} do not add up to its length {record_bytes}"
                ));
            }
            let mut fields = [""; 4];
            let mut at = ENTRY_FIXED_BYTES;
            for (field, (length, name)) in fields
                .iter_mut()
                .zip(lengths.iter().zip(["actor", "source", "target", "detail"]))
            {
                *field = std::str::from_utf8(&record[at..at + length])
                    .map_err(|_| format!("entry {name} is not UTF-8"))?;
                at += length;
            }
            AuditRecord::Entry(EntryView {
                seq,
                timestamp_ms,
                kind,
                previous_hash,
                actor: fields[0],
                source: fields[1],
                target: fields[2],
                detail: fields[3],
            })
        }
        RECORD_TYPE_CHECKPOINT => {
            if record_bytes != CHECKPOINT_BYTES || kind_code != 0 {
                return Err(format!(
                    "checkpoint of {record_bytes} bytes with kind {kind_code} (must be {CHECKPOINT_BYTES} bytes, kind 0)"
                ));
            }
            let mut key_id = [0; KEY_ID_BYTES];
            key_id.copy_from_slice(&record[64..72]);
            let mut signature = [0; SIGNATURE_BYTES];
            signature.copy_from_slice(&record[72..136]);
            AuditRecord::Checkpoint(Checkpoint {
                seq,
                timestamp_ms,
                previous_hash,
                key_id,
                signature,
            })
        }
        other => return Err(format!("unknown record type {other}")),
    };
    Ok(Decoded::Complete {
        record,
        bytes_used: record_bytes,
    })
}

fn put_header(
    out: &mut Vec<u8>,
    record_bytes: usize,
    record_type: u8,
    kind: u16,
    seq: u64,
    timestamp_ms: u64,
    previous_hash: &ChainHash,
) {
    out.extend_from_slice(&(record_bytes as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc32c, filled in by finish_record
    out.push(record_type);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(previous_hash);
}

fn finish_record(record: &mut [u8]) {
    assert_eq!(u32_at(record, 0) as usize, record.len());
    let crc = crc32c::crc32c(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn hash_at(bytes: &[u8], at: usize) -> ChainHash {
    bytes[at..at + 32].try_into().expect("32 bytes")
}
