//! The decoder: bytes in, `Complete` / `NeedMore` / error out. No I/O and no buffering of its own:
//! the caller keeps the bytes and drops `used` of them after a complete frame.

use bytes::Bytes;

use crate::error::WireError;
use crate::frame::{
    frame_type, Envelope, ErrorCode, Frame, HistoryQuery, Limits, SubscribeStart,
    ACK_FLAG_DUPLICATE, ACK_FLAG_DURABLE, ERROR_FLAG_TEMPORARY, FRAME_HEADER_BYTES, LENGTH_BYTES,
    PUBLISH_FLAG_EPHEMERAL,
};
use crate::message::decode_messages;
use crate::text::Utf8Bytes;

/// What [`decode`] found at the start of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame; the caller drops `used` bytes from its buffer.
    Complete {
        /// The decoded frame.
        envelope: Envelope,
        /// Bytes the frame took, length prefix included.
        used: usize,
    },
    /// The input holds only part of a frame; call again once it holds at least `at_least` bytes in
    /// total (counted from the start of the frame, not in addition to what is there).
    NeedMore {
        /// Smallest input length that can make progress.
        at_least: usize,
    },
}

/// Decodes the frame at the start of `input`.
///
/// The length prefix is checked against `limits` as soon as its four bytes are there, so a peer
/// announcing an oversize frame is rejected before any of its body is buffered. Bytes after the
/// first frame are left alone. Byte fields (a publish's body, headers and client message id) are
/// copied, each into its own allocation; [`decode_bytes`] avoids those copies.
pub fn decode(input: &[u8], limits: &Limits) -> Result<Decoded, WireError> {
    decode_with(input, None, limits)
}

/// [`decode`] on a [`Bytes`]: byte fields are slices of `input`, sharing its allocation (and
/// keeping all of it alive while any of them lives). A read loop that owns a `BytesMut` can use
/// [`peek_frame_size`], then `buffer.split_to(size).freeze()` and this function to decode a frame
/// without copying its body.
pub fn decode_bytes(input: &Bytes, limits: &Limits) -> Result<Decoded, WireError> {
    decode_with(input, Some(input), limits)
}

/// The size of the frame at the start of `input`, length prefix included, once the prefix is
/// there (`None` before). The length is checked against `limits` as in [`decode`], so a read loop
/// that waits for `size` bytes never buffers more than the limit allows.
pub fn peek_frame_size(input: &[u8], limits: &Limits) -> Result<Option<usize>, WireError> {
    let Some(length_bytes) = input.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let length = u32::from_le_bytes(*length_bytes);
    check_length(length, limits)?;
    Ok(Some(LENGTH_BYTES + length as usize))
}

/// Checks a frame's length prefix against `limits` and the smallest frame.
fn check_length(length: u32, limits: &Limits) -> Result<(), WireError> {
    if length > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            length,
            frame_bytes_max: limits.frame_bytes_max,
        });
    }
    if (length as usize) < FRAME_HEADER_BYTES {
        return Err(WireError::FrameTooShort {
            length,
            minimum: FRAME_HEADER_BYTES as u32,
        });
    }
    Ok(())
}

/// The shared decoder. With `source` (the `Bytes` that `input` is), byte fields are slices of it;
/// without, copies.
fn decode_with(
    input: &[u8],
    source: Option<&Bytes>,
    limits: &Limits,
) -> Result<Decoded, WireError> {
    let Some(length_bytes) = input.first_chunk::<LENGTH_BYTES>() else {
        // The smallest frame is the length prefix and the header with an empty payload.
        return Ok(Decoded::NeedMore {
            at_least: LENGTH_BYTES + FRAME_HEADER_BYTES,
        });
    };
    let length = u32::from_le_bytes(*length_bytes);
    check_length(length, limits)?;
    let used = LENGTH_BYTES + length as usize;
    let Some(frame_bytes) = input.get(LENGTH_BYTES..used) else {
        return Ok(Decoded::NeedMore { at_least: used });
    };
    let envelope = decode_frame(frame_bytes, source)?;
    Ok(Decoded::Complete { envelope, used })
}

/// Decodes one whole frame given without its length prefix; `source`, if given, holds
/// `frame_bytes` (see [`decode_with`]).
fn decode_frame(frame_bytes: &[u8], source: Option<&Bytes>) -> Result<Envelope, WireError> {
    let frame_type = frame_bytes[0];
    let request_id = u32::from_le_bytes(
        frame_bytes[1..FRAME_HEADER_BYTES]
            .try_into()
            .expect("the caller checked the frame holds its header"),
    );
    let mut reader = Reader {
        input: &frame_bytes[FRAME_HEADER_BYTES..],
        position: 0,
        frame_type,
        source,
    };
    let frame = match frame_type {
        frame_type::HELLO => Frame::Hello {
            version: reader.u16("version")?,
            client_name: reader.str16("client_name")?,
            token: reader.str16("token")?,
        },
        frame_type::WELCOME => Frame::Welcome {
            version: reader.u16("version")?,
            server_name: reader.str16("server_name")?,
            frame_bytes_max: reader.u32("frame_bytes_max")?,
        },
        frame_type::PUBLISH => {
            let flags = reader.flags("flags", PUBLISH_FLAG_EPHEMERAL)?;
            Frame::Publish {
                ephemeral: flags & PUBLISH_FLAG_EPHEMERAL != 0,
                kind: reader.u8("kind")?,
                channel: reader.str16_text("channel")?,
                client_message_id: reader.bytes8("client_message_id")?,
                relation: reader.u64("relation")?,
                headers: reader.bytes16("headers")?,
                body: reader.bytes32("body")?,
            }
        }
        frame_type::PUBLISH_ACK => {
            let seq = reader.u64("seq")?;
            let offset = reader.u64("offset")?;
            let timestamp_ms = reader.u64("timestamp_ms")?;
            let flags = reader.flags("flags", ACK_FLAG_DURABLE | ACK_FLAG_DUPLICATE)?;
            Frame::PublishAck {
                seq,
                offset,
                timestamp_ms,
                durable: flags & ACK_FLAG_DURABLE != 0,
                duplicate: flags & ACK_FLAG_DUPLICATE != 0,
            }
        }
        frame_type::SUBSCRIBE => {
            let channel = reader.str16("channel")?;
            let start = reader.u8("start")?;
            let value = reader.u64("value")?;
            let start = match start {
                0 => SubscribeStart::Live,
                1 => SubscribeStart::FromSeq(value),
                2 => SubscribeStart::LastN(value),
                other => {
                    return Err(reader.invalid(
                        "start",
                        other.into(),
                        "0 (live), 1 (from seq) or 2 (last N)",
                    ))
                }
            };
            Frame::Subscribe { channel, start }
        }
        frame_type::SUBSCRIBED => Frame::Subscribed {
            head_seq: reader.u64("head_seq")?,
        },
        frame_type::UNSUBSCRIBE => Frame::Unsubscribe {
            channel: reader.str16("channel")?,
        },
        frame_type::UNSUBSCRIBED => Frame::Unsubscribed,
        frame_type::HISTORY => {
            let channel = reader.str16("channel")?;
            let direction = reader.u8("direction")?;
            let seq = reader.u64("seq")?;
            let limit = reader.u32("limit")?;
            let query = match direction {
                0 => HistoryQuery::From(seq),
                1 => HistoryQuery::Before(seq),
                2 => HistoryQuery::Last,
                other => {
                    return Err(reader.invalid(
                        "direction",
                        other.into(),
                        "0 (from seq), 1 (before seq) or 2 (last N)",
                    ))
                }
            };
            Frame::History {
                channel,
                query,
                limit,
            }
        }
        frame_type::HISTORY_PAGE => Frame::HistoryPage {
            channel: reader.str16("channel")?,
            head_seq: reader.u64("head_seq")?,
            messages: decode_messages(&mut reader)?,
        },
        frame_type::CURSOR_SET => Frame::CursorSet {
            consumer: reader.str16("consumer")?,
            channel: reader.str16("channel")?,
            seq: reader.u64("seq")?,
        },
        frame_type::CURSOR_ACK => Frame::CursorAck,
        frame_type::CURSOR_GET => Frame::CursorGet {
            consumer: reader.str16("consumer")?,
            channel: reader.str16("channel")?,
        },
        frame_type::CURSOR_VALUE => Frame::CursorValue {
            seq: reader.u64("seq")?,
        },
        frame_type::PING => Frame::Ping,
        frame_type::PONG => Frame::Pong,
        frame_type::DELIVER => {
            let channel = reader.str16("channel")?;
            let messages = decode_messages(&mut reader)?;
            if messages.is_empty() {
                return Err(reader.invalid("count", 0, "at least one message"));
            }
            Frame::Deliver { channel, messages }
        }
        frame_type::ERROR => {
            let code = reader.u16("code")?;
            let code = ErrorCode::from_u16(code).ok_or_else(|| {
                reader.invalid("code", code.into(), "a known error code (1 to 12)")
            })?;
            let flags = reader.flags("flags", ERROR_FLAG_TEMPORARY)?;
            Frame::Error {
                code,
                temporary: flags & ERROR_FLAG_TEMPORARY != 0,
                message: reader.str16("message")?,
            }
        }
        other => return Err(WireError::UnknownFrameType { frame_type: other }),
    };
    reader.finish()?;
    Ok(Envelope { request_id, frame })
}

/// A cursor over the payload of one whole frame. Every read names its field so that errors say
/// which one was short or wrong.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    /// INVARIANT: `position <= input.len()`.
    position: usize,
    frame_type: u8,
    /// The `Bytes` that holds `input`, when the caller has one: byte fields are then slices of
    /// it rather than copies.
    source: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    pub(crate) fn frame_type(&self) -> u8 {
        self.frame_type
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let available = self.remaining();
        if count > available {
            return Err(WireError::Truncated {
                frame_type: self.frame_type,
                field,
                needed: count,
                available,
            });
        }
        let bytes = &self.input[self.position..self.position + count];
        self.position += count;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let bytes = self.take(N, field)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A flags byte; bits outside `allowed` are reserved and must be zero.
    fn flags(&mut self, field: &'static str, allowed: u8) -> Result<u8, WireError> {
        let value = self.u8(field)?;
        if value & !allowed != 0 {
            return Err(WireError::ReservedBits {
                frame_type: self.frame_type,
                field,
                value,
                allowed,
            });
        }
        Ok(value)
    }

    fn str16_slice(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let length = self.u16(field)?;
        let bytes = self.take(length.into(), field)?;
        std::str::from_utf8(bytes).map_err(|error| WireError::InvalidUtf8 {
            frame_type: self.frame_type,
            field,
            valid_up_to: error.valid_up_to(),
        })
    }

    /// A `str16` text field, UTF-8 checked (once: the copy is made from the checked `str`).
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<String, WireError> {
        Ok(self.str16_slice(field)?.to_owned())
    }

    /// `bytes` (a part of `input`) as a slice of the source, or a copy without one.
    fn shared(&self, bytes: &[u8]) -> Bytes {
        match self.source {
            Some(source) => source.slice_ref(bytes),
            None => Bytes::copy_from_slice(bytes),
        }
    }

    /// A `str16` text field, UTF-8 checked (once), as a slice of the source (or a copy without
    /// one).
    pub(crate) fn str16_text(&mut self, field: &'static str) -> Result<Utf8Bytes, WireError> {
        let length = self.u16(field)?;
        let bytes = self.take(length.into(), field)?;
        Utf8Bytes::from_utf8(self.shared(bytes)).map_err(|error| WireError::InvalidUtf8 {
            frame_type: self.frame_type,
            field,
            valid_up_to: error.valid_up_to(),
        })
    }

    /// A `str16` text field, UTF-8 checked, kept as bytes.
    pub(crate) fn str16_bytes(&mut self, field: &'static str) -> Result<Bytes, WireError> {
        let text = self.str16_slice(field)?;
        Ok(self.shared(text.as_bytes()))
    }

    pub(crate) fn bytes8(&mut self, field: &'static str) -> Result<Bytes, WireError> {
        let length = self.u8(field)?;
        let bytes = self.take(length.into(), field)?;
        Ok(self.shared(bytes))
    }

    pub(crate) fn bytes16(&mut self, field: &'static str) -> Result<Bytes, WireError> {
        let length = self.u16(field)?;
        let bytes = self.take(length.into(), field)?;
        Ok(self.shared(bytes))
    }

    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<Bytes, WireError> {
        let length = self.u32(field)?;
        let bytes = self.take(length as usize, field)?;
        Ok(self.shared(bytes))
    }

    fn invalid(&self, field: &'static str, value: u64, expected: &'static str) -> WireError {
        WireError::InvalidValue {
            frame_type: self.frame_type,
            field,
            value,
            expected,
        }
    }

    /// Checks that the frame holds nothing after its last field.
    fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(WireError::TrailingBytes {
                frame_type: self.frame_type,
                trailing,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(input: &[u8]) -> Reader<'_> {
        Reader {
            input,
            position: 0,
            frame_type: frame_type::PING,
            source: None,
        }
    }

    #[test]
    fn reader_reads_little_endian_and_tracks_what_remains() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        let mut reader = reader(&bytes);
        assert_eq!(reader.u8("a"), Ok(1));
        assert_eq!(reader.u16("b"), Ok(2));
        assert_eq!(reader.u32("c"), Ok(3));
        assert_eq!(reader.u64("d"), Ok(4));
        assert_eq!(reader.remaining(), 0);
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let bytes = [5, 0, b'a'];
        let mut reader = reader(&bytes);
        assert!(matches!(
            reader.str16("name"),
            Err(WireError::Truncated {
                needed: 5,
                available: 1,
                ..
            })
        ));
        assert_eq!(reader.remaining(), 1);
    }

    #[test]
    fn flags_accept_only_the_allowed_bits() {
        assert_eq!(reader(&[0b11]).flags("flags", 0b11), Ok(0b11));
        assert!(matches!(
            reader(&[0b100]).flags("flags", 0b11),
            Err(WireError::ReservedBits { value: 0b100, .. })
        ));
    }
}
