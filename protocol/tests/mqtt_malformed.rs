//! Malformed MQTT input: each kind of bad packet gives its own error, with the reason code a v5
//! server sends back, and the encoder's validation refuses the same packets.

mod mqtt_common;

use bytes::{Bytes, BytesMut};
use mqtt_common::{encode, hex, samples, unlimited, V311, V5, VERSIONS};
use starling_protocol::mqtt::{
    decode, decode_connect, Auth, ConnAck, Connect, Decoded, MqttError, MqttLimits, Packet,
    PacketType, Properties, PropertyContext, PropertyIdentifier, ProtocolVersion, Publish,
    PublishResponse, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicError, UnsubAck,
    VarIntError,
};

/// Decodes `parts` (hex) and returns the error it must give.
fn refused(version: ProtocolVersion, parts: &[&str]) -> MqttError {
    match decode(&hex(parts), version, &unlimited()) {
        Err(error) => error,
        other => panic!("{parts:?} in {version}: expected an error, got {other:?}"),
    }
}

fn assert_refused(
    version: ProtocolVersion,
    parts: &[&str],
    expected: MqttError,
    reason_code: ReasonCode,
) {
    let error = refused(version, parts);
    assert_eq!(error, expected, "{parts:?}");
    assert_eq!(error.reason_code(), reason_code, "{error}");
}

#[test]
fn a_fifth_remaining_length_byte_is_malformed() {
    for version in VERSIONS {
        assert_refused(
            version,
            &["30", "FF FF FF FF 7F"],
            MqttError::MalformedRemainingLength {
                problem: VarIntError::TooLong,
            },
            ReasonCode::MalformedPacket,
        );
        // Known from the fourth byte, before the fifth arrives.
        assert_refused(
            version,
            &["C0", "80 80 80 80"],
            MqttError::MalformedRemainingLength {
                problem: VarIntError::TooLong,
            },
            ReasonCode::MalformedPacket,
        );
        // A remaining length in more bytes than needed.
        assert_refused(
            version,
            &["C0", "80 00"],
            MqttError::MalformedRemainingLength {
                problem: VarIntError::NotMinimal,
            },
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn an_oversize_packet_is_refused_from_its_fixed_header() {
    let limits = MqttLimits {
        packet_bytes_max: 100,
    };
    // PUBLISH announcing 1000 bytes: only the fixed header is there.
    let header = hex(&["30", "E8 07"]);
    let error = decode(&header, V5, &limits).expect_err("too large");
    assert_eq!(
        error,
        MqttError::PacketTooLarge {
            packet_type: PacketType::Publish,
            size: 1003,
            limit: 100
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::PacketTooLarge);
    // A packet of exactly the limit is waited for.
    assert_eq!(
        decode(&hex(&["30", "62"]), V311, &limits),
        Ok(Decoded::NeedMore { at_least: 100 })
    );
    assert!(matches!(
        decode(&hex(&["30", "63"]), V311, &limits),
        Err(MqttError::PacketTooLarge {
            size: 101,
            limit: 100,
            ..
        })
    ));
    // The largest remaining length is refused by the default limit too.
    assert!(matches!(
        decode(&hex(&["30", "FF FF FF 7F"]), V5, &MqttLimits::default()),
        Err(MqttError::PacketTooLarge {
            size: 268_435_460,
            ..
        })
    ));
    assert!(matches!(
        decode_connect(&hex(&["10", "E8 07"]), &limits),
        Err(MqttError::PacketTooLarge { size: 1003, .. })
    ));
}

#[test]
fn wildcards_and_empty_topics_are_invalid_topic_names() {
    for version in VERSIONS {
        for (topic_hex, topic, problem) in [
            ("00 03 61 2F 23", "a/#", TopicError::WildcardInTopicName),
            ("00 03 61 2F 2B", "a/+", TopicError::WildcardInTopicName),
            ("00 00", "", TopicError::Empty),
        ] {
            let length = format!("{:02X}", topic_hex.split_whitespace().count() + 1);
            // v5 adds an empty property list.
            let properties = if version == V5 { "00" } else { "" };
            let length = if version == V5 {
                format!("{:02X}", u8::from_str_radix(&length, 16).unwrap() + 1)
            } else {
                length
            };
            assert_refused(
                version,
                &["30", &length, topic_hex, properties, "78"],
                MqttError::TopicNameInvalid {
                    packet_type: PacketType::Publish,
                    topic: topic.into(),
                    problem,
                },
                ReasonCode::TopicNameInvalid,
            );
        }
    }
    // A will topic is a topic name too.
    let error = refused(
        V311,
        &[
            "10 13",
            "00 04 4D 51 54 54 04",
            "06",    // will, clean session
            "00 00", // keep alive
            "00 00", // client identifier
            "00 01 2B",
            "00 02 68 69",
        ],
    );
    assert!(matches!(
        error,
        MqttError::TopicNameInvalid {
            packet_type: PacketType::Connect,
            ..
        }
    ));
}

#[test]
fn invalid_utf8_and_null_in_strings_are_malformed() {
    assert_refused(
        V311,
        &["30 05", "00 03 61 FF 62"],
        MqttError::InvalidUtf8 {
            packet_type: PacketType::Publish,
            field: "topic name",
            valid_up_to: 1,
        },
        ReasonCode::MalformedPacket,
    );
    // An encoded surrogate half (U+D800).
    assert!(matches!(
        refused(V5, &["30 06", "00 03 ED A0 80", "00"]),
        MqttError::InvalidUtf8 { valid_up_to: 0, .. }
    ));
    assert_refused(
        V5,
        &["30 06", "00 03 61 00 62", "00"],
        MqttError::NullCharacter {
            packet_type: PacketType::Publish,
            field: "topic name",
        },
        ReasonCode::MalformedPacket,
    );
    // U+0000 in a User Property of a PUBACK.
    assert_refused(
        V5,
        &["40 0B", "00 01", "00", "07", "26 00 01 00 00 01 62"],
        MqttError::NullCharacter {
            packet_type: PacketType::PubAck,
            field: "User Property name",
        },
        ReasonCode::MalformedPacket,
    );
    // U+0000 in a client identifier.
    assert!(matches!(
        refused(
            V311,
            &["10 0D", "00 04 4D 51 54 54 04", "02", "00 00", "00 01 00"]
        ),
        MqttError::NullCharacter {
            field: "client identifier",
            ..
        }
    ));
}

#[test]
fn reserved_fixed_header_flags_are_malformed() {
    for version in VERSIONS {
        for (first, packet_type, flags, required) in [
            ("80", PacketType::Subscribe, 0b0000, 0b0010),
            ("A0", PacketType::Unsubscribe, 0b0000, 0b0010),
            ("60", PacketType::PubRel, 0b0000, 0b0010),
            ("41", PacketType::PubAck, 0b0001, 0b0000),
            ("C8", PacketType::PingReq, 0b1000, 0b0000),
            ("12", PacketType::Connect, 0b0010, 0b0000),
        ] {
            // Refused from the first byte alone.
            assert_refused(
                version,
                &[first],
                MqttError::ReservedFlags {
                    packet_type,
                    flags,
                    required,
                },
                ReasonCode::MalformedPacket,
            );
        }
        assert_refused(
            version,
            &["00 00"],
            MqttError::UnknownPacketType { value: 0, version },
            ReasonCode::MalformedPacket,
        );
    }
    assert_refused(
        V311,
        &["F0 00"],
        MqttError::UnknownPacketType {
            value: 15,
            version: V311,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn qos_3_and_dup_with_qos_0_are_malformed() {
    for version in VERSIONS {
        assert_refused(
            version,
            &["36"],
            MqttError::InvalidQoS {
                packet_type: PacketType::Publish,
                field: "fixed header QoS",
                value: 3,
            },
            ReasonCode::MalformedPacket,
        );
        assert_refused(
            version,
            &["38"],
            MqttError::DupFlagWithQoS0,
            ReasonCode::MalformedPacket,
        );
    }
    // Will QoS 3.
    assert!(matches!(
        refused(
            V311,
            &["10 0C", "00 04 4D 51 54 54 04", "1C", "00 00", "00 00"]
        ),
        MqttError::InvalidQoS {
            field: "will QoS",
            value: 3,
            ..
        }
    ));
    // Subscription QoS 3.
    assert!(matches!(
        refused(V311, &["82 06", "00 01", "00 01 61", "03"]),
        MqttError::InvalidQoS { value: 3, .. }
    ));
}

#[test]
fn property_rules() {
    // Content Type twice in a PUBLISH.
    assert_refused(
        V5,
        &["30 0C", "00 01 74", "08", "03 00 01 61", "03 00 01 62"],
        MqttError::DuplicateProperty {
            context: PropertyContext::Packet(PacketType::Publish),
            property: PropertyIdentifier::ContentType,
        },
        ReasonCode::ProtocolError,
    );
    // Subscription Identifier twice: allowed in a PUBLISH, not in a SUBSCRIBE.
    let Packet::Publish(publish) =
        mqtt_common::decode_complete(&hex(&["30 08", "00 01 74", "04", "0B 01 0B 02"]), V5)
    else {
        panic!("a PUBLISH")
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
    assert_refused(
        V5,
        &["82 0B", "00 01", "04", "0B 01 0B 02", "00 01 61 00"],
        MqttError::DuplicateProperty {
            context: PropertyContext::Packet(PacketType::Subscribe),
            property: PropertyIdentifier::SubscriptionIdentifier,
        },
        ReasonCode::ProtocolError,
    );
    // User Property may repeat, and keeps its order.
    let Packet::PubAck(ack) = mqtt_common::decode_complete(
        &hex(&[
            "40 10",
            "00 01",
            "00",
            "0C",
            "26 00 01 62 00 00",
            "26 00 01 61 00 00",
        ]),
        V5,
    ) else {
        panic!("a PUBACK")
    };
    assert_eq!(
        ack.properties.user_properties,
        vec![("b".into(), String::new()), ("a".into(), String::new())]
    );
    // Session Expiry Interval in a PUBLISH.
    assert_refused(
        V5,
        &["30 09", "00 01 74", "05", "11 00 00 00 01"],
        MqttError::PropertyNotAllowed {
            context: PropertyContext::Packet(PacketType::Publish),
            property: PropertyIdentifier::SessionExpiryInterval,
        },
        ReasonCode::MalformedPacket,
    );
    // Topic Alias in a will.
    let will_alias = refused(
        V5,
        &[
            "10 16",
            "00 04 4D 51 54 54 05",
            "06",
            "00 00",
            "00",       // no properties
            "00 00",    // client identifier
            "03",       // will property length
            "23 00 01", // Topic Alias 1
            "00 01 77",
            "00 00",
        ],
    );
    assert_eq!(
        will_alias,
        MqttError::PropertyNotAllowed {
            context: PropertyContext::Will,
            property: PropertyIdentifier::TopicAlias,
        }
    );
    // An unknown identifier.
    assert_refused(
        V5,
        &["30 06", "00 01 74", "02", "04 00"],
        MqttError::UnknownProperty {
            context: PropertyContext::Packet(PacketType::Publish),
            identifier: 0x04,
        },
        ReasonCode::MalformedPacket,
    );
    // A property list longer than the packet.
    assert!(matches!(
        refused(V5, &["30 05", "00 01 74", "05", "01"]),
        MqttError::Truncated {
            field: "properties",
            ..
        }
    ));
    // A property value running past the end of its list.
    assert!(matches!(
        refused(V5, &["30 07", "00 01 74", "02", "02 00", "00"]),
        MqttError::Truncated {
            field: "Message Expiry Interval",
            ..
        }
    ));
}

#[test]
fn forbidden_property_values() {
    let zero = |property, value, expected| MqttError::PropertyValueInvalid {
        context: PropertyContext::Packet(PacketType::Publish),
        property,
        value,
        expected,
    };
    // Topic Alias 0 is answered with Topic Alias Invalid.
    assert_refused(
        V5,
        &["30 07", "00 01 74", "03", "23 00 00"],
        zero(PropertyIdentifier::TopicAlias, 0, "1 to 65535"),
        ReasonCode::TopicAliasInvalid,
    );
    assert_refused(
        V5,
        &["30 06", "00 01 74", "02", "0B 00"],
        zero(
            PropertyIdentifier::SubscriptionIdentifier,
            0,
            "1 to 268435455",
        ),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V5,
        &["30 06", "00 01 74", "02", "01 02"],
        zero(
            PropertyIdentifier::PayloadFormatIndicator,
            2,
            "0 (unspecified bytes) or 1 (UTF-8)",
        ),
        ReasonCode::ProtocolError,
    );
    let connect_with = |properties: &str| {
        let properties = hex(&[properties]);
        let mut bytes = vec![0x10, 0];
        bytes.extend(hex(&["00 04 4D 51 54 54 05", "02", "00 00"]));
        bytes.push(properties.len() as u8);
        bytes.extend(properties);
        bytes.extend([0, 0]);
        bytes[1] = (bytes.len() - 2) as u8;
        decode(&bytes, V5, &unlimited()).expect_err("refused")
    };
    for (properties, property) in [
        ("21 00 00", PropertyIdentifier::ReceiveMaximum),
        ("27 00 00 00 00", PropertyIdentifier::MaximumPacketSize),
    ] {
        let error = connect_with(properties);
        assert!(
            matches!(error, MqttError::PropertyValueInvalid { property: found, value: 0, .. } if found == property),
            "{error:?}"
        );
        assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
    }
    let error = connect_with("17 02");
    assert!(matches!(
        error,
        MqttError::PropertyValueInvalid {
            property: PropertyIdentifier::RequestProblemInformation,
            value: 2,
            ..
        }
    ));
    let error = connect_with("16 00 01 01");
    assert_eq!(
        error,
        MqttError::AuthenticationDataWithoutMethod {
            context: PropertyContext::Packet(PacketType::Connect)
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
    // Maximum QoS 2 in a CONNACK.
    assert!(matches!(
        refused(V5, &["20 05", "00 00", "02", "24 02"]),
        MqttError::PropertyValueInvalid {
            property: PropertyIdentifier::MaximumQoS,
            value: 2,
            ..
        }
    ));
    // A Response Topic with a wildcard.
    assert!(matches!(
        refused(V5, &["30 08", "00 01 74", "04", "08 00 01 23"]),
        MqttError::TopicNameInvalid {
            problem: TopicError::WildcardInTopicName,
            ..
        }
    ));
}

#[test]
fn packet_identifier_zero_is_a_protocol_error() {
    for version in VERSIONS {
        for (parts, packet_type) in [
            (&["40 02", "00 00"][..], PacketType::PubAck),
            (&["62 02", "00 00"][..], PacketType::PubRel),
            (&["B0 02", "00 00"][..], PacketType::UnsubAck),
            (&["32 05", "00 01 74", "00 00"][..], PacketType::Publish),
            (
                &["82 06", "00 00", "00 01 61", "00"][..],
                PacketType::Subscribe,
            ),
        ] {
            assert_refused(
                version,
                parts,
                MqttError::PacketIdentifierZero { packet_type },
                ReasonCode::ProtocolError,
            );
        }
    }
}

#[test]
fn subscribe_and_unsubscribe_need_a_filter() {
    let empty = |packet_type, field| MqttError::EmptyList { packet_type, field };
    assert_refused(
        V311,
        &["82 02", "00 01"],
        empty(PacketType::Subscribe, "topic filters"),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V5,
        &["82 03", "00 01", "00"],
        empty(PacketType::Subscribe, "topic filters"),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V311,
        &["A2 02", "00 01"],
        empty(PacketType::Unsubscribe, "topic filters"),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V5,
        &["A2 03", "00 01", "00"],
        empty(PacketType::Unsubscribe, "topic filters"),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V311,
        &["90 02", "00 01"],
        empty(PacketType::SubAck, "reason codes"),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V5,
        &["B0 03", "00 01", "00"],
        empty(PacketType::UnsubAck, "reason codes"),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn subscription_options_and_filters() {
    // Reserved bits: bit 6 in v5, bit 2 (no local in v5) in v3.1.1.
    assert_refused(
        V5,
        &["82 07", "00 01", "00", "00 01 61", "40"],
        MqttError::ReservedBits {
            packet_type: PacketType::Subscribe,
            field: "subscription options",
            value: 0x40,
            allowed: 0x3F,
        },
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        V311,
        &["82 06", "00 01", "00 01 61", "04"],
        MqttError::ReservedBits {
            packet_type: PacketType::Subscribe,
            field: "subscription options",
            value: 0x04,
            allowed: 0x03,
        },
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        V5,
        &["82 07", "00 01", "00", "00 01 61", "30"],
        MqttError::RetainHandlingInvalid { value: 3 },
        ReasonCode::ProtocolError,
    );
    assert_refused(
        V5,
        &[
            "82 0F",
            "00 01",
            "00",
            "00 09 24 73 68 61 72 65 2F 67 2F",
            "00",
        ],
        MqttError::TopicFilterInvalid {
            packet_type: PacketType::Subscribe,
            filter: "$share/g/".into(),
            problem: TopicError::SharedFilterMissing,
        },
        ReasonCode::TopicFilterInvalid,
    );
    assert_refused(
        V311,
        &["A2 09", "00 01", "00 05 61 2F 23 2F 62"],
        MqttError::TopicFilterInvalid {
            packet_type: PacketType::Unsubscribe,
            filter: "a/#/b".into(),
            problem: TopicError::MultiLevelWildcardMisplaced,
        },
        ReasonCode::TopicFilterInvalid,
    );
    assert_refused(
        V5,
        &[
            "82 10",
            "00 01",
            "00",
            "00 0A 24 73 68 61 72 65 2F 67 2F 74",
            "04",
        ],
        MqttError::NoLocalOnSharedSubscription {
            filter: "$share/g/t".into(),
        },
        ReasonCode::ProtocolError,
    );
}

#[test]
fn trailing_bytes_inside_a_packet_are_malformed() {
    for (version, parts, packet_type, trailing) in [
        (V311, &["C0 01", "00"][..], PacketType::PingReq, 1),
        (V5, &["D0 02", "00 00"][..], PacketType::PingResp, 2),
        (V311, &["40 03", "00 0A", "00"][..], PacketType::PubAck, 1),
        (V311, &["E0 01", "00"][..], PacketType::Disconnect, 1),
        (V311, &["20 03", "00 00", "00"][..], PacketType::ConnAck, 1),
        (V311, &["B0 03", "00 01", "00"][..], PacketType::UnsubAck, 1),
        (
            V5,
            &["40 05", "00 0A", "00", "00", "FF"][..],
            PacketType::PubAck,
            1,
        ),
        (
            V311,
            &[
                "10 0E",
                "00 04 4D 51 54 54 04",
                "02",
                "00 00",
                "00 00",
                "AA BB",
            ][..],
            PacketType::Connect,
            2,
        ),
    ] {
        assert_refused(
            version,
            parts,
            MqttError::TrailingBytes {
                packet_type,
                trailing,
            },
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn connect_rules() {
    let limits = MqttLimits::default();
    let connect = |parts: &[&str]| decode_connect(&hex(parts), &limits);
    // MQTT 3.1 is recognised and refused with its level.
    let error = connect(&[
        "10 0E",
        "00 06 4D 51 49 73 64 70",
        "03",
        "02",
        "00 3C",
        "00 00",
    ])
    .expect_err("3.1");
    assert_eq!(error, MqttError::UnsupportedProtocolVersion { level: 3 });
    assert_eq!(error.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(
        connect(&["10 0C", "00 04 4D 51 54 54", "06", "02", "00 3C", "00 00"]),
        Err(MqttError::UnsupportedProtocolVersion { level: 6 })
    );
    let error = connect(&["10 0C", "00 04 4D 51 54 58", "04", "02", "00 3C", "00 00"])
        .expect_err("bad name");
    assert_eq!(
        error,
        MqttError::InvalidProtocolName {
            name: "MQTX".into()
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    // Reserved flag bit 0.
    assert_eq!(
        connect(&["10 0C", "00 04 4D 51 54 54", "04", "03", "00 3C", "00 00"]),
        Err(MqttError::ReservedBits {
            packet_type: PacketType::Connect,
            field: "connect flags",
            value: 0x03,
            allowed: 0xFE,
        })
    );
    // Will QoS 1 and will retain without the will flag.
    for flags in ["0A", "22"] {
        let error = connect(&["10 0C", "00 04 4D 51 54 54", "04", flags, "00 3C", "00 00"])
            .expect_err("will flags");
        assert!(matches!(error, MqttError::WillFlagsWithoutWill { .. }));
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
    // Password without user name: refused in v3.1.1, allowed in v5.
    assert_eq!(
        connect(&[
            "10 0F",
            "00 04 4D 51 54 54",
            "04",
            "42",
            "00 3C",
            "00 00",
            "00 01 70"
        ]),
        Err(MqttError::PasswordWithoutUsername)
    );
    let Ok(Decoded::Complete {
        packet: Packet::Connect(v5),
        ..
    }) = connect(&[
        "10 10",
        "00 04 4D 51 54 54",
        "05",
        "42",
        "00 3C",
        "00",
        "00 00",
        "00 01 70",
    ])
    else {
        panic!("v5 allows a password alone")
    };
    assert_eq!(v5.username, None);
    assert_eq!(v5.password, Some(Bytes::from_static(b"p")));
    // Another packet first.
    assert_eq!(
        connect(&["30"]),
        Err(MqttError::ExpectedConnect { value: 3 })
    );
}

#[test]
fn reason_codes_must_belong_to_their_packet() {
    assert_refused(
        V5,
        &["62 03", "00 01", "10"],
        MqttError::ReasonCodeInvalid {
            packet_type: PacketType::PubRel,
            value: 0x10,
        },
        ReasonCode::MalformedPacket,
    );
    assert!(matches!(
        refused(V5, &["20 03", "00 01 00"]),
        MqttError::ReasonCodeInvalid { value: 0x01, .. }
    ));
    assert!(matches!(
        refused(V311, &["20 02", "00 06"]),
        MqttError::ReasonCodeInvalid { value: 0x06, .. }
    ));
    assert!(matches!(
        refused(V311, &["90 03", "00 01 03"]),
        MqttError::ReasonCodeInvalid { value: 0x03, .. }
    ));
    assert!(matches!(
        refused(V5, &["F0 02", "87 00"]),
        MqttError::ReasonCodeInvalid { value: 0x87, .. }
    ));
    // A refusal with a session.
    for (version, parts) in [(V311, &["20 02", "01 05"]), (V5, &["20 03", "01 87 00"])] {
        assert_refused(
            version,
            parts,
            MqttError::SessionPresentWithError {
                reason_code: ReasonCode::NotAuthorized,
            },
            ReasonCode::ProtocolError,
        );
    }
    // Reserved CONNACK flag bits.
    assert!(matches!(
        refused(V311, &["20 02", "02 00"]),
        MqttError::ReservedBits { value: 0x02, .. }
    ));
}

/// Says whether an error is the expected one.
type ErrorCheck = fn(&MqttError) -> bool;

#[test]
fn validate_refuses_what_the_decoder_refuses() {
    let publish = |qos, packet_id| Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    let invalid: Vec<(ProtocolVersion, Packet, ErrorCheck)> = vec![
        (
            V5,
            Packet::Publish(publish(QoS::AtLeastOnce, None)),
            |error| matches!(error, MqttError::PacketIdentifierMismatch { .. }),
        ),
        (
            V5,
            Packet::Publish(publish(QoS::AtMostOnce, Some(1))),
            |error| matches!(error, MqttError::PacketIdentifierMismatch { .. }),
        ),
        (
            V5,
            Packet::Publish(publish(QoS::AtLeastOnce, Some(0))),
            |error| matches!(error, MqttError::PacketIdentifierZero { .. }),
        ),
        (
            V5,
            Packet::Publish(Publish {
                topic: "a/+".into(),
                ..publish(QoS::AtMostOnce, None)
            }),
            |error| matches!(error, MqttError::TopicNameInvalid { .. }),
        ),
        (
            // An empty topic is allowed with a Topic Alias, but v3.1.1 has no aliases.
            V311,
            Packet::Publish(Publish {
                topic: String::new(),
                properties: Properties {
                    topic_alias: Some(1),
                    ..Properties::default()
                },
                ..publish(QoS::AtMostOnce, None)
            }),
            |error| matches!(error, MqttError::TopicNameInvalid { .. }),
        ),
        (
            V5,
            Packet::Publish(Publish {
                properties: Properties {
                    receive_maximum: Some(5),
                    ..Properties::default()
                },
                ..publish(QoS::AtMostOnce, None)
            }),
            |error| matches!(error, MqttError::PropertyNotAllowed { .. }),
        ),
        (
            V5,
            Packet::Publish(Publish {
                properties: Properties {
                    user_properties: vec![("k".into(), "x".repeat(70_000))],
                    ..Properties::default()
                },
                ..publish(QoS::AtMostOnce, None)
            }),
            |error| matches!(error, MqttError::FieldTooLong { length: 70_000, .. }),
        ),
        (
            V5,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![("a".into(), SubscriptionOptions::default())],
                properties: Properties {
                    subscription_identifiers: vec![1, 2],
                    ..Properties::default()
                },
            }),
            |error| matches!(error, MqttError::DuplicateProperty { .. }),
        ),
        (
            V5,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![("a".into(), SubscriptionOptions::default())],
                properties: Properties {
                    subscription_identifiers: vec![268_435_456],
                    ..Properties::default()
                },
            }),
            |error| matches!(error, MqttError::PropertyValueInvalid { .. }),
        ),
        (
            V311,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: Vec::new(),
                properties: Properties::default(),
            }),
            |error| matches!(error, MqttError::EmptyList { .. }),
        ),
        (
            V5,
            Packet::PubRel(PublishResponse {
                packet_id: 1,
                reason_code: ReasonCode::NotAuthorized,
                properties: Properties::default(),
            }),
            |error| matches!(error, MqttError::ReasonCodeInvalid { .. }),
        ),
        (
            V5,
            Packet::UnsubAck(UnsubAck {
                packet_id: 1,
                reason_codes: Vec::new(),
                properties: Properties::default(),
            }),
            |error| matches!(error, MqttError::EmptyList { .. }),
        ),
        (
            V311,
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::NoMatchingSubscribers,
                properties: Properties::default(),
            }),
            |error| matches!(error, MqttError::SessionPresentWithError { .. }),
        ),
        (
            V311,
            Packet::Connect(Box::new(Connect {
                protocol: V311,
                clean_start: true,
                keep_alive_s: 0,
                client_id: "c".into(),
                will: None,
                username: None,
                password: Some(Bytes::from_static(b"p")),
                properties: Properties::default(),
            })),
            |error| matches!(error, MqttError::PasswordWithoutUsername),
        ),
        (V311, Packet::Auth(Auth::default()), |error| {
            matches!(error, MqttError::UnknownPacketType { value: 15, .. })
        }),
    ];
    for (version, packet, expected) in invalid {
        let error = packet.validate(version).expect_err("invalid");
        assert!(expected(&error), "{packet:?}: {error:?}");
    }
    for version in VERSIONS {
        for packet in samples(version) {
            assert_eq!(packet.validate(version), Ok(()));
        }
    }
}

#[test]
#[should_panic(expected = "does not exist in MQTT 3.1.1")]
fn encoding_auth_for_v311_panics() {
    Packet::Auth(Auth::default()).encode(V311, &mut BytesMut::new());
}

#[test]
fn encoding_a_valid_packet_never_produces_refused_bytes() {
    // A Topic Alias of 65535, a subscription identifier of 268,435,455 and a packet identifier of
    // 65535 are all at their upper bound and must survive.
    for version in VERSIONS {
        for packet in samples(version) {
            let encoded = encode(&packet, version);
            assert!(matches!(
                decode(&encoded, version, &unlimited()),
                Ok(Decoded::Complete { .. })
            ));
        }
    }
}
