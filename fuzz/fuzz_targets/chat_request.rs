//! Fuzzes the JSON chat command decoder: arbitrary text must never panic it; whatever it accepts
//! must encode back to JSON that decodes to the same request (decode → encode → decode agrees).
//! Also checks that a message encoded for clients is always valid JSON that carries the body.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use starling_adapters::chat::json::{message_value, parse_request, request_text};
use starling_protocol::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((id, request)) = parse_request(text) {
            assert!(id >= 1 && id <= u64::from(u32::MAX));
            let again = parse_request(&request_text(id, &request)).expect("an encoded request decodes");
            assert_eq!(again, (id, request));
        }
    }
    // The same bytes as a message: sender and body as they might come from any protocol.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let message = Message {
        seq: data.len() as u64,
        kind: data.get(1).copied().unwrap_or(0),
        sender: Bytes::copy_from_slice(&data[..split]),
        body: Bytes::copy_from_slice(&data[split..]),
        ..Message::default()
    };
    let value = message_value(&message);
    match std::str::from_utf8(&message.body) {
        Ok(text) => assert_eq!(value["text"].as_str(), Some(text)),
        Err(_) => assert!(value["body_base64"].is_string()),
    }
});
