//! A blocking client for Starling's native TCP protocol, built on `std::net`.
//!
//! Used by the CLI, the benches and the tests. Two shapes:
//!
//! - [`Client`]: one request at a time. Each call sends a frame with a fresh request id and waits
//!   for the reply with that id. `Deliver` pushes that arrive meanwhile are queued (up to
//!   [`DELIVERIES_QUEUED_MAX`]) and handed out by [`Client::next_delivery`], never lost.
//! - [`Client::into_split`] → ([`ClientWriter`], [`ClientReader`]): for pipelined, open-loop load.
//!   The writer sends requests with ids the caller chooses and does not wait; the reader yields
//!   every incoming [`Envelope`] (replies, pushes and errors alike) for the caller to match.
//!
//! The codec is `starling_protocol`; this module only moves its bytes over a socket.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use starling_protocol::{
    decode, Decoded, Envelope, ErrorCode, Frame, HistoryQuery, Limits, Message, PublishFields,
    SubscribeStart, WireError, LENGTH_BYTES, PROTOCOL_VERSION,
};
use thiserror::Error;

/// How long a [`Client`] call waits for its reply unless [`Client::set_reply_timeout`] says
/// otherwise. Long enough for a group commit on a slow disk, short enough that a dead server is
/// noticed.
pub const REPLY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Largest frame the client accepts from the server. A history page may hold many messages of up
/// to the server's own frame limit each, so this is far above `Limits::default()`; it only guards
/// against a corrupt length prefix making the client allocate gigabytes.
pub const INCOMING_FRAME_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// Bound on deliveries a [`Client`] queues while waiting for replies. A caller that subscribes
/// must drain them with [`Client::next_delivery`]; past this bound a call fails with
/// [`ClientError::DeliveriesOverflow`] (keeping the delivery that passed it) rather than letting
/// memory grow without limit or dropping messages. 65 536 batches is minutes of a busy channel for an interactive tool.
pub const DELIVERIES_QUEUED_MAX: usize = 65_536;

/// Bytes asked of the socket per read: large enough for a burst of deliveries in one call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What can go wrong talking to a server.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("i/o error talking to the server: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that do not decode.
    #[error("the server sent a malformed frame: {0}")]
    Wire(#[from] WireError),
    /// A request cannot be encoded (a field too long for its length prefix); nothing was sent.
    #[error("invalid request, not sent: {0}")]
    InvalidRequest(WireError),
    /// A request is larger than the server accepts; nothing was sent.
    #[error("request of {length} bytes exceeds the server's frame_bytes_max of {frame_bytes_max} bytes; not sent")]
    TooLarge {
        /// The request's length (bytes after the length prefix).
        length: usize,
        /// The server's limit, from its `Welcome`.
        frame_bytes_max: u32,
    },
    /// The server answered with an `Error` frame (for this request, or for the whole connection
    /// just before closing it).
    #[error("server error {code}: {message}")]
    Server {
        /// What went wrong.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// The server says retrying may succeed.
        temporary: bool,
    },
    /// No reply arrived in time. The connection stays usable; a late reply is discarded.
    #[error("no reply to {request} within {waited_ms} ms")]
    Timeout {
        /// The request's frame name.
        request: &'static str,
        /// How long the client waited.
        waited_ms: u64,
    },
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server replied with a frame that does not answer the request.
    #[error("expected {expected} in reply to request {request_id}, got {got}")]
    UnexpectedReply {
        /// The request id.
        request_id: u32,
        /// The reply expected.
        expected: &'static str,
        /// The frame received.
        got: &'static str,
    },
    /// More than [`DELIVERIES_QUEUED_MAX`] deliveries are waiting to be read. The request was
    /// sent, and its answer not waited for: its outcome is unknown (a publish may have been
    /// stored; retry it with the same client message id).
    #[error("{queued} deliveries are queued and unread, so the request's answer was not waited for (it was sent: its outcome is unknown; retry a publish with the same client message id); call next_delivery to drain them")]
    DeliveriesOverflow {
        /// Deliveries queued.
        queued: usize,
    },
}

/// A publish with every field of the `Publish` frame. [`PublishRequest::new`] fills in the usual
/// defaults (durable, no client message id, no relation, no headers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishRequest {
    /// The channel.
    pub channel: String,
    /// The message kind (see `starling_protocol::kind`).
    pub kind: u8,
    /// The body.
    pub body: Bytes,
    /// Skip the log: deliver live only (typing, presence). Acked with seq 0.
    pub ephemeral: bool,
    /// Idempotency key: a retry with the same id returns the original's ack. Empty for none.
    pub client_message_id: Bytes,
    /// The seq an edit, delete, reaction or reply refers to, or 0.
    pub relation: u64,
    /// Small opaque headers.
    pub headers: Bytes,
}

impl PublishRequest {
    /// A durable publish of `body` to `channel` with no id, relation or headers.
    pub fn new(channel: impl Into<String>, kind: u8, body: impl Into<Bytes>) -> PublishRequest {
        PublishRequest {
            channel: channel.into(),
            kind,
            body: body.into(),
            ..PublishRequest::default()
        }
    }

    /// This request's fields, borrowed (see [`ClientWriter::queue_publish_fields`]).
    pub fn fields(&self) -> PublishFields<'_> {
        PublishFields {
            ephemeral: self.ephemeral,
            kind: self.kind,
            channel: &self.channel,
            client_message_id: &self.client_message_id,
            relation: self.relation,
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// The `Publish` frame for this request.
    pub fn to_frame(&self) -> Frame {
        Frame::Publish {
            ephemeral: self.ephemeral,
            kind: self.kind,
            channel: self.channel.as_str().into(),
            client_message_id: self.client_message_id.clone(),
            relation: self.relation,
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

/// The server's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// The channel seq assigned (0 for an ephemeral publish).
    pub seq: u64,
    /// The log offset assigned.
    pub offset: u64,
    /// The server's timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Durable under the server's configured policy.
    pub durable: bool,
    /// An idempotent retry: this is the original publish's ack.
    pub duplicate: bool,
}

/// A page of a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The channel.
    pub channel: String,
    /// The channel's last assigned seq when the page was read.
    pub head_seq: u64,
    /// The messages, in ascending seq order.
    pub messages: Vec<Message>,
}

/// A connection to a Starling server that sends one request at a time.
pub struct Client {
    writer: ClientWriter,
    reader: ClientReader,
    /// Deliveries received while waiting for replies, oldest first.
    /// INVARIANT: each call that finds `deliveries.len() > DELIVERIES_QUEUED_MAX` adds at most
    /// one more before it fails with [`ClientError::DeliveriesOverflow`].
    deliveries: VecDeque<(String, Vec<Message>)>,
    /// The last request id used; ids count up from 1 and skip 0, which means "push".
    request_id_last: u32,
    reply_timeout: Duration,
    server_name: String,
    server_version: u16,
}

impl Client {
    /// Connects, sends `Hello` with `client_name` and `token` (empty when authentication is off)
    /// and waits for `Welcome`.
    pub fn connect(
        address: impl ToSocketAddrs,
        client_name: &str,
        token: &str,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address)?;
        Client::handshake(stream, client_name, token)
    }

    /// Like [`Client::connect`], over a stream the caller already connected.
    pub fn handshake(
        stream: TcpStream,
        client_name: &str,
        token: &str,
    ) -> Result<Client, ClientError> {
        // Requests are small and latency-bound; do not let Nagle hold them back.
        stream.set_nodelay(true)?;
        let reader = ClientReader::new(stream.try_clone()?);
        let writer = ClientWriter {
            stream,
            buffer: BytesMut::new(),
            // Until the server says otherwise, assume its default limit.
            frame_bytes_max: Limits::default().frame_bytes_max,
        };
        let mut client = Client {
            writer,
            reader,
            deliveries: VecDeque::new(),
            request_id_last: 0,
            reply_timeout: REPLY_TIMEOUT_DEFAULT,
            server_name: String::new(),
            server_version: 0,
        };
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
            token: token.to_owned(),
        };
        match client.request(hello)? {
            (
                _,
                Frame::Welcome {
                    version,
                    server_name,
                    frame_bytes_max,
                },
            ) => {
                log::debug!("connected to {server_name} (protocol {version}, frame_bytes_max {frame_bytes_max})");
                client.server_name = server_name;
                client.server_version = version;
                client.writer.frame_bytes_max = frame_bytes_max;
                Ok(client)
            }
            (request_id, other) => Err(unexpected(request_id, "Welcome", &other)),
        }
    }

    /// The server's name, from its `Welcome`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The protocol version the server speaks, from its `Welcome`.
    pub fn server_version(&self) -> u16 {
        self.server_version
    }

    /// The largest frame the server accepts, from its `Welcome`.
    pub fn server_frame_bytes_max(&self) -> u32 {
        self.writer.frame_bytes_max
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.writer.stream.peer_addr()?)
    }

    /// How long each call waits for its reply.
    pub fn set_reply_timeout(&mut self, reply_timeout: Duration) {
        self.reply_timeout = reply_timeout;
    }

    /// Publishes `body` to `channel` durably, with no id, relation or headers.
    pub fn publish(
        &mut self,
        channel: &str,
        kind: u8,
        body: impl Into<Bytes>,
    ) -> Result<PublishAck, ClientError> {
        self.publish_with(PublishRequest::new(channel, kind, body))
    }

    /// Publishes with every field of the frame under the caller's control.
    pub fn publish_with(&mut self, request: PublishRequest) -> Result<PublishAck, ClientError> {
        let frame = Frame::Publish {
            ephemeral: request.ephemeral,
            kind: request.kind,
            channel: request.channel.into(),
            client_message_id: request.client_message_id,
            relation: request.relation,
            headers: request.headers,
            body: request.body,
        };
        match self.request(frame)? {
            (
                _,
                Frame::PublishAck {
                    seq,
                    offset,
                    timestamp_ms,
                    durable,
                    duplicate,
                },
            ) => Ok(PublishAck {
                seq,
                offset,
                timestamp_ms,
                durable,
                duplicate,
            }),
            (request_id, other) => Err(unexpected(request_id, "PublishAck", &other)),
        }
    }

    /// Subscribes to `channel`; returns the channel's head seq when the subscription started.
    /// Messages then arrive through [`Client::next_delivery`].
    pub fn subscribe(&mut self, channel: &str, start: SubscribeStart) -> Result<u64, ClientError> {
        let frame = Frame::Subscribe {
            channel: channel.to_owned(),
            start,
        };
        match self.request(frame)? {
            (_, Frame::Subscribed { head_seq }) => Ok(head_seq),
            (request_id, other) => Err(unexpected(request_id, "Subscribed", &other)),
        }
    }

    /// Ends the subscription to `channel`. Deliveries already queued stay queued.
    pub fn unsubscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        let frame = Frame::Unsubscribe {
            channel: channel.to_owned(),
        };
        match self.request(frame)? {
            (_, Frame::Unsubscribed) => Ok(()),
            (request_id, other) => Err(unexpected(request_id, "Unsubscribed", &other)),
        }
    }

    /// Reads up to `limit` messages of `channel`'s history.
    pub fn history(
        &mut self,
        channel: &str,
        query: HistoryQuery,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let frame = Frame::History {
            channel: channel.to_owned(),
            query,
            limit,
        };
        match self.request(frame)? {
            (
                _,
                Frame::HistoryPage {
                    channel,
                    head_seq,
                    messages,
                },
            ) => Ok(HistoryPage {
                channel,
                head_seq,
                messages,
            }),
            (request_id, other) => Err(unexpected(request_id, "HistoryPage", &other)),
        }
    }

    /// Stores `consumer`'s read position in `channel`.
    pub fn cursor_set(
        &mut self,
        consumer: &str,
        channel: &str,
        seq: u64,
    ) -> Result<(), ClientError> {
        let frame = Frame::CursorSet {
            consumer: consumer.to_owned(),
            channel: channel.to_owned(),
            seq,
        };
        match self.request(frame)? {
            (_, Frame::CursorAck) => Ok(()),
            (request_id, other) => Err(unexpected(request_id, "CursorAck", &other)),
        }
    }

    /// Reads `consumer`'s read position in `channel`; `None` if it has none.
    pub fn cursor_get(
        &mut self,
        consumer: &str,
        channel: &str,
    ) -> Result<Option<u64>, ClientError> {
        let frame = Frame::CursorGet {
            consumer: consumer.to_owned(),
            channel: channel.to_owned(),
        };
        match self.request(frame)? {
            // Seqs start at 1, so the wire uses 0 for "no cursor".
            (_, Frame::CursorValue { seq: 0 }) => Ok(None),
            (_, Frame::CursorValue { seq }) => Ok(Some(seq)),
            (request_id, other) => Err(unexpected(request_id, "CursorValue", &other)),
        }
    }

    /// Sends `Ping` and waits for `Pong`; returns the round-trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.request(Frame::Ping)? {
            (_, Frame::Pong) => Ok(started.elapsed()),
            (request_id, other) => Err(unexpected(request_id, "Pong", &other)),
        }
    }

    /// The next delivery `(channel, messages)`: a queued one at once, otherwise the next to arrive
    /// within `timeout`. `Ok(None)` when none arrived in time.
    pub fn next_delivery(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(String, Vec<Message>)>, ClientError> {
        if let Some(delivery) = self.deliveries.pop_front() {
            return Ok(Some(delivery));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Some(envelope) = self.reader.read_until(deadline)? else {
                return Ok(None);
            };
            match envelope.frame {
                Frame::Deliver { channel, messages } => return Ok(Some((channel, messages))),
                Frame::Error {
                    code,
                    message,
                    temporary,
                } if envelope.request_id == 0 => {
                    return Err(ClientError::Server {
                        code,
                        message,
                        temporary,
                    })
                }
                other => log::warn!(
                    "discarding a {} frame for request {} that arrived after its call gave up",
                    other.name(),
                    envelope.request_id
                ),
            }
        }
    }

    /// Splits the connection for pipelined use. Deliveries queued so far come first out of the
    /// reader. Request ids are the caller's to choose from here on.
    pub fn into_split(self) -> (ClientWriter, ClientReader) {
        let mut reader = self.reader;
        // Queued deliveries happened before anything still unread, so they go first.
        let queued = self
            .deliveries
            .into_iter()
            .map(|(channel, messages)| Envelope {
                request_id: 0,
                frame: Frame::Deliver { channel, messages },
            });
        let mut pending: VecDeque<Envelope> = queued.collect();
        pending.append(&mut reader.pending);
        reader.pending = pending;
        (self.writer, reader)
    }

    /// Closes the connection in both directions.
    pub fn close(self) -> Result<(), ClientError> {
        self.writer.stream.shutdown(Shutdown::Both)?;
        Ok(())
    }

    fn next_request_id(&mut self) -> u32 {
        self.request_id_last = self.request_id_last.wrapping_add(1).max(1);
        self.request_id_last
    }

    /// Sends `frame` with a fresh request id and waits for the reply with that id, queueing
    /// deliveries that arrive first. An `Error` reply becomes `ClientError::Server`.
    fn request(&mut self, frame: Frame) -> Result<(u32, Frame), ClientError> {
        let request_id = self.next_request_id();
        let request = frame.name();
        self.writer.send(&Envelope { request_id, frame })?;
        let started = Instant::now();
        let deadline = started + self.reply_timeout;
        loop {
            let Some(envelope) = self.reader.read_until(deadline)? else {
                return Err(ClientError::Timeout {
                    request,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            };
            match envelope {
                Envelope {
                    request_id: 0,
                    frame: Frame::Deliver { channel, messages },
                } => {
                    // Queued even past the bound: a delivery is never
                    // dropped; the call gives up waiting instead.
                    self.deliveries.push_back((channel, messages));
                    if self.deliveries.len() > DELIVERIES_QUEUED_MAX {
                        return Err(ClientError::DeliveriesOverflow {
                            queued: self.deliveries.len(),
                        });
                    }
                }
                Envelope {
                    frame:
                        Frame::Error {
                            code,
                            message,
                            temporary,
                        },
                    request_id: id,
                } if id == request_id || id == 0 => {
                    return Err(ClientError::Server {
                        code,
                        message,
                        temporary,
                    });
                }
                Envelope { request_id: id, frame } if id == request_id => {
                    return Ok((request_id, frame));
                }
                Envelope { request_id: id, frame } => log::warn!(
                    "discarding a {} frame for request {id} while waiting for request {request_id}; \
                     a call that timed out may have been answered late",
                    frame.name()
                ),
            }
        }
    }
}

fn unexpected(request_id: u32, expected: &'static str, got: &Frame) -> ClientError {
    ClientError::UnexpectedReply {
        request_id,
        expected,
        got: got.name(),
    }
}

/// The sending half of a split connection: sends requests with caller-chosen ids and never waits
/// for replies.
pub struct ClientWriter {
    stream: TcpStream,
    /// Reused encode buffer, so sending allocates only when a frame is larger than any before.
    buffer: BytesMut,
    frame_bytes_max: u32,
}

impl ClientWriter {
    /// Gives up on a write that cannot go on for `timeout` (a server that
    /// stopped reading): the write fails instead of blocking for good.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        Ok(self.stream.set_write_timeout(timeout)?)
    }

    /// Sends any frame. Checks it is encodable and within the server's `frame_bytes_max` first;
    /// on failure nothing is sent. Frames queued with [`ClientWriter::queue`] go first.
    pub fn send(&mut self, envelope: &Envelope) -> Result<(), ClientError> {
        self.queue(envelope)?;
        self.flush()
    }

    /// Encodes a frame into the send buffer without writing it, so that many frames leave in
    /// one write; [`ClientWriter::flush`] writes them. Checked like [`ClientWriter::send`].
    pub fn queue(&mut self, envelope: &Envelope) -> Result<(), ClientError> {
        envelope.validate().map_err(ClientError::InvalidRequest)?;
        self.check_frame_size(envelope.encoded_len())?;
        envelope.encode(&mut self.buffer);
        Ok(())
    }

    /// Encodes a publish from borrowed fields into the send buffer, as [`ClientWriter::queue`]
    /// does for the `Publish` envelope with the same fields, without building the frame (no
    /// allocation). Checked like [`ClientWriter::send`].
    pub fn queue_publish_fields(
        &mut self,
        request_id: u32,
        fields: &PublishFields<'_>,
    ) -> Result<(), ClientError> {
        fields.validate().map_err(ClientError::InvalidRequest)?;
        self.check_frame_size(fields.encoded_len())?;
        fields.encode(request_id, &mut self.buffer);
        Ok(())
    }

    /// Refuses a frame of `encoded_len` bytes (length prefix included) that is over the
    /// server's `frame_bytes_max`.
    fn check_frame_size(&self, encoded_len: usize) -> Result<(), ClientError> {
        let length = encoded_len - LENGTH_BYTES;
        if length > self.frame_bytes_max as usize {
            return Err(ClientError::TooLarge {
                length,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        Ok(())
    }

    /// Writes every queued frame.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.buffer.is_empty() {
            let written = self.stream.write_all(&self.buffer);
            self.buffer.clear();
            written?;
        }
        Ok(())
    }

    /// Queues a publish with `request_id` (see [`ClientWriter::queue`]).
    pub fn queue_publish(
        &mut self,
        request_id: u32,
        request: &PublishRequest,
    ) -> Result<(), ClientError> {
        self.queue_publish_fields(request_id, &request.fields())
    }

    /// Sends a publish with `request_id`; its `PublishAck` (or `Error`) carries the same id.
    pub fn send_publish(
        &mut self,
        request_id: u32,
        request: &PublishRequest,
    ) -> Result<(), ClientError> {
        self.send(&Envelope {
            request_id,
            frame: request.to_frame(),
        })
    }

    /// Sends a ping with `request_id`.
    pub fn send_ping(&mut self, request_id: u32) -> Result<(), ClientError> {
        self.send(&Envelope {
            request_id,
            frame: Frame::Ping,
        })
    }

    /// The largest frame the server accepts, from its `Welcome`.
    pub fn server_frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Closes the sending direction; the server sees end of stream once it has read everything.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.stream.shutdown(Shutdown::Write)?;
        Ok(())
    }
}

/// The receiving half of a connection: yields every incoming envelope.
pub struct ClientReader {
    stream: TcpStream,
    /// Bytes received and not yet decoded.
    buffer: BytesMut,
    limits: Limits,
    /// Envelopes handed over by [`Client::into_split`], yielded before anything read after it.
    pending: VecDeque<Envelope>,
}

impl ClientReader {
    /// Takes the reader apart for use with an event loop: the socket, the bytes received but not
    /// yet decoded, and the envelopes already decoded (which come first).
    pub fn into_parts(self) -> (TcpStream, BytesMut, VecDeque<Envelope>) {
        (self.stream, self.buffer, self.pending)
    }

    fn new(stream: TcpStream) -> ClientReader {
        ClientReader {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            limits: Limits {
                frame_bytes_max: INCOMING_FRAME_BYTES_MAX,
            },
            pending: VecDeque::new(),
        }
    }

    /// The next envelope (a reply, a delivery or an error, as sent), waiting at most `timeout`.
    /// `Ok(None)` when nothing complete arrived in time; bytes of a partial frame are kept for the
    /// next call.
    pub fn read_envelope(&mut self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        self.read_until(Instant::now() + timeout)
    }

    fn read_until(&mut self, deadline: Instant) -> Result<Option<Envelope>, ClientError> {
        if let Some(envelope) = self.pending.pop_front() {
            return Ok(Some(envelope));
        }
        loop {
            if let Decoded::Complete { envelope, used } = decode(&self.buffer, &self.limits)? {
                self.buffer.advance(used);
                return Ok(Some(envelope));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A zero timeout means "block forever" to the OS, but `deadline - now` is never zero
            // here.
            self.stream.set_read_timeout(Some(deadline - now))?;
            let start = self.buffer.len();
            self.buffer.resize(start + READ_CHUNK_BYTES, 0);
            let result = self.stream.read(&mut self.buffer[start..]);
            let received = match &result {
                Ok(received) => *received,
                Err(_) => 0,
            };
            self.buffer.truncate(start + received);
            match result {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(error) if read_again(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Whether a failed read of a socket with a read timeout only means "nothing yet" (the timeout
/// passed, or a signal interrupted it): the caller reads again.
pub fn read_again(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    /// A one-connection fake server: accepts, then for every envelope it decodes calls `respond`,
    /// which returns the envelopes to send back. Each received envelope is also reported on the
    /// returned channel so that tests can check what the client sent.
    fn serve<F>(mut respond: F) -> (SocketAddr, mpsc::Receiver<Envelope>)
    where
        F: FnMut(&Envelope) -> Vec<Envelope> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let (sent, received) = mpsc::channel();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buffer = BytesMut::new();
            let mut chunk = [0u8; 4096];
            loop {
                match decode(&buffer, &Limits::default()).expect("client sends valid frames") {
                    Decoded::Complete { envelope, used } => {
                        buffer.advance(used);
                        let mut out = BytesMut::new();
                        for reply in respond(&envelope) {
                            reply.encode(&mut out);
                        }
                        let _ = sent.send(envelope);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                    Decoded::NeedMore { .. } => match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(count) => buffer.extend_from_slice(&chunk[..count]),
                    },
                }
            }
        });
        (address, received)
    }

    fn welcome(request_id: u32, frame_bytes_max: u32) -> Envelope {
        Envelope {
            request_id,
            frame: Frame::Welcome {
                version: PROTOCOL_VERSION,
                server_name: "fake".into(),
                frame_bytes_max,
            },
        }
    }

    fn reply(request_id: u32, frame: Frame) -> Vec<Envelope> {
        vec![Envelope { request_id, frame }]
    }

    fn message(seq: u64, body: &'static str) -> Message {
        Message {
            seq,
            body: Bytes::from_static(body.as_bytes()),
            sender: Bytes::from_static(b"alice"),
            ..Message::default()
        }
    }

    /// A fake server answering every request the way a real one would, with fixed values.
    fn answer(envelope: &Envelope) -> Vec<Envelope> {
        let id = envelope.request_id;
        match &envelope.frame {
            Frame::Hello { .. } => vec![welcome(id, 1 << 20)],
            Frame::Publish { ephemeral, .. } => reply(
                id,
                Frame::PublishAck {
                    seq: if *ephemeral { 0 } else { 42 },
                    offset: 7,
                    timestamp_ms: 1_700_000_000_000,
                    durable: !ephemeral,
                    duplicate: false,
                },
            ),
            Frame::Subscribe { channel, .. } => vec![
                // A delivery that overtakes the reply must be queued, not lost.
                Envelope {
                    request_id: 0,
                    frame: Frame::Deliver {
                        channel: channel.clone(),
                        messages: vec![message(41, "early")],
                    },
                },
                Envelope {
                    request_id: id,
                    frame: Frame::Subscribed { head_seq: 41 },
                },
            ],
            Frame::Unsubscribe { .. } => reply(id, Frame::Unsubscribed),
            Frame::History { channel, .. } => reply(
                id,
                Frame::HistoryPage {
                    channel: channel.clone(),
                    head_seq: 2,
                    messages: vec![message(1, "one"), message(2, "two")],
                },
            ),
            Frame::CursorSet { .. } => reply(id, Frame::CursorAck),
            Frame::CursorGet { consumer, .. } => reply(
                id,
                Frame::CursorValue {
                    seq: if consumer == "new" { 0 } else { 9 },
                },
            ),
            Frame::Ping => reply(id, Frame::Pong),
            other => panic!("fake server got {other:?}"),
        }
    }

    #[test]
    fn connect_sends_hello_and_reads_welcome() {
        let (address, received) = serve(answer);
        let client = Client::connect(address, "tester", "secret").expect("connect");
        assert_eq!(client.server_name(), "fake");
        assert_eq!(client.server_version(), PROTOCOL_VERSION);
        assert_eq!(client.server_frame_bytes_max(), 1 << 20);
        let hello = received.recv().expect("hello");
        assert_eq!(
            hello.frame,
            Frame::Hello {
                version: PROTOCOL_VERSION,
                client_name: "tester".into(),
                token: "secret".into()
            }
        );
        assert_ne!(hello.request_id, 0);
    }

    #[test]
    fn every_call_gets_its_reply() {
        let (address, received) = serve(answer);
        let mut client = Client::connect(address, "tester", "").expect("connect");
        let ack = client.publish("general", 0, "hello").expect("publish");
        assert_eq!(
            ack,
            PublishAck {
                seq: 42,
                offset: 7,
                timestamp_ms: 1_700_000_000_000,
                durable: true,
                duplicate: false
            }
        );
        let mut typing = PublishRequest::new("general", 8, Bytes::new());
        typing.ephemeral = true;
        typing.client_message_id = Bytes::from_static(b"m-1");
        assert_eq!(client.publish_with(typing).expect("publish").seq, 0);
        let page = client
            .history("general", HistoryQuery::Last, 50)
            .expect("history");
        assert_eq!(page.head_seq, 2);
        assert_eq!(page.messages.len(), 2);
        client
            .cursor_set("alice", "general", 9)
            .expect("cursor_set");
        assert_eq!(client.cursor_get("alice", "general").expect("get"), Some(9));
        assert_eq!(client.cursor_get("new", "general").expect("get"), None);
        client.ping().expect("ping");
        client.unsubscribe("general").expect("unsubscribe");

        let sent: Vec<Envelope> = received.try_iter().collect();
        let ids: Vec<u32> = sent.iter().map(|envelope| envelope.request_id).collect();
        assert_eq!(ids, (1..=ids.len() as u32).collect::<Vec<_>>());
        assert!(matches!(
            &sent[2].frame,
            Frame::Publish { ephemeral: true, kind: 8, client_message_id, .. } if client_message_id == "m-1"
        ));
    }

    /// A call that finds the delivery queue full fails and says why, and the
    /// delivery that passed the bound is kept (it was dropped): every one is
    /// read in order afterwards, and the connection goes on.
    #[test]
    fn a_full_delivery_queue_fails_the_call_and_loses_nothing() {
        let mut pings = 0;
        let (address, _received) = serve(move |envelope| match envelope.frame {
            Frame::Ping => {
                pings += 1;
                let mut out = Vec::new();
                if pings == 1 {
                    out.extend((1..=DELIVERIES_QUEUED_MAX as u64 + 1).map(|seq| Envelope {
                        request_id: 0,
                        frame: Frame::Deliver {
                            channel: "busy".into(),
                            messages: vec![message(seq, "m")],
                        },
                    }));
                }
                out.extend(reply(envelope.request_id, Frame::Pong));
                out
            }
            _ => answer(envelope),
        });
        let mut client = Client::connect(address, "tester", "").expect("connect");
        let error = client.ping().unwrap_err();
        assert!(
            matches!(error, ClientError::DeliveriesOverflow { queued } if queued == DELIVERIES_QUEUED_MAX + 1),
            "{error}"
        );
        assert!(error.to_string().contains("outcome is unknown"), "{error}");
        for seq in 1..=DELIVERIES_QUEUED_MAX as u64 + 1 {
            let (_, messages) = client
                .next_delivery(Duration::from_secs(5))
                .expect("read")
                .expect("a queued delivery");
            assert_eq!(messages[0].seq, seq);
        }
        client.ping().expect("the connection goes on");
    }

    #[test]
    fn deliveries_arriving_before_a_reply_are_queued() {
        let (address, _received) = serve(answer);
        let mut client = Client::connect(address, "tester", "").expect("connect");
        let head_seq = client
            .subscribe("general", SubscribeStart::LastN(1))
            .expect("subscribe");
        assert_eq!(head_seq, 41);
        client.ping().expect("ping");
        let (channel, messages) = client
            .next_delivery(Duration::from_secs(5))
            .expect("read")
            .expect("the queued delivery");
        assert_eq!(channel, "general");
        assert_eq!(messages, vec![message(41, "early")]);
        assert_eq!(
            client
                .next_delivery(Duration::from_millis(50))
                .expect("read"),
            None
        );
    }

    #[test]
    fn server_errors_become_client_errors() {
        let (address, _received) = serve(|envelope| match envelope.frame {
            Frame::Hello { .. } => vec![welcome(envelope.request_id, 1 << 20)],
            _ => reply(
                envelope.request_id,
                Frame::Error {
                    code: ErrorCode::NotFound,
                    temporary: false,
                    message: "no such channel".into(),
                },
            ),
        });
        let mut client = Client::connect(address, "tester", "").expect("connect");
        match client.history("missing", HistoryQuery::From(1), 10) {
            Err(ClientError::Server { code, message, .. }) => {
                assert_eq!(code, ErrorCode::NotFound);
                assert_eq!(message, "no such channel");
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        // The connection is still usable after a request-level error.
        assert!(matches!(
            client.ping(),
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            })
        ));
    }

    #[test]
    fn a_denied_hello_fails_connect() {
        let (address, _received) = serve(|envelope| {
            reply(
                envelope.request_id,
                Frame::Error {
                    code: ErrorCode::Denied,
                    temporary: false,
                    message: "bad token".into(),
                },
            )
        });
        assert!(matches!(
            Client::connect(address, "tester", "wrong"),
            Err(ClientError::Server {
                code: ErrorCode::Denied,
                ..
            })
        ));
    }

    #[test]
    fn a_connection_level_error_ends_the_wait() {
        let (address, _received) = serve(|envelope| match envelope.frame {
            Frame::Hello { .. } => vec![welcome(envelope.request_id, 1 << 20)],
            _ => reply(
                0,
                Frame::Error {
                    code: ErrorCode::SlowConsumer,
                    temporary: true,
                    message: "too slow".into(),
                },
            ),
        });
        let mut client = Client::connect(address, "tester", "").expect("connect");
        assert!(matches!(
            client.ping(),
            Err(ClientError::Server {
                code: ErrorCode::SlowConsumer,
                ..
            })
        ));
    }

    #[test]
    fn a_missing_reply_times_out_and_a_late_one_is_discarded() {
        let (address, _received) = serve(|envelope| match envelope.frame {
            Frame::Hello { .. } => vec![welcome(envelope.request_id, 1 << 20)],
            Frame::Ping if envelope.request_id == 2 => vec![],
            // Answer request 3 with the late reply to request 2 first.
            _ => vec![
                Envelope {
                    request_id: 2,
                    frame: Frame::Pong,
                },
                Envelope {
                    request_id: envelope.request_id,
                    frame: Frame::Pong,
                },
            ],
        });
        let mut client = Client::connect(address, "tester", "").expect("connect");
        client.set_reply_timeout(Duration::from_millis(100));
        assert!(matches!(
            client.ping(),
            Err(ClientError::Timeout {
                request: "Ping",
                ..
            })
        ));
        client.ping().expect("the next ping is answered");
    }

    #[test]
    fn a_closed_connection_is_reported() {
        let (address, _received) = serve(|envelope| match envelope.frame {
            Frame::Hello { .. } => vec![welcome(envelope.request_id, 1 << 20)],
            _ => panic!("the fake server hangs up"),
        });
        let mut client = Client::connect(address, "tester", "").expect("connect");
        assert!(matches!(
            client.ping(),
            Err(ClientError::Closed) | Err(ClientError::Io(_))
        ));
    }

    #[test]
    fn oversize_and_invalid_requests_are_not_sent() {
        let (address, received) = serve(|envelope| match envelope.frame {
            Frame::Hello { .. } => vec![welcome(envelope.request_id, 100)],
            _ => reply(envelope.request_id, Frame::Pong),
        });
        let mut client = Client::connect(address, "tester", "").expect("connect");
        assert!(matches!(
            client.publish("general", 0, vec![0u8; 200]),
            Err(ClientError::TooLarge {
                frame_bytes_max: 100,
                ..
            })
        ));
        let mut request = PublishRequest::new("general", 0, "x");
        request.client_message_id = Bytes::from(vec![0u8; 256]);
        assert!(matches!(
            client.publish_with(request),
            Err(ClientError::InvalidRequest(WireError::FieldTooLong {
                field: "client_message_id",
                ..
            }))
        ));
        client.ping().expect("ping");
        let frames: Vec<&'static str> = received
            .try_iter()
            .map(|envelope| envelope.frame.name())
            .collect();
        assert_eq!(frames, ["Hello", "Ping"]);
    }

    #[test]
    fn the_split_form_pipelines_requests() {
        let (address, _received) = serve(answer);
        let mut client = Client::connect(address, "tester", "").expect("connect");
        client
            .subscribe("general", SubscribeStart::Live)
            .expect("subscribe");
        let (mut writer, mut reader) = client.into_split();
        let request = PublishRequest::new("general", 0, "load");
        for request_id in 100..110 {
            writer.send_publish(request_id, &request).expect("send");
        }
        writer.send_ping(110).expect("send");
        // The delivery queued during subscribe comes first, then every reply in order.
        let first = reader
            .read_envelope(Duration::from_secs(5))
            .expect("read")
            .expect("the queued delivery");
        assert!(matches!(first.frame, Frame::Deliver { .. }));
        for request_id in 100..110 {
            let envelope = reader
                .read_envelope(Duration::from_secs(5))
                .expect("read")
                .expect("an ack");
            assert_eq!(envelope.request_id, request_id);
            assert!(matches!(envelope.frame, Frame::PublishAck { seq: 42, .. }));
        }
        let pong = reader
            .read_envelope(Duration::from_secs(5))
            .expect("read")
            .expect("a pong");
        assert_eq!(pong.request_id, 110);
        assert_eq!(
            reader
                .read_envelope(Duration::from_millis(20))
                .expect("read"),
            None
        );
    }
}
