//! MQTT 5 property identifiers, and which packets may carry each (table 2-4 of v5).

use std::fmt;

use crate::mqtt::PacketType;

/// The identifier byte of each property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyIdentifier {
    /// 0x01, byte: 0 = unspecified bytes, 1 = UTF-8 text.
    PayloadFormatIndicator = 0x01,
    /// 0x02, four-byte integer: seconds until the message expires.
    MessageExpiryInterval = 0x02,
    /// 0x03, string: MIME type of the payload.
    ContentType = 0x03,
    /// 0x08, string: topic name for a response.
    ResponseTopic = 0x08,
    /// 0x09, binary: ties a response to its request.
    CorrelationData = 0x09,
    /// 0x0B, variable byte integer, 1 to 268,435,455.
    SubscriptionIdentifier = 0x0B,
    /// 0x11, four-byte integer: seconds the session outlives the connection.
    SessionExpiryInterval = 0x11,
    /// 0x12, string: the client identifier the server chose.
    AssignedClientIdentifier = 0x12,
    /// 0x13, two-byte integer: the keep alive the server imposes, in seconds.
    ServerKeepAlive = 0x13,
    /// 0x15, string: name of the extended authentication method.
    AuthenticationMethod = 0x15,
    /// 0x16, binary: data of the extended authentication method.
    AuthenticationData = 0x16,
    /// 0x17, byte 0 or 1: may the server add Reason String and User Property to failures?
    RequestProblemInformation = 0x17,
    /// 0x18, four-byte integer: seconds the will waits after the connection ends.
    WillDelayInterval = 0x18,
    /// 0x19, byte 0 or 1: should the CONNACK carry Response Information?
    RequestResponseInformation = 0x19,
    /// 0x1A, string: basis for response topics.
    ResponseInformation = 0x1A,
    /// 0x1C, string: another server to use.
    ServerReference = 0x1C,
    /// 0x1F, string: human-readable diagnostic.
    ReasonString = 0x1F,
    /// 0x21, two-byte integer, not 0: unacknowledged QoS 1 and 2 publishes accepted at once.
    ReceiveMaximum = 0x21,
    /// 0x22, two-byte integer: highest topic alias accepted.
    TopicAliasMaximum = 0x22,
    /// 0x23, two-byte integer, not 0: stands for the topic name.
    TopicAlias = 0x23,
    /// 0x24, byte 0 or 1: highest QoS the server accepts.
    MaximumQoS = 0x24,
    /// 0x25, byte 0 or 1: does the server keep retained messages?
    RetainAvailable = 0x25,
    /// 0x26, string pair: application-defined name and value.
    UserProperty = 0x26,
    /// 0x27, four-byte integer, not 0: largest packet accepted, in bytes.
    MaximumPacketSize = 0x27,
    /// 0x28, byte 0 or 1: does the server accept wildcard subscriptions?
    WildcardSubscriptionAvailable = 0x28,
    /// 0x29, byte 0 or 1: does the server accept subscription identifiers?
    SubscriptionIdentifierAvailable = 0x29,
    /// 0x2A, byte 0 or 1: does the server accept shared subscriptions?
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyIdentifier {
    /// The property with this identifier byte.
    pub fn from_u8(value: u8) -> Option<PropertyIdentifier> {
        use PropertyIdentifier::*;
        Some(match value {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// The name the specification uses, for errors.
    pub fn name(self) -> &'static str {
        use PropertyIdentifier::*;
        match self {
            PayloadFormatIndicator => "Payload Format Indicator",
            MessageExpiryInterval => "Message Expiry Interval",
            ContentType => "Content Type",
            ResponseTopic => "Response Topic",
            CorrelationData => "Correlation Data",
            SubscriptionIdentifier => "Subscription Identifier",
            SessionExpiryInterval => "Session Expiry Interval",
            AssignedClientIdentifier => "Assigned Client Identifier",
            ServerKeepAlive => "Server Keep Alive",
            AuthenticationMethod => "Authentication Method",
            AuthenticationData => "Authentication Data",
            RequestProblemInformation => "Request Problem Information",
            WillDelayInterval => "Will Delay Interval",
            RequestResponseInformation => "Request Response Information",
            ResponseInformation => "Response Information",
            ServerReference => "Server Reference",
            ReasonString => "Reason String",
            ReceiveMaximum => "Receive Maximum",
            TopicAliasMaximum => "Topic Alias Maximum",
            TopicAlias => "Topic Alias",
            MaximumQoS => "Maximum QoS",
            RetainAvailable => "Retain Available",
            UserProperty => "User Property",
            MaximumPacketSize => "Maximum Packet Size",
            WildcardSubscriptionAvailable => "Wildcard Subscription Available",
            SubscriptionIdentifierAvailable => "Subscription Identifier Available",
            SharedSubscriptionAvailable => "Shared Subscription Available",
        }
    }

    /// Whether a property list in `context` may carry this property (table 2-4 of v5).
    pub fn is_allowed_in(self, context: PropertyContext) -> bool {
        use PropertyIdentifier::*;
        let PropertyContext::Packet(packet_type) = context else {
            return matches!(
                self,
                PayloadFormatIndicator
                    | MessageExpiryInterval
                    | ContentType
                    | ResponseTopic
                    | CorrelationData
                    | WillDelayInterval
                    | UserProperty
            );
        };
        match self {
            UserProperty => !matches!(packet_type, PacketType::PingReq | PacketType::PingResp),
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData
            | TopicAlias => packet_type == PacketType::Publish,
            SubscriptionIdentifier => {
                matches!(packet_type, PacketType::Publish | PacketType::Subscribe)
            }
            SessionExpiryInterval => matches!(
                packet_type,
                PacketType::Connect | PacketType::ConnAck | PacketType::Disconnect
            ),
            AuthenticationMethod | AuthenticationData => {
                matches!(
                    packet_type,
                    PacketType::Connect | PacketType::ConnAck | PacketType::Auth
                )
            }
            RequestProblemInformation | RequestResponseInformation => {
                packet_type == PacketType::Connect
            }
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => {
                matches!(packet_type, PacketType::Connect | PacketType::ConnAck)
            }
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => packet_type == PacketType::ConnAck,
            ServerReference => matches!(packet_type, PacketType::ConnAck | PacketType::Disconnect),
            ReasonString => matches!(
                packet_type,
                PacketType::ConnAck
                    | PacketType::PubAck
                    | PacketType::PubRec
                    | PacketType::PubRel
                    | PacketType::PubComp
                    | PacketType::SubAck
                    | PacketType::UnsubAck
                    | PacketType::Disconnect
                    | PacketType::Auth
            ),
            WillDelayInterval => false,
        }
    }

    /// Whether the property may appear more than once in `context`.
    pub(crate) fn is_repeatable_in(self, context: PropertyContext) -> bool {
        match self {
            PropertyIdentifier::UserProperty => true,
            // Several subscriptions may match one message, so a PUBLISH to a client carries the
            // identifier of each; a SUBSCRIBE creates subscriptions with one identifier.
            PropertyIdentifier::SubscriptionIdentifier => {
                context == PropertyContext::Packet(PacketType::Publish)
            }
            _ => false,
        }
    }
}

impl fmt::Display for PropertyIdentifier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} (0x{:02x})", self.name(), *self as u8)
    }
}

/// Where a property list sits: in a packet's variable header, or in a CONNECT's will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    /// The properties of a packet of this type.
    Packet(PacketType),
    /// The will properties in a CONNECT's payload.
    Will,
}

impl PropertyContext {
    /// The packet the property list is part of.
    pub fn packet_type(self) -> PacketType {
        match self {
            PropertyContext::Packet(packet_type) => packet_type,
            PropertyContext::Will => PacketType::Connect,
        }
    }
}

impl fmt::Display for PropertyContext {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyContext::Packet(packet_type) => write!(formatter, "{packet_type} properties"),
            PropertyContext::Will => formatter.write_str("CONNECT will properties"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identifier_maps_to_its_variant() {
        let mut known = 0;
        for value in 0..=u8::MAX {
            if let Some(property) = PropertyIdentifier::from_u8(value) {
                assert_eq!(property as u8, value);
                known += 1;
            }
        }
        assert_eq!(known, 27);
    }

    #[test]
    fn every_property_is_allowed_somewhere() {
        let contexts = [
            PropertyContext::Will,
            PropertyContext::Packet(PacketType::Connect),
            PropertyContext::Packet(PacketType::ConnAck),
            PropertyContext::Packet(PacketType::Publish),
            PropertyContext::Packet(PacketType::Subscribe),
        ];
        for value in 0..=u8::MAX {
            if let Some(property) = PropertyIdentifier::from_u8(value) {
                assert!(
                    contexts
                        .iter()
                        .any(|&context| property.is_allowed_in(context)),
                    "{property}"
                );
            }
        }
        assert!(!PropertyIdentifier::UserProperty
            .is_allowed_in(PropertyContext::Packet(PacketType::PingReq)));
        assert!(PropertyIdentifier::UserProperty
            .is_allowed_in(PropertyContext::Packet(PacketType::Connect)));
        assert!(!PropertyIdentifier::TopicAlias.is_allowed_in(PropertyContext::Will));
        assert!(PropertyIdentifier::WillDelayInterval.is_allowed_in(PropertyContext::Will));
    }
}
