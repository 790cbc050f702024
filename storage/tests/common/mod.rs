//! Helpers shared by the public-API tests.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use starling_storage::{
    decode_batch, format::BatchDecode, NewRecord, Partition, PartitionConfig, PartitionOptions,
    RecoveryReport,
};

/// A tiny deterministic generator (xorshift64*), so a failing seed reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A random body: mostly short, one in `large_one_in` up to
    /// `large_bytes_max` bytes (to cross pages and segment ends).
    pub fn body(&mut self, large_one_in: u64, large_bytes_max: u64) -> Vec<u8> {
        let len_max = if self.below(large_one_in) == 0 {
            large_bytes_max
        } else {
            200
        };
        let len = self.below(len_max) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

pub fn open(dir: &Path, config: PartitionConfig) -> (Partition, RecoveryReport) {
    Partition::open(dir, 0, config).expect("open partition")
}

/// Opens without preallocation: segments are plain files that grow.
pub fn open_plain(dir: &Path, config: PartitionConfig) -> (Partition, RecoveryReport) {
    Partition::open_with(
        dir,
        0,
        config,
        PartitionOptions {
            preallocate: false,
            ..PartitionOptions::default()
        },
    )
    .expect("open partition")
}

/// Opens with a full scan of the log (the checkpoint is ignored).
pub fn open_full_scan(dir: &Path, config: PartitionConfig) -> (Partition, RecoveryReport) {
    Partition::open_with(
        dir,
        0,
        config,
        PartitionOptions {
            use_checkpoint: false,
            ..PartitionOptions::default()
        },
    )
    .expect("open partition")
}

pub fn small_segments() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 4096,
        ..PartitionConfig::default()
    }
}

/// The body a test record of `channel` with `seq` carries, so reads can be
/// checked without a second store.
pub fn body_for(channel: &str, seq: u64) -> Vec<u8> {
    let mut body = format!("{channel}#{seq}:").into_bytes();
    body.resize(body.len() + (seq % 7) as usize * 11, b'x');
    body
}

pub fn new_record<'a>(channel: &'a str, body: &'a [u8], timestamp_ms: u64) -> NewRecord<'a> {
    NewRecord {
        channel: channel.as_bytes(),
        timestamp_ms,
        kind: 1,
        sender: b"alice",
        client_message_id: b"",
        relation: 0,
        headers: b"",
        body,
    }
}

/// Appends a checkable record and returns its seq.
pub fn append(partition: &mut Partition, channel: &str, timestamp_ms: u64) -> u64 {
    let seq = partition.appended_seq(channel.as_bytes()) + 1;
    let body = body_for(channel, seq);
    let appended = partition
        .append(&new_record(channel, &body, timestamp_ms))
        .expect("append");
    assert_eq!(appended.seq, seq);
    seq
}

pub fn partition_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("partitions").join("00000")
}

pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(partition_dir(data_dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// What a crash leaves on disk: the last segment cut to `len` bytes (bytes
/// written but not yet on the platter are simply gone).
pub fn crash_truncate_last_segment(data_dir: &Path, len: u64) {
    let last = segment_files(data_dir).pop().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// What a crash leaves in a preallocated segment: the bytes from `from` on
/// never reached the disk and read as the zeros written in advance.
pub fn crash_zero_last_segment_from(data_dir: &Path, from: u64) {
    let last = segment_files(data_dir).pop().unwrap();
    let mut bytes = fs::read(&last).unwrap();
    bytes[from as usize..].fill(0);
    fs::write(&last, bytes).unwrap();
}

/// The logical length of a segment file: the end of its last valid batch
/// (zero bytes may follow).
pub fn logical_len(file: &Path) -> u64 {
    let bytes = fs::read(file).unwrap();
    let mut at = 0;
    while let Ok(BatchDecode::Complete(batch)) = decode_batch(&bytes[at..]) {
        at += batch.bytes.len();
    }
    at as u64
}

/// The logical length of the last segment.
pub fn last_segment_len(data_dir: &Path) -> u64 {
    logical_len(&segment_files(data_dir).pop().unwrap())
}

/// The length of the last segment file.
pub fn last_segment_file_len(data_dir: &Path) -> u64 {
    fs::metadata(segment_files(data_dir).pop().unwrap())
        .unwrap()
        .len()
}

/// Bytes a torn tail starting at `from` spans: up to the last nonzero byte
/// (zero bytes after the last batch are not data).
pub fn torn_bytes(bytes: &[u8], from: u64) -> u64 {
    bytes[from as usize..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |at| at as u64 + 1)
}

/// Flips one bit of a file.
pub fn flip_bit(file: &Path, byte: u64, bit: u8) {
    let mut bytes = fs::read(file).unwrap();
    bytes[byte as usize] ^= 1 << bit;
    fs::write(file, bytes).unwrap();
}

/// Checks that the channel's whole visible history reads back as written.
pub fn check_channel(partition: &Partition, channel: &str) {
    let head = partition.head_seq(channel.as_bytes());
    let page = partition
        .read_from(channel.as_bytes(), 1, usize::MAX)
        .unwrap();
    assert_eq!(page.head_seq, head);
    assert_eq!(page.records.len() as u64, head, "channel {channel}");
    for (i, record) in page.records.iter().enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(&record.channel[..], channel.as_bytes());
        assert_eq!(record.body, body_for(channel, record.seq));
    }
}
