//! Reading and writing the field types of MQTT: big-endian integers, variable byte integers,
//! strings and binary data.

use bytes::{BufMut, Bytes};

use crate::mqtt::error::MqttError;
use crate::mqtt::var_int::VarInt;
use crate::mqtt::PacketType;

/// Longest string or binary field: its length prefix is a u16.
pub(crate) const FIELD_BYTES_MAX: usize = u16::MAX as usize;

/// A cursor over the body of one whole packet (everything after the fixed header). Every read
/// names its field so that errors say which one was short or wrong. Binary fields are slices of
/// the body, so they share its allocation instead of copying.
pub(crate) struct Reader {
    input: Bytes,
    /// INVARIANT: `position <= input.len()`.
    position: usize,
    packet_type: PacketType,
}

impl Reader {
    pub(crate) fn new(input: Bytes, packet_type: PacketType) -> Reader {
        Reader {
            input,
            position: 0,
            packet_type,
        }
    }

    pub(crate) fn packet_type(&self) -> PacketType {
        self.packet_type
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    /// Advances over `count` bytes and answers where they start; a failed read consumes nothing.
    fn advance(&mut self, count: usize, field: &'static str) -> Result<usize, MqttError> {
        let available = self.remaining();
        if count > available {
            return Err(MqttError::Truncated {
                packet_type: self.packet_type,
                field,
                needed: count,
                available,
            });
        }
        let start = self.position;
        self.position += count;
        Ok(start)
    }

    fn take(&mut self, count: usize, field: &'static str) -> Result<&[u8], MqttError> {
        let start = self.advance(count, field)?;
        Ok(&self.input[start..start + count])
    }

    fn take_bytes(&mut self, count: usize, field: &'static str) -> Result<Bytes, MqttError> {
        let start = self.advance(count, field)?;
        Ok(self.input.slice(start..start + count))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, MqttError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MqttError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, MqttError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A variable byte integer that must end inside the packet.
    pub(crate) fn var_int(&mut self, field: &'static str) -> Result<u32, MqttError> {
        let rest = &self.input[self.position..];
        match VarInt::read(rest) {
            Ok(Some((value, used))) => {
                self.position += used;
                Ok(value)
            }
            Ok(None) => Err(MqttError::Truncated {
                packet_type: self.packet_type,
                field,
                needed: rest.len() + 1,
                available: rest.len(),
            }),
            Err(problem) => Err(MqttError::MalformedVarInt {
                packet_type: self.packet_type,
                field,
                problem,
            }),
        }
    }

    /// A packet identifier, which must not be 0.
    pub(crate) fn packet_id(&mut self) -> Result<u16, MqttError> {
        match self.u16("packet identifier")? {
            0 => Err(MqttError::PacketIdentifierZero {
                packet_type: self.packet_type,
            }),
            packet_id => Ok(packet_id),
        }
    }

    /// A UTF-8 encoded string: u16 length, valid UTF-8 without U+0000.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, MqttError> {
        let packet_type = self.packet_type;
        let length = self.u16(field)?;
        let bytes = self.take(length.into(), field)?;
        let text = std::str::from_utf8(bytes).map_err(|error| MqttError::InvalidUtf8 {
            packet_type,
            field,
            valid_up_to: error.valid_up_to(),
        })?;
        check_no_null(packet_type, field, text)?;
        Ok(text.to_owned())
    }

    /// Binary data: u16 length and bytes, sliced without a copy.
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, MqttError> {
        let length = self.u16(field)?;
        self.take_bytes(length.into(), field)
    }

    /// Everything left in the packet (a PUBLISH payload), sliced without a copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        let rest = self.input.slice(self.position..);
        self.position = self.input.len();
        rest
    }

    /// A reader over the next `length` bytes (a property list), which this reader skips.
    pub(crate) fn sub_reader(
        &mut self,
        length: usize,
        field: &'static str,
    ) -> Result<Reader, MqttError> {
        Ok(Reader::new(
            self.take_bytes(length, field)?,
            self.packet_type,
        ))
    }

    /// Checks that the packet holds nothing after its last field.
    pub(crate) fn finish(&self) -> Result<(), MqttError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(MqttError::TrailingBytes {
                packet_type: self.packet_type,
                trailing,
            }),
        }
    }
}

/// MQTT forbids U+0000 in every string ([MQTT-1.5.4-2]). The other control characters are only
/// discouraged and are accepted, as most brokers do.
pub(crate) fn check_no_null(
    packet_type: PacketType,
    field: &'static str,
    text: &str,
) -> Result<(), MqttError> {
    if text.as_bytes().contains(&0) {
        return Err(MqttError::NullCharacter { packet_type, field });
    }
    Ok(())
}

/// Checks a string or binary field against its u16 length prefix.
pub(crate) fn check_field_length(
    packet_type: PacketType,
    field: &'static str,
    length: usize,
) -> Result<(), MqttError> {
    if length > FIELD_BYTES_MAX {
        return Err(MqttError::FieldTooLong {
            packet_type,
            field,
            length,
        });
    }
    Ok(())
}

/// A string to encode: its length fits the prefix and it holds no U+0000.
pub(crate) fn check_string(
    packet_type: PacketType,
    field: &'static str,
    text: &str,
) -> Result<(), MqttError> {
    check_field_length(packet_type, field, text.len())?;
    check_no_null(packet_type, field, text)
}

/// Bytes a string or binary field takes: its u16 length prefix and its bytes.
pub(crate) fn field_len(bytes: &[u8]) -> usize {
    2 + bytes.len()
}

/// Appends a string or binary field.
///
/// # Panics
/// If the field is longer than 65535 bytes: the prefix cannot say so, and a truncated prefix
/// would make the peer read the rest of the packet as other fields.
pub(crate) fn put_field(out: &mut impl BufMut, bytes: &[u8]) {
    assert!(
        bytes.len() <= FIELD_BYTES_MAX,
        "a field of {} bytes does not fit its u16 length prefix",
        bytes.len()
    );
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(input: &'static [u8]) -> Reader {
        Reader::new(Bytes::from_static(input), PacketType::Publish)
    }

    #[test]
    fn integers_are_big_endian() {
        let mut reader = reader(&[1, 0x01, 0x02, 0, 0, 0x01, 0x00, 0x80, 0x01]);
        assert_eq!(reader.u8("a"), Ok(1));
        assert_eq!(reader.u16("b"), Ok(0x0102));
        assert_eq!(reader.u32("c"), Ok(0x0100));
        assert_eq!(reader.var_int("d"), Ok(128));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let mut reader = reader(&[0, 5, b'a']);
        assert!(matches!(
            reader.string("name"),
            Err(MqttError::Truncated {
                needed: 5,
                available: 1,
                ..
            })
        ));
        assert_eq!(reader.remaining(), 1);
    }

    #[test]
    fn strings_refuse_invalid_utf8_and_null() {
        assert!(matches!(
            reader(&[0, 2, b'a', 0xFF]).string("topic"),
            Err(MqttError::InvalidUtf8 { valid_up_to: 1, .. })
        ));
        assert!(matches!(
            reader(&[0, 2, b'a', 0]).string("topic"),
            Err(MqttError::NullCharacter { .. })
        ));
        // An encoded surrogate (U+D800) is not UTF-8.
        assert!(matches!(
            reader(&[0, 3, 0xED, 0xA0, 0x80]).string("topic"),
            Err(MqttError::InvalidUtf8 { valid_up_to: 0, .. })
        ));
        assert_eq!(
            reader(&[0, 3, 0xEF, 0xBB, 0xBF]).string("topic"),
            Ok("\u{FEFF}".to_owned())
        );
    }

    #[test]
    fn binary_fields_share_the_input() {
        let input = Bytes::from_static(&[0, 2, 7, 8, 9]);
        let mut reader = Reader::new(input.clone(), PacketType::Publish);
        let field = reader.binary("data").expect("complete");
        assert_eq!(&field[..], &[7, 8]);
        assert_eq!(field.as_ptr(), input[2..].as_ptr());
        assert_eq!(&reader.rest()[..], &[9]);
    }
}
