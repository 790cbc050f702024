//! The one error type of the MQTT codec, and the reason code a server answers each error with.

use thiserror::Error;

use crate::mqtt::property_identifier::{PropertyContext, PropertyIdentifier};
use crate::mqtt::reason::ReasonCode;
use crate::mqtt::{PacketType, ProtocolVersion, QoS};

/// What is wrong with a variable byte integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VarIntError {
    /// The fourth byte has its continuation bit set, announcing a fifth byte.
    #[error("the fourth byte announces a fifth (at most four bytes are allowed)")]
    TooLong,
    /// The value is encoded in more bytes than it needs.
    #[error("the value is not encoded in the fewest bytes")]
    NotMinimal,
}

/// What is wrong with a topic name or a topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Topic names and filters hold at least one character.
    #[error("it is empty")]
    Empty,
    /// A string longer than a u16 length prefix can announce.
    #[error("it is {length_bytes} bytes, more than the 65535 a string may hold")]
    TooLong {
        /// Its length.
        length_bytes: usize,
    },
    /// U+0000 is forbidden in every MQTT string.
    #[error("it contains U+0000")]
    NullCharacter,
    /// `+` or `#` in a topic name, where they are not wildcards but forbidden.
    #[error("a topic name may not contain the wildcards `+` or `#`")]
    WildcardInTopicName,
    /// `#` somewhere other than alone in the last level.
    #[error("`#` must be alone in the last level")]
    MultiLevelWildcardMisplaced,
    /// `+` sharing its level with other characters.
    #[error("`+` must be alone in its level")]
    SingleLevelWildcardNotAlone,
    /// `$share/` followed by an empty share name.
    #[error("the share name of a `$share/` filter is empty")]
    ShareNameEmpty,
    /// A share name holding a wildcard.
    #[error("the share name of a `$share/` filter may not contain `+` or `#`")]
    ShareNameWildcard,
    /// `$share/{name}` with no filter after the name.
    #[error("a `$share/` filter needs a topic filter after its share name")]
    SharedFilterMissing,
}

/// Everything that can be wrong with the bytes of an MQTT packet, or with a packet about to be
/// encoded ([`crate::mqtt::Packet::validate`]).
///
/// Running out of input is not an error: the decoder answers [`crate::mqtt::Decoded::NeedMore`].
/// Every variant names the packet and the field concerned, so that a log line alone says what the
/// peer sent, and [`MqttError::reason_code`] gives the v5 reason code to send in the CONNACK or
/// DISCONNECT that closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MqttError {
    /// The remaining length of the fixed header is not a valid variable byte integer.
    #[error("malformed remaining length: {problem}")]
    MalformedRemainingLength {
        /// What is wrong with it.
        problem: VarIntError,
    },

    /// A variable byte integer inside a packet (a property length, a subscription identifier) is
    /// malformed.
    #[error("{packet_type}: field `{field}` is a malformed variable byte integer: {problem}")]
    MalformedVarInt {
        /// The packet being decoded.
        packet_type: PacketType,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: VarIntError,
    },

    /// The packet is larger than the limit in force. Reported as soon as the remaining length is
    /// known, before any of the body is buffered.
    #[error("{packet_type} packet of {size} bytes exceeds packet_bytes_max {limit} bytes")]
    PacketTooLarge {
        /// The packet announced.
        packet_type: PacketType,
        /// Its size, fixed header included.
        size: u32,
        /// The limit in force.
        limit: u32,
    },

    /// A packet to encode has a body larger than the remaining length can express.
    #[error("{packet_type} packet body of {length} bytes exceeds the 268435455 a remaining length can express")]
    RemainingLengthTooLarge {
        /// The packet being validated.
        packet_type: PacketType,
        /// Its body size.
        length: usize,
    },

    /// The packet type nibble is 0 (reserved), or AUTH on a v3.1.1 connection.
    #[error("packet type {value} does not exist in {version}")]
    UnknownPacketType {
        /// The high nibble of the first byte.
        value: u8,
        /// The version of the connection.
        version: ProtocolVersion,
    },

    /// The low nibble of the first byte is not the one this packet type requires.
    #[error(
        "{packet_type}: fixed header flags 0b{flags:04b}, the packet requires 0b{required:04b}"
    )]
    ReservedFlags {
        /// The packet being decoded.
        packet_type: PacketType,
        /// The flags found.
        flags: u8,
        /// The flags required.
        required: u8,
    },

    /// A QoS field holds 3.
    #[error("{packet_type}: field `{field}` holds QoS {value}, which does not exist")]
    InvalidQoS {
        /// The packet being decoded.
        packet_type: PacketType,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u8,
    },

    /// A PUBLISH with QoS 0 has its DUP flag set; DUP means a retransmission, which QoS 0 never
    /// makes.
    #[error("PUBLISH: DUP flag set on a QoS 0 message")]
    DupFlagWithQoS0,

    /// A field runs past the end of its packet (or of its property list).
    #[error("{packet_type}: field `{field}` needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The packet being decoded.
        packet_type: PacketType,
        /// The field that did not fit.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },

    /// Bytes remain inside the packet's remaining length after its last field.
    #[error("{packet_type}: {trailing} trailing bytes after the last field")]
    TrailingBytes {
        /// The packet being decoded.
        packet_type: PacketType,
        /// How many bytes were left over.
        trailing: usize,
    },

    /// A string field is not valid UTF-8.
    #[error("{packet_type}: field `{field}` is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// The packet being decoded.
        packet_type: PacketType,
        /// The string field.
        field: &'static str,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },

    /// A string field contains U+0000, which MQTT forbids in every string.
    #[error("{packet_type}: field `{field}` contains U+0000")]
    NullCharacter {
        /// The packet concerned.
        packet_type: PacketType,
        /// The string field.
        field: &'static str,
    },

    /// A string or binary field to encode is longer than its u16 length prefix allows.
    #[error("{packet_type}: field `{field}` is {length} bytes, more than the 65535 its length prefix allows")]
    FieldTooLong {
        /// The packet being validated.
        packet_type: PacketType,
        /// The field.
        field: &'static str,
        /// Its length.
        length: usize,
    },

    /// A flags byte inside the packet (CONNECT flags, CONNACK flags, subscription options) sets
    /// reserved bits.
    #[error("{packet_type}: field `{field}` = 0b{value:08b} sets reserved bits (allowed mask 0b{allowed:08b})")]
    ReservedBits {
        /// The packet being decoded.
        packet_type: PacketType,
        /// The flags field.
        field: &'static str,
        /// The byte found.
        value: u8,
        /// The bits that may be set.
        allowed: u8,
    },

    /// A topic name (PUBLISH, will topic, Response Topic) is invalid.
    #[error("{packet_type}: topic name {topic:?} is invalid: {problem}")]
    TopicNameInvalid {
        /// The packet concerned.
        packet_type: PacketType,
        /// The topic name.
        topic: String,
        /// What is wrong with it.
        problem: TopicError,
    },

    /// A topic filter (SUBSCRIBE, UNSUBSCRIBE) is invalid.
    #[error("{packet_type}: topic filter {filter:?} is invalid: {problem}")]
    TopicFilterInvalid {
        /// The packet concerned.
        packet_type: PacketType,
        /// The topic filter.
        filter: String,
        /// What is wrong with it.
        problem: TopicError,
    },

    /// A packet identifier is 0, which MQTT reserves to mean "none".
    #[error("{packet_type}: packet identifier 0")]
    PacketIdentifierZero {
        /// The packet concerned.
        packet_type: PacketType,
    },

    /// A PUBLISH to encode has a packet identifier with QoS 0, or none with QoS 1 or 2.
    #[error("PUBLISH: QoS {qos:?} with packet identifier {packet_id:?} (QoS 0 has none, QoS 1 and 2 need one)")]
    PacketIdentifierMismatch {
        /// The QoS.
        qos: QoS,
        /// The packet identifier.
        packet_id: Option<u16>,
    },

    /// A list that must hold at least one entry is empty (the filters of SUBSCRIBE and
    /// UNSUBSCRIBE, the reason codes of SUBACK and UNSUBACK).
    #[error("{packet_type}: `{field}` is empty, at least one is required")]
    EmptyList {
        /// The packet concerned.
        packet_type: PacketType,
        /// The list.
        field: &'static str,
    },

    /// A subscription's Retain Handling is 3.
    #[error("SUBSCRIBE: retain handling {value} does not exist (0, 1 or 2)")]
    RetainHandlingInvalid {
        /// The value found.
        value: u8,
    },

    /// A v5 subscription to a shared subscription sets No Local.
    #[error("SUBSCRIBE: No Local set on shared subscription {filter:?}")]
    NoLocalOnSharedSubscription {
        /// The topic filter.
        filter: String,
    },

    /// A CONNECT's protocol name is neither "MQTT" nor v3.1's "MQIsdp".
    #[error("CONNECT: protocol name {name:?} is not MQTT")]
    InvalidProtocolName {
        /// The name found (lossily decoded).
        name: String,
    },

    /// A CONNECT asks for a protocol level this codec does not speak (3 is MQTT 3.1).
    #[error(
        "CONNECT: protocol level {level} is not supported (4 = MQTT 3.1.1 and 5 = MQTT 5.0 are)"
    )]
    UnsupportedProtocolVersion {
        /// The protocol level found.
        level: u8,
    },

    /// A CONNECT sets Will QoS or Will Retain without the Will flag.
    #[error("CONNECT: flags 0b{flags:08b} set Will QoS or Will Retain without the Will flag")]
    WillFlagsWithoutWill {
        /// The connect flags byte.
        flags: u8,
    },

    /// A v3.1.1 CONNECT has the password flag without the user name flag.
    #[error("CONNECT: password flag without user name flag (not allowed in MQTT 3.1.1)")]
    PasswordWithoutUsername,

    /// The first packet of a connection is not a CONNECT.
    #[error("expected CONNECT (packet type 1) as the first packet, got packet type {value}")]
    ExpectedConnect {
        /// The high nibble of the first byte.
        value: u8,
    },

    /// A property identifier that MQTT 5 does not define.
    #[error("{context}: unknown property identifier 0x{identifier:02x}")]
    UnknownProperty {
        /// Where the property was found.
        context: PropertyContext,
        /// The identifier byte.
        identifier: u8,
    },

    /// A property that this packet may not carry.
    #[error("{context}: property {property} is not allowed here")]
    PropertyNotAllowed {
        /// Where the property was found.
        context: PropertyContext,
        /// The property.
        property: PropertyIdentifier,
    },

    /// A property that may appear once appears again.
    #[error("{context}: property {property} appears more than once")]
    DuplicateProperty {
        /// Where the property was found.
        context: PropertyContext,
        /// The property.
        property: PropertyIdentifier,
    },

    /// A property holds a value the specification forbids (0 where 0 is not allowed, a boolean
    /// byte other than 0 or 1, Maximum QoS 2).
    #[error("{context}: property {property} has value {value}, expected {expected}")]
    PropertyValueInvalid {
        /// Where the property was found.
        context: PropertyContext,
        /// The property.
        property: PropertyIdentifier,
        /// The value found.
        value: u32,
        /// What the property may hold.
        expected: &'static str,
    },

    /// Authentication Data without an Authentication Method.
    #[error("{context}: Authentication Data without Authentication Method")]
    AuthenticationDataWithoutMethod {
        /// Where the property was found.
        context: PropertyContext,
    },

    /// A reason code that this packet may not carry (or no reason code at all).
    #[error("{packet_type}: reason code 0x{value:02x} is not allowed in this packet")]
    ReasonCodeInvalid {
        /// The packet concerned.
        packet_type: PacketType,
        /// The byte found.
        value: u8,
    },

    /// A CONNACK refuses the connection yet says a session is present.
    #[error("CONNACK: session present with reason code {reason_code:?}")]
    SessionPresentWithError {
        /// The refusing reason code.
        reason_code: ReasonCode,
    },
}

impl MqttError {
    /// The v5 reason code a server sends (in CONNACK before the session exists, in DISCONNECT
    /// after) when it closes a connection for this error.
    ///
    /// A v3.1.1 connection is closed without one, except for a refused CONNECT, which is answered
    /// by the CONNACK return code [`ReasonCode::to_v311_connect_return_code`] gives.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            MqttError::MalformedRemainingLength { .. }
            | MqttError::MalformedVarInt { .. }
            | MqttError::UnknownPacketType { .. }
            | MqttError::ReservedFlags { .. }
            | MqttError::InvalidQoS { .. }
            | MqttError::DupFlagWithQoS0
            | MqttError::Truncated { .. }
            | MqttError::TrailingBytes { .. }
            | MqttError::InvalidUtf8 { .. }
            | MqttError::NullCharacter { .. }
            | MqttError::FieldTooLong { .. }
            | MqttError::ReservedBits { .. }
            | MqttError::WillFlagsWithoutWill { .. }
            | MqttError::PasswordWithoutUsername
            | MqttError::UnknownProperty { .. }
            | MqttError::PropertyNotAllowed { .. }
            | MqttError::ReasonCodeInvalid { .. } => ReasonCode::MalformedPacket,
            MqttError::PacketTooLarge { .. } | MqttError::RemainingLengthTooLarge { .. } => {
                ReasonCode::PacketTooLarge
            }
            MqttError::TopicNameInvalid { .. } => ReasonCode::TopicNameInvalid,
            MqttError::TopicFilterInvalid { .. } => ReasonCode::TopicFilterInvalid,
            // Section 3.1.2.1 of v5: a server that refuses the protocol name answers 0x84, like
            // a refused protocol level.
            MqttError::InvalidProtocolName { .. }
            | MqttError::UnsupportedProtocolVersion { .. } => {
                ReasonCode::UnsupportedProtocolVersion
            }
            // Section 3.3.2.3.4 of v5: a Topic Alias of 0 is answered with Topic Alias Invalid.
            MqttError::PropertyValueInvalid {
                property: PropertyIdentifier::TopicAlias,
                ..
            } => ReasonCode::TopicAliasInvalid,
            MqttError::PacketIdentifierZero { .. }
            | MqttError::PacketIdentifierMismatch { .. }
            | MqttError::EmptyList { .. }
            | MqttError::RetainHandlingInvalid { .. }
            | MqttError::NoLocalOnSharedSubscription { .. }
            | MqttError::ExpectedConnect { .. }
            | MqttError::DuplicateProperty { .. }
            | MqttError::PropertyValueInvalid { .. }
            | MqttError::AuthenticationDataWithoutMethod { .. }
            | MqttError::SessionPresentWithError { .. } => ReasonCode::ProtocolError,
        }
    }
}
