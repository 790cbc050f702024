//! MQTT 3.1.1 and 5.0 as a pure sans-IO codec: bytes in, typed packets out, and back.
//!
//! [`decode`] takes the bytes received so far on a connection whose protocol version is known and
//! answers a complete [`Packet`] with the number of bytes it used, [`Decoded::NeedMore`] with the
//! smallest input length that can make progress, or an [`MqttError`] whose
//! [`reason_code`](MqttError::reason_code) is what a v5 server sends back before closing.
//! [`decode_bytes`] does the same on a [`bytes::Bytes`] and slices payloads out of it without a
//! copy; [`decode_connect`] decodes the first packet of a connection, whose version it learns from
//! the packet itself. [`Packet::encode`] appends to the caller's buffer and
//! [`Packet::encoded_len`] knows the size in advance. Limits ([`MqttLimits`]) are checked from the
//! fixed header, before a packet's body is buffered.
//!
//! # Fixed header
//!
//! Every packet starts with a fixed header. Integers after it are big-endian (the network order
//! MQTT uses, unlike the native protocol).
//!
//! ```text
//!            7   6   5   4   3   2   1   0
//!          +---------------+---------------+
//! byte 1   |  packet type  |     flags     |   flags: PUBLISH = DUP, QoS (2 bits), RETAIN;
//!          +---------------+---------------+          PUBREL, SUBSCRIBE, UNSUBSCRIBE = 0b0010;
//! byte 2.. | remaining length: 1 to 4 bytes |          every other packet = 0b0000
//!          | of 7 bits, least significant   |
//!          | first, bit 7 = "another byte"  |
//!          +--------------------------------+
//!          | variable header and payload:   |
//!          | exactly `remaining length`     |
//!          | bytes                          |
//!          +--------------------------------+
//! ```
//!
//! Strings are a u16 length and UTF-8 without U+0000; binary data is a u16 length and bytes; v5
//! properties are a variable byte integer length and a list of (identifier, value) pairs.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use starling_protocol::mqtt::{decode, Decoded, MqttLimits, Packet, ProtocolVersion};
//!
//! let mut buffer = BytesMut::new();
//! Packet::PingReq.encode(ProtocolVersion::V5, &mut buffer);
//! assert_eq!(&buffer[..], &[0xC0, 0x00]);
//!
//! let limits = MqttLimits::default();
//! assert_eq!(
//!     decode(&buffer[..1], ProtocolVersion::V5, &limits),
//!     Ok(Decoded::NeedMore { at_least: 2 })
//! );
//! assert_eq!(
//!     decode(&buffer, ProtocolVersion::V5, &limits),
//!     Ok(Decoded::Complete { packet: Packet::PingReq, used: 2 })
//! );
//! ```

mod connect;
mod decode;
mod disconnect;
mod error;
mod packet;
mod properties;
mod property_identifier;
mod publish;
mod reason;
mod subscribe;
mod topic;
mod var_int;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use decode::{decode, decode_bytes, decode_connect, peek_packet_size, Decoded};
pub use disconnect::{Auth, Disconnect};
pub use error::{MqttError, TopicError, VarIntError};
pub use packet::Packet;
pub use properties::{PayloadFormat, Properties};
pub use property_identifier::{PropertyContext, PropertyIdentifier};
pub use publish::{Publish, PublishResponse};
pub use reason::{ConnectReturnCode, ReasonCode};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use topic::{topic_matches, validate_topic_filter, validate_topic_name, SharedSubscription};
pub use var_int::VarInt;

use std::fmt;

/// Default for [`MqttLimits::packet_bytes_max`]: a 1 MiB payload plus 64 KiB for the topic,
/// properties and headers, the same budget as the native protocol's frames.
pub const PACKET_BYTES_MAX_DEFAULT: u32 = 1024 * 1024 + 64 * 1024;

/// Largest packet MQTT can express: one type byte, four remaining length bytes and the largest
/// remaining length.
pub const PACKET_BYTES_MAX_PROTOCOL: u32 = 1 + 4 + VarInt::MAX;

/// Limits a decoder enforces before it buffers anything.
///
/// Every other size (topic, property list, number of filters in a SUBSCRIBE) is bounded by the
/// packet size, so one limit bounds the memory a peer can make the decoder use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttLimits {
    /// Largest accepted packet, fixed header included (what MQTT 5 calls the Maximum Packet Size).
    pub packet_bytes_max: u32,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            packet_bytes_max: PACKET_BYTES_MAX_DEFAULT,
        }
    }
}

/// The MQTT version spoken on a connection, chosen by the client's CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of a CONNECT in this version.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The version with this protocol level, if it is one this codec speaks.
    pub fn from_level(level: u8) -> Option<ProtocolVersion> {
        match level {
            4 => Some(ProtocolVersion::V311),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ProtocolVersion::V311 => "MQTT 3.1.1",
            ProtocolVersion::V5 => "MQTT 5.0",
        })
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: delivered at most once, never acknowledged.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: delivered at least once, acknowledged by PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: delivered exactly once, through PUBREC, PUBREL and PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this value; 3 and above are not QoS levels.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The packet type, the high nibble of a packet's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client → server: open a session.
    Connect = 1,
    /// Server → client: reply to CONNECT.
    ConnAck = 2,
    /// Either way: an application message.
    Publish = 3,
    /// Reply to a QoS 1 PUBLISH.
    PubAck = 4,
    /// First reply to a QoS 2 PUBLISH.
    PubRec = 5,
    /// Reply to PUBREC.
    PubRel = 6,
    /// Reply to PUBREL, the end of a QoS 2 exchange.
    PubComp = 7,
    /// Client → server: add subscriptions.
    Subscribe = 8,
    /// Server → client: reply to SUBSCRIBE.
    SubAck = 9,
    /// Client → server: remove subscriptions.
    Unsubscribe = 10,
    /// Server → client: reply to UNSUBSCRIBE.
    UnsubAck = 11,
    /// Client → server: liveness check.
    PingReq = 12,
    /// Server → client: reply to PINGREQ.
    PingResp = 13,
    /// Either way in v5, client → server in v3.1.1: the connection ends.
    Disconnect = 14,
    /// Either way, v5 only: an authentication exchange.
    Auth = 15,
}

impl PacketType {
    /// The packet type with this value of the high nibble; 0 is reserved.
    pub fn from_u8(value: u8) -> Option<PacketType> {
        Some(match value {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The name the specification uses, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }

    /// Whether this packet type exists in `version` (AUTH is v5 only).
    pub fn exists_in(self, version: ProtocolVersion) -> bool {
        self != PacketType::Auth || version == ProtocolVersion::V5
    }

    /// The low nibble every packet of this type must carry, or `None` for PUBLISH, whose flags
    /// carry DUP, QoS and RETAIN.
    pub fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0b0000),
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}
