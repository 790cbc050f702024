//! HTTP/1.1 response encoding into the caller's buffer.
//!
//! ```text
//! HTTP/1.1 SP status SP reason CRLF
//! *( name ": " value CRLF )              the caller's headers, in order
//! [ "Content-Length: " length CRLF ]     unless the status forbids a body (1xx, 204, 304)
//! [ "Connection: close" CRLF ]           when the connection will not be kept alive
//! CRLF
//! body                                   omitted for HEAD requests and bodiless statuses
//! ```
//!
//! The writer owns the framing: a caller-provided `Content-Length` or `Transfer-Encoding` header
//! is a bug and panics, because two framings in one response desynchronise every proxy on the
//! path. Header values are stripped of control characters other than HTAB before they are
//! written, so a value built from client input (a channel name, an error message) cannot inject
//! a header or end the head early.

use bytes::{BufMut, Bytes, BytesMut};

/// A response to write with [`write_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    /// Header fields written in order after the status line. Names must be tokens; values may be
    /// anything, since control characters are stripped on writing.
    pub headers: Vec<(&'a str, String)>,
    pub body: Bytes,
}

impl<'a> Response<'a> {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Response<'a> {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header field after the ones already set.
    pub fn with_header(mut self, name: &'a str, value: impl Into<String>) -> Response<'a> {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Response<'a> {
        self.body = body.into();
        self
    }

    /// A response whose body is `value` serialized as JSON, with the matching `Content-Type`.
    pub fn json(status: u16, value: &serde_json::Value) -> Response<'a> {
        Response::new(status)
            .with_header("Content-Type", JSON_CONTENT_TYPE)
            .with_body(value.to_string())
    }
}

const JSON_CONTENT_TYPE: &str = "application/json";

/// The reason phrase of a status code, or an empty string for codes this server never sends
/// (the phrase is optional, RFC 9112 section 4; clients ignore it).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Whether a response with this status may carry a body (RFC 9110 sections 15.2, 15.3.5, 15.4.5):
/// 1xx, 204 and 304 responses end with their head, so they carry no `Content-Length` either.
pub fn status_allows_body(status: u16) -> bool {
    !((100..200).contains(&status) || status == 204 || status == 304)
}

/// Writes a whole response: status line, the caller's headers, `Content-Length` (unless the
/// status forbids a body), `Connection: close` when `keep_alive` is false, and the body unless
/// `head_only` (the answer to a HEAD request, which keeps the `Content-Length` of the GET).
///
/// Panics if the response has a body its status forbids, or sets `Content-Length` or
/// `Transfer-Encoding` itself: both are bugs in the caller.
pub fn write_response(out: &mut BytesMut, response: &Response, keep_alive: bool, head_only: bool) {
    let allows_body = status_allows_body(response.status);
    assert!(
        allows_body || response.body.is_empty(),
        "a {} response cannot carry a body",
        response.status
    );
    out.reserve(HEAD_BYTES_ESTIMATE + response.body.len());
    write_status_line(out, response.status);
    write_headers(out, &response.headers);
    if allows_body {
        write_header(
            out,
            "Content-Length",
            &response.body.len().to_string(),
            AllowFraming::Yes,
        );
    }
    if !keep_alive {
        write_header(out, "Connection", "close", AllowFraming::Yes);
    }
    out.put_slice(b"\r\n");
    if allows_body && !head_only {
        out.put_slice(&response.body);
    }
}

/// Writes the head of a streamed response (Server-Sent Events) whose body follows as chunks
/// written by [`write_chunk`] and ended by [`write_last_chunk`].
///
/// Panics if the status forbids a body or the headers set their own framing.
pub fn write_chunked_head(out: &mut BytesMut, status: u16, headers: &[(&str, String)]) {
    assert!(
        status_allows_body(status),
        "a {status} response cannot stream a body"
    );
    out.reserve(HEAD_BYTES_ESTIMATE);
    write_status_line(out, status);
    write_headers(out, headers);
    write_header(out, "Transfer-Encoding", "chunked", AllowFraming::Yes);
    out.put_slice(b"\r\n");
}

/// Writes `data` as one chunk. Empty data writes nothing, because an empty chunk is the last
/// chunk and would end the stream.
pub fn write_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let size_line = format!("{:x}\r\n", data.len());
    out.reserve(size_line.len() + data.len() + 2);
    out.put_slice(size_line.as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Ends a chunked body: the last chunk and an empty trailer section.
pub fn write_last_chunk(out: &mut BytesMut) {
    out.put_slice(b"0\r\n\r\n");
}

/// Writes the JSON error response every route answers with:
/// `{"error":{"code":"...","message":"...","temporary":false}}`.
pub fn write_error(out: &mut BytesMut, status: u16, code: &str, message: &str, keep_alive: bool) {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "temporary": false }
    });
    write_response(out, &Response::json(status, &body), keep_alive, false);
}

/// Room for a typical status line and a handful of headers, so most heads are written without
/// the buffer growing.
const HEAD_BYTES_ESTIMATE: usize = 256;

fn write_status_line(out: &mut BytesMut, status: u16) {
    // The status-code is exactly three digits (RFC 9112 section 4).
    assert!(
        (100..=999).contains(&status),
        "status {status} is not three digits"
    );
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.to_string().as_bytes());
    out.put_u8(b' ');
    out.put_slice(reason_phrase(status).as_bytes());
    out.put_slice(b"\r\n");
}

/// Whether a header may be one of the framing fields the writer owns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AllowFraming {
    Yes,
    No,
}

fn write_headers(out: &mut BytesMut, headers: &[(&str, String)]) {
    for (name, value) in headers {
        write_header(out, name, value, AllowFraming::No);
    }
}

fn write_header(out: &mut BytesMut, name: &str, value: &str, allow_framing: AllowFraming) {
    assert!(
        !name.is_empty() && name.bytes().all(is_token_byte),
        "header name {name:?} is not a token"
    );
    assert!(
        allow_framing == AllowFraming::Yes
            || !(name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")),
        "the response writer sets {name} itself"
    );
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    for byte in value.bytes() {
        // CR and LF would end the field and let the value inject headers or a body; the other
        // control characters are invalid in a field value (RFC 9110 section 5.5).
        if byte == b'\t' || !(byte.is_ascii_control()) {
            out.put_u8(byte);
        }
    }
    out.put_slice(b"\r\n");
}

/// `tchar` from RFC 9110 section 5.6.2.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(response: &Response, keep_alive: bool, head_only: bool) -> String {
        let mut out = BytesMut::new();
        write_response(&mut out, response, keep_alive, head_only);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_response_has_its_length_and_body() {
        let response = Response::new(200)
            .with_header("Content-Type", "text/plain")
            .with_body("hello");
        assert_eq!(
            written(&response, true, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert_eq!(
            written(&response, false, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
             Connection: close\r\n\r\nhello"
        );
    }

    #[test]
    fn an_empty_body_still_has_a_content_length() {
        assert_eq!(
            written(&Response::new(201), true, false),
            "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_head_answer_keeps_the_length_but_not_the_body() {
        let response = Response::new(200).with_body("hello");
        assert_eq!(
            written(&response, true, true),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[test]
    fn bodiless_statuses_have_no_content_length() {
        assert_eq!(
            written(&Response::new(204), true, false),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        assert_eq!(
            written(
                &Response::new(304).with_header("ETag", "\"7\""),
                false,
                false
            ),
            "HTTP/1.1 304 Not Modified\r\nETag: \"7\"\r\nConnection: close\r\n\r\n"
        );
        let upgrade = Response::new(101)
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade");
        assert_eq!(
            written(&upgrade, true, false),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
    }

    #[test]
    #[should_panic(expected = "cannot carry a body")]
    fn a_body_on_a_bodiless_status_is_a_bug() {
        written(&Response::new(204).with_body("x"), true, false);
    }

    #[test]
    #[should_panic(expected = "sets Content-Length itself")]
    fn a_caller_framing_header_is_a_bug() {
        written(
            &Response::new(200).with_header("Content-Length", "5"),
            true,
            false,
        );
    }

    #[test]
    #[should_panic(expected = "is not a token")]
    fn a_header_name_must_be_a_token() {
        written(
            &Response::new(200).with_header("X: a\r\n", "b"),
            true,
            false,
        );
    }

    #[test]
    fn control_characters_are_stripped_from_header_values() {
        let response = Response::new(302)
            .with_header("Location", "/a\r\nSet-Cookie: stolen=1\r\n\r\n<html>")
            .with_header("X-Tabbed", "a\tb\0c\x7f");
        assert_eq!(
            written(&response, true, false),
            "HTTP/1.1 302 Found\r\nLocation: /aSet-Cookie: stolen=1<html>\r\n\
             X-Tabbed: a\tbc\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_stream_is_written_as_chunks() {
        let mut out = BytesMut::new();
        let headers = [("Content-Type", "text/event-stream".to_string())];
        write_chunked_head(&mut out, 200, &headers);
        write_chunk(&mut out, b"data: 1\n\n");
        write_chunk(&mut out, b"");
        write_chunk(&mut out, &[b'x'; 26]);
        write_last_chunk(&mut out);
        let expected = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
             9\r\ndata: 1\n\n\r\n1a\r\n{}\r\n0\r\n\r\n",
            "x".repeat(26)
        );
        assert_eq!(String::from_utf8(out.to_vec()).unwrap(), expected);
    }

    #[test]
    fn errors_are_json_with_escaped_strings() {
        let mut out = BytesMut::new();
        write_error(
            &mut out,
            404,
            "not_found",
            "channel \"a\\b\"\r\nX: 1 not found",
            false,
        );
        let body = r#"{"error":{"code":"not_found","message":"channel \"a\\b\"\r\nX: 1 not found","temporary":false}}"#;
        let expected = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(out.to_vec()).unwrap(), expected);
    }

    #[test]
    fn every_reason_phrase_is_visible_text_and_unknown_codes_have_none() {
        for status in 100..=999 {
            let phrase = reason_phrase(status);
            assert!(phrase
                .bytes()
                .all(|byte| byte == b' ' || byte.is_ascii_graphic()));
        }
        assert_eq!(reason_phrase(413), "Content Too Large");
        assert_eq!(reason_phrase(599), "");
        assert_eq!(
            written(&Response::new(599), true, false),
            "HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn written_responses_parse_back_with_httparse() {
        let response = Response::new(200)
            .with_header("X-Name", "Zoë")
            .with_body("{}");
        let mut out = BytesMut::new();
        write_response(&mut out, &response, false, false);
        let mut fields = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Response::new(&mut fields);
        let head_bytes = match parsed.parse(&out) {
            Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
            other => panic!("{other:?}"),
        };
        assert_eq!(parsed.code, Some(200));
        assert_eq!(parsed.headers.len(), 3);
        assert_eq!(parsed.headers[0].value, "Zoë".as_bytes());
        assert_eq!(&out[head_bytes..], b"{}");
    }
}
