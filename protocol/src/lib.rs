//! Starling's wire formats, as pure sans-IO codecs: no sockets, no clock, no runtime.
//!
//! This crate holds the native binary protocol spoken on Starling's TCP listener and by its Rust
//! client. [`decode`] takes the bytes received so far and answers a complete frame with the number
//! of bytes it used, "need more", or a [`WireError`]; running out of input is not an error.
//! [`Envelope::encode`] and [`encode_deliver`] append to the caller's buffer and know their size in
//! advance ([`Envelope::encoded_len`], [`deliver_encoded_len`]). Limits ([`Limits`]) are checked
//! from the length prefix, before a frame's body is buffered.
//!
//! The [`mqtt`] module holds the MQTT 3.1.1 and 5.0 codec spoken by the MQTT adapter, built on the
//! same contract: [`mqtt::decode`] answers a complete packet, "need more" or an [`mqtt::MqttError`]
//! that names the reason code to send back.
//!
//! # Frame layout
//!
//! Every integer is fixed-width little-endian.
//!
//! ```text
//!  0       1       2       3       4       5       6       7       8       9
//! +-------+-------+-------+-------+-------+-------+-------+-------+-------+-----------
//! |        length: u32            | type  |       request_id: u32         | payload...
//! |  (bytes after this field,     |  u8   |  (chosen by the client, echoed |
//! |   so 5 + payload length)      |       |   in the reply; 0 for pushes)  |
//! +-------+-------+-------+-------+-------+-------+-------+-------+-------+-----------
//! ```
//!
//! Payload fields: `u8`, `u16`, `u32`, `u64`; `str16` = u16 length + UTF-8 bytes (checked on
//! decode); `bytes8`, `bytes16`, `bytes32` = u8/u16/u32 length + opaque bytes. Each frame's fields
//! are listed on its [`Frame`] variant and in `docs/PROTOCOL.md`.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use starling_protocol::{decode, Decoded, Envelope, Frame, Limits};
//!
//! let ping = Envelope { request_id: 7, frame: Frame::Ping };
//! let mut buffer = BytesMut::new();
//! ping.encode(&mut buffer);
//! assert_eq!(&buffer[..], &[5, 0, 0, 0, 0x08, 7, 0, 0, 0]);
//!
//! let limits = Limits::default();
//! assert_eq!(decode(&buffer[..4], &limits), Ok(Decoded::NeedMore { at_least: 9 }));
//! match decode(&buffer, &limits) {
//!     Ok(Decoded::Complete { envelope, used }) => {
//!         assert_eq!(envelope, ping);
//!         assert_eq!(used, 9);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod frame;
pub mod headers;
mod message;
pub mod mqtt;
mod text;

pub use decode::{decode, decode_bytes, peek_frame_size, Decoded};
pub use encode::{deliver_encoded_len, encode_deliver, PublishFields};
pub use error::WireError;
pub use frame::{
    frame_type, frame_type_name, kind, Envelope, ErrorCode, Frame, HistoryQuery, Limits,
    SubscribeStart, ACK_FLAG_DUPLICATE, ACK_FLAG_DURABLE, ERROR_FLAG_TEMPORARY,
    FRAME_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES, LENGTH_BYTES, PROTOCOL_VERSION,
    PUBLISH_FLAG_EPHEMERAL,
};
pub use message::{Message, MESSAGE_BYTES_MIN};
pub use text::Utf8Bytes;
