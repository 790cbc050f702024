//! The Variable Byte Integer: the remaining length, property lengths and subscription identifiers.

use bytes::BufMut;

use crate::mqtt::error::VarIntError;

/// Reads, writes and sizes MQTT's Variable Byte Integer: 7 bits per byte, least significant group
/// first, bit 7 set on every byte but the last, at most four bytes.
#[derive(Debug, Clone, Copy)]
pub struct VarInt;

impl VarInt {
    /// Largest value four bytes can carry (268,435,455).
    pub const MAX: u32 = 0x0FFF_FFFF;

    /// Most bytes an encoding may take.
    pub const BYTES_MAX: usize = 4;

    /// Bytes `value` takes when encoded.
    ///
    /// # Panics
    /// If `value` exceeds [`VarInt::MAX`].
    pub fn encoded_len(value: u32) -> usize {
        assert!(
            value <= VarInt::MAX,
            "{value} does not fit a variable byte integer"
        );
        match value {
            0..=0x7F => 1,
            0x80..=0x3FFF => 2,
            0x4000..=0x1F_FFFF => 3,
            _ => 4,
        }
    }

    /// Appends `value` in the fewest bytes.
    ///
    /// # Panics
    /// If `value` exceeds [`VarInt::MAX`]: no encoding exists, and writing a truncated one would
    /// desynchronise the peer.
    pub fn write(value: u32, out: &mut impl BufMut) {
        assert!(
            value <= VarInt::MAX,
            "{value} does not fit a variable byte integer"
        );
        let mut rest = value;
        loop {
            let byte = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest == 0 {
                out.put_u8(byte);
                return;
            }
            out.put_u8(byte | 0x80);
        }
    }

    /// Reads a variable byte integer at the start of `input`.
    ///
    /// Answers `Ok(Some((value, bytes used)))`, `Ok(None)` when `input` ends before the last byte,
    /// or an error for a fifth byte or an encoding longer than needed (the specification requires
    /// the fewest bytes, and accepting more would let two encodings mean one packet).
    pub fn read(input: &[u8]) -> Result<Option<(u32, usize)>, VarIntError> {
        let mut value: u32 = 0;
        for (index, &byte) in input.iter().take(VarInt::BYTES_MAX).enumerate() {
            value |= u32::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                // A last byte of zero after the first adds nothing: a shorter encoding exists.
                if index > 0 && byte == 0 {
                    return Err(VarIntError::NotMinimal);
                }
                return Ok(Some((value, index + 1)));
            }
            // The fourth byte announcing a fifth is enough to know the integer is malformed; there
            // is no need to wait for the fifth.
            if index + 1 == VarInt::BYTES_MAX {
                return Err(VarIntError::TooLong);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: u32) -> Vec<u8> {
        let mut out = Vec::new();
        VarInt::write(value, &mut out);
        out
    }

    #[test]
    fn the_specification_boundaries_encode_as_listed() {
        // The table of section 1.5.5 (v5) / 2.2.3 (v3.1.1).
        let table: [(u32, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in table {
            assert_eq!(encode(value), bytes, "{value}");
            assert_eq!(VarInt::encoded_len(value), bytes.len(), "{value}");
            assert_eq!(VarInt::read(bytes), Ok(Some((value, bytes.len()))));
            assert_eq!(VarInt::read(&bytes[..bytes.len() - 1]), Ok(None));
        }
    }

    #[test]
    fn five_bytes_and_padded_encodings_are_refused() {
        assert_eq!(
            VarInt::read(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(VarIntError::TooLong)
        );
        // Known as soon as the fourth byte announces a fifth.
        assert_eq!(
            VarInt::read(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(VarIntError::TooLong)
        );
        assert_eq!(
            VarInt::read(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(VarIntError::TooLong)
        );
        assert_eq!(VarInt::read(&[0x80, 0x00]), Err(VarIntError::NotMinimal));
        assert_eq!(
            VarInt::read(&[0xFF, 0x80, 0x00]),
            Err(VarIntError::NotMinimal)
        );
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn writing_past_the_maximum_panics() {
        encode(VarInt::MAX + 1);
    }
}
