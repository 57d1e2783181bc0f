//! The client side's translation: a request encoded straight from its [`RequestHead`] and what
//! the proxy adds to it ([`Forwarded`]) into a header block, and an upstream's answer decoded
//! straight into a [`ResponseHead`]. No head is written out as HTTP/1.1 and parsed again.

use super::block::{Block, is_connection_specific};
use super::conn::Verdict;
use super::hpack;
use super::server::ORIGINAL_PROTOCOL;
use crate::head::forward::added_fields;
use crate::head::{
    Forwarded, Framing, Header, Known, RequestHead, ResponseHead, Span, Version, classify,
};

/// The request's header block: pseudo-fields, the client's fields the proxy keeps but those
/// HTTP/2 carries otherwise (Host as `:authority`, the framing) or forbids, what the proxy adds,
/// `te: trailers` (the proxy takes trailers, and gRPC servers insist on being told so), the
/// mark of a request that came in as HTTP/1.1 (`mesh`), and the length.
pub(crate) fn request_block(
    req: &RequestHead,
    buf: &[u8],
    fwd: &Forwarded<'_>,
    tls: bool,
    mesh: bool,
    out: &mut Vec<u8>,
) {
    match req.method_span.get(buf) {
        b"GET" => hpack::put_indexed(out, hpack::METHOD_GET),
        b"POST" => hpack::put_indexed(out, hpack::METHOD_POST),
        m => hpack::put_named(out, hpack::METHOD, m),
    }
    let scheme = if tls {
        hpack::SCHEME_HTTPS
    } else {
        hpack::SCHEME_HTTP
    };
    hpack::put_indexed(out, scheme);
    let authority = req.sent_authority(buf, fwd);
    if !authority.is_empty() {
        hpack::put_named(out, hpack::AUTHORITY, authority);
    }
    match req.sent_target(buf, fwd) {
        b"/" => hpack::put_indexed(out, hpack::PATH_ROOT),
        path => hpack::put_named(out, hpack::PATH, path),
    }
    for h in req.kept_fields(buf, fwd) {
        let name = h.name.get(buf);
        let elsewhere = matches!(
            classify(name),
            Known::Host | Known::ContentLength | Known::Te
        );
        if !elsewhere && !is_connection_specific(name) {
            hpack::put_literal(out, name, h.value.get(buf));
        }
    }
    added_fields(req, buf, fwd, |name, value| {
        hpack::put_literal_with(out, name, value)
    });
    hpack::put_literal(out, b"te", b"trailers");
    if mesh {
        hpack::put_literal(out, ORIGINAL_PROTOCOL.as_bytes(), b"HTTP/1.1");
    }
    if let Framing::Length(n) = req.framing {
        hpack::put_named_u64(out, hpack::CONTENT_LENGTH, n);
    }
}

/// What an answer's head says of the body behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AnswerBody {
    /// The body goes to the forwarding path chunk-coded: it has no length, or is gRPC's
    /// (whose status comes in trailers, which HTTP/1.1 carries only after chunks).
    pub chunked: bool,
}

/// Reads an answer's head from `block` into `resp`, with spans into the block's bytes (which
/// the caller keeps). `head_request`: the request was HEAD, so a declared length has no body.
pub(crate) fn answer(
    block: &Block,
    head_request: bool,
    resp: &mut ResponseHead,
) -> (Verdict, AnswerBody) {
    let plain = AnswerBody { chunked: false };
    if block.too_large() {
        return (Verdict::Malformed, plain);
    }
    let Some(status) = block.status_code() else {
        return (Verdict::Malformed, plain);
    };
    if status < 200 {
        // 101 has no place in HTTP/2 (RFC 9113 section 8.6); other interim answers are not
        // passed on.
        let v = if status == 101 {
            Verdict::Malformed
        } else {
            Verdict::Interim
        };
        return (v, plain);
    }
    resp.status = status;
    resp.reason = Span::default();
    resp.version = Version::Http2;
    resp.keep_alive = true;
    resp.headers.clear();
    let mut grpc = false;
    for &(name, value) in &block.fields {
        let n = block.get(name);
        let known = classify(n);
        grpc |= known == Known::ContentType && block.get(value).starts_with(b"application/grpc");
        resp.headers.push(Header {
            name,
            value,
            // The framing is the proxy's to write.
            drop: known == Known::ContentLength,
        });
    }
    let length = block.content_length;
    let bodiless = head_request || status == 204 || status == 304;
    let chunked = !block.end_stream && (length.is_none() || grpc) && !bodiless;
    resp.framing = if chunked {
        Framing::Chunked
    } else {
        Framing::Length(length.unwrap_or(0))
    };
    // An answer whose body ends with its DATA says how long it is; one without a length that
    // ends here says 0 to an HTTP/1.1 client. A bodiless answer keeps the length it declared.
    resp.content_length = if chunked {
        None
    } else if bodiless {
        length
    } else {
        Some(length.unwrap_or(0))
    };
    resp.head_len = block.bytes.len();
    // A bodiless answer's declared length is not its body's: it may have none.
    let left = if bodiless {
        Some(0)
    } else if chunked {
        None
    } else {
        length
    };
    (Verdict::Accept { length: left }, AnswerBody { chunked })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::block::Kind;
    use crate::h2::hpack::Decoder;
    use crate::http1::encode;

    fn fields_of(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        Decoder::new(4096)
            .decode(block, |n, v| {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                fields.push((s(n), s(v)));
            })
            .unwrap();
        fields
    }

    #[test]
    fn a_request_goes_with_its_authority_as_a_pseudo_field_and_what_the_proxy_adds() {
        let raw = b"PUT /p?q=1 HTTP/1.1\r\nHost: up.example\r\nX-A: 1\r\nConnection: x\r\n\
                    X-Forwarded-For: 1.1.1.1\r\nContent-Length: 3\r\n\r\n";
        let mut req = RequestHead::default();
        req.parse(raw, 1 << 16).unwrap().unwrap();
        let fwd = Forwarded {
            client_ip: b"10.0.0.9",
            proto: b"http",
            fallback_host: b"up:80",
            deadline: Some(std::time::Duration::from_millis(1500)),
            trace: None,
            identity: Some("spiffe://mesh/a"),
            edits: None,
            target: None,
            authority: None,
        };
        let mut out = Vec::new();
        request_block(&req, raw, &fwd, false, true, &mut out);
        let got = fields_of(&out);
        let want = [
            (":method", "PUT"),
            (":scheme", "http"),
            (":authority", "up.example"),
            (":path", "/p?q=1"),
            ("x-a", "1"),
            ("x-forwarded-for", "1.1.1.1, 10.0.0.9"),
            ("x-forwarded-proto", "http"),
            ("ringmesh-deadline-ms", "1500"),
            ("ringmesh-client-identity", "spiffe://mesh/a"),
            ("te", "trailers"),
            ("ringmesh-original-protocol", "HTTP/1.1"),
            ("content-length", "3"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_long_added_value_keeps_its_length_prefix_right() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: ".to_vec();
        raw.extend(std::iter::repeat_n(b'1', 300));
        raw.extend_from_slice(b"\r\n\r\n");
        let mut req = RequestHead::default();
        req.parse(&raw, 1 << 16).unwrap().unwrap();
        let fwd = Forwarded {
            client_ip: b"10.0.0.9",
            proto: b"http",
            fallback_host: b"",
            deadline: None,
            trace: None,
            identity: None,
            edits: None,
            target: None,
            authority: None,
        };
        let mut out = Vec::new();
        request_block(&req, &raw, &fwd, true, false, &mut out);
        let got = fields_of(&out);
        let xff = got.iter().find(|(n, _)| n == "x-forwarded-for").unwrap();
        assert_eq!(xff.1.len(), 300 + 2 + 8);
        assert_eq!(got.last().unwrap().0, "te");
    }

    fn decode(
        fields: &[(&str, &str)],
        end: bool,
        head_request: bool,
    ) -> (Verdict, ResponseHead, Block) {
        let mut raw = Vec::new();
        for (n, v) in fields {
            hpack::put_literal(&mut raw, n.as_bytes(), v.as_bytes());
        }
        let mut block = Block::default();
        block
            .decode(&mut Decoder::new(4096), &raw, Kind::Answer, 1 << 16)
            .unwrap();
        block.end_stream = end;
        let mut resp = ResponseHead::default();
        let (v, _) = answer(&block, head_request, &mut resp);
        (v, resp, block)
    }

    /// The answer as the HTTP/1.1 writer gives it to a client.
    fn to_client(resp: &ResponseHead, buf: &[u8], head_request: bool) -> String {
        let body = resp.body_framing(head_request);
        let cf = encode::client_framing(body, resp, Version::Http11, true);
        let mut out = Vec::new();
        encode::response_head(&mut out, buf, resp, cf, None);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_answer_head_is_read_into_a_response_head() {
        let (v, resp, block) = decode(
            &[
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", "5"),
            ],
            false,
            false,
        );
        assert_eq!(v, Verdict::Accept { length: Some(5) });
        assert_eq!(
            to_client(&resp, &block.bytes, false),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
        );
        let (v, resp, block) = decode(
            &[(":status", "200"), ("content-type", "text/plain")],
            false,
            false,
        );
        assert_eq!(v, Verdict::Accept { length: None });
        assert_eq!(resp.framing, Framing::Chunked);
        assert!(
            to_client(&resp, &block.bytes, false).ends_with("transfer-encoding: chunked\r\n\r\n")
        );
        let (_, resp, block) = decode(&[(":status", "204")], true, false);
        assert_eq!(
            to_client(&resp, &block.bytes, false),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        let (v, resp, block) = decode(&[(":status", "200"), ("content-length", "7")], true, true);
        assert_eq!(v, Verdict::Accept { length: Some(0) });
        assert!(to_client(&resp, &block.bytes, true).contains("content-length: 7\r\n"));
        let (v, resp, block) = decode(&[(":status", "503")], true, false);
        assert_eq!(v, Verdict::Accept { length: None });
        assert!(to_client(&resp, &block.bytes, false).ends_with("content-length: 0\r\n\r\n"));
        let (v, resp, _) = decode(
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("content-length", "9"),
            ],
            false,
            false,
        );
        assert_eq!(v, Verdict::Accept { length: None });
        assert_eq!(
            resp.framing,
            Framing::Chunked,
            "gRPC's status comes in trailers"
        );
        assert_eq!(
            decode(&[(":status", "103")], false, false).0,
            Verdict::Interim
        );
        assert_eq!(
            decode(&[(":status", "101")], false, false).0,
            Verdict::Malformed
        );
        assert_eq!(decode(&[("x", "1")], false, false).0, Verdict::Malformed);
    }
}
