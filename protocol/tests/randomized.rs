//! Seeded randomized tests: round trips of random frames, random streams cut at random points,
//! and mutated frames that must decode to an error or to a frame that re-encodes consistently.

mod common;

use bytes::{Buf, BytesMut};
use common::{encode, Rng};
use starling_protocol::{decode, encode_deliver, Decoded, Envelope, Frame, Limits};

const SEED: u64 = 0x5354_4152_4C49_4E47;

#[test]
fn random_frames_round_trip() {
    let mut rng = Rng::new(SEED);
    for iteration in 0..3000 {
        let envelope = rng.envelope();
        envelope.validate().expect("generated frames are valid");
        let encoded = encode(&envelope);
        assert_eq!(
            encoded.len(),
            envelope.encoded_len(),
            "iteration {iteration}"
        );
        match decode(
            &encoded,
            &Limits {
                frame_bytes_max: u32::MAX,
            },
        ) {
            Ok(Decoded::Complete {
                envelope: decoded,
                used,
            }) => {
                assert_eq!(decoded, envelope, "iteration {iteration}");
                assert_eq!(used, encoded.len(), "iteration {iteration}");
            }
            other => panic!("iteration {iteration}: {other:?}"),
        }
        if let Frame::Deliver { channel, messages } = &envelope.frame {
            let mut direct = BytesMut::new();
            encode_deliver(channel, messages, &mut direct);
            let expected = encode(&Envelope {
                request_id: 0,
                frame: envelope.frame.clone(),
            });
            assert_eq!(direct, expected, "iteration {iteration}");
        }
    }
}

#[test]
fn random_streams_decode_in_random_chunks() {
    let mut rng = Rng::new(SEED ^ 1);
    let limits = Limits {
        frame_bytes_max: u32::MAX,
    };
    for round in 0..50 {
        let envelopes: Vec<Envelope> = (0..40).map(|_| rng.envelope()).collect();
        let mut stream = BytesMut::new();
        for envelope in &envelopes {
            envelope.encode(&mut stream);
        }
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        let mut position = 0;
        while position < stream.len() {
            let chunk = (1 + rng.below(200) as usize).min(stream.len() - position);
            buffer.extend_from_slice(&stream[position..position + chunk]);
            position += chunk;
            while let Decoded::Complete { envelope, used } =
                decode(&buffer, &limits).expect("valid stream")
            {
                decoded.push(envelope);
                buffer.advance(used);
            }
        }
        assert!(buffer.is_empty(), "round {round}");
        assert_eq!(decoded, envelopes, "round {round}");
    }
}

#[test]
fn mutated_frames_never_panic_and_reencode_consistently() {
    let mut rng = Rng::new(SEED ^ 2);
    let limits = Limits::default();
    for _ in 0..20_000 {
        let mut bytes = encode(&rng.envelope()).to_vec();
        for _ in 0..1 + rng.below(4) {
            let index = rng.below(bytes.len() as u64) as usize;
            bytes[index] = rng.next_u64() as u8;
        }
        if rng.flip() {
            let cut = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(cut);
        }
        match decode(&bytes, &limits) {
            Ok(Decoded::Complete { envelope, used }) => {
                assert!(used <= bytes.len());
                let again = encode(&envelope);
                match decode(&again, &limits) {
                    Ok(Decoded::Complete {
                        envelope: second, ..
                    }) => assert_eq!(second, envelope),
                    other => panic!("re-encoded {envelope:?} decoded as {other:?}"),
                }
            }
            Ok(Decoded::NeedMore { at_least }) => assert!(at_least > bytes.len()),
            Err(error) => {
                // Every error renders a message.
                assert!(!error.to_string().is_empty());
            }
        }
    }
}
