//! Encryption at rest: record batches sealed with XChaCha20-Poly1305.
//!
//! An encrypted batch keeps the 64-byte header of a plain one (readable
//! without the key: lengths, positions, run, timestamps), sets flag bit 1
//! ([`FLAG_ENCRYPTED`]) and stores the key id in bytes 6..8. Its records
//! region is the ciphertext of the plain records (the same length, so every
//! record keeps its stream offset) followed by the 16-byte Poly1305 tag; the
//! CRC32C covers the stored bytes as for any batch, so `log verify` finds
//! torn or flipped bytes without the key.
//!
//! ```text
//!  0 header (64 bytes, flags = 0x02, bytes 6..8 = key id, CRC over 12..end)
//! 64 ciphertext of the records (record_bytes of each, back to back)
//!  … tag (16 bytes)                                       = batch_bytes
//! ```
//!
//! - **nonce** (24 bytes): `partition_id u32 | run u32 | base_position u64 |
//!   term u64`, little-endian. Within one data directory a key seals a
//!   stream position of a partition once per engine run; a position is
//!   written again only after a crash lost it, and that happens in a later
//!   run (the journal's run counter grows at every start), so the nonce is
//!   new. A journal replay writes the *same* bytes again (same nonce, same
//!   plaintext, same ciphertext: nothing leaks). The term keeps two leaders
//!   of one partition apart once replication writes it.
//! - **associated data**: the 64 header bytes with the CRC field (8..12)
//!   zeroed (the CRC is computed over the ciphertext, after sealing). So a
//!   header moved to another place, another key id, length or timestamp
//!   range fails authentication.
//!
//! A partition that seals its batches seals its channel checkpoints too
//! (they hold channel names and idempotency keys): the plain checkpoint
//! file is wrapped in an envelope, see `KeyRing::seal_checkpoint`.
//!
//! Keys come from a key file (`id hex-key` lines, see [`KeyRing::load`]);
//! new batches use the current key id, every key in the file can open old
//! batches.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::format::{
    batch_field, check_image, write_crc, BatchHeader, BatchView, BATCH_HEADER_BYTES,
    FLAG_ENCRYPTED, TAG_BYTES,
};
use crate::StorageError;

/// Length of a key: 256 bits.
pub const KEY_BYTES: usize = 32;
/// Length of the XChaCha20-Poly1305 nonce.
pub const NONCE_BYTES: usize = 24;

/// The keys of a data directory by key id, and the id new batches use.
pub struct KeyRing {
    keys: BTreeMap<u16, XChaCha20Poly1305>,
    current: Option<u16>,
    /// Where the keys came from, for messages.
    source: PathBuf,
}

impl fmt::Debug for KeyRing {
    /// Key ids only: a key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .field("source", &self.source)
            .finish()
    }
}

/// Why a batch could not be opened; the caller adds the file and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    /// No key with the batch's key id (or no key file at all).
    UnknownKey(u16),
    /// The tag does not match: wrong key, or bytes changed with the CRC
    /// recomputed.
    Authentication(u16),
}

impl KeyRing {
    /// A key ring from `(id, key)` pairs; `current` (if any) must be one of
    /// them. Key ids are 1 ..= 65535 (0 marks a plain batch).
    pub fn from_keys(
        keys: impl IntoIterator<Item = (u16, [u8; KEY_BYTES])>,
        current: Option<u16>,
    ) -> Result<KeyRing, StorageError> {
        let source = PathBuf::from("(keys given in code)");
        let mut ring = KeyRing {
            keys: BTreeMap::new(),
            current: None,
            source,
        };
        for (id, key) in keys {
            ring.insert(id, &key)?;
        }
        ring.set_current(current)?;
        Ok(ring)
    }

    /// Reads a key file: one key per line, `ID HEX` with a key id from 1 to
    /// 65535 and 64 hex digits (32 bytes, e.g. from `openssl rand -hex 32`);
    /// blank lines and lines starting with `#` are ignored. `current` is the
    /// id new batches are encrypted with (`None`: write plain batches, read
    /// encrypted ones). A key file readable by other users is logged as a
    /// warning.
    pub fn load(path: &Path, current: Option<u16>) -> Result<KeyRing, StorageError> {
        let text = std::fs::read_to_string(path).map_err(|e| StorageError::KeyFile {
            path: path.to_path_buf(),
            detail: format!("cannot be read ({e})"),
        })?;
        warn_if_readable_by_others(path);
        let mut ring = KeyRing {
            keys: BTreeMap::new(),
            current: None,
            source: path.to_path_buf(),
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |detail: String| StorageError::KeyFile {
                path: path.to_path_buf(),
                detail: format!("line {}: {detail}", number + 1),
            };
            let mut fields = line.split_whitespace();
            let (Some(id), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad("expected `ID HEX-KEY`".into()));
            };
            let id: u16 = id
                .parse()
                .map_err(|_| bad(format!("key id `{id}` is not a number from 1 to 65535")))?;
            let key = parse_hex_key(hex).ok_or_else(|| {
                bad(format!(
                    "the key of id {id} is not {} hex digits",
                    KEY_BYTES * 2
                ))
            })?;
            ring.insert(id, &key)?;
        }
        ring.set_current(current)?;
        Ok(ring)
    }

    fn insert(&mut self, id: u16, key: &[u8; KEY_BYTES]) -> Result<(), StorageError> {
        let bad = |detail: String| StorageError::KeyFile {
            path: self.source.clone(),
            detail,
        };
        if id == 0 {
            return Err(bad("key id 0 is reserved (it marks a plain batch)".into()));
        }
        if self.keys.contains_key(&id) {
            return Err(bad(format!("key id {id} appears twice")));
        }
        self.keys.insert(id, XChaCha20Poly1305::new(&(*key).into()));
        Ok(())
    }

    fn set_current(&mut self, current: Option<u16>) -> Result<(), StorageError> {
        if let Some(id) = current {
            if !self.keys.contains_key(&id) {
                return Err(StorageError::KeyFile {
                    path: self.source.clone(),
                    detail: format!(
                        "holds no key with id {id}, the configured current key id (it holds {:?})",
                        self.key_ids()
                    ),
                });
            }
        }
        self.current = current;
        Ok(())
    }

    /// The key id new batches are encrypted with (`None`: plain batches).
    pub fn current(&self) -> Option<u16> {
        self.current
    }

    /// The key ids the ring holds, ascending.
    pub fn key_ids(&self) -> Vec<u16> {
        self.keys.keys().copied().collect()
    }

    /// Whether `new` may replace `old` while partitions are open (a key
    /// rotation at reload): it must hold every key id `old` holds, with the
    /// same key, or batches already sealed would become unreadable. No ring
    /// at all counts as an empty one.
    pub fn check_replaces(
        old: Option<&KeyRing>,
        new: Option<&KeyRing>,
    ) -> Result<(), StorageError> {
        let Some(old) = old else {
            return Ok(());
        };
        let source = new.map_or_else(PathBuf::new, |new| new.source.clone());
        let missing: Vec<u16> = old
            .keys
            .keys()
            .copied()
            .filter(|id| new.is_none_or(|new| !new.keys.contains_key(id)))
            .collect();
        if !missing.is_empty() {
            return Err(StorageError::KeyFile {
                path: source,
                detail: format!(
                    "holds no key with id {missing:?}, which the running key ring holds (batches sealed with them must stay readable): keep every key id in the key file, only add keys"
                ),
            });
        }
        let new = new.expect("a ring with old's key ids exists when old has any");
        let changed: Vec<u16> = old
            .keys
            .iter()
            .filter(|(id, cipher)| key_check_tag(cipher) != key_check_tag(&new.keys[*id]))
            .map(|(id, _)| *id)
            .collect();
        if !changed.is_empty() {
            return Err(StorageError::KeyFile {
                path: source,
                detail: format!(
                    "holds a different key for key id {changed:?} than the running key ring (batches sealed with it must stay readable): a key id keeps its key; give a new key a new id"
                ),
            });
        }
        Ok(())
    }

    /// Encrypts a batch in place. `batch` is a whole batch as
    /// `format::finish_batch` left it with a nonzero key id: header, plain
    /// records, and [`TAG_BYTES`] of room at the end. Writes the tag and the
    /// CRC of the stored bytes.
    pub(crate) fn seal(&self, partition_id: u32, batch: &mut [u8]) {
        let header = BatchHeader::parse(batch).expect("a batch being sealed has a valid header");
        assert!(header.is_encrypted() && header.batch_bytes as usize == batch.len());
        let cipher = self
            .keys
            .get(&header.key_id)
            .expect("the current key id is in the ring (checked when it was loaded)");
        let nonce = nonce(partition_id, &header);
        let associated = associated_data(batch);
        let records_end = batch.len() - TAG_BYTES;
        let tag = cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &associated,
                &mut batch[BATCH_HEADER_BYTES..records_end],
            )
            .expect("a batch is far below the cipher's message limit");
        batch[records_end..].copy_from_slice(&tag);
        write_crc(batch);
    }

    /// Authenticates and decrypts a stored encrypted batch (CRC already
    /// checked) and returns its image: the header followed by the plain
    /// records, without the tag.
    pub(crate) fn open(&self, partition_id: u32, batch: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        let header = BatchHeader::parse(batch).expect("decode_batch checked the header");
        let cipher = self
            .keys
            .get(&header.key_id)
            .ok_or(OpenFailure::UnknownKey(header.key_id))?;
        let records_end = batch.len() - TAG_BYTES;
        let mut image = batch[..records_end].to_vec();
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&nonce(partition_id, &header)),
                &associated_data(batch),
                &mut image[BATCH_HEADER_BYTES..],
                Tag::from_slice(&batch[records_end..]),
            )
            .map_err(|_| OpenFailure::Authentication(header.key_id))?;
        Ok(image)
    }
}

/// A tag that tells two keys apart without showing either: the tag of an
/// empty message under a fixed nonce (never a batch's nonce, whose run is
/// nonzero).
fn key_check_tag(cipher: &XChaCha20Poly1305) -> Tag {
    cipher
        .encrypt_in_place_detached(
            XNonce::from_slice(&[0; NONCE_BYTES]),
            b"starling key comparison",
            &mut [],
        )
        .expect("an empty message is within the cipher's limit")
}

/// The first bytes of a sealed checkpoint file.
pub(crate) const SEALED_CHECKPOINT_MAGIC: [u8; 4] = *b"STRE";
/// The plaintext, authenticated part of a sealed checkpoint.
const SEALED_CHECKPOINT_HEADER_BYTES: usize = 56;

/// Why a sealed checkpoint could not be opened.
pub(crate) enum CheckpointOpenFailure {
    /// Damaged (torn or flipped bytes: the CRC or the layout is wrong) at
    /// this byte, like a damaged plain checkpoint.
    Damaged(u64, &'static str),
    /// The key is missing or wrong.
    Key(OpenFailure),
}

/// The plaintext fields of a sealed checkpoint header (readable without a
/// key: `log verify` needs to know where the log starts).
pub(crate) struct SealedCheckpointHeader {
    pub key_id: u16,
    pub log_start: u64,
    pub position: u64,
}

impl SealedCheckpointHeader {
    /// Parses and CRC-checks a sealed checkpoint's header.
    pub(crate) fn parse(bytes: &[u8]) -> Result<SealedCheckpointHeader, CheckpointOpenFailure> {
        let damaged = |at, detail| Err(CheckpointOpenFailure::Damaged(at, detail));
        if bytes.len() < SEALED_CHECKPOINT_HEADER_BYTES + TAG_BYTES
            || bytes[0..4] != SEALED_CHECKPOINT_MAGIC
        {
            return damaged(0, "bad magic or short sealed checkpoint");
        }
        if bytes[4] != 1 || bytes[5] != 0 || bytes[12..16] != [0; 4] {
            return damaged(4, "unsupported sealed checkpoint version or reserved bytes");
        }
        let stored = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[12..]) != stored {
            return damaged(8, "checksum mismatch");
        }
        let key_id = u16::from_le_bytes([bytes[6], bytes[7]]);
        if key_id == 0 {
            return damaged(6, "sealed checkpoint with key id 0");
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(SealedCheckpointHeader {
            key_id,
            log_start: u64_at(16),
            position: u64_at(24),
        })
    }
}

impl KeyRing {
    /// Wraps an encoded plain checkpoint (`plain`, whose bytes 16..32 are
    /// its log start and position) in the sealed envelope, with the current
    /// key and a random nonce:
    ///
    /// ```text
    ///  0  4  magic "STRE"          16  8  log_start (plaintext)
    ///  4  1  version 1             24  8  position (plaintext)
    ///  5  1  reserved 0            32 24  nonce (random)
    ///  6  2  key_id                56  …  ciphertext of the plain checkpoint
    ///  8  4  crc32c of 12..end    end-16  tag
    /// 12  4  reserved 0
    /// ```
    ///
    /// The associated data is bytes 0..56 with the CRC zeroed, followed by
    /// the partition id (u32): a checkpoint moved to another partition does
    /// not open. Checkpoints are rewritten at every roll with changing
    /// content and no position of their own, so their nonce is random
    /// (192 bits: a collision is not a concern) and stored.
    pub(crate) fn seal_checkpoint(&self, partition_id: u32, plain: &[u8]) -> Vec<u8> {
        let key_id = self.current.expect("sealing needs a current key id");
        let cipher = self
            .keys
            .get(&key_id)
            .expect("the current key is in the ring");
        let mut sealed = vec![0u8; SEALED_CHECKPOINT_HEADER_BYTES];
        sealed[0..4].copy_from_slice(&SEALED_CHECKPOINT_MAGIC);
        sealed[4] = 1;
        sealed[6..8].copy_from_slice(&key_id.to_le_bytes());
        sealed[16..32].copy_from_slice(&plain[16..32]);
        getrandom::fill(&mut sealed[32..56]).expect("the operating system gives random bytes");
        let associated = checkpoint_associated_data(&sealed, partition_id);
        let nonce = *XNonce::from_slice(&sealed[32..56]);
        sealed.extend_from_slice(plain);
        let tag = cipher
            .encrypt_in_place_detached(
                &nonce,
                &associated,
                &mut sealed[SEALED_CHECKPOINT_HEADER_BYTES..],
            )
            .expect("a checkpoint is far below the cipher's message limit");
        sealed.extend_from_slice(&tag);
        let crc = crc32c::crc32c(&sealed[12..]);
        sealed[8..12].copy_from_slice(&crc.to_le_bytes());
        sealed
    }

    /// Opens a sealed checkpoint: the plain checkpoint bytes.
    pub(crate) fn open_checkpoint(
        &self,
        partition_id: u32,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CheckpointOpenFailure> {
        let header = SealedCheckpointHeader::parse(sealed)?;
        let cipher = self
            .keys
            .get(&header.key_id)
            .ok_or(CheckpointOpenFailure::Key(OpenFailure::UnknownKey(
                header.key_id,
            )))?;
        let end = sealed.len() - TAG_BYTES;
        let mut plain = sealed[SEALED_CHECKPOINT_HEADER_BYTES..end].to_vec();
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&sealed[32..56]),
                &checkpoint_associated_data(sealed, partition_id),
                &mut plain,
                Tag::from_slice(&sealed[end..]),
            )
            .map_err(|_| CheckpointOpenFailure::Key(OpenFailure::Authentication(header.key_id)))?;
        Ok(plain)
    }
}

fn checkpoint_associated_data(sealed: &[u8], partition_id: u32) -> [u8; 60] {
    let mut associated = [0u8; 60];
    associated[..SEALED_CHECKPOINT_HEADER_BYTES]
        .copy_from_slice(&sealed[..SEALED_CHECKPOINT_HEADER_BYTES]);
    associated[8..12].fill(0);
    associated[56..60].copy_from_slice(&partition_id.to_le_bytes());
    associated
}

/// The storage error for a batch or checkpoint that could not be opened.
pub(crate) fn key_error(
    failure: OpenFailure,
    keys: Option<&KeyRing>,
    partition_id: u32,
    path: &Path,
    position: u64,
) -> StorageError {
    match failure {
        OpenFailure::UnknownKey(key_id) => StorageError::UnknownKey {
            partition_id,
            path: path.to_path_buf(),
            position,
            key_id,
            key_file: keys.map(|k| k.source.clone()),
        },
        OpenFailure::Authentication(key_id) => StorageError::Authentication {
            partition_id,
            path: path.to_path_buf(),
            position,
            key_id,
        },
    }
}

/// The nonce of a batch: `partition_id u32 | run u32 | base_position u64 |
/// term u64`, little-endian (see the module documentation for why it never
/// repeats for a key).
pub(crate) fn nonce(partition_id: u32, header: &BatchHeader) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    nonce[0..4].copy_from_slice(&partition_id.to_le_bytes());
    nonce[4..8].copy_from_slice(&header.run.to_le_bytes());
    nonce[8..16].copy_from_slice(&header.base_position.to_le_bytes());
    nonce[16..24].copy_from_slice(&header.term.to_le_bytes());
    nonce
}

/// The associated data of a batch: its header with the CRC field zeroed.
fn associated_data(batch: &[u8]) -> [u8; BATCH_HEADER_BYTES] {
    let mut header = [0u8; BATCH_HEADER_BYTES];
    header.copy_from_slice(&batch[..BATCH_HEADER_BYTES]);
    header[batch_field::CRC..batch_field::CRC + 4].fill(0);
    debug_assert_ne!(header[batch_field::FLAGS] & FLAG_ENCRYPTED, 0);
    header
}

fn parse_hex_key(hex: &str) -> Option<[u8; KEY_BYTES]> {
    let digits = hex.as_bytes();
    if digits.len() != KEY_BYTES * 2 {
        return None;
    }
    let mut key = [0u8; KEY_BYTES];
    for (i, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(key)
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "encryption key file {} is readable by other users; `chmod 600` it",
                path.display()
            );
        }
    }
}

/// Opens the stored encrypted batch at byte `position` of `path` and checks
/// its image: the error names the partition, file, position and key id.
pub(crate) fn decrypt_batch(
    keys: Option<&KeyRing>,
    partition_id: u32,
    batch: &BatchView<'_>,
    path: &Path,
    position: u64,
) -> Result<Vec<u8>, StorageError> {
    debug_assert!(batch.is_sealed());
    let failure = match keys {
        None => OpenFailure::UnknownKey(batch.header.key_id),
        Some(keys) => match keys.open(partition_id, batch.bytes) {
            Ok(image) => {
                check_image(&image).map_err(|e| StorageError::Corrupt {
                    path: path.to_path_buf(),
                    position,
                    detail: format!("decrypted batch: {e}"),
                })?;
                return Ok(image);
            }
            Err(failure) => failure,
        },
    };
    Err(key_error(failure, keys, partition_id, path, position))
}

/// The view of a batch's records: the batch itself when plain, else its
/// decrypted image (held in `image`).
pub(crate) fn readable<'a>(
    keys: Option<&KeyRing>,
    partition_id: u32,
    batch: &BatchView<'a>,
    image: &'a mut Option<Vec<u8>>,
    path: &Path,
    position: u64,
) -> Result<BatchView<'a>, StorageError> {
    if !batch.is_sealed() {
        return Ok(*batch);
    }
    let opened = image.insert(decrypt_batch(keys, partition_id, batch, path, position)?);
    Ok(check_image(opened).expect("decrypt_batch checked the image"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_ring_keeps_every_key() {
        let ring = |keys: &[(u16, u8)], current| {
            KeyRing::from_keys(
                keys.iter().map(|&(id, byte)| (id, [byte; KEY_BYTES])),
                current,
            )
            .unwrap()
        };
        let running = ring(&[(1, 1)], Some(1));
        let check = |new: Option<&KeyRing>| KeyRing::check_replaces(Some(&running), new);
        assert!(check(Some(&ring(&[(1, 1), (2, 2)], Some(2)))).is_ok());
        assert!(check(Some(&ring(&[(1, 1)], None))).is_ok());
        let missing = check(Some(&ring(&[(2, 2)], Some(2)))).unwrap_err();
        assert!(
            missing.to_string().contains("no key with id [1]"),
            "{missing}"
        );
        let none = check(None).unwrap_err();
        assert!(none.to_string().contains("no key with id [1]"), "{none}");
        let changed = check(Some(&ring(&[(1, 9), (2, 2)], Some(2)))).unwrap_err();
        assert!(
            changed.to_string().contains("different key for key id [1]"),
            "{changed}"
        );
        // A server without a ring may get one.
        assert!(KeyRing::check_replaces(None, Some(&running)).is_ok());
    }

    #[test]
    fn key_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let key1 = "00".repeat(32);
        let key2 = "ab".repeat(32);
        std::fs::write(&path, format!("# keys\n\n1 {key1}\n  2 {key2}  \n")).unwrap();
        let ring = KeyRing::load(&path, Some(2)).unwrap();
        assert_eq!(ring.key_ids(), vec![1, 2]);
        assert_eq!(ring.current(), Some(2));
        let message = KeyRing::load(&path, Some(3)).unwrap_err().to_string();
        assert!(message.contains("no key with id 3"), "{message}");
        for (text, expected) in [
            (format!("0 {key1}\n"), "key id 0 is reserved"),
            (format!("1 {key1}\n1 {key2}\n"), "appears twice"),
            (
                "1 abcd\n".to_string(),
                "line 1: the key of id 1 is not 64 hex digits",
            ),
            (format!("x {key1}\n"), "is not a number"),
            (format!("1 {key1} extra\n"), "expected `ID HEX-KEY`"),
        ] {
            std::fs::write(&path, text).unwrap();
            let message = KeyRing::load(&path, None).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
        let debug = format!("{ring:?}");
        assert!(!debug.contains("abab"), "{debug}");
    }
}

#[cfg(test)]
mod pinned {
    use super::*;
    use crate::format::{
        begin_batch, decode_batch, finish_batch, BatchDecode, BatchMeta, RecordFields, NO_OFFSET,
    };

    /// The key of the pinned batch: bytes 0x00, 0x01, …, 0x1f.
    fn test_key() -> [u8; KEY_BYTES] {
        std::array::from_fn(|i| i as u8)
    }

    /// One record of channel `general` (as in the plain fixture), sealed
    /// with key id 1 in partition 7, run 3, at stream position 4096.
    fn sealed_batch(ring: &KeyRing) -> Vec<u8> {
        let mut buffer = Vec::new();
        let start = begin_batch(&mut buffer);
        RecordFields {
            seq: 1,
            previous_offset: NO_OFFSET,
            skip_offset: NO_OFFSET,
            timestamp_ms: 1_700_000_000_000,
            relation: 0,
            kind: 1,
            channel: b"general",
            sender: b"alice",
            client_message_id: b"m1",
            headers: b"",
            body: b"hello",
        }
        .encode(64, &mut buffer);
        buffer.resize(buffer.len() + TAG_BYTES, 0);
        let meta = BatchMeta {
            term: 0,
            index: 0,
            base_position: 4096,
            record_count: 1,
            run: 3,
            timestamp_min_ms: 1_700_000_000_000,
            timestamp_max_ms: 1_700_000_000_000,
            key_id: 1,
        };
        finish_batch(&mut buffer[start..], &meta);
        ring.seal(7, &mut buffer);
        buffer
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn encrypted_batch_bytes_are_pinned() {
        let ring = KeyRing::from_keys([(1, test_key())], Some(1)).unwrap();
        let batch = sealed_batch(&ring);
        assert_eq!(batch.len(), 64 + 83 + TAG_BYTES);
        let header = BatchHeader::parse(&batch).unwrap();
        assert_eq!(
            hex(&nonce(7, &header)),
            "07000000030000000010000000000000\
             0000000000000000"
        );
        // Also checked against an independent XChaCha20-Poly1305 (HChaCha20
        // + the IETF ChaCha20-Poly1305 of Python's `cryptography`).
        assert_eq!(hex(&batch), PINNED_HEX);
        let BatchDecode::Complete(view) = decode_batch(&batch).unwrap() else {
            panic!("incomplete")
        };
        assert!(view.is_sealed());
        let image = ring.open(7, &batch).unwrap();
        let records: Vec<_> = check_image(&image).unwrap().records().collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1.body, b"hello");
        assert_eq!(records[0].1.channel, b"general");
    }

    const PINNED_HEX: &str = concat!(
        // magic, version, flags = encrypted, key id 1, crc32c, batch_bytes = 163
        "5354524c",
        "01",
        "02",
        "0100",
        "b2876797",
        "a3000000",
        // term 0, index 0
        "0000000000000000",
        "0000000000000000",
        // base_position 4096, record_count 1, run 3
        "0010000000000000",
        "01000000",
        "03000000",
        // timestamp_min_ms, timestamp_max_ms
        "0068e5cf8b010000",
        "0068e5cf8b010000",
        // 83 bytes of ciphertext: the record
        "f53e0622ae5af31d74e92572de5b8ee1a8de496ca3599427fa7c6ed674210eac",
        "93abfc66b8de4ade8d53777f53cf5878f0b0389cc8889a5ad2b25b7e65afc37b",
        "a183eca7f39c60fada6467f60111af538aa14b",
        // the Poly1305 tag
        "cd230948d978aa15ff2f2da29d891edd",
    );

    #[test]
    fn every_changed_byte_fails_authentication_or_the_header_check() {
        let ring = KeyRing::from_keys([(1, test_key())], Some(1)).unwrap();
        let batch = sealed_batch(&ring);
        for at in 0..batch.len() {
            if (batch_field::CRC..batch_field::CRC + 4).contains(&at) {
                continue; // not authenticated: the CRC checks itself
            }
            let mut changed = batch.clone();
            changed[at] ^= 0x01;
            // As an attacker would: with the CRC recomputed.
            write_crc(&mut changed);
            let refused = match BatchHeader::parse(&changed) {
                Err(_) => true,
                Ok(header) if header.batch_bytes as usize != changed.len() => true,
                Ok(_) => ring.open(7, &changed).is_err(),
            };
            assert!(refused, "a change of byte {at} went unnoticed");
        }
        // The same bytes in another partition (another nonce) do not open.
        assert_eq!(ring.open(8, &batch), Err(OpenFailure::Authentication(1)));
        let other = KeyRing::from_keys([(1, [9u8; KEY_BYTES])], None).unwrap();
        assert_eq!(other.open(7, &batch), Err(OpenFailure::Authentication(1)));
        let without = KeyRing::from_keys([(2, test_key())], None).unwrap();
        assert_eq!(without.open(7, &batch), Err(OpenFailure::UnknownKey(1)));
    }
}

#[cfg(test)]
mod sealed_checkpoint {
    use super::*;

    fn failure(result: Result<Vec<u8>, CheckpointOpenFailure>) -> Option<OpenFailure> {
        match result {
            Err(CheckpointOpenFailure::Key(failure)) => Some(failure),
            _ => None,
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let ring = KeyRing::from_keys([(4, [1u8; KEY_BYTES])], Some(4)).unwrap();
        // A stand-in for an encoded checkpoint: bytes 16..32 are its log
        // start and position.
        let mut plain = vec![0u8; 100];
        plain[16..24].copy_from_slice(&8192u64.to_le_bytes());
        plain[24..32].copy_from_slice(&9000u64.to_le_bytes());
        plain[64..].copy_from_slice(&[b'g'; 36]);
        let sealed = ring.seal_checkpoint(3, &plain);
        assert_eq!(sealed.len(), 56 + 100 + TAG_BYTES);
        assert!(!sealed.windows(36).any(|w| w == [b'g'; 36]));
        let header = SealedCheckpointHeader::parse(&sealed).ok().unwrap();
        assert_eq!(
            (header.key_id, header.log_start, header.position),
            (4, 8192, 9000)
        );
        assert_eq!(ring.open_checkpoint(3, &sealed).ok().unwrap(), plain);
        // Random nonces: sealing again gives other bytes.
        assert_ne!(ring.seal_checkpoint(3, &plain), sealed);

        assert_eq!(
            failure(ring.open_checkpoint(2, &sealed)),
            Some(OpenFailure::Authentication(4))
        );
        let other = KeyRing::from_keys([(4, [2u8; KEY_BYTES])], None).unwrap();
        assert_eq!(
            failure(other.open_checkpoint(3, &sealed)),
            Some(OpenFailure::Authentication(4))
        );
        let without = KeyRing::from_keys([(5, [1u8; KEY_BYTES])], None).unwrap();
        assert_eq!(
            failure(without.open_checkpoint(3, &sealed)),
            Some(OpenFailure::UnknownKey(4))
        );
        for at in [20, 40, 60, sealed.len() - 1] {
            let mut changed = sealed.clone();
            changed[at] ^= 0x10;
            assert!(matches!(
                ring.open_checkpoint(3, &changed),
                Err(CheckpointOpenFailure::Damaged(8, _))
            ));
            let crc = crc32c::crc32c(&changed[12..]);
            changed[8..12].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                failure(ring.open_checkpoint(3, &changed)),
                Some(OpenFailure::Authentication(4)),
                "byte {at}"
            );
        }
    }
}
