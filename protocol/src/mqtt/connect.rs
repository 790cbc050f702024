//! CONNECT and CONNACK (sections 3.1 and 3.2).
//!
//! ```text
//! CONNECT:  protocol name "MQTT" (string) | level (4 or 5) | flags | keep alive (u16)
//!           | v5: properties | client identifier | will: [v5: will properties] topic, payload
//!           | user name | password
//! flags:    bit 7 user name, 6 password, 5 will retain, 4-3 will QoS, 2 will, 1 clean start,
//!           0 reserved (0)
//! CONNACK:  flags (bit 0 session present) | reason code (v3.1.1: return code 0 to 5)
//!           | v5: properties
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::mqtt::error::MqttError;
use crate::mqtt::properties::Properties;
use crate::mqtt::property_identifier::PropertyContext;
use crate::mqtt::reason::{ConnectReturnCode, ReasonCode};
use crate::mqtt::topic::validate_topic_name;
use crate::mqtt::wire::{check_field_length, check_string, field_len, put_field, Reader};
use crate::mqtt::{PacketType, ProtocolVersion, QoS};

/// The protocol name of MQTT 3.1.1 and 5.0.
const PROTOCOL_NAME: &[u8] = b"MQTT";
/// The protocol name of MQTT 3.1 (level 3), which this codec recognises only to refuse it with
/// the right return code.
const PROTOCOL_NAME_V31: &[u8] = b"MQIsdp";

const FLAG_RESERVED: u8 = 0b0000_0001;
const FLAG_CLEAN_START: u8 = 0b0000_0010;
const FLAG_WILL: u8 = 0b0000_0100;
const WILL_QOS_SHIFT: u8 = 3;
const FLAG_WILL_RETAIN: u8 = 0b0010_0000;
const FLAG_PASSWORD: u8 = 0b0100_0000;
const FLAG_USERNAME: u8 = 0b1000_0000;

/// CONNACK flags: only bit 0, Session Present, is defined.
const CONNACK_FLAG_SESSION_PRESENT: u8 = 0b0000_0001;

/// Client → server, the first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version the client speaks; it decides how the rest of the connection is encoded.
    pub protocol: ProtocolVersion,
    /// Start a new session (v5 Clean Start; v3.1.1 Clean Session).
    pub clean_start: bool,
    /// Seconds the client may stay silent; 0 turns keep alive off.
    pub keep_alive_s: u16,
    /// The client identifier, possibly empty (the server then assigns one or refuses).
    pub client_id: String,
    /// The message to publish when the connection ends abnormally.
    pub will: Option<Will>,
    /// The user name.
    pub username: Option<String>,
    /// The password, binary data. v3.1.1 allows it only with a user name.
    pub password: Option<Bytes>,
    /// CONNECT properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// The will of a [`Connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The topic name it is published to.
    pub topic: String,
    /// The application message.
    pub payload: Bytes,
    /// The QoS it is published with.
    pub qos: QoS,
    /// Whether it is published as a retained message.
    pub retain: bool,
    /// Will properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// Server → client, the reply to [`Connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// The server resumes a session it kept for this client. Only with a success.
    pub session_present: bool,
    /// Success or why the connection is refused. In v3.1.1 it travels as the nearest return code
    /// ([`ReasonCode::to_v311_connect_return_code`]).
    pub reason_code: ReasonCode,
    /// CONNACK properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

impl Connect {
    pub(crate) fn decode_body(reader: &mut Reader) -> Result<Connect, MqttError> {
        let name = reader.binary("protocol name")?;
        let level = reader.u8("protocol level")?;
        if name == PROTOCOL_NAME_V31 {
            return Err(MqttError::UnsupportedProtocolVersion { level });
        }
        if name != PROTOCOL_NAME {
            return Err(MqttError::InvalidProtocolName {
                name: String::from_utf8_lossy(&name).into_owned(),
            });
        }
        let protocol = ProtocolVersion::from_level(level)
            .ok_or(MqttError::UnsupportedProtocolVersion { level })?;
        let flags = reader.u8("connect flags")?;
        if flags & FLAG_RESERVED != 0 {
            return Err(MqttError::ReservedBits {
                packet_type: PacketType::Connect,
                field: "connect flags",
                value: flags,
                allowed: !FLAG_RESERVED,
            });
        }
        let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0b11;
        let will_qos = QoS::from_u8(will_qos_bits).ok_or(MqttError::InvalidQoS {
            packet_type: PacketType::Connect,
            field: "will QoS",
            value: will_qos_bits,
        })?;
        let has_will = flags & FLAG_WILL != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || flags & FLAG_WILL_RETAIN != 0) {
            return Err(MqttError::WillFlagsWithoutWill { flags });
        }
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if protocol == ProtocolVersion::V311 && has_password && !has_username {
            return Err(MqttError::PasswordWithoutUsername);
        }
        let keep_alive_s = reader.u16("keep alive")?;
        let properties = match protocol {
            ProtocolVersion::V5 => {
                Properties::decode(reader, PropertyContext::Packet(PacketType::Connect))?
            }
            ProtocolVersion::V311 => Properties::default(),
        };
        let client_id = reader.string("client identifier")?;
        let will = if has_will {
            let properties = match protocol {
                ProtocolVersion::V5 => Properties::decode(reader, PropertyContext::Will)?,
                ProtocolVersion::V311 => Properties::default(),
            };
            let topic = reader.string("will topic")?;
            check_topic_name(&topic)?;
            Some(Will {
                topic,
                payload: reader.binary("will payload")?,
                qos: will_qos,
                retain: flags & FLAG_WILL_RETAIN != 0,
                properties,
            })
        } else {
            None
        };
        let username = has_username
            .then(|| reader.string("user name"))
            .transpose()?;
        let password = has_password
            .then(|| reader.binary("password"))
            .transpose()?;
        Ok(Connect {
            protocol,
            clean_start: flags & FLAG_CLEAN_START != 0,
            keep_alive_s,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | (will.qos as u8) << WILL_QOS_SHIFT;
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        flags
    }

    pub(crate) fn body_len(&self) -> usize {
        let v5 = self.protocol == ProtocolVersion::V5;
        let mut length = field_len(PROTOCOL_NAME) + 1 + 1 + 2;
        if v5 {
            length += self.properties.encoded_len_with_length();
        }
        length += field_len(self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                length += will.properties.encoded_len_with_length();
            }
            length += field_len(will.topic.as_bytes()) + field_len(&will.payload);
        }
        length += self
            .username
            .as_deref()
            .map_or(0, |name| field_len(name.as_bytes()));
        length += self.password.as_deref().map_or(0, field_len);
        length
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        let v5 = self.protocol == ProtocolVersion::V5;
        put_field(out, PROTOCOL_NAME);
        out.put_u8(self.protocol.level());
        out.put_u8(self.flags());
        out.put_u16(self.keep_alive_s);
        if v5 {
            self.properties.encode(out);
        }
        put_field(out, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(out);
            }
            put_field(out, will.topic.as_bytes());
            put_field(out, &will.payload);
        }
        if let Some(username) = &self.username {
            put_field(out, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_field(out, password);
        }
    }

    pub(crate) fn validate(&self) -> Result<(), MqttError> {
        let packet_type = PacketType::Connect;
        check_string(packet_type, "client identifier", &self.client_id)?;
        if let Some(will) = &self.will {
            check_topic_name(&will.topic)?;
            check_field_length(packet_type, "will payload", will.payload.len())?;
            if self.protocol == ProtocolVersion::V5 {
                will.properties.validate(PropertyContext::Will)?;
            }
        }
        if let Some(username) = &self.username {
            check_string(packet_type, "user name", username)?;
        }
        if let Some(password) = &self.password {
            check_field_length(packet_type, "password", password.len())?;
            if self.protocol == ProtocolVersion::V311 && self.username.is_none() {
                return Err(MqttError::PasswordWithoutUsername);
            }
        }
        if self.protocol == ProtocolVersion::V5 {
            self.properties
                .validate(PropertyContext::Packet(packet_type))?;
        }
        Ok(())
    }
}

/// A will topic is a topic name.
fn check_topic_name(topic: &str) -> Result<(), MqttError> {
    validate_topic_name(topic).map_err(|problem| MqttError::TopicNameInvalid {
        packet_type: PacketType::Connect,
        topic: topic.to_owned(),
        problem,
    })
}

impl ConnAck {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<ConnAck, MqttError> {
        let packet_type = PacketType::ConnAck;
        let flags = reader.u8("connect acknowledge flags")?;
        if flags & !CONNACK_FLAG_SESSION_PRESENT != 0 {
            return Err(MqttError::ReservedBits {
                packet_type,
                field: "connect acknowledge flags",
                value: flags,
                allowed: CONNACK_FLAG_SESSION_PRESENT,
            });
        }
        let value = reader.u8("reason code")?;
        let (reason_code, properties) = match version {
            ProtocolVersion::V5 => (
                ReasonCode::from_u8_in(value, packet_type)
                    .ok_or(MqttError::ReasonCodeInvalid { packet_type, value })?,
                Properties::decode(reader, PropertyContext::Packet(packet_type))?,
            ),
            ProtocolVersion::V311 => (
                ConnectReturnCode::from_u8(value)
                    .ok_or(MqttError::ReasonCodeInvalid { packet_type, value })?
                    .to_reason_code(),
                Properties::default(),
            ),
        };
        let connack = ConnAck {
            session_present: flags & CONNACK_FLAG_SESSION_PRESENT != 0,
            reason_code,
            properties,
        };
        connack.check_session_present()?;
        Ok(connack)
    }

    /// [MQTT-3.2.2-6] (v5) and [MQTT-3.2.2-4] (v3.1.1): a refusal has no session.
    fn check_session_present(&self) -> Result<(), MqttError> {
        if self.session_present && self.reason_code.is_error() {
            return Err(MqttError::SessionPresentWithError {
                reason_code: self.reason_code,
            });
        }
        Ok(())
    }

    fn reason_byte(&self, version: ProtocolVersion) -> u8 {
        match version {
            ProtocolVersion::V5 => self.reason_code.as_u8(),
            ProtocolVersion::V311 => self.reason_code.to_v311_connect_return_code().as_u8(),
        }
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        match version {
            ProtocolVersion::V5 => 2 + self.properties.encoded_len_with_length(),
            ProtocolVersion::V311 => 2,
        }
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u8(if self.session_present {
            CONNACK_FLAG_SESSION_PRESENT
        } else {
            0
        });
        out.put_u8(self.reason_byte(version));
        if version == ProtocolVersion::V5 {
            self.properties.encode(out);
        }
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let packet_type = PacketType::ConnAck;
        self.check_session_present()?;
        // Any reason code but success becomes a refusal in v3.1.1, even one below 0x80.
        if version == ProtocolVersion::V311
            && self.session_present
            && self.reason_code.to_v311_connect_return_code() != ConnectReturnCode::Accepted
        {
            return Err(MqttError::SessionPresentWithError {
                reason_code: self.reason_code,
            });
        }
        if version == ProtocolVersion::V5 {
            if !self.reason_code.is_allowed_in(packet_type) {
                return Err(MqttError::ReasonCodeInvalid {
                    packet_type,
                    value: self.reason_code.as_u8(),
                });
            }
            self.properties
                .validate(PropertyContext::Packet(packet_type))?;
        }
        Ok(())
    }
}
