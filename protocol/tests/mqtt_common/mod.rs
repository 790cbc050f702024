//! Shared helpers for the MQTT codec's public-API tests: encoding and decoding shorthands, sample
//! packets that together carry every property, and a seeded generator of random valid packets.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use starling_protocol::mqtt::{
    decode, Auth, ConnAck, Connect, Decoded, Disconnect, MqttLimits, Packet, PayloadFormat,
    Properties, ProtocolVersion, Publish, PublishResponse, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

pub use ProtocolVersion::{V311, V5};

/// Both versions, for tests that run on each.
pub const VERSIONS: [ProtocolVersion; 2] = [V311, V5];

/// Limits that accept every packet MQTT can express.
pub fn unlimited() -> MqttLimits {
    MqttLimits {
        packet_bytes_max: u32::MAX,
    }
}

/// Parses space-separated hex bytes, several strings concatenated (one per field, so each can
/// carry a comment).
pub fn hex(parts: &[&str]) -> Vec<u8> {
    parts
        .iter()
        .flat_map(|part| part.split_whitespace())
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

pub fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out);
    assert_eq!(
        out.len(),
        packet.encoded_len(version),
        "encoded_len of {packet:?}"
    );
    out
}

/// Decodes `input`, which must hold exactly one whole packet.
pub fn decode_complete(input: &[u8], version: ProtocolVersion) -> Packet {
    match decode(input, version, &unlimited()) {
        Ok(Decoded::Complete { packet, used }) => {
            assert_eq!(used, input.len(), "used of {packet:?}");
            packet
        }
        other => panic!("expected a complete packet from {input:02x?}, got {other:?}"),
    }
}

/// Properties that are all allowed together in a PUBLISH, every one present.
pub fn publish_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval_s: Some(0x0102_0304),
        content_type: Some("text/plain; charset=utf-8".into()),
        response_topic: Some("replies/é".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        subscription_identifiers: vec![1, 127, 128, 16_384, 268_435_455],
        topic_alias: Some(0xFFFF),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "".into()),
        ],
        ..Properties::default()
    }
}

/// One packet of every type, for `version`, together carrying every property in v5.
pub fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version == V5;
    let properties = |properties: Properties| {
        if v5 {
            properties
        } else {
            Properties::default()
        }
    };
    let reason = |code: ReasonCode| if v5 { code } else { ReasonCode::Success };
    let mut samples = vec![
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: false,
            keep_alive_s: 0xFFFF,
            client_id: "client-ü".into(),
            will: Some(Will {
                topic: "status/client".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: properties(Properties {
                    payload_format_indicator: Some(PayloadFormat::Unspecified),
                    message_expiry_interval_s: Some(60),
                    content_type: Some("application/json".into()),
                    response_topic: Some("will/replies".into()),
                    correlation_data: Some(Bytes::from_static(b"id")),
                    will_delay_interval_s: Some(30),
                    user_properties: vec![("w".into(), "1".into())],
                    ..Properties::default()
                }),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(&[0, 0xFF])),
            properties: properties(Properties {
                session_expiry_interval_s: Some(u32::MAX),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                request_problem_information: Some(false),
                request_response_information: Some(true),
                receive_maximum: Some(1),
                topic_alias_maximum: Some(0),
                user_properties: vec![("k".into(), "v".into())],
                maximum_packet_size_bytes: Some(1),
                ..Properties::default()
            }),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::Success,
            properties: properties(Properties {
                session_expiry_interval_s: Some(0),
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive_s: Some(30),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"server-final")),
                response_information: Some("responses/".into()),
                server_reference: Some("other:1883".into()),
                reason_string: Some("welcome".into()),
                receive_maximum: Some(65_535),
                topic_alias_maximum: Some(10),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                user_properties: vec![("region".into(), "eu".into())],
                maximum_packet_size_bytes: Some(u32::MAX),
                wildcard_subscription_available: Some(true),
                subscription_identifier_available: Some(false),
                shared_subscription_available: Some(true),
                ..Properties::default()
            }),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "sport/tennis/player1".into(),
            packet_id: Some(0xFFFF),
            properties: properties(publish_properties()),
            payload: Bytes::from(vec![0xAB; 300]),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "/".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        }),
        Packet::PubAck(PublishResponse::success(1)),
        Packet::PubAck(PublishResponse {
            packet_id: 2,
            reason_code: reason(ReasonCode::NoMatchingSubscribers),
            properties: Properties::default(),
        }),
        Packet::PubRec(PublishResponse {
            packet_id: 3,
            reason_code: reason(ReasonCode::QuotaExceeded),
            properties: properties(Properties {
                reason_string: Some("full".into()),
                user_properties: vec![("x".into(), "y".into())],
                ..Properties::default()
            }),
        }),
        Packet::PubRel(PublishResponse {
            packet_id: 4,
            reason_code: reason(ReasonCode::PacketIdentifierNotFound),
            properties: Properties::default(),
        }),
        Packet::PubComp(PublishResponse {
            packet_id: 5,
            reason_code: ReasonCode::Success,
            properties: properties(Properties {
                reason_string: Some("done".into()),
                ..Properties::default()
            }),
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 6,
            filters: vec![
                (
                    "sport/+/player1".into(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::DoNotSend
                        } else {
                            RetainHandling::SendOnSubscribe
                        },
                    },
                ),
                ("#".into(), SubscriptionOptions::default()),
                (
                    "$share/workers/jobs/#".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        retain_handling: if v5 {
                            RetainHandling::SendOnNewSubscribe
                        } else {
                            RetainHandling::SendOnSubscribe
                        },
                        ..SubscriptionOptions::default()
                    },
                ),
            ],
            properties: properties(Properties {
                subscription_identifiers: vec![268_435_455],
                user_properties: vec![("s".into(), "1".into())],
                ..Properties::default()
            }),
        }),
        Packet::SubAck(SubAck {
            packet_id: 6,
            reason_codes: if v5 {
                vec![
                    ReasonCode::GrantedQoS2,
                    ReasonCode::GRANTED_QOS_0,
                    ReasonCode::SharedSubscriptionsNotSupported,
                ]
            } else {
                vec![
                    ReasonCode::GrantedQoS2,
                    ReasonCode::GRANTED_QOS_0,
                    ReasonCode::UnspecifiedError,
                ]
            },
            properties: properties(Properties {
                reason_string: Some("partly".into()),
                ..Properties::default()
            }),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 7,
            filters: vec!["sport/+/player1".into(), "#".into()],
            properties: properties(Properties {
                user_properties: vec![("u".into(), "2".into())],
                ..Properties::default()
            }),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 7,
            reason_codes: if v5 {
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            } else {
                Vec::new()
            },
            properties: properties(Properties {
                reason_string: Some("ok".into()),
                ..Properties::default()
            }),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        samples.extend([
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ServerShuttingDown,
                properties: Properties {
                    session_expiry_interval_s: Some(10),
                    server_reference: Some("backup:1883".into()),
                    reason_string: Some("maintenance".into()),
                    user_properties: vec![("d".into(), "1".into())],
                    ..Properties::default()
                },
            }),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DisconnectWithWillMessage,
                properties: Properties::default(),
            }),
            Packet::Auth(Auth::default()),
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: Properties {
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"server-first")),
                    reason_string: Some("step 2".into()),
                    user_properties: vec![("a".into(), "b".into())],
                    ..Properties::default()
                },
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: String::new(),
                packet_id: Some(9),
                properties: Properties {
                    topic_alias: Some(3),
                    ..Properties::default()
                },
                payload: Bytes::from_static(b"aliased"),
            }),
        ]);
    }
    samples
}

/// A small deterministic generator (SplitMix64), so a failing seed reproduces the run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn flip(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn maybe<T>(&mut self, make: impl FnOnce(&mut Rng) -> T) -> Option<T> {
        if self.flip() {
            Some(make(self))
        } else {
            None
        }
    }

    pub fn u16_nonzero(&mut self) -> u16 {
        match self.below(3) {
            0 => 1,
            1 => u16::MAX,
            _ => 1 + self.below(u64::from(u16::MAX)) as u16,
        }
    }

    pub fn u32(&mut self) -> u32 {
        match self.below(3) {
            0 => 0,
            1 => u32::MAX,
            _ => self.next_u64() as u32,
        }
    }

    pub fn bytes(&mut self, length_max: u64) -> Bytes {
        let length = self.below(length_max + 1) as usize;
        (0..length).map(|_| self.next_u64() as u8).collect()
    }

    /// Text mixing ASCII, multi-byte characters and a `/` now and then, never U+0000 or a
    /// wildcard.
    pub fn text(&mut self, length_max: u64) -> String {
        let length = self.below(length_max + 1);
        (0..length)
            .map(|_| self.pick(&['a', 'Z', '/', ' ', 'é', '€', '😀', '$', '\u{1}', '\u{7F}']))
            .collect()
    }

    pub fn topic(&mut self) -> String {
        let mut topic = self.text(12);
        if topic.is_empty() {
            topic.push('t');
        }
        topic
    }

    pub fn filter(&mut self) -> String {
        let mut levels: Vec<String> = (0..=self.below(4))
            .map(|_| match self.below(4) {
                0 => "+".to_owned(),
                _ => self.text(5).replace('/', ""),
            })
            .collect();
        if self.flip() {
            levels.push("#".into());
        }
        let mut filter = levels.join("/");
        if filter.is_empty() {
            filter.push('+');
        }
        if self.below(5) == 0 {
            let group = self.topic().replace('/', "");
            let group = if group.is_empty() { "g".into() } else { group };
            format!("$share/{group}/{filter}")
        } else {
            filter
        }
    }

    pub fn qos(&mut self) -> QoS {
        self.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    pub fn user_properties(&mut self) -> Vec<(String, String)> {
        (0..self.below(3))
            .map(|_| (self.text(4), self.text(4)))
            .collect()
    }

    /// A random valid packet for `version`.
    pub fn packet(&mut self, version: ProtocolVersion) -> Packet {
        let v5 = version == V5;
        let choices = if v5 { 15 } else { 14 };
        match self.below(choices) {
            0 => Packet::Connect(Box::new(self.connect())),
            1 => Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: if v5 {
                    self.pick(&[
                        ReasonCode::Success,
                        ReasonCode::BadUserNameOrPassword,
                        ReasonCode::ServerMoved,
                    ])
                } else {
                    self.pick(&[ReasonCode::Success, ReasonCode::ClientIdentifierNotValid])
                },
                properties: if v5 {
                    Properties {
                        assigned_client_identifier: self.maybe(|rng| rng.text(8)),
                        server_keep_alive_s: self.maybe(|rng| rng.u16_nonzero()),
                        maximum_qos: self
                            .maybe(|rng| rng.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce])),
                        retain_available: self.maybe(|rng| rng.flip()),
                        reason_string: self.maybe(|rng| rng.text(8)),
                        user_properties: self.user_properties(),
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            2 => Packet::Publish(self.publish(v5)),
            3..=6 => {
                let response = PublishResponse {
                    packet_id: self.u16_nonzero(),
                    reason_code: ReasonCode::Success,
                    properties: Properties::default(),
                };
                let mut response = response;
                if v5 {
                    response.reason_code = self.pick(&[
                        ReasonCode::Success,
                        ReasonCode::Success,
                        ReasonCode::NoMatchingSubscribers,
                        ReasonCode::NotAuthorized,
                    ]);
                    response.properties = Properties {
                        reason_string: self.maybe(|rng| rng.text(6)),
                        user_properties: self.user_properties(),
                        ..Properties::default()
                    };
                }
                let choice = self.below(4);
                if choice >= 2 && v5 && response.reason_code != ReasonCode::Success {
                    // PUBREL and PUBCOMP know only Success and Packet Identifier Not Found.
                    response.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                match choice {
                    0 => Packet::PubAck(response),
                    1 => Packet::PubRec(response),
                    2 => Packet::PubRel(response),
                    _ => Packet::PubComp(response),
                }
            }
            7 => Packet::Subscribe(Subscribe {
                packet_id: self.u16_nonzero(),
                filters: (0..=self.below(3))
                    .map(|_| {
                        let filter = self.filter();
                        let shared = filter.starts_with("$share/");
                        let options = SubscriptionOptions {
                            qos: self.qos(),
                            no_local: v5 && !shared && self.flip(),
                            retain_as_published: v5 && self.flip(),
                            retain_handling: if v5 {
                                self.pick(&[
                                    RetainHandling::SendOnSubscribe,
                                    RetainHandling::SendOnNewSubscribe,
                                    RetainHandling::DoNotSend,
                                ])
                            } else {
                                RetainHandling::SendOnSubscribe
                            },
                        };
                        (filter, options)
                    })
                    .collect(),
                properties: if v5 {
                    Properties {
                        subscription_identifiers: self
                            .maybe(|rng| 1 + rng.below(268_435_455) as u32)
                            .into_iter()
                            .collect(),
                        user_properties: self.user_properties(),
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            8 => Packet::SubAck(SubAck {
                packet_id: self.u16_nonzero(),
                reason_codes: (0..=self.below(4))
                    .map(|_| {
                        if v5 {
                            self.pick(&[
                                ReasonCode::GRANTED_QOS_0,
                                ReasonCode::GrantedQoS1,
                                ReasonCode::GrantedQoS2,
                                ReasonCode::TopicFilterInvalid,
                                ReasonCode::WildcardSubscriptionsNotSupported,
                            ])
                        } else {
                            self.pick(&[
                                ReasonCode::GRANTED_QOS_0,
                                ReasonCode::GrantedQoS2,
                                ReasonCode::UnspecifiedError,
                            ])
                        }
                    })
                    .collect(),
                properties: if v5 {
                    Properties {
                        reason_string: self.maybe(|rng| rng.text(6)),
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            9 => Packet::Unsubscribe(Unsubscribe {
                packet_id: self.u16_nonzero(),
                filters: (0..=self.below(3)).map(|_| self.filter()).collect(),
                properties: if v5 {
                    Properties {
                        user_properties: self.user_properties(),
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            10 => Packet::UnsubAck(UnsubAck {
                packet_id: self.u16_nonzero(),
                reason_codes: if v5 {
                    (0..=self.below(3))
                        .map(|_| {
                            self.pick(&[ReasonCode::Success, ReasonCode::NoSubscriptionExisted])
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                properties: Properties::default(),
            }),
            11 => Packet::PingReq,
            12 => Packet::PingResp,
            13 => Packet::Disconnect(if v5 {
                Disconnect {
                    reason_code: self.pick(&[
                        ReasonCode::NORMAL_DISCONNECTION,
                        ReasonCode::DisconnectWithWillMessage,
                        ReasonCode::KeepAliveTimeout,
                    ]),
                    properties: Properties {
                        session_expiry_interval_s: self.maybe(|rng| rng.u32()),
                        reason_string: self.maybe(|rng| rng.text(6)),
                        ..Properties::default()
                    },
                }
            } else {
                Disconnect::default()
            }),
            _ => Packet::Auth(Auth {
                reason_code: self.pick(&[
                    ReasonCode::Success,
                    ReasonCode::ContinueAuthentication,
                    ReasonCode::ReAuthenticate,
                ]),
                properties: Properties {
                    authentication_method: self.maybe(|rng| rng.text(6)),
                    ..Properties::default()
                },
            }),
        }
    }

    fn connect(&mut self) -> Connect {
        let protocol = self.pick(&[V311, V5]);
        let v5 = protocol == V5;
        let username = self.maybe(|rng| rng.text(6));
        Connect {
            protocol,
            clean_start: self.flip(),
            keep_alive_s: self.below(u64::from(u16::MAX) + 1) as u16,
            client_id: self.text(10),
            will: self.maybe(|rng| Will {
                topic: rng.topic(),
                payload: rng.bytes(20),
                qos: rng.qos(),
                retain: rng.flip(),
                properties: if v5 {
                    Properties {
                        will_delay_interval_s: rng.maybe(|rng| rng.u32()),
                        content_type: rng.maybe(|rng| rng.text(6)),
                        user_properties: rng.user_properties(),
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            // v3.1.1 allows a password only with a user name.
            password: if v5 || username.is_some() {
                self.maybe(|rng| rng.bytes(10))
            } else {
                None
            },
            username,
            properties: if v5 {
                Properties {
                    session_expiry_interval_s: self.maybe(|rng| rng.u32()),
                    receive_maximum: self.maybe(|rng| rng.u16_nonzero()),
                    maximum_packet_size_bytes: self.maybe(|rng| rng.u32().max(1)),
                    request_problem_information: self.maybe(|rng| rng.flip()),
                    user_properties: self.user_properties(),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }
    }

    fn publish(&mut self, v5: bool) -> Publish {
        let qos = self.qos();
        let alias = v5 && self.flip();
        let mut properties = Properties::default();
        if v5 {
            properties.topic_alias = alias.then(|| self.u16_nonzero());
            properties.payload_format_indicator =
                self.maybe(|rng| rng.pick(&[PayloadFormat::Unspecified, PayloadFormat::Utf8]));
            properties.message_expiry_interval_s = self.maybe(|rng| rng.u32());
            properties.correlation_data = self.maybe(|rng| rng.bytes(8));
            properties.response_topic = self.maybe(|rng| rng.topic());
            properties.subscription_identifiers = (0..self.below(3))
                .map(|_| 1 + self.below(268_435_455) as u32)
                .collect();
            properties.user_properties = self.user_properties();
        }
        Publish {
            dup: qos != QoS::AtMostOnce && self.flip(),
            qos,
            retain: self.flip(),
            topic: if alias && self.flip() {
                String::new()
            } else {
                self.topic()
            },
            packet_id: (qos != QoS::AtMostOnce).then(|| self.u16_nonzero()),
            properties,
            payload: {
                // Now and then a payload over 65535 bytes, past any u16 length prefix.
                let length_max = if self.below(10) == 0 { 70_000 } else { 40 };
                self.bytes(length_max)
            },
        }
    }
}
