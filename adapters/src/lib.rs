//! Starling's front ends. Each adapter turns its wire protocol into broker
//! [`Command`](starling_broker::Command)s through a
//! [`Session`](starling_broker::Session) and turns replies and deliveries back
//! into frames. Adapters depend on the broker; the broker never depends on
//! an adapter.
//!
//! - [`native`]: the length-prefixed binary protocol of `starling-protocol`.
//! - [`client`]: a blocking Rust client of the native protocol, used by the
//!   CLI, the benches and the tests.

#![forbid(unsafe_code)]

pub mod background;
pub mod chat;
pub mod client;
pub mod http;
pub mod mqtt;
pub mod native;
pub mod sys_topics;
pub mod ws;
