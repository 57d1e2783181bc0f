//! The small HTTP/1.1 server side the admin API and the control plane's API share, on the
//! data plane's own codec (`RequestHead::parse`: the same strict framing, line endings and
//! field checks): one request at a time per connection, bodies by Content-Length, keep-alive.
//! Also the blocking reader of answers that the control plane's clients (the proxy's agent, the
//! etcd client) share, on `ResponseHead::parse` and the chunked decoder. Not on any request path
//! of the proxy.

use std::io::Read;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use ringmesh_core::head::{Framing, RequestHead, ResponseHead};
use ringmesh_core::http1::ChunkedDecoder;
use ringmesh_core::http1::encode::reason;

/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body (a whole desired state with many endpoints).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a connection may sit between requests.
const IDLE: Duration = Duration::from_secs(120);
/// How long a request may take to arrive whole, from its first byte (a client that drips one
/// keeps nothing for long).
const REQUEST_TIME: Duration = Duration::from_secs(30);

/// One request.
#[derive(Debug, Default)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The path's segments, each percent-decoded on its own (so that an encoded `/` stays
    /// inside its segment).
    pub segments: Vec<String>,
    /// The query's `k=v` pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// `If-Match`, quotes removed.
    pub if_match: Option<String>,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `Host`.
    pub host: Option<String>,
    /// An `Origin` field came (a browser's request).
    pub origin: bool,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the connection ends after the answer.
    pub close: bool,
}

impl Request {
    /// The token of `Authorization: Bearer TOKEN`.
    pub fn bearer(&self) -> Option<&str> {
        let a = self.authorization.as_deref()?;
        let (scheme, token) = a.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// The value of query parameter `k`.
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request is `GET` or `HEAD`.
    pub fn is_read(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    /// Reads what the API needs of a parsed head (`head`, its bytes in `buf`).
    fn from_head(head: &RequestHead, buf: &[u8]) -> Request {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let path = head.route_path.get(buf);
        let query = &head.path.get(buf)[path.len()..];
        let mut req = Request {
            method: text(head.method_span.get(buf)),
            path: percent_decode(path),
            segments: path[path.iter().take_while(|&&b| b == b'/').count()..]
                .split(|&b| b == b'/')
                .map(percent_decode_path)
                .collect(),
            query: query_pairs(query),
            host: head.authority.map(|a| text(a.get(buf))),
            close: !head.keep_alive,
            ..Request::default()
        };
        for h in &head.headers {
            let (name, value) = (h.name.get(buf), h.value.get(buf));
            if name.eq_ignore_ascii_case(b"if-match") {
                req.if_match = Some(text(value).trim_matches('"').to_string());
            } else if name.eq_ignore_ascii_case(b"authorization") {
                req.authorization = Some(text(value));
            } else if name.eq_ignore_ascii_case(b"origin") {
                req.origin = true;
            } else if name.eq_ignore_ascii_case(b"content-type") {
                req.content_type = Some(text(value).to_ascii_lowercase());
            }
        }
        req
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub ctype: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// `ETag` to send (a version).
    pub etag: Option<u64>,
    /// `ringmesh-error`: why the request was refused, for answers the API refuses with.
    pub error_kind: Option<&'static str>,
    /// More fields (a page's security policy).
    pub headers: &'static [(&'static str, &'static str)],
}

impl Response {
    /// An answer of `ctype`.
    pub fn new(status: u16, ctype: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            ctype,
            body: body.into(),
            etag: None,
            error_kind: None,
            headers: &[],
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json", body)
    }

    /// A one-line text answer.
    pub fn text(status: u16, line: &str) -> Response {
        Response::new(status, "text/plain", format!("{line}\n"))
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(
            status,
            serde_json::json!({ "error": message }).to_string() + "\n",
        )
    }
}

/// Reads the next request into `buf` (which keeps bytes read past it). `body_limit` says, from
/// the head, how large a body may be read (so that a caller who may not send a large one
/// never makes the server hold it). `Err(status)` is a request that cannot be served (the
/// connection is answered with it and closed); `Ok(None)` is a connection that ended, idled
/// out, or took longer than [`REQUEST_TIME`] over one request.
pub async fn read_request<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    body_limit: &dyn Fn(&Request) -> usize,
) -> Result<Option<Request>, (u16, &'static str)> {
    let mut until: Option<Instant> = None;
    let mut head = RequestHead::default();
    let (head_len, mut req, length) = loop {
        if !buf.is_empty() {
            match head.parse(buf, MAX_HEAD) {
                Ok(Some(n)) => {
                    let req = Request::from_head(&head, buf);
                    let length = match head.framing {
                        Framing::None | Framing::Close => 0,
                        Framing::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
                        Framing::Chunked => {
                            return Err((411, "send bodies with a content-length"));
                        }
                    };
                    if length > MAX_BODY.min(body_limit(&req)) {
                        return Err((413, "body too large for this caller and call"));
                    }
                    break (n, req, length);
                }
                Ok(None) => {}
                Err(kind) => {
                    let status = kind.status();
                    let why = match status {
                        431 => "request head too large",
                        _ => "malformed request",
                    };
                    return Err((status, why));
                }
            }
        }
        if !fill(stream, buf, until).await {
            return Ok(None);
        }
        until.get_or_insert_with(|| Instant::now() + REQUEST_TIME);
    };
    while buf.len() < head_len + length {
        let until = *until.get_or_insert_with(|| Instant::now() + REQUEST_TIME);
        if !fill(stream, buf, Some(until)).await {
            return Ok(None);
        }
    }
    req.body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    Ok(Some(req))
}

/// Reads more into `buf`; false when the peer closed, failed, idled out, or `until` passed.
async fn fill<S: AsyncReadRent>(stream: &mut S, buf: &mut Vec<u8>, until: Option<Instant>) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().max(4096));
    }
    let wait = until.map_or(IDLE, |u| {
        u.saturating_duration_since(Instant::now()).min(IDLE)
    });
    let len = buf.len();
    let read = stream.read(std::mem::take(buf).slice_mut(len..));
    let (res, b) = monoio::select! {
        r = read => r,
        _ = monoio::time::sleep(wait) => return false,
    };
    *buf = b.into_inner();
    matches!(res, Ok(n) if n > 0)
}

/// Writes `resp`; false when the connection failed. `head_only`: the request was HEAD, the
/// body's length is said but the body not sent.
pub async fn respond<S: AsyncWriteRent>(
    stream: &mut S,
    resp: Response,
    close: bool,
    head_only: bool,
) -> bool {
    let mut out = Vec::with_capacity(160 + resp.body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n",
            resp.status,
            reason(resp.status),
            resp.ctype,
            resp.body.len()
        )
        .as_bytes(),
    );
    if let Some(v) = resp.etag {
        out.extend_from_slice(format!("etag: \"{v}\"\r\n").as_bytes());
    }
    if let Some(kind) = resp.error_kind {
        out.extend_from_slice(format!("ringmesh-error: {kind}\r\n").as_bytes());
        if resp.status == 401 {
            out.extend_from_slice(b"www-authenticate: Bearer realm=\"ringmesh\"\r\n");
        }
    }
    for (name, value) in resp.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    stream.write_all(out).await.0.is_ok()
}

/// `k=v` pairs of a query string, percent-decoded.
pub fn query_pairs(query: &[u8]) -> Vec<(String, String)> {
    let q = query.strip_prefix(b"?").unwrap_or(query);
    q.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &b""[..]),
            };
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `%XX` decoded, `+` as a space; invalid UTF-8 replaced.
pub fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match s[i] {
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%XX` decoded (but not `+`: in a path it is a plus); invalid UTF-8 replaced.
pub fn percent_decode_path(s: &[u8]) -> String {
    if !s.contains(&b'+') {
        return percent_decode(s);
    }
    s.split(|&b| b == b'+')
        .map(percent_decode)
        .collect::<Vec<_>>()
        .join("+")
}

/// `s` with everything but unreserved characters percent-encoded (for path segments and query
/// values).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum Unanswered {
    /// The connection closed (or was reset) before any byte of an answer.
    #[error("connection closed")]
    Closed,
    /// TLS failed (rustls reports its errors as invalid data).
    #[error("{0}")]
    Tls(std::io::Error),
    /// The connection failed.
    #[error("{0}")]
    Failed(std::io::Error),
    /// The answer is malformed, too large, or cut short.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Reads one answer of at most `limit` bytes: its status, its body (de-chunked), and whether
/// the connection can carry another request. It stops at the end of the body, not at the end
/// of the connection.
pub fn read_answer<R: Read>(s: &mut R, limit: usize) -> Result<(u16, Vec<u8>, bool), Unanswered> {
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 16 * 1024];
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::InvalidData => Unanswered::Tls(e),
        _ => Unanswered::Failed(e),
    };
    let mut head = ResponseHead::default();
    let head_len = loop {
        let n = match s.read(&mut buf) {
            Ok(0) if raw.is_empty() => return Err(Unanswered::Closed),
            Err(e) if raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Unanswered::Closed);
            }
            Ok(0) => return Err(Unanswered::Malformed("answer cut short")),
            Ok(n) => n,
            Err(e) => return Err(failed(e)),
        };
        raw.extend_from_slice(&buf[..n]);
        match head.parse(&raw, 64 * 1024) {
            Ok(Some(n)) => break n,
            Ok(None) => {}
            Err(_) => return Err(Unanswered::Malformed("malformed answer")),
        }
    };
    raw.drain(..head_len);
    let keep = head.keep_alive;
    let mut body = Vec::new();
    let mut chunks = ChunkedDecoder::new();
    loop {
        match head.framing {
            Framing::Chunked => {
                let p = chunks
                    .feed(&raw, |r| body.extend_from_slice(&raw[r]))
                    .map_err(|_| Unanswered::Malformed("malformed chunk"))?;
                // Anything after the answer would be out of step: no reuse then.
                if p.done {
                    return Ok((head.status, body, keep && raw.len() == p.consumed));
                }
                raw.clear();
            }
            Framing::Length(n) if raw.len() as u64 >= n => {
                raw.truncate(n as usize);
                return Ok((head.status, raw, keep));
            }
            Framing::None => return Ok((head.status, Vec::new(), keep && raw.is_empty())),
            Framing::Length(_) | Framing::Close => {}
        }
        if raw.len() + body.len() > limit {
            return Err(Unanswered::Malformed("answer too large"));
        }
        let n = s.read(&mut buf).map_err(failed)?;
        if n == 0 {
            if head.framing == Framing::Close {
                return Ok((head.status, raw, false));
            }
            return Err(Unanswered::Malformed("answer cut short"));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips() {
        for s in ["edge-1", "a b/c%", "ü", "%", "%4", "x%41"] {
            assert_eq!(percent_decode(percent_encode(s).as_bytes()), s);
        }
        assert_eq!(percent_decode(b"%41%zz%"), "A%zz%");
    }

    #[test]
    fn answers_are_read_to_the_end_of_their_body() {
        let mut plain =
            std::io::Cursor::new(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokNEXT".to_vec());
        let (status, body, reuse) = read_answer(&mut plain, 1024).expect("an answer");
        assert_eq!((status, &body[..], reuse), (200, &b"ok"[..], true));
        let mut chunked = std::io::Cursor::new(
            b"HTTP/1.1 503 x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n".to_vec(),
        );
        let (status, body, reuse) = read_answer(&mut chunked, 1024).expect("an answer");
        assert_eq!((status, &body[..], reuse), (503, &b"abc"[..], false));
        let mut empty = std::io::Cursor::new(Vec::new());
        assert!(matches!(
            read_answer(&mut empty, 1024),
            Err(Unanswered::Closed)
        ));
        let mut big =
            std::io::Cursor::new(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n".to_vec());
        assert!(read_answer(&mut big, 1024).is_err());
        // An answer framed two ways is refused, as the proxy refuses one.
        let mut smuggled = std::io::Cursor::new(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\nok"
                .to_vec(),
        );
        assert!(matches!(
            read_answer(&mut smuggled, 1024),
            Err(Unanswered::Malformed(_))
        ));
    }
}
