//! The encoder: a frame is written into the caller's buffer, which is grown once to the frame's
//! exact size. Encoding cannot fail on a valid frame; [`Envelope::validate`] says whether a frame is
//! valid (every field fits its length prefix) for callers that build frames from untrusted input.

use bytes::{BufMut, BytesMut};

use crate::error::WireError;
use crate::frame::{
    frame_type, Envelope, Frame, ACK_FLAG_DUPLICATE, ACK_FLAG_DURABLE, ERROR_FLAG_TEMPORARY,
    FRAME_HEADER_BYTES, LENGTH_BYTES, PUBLISH_FLAG_EPHEMERAL,
};
use crate::message::{encode_messages, messages_encoded_len, Message};

/// Largest value the length prefix can carry.
const LENGTH_MAX: usize = u32::MAX as usize;

impl Envelope {
    /// Size of this frame on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LENGTH_BYTES + FRAME_HEADER_BYTES + payload_len(&self.frame)
    }

    /// Appends this frame to `out`.
    ///
    /// # Panics
    /// If the frame is not valid (see [`Envelope::validate`]): a field longer than its length
    /// prefix allows is a bug in the caller, which must check input it does not control.
    pub fn encode(&self, out: &mut BytesMut) {
        encode_framed(
            self.frame.frame_type(),
            self.request_id,
            self.encoded_len(),
            self.frame.name(),
            out,
            |out| encode_payload(&self.frame, out),
        );
    }

    /// Checks that every field fits its length prefix and the whole frame fits the u32 length
    /// prefix, so that [`Envelope::encode`] will not panic. It does not check any [`crate::Limits`]:
    /// compare `encoded_len() - 4` with the peer's `frame_bytes_max` for that.
    pub fn validate(&self) -> Result<(), WireError> {
        let frame_type = self.frame.frame_type();
        let str16 = |field, value: &str| check_length(frame_type, field, value.len(), 0xFFFF);
        match &self.frame {
            Frame::Hello {
                client_name, token, ..
            } => {
                str16("client_name", client_name)?;
                str16("token", token)?;
            }
            Frame::Welcome { server_name, .. } => str16("server_name", server_name)?,
            Frame::Publish { .. } => publish_fields(&self.frame).validate_fields()?,
            Frame::Subscribe { channel, .. }
            | Frame::Unsubscribe { channel }
            | Frame::History { channel, .. } => str16("channel", channel)?,
            Frame::HistoryPage {
                channel, messages, ..
            }
            | Frame::Deliver { channel, messages } => {
                str16("channel", channel)?;
                check_length(frame_type, "count", messages.len(), LENGTH_MAX)?;
                if matches!(self.frame, Frame::Deliver { .. }) && messages.is_empty() {
                    return Err(WireError::InvalidValue {
                        frame_type,
                        field: "count",
                        value: 0,
                        expected: "at least one message",
                    });
                }
                for message in messages {
                    message.validate(frame_type)?;
                }
            }
            Frame::CursorSet {
                consumer, channel, ..
            }
            | Frame::CursorGet { consumer, channel } => {
                str16("consumer", consumer)?;
                str16("channel", channel)?;
            }
            Frame::Error { message, .. } => str16("message", message)?,
            Frame::PublishAck { .. }
            | Frame::Subscribed { .. }
            | Frame::Unsubscribed
            | Frame::CursorAck
            | Frame::CursorValue { .. }
            | Frame::Ping
            | Frame::Pong => {}
        }
        check_length(
            frame_type,
            "length",
            self.encoded_len() - LENGTH_BYTES,
            LENGTH_MAX,
        )
    }
}

/// Writes one frame into `out`: the length prefix, type and request id, then the payload that
/// `payload` appends, and checks that it is `encoded_len` bytes long in all.
fn encode_framed(
    frame_type: u8,
    request_id: u32,
    encoded_len: usize,
    name: &str,
    out: &mut BytesMut,
    payload: impl FnOnce(&mut BytesMut),
) {
    let length = encoded_len - LENGTH_BYTES;
    assert!(
        length <= LENGTH_MAX,
        "{name} frame of {length} bytes does not fit the u32 length prefix"
    );
    out.reserve(encoded_len);
    let start = out.len();
    out.put_u32_le(length as u32);
    out.put_u8(frame_type);
    out.put_u32_le(request_id);
    payload(out);
    assert_eq!(
        out.len() - start,
        encoded_len,
        "encoded_len disagrees with encode for a {name} frame"
    );
}

/// The fields of a `Publish` frame, borrowed. [`PublishFields::encode`] writes byte for byte what
/// encoding `Envelope { request_id, frame: Frame::Publish { .. } }` with the same fields gives,
/// without building the frame (which owns its channel name): a client that sends many publishes
/// encodes each from its own buffers and allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishFields<'a> {
    /// See `Frame::Publish`.
    pub ephemeral: bool,
    /// See `Frame::Publish`.
    pub kind: u8,
    /// See `Frame::Publish`.
    pub channel: &'a str,
    /// See `Frame::Publish`.
    pub client_message_id: &'a [u8],
    /// See `Frame::Publish`.
    pub relation: u64,
    /// See `Frame::Publish`.
    pub headers: &'a [u8],
    /// See `Frame::Publish`.
    pub body: &'a [u8],
}

impl PublishFields<'_> {
    /// Size of the frame on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LENGTH_BYTES + FRAME_HEADER_BYTES + self.payload_len()
    }

    /// As [`Envelope::validate`] for the frame.
    pub fn validate(&self) -> Result<(), WireError> {
        self.validate_fields()?;
        check_length(
            frame_type::PUBLISH,
            "length",
            self.encoded_len() - LENGTH_BYTES,
            LENGTH_MAX,
        )
    }

    /// Appends the frame, with `request_id`, to `out`.
    ///
    /// # Panics
    /// If the fields are not valid (see [`PublishFields::validate`]).
    pub fn encode(&self, request_id: u32, out: &mut BytesMut) {
        encode_framed(
            frame_type::PUBLISH,
            request_id,
            self.encoded_len(),
            "Publish",
            out,
            |out| self.encode_payload(out),
        );
    }

    fn validate_fields(&self) -> Result<(), WireError> {
        let frame_type = frame_type::PUBLISH;
        check_length(frame_type, "channel", self.channel.len(), 0xFFFF)?;
        check_length(
            frame_type,
            "client_message_id",
            self.client_message_id.len(),
            0xFF,
        )?;
        check_length(frame_type, "headers", self.headers.len(), 0xFFFF)?;
        check_length(frame_type, "body", self.body.len(), LENGTH_MAX)
    }

    fn payload_len(&self) -> usize {
        1 + 1
            + 2
            + self.channel.len()
            + 1
            + self.client_message_id.len()
            + 8
            + 2
            + self.headers.len()
            + 4
            + self.body.len()
    }

    fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u8(if self.ephemeral {
            PUBLISH_FLAG_EPHEMERAL
        } else {
            0
        });
        out.put_u8(self.kind);
        put_str16(out, self.channel.as_bytes(), "channel");
        put_bytes8(out, self.client_message_id, "client_message_id");
        out.put_u64_le(self.relation);
        put_bytes16(out, self.headers, "headers");
        put_bytes32(out, self.body, "body");
    }
}

/// The fields of `frame`, which is a `Frame::Publish`.
fn publish_fields(frame: &Frame) -> PublishFields<'_> {
    frame.as_publish().expect("called for Publish frames only")
}

impl Frame {
    /// A `Publish` frame's fields, borrowed; `None` for every other frame.
    pub fn as_publish(&self) -> Option<PublishFields<'_>> {
        let Frame::Publish {
            ephemeral,
            kind,
            channel,
            client_message_id,
            relation,
            headers,
            body,
        } = self
        else {
            return None;
        };
        Some(PublishFields {
            ephemeral: *ephemeral,
            kind: *kind,
            channel,
            client_message_id,
            relation: *relation,
            headers,
            body,
        })
    }
}

/// Size of `Envelope { request_id: 0, frame: Frame::Deliver { channel, messages } }` on the wire.
pub fn deliver_encoded_len(channel: &str, messages: &[Message]) -> usize {
    LENGTH_BYTES + FRAME_HEADER_BYTES + 2 + channel.len() + messages_encoded_len(messages)
}

/// Appends a `Deliver` push (request id 0) of `messages` of `channel` to `out`, byte for byte what
/// encoding `Envelope { request_id: 0, frame: Frame::Deliver { .. } }` gives, without building the
/// frame. The broker calls this once per core for a fan-out and shares the bytes.
///
/// # Panics
/// If `messages` is empty, or the channel or a message field is longer than its length prefix
/// allows (all of which the broker checked when the messages were published).
pub fn encode_deliver(channel: &str, messages: &[Message], out: &mut BytesMut) {
    assert!(
        !messages.is_empty(),
        "a Deliver frame carries at least one message"
    );
    encode_framed(
        frame_type::DELIVER,
        0,
        deliver_encoded_len(channel, messages),
        "Deliver",
        out,
        |out| {
            put_str16(out, channel.as_bytes(), "channel");
            encode_messages(messages, out);
        },
    );
}

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Hello {
            client_name, token, ..
        } => 2 + 2 + client_name.len() + 2 + token.len(),
        Frame::Welcome { server_name, .. } => 2 + 2 + server_name.len() + 4,
        Frame::Publish { .. } => publish_fields(frame).payload_len(),
        Frame::PublishAck { .. } => 8 + 8 + 8 + 1,
        Frame::Subscribe { channel, .. } => 2 + channel.len() + 1 + 8,
        Frame::Subscribed { .. } => 8,
        Frame::Unsubscribe { channel } => 2 + channel.len(),
        Frame::History { channel, .. } => 2 + channel.len() + 1 + 8 + 4,
        Frame::HistoryPage {
            channel, messages, ..
        } => 2 + channel.len() + 8 + messages_encoded_len(messages),
        Frame::CursorSet {
            consumer, channel, ..
        } => 2 + consumer.len() + 2 + channel.len() + 8,
        Frame::CursorGet { consumer, channel } => 2 + consumer.len() + 2 + channel.len(),
        Frame::CursorValue { .. } => 8,
        Frame::Deliver { channel, messages } => 2 + channel.len() + messages_encoded_len(messages),
        Frame::Error { message, .. } => 2 + 1 + 2 + message.len(),
        Frame::Unsubscribed | Frame::CursorAck | Frame::Ping | Frame::Pong => 0,
    }
}

fn encode_payload(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Hello {
            version,
            client_name,
            token,
        } => {
            out.put_u16_le(*version);
            put_str16(out, client_name.as_bytes(), "client_name");
            put_str16(out, token.as_bytes(), "token");
        }
        Frame::Welcome {
            version,
            server_name,
            frame_bytes_max,
        } => {
            out.put_u16_le(*version);
            put_str16(out, server_name.as_bytes(), "server_name");
            out.put_u32_le(*frame_bytes_max);
        }
        Frame::Publish { .. } => publish_fields(frame).encode_payload(out),
        Frame::PublishAck {
            seq,
            offset,
            timestamp_ms,
            durable,
            duplicate,
        } => {
            out.put_u64_le(*seq);
            out.put_u64_le(*offset);
            out.put_u64_le(*timestamp_ms);
            let mut flags = 0;
            if *durable {
                flags |= ACK_FLAG_DURABLE;
            }
            if *duplicate {
                flags |= ACK_FLAG_DUPLICATE;
            }
            out.put_u8(flags);
        }
        Frame::Subscribe { channel, start } => {
            put_str16(out, channel.as_bytes(), "channel");
            let (start, value) = start.to_wire();
            out.put_u8(start);
            out.put_u64_le(value);
        }
        Frame::Subscribed { head_seq } => out.put_u64_le(*head_seq),
        Frame::Unsubscribe { channel } => put_str16(out, channel.as_bytes(), "channel"),
        Frame::History {
            channel,
            query,
            limit,
        } => {
            put_str16(out, channel.as_bytes(), "channel");
            let (direction, seq) = query.to_wire();
            out.put_u8(direction);
            out.put_u64_le(seq);
            out.put_u32_le(*limit);
        }
        Frame::HistoryPage {
            channel,
            head_seq,
            messages,
        } => {
            put_str16(out, channel.as_bytes(), "channel");
            out.put_u64_le(*head_seq);
            encode_messages(messages, out);
        }
        Frame::CursorSet {
            consumer,
            channel,
            seq,
        } => {
            put_str16(out, consumer.as_bytes(), "consumer");
            put_str16(out, channel.as_bytes(), "channel");
            out.put_u64_le(*seq);
        }
        Frame::CursorGet { consumer, channel } => {
            put_str16(out, consumer.as_bytes(), "consumer");
            put_str16(out, channel.as_bytes(), "channel");
        }
        Frame::CursorValue { seq } => out.put_u64_le(*seq),
        Frame::Deliver { channel, messages } => {
            put_str16(out, channel.as_bytes(), "channel");
            encode_messages(messages, out);
        }
        Frame::Error {
            code,
            temporary,
            message,
        } => {
            out.put_u16_le(code.as_u16());
            out.put_u8(if *temporary { ERROR_FLAG_TEMPORARY } else { 0 });
            put_str16(out, message.as_bytes(), "message");
        }
        Frame::Unsubscribed | Frame::CursorAck | Frame::Ping | Frame::Pong => {}
    }
}

/// `Err(FieldTooLong)` when `length > max`.
pub(crate) fn check_length(
    frame_type: u8,
    field: &'static str,
    length: usize,
    max: usize,
) -> Result<(), WireError> {
    if length > max {
        return Err(WireError::FieldTooLong {
            frame_type,
            field,
            length,
            max,
        });
    }
    Ok(())
}

pub(crate) fn put_str16(out: &mut impl BufMut, value: &[u8], field: &str) {
    put_bytes16(out, value, field);
}

pub(crate) fn put_bytes8(out: &mut impl BufMut, value: &[u8], field: &str) {
    let length = u8::try_from(value.len())
        .unwrap_or_else(|_| panic!("field `{field}` of {} bytes exceeds bytes8", value.len()));
    out.put_u8(length);
    out.put_slice(value);
}

pub(crate) fn put_bytes16(out: &mut impl BufMut, value: &[u8], field: &str) {
    let length = u16::try_from(value.len()).unwrap_or_else(|_| {
        panic!(
            "field `{field}` of {} bytes exceeds 16-bit length",
            value.len()
        )
    });
    out.put_u16_le(length);
    out.put_slice(value);
}

pub(crate) fn put_bytes32(out: &mut impl BufMut, value: &[u8], field: &str) {
    let length = u32::try_from(value.len())
        .unwrap_or_else(|_| panic!("field `{field}` of {} bytes exceeds bytes32", value.len()));
    out.put_u32_le(length);
    out.put_slice(value);
}
