//! Reads of a partition: one channel's history by following back-pointers and
//! skip pointers, and a time-bounded scan for the broker's start.
//!
//! Reads see only flushed records. Every record returned has had the CRC of
//! its batch checked (cached for the last few batches); the headers of the
//! records merely hopped over are checked for the expected seq only, which
//! keeps a search at O(log² n) small reads.
//!
//! With encryption at rest (a key ring), a record's header may be
//! ciphertext, so the batch holding an offset is found through the
//! segment's batch index (the batch starts, found by walking the plain batch
//! headers once) and an encrypted batch is read from its decrypted image
//! (cached for the last few batches). Plain batches are still read straight
//! from the map.

use bytes::Bytes;

use crate::encryption::decrypt_batch;
use crate::format::{
    decode_batch, skip_target, BatchDecode, BatchHeader, BatchView, RecordHead, RecordView,
    BATCH_HEADER_BYTES, NO_OFFSET, RECORD_HEADER_BYTES,
};
use crate::segment::Segment;
use crate::{Partition, ReadPage, Record, StorageError};

/// A record of a channel: its seq and offset.
#[derive(Clone, Copy, Debug)]
struct Position {
    seq: u64,
    offset: u64,
}

fn corrupt(segment: &Segment, position: u64, detail: String) -> StorageError {
    StorageError::Corrupt {
        path: segment.path.clone(),
        position,
        detail,
    }
}

/// Builds a record whose byte fields share `bytes`, where the record starts
/// at `start`.
pub(crate) fn record_from_shared(
    bytes: &Bytes,
    start: usize,
    view: &RecordView<'_>,
    offset: u64,
) -> Record {
    let mut at = start + RECORD_HEADER_BYTES;
    let mut take = |len: usize| {
        let field = bytes.slice(at..at + len);
        at += len;
        field
    };
    let channel = take(view.channel.len());
    let sender = take(view.sender.len());
    let client_message_id = take(view.client_message_id.len());
    let headers = take(view.headers.len());
    let body = take(view.body.len());
    Record {
        channel,
        seq: view.seq,
        offset,
        timestamp_ms: view.timestamp_ms,
        kind: view.kind,
        sender,
        client_message_id,
        relation: view.relation,
        headers,
        body,
    }
}

/// The whole batch `bytes` at `batch_position` of `segment`, decoded and
/// checked to sit at its place.
fn decoded<'a>(
    segment: &Segment,
    batch_position: u64,
    bytes: &'a [u8],
) -> Result<BatchView<'a>, StorageError> {
    match decode_batch(bytes) {
        Ok(BatchDecode::Complete(batch))
            if batch.header.base_position == segment.base + batch_position =>
        {
            Ok(batch)
        }
        Ok(BatchDecode::Complete(_)) => Err(corrupt(
            segment,
            batch_position,
            "batch base position is wrong".to_string(),
        )),
        Ok(BatchDecode::Incomplete { .. }) => Err(corrupt(
            segment,
            batch_position,
            "batch cut short".to_string(),
        )),
        Err(e) => Err(corrupt(segment, batch_position, e.to_string())),
    }
}

/// The view of a decrypted image (checked when it was decrypted); `None`
/// for the bytes of a plain batch.
fn decode_image(bytes: &[u8]) -> Option<BatchView<'_>> {
    let header = BatchHeader::parse(bytes).ok()?;
    (header.is_encrypted() && bytes.len() < header.batch_bytes as usize)
        .then(|| crate::format::check_image(bytes).expect("checked when decrypted"))
}

impl Partition {
    /// The flushed segment holding stream position `offset`, or `None` when
    /// retention has deleted it.
    pub(crate) fn segment_for(&self, offset: u64) -> Option<&Segment> {
        if offset < self.log_start || offset == NO_OFFSET {
            return None;
        }
        let index = self.segments.partition_point(|s| s.base <= offset);
        Some(&self.segments[index.checked_sub(1)?])
    }

    /// Whether a pointer leads to a record still in the log.
    fn in_log(&self, offset: u64) -> bool {
        offset != NO_OFFSET && offset >= self.log_start
    }

    /// The fixed header of the flushed record at `offset`, checked to carry
    /// `expected_seq`.
    pub(crate) fn record_head(
        &self,
        offset: u64,
        expected_seq: u64,
    ) -> Result<RecordHead, StorageError> {
        let segment = self
            .segment_for(offset)
            .expect("callers check that the record is still in the log");
        let position = offset - segment.base;
        let mut image = None;
        if self.keys.is_some() {
            let batch_position = self.batch_start(segment, position)?;
            image = self
                .verify_batch(segment, batch_position)?
                .map(|image| (image, (position - batch_position) as usize));
        }
        let head = match image {
            Some((image, at)) if at + RECORD_HEADER_BYTES <= image.len() => {
                RecordHead::parse(&image[at..])
            }
            Some(_) => {
                return Err(corrupt(
                    segment,
                    position,
                    "a channel pointer leads into the end of a batch".to_string(),
                ))
            }
            None => {
                let chunk = segment.read(position, RECORD_HEADER_BYTES, self.read_mode)?;
                RecordHead::parse(chunk.as_slice())
            }
        };
        if head.seq != expected_seq {
            if self.keys.is_none() {
                // Without keys the header read may be ciphertext: an
                // encrypted batch there is a missing key (verify_batch says
                // which), not a broken pointer.
                let batch_position = self.batch_start(segment, position)?;
                self.verify_batch(segment, batch_position)?;
            }
            return Err(corrupt(
                segment,
                position,
                format!(
                    "a channel pointer leads to seq {} where seq {expected_seq} should be",
                    head.seq
                ),
            ));
        }
        Ok(head)
    }

    /// The position in `segment` of the batch holding byte `position`, from
    /// the segment's batch index (extended by walking batch headers as far
    /// as needed).
    fn batch_start(&self, segment: &Segment, position: u64) -> Result<u64, StorageError> {
        let mut index = segment.batch_starts.borrow_mut();
        while index.indexed_to <= position && index.indexed_to < segment.len {
            let at = index.indexed_to;
            let chunk = segment.read(at, BATCH_HEADER_BYTES, self.read_mode)?;
            let header = BatchHeader::parse(chunk.as_slice())
                .map_err(|e| corrupt(segment, at, e.to_string()))?;
            index.starts.push(at);
            index.indexed_to = at + u64::from(header.batch_bytes);
        }
        let found = index.starts.partition_point(|&start| start <= position);
        match found.checked_sub(1) {
            Some(i) if position < index.indexed_to => Ok(index.starts[i]),
            _ => Err(corrupt(
                segment,
                position,
                "a pointer leads past the segment's last batch".to_string(),
            )),
        }
    }

    /// Checks the batch at `batch_position` of `segment` unless it was
    /// checked recently: its CRC, and for an encrypted batch its
    /// authentication tag. Returns the decrypted image of an encrypted batch
    /// (`None` for a plain one, read from the map).
    fn verify_batch(
        &self,
        segment: &Segment,
        batch_position: u64,
    ) -> Result<Option<Bytes>, StorageError> {
        let stream_position = segment.base + batch_position;
        if self.verified.borrow().contains(stream_position) {
            return Ok(None);
        }
        if let Some(image) = self.decrypted.borrow().get(stream_position) {
            return Ok(Some(image));
        }
        let chunk = segment.read(batch_position, BATCH_HEADER_BYTES, self.read_mode)?;
        let header = BatchHeader::parse(chunk.as_slice())
            .map_err(|e| corrupt(segment, batch_position, e.to_string()))?;
        let chunk = segment.read(batch_position, header.batch_bytes as usize, self.read_mode)?;
        let batch = decoded(segment, batch_position, chunk.as_slice())?;
        if batch.is_sealed() {
            let image = Bytes::from(self.decrypt(segment, batch_position, &batch)?);
            self.decrypted
                .borrow_mut()
                .insert(stream_position, image.clone());
            return Ok(Some(image));
        }
        self.verified.borrow_mut().insert(stream_position);
        Ok(None)
    }

    fn decrypt(
        &self,
        segment: &Segment,
        batch_position: u64,
        batch: &BatchView<'_>,
    ) -> Result<Vec<u8>, StorageError> {
        decrypt_batch(
            self.keys.as_deref(),
            self.id,
            batch,
            &segment.path,
            batch_position,
        )
    }

    /// Loads the whole record at `offset`, checking its batch CRC, its seq
    /// and its channel.
    fn load_record(
        &self,
        channel: &[u8],
        at: Position,
    ) -> Result<(Record, RecordHead), StorageError> {
        let head = self.record_head(at.offset, at.seq)?;
        let segment = self.segment_for(at.offset).expect("record_head checked it");
        let position = at.offset - segment.base;
        let batch_position = position
            .checked_sub(u64::from(head.batch_distance))
            .ok_or_else(|| {
                corrupt(
                    segment,
                    position,
                    "record's batch distance points before the file".to_string(),
                )
            })?;
        let (bytes, start) = match self.verify_batch(segment, batch_position)? {
            Some(image) => (image, (position - batch_position) as usize),
            None => {
                let chunk = segment.read(position, head.record_bytes as usize, self.read_mode)?;
                (chunk.into_bytes(), 0)
            }
        };
        let view = RecordView::parse(&bytes[start..])
            .map_err(|e| corrupt(segment, batch_position, e.to_string()))?;
        if view.channel != channel {
            return Err(corrupt(
                segment,
                batch_position,
                format!(
                    "a channel pointer leads to a record of another channel (stream offset {})",
                    at.offset
                ),
            ));
        }
        Ok((record_from_shared(&bytes, start, &view, at.offset), head))
    }

    /// From the record `start`, walks towards seq `target` (≤ start.seq)
    /// without entering records deleted by retention. Returns the record
    /// with the smallest seq ≥ `target` still in the log (exactly `target`
    /// when it is still there).
    fn descend(&self, start: Position, target: u64) -> Result<Position, StorageError> {
        let mut at = start;
        while at.seq > target {
            let head = self.record_head(at.offset, at.seq)?;
            let skip = skip_target(at.seq);
            if skip >= target && skip > 0 && self.in_log(head.skip_offset) {
                at = Position {
                    seq: skip,
                    offset: head.skip_offset,
                };
            } else if self.in_log(head.previous_offset) {
                at = Position {
                    seq: at.seq - 1,
                    offset: head.previous_offset,
                };
            } else {
                break;
            }
        }
        Ok(at)
    }

    /// Loads `end` and the records before it, down to `seq_min` or `limit`
    /// records or the retention boundary, in ascending order.
    fn collect_back(
        &self,
        channel: &[u8],
        end: Position,
        seq_min: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let span = (end.seq + 1).saturating_sub(seq_min.max(1));
        let mut records = Vec::with_capacity(limit.min(span as usize));
        let mut at = end;
        while records.len() < limit && at.seq >= seq_min.max(1) && self.in_log(at.offset) {
            let (record, head) = self.load_record(channel, at)?;
            records.push(record);
            if at.seq == 1 {
                break;
            }
            at = Position {
                seq: at.seq - 1,
                offset: head.previous_offset,
            };
        }
        records.reverse();
        Ok(records)
    }

    /// The channel's newest visible record, if it has one still in the log.
    fn visible_head(&self, channel: &[u8]) -> (u64, Option<Position>) {
        let Some(id) = self.channels.find(channel) else {
            return (0, None);
        };
        let entry = self.channels.get(id);
        if entry.last_seq == 0 || !self.in_log(entry.head_offset) {
            return (entry.last_seq, None);
        }
        (
            entry.last_seq,
            Some(Position {
                seq: entry.last_seq,
                offset: entry.head_offset,
            }),
        )
    }

    /// Up to `limit` visible records of `channel` with seq ≥ `from_seq`, in
    /// ascending order. Records deleted by retention are skipped: the page
    /// then starts at the oldest record still there.
    pub fn read_from(
        &self,
        channel: &[u8],
        from_seq: u64,
        limit: usize,
    ) -> Result<ReadPage, StorageError> {
        let (head_seq, head) = self.visible_head(channel);
        let mut page = ReadPage {
            records: Vec::new(),
            head_seq,
        };
        let Some(head) = head else { return Ok(page) };
        let from_seq = from_seq.max(1);
        if limit == 0 || from_seq > head_seq {
            return Ok(page);
        }
        let first = self.descend(head, from_seq)?;
        let end_seq = head_seq.min(first.seq.saturating_add(limit as u64 - 1));
        let end = self.descend(head, end_seq)?;
        page.records = self.collect_back(channel, end, first.seq, limit)?;
        Ok(page)
    }

    /// The `limit` visible records of `channel` with seq < `before_seq`
    /// closest to it, in ascending order; fewer at the start of the channel
    /// or at the retention boundary.
    pub fn read_before(
        &self,
        channel: &[u8],
        before_seq: u64,
        limit: usize,
    ) -> Result<ReadPage, StorageError> {
        let (head_seq, head) = self.visible_head(channel);
        let mut page = ReadPage {
            records: Vec::new(),
            head_seq,
        };
        let Some(head) = head else { return Ok(page) };
        if limit == 0 || before_seq <= 1 {
            return Ok(page);
        }
        let end_seq = head_seq.min(before_seq - 1);
        let end = self.descend(head, end_seq)?;
        if end.seq != end_seq {
            // Everything before `before_seq` has been deleted by retention.
            return Ok(page);
        }
        let seq_min = end_seq.saturating_sub(limit as u64 - 1).max(1);
        page.records = self.collect_back(channel, end, seq_min, limit)?;
        Ok(page)
    }

    /// The channel's last `limit` visible records, in ascending order.
    pub fn read_last(&self, channel: &[u8], limit: usize) -> Result<ReadPage, StorageError> {
        let (head_seq, head) = self.visible_head(channel);
        let mut page = ReadPage {
            records: Vec::new(),
            head_seq,
        };
        let Some(head) = head else { return Ok(page) };
        if limit == 0 {
            return Ok(page);
        }
        let seq_min = head_seq.saturating_sub(limit as u64 - 1).max(1);
        page.records = self.collect_back(channel, head, seq_min, limit)?;
        Ok(page)
    }

    /// Calls `f` with every visible record whose timestamp is ≥
    /// `since_timestamp_ms`, in log order. Segments and batches whose
    /// largest timestamp is older are skipped without reading their records.
    pub fn for_each_since(
        &self,
        since_timestamp_ms: u64,
        mut f: impl FnMut(&Record),
    ) -> Result<(), StorageError> {
        for segment in &self.segments {
            if segment
                .summary
                .timestamp_max_ms
                .is_none_or(|t| t < since_timestamp_ms)
            {
                continue;
            }
            let mut position = 0u64;
            while position < segment.len {
                let chunk = segment.read(position, BATCH_HEADER_BYTES, self.read_mode)?;
                let header = BatchHeader::parse(chunk.as_slice())
                    .map_err(|e| corrupt(segment, position, e.to_string()))?;
                let batch_bytes = u64::from(header.batch_bytes);
                if self
                    .withdrawn_from
                    .is_some_and(|from| segment.base + position >= from)
                {
                    // Withdrawn records, and nothing after them.
                    return Ok(());
                }
                if header.timestamp_max_ms >= since_timestamp_ms {
                    let mut bytes = segment
                        .read(position, header.batch_bytes as usize, self.read_mode)?
                        .into_bytes();
                    let batch = decoded(segment, position, &bytes)?;
                    if batch.is_sealed() {
                        bytes = Bytes::from(self.decrypt(segment, position, &batch)?);
                    }
                    let batch = match decode_image(&bytes) {
                        Some(batch) => batch,
                        None => decoded(segment, position, &bytes)?,
                    };
                    for (in_batch, view) in batch.records() {
                        if view.timestamp_ms >= since_timestamp_ms {
                            let offset = segment.base + position + in_batch as u64;
                            f(&record_from_shared(&bytes, in_batch, &view, offset));
                        }
                    }
                }
                position += batch_bytes;
            }
        }
        Ok(())
    }
}
