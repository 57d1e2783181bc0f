//! The server side's translation: a client's request head decoded straight into a
//! [`RequestHead`] (RFC 9113 section 8.3.1: the authority stands for Host, cookies are joined),
//! and the proxy's answers encoded straight into header blocks. The forwarding path reads and
//! writes heads, so no head is written out as HTTP/1.1 and parsed again.

use super::block::Block;
use super::conn::Verdict;
use super::hpack;
use crate::error::ErrorKind;
use crate::head::reply::OwnReply;
use crate::head::request::FieldNotes;
use crate::head::{
    Framing, Header, Known, Method, RequestHead, ResponseHead, Span, Version, classify,
    valid_authority,
};
use crate::http1::MAX_HEADERS;

/// The mark another ringmesh puts on requests it upgraded to HTTP/2 (`protocol: mesh`), for
/// that hop only.
pub const ORIGINAL_PROTOCOL: &str = "ringmesh-original-protocol";

/// Reads the request a header block opens into `head`, its bytes copied into `buf` (which the
/// head's spans then point into). The verdict is for the stream; an accepted request may still
/// be one the proxy answers with an error (`Err`), as it would the same head over HTTP/1.1.
pub(crate) fn request(
    block: &Block,
    head: &mut RequestHead,
    buf: &mut Vec<u8>,
) -> (Verdict, Result<(), ErrorKind>) {
    let method = block.pseudo(block.method);
    if method == Some(b"CONNECT") {
        // Tunnels over HTTP/2 (RFC 9113 section 8.5, RFC 8441) are not offered.
        return (Verdict::Answer(501), Ok(()));
    }
    let (Some(method), Some(path)) = (method, block.pseudo(block.path)) else {
        return (Verdict::Malformed, Ok(()));
    };
    let path_ok = (path.first() == Some(&b'/') || (path == b"*" && method == b"OPTIONS"))
        && path.iter().all(|&b| b > b' ' && b != 0x7f);
    let authority_ok = block.pseudo(block.authority).is_none_or(|a| {
        !a.is_empty()
            && a.iter()
                .all(|&b| b > b' ' && b != 0x7f && !b"/?#@".contains(&b))
    });
    let method_ok = !method.is_empty() && method.iter().all(|&b| crate::head::is_tchar(b));
    if !method_ok || !path_ok || !authority_ok || block.scheme.is_none() {
        return (Verdict::Malformed, Ok(()));
    }
    if block.too_large() {
        return (Verdict::Answer(431), Ok(()));
    }
    // A request that ends with its head but declares a body is malformed (RFC 9113 8.1.1).
    let length = block.content_length;
    if block.end_stream && length.is_some_and(|n| n > 0) {
        return (Verdict::Malformed, Ok(()));
    }
    buf.clear();
    buf.extend_from_slice(&block.bytes);
    let result = fill(block, head, buf);
    (Verdict::Accept { length }, result)
}

/// Fills `head` from an accepted block whose bytes are in `buf`.
fn fill(block: &Block, head: &mut RequestHead, buf: &mut Vec<u8>) -> Result<(), ErrorKind> {
    let (Some(method), Some(path)) = (block.method, block.path) else {
        return Err(ErrorKind::BadRequest);
    };
    head.method = Method::from_bytes(method.get(buf));
    head.method_span = method;
    head.path = path;
    let route_end = memchr::memchr(b'?', path.get(buf)).unwrap_or(path.len());
    head.route_path = Span::at(path.start as usize, route_end);
    head.version = Version::Http2;
    // `:authority` is not a field: the HTTP/1.1 writer sends it as Host.
    head.authority = block.authority;
    head.absolute_form = block.authority.is_some();
    head.clear_fields();
    head.keep_alive = true;
    head.framing = match (block.content_length, block.end_stream) {
        (Some(0), _) | (None, true) => Framing::None,
        (Some(n), _) => Framing::Length(n),
        (None, false) => Framing::Chunked,
    };
    let mut result = Ok(());
    let mut notes = FieldNotes::default();
    let mut host = None;
    let mut cookies = 0usize;
    for &(name, value) in &block.fields {
        let n = name.get(buf);
        let mut header = Header {
            name,
            value,
            drop: false,
        };
        match classify(n) {
            Known::Host if head.absolute_form => header.drop = true,
            Known::Host => {
                if host.is_some() || !valid_authority(value.get(buf)) {
                    result = Err(ErrorKind::BadRequest);
                }
                host = Some(value);
            }
            // The framing is the proxy's to write.
            Known::ContentLength => header.drop = true,
            Known::Other if n == ORIGINAL_PROTOCOL.as_bytes() => header.drop = true,
            Known::Other if n == b"cookie" => cookies += 1,
            known => header.drop = head.note_field(known, header, value.get(buf), &mut notes),
        }
        head.headers.push(header);
    }
    if cookies > 1 {
        join_cookies(head, buf);
    }
    head.finish_fields(buf, notes);
    if head.absolute_form {
        if head.authority.is_some_and(|a| !valid_authority(a.get(buf))) {
            result = Err(ErrorKind::BadRequest);
        }
    } else {
        // As HTTP/1.1 asks of a request: an authority, one way or the other.
        head.authority = host;
        if host.is_none() {
            result = Err(ErrorKind::BadRequest);
        }
    }
    if head.headers.len() > MAX_HEADERS {
        result = Err(ErrorKind::HeadTooLarge);
    }
    head.head_len = buf.len();
    result
}

/// Cookies may come as many fields in HTTP/2 (RFC 9113 section 8.2.3); they go on as one, in
/// the place of the last, joined by `; `.
fn join_cookies(head: &mut RequestHead, buf: &mut Vec<u8>) {
    let start = buf.len();
    let mut name = None;
    for h in head.headers.iter_mut() {
        if h.name.get(buf) != b"cookie" {
            continue;
        }
        if name.is_some() {
            buf.extend_from_slice(b"; ");
        }
        let v = h.value;
        buf.extend_from_within(v.start as usize..v.end as usize);
        name = Some(h.name);
        h.drop = true;
    }
    if let Some(name) = name {
        head.headers.push(Header {
            name,
            value: Span::at(start, buf.len() - start),
            drop: false,
        });
    }
}

/// An answer's header block: `:status`, the head's fields but those HTTP/2 carries otherwise
/// or forbids, and `length` as content-length.
pub(crate) fn answer_block(
    resp: &ResponseHead,
    buf: &[u8],
    length: Option<u64>,
    out: &mut Vec<u8>,
    edits: Option<&crate::head::edit::ResponseEdits<'_>>,
) {
    put_status(out, resp.status);
    for h in &resp.headers {
        let name = h.name.get(buf);
        if h.drop
            || super::block::is_connection_specific(name)
            || name.eq_ignore_ascii_case(b"content-length")
            || edits.is_some_and(|e| e.drops(name))
        {
            continue;
        }
        hpack::put_literal(out, name, h.value.get(buf));
    }
    if let Some(e) = edits {
        e.fields(&mut |name, value| hpack::put_literal_with(out, name, value));
    }
    if let Some(n) = length {
        hpack::put_named_u64(out, hpack::CONTENT_LENGTH, n);
    }
}

/// An answer the proxy makes itself ([`OwnReply`]); its body goes as DATA.
pub(crate) fn local_reply_block(reply: &impl OwnReply, out: &mut Vec<u8>) {
    put_status(out, reply.status());
    reply.fields(&mut |name, value| hpack::put_literal_with(out, name, value));
}

/// `100 Continue`.
pub(crate) fn continue_block(out: &mut Vec<u8>) {
    put_status(out, 100);
}

/// `:status`, from the static table when it is there (one byte).
fn put_status(out: &mut Vec<u8>, status: u16) {
    let indexed = match status {
        200 => Some(0),
        204 => Some(1),
        206 => Some(2),
        304 => Some(3),
        400 => Some(4),
        404 => Some(5),
        500 => Some(6),
        _ => None,
    };
    match indexed {
        Some(i) => hpack::put_indexed(out, hpack::STATUS + i),
        None => hpack::put_named_u64(out, hpack::STATUS, status as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::block::Kind;
    use crate::h2::hpack::Decoder;
    use crate::head::Forwarded;
    use crate::http1::encode;

    fn raw(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            b.push(0);
            hpack::put_int(&mut b, 0, 7, n.len());
            b.extend_from_slice(n.as_bytes());
            hpack::put_int(&mut b, 0, 7, v.len());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    fn translate(
        fields: &[(&str, &str)],
        end: bool,
    ) -> (Verdict, Result<(), ErrorKind>, RequestHead, Vec<u8>) {
        let mut block = Block::default();
        block
            .decode(
                &mut Decoder::new(4096),
                &raw(fields),
                Kind::Request,
                1 << 16,
            )
            .unwrap();
        block.end_stream = end;
        assert!(!block.malformed, "{fields:?}");
        let mut head = RequestHead::default();
        let mut buf = Vec::new();
        let (v, r) = request(&block, &mut head, &mut buf);
        (v, r, head, buf)
    }

    /// The request as the HTTP/1.1 writer sends it upstream.
    fn upstream(head: &RequestHead, buf: &[u8]) -> String {
        let mut out = Vec::new();
        let fwd = Forwarded {
            client_ip: b"10.0.0.9",
            proto: b"https",
            fallback_host: b"up:80",
            deadline: None,
            trace: None,
            identity: None,
            edits: None,
            target: None,
            authority: None,
        };
        encode::request_head(&mut out, buf, head, &fwd);
        String::from_utf8(out).unwrap()
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a.test"),
        (":path", "/"),
    ];

    #[test]
    fn a_request_head_is_read_as_the_forwarding_path_reads_any() {
        let fields = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.example"),
            (":path", "/v1/x?q=1"),
            ("cookie", "a=1"),
            ("x-id", "7"),
            ("cookie", "b=2"),
            ("host", "ignored.example"),
            ("te", "trailers"),
            ("ringmesh-original-protocol", "HTTP/1.1"),
        ];
        let (v, r, head, buf) = translate(&fields, false);
        assert_eq!(v, Verdict::Accept { length: None });
        assert_eq!(r, Ok(()));
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.path.get(&buf), b"/v1/x?q=1");
        assert_eq!(head.route_path.get(&buf), b"/v1/x");
        assert_eq!(head.authority.unwrap().get(&buf), b"api.example");
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(head.version, Version::Http2);
        assert_eq!(
            upstream(&head, &buf),
            "POST /v1/x?q=1 HTTP/1.1\r\nhost: api.example\r\nx-id: 7\r\ncookie: a=1; b=2\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: https\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_length_is_kept_and_a_request_without_a_body_has_none() {
        let mut fields = GET.to_vec();
        fields.push(("content-length", "5"));
        let (v, _, head, _) = translate(&fields, false);
        assert_eq!(v, Verdict::Accept { length: Some(5) });
        assert_eq!(head.framing, Framing::Length(5));
        let (_, _, head, _) = translate(&GET, true);
        assert_eq!(head.framing, Framing::None);
        let (v, _, _, _) = translate(&fields, true);
        assert_eq!(v, Verdict::Malformed, "a declared body that never comes");
    }

    #[test]
    fn what_the_proxy_answers_and_what_it_resets() {
        let connect = [(":method", "CONNECT"), (":authority", "db:5432")];
        assert_eq!(translate(&connect, false).0, Verdict::Answer(501));
        for bad in [
            &[(":method", "GET"), (":scheme", "http"), (":path", "x")][..],
            &[(":method", "GET"), (":path", "/")],
            &[(":method", "G T"), (":scheme", "http"), (":path", "/")],
            &[(":scheme", "http"), (":path", "/")],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "u@h"),
            ],
        ] {
            assert_eq!(translate(bad, true).0, Verdict::Malformed, "{bad:?}");
        }
        // What HTTP/1.1 would refuse too: an authority of the wrong form, none at all, two
        // hosts.
        let no_authority = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        let (v, r, _, _) = translate(&no_authority, true);
        assert_eq!(
            (v, r),
            (Verdict::Accept { length: None }, Err(ErrorKind::BadRequest))
        );
        let mut hosts = no_authority.to_vec();
        hosts.extend([("host", "a"), ("host", "b")]);
        assert_eq!(translate(&hosts, true).1, Err(ErrorKind::BadRequest));
        let mut host = no_authority.to_vec();
        host.push(("host", "h.example:8080"));
        let (_, r, head, buf) = translate(&host, true);
        assert_eq!(r, Ok(()));
        assert_eq!(head.authority.unwrap().get(&buf), b"h.example:8080");
        assert!(upstream(&head, &buf).starts_with("GET / HTTP/1.1\r\nhost: h.example:8080\r\n"));
    }

    #[test]
    fn an_answer_head_is_encoded_without_what_http2_forbids() {
        let head = b"HTTP/1.1 201 Created\r\nX-A: 1\r\nConnection: keep-alive\r\n\
                     Content-Length: 9\r\nset-cookie: s=1\r\n\r\n";
        let mut resp = ResponseHead::default();
        resp.parse(head, 1024).unwrap().unwrap();
        let mut out = Vec::new();
        answer_block(&resp, head, Some(9), &mut out, None);
        let mut fields = Vec::new();
        Decoder::new(4096)
            .decode(&out, |n, v| {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                fields.push((s(n), s(v)));
            })
            .unwrap();
        let want = [
            (":status", "201"),
            ("x-a", "1"),
            ("set-cookie", "s=1"),
            ("content-length", "9"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(fields, want);
        let mut out = Vec::new();
        let ok = b"HTTP/1.1 200 OK\r\n\r\n";
        resp.parse(ok, 1024).unwrap().unwrap();
        answer_block(&resp, ok, None, &mut out, None);
        assert_eq!(
            out,
            [0x80 | hpack::STATUS as u8],
            "a common status is one byte"
        );
    }
}
