//! Reason codes of MQTT 5 (section 2.4) and the return codes of MQTT 3.1.1 they map to.

use crate::mqtt::{PacketType, QoS};

/// A reason code of MQTT 5. Values below 0x80 report success, values from 0x80 report failure.
///
/// 0x00 has three names in the specification: [`ReasonCode::Success`] is the variant and
/// [`ReasonCode::NORMAL_DISCONNECTION`] and [`ReasonCode::GRANTED_QOS_0`] are aliases of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ReasonCode {
    /// 0x00: success; Normal Disconnection in DISCONNECT; Granted QoS 0 in SUBACK.
    #[default]
    Success = 0x00,
    /// 0x01: SUBACK, the subscription is granted with QoS 1.
    GrantedQoS1 = 0x01,
    /// 0x02: SUBACK, the subscription is granted with QoS 2.
    GrantedQoS2 = 0x02,
    /// 0x04: DISCONNECT from a client that wants its will published.
    DisconnectWithWillMessage = 0x04,
    /// 0x10: PUBACK, PUBREC: accepted, but nobody is subscribed.
    NoMatchingSubscribers = 0x10,
    /// 0x11: UNSUBACK: there was no such subscription.
    NoSubscriptionExisted = 0x11,
    /// 0x18: AUTH: continue the authentication exchange.
    ContinueAuthentication = 0x18,
    /// 0x19: AUTH: start a re-authentication.
    ReAuthenticate = 0x19,
    /// 0x80: failure, no other code applies.
    UnspecifiedError = 0x80,
    /// 0x81: the packet does not follow the specification's encoding.
    MalformedPacket = 0x81,
    /// 0x82: the packet is well formed but not allowed here.
    ProtocolError = 0x82,
    /// 0x83: valid, but this implementation cannot process it.
    ImplementationSpecificError = 0x83,
    /// 0x84: CONNACK: the protocol version is not supported.
    UnsupportedProtocolVersion = 0x84,
    /// 0x85: CONNACK: the client identifier is not allowed.
    ClientIdentifierNotValid = 0x85,
    /// 0x86: CONNACK: the user name or password is wrong.
    BadUserNameOrPassword = 0x86,
    /// 0x87: the client is not authorised to do this.
    NotAuthorized = 0x87,
    /// 0x88: CONNACK: the server is unavailable.
    ServerUnavailable = 0x88,
    /// 0x89: the server is busy.
    ServerBusy = 0x89,
    /// 0x8A: CONNACK: the client is banned.
    Banned = 0x8A,
    /// 0x8B: DISCONNECT: the server is shutting down.
    ServerShuttingDown = 0x8B,
    /// 0x8C: the authentication method is not supported or does not match.
    BadAuthenticationMethod = 0x8C,
    /// 0x8D: DISCONNECT: nothing was received for 1.5 times the keep alive.
    KeepAliveTimeout = 0x8D,
    /// 0x8E: DISCONNECT: another connection took over the session.
    SessionTakenOver = 0x8E,
    /// 0x8F: the topic filter is well formed but not accepted.
    TopicFilterInvalid = 0x8F,
    /// 0x90: the topic name is well formed but not accepted.
    TopicNameInvalid = 0x90,
    /// 0x91: the packet identifier is already in use.
    PacketIdentifierInUse = 0x91,
    /// 0x92: PUBREL, PUBCOMP: the packet identifier is unknown.
    PacketIdentifierNotFound = 0x92,
    /// 0x93: DISCONNECT: more unacknowledged QoS 1 and 2 publishes than Receive Maximum.
    ReceiveMaximumExceeded = 0x93,
    /// 0x94: DISCONNECT: the topic alias is 0 or above Topic Alias Maximum.
    TopicAliasInvalid = 0x94,
    /// 0x95: the packet exceeds the Maximum Packet Size.
    PacketTooLarge = 0x95,
    /// 0x96: DISCONNECT: the message rate is too high.
    MessageRateTooHigh = 0x96,
    /// 0x97: a quota is exceeded.
    QuotaExceeded = 0x97,
    /// 0x98: DISCONNECT: closed by an administrator.
    AdministrativeAction = 0x98,
    /// 0x99: the payload does not match its Payload Format Indicator.
    PayloadFormatInvalid = 0x99,
    /// 0x9A: retained messages are not supported.
    RetainNotSupported = 0x9A,
    /// 0x9B: the QoS exceeds Maximum QoS.
    QoSNotSupported = 0x9B,
    /// 0x9C: use another server, temporarily.
    UseAnotherServer = 0x9C,
    /// 0x9D: use another server, permanently.
    ServerMoved = 0x9D,
    /// 0x9E: shared subscriptions are not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// 0x9F: the connection rate is too high.
    ConnectionRateExceeded = 0x9F,
    /// 0xA0: DISCONNECT: the maximum connection time is over.
    MaximumConnectTime = 0xA0,
    /// 0xA1: subscription identifiers are not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
    /// 0xA2: wildcard subscriptions are not supported.
    WildcardSubscriptionsNotSupported = 0xA2,
}

/// Reason codes a CONNACK may carry (section 3.2.2.2).
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// Reason codes a PUBACK or a PUBREC may carry (sections 3.4.2.1 and 3.5.2.1).
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// Reason codes a PUBREL or a PUBCOMP may carry (sections 3.6.2.1 and 3.7.2.1).
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
/// Reason codes a SUBACK may carry (section 3.9.3).
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// Reason codes an UNSUBACK may carry (section 3.11.3).
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// Reason codes a DISCONNECT may carry (section 3.14.2.1, plus 0x8C, which table 2-6 also lists
/// for DISCONNECT, for a failed re-authentication).
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
    0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// Reason codes an AUTH may carry (section 3.15.2.1).
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

impl ReasonCode {
    /// 0x00 in a DISCONNECT.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// 0x00 in a SUBACK.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// Every reason code, in increasing order of value.
    pub const ALL: [ReasonCode; 43] = [
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::GrantedQoS2,
        ReasonCode::DisconnectWithWillMessage,
        ReasonCode::NoMatchingSubscribers,
        ReasonCode::NoSubscriptionExisted,
        ReasonCode::ContinueAuthentication,
        ReasonCode::ReAuthenticate,
        ReasonCode::UnspecifiedError,
        ReasonCode::MalformedPacket,
        ReasonCode::ProtocolError,
        ReasonCode::ImplementationSpecificError,
        ReasonCode::UnsupportedProtocolVersion,
        ReasonCode::ClientIdentifierNotValid,
        ReasonCode::BadUserNameOrPassword,
        ReasonCode::NotAuthorized,
        ReasonCode::ServerUnavailable,
        ReasonCode::ServerBusy,
        ReasonCode::Banned,
        ReasonCode::ServerShuttingDown,
        ReasonCode::BadAuthenticationMethod,
        ReasonCode::KeepAliveTimeout,
        ReasonCode::SessionTakenOver,
        ReasonCode::TopicFilterInvalid,
        ReasonCode::TopicNameInvalid,
        ReasonCode::PacketIdentifierInUse,
        ReasonCode::PacketIdentifierNotFound,
        ReasonCode::ReceiveMaximumExceeded,
        ReasonCode::TopicAliasInvalid,
        ReasonCode::PacketTooLarge,
        ReasonCode::MessageRateTooHigh,
        ReasonCode::QuotaExceeded,
        ReasonCode::AdministrativeAction,
        ReasonCode::PayloadFormatInvalid,
        ReasonCode::RetainNotSupported,
        ReasonCode::QoSNotSupported,
        ReasonCode::UseAnotherServer,
        ReasonCode::ServerMoved,
        ReasonCode::SharedSubscriptionsNotSupported,
        ReasonCode::ConnectionRateExceeded,
        ReasonCode::MaximumConnectTime,
        ReasonCode::SubscriptionIdentifiersNotSupported,
        ReasonCode::WildcardSubscriptionsNotSupported,
    ];

    /// The reason code with this value, whatever the packet.
    pub fn from_u8(value: u8) -> Option<ReasonCode> {
        // ALL is sorted by value, so a binary search finds the variant without a 43-arm match.
        ReasonCode::ALL
            .binary_search_by_key(&value, |code| code.as_u8())
            .ok()
            .map(|index| ReasonCode::ALL[index])
    }

    /// The reason code with this value if `packet_type` may carry it (v5 tables of section 3).
    pub fn from_u8_in(value: u8, packet_type: PacketType) -> Option<ReasonCode> {
        ReasonCode::from_u8(value).filter(|code| code.is_allowed_in(packet_type))
    }

    /// The byte on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// Whether a v5 packet of type `packet_type` may carry this reason code.
    pub fn is_allowed_in(self, packet_type: PacketType) -> bool {
        let allowed = match packet_type {
            PacketType::ConnAck => CONNACK_CODES,
            PacketType::PubAck | PacketType::PubRec => PUBACK_CODES,
            PacketType::PubRel | PacketType::PubComp => PUBREL_CODES,
            PacketType::SubAck => SUBACK_CODES,
            PacketType::UnsubAck => UNSUBACK_CODES,
            PacketType::Disconnect => DISCONNECT_CODES,
            PacketType::Auth => AUTH_CODES,
            _ => &[],
        };
        allowed.contains(&self.as_u8())
    }

    /// The SUBACK code granting a subscription at `qos`.
    pub fn granted(qos: QoS) -> ReasonCode {
        match qos {
            QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    /// The v3.1.1 CONNACK return code closest to this reason code. v3.1.1 has only five refusals,
    /// so several v5 codes share one: refusals about credentials become "bad user name or
    /// password", refusals about policy "not authorised", and every other failure "server
    /// unavailable", the only one a client is expected to retry.
    pub fn to_v311_connect_return_code(self) -> ConnectReturnCode {
        match self {
            ReasonCode::Success => ConnectReturnCode::Accepted,
            ReasonCode::UnsupportedProtocolVersion => {
                ConnectReturnCode::UnacceptableProtocolVersion
            }
            ReasonCode::ClientIdentifierNotValid => ConnectReturnCode::IdentifierRejected,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => {
                ConnectReturnCode::BadUserNameOrPassword
            }
            ReasonCode::NotAuthorized | ReasonCode::Banned => ConnectReturnCode::NotAuthorized,
            _ => ConnectReturnCode::ServerUnavailable,
        }
    }

    /// The v3.1.1 SUBACK return code for this reason code: the granted QoS, or 0x80 for every
    /// failure (v3.1.1 has no other).
    pub fn to_v311_suback_return_code(self) -> u8 {
        match self {
            ReasonCode::Success => 0x00,
            ReasonCode::GrantedQoS1 => 0x01,
            ReasonCode::GrantedQoS2 => 0x02,
            _ => 0x80,
        }
    }

    /// The reason code a v3.1.1 SUBACK return code means: 0x00 to 0x02 grant a QoS and 0x80 is
    /// the failure, read as [`ReasonCode::UnspecifiedError`]. Other values are reserved.
    pub fn from_v311_suback_return_code(value: u8) -> Option<ReasonCode> {
        match value {
            0x00 => Some(ReasonCode::GRANTED_QOS_0),
            0x01 => Some(ReasonCode::GrantedQoS1),
            0x02 => Some(ReasonCode::GrantedQoS2),
            0x80 => Some(ReasonCode::UnspecifiedError),
            _ => None,
        }
    }
}

/// The return code of a v3.1.1 CONNACK (section 3.2.2.3 of v3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// 0x00: connection accepted.
    Accepted = 0,
    /// 0x01: the server does not speak the requested protocol level.
    UnacceptableProtocolVersion = 1,
    /// 0x02: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 0x03: the MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 0x04: the user name or password is malformed or wrong.
    BadUserNameOrPassword = 4,
    /// 0x05: the client is not authorised to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code with this value; 6 and above are reserved.
    pub fn from_u8(value: u8) -> Option<ConnectReturnCode> {
        Some(match value {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The byte on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The v5 reason code with the same meaning; the mapping back by
    /// [`ReasonCode::to_v311_connect_return_code`] gives this return code again.
    pub fn to_reason_code(self) -> ReasonCode {
        match self {
            ConnectReturnCode::Accepted => ReasonCode::Success,
            ConnectReturnCode::UnacceptableProtocolVersion => {
                ReasonCode::UnsupportedProtocolVersion
            }
            ConnectReturnCode::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
            ConnectReturnCode::ServerUnavailable => ReasonCode::ServerUnavailable,
            ConnectReturnCode::BadUserNameOrPassword => ReasonCode::BadUserNameOrPassword,
            ConnectReturnCode::NotAuthorized => ReasonCode::NotAuthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_maps_to_its_variant_and_back() {
        let mut known = 0;
        for value in 0..=u8::MAX {
            if let Some(code) = ReasonCode::from_u8(value) {
                assert_eq!(code.as_u8(), value);
                known += 1;
            }
        }
        assert_eq!(known, ReasonCode::ALL.len());
        assert!(ReasonCode::ALL
            .windows(2)
            .all(|pair| pair[0].as_u8() < pair[1].as_u8()));
        assert_eq!(ReasonCode::from_u8(0x03), None);
        assert_eq!(ReasonCode::from_u8(0xA3), None);
    }

    #[test]
    fn the_tables_allow_what_the_specification_lists() {
        assert!(ReasonCode::GrantedQoS2.is_allowed_in(PacketType::SubAck));
        assert!(!ReasonCode::GrantedQoS2.is_allowed_in(PacketType::PubAck));
        assert!(ReasonCode::PacketIdentifierNotFound.is_allowed_in(PacketType::PubRel));
        assert!(!ReasonCode::UnspecifiedError.is_allowed_in(PacketType::PubComp));
        assert!(ReasonCode::DisconnectWithWillMessage.is_allowed_in(PacketType::Disconnect));
        assert!(!ReasonCode::DisconnectWithWillMessage.is_allowed_in(PacketType::ConnAck));
        assert!(ReasonCode::ReAuthenticate.is_allowed_in(PacketType::Auth));
        assert!(!ReasonCode::Success.is_allowed_in(PacketType::Publish));
        assert_eq!(
            ReasonCode::from_u8_in(0x10, PacketType::PubRec),
            Some(ReasonCode::NoMatchingSubscribers)
        );
        assert_eq!(ReasonCode::from_u8_in(0x10, PacketType::PubRel), None);
    }

    #[test]
    fn v311_return_codes_map_both_ways() {
        for value in 0..=5 {
            let code = ConnectReturnCode::from_u8(value).expect("0 to 5 exist");
            assert_eq!(code.as_u8(), value);
            assert_eq!(code.to_reason_code().to_v311_connect_return_code(), code);
        }
        assert_eq!(ConnectReturnCode::from_u8(6), None);
        assert_eq!(
            ReasonCode::Banned.to_v311_connect_return_code(),
            ConnectReturnCode::NotAuthorized
        );
        assert_eq!(
            ReasonCode::QuotaExceeded.to_v311_connect_return_code(),
            ConnectReturnCode::ServerUnavailable
        );
        for value in [0x00, 0x01, 0x02, 0x80] {
            let code = ReasonCode::from_v311_suback_return_code(value).expect("defined");
            assert_eq!(code.to_v311_suback_return_code(), value);
        }
        assert_eq!(ReasonCode::from_v311_suback_return_code(0x03), None);
        assert_eq!(ReasonCode::QuotaExceeded.to_v311_suback_return_code(), 0x80);
    }
}
