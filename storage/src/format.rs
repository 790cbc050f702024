//! The on-disk batch and record format: a pure codec, no I/O.
//!
//! The byte-by-byte layout is drawn in the crate documentation and in
//! `docs/STORAGE-FORMAT.md`. All integers are fixed-width little-endian.
//!
//! [`decode_batch`] takes the bytes that start at a batch header and answers
//! *complete* (the batch, whose length says how many bytes it used), *need
//! more* (the input ends inside the batch), or an error. Running out of input
//! is not an error. A complete batch has a correct CRC32C and a consistent
//! record structure, so iterating its records cannot fail.

use std::fmt;

/// The first four bytes of every batch.
pub const BATCH_MAGIC: [u8; 4] = *b"STRL";
/// The batch format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 64;
/// Size of the fixed record header (before the variable fields).
pub const RECORD_HEADER_BYTES: usize = 64;
/// Stands for "no record" in a back-pointer or skip pointer.
pub const NO_OFFSET: u64 = u64::MAX;
/// Batch flag bit 1: the records region is ciphertext followed by a
/// [`TAG_BYTES`] authentication tag, and bytes 6..8 hold the key id (see
/// `crate::encryption`).
pub const FLAG_ENCRYPTED: u8 = 0b10;
/// The flags this code knows.
const FLAGS_KNOWN: u8 = FLAG_ENCRYPTED;
/// Length of the Poly1305 tag at the end of an encrypted batch.
pub const TAG_BYTES: usize = 16;

/// Longest channel name, in bytes.
pub const CHANNEL_BYTES_MAX: usize = 1024;
/// Longest sender identifier, in bytes.
pub const SENDER_BYTES_MAX: usize = 1024;
/// Longest client message id, in bytes.
pub const CLIENT_MESSAGE_ID_BYTES_MAX: usize = 256;
/// Largest headers blob, in bytes.
pub const HEADERS_BYTES_MAX: usize = 64 * 1024;
/// The highest value `record_body_bytes_max` may be configured to. It keeps
/// every record (and so every one-record batch) far below the 4 GiB that the
/// u32 length fields can express.
pub const RECORD_BODY_BYTES_LIMIT: u32 = 256 * 1024 * 1024;
/// A batch that has reached this size is closed and the next record starts a
/// new batch (still written by the same flush). 4 MiB keeps replication
/// entries and the cost of verifying one batch on a read small.
pub const BATCH_BYTES_SOFT_MAX: usize = 4 * 1024 * 1024;

/// Byte positions of the batch header fields.
pub(crate) mod batch_field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 5;
    /// Reserved (zero) in a plain batch; the key id in an encrypted one.
    pub const KEY_ID: usize = 6;
    pub const CRC: usize = 8;
    /// The CRC covers everything from here to the end of the batch.
    pub const CRC_START: usize = 12;
    pub const BATCH_BYTES: usize = 12;
    pub const TERM: usize = 16;
    pub const INDEX: usize = 24;
    pub const BASE_POSITION: usize = 32;
    pub const RECORD_COUNT: usize = 40;
    pub const RUN: usize = 44;
    pub const TIMESTAMP_MIN: usize = 48;
    pub const TIMESTAMP_MAX: usize = 56;
}

/// Byte positions of the record header fields.
mod record_field {
    pub const RECORD_BYTES: usize = 0;
    pub const BATCH_DISTANCE: usize = 4;
    pub const SEQ: usize = 8;
    pub const PREVIOUS_OFFSET: usize = 16;
    pub const SKIP_OFFSET: usize = 24;
    pub const TIMESTAMP: usize = 32;
    pub const RELATION: usize = 40;
    pub const KIND: usize = 48;
    pub const FLAGS: usize = 49;
    pub const CHANNEL_BYTES: usize = 50;
    pub const SENDER_BYTES: usize = 52;
    pub const CLIENT_MESSAGE_ID_BYTES: usize = 54;
    pub const HEADERS_BYTES: usize = 56;
    pub const BODY_BYTES: usize = 60;
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Why a batch could not be decoded. Positions are relative to the start of
/// the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The first four bytes are not [`BATCH_MAGIC`].
    BadMagic,
    /// The batch is marked encrypted but its key id is 0.
    NoKeyId,
    /// A format version this code does not know.
    UnsupportedVersion(u8),
    /// Flags (compression, encryption) this code does not support.
    UnsupportedFlags(u8),
    /// A reserved field is not zero.
    ReservedNotZero,
    /// The batch length field is smaller than a batch header.
    BatchTooShort(u32),
    /// The stored CRC32C does not match the bytes.
    ChecksumMismatch {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The records do not add up to the batch (a length, count or distance is
    /// wrong) although the checksum matched: a writer bug, not bit rot.
    BadRecord {
        /// Position of the bad record inside the batch.
        position: usize,
        /// What is wrong.
        detail: &'static str,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::BadMagic => write!(f, "bad batch magic (not a starling batch)"),
            FormatError::UnsupportedVersion(v) => write!(f, "unsupported batch format version {v}"),
            FormatError::UnsupportedFlags(v) => write!(f, "unsupported batch flags {v:#04x}"),
            FormatError::NoKeyId => write!(f, "encrypted batch with key id 0"),
            FormatError::ReservedNotZero => write!(f, "reserved batch header field is not zero"),
            FormatError::BatchTooShort(n) => {
                write!(f, "batch length {n} is shorter than a batch header")
            }
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored crc32c {stored:#010x}, computed {computed:#010x})"
            ),
            FormatError::BadRecord { position, detail } => {
                write!(f, "bad record at byte {position} of the batch: {detail}")
            }
        }
    }
}

/// The fixed header of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Flags: bit 1 ([`FLAG_ENCRYPTED`]) marks an encrypted batch; bit 0 is
    /// reserved for compression.
    pub flags: u8,
    /// The id of the key that encrypted the batch (0 for a plain batch).
    pub key_id: u16,
    /// CRC32C of every byte after the CRC field.
    pub crc: u32,
    /// Total length of the batch including this header.
    pub batch_bytes: u32,
    /// Raft term (0 until replication exists).
    pub term: u64,
    /// Raft index (0 until replication exists).
    pub index: u64,
    /// Partition-stream byte position of the first header byte.
    pub base_position: u64,
    /// Number of records.
    pub record_count: u32,
    /// The engine run that wrote the batch (the journal's run counter; 0 for
    /// batches written without a journal). Recovery uses it to tell a batch
    /// of the last run from a stale one left beyond a crash point.
    pub run: u32,
    /// Smallest record timestamp.
    pub timestamp_min_ms: u64,
    /// Largest record timestamp.
    pub timestamp_max_ms: u64,
}

impl BatchHeader {
    /// Whether the records region is ciphertext and tag.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// Parses a batch header without checking the CRC. `bytes` must hold at
    /// least [`BATCH_HEADER_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        assert!(bytes.len() >= BATCH_HEADER_BYTES);
        if bytes[batch_field::MAGIC..batch_field::MAGIC + 4] != BATCH_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = bytes[batch_field::VERSION];
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = bytes[batch_field::FLAGS];
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FormatError::UnsupportedFlags(flags));
        }
        let key_id = u16_at(bytes, batch_field::KEY_ID);
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        if !encrypted && key_id != 0 {
            return Err(FormatError::ReservedNotZero);
        }
        if encrypted && key_id == 0 {
            return Err(FormatError::NoKeyId);
        }
        let batch_bytes = u32_at(bytes, batch_field::BATCH_BYTES);
        let header_bytes = BATCH_HEADER_BYTES + if encrypted { TAG_BYTES } else { 0 };
        if (batch_bytes as usize) < header_bytes {
            return Err(FormatError::BatchTooShort(batch_bytes));
        }
        Ok(BatchHeader {
            flags,
            key_id,
            crc: u32_at(bytes, batch_field::CRC),
            batch_bytes,
            term: u64_at(bytes, batch_field::TERM),
            index: u64_at(bytes, batch_field::INDEX),
            base_position: u64_at(bytes, batch_field::BASE_POSITION),
            record_count: u32_at(bytes, batch_field::RECORD_COUNT),
            run: u32_at(bytes, batch_field::RUN),
            timestamp_min_ms: u64_at(bytes, batch_field::TIMESTAMP_MIN),
            timestamp_max_ms: u64_at(bytes, batch_field::TIMESTAMP_MAX),
        })
    }
}

/// The outcome of [`decode_batch`] when the bytes are not wrong.
#[derive(Debug)]
pub enum BatchDecode<'a> {
    /// A whole, checksummed, well-formed batch; it used
    /// `batch.header.batch_bytes` bytes of the input.
    Complete(BatchView<'a>),
    /// The input ends inside the batch; `batch_bytes` is how long the whole
    /// batch is, if the header was complete.
    Incomplete {
        /// The full length of the batch, once the header is available.
        batch_bytes: Option<u32>,
    },
}

/// A decoded, verified batch borrowing its bytes.
///
/// For an encrypted batch, [`decode_batch`] checks the header and the CRC of
/// the stored bytes only: its records are ciphertext. The view of its
/// decrypted *image* (the header followed by the plaintext records, without
/// the tag, as `crate::encryption` makes it) is the one whose records can be
/// read.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    /// The parsed header.
    pub header: BatchHeader,
    /// The whole batch, header included (for an encrypted batch: as stored,
    /// or its decrypted image).
    pub bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Whether this is an encrypted batch as stored (ciphertext and tag),
    /// whose records cannot be read before it is decrypted.
    pub fn is_sealed(&self) -> bool {
        self.header.is_encrypted() && self.bytes.len() == self.header.batch_bytes as usize
    }

    /// The records of the batch, in order, with their positions inside the
    /// batch. Panics on a sealed batch (decrypt it first).
    pub fn records(&self) -> RecordIter<'a> {
        assert!(
            !self.is_sealed(),
            "the records of an encrypted batch are read from its decrypted image"
        );
        RecordIter {
            bytes: self.bytes,
            position: BATCH_HEADER_BYTES,
        }
    }
}

/// Iterator over the records of a verified batch.
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = (usize, RecordView<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.bytes.len() {
            return None;
        }
        let position = self.position;
        let record = RecordView::parse(&self.bytes[position..])
            .expect("records of a decoded batch were checked by decode_batch");
        self.position += record.record_bytes as usize;
        Some((position, record))
    }
}

/// Decodes the batch that starts at `bytes[0]`: checks magic, version, flags,
/// length, CRC32C and that the records fill the batch exactly (for an
/// encrypted batch, whose records are ciphertext, that is checked on the
/// decrypted image by [`check_image`]).
pub fn decode_batch(bytes: &[u8]) -> Result<BatchDecode<'_>, FormatError> {
    if bytes.len() >= 4 && bytes[..4] != BATCH_MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < BATCH_HEADER_BYTES {
        return Ok(BatchDecode::Incomplete { batch_bytes: None });
    }
    let header = BatchHeader::parse(bytes)?;
    let batch_bytes = header.batch_bytes as usize;
    if bytes.len() < batch_bytes {
        return Ok(BatchDecode::Incomplete {
            batch_bytes: Some(header.batch_bytes),
        });
    }
    let bytes = &bytes[..batch_bytes];
    let computed = crc32c::crc32c(&bytes[batch_field::CRC_START..]);
    if computed != header.crc {
        return Err(FormatError::ChecksumMismatch {
            stored: header.crc,
            computed,
        });
    }
    if !header.is_encrypted() {
        check_records(&header, bytes)?;
    }
    Ok(BatchDecode::Complete(BatchView { header, bytes }))
}

/// Checks the decrypted image of an encrypted batch (its stored header
/// followed by the plaintext records, [`TAG_BYTES`] shorter than the stored
/// batch): that the records fill it exactly and agree with the header.
pub fn check_image(image: &[u8]) -> Result<BatchView<'_>, FormatError> {
    if image.len() < BATCH_HEADER_BYTES {
        return Err(FormatError::BatchTooShort(image.len() as u32));
    }
    let header = BatchHeader::parse(image)?;
    if !header.is_encrypted() || header.batch_bytes as usize != image.len() + TAG_BYTES {
        return Err(FormatError::BadRecord {
            position: 0,
            detail: "the decrypted image does not match its header",
        });
    }
    check_records(&header, image)?;
    Ok(BatchView {
        header,
        bytes: image,
    })
}

/// Checks that the records of a batch fill it exactly and agree with the
/// header.
fn check_records(header: &BatchHeader, bytes: &[u8]) -> Result<(), FormatError> {
    let mut position = BATCH_HEADER_BYTES;
    let mut count = 0u32;
    while position < bytes.len() {
        let bad = |detail| FormatError::BadRecord { position, detail };
        let record = RecordView::parse(&bytes[position..]).map_err(bad)?;
        if record.batch_distance as usize != position {
            return Err(bad("distance to the batch header is wrong"));
        }
        if record.timestamp_ms < header.timestamp_min_ms
            || record.timestamp_ms > header.timestamp_max_ms
        {
            return Err(bad("timestamp outside the batch's min/max"));
        }
        let offset = header.base_position + position as u64;
        if (record.previous_offset != NO_OFFSET && record.previous_offset >= offset)
            || (record.skip_offset != NO_OFFSET && record.skip_offset >= offset)
        {
            return Err(bad("back-pointer does not point backwards"));
        }
        position += record.record_bytes as usize;
        count += 1;
    }
    if count != header.record_count {
        return Err(FormatError::BadRecord {
            position: BATCH_HEADER_BYTES,
            detail: "record count does not match the batch header",
        });
    }
    Ok(())
}

/// A record inside a batch, borrowing its variable fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Length of the record including its header.
    pub record_bytes: u32,
    /// Bytes from the batch header to this record.
    pub batch_distance: u32,
    /// Channel sequence number (1, 2, 3, ...).
    pub seq: u64,
    /// Offset of the channel's previous record, or [`NO_OFFSET`].
    pub previous_offset: u64,
    /// Offset of the channel's record with seq `seq - lowbit(seq)`, or
    /// [`NO_OFFSET`].
    pub skip_offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The seq this record edits, deletes, reacts or replies to (0 = none).
    pub relation: u64,
    /// Record kind (message, edit, ...), defined by the broker.
    pub kind: u8,
    /// Channel name.
    pub channel: &'a [u8],
    /// Sender.
    pub sender: &'a [u8],
    /// Client message id (for de-duplication).
    pub client_message_id: &'a [u8],
    /// Small headers blob.
    pub headers: &'a [u8],
    /// Body.
    pub body: &'a [u8],
}

/// The fixed part of a record, enough to follow pointers without touching the
/// variable fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHead {
    pub record_bytes: u32,
    pub batch_distance: u32,
    pub seq: u64,
    pub previous_offset: u64,
    pub skip_offset: u64,
    pub channel_bytes: u16,
}

impl RecordHead {
    /// Parses the fixed record header; `bytes` must hold at least
    /// [`RECORD_HEADER_BYTES`].
    pub(crate) fn parse(bytes: &[u8]) -> RecordHead {
        RecordHead {
            record_bytes: u32_at(bytes, record_field::RECORD_BYTES),
            batch_distance: u32_at(bytes, record_field::BATCH_DISTANCE),
            seq: u64_at(bytes, record_field::SEQ),
            previous_offset: u64_at(bytes, record_field::PREVIOUS_OFFSET),
            skip_offset: u64_at(bytes, record_field::SKIP_OFFSET),
            channel_bytes: u16_at(bytes, record_field::CHANNEL_BYTES),
        }
    }
}

impl<'a> RecordView<'a> {
    /// Parses one record from the start of `bytes` (which may extend past
    /// it), checking that its field lengths add up.
    pub fn parse(bytes: &'a [u8]) -> Result<RecordView<'a>, &'static str> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return Err("record header cut short");
        }
        let record_bytes = u32_at(bytes, record_field::RECORD_BYTES);
        let channel_bytes = u16_at(bytes, record_field::CHANNEL_BYTES) as usize;
        let sender_bytes = u16_at(bytes, record_field::SENDER_BYTES) as usize;
        let client_message_id_bytes = u16_at(bytes, record_field::CLIENT_MESSAGE_ID_BYTES) as usize;
        let headers_bytes = u32_at(bytes, record_field::HEADERS_BYTES) as usize;
        let body_bytes = u32_at(bytes, record_field::BODY_BYTES) as usize;
        let total = RECORD_HEADER_BYTES
            + channel_bytes
            + sender_bytes
            + client_message_id_bytes
            + headers_bytes
            + body_bytes;
        if total != record_bytes as usize {
            return Err("field lengths do not add up to the record length");
        }
        if total > bytes.len() {
            return Err("record runs past the end of its batch");
        }
        if bytes[record_field::FLAGS] != 0 {
            return Err("reserved record flags are not zero");
        }
        let seq = u64_at(bytes, record_field::SEQ);
        if seq == 0 {
            return Err("seq is 0");
        }
        if channel_bytes == 0 {
            return Err("channel name is empty");
        }
        let mut at = RECORD_HEADER_BYTES;
        let mut take = |n: usize| {
            let field = &bytes[at..at + n];
            at += n;
            field
        };
        let channel = take(channel_bytes);
        let sender = take(sender_bytes);
        let client_message_id = take(client_message_id_bytes);
        let headers = take(headers_bytes);
        let body = take(body_bytes);
        Ok(RecordView {
            record_bytes,
            batch_distance: u32_at(bytes, record_field::BATCH_DISTANCE),
            seq,
            previous_offset: u64_at(bytes, record_field::PREVIOUS_OFFSET),
            skip_offset: u64_at(bytes, record_field::SKIP_OFFSET),
            timestamp_ms: u64_at(bytes, record_field::TIMESTAMP),
            relation: u64_at(bytes, record_field::RELATION),
            kind: bytes[record_field::KIND],
            channel,
            sender,
            client_message_id,
            headers,
            body,
        })
    }
}

/// The fields of a record to encode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordFields<'a> {
    pub seq: u64,
    pub previous_offset: u64,
    pub skip_offset: u64,
    pub timestamp_ms: u64,
    pub relation: u64,
    pub kind: u8,
    pub channel: &'a [u8],
    pub sender: &'a [u8],
    pub client_message_id: &'a [u8],
    pub headers: &'a [u8],
    pub body: &'a [u8],
}

impl RecordFields<'_> {
    /// The encoded size. The caller has checked every field against its
    /// limit, so the sum fits a u32.
    pub(crate) fn encoded_bytes(&self) -> usize {
        RECORD_HEADER_BYTES
            + self.channel.len()
            + self.sender.len()
            + self.client_message_id.len()
            + self.headers.len()
            + self.body.len()
    }

    /// Appends the record to `buffer`; `batch_distance` is the distance from
    /// the batch header.
    pub(crate) fn encode(&self, batch_distance: u32, buffer: &mut Vec<u8>) {
        let record_bytes = self.encoded_bytes();
        let start = buffer.len();
        buffer.resize(start + RECORD_HEADER_BYTES, 0);
        let head = &mut buffer[start..];
        put_u32(
            head,
            record_field::RECORD_BYTES,
            u32::try_from(record_bytes).expect("record fits u32"),
        );
        put_u32(head, record_field::BATCH_DISTANCE, batch_distance);
        put_u64(head, record_field::SEQ, self.seq);
        put_u64(head, record_field::PREVIOUS_OFFSET, self.previous_offset);
        put_u64(head, record_field::SKIP_OFFSET, self.skip_offset);
        put_u64(head, record_field::TIMESTAMP, self.timestamp_ms);
        put_u64(head, record_field::RELATION, self.relation);
        head[record_field::KIND] = self.kind;
        head[record_field::FLAGS] = 0;
        put_u16(head, record_field::CHANNEL_BYTES, self.channel.len() as u16);
        put_u16(head, record_field::SENDER_BYTES, self.sender.len() as u16);
        put_u16(
            head,
            record_field::CLIENT_MESSAGE_ID_BYTES,
            self.client_message_id.len() as u16,
        );
        put_u32(head, record_field::HEADERS_BYTES, self.headers.len() as u32);
        put_u32(head, record_field::BODY_BYTES, self.body.len() as u32);
        buffer.extend_from_slice(self.channel);
        buffer.extend_from_slice(self.sender);
        buffer.extend_from_slice(self.client_message_id);
        buffer.extend_from_slice(self.headers);
        buffer.extend_from_slice(self.body);
        debug_assert_eq!(buffer.len() - start, record_bytes);
    }
}

/// Reserves room for a batch header at the end of `buffer`; returns where the
/// batch starts. Fill it with [`finish_batch`] once its records are in.
pub(crate) fn begin_batch(buffer: &mut Vec<u8>) -> usize {
    let start = buffer.len();
    buffer.resize(start + BATCH_HEADER_BYTES, 0);
    start
}

/// What [`finish_batch`] writes into the header besides lengths and CRC.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchMeta {
    pub term: u64,
    pub index: u64,
    pub base_position: u64,
    pub record_count: u32,
    pub run: u32,
    pub timestamp_min_ms: u64,
    pub timestamp_max_ms: u64,
    /// 0: a plain batch. Otherwise the batch is encrypted with this key id:
    /// its last [`TAG_BYTES`] bytes are the room for the tag, and
    /// `crate::encryption` seals it (the CRC written here is replaced then).
    pub key_id: u16,
}

/// Fills in the header of the batch occupying `batch` (header + records) and
/// computes its CRC.
pub(crate) fn finish_batch(batch: &mut [u8], meta: &BatchMeta) {
    let batch_bytes = u32::try_from(batch.len()).expect("a batch is smaller than 4 GiB");
    batch[batch_field::MAGIC..batch_field::MAGIC + 4].copy_from_slice(&BATCH_MAGIC);
    batch[batch_field::VERSION] = FORMAT_VERSION;
    batch[batch_field::FLAGS] = if meta.key_id == 0 { 0 } else { FLAG_ENCRYPTED };
    put_u16(batch, batch_field::KEY_ID, meta.key_id);
    put_u32(batch, batch_field::BATCH_BYTES, batch_bytes);
    put_u64(batch, batch_field::TERM, meta.term);
    put_u64(batch, batch_field::INDEX, meta.index);
    put_u64(batch, batch_field::BASE_POSITION, meta.base_position);
    put_u32(batch, batch_field::RECORD_COUNT, meta.record_count);
    put_u32(batch, batch_field::RUN, meta.run);
    put_u64(batch, batch_field::TIMESTAMP_MIN, meta.timestamp_min_ms);
    put_u64(batch, batch_field::TIMESTAMP_MAX, meta.timestamp_max_ms);
    write_crc(batch);
}

/// Computes and stores the CRC of a whole batch (after sealing, over the
/// stored ciphertext).
pub(crate) fn write_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[batch_field::CRC_START..]);
    put_u32(batch, batch_field::CRC, crc);
}

/// The skip-pointer target of `seq`: `seq - lowbit(seq)` (0 = none).
pub(crate) fn skip_target(seq: u64) -> u64 {
    seq & (seq - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, channel: &'static [u8], body: &'static [u8]) -> RecordFields<'static> {
        RecordFields {
            seq,
            previous_offset: NO_OFFSET,
            skip_offset: NO_OFFSET,
            timestamp_ms: 1_700_000_000_000 + seq,
            relation: 0,
            kind: 1,
            channel,
            sender: b"alice",
            client_message_id: b"c1",
            headers: b"",
            body,
        }
    }

    fn batch_of(records: &[RecordFields<'_>]) -> Vec<u8> {
        let mut buffer = Vec::new();
        let start = begin_batch(&mut buffer);
        for r in records {
            let distance = (buffer.len() - start) as u32;
            r.encode(distance, &mut buffer);
        }
        let min = records.iter().map(|r| r.timestamp_ms).min().unwrap();
        let max = records.iter().map(|r| r.timestamp_ms).max().unwrap();
        let meta = BatchMeta {
            term: 0,
            index: 0,
            base_position: 0,
            record_count: records.len() as u32,
            run: 0,
            timestamp_min_ms: min,
            timestamp_max_ms: max,
            key_id: 0,
        };
        finish_batch(&mut buffer[start..], &meta);
        buffer
    }

    #[test]
    fn round_trip() {
        let bytes = batch_of(&[
            sample(1, b"general", b"hello"),
            sample(1, b"random", b"world!"),
        ]);
        let BatchDecode::Complete(batch) = decode_batch(&bytes).unwrap() else {
            panic!("incomplete")
        };
        let records: Vec<_> = batch.records().collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].1.channel, b"general");
        assert_eq!(records[1].1.body, b"world!");
        assert_eq!(records[1].1.batch_distance as usize, records[1].0);
    }

    #[test]
    fn every_prefix_is_incomplete_and_never_an_error() {
        let bytes = batch_of(&[
            sample(1, b"general", b"hello"),
            sample(2, b"general", b"again"),
        ]);
        for cut in 0..bytes.len() {
            match decode_batch(&bytes[..cut]) {
                Ok(BatchDecode::Incomplete { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = batch_of(&[sample(1, b"general", b"hello")]);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match decode_batch(&damaged) {
                Err(_) | Ok(BatchDecode::Incomplete { .. }) => {}
                Ok(BatchDecode::Complete(_)) => panic!("flipped bit {bit} not detected"),
            }
        }
    }

    #[test]
    fn skip_targets_clear_the_lowest_bit() {
        assert_eq!(skip_target(1), 0);
        assert_eq!(skip_target(8), 0);
        assert_eq!(skip_target(12), 8);
        assert_eq!(skip_target(11), 10);
    }
}
