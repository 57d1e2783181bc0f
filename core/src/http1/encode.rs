//! Writers of outgoing heads: the request sent upstream, the response sent to the client, and the
//! answers the proxy makes itself. They append to a reused buffer; nothing is allocated once the
//! buffer has grown to its working size.

use super::{Framing, RequestHead, ResponseHead, Version};
use crate::error::ErrorKind;

/// Two decimal digits for each of 0 to 99.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
      2021222324252627282930313233343536373839\
      4041424344454647484950515253545556575859\
      6061626364656667686970717273747576777879\
      8081828384858687888990919293949596979899";

/// Appends the decimal form of `n`. Numbers below 100,000 (statuses, ports, small sizes, most
/// of what a head or a log line holds) are written by constant-size stores, without a call.
#[inline]
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    let pair = |v: u64| {
        let d = v as usize * 2;
        [DIGIT_PAIRS[d], DIGIT_PAIRS[d + 1]]
    };
    match n {
        0..10 => out.push(b'0' + n as u8),
        10..100 => out.extend_from_slice(&pair(n)),
        100..1000 => {
            let [a, b] = pair(n % 100);
            out.extend_from_slice(&[b'0' + (n / 100) as u8, a, b]);
        }
        1000..10_000 => {
            let ([a, b], [c, d]) = (pair(n / 100), pair(n % 100));
            out.extend_from_slice(&[a, b, c, d]);
        }
        10_000..100_000 => {
            let ([b, c], [d, e]) = (pair(n / 100 % 100), pair(n % 100));
            out.extend_from_slice(&[b'0' + (n / 10_000) as u8, b, c, d, e]);
        }
        _ => push_u64_long(out, n),
    }
}

/// [`push_u64`] for 100,000 and up: two digits per division, written in place (no scratch
/// copy of variable length, which would cost a `memmove` call per number).
fn push_u64_long(out: &mut Vec<u8>, mut n: u64) {
    let len = n.ilog10() as usize + 1;
    let start = out.len();
    // A constant-size extend is a couple of stores; the excess is cut off at once.
    out.extend_from_slice(&[0u8; 20]);
    out.truncate(start + len);
    let digits = &mut out[start..];
    let mut i = len;
    while n >= 100 {
        let d = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if n >= 10 {
        let d = n as usize * 2;
        digits[..2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        digits[0] = b'0' + n as u8;
    }
}

/// What the proxy adds to a request it forwards.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address, appended to X-Forwarded-For.
    pub client_ip: &'a [u8],
    /// The scheme the client used, for X-Forwarded-Proto.
    pub proto: &'a [u8],
    /// Host to send when the client sent none (HTTP/1.0).
    pub fallback_host: &'a [u8],
    /// Time left for the answer, passed on to the next hop.
    pub deadline: Option<std::time::Duration>,
    /// The trace context for the next hop.
    pub trace: Option<&'a crate::trace::Trace>,
    /// The client's verified identity (mTLS), sent as `ringmesh-client-identity`.
    pub identity: Option<&'a str>,
}

/// Writes the head of the request sent upstream: always HTTP/1.1, hop-by-hop fields removed,
/// framing regenerated, X-Forwarded-For and X-Forwarded-Proto set.
pub fn request_head(out: &mut Vec<u8>, buf: &[u8], req: &RequestHead, fwd: &Forwarded<'_>) {
    out.extend_from_slice(req.method_span.get(buf));
    out.push(b' ');
    if req.path.is_empty() {
        out.push(b'/');
    } else {
        out.extend_from_slice(req.path.get(buf));
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match req.authority {
        Some(a) if req.absolute_form => {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(a.get(buf));
            out.extend_from_slice(b"\r\n");
        }
        None => {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(fwd.fallback_host);
            out.extend_from_slice(b"\r\n");
        }
        Some(_) => {}
    }
    for h in &req.headers {
        if h.drop || (req.has_xff && is_xff(h.name.get(buf))) {
            continue;
        }
        out.extend_from_slice(h.name.get(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    // One X-Forwarded-For field: what the client sent, then the client itself.
    out.extend_from_slice(b"x-forwarded-for: ");
    if req.has_xff {
        for h in req
            .headers
            .iter()
            .filter(|h| !h.drop && is_xff(h.name.get(buf)))
        {
            out.extend_from_slice(h.value.get(buf));
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.client_ip);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"x-forwarded-proto: ");
    out.extend_from_slice(fwd.proto);
    out.extend_from_slice(b"\r\n");
    if let Some(left) = fwd.deadline {
        out.extend_from_slice(b"ringmesh-deadline-ms: ");
        push_u64(out, left.as_millis() as u64);
        out.extend_from_slice(b"\r\n");
        if req.grpc {
            out.extend_from_slice(b"grpc-timeout: ");
            crate::retry::write_grpc_timeout(out, left);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(t) = fwd.trace {
        t.write_headers(out);
    }
    if let Some(id) = fwd.identity {
        out.extend_from_slice(b"ringmesh-client-identity: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    framing_header(out, req.framing);
    if let Some(u) = req.upgrade {
        out.extend_from_slice(b"upgrade: ");
        out.extend_from_slice(u.get(buf));
        out.extend_from_slice(b"\r\nconnection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The head of a `101 Switching Protocols` answer to an upgrade the client asked for: the
/// upstream's fields (its `Upgrade` included), and `connection: upgrade`.
pub fn switching_head(out: &mut Vec<u8>, buf: &[u8], resp: &ResponseHead) {
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(resp.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    for h in &resp.headers {
        let name = h.name.get(buf);
        if h.drop && super::classify(name) != super::Known::Upgrade {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: upgrade\r\n\r\n");
}

/// The proxy's answer to a CONNECT whose tunnel is open.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

#[inline]
fn is_xff(name: &[u8]) -> bool {
    name.len() == 15 && name.eq_ignore_ascii_case(b"x-forwarded-for")
}

fn framing_header(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
}

/// How the response to the client is delimited and whether the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFraming {
    /// Framing header to write (`Close` writes none).
    pub framing: Framing,
    /// Close the client connection after this response.
    pub close: bool,
    /// The client speaks HTTP/1.0 and keeps the connection open: say so.
    pub keep_alive_10: bool,
}

/// Writes the head of a response sent to the client.
pub fn response_head(out: &mut Vec<u8>, buf: &[u8], resp: &ResponseHead, cf: ClientFraming) {
    status_line(out, resp.status, resp.reason.get(buf));
    for h in &resp.headers {
        if h.drop {
            continue;
        }
        out.extend_from_slice(h.name.get(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    framing_header(out, cf.framing);
    if cf.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if cf.keep_alive_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes an interim (1xx) response for an HTTP/1.1 client.
pub fn interim_head(out: &mut Vec<u8>, buf: &[u8], resp: &ResponseHead) {
    status_line(out, resp.status, resp.reason.get(buf));
    for h in resp.headers.iter().filter(|h| !h.drop) {
        out.extend_from_slice(h.name.get(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// The canonical reason phrase of the statuses the proxy makes itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Writes an answer the proxy makes itself: status, `ringmesh-error`, a one-line text body
/// (none for HEAD requests), and `connection: close` when the connection ends after it.
pub fn local_reply(
    out: &mut Vec<u8>,
    kind: ErrorKind,
    head_request: bool,
    close: bool,
    retry_after: Option<u64>,
) {
    let status = kind.status();
    status_line(out, status, reason(status).as_bytes());
    out.extend_from_slice(b"ringmesh-error: ");
    out.extend_from_slice(kind.name().as_bytes());
    if let Some(secs) = retry_after {
        out.extend_from_slice(b"\r\nretry-after: ");
        push_u64(out, secs);
    }
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    let body_len = kind.name().len() + 1;
    push_u64(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(kind.name().as_bytes());
        out.push(b'\n');
    }
}

/// The proxy's own answer to a gRPC request: 200 with the status in `grpc-status` and no body
/// (gRPC's "trailers-only" form), as gRPC clients read statuses from there, not from HTTP.
pub fn grpc_local_reply(out: &mut Vec<u8>, kind: ErrorKind, close: bool) {
    status_line(out, 200, b"OK");
    out.extend_from_slice(b"ringmesh-error: ");
    out.extend_from_slice(kind.name().as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/grpc\r\ngrpc-status: ");
    push_u64(out, u64::from(kind.grpc_status()));
    out.extend_from_slice(b"\r\ngrpc-message: ");
    out.extend_from_slice(kind.name().as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `100 Continue` interim answer.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Decides the framing of the response to the client from the upstream's body framing and what
/// the client can take.
pub fn client_framing(
    body: Framing,
    resp: &ResponseHead,
    client: Version,
    client_keep_alive: bool,
) -> ClientFraming {
    let (framing, close) = match (body, client) {
        (Framing::None, _) => {
            // HEAD and 304 answers keep the length the upstream declared.
            let declared = match resp.content_length {
                Some(n) if !resp.is_interim() && resp.status != 204 => Framing::Length(n),
                _ if resp.framing == Framing::Chunked
                    && resp.status != 204
                    && client == Version::Http11 =>
                {
                    Framing::Chunked
                }
                _ => Framing::None,
            };
            (declared, !client_keep_alive)
        }
        (Framing::Length(n), _) => (Framing::Length(n), !client_keep_alive),
        (Framing::Chunked | Framing::Close, Version::Http11) => {
            (Framing::Chunked, !client_keep_alive)
        }
        // An HTTP/1.0 client cannot take chunked: the body ends when the proxy closes.
        (Framing::Chunked | Framing::Close, Version::Http10) => (Framing::Close, true),
    };
    ClientFraming {
        framing,
        close,
        keep_alive_10: client == Version::Http10 && !close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_like_display() {
        let mut n = 1u64;
        let mut values: Vec<u64> = (0..200_000).chain([u64::MAX, u64::MAX - 1]).collect();
        while let Some(m) = n.checked_mul(10) {
            values.extend([n - 1, n, n + 1, m - 1]);
            n = m;
        }
        for v in values {
            let mut out = b"x".to_vec();
            push_u64(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
    }

    /// The head sent upstream for `raw`, from client 10.0.0.9, with the trace `trace`.
    fn forward_traced(raw: &[u8], trace: Option<&crate::trace::Trace>) -> String {
        let mut req = RequestHead::default();
        req.parse(raw, 1 << 16).unwrap().unwrap();
        let mut out = Vec::new();
        let fwd = Forwarded {
            client_ip: b"10.0.0.9",
            proto: b"http",
            fallback_host: b"up:80",
            deadline: None,
            trace,
            identity: None,
        };
        request_head(&mut out, raw, &req, &fwd);
        String::from_utf8(out).unwrap()
    }

    fn forward(raw: &[u8]) -> String {
        forward_traced(raw, None)
    }

    #[test]
    fn decimal_numbers() {
        for n in [0, 7, 10, 99, 100, 101, 999, 1000, 65_535, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn trace_headers_are_replaced_not_duplicated() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nb3: 64fe8b2a57d3eff7-e457b5a2e4d86bd1\r\n\
                    traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
                    tracestate: k=v\r\n\r\n";
        let mut req = RequestHead::default();
        req.parse(raw, 1 << 16).unwrap().unwrap();
        let tp = req.traceparent.map(|s| s.get(raw));
        let b3 = req.b3.map(|s| s.get(raw));
        let trace = crate::trace::Trace::continue_or_start(tp, b3, &mut crate::rng::Rng::new(9));
        let out = forward_traced(raw, Some(&trace));
        assert_eq!(
            out.matches("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-")
                .count(),
            1,
            "{out}"
        );
        assert_eq!(out.matches("b3: ").count(), 1, "{out}");
        assert!(!out.contains("00f067aa0ba902b7-01"), "{out}");
        assert!(out.contains("tracestate: k=v\r\n"), "{out}");
    }

    #[test]
    fn forwarded_request_head() {
        let out = forward(
            b"POST /p?q HTTP/1.1\r\nHost: a\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\
              Content-Length: 3\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            out,
            "POST /p?q HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn xff_is_appended_to() {
        let out = forward(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n");
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 10.0.0.9\r\n"),
            "{out}"
        );
        let out = forward(
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: a\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
        );
        assert_eq!(out.matches("orwarded-for").count(), 1, "{out}");
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n"),
            "{out}"
        );
        let out = forward(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: a\r\n\r\n");
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 10.0.0.9\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn absolute_form_and_http10() {
        let out = forward(b"GET http://b.example/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            out.starts_with("GET /x HTTP/1.1\r\nhost: b.example\r\n"),
            "{out}"
        );
        assert!(!out.contains("Host: a"));
        let out = forward(b"GET http://b.example HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
        let out = forward(b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nhost: up:80\r\n"),
            "{out}"
        );
        let out = forward(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
    }

    #[test]
    fn local_replies() {
        let mut out = Vec::new();
        local_reply(&mut out, ErrorKind::NoRoute, false, false, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nringmesh-error: no-route\r\ncontent-type: text/plain\r\n\
             content-length: 9\r\n\r\nno-route\n"
        );
        let mut out = Vec::new();
        local_reply(&mut out, ErrorKind::BadRequest, true, true, None);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with("connection: close\r\n\r\n"), "{s}");
    }

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 99, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
