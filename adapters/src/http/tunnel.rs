//! Another protocol carried in WebSocket binary frames (MQTT over WebSocket
//! at `/mqtt`): the inner protocol's session runs unchanged on the bytes of
//! the binary frames, and everything it writes goes out wrapped in binary
//! frames. WebSocket frames may split the inner protocol's packets
//! anywhere; the inner session sees one byte stream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use starling_broker::{Close, Protocol, Reply, Session, SessionContext, SessionEvent};
use starling_protocol::{ErrorCode, Message};

use crate::ws::{binary_frame, close_code, WsFraming, WsLimits, WsMessage};

/// Deliveries of a tunnelled protocol: its own encoding, in a binary frame.
pub struct TunnelDeliveries {
    inner: Arc<dyn Protocol>,
}

impl TunnelDeliveries {
    pub fn new(inner: Arc<dyn Protocol>) -> TunnelDeliveries {
        TunnelDeliveries { inner }
    }
}

impl Protocol for TunnelDeliveries {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        unreachable!("tunnels start as HTTP connections")
    }

    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes {
        wrap(self.inner.encode_delivery(channel, messages))
    }

    fn per_connection_delivery(&self) -> bool {
        self.inner.per_connection_delivery()
    }
}

/// Wraps `bytes` in one binary frame (nothing for nothing).
fn wrap(bytes: Bytes) -> Bytes {
    if bytes.is_empty() {
        return bytes;
    }
    let mut out = BytesMut::with_capacity(bytes.len() + 10);
    binary_frame(&bytes, &mut out);
    out.freeze()
}

/// One tunnelled connection: WebSocket framing around an inner session.
pub struct Tunnel {
    framing: WsFraming,
    inner: Box<dyn Session>,
    /// Bytes of binary frames the inner session has not consumed yet.
    buffer: BytesMut,
}

impl Tunnel {
    pub fn new(inner: Box<dyn Session>, limits: WsLimits) -> Tunnel {
        Tunnel {
            framing: WsFraming::server(limits),
            inner,
            buffer: BytesMut::new(),
        }
    }

    /// Runs an inner-session callback and wraps what it wrote; a protocol
    /// switch it asks for is wrapped too.
    fn around(
        &mut self,
        context: &mut SessionContext<'_>,
        call: impl FnOnce(&mut dyn Session, &mut BytesMut, &mut SessionContext<'_>) -> Result<(), Close>,
    ) -> Result<(), Close> {
        let start = context.out().len();
        let result = call(&mut *self.inner, &mut self.buffer, context);
        let written = context.out().split_off(start);
        if !written.is_empty() {
            binary_frame(&written, context.out());
        }
        if let Some(protocol) = context.take_protocol_switch() {
            context.set_protocol(Arc::new(TunnelDeliveries::new(protocol)));
        }
        result
    }

    pub fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let mut data = Vec::new();
        let mut text_frame = false;
        // Control frames (pongs, the Close echo) go out after what the
        // inner session answers to what came before them: nothing may
        // follow a Close.
        let mut control = BytesMut::new();
        let received = self.framing.receive(input, &mut control, |message, _| {
            match message {
                WsMessage::Binary(bytes) => data.push(bytes),
                WsMessage::Text(_) => text_frame = true,
            }
            Ok(())
        });
        for bytes in data {
            self.buffer.extend_from_slice(&bytes);
        }
        if !self.buffer.is_empty() {
            let served = self.around(context, |inner, buffer, context| {
                inner.on_input(buffer, context)
            });
            if served.is_err() {
                context.out().extend_from_slice(&control);
                return served;
            }
        }
        context.out().extend_from_slice(&control);
        if text_frame && received.is_ok() {
            let closed = self.framing.close(
                close_code::UNSUPPORTED_DATA,
                "this endpoint carries MQTT in binary frames; text frames are not allowed",
                context.out(),
            );
            return Err(Close {
                reason: closed.reason,
            });
        }
        received.map_err(|closed| Close {
            reason: closed.reason,
        })
    }

    pub fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        self.around(context, |inner, _, context| {
            inner.on_reply(request_id, reply, context)
        })
    }

    pub fn on_timer(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        self.around(context, |inner, _, context| inner.on_timer(context))
    }

    pub fn on_event(
        &mut self,
        event: SessionEvent,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        self.around(context, |inner, _, context| inner.on_event(event, context))
    }

    pub fn on_delivery(
        &mut self,
        channel: &str,
        messages: &[Message],
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Bytes>, Close> {
        let mut own = None;
        self.around(context, |inner, _, context| {
            own = inner.on_delivery(channel, messages, context)?;
            Ok(())
        })?;
        Ok(own.map(wrap))
    }

    /// Whether the client identified itself to the tunnelled protocol.
    pub fn identified(&self) -> bool {
        self.inner.identified()
    }

    pub fn delivery_room(&self) -> usize {
        self.inner.delivery_room()
    }

    pub fn on_server_close(&mut self, code: ErrorCode, reason: &str, out: &mut BytesMut) {
        let mut inner = BytesMut::new();
        self.inner.on_server_close(code, reason, &mut inner);
        if !inner.is_empty() {
            binary_frame(&inner, out);
        }
        self.framing.close(close_code::GOING_AWAY, reason, out);
    }

    /// Closes the WebSocket with `code` (the server ends the tunnel).
    pub fn close(&mut self, code: u16, reason: &str, out: &mut BytesMut) {
        self.framing.close(code, reason, out);
    }

    pub fn on_closed(&mut self, context: &mut SessionContext<'_>) {
        let _ = self.around(context, |inner, _, context| {
            inner.on_closed(context);
            Ok(())
        });
    }
}
