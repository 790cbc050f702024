//! WebSocket framing (RFC 6455) for the shard's sessions, sans-IO: bytes in,
//! messages out; messages in, bytes out. tungstenite supplies the frame
//! primitives (header parsing, unmasking, frame encoding); this module keeps
//! the little state a server needs between frames, so an idle connection
//! costs one word ([`WsFraming`]) instead of a protocol context with its own
//! read buffer.
//!
//! A frame that has not fully arrived stays in the session's input (the
//! shard keeps a partial frame there and drops its buffer once it is empty);
//! only a message arriving in fragments holds a buffer of its own, until its
//! last fragment.
//!
//! Errors close the connection with the RFC's codes: 1002 for a protocol
//! error, 1007 for a text message that is not UTF-8, 1009 for a message or
//! frame over the limit, 1003 for a data type the endpoint does not take.
//! Pings are answered with pongs; [`WsFraming::ping`] sends the server's own
//! keep-alive pings.

use std::io::{self, Cursor, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

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

/// A control frame's payload is at most 125 bytes (RFC 6455 section 5.5).
const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

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
///
/// INVARIANT: `partial` is `Some` exactly while a fragmented message has
/// begun and its final fragment has not arrived.
pub struct WsFraming {
    limits: WsLimits,
    partial: Option<Box<Partial>>,
}

/// A message arriving in fragments.
struct Partial {
    text: bool,
    /// The unmasked payloads so far.
    data: Vec<u8>,
    /// For text: the bytes at the front of `data` known to be whole UTF-8
    /// characters. A character may straddle two fragments, so the tail after
    /// this point (at most three bytes) waits for the next one; anything
    /// that can never become UTF-8 fails at once.
    checked: usize,
}

impl Partial {
    /// Checks the UTF-8 of what arrived since the last check. False when
    /// the text can no longer be valid.
    fn check_utf8(&mut self) -> bool {
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => {
                self.checked = self.data.len();
                true
            }
            Err(error) if error.error_len().is_none() => {
                self.checked += error.valid_up_to();
                true
            }
            Err(_) => false,
        }
    }
}

/// Writes what it is given to `into`, minus the first `skip` bytes.
struct SkipFirst<'a> {
    skip: usize,
    into: &'a mut Vec<u8>,
}

impl Write for SkipFirst<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let skipped = self.skip.min(bytes.len());
        self.skip -= skipped;
        self.into.extend_from_slice(&bytes[skipped..]);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends the payload of a client frame, unmasked, to `into`.
/// tungstenite keeps its masking function private; formatting a frame whose
/// header carries a mask applies it, so this formats the frame again and
/// keeps only what follows the header.
fn unmask_into(header: FrameHeader, masked: &[u8], into: &mut Vec<u8>) {
    debug_assert!(header.mask.is_some());
    let skip = header.len(masked.len() as u64);
    into.reserve(masked.len());
    Frame::from_payload(header, Bytes::copy_from_slice(masked))
        .format(&mut SkipFirst { skip, into })
        .expect("writing to memory cannot fail");
}

/// Appends `frame` to `out`.
fn write_frame(frame: Frame, out: &mut BytesMut) {
    out.reserve(frame.len());
    frame
        .format(&mut out.writer())
        .expect("writing to memory cannot fail");
}

impl WsFraming {
    /// The server side, after the HTTP upgrade was answered.
    pub fn server(limits: WsLimits) -> WsFraming {
        WsFraming {
            limits,
            partial: None,
        }
    }

    /// Takes every complete frame from `input` and hands each complete
    /// message to `on_message`; a partial frame stays in `input`. Control
    /// frames are handled here (pong replies, the close handshake). Returns
    /// `Err` when the connection must close; the close frame, if one is due,
    /// is already in `out`.
    pub fn receive(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        mut on_message: impl FnMut(WsMessage, &mut BytesMut) -> Result<(), WsClosed>,
    ) -> Result<(), WsClosed> {
        loop {
            let mut cursor = Cursor::new(&input[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(self.fail(
                        close_code::PROTOCOL_ERROR,
                        &format!("protocol error: {error}"),
                        out,
                    ))
                }
            };
            let header_bytes = cursor.position() as usize;
            // Everything that can be refused from the header is refused
            // before the payload is waited for.
            self.check_header(&header, length, out)?;
            let total = header_bytes + length as usize;
            if input.len() < total {
                return Ok(());
            }
            let masked = &input[header_bytes..total];
            let message = match header.opcode {
                OpCode::Control(Control::Ping) => {
                    let mut payload = Vec::new();
                    unmask_into(header, masked, &mut payload);
                    write_frame(Frame::pong(payload), out);
                    None
                }
                OpCode::Control(Control::Pong) => None,
                OpCode::Control(Control::Close) => {
                    let mut payload = Vec::new();
                    unmask_into(header, masked, &mut payload);
                    return Err(self.closed_by_client(&payload, out));
                }
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    unreachable!("FrameHeader::parse refuses reserved opcodes")
                }
                OpCode::Data(data) => self.data_frame(header, data, masked, out)?,
            };
            input.advance(total);
            if let Some(message) = message {
                on_message(message, out)?;
            }
        }
    }

    /// Refuses a frame from its header alone: reserved bits, no mask, over a
    /// limit, a fragmented or long control frame, fragments out of order.
    fn check_header(
        &mut self,
        header: &FrameHeader,
        length: u64,
        out: &mut BytesMut,
    ) -> Result<(), WsClosed> {
        let protocol_error = |framing: &mut WsFraming, out: &mut BytesMut, reason: &str| {
            Err(framing.fail(
                close_code::PROTOCOL_ERROR,
                &format!("protocol error: {reason}"),
                out,
            ))
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return protocol_error(
                self,
                out,
                "a reserved bit is set, and no extension is agreed",
            );
        }
        if header.mask.is_none() {
            return protocol_error(self, out, "a client frame is not masked (RFC 6455 5.1)");
        }
        if length > self.limits.frame_bytes_max as u64 {
            let reason = format!(
                "frame of {length} bytes is over the limit of {} bytes",
                self.limits.frame_bytes_max
            );
            return Err(self.fail(close_code::MESSAGE_TOO_BIG, &reason, out));
        }
        match header.opcode {
            OpCode::Control(_) if !header.is_final => {
                protocol_error(self, out, "a control frame is fragmented")
            }
            OpCode::Control(_) if length > CONTROL_PAYLOAD_BYTES_MAX => {
                protocol_error(self, out, "a control frame is over 125 bytes")
            }
            OpCode::Control(_) => Ok(()),
            OpCode::Data(data) => {
                let so_far = match (&self.partial, data) {
                    (None, Data::Continue) => {
                        return protocol_error(self, out, "a continuation frame continues nothing")
                    }
                    (Some(_), Data::Text | Data::Binary) => {
                        return protocol_error(
                            self,
                            out,
                            "a new message began before the fragmented one ended",
                        )
                    }
                    (None, _) => 0,
                    (Some(partial), _) => partial.data.len() as u64,
                };
                let size = so_far + length;
                if size > self.limits.message_bytes_max as u64 {
                    let reason = format!(
                        "message of {size} bytes is over the limit of {} bytes",
                        self.limits.message_bytes_max
                    );
                    return Err(self.fail(close_code::MESSAGE_TOO_BIG, &reason, out));
                }
                Ok(())
            }
        }
    }

    /// One data frame whose header passed [`WsFraming::check_header`]: the
    /// message it completes, if any.
    fn data_frame(
        &mut self,
        header: FrameHeader,
        data: Data,
        masked: &[u8],
        out: &mut BytesMut,
    ) -> Result<Option<WsMessage>, WsClosed> {
        let is_final = header.is_final;
        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None if is_final => {
                let mut payload = Vec::new();
                unmask_into(header, masked, &mut payload);
                return match data {
                    Data::Binary => Ok(Some(WsMessage::Binary(payload.into()))),
                    _ => match String::from_utf8(payload) {
                        Ok(text) => Ok(Some(WsMessage::Text(text))),
                        Err(_) => Err(self.not_utf8(out)),
                    },
                };
            }
            None => Box::new(Partial {
                text: data == Data::Text,
                data: Vec::new(),
                checked: 0,
            }),
        };
        unmask_into(header, masked, &mut partial.data);
        if partial.text && !partial.check_utf8() {
            return Err(self.not_utf8(out));
        }
        if !is_final {
            self.partial = Some(partial);
            return Ok(None);
        }
        let Partial { text, data, .. } = *partial;
        if !text {
            return Ok(Some(WsMessage::Binary(data.into())));
        }
        match String::from_utf8(data) {
            Ok(text) => Ok(Some(WsMessage::Text(text))),
            // The last character is cut off.
            Err(_) => Err(self.not_utf8(out)),
        }
    }

    fn not_utf8(&mut self, out: &mut BytesMut) -> WsClosed {
        self.fail(
            close_code::INVALID_PAYLOAD,
            "a text message is not valid UTF-8",
            out,
        )
    }

    /// The client's close frame (its unmasked `payload`): answers it and
    /// reports the connection closed. The answer echoes the client's code
    /// (RFC 6455 5.5.1), or is 1002 for a code a client may not send.
    fn closed_by_client(&mut self, payload: &[u8], out: &mut BytesMut) -> WsClosed {
        self.partial = None;
        let (code, reason) = match payload {
            [] => {
                write_frame(Frame::close(None), out);
                return WsClosed {
                    code: None,
                    reason: "the client closed the WebSocket".to_string(),
                };
            }
            [_] => {
                return self.fail(
                    close_code::PROTOCOL_ERROR,
                    "protocol error: a close frame with one byte of payload",
                    out,
                )
            }
            [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
        };
        let Ok(reason) = std::str::from_utf8(reason) else {
            return self.not_utf8(out);
        };
        let echo = if CloseCode::from(code).is_allowed() {
            CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            }
        } else {
            CloseFrame {
                code: CloseCode::Protocol,
                reason: "Protocol violation".into(),
            }
        };
        write_frame(Frame::close(Some(echo)), out);
        WsClosed {
            code: None,
            reason: format!("the client closed the WebSocket ({code}: {reason})"),
        }
    }

    /// Drops a partial message and sends a close frame.
    fn fail(&mut self, code: u16, reason: &str, out: &mut BytesMut) -> WsClosed {
        self.partial = None;
        self.close(code, reason, out)
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str, out: &mut BytesMut) {
        text_frame(text.as_bytes(), out);
    }

    /// Sends a ping (the server's keep-alive).
    pub fn ping(&mut self, out: &mut BytesMut) {
        write_frame(Frame::ping(Bytes::new()), out);
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
        write_frame(frame, out);
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
    write_message_frame(payload, Data::Binary, out);
}

/// Appends one unmasked (server) text frame carrying `payload`, which must
/// be UTF-8. Deliveries are encoded with this once and shared by every
/// subscriber, which works because server frames carry no per-connection
/// mask.
pub fn text_frame(payload: &[u8], out: &mut BytesMut) {
    debug_assert!(std::str::from_utf8(payload).is_ok());
    write_message_frame(payload, Data::Text, out);
}

/// Appends one unmasked, unfragmented data frame.
fn write_message_frame(payload: &[u8], data: Data, out: &mut BytesMut) {
    let payload = Bytes::copy_from_slice(payload);
    write_frame(Frame::message(payload, OpCode::Data(data), true), out);
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

    /// Feeds `bytes` to a new connection with `limits` and checks that it
    /// closed with `code`, delivering nothing.
    fn assert_closes_with(limits: WsLimits, bytes: &[u8], code: u16) {
        let mut framing = WsFraming::server(limits);
        let (messages, out, result) = feed(&mut framing, bytes);
        assert!(messages.is_empty(), "delivered {messages:?}");
        assert_eq!(result.unwrap_err().code, Some(code), "for {bytes:?}");
        assert_eq!(close_code_of(&out), code, "for {bytes:?}");
    }

    /// A message of `opcode` sent in one fragment per part.
    fn fragmented(opcode: u8, parts: &[&[u8]]) -> Vec<u8> {
        let last = parts.len() - 1;
        let frames = parts
            .iter()
            .enumerate()
            .map(|(i, part)| client_frame(if i == 0 { opcode } else { 0x0 }, part, i == last));
        frames.flatten().collect()
    }

    /// Feeds `bytes` to a new connection and checks that it delivers
    /// `expected` and stays open.
    fn assert_delivers(bytes: &[u8], expected: WsMessage) {
        let mut framing = WsFraming::server(WsLimits::default());
        let (messages, _, result) = feed(&mut framing, bytes);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(messages, vec![expected]);
    }

    /// Limits small enough to pass in a test.
    const SMALL: WsLimits = WsLimits {
        message_bytes_max: 100,
        frame_bytes_max: 100,
    };

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
        let frame = client_frame(0x1, &[0xff, 0xfe], true);
        assert_closes_with(WsLimits::default(), &frame, 1007);
    }

    #[test]
    fn oversized_message_closes_with_1009() {
        assert_closes_with(SMALL, &client_frame(0x1, &[b'a'; 200], true), 1009);
    }

    #[test]
    fn unmasked_client_frame_closes_with_1002() {
        assert_closes_with(WsLimits::default(), &[0x81, 0x02, b'h', b'i'], 1002);
    }

    #[test]
    fn reserved_bits_close_with_1002() {
        let mut frame = client_frame(0x1, b"x", true);
        frame[0] |= 0x40;
        assert_closes_with(WsLimits::default(), &frame, 1002);
    }

    #[test]
    fn client_close_is_answered() {
        // The client's code is echoed, unless a client may not send it
        // (1005 means "no code" and is never on the wire).
        for (sent, answered) in [(1000u16, 1000), (1001, 1001), (1005, 1002)] {
            let mut framing = WsFraming::server(WsLimits::default());
            let (_, out, result) =
                feed(&mut framing, &client_frame(0x8, &sent.to_be_bytes(), true));
            assert_eq!(result.unwrap_err().code, None);
            assert_eq!(close_code_of(&out), answered);
        }
    }

    #[test]
    fn fragments_are_joined() {
        let bytes = fragmented(0x1, &[b"hel", b"lo"]);
        assert_delivers(&bytes, WsMessage::Text("hello".into()));
    }

    #[test]
    fn frames_byte_by_byte() {
        let mut bytes = client_frame(0x1, "h\u{e9}".as_bytes(), false);
        bytes.extend(client_frame(0x9, b"p", true));
        bytes.extend(client_frame(0x0, "llo \u{1f600}".as_bytes(), true));
        bytes.extend(client_frame(0x2, &[0, 1, 2], true));
        let mut framing = WsFraming::server(WsLimits::default());
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        let mut messages = Vec::new();
        for byte in bytes {
            input.extend_from_slice(&[byte]);
            framing
                .receive(&mut input, &mut out, |m, _| {
                    messages.push(m);
                    Ok(())
                })
                .unwrap();
        }
        assert!(input.is_empty());
        assert_eq!(
            messages,
            vec![
                WsMessage::Text("h\u{e9}llo \u{1f600}".into()),
                WsMessage::Binary(Bytes::from_static(&[0, 1, 2])),
            ]
        );
        // The ping between the fragments was answered.
        assert_eq!(&out[..], &[0x8a, 1, b'p']);
    }

    /// Feeds `pieces` one after another to a new connection: what it
    /// delivered, what it sent, and how it ended.
    fn feed_pieces(
        limits: WsLimits,
        pieces: &[&[u8]],
    ) -> (Vec<WsMessage>, BytesMut, Result<(), WsClosed>) {
        let mut framing = WsFraming::server(limits);
        let (mut input, mut out, mut messages) = (BytesMut::new(), BytesMut::new(), Vec::new());
        for piece in pieces {
            input.extend_from_slice(piece);
            let result = framing.receive(&mut input, &mut out, |m, _| {
                messages.push(m);
                Ok(())
            });
            if result.is_err() {
                return (messages, out, result);
            }
        }
        (messages, out, Ok(()))
    }

    #[test]
    fn any_split_gives_what_the_whole_gives() {
        // Seeded streams of client frames of every opcode, fragmented or
        // not, some over the limits, some with garbage between them: cut
        // anywhere, they must give the same messages, bytes and end.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let (mut codes, mut delivered) = (std::collections::BTreeSet::new(), 0);
        for _ in 0..300 {
            let mut stream = Vec::new();
            for _ in 0..1 + random(4) {
                if random(8) == 0 {
                    stream.extend((0..1 + random(6)).map(|_| random(256) as u8));
                    continue;
                }
                let opcode = [0x0, 0x1, 0x1, 0x2, 0x8, 0x9, 0xa][random(7)];
                let mut payload: Vec<u8> = (0..random(130))
                    .map(|_| match random(3) {
                        0 => random(256) as u8,
                        _ => b'a' + random(26) as u8,
                    })
                    .collect();
                if opcode == 0x8 && random(2) == 0 {
                    payload = b"\x03\xe8bye".to_vec();
                }
                stream.extend(client_frame(opcode, &payload, random(3) > 0));
            }
            let whole = feed_pieces(SMALL, &[&stream]);
            delivered += whole.0.len();
            if let Err(closed) = &whole.2 {
                codes.insert(closed.code);
            }
            for split in 0..=stream.len() {
                let (front, back) = stream.split_at(split);
                assert_eq!(
                    feed_pieces(SMALL, &[front, back]),
                    whole,
                    "{stream:?} at {split}"
                );
            }
        }
        // The streams reach every outcome.
        let expected = [None, Some(1002), Some(1007), Some(1009)];
        assert!(
            expected.iter().all(|code| codes.contains(code)),
            "{codes:?}"
        );
        assert!(delivered > 0);
    }

    #[test]
    fn partial_frame_stays_in_input() {
        let frame = client_frame(0x1, b"hello", true);
        let mut framing = WsFraming::server(WsLimits::default());
        let mut input = BytesMut::from(&frame[..4]);
        framing
            .receive(&mut input, &mut BytesMut::new(), |_, _| Ok(()))
            .unwrap();
        assert_eq!(&input[..], &frame[..4]);
    }

    #[test]
    fn idle_state_is_small() {
        // Limits and one pointer; no buffer until a message is fragmented.
        assert!(std::mem::size_of::<WsFraming>() <= 3 * std::mem::size_of::<usize>());
        let mut framing = WsFraming::server(WsLimits::default());
        feed(&mut framing, &client_frame(0x1, b"a", false))
            .2
            .unwrap();
        assert!(framing.partial.is_some());
        feed(&mut framing, &client_frame(0x0, b"b", true))
            .2
            .unwrap();
        assert!(framing.partial.is_none());
    }

    #[test]
    fn utf8_character_split_across_fragments() {
        let euro = "\u{20ac}".as_bytes();
        let bytes = fragmented(0x1, &[&euro[..1], &euro[1..2], &euro[2..]]);
        assert_delivers(&bytes, WsMessage::Text("\u{20ac}".into()));
    }

    #[test]
    fn invalid_utf8_in_a_first_fragment_closes_at_once() {
        let frame = client_frame(0x1, &[b'a', 0xff], false);
        assert_closes_with(WsLimits::default(), &frame, 1007);
    }

    #[test]
    fn text_ending_in_half_a_character_closes_with_1007() {
        let bytes = fragmented(0x1, &[b"a", &"\u{20ac}".as_bytes()[..2]]);
        assert_closes_with(WsLimits::default(), &bytes, 1007);
    }

    #[test]
    fn binary_fragments_are_not_checked_for_utf8() {
        let bytes = fragmented(0x2, &[&[0xff], &[0xfe]]);
        assert_delivers(&bytes, WsMessage::Binary(Bytes::from_static(&[0xff, 0xfe])));
    }

    #[test]
    fn frame_over_the_limit_closes_before_its_payload_arrives() {
        let limits = WsLimits {
            message_bytes_max: 1000,
            ..SMALL
        };
        let frame = client_frame(0x2, &[0; 200], true);
        // The header alone (2 + 2 length bytes + 4 mask bytes) is enough.
        assert_closes_with(limits, &frame[..8], 1009);
    }

    #[test]
    fn fragments_over_the_message_limit_close_with_1009() {
        let bytes = fragmented(0x1, &[&[b'a'; 60], &[b'a'; 60]]);
        assert_closes_with(SMALL, &bytes, 1009);
    }

    #[test]
    fn fragment_order_errors_close_with_1002() {
        let cases: Vec<Vec<u8>> = vec![
            // A continuation with nothing to continue.
            client_frame(0x0, b"x", true),
            // A new message while one is fragmented.
            [
                client_frame(0x1, b"a", false),
                client_frame(0x1, b"b", true),
            ]
            .concat(),
            // A fragmented control frame.
            client_frame(0x9, b"", false),
            // A control frame over 125 bytes.
            client_frame(0x9, &[0; 126], true),
            // A reserved opcode.
            client_frame(0x3, b"", true),
            client_frame(0xb, b"", true),
            // A close frame with one byte of payload.
            client_frame(0x8, &[3], true),
        ];
        for bytes in cases {
            assert_closes_with(WsLimits::default(), &bytes, 1002);
        }
    }

    #[test]
    fn close_echoes_code_and_reason() {
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut framing = WsFraming::server(WsLimits::default());
        let (_, out, result) = feed(&mut framing, &client_frame(0x8, &payload, true));
        let closed = result.unwrap_err();
        assert_eq!(closed.code, None);
        assert!(closed.reason.contains("4000: bye"), "{}", closed.reason);
        assert_eq!(&out[..], &[0x88, 5, 0x0f, 0xa0, b'b', b'y', b'e']);
        let mut framing = WsFraming::server(WsLimits::default());
        let (_, out, _) = feed(&mut framing, &client_frame(0x8, b"", true));
        assert_eq!(&out[..], &[0x88, 0]);
    }

    #[test]
    fn pong_is_ignored() {
        let mut framing = WsFraming::server(WsLimits::default());
        let (messages, out, result) = feed(&mut framing, &client_frame(0xa, b"x", true));
        assert!(result.is_ok() && messages.is_empty() && out.is_empty());
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
