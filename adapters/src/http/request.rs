//! HTTP/1.1 request framing (RFC 9112): the head is parsed by `httparse`, the body is delimited by
//! `Content-Length` or de-chunked here, and every shape known to enable request smuggling is
//! refused with a status to answer before closing the connection.
//!
//! ```text
//! request   = head body
//! head      = *( CRLF ) request-line CRLF *( field-line CRLF ) CRLF     ≤ header_bytes_max
//! body      = Content-Length bytes                                       ≤ body_bytes_max
//!           / *( chunk-size [ chunk-ext ] CRLF chunk-data CRLF )         each line ≤ chunk_line_bytes_max
//!             "0" [ chunk-ext ] CRLF *( field-line CRLF ) CRLF           trailers ≤ header_bytes_max
//!           / nothing, when neither field is present
//! ```
//!
//! [`RequestParser`] is sans-IO: the caller appends socket reads to a `BytesMut` and calls
//! [`RequestParser::parse`], which answers a complete [`Request`] (removing exactly its bytes),
//! `None` when more bytes are needed, or an [`HttpError`] after which the connection must be
//! closed. Each byte is scanned once however the input is split, so a client trickling one byte at a
//! time costs linear work.
//!
//! Choices this module makes where RFC 9112 leaves room:
//! - Line endings must be CRLF. `httparse` accepts a bare LF; a bare LF or CR anywhere in the head,
//!   a chunk-size line or the trailers is answered 400, because peers that disagree on line endings
//!   disagree on where a message ends.
//! - Empty lines (CRLF) before a request line are skipped (RFC 9112 section 2.2) but count toward
//!   `header_bytes_max` and [`RequestParser::in_progress`], so they cannot keep a connection open.
//! - A request line still unfinished at `header_bytes_max` bytes is answered 414; a head that is
//!   too large otherwise, or has more than `headers_max` fields, is answered 431.
//! - `HTTP/<digit>.<digit>` other than 1.0 and 1.1 is answered 505; any other version text
//!   (`HTTP/2`, `HTTP/1.1x`) is malformed and answered 400.
//! - The request-target must be origin-form (`/path?query`), absolute-form (`http://host/path`)
//!   or `*` for `OPTIONS`; authority-form (only for `CONNECT`, which this server does not proxy)
//!   and targets holding a fragment (`#`) are answered 400.
//! - Header values must be UTF-8. `httparse` admits obs-text (bytes 0x80 to 0xFF); values that are
//!   not UTF-8 are answered 400 rather than guessed at as Latin-1.
//! - `Content-Length` is refused (400) unless it is exactly one field of digits; a value larger
//!   than `body_bytes_max` is answered 413 before any of the body is read.
//! - `Transfer-Encoding` is accepted only as exactly one field whose value is `chunked`; any other
//!   coding or list is answered 501, and the field in an HTTP/1.0 request or next to
//!   `Content-Length` is answered 400.
//! - Chunk extensions are checked for control characters and ignored. Trailer fields are parsed
//!   (so malformed ones are refused) and dropped.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// The status answered for malformed requests and smuggling shapes.
const STATUS_BAD_REQUEST: u16 = 400;
/// The status answered when a body exceeds `body_bytes_max`.
const STATUS_CONTENT_TOO_LARGE: u16 = 413;
/// The status answered when the request line alone exceeds `header_bytes_max`.
const STATUS_URI_TOO_LONG: u16 = 414;
/// The status answered when the head exceeds `header_bytes_max` or `headers_max`.
const STATUS_HEADER_FIELDS_TOO_LARGE: u16 = 431;
/// The status answered for a transfer coding other than `chunked`.
const STATUS_NOT_IMPLEMENTED: u16 = 501;
/// The status answered for an HTTP version other than 1.0 and 1.1.
const STATUS_VERSION_NOT_SUPPORTED: u16 = 505;

/// The limits one connection's requests are held to. Each is checked before the bytes it limits
/// are buffered, so a connection never holds more than about
/// `header_bytes_max + body_bytes_max` bytes of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// The request line and header fields, with every CRLF and the blank line ending them. Also
    /// bounds a chunked body's trailer section. 16 KiB by default, twice what common proxies send.
    pub header_bytes_max: usize,
    /// Header fields in one request (and trailer fields in one chunked body). 64 by default.
    pub headers_max: usize,
    /// One request's body, whether sent with `Content-Length` or chunked. 1 MiB by default.
    pub body_bytes_max: usize,
    /// One chunk-size line, with its extensions and CRLF. 1 KiB by default: a size needs at most
    /// 16 hex digits, and nothing this server reads is carried in chunk extensions.
    pub chunk_line_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_bytes_max: 16 * 1024,
            headers_max: 64,
            body_bytes_max: 1024 * 1024,
            chunk_line_bytes_max: 1024,
        }
    }
}

/// A request method. Methods are case-sensitive (RFC 9110 section 9.1), so `get` is
/// `Other("get")`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other method token, as sent.
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    /// The method token as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(token) => token,
        }
    }
}

/// One complete request: its head, decoded, and its whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request-target exactly as sent.
    pub target: String,
    /// The percent-decoded path without the query: `/` for an absolute-form target with an empty
    /// path, `*` for `OPTIONS *`. Never holds NUL.
    pub path: String,
    /// The query's `name=value` pairs in order, percent-decoded with `+` read as a space. A pair
    /// without `=` has an empty value; empty pairs (`a=1&&b=2`) are skipped.
    pub query: Vec<(String, String)>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order, names lower-cased, values without surrounding whitespace.
    pub headers: Vec<(String, String)>,
    /// Whether the connection stays open after the response: for HTTP/1.1 unless `Connection`
    /// holds `close`, for HTTP/1.0 only when `Connection` holds `keep-alive` (and not `close`).
    pub keep_alive: bool,
    /// The whole body: the `Content-Length` bytes, the de-chunked data, or empty.
    pub body: Bytes,
}

impl Request {
    /// The value of the first header field named `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether any field named `name` holds `token` in its comma-separated list, compared
    /// case-insensitively: `Connection: keep-alive, Upgrade` holds `upgrade`. Every field line of
    /// that name is searched, because a list may be split across several lines (RFC 9110 section
    /// 5.3).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(field, _)| field.eq_ignore_ascii_case(name))
            .flat_map(|(_, value)| value.split(','))
            .any(|item| item.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
    }

    /// The value of the first query pair named `name` (compared exactly, after decoding).
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A request that cannot be served. Answer `status` (with `message` as the explanation) and close
/// the connection: after a framing error the parser cannot know where the next request starts.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("HTTP {status}: {message}")]
pub struct HttpError {
    /// The status to answer: 400, 413, 414, 431, 501 or 505.
    pub status: u16,
    /// What was wrong, for the response body and the log.
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(STATUS_BAD_REQUEST, message)
    }
}

/// Reads the requests of one connection, one after the other. See the module documentation for
/// what is accepted.
#[derive(Debug)]
pub struct RequestParser {
    limits: HttpLimits,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for a complete head at the front of the input.
    Head(LineScan),
    /// The head was parsed and removed from the input; the body is the next `body_bytes` bytes.
    /// (The request is boxed here and below so that the parser, which every connection keeps,
    /// is small while it waits for a head.)
    FixedBody {
        request: Box<Request>,
        body_bytes: usize,
    },
    /// The head was parsed and removed from the input; the chunks decoded so far are in `body`.
    Chunked {
        request: Box<Request>,
        body: BytesMut,
        step: ChunkStep,
    },
    /// A request was refused; every later call answers the same error.
    Failed(HttpError),
}

/// Where a chunked body's decoder stands.
#[derive(Debug)]
enum ChunkStep {
    /// Waiting for a chunk-size line at the front of the input.
    SizeLine(LineScan),
    /// Inside a chunk's data.
    Data { remaining_bytes: usize },
    /// Waiting for the CRLF that must follow a chunk's data.
    DataEnd,
    /// After the last chunk: waiting for the trailer section and its blank line.
    Trailers(LineScan),
}

impl RequestParser {
    pub fn new(limits: HttpLimits) -> RequestParser {
        RequestParser {
            limits,
            state: State::Head(LineScan::default()),
        }
    }

    /// Consumes bytes from the front of `input`, to which the caller appends what it reads.
    ///
    /// Answers `Ok(Some(request))` when a whole request has arrived, having removed exactly its
    /// bytes (a pipelined request behind it stays in `input`: call again until `Ok(None)`);
    /// `Ok(None)` when more bytes are needed, having possibly removed a head or body chunks whose
    /// content the parser now holds; or `Err` for a request that must be refused, after which the
    /// connection must be closed (later calls answer the same error).
    pub fn parse(&mut self, input: &mut BytesMut) -> Result<Option<Request>, HttpError> {
        if let State::Failed(error) = &self.state {
            return Err(error.clone());
        }
        let result = self.advance(input);
        if let Err(error) = &result {
            self.state = State::Failed(error.clone());
        }
        result
    }

    /// Whether a request has started arriving but is not complete, as of the last call to
    /// [`parse`](RequestParser::parse) (the caller times out slow heads from when this turns true).
    /// A pipelined request left in the input after a complete one is not counted until `parse`
    /// looks at it.
    pub fn in_progress(&self) -> bool {
        match &self.state {
            State::Head(scan) => scan.scanned_bytes > 0,
            State::FixedBody { .. } | State::Chunked { .. } => true,
            State::Failed(_) => false,
        }
    }

    fn advance(&mut self, input: &mut BytesMut) -> Result<Option<Request>, HttpError> {
        loop {
            match &mut self.state {
                State::Failed(error) => return Err(error.clone()),
                State::Head(scan) => {
                    let head_bytes = match scan.scan(
                        input,
                        self.limits.header_bytes_max,
                        LineEnd::BlankLineAfterContent,
                    ) {
                        Ok(Some(head_bytes)) => head_bytes,
                        Ok(None) => return Ok(None),
                        Err(error) => return Err(head_scan_error(error, &self.limits)),
                    };
                    let (request, framing) = parse_head(&input[..head_bytes], &self.limits)?;
                    input.advance(head_bytes);
                    match framing {
                        Framing::Empty => {
                            self.state = State::Head(LineScan::default());
                            return Ok(Some(request));
                        }
                        Framing::Length(body_bytes) => {
                            self.state = State::FixedBody {
                                request: Box::new(request),
                                body_bytes,
                            }
                        }
                        Framing::Chunked => {
                            self.state = State::Chunked {
                                request: Box::new(request),
                                body: BytesMut::new(),
                                step: ChunkStep::SizeLine(LineScan::default()),
                            }
                        }
                    }
                }
                State::FixedBody { body_bytes, .. } => {
                    // The body stays in the input until it is whole, so taking it is one split
                    // rather than a copy.
                    if input.len() < *body_bytes {
                        return Ok(None);
                    }
                    let body_bytes = *body_bytes;
                    let State::FixedBody { mut request, .. } = self.take_state() else {
                        unreachable!("the state was matched as FixedBody above");
                    };
                    request.body = input.split_to(body_bytes).freeze();
                    return Ok(Some(*request));
                }
                State::Chunked { body, step, .. } => {
                    if !decode_chunks(input, body, step, &self.limits)? {
                        return Ok(None);
                    }
                    let State::Chunked {
                        mut request, body, ..
                    } = self.take_state()
                    else {
                        unreachable!("the state was matched as Chunked above");
                    };
                    request.body = body.freeze();
                    return Ok(Some(*request));
                }
            }
        }
    }

    /// Takes the current state, leaving the parser waiting for the next head.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Head(LineScan::default()))
    }
}

/// How a request's body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

/// Where a scanned section of lines ends.
#[derive(Clone, Copy, Debug)]
enum LineEnd {
    /// At the first line's CRLF (a chunk-size line).
    FirstLine,
    /// At a blank line that follows at least one non-blank line (a head: blank lines before the
    /// request line are skipped).
    BlankLineAfterContent,
    /// At the first blank line (a trailer section, which may be empty).
    BlankLine,
}

/// Why a section of lines was refused.
#[derive(Debug, PartialEq, Eq)]
enum ScanError {
    BareLineFeed {
        offset: usize,
    },
    BareCarriageReturn {
        offset: usize,
    },
    /// No end within the limit; `first_line_complete` tells whether the first non-blank line
    /// ended (for a head: whether the request line is what is too long).
    TooLong {
        first_line_complete: bool,
    },
}

/// Finds the end of a section of CRLF-terminated lines at the front of the input, checking each
/// byte once across calls and refusing bare CR and LF.
///
/// INVARIANT: the bytes before `scanned_bytes` are unchanged between calls (the caller removes
/// nothing from the input until the section is complete).
#[derive(Debug, Default)]
struct LineScan {
    /// Bytes at the front of the input already checked.
    scanned_bytes: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Whether a non-blank line has ended.
    content_seen: bool,
}

impl LineScan {
    /// Answers the length of the section (through its final CRLF) once it is complete, `None` if
    /// more bytes are needed, or an error once `limit_bytes` bytes hold no end.
    fn scan(
        &mut self,
        input: &[u8],
        limit_bytes: usize,
        end: LineEnd,
    ) -> Result<Option<usize>, ScanError> {
        let window = &input[..input.len().min(limit_bytes)];
        while self.scanned_bytes < window.len() {
            let offset = self.scanned_bytes;
            let byte = window[offset];
            let after_carriage_return = offset > 0 && window[offset - 1] == b'\r';
            self.scanned_bytes += 1;
            if byte != b'\n' {
                if after_carriage_return {
                    return Err(ScanError::BareCarriageReturn { offset: offset - 1 });
                }
                continue;
            }
            if !after_carriage_return {
                return Err(ScanError::BareLineFeed { offset });
            }
            let blank = offset - 1 == self.line_start;
            self.line_start = offset + 1;
            let complete = match end {
                LineEnd::FirstLine => true,
                LineEnd::BlankLine => blank,
                LineEnd::BlankLineAfterContent => blank && self.content_seen,
            };
            if complete {
                return Ok(Some(offset + 1));
            }
            self.content_seen |= !blank;
        }
        if window.len() == limit_bytes {
            return Err(ScanError::TooLong {
                first_line_complete: self.content_seen,
            });
        }
        Ok(None)
    }
}

fn head_scan_error(error: ScanError, limits: &HttpLimits) -> HttpError {
    match error {
        ScanError::BareLineFeed { offset } => HttpError::bad_request(format!(
            "bare LF at byte {offset} of the request head; lines must end with CRLF"
        )),
        ScanError::BareCarriageReturn { offset } => HttpError::bad_request(format!(
            "CR not followed by LF at byte {offset} of the request head"
        )),
        ScanError::TooLong {
            first_line_complete: false,
        } => HttpError::new(
            STATUS_URI_TOO_LONG,
            format!(
                "the request line is longer than the {} bytes allowed for the whole head",
                limits.header_bytes_max
            ),
        ),
        ScanError::TooLong {
            first_line_complete: true,
        } => HttpError::new(
            STATUS_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request head is longer than {} bytes",
                limits.header_bytes_max
            ),
        ),
    }
}

/// Parses a complete head (through its blank line) into a request with an empty body and says how
/// the body is delimited.
fn parse_head(head: &[u8], limits: &HttpLimits) -> Result<(Request, Framing), HttpError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(used)) if used == head.len() => {}
        // The scan found the blank line that ends the head, so httparse stopping anywhere else
        // means the two disagree about the head's shape; refuse rather than guess.
        Ok(_) => {
            return Err(HttpError::bad_request(
                "the request head is malformed (its end is ambiguous)",
            ))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                STATUS_HEADER_FIELDS_TOO_LARGE,
                format!("more than {} header fields", limits.headers_max),
            ))
        }
        Err(httparse::Error::Version) => return Err(version_error(head)),
        Err(error) => {
            return Err(HttpError::bad_request(format!(
                "malformed request head: {error}"
            )))
        }
    }
    // httparse fills these three on a complete parse.
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::bad_request("incomplete request line"));
    };

    let mut headers = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let Ok(value) = std::str::from_utf8(field.value) else {
            return Err(HttpError::bad_request(format!(
                "the value of header {} is not UTF-8",
                field.name
            )));
        };
        headers.push((
            field.name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }

    let (path, query) = parse_target(method, target)?;
    let mut request = Request {
        method: Method::from_token(method),
        target: target.to_string(),
        path,
        query,
        minor_version,
        headers,
        keep_alive: false,
        body: Bytes::new(),
    };
    request.keep_alive = match minor_version {
        1 => !request.header_has_token("connection", "close"),
        _ => {
            request.header_has_token("connection", "keep-alive")
                && !request.header_has_token("connection", "close")
        }
    };

    let hosts = field_values(&request, "host");
    if hosts.len() > 1 {
        return Err(HttpError::bad_request("more than one Host header"));
    }
    if hosts.is_empty() && minor_version == 1 {
        return Err(HttpError::bad_request(
            "an HTTP/1.1 request must carry a Host header",
        ));
    }

    let framing = body_framing(&request, limits)?;
    Ok((request, framing))
}

fn field_values<'a>(request: &'a Request, name: &str) -> Vec<&'a str> {
    request
        .headers
        .iter()
        .filter(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
        .collect()
}

/// Tells a well-formed but unsupported version (505) from a malformed request line (400).
fn version_error(head: &[u8]) -> HttpError {
    let start = head
        .iter()
        .position(|byte| *byte != b'\r' && *byte != b'\n')
        .unwrap_or(head.len());
    let line = head[start..]
        .split(|byte| *byte == b'\r')
        .next()
        .unwrap_or(&[]);
    let parts: Vec<&[u8]> = line.split(|byte| *byte == b' ').collect();
    // Only a request line of three parts names a version; `GET /a b HTTP/1.1` is malformed.
    let version = match parts[..] {
        [_, _, version] => version,
        _ => &[],
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit()
                && minor.is_ascii_digit()
                && !(*major == b'1' && (*minor == b'0' || *minor == b'1')) =>
        {
            HttpError::new(
                STATUS_VERSION_NOT_SUPPORTED,
                format!(
                    "HTTP/{}.{} is not supported; send HTTP/1.1",
                    *major as char, *minor as char
                ),
            )
        }
        _ => HttpError::bad_request("malformed HTTP version in the request line"),
    }
}

/// Decides how the body is delimited, refusing every ambiguous combination (RFC 9112 section 6).
fn body_framing(request: &Request, limits: &HttpLimits) -> Result<Framing, HttpError> {
    let lengths = field_values(request, "content-length");
    let codings = field_values(request, "transfer-encoding");
    if !lengths.is_empty() && !codings.is_empty() {
        return Err(HttpError::bad_request(
            "both Content-Length and Transfer-Encoding; send one",
        ));
    }
    if codings.len() > 1 {
        return Err(HttpError::bad_request(
            "more than one Transfer-Encoding header",
        ));
    }
    if let Some(coding) = codings.first() {
        if request.minor_version == 0 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !coding.eq_ignore_ascii_case("chunked") {
            return Err(HttpError::new(
                STATUS_NOT_IMPLEMENTED,
                format!("transfer coding {coding:?} is not supported; only chunked is"),
            ));
        }
        return Ok(Framing::Chunked);
    }
    if lengths.len() > 1 {
        return Err(HttpError::bad_request(
            "more than one Content-Length header",
        ));
    }
    let Some(length) = lengths.first() else {
        return Ok(Framing::Empty);
    };
    if length.is_empty() || !length.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(HttpError::bad_request(format!(
            "Content-Length {length:?} is not a decimal number"
        )));
    }
    // Digits only, so the sole parse failure is overflow, which is also too large.
    let body_bytes = match length.parse::<usize>() {
        Ok(body_bytes) if body_bytes <= limits.body_bytes_max => body_bytes,
        _ => {
            return Err(HttpError::new(
                STATUS_CONTENT_TOO_LARGE,
                format!(
                    "Content-Length {length} is over the {} bytes allowed",
                    limits.body_bytes_max
                ),
            ))
        }
    };
    Ok(match body_bytes {
        0 => Framing::Empty,
        body_bytes => Framing::Length(body_bytes),
    })
}

/// Splits a request-target into its decoded path and query pairs.
fn parse_target(method: &str, target: &str) -> Result<(String, Vec<(String, String)>), HttpError> {
    if target.contains('#') {
        return Err(HttpError::bad_request(
            "the request-target holds a fragment (#), which a client must not send",
        ));
    }
    if target == "*" {
        if method != "OPTIONS" {
            return Err(HttpError::bad_request(
                "the asterisk-form target is only allowed with OPTIONS",
            ));
        }
        return Ok(("*".to_string(), Vec::new()));
    }
    let path_and_query = if target.starts_with('/') {
        target
    } else if let Some(rest) = strip_http_scheme(target) {
        // Absolute-form: the authority ends at the path or the query.
        let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
        &rest[path_start..]
    } else {
        return Err(HttpError::bad_request(format!(
            "request-target {target:?} is neither a path nor an http(s) URL"
        )));
    };
    let (raw_path, raw_query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let mut path = percent_decode(raw_path, false)
        .map_err(|problem| HttpError::bad_request(format!("the request path {problem}")))?;
    if path.is_empty() {
        path.push('/');
    }
    let mut query = Vec::new();
    for pair in raw_query.unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text| {
            percent_decode(text, true)
                .map_err(|problem| HttpError::bad_request(format!("the query {problem}")))
        };
        query.push((decode(name)?, decode(value)?));
    }
    Ok((path, query))
}

fn strip_http_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix
            .eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    })
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_as_space`), refusing truncated or
/// non-hex escapes, results that are not UTF-8, and NUL, which no route needs and C libraries
/// would read as the end of the string. The error completes the sentence "the request path …".
fn percent_decode(text: &str, plus_as_space: bool) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let high = bytes.get(index + 1).and_then(|byte| hex_digit_value(*byte));
                let low = bytes.get(index + 2).and_then(|byte| hex_digit_value(*byte));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err("has a % not followed by two hex digits");
                };
                decoded.push(high * 16 + low);
                index += 3;
            }
            b'+' if plus_as_space => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    if decoded.contains(&0) {
        return Err("decodes to a NUL byte");
    }
    String::from_utf8(decoded).map_err(|_| "does not decode to UTF-8")
}

fn hex_digit_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes as much of a chunked body as the input holds, moving chunk data into `body`. Answers
/// true once the last chunk and the trailer section have been read.
fn decode_chunks(
    input: &mut BytesMut,
    body: &mut BytesMut,
    step: &mut ChunkStep,
    limits: &HttpLimits,
) -> Result<bool, HttpError> {
    loop {
        match step {
            ChunkStep::SizeLine(scan) => {
                let line_bytes =
                    match scan.scan(input, limits.chunk_line_bytes_max, LineEnd::FirstLine) {
                        Ok(Some(line_bytes)) => line_bytes,
                        Ok(None) => return Ok(false),
                        Err(error) => return Err(chunk_line_error(error, limits)),
                    };
                let chunk_bytes = parse_chunk_size(&input[..line_bytes - 2])?;
                input.advance(line_bytes);
                if chunk_bytes == 0 {
                    *step = ChunkStep::Trailers(LineScan::default());
                    continue;
                }
                let allowed_bytes = limits.body_bytes_max - body.len();
                if chunk_bytes > allowed_bytes as u64 {
                    return Err(HttpError::new(
                        STATUS_CONTENT_TOO_LARGE,
                        format!(
                            "a chunk of {chunk_bytes} bytes takes the body over the {} bytes allowed",
                            limits.body_bytes_max
                        ),
                    ));
                }
                *step = ChunkStep::Data {
                    remaining_bytes: chunk_bytes as usize,
                };
            }
            ChunkStep::Data { remaining_bytes } => {
                let available_bytes = input.len().min(*remaining_bytes);
                if available_bytes == 0 {
                    return Ok(false);
                }
                body.extend_from_slice(&input[..available_bytes]);
                input.advance(available_bytes);
                *remaining_bytes -= available_bytes;
                if *remaining_bytes == 0 {
                    *step = ChunkStep::DataEnd;
                }
            }
            ChunkStep::DataEnd => {
                let crlf = b"\r\n";
                let compared = input.len().min(crlf.len());
                if input[..compared] != crlf[..compared] {
                    return Err(HttpError::bad_request(
                        "chunk data is not followed by CRLF (the chunk size is wrong)",
                    ));
                }
                if compared < crlf.len() {
                    return Ok(false);
                }
                input.advance(crlf.len());
                *step = ChunkStep::SizeLine(LineScan::default());
            }
            ChunkStep::Trailers(scan) => {
                let section_bytes =
                    match scan.scan(input, limits.header_bytes_max, LineEnd::BlankLine) {
                        Ok(Some(section_bytes)) => section_bytes,
                        Ok(None) => return Ok(false),
                        Err(error) => return Err(trailer_scan_error(error, limits)),
                    };
                check_trailers(&input[..section_bytes], limits)?;
                input.advance(section_bytes);
                return Ok(true);
            }
        }
    }
}

/// Reads a chunk-size line without its CRLF: hex digits, then optionally whitespace and
/// `;`-introduced extensions, which are ignored once checked for control characters.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits_bytes = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_bytes == 0 {
        return Err(HttpError::bad_request(
            "a chunk-size line does not start with a hex number",
        ));
    }
    let mut chunk_bytes: u64 = 0;
    for digit in &line[..digits_bytes] {
        let value = u64::from(hex_digit_value(*digit).expect("checked as a hex digit above"));
        chunk_bytes = chunk_bytes
            .checked_mul(16)
            .and_then(|shifted| shifted.checked_add(value))
            .ok_or_else(|| HttpError::bad_request("a chunk size overflows 64 bits"))?;
    }
    let rest = &line[digits_bytes..];
    if rest.is_empty() {
        return Ok(chunk_bytes);
    }
    // Whitespace is allowed before the `;` (RFC 9112 section 7.1.1, BWS).
    let whitespace_bytes = rest
        .iter()
        .take_while(|byte| **byte == b' ' || **byte == b'\t')
        .count();
    let extensions = &rest[whitespace_bytes..];
    let is_field_byte = |byte: &u8| *byte == b'\t' || (*byte >= b' ' && *byte != 0x7f);
    if !extensions.starts_with(b";") || !extensions.iter().all(is_field_byte) {
        return Err(HttpError::bad_request(
            "a chunk size is followed by something other than chunk extensions",
        ));
    }
    Ok(chunk_bytes)
}

fn chunk_line_error(error: ScanError, limits: &HttpLimits) -> HttpError {
    match error {
        ScanError::BareLineFeed { .. } => {
            HttpError::bad_request("bare LF in a chunk-size line; lines must end with CRLF")
        }
        ScanError::BareCarriageReturn { .. } => {
            HttpError::bad_request("CR not followed by LF in a chunk-size line")
        }
        ScanError::TooLong { .. } => HttpError::bad_request(format!(
            "a chunk-size line is longer than {} bytes",
            limits.chunk_line_bytes_max
        )),
    }
}

fn trailer_scan_error(error: ScanError, limits: &HttpLimits) -> HttpError {
    match error {
        ScanError::BareLineFeed { .. } => {
            HttpError::bad_request("bare LF in the trailers; lines must end with CRLF")
        }
        ScanError::BareCarriageReturn { .. } => {
            HttpError::bad_request("CR not followed by LF in the trailers")
        }
        ScanError::TooLong { .. } => HttpError::new(
            STATUS_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the trailers are longer than {} bytes",
                limits.header_bytes_max
            ),
        ),
    }
}

/// Checks a complete trailer section (through its blank line) is well-formed; its fields are
/// then dropped, since nothing this server does depends on them.
fn check_trailers(section: &[u8], limits: &HttpLimits) -> Result<(), HttpError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.headers_max];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((used, _))) if used == section.len() => Ok(()),
        Ok(_) => Err(HttpError::bad_request(
            "the trailers are malformed (their end is ambiguous)",
        )),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::new(
            STATUS_HEADER_FIELDS_TOO_LARGE,
            format!("more than {} trailer fields", limits.headers_max),
        )),
        Err(error) => Err(HttpError::bad_request(format!(
            "malformed trailers: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_small() -> HttpLimits {
        HttpLimits {
            header_bytes_max: 128,
            headers_max: 4,
            body_bytes_max: 64,
            chunk_line_bytes_max: 16,
        }
    }

    /// Feeds `pieces` in turn to one parser, calling `parse` after each until it needs more, and
    /// answers every result up to the first error, with the bytes left unconsumed.
    fn feed(pieces: &[&[u8]], limits: HttpLimits) -> (Vec<Result<Request, HttpError>>, Vec<u8>) {
        let mut parser = RequestParser::new(limits);
        let mut input = BytesMut::new();
        let mut results = Vec::new();
        for piece in pieces {
            input.extend_from_slice(piece);
            loop {
                match parser.parse(&mut input) {
                    Ok(Some(request)) => results.push(Ok(request)),
                    Ok(None) => break,
                    Err(error) => {
                        assert_eq!(parser.parse(&mut input), Err(error.clone()));
                        results.push(Err(error));
                        // The connection closes here, so what was left unread does not matter
                        // (and depends on when the error was found).
                        return (results, Vec::new());
                    }
                }
            }
        }
        (results, input.to_vec())
    }

    /// Parses `bytes` whole, split at every point, and one byte at a time; asserts every way gives
    /// the same results and leftover, and answers them.
    fn parse_every_way(
        bytes: &[u8],
        limits: HttpLimits,
    ) -> (Vec<Result<Request, HttpError>>, Vec<u8>) {
        let whole = feed(&[bytes], limits);
        for split in 0..=bytes.len() {
            let (front, back) = bytes.split_at(split);
            assert_eq!(feed(&[front, back], limits), whole, "split at byte {split}");
        }
        let bytes_one_at_a_time: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            feed(&bytes_one_at_a_time, limits),
            whole,
            "one byte at a time"
        );
        whole
    }

    /// Parses `bytes` every way, expecting exactly one request that uses every byte.
    fn parse_one(bytes: &[u8]) -> Request {
        parse_one_with(bytes, HttpLimits::default())
    }

    fn parse_one_with(bytes: &[u8], limits: HttpLimits) -> Request {
        let (mut results, leftover) = parse_every_way(bytes, limits);
        assert_eq!(results.len(), 1, "{results:?}");
        assert!(leftover.is_empty(), "leftover {leftover:?}");
        results.pop().unwrap().expect("a valid request")
    }

    /// Parses `bytes` every way, expecting its first result to be refused, and answers the status.
    fn refused_with(bytes: &[u8], limits: HttpLimits) -> u16 {
        let (results, _) = parse_every_way(bytes, limits);
        match results.last() {
            Some(Err(error)) => error.status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn refused(bytes: &[u8]) -> u16 {
        refused_with(bytes, HttpLimits::default())
    }

    #[test]
    fn a_get_has_its_head_decoded_and_an_empty_body() {
        let request = parse_one(
            b"GET /channels/gen%20eral/messages?limit=10&after=a%2Bb+c&flag HTTP/1.1\r\n\
              Host: example.com\r\nX-Trace:  abc \t\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            request,
            Request {
                method: Method::Get,
                target: "/channels/gen%20eral/messages?limit=10&after=a%2Bb+c&flag".to_string(),
                path: "/channels/gen eral/messages".to_string(),
                query: vec![
                    ("limit".to_string(), "10".to_string()),
                    ("after".to_string(), "a+b c".to_string()),
                    ("flag".to_string(), String::new()),
                ],
                minor_version: 1,
                headers: vec![
                    ("host".to_string(), "example.com".to_string()),
                    ("x-trace".to_string(), "abc".to_string()),
                    ("accept".to_string(), "*/*".to_string()),
                ],
                keep_alive: true,
                body: Bytes::new(),
            }
        );
        assert_eq!(request.header("HOST"), Some("example.com"));
        assert_eq!(request.header("missing"), None);
        assert_eq!(request.query_value("after"), Some("a+b c"));
        assert_eq!(request.query_value("none"), None);
    }

    #[test]
    fn methods_are_case_sensitive_tokens() {
        for (token, method) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("PATCH", Method::Patch),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("get", Method::Other("get".to_string())),
            ("PURGE", Method::Other("PURGE".to_string())),
        ] {
            let bytes = format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n");
            let request = parse_one(bytes.as_bytes());
            assert_eq!(request.method, method);
            assert_eq!(request.method.as_str(), token);
        }
    }

    #[test]
    fn header_tokens_are_found_in_lists_across_field_lines() {
        let request = parse_one(
            b"GET /socket HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: h2c\r\nUpgrade: WebSocket\r\n\r\n",
        );
        assert!(request.header_has_token("connection", "upgrade"));
        assert!(request.header_has_token("Upgrade", "websocket"));
        assert!(!request.header_has_token("connection", "close"));
        assert!(!request.header_has_token("upgrade", "web"));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let cases: [(&[u8], bool); 6] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", false),
        ];
        for (bytes, keep_alive) in cases {
            let request = parse_one(bytes);
            assert_eq!(request.keep_alive, keep_alive, "{bytes:?}");
        }
        assert_eq!(parse_one(b"GET / HTTP/1.0\r\n\r\n").minor_version, 0);
    }

    #[test]
    fn a_content_length_body_is_read_whole() {
        let request = parse_one(
            b"POST /messages HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
        );
        assert_eq!(request.body, Bytes::from_static(b"hello world"));
        let request = parse_one(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n");
        assert!(request.body.is_empty());
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        let bytes = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                      \r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n\
                      POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                      2\r\nxy\r\n0\r\n\r\n\
                      GET /d HTTP/1.1\r\nHo";
        let (results, leftover) = parse_every_way(bytes, HttpLimits::default());
        let requests: Vec<Request> = results.into_iter().map(Result::unwrap).collect();
        let paths: Vec<&str> = requests
            .iter()
            .map(|request| request.path.as_str())
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert_eq!(requests[0].body, Bytes::from_static(b"abc"));
        assert_eq!(requests[2].body, Bytes::from_static(b"xy"));
        assert_eq!(leftover, b"GET /d HTTP/1.1\r\nHo");
    }

    #[test]
    fn in_progress_is_true_from_the_first_byte_to_the_end_of_the_body() {
        let bytes = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok";
        let mut parser = RequestParser::new(HttpLimits::default());
        let mut input = BytesMut::new();
        assert!(!parser.in_progress());
        assert_eq!(parser.parse(&mut input), Ok(None));
        assert!(!parser.in_progress());
        for (index, byte) in bytes.iter().enumerate() {
            input.extend_from_slice(&[*byte]);
            let result = parser.parse(&mut input).unwrap();
            assert_eq!(result.is_some(), index == bytes.len() - 1);
            assert_eq!(parser.in_progress(), result.is_none());
        }
        assert!(input.is_empty());
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped_but_count() {
        let request = parse_one(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(request.path, "/");
        let mut parser = RequestParser::new(HttpLimits::default());
        let mut input = BytesMut::from(&b"\r\n"[..]);
        assert_eq!(parser.parse(&mut input), Ok(None));
        assert!(parser.in_progress());
        let crlfs = b"\r\n".repeat(64);
        assert_eq!(refused_with(&crlfs, limits_small()), 414);
    }

    #[test]
    fn a_head_without_an_end_within_the_limit_is_refused_at_once() {
        let limits = limits_small();
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Filler: ".to_vec();
        head.resize(limits.header_bytes_max - 1, b'a');
        let mut parser = RequestParser::new(limits);
        let mut input = BytesMut::from(&head[..]);
        assert_eq!(parser.parse(&mut input), Ok(None));
        input.extend_from_slice(b"a");
        assert_eq!(parser.parse(&mut input).unwrap_err().status, 431);
        head.push(b'a');
        assert_eq!(refused_with(&head, limits), 431);
    }

    #[test]
    fn a_head_exactly_at_the_limit_is_accepted() {
        let limits = limits_small();
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Filler: ".to_vec();
        head.resize(limits.header_bytes_max - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let request = parse_one_with(&head, limits);
        assert_eq!(request.headers.len(), 2);
    }

    #[test]
    fn a_request_line_longer_than_the_head_limit_is_uri_too_long() {
        let limits = limits_small();
        let mut line = b"GET /".to_vec();
        line.resize(limits.header_bytes_max, b'a');
        assert_eq!(refused_with(&line, limits), 414);
    }

    #[test]
    fn more_header_fields_than_allowed_are_refused() {
        let limits = limits_small();
        let four = b"GET / HTTP/1.1\r\nHost: a\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n";
        assert_eq!(parse_one_with(four, limits).headers.len(), 4);
        let five = b"GET / HTTP/1.1\r\nHost: a\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
        assert_eq!(refused_with(five, limits), 431);
    }

    #[test]
    fn content_length_must_be_one_plain_decimal_number() {
        for value in ["+5", "-5", " 5 5", "0x5", "5, 5", "5.0", "five", ""] {
            let bytes =
                format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\nhello");
            assert_eq!(refused(bytes.as_bytes()), 400, "Content-Length: {value}");
        }
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            400
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            400
        );
    }

    #[test]
    fn a_content_length_over_the_limit_is_refused_before_the_body() {
        let limits = limits_small();
        let bytes = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(refused_with(bytes, limits), 413);
        let huge = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(refused_with(huge, limits), 413);
        let at_limit = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 64\r\n\r\n{}",
            "b".repeat(64)
        );
        assert_eq!(parse_one_with(at_limit.as_bytes(), limits).body.len(), 64);
    }

    #[test]
    fn a_chunked_body_is_decoded_with_extensions_and_trailers_ignored() {
        let request = parse_one(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
              5\r\nhello\r\n1 ;name=value;flag\r\n \r\n00A;x=\"q;\"\r\n0123456789\r\n\
              0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
        );
        assert_eq!(request.body, Bytes::from_static(b"hello 0123456789"));
        assert!(!request.headers.iter().any(|(name, _)| name == "x-checksum"));
        let empty =
            parse_one(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(empty.body.is_empty());
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_not_implemented() {
        for coding in [
            "gzip",
            "chunked, gzip",
            "gzip, chunked",
            "identity",
            "chunked;q=1",
            "",
        ] {
            let bytes = format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n"
            );
            assert_eq!(
                refused(bytes.as_bytes()),
                501,
                "Transfer-Encoding: {coding}"
            );
        }
    }

    #[test]
    fn smuggling_shapes_are_bad_requests() {
        let cases: [&[u8]; 9] = [
            // Both framings: the classic CL.TE and TE.CL desynchronisation.
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Whitespace between a field name and its colon.
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 1\r\n\r\nx",
            // Obsolete line folding.
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
            // Bare LF, which httparse accepts, and bare CR.
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
        ];
        for bytes in cases {
            assert_eq!(refused(bytes), 400, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n"), 400);
        assert_eq!(refused(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases = [
            ("g\r\nx\r\n0\r\n\r\n", 400),
            ("\r\n0\r\n\r\n", 400),
            ("-1\r\nx\r\n0\r\n\r\n", 400),
            ("0x1\r\nx\r\n0\r\n\r\n", 400),
            ("1 \r\nx\r\n0\r\n\r\n", 400),
            ("1;a\x01\r\nx\r\n0\r\n\r\n", 400),
            ("1\nx\r\n0\r\n\r\n", 400),
            ("1\rx\r\n0\r\n\r\n", 400),
            // Data longer than its size says: not followed by CRLF.
            ("2\r\nabc\r\n0\r\n\r\n", 400),
            ("2\r\nab\n0\r\n\r\n", 400),
            // A size line over chunk_line_bytes_max (16 here).
            ("1;aaaaaaaaaaaaa\r\nx\r\n0\r\n\r\n", 400),
            // Over body_bytes_max (64 here), at once and cumulatively.
            ("41\r\n", 413),
            ("20\r\n01234567890123456789012345678901\r\n21\r\n", 413),
            // Malformed or too many trailers (headers_max is 4 here).
            ("0\r\nX : 1\r\n\r\n", 400),
            ("0\r\nX: 1\r\n folded\r\n\r\n", 400),
            ("0\r\nX: 1\n\r\n", 400),
            ("0\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n", 431),
        ];
        for (body, status) in cases {
            let bytes = format!("{head}{body}");
            assert_eq!(
                refused_with(bytes.as_bytes(), limits_small()),
                status,
                "{body:?}"
            );
        }
        let line_at_limit = format!("{head}1;aaaaaaaaaaaa\r\nx\r\n0\r\n\r\n");
        let request = parse_one_with(line_at_limit.as_bytes(), limits_small());
        assert_eq!(request.body, Bytes::from_static(b"x"));
        // Leading zeros do not overflow; seventeen significant hex digits do.
        let leading_zeros = format!("{head}0000000000000000001\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            parse_one(leading_zeros.as_bytes()).body,
            Bytes::from_static(b"x")
        );
        let overflow = format!("{head}10000000000000000\r\nx\r\n0\r\n\r\n");
        assert_eq!(refused(overflow.as_bytes()), 400);
    }

    #[test]
    fn trailers_are_limited_by_the_head_limit() {
        let limits = limits_small();
        let mut bytes =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', limits.header_bytes_max));
        assert_eq!(refused_with(&bytes, limits), 431);
    }

    #[test]
    fn versions_other_than_1_0_and_1_1_are_refused() {
        assert_eq!(refused(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(refused(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(refused(b"GET / HTTP/0.9\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(refused(b"GET / HTTP/2\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(refused(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(refused(b"GET / FTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(refused(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(refused(b"GET /\r\n\r\n"), 400);
    }

    #[test]
    fn http_1_1_needs_exactly_one_host() {
        assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"),
            400
        );
        assert_eq!(
            parse_one(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").header("host"),
            Some("")
        );
    }

    #[test]
    fn header_values_must_be_visible_text_in_utf8() {
        let request = parse_one("GET / HTTP/1.1\r\nHost: a\r\nX-Name: Zoë\r\n\r\n".as_bytes());
        assert_eq!(request.header("x-name"), Some("Zoë"));
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: \xe9\r\n\r\n"),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n"),
            400
        );
    }

    #[test]
    fn targets_are_decoded_by_form() {
        let absolute =
            parse_one(b"GET HTTP://example.com:8080/a%2Fb?x=%41 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(absolute.path, "/a/b");
        assert_eq!(absolute.query, [("x".to_string(), "A".to_string())]);
        let bare_authority = parse_one(b"GET https://example.com?q HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(bare_authority.path, "/");
        assert_eq!(bare_authority.query, [("q".to_string(), String::new())]);
        let asterisk = parse_one(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(asterisk.path, "*");
        let pairs = parse_one(b"GET /?a=1&&a=2&=x&b=c=d HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            pairs.query,
            [
                ("a".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
                (String::new(), "x".to_string()),
                ("b".to_string(), "c=d".to_string()),
            ]
        );
        assert_eq!(pairs.query_value("a"), Some("1"));
        let utf8 = parse_one(b"GET /caf%C3%A9 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(utf8.path, "/café");
        assert_eq!(
            parse_one(b"GET /a+b HTTP/1.1\r\nHost: a\r\n\r\n").path,
            "/a+b"
        );
    }

    #[test]
    fn targets_that_do_not_decode_are_refused() {
        for target in [
            "/a%00b",
            "/?a=%00",
            "/%e9",
            "/?%ff=1",
            "/%2",
            "/%zz",
            "/?a=%",
            "/a#fragment",
            "*",
            "example.com:443",
            "ftp://example.com/",
        ] {
            let bytes = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(refused(bytes.as_bytes()), 400, "{target}");
        }
        assert_eq!(
            refused(b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            400
        );
    }

    #[test]
    fn after_an_error_the_parser_stays_failed() {
        let mut parser = RequestParser::new(HttpLimits::default());
        let mut input = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        let error = parser.parse(&mut input).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(!parser.in_progress());
        input.clear();
        input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(parser.parse(&mut input), Err(error));
    }

    #[test]
    fn errors_name_the_problem() {
        let error = RequestParser::new(limits_small())
            .parse(&mut BytesMut::from(
                &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\n\r\n"[..],
            ))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "HTTP 413: Content-Length 65 is over the 64 bytes allowed"
        );
    }
}
