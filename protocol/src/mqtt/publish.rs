//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.3 to 3.7).
//!
//! ```text
//! PUBLISH:  fixed header flags DUP (bit 3), QoS (bits 2-1), RETAIN (bit 0)
//!           topic name | packet identifier (QoS 1 and 2 only) | v5: properties | payload
//! PUBACK, PUBREC, PUBREL, PUBCOMP:
//!           packet identifier | v5: reason code | v5: properties
//!           (v5 omits the properties when there are none, and the reason code too when it is
//!           Success and there are no properties)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::mqtt::error::MqttError;
use crate::mqtt::properties::Properties;
use crate::mqtt::property_identifier::PropertyContext;
use crate::mqtt::reason::ReasonCode;
use crate::mqtt::topic::validate_topic_name;
use crate::mqtt::wire::{check_string, field_len, put_field, Reader};
use crate::mqtt::{PacketType, ProtocolVersion, QoS};

const FLAG_DUP: u8 = 0b1000;
const QOS_SHIFT: u8 = 1;
const FLAG_RETAIN: u8 = 0b0001;

/// An application message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// A retransmission of a QoS 1 or 2 message (never set with QoS 0).
    pub dup: bool,
    /// The delivery guarantee.
    pub qos: QoS,
    /// Keep as the retained message of the topic (from a client) or it is one (to a client).
    pub retain: bool,
    /// The topic name; empty in v5 only when [`Properties::topic_alias`] stands for it.
    pub topic: String,
    /// Present exactly when `qos` is 1 or 2, and not 0.
    pub packet_id: Option<u16>,
    /// PUBLISH properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
    /// The application message, sliced from the input without a copy by
    /// [`crate::mqtt::decode_bytes`].
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: which one is the [`crate::mqtt::Packet`] variant holding
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResponse {
    /// The packet identifier of the PUBLISH (or PUBREC, PUBREL) answered.
    pub packet_id: u16,
    /// Success or why not (v5; v3.1.1 has no reason code and always means success).
    pub reason_code: ReasonCode,
    /// Properties (v5; dropped when encoding v3.1.1).
    pub properties: Properties,
}

impl PublishResponse {
    /// A successful response without properties, the only kind v3.1.1 has.
    pub fn success(packet_id: u16) -> PublishResponse {
        PublishResponse {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        }
    }
}

/// The DUP, QoS and RETAIN flags of a PUBLISH fixed header, checked: QoS 3 does not exist and a
/// QoS 0 message is never a retransmission.
pub(crate) fn publish_flags(flags: u8) -> Result<(bool, QoS, bool), MqttError> {
    let qos_bits = (flags >> QOS_SHIFT) & 0b11;
    let qos = QoS::from_u8(qos_bits).ok_or(MqttError::InvalidQoS {
        packet_type: PacketType::Publish,
        field: "fixed header QoS",
        value: qos_bits,
    })?;
    let dup = flags & FLAG_DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(MqttError::DupFlagWithQoS0);
    }
    Ok((dup, qos, flags & FLAG_RETAIN != 0))
}

impl Publish {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        flags: u8,
        version: ProtocolVersion,
    ) -> Result<Publish, MqttError> {
        let (dup, qos, retain) = publish_flags(flags)?;
        let topic = reader.string("topic name")?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => Some(reader.packet_id()?),
        };
        let properties = match version {
            ProtocolVersion::V5 => {
                Properties::decode(reader, PropertyContext::Packet(PacketType::Publish))?
            }
            ProtocolVersion::V311 => Properties::default(),
        };
        let publish = Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: reader.rest(),
        };
        publish.check_topic(version)?;
        Ok(publish)
    }

    /// The fixed header flags of this message.
    pub(crate) fn flags(&self) -> u8 {
        let mut flags = (self.qos as u8) << QOS_SHIFT;
        if self.dup {
            flags |= FLAG_DUP;
        }
        if self.retain {
            flags |= FLAG_RETAIN;
        }
        flags
    }

    /// A topic name, or in v5 an empty one that a Topic Alias stands for
    /// ([MQTT-3.3.2-1], [MQTT-3.3.2-2]).
    fn check_topic(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        if self.topic.is_empty()
            && version == ProtocolVersion::V5
            && self.properties.topic_alias.is_some()
        {
            return Ok(());
        }
        validate_topic_name(&self.topic).map_err(|problem| MqttError::TopicNameInvalid {
            packet_type: PacketType::Publish,
            topic: self.topic.clone(),
            problem,
        })
    }

    /// Bytes of everything but the payload.
    fn header_len(&self, version: ProtocolVersion) -> usize {
        let mut length = field_len(self.topic.as_bytes());
        if self.packet_id.is_some() {
            length += 2;
        }
        if version == ProtocolVersion::V5 {
            length += self.properties.encoded_len_with_length();
        }
        length
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        self.header_len(version) + self.payload.len()
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        put_field(out, self.topic.as_bytes());
        if let Some(packet_id) = self.packet_id {
            out.put_u16(packet_id);
        }
        if version == ProtocolVersion::V5 {
            self.properties.encode(out);
        }
        out.put_slice(&self.payload);
    }

    pub(crate) fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let consistent = match self.packet_id {
            None => self.qos == QoS::AtMostOnce,
            Some(0) => {
                return Err(MqttError::PacketIdentifierZero {
                    packet_type: PacketType::Publish,
                })
            }
            Some(_) => self.qos != QoS::AtMostOnce,
        };
        if !consistent {
            return Err(MqttError::PacketIdentifierMismatch {
                qos: self.qos,
                packet_id: self.packet_id,
            });
        }
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(MqttError::DupFlagWithQoS0);
        }
        check_string(PacketType::Publish, "topic name", &self.topic)?;
        if version == ProtocolVersion::V5 {
            self.properties
                .validate(PropertyContext::Packet(PacketType::Publish))?;
        }
        self.check_topic(version)
    }
}

impl PublishResponse {
    pub(crate) fn decode_body(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<PublishResponse, MqttError> {
        let packet_id = reader.packet_id()?;
        let (reason_code, properties) = match version {
            ProtocolVersion::V5 => decode_v5_reason_and_properties(reader)?,
            ProtocolVersion::V311 => (ReasonCode::Success, Properties::default()),
        };
        Ok(PublishResponse {
            packet_id,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + v5_reason_and_properties_len(
            version,
            self.reason_code,
            &self.properties,
            Shortening::ReasonCodeAlone,
        )
    }

    pub(crate) fn encode_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        encode_v5_reason_and_properties(
            version,
            self.reason_code,
            &self.properties,
            Shortening::ReasonCodeAlone,
            out,
        );
    }

    pub(crate) fn validate(
        &self,
        packet_type: PacketType,
        version: ProtocolVersion,
    ) -> Result<(), MqttError> {
        if self.packet_id == 0 {
            return Err(MqttError::PacketIdentifierZero { packet_type });
        }
        match version {
            ProtocolVersion::V5 => {
                validate_v5_tail(packet_type, self.reason_code, &self.properties)
            }
            ProtocolVersion::V311 => Ok(()),
        }
    }
}

/// How the optional reason code and properties end a v5 PUBACK, PUBREC, PUBREL, PUBCOMP,
/// DISCONNECT or AUTH: both are left out for a success without properties, and the property
/// length alone is left out when there are no properties, except in AUTH, where the specification
/// does not allow that shortening (the decoder accepts it anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shortening {
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, DISCONNECT.
    ReasonCodeAlone,
    /// AUTH.
    NotReasonCodeAlone,
}

/// Reads the optional reason code and properties that end the packet, in any of the shortened
/// forms.
pub(crate) fn decode_v5_reason_and_properties(
    reader: &mut Reader,
) -> Result<(ReasonCode, Properties), MqttError> {
    let packet_type = reader.packet_type();
    if reader.remaining() == 0 {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let value = reader.u8("reason code")?;
    let reason_code = ReasonCode::from_u8_in(value, packet_type)
        .ok_or(MqttError::ReasonCodeInvalid { packet_type, value })?;
    let properties = if reader.remaining() == 0 {
        Properties::default()
    } else {
        Properties::decode(reader, PropertyContext::Packet(packet_type))?
    };
    Ok((reason_code, properties))
}

/// Bytes of the optional reason code and properties, shortened as the specification allows.
pub(crate) fn v5_reason_and_properties_len(
    version: ProtocolVersion,
    reason_code: ReasonCode,
    properties: &Properties,
    shortening: Shortening,
) -> usize {
    match version {
        ProtocolVersion::V311 => 0,
        ProtocolVersion::V5 if properties.is_empty() && reason_code == ReasonCode::Success => 0,
        ProtocolVersion::V5
            if properties.is_empty() && shortening == Shortening::ReasonCodeAlone =>
        {
            1
        }
        ProtocolVersion::V5 => 1 + properties.encoded_len_with_length(),
    }
}

/// Appends what [`v5_reason_and_properties_len`] sizes.
pub(crate) fn encode_v5_reason_and_properties(
    version: ProtocolVersion,
    reason_code: ReasonCode,
    properties: &Properties,
    shortening: Shortening,
    out: &mut BytesMut,
) {
    match v5_reason_and_properties_len(version, reason_code, properties, shortening) {
        0 => {}
        1 => out.put_u8(reason_code.as_u8()),
        _ => {
            out.put_u8(reason_code.as_u8());
            properties.encode(out);
        }
    }
}

/// Checks the reason code and properties of a v5 packet that ends with them.
pub(crate) fn validate_v5_tail(
    packet_type: PacketType,
    reason_code: ReasonCode,
    properties: &Properties,
) -> Result<(), MqttError> {
    if !reason_code.is_allowed_in(packet_type) {
        return Err(MqttError::ReasonCodeInvalid {
            packet_type,
            value: reason_code.as_u8(),
        });
    }
    properties.validate(PropertyContext::Packet(packet_type))
}
