//! Native codec benches: encode and decode of a `Publish` with a 256-byte body, and
//! `encode_deliver` of 1 and 32 messages (the per-core fan-out encoding).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling_protocol::{decode, encode_deliver, kind, Decoded, Envelope, Frame, Limits, Message};

const BODY_BYTES: usize = 256;

fn publish() -> Envelope {
    Envelope {
        request_id: 42,
        frame: Frame::Publish {
            ephemeral: false,
            kind: kind::MESSAGE,
            channel: "team/engineering".into(),
            client_message_id: Bytes::from_static(b"0123456789abcdef"),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::from(vec![b'x'; BODY_BYTES]),
        },
    }
}

fn message(seq: u64) -> Message {
    Message {
        seq,
        offset: seq * 300,
        timestamp_ms: 1_700_000_000_000 + seq,
        kind: kind::MESSAGE,
        sender: Bytes::from_static(b"alice"),
        client_message_id: Bytes::from_static(b"0123456789abcdef"),
        relation: 0,
        headers: Bytes::new(),
        body: Bytes::from(vec![b'x'; BODY_BYTES]),
    }
}

fn bench_publish(criterion: &mut Criterion) {
    let envelope = publish();
    let mut group = criterion.benchmark_group("native_publish_256b");
    group.throughput(Throughput::Bytes(envelope.encoded_len() as u64));

    let mut out = BytesMut::with_capacity(envelope.encoded_len());
    group.bench_function("encode", |bencher| {
        bencher.iter(|| {
            out.clear();
            black_box(&envelope).encode(&mut out);
            black_box(out.len())
        })
    });

    let mut encoded = BytesMut::new();
    envelope.encode(&mut encoded);
    let limits = Limits::default();
    group.bench_function("decode", |bencher| {
        bencher.iter(|| match decode(black_box(&encoded), &limits) {
            Ok(Decoded::Complete { envelope, used }) => black_box((envelope, used)),
            other => panic!("bench input must decode: {other:?}"),
        })
    });
    group.finish();
}

fn bench_deliver(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("native_encode_deliver_256b");
    for count in [1u64, 32] {
        let messages: Vec<Message> = (1..=count).map(message).collect();
        group.throughput(Throughput::Elements(count));
        let mut out = BytesMut::new();
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &messages,
            |bencher, messages| {
                bencher.iter(|| {
                    out.clear();
                    encode_deliver("team/engineering", black_box(messages), &mut out);
                    black_box(out.len())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_publish, bench_deliver);
criterion_main!(benches);
