//! Fuzzes the native frame decoder: arbitrary bytes must never panic it, and whatever it accepts
//! must encode and decode back to the same envelope (decode → encode → decode agrees).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_protocol::{decode, encode_deliver, Decoded, Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut input = data;
    // Decode the input as a stream: every frame in turn, as a connection's read loop would.
    while let Ok(Decoded::Complete { envelope, used }) = decode(input, &limits) {
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
