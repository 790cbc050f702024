//! The native protocol adapter: `starling-protocol` frames in, broker
//! commands out. The session holds only whether `Hello` has been seen; the
//! shard owns the socket, the buffers and the principal.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use starling_broker::{BrokerError, Close, Command, Protocol, Reply, Session, SessionContext};
use starling_protocol::{
    decode_bytes, encode_deliver, kind, peek_frame_size, Decoded, Envelope, ErrorCode, Frame,
    Limits, Message, WireError, PROTOCOL_VERSION,
};

/// The native protocol, as served on a listener.
#[derive(Clone, Debug)]
pub struct NativeProtocol {
    pub limits: Limits,
    pub server_name: String,
}

impl NativeProtocol {
    pub fn new(server_name: &str, frame_bytes_max: u32) -> NativeProtocol {
        NativeProtocol {
            limits: Limits { frame_bytes_max },
            server_name: server_name.to_string(),
        }
    }
}

impl Protocol for NativeProtocol {
    fn name(&self) -> &'static str {
        "native"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        Box::new(NativeSession {
            limits: self.limits,
            server_name: self.server_name.clone(),
            greeted: false,
        })
    }

    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes {
        let mut out = BytesMut::new();
        encode_deliver(channel, messages, &mut out);
        out.freeze()
    }
}

/// One native connection.
pub struct NativeSession {
    limits: Limits,
    server_name: String,
    greeted: bool,
}

fn write(out: &mut BytesMut, request_id: u32, frame: Frame) {
    Envelope { request_id, frame }.encode(out);
}

/// The longest error message sent: a `str16` holds 65,535 bytes, and a
/// message quoting what a client sent must not pass that (encoding it would
/// fail).
const ERROR_MESSAGE_BYTES_MAX: usize = 4096;

fn error_frame(code: ErrorCode, temporary: bool, mut message: String) -> Frame {
    if message.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut end = ERROR_MESSAGE_BYTES_MAX - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    Frame::Error {
        code,
        temporary,
        message,
    }
}

/// Record kinds whose meaning the chat layer checks before it writes them
/// (only a message's sender edits it; only its sender or the channel's
/// owner deletes it; channel events and presence are the server's): with
/// authentication on, a native client may not publish them, or any member
/// could delete others' messages or forge a removal in every chat client.
const CHAT_CHECKED_KINDS: [u8; 4] = [
    kind::EDIT,
    kind::DELETE,
    kind::CHANNEL_EVENT,
    kind::PRESENCE,
];

/// Why a native request of a signed-in `user` is refused before the broker
/// sees it, if it is.
fn refusal(user: &str, command: &Command) -> Option<String> {
    match command {
        Command::Publish { kind, .. } if CHAT_CHECKED_KINDS.contains(kind) => Some(format!(
            "records of kind {kind} are written by the chat layer, which checks who may write them; \
             use the chat protocol (WebSocket /ws or the HTTP API) to edit, delete or change channels"
        )),
        Command::CursorSet { consumer, .. } | Command::CursorGet { consumer, .. }
            if consumer != user && !consumer.starts_with(&format!("{user}+")) =>
        {
            Some(format!(
                "consumer {consumer:?} is not {user}'s: name your consumers {user:?} or \"{user}+<name>\" \
                 (another user's read markers are theirs)"
            ))
        }
        _ => None,
    }
}

/// Sends a connection-level error (request id 0) and asks the shard to close.
fn refuse(out: &mut BytesMut, code: ErrorCode, message: String) -> Result<(), Close> {
    write(out, 0, error_frame(code, false, message.clone()));
    Err(Close { reason: message })
}

impl Session for NativeSession {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        loop {
            // Each whole frame is split off the read buffer and decoded from the shared bytes,
            // so a publish's body is a slice of the buffer, not a copy: the body's allocation,
            // copy and release (on the channel owner's core, a cross-thread free) were 7-8 % of
            // the server's CPU in a profile of durable publish (docs/BENCHMARKS.md). The buffer
            // stays allocated until every message read into it is dropped (after its commit and
            // fan-out, or once a subscriber that keeps one lets go), and later reads go to a new
            // one.
            let decoded = match peek_frame_size(input, &self.limits) {
                Ok(Some(size)) if size <= input.len() => {
                    decode_bytes(&input.split_to(size).freeze(), &self.limits)
                }
                Ok(_) => return Ok(()),
                Err(error) => Err(error),
            };
            let envelope = match decoded {
                Ok(Decoded::Complete { envelope, .. }) => envelope,
                Ok(Decoded::NeedMore { at_least }) => {
                    unreachable!("a whole frame asked for {at_least} bytes")
                }
                Err(error) => {
                    let code = match error {
                        WireError::FrameTooLarge { .. } => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    let message = format!("malformed frame, closing the connection: {error}");
                    return refuse(context.out(), code, message);
                }
            };
            let Envelope { request_id, frame } = envelope;
            if !self.greeted {
                let Frame::Hello {
                    version,
                    client_name,
                    token,
                } = frame
                else {
                    let message = format!(
                        "expected Hello as the first frame, got {}; send Hello with a token first",
                        frame.name()
                    );
                    return refuse(context.out(), ErrorCode::Denied, message);
                };
                if version != PROTOCOL_VERSION {
                    let message = format!(
                        "protocol version {version} is not supported; this server speaks version {PROTOCOL_VERSION}"
                    );
                    return refuse(context.out(), ErrorCode::Unsupported, message);
                }
                match context.authenticate(&client_name, &token) {
                    Ok(_) => {
                        self.greeted = true;
                        let welcome = Frame::Welcome {
                            version: PROTOCOL_VERSION,
                            server_name: self.server_name.clone(),
                            frame_bytes_max: self.limits.frame_bytes_max,
                        };
                        write(context.out(), request_id, welcome);
                    }
                    Err(denied) => {
                        let message = format!("authentication failed: {}", denied.0);
                        return refuse(context.out(), ErrorCode::Denied, message);
                    }
                }
                continue;
            }
            let command = match frame {
                Frame::Publish {
                    ephemeral,
                    kind,
                    channel,
                    client_message_id,
                    relation,
                    headers,
                    body,
                } => Command::Publish {
                    channel,
                    ephemeral,
                    kind,
                    client_message_id,
                    relation,
                    headers,
                    body,
                },
                Frame::Subscribe { channel, start } => Command::Subscribe { channel, start },
                Frame::Unsubscribe { channel } => Command::Unsubscribe { channel },
                Frame::History {
                    channel,
                    query,
                    limit,
                } => Command::History {
                    channel,
                    query,
                    limit,
                },
                Frame::CursorSet {
                    consumer,
                    channel,
                    seq,
                } => Command::CursorSet {
                    consumer,
                    channel,
                    seq,
                },
                Frame::CursorGet { consumer, channel } => Command::CursorGet { consumer, channel },
                Frame::Ping => {
                    write(context.out(), request_id, Frame::Pong);
                    continue;
                }
                Frame::Hello { .. } => {
                    let message = "a second Hello on one connection; open a new connection to change identity".to_string();
                    return refuse(context.out(), ErrorCode::Malformed, message);
                }
                other => {
                    let message = format!(
                        "{} is a server-to-client frame; a client may not send it",
                        other.name()
                    );
                    return refuse(context.out(), ErrorCode::Malformed, message);
                }
            };
            // Without authentication (loopback) every client is trusted.
            if let Some(user) = context.verified_user() {
                if let Some(message) = refusal(&user, &command) {
                    context.refused(command.channel(), &message);
                    let error = error_frame(ErrorCode::Denied, false, message);
                    write(context.out(), request_id, error);
                    continue;
                }
            }
            context.submit(request_id, command);
        }
    }

    fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let frame = match reply {
            Reply::Published {
                seq,
                offset,
                timestamp_ms,
                durable,
                duplicate,
            } => Frame::PublishAck {
                seq: *seq,
                offset: *offset,
                timestamp_ms: *timestamp_ms,
                durable: *durable,
                duplicate: *duplicate,
            },
            Reply::Subscribed { head_seq } => Frame::Subscribed {
                head_seq: *head_seq,
            },
            Reply::Unsubscribed => Frame::Unsubscribed,
            Reply::History {
                channel,
                head_seq,
                messages,
            } => Frame::HistoryPage {
                channel: channel.to_string(),
                head_seq: *head_seq,
                messages: messages.clone(),
            },
            Reply::CursorAck => Frame::CursorAck,
            Reply::Cursor { seq } => Frame::CursorValue { seq: *seq },
            Reply::Error(error) => broker_error_frame(error),
        };
        write(context.out(), request_id, frame);
        Ok(())
    }

    fn on_server_close(&mut self, code: ErrorCode, reason: &str, out: &mut BytesMut) {
        // Reconnecting helps after a shutdown or a slow-consumer close, not
        // after a revoked token or a storage failure.
        let temporary = matches!(
            code,
            ErrorCode::Unavailable
                | ErrorCode::SlowConsumer
                | ErrorCode::RateLimited
                | ErrorCode::StorageFull
        );
        write(out, 0, error_frame(code, temporary, reason.to_string()));
    }
}

fn broker_error_frame(error: &BrokerError) -> Frame {
    error_frame(error.code(), error.temporary(), error.to_string())
}
