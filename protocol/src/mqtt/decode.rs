//! The decoder: bytes in, `Complete` / `NeedMore` / error out. No I/O and no buffering of its own:
//! the caller keeps the bytes and drops `used` of them after a complete packet.

use std::ops::Range;

use bytes::Bytes;

use crate::mqtt::error::MqttError;
use crate::mqtt::packet::Packet;
use crate::mqtt::publish::publish_flags;
use crate::mqtt::var_int::VarInt;
use crate::mqtt::wire::Reader;
use crate::mqtt::{MqttLimits, PacketType, ProtocolVersion};

/// The smallest packet: a type byte and a remaining length of 0 (PINGREQ, for example).
const PACKET_BYTES_MIN: usize = 2;

/// What the decoder found at the start of its input.
// The packet is moved out as soon as it is matched, so its size only costs a copy; boxing it would
// cost an allocation per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole packet; the caller drops `used` bytes from its buffer.
    Complete {
        /// The decoded packet.
        packet: Packet,
        /// Bytes the packet took, fixed header included.
        used: usize,
    },
    /// The input holds only part of a packet; call again once it holds at least `at_least` bytes
    /// in total (counted from the start of the packet, not in addition to what is there).
    NeedMore {
        /// Smallest input length that can make progress.
        at_least: usize,
    },
}

/// Decodes the packet at the start of `input`, received on a connection speaking `version`.
///
/// The fixed header is checked as soon as it is there (packet type, flags, remaining length and
/// `limits`), so a peer announcing an oversize packet is refused before any of its body is
/// buffered. A CONNECT is decoded in the version it names itself. Bytes after the first packet
/// are left alone. Binary fields and the payload are copied once, into one allocation per packet;
/// [`decode_bytes`] avoids that copy.
pub fn decode(
    input: &[u8],
    version: ProtocolVersion,
    limits: &MqttLimits,
) -> Result<Decoded, MqttError> {
    decode_with(input, Some(version), limits, |range| {
        Bytes::copy_from_slice(&input[range])
    })
}

/// [`decode`] on a [`Bytes`]: payloads, passwords and other binary fields are slices of `input`,
/// sharing its allocation. A read loop that owns a `BytesMut` can use
/// [`peek_packet_size`], then `buffer.split_to(size).freeze()` and this function to decode a
/// packet without copying its payload.
pub fn decode_bytes(
    input: &Bytes,
    version: ProtocolVersion,
    limits: &MqttLimits,
) -> Result<Decoded, MqttError> {
    decode_with(input, Some(version), limits, |range| input.slice(range))
}

/// Decodes the first packet of a connection, which must be a CONNECT; its protocol level tells
/// the version of the connection ([`crate::mqtt::Connect::protocol`]).
///
/// Any other packet type is [`MqttError::ExpectedConnect`], reported from the first byte. A
/// CONNECT for MQTT 3.1 (protocol name "MQIsdp", level 3) or an unknown level is
/// [`MqttError::UnsupportedProtocolVersion`] with the level, so the server can answer with the
/// CONNACK return code 0x01 (v3.1.1) or reason code 0x84 (v5).
pub fn decode_connect(input: &[u8], limits: &MqttLimits) -> Result<Decoded, MqttError> {
    decode_with(input, None, limits, |range| {
        Bytes::copy_from_slice(&input[range])
    })
}

/// The size of the packet at the start of `input`, fixed header included, once its fixed header
/// is complete (`None` before). Only the remaining length is checked, not the packet type or
/// flags; a five-byte remaining length is an error.
pub fn peek_packet_size(input: &[u8]) -> Result<Option<usize>, MqttError> {
    let Some(length_bytes) = input.get(1..) else {
        return Ok(None);
    };
    match VarInt::read(length_bytes) {
        Ok(Some((remaining, used))) => Ok(Some(1 + used + remaining as usize)),
        Ok(None) => Ok(None),
        Err(problem) => Err(MqttError::MalformedRemainingLength { problem }),
    }
}

/// The shared decoder. `version` is `None` for the first packet of a connection; `body` turns a
/// range of `input` into the `Bytes` the packet's binary fields are sliced from.
fn decode_with(
    input: &[u8],
    version: Option<ProtocolVersion>,
    limits: &MqttLimits,
    body: impl FnOnce(Range<usize>) -> Bytes,
) -> Result<Decoded, MqttError> {
    let Some(&first) = input.first() else {
        return Ok(Decoded::NeedMore {
            at_least: PACKET_BYTES_MIN,
        });
    };
    let packet_type = check_first_byte(first, version)?;
    let (remaining, length_bytes) = match VarInt::read(&input[1..]) {
        Ok(Some(read)) => read,
        Ok(None) => {
            // Each byte read so far announced another.
            return Ok(Decoded::NeedMore {
                at_least: input.len() + 1,
            });
        }
        Err(problem) => return Err(MqttError::MalformedRemainingLength { problem }),
    };
    let header_len = 1 + length_bytes;
    // At most 1 + 4 + 268,435,455 bytes, which fits a u32.
    let size = header_len as u32 + remaining;
    if size > limits.packet_bytes_max {
        return Err(MqttError::PacketTooLarge {
            packet_type,
            size,
            limit: limits.packet_bytes_max,
        });
    }
    let used = size as usize;
    if input.len() < used {
        return Ok(Decoded::NeedMore { at_least: used });
    }
    // CONNECT names its own version; the first packet can only be a CONNECT, so the fallback is
    // never used for another packet type.
    let version = version.unwrap_or(ProtocolVersion::V5);
    let mut reader = Reader::new(body(header_len..used), packet_type);
    let packet = Packet::decode_body(packet_type, first & 0x0F, version, &mut reader)?;
    Ok(Decoded::Complete { packet, used })
}

/// Checks the packet type and flags of the first byte, before anything else is read.
fn check_first_byte(first: u8, version: Option<ProtocolVersion>) -> Result<PacketType, MqttError> {
    let value = first >> 4;
    let flags = first & 0x0F;
    let packet_type = match version {
        Some(version) => PacketType::from_u8(value)
            .filter(|packet_type| packet_type.exists_in(version))
            .ok_or(MqttError::UnknownPacketType { value, version })?,
        None if value == PacketType::Connect as u8 => PacketType::Connect,
        None => return Err(MqttError::ExpectedConnect { value }),
    };
    match packet_type.required_flags() {
        Some(required) if flags != required => Err(MqttError::ReservedFlags {
            packet_type,
            flags,
            required,
        }),
        Some(_) => Ok(packet_type),
        None => publish_flags(flags).map(|_| packet_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_more_counts_the_remaining_length_bytes() {
        let limits = MqttLimits::default();
        let version = ProtocolVersion::V5;
        assert_eq!(
            decode(&[], version, &limits),
            Ok(Decoded::NeedMore { at_least: 2 })
        );
        assert_eq!(
            decode(&[0x30], version, &limits),
            Ok(Decoded::NeedMore { at_least: 2 })
        );
        assert_eq!(
            decode(&[0x30, 0x80], version, &limits),
            Ok(Decoded::NeedMore { at_least: 3 })
        );
        assert_eq!(
            decode(&[0x30, 0x80, 0x01], version, &limits),
            Ok(Decoded::NeedMore { at_least: 131 })
        );
    }

    #[test]
    fn peek_reports_the_size_once_the_header_is_there() {
        assert_eq!(peek_packet_size(&[]), Ok(None));
        assert_eq!(peek_packet_size(&[0xC0]), Ok(None));
        assert_eq!(peek_packet_size(&[0xC0, 0x00]), Ok(Some(2)));
        assert_eq!(peek_packet_size(&[0x30, 0xFF]), Ok(None));
        assert_eq!(
            peek_packet_size(&[0x30, 0xFF, 0x01, 9]),
            Ok(Some(1 + 2 + 255))
        );
        assert!(matches!(
            peek_packet_size(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(MqttError::MalformedRemainingLength { .. })
        ));
    }

    #[test]
    fn the_first_packet_must_be_a_connect() {
        let limits = MqttLimits::default();
        assert_eq!(
            decode_connect(&[0xC0, 0x00], &limits),
            Err(MqttError::ExpectedConnect { value: 12 })
        );
        assert_eq!(
            decode_connect(&[0x10], &limits),
            Ok(Decoded::NeedMore { at_least: 2 })
        );
    }
}
