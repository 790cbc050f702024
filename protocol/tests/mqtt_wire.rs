//! MQTT wire compatibility: fixed expected bytes for every packet type in both versions, round
//! trips of packets carrying every property, and decoding at every split point and byte by byte.

mod mqtt_common;

use std::collections::HashSet;

use bytes::{Buf, Bytes, BytesMut};
use mqtt_common::{decode_complete, encode, hex, samples, unlimited, V311, V5, VERSIONS};
use starling_protocol::mqtt::{
    decode, decode_bytes, decode_connect, peek_packet_size, Auth, ConnAck, Connect, Decoded,
    Disconnect, MqttLimits, Packet, PacketType, PayloadFormat, Properties, ProtocolVersion,
    Publish, PublishResponse, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

struct Case {
    name: &'static str,
    version: ProtocolVersion,
    packet: Packet,
    bytes: Vec<u8>,
}

fn response(packet_id: u16, reason_code: ReasonCode, properties: Properties) -> PublishResponse {
    PublishResponse {
        packet_id,
        reason_code,
        properties,
    }
}

fn user_property(name: &str, value: &str) -> Vec<(String, String)> {
    vec![(name.into(), value.into())]
}

/// The expected bytes of one packet of every type in each version, written out by hand from the
/// specification: these are the wire format, and a change here breaks every deployed client.
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "v3.1.1 CONNECT with will, user name and password",
            version: V311,
            packet: Packet::Connect(Box::new(Connect {
                protocol: V311,
                clean_start: true,
                keep_alive_s: 60,
                client_id: "c1".into(),
                will: Some(Will {
                    topic: "w".into(),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Properties::default(),
                }),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
                properties: Properties::default(),
            })),
            bytes: hex(&[
                "10 1C",             // CONNECT, remaining length 28
                "00 04 4D 51 54 54", // protocol name "MQTT"
                "04",                // protocol level 4
                "EE",    // user name, password, will retain, will QoS 1, will, clean session
                "00 3C", // keep alive 60 s
                "00 02 63 31", // client identifier "c1"
                "00 01 77", // will topic "w"
                "00 03 62 79 65", // will payload "bye"
                "00 01 75", // user name "u"
                "00 01 70", // password "p"
            ]),
        },
        Case {
            name: "v5 CONNECT with properties and a will with properties",
            version: V5,
            packet: Packet::Connect(Box::new(Connect {
                protocol: V5,
                clean_start: true,
                keep_alive_s: 60,
                client_id: "c1".into(),
                will: Some(Will {
                    topic: "w".into(),
                    payload: Bytes::new(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    properties: Properties {
                        will_delay_interval_s: Some(5),
                        ..Properties::default()
                    },
                }),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
                properties: Properties {
                    session_expiry_interval_s: Some(3600),
                    receive_maximum: Some(20),
                    ..Properties::default()
                },
            })),
            bytes: hex(&[
                "10 28",             // CONNECT, remaining length 40
                "00 04 4D 51 54 54", // protocol name "MQTT"
                "05",                // protocol level 5
                "C6",                // user name, password, will (QoS 0), clean start
                "00 3C",             // keep alive 60 s
                "08",                // property length 8
                "11 00 00 0E 10",    // Session Expiry Interval 3600 s
                "21 00 14",          // Receive Maximum 20
                "00 02 63 31",       // client identifier "c1"
                "05",                // will property length 5
                "18 00 00 00 05",    // Will Delay Interval 5 s
                "00 01 77",          // will topic "w"
                "00 00",             // empty will payload
                "00 01 75",          // user name "u"
                "00 01 70",          // password "p"
            ]),
        },
        Case {
            name: "v3.1.1 CONNACK accepted with a session",
            version: V311,
            packet: Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: Properties::default(),
            }),
            bytes: hex(&["20 02", "01", "00"]), // session present, return code 0
        },
        Case {
            name: "v3.1.1 CONNACK refused: not authorised",
            version: V311,
            packet: Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NotAuthorized,
                properties: Properties::default(),
            }),
            bytes: hex(&["20 02", "00", "05"]), // no session, return code 5
        },
        Case {
            name: "v5 CONNACK with properties",
            version: V5,
            packet: Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: Properties {
                    assigned_client_identifier: Some("x".into()),
                    topic_alias_maximum: Some(10),
                    ..Properties::default()
                },
            }),
            bytes: hex(&[
                "20 0A",       // CONNACK, remaining length 10
                "00",          // no session
                "00",          // Success
                "07",          // property length 7
                "12 00 01 78", // Assigned Client Identifier "x"
                "22 00 0A",    // Topic Alias Maximum 10
            ]),
        },
        Case {
            name: "v3.1.1 PUBLISH QoS 1 retained",
            version: V311,
            packet: Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "a/b".into(),
                packet_id: Some(10),
                properties: Properties::default(),
                payload: Bytes::from_static(b"hi"),
            }),
            bytes: hex(&[
                "33 09",          // PUBLISH, QoS 1, RETAIN; remaining length 9
                "00 03 61 2F 62", // topic "a/b"
                "00 0A",          // packet identifier 10
                "68 69",          // payload "hi"
            ]),
        },
        Case {
            name: "v5 PUBLISH QoS 2 DUP with properties",
            version: V5,
            packet: Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "t".into(),
                packet_id: Some(7),
                properties: Properties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    topic_alias: Some(3),
                    user_properties: user_property("k", "v"),
                    ..Properties::default()
                },
                payload: Bytes::from_static(b"x"),
            }),
            bytes: hex(&[
                "3C 13",                // PUBLISH, DUP, QoS 2; remaining length 19
                "00 01 74",             // topic "t"
                "00 07",                // packet identifier 7
                "0C",                   // property length 12
                "01 01",                // Payload Format Indicator: UTF-8
                "23 00 03",             // Topic Alias 3
                "26 00 01 6B 00 01 76", // User Property ("k", "v")
                "78",                   // payload "x"
            ]),
        },
        Case {
            name: "v5 PUBLISH QoS 0 with an empty topic and a Topic Alias",
            version: V5,
            packet: Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: String::new(),
                packet_id: None,
                properties: Properties {
                    topic_alias: Some(3),
                    ..Properties::default()
                },
                payload: Bytes::from_static(b"x"),
            }),
            bytes: hex(&["30 07", "00 00", "03", "23 00 03", "78"]),
        },
        Case {
            name: "v3.1.1 PUBACK",
            version: V311,
            packet: Packet::PubAck(PublishResponse::success(10)),
            bytes: hex(&["40 02", "00 0A"]),
        },
        Case {
            name: "v3.1.1 PUBREC",
            version: V311,
            packet: Packet::PubRec(PublishResponse::success(10)),
            bytes: hex(&["50 02", "00 0A"]),
        },
        Case {
            name: "v3.1.1 PUBREL (flags 0b0010)",
            version: V311,
            packet: Packet::PubRel(PublishResponse::success(10)),
            bytes: hex(&["62 02", "00 0A"]),
        },
        Case {
            name: "v3.1.1 PUBCOMP",
            version: V311,
            packet: Packet::PubComp(PublishResponse::success(10)),
            bytes: hex(&["70 02", "00 0A"]),
        },
        Case {
            name: "v5 PUBACK Success without properties: reason code left out",
            version: V5,
            packet: Packet::PubAck(PublishResponse::success(10)),
            bytes: hex(&["40 02", "00 0A"]),
        },
        Case {
            name: "v5 PUBACK No Matching Subscribers: property length left out",
            version: V5,
            packet: Packet::PubAck(response(
                10,
                ReasonCode::NoMatchingSubscribers,
                Properties::default(),
            )),
            bytes: hex(&["40 03", "00 0A", "10"]),
        },
        Case {
            name: "v5 PUBREC with a Reason String",
            version: V5,
            packet: Packet::PubRec(response(
                10,
                ReasonCode::UnspecifiedError,
                Properties {
                    reason_string: Some("r".into()),
                    ..Properties::default()
                },
            )),
            bytes: hex(&["50 08", "00 0A", "80", "04", "1F 00 01 72"]),
        },
        Case {
            name: "v5 PUBREL Packet Identifier Not Found",
            version: V5,
            packet: Packet::PubRel(response(
                10,
                ReasonCode::PacketIdentifierNotFound,
                Properties::default(),
            )),
            bytes: hex(&["62 03", "00 0A", "92"]),
        },
        Case {
            name: "v5 PUBCOMP",
            version: V5,
            packet: Packet::PubComp(PublishResponse::success(10)),
            bytes: hex(&["70 02", "00 0A"]),
        },
        Case {
            name: "v3.1.1 SUBSCRIBE with two filters",
            version: V311,
            packet: Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    (
                        "a/+".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..SubscriptionOptions::default()
                        },
                    ),
                    ("#".into(), SubscriptionOptions::default()),
                ],
                properties: Properties::default(),
            }),
            bytes: hex(&[
                "82 0C",          // SUBSCRIBE (flags 0b0010), remaining length 12
                "00 01",          // packet identifier 1
                "00 03 61 2F 2B", // "a/+"
                "01",             // QoS 1
                "00 01 23",       // "#"
                "00",             // QoS 0
            ]),
        },
        Case {
            name: "v5 SUBSCRIBE with options and a Subscription Identifier",
            version: V5,
            packet: Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    (
                        "a/+".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        },
                    ),
                    ("$share/g/t".into(), SubscriptionOptions::default()),
                ],
                properties: Properties {
                    subscription_identifiers: vec![200],
                    ..Properties::default()
                },
            }),
            bytes: hex(&[
                "82 19",                               // SUBSCRIBE, remaining length 25
                "00 01",                               // packet identifier 1
                "03",                                  // property length 3
                "0B C8 01",                            // Subscription Identifier 200
                "00 03 61 2F 2B",                      // "a/+"
                "2D", // retain handling 2, retain as published, no local, QoS 1
                "00 0A 24 73 68 61 72 65 2F 67 2F 74", // "$share/g/t"
                "00", // QoS 0
            ]),
        },
        Case {
            name: "v3.1.1 SUBACK granted QoS 1 and a failure",
            version: V311,
            packet: Packet::SubAck(SubAck {
                packet_id: 1,
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
                properties: Properties::default(),
            }),
            bytes: hex(&["90 04", "00 01", "01 80"]),
        },
        Case {
            name: "v5 SUBACK granted QoS 1 and Topic Filter Invalid",
            version: V5,
            packet: Packet::SubAck(SubAck {
                packet_id: 1,
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid],
                properties: Properties::default(),
            }),
            bytes: hex(&["90 05", "00 01", "00", "01 8F"]),
        },
        Case {
            name: "v3.1.1 UNSUBSCRIBE",
            version: V311,
            packet: Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["a/+".into()],
                properties: Properties::default(),
            }),
            bytes: hex(&["A2 07", "00 02", "00 03 61 2F 2B"]),
        },
        Case {
            name: "v5 UNSUBSCRIBE with a User Property",
            version: V5,
            packet: Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["a/+".into()],
                properties: Properties {
                    user_properties: user_property("a", "b"),
                    ..Properties::default()
                },
            }),
            bytes: hex(&[
                "A2 0F",
                "00 02",
                "07",
                "26 00 01 61 00 01 62", // User Property ("a", "b")
                "00 03 61 2F 2B",
            ]),
        },
        Case {
            name: "v3.1.1 UNSUBACK",
            version: V311,
            packet: Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                reason_codes: Vec::new(),
                properties: Properties::default(),
            }),
            bytes: hex(&["B0 02", "00 02"]),
        },
        Case {
            name: "v5 UNSUBACK",
            version: V5,
            packet: Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
                properties: Properties::default(),
            }),
            bytes: hex(&["B0 05", "00 02", "00", "00 11"]),
        },
        Case {
            name: "v3.1.1 PINGREQ",
            version: V311,
            packet: Packet::PingReq,
            bytes: hex(&["C0 00"]),
        },
        Case {
            name: "v3.1.1 PINGRESP",
            version: V311,
            packet: Packet::PingResp,
            bytes: hex(&["D0 00"]),
        },
        Case {
            name: "v5 PINGREQ",
            version: V5,
            packet: Packet::PingReq,
            bytes: hex(&["C0 00"]),
        },
        Case {
            name: "v5 PINGRESP",
            version: V5,
            packet: Packet::PingResp,
            bytes: hex(&["D0 00"]),
        },
        Case {
            name: "v3.1.1 DISCONNECT",
            version: V311,
            packet: Packet::Disconnect(Disconnect::default()),
            bytes: hex(&["E0 00"]),
        },
        Case {
            name: "v5 DISCONNECT normal: everything left out",
            version: V5,
            packet: Packet::Disconnect(Disconnect::default()),
            bytes: hex(&["E0 00"]),
        },
        Case {
            name: "v5 DISCONNECT with will message: property length left out",
            version: V5,
            packet: Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DisconnectWithWillMessage,
                properties: Properties::default(),
            }),
            bytes: hex(&["E0 01", "04"]),
        },
        Case {
            name: "v5 DISCONNECT server shutting down with Session Expiry Interval",
            version: V5,
            packet: Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ServerShuttingDown,
                properties: Properties {
                    session_expiry_interval_s: Some(0),
                    ..Properties::default()
                },
            }),
            bytes: hex(&["E0 07", "8B", "05", "11 00 00 00 00"]),
        },
        Case {
            name: "v5 AUTH success: everything left out",
            version: V5,
            packet: Packet::Auth(Auth::default()),
            bytes: hex(&["F0 00"]),
        },
        Case {
            name: "v5 AUTH continue with method and data",
            version: V5,
            packet: Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: Properties {
                    authentication_method: Some("m".into()),
                    authentication_data: Some(Bytes::from_static(&[1])),
                    ..Properties::default()
                },
            }),
            bytes: hex(&[
                "F0 0A",
                "18",          // Continue Authentication
                "08",          // property length 8
                "15 00 01 6D", // Authentication Method "m"
                "16 00 01 01", // Authentication Data [1]
            ]),
        },
    ]
}

#[test]
fn fixed_bytes_for_every_packet_type_and_version() {
    let mut covered = HashSet::new();
    for case in cases() {
        let encoded = encode(&case.packet, case.version);
        assert_eq!(
            &encoded[..],
            &case.bytes[..],
            "{}: encoded {:02x?}",
            case.name,
            &encoded[..]
        );
        assert_eq!(
            decode_complete(&case.bytes, case.version),
            case.packet,
            "{}",
            case.name
        );
        covered.insert((case.version, case.packet.packet_type()));
    }
    for version in VERSIONS {
        for value in 1..=15 {
            let packet_type = PacketType::from_u8(value).expect("1 to 15 are packet types");
            if packet_type.exists_in(version) {
                assert!(
                    covered.contains(&(version, packet_type)),
                    "no fixed bytes for {packet_type} in {version}"
                );
            }
        }
    }
}

#[test]
fn longer_forms_of_shortened_packets_decode_the_same() {
    let forms: [(&str, Packet); 6] = [
        // Reason code Success and an empty property list, both written out.
        (
            "40 04 00 0A 00 00",
            Packet::PubAck(PublishResponse::success(10)),
        ),
        // Reason code written out, property length left out.
        (
            "40 03 00 0A 00",
            Packet::PubAck(PublishResponse::success(10)),
        ),
        ("E0 02 00 00", Packet::Disconnect(Disconnect::default())),
        ("E0 01 00", Packet::Disconnect(Disconnect::default())),
        ("F0 02 00 00", Packet::Auth(Auth::default())),
        (
            "F0 01 19",
            Packet::Auth(Auth {
                reason_code: ReasonCode::ReAuthenticate,
                properties: Properties::default(),
            }),
        ),
    ];
    for (bytes, packet) in forms {
        assert_eq!(decode_complete(&hex(&[bytes]), V5), packet, "{bytes}");
    }
}

#[test]
fn samples_with_every_property_round_trip() {
    for version in VERSIONS {
        for packet in samples(version) {
            let encoded = encode(&packet, version);
            assert_eq!(packet.validate(version), Ok(()), "{packet:?}");
            assert_eq!(decode_complete(&encoded, version), packet, "{version}");
        }
    }
}

#[test]
fn connect_names_its_own_version() {
    for version in VERSIONS {
        let connect = samples(version)
            .into_iter()
            .find(|packet| matches!(packet, Packet::Connect(_)))
            .expect("a CONNECT sample");
        // The version passed to encode is ignored for CONNECT.
        let encoded = encode(&connect, V311);
        assert_eq!(encoded, encode(&connect, V5));
        assert_eq!(decode_complete(&encoded, V311), connect);
        assert_eq!(decode_complete(&encoded, V5), connect);
        assert_eq!(
            decode_connect(&encoded, &unlimited()),
            Ok(Decoded::Complete {
                packet: connect,
                used: encoded.len()
            })
        );
    }
}

#[test]
fn v5_fields_are_left_out_for_v311() {
    let publish = samples(V5)
        .into_iter()
        .find(|packet| matches!(packet, Packet::Publish(publish) if !publish.properties.is_empty()))
        .expect("a PUBLISH with properties");
    let Packet::Publish(mut expected) = publish.clone() else {
        unreachable!()
    };
    expected.properties = Properties::default();
    assert_eq!(
        decode_complete(&encode(&publish, V311), V311),
        Packet::Publish(expected)
    );

    let refused = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::BadAuthenticationMethod,
        properties: Properties {
            reason_string: Some("no".into()),
            ..Properties::default()
        },
    });
    // Return code 4, bad user name or password.
    assert_eq!(&encode(&refused, V311)[..], &hex(&["20 02 00 04"])[..]);

    let suback = Packet::SubAck(SubAck {
        packet_id: 3,
        reason_codes: vec![ReasonCode::GrantedQoS2, ReasonCode::QuotaExceeded],
        properties: Properties::default(),
    });
    assert_eq!(&encode(&suback, V311)[..], &hex(&["90 04 00 03 02 80"])[..]);

    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::ServerBusy,
        properties: Properties::default(),
    });
    assert_eq!(&encode(&disconnect, V311)[..], &hex(&["E0 00"])[..]);
}

#[test]
fn every_split_point_needs_more_then_completes() {
    let limits = MqttLimits::default();
    for version in VERSIONS {
        for packet in samples(version) {
            let encoded = encode(&packet, version);
            let total = encoded.len();
            let header_len = total - peek_header_body_len(&encoded);
            for split in 0..total {
                match decode(&encoded[..split], version, &limits) {
                    Ok(Decoded::NeedMore { at_least }) => {
                        assert!(
                            at_least > split && at_least <= total,
                            "{packet:?} split at {split}: at_least {at_least}"
                        );
                        if split >= header_len {
                            assert_eq!(at_least, total, "the size is known from the header");
                        }
                    }
                    other => panic!("{version} {packet:?} split at {split}: got {other:?}"),
                }
                let expected_size = (split >= header_len).then_some(total);
                assert_eq!(peek_packet_size(&encoded[..split]), Ok(expected_size));
                // Feeding the two halves in turn, as a socket would, completes the packet.
                let mut buffer = BytesMut::from(&encoded[..split]);
                buffer.extend_from_slice(&encoded[split..]);
                assert_eq!(decode_complete(&buffer, version), packet);
            }
        }
    }
}

/// The remaining length of an encoded packet.
fn peek_header_body_len(encoded: &[u8]) -> usize {
    let mut body_len = 0;
    let mut shift = 0;
    for &byte in &encoded[1..] {
        body_len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    body_len
}

/// Feeds `stream` to a receive buffer `chunk` bytes at a time and decodes each packet as soon as
/// it is complete, the way the adapter's read loop does: peek the size, split the packet off the
/// buffer without copying, decode it from the frozen bytes.
fn decode_stream(stream: &[u8], chunk: usize, version: ProtocolVersion) -> Vec<Packet> {
    let limits = MqttLimits::default();
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            let Some(size) = peek_packet_size(&buffer).expect("a valid stream") else {
                assert!(matches!(
                    decode(&buffer, version, &limits),
                    Ok(Decoded::NeedMore { .. })
                ));
                break;
            };
            if buffer.len() < size {
                assert_eq!(
                    decode(&buffer, version, &limits),
                    Ok(Decoded::NeedMore { at_least: size })
                );
                break;
            }
            let packet_bytes = buffer.split_to(size).freeze();
            match decode_bytes(&packet_bytes, version, &limits).expect("a valid stream") {
                Decoded::Complete { packet, used } => {
                    assert_eq!(used, size);
                    decoded.push(packet);
                }
                Decoded::NeedMore { at_least } => panic!("need {at_least} of a whole packet"),
            }
        }
    }
    assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
    decoded
}

#[test]
fn a_stream_of_every_packet_decodes_byte_by_byte() {
    for version in VERSIONS {
        let packets = samples(version);
        let mut stream = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut stream);
        }
        assert_eq!(decode_stream(&stream, 1, version), packets);
        for chunk in [2, 3, 7, 64, 1000, stream.len()] {
            assert_eq!(
                decode_stream(&stream, chunk, version),
                packets,
                "chunks of {chunk}"
            );
        }
        // The plain slice decoder walks the same stream.
        let mut rest = stream.clone().freeze();
        let mut again = Vec::new();
        while !rest.is_empty() {
            match decode(&rest, version, &MqttLimits::default()) {
                Ok(Decoded::Complete { packet, used }) => {
                    again.push(packet);
                    rest.advance(used);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(again, packets);
    }
}

#[test]
fn decode_bytes_slices_the_payload_without_copying() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![7; 1000]),
    });
    let input = encode(&packet, V5).freeze();
    let Ok(Decoded::Complete {
        packet: Packet::Publish(publish),
        used,
    }) = decode_bytes(&input, V5, &MqttLimits::default())
    else {
        panic!("a complete PUBLISH")
    };
    assert_eq!(used, input.len());
    let payload_start = input.len() - 1000;
    assert_eq!(publish.payload.as_ptr(), input[payload_start..].as_ptr());
}
