//! Every malformed shape is rejected with its own `WireError`, and limits are enforced before the
//! body of a frame arrives.

mod common;

use bytes::{Bytes, BytesMut};
use common::{encode, sample_message};
use starling_protocol::{
    decode, frame_type, peek_frame_size, Decoded, Envelope, ErrorCode, Frame, Limits, WireError,
    FRAME_BYTES_MAX_DEFAULT, MESSAGE_BYTES_MIN,
};

/// A frame with the given type, request id 1 and raw payload.
fn raw_frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    let length = (5 + payload.len()) as u32;
    [
        &length.to_le_bytes()[..],
        &[frame_type],
        &1u32.to_le_bytes(),
        payload,
    ]
    .concat()
}

fn decode_error(bytes: &[u8]) -> WireError {
    match decode(bytes, &Limits::default()) {
        Err(error) => error,
        Ok(decoded) => panic!("expected an error, got {decoded:?}"),
    }
}

#[test]
fn oversize_length_is_rejected_from_the_prefix_alone() {
    let limits = Limits {
        frame_bytes_max: 100,
    };
    assert_eq!(
        decode(&101u32.to_le_bytes(), &limits),
        Err(WireError::FrameTooLarge {
            length: 101,
            frame_bytes_max: 100
        })
    );
    // At the limit the decoder waits for the body.
    assert_eq!(
        decode(&100u32.to_le_bytes(), &limits),
        Ok(Decoded::NeedMore { at_least: 104 })
    );
    let default_limit = Limits::default();
    assert_eq!(default_limit.frame_bytes_max, 1024 * 1024 + 64 * 1024);
    assert_eq!(
        decode(&[0xFF, 0xFF, 0xFF, 0xFF], &default_limit),
        Err(WireError::FrameTooLarge {
            length: u32::MAX,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT
        })
    );
}

#[test]
fn a_publish_larger_than_the_limit_is_rejected_before_its_body() {
    let envelope = Envelope {
        request_id: 1,
        frame: Frame::Publish {
            ephemeral: false,
            kind: 0,
            channel: "c".into(),
            client_message_id: Bytes::new(),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::from(vec![0u8; 2000]),
        },
    };
    let encoded = encode(&envelope);
    let limits = Limits {
        frame_bytes_max: 1000,
    };
    assert!(matches!(
        decode(&encoded[..4], &limits),
        Err(WireError::FrameTooLarge { length, frame_bytes_max: 1000 }) if length as usize == encoded.len() - 4
    ));
}

/// A read loop that waits for `peek_frame_size` bytes learns of an oversize or too short frame
/// from its length prefix, as `decode` does, and never buffers its body.
#[test]
fn peek_frame_size_checks_the_length_like_decode() {
    let limits = Limits {
        frame_bytes_max: 100,
    };
    for length in 0..4 {
        assert_eq!(peek_frame_size(&[5, 0, 0][..length], &limits), Ok(None));
    }
    assert_eq!(
        peek_frame_size(&100u32.to_le_bytes(), &limits),
        Ok(Some(104))
    );
    for length in [0u32, 4, 101, u32::MAX] {
        let bytes = length.to_le_bytes();
        assert_eq!(
            peek_frame_size(&bytes, &limits),
            decode(&bytes, &limits).map(|_| None),
            "length {length}"
        );
    }
}

#[test]
fn fewer_than_four_bytes_need_a_whole_header() {
    for length in 0..4 {
        assert_eq!(
            decode(&[5, 0, 0][..length], &Limits::default()),
            Ok(Decoded::NeedMore { at_least: 9 })
        );
    }
}

#[test]
fn a_length_shorter_than_the_header_is_rejected() {
    for length in 0u32..5 {
        assert_eq!(
            decode_error(&length.to_le_bytes()),
            WireError::FrameTooShort { length, minimum: 5 }
        );
    }
}

#[test]
fn unknown_frame_types_are_rejected() {
    for unknown in [0x00, 0x09, 0x80, 0x89, 0x91, 0xE1, 0xFF] {
        assert_eq!(
            decode_error(&raw_frame(unknown, &[])),
            WireError::UnknownFrameType {
                frame_type: unknown
            }
        );
    }
}

#[test]
fn short_payloads_name_the_missing_field() {
    assert_eq!(
        decode_error(&raw_frame(frame_type::SUBSCRIBED, &[1, 2, 3, 4, 5, 6, 7])),
        WireError::Truncated {
            frame_type: frame_type::SUBSCRIBED,
            field: "head_seq",
            needed: 8,
            available: 7
        }
    );
    assert_eq!(
        decode_error(&raw_frame(frame_type::UNSUBSCRIBE, &[10, 0, b'c'])),
        WireError::Truncated {
            frame_type: frame_type::UNSUBSCRIBE,
            field: "channel",
            needed: 10,
            available: 1
        }
    );
    assert_eq!(
        decode_error(&raw_frame(frame_type::HELLO, &[])),
        WireError::Truncated {
            frame_type: frame_type::HELLO,
            field: "version",
            needed: 2,
            available: 0
        }
    );
}

#[test]
fn every_truncation_of_every_frame_is_an_error_not_a_panic() {
    // Shorten the payload but keep the length prefix consistent, so the decoder sees a whole frame
    // that is missing its last bytes.
    for envelope in common::sample_envelopes() {
        let encoded = encode(&envelope);
        for payload_len in 0..encoded.len() - 9 {
            let frame = raw_frame(encoded[4], &encoded[9..9 + payload_len]);
            let error = decode_error(&frame);
            assert!(
                matches!(
                    error,
                    WireError::Truncated { .. } | WireError::TooManyMessages { .. }
                ),
                "{} cut to {payload_len} payload bytes: {error:?}",
                envelope.frame.name()
            );
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    assert_eq!(
        decode_error(&raw_frame(frame_type::PING, &[0])),
        WireError::TrailingBytes {
            frame_type: frame_type::PING,
            trailing: 1
        }
    );
    assert_eq!(
        decode_error(&raw_frame(frame_type::SUBSCRIBED, &[0; 11])),
        WireError::TrailingBytes {
            frame_type: frame_type::SUBSCRIBED,
            trailing: 3
        }
    );
}

#[test]
fn invalid_utf8_is_rejected_in_every_text_field() {
    assert_eq!(
        decode_error(&raw_frame(frame_type::UNSUBSCRIBE, &[2, 0, b'a', 0xFF])),
        WireError::InvalidUtf8 {
            frame_type: frame_type::UNSUBSCRIBE,
            field: "channel",
            valid_up_to: 1
        }
    );
    let hello = [&[1, 0][..], &[1, 0, b'x'], &[1, 0, 0xC3]].concat();
    assert_eq!(
        decode_error(&raw_frame(frame_type::HELLO, &hello)),
        WireError::InvalidUtf8 {
            frame_type: frame_type::HELLO,
            field: "token",
            valid_up_to: 0
        }
    );
    let cursor = [&[1, 0][..], &[0x80], &[0, 0]].concat();
    assert_eq!(
        decode_error(&raw_frame(frame_type::CURSOR_GET, &cursor)),
        WireError::InvalidUtf8 {
            frame_type: frame_type::CURSOR_GET,
            field: "consumer",
            valid_up_to: 0
        }
    );
    let error = [&[1, 0][..], &[0], &[1, 0, 0xFE]].concat();
    assert_eq!(
        decode_error(&raw_frame(frame_type::ERROR, &error)),
        WireError::InvalidUtf8 {
            frame_type: frame_type::ERROR,
            field: "message",
            valid_up_to: 0
        }
    );
    // The sender of a delivered message is text too.
    let mut message = sample_message();
    message.sender = Bytes::from_static(&[b'o', b'k', 0xFF]);
    let mut bytes = BytesMut::new();
    starling_protocol::encode_deliver("c", &[message], &mut bytes);
    assert_eq!(
        decode_error(&bytes),
        WireError::InvalidUtf8 {
            frame_type: frame_type::DELIVER,
            field: "sender",
            valid_up_to: 2
        }
    );
}

#[test]
fn out_of_range_enumerations_are_rejected() {
    let subscribe = [&[1, 0, b'c'][..], &[3], &[0; 8]].concat();
    assert!(matches!(
        decode_error(&raw_frame(frame_type::SUBSCRIBE, &subscribe)),
        WireError::InvalidValue {
            field: "start",
            value: 3,
            ..
        }
    ));
    let history = [&[1, 0, b'c'][..], &[7], &[0; 8], &[10, 0, 0, 0]].concat();
    assert!(matches!(
        decode_error(&raw_frame(frame_type::HISTORY, &history)),
        WireError::InvalidValue {
            field: "direction",
            value: 7,
            ..
        }
    ));
    for code in [0u16, 15, 0xFFFF] {
        let error = [&code.to_le_bytes()[..], &[0], &[0, 0]].concat();
        assert_eq!(
            decode_error(&raw_frame(frame_type::ERROR, &error)),
            WireError::InvalidValue {
                frame_type: frame_type::ERROR,
                field: "code",
                value: code.into(),
                expected: "a known error code (1 to 12)"
            }
        );
    }
}

#[test]
fn reserved_flag_bits_are_rejected() {
    let publish = [&[0x02][..], &[0], &[0, 0], &[0], &[0; 8], &[0, 0], &[0; 4]].concat();
    assert_eq!(
        decode_error(&raw_frame(frame_type::PUBLISH, &publish)),
        WireError::ReservedBits {
            frame_type: frame_type::PUBLISH,
            field: "flags",
            value: 0x02,
            allowed: 0x01
        }
    );
    let ack = [&[0; 24][..], &[0x04]].concat();
    assert_eq!(
        decode_error(&raw_frame(frame_type::PUBLISH_ACK, &ack)),
        WireError::ReservedBits {
            frame_type: frame_type::PUBLISH_ACK,
            field: "flags",
            value: 0x04,
            allowed: 0x03
        }
    );
    let error = [&[1, 0][..], &[0x80], &[0, 0]].concat();
    assert!(matches!(
        decode_error(&raw_frame(frame_type::ERROR, &error)),
        WireError::ReservedBits {
            value: 0x80,
            allowed: 0x01,
            ..
        }
    ));
}

#[test]
fn an_empty_delivery_is_rejected_but_an_empty_history_page_is_not() {
    let deliver = [&[1, 0, b'c'][..], &[0, 0, 0, 0]].concat();
    assert!(matches!(
        decode_error(&raw_frame(frame_type::DELIVER, &deliver)),
        WireError::InvalidValue {
            field: "count",
            value: 0,
            ..
        }
    ));
    let page = [&[1, 0, b'c'][..], &[0; 8], &[0, 0, 0, 0]].concat();
    match decode(
        &raw_frame(frame_type::HISTORY_PAGE, &page),
        &Limits::default(),
    ) {
        Ok(Decoded::Complete { envelope, .. }) => assert_eq!(
            envelope.frame,
            Frame::HistoryPage {
                channel: "c".into(),
                head_seq: 0,
                messages: vec![]
            }
        ),
        other => panic!("expected an empty page, got {other:?}"),
    }
}

#[test]
fn a_forged_message_count_is_rejected_before_allocating() {
    let page = [
        &[1, 0, b'c'][..],
        &[0; 8],
        &u32::MAX.to_le_bytes(),
        &[0; 100],
    ]
    .concat();
    assert_eq!(
        decode_error(&raw_frame(frame_type::HISTORY_PAGE, &page)),
        WireError::TooManyMessages {
            frame_type: frame_type::HISTORY_PAGE,
            count: u32::MAX,
            available: 100,
            message_bytes_min: MESSAGE_BYTES_MIN
        }
    );
}

#[test]
fn error_messages_say_what_is_wrong() {
    let cases = [
        (
            WireError::FrameTooLarge {
                length: 2_000_000,
                frame_bytes_max: 1_114_112,
            },
            "frame length 2000000 bytes exceeds frame_bytes_max 1114112 bytes",
        ),
        (
            WireError::Truncated {
                frame_type: frame_type::SUBSCRIBED,
                field: "head_seq",
                needed: 8,
                available: 7,
            },
            "Subscribed frame (0x83): field `head_seq` needs 8 bytes but only 7 remain in the frame",
        ),
        (
            WireError::TrailingBytes {
                frame_type: frame_type::PING,
                trailing: 1,
            },
            "Ping frame (0x08): 1 trailing bytes after the last field",
        ),
        (
            WireError::UnknownFrameType { frame_type: 0x42 },
            "unknown frame type 0x42",
        ),
        (
            WireError::InvalidUtf8 {
                frame_type: frame_type::PUBLISH,
                field: "channel",
                valid_up_to: 3,
            },
            "Publish frame (0x02): field `channel` is not valid UTF-8 (valid up to byte 3)",
        ),
        (
            WireError::ReservedBits {
                frame_type: frame_type::PUBLISH,
                field: "flags",
                value: 0x82,
                allowed: 0x01,
            },
            "Publish frame (0x02): field `flags` = 0b10000010 sets reserved bits (allowed mask 0b00000001)",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[test]
fn validate_catches_fields_too_long_for_their_prefix() {
    let publish = |client_message_id: usize, headers: usize, channel: usize| Envelope {
        request_id: 1,
        frame: Frame::Publish {
            ephemeral: false,
            kind: 0,
            channel: "c".repeat(channel).into(),
            client_message_id: Bytes::from(vec![0; client_message_id]),
            relation: 0,
            headers: Bytes::from(vec![0; headers]),
            body: Bytes::new(),
        },
    };
    assert_eq!(publish(255, 65_535, 65_535).validate(), Ok(()));
    assert_eq!(
        publish(256, 0, 1).validate(),
        Err(WireError::FieldTooLong {
            frame_type: frame_type::PUBLISH,
            field: "client_message_id",
            length: 256,
            max: 255
        })
    );
    assert!(matches!(
        publish(0, 65_536, 1).validate(),
        Err(WireError::FieldTooLong {
            field: "headers",
            ..
        })
    ));
    assert!(matches!(
        publish(0, 0, 65_536).validate(),
        Err(WireError::FieldTooLong {
            field: "channel",
            ..
        })
    ));
    let mut message = sample_message();
    message.sender = Bytes::from(vec![b'a'; 70_000]);
    let deliver = Envelope {
        request_id: 0,
        frame: Frame::Deliver {
            channel: "c".into(),
            messages: vec![message],
        },
    };
    assert!(matches!(
        deliver.validate(),
        Err(WireError::FieldTooLong {
            field: "sender",
            ..
        })
    ));
    let empty = Envelope {
        request_id: 0,
        frame: Frame::Deliver {
            channel: "c".into(),
            messages: vec![],
        },
    };
    assert!(matches!(
        empty.validate(),
        Err(WireError::InvalidValue { field: "count", .. })
    ));
}

#[test]
#[should_panic(expected = "client_message_id")]
fn encoding_an_invalid_frame_panics() {
    let envelope = Envelope {
        request_id: 1,
        frame: Frame::Publish {
            ephemeral: false,
            kind: 0,
            channel: "c".into(),
            client_message_id: Bytes::from(vec![0; 300]),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::new(),
        },
    };
    encode(&envelope);
}

#[test]
fn error_codes_map_both_ways() {
    for (index, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(code.as_u16() as usize, index + 1);
        assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(*code));
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(15), None);
    assert_eq!(ErrorCode::InvalidArgument as u16, 12);
    assert_eq!(ErrorCode::RateLimited as u16, 13);
    assert_eq!(ErrorCode::StorageFull as u16, 14);
    assert_eq!(ErrorCode::SlowConsumer.to_string(), "SlowConsumer (5)");
}
