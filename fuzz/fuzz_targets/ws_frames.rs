//! Fuzzes the WebSocket framing (`adapters/src/ws.rs`): arbitrary client bytes must never panic
//! it, and cutting the same bytes in two anywhere must give the same messages, the same bytes
//! back and the same end as feeding them whole (a partial frame waits in the input).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_adapters::ws::{WsClosed, WsFraming, WsLimits, WsMessage};

/// Small limits, so the fuzzer reaches them.
const LIMITS: WsLimits = WsLimits {
    message_bytes_max: 300,
    frame_bytes_max: 200,
};

type Outcome = (Vec<WsMessage>, Vec<u8>, Result<(), WsClosed>);

fn feed(pieces: &[&[u8]]) -> Outcome {
    let mut framing = WsFraming::server(LIMITS);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut messages = Vec::new();
    let mut end = Ok(());
    for piece in pieces {
        input.extend_from_slice(piece);
        end = framing.receive(&mut input, &mut out, |message, _| {
            messages.push(message);
            Ok(())
        });
        if end.is_err() {
            break;
        }
    }
    (messages, out.to_vec(), end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = feed(&[stream]);
    let split = usize::from(cut) * stream.len() / 255;
    let (front, back) = stream.split_at(split);
    assert_eq!(feed(&[front, back]), whole, "cut at {split}");
});
