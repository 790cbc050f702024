//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8 to 3.11).
//!
//! ```text
//! SUBSCRIBE:    packet identifier | v5: properties | (topic filter, options byte)...
//! options:      v5: bits 7-6 reserved, 5-4 retain handling, 3 retain as published, 2 no local,
//!                   1-0 QoS
//!               v3.1.1: bits 7-2 reserved, 1-0 QoS
//! SUBACK:       packet identifier | v5: properties | reason code... (v3.1.1: 0, 1, 2 or 0x80)
//! UNSUBSCRIBE:  packet identifier | v5: properties | topic filter...
//! UNSUBACK:     packet identifier | v5: properties | v5: reason code...
//! ```

use bytes::{BufMut, BytesMut};

use crate::mqtt::error::MqttError;
use crate::mqtt::properties::Properties;
use crate::mqtt::property_identifier::PropertyContext;
use crate::mqtt::reason::ReasonCode;
use crate::mqtt::topic::{validate_topic_filter, SharedSubscription};
use crate::mqtt::wire::{field_len, put_field, Reader};
use crate::mqtt::{PacketType, ProtocolVersion, QoS};

const OPTIONS_QOS_MASK: u8 = 0b0000_0011;
const OPTION_NO_LOCAL: u8 = 0b0000_0100;
const OPTION_RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const RETAIN_HANDLING_SHIFT: u8 = 4;
/// The option bits each version defines; the others are reserved and must be 0.
const OPTIONS_ALLOWED_V5: u8 = 0b0011_1111;
const OPTIONS_ALLOWED_V311: u8 = OPTIONS_QOS_MASK;

/// When the server sends retained messages for a new subscription (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: at every subscribe, the behaviour of v3.1.1.
    #[default]
    SendOnSubscribe = 0,
    /// 1: only if the subscription did not exist.
    SendOnNewSubscribe = 1,
    /// 2: never.
    DoNotSend = 2,
}

/// The options byte of each subscription. v3.1.1 has only the QoS; the other fields are false
/// and [`RetainHandling::SendOnSubscribe`] when decoded and dropped when encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// The highest QoS the server may deliver with.
    pub qos: QoS,
    /// Do not deliver the client's own messages back to it (v5; not allowed on a shared
    /// subscription).
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded messages as published (v5).
    pub retain_as_published: bool,
    /// When retained messages are sent (v5).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<SubscriptionOptions, MqttError> {
        let value = reader.u8("subscription options")?;
        let allowed = match version {
            ProtocolVersion::V5 => OPTIONS_ALLOWED_V5,
            ProtocolVersion::V311 => OPTIONS_ALLOWED_V311,
        };
        if value & !allowed != 0 {
            return Err(MqttError::ReservedBits {
                packet_type: PacketType::Subscribe,
                field: "subscription options",
                value,
                allowed,
            });
        }
        let qos_bits = value & OPTIONS_QOS_MASK;
        let qos = QoS::from_u8(qos_bits).ok_or(MqttError::InvalidQoS {
            packet_type: PacketType::Subscribe,
            field: "subscription options QoS",
            value: qos_bits,
        })?;
        let retain_handling = match value >> RETAIN_HANDLING_SHIFT {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendOnNewSubscribe,
            2 => RetainHandling::DoNotSend,
            value => return Err(MqttError::RetainHandlingInvalid { value }),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: value & OPTION_NO_LOCAL != 0,
            retain_as_published: value & OPTION_RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut value = self.qos as u8;
        if version == ProtocolVersion::V5 {
            value |= (self.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
            if self.no_local {
                value |= OPTION_NO_LOCAL;
            }
            if self.retain_as_published {
                value |= OPTION_RETAIN_AS_PUBLISHED;
            }
        }
        value
    }
}

/// Client → server: add or replace subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed in the SUBACK; not 0.
    pub packet_id: u16,
    /// Topic filters and their options, at least one.
    pub filters: Vec<(String, SubscriptionOptions)>,
    /// SUBSCRIBE properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// Server → client: the reply to [`Subscribe`], one reason code per filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// A granted QoS or a failure for each filter, at least one. In v3.1.1 every failure
    /// travels as 0x80 and is decoded as [`ReasonCode::UnspecifiedError`].
    pub reason_codes: Vec<ReasonCode>,
    /// SUBACK properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// Client → server: remove subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Echoed in the UNSUBACK; not 0.
    pub packet_id: u16,
    /// Topic filters, at least one.
    pub filters: Vec<String>,
    /// UNSUBSCRIBE properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// Server → client: the reply to [`Unsubscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// v5: one reason code per filter, at least one. v3.1.1 has none: empty when decoded and
    /// dropped when encoded.
    pub reason_codes: Vec<ReasonCode>,
    /// UNSUBACK properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

/// A topic filter read from a SUBSCRIBE or UNSUBSCRIBE, checked.
fn read_filter(reader: &mut Reader) -> Result<String, MqttError> {
    let filter = reader.string("topic filter")?;
    check_filter(reader.packet_type(), &filter)?;
    Ok(filter)
}

fn check_filter(packet_type: PacketType, filter: &str) -> Result<(), MqttError> {
    validate_topic_filter(filter).map_err(|problem| MqttError::TopicFilterInvalid {
        packet_type,
        filter: filter.to_owned(),
        problem,
    })
}

/// [MQTT-3.8.3-4]: a client never receives its own messages through a shared subscription, so
/// No Local there is a protocol error.
fn check_no_local(filter: &str, options: &SubscriptionOptions) -> Result<(), MqttError> {
    if options.no_local && SharedSubscription::parse(filter).is_some() {
        return Err(MqttError::NoLocalOnSharedSubscription {
            filter: filter.to_owned(),
        });
    }
    Ok(())
}

fn properties_for(reader: &mut Reader, version: ProtocolVersion) -> Result<Properties, MqttError> {
    match version {
        ProtocolVersion::V5 => {
            Properties::decode(reader, PropertyContext::Packet(reader.packet_type()))
        }
        ProtocolVersion::V311 => Ok(Properties::default()),
    }
}

fn properties_len(properties: &Properties, version: ProtocolVersion) -> usize {
    match version {
        ProtocolVersion::V5 => properties.encoded_len_with_length(),
        ProtocolVersion::V311 => 0,
    }
}

fn check_not_empty(
    packet_type: PacketType,
    field: &'static str,
    length: usize,
) -> Result<(), MqttError> {
    if length == 0 {
        return Err(MqttError::EmptyList { packet_type, field });
    }
    Ok(())
}

fn check_packet_id(packet_type: PacketType, packet_id: u16) -> Result<(), MqttError> {
    if packet_id == 0 {
        return Err(MqttError::PacketIdentifierZero { packet_type });
    }
    Ok(())
}

fn check_reason_codes(
    packet_type: PacketType,
    reason_codes: &[ReasonCode],
) -> Result<(), MqttError> {
    check_not_empty(packet_type, "reason codes", reason_codes.len())?;
    match reason_codes
        .iter()
        .find(|code| !code.is_allowed_in(packet_type))
    {
        Some(code) => Err(MqttError::ReasonCodeInvalid {
            packet_type,
            value: code.as_u8(),
        }),
        None => Ok(()),
    }
}

impl Subscribe {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Subscribe, MqttError> {
        let packet_id = reader.packet_id()?;
        let properties = properties_for(reader, version)?;
        let mut filters = Vec::new();
        while reader.remaining() > 0 {
            let filter = read_filter(reader)?;
            let options = SubscriptionOptions::decode(reader, version)?;
            if version == ProtocolVersion::V5 {
                check_no_local(&filter, &options)?;
            }
            filters.push((filter, options));
        }
        check_not_empty(PacketType::Subscribe, "topic filters", filters.len())?;
        Ok(Subscribe {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        let filters: usize = self
            .filters
            .iter()
            .map(|(filter, _)| field_len(filter.as_bytes()) + 1)
            .sum();
        2 + properties_len(&self.properties, version) + filters
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.encode(out);
        }
        for (filter, options) in &self.filters {
            put_field(out, filter.as_bytes());
            out.put_u8(options.encode(version));
        }
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let packet_type = PacketType::Subscribe;
        check_packet_id(packet_type, self.packet_id)?;
        check_not_empty(packet_type, "topic filters", self.filters.len())?;
        for (filter, options) in &self.filters {
            check_filter(packet_type, filter)?;
            if version == ProtocolVersion::V5 {
                check_no_local(filter, options)?;
            }
        }
        if version == ProtocolVersion::V5 {
            self.properties
                .validate(PropertyContext::Packet(packet_type))?;
        }
        Ok(())
    }
}

impl SubAck {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<SubAck, MqttError> {
        let packet_type = PacketType::SubAck;
        let packet_id = reader.packet_id()?;
        let properties = properties_for(reader, version)?;
        let mut reason_codes = Vec::with_capacity(reader.remaining());
        while reader.remaining() > 0 {
            let value = reader.u8("reason code")?;
            let code = match version {
                ProtocolVersion::V5 => ReasonCode::from_u8_in(value, packet_type),
                ProtocolVersion::V311 => ReasonCode::from_v311_suback_return_code(value),
            };
            reason_codes.push(code.ok_or(MqttError::ReasonCodeInvalid { packet_type, value })?);
        }
        check_not_empty(packet_type, "reason codes", reason_codes.len())?;
        Ok(SubAck {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + properties_len(&self.properties, version) + self.reason_codes.len()
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        match version {
            ProtocolVersion::V5 => {
                self.properties.encode(out);
                for code in &self.reason_codes {
                    out.put_u8(code.as_u8());
                }
            }
            ProtocolVersion::V311 => {
                for code in &self.reason_codes {
                    out.put_u8(code.to_v311_suback_return_code());
                }
            }
        }
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let packet_type = PacketType::SubAck;
        check_packet_id(packet_type, self.packet_id)?;
        match version {
            ProtocolVersion::V5 => {
                check_reason_codes(packet_type, &self.reason_codes)?;
                self.properties
                    .validate(PropertyContext::Packet(packet_type))
            }
            // Every code has a v3.1.1 form, failures all becoming 0x80.
            ProtocolVersion::V311 => {
                check_not_empty(packet_type, "reason codes", self.reason_codes.len())
            }
        }
    }
}

impl Unsubscribe {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Unsubscribe, MqttError> {
        let packet_id = reader.packet_id()?;
        let properties = properties_for(reader, version)?;
        let mut filters = Vec::new();
        while reader.remaining() > 0 {
            filters.push(read_filter(reader)?);
        }
        check_not_empty(PacketType::Unsubscribe, "topic filters", filters.len())?;
        Ok(Unsubscribe {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        let filters: usize = self
            .filters
            .iter()
            .map(|filter| field_len(filter.as_bytes()))
            .sum();
        2 + properties_len(&self.properties, version) + filters
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.encode(out);
        }
        for filter in &self.filters {
            put_field(out, filter.as_bytes());
        }
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let packet_type = PacketType::Unsubscribe;
        check_packet_id(packet_type, self.packet_id)?;
        check_not_empty(packet_type, "topic filters", self.filters.len())?;
        for filter in &self.filters {
            check_filter(packet_type, filter)?;
        }
        if version == ProtocolVersion::V5 {
            self.properties
                .validate(PropertyContext::Packet(packet_type))?;
        }
        Ok(())
    }
}

impl UnsubAck {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<UnsubAck, MqttError> {
        let packet_type = PacketType::UnsubAck;
        let packet_id = reader.packet_id()?;
        let properties = properties_for(reader, version)?;
        let mut reason_codes = Vec::with_capacity(reader.remaining());
        if version == ProtocolVersion::V5 {
            while reader.remaining() > 0 {
                let value = reader.u8("reason code")?;
                reason_codes.push(
                    ReasonCode::from_u8_in(value, packet_type)
                        .ok_or(MqttError::ReasonCodeInvalid { packet_type, value })?,
                );
            }
            check_not_empty(packet_type, "reason codes", reason_codes.len())?;
        }
        Ok(UnsubAck {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        match version {
            ProtocolVersion::V5 => {
                2 + self.properties.encoded_len_with_length() + self.reason_codes.len()
            }
            ProtocolVersion::V311 => 2,
        }
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            self.properties.encode(out);
            for code in &self.reason_codes {
                out.put_u8(code.as_u8());
            }
        }
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let packet_type = PacketType::UnsubAck;
        check_packet_id(packet_type, self.packet_id)?;
        if version == ProtocolVersion::V5 {
            check_reason_codes(packet_type, &self.reason_codes)?;
            self.properties
                .validate(PropertyContext::Packet(packet_type))?;
        }
        Ok(())
    }
}
