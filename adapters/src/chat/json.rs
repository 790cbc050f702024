//! The JSON shapes of the chat protocol: requests, errors, and messages as
//! clients see them (see `docs/PROTOCOL.md`, "JSON chat protocol").

use std::fmt::Write as _;

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_broker::BrokerError;
use starling_protocol::{kind, Message};

use super::model::Visibility;

/// Default and largest page of `history`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
pub const HISTORY_LIMIT_MAX: u32 = 500;
/// Default page of `thread`.
pub const THREAD_LIMIT_DEFAULT: u32 = 100;

/// One request, after the envelope's `id` was taken off. It serializes back
/// to the same JSON shape (the fuzzer checks decode → encode → decode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Connect {
        token: String,
        #[serde(default)]
        client: Option<String>,
    },
    Ping {},
    Subscribe {
        channel: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        last: Option<u32>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        text: String,
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        reply_to: Option<u64>,
    },
    Edit {
        channel: String,
        seq: u64,
        text: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    Delete {
        channel: String,
        seq: u64,
        #[serde(default)]
        client_id: Option<String>,
    },
    React {
        channel: String,
        seq: u64,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
    Typing {
        channel: String,
    },
    Presence {
        status: String,
    },
    History {
        channel: String,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Thread {
        channel: String,
        root: u64,
        #[serde(default)]
        limit: Option<u32>,
    },
    Read {
        channel: String,
        seq: u64,
    },
    ReadBy {
        channel: String,
        seq: u64,
    },
    ChannelCreate {
        channel: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        visibility: Option<Visibility>,
        #[serde(default)]
        topic: Option<String>,
        #[serde(default)]
        members: Vec<String>,
    },
    Direct {
        users: Vec<String>,
    },
    ChannelRename {
        channel: String,
        name: String,
    },
    ChannelTopic {
        channel: String,
        topic: String,
    },
    ChannelInvite {
        channel: String,
        user: String,
    },
    ChannelRemove {
        channel: String,
        user: String,
    },
    ChannelJoin {
        channel: String,
    },
    ChannelLeave {
        channel: String,
    },
    ChannelInfo {
        channel: String,
    },
    Members {
        channel: String,
    },
    Channels {},
    Directory {},
}

impl Request {
    /// The chat channel the request acts on, if it names one.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Request::Subscribe { channel, .. }
            | Request::Unsubscribe { channel }
            | Request::Publish { channel, .. }
            | Request::Edit { channel, .. }
            | Request::Delete { channel, .. }
            | Request::React { channel, .. }
            | Request::Typing { channel }
            | Request::History { channel, .. }
            | Request::Thread { channel, .. }
            | Request::Read { channel, .. }
            | Request::ReadBy { channel, .. }
            | Request::ChannelCreate { channel, .. }
            | Request::ChannelRename { channel, .. }
            | Request::ChannelTopic { channel, .. }
            | Request::ChannelInvite { channel, .. }
            | Request::ChannelRemove { channel, .. }
            | Request::ChannelJoin { channel }
            | Request::ChannelLeave { channel }
            | Request::ChannelInfo { channel }
            | Request::Members { channel } => Some(channel),
            Request::Connect { .. }
            | Request::Ping {}
            | Request::Presence { .. }
            | Request::Direct { .. }
            | Request::Channels {}
            | Request::Directory {} => None,
        }
    }
}

/// A failed request, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatError {
    pub code: &'static str,
    pub message: String,
    pub temporary: bool,
}

impl ChatError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
            temporary: false,
        }
    }

    pub fn malformed(message: impl Into<String>) -> ChatError {
        ChatError::new("malformed", message)
    }

    pub fn invalid(message: impl Into<String>) -> ChatError {
        ChatError::new("invalid_argument", message)
    }

    pub fn denied(message: impl Into<String>) -> ChatError {
        ChatError::new("denied", message)
    }

    pub fn not_found(message: impl Into<String>) -> ChatError {
        ChatError::new("not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ChatError {
        ChatError {
            temporary: true,
            ..ChatError::new("unavailable", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> ChatError {
        ChatError::new("internal", message)
    }

    /// The HTTP status that goes with this error.
    pub fn http_status(&self) -> u16 {
        match self.code {
            "malformed" | "invalid_argument" => 400,
            "unauthenticated" => 401,
            "denied" => 403,
            "not_found" => 404,
            "already_subscribed" | "already_exists" => 409,
            "too_large" => 413,
            "rate_limited" => 429,
            "unavailable" | "storage_failed" => 503,
            "storage_full" => 507,
            _ => 500,
        }
    }
}

impl From<BrokerError> for ChatError {
    fn from(error: BrokerError) -> ChatError {
        let code = match &error {
            BrokerError::Denied(_) => "denied",
            BrokerError::InvalidArgument(_) => "invalid_argument",
            BrokerError::TooLarge { .. } => "too_large",
            BrokerError::AlreadySubscribed(_) => "already_subscribed",
            BrokerError::NotSubscribed(_) | BrokerError::EndedBeforeStart(_) => "not_subscribed",
            BrokerError::StorageFailed { .. } => "storage_failed",
            BrokerError::ShuttingDown => "unavailable",
            BrokerError::RateLimited(_) => "rate_limited",
            BrokerError::StorageFull { .. } => "storage_full",
        };
        ChatError {
            code,
            message: error.to_string(),
            temporary: error.temporary(),
        }
    }
}

/// Splits a request envelope into its id and request. An envelope without a
/// usable id gets id 0 in the error reply.
pub fn parse_request(text: &str) -> Result<(u64, Request), (u64, ChatError)> {
    let mut value: Value = serde_json::from_str(text).map_err(|error| {
        (
            0,
            ChatError::malformed(format!("the frame is not JSON: {error}")),
        )
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err((0, ChatError::malformed("a request must be a JSON object")));
    };
    let id = match object.remove("id") {
        Some(Value::Number(number)) => match number.as_u64() {
            Some(id) if id > 0 && id <= u64::from(u32::MAX) => id,
            _ => {
                return Err((
                    0,
                    ChatError::malformed("`id` must be an integer from 1 to 4294967295"),
                ))
            }
        },
        Some(_) => return Err((0, ChatError::malformed("`id` must be a number"))),
        None => return Err((0, ChatError::malformed("the request has no `id`"))),
    };
    let request = serde_json::from_value::<Request>(value).map_err(|error| {
        (
            id,
            ChatError::malformed(format!(
                "bad request: {error}; see docs/PROTOCOL.md for the fields of each type"
            )),
        )
    })?;
    Ok((id, request))
}

/// The request as a JSON text with its `id` (decoding it gives back `id` and
/// `request`).
pub fn request_text(id: u64, request: &Request) -> String {
    let mut value = serde_json::to_value(request).expect("a request serializes");
    value["id"] = json!(id);
    value.to_string()
}

/// `{"id":…,"result":…}`
pub fn reply_text(id: u64, result: &Result<Value, ChatError>) -> String {
    match result {
        Ok(value) => json!({ "id": id, "result": value }).to_string(),
        Err(error) => json!({ "id": id, "error": error }).to_string(),
    }
}

/// The client-facing name of a record kind.
pub fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        kind::MESSAGE => "message",
        kind::EDIT => "edit",
        kind::DELETE => "delete",
        kind::REACTION_ADD => "reaction_add",
        kind::REACTION_REMOVE => "reaction_remove",
        kind::REPLY => "reply",
        kind::CHANNEL_EVENT => "channel_event",
        kind::CURSOR => "read",
        kind::TYPING => "typing",
        kind::PRESENCE => "presence",
        _ => return None,
    })
}

/// Appends `message` as a JSON object. Written by hand rather than through a
/// `Value`, because deliveries encode every message once per core and this
/// is on the hot path.
pub fn write_message(message: &Message, out: &mut String) {
    let _ = write!(
        out,
        "{{\"seq\":{},\"timestamp_ms\":{},\"kind\":",
        message.seq, message.timestamp_ms
    );
    match kind_name(message.kind) {
        Some(name) => {
            let _ = write!(out, "\"{name}\"");
        }
        None => {
            let _ = write!(out, "{}", message.kind);
        }
    }
    out.push_str(",\"sender\":");
    write_json_string(&String::from_utf8_lossy(&message.sender), out);
    out.push_str(",\"client_id\":");
    write_json_string(&String::from_utf8_lossy(&message.client_message_id), out);
    let _ = write!(out, ",\"relation\":{}", message.relation);
    match std::str::from_utf8(&message.body) {
        Ok(text) => {
            out.push_str(",\"text\":");
            write_json_string(text, out);
        }
        Err(_) => {
            out.push_str(",\"body_base64\":\"");
            out.push_str(&BASE64.encode(&message.body));
            out.push('"');
        }
    }
    out.push('}');
}

/// A message as a `Value` (for replies that are built as values).
pub fn message_value(message: &Message) -> Value {
    let mut text = String::new();
    write_message(message, &mut text);
    serde_json::from_str(&text).expect("write_message writes valid JSON")
}

/// The `message` push for each of `messages` of `channel`, one JSON text per
/// message.
pub fn message_pushes(channel: &str, messages: &[Message]) -> Vec<String> {
    let mut channel_json = String::new();
    write_json_string(channel, &mut channel_json);
    messages
        .iter()
        .map(|message| {
            let mut text = String::with_capacity(128 + message.body.len());
            text.push_str("{\"push\":\"message\",\"channel\":");
            text.push_str(&channel_json);
            text.push_str(",\"message\":");
            write_message(message, &mut text);
            text.push('}');
            text
        })
        .collect()
}

fn write_json_string(text: &str, out: &mut String) {
    // serde_json's escaping, without building a Value.
    out.push_str(&serde_json::to_string(text).expect("a string serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn requests_parse_with_their_id() {
        let (id, request) =
            parse_request(r#"{"id":7,"type":"publish","channel":"general","text":"hi"}"#).unwrap();
        assert_eq!(id, 7);
        assert_eq!(
            request,
            Request::Publish {
                channel: "general".into(),
                text: "hi".into(),
                client_id: None,
                reply_to: None
            }
        );
        let (id, request) = parse_request(r#"{"id":8,"type":"channels"}"#).unwrap();
        assert_eq!((id, request), (8, Request::Channels {}));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let (id, error) = parse_request("not json").unwrap_err();
        assert_eq!((id, error.code), (0, "malformed"));
        let (id, error) = parse_request(r#"{"type":"ping"}"#).unwrap_err();
        assert_eq!(id, 0);
        assert!(error.message.contains("no `id`"));
        let (id, error) = parse_request(r#"{"id":3,"type":"publish","channel":"x"}"#).unwrap_err();
        assert_eq!(id, 3);
        assert!(error.message.contains("text"), "{}", error.message);
        let (_, error) = parse_request(r#"{"id":3,"type":"launch"}"#).unwrap_err();
        assert!(error.message.contains("launch"), "{}", error.message);
        let (_, error) = parse_request(r#"{"id":-1,"type":"ping"}"#).unwrap_err();
        assert!(error.message.contains("integer"));
    }

    #[test]
    fn messages_encode_text_or_base64() {
        let message = Message {
            seq: 3,
            timestamp_ms: 10,
            kind: kind::EDIT,
            sender: Bytes::from_static(b"al\"ice"),
            client_message_id: Bytes::from_static(b"c1"),
            relation: 2,
            body: Bytes::from_static(b"new \n text"),
            ..Message::default()
        };
        let value = message_value(&message);
        assert_eq!(
            value,
            json!({"seq":3,"timestamp_ms":10,"kind":"edit","sender":"al\"ice","client_id":"c1","relation":2,"text":"new \n text"})
        );
        let binary = Message {
            kind: 200,
            body: Bytes::from_static(&[0xff, 0x00]),
            ..Message::default()
        };
        let value = message_value(&binary);
        assert_eq!(value["kind"], 200);
        assert_eq!(value["body_base64"], "/wA=");
        assert!(value.get("text").is_none());
    }
}
