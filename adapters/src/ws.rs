//! WebSocket framing (RFC 6455) for the shard's sessions: tungstenite's
//! protocol core ([`WebSocketContext`]) driven over the session's buffers, so
//! the socket stays with the event loop. Bytes in, messages out; messages in,
//! bytes out.
//!
//! Errors close the connection with the RFC's codes: 1002 for a protocol
//! error, 1007 for a text message that is not UTF-8, 1009 for a message or
//! frame over the limit, 1003 for a data type the endpoint does not take.
//! Pings are answered by tungstenite; [`WsFraming::ping`] sends the server's
//! own keep-alive pings.

use std::io::{self, Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub use tungstenite::handshake::derive_accept_key;

/// Limits of one WebSocket connection.
#[derive(Clone, Copy, Debug)]
pub struct WsLimits {
    /// Largest message (after joining fragments) accepted from a client.
    pub message_bytes_max: usize,
    /// Largest single frame accepted from a client.
    pub frame_bytes_max: usize,
}

impl Default for WsLimits {
    fn default() -> WsLimits {
        // A chat message is at most 1 MiB of body plus its JSON envelope.
        WsLimits {
            message_bytes_max: 1024 * 1024 + 64 * 1024,
            frame_bytes_max: 1024 * 1024 + 64 * 1024,
        }
    }
}

/// Bytes tungstenite reads from the session's input at a time. Small, because
/// it allocates this much per connection up front and the input is already
/// in memory.
const READ_BUFFER_BYTES: usize = 512;

/// A data message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    Binary(Bytes),
}

/// Why the framing layer ended the connection: the close code sent (if any)
/// and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsClosed {
    pub code: Option<u16>,
    pub reason: String,
}

/// The server side of one WebSocket connection.
pub struct WsFraming {
    context: WebSocketContext,
}

/// The session's buffers as the stream tungstenite reads and writes: reads
/// take from `input` (and would block when it is empty), writes append to
/// `output`.
struct Pipe<'a> {
    input: &'a mut BytesMut,
    output: &'a mut BytesMut,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buffer.len().min(self.input.len());
        buffer[..n].copy_from_slice(&self.input[..n]);
        self.input.advance(n);
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WsFraming {
    /// The server side, after the HTTP upgrade was answered.
    pub fn server(limits: WsLimits) -> WsFraming {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(limits.message_bytes_max))
            .max_frame_size(Some(limits.frame_bytes_max));
        WsFraming {
            context: WebSocketContext::new(Role::Server, Some(config)),
        }
    }

    /// Takes every complete message from `input` and hands each to
    /// `on_message`. Control frames are handled here (pong replies, the
    /// close handshake). Returns `Err` when the connection must close; the
    /// close frame, if one is due, is already in `out`.
    pub fn receive(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        mut on_message: impl FnMut(WsMessage, &mut BytesMut) -> Result<(), WsClosed>,
    ) -> Result<(), WsClosed> {
        loop {
            let mut pipe = Pipe {
                input: &mut *input,
                output: &mut *out,
            };
            match self.context.read(&mut pipe) {
                Ok(Message::Text(text)) => on_message(WsMessage::Text(text.to_string()), out)?,
                Ok(Message::Binary(data)) => on_message(WsMessage::Binary(data), out)?,
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    // tungstenite queued the echo of the close frame; send it.
                    let mut pipe = Pipe {
                        input: &mut *input,
                        output: &mut *out,
                    };
                    let _ = self.context.flush(&mut pipe);
                    return Err(WsClosed {
                        code: None,
                        reason: match frame {
                            Some(frame) => format!(
                                "the client closed the WebSocket ({}: {})",
                                u16::from(frame.code),
                                frame.reason
                            ),
                            None => "the client closed the WebSocket".to_string(),
                        },
                    });
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    return Err(WsClosed {
                        code: None,
                        reason: "the WebSocket is closed".to_string(),
                    });
                }
                Err(error) => {
                    let (code, reason) = match &error {
                        WsError::Utf8(_) => (
                            CloseCode::Invalid,
                            "a text message is not valid UTF-8".to_string(),
                        ),
                        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => (
                            CloseCode::Size,
                            format!(
                                "message of {size} bytes is over the limit of {max_size} bytes"
                            ),
                        ),
                        WsError::Capacity(other) => (CloseCode::Size, other.to_string()),
                        other => (CloseCode::Protocol, format!("protocol error: {other}")),
                    };
                    return Err(self.close(code.into(), &reason, out));
                }
            }
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str, out: &mut BytesMut) {
        text_frame(text.as_bytes(), out);
    }

    /// Sends a ping (the server's keep-alive).
    pub fn ping(&mut self, out: &mut BytesMut) {
        let mut writer = out.writer();
        Frame::ping(Bytes::new())
            .format(&mut writer)
            .expect("writing to memory cannot fail");
    }

    /// Sends a close frame with `code` and `reason` (cut to fit a control
    /// frame) and reports the connection closed.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut BytesMut) -> WsClosed {
        let mut cut = reason.len().min(CLOSE_REASON_BYTES_MAX);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let frame = Frame::close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason[..cut].to_string().into(),
        }));
        let mut writer = out.writer();
        frame
            .format(&mut writer)
            .expect("writing to memory cannot fail");
        WsClosed {
            code: Some(code),
            reason: reason.to_string(),
        }
    }
}

/// A close frame's payload is at most 125 bytes, two of them the code.
const CLOSE_REASON_BYTES_MAX: usize = 123;

/// Close codes of RFC 6455 that the server sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Appends one unmasked (server) binary frame carrying `payload`.
pub fn binary_frame(payload: &[u8], out: &mut BytesMut) {
    let frame = Frame::message(
        Bytes::copy_from_slice(payload),
        OpCode::Data(Data::Binary),
        true,
    );
    out.reserve(frame.len());
    let mut writer = out.writer();
    frame
        .format(&mut writer)
        .expect("writing to memory cannot fail");
}

/// Appends one unmasked (server) text frame carrying `payload`, which must
/// be UTF-8. Deliveries are encoded with this once and shared by every
/// subscriber, which works because server frames carry no per-connection
/// mask.
pub fn text_frame(payload: &[u8], out: &mut BytesMut) {
    debug_assert!(std::str::from_utf8(payload).is_ok());
    let frame = Frame::message(
        Bytes::copy_from_slice(payload),
        OpCode::Data(Data::Text),
        true,
    );
    out.reserve(frame.len());
    let mut writer = out.writer();
    frame
        .format(&mut writer)
        .expect("writing to memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn feed(
        framing: &mut WsFraming,
        bytes: &[u8],
    ) -> (Vec<WsMessage>, BytesMut, Result<(), WsClosed>) {
        let mut input = BytesMut::from(bytes);
        let mut out = BytesMut::new();
        let mut messages = Vec::new();
        let result = framing.receive(&mut input, &mut out, |message, _| {
            messages.push(message);
            Ok(())
        });
        (messages, out, result)
    }

    /// The close code in a server close frame.
    fn close_code_of(out: &[u8]) -> u16 {
        assert_eq!(out[0], 0x88, "expected a close frame, got {out:?}");
        u16::from_be_bytes([out[2], out[3]])
    }

    #[test]
    fn text_message_split_anywhere() {
        let frame = client_frame(0x1, b"{\"id\":1}", true);
        for split in 0..=frame.len() {
            let mut framing = WsFraming::server(WsLimits::default());
            let mut input = BytesMut::from(&frame[..split]);
            let mut out = BytesMut::new();
            let mut messages = Vec::new();
            framing
                .receive(&mut input, &mut out, |m, _| {
                    messages.push(m);
                    Ok(())
                })
                .unwrap();
            input.extend_from_slice(&frame[split..]);
            framing
                .receive(&mut input, &mut out, |m, _| {
                    messages.push(m);
                    Ok(())
                })
                .unwrap();
            assert_eq!(messages, vec![WsMessage::Text("{\"id\":1}".into())]);
        }
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let mut framing = WsFraming::server(WsLimits::default());
        let (messages, out, result) = feed(&mut framing, &client_frame(0x9, b"hi", true));
        assert!(result.is_ok());
        assert!(messages.is_empty());
        assert_eq!(&out[..], &[0x8a, 2, b'h', b'i']);
    }

    #[test]
    fn invalid_utf8_closes_with_1007() {
        let mut framing = WsFraming::server(WsLimits::default());
        let (_, out, result) = feed(&mut framing, &client_frame(0x1, &[0xff, 0xfe], true));
        assert_eq!(result.unwrap_err().code, Some(close_code::INVALID_PAYLOAD));
        assert_eq!(close_code_of(&out), 1007);
    }

    #[test]
    fn oversized_message_closes_with_1009() {
        let limits = WsLimits {
            message_bytes_max: 100,
            frame_bytes_max: 100,
        };
        let mut framing = WsFraming::server(limits);
        let (_, out, result) = feed(&mut framing, &client_frame(0x1, &[b'a'; 200], true));
        assert_eq!(result.unwrap_err().code, Some(close_code::MESSAGE_TOO_BIG));
        assert_eq!(close_code_of(&out), 1009);
    }

    #[test]
    fn unmasked_client_frame_closes_with_1002() {
        let mut framing = WsFraming::server(WsLimits::default());
        let (_, out, result) = feed(&mut framing, &[0x81, 0x02, b'h', b'i']);
        assert_eq!(result.unwrap_err().code, Some(close_code::PROTOCOL_ERROR));
        assert_eq!(close_code_of(&out), 1002);
    }

    #[test]
    fn reserved_bits_close_with_1002() {
        let mut frame = client_frame(0x1, b"x", true);
        frame[0] |= 0x40;
        let mut framing = WsFraming::server(WsLimits::default());
        let (_, out, result) = feed(&mut framing, &frame);
        assert!(result.is_err());
        assert_eq!(close_code_of(&out), 1002);
    }

    #[test]
    fn client_close_is_echoed() {
        let mut framing = WsFraming::server(WsLimits::default());
        let (_, out, result) = feed(
            &mut framing,
            &client_frame(0x8, &1000u16.to_be_bytes(), true),
        );
        assert!(result.is_err());
        assert_eq!(close_code_of(&out), 1000);
    }

    #[test]
    fn fragments_are_joined() {
        let mut bytes = client_frame(0x1, b"hel", false);
        bytes.extend(client_frame(0x0, b"lo", true));
        let mut framing = WsFraming::server(WsLimits::default());
        let (messages, _, result) = feed(&mut framing, &bytes);
        assert!(result.is_ok());
        assert_eq!(messages, vec![WsMessage::Text("hello".into())]);
    }

    #[test]
    fn server_text_frame_bytes() {
        let mut out = BytesMut::new();
        text_frame(b"hi", &mut out);
        assert_eq!(&out[..], &[0x81, 0x02, b'h', b'i']);
        let mut out = BytesMut::new();
        text_frame(&[b'a'; 300], &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(out.len(), 304);
    }
}
