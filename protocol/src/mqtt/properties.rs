//! MQTT 5 properties (section 2.2.2): a variable byte integer length, then (identifier, value)
//! pairs. Each packet allows its own subset; most properties may appear once, User Property any
//! number of times and Subscription Identifier several times in a PUBLISH.

use bytes::{BufMut, Bytes, BytesMut};

use crate::mqtt::error::MqttError;
use crate::mqtt::property_identifier::{PropertyContext, PropertyIdentifier};
use crate::mqtt::topic::validate_topic_name;
use crate::mqtt::var_int::VarInt;
use crate::mqtt::wire::{check_field_length, check_string, field_len, put_field, Reader};
use crate::mqtt::QoS;

/// The Payload Format Indicator's two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadFormat {
    /// 0: the payload is unspecified bytes.
    Unspecified = 0,
    /// 1: the payload is UTF-8 encoded character data.
    Utf8 = 1,
}

/// The properties of one packet (or of a will). Absent properties are `None` or empty; the
/// decoder fills only those the packet allows, and [`crate::mqtt::Packet::validate`] refuses
/// others.
///
/// On the wire properties are written in increasing identifier order, user properties and
/// subscription identifiers in the order of their vectors; the decoder keeps the order of each
/// repeated property.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator (PUBLISH, will).
    pub payload_format_indicator: Option<PayloadFormat>,
    /// 0x02 Message Expiry Interval (PUBLISH, will).
    pub message_expiry_interval_s: Option<u32>,
    /// 0x03 Content Type (PUBLISH, will).
    pub content_type: Option<String>,
    /// 0x08 Response Topic, a topic name (PUBLISH, will).
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier, each 1 to 268,435,455 (PUBLISH: any number; SUBSCRIBE: at
    /// most one).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry_interval_s: Option<u32>,
    /// 0x12 Assigned Client Identifier (CONNACK).
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive (CONNACK).
    pub server_keep_alive_s: Option<u16>,
    /// 0x15 Authentication Method (CONNECT, CONNACK, AUTH).
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data (CONNECT, CONNACK, AUTH), only with an Authentication Method.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (CONNECT).
    pub request_problem_information: Option<bool>,
    /// 0x18 Will Delay Interval (will).
    pub will_delay_interval_s: Option<u32>,
    /// 0x19 Request Response Information (CONNECT).
    pub request_response_information: Option<bool>,
    /// 0x1A Response Information (CONNACK).
    pub response_information: Option<String>,
    /// 0x1C Server Reference (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F Reason String (every acknowledgement, DISCONNECT, AUTH).
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum, not 0 (CONNECT, CONNACK).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias, not 0 (PUBLISH).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS, 0 or 1 (CONNACK; its absence means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25 Retain Available (CONNACK).
    pub retain_available: Option<bool>,
    /// 0x26 User Property, name and value, in order (every packet with properties, will).
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size, not 0 (CONNECT, CONNACK).
    pub maximum_packet_size_bytes: Option<u32>,
    /// 0x28 Wildcard Subscription Available (CONNACK).
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifier Available (CONNACK).
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A Shared Subscription Available (CONNACK).
    pub shared_subscription_available: Option<bool>,
}

impl Properties {
    /// Whether no property is present.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Bytes of the property list, without its length prefix.
    pub fn encoded_len(&self) -> usize {
        let mut length = 0;
        let mut count = |present: bool, value_bytes: usize| {
            if present {
                length += 1 + value_bytes;
            }
        };
        count(self.payload_format_indicator.is_some(), 1);
        count(self.message_expiry_interval_s.is_some(), 4);
        count_field(&mut count, self.content_type.as_deref().map(str::as_bytes));
        count_field(
            &mut count,
            self.response_topic.as_deref().map(str::as_bytes),
        );
        count_field(&mut count, self.correlation_data.as_deref());
        for &identifier in &self.subscription_identifiers {
            count(true, VarInt::encoded_len(identifier));
        }
        count(self.session_expiry_interval_s.is_some(), 4);
        count_field(
            &mut count,
            self.assigned_client_identifier
                .as_deref()
                .map(str::as_bytes),
        );
        count(self.server_keep_alive_s.is_some(), 2);
        count_field(
            &mut count,
            self.authentication_method.as_deref().map(str::as_bytes),
        );
        count_field(&mut count, self.authentication_data.as_deref());
        count(self.request_problem_information.is_some(), 1);
        count(self.will_delay_interval_s.is_some(), 4);
        count(self.request_response_information.is_some(), 1);
        count_field(
            &mut count,
            self.response_information.as_deref().map(str::as_bytes),
        );
        count_field(
            &mut count,
            self.server_reference.as_deref().map(str::as_bytes),
        );
        count_field(&mut count, self.reason_string.as_deref().map(str::as_bytes));
        count(self.receive_maximum.is_some(), 2);
        count(self.topic_alias_maximum.is_some(), 2);
        count(self.topic_alias.is_some(), 2);
        count(self.maximum_qos.is_some(), 1);
        count(self.retain_available.is_some(), 1);
        for (name, value) in &self.user_properties {
            count(
                true,
                field_len(name.as_bytes()) + field_len(value.as_bytes()),
            );
        }
        count(self.maximum_packet_size_bytes.is_some(), 4);
        count(self.wildcard_subscription_available.is_some(), 1);
        count(self.subscription_identifier_available.is_some(), 1);
        count(self.shared_subscription_available.is_some(), 1);
        length
    }

    /// Bytes of the property list with its variable byte integer length prefix.
    pub(crate) fn encoded_len_with_length(&self) -> usize {
        let length = self.encoded_len();
        VarInt::encoded_len(length_u32(length)) + length
    }

    /// Appends the length prefix and the property list, in increasing identifier order.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        use PropertyIdentifier as Property;
        VarInt::write(length_u32(self.encoded_len()), out);
        let byte = |out: &mut BytesMut, property: Property, value: Option<u8>| {
            if let Some(value) = value {
                out.put_u8(property as u8);
                out.put_u8(value);
            }
        };
        let two = |out: &mut BytesMut, property: Property, value: Option<u16>| {
            if let Some(value) = value {
                out.put_u8(property as u8);
                out.put_u16(value);
            }
        };
        let four = |out: &mut BytesMut, property: Property, value: Option<u32>| {
            if let Some(value) = value {
                out.put_u8(property as u8);
                out.put_u32(value);
            }
        };
        let field = |out: &mut BytesMut, property: Property, value: Option<&[u8]>| {
            if let Some(value) = value {
                out.put_u8(property as u8);
                put_field(out, value);
            }
        };
        byte(
            out,
            Property::PayloadFormatIndicator,
            self.payload_format_indicator.map(|format| format as u8),
        );
        four(
            out,
            Property::MessageExpiryInterval,
            self.message_expiry_interval_s,
        );
        field(
            out,
            Property::ContentType,
            self.content_type.as_deref().map(str::as_bytes),
        );
        field(
            out,
            Property::ResponseTopic,
            self.response_topic.as_deref().map(str::as_bytes),
        );
        field(
            out,
            Property::CorrelationData,
            self.correlation_data.as_deref(),
        );
        for &identifier in &self.subscription_identifiers {
            out.put_u8(Property::SubscriptionIdentifier as u8);
            VarInt::write(identifier, out);
        }
        four(
            out,
            Property::SessionExpiryInterval,
            self.session_expiry_interval_s,
        );
        field(
            out,
            Property::AssignedClientIdentifier,
            self.assigned_client_identifier
                .as_deref()
                .map(str::as_bytes),
        );
        two(out, Property::ServerKeepAlive, self.server_keep_alive_s);
        field(
            out,
            Property::AuthenticationMethod,
            self.authentication_method.as_deref().map(str::as_bytes),
        );
        field(
            out,
            Property::AuthenticationData,
            self.authentication_data.as_deref(),
        );
        byte(
            out,
            Property::RequestProblemInformation,
            self.request_problem_information.map(u8::from),
        );
        four(out, Property::WillDelayInterval, self.will_delay_interval_s);
        byte(
            out,
            Property::RequestResponseInformation,
            self.request_response_information.map(u8::from),
        );
        field(
            out,
            Property::ResponseInformation,
            self.response_information.as_deref().map(str::as_bytes),
        );
        field(
            out,
            Property::ServerReference,
            self.server_reference.as_deref().map(str::as_bytes),
        );
        field(
            out,
            Property::ReasonString,
            self.reason_string.as_deref().map(str::as_bytes),
        );
        two(out, Property::ReceiveMaximum, self.receive_maximum);
        two(out, Property::TopicAliasMaximum, self.topic_alias_maximum);
        two(out, Property::TopicAlias, self.topic_alias);
        byte(
            out,
            Property::MaximumQoS,
            self.maximum_qos.map(|qos| qos as u8),
        );
        byte(
            out,
            Property::RetainAvailable,
            self.retain_available.map(u8::from),
        );
        for (name, value) in &self.user_properties {
            out.put_u8(Property::UserProperty as u8);
            put_field(out, name.as_bytes());
            put_field(out, value.as_bytes());
        }
        four(
            out,
            Property::MaximumPacketSize,
            self.maximum_packet_size_bytes,
        );
        byte(
            out,
            Property::WildcardSubscriptionAvailable,
            self.wildcard_subscription_available.map(u8::from),
        );
        byte(
            out,
            Property::SubscriptionIdentifierAvailable,
            self.subscription_identifier_available.map(u8::from),
        );
        byte(
            out,
            Property::SharedSubscriptionAvailable,
            self.shared_subscription_available.map(u8::from),
        );
    }

    /// Reads a length-prefixed property list, refusing unknown, misplaced and repeated properties
    /// as it goes, then the values the specification forbids.
    pub(crate) fn decode(
        reader: &mut Reader,
        context: PropertyContext,
    ) -> Result<Properties, MqttError> {
        use PropertyIdentifier as Property;
        let length = reader.var_int("property length")?;
        let mut list = reader.sub_reader(length as usize, "properties")?;
        let mut properties = Properties::default();
        // One bit per identifier seen; identifiers are below 64.
        let mut seen: u64 = 0;
        while list.remaining() > 0 {
            let identifier = list.u8("property identifier")?;
            let property = Property::from_u8(identifier).ok_or(MqttError::UnknownProperty {
                context,
                identifier,
            })?;
            if !property.is_allowed_in(context) {
                return Err(MqttError::PropertyNotAllowed { context, property });
            }
            let bit = 1u64 << identifier;
            if seen & bit != 0 && !property.is_repeatable_in(context) {
                return Err(MqttError::DuplicateProperty { context, property });
            }
            seen |= bit;
            let name = property.name();
            let flag = |list: &mut Reader| -> Result<bool, MqttError> {
                match list.u8(name)? {
                    0 => Ok(false),
                    1 => Ok(true),
                    value => Err(MqttError::PropertyValueInvalid {
                        context,
                        property,
                        value: value.into(),
                        expected: "0 or 1",
                    }),
                }
            };
            match property {
                Property::PayloadFormatIndicator => {
                    properties.payload_format_indicator = Some(match list.u8(name)? {
                        0 => PayloadFormat::Unspecified,
                        1 => PayloadFormat::Utf8,
                        value => {
                            return Err(MqttError::PropertyValueInvalid {
                                context,
                                property,
                                value: value.into(),
                                expected: "0 (unspecified bytes) or 1 (UTF-8)",
                            })
                        }
                    })
                }
                Property::MessageExpiryInterval => {
                    properties.message_expiry_interval_s = Some(list.u32(name)?)
                }
                Property::ContentType => properties.content_type = Some(list.string(name)?),
                Property::ResponseTopic => properties.response_topic = Some(list.string(name)?),
                Property::CorrelationData => properties.correlation_data = Some(list.binary(name)?),
                Property::SubscriptionIdentifier => properties
                    .subscription_identifiers
                    .push(list.var_int(name)?),
                Property::SessionExpiryInterval => {
                    properties.session_expiry_interval_s = Some(list.u32(name)?)
                }
                Property::AssignedClientIdentifier => {
                    properties.assigned_client_identifier = Some(list.string(name)?)
                }
                Property::ServerKeepAlive => properties.server_keep_alive_s = Some(list.u16(name)?),
                Property::AuthenticationMethod => {
                    properties.authentication_method = Some(list.string(name)?)
                }
                Property::AuthenticationData => {
                    properties.authentication_data = Some(list.binary(name)?)
                }
                Property::RequestProblemInformation => {
                    properties.request_problem_information = Some(flag(&mut list)?)
                }
                Property::WillDelayInterval => {
                    properties.will_delay_interval_s = Some(list.u32(name)?)
                }
                Property::RequestResponseInformation => {
                    properties.request_response_information = Some(flag(&mut list)?)
                }
                Property::ResponseInformation => {
                    properties.response_information = Some(list.string(name)?)
                }
                Property::ServerReference => properties.server_reference = Some(list.string(name)?),
                Property::ReasonString => properties.reason_string = Some(list.string(name)?),
                Property::ReceiveMaximum => properties.receive_maximum = Some(list.u16(name)?),
                Property::TopicAliasMaximum => {
                    properties.topic_alias_maximum = Some(list.u16(name)?)
                }
                Property::TopicAlias => properties.topic_alias = Some(list.u16(name)?),
                Property::MaximumQoS => {
                    properties.maximum_qos = Some(match list.u8(name)? {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        value => {
                            return Err(MqttError::PropertyValueInvalid {
                                context,
                                property,
                                value: value.into(),
                                expected: "0 or 1 (absent means 2)",
                            })
                        }
                    })
                }
                Property::RetainAvailable => properties.retain_available = Some(flag(&mut list)?),
                Property::UserProperty => {
                    let key = list.string("User Property name")?;
                    let value = list.string("User Property value")?;
                    properties.user_properties.push((key, value));
                }
                Property::MaximumPacketSize => {
                    properties.maximum_packet_size_bytes = Some(list.u32(name)?)
                }
                Property::WildcardSubscriptionAvailable => {
                    properties.wildcard_subscription_available = Some(flag(&mut list)?)
                }
                Property::SubscriptionIdentifierAvailable => {
                    properties.subscription_identifier_available = Some(flag(&mut list)?)
                }
                Property::SharedSubscriptionAvailable => {
                    properties.shared_subscription_available = Some(flag(&mut list)?)
                }
            }
        }
        properties.check_values(context)?;
        Ok(properties)
    }

    /// Checks everything the decoder checks, for a property list about to be encoded in
    /// `context`: each present property is allowed there, appears no more often than allowed,
    /// holds an allowed value, and its strings and binary data fit their length prefixes.
    pub fn validate(&self, context: PropertyContext) -> Result<(), MqttError> {
        // Checked before anything sizes the list, because sizing panics on an identifier too
        // large to encode.
        if let Some(&identifier) = self
            .subscription_identifiers
            .iter()
            .find(|&&identifier| identifier > VarInt::MAX)
        {
            return Err(MqttError::PropertyValueInvalid {
                context,
                property: PropertyIdentifier::SubscriptionIdentifier,
                value: identifier,
                expected: "1 to 268435455",
            });
        }
        let length = self.encoded_len();
        if length > VarInt::MAX as usize {
            return Err(MqttError::RemainingLengthTooLarge {
                packet_type: context.packet_type(),
                length,
            });
        }
        for (property, count) in self.present() {
            if count == 0 {
                continue;
            }
            if !property.is_allowed_in(context) {
                return Err(MqttError::PropertyNotAllowed { context, property });
            }
            if count > 1 && !property.is_repeatable_in(context) {
                return Err(MqttError::DuplicateProperty { context, property });
            }
        }
        if let Some(QoS::ExactlyOnce) = self.maximum_qos {
            return Err(MqttError::PropertyValueInvalid {
                context,
                property: PropertyIdentifier::MaximumQoS,
                value: 2,
                expected: "0 or 1 (absent means 2)",
            });
        }
        let packet_type = context.packet_type();
        let strings = [
            ("Content Type", &self.content_type),
            ("Response Topic", &self.response_topic),
            (
                "Assigned Client Identifier",
                &self.assigned_client_identifier,
            ),
            ("Authentication Method", &self.authentication_method),
            ("Response Information", &self.response_information),
            ("Server Reference", &self.server_reference),
            ("Reason String", &self.reason_string),
        ];
        for (field, value) in strings {
            if let Some(value) = value {
                check_string(packet_type, field, value)?;
            }
        }
        for (name, value) in &self.user_properties {
            check_string(packet_type, "User Property name", name)?;
            check_string(packet_type, "User Property value", value)?;
        }
        for (field, value) in [
            ("Correlation Data", &self.correlation_data),
            ("Authentication Data", &self.authentication_data),
        ] {
            if let Some(value) = value {
                check_field_length(packet_type, field, value.len())?;
            }
        }
        self.check_values(context)
    }

    /// The value rules shared by decoding and [`Properties::validate`]: no zero where the
    /// specification forbids it, a Response Topic that is a valid topic name, and Authentication
    /// Data only with an Authentication Method.
    fn check_values(&self, context: PropertyContext) -> Result<(), MqttError> {
        use PropertyIdentifier as Property;
        let zero = |property: Property, expected: &'static str| MqttError::PropertyValueInvalid {
            context,
            property,
            value: 0,
            expected,
        };
        if self.receive_maximum == Some(0) {
            return Err(zero(Property::ReceiveMaximum, "1 to 65535"));
        }
        if self.topic_alias == Some(0) {
            return Err(zero(Property::TopicAlias, "1 to 65535"));
        }
        if self.maximum_packet_size_bytes == Some(0) {
            return Err(zero(Property::MaximumPacketSize, "1 to 4294967295"));
        }
        if self.subscription_identifiers.contains(&0) {
            return Err(zero(Property::SubscriptionIdentifier, "1 to 268435455"));
        }
        if let Some(topic) = &self.response_topic {
            validate_topic_name(topic).map_err(|problem| MqttError::TopicNameInvalid {
                packet_type: context.packet_type(),
                topic: topic.clone(),
                problem,
            })?;
        }
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(MqttError::AuthenticationDataWithoutMethod { context });
        }
        Ok(())
    }

    /// How many times each property is present.
    fn present(&self) -> [(PropertyIdentifier, usize); 27] {
        use PropertyIdentifier as Property;
        let once = |present: bool| usize::from(present);
        [
            (
                Property::PayloadFormatIndicator,
                once(self.payload_format_indicator.is_some()),
            ),
            (
                Property::MessageExpiryInterval,
                once(self.message_expiry_interval_s.is_some()),
            ),
            (Property::ContentType, once(self.content_type.is_some())),
            (Property::ResponseTopic, once(self.response_topic.is_some())),
            (
                Property::CorrelationData,
                once(self.correlation_data.is_some()),
            ),
            (
                Property::SubscriptionIdentifier,
                self.subscription_identifiers.len(),
            ),
            (
                Property::SessionExpiryInterval,
                once(self.session_expiry_interval_s.is_some()),
            ),
            (
                Property::AssignedClientIdentifier,
                once(self.assigned_client_identifier.is_some()),
            ),
            (
                Property::ServerKeepAlive,
                once(self.server_keep_alive_s.is_some()),
            ),
            (
                Property::AuthenticationMethod,
                once(self.authentication_method.is_some()),
            ),
            (
                Property::AuthenticationData,
                once(self.authentication_data.is_some()),
            ),
            (
                Property::RequestProblemInformation,
                once(self.request_problem_information.is_some()),
            ),
            (
                Property::WillDelayInterval,
                once(self.will_delay_interval_s.is_some()),
            ),
            (
                Property::RequestResponseInformation,
                once(self.request_response_information.is_some()),
            ),
            (
                Property::ResponseInformation,
                once(self.response_information.is_some()),
            ),
            (
                Property::ServerReference,
                once(self.server_reference.is_some()),
            ),
            (Property::ReasonString, once(self.reason_string.is_some())),
            (
                Property::ReceiveMaximum,
                once(self.receive_maximum.is_some()),
            ),
            (
                Property::TopicAliasMaximum,
                once(self.topic_alias_maximum.is_some()),
            ),
            (Property::TopicAlias, once(self.topic_alias.is_some())),
            (Property::MaximumQoS, once(self.maximum_qos.is_some())),
            (
                Property::RetainAvailable,
                once(self.retain_available.is_some()),
            ),
            (Property::UserProperty, self.user_properties.len()),
            (
                Property::MaximumPacketSize,
                once(self.maximum_packet_size_bytes.is_some()),
            ),
            (
                Property::WildcardSubscriptionAvailable,
                once(self.wildcard_subscription_available.is_some()),
            ),
            (
                Property::SubscriptionIdentifierAvailable,
                once(self.subscription_identifier_available.is_some()),
            ),
            (
                Property::SharedSubscriptionAvailable,
                once(self.shared_subscription_available.is_some()),
            ),
        ]
    }
}

/// Counts a string or binary property if it is present.
fn count_field(count: &mut impl FnMut(bool, usize), value: Option<&[u8]>) {
    if let Some(value) = value {
        count(true, field_len(value));
    }
}

/// A property list length as the variable byte integer that prefixes it.
///
/// # Panics
/// If the list is longer than a variable byte integer can say; such a list cannot be encoded.
fn length_u32(length: usize) -> u32 {
    match u32::try_from(length) {
        Ok(length) if length <= VarInt::MAX => length,
        _ => panic!("a property list of {length} bytes does not fit its length prefix"),
    }
}
