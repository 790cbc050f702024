//! The one error type of the wire layer.

use thiserror::Error;

use crate::frame::frame_type_name;

/// Everything that can be wrong with bytes on the wire, or with a frame that is about to be put on it.
///
/// Running out of input is not an error: [`crate::decode`] answers [`crate::Decoded::NeedMore`].
/// Every variant carries the frame type and the field concerned so that a log line alone says what
/// the peer sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// A message's header block does not follow the header format
    /// (`crate::headers`).
    #[error("malformed message headers: {reason}")]
    MalformedHeaders {
        /// What is wrong.
        reason: String,
    },

    /// The length prefix announces a frame larger than the configured limit. Reported as soon as the
    /// four length bytes are there, before any of the body is buffered.
    #[error("frame length {length} bytes exceeds frame_bytes_max {frame_bytes_max} bytes")]
    FrameTooLarge {
        /// The length announced by the prefix (bytes after the length field).
        length: u32,
        /// The limit in force.
        frame_bytes_max: u32,
    },

    /// The length prefix is too small to hold even the frame type and the request id.
    #[error("frame length {length} bytes is shorter than the {minimum}-byte frame header (frame type and request id)")]
    FrameTooShort {
        /// The length announced by the prefix.
        length: u32,
        /// The smallest valid length.
        minimum: u32,
    },

    /// The frame type byte names no known frame.
    #[error("unknown frame type 0x{frame_type:02x}")]
    UnknownFrameType {
        /// The byte found.
        frame_type: u8,
    },

    /// A field runs past the end of its frame.
    #[error("{} frame (0x{frame_type:02x}): field `{field}` needs {needed} bytes but only {available} remain in the frame", frame_type_name(*.frame_type))]
    Truncated {
        /// The frame being decoded.
        frame_type: u8,
        /// The field that did not fit.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the frame.
        available: usize,
    },

    /// Bytes remain in the frame after its last field.
    #[error("{} frame (0x{frame_type:02x}): {trailing} trailing bytes after the last field", frame_type_name(*.frame_type))]
    TrailingBytes {
        /// The frame being decoded.
        frame_type: u8,
        /// How many bytes were left over.
        trailing: usize,
    },

    /// A text field is not valid UTF-8.
    #[error("{} frame (0x{frame_type:02x}): field `{field}` is not valid UTF-8 (valid up to byte {valid_up_to})", frame_type_name(*.frame_type))]
    InvalidUtf8 {
        /// The frame being decoded.
        frame_type: u8,
        /// The text field.
        field: &'static str,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },

    /// A field holds a value outside its set (an unknown start mode, direction or error code, or an
    /// empty delivery).
    #[error("{} frame (0x{frame_type:02x}): field `{field}` has value {value}, expected {expected}", frame_type_name(*.frame_type))]
    InvalidValue {
        /// The frame being decoded.
        frame_type: u8,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What the field may hold.
        expected: &'static str,
    },

    /// A flags byte has bits set that this version does not define; they must be zero.
    #[error("{} frame (0x{frame_type:02x}): field `{field}` = 0b{value:08b} sets reserved bits (allowed mask 0b{allowed:08b})", frame_type_name(*.frame_type))]
    ReservedBits {
        /// The frame being decoded.
        frame_type: u8,
        /// The flags field.
        field: &'static str,
        /// The byte found.
        value: u8,
        /// The bits this version defines.
        allowed: u8,
    },

    /// A message count cannot be right: even messages with every field empty would not fit in the
    /// rest of the frame. Checked before anything is allocated for them.
    #[error("{} frame (0x{frame_type:02x}): message count {count} cannot fit in the {available} bytes left (each message takes at least {message_bytes_min} bytes)", frame_type_name(*.frame_type))]
    TooManyMessages {
        /// The frame being decoded.
        frame_type: u8,
        /// The count announced.
        count: u32,
        /// Bytes left in the frame after the count.
        available: usize,
        /// The size of the smallest possible message.
        message_bytes_min: usize,
    },

    /// A field is too long for its length prefix (found when validating a frame before encoding it).
    #[error("{} frame (0x{frame_type:02x}): field `{field}` is {length} bytes, more than its length prefix allows ({max} bytes)", frame_type_name(*.frame_type))]
    FieldTooLong {
        /// The frame being validated.
        frame_type: u8,
        /// The field.
        field: &'static str,
        /// Its length.
        length: usize,
        /// The largest length the prefix can express.
        max: usize,
    },
}
