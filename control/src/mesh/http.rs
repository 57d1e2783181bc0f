//! The small HTTP/1.1 server side the control plane's API needs: one request at a time per
//! connection (plain or TLS), bodies by Content-Length, keep-alive. Not on any request path of
//! the proxy. Also the blocking reader of answers that its clients (the proxy's agent, the etcd
//! client) share.

use std::io::Read;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body (a whole desired state with many endpoints).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a connection may sit between requests.
const IDLE: Duration = Duration::from_secs(120);
/// How long a request may take to arrive whole, from its first byte (a client that drips one
/// keeps nothing for long).
const REQUEST_TIME: Duration = Duration::from_secs(30);
/// Largest chunk of a chunked answer.
const MAX_CHUNK: usize = 256 << 20;

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
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            ctype: "application/json",
            body: body.into(),
            etag: None,
            error_kind: None,
        }
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
    let mut until: Option<std::time::Instant> = None;
    let (head_len, mut req, length) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 48];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut req = Request {
                        method: r.method.unwrap_or_default().to_string(),
                        close: r.version == Some(0),
                        ..Request::default()
                    };
                    let target = r.path.unwrap_or_default();
                    let (path, query) = target.split_once('?').unwrap_or((target, ""));
                    req.path = percent_decode(path.as_bytes());
                    req.segments = path
                        .trim_start_matches('/')
                        .split('/')
                        .map(|s| percent_decode_path(s.as_bytes()))
                        .collect();
                    req.query = query_pairs(query.as_bytes());
                    let mut length = 0usize;
                    for h in r.headers.iter() {
                        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = v.parse().map_err(|_| (400, "bad content-length"))?;
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err((411, "send bodies with a content-length"));
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            req.close |= v.eq_ignore_ascii_case("close");
                        } else if h.name.eq_ignore_ascii_case("if-match") {
                            req.if_match = Some(v.trim_matches('"').to_string());
                        } else if h.name.eq_ignore_ascii_case("authorization") {
                            req.authorization = Some(v.to_string());
                        } else if h.name.eq_ignore_ascii_case("host") {
                            if req.host.is_some() {
                                return Err((400, "two Host fields"));
                            }
                            req.host = Some(v.to_string());
                        } else if h.name.eq_ignore_ascii_case("origin") {
                            req.origin = true;
                        } else if h.name.eq_ignore_ascii_case("content-type") {
                            req.content_type = Some(v.to_ascii_lowercase());
                        }
                    }
                    if length > MAX_BODY.min(body_limit(&req)) {
                        return Err((413, "body too large for this caller and call"));
                    }
                    break (n, req, length);
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err((431, "request head too large"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err((400, "malformed request")),
            }
        }
        if !fill(stream, buf, until).await {
            return Ok(None);
        }
        until.get_or_insert_with(|| std::time::Instant::now() + REQUEST_TIME);
    };
    while buf.len() < head_len + length {
        let until = *until.get_or_insert_with(|| std::time::Instant::now() + REQUEST_TIME);
        if !fill(stream, buf, Some(until)).await {
            return Ok(None);
        }
    }
    req.body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    Ok(Some(req))
}

/// Reads more into `buf`; false when the peer closed, failed, idled out, or `until` passed.
async fn fill<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    until: Option<std::time::Instant>,
) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().max(4096));
    }
    let wait = until.map_or(IDLE, |u| {
        u.saturating_duration_since(std::time::Instant::now())
            .min(IDLE)
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

/// Writes `resp`; false when the connection failed.
pub async fn respond<S: AsyncWriteRent>(stream: &mut S, resp: Response, close: bool) -> bool {
    let reason = ringmesh_core::http1::encode::reason(resp.status);
    let mut out = Vec::with_capacity(160 + resp.body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
            resp.status,
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
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&resp.body);
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
#[derive(Debug)]
pub enum Unanswered {
    /// The connection closed (or was reset) before any byte of an answer.
    Closed,
    Tls(String),
    Failed(String),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::Closed => f.write_str("connection closed"),
            Unanswered::Tls(e) | Unanswered::Failed(e) => f.write_str(e),
        }
    }
}

/// Reads one answer of at most `limit` bytes: its status, its body (de-chunked), and whether
/// the connection can carry another request. It stops at the end of the body, not at the end
/// of the connection.
pub fn read_answer<R: Read>(s: &mut R, limit: usize) -> Result<(u16, Vec<u8>, bool), Unanswered> {
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 16 * 1024];
    // rustls reports its errors as invalid data.
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::InvalidData => Unanswered::Tls(e.to_string()),
        _ => Unanswered::Failed(e.to_string()),
    };
    let (status, head, length, chunked, close) = loop {
        let n = match s.read(&mut buf) {
            Ok(0) if raw.is_empty() => return Err(Unanswered::Closed),
            Err(e) if raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Unanswered::Closed);
            }
            Ok(0) => return Err(Unanswered::Failed("answer cut short".into())),
            Ok(n) => n,
            Err(e) => return Err(failed(e)),
        };
        raw.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&raw) {
            Ok(httparse::Status::Complete(head)) => {
                let find = |name: &str| {
                    r.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::trim)
                };
                let length = find("content-length").and_then(|v| v.parse::<usize>().ok());
                let chunked =
                    find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                break (r.code.unwrap_or(0), head, length, chunked, close);
            }
            Ok(httparse::Status::Partial) if raw.len() < 64 * 1024 => {}
            _ => return Err(Unanswered::Failed("malformed answer".into())),
        }
    };
    raw.drain(..head);
    let mut body = Vec::new();
    loop {
        if chunked {
            match dechunk(&raw) {
                Chunk::Data(range, used) => {
                    body.extend_from_slice(&raw[range]);
                    raw.drain(..used);
                    continue;
                }
                // Anything after the answer would be out of step: no reuse then.
                Chunk::End(used) => return Ok((status, body, !close && raw.len() == used)),
                Chunk::Bad => return Err(Unanswered::Failed("malformed chunk".into())),
                Chunk::Partial => {}
            }
        } else if let Some(n) = length {
            if raw.len() >= n {
                raw.truncate(n);
                return Ok((status, raw, !close));
            }
        }
        if raw.len() + body.len() > limit {
            return Err(Unanswered::Failed("answer too large".into()));
        }
        let n = s.read(&mut buf).map_err(failed)?;
        if n == 0 {
            if !chunked && length.is_none() {
                return Ok((status, raw, false));
            }
            return Err(Unanswered::Failed("answer cut short".into()));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

pub enum Chunk {
    /// The chunk's data range in the input, and how many bytes the chunk took.
    Data(std::ops::Range<usize>, usize),
    /// The last chunk, and how many bytes it and the trailers took.
    End(usize),
    Partial,
    Bad,
}

/// Decodes one chunk of a chunked body from the start of `raw`.
pub fn dechunk(raw: &[u8]) -> Chunk {
    let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
        return if raw.len() > 1024 {
            Chunk::Bad
        } else {
            Chunk::Partial
        };
    };
    let line = std::str::from_utf8(&raw[..eol]).unwrap_or("");
    let size_text = line.split(';').next().unwrap_or("").trim();
    let Ok(size) = usize::from_str_radix(size_text, 16) else {
        return Chunk::Bad;
    };
    if size > MAX_CHUNK {
        return Chunk::Bad;
    }
    let start = eol + 2;
    if size == 0 {
        // The last chunk, then trailers (if any) up to an empty line.
        return match raw[eol..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => Chunk::End(eol + i + 4),
            None if raw.len() > 16 * 1024 => Chunk::Bad,
            None => Chunk::Partial,
        };
    }
    let end = start + size;
    if raw.len() < end + 2 {
        return Chunk::Partial;
    }
    if &raw[end..end + 2] != b"\r\n" {
        return Chunk::Bad;
    }
    Chunk::Data(start..end, end + 2)
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
    }

    #[test]
    fn chunks_decode_whole_split_and_bad() {
        let raw = b"5\r\nhello\r\n0\r\n\r\n";
        let Chunk::Data(r, used) = dechunk(raw) else {
            panic!("a chunk")
        };
        assert_eq!(&raw[r], b"hello");
        assert!(matches!(dechunk(&raw[used..]), Chunk::End(5)));
        assert!(matches!(dechunk(b"0\r\nx: y\r\n\r\n"), Chunk::End(11)));
        assert!(matches!(dechunk(b"0\r\n\r"), Chunk::Partial));
        assert!(matches!(dechunk(b"5\r\nhel"), Chunk::Partial));
        assert!(matches!(dechunk(b"zz\r\nhello\r\n"), Chunk::Bad));
        assert!(matches!(dechunk(b"5\r\nhelloXY"), Chunk::Bad));
        assert!(matches!(dechunk(b"ffffffffffffffff\r\n"), Chunk::Bad));
    }
}
