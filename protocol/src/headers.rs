//! The header block of a message: small named values that travel with the
//! body (MQTT 5 properties such as a response topic or user properties, a
//! content type). Every protocol reads and writes the same block, so a
//! property set over MQTT reaches an MQTT subscriber whichever way the
//! message went.
//!
//! ```text
//! headers = count: u16, then count times:
//!   name_length u16 | name (UTF-8) | value_length u16 | value (bytes)
//! ```
//!
//! Names are case-sensitive and may repeat (user properties do). An empty
//! block (zero bytes) means no headers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::WireError;

/// Names used by the MQTT front end.
pub mod name {
    /// MQTT 5 Payload Format Indicator: value `[1]` for UTF-8 text.
    pub const PAYLOAD_FORMAT: &str = "mqtt.payload-format";
    /// When the message expires: u64 little-endian, ms since the Unix epoch.
    pub const EXPIRES_AT_MS: &str = "expires-at-ms";
    /// MIME type of the body (MQTT 5 Content Type).
    pub const CONTENT_TYPE: &str = "content-type";
    /// Where a request's response should go (MQTT 5 Response Topic).
    pub const RESPONSE_TOPIC: &str = "response-topic";
    /// Matches a response to its request (MQTT 5 Correlation Data).
    pub const CORRELATION_DATA: &str = "correlation-data";
    /// Prefix of MQTT 5 user properties: `user:<name>`.
    pub const USER_PREFIX: &str = "user:";
}

/// Encodes `headers`. Returns an empty block for no headers.
///
/// # Panics
/// If a name or value is longer than 65,535 bytes, or there are more than
/// 65,535 headers.
pub fn encode_headers(headers: &[(String, Bytes)]) -> Bytes {
    if headers.is_empty() {
        return Bytes::new();
    }
    let mut out = BytesMut::new();
    out.put_u16_le(u16::try_from(headers.len()).expect("at most 65535 headers"));
    for (name, value) in headers {
        out.put_u16_le(u16::try_from(name.len()).expect("header name fits u16"));
        out.put_slice(name.as_bytes());
        out.put_u16_le(u16::try_from(value.len()).expect("header value fits u16"));
        out.put_slice(value);
    }
    out.freeze()
}

/// Decodes a header block (values share `block`'s memory).
pub fn decode_headers(block: &Bytes) -> Result<Vec<(String, Bytes)>, WireError> {
    if block.is_empty() {
        return Ok(Vec::new());
    }
    let malformed = |why: &str| WireError::MalformedHeaders {
        reason: why.to_string(),
    };
    let mut at = 0usize;
    let read_u16 = |at: &mut usize| -> Result<usize, WireError> {
        let bytes = block
            .get(*at..*at + 2)
            .ok_or_else(|| malformed("the block ends inside a length"))?;
        *at += 2;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]) as usize)
    };
    let count = read_u16(&mut at)?;
    let mut headers = Vec::with_capacity(count.min(block.len() / 4));
    for _ in 0..count {
        let name_length = read_u16(&mut at)?;
        let name = block
            .get(at..at + name_length)
            .ok_or_else(|| malformed("the block ends inside a name"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| malformed("a header name is not UTF-8"))?
            .to_string();
        at += name_length;
        let value_length = read_u16(&mut at)?;
        if block.len() < at + value_length {
            return Err(malformed("the block ends inside a value"));
        }
        headers.push((name, block.slice(at..at + value_length)));
        at += value_length;
    }
    if at != block.len() {
        return Err(malformed("bytes follow the last header"));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_bytes_and_round_trip() {
        let headers = vec![
            (
                "content-type".to_string(),
                Bytes::from_static(b"text/plain"),
            ),
            ("user:a".to_string(), Bytes::from_static(b"1")),
            ("user:a".to_string(), Bytes::from_static(b"")),
        ];
        let block = encode_headers(&headers);
        let mut expected = vec![3, 0];
        expected.extend_from_slice(&[12, 0]);
        expected.extend_from_slice(b"content-type");
        expected.extend_from_slice(&[10, 0]);
        expected.extend_from_slice(b"text/plain");
        expected.extend_from_slice(&[6, 0]);
        expected.extend_from_slice(b"user:a");
        expected.extend_from_slice(&[1, 0, b'1']);
        expected.extend_from_slice(&[6, 0]);
        expected.extend_from_slice(b"user:a");
        expected.extend_from_slice(&[0, 0]);
        assert_eq!(&block[..], &expected[..]);
        assert_eq!(decode_headers(&block).unwrap(), headers);
        assert!(encode_headers(&[]).is_empty());
        assert_eq!(decode_headers(&Bytes::new()).unwrap(), Vec::new());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let block = encode_headers(&[("n".to_string(), Bytes::from_static(b"value"))]);
        for cut in 1..block.len() {
            assert!(decode_headers(&block.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = block.to_vec();
        longer.push(0);
        assert!(decode_headers(&Bytes::from(longer)).is_err());
    }
}
