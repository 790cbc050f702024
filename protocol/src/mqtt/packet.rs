//! The [`Packet`] enum and its encoder: a packet is written into the caller's buffer, grown once
//! to the packet's exact size.

use bytes::{BufMut, BytesMut};

use crate::mqtt::connect::{ConnAck, Connect};
use crate::mqtt::disconnect::{Auth, Disconnect};
use crate::mqtt::error::MqttError;
use crate::mqtt::publish::{Publish, PublishResponse};
use crate::mqtt::subscribe::{SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::mqtt::var_int::VarInt;
use crate::mqtt::wire::Reader;
use crate::mqtt::{PacketType, ProtocolVersion};

/// One MQTT control packet, of either version.
///
/// Fields that only v5 has (properties, most reason codes, subscription options but the QoS) are
/// empty or default when a v3.1.1 packet is decoded and are left out when one is encoded, so a
/// server can build one packet and send it to clients of both versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT: the client opens a session. It carries its own version. Boxed because it holds
    /// two property lists and comes once per connection: every other packet would otherwise be
    /// twice as large.
    Connect(Box<Connect>),
    /// CONNACK: the reply to CONNECT.
    ConnAck(ConnAck),
    /// PUBLISH: an application message.
    Publish(Publish),
    /// PUBACK: the reply to a QoS 1 PUBLISH.
    PubAck(PublishResponse),
    /// PUBREC: the first reply to a QoS 2 PUBLISH.
    PubRec(PublishResponse),
    /// PUBREL: the reply to PUBREC.
    PubRel(PublishResponse),
    /// PUBCOMP: the reply to PUBREL.
    PubComp(PublishResponse),
    /// SUBSCRIBE: add subscriptions.
    Subscribe(Subscribe),
    /// SUBACK: the reply to SUBSCRIBE.
    SubAck(SubAck),
    /// UNSUBSCRIBE: remove subscriptions.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK: the reply to UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// PINGREQ: liveness check.
    PingReq,
    /// PINGRESP: the reply to PINGREQ.
    PingResp,
    /// DISCONNECT: the connection ends.
    Disconnect(Disconnect),
    /// AUTH: a step of extended authentication (v5 only).
    Auth(Auth),
}

impl Packet {
    /// The type of this packet.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The low nibble of the first byte.
    fn flags(&self) -> u8 {
        match self {
            Packet::Publish(publish) => publish.flags(),
            other => other
                .packet_type()
                .required_flags()
                .expect("only PUBLISH has variable flags"),
        }
    }

    /// Bytes after the fixed header: the remaining length.
    fn body_len(&self, version: ProtocolVersion) -> usize {
        match self {
            Packet::Connect(connect) => connect.body_len(),
            Packet::ConnAck(connack) => connack.body_len(version),
            Packet::Publish(publish) => publish.body_len(version),
            Packet::PubAck(response)
            | Packet::PubRec(response)
            | Packet::PubRel(response)
            | Packet::PubComp(response) => response.body_len(version),
            Packet::Subscribe(subscribe) => subscribe.body_len(version),
            Packet::SubAck(suback) => suback.body_len(version),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.body_len(version),
            Packet::UnsubAck(unsuback) => unsuback.body_len(version),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(disconnect) => disconnect.body_len(version),
            Packet::Auth(auth) => auth.body_len(),
        }
    }

    /// Size of this packet on the wire when encoded for `version`, fixed header included.
    ///
    /// A CONNECT is always sized for its own [`Connect::protocol`].
    ///
    /// # Panics
    /// If the packet cannot be encoded at all (see [`Packet::encode`]).
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body_len = self.body_len(version);
        1 + VarInt::encoded_len(remaining_length(self.packet_type(), body_len)) + body_len
    }

    /// Appends this packet, encoded for a connection speaking `version`, to `out`.
    ///
    /// A CONNECT is always encoded in its own [`Connect::protocol`]; every other packet in
    /// `version`, leaving out what that version cannot carry (v5 properties and reason codes in
    /// v3.1.1; a v3.1.1 CONNACK or SUBACK carries the nearest return code).
    ///
    /// # Panics
    /// If the packet cannot be framed: a body longer than 268,435,455 bytes, a string or binary
    /// field longer than 65535 bytes, a subscription identifier above 268,435,455, or an AUTH in
    /// v3.1.1, which has none. In debug builds, also if [`Packet::validate`] refuses the packet,
    /// because the peer's decoder would refuse its bytes: callers that build packets from input
    /// they do not control should call [`Packet::validate`] first.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) {
        let packet_type = self.packet_type();
        assert!(
            packet_type.exists_in(version),
            "{packet_type} does not exist in {version}"
        );
        debug_assert_eq!(
            self.validate(version),
            Ok(()),
            "encoding a {packet_type} packet the decoder would refuse"
        );
        let body_len = self.body_len(version);
        let remaining = remaining_length(packet_type, body_len);
        let encoded_len = 1 + VarInt::encoded_len(remaining) + body_len;
        out.reserve(encoded_len);
        let start = out.len();
        out.put_u8((packet_type as u8) << 4 | self.flags());
        VarInt::write(remaining, out);
        match self {
            Packet::Connect(connect) => connect.encode_body(out),
            Packet::ConnAck(connack) => connack.encode_body(version, out),
            Packet::Publish(publish) => publish.encode_body(version, out),
            Packet::PubAck(response)
            | Packet::PubRec(response)
            | Packet::PubRel(response)
            | Packet::PubComp(response) => response.encode_body(version, out),
            Packet::Subscribe(subscribe) => subscribe.encode_body(version, out),
            Packet::SubAck(suback) => suback.encode_body(version, out),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.encode_body(version, out),
            Packet::UnsubAck(unsuback) => unsuback.encode_body(version, out),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(disconnect) => disconnect.encode_body(version, out),
            Packet::Auth(auth) => auth.encode_body(out),
        }
        assert_eq!(
            out.len() - start,
            encoded_len,
            "encoded_len disagrees with encode for a {packet_type} packet"
        );
    }

    /// Checks that [`Packet::encode`] for `version` will not panic and that the decoder will
    /// accept what it writes: the same rules the decoder enforces (packet identifiers not 0, valid
    /// topic names and filters, strings without U+0000 that fit their length prefix, properties and
    /// reason codes the packet may carry, values the specification allows) plus the size limit of
    /// the remaining length. It does not check a peer's Maximum Packet Size: compare
    /// [`Packet::encoded_len`] with it.
    pub fn validate(&self, version: ProtocolVersion) -> Result<(), MqttError> {
        let packet_type = self.packet_type();
        if !packet_type.exists_in(version) {
            return Err(MqttError::UnknownPacketType {
                value: packet_type as u8,
                version,
            });
        }
        match self {
            Packet::Connect(connect) => connect.validate()?,
            Packet::ConnAck(connack) => connack.validate(version)?,
            Packet::Publish(publish) => publish.validate(version)?,
            Packet::PubAck(response)
            | Packet::PubRec(response)
            | Packet::PubRel(response)
            | Packet::PubComp(response) => response.validate(packet_type, version)?,
            Packet::Subscribe(subscribe) => subscribe.validate(version)?,
            Packet::SubAck(suback) => suback.validate(version)?,
            Packet::Unsubscribe(unsubscribe) => unsubscribe.validate(version)?,
            Packet::UnsubAck(unsuback) => unsuback.validate(version)?,
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(disconnect) => disconnect.validate(version)?,
            Packet::Auth(auth) => auth.validate()?,
        }
        let length = self.body_len(version);
        if length > VarInt::MAX as usize {
            return Err(MqttError::RemainingLengthTooLarge {
                packet_type,
                length,
            });
        }
        Ok(())
    }

    /// Decodes the body of a packet whose fixed header has been checked.
    pub(crate) fn decode_body(
        packet_type: PacketType,
        flags: u8,
        version: ProtocolVersion,
        reader: &mut Reader,
    ) -> Result<Packet, MqttError> {
        let packet = match packet_type {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode_body(reader)?)),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode_body(reader, version)?),
            PacketType::Publish => Packet::Publish(Publish::decode_body(reader, flags, version)?),
            PacketType::PubAck => Packet::PubAck(PublishResponse::decode_body(reader, version)?),
            PacketType::PubRec => Packet::PubRec(PublishResponse::decode_body(reader, version)?),
            PacketType::PubRel => Packet::PubRel(PublishResponse::decode_body(reader, version)?),
            PacketType::PubComp => Packet::PubComp(PublishResponse::decode_body(reader, version)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode_body(reader, version)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode_body(reader, version)?),
            PacketType::Unsubscribe => {
                Packet::Unsubscribe(Unsubscribe::decode_body(reader, version)?)
            }
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode_body(reader, version)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode_body(reader, version)?),
            PacketType::Auth => Packet::Auth(Auth::decode_body(reader)?),
        };
        reader.finish()?;
        Ok(packet)
    }
}

/// A body length as the remaining length that announces it.
///
/// # Panics
/// If the body is longer than a remaining length can say.
fn remaining_length(packet_type: PacketType, body_len: usize) -> u32 {
    match u32::try_from(body_len) {
        Ok(length) if length <= VarInt::MAX => length,
        _ => panic!(
            "{packet_type} body of {body_len} bytes exceeds the largest remaining length ({})",
            VarInt::MAX
        ),
    }
}
