//! Fuzzes the native frame decoder: arbitrary bytes must never panic it, whatever it accepts
//! must encode and decode back to the same envelope (decode → encode → decode agrees), and the
//! decoder that slices shared bytes (`decode_bytes`, after `peek_frame_size`) must agree with it.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use starling_protocol::{
    decode, decode_bytes, encode_deliver, peek_frame_size, Decoded, Frame, Limits,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let shared = Bytes::copy_from_slice(data);
    let mut input = data;
    // Decode the input as a stream: every frame in turn, as a connection's read loop would.
    loop {
        let offset = data.len() - input.len();
        let decoded = decode(input, &limits);
        match peek_frame_size(input, &limits) {
            Err(error) => assert_eq!(decoded, Err(error), "peek_frame_size disagrees"),
            Ok(None) => assert!(matches!(decoded, Ok(Decoded::NeedMore { .. }))),
            Ok(Some(size)) if size > input.len() => {
                assert_eq!(decoded, Ok(Decoded::NeedMore { at_least: size }));
            }
            Ok(Some(size)) => {
                let frame = shared.slice(offset..offset + size);
                assert_eq!(decode_bytes(&frame, &limits), decoded, "decode_bytes disagrees");
            }
        }
        let Ok(Decoded::Complete { envelope, used }) = decoded else {
            break;
        };
        assert!(
            used <= input.len() && used >= 9,
            "used {used} of {}",
            input.len()
        );
        input = &input[used..];

        envelope
            .validate()
            .expect("a decoded frame is valid for encoding");
        let mut encoded = BytesMut::new();
        envelope.encode(&mut encoded);
        assert_eq!(encoded.len(), envelope.encoded_len());
        match decode(&encoded, &limits) {
            Ok(Decoded::Complete {
                envelope: again,
                used,
            }) => {
                assert_eq!(again, envelope, "decode → encode → decode disagrees");
                assert_eq!(used, encoded.len());
            }
            other => panic!("re-encoded {envelope:?} decoded as {other:?}"),
        }

        // The broker's direct delivery encoder must agree with the envelope encoder.
        if let Frame::Deliver { channel, messages } = &envelope.frame {
            if envelope.request_id == 0 {
                let mut direct = BytesMut::new();
                encode_deliver(channel, messages, &mut direct);
                assert_eq!(direct, encoded);
            }
        }
    }
});
