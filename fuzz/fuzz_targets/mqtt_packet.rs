//! Fuzzes the MQTT decoder: arbitrary bytes must never panic it, and whatever it accepts must
//! encode and decode back to the same packet (decode → encode → decode agrees), in v3.1.1, in v5
//! and as the first packet of a connection.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use starling_protocol::mqtt::{
    decode, decode_bytes, decode_connect, peek_packet_size, Decoded, MqttLimits, Packet,
    ProtocolVersion,
};

/// Re-encodes a decoded packet and checks that it decodes to the same packet.
fn check_round_trip(packet: &Packet, version: ProtocolVersion, limits: &MqttLimits) {
    packet
        .validate(version)
        .expect("a decoded packet is valid for encoding");
    let mut encoded = BytesMut::new();
    packet.encode(version, &mut encoded);
    assert_eq!(encoded.len(), packet.encoded_len(version));
    match decode(&encoded, version, limits) {
        Ok(Decoded::Complete {
            packet: again,
            used,
        }) => {
            assert_eq!(&again, packet, "decode → encode → decode disagrees");
            assert_eq!(used, encoded.len());
        }
        other => panic!("re-encoded {packet:?} decoded as {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = MqttLimits::default();
    let shared = Bytes::copy_from_slice(data);
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        // Decode the input as a stream: every packet in turn, as a connection's read loop would.
        let mut input = data;
        loop {
            let result = decode(input, version, &limits);
            // The zero-copy decoder must agree with the copying one.
            let offset = data.len() - input.len();
            assert_eq!(
                decode_bytes(&shared.slice(offset..), version, &limits),
                result
            );
            let Ok(Decoded::Complete { packet, used }) = result else {
                if let Ok(Decoded::NeedMore { at_least }) = result {
                    assert!(at_least > input.len());
                }
                break;
            };
            assert!(
                used >= 2 && used <= input.len(),
                "used {used} of {}",
                input.len()
            );
            assert_eq!(peek_packet_size(input), Ok(Some(used)));
            check_round_trip(&packet, version, &limits);
            input = &input[used..];
        }
    }
    if let Ok(Decoded::Complete { packet, .. }) = decode_connect(data, &limits) {
        let Packet::Connect(connect) = &packet else {
            panic!("decode_connect answered {packet:?}");
        };
        check_round_trip(&packet, connect.protocol, &limits);
    }
});
