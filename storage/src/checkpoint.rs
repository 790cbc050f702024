//! The channel checkpoint: the state of channels whose every record was
//! deleted by retention, so that their seqs keep counting after a restart.
//!
//! Retention writes it (to a temporary file, fsync, rename, fsync of the
//! directory) *before* it deletes segments. It lists every channel whose
//! newest record lies before the new start of the log; channels with a record
//! in a remaining segment are rebuilt by the recovery scan.
//!
//! Layout (little-endian):
//!
//! ```text
//! 0   4  magic "STRC"
//! 4   1  version (1)
//! 5   3  reserved, zero
//! 8   4  crc32c of bytes 12..end
//! 12  4  reserved, zero
//! 16  8  log_start: stream position of the first byte still in the log
//! 24  8  channel_count
//! 32  .. channel_count entries: u16 name_bytes, name, u64 last_seq, u64 head_offset
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::StorageError;

const CHECKPOINT_MAGIC: [u8; 4] = *b"STRC";
const CHECKPOINT_VERSION: u8 = 1;
const CHECKPOINT_HEADER_BYTES: usize = 32;
pub(crate) const CHECKPOINT_FILE_NAME: &str = "channels.checkpoint";
const CHECKPOINT_TEMPORARY_NAME: &str = "channels.checkpoint.tmp";

/// A loaded checkpoint.
pub(crate) struct Checkpoint {
    pub log_start: u64,
    /// (name, last_seq, head_offset)
    pub channels: Vec<(Vec<u8>, u64, u64)>,
}

pub(crate) fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE_NAME)
}

pub(crate) fn encode_checkpoint<'a>(
    log_start: u64,
    channels: impl Iterator<Item = (&'a [u8], u64, u64)>,
) -> Vec<u8> {
    let mut bytes = vec![0u8; CHECKPOINT_HEADER_BYTES];
    let mut count = 0u64;
    for (name, last_seq, head_offset) in channels {
        bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&last_seq.to_le_bytes());
        bytes.extend_from_slice(&head_offset.to_le_bytes());
        count += 1;
    }
    bytes[0..4].copy_from_slice(&CHECKPOINT_MAGIC);
    bytes[4] = CHECKPOINT_VERSION;
    bytes[16..24].copy_from_slice(&log_start.to_le_bytes());
    bytes[24..32].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[12..]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Writes the checkpoint atomically and durably.
pub(crate) fn write_checkpoint(dir: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temporary = dir.join(CHECKPOINT_TEMPORARY_NAME);
    let mut file =
        File::create(&temporary).map_err(|e| StorageError::io("create", &temporary, e))?;
    file.write_all(bytes)
        .map_err(|e| StorageError::io("write to", &temporary, e))?;
    file.sync_all()
        .map_err(|e| StorageError::io("fsync", &temporary, e))?;
    let path = checkpoint_path(dir);
    fs::rename(&temporary, &path).map_err(|e| StorageError::io("rename into place", &path, e))?;
    sync_directory(dir)
}

pub(crate) fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Reads the checkpoint of a partition directory, if there is one.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, StorageError> {
    let path = checkpoint_path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    decode_checkpoint(&bytes)
        .map(Some)
        .map_err(|(position, detail)| StorageError::Corrupt {
            path,
            position,
            detail: format!("channel checkpoint: {detail}"),
        })
}

fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, (u64, &'static str)> {
    if bytes.len() < CHECKPOINT_HEADER_BYTES || bytes[0..4] != CHECKPOINT_MAGIC {
        return Err((0, "bad magic or short header"));
    }
    if bytes[4] != CHECKPOINT_VERSION {
        return Err((4, "unsupported version"));
    }
    if bytes[5..8] != [0, 0, 0] {
        return Err((5, "reserved bytes are not zero"));
    }
    let stored = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[12..]) != stored {
        return Err((8, "checksum mismatch"));
    }
    let log_start = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    let mut channels = Vec::new();
    let mut at = CHECKPOINT_HEADER_BYTES;
    for _ in 0..count {
        let Some(len) = bytes.get(at..at + 2) else {
            return Err((at as u64, "entry cut short"));
        };
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let Some(entry) = bytes.get(at + 2..at + 2 + len + 16) else {
            return Err((at as u64, "entry cut short"));
        };
        let name = entry[..len].to_vec();
        let last_seq = u64::from_le_bytes(entry[len..len + 8].try_into().expect("8 bytes"));
        let head_offset = u64::from_le_bytes(entry[len + 8..len + 16].try_into().expect("8 bytes"));
        channels.push((name, last_seq, head_offset));
        at += 2 + len + 16;
    }
    if at != bytes.len() {
        return Err((at as u64, "trailing bytes after the last entry"));
    }
    Ok(Checkpoint {
        log_start,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let channels: Vec<(&[u8], u64, u64)> = vec![(b"a", 3, 100), (b"general", 9, 4000)];
        let bytes = encode_checkpoint(8192, channels.iter().copied());
        let decoded = decode_checkpoint(&bytes).unwrap();
        assert_eq!(decoded.log_start, 8192);
        assert_eq!(decoded.channels.len(), 2);
        assert_eq!(decoded.channels[1], (b"general".to_vec(), 9, 4000));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(decode_checkpoint(&damaged).is_err(), "flip at {i}");
        }
    }
}
