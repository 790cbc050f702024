//! Seeded randomized tests of the MQTT codec: round trips of random valid packets, random streams
//! cut at random points, and mutated packets that must decode to an error or to a packet that
//! re-encodes consistently. A failing seed reproduces the run.

mod mqtt_common;

use bytes::{Buf, BytesMut};
use mqtt_common::{encode, unlimited, Rng, VERSIONS};
use starling_protocol::mqtt::{decode, decode_connect, Decoded, Packet, ProtocolVersion};

const SEED: u64 = 0x4D51_5454_5354_524C;

#[test]
fn random_packets_round_trip() {
    let mut rng = Rng::new(SEED);
    for iteration in 0..4000 {
        let version = rng.pick(&VERSIONS);
        let packet = rng.packet(version);
        assert_eq!(
            packet.validate(version),
            Ok(()),
            "iteration {iteration}: {packet:?}"
        );
        let encoded = encode(&packet, version);
        match decode(&encoded, version, &unlimited()) {
            Ok(Decoded::Complete {
                packet: decoded,
                used,
            }) => {
                assert_eq!(decoded, packet, "iteration {iteration}");
                assert_eq!(used, encoded.len(), "iteration {iteration}");
            }
            other => panic!("iteration {iteration}: {packet:?} decoded as {other:?}"),
        }
    }
}

#[test]
fn random_streams_cut_at_random_points() {
    let mut rng = Rng::new(SEED ^ 1);
    for iteration in 0..100 {
        let version = rng.pick(&VERSIONS);
        let packets: Vec<Packet> = (0..1 + rng.below(20))
            .map(|_| rng.packet(version))
            .collect();
        let mut stream = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut stream);
        }
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        while fed < stream.len() {
            let chunk = (1 + rng.below(200) as usize).min(stream.len() - fed);
            buffer.extend_from_slice(&stream[fed..fed + chunk]);
            fed += chunk;
            loop {
                match decode(&buffer, version, &unlimited()).expect("a valid stream") {
                    Decoded::Complete { packet, used } => {
                        decoded.push(packet);
                        buffer.advance(used);
                    }
                    Decoded::NeedMore { at_least } => {
                        assert!(at_least > buffer.len(), "iteration {iteration}");
                        break;
                    }
                }
            }
        }
        assert!(buffer.is_empty(), "iteration {iteration}");
        assert_eq!(decoded, packets, "iteration {iteration}");
    }
}

/// Decode → encode → decode must agree for whatever the decoder accepts.
fn check_consistent(input: &[u8], version: ProtocolVersion, context: &str) {
    let decoded = decode(input, version, &unlimited());
    let Ok(Decoded::Complete { packet, used }) = decoded else {
        if let Ok(Decoded::NeedMore { at_least }) = decoded {
            assert!(at_least > input.len(), "{context}");
        }
        return;
    };
    assert!(used <= input.len(), "{context}");
    assert_eq!(packet.validate(version), Ok(()), "{context}: {packet:?}");
    let again = encode(&packet, version);
    match decode(&again, version, &unlimited()) {
        Ok(Decoded::Complete {
            packet: redecoded,
            used,
        }) => {
            assert_eq!(redecoded, packet, "{context}");
            assert_eq!(used, again.len(), "{context}");
        }
        other => panic!("{context}: {packet:?} re-encoded decodes as {other:?}"),
    }
}

#[test]
fn mutated_packets_decode_to_an_error_or_a_consistent_packet() {
    let mut rng = Rng::new(SEED ^ 2);
    for iteration in 0..20_000 {
        let version = rng.pick(&VERSIONS);
        let packet = rng.packet(version);
        let mut bytes = encode(&packet, version).to_vec();
        for _ in 0..1 + rng.below(3) {
            let position = rng.below(bytes.len() as u64) as usize;
            match rng.below(4) {
                0 => bytes[position] ^= 1 << rng.below(8),
                1 => bytes[position] = rng.next_u64() as u8,
                2 => bytes.truncate(position.max(1)),
                _ => bytes.insert(position, rng.next_u64() as u8),
            }
        }
        let context = format!("iteration {iteration}: {bytes:02x?}");
        check_consistent(&bytes, version, &context);
        if let Ok(Decoded::Complete { packet, .. }) = decode_connect(&bytes, &unlimited()) {
            assert!(matches!(packet, Packet::Connect(_)), "{context}");
        }
    }
}
