//! The small HTTP/1.1 server side the control plane's API needs: one request at a time per
//! connection, bodies by Content-Length, keep-alive. Not on any request path of the proxy.

use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body (a whole desired state with many endpoints).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a connection may sit between requests, and a request take to arrive.
const IDLE: Duration = Duration::from_secs(120);

/// One request.
#[derive(Debug, Default)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The query's `k=v` pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// `If-Match`, quotes removed.
    pub if_match: Option<String>,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the connection ends after the answer.
    pub close: bool,
}

impl Request {
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
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            ctype: "application/json",
            body: body.into(),
            etag: None,
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

/// Reads the next request into `buf` (which keeps bytes read past it). `Err(status)` is a
/// request that cannot be served (the connection is answered with it and closed); `Ok(None)` is
/// a connection that ended or idled out.
pub async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, (u16, &'static str)> {
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
                        }
                    }
                    if length > MAX_BODY {
                        return Err((413, "body too large"));
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
        if !fill(stream, buf).await {
            return Ok(None);
        }
    };
    while buf.len() < head_len + length {
        if !fill(stream, buf).await {
            return Ok(None);
        }
    }
    req.body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    Ok(Some(req))
}

/// Reads more into `buf`; false when the peer closed, failed or idled out.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().max(4096));
    }
    let len = buf.len();
    let read = stream.read(std::mem::take(buf).slice_mut(len..));
    let (res, b) = monoio::select! {
        r = read => r,
        _ = monoio::time::sleep(IDLE) => return false,
    };
    *buf = b.into_inner();
    matches!(res, Ok(n) if n > 0)
}

/// Writes `resp`; false when the connection failed.
pub async fn respond(stream: &mut TcpStream, resp: Response, close: bool) -> bool {
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
}
