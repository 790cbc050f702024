//! Round trips, fixed expected bytes for every frame type, and decoding at every split point and
//! byte by byte.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use common::{encode, sample_envelopes, sample_message};
use starling_protocol::{
    decode, decode_bytes, deliver_encoded_len, encode_deliver, frame_type, peek_frame_size,
    Decoded, Envelope, Frame, Limits, PublishFields,
};

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The bytes of `sample_message()`, written out by hand.
fn sample_message_bytes() -> Vec<u8> {
    cat(&[
        &[3, 0, 0, 0, 0, 0, 0, 0],             // seq
        &[2, 1, 0, 0, 0, 0, 0, 0],             // offset 0x0102
        &[0x0D, 0x0C, 0x0B, 0x0A, 0, 0, 0, 0], // timestamp_ms 0x0A0B0C0D
        &[5],                                  // kind REPLY
        &[2, 0],
        b"al",                     // sender
        &[1, 0xAA],                // client_message_id
        &[2, 0, 0, 0, 0, 0, 0, 0], // relation
        &[1, 0],
        b"h", // headers
        &[2, 0, 0, 0],
        b"hi", // body
    ])
}

/// The expected bytes of every entry of `sample_envelopes()`, written out by hand: these are the
/// wire format, and a change here breaks every deployed client.
fn expected_bytes() -> Vec<Vec<u8>> {
    let message = sample_message_bytes();
    vec![
        // Hello
        cat(&[
            &[16, 0, 0, 0],
            &[0x01],
            &[1, 0, 0, 0],
            &[1, 0],
            &[3, 0],
            b"cli",
            &[2, 0],
            b"tk",
        ]),
        // Welcome
        cat(&[
            &[16, 0, 0, 0],
            &[0x81],
            &[1, 0, 0, 0],
            &[1, 0],
            &[3, 0],
            b"srv",
            &[0, 0, 0x11, 0],
        ]),
        // Publish
        cat(&[
            &[29, 0, 0, 0],
            &[0x02],
            &[2, 0, 0, 0],
            &[0x01], // flags: ephemeral
            &[8],    // kind TYPING
            &[1, 0],
            b"c",                      // channel
            &[1, 9],                   // client_message_id
            &[0, 1, 0, 0, 0, 0, 0, 0], // relation 0x0100
            &[0, 0],                   // headers (empty)
            &[3, 0, 0, 0],
            b"xyz", // body
        ]),
        // PublishAck
        cat(&[
            &[30, 0, 0, 0],
            &[0x82],
            &[2, 0, 0, 0],
            &[5, 0, 0, 0, 0, 0, 0, 0],
            &[6, 0, 0, 0, 0, 0, 0, 0],
            &[7, 0, 0, 0, 0, 0, 0, 0],
            &[0x03], // flags: durable | duplicate
        ]),
        // Subscribe
        cat(&[
            &[17, 0, 0, 0],
            &[0x03],
            &[3, 0, 0, 0],
            &[1, 0],
            b"c",
            &[1],
            &[4, 0, 0, 0, 0, 0, 0, 0],
        ]),
        // Subscribed
        cat(&[
            &[13, 0, 0, 0],
            &[0x83],
            &[3, 0, 0, 0],
            &[9, 0, 0, 0, 0, 0, 0, 0],
        ]),
        // Unsubscribe
        cat(&[&[8, 0, 0, 0], &[0x04], &[4, 0, 0, 0], &[1, 0], b"c"]),
        // Unsubscribed
        cat(&[&[5, 0, 0, 0], &[0x84], &[4, 0, 0, 0]]),
        // History
        cat(&[
            &[21, 0, 0, 0],
            &[0x05],
            &[5, 0, 0, 0],
            &[1, 0],
            b"c",
            &[1], // direction: before
            &[10, 0, 0, 0, 0, 0, 0, 0],
            &[50, 0, 0, 0],
        ]),
        // HistoryPage
        cat(&[
            &[68, 0, 0, 0],
            &[0x85],
            &[5, 0, 0, 0],
            &[1, 0],
            b"c",
            &[10, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0], // count
            &message,
        ]),
        // CursorSet
        cat(&[
            &[19, 0, 0, 0],
            &[0x06],
            &[6, 0, 0, 0],
            &[1, 0],
            b"u",
            &[1, 0],
            b"c",
            &[3, 0, 0, 0, 0, 0, 0, 0],
        ]),
        // CursorAck
        cat(&[&[5, 0, 0, 0], &[0x86], &[6, 0, 0, 0]]),
        // CursorGet
        cat(&[
            &[11, 0, 0, 0],
            &[0x07],
            &[7, 0, 0, 0],
            &[1, 0],
            b"u",
            &[1, 0],
            b"c",
        ]),
        // CursorValue
        cat(&[
            &[13, 0, 0, 0],
            &[0x87],
            &[7, 0, 0, 0],
            &[3, 0, 0, 0, 0, 0, 0, 0],
        ]),
        // Ping
        cat(&[&[5, 0, 0, 0], &[0x08], &[8, 0, 0, 0]]),
        // Pong
        cat(&[&[5, 0, 0, 0], &[0x88], &[8, 0, 0, 0]]),
        // Deliver
        cat(&[
            &[60, 0, 0, 0],
            &[0x90],
            &[0, 0, 0, 0],
            &[1, 0],
            b"c",
            &[1, 0, 0, 0],
            &message,
        ]),
        // Error
        cat(&[
            &[14, 0, 0, 0],
            &[0xE0],
            &[0, 0, 0, 0],
            &[5, 0],
            &[0x01],
            &[4, 0],
            b"slow",
        ]),
    ]
}

fn decode_complete(bytes: &[u8]) -> (Envelope, usize) {
    match decode(bytes, &Limits::default()) {
        Ok(Decoded::Complete { envelope, used }) => (envelope, used),
        other => panic!("expected a complete frame, got {other:?}"),
    }
}

#[test]
fn samples_cover_every_frame_type() {
    let mut types: Vec<u8> = sample_envelopes()
        .iter()
        .map(|envelope| envelope.frame.frame_type())
        .collect();
    types.sort_unstable();
    let mut expected = vec![
        frame_type::HELLO,
        frame_type::PUBLISH,
        frame_type::SUBSCRIBE,
        frame_type::UNSUBSCRIBE,
        frame_type::HISTORY,
        frame_type::CURSOR_SET,
        frame_type::CURSOR_GET,
        frame_type::PING,
        frame_type::WELCOME,
        frame_type::PUBLISH_ACK,
        frame_type::SUBSCRIBED,
        frame_type::UNSUBSCRIBED,
        frame_type::HISTORY_PAGE,
        frame_type::CURSOR_ACK,
        frame_type::CURSOR_VALUE,
        frame_type::PONG,
        frame_type::DELIVER,
        frame_type::ERROR,
    ];
    expected.sort_unstable();
    assert_eq!(types, expected);
}

#[test]
fn every_frame_type_encodes_to_its_fixed_bytes() {
    for (envelope, expected) in sample_envelopes().iter().zip(expected_bytes()) {
        let encoded = encode(envelope);
        assert_eq!(
            &encoded[..],
            &expected[..],
            "{} frame",
            envelope.frame.name()
        );
        assert_eq!(
            envelope.encoded_len(),
            expected.len(),
            "{} frame",
            envelope.frame.name()
        );
    }
}

#[test]
fn every_frame_type_decodes_from_its_fixed_bytes() {
    for (envelope, expected) in sample_envelopes().iter().zip(expected_bytes()) {
        let (decoded, used) = decode_complete(&expected);
        assert_eq!(&decoded, envelope);
        assert_eq!(used, expected.len());
    }
}

#[test]
fn every_frame_type_decodes_from_shared_bytes_as_from_a_slice() {
    for (envelope, expected) in sample_envelopes().iter().zip(expected_bytes()) {
        let input = Bytes::from(expected.clone());
        assert_eq!(
            decode_bytes(&input, &Limits::default()),
            Ok(Decoded::Complete {
                envelope: envelope.clone(),
                used: expected.len()
            }),
            "{} frame",
            envelope.frame.name()
        );
        let sizes: Vec<_> = (0..=expected.len())
            .map(|split| peek_frame_size(&expected[..split], &Limits::default()))
            .collect();
        assert!(sizes[..4].iter().all(|size| *size == Ok(None)));
        assert!(sizes[4..]
            .iter()
            .all(|size| *size == Ok(Some(expected.len()))));
    }
}

#[test]
fn decode_bytes_slices_the_body_without_copying() {
    let envelope = Envelope {
        request_id: 3,
        frame: Frame::Publish {
            ephemeral: false,
            kind: 1,
            channel: "room".into(),
            client_message_id: Bytes::from_static(b"id-1"),
            relation: 0,
            headers: Bytes::from_static(b"h"),
            body: Bytes::from(vec![7; 1000]),
        },
    };
    let input = encode(&envelope).freeze();
    let Ok(Decoded::Complete {
        envelope:
            Envelope {
                frame:
                    Frame::Publish {
                        client_message_id,
                        headers,
                        body,
                        ..
                    },
                ..
            },
        used,
    }) = decode_bytes(&input, &Limits::default())
    else {
        panic!("a complete Publish")
    };
    assert_eq!(used, input.len());
    assert_eq!(body.as_ptr(), input[input.len() - 1000..].as_ptr());
    let inside = input.as_ptr_range();
    assert!(inside.contains(&client_message_id.as_ptr()));
    assert!(inside.contains(&headers.as_ptr()));
}

#[test]
fn every_frame_type_round_trips() {
    for envelope in sample_envelopes() {
        envelope.validate().expect("sample frames are valid");
        let encoded = encode(&envelope);
        let (decoded, used) = decode_complete(&encoded);
        assert_eq!(decoded, envelope);
        assert_eq!(used, encoded.len());
    }
}

#[test]
fn encode_appends_to_what_the_buffer_holds() {
    let mut out = BytesMut::from(&b"prefix"[..]);
    let envelope = Envelope {
        request_id: 8,
        frame: Frame::Ping,
    };
    envelope.encode(&mut out);
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(decode_complete(&out[6..]).0, envelope);
}

#[test]
fn decode_leaves_the_bytes_after_the_frame() {
    let samples = sample_envelopes();
    let mut stream = encode(&samples[0]);
    stream.extend_from_slice(&encode(&samples[1]));
    let (first, used) = decode_complete(&stream);
    assert_eq!(first, samples[0]);
    assert_eq!(used, samples[0].encoded_len());
    assert_eq!(decode_complete(&stream[used..]).0, samples[1]);
}

#[test]
fn encode_deliver_matches_the_deliver_envelope() {
    for count in [1, 2, 32] {
        let messages = vec![sample_message(); count];
        let envelope = Envelope {
            request_id: 0,
            frame: Frame::Deliver {
                channel: "room/général".into(),
                messages: messages.clone(),
            },
        };
        let mut direct = BytesMut::new();
        encode_deliver("room/général", &messages, &mut direct);
        assert_eq!(direct, encode(&envelope));
        assert_eq!(deliver_encoded_len("room/général", &messages), direct.len());
    }
}

#[test]
fn publish_fields_encode_as_the_publish_envelope() {
    let mut seen = 0;
    for envelope in sample_envelopes() {
        let Some(fields) = envelope.frame.as_publish() else {
            continue;
        };
        let mut direct = BytesMut::from(&b"before"[..]);
        fields.encode(envelope.request_id, &mut direct);
        assert_eq!(&direct[..6], b"before");
        assert_eq!(direct[6..], encode(&envelope)[..]);
        assert_eq!(fields.encoded_len(), direct.len() - 6);
        assert_eq!(fields.validate(), envelope.validate());
        seen += 1;
    }
    assert!(seen > 0, "the samples hold a Publish");
    let too_long = "c".repeat(0x1_0000);
    let fields = PublishFields {
        ephemeral: false,
        kind: 0,
        channel: &too_long,
        client_message_id: b"",
        relation: 0,
        headers: b"",
        body: b"",
    };
    assert!(fields.validate().is_err());
}

#[test]
#[should_panic(expected = "at least one message")]
fn encode_deliver_rejects_an_empty_delivery() {
    encode_deliver("c", &[], &mut BytesMut::new());
}

#[test]
fn every_split_point_needs_more_then_completes() {
    let limits = Limits::default();
    for envelope in sample_envelopes() {
        let encoded = encode(&envelope);
        for split in 0..encoded.len() {
            match decode(&encoded[..split], &limits) {
                Ok(Decoded::NeedMore { at_least }) => {
                    assert!(
                        at_least > split && at_least <= encoded.len(),
                        "{} frame split at {split}: at_least {at_least}",
                        envelope.frame.name()
                    );
                    if split >= 4 {
                        assert_eq!(at_least, encoded.len(), "the length is known from byte 4");
                    }
                }
                other => panic!(
                    "{} frame split at {split}: expected NeedMore, got {other:?}",
                    envelope.frame.name()
                ),
            }
            // Feeding the two halves in turn, as a socket would, completes the frame.
            let mut buffer = BytesMut::from(&encoded[..split]);
            buffer.extend_from_slice(&encoded[split..]);
            assert_eq!(decode_complete(&buffer).0, envelope);
        }
    }
}

/// Feeds `stream` to a receive buffer `chunk` bytes at a time, decoding every frame as soon as it
/// is complete, like a connection's read loop; `take` takes one whole frame off the buffer.
fn decode_stream(
    stream: &[u8],
    chunk: usize,
    take: fn(&mut BytesMut, &Limits) -> Option<Envelope>,
) -> Vec<Envelope> {
    let limits = Limits::default();
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        while let Some(envelope) = take(&mut buffer, &limits) {
            decoded.push(envelope);
        }
    }
    assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
    decoded
}

/// Decodes the frame at the start of `buffer` (its fields copied) and drops its bytes.
fn take_copied(buffer: &mut BytesMut, limits: &Limits) -> Option<Envelope> {
    match decode(buffer, limits).expect("a valid stream") {
        Decoded::Complete { envelope, used } => {
            buffer.advance(used);
            Some(envelope)
        }
        Decoded::NeedMore { at_least } => {
            assert!(at_least > buffer.len());
            None
        }
    }
}

/// The way the server's read loop takes a frame: peek the size, split the frame off the buffer
/// without copying, decode it from the frozen bytes.
fn take_shared(buffer: &mut BytesMut, limits: &Limits) -> Option<Envelope> {
    let size = match peek_frame_size(buffer, limits).expect("a valid stream") {
        Some(size) if buffer.len() >= size => size,
        _ => return None,
    };
    let frame = buffer.split_to(size).freeze();
    match decode_bytes(&frame, limits).expect("a valid stream") {
        Decoded::Complete { envelope, used } => {
            assert_eq!(used, size);
            Some(envelope)
        }
        Decoded::NeedMore { at_least } => panic!("need {at_least} of a whole frame"),
    }
}

#[test]
fn a_stream_of_every_frame_decodes_byte_by_byte() {
    let samples = sample_envelopes();
    let mut stream = BytesMut::new();
    for envelope in &samples {
        envelope.encode(&mut stream);
    }
    for take in [take_copied, take_shared] {
        assert_eq!(decode_stream(&stream, 1, take), samples);
        for chunk in [2, 3, 7, 9, 64, stream.len()] {
            assert_eq!(
                decode_stream(&stream, chunk, take),
                samples,
                "chunks of {chunk}"
            );
        }
    }
}
