//! The frame types of the native protocol: what a frame means, independent of its bytes.

use bytes::Bytes;

use crate::message::Message;
use crate::text::Utf8Bytes;

/// Version of the native protocol spoken by this crate, sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Size of the length prefix that starts every frame.
pub const LENGTH_BYTES: usize = 4;

/// Bytes of every frame after the length prefix and before the payload: frame type (u8) and request
/// id (u32).
pub const FRAME_HEADER_BYTES: usize = 5;

/// Default for [`Limits::frame_bytes_max`]: a 1 MiB body plus 64 KiB for the channel name, headers
/// and the rest of a publish.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 1024 * 1024 + 64 * 1024;

/// Limits a decoder enforces before it buffers anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted value of the length prefix, that is the bytes of a frame after its length
    /// field.
    pub frame_bytes_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// The frame type byte of every frame.
pub mod frame_type {
    /// Client → server: open the session.
    pub const HELLO: u8 = 0x01;
    /// Client → server: append a message to a channel.
    pub const PUBLISH: u8 = 0x02;
    /// Client → server: start live delivery of a channel.
    pub const SUBSCRIBE: u8 = 0x03;
    /// Client → server: stop live delivery of a channel.
    pub const UNSUBSCRIBE: u8 = 0x04;
    /// Client → server: read a page of a channel's history.
    pub const HISTORY: u8 = 0x05;
    /// Client → server: store a consumer's read position.
    pub const CURSOR_SET: u8 = 0x06;
    /// Client → server: read a consumer's read position.
    pub const CURSOR_GET: u8 = 0x07;
    /// Client → server: liveness check.
    pub const PING: u8 = 0x08;
    /// Server → client: reply to `Hello`.
    pub const WELCOME: u8 = 0x81;
    /// Server → client: reply to `Publish`.
    pub const PUBLISH_ACK: u8 = 0x82;
    /// Server → client: reply to `Subscribe`.
    pub const SUBSCRIBED: u8 = 0x83;
    /// Server → client: reply to `Unsubscribe`.
    pub const UNSUBSCRIBED: u8 = 0x84;
    /// Server → client: reply to `History`.
    pub const HISTORY_PAGE: u8 = 0x85;
    /// Server → client: reply to `CursorSet`.
    pub const CURSOR_ACK: u8 = 0x86;
    /// Server → client: reply to `CursorGet`.
    pub const CURSOR_VALUE: u8 = 0x87;
    /// Server → client: reply to `Ping`.
    pub const PONG: u8 = 0x88;
    /// Server → client push: messages of one channel.
    pub const DELIVER: u8 = 0x90;
    /// Server → client: a request failed, or (request id 0) the connection is about to close.
    pub const ERROR: u8 = 0xE0;
}

/// The name of a frame type, for error messages and logs.
pub fn frame_type_name(frame_type: u8) -> &'static str {
    match frame_type {
        frame_type::HELLO => "Hello",
        frame_type::PUBLISH => "Publish",
        frame_type::SUBSCRIBE => "Subscribe",
        frame_type::UNSUBSCRIBE => "Unsubscribe",
        frame_type::HISTORY => "History",
        frame_type::CURSOR_SET => "CursorSet",
        frame_type::CURSOR_GET => "CursorGet",
        frame_type::PING => "Ping",
        frame_type::WELCOME => "Welcome",
        frame_type::PUBLISH_ACK => "PublishAck",
        frame_type::SUBSCRIBED => "Subscribed",
        frame_type::UNSUBSCRIBED => "Unsubscribed",
        frame_type::HISTORY_PAGE => "HistoryPage",
        frame_type::CURSOR_ACK => "CursorAck",
        frame_type::CURSOR_VALUE => "CursorValue",
        frame_type::PONG => "Pong",
        frame_type::DELIVER => "Deliver",
        frame_type::ERROR => "Error",
        _ => "unknown",
    }
}

/// Message kinds (the `kind` byte of a publish and of a stored message).
///
/// The `relation` field of a message carries the seq that an edit, delete, reaction or reply refers
/// to; it is 0 for the other kinds.
pub mod kind {
    /// An ordinary chat message.
    pub const MESSAGE: u8 = 0;
    /// An edit of the message `relation`.
    pub const EDIT: u8 = 1;
    /// A deletion of the message `relation`.
    pub const DELETE: u8 = 2;
    /// A reaction added to the message `relation`.
    pub const REACTION_ADD: u8 = 3;
    /// A reaction removed from the message `relation`.
    pub const REACTION_REMOVE: u8 = 4;
    /// A reply to the message `relation`.
    pub const REPLY: u8 = 5;
    /// A channel event (member joined, topic changed, ...).
    pub const CHANNEL_EVENT: u8 = 6;
    /// A read position shared with the channel.
    pub const CURSOR: u8 = 7;
    /// A typing indicator (usually published ephemeral).
    pub const TYPING: u8 = 8;
    /// A presence change (usually published ephemeral).
    pub const PRESENCE: u8 = 9;
}

/// Bit 0 of `Publish.flags`: the message skips the log and is only delivered live.
pub const PUBLISH_FLAG_EPHEMERAL: u8 = 0b0000_0001;
/// Bit 0 of `PublishAck.flags`: the message is durable under the configured policy.
pub const ACK_FLAG_DURABLE: u8 = 0b0000_0001;
/// Bit 1 of `PublishAck.flags`: an idempotent retry; the ack is the original's.
pub const ACK_FLAG_DUPLICATE: u8 = 0b0000_0010;
/// Bit 0 of `Error.flags`: the failure is temporary and retrying may succeed.
pub const ERROR_FLAG_TEMPORARY: u8 = 0b0000_0001;

/// Error codes carried by an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request could not be decoded.
    Malformed = 1,
    /// The principal is not allowed to do this.
    Denied = 2,
    /// The channel, consumer or message does not exist.
    NotFound = 3,
    /// A frame or field is larger than allowed.
    TooLarge = 4,
    /// The subscriber could not keep up and is being cut off.
    SlowConsumer = 5,
    /// The log could not write or read.
    StorageFailed = 6,
    /// The connection already subscribes to the channel.
    AlreadySubscribed = 7,
    /// The connection does not subscribe to the channel.
    NotSubscribed = 8,
    /// The server cannot serve this now (not the leader, shutting down, overloaded).
    Unavailable = 9,
    /// The request is understood but not supported (for example a protocol version).
    Unsupported = 10,
    /// A bug in the server.
    Internal = 11,
    /// A field holds a value the server does not accept.
    InvalidArgument = 12,
    /// The connection or user sends faster than the configured rate limit
    /// (temporary: slow down and retry).
    RateLimited = 13,
    /// The file system holding the log has less free space than the
    /// server keeps in reserve; publishes are refused until there is room
    /// again (temporary: retry later).
    StorageFull = 14,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Malformed,
        ErrorCode::Denied,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::SlowConsumer,
        ErrorCode::StorageFailed,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::Unavailable,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
        ErrorCode::InvalidArgument,
        ErrorCode::RateLimited,
        ErrorCode::StorageFull,
    ];

    /// The code for a wire value, or `None` for a value this version does not know.
    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_u16() == value)
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The name of the code, as used in logs and in the documentation.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "Malformed",
            ErrorCode::Denied => "Denied",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::TooLarge => "TooLarge",
            ErrorCode::SlowConsumer => "SlowConsumer",
            ErrorCode::StorageFailed => "StorageFailed",
            ErrorCode::AlreadySubscribed => "AlreadySubscribed",
            ErrorCode::NotSubscribed => "NotSubscribed",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Unsupported => "Unsupported",
            ErrorCode::Internal => "Internal",
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::RateLimited => "RateLimited",
            ErrorCode::StorageFull => "StorageFull",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} ({})", self.name(), self.as_u16())
    }
}

/// Where a subscription starts. On the wire: `start: u8` then `value: u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeStart {
    /// `start = 0`: only messages published from now on (`value` is sent as 0 and ignored).
    Live,
    /// `start = 1`: every message from this seq on, then live.
    FromSeq(u64),
    /// `start = 2`: the last N messages, then live.
    LastN(u64),
}

impl SubscribeStart {
    /// The `(start, value)` pair sent on the wire.
    pub fn to_wire(self) -> (u8, u64) {
        match self {
            SubscribeStart::Live => (0, 0),
            SubscribeStart::FromSeq(seq) => (1, seq),
            SubscribeStart::LastN(count) => (2, count),
        }
    }
}

/// Which page of history a `History` request asks for. On the wire: `direction: u8` then `seq: u64`;
/// the page size is the frame's separate `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// `direction = 0`: messages from this seq on, ascending.
    From(u64),
    /// `direction = 1`: messages before this seq.
    Before(u64),
    /// `direction = 2`: the last `limit` messages (`seq` is sent as 0 and ignored).
    Last,
}

impl HistoryQuery {
    /// The `(direction, seq)` pair sent on the wire.
    pub fn to_wire(self) -> (u8, u64) {
        match self {
            HistoryQuery::From(seq) => (0, seq),
            HistoryQuery::Before(seq) => (1, seq),
            HistoryQuery::Last => (2, 0),
        }
    }
}

/// One frame of the native protocol, without its request id.
///
/// Text fields are `String` (checked UTF-8 on decode), but for a `Publish`'s channel, which is
/// [`Utf8Bytes`] so that a server decoding publishes from shared bytes allocates nothing per
/// frame; opaque fields are [`Bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// 0x01, client → server: opens the session. Must be the first frame.
    Hello {
        /// Protocol version the client speaks ([`PROTOCOL_VERSION`]).
        version: u16,
        /// Free-form client name, for logs.
        client_name: String,
        /// Credential (a session token); empty when authentication is off.
        token: String,
    },
    /// 0x81, server → client: reply to `Hello`.
    Welcome {
        /// Protocol version the server speaks.
        version: u16,
        /// The server's name, for logs.
        server_name: String,
        /// Largest frame the server accepts (its `Limits::frame_bytes_max`).
        frame_bytes_max: u32,
    },
    /// 0x02, client → server: append a message to a channel.
    Publish {
        /// Flags bit 0: the message skips the log and is only delivered live.
        ephemeral: bool,
        /// The message kind (see [`kind`]).
        kind: u8,
        /// The channel. Decoded from shared bytes ([`crate::decode_bytes`]), a slice of them.
        channel: Utf8Bytes,
        /// Client-chosen id used to drop retried duplicates; empty for none.
        client_message_id: Bytes,
        /// The seq this message refers to (edit, delete, reaction, reply), or 0.
        relation: u64,
        /// Small opaque headers.
        headers: Bytes,
        /// The message body.
        body: Bytes,
    },
    /// 0x82, server → client: reply to `Publish`.
    PublishAck {
        /// The channel seq assigned (0 for an ephemeral publish).
        seq: u64,
        /// The log offset assigned.
        offset: u64,
        /// The server's timestamp of the message, in milliseconds since the Unix epoch.
        timestamp_ms: u64,
        /// Flags bit 0: durable under the configured policy.
        durable: bool,
        /// Flags bit 1: an idempotent retry; this is the original's ack.
        duplicate: bool,
    },
    /// 0x03, client → server: start live delivery of a channel.
    Subscribe {
        /// The channel.
        channel: String,
        /// Where delivery starts.
        start: SubscribeStart,
    },
    /// 0x83, server → client: reply to `Subscribe`.
    Subscribed {
        /// The channel's last assigned seq when the subscription started.
        head_seq: u64,
    },
    /// 0x04, client → server: stop live delivery of a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// 0x84, server → client: reply to `Unsubscribe`.
    Unsubscribed,
    /// 0x05, client → server: read a page of a channel's history.
    History {
        /// The channel.
        channel: String,
        /// Which page.
        query: HistoryQuery,
        /// Largest number of messages in the page.
        limit: u32,
    },
    /// 0x85, server → client: reply to `History`.
    HistoryPage {
        /// The channel.
        channel: String,
        /// The channel's last assigned seq.
        head_seq: u64,
        /// The page, in ascending seq order.
        messages: Vec<Message>,
    },
    /// 0x06, client → server: store a consumer's read position in a channel.
    CursorSet {
        /// The consumer (a user or device name).
        consumer: String,
        /// The channel.
        channel: String,
        /// The last seq read.
        seq: u64,
    },
    /// 0x86, server → client: reply to `CursorSet`.
    CursorAck,
    /// 0x07, client → server: read a consumer's read position in a channel.
    CursorGet {
        /// The consumer.
        consumer: String,
        /// The channel.
        channel: String,
    },
    /// 0x87, server → client: reply to `CursorGet`.
    CursorValue {
        /// The last seq read, or 0 for none.
        seq: u64,
    },
    /// 0x08, client → server: liveness check.
    Ping,
    /// 0x88, server → client: reply to `Ping`.
    Pong,
    /// 0x90, server → client push (request id 0): one or more messages of one channel.
    Deliver {
        /// The channel.
        channel: String,
        /// The messages, in seq order (ephemeral messages have seq 0).
        messages: Vec<Message>,
    },
    /// 0xE0, server → client: the request `request_id` failed, or (request id 0) a connection-level
    /// error sent just before the server closes the connection.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Flags bit 0: retrying may succeed.
        temporary: bool,
        /// A human-readable explanation.
        message: String,
    },
}

impl Frame {
    /// The frame type byte of this frame.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Hello { .. } => frame_type::HELLO,
            Frame::Welcome { .. } => frame_type::WELCOME,
            Frame::Publish { .. } => frame_type::PUBLISH,
            Frame::PublishAck { .. } => frame_type::PUBLISH_ACK,
            Frame::Subscribe { .. } => frame_type::SUBSCRIBE,
            Frame::Subscribed { .. } => frame_type::SUBSCRIBED,
            Frame::Unsubscribe { .. } => frame_type::UNSUBSCRIBE,
            Frame::Unsubscribed => frame_type::UNSUBSCRIBED,
            Frame::History { .. } => frame_type::HISTORY,
            Frame::HistoryPage { .. } => frame_type::HISTORY_PAGE,
            Frame::CursorSet { .. } => frame_type::CURSOR_SET,
            Frame::CursorAck => frame_type::CURSOR_ACK,
            Frame::CursorGet { .. } => frame_type::CURSOR_GET,
            Frame::CursorValue { .. } => frame_type::CURSOR_VALUE,
            Frame::Ping => frame_type::PING,
            Frame::Pong => frame_type::PONG,
            Frame::Deliver { .. } => frame_type::DELIVER,
            Frame::Error { .. } => frame_type::ERROR,
        }
    }

    /// The name of this frame's type, for logs.
    pub fn name(&self) -> &'static str {
        frame_type_name(self.frame_type())
    }
}

/// A frame with its request id: the unit the decoder returns and the encoder writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Chosen by the client for a request and echoed in the reply; 0 for server pushes and for
    /// connection-level errors.
    pub request_id: u32,
    /// The frame.
    pub frame: Frame,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_frame_type_has_a_name() {
        let known = (0..=u8::MAX).filter(|byte| frame_type_name(*byte) != "unknown");
        assert_eq!(known.count(), 18);
        assert_eq!(Frame::Ping.name(), "Ping");
    }

    #[test]
    fn starts_and_queries_map_to_their_wire_pairs() {
        assert_eq!(SubscribeStart::Live.to_wire(), (0, 0));
        assert_eq!(SubscribeStart::FromSeq(5).to_wire(), (1, 5));
        assert_eq!(SubscribeStart::LastN(50).to_wire(), (2, 50));
        assert_eq!(HistoryQuery::From(5).to_wire(), (0, 5));
        assert_eq!(HistoryQuery::Before(5).to_wire(), (1, 5));
        assert_eq!(HistoryQuery::Last.to_wire(), (2, 0));
    }
}
