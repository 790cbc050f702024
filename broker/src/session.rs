//! How an adapter plugs into a shard: a [`Protocol`] makes one [`Session`] per
//! accepted connection. The shard owns the socket and the buffers; the session
//! only turns bytes into [`Command`]s and replies into bytes. This is the
//! whole surface an adapter sees, so the broker never branches on a protocol.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use starling_protocol::Message;

use crate::auth::{Authorizer, Denied, Principal};
use crate::command::{Command, Reply};

/// A wire protocol served on a listener.
pub trait Protocol: Send + Sync + 'static {
    /// Short name for logs and metrics (`native`, `mqtt`, …).
    fn name(&self) -> &'static str;
    /// A new session for a connection accepted from `peer`.
    fn new_session(&self, peer: SocketAddr) -> Box<dyn Session>;
    /// Encodes one delivery of `messages` (all of one channel). The shard calls
    /// this once per protocol per delivery and shares the bytes with every
    /// subscriber of that protocol, so it must not depend on session state.
    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes;
}

/// Why a session asks the shard to close its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub reason: String,
}

/// One connection's protocol state.
pub trait Session: Send {
    /// Consumes the complete frames at the front of `input`, leaving a partial
    /// frame in place. Requests go to [`SessionContext::submit`]; bytes to send
    /// go to [`SessionContext::out`]. Returning `Err` closes the connection
    /// after what was written to `out` has been sent.
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close>;
    /// Encodes the reply to request `request_id` into `out`.
    fn on_reply(&mut self, request_id: u32, reply: &Reply, out: &mut BytesMut);
    /// Encodes a last word to the client before the server closes the
    /// connection for `reason` (slow consumer, shutdown, …).
    fn on_server_close(
        &mut self,
        code: starling_protocol::ErrorCode,
        reason: &str,
        out: &mut BytesMut,
    );
}

/// What a session may touch while it handles input.
pub struct SessionContext<'a> {
    pub(crate) out: &'a mut BytesMut,
    pub(crate) commands: &'a mut Vec<(u32, Command)>,
    pub(crate) principal: &'a mut Option<Principal>,
    pub(crate) authorizer: &'a dyn Authorizer,
    pub(crate) peer: SocketAddr,
}

impl<'a> SessionContext<'a> {
    /// Builds a context; the shard does this, and tests of adapters may too.
    pub fn new(
        out: &'a mut BytesMut,
        commands: &'a mut Vec<(u32, Command)>,
        principal: &'a mut Option<Principal>,
        authorizer: &'a dyn Authorizer,
        peer: SocketAddr,
    ) -> SessionContext<'a> {
        SessionContext {
            out,
            commands,
            principal,
            authorizer,
            peer,
        }
    }

    /// Bytes to send to the client, in order.
    pub fn out(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Hands a request to the broker. The broker answers it through
    /// [`Session::on_reply`] with the same `request_id`.
    pub fn submit(&mut self, request_id: u32, command: Command) {
        self.commands.push((request_id, command));
    }

    /// Checks the client's credentials and, if they are good, makes the
    /// resulting principal the connection's.
    pub fn authenticate(&mut self, client_name: &str, token: &str) -> Result<&Principal, Denied> {
        let principal = self
            .authorizer
            .authenticate(client_name, token, Some(self.peer))?;
        Ok(self.principal.insert(principal))
    }

    /// The connection's principal, once authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}
