//! Starling's core: one event loop (shard) per core, each owning its
//! connections and a fixed set of log partitions; routing of channels to
//! partitions; subscriptions with gap-free catch-up; durable cursors;
//! idempotent publish; the authorization hook; and the embeddable [`Engine`].
//!
//! Contract: adapters turn their wire protocol into [`Command`]s through a
//! [`Session`] and get [`Reply`]s and encoded deliveries back. The broker
//! never knows which protocol a client speaks. An acknowledgement means the
//! record is durable under the configured [`Durability`] policy.
//!
//! ```text
//!  client ─bytes─▶ Session (adapter) ─Command─▶ shard A ──inbox──▶ shard B (owns channel)
//!                                                                   │ append, group commit
//!  client ◀─bytes─ Session ◀─Reply/Deliver─ shard A ◀──inbox─────────┘ ack + fan-out
//! ```
//! See `docs/ARCHITECTURE.md` and `docs/THREADS.md`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod command;
pub mod config;
pub mod engine;
pub mod limits;
mod mailbox;
pub mod metrics;
pub mod pattern;
pub mod routing;
pub mod security;
pub mod session;
mod shard;
pub mod tls;

pub use auth::{Action, Authorizer, Denied, LoopbackAuthorizer, Principal, SYSTEM_ROLE};
pub use command::{BrokerError, Command, Reply};
pub use config::{Durability, EngineConfig, RetentionConfig, SlowConsumerPolicy};
pub use engine::{
    set_idle_memory_hook, Connector, Engine, EngineError, KeyRotation, Listener, LocalClient,
    LocalEvent, MetricsHandle, Notifier, Published,
};
pub use mailbox::ConnRef;
pub use metrics::Metrics;
pub use routing::Routing;
pub use session::{Close, Protocol, Session, SessionContext, SessionEvent, FETCH_ROOM_MIN};
pub use tls::{ClientAuth, ClientCertUser, TlsAcceptor, TlsError, TlsFiles};
