//! The frozen on-disk format: one batch with two records, byte for byte.
//! If this test fails, the format changed: old data directories would no
//! longer open. Bump the format version and keep a reader for the old one
//! instead of editing these bytes.

use starling_storage::{decode_batch, format::BatchDecode, NewRecord, Partition, PartitionConfig};

/// Hex bytes, one field per line, each followed by its name (the names are
/// ignored by the parser: only the first word of a line is hex).
const FIXTURE_HEX: &str = "
    5354524c                            batch.magic
    01                                  batch.version
    00                                  batch.flags
    0000                                batch.reserved
    9347b8eb                            batch.crc32c
    e5000000                            batch.batch_bytes
    0000000000000000                    batch.term
    0000000000000000                    batch.index
    0000000000000000                    batch.base_position
    02000000                            batch.record_count
    00000000                            batch.reserved
    0068e5cf8b010000                    batch.timestamp_min_ms
    0568e5cf8b010000                    batch.timestamp_max_ms
    53000000                            record1.record_bytes
    40000000                            record1.batch_distance
    0100000000000000                    record1.seq
    ffffffffffffffff                    record1.previous_offset
    ffffffffffffffff                    record1.skip_offset
    0068e5cf8b010000                    record1.timestamp_ms
    0000000000000000                    record1.relation
    01                                  record1.kind
    00                                  record1.flags
    0700                                record1.channel_bytes
    0500                                record1.sender_bytes
    0200                                record1.client_message_id_bytes
    00000000                            record1.headers_bytes
    05000000                            record1.body_bytes
    67656e6572616c                      record1.channel 'general'
    616c696365                          record1.sender 'alice'
    6d31                                record1.client_message_id 'm1'
    68656c6c6f                          record1.body 'hello'
    52000000                            record2.record_bytes
    93000000                            record2.batch_distance
    0200000000000000                    record2.seq
    4000000000000000                    record2.previous_offset
    ffffffffffffffff                    record2.skip_offset
    0568e5cf8b010000                    record2.timestamp_ms
    0100000000000000                    record2.relation
    02                                  record2.kind
    00                                  record2.flags
    0700                                record2.channel_bytes
    0300                                record2.sender_bytes
    0200                                record2.client_message_id_bytes
    03000000                            record2.headers_bytes
    03000000                            record2.body_bytes
    67656e6572616c                      record2.channel 'general'
    626f62                              record2.sender 'bob'
    6d32                                record2.client_message_id 'm2'
    683d31                              record2.headers 'h=1'
    686921                              record2.body 'hi!'
";

fn fixture() -> Vec<u8> {
    let hex: String = FIXTURE_HEX
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn write_two_records(dir: &std::path::Path) -> Vec<u8> {
    let (mut partition, _) = Partition::open(dir, 0, PartitionConfig::default()).unwrap();
    partition
        .append(&NewRecord {
            channel: b"general",
            timestamp_ms: 1_700_000_000_000,
            kind: 1,
            sender: b"alice",
            client_message_id: b"m1",
            relation: 0,
            headers: b"",
            body: b"hello",
        })
        .unwrap();
    partition
        .append(&NewRecord {
            channel: b"general",
            timestamp_ms: 1_700_000_000_005,
            kind: 2,
            sender: b"bob",
            client_message_id: b"m2",
            relation: 1,
            headers: b"h=1",
            body: b"hi!",
        })
        .unwrap();
    partition.flush().unwrap();
    partition.sync().unwrap();
    std::fs::read(dir.join("partitions/00000/00000000000000000000.seg")).unwrap()
}

#[test]
fn writer_produces_the_frozen_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_two_records(dir.path());
    let hex: Vec<String> = bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect();
    assert_eq!(bytes, fixture(), "written bytes:\n{}", hex.join("\n"));
}

#[test]
fn frozen_bytes_open_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let partition_dir = dir.path().join("partitions/00000");
    std::fs::create_dir_all(&partition_dir).unwrap();
    std::fs::write(partition_dir.join("00000000000000000000.seg"), fixture()).unwrap();

    let bytes = fixture();
    let Ok(BatchDecode::Complete(batch)) = decode_batch(&bytes) else {
        panic!("fixture does not decode")
    };
    assert_eq!(batch.header.record_count, 2);
    assert_eq!(batch.header.timestamp_max_ms, 1_700_000_000_005);

    let (partition, report) = Partition::open(dir.path(), 0, PartitionConfig::default()).unwrap();
    assert_eq!((report.batches, report.records, report.channels), (1, 2, 1));
    let page = partition.read_last(b"general", 10).unwrap();
    assert_eq!(page.head_seq, 2);
    let second = &page.records[1];
    assert_eq!((second.seq, second.kind, second.relation), (2, 2, 1));
    assert_eq!(
        (&second.sender[..], &second.headers[..], &second.body[..]),
        (&b"bob"[..], &b"h=1"[..], &b"hi!"[..])
    );
    assert_eq!(&page.records[0].client_message_id[..], b"m1");
    assert_eq!(page.records[0].offset, 64);
}
