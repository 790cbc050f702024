//! A stored message as it travels in `HistoryPage` and `Deliver` frames, and the `messages` list
//! codec both frames share.
//!
//! ```text
//! messages = count: u32, then count times:
//!   seq u64 | offset u64 | timestamp_ms u64 | kind u8 | sender str16 | client_message_id bytes8
//!   | relation u64 | headers bytes16 | body bytes32
//! ```

use bytes::{BufMut, Bytes};

use crate::decode::Reader;
use crate::encode::{check_length, put_bytes16, put_bytes32, put_bytes8, put_str16};
use crate::error::WireError;

/// A message of a channel's log (or an ephemeral one, with seq 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The channel seq (1, 2, 3, ... without gaps), or 0 for an ephemeral message.
    pub seq: u64,
    /// The log offset.
    pub offset: u64,
    /// Server timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The message kind (see [`crate::kind`]).
    pub kind: u8,
    /// The publisher's name, UTF-8 (checked on decode; kept as bytes so the broker can share it).
    pub sender: Bytes,
    /// The publisher's id for the message, used to drop retried duplicates; may be empty.
    pub client_message_id: Bytes,
    /// The seq an edit, delete, reaction or reply refers to, or 0.
    pub relation: u64,
    /// Small opaque headers.
    pub headers: Bytes,
    /// The body.
    pub body: Bytes,
}

/// Size of a message whose variable fields are all empty.
pub const MESSAGE_BYTES_MIN: usize = 8 + 8 + 8 + 1 + 2 + 1 + 8 + 2 + 4;

impl Message {
    /// Size of this message on the wire.
    pub fn encoded_len(&self) -> usize {
        MESSAGE_BYTES_MIN
            + self.sender.len()
            + self.client_message_id.len()
            + self.headers.len()
            + self.body.len()
    }

    /// Checks that every field fits its length prefix.
    pub(crate) fn validate(&self, frame_type: u8) -> Result<(), WireError> {
        check_length(frame_type, "sender", self.sender.len(), u16::MAX as usize)?;
        check_length(
            frame_type,
            "client_message_id",
            self.client_message_id.len(),
            u8::MAX as usize,
        )?;
        check_length(frame_type, "headers", self.headers.len(), u16::MAX as usize)?;
        check_length(frame_type, "body", self.body.len(), u32::MAX as usize)
    }

    /// Writes this message.
    ///
    /// # Panics
    /// If a field is longer than its length prefix allows.
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64_le(self.seq);
        out.put_u64_le(self.offset);
        out.put_u64_le(self.timestamp_ms);
        out.put_u8(self.kind);
        put_str16(out, &self.sender, "sender");
        put_bytes8(out, &self.client_message_id, "client_message_id");
        out.put_u64_le(self.relation);
        put_bytes16(out, &self.headers, "headers");
        put_bytes32(out, &self.body, "body");
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Message, WireError> {
        Ok(Message {
            seq: reader.u64("seq")?,
            offset: reader.u64("offset")?,
            timestamp_ms: reader.u64("timestamp_ms")?,
            kind: reader.u8("kind")?,
            sender: reader.str16_bytes("sender")?,
            client_message_id: reader.bytes8("client_message_id")?,
            relation: reader.u64("relation")?,
            headers: reader.bytes16("headers")?,
            body: reader.bytes32("body")?,
        })
    }
}

/// Size of a `messages` list on the wire.
pub(crate) fn messages_encoded_len(messages: &[Message]) -> usize {
    4 + messages.iter().map(Message::encoded_len).sum::<usize>()
}

/// Writes a `messages` list.
///
/// # Panics
/// If there are more than `u32::MAX` messages or a field is longer than its length prefix allows.
pub(crate) fn encode_messages(messages: &[Message], out: &mut impl BufMut) {
    let count = u32::try_from(messages.len()).expect("message count must fit in u32");
    out.put_u32_le(count);
    for message in messages {
        message.encode(out);
    }
}

/// Reads a `messages` list. The count is checked against the bytes left before anything is
/// allocated, so a forged count cannot make the decoder reserve memory the frame does not back.
pub(crate) fn decode_messages(reader: &mut Reader<'_>) -> Result<Vec<Message>, WireError> {
    let count = reader.u32("count")?;
    let available = reader.remaining();
    if count as usize > available / MESSAGE_BYTES_MIN {
        return Err(WireError::TooManyMessages {
            frame_type: reader.frame_type(),
            count,
            available,
            message_bytes_min: MESSAGE_BYTES_MIN,
        });
    }
    let mut messages = Vec::with_capacity(count as usize);
    for _ in 0..count {
        messages.push(Message::decode(reader)?);
    }
    Ok(messages)
}
