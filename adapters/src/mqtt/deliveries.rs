//! How deliveries look to MQTT subscribers: PUBLISH packets, encoded once
//! per version for QoS 0, with the v5 message properties kept in each
//! record's header block.

use super::*;

/// Deliveries as QoS 0 PUBLISH packets of one version, encoded once and
/// shared by every subscriber of that version on a core.
pub(super) struct MqttDeliveries {
    pub(super) version: ProtocolVersion,
}

impl Protocol for MqttDeliveries {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        unreachable!("MQTT sessions start from MqttProtocol")
    }

    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes {
        let mut out = BytesMut::new();
        if !super::is_topic_name(channel) {
            return out.freeze();
        }
        let now_ms = wall_clock_ms();
        for message in messages.iter().filter(|m| is_application_message(m)) {
            if let Some(packet) = publish_packet(channel, message, QoS::AtMostOnce, None, now_ms) {
                packet.encode(self.version, &mut out);
            }
        }
        out.freeze()
    }

    fn per_connection_delivery(&self) -> bool {
        // Sessions with QoS 1 or 2 subscriptions number their deliveries.
        true
    }
}

/// Chat bookkeeping (typing, read notices, presence) is not an application
/// message for MQTT subscribers.
pub(super) fn is_application_message(message: &Message) -> bool {
    !matches!(message.kind, kind::TYPING | kind::CURSOR | kind::PRESENCE)
}

/// The PUBLISH that delivers `message`, with the v5 properties its
/// publisher set; `None` when the message has expired.
pub(super) fn publish_packet(
    channel: &str,
    message: &Message,
    qos: QoS,
    packet_id: Option<u16>,
    now_ms: u64,
) -> Option<Packet> {
    let properties = properties_of(&message.headers, now_ms)?;
    Some(Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: channel.to_string(),
        packet_id,
        properties,
        payload: message.body.clone(),
    }))
}

/// Header naming the MQTT client id that published a message. Written only
/// while that client has a no-local subscription, which is the only reader.
const ORIGIN_CLIENT: &str = "mqtt.client";
/// Header of a message published with RETAIN (one byte, 1), for
/// subscriptions with retain-as-published.
const RETAINED: &str = "mqtt.retain";

/// What MQTT itself notes about a publish, beside its properties.
#[derive(Clone, Copy, Default)]
pub(super) struct Marks<'a> {
    /// The publishing client, when its no-local subscriptions need to know.
    pub(super) origin: Option<&'a str>,
    /// Published with RETAIN.
    pub(super) retained: bool,
}

/// The marks of a stored message: (publishing client id, published with
/// RETAIN).
pub(super) fn mqtt_marks(headers: &Bytes) -> (Option<Bytes>, bool) {
    let mut marks = (None, false);
    if headers.is_empty() {
        return marks;
    }
    for (key, value) in decode_headers(headers).unwrap_or_default() {
        match key.as_str() {
            ORIGIN_CLIENT => marks.0 = Some(value),
            RETAINED => marks.1 = value.first() == Some(&1),
            _ => {}
        }
    }
    marks
}

/// The message properties of a v5 PUBLISH, kept with the record as its
/// header block (so they reach subscribers of any protocol, and MQTT
/// subscribers as properties), and the MQTT marks. The expiry interval
/// becomes an absolute time.
pub(super) fn headers_of(properties: &Properties, marks: Marks<'_>, now_ms: u64) -> Bytes {
    let mut headers: Vec<(String, Bytes)> = Vec::new();
    if let Some(origin) = marks.origin {
        headers.push((ORIGIN_CLIENT.into(), Bytes::from(origin.to_string())));
    }
    if marks.retained {
        headers.push((RETAINED.into(), Bytes::from_static(&[1])));
    }
    if let Some(format) = properties.payload_format_indicator {
        headers.push((name::PAYLOAD_FORMAT.into(), Bytes::from(vec![format as u8])));
    }
    if let Some(expiry_s) = properties.message_expiry_interval_s {
        let expires_at_ms = now_ms + u64::from(expiry_s) * 1000;
        let value = Bytes::copy_from_slice(&expires_at_ms.to_le_bytes());
        headers.push((name::EXPIRES_AT_MS.into(), value));
    }
    if let Some(content_type) = &properties.content_type {
        headers.push((name::CONTENT_TYPE.into(), Bytes::from(content_type.clone())));
    }
    if let Some(topic) = &properties.response_topic {
        headers.push((name::RESPONSE_TOPIC.into(), Bytes::from(topic.clone())));
    }
    if let Some(data) = &properties.correlation_data {
        headers.push((name::CORRELATION_DATA.into(), data.clone()));
    }
    for (key, value) in &properties.user_properties {
        headers.push((
            format!("{}{key}", name::USER_PREFIX),
            Bytes::from(value.clone()),
        ));
    }
    encode_headers(&headers)
}

/// The properties of a PUBLISH sent again (DUP) at `qos`: as
/// [`properties_of`], except that a QoS 2 message that expired meanwhile
/// still goes, with the least expiry left (1 s). Its delivery has started
/// (MQTT 3.3.2.3.3 lets a server drop a message only before that), and
/// dropped, its packet id would be reused while the client still holds it:
/// the client would take the next message for this one.
pub(super) fn properties_to_resend(headers: &Bytes, now_ms: u64, qos: QoS) -> Option<Properties> {
    properties_of(headers, now_ms).or_else(|| {
        (qos == QoS::ExactlyOnce).then(|| {
            let mut properties = properties_of(headers, 0).unwrap_or_default();
            properties.message_expiry_interval_s = Some(1);
            properties
        })
    })
}

/// `bytes` as an MQTT UTF-8 string: valid UTF-8 without U+0000 (MQTT
/// 1.5.4-2); `None` otherwise.
fn mqtt_string(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec())
        .ok()
        .filter(|text| !text.contains('\0'))
}

/// The v5 properties of a delivery from the record's header block; `None`
/// once the message has expired. Headers that are not MQTT's are left out,
/// and so is a block that does not parse (it was written by another front
/// end, and the message still goes out).
pub(super) fn properties_of(headers: &Bytes, now_ms: u64) -> Option<Properties> {
    let mut properties = Properties::default();
    let Ok(headers) = decode_headers(headers) else {
        return Some(properties);
    };
    for (key, value) in headers {
        match key.as_str() {
            name::PAYLOAD_FORMAT => {
                properties.payload_format_indicator = match value.first() {
                    Some(1) => Some(PayloadFormat::Utf8),
                    Some(0) => Some(PayloadFormat::Unspecified),
                    _ => None,
                };
            }
            name::EXPIRES_AT_MS => {
                let Ok(bytes) = <[u8; 8]>::try_from(&value[..]) else {
                    continue;
                };
                let expires_at_ms = u64::from_le_bytes(bytes);
                if expires_at_ms <= now_ms {
                    return None;
                }
                // What is left, rounded up, as MQTT 5 asks.
                let left_s = (expires_at_ms - now_ms).div_ceil(1000);
                properties.message_expiry_interval_s = Some(left_s.min(u64::from(u32::MAX)) as u32);
            }
            // Headers another front end wrote are not checked as MQTT
            // strings: those an MQTT packet may not carry are left out.
            name::CONTENT_TYPE => properties.content_type = mqtt_string(&value),
            name::RESPONSE_TOPIC => {
                properties.response_topic = mqtt_string(&value)
                    .filter(|topic| starling_protocol::mqtt::validate_topic_name(topic).is_ok())
            }
            name::CORRELATION_DATA => properties.correlation_data = Some(value),
            other => {
                let user_key = other
                    .strip_prefix(name::USER_PREFIX)
                    .filter(|key| !key.contains('\0'));
                if let (Some(user_key), Some(text)) = (user_key, mqtt_string(&value)) {
                    properties
                        .user_properties
                        .push((user_key.to_string(), text));
                }
            }
        }
    }
    Some(properties)
}

pub(super) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
