//! Writers of outgoing heads: the request sent upstream, the response sent to the client, and the
//! answers the proxy makes itself. They append to a reused buffer; nothing is allocated once the
//! buffer has grown to its working size.

use crate::digits::push_u64;
use crate::head::edit::ResponseEdits;
use crate::head::forward::added_fields;
use crate::head::reply::OwnReply;
use crate::head::{Forwarded, Framing, Known, RequestHead, ResponseHead, Version, classify};

/// Writes the head of the request sent upstream over HTTP/1.1: hop-by-hop fields removed,
/// framing regenerated, and what the proxy adds ([`crate::head::forward`]).
pub fn request_head(out: &mut Vec<u8>, buf: &[u8], req: &RequestHead, fwd: &Forwarded<'_>) {
    out.extend_from_slice(req.method_span.get(buf));
    out.push(b' ');
    out.extend_from_slice(req.sent_target(buf, fwd));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The authority goes as Host unless it came as a Host field, which is among those kept
    // (but for a rewritten one).
    if req.absolute_form || req.authority.is_none() || fwd.authority.is_some() {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(req.sent_authority(buf, fwd));
        out.extend_from_slice(b"\r\n");
    }
    for h in req.kept_fields(buf, fwd) {
        field_line(out, h.name.get(buf), h.value.get(buf));
    }
    added_fields(req, buf, fwd, |name, value| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        value(out);
        out.extend_from_slice(b"\r\n");
    });
    framing_header(out, req.framing);
    if let Some(u) = req.upgrade {
        out.extend_from_slice(b"upgrade: ");
        out.extend_from_slice(u.get(buf));
        out.extend_from_slice(b"\r\nconnection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
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
        if h.drop && classify(name) != Known::Upgrade {
            continue;
        }
        field_line(out, name, h.value.get(buf));
    }
    out.extend_from_slice(b"connection: upgrade\r\n\r\n");
}

/// The proxy's answer to a CONNECT whose tunnel is open.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

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
pub fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    cf: ClientFraming,
    edits: Option<&ResponseEdits<'_>>,
) {
    answer_status_line(out, buf, resp);
    for h in resp.headers.iter().filter(|h| !h.drop) {
        let name = h.name.get(buf);
        if edits.is_some_and(|e| e.drops(name)) {
            continue;
        }
        field_line(out, name, h.value.get(buf));
    }
    if let Some(e) = edits {
        e.fields(&mut |name, value| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            value(out);
            out.extend_from_slice(b"\r\n");
        });
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
    answer_status_line(out, buf, resp);
    for h in resp.headers.iter().filter(|h| !h.drop) {
        field_line(out, h.name.get(buf), h.value.get(buf));
    }
    out.extend_from_slice(b"\r\n");
}

/// The status line of an upstream's answer: its reason phrase, or for an HTTP/2 answer (which
/// has none) the status's own.
fn answer_status_line(out: &mut Vec<u8>, buf: &[u8], resp: &ResponseHead) {
    let reason = match resp.version {
        Version::Http2 => canonical_reason(resp.status).as_bytes(),
        _ => resp.reason.get(buf),
    };
    status_line(out, resp.status, reason);
}

/// The reason phrase RFC 9110 gives a status, or `Unknown`.
pub fn canonical_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
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

/// Writes an answer the proxy makes itself ([`OwnReply`]), with `connection: close` when the
/// connection ends after it.
pub fn local_reply(out: &mut Vec<u8>, reply: &impl OwnReply, close: bool) {
    let status = reply.status();
    status_line(out, status, reason(status).as_bytes());
    reply.fields(&mut |name, value| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        value(out);
        out.extend_from_slice(b"\r\n");
    });
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    reply.write_body(out);
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
                    && client != Version::Http10 =>
                {
                    Framing::Chunked
                }
                _ => Framing::None,
            };
            (declared, !client_keep_alive)
        }
        (Framing::Length(n), _) => (Framing::Length(n), !client_keep_alive),
        (Framing::Chunked | Framing::Close, Version::Http11 | Version::Http2) => {
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

/// How a coded answer goes to the client: its length is not known beforehand, so chunked, or
/// to the close for HTTP/1.0; with no body (HEAD), no length at all, as a coded GET would have
/// none to declare.
pub fn coded_framing(body: Framing, client: Version, client_keep_alive: bool) -> ClientFraming {
    let (framing, close) = match (body, client) {
        (Framing::None, _) => (Framing::None, !client_keep_alive),
        (_, Version::Http10) => (Framing::Close, true),
        _ => (Framing::Chunked, !client_keep_alive),
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
    use crate::error::ErrorKind;
    use crate::head::reply::LocalReply;

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
            edits: None,
            target: None,
            authority: None,
        };
        request_head(&mut out, raw, &req, &fwd);
        String::from_utf8(out).unwrap()
    }

    fn forward(raw: &[u8]) -> String {
        forward_traced(raw, None)
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
        let reply = |kind, head_request| LocalReply {
            kind,
            grpc: false,
            head_request,
            retry_after: None,
            edits: None,
        };
        local_reply(&mut out, &reply(ErrorKind::NoRoute, false), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nringmesh-error: no-route\r\ncontent-type: text/plain\r\n\
             content-length: 9\r\n\r\nno-route\n"
        );
        let mut out = Vec::new();
        local_reply(&mut out, &reply(ErrorKind::BadRequest, true), true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with("connection: close\r\n\r\n"), "{s}");
    }
}
