//! Fuzzes the HTTP/1.1 request parser: arbitrary bytes must never panic it, and feeding them in two
//! pieces must give the same requests and errors as feeding them all at once, since a connection's
//! reads may be split anywhere.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_adapters::http::request::{HttpLimits, Request, RequestParser};

/// Small limits, so the fuzzer reaches every limit check with short inputs.
const LIMITS: HttpLimits = HttpLimits {
    header_bytes_max: 256,
    headers_max: 8,
    body_bytes_max: 512,
    chunk_line_bytes_max: 24,
};

/// What one parse loop saw: every request, then the status of the error that ended it, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    requests: Vec<Request>,
    error_status: Option<u16>,
}

fn feed(pieces: &[&[u8]]) -> Outcome {
    let mut parser = RequestParser::new(LIMITS);
    let mut input = BytesMut::new();
    let mut outcome = Outcome {
        requests: Vec::new(),
        error_status: None,
    };
    for piece in pieces {
        input.extend_from_slice(piece);
        loop {
            let length_before = input.len();
            match parser.parse(&mut input) {
                Ok(Some(request)) => {
                    assert!(input.len() < length_before, "a request consumed no bytes");
                    assert!(request.body.len() <= LIMITS.body_bytes_max);
                    assert!(request.headers.len() <= LIMITS.headers_max);
                    assert!(!request.path.contains('\0'));
                    outcome.requests.push(request);
                }
                Ok(None) => break,
                Err(error) => {
                    assert!(
                        [400, 413, 414, 431, 501, 505].contains(&error.status),
                        "unexpected status in {error}"
                    );
                    outcome.error_status = Some(error.status);
                    return outcome;
                }
            }
        }
    }
    outcome
}

fuzz_target!(|data: &[u8]| {
    let whole = feed(&[data]);
    if let Some(first) = data.first() {
        let split = usize::from(*first) % data.len();
        let (front, back) = data.split_at(split);
        assert_eq!(feed(&[front, back]), whole, "split at byte {split}");
    }
});
