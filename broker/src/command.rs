//! The one vocabulary every adapter speaks to the broker: a [`Command`] in,
//! a [`Reply`] (per request) and deliveries out. The broker never knows which
//! wire protocol a command came from.

use std::sync::Arc;

use bytes::Bytes;
use starling_protocol::{ErrorCode, HistoryQuery, Message, SubscribeStart, Utf8Bytes};
use thiserror::Error;

/// Channel names starting with this are reserved for the engine itself
/// (cursors, later metadata); clients cannot publish to them directly.
pub const RESERVED_PREFIX: char = '$';
/// Longest channel name accepted, in bytes.
pub const CHANNEL_BYTES_MAX: usize = 1024;
/// Longest client message id accepted, in bytes (it is an idempotency key).
pub const CLIENT_MESSAGE_ID_BYTES_MAX: usize = 64;
/// Largest header block of one message.
pub const HEADERS_BYTES_MAX: usize = 16 * 1024;

/// A request from a client, already authenticated; `request_id` is echoed in
/// the reply.
#[derive(Clone, Debug)]
pub enum Command {
    Publish {
        /// From the native protocol, a slice of the buffer the frame was
        /// read into: no allocation per publish.
        channel: Utf8Bytes,
        /// Ephemeral messages (typing, presence) are delivered live and never
        /// stored.
        ephemeral: bool,
        kind: u8,
        client_message_id: Bytes,
        relation: u64,
        headers: Bytes,
        body: Bytes,
    },
    Subscribe {
        channel: String,
        start: SubscribeStart,
    },
    Unsubscribe {
        channel: String,
    },
    /// Live messages of every channel matching `pattern` (see
    /// [`crate::pattern`]), from the moment the reply arrives; no catch-up.
    SubscribePattern {
        pattern: String,
    },
    UnsubscribePattern {
        pattern: String,
    },
    History {
        channel: String,
        query: HistoryQuery,
        limit: u32,
    },
    CursorSet {
        consumer: String,
        channel: String,
        seq: u64,
    },
    CursorGet {
        consumer: String,
        channel: String,
    },
}

impl Command {
    /// The channel the command acts on.
    pub fn channel(&self) -> &str {
        match self {
            Command::Publish { channel, .. } => channel,
            Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel }
            | Command::SubscribePattern { pattern: channel }
            | Command::UnsubscribePattern { pattern: channel }
            | Command::History { channel, .. }
            | Command::CursorSet { channel, .. }
            | Command::CursorGet { channel, .. } => channel,
        }
    }
}

/// The answer to one command.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Published {
        seq: u64,
        offset: u64,
        timestamp_ms: u64,
        /// True when the record is fdatasynced under the configured policy.
        durable: bool,
        /// True when this was a retry and the original's seq is returned.
        duplicate: bool,
    },
    Subscribed {
        head_seq: u64,
    },
    Unsubscribed,
    History {
        channel: Arc<str>,
        head_seq: u64,
        messages: Vec<Message>,
    },
    CursorAck,
    Cursor {
        seq: u64,
    },
    Error(BrokerError),
}

/// Why the broker refused or failed a request. Each maps to a wire error code.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BrokerError {
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("{what} is {size} bytes, over the limit of {limit} bytes; send less or raise the limit in the server configuration")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("already subscribed to channel {0:?} on this connection; unsubscribe first")]
    AlreadySubscribed(String),
    #[error("not subscribed to channel {0:?} on this connection")]
    NotSubscribed(String),
    /// The answer to a subscribe whose connection unsubscribed the channel
    /// before the subscription's first page came (wire code: NotSubscribed).
    #[error("the subscription to channel {0:?} was ended by an unsubscribe before it started; subscribe again if it is still wanted")]
    EndedBeforeStart(String),
    #[error("the log of partition {partition} stopped accepting writes after a storage failure ({reason}); fix the disk and restart the server")]
    StorageFailed { partition: u32, reason: String },
    #[error("the server is shutting down; reconnect to another node or retry later")]
    ShuttingDown,
    #[error("rate limit: {0}; slow down and retry")]
    RateLimited(String),
    #[error("the disk holding the log ({path}) has {free_bytes} bytes free, less than engine.disk_free_min_bytes = {min_bytes}: publishes are refused until there is room again (nothing was stored); free space on it, grow it or lower the retention, then retry")]
    StorageFull {
        path: String,
        free_bytes: u64,
        min_bytes: u64,
    },
}

impl BrokerError {
    /// The wire error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Denied(_) => ErrorCode::Denied,
            BrokerError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            BrokerError::TooLarge { .. } => ErrorCode::TooLarge,
            BrokerError::AlreadySubscribed(_) => ErrorCode::AlreadySubscribed,
            BrokerError::NotSubscribed(_) | BrokerError::EndedBeforeStart(_) => {
                ErrorCode::NotSubscribed
            }
            BrokerError::StorageFailed { .. } => ErrorCode::StorageFailed,
            BrokerError::ShuttingDown => ErrorCode::Unavailable,
            BrokerError::RateLimited(_) => ErrorCode::RateLimited,
            BrokerError::StorageFull { .. } => ErrorCode::StorageFull,
        }
    }

    /// True when the same request may succeed if retried later.
    pub fn temporary(&self) -> bool {
        matches!(
            self,
            BrokerError::ShuttingDown
                | BrokerError::RateLimited(_)
                | BrokerError::StorageFull { .. }
        )
    }
}

/// Checks the shape of a command before it is routed (sizes, names, reserved
/// channels). Limits come from the engine configuration.
/// `system` says the request comes from [`crate::Principal::system`], which may
/// append to reserved channels (other than cursors, which have their own
/// commands).
pub fn validate(command: &Command, body_bytes_max: u32, system: bool) -> Result<(), BrokerError> {
    if let Command::SubscribePattern { pattern } | Command::UnsubscribePattern { pattern } = command
    {
        return crate::pattern::validate(pattern);
    }
    check_channel_name(command.channel())?;
    match command {
        Command::Publish {
            channel,
            client_message_id,
            headers,
            body,
            ..
        } => {
            let cursor = channel.starts_with(CURSOR_PREFIX);
            if channel.starts_with(RESERVED_PREFIX) && (!system || cursor) {
                return Err(BrokerError::InvalidArgument(format!(
                    "channel {channel:?} is reserved: names starting with '{RESERVED_PREFIX}' belong to the server"
                )));
            }
            check_size(
                "client message id",
                client_message_id.len(),
                CLIENT_MESSAGE_ID_BYTES_MAX,
            )?;
            check_size("message headers", headers.len(), HEADERS_BYTES_MAX)?;
            check_size("message body", body.len(), body_bytes_max as usize)?;
        }
        Command::CursorSet { consumer, .. } | Command::CursorGet { consumer, .. } => {
            // The size first: the messages below quote the name.
            check_size("consumer name", consumer.len(), CHANNEL_BYTES_MAX)?;
            if consumer.is_empty() || consumer.contains('/') {
                return Err(BrokerError::InvalidArgument(format!(
                    "consumer name {consumer:?} must be non-empty and contain no '/'"
                )));
            }
        }
        Command::History { limit, .. } if *limit == 0 => {
            return Err(BrokerError::InvalidArgument(
                "history limit must be at least 1".to_string(),
            ));
        }
        _ => {}
    }
    Ok(())
}

fn check_channel_name(channel: &str) -> Result<(), BrokerError> {
    if channel.is_empty() {
        return Err(BrokerError::InvalidArgument(
            "channel name is empty; name the channel".to_string(),
        ));
    }
    // The size first: the message below quotes the name (escaped, up to
    // six times longer).
    check_size("channel name", channel.len(), CHANNEL_BYTES_MAX)?;
    if channel.chars().any(|c| c.is_control()) {
        return Err(BrokerError::InvalidArgument(format!(
            "channel name {channel:?} contains control characters"
        )));
    }
    Ok(())
}

fn check_size(what: &'static str, size: usize, limit: usize) -> Result<(), BrokerError> {
    if size > limit {
        Err(BrokerError::TooLarge { what, size, limit })
    } else {
        Ok(())
    }
}

/// Where cursors are stored.
pub const CURSOR_PREFIX: &str = "$cursor/";

/// The reserved channel that stores the cursor of `consumer` on `channel`:
/// `$cursor/<consumer>/<channel>`, or, when that is longer than a channel
/// name may be (both may be 1,024 bytes), `$cursor/#<SHA-256 of
/// "<consumer>/<channel>" in hex>` (no `/` after the consumer part, so it
/// is never one of the first kind).
pub fn cursor_channel(consumer: &str, channel: &str) -> String {
    let name = format!("{CURSOR_PREFIX}{consumer}/{channel}");
    if name.len() <= CHANNEL_BYTES_MAX {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&name.as_bytes()[CURSOR_PREFIX.len()..]);
    format!(
        "{CURSOR_PREFIX}#{}",
        data_encoding::HEXLOWER.encode(&digest)
    )
}
