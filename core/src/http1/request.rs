//! HTTP/1.1 request heads: parse, validate, classify (RFC 9112 sections 3, 6 and 7), into the
//! protocol-neutral [`RequestHead`].
//!
//! [`RequestHead::parse`] either returns a head whose framing is unambiguous or the error kind the
//! proxy answers with. It never allocates once the header list has grown to its working size.

use std::mem::MaybeUninit;

use super::{
    ConnectionOptions, MAX_HEADERS, drop_connection_options, line_endings_are_crlf,
    parse_content_length,
};
use crate::error::ErrorKind;
use crate::head::request::FieldNotes;
use crate::head::{
    Framing, Header, Known, Method, RequestHead, Span, Version, classify, for_each_token,
    valid_authority,
};

impl RequestHead {
    /// Parses the head at the start of `buf`, looking at no more than `max_len` bytes.
    ///
    /// Returns `Ok(None)` when the head is incomplete and may still fit; the caller reads more.
    /// On success `self` describes the head and `head_len` says where the body starts.
    pub fn parse(&mut self, buf: &[u8], max_len: usize) -> Result<Option<usize>, ErrorKind> {
        let window = &buf[..buf.len().min(max_len)];
        let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(window, &mut raw) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= max_len {
                    Err(ErrorKind::HeadTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ErrorKind::HeadTooLarge),
            Err(_) => return Err(ErrorKind::BadRequest),
        };
        let head = &window[..head_len];
        if !line_endings_are_crlf(head) {
            return Err(ErrorKind::BadRequest);
        }
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(ErrorKind::BadRequest);
        };
        self.head_len = head_len;
        self.method = Method::from_bytes(method.as_bytes());
        self.method_span = Span::within(buf, method.as_bytes());
        self.version = if minor == 1 {
            Version::Http11
        } else {
            Version::Http10
        };
        self.absolute_form = false;
        self.authority = None;
        self.clear_fields();
        let mut upgrades = 0u8;
        let mut notes = FieldNotes::default();

        if self.method == Method::Connect {
            self.connect_target(buf, target.as_bytes())?;
        } else {
            self.parse_target(buf, target.as_bytes())?;
        }

        let mut host: Option<Span> = None;
        let mut length: Option<u64> = None;
        let mut codings = Codings::default();
        let mut connection = ConnectionOptions::default();
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let value = h.value;
            let mut header = Header {
                name: Span::within(buf, name),
                value: Span::within(buf, value),
                drop: false,
            };
            match classify(name) {
                Known::Host => {
                    if host.is_some() || !valid_authority(value) {
                        return Err(ErrorKind::BadRequest);
                    }
                    host = Some(header.value);
                    header.drop = self.absolute_form;
                }
                Known::ContentLength => {
                    let n = parse_content_length(value).ok_or(ErrorKind::BadRequest)?;
                    if length.is_some_and(|prev| prev != n) {
                        return Err(ErrorKind::BadRequest);
                    }
                    length = Some(n);
                    header.drop = true;
                }
                Known::TransferEncoding => {
                    codings.add(value);
                    header.drop = true;
                }
                Known::Connection => {
                    connection.add(value);
                    header.drop = true;
                }
                Known::Upgrade => {
                    // Two fields would need merging: rare enough to refuse the upgrade.
                    upgrades = upgrades.saturating_add(1);
                    self.upgrade = Some(header.value);
                    header.drop = true;
                }
                known => header.drop = self.note_field(known, header, value, &mut notes),
            }
            self.headers.push(header);
        }
        self.finish_fields(buf, notes);
        if connection.names_fields {
            drop_connection_options(&mut self.headers, buf);
        }

        match (codings.any || codings.invalid, length) {
            (true, Some(_)) => return Err(ErrorKind::BadRequest),
            (true, None) => {
                // RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding is faulty.
                if self.version == Version::Http10 {
                    return Err(ErrorKind::BadRequest);
                }
                codings.check()?;
                self.framing = Framing::Chunked;
            }
            (false, Some(0) | None) => self.framing = Framing::None,
            (false, Some(n)) => self.framing = Framing::Length(n),
        }
        if !self.absolute_form {
            match (host, self.version) {
                (None, Version::Http11) => return Err(ErrorKind::BadRequest),
                (h, _) => self.authority = h,
            }
        }
        self.keep_alive = connection.persistent(self.version);
        if self.method == Method::Connect && self.framing != Framing::None {
            // RFC 9110 section 9.3.6: a CONNECT request has no content.
            return Err(ErrorKind::BadRequest);
        }
        let upgrade = self.upgrade.take().filter(|u| {
            upgrades == 1
                && connection.upgrade
                && self.version == Version::Http11
                && self.framing == Framing::None
                && self.method != Method::Connect
                && !names_h2c(u.get(buf))
        });
        self.upgrade = upgrade;
        Ok(Some(head_len))
    }

    /// A CONNECT target: authority-form, `host:port` (RFC 9110 section 9.3.6). It is the
    /// request's authority; the request has no path.
    fn connect_target(&mut self, buf: &[u8], target: &[u8]) -> Result<(), ErrorKind> {
        let port = target
            .iter()
            .rposition(|&b| b == b':')
            .map(|i| &target[i + 1..])
            .filter(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
        if port.is_none() || !valid_authority(target) || target.contains(&b'@') {
            return Err(ErrorKind::BadRequest);
        }
        self.absolute_form = true;
        self.authority = Some(Span::within(buf, target));
        self.path = Span::within(buf, &target[..0]);
        self.route_path = self.path;
        Ok(())
    }

    fn parse_target(&mut self, buf: &[u8], target: &[u8]) -> Result<(), ErrorKind> {
        let (path, authority) = match target {
            [b'/', ..] => (target, None),
            b"*" if self.method == Method::Options => (target, None),
            _ => {
                let rest = strip_scheme(target).ok_or(ErrorKind::BadRequest)?;
                let end = rest
                    .iter()
                    .position(|&b| b == b'/' || b == b'?')
                    .unwrap_or(rest.len());
                let (authority, path) = rest.split_at(end);
                if authority.is_empty() || !valid_authority(authority) {
                    return Err(ErrorKind::BadRequest);
                }
                if path.first() == Some(&b'?') {
                    // "http://host?q" has an empty path; origin-form needs "/?q". Rare enough to
                    // refuse rather than rewrite.
                    return Err(ErrorKind::BadRequest);
                }
                (path, Some(authority))
            }
        };
        if let Some(a) = authority {
            self.absolute_form = true;
            self.authority = Some(Span::within(buf, a));
        }
        self.path = Span::within(buf, path);
        let route_end = memchr::memchr(b'?', path).unwrap_or(path.len());
        self.route_path = Span::within(buf, &path[..route_end]);
        Ok(())
    }
}

/// The transfer codings of a request, over all its Transfer-Encoding fields in order.
#[derive(Default)]
struct Codings {
    any: bool,
    last_is_chunked: bool,
    chunked: u32,
    unknown: bool,
    invalid: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        let mut empty = true;
        for_each_token(value, |t| {
            empty = false;
            self.any = true;
            self.last_is_chunked = t.eq_ignore_ascii_case(b"chunked");
            if self.last_is_chunked {
                self.chunked += 1;
            } else if t.iter().all(|&b| crate::head::is_tchar(b)) {
                self.unknown = true;
            } else {
                self.invalid = true;
            }
        });
        self.invalid |= empty;
    }

    /// RFC 9112 section 6.3: chunked must be the final coding, once (else the length cannot be
    /// known: 400); any other coding is one the proxy does not implement (501).
    fn check(&self) -> Result<(), ErrorKind> {
        if self.invalid || !self.last_is_chunked || self.chunked > 1 {
            Err(ErrorKind::BadRequest)
        } else if self.unknown {
            Err(ErrorKind::Unsupported)
        } else {
            Ok(())
        }
    }
}

/// Whether an Upgrade value names h2c: HTTP/2 over cleartext is never set up through an
/// HTTP/1.1 upgrade passed on by the proxy (h2c smuggling would tunnel past its routing and
/// policies).
fn names_h2c(value: &[u8]) -> bool {
    let mut h2c = false;
    for_each_token(value, |t| {
        let proto = t.split(|&b| b == b'/').next().unwrap_or(t);
        h2c |= proto.eq_ignore_ascii_case(b"h2c");
    });
    h2c
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', target)?;
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    target[colon + 1..].strip_prefix(b"//")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<RequestHead, ErrorKind> {
        let mut h = RequestHead::default();
        match h.parse(raw, 64 * 1024)? {
            Some(_) => Ok(h),
            None => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn kind(raw: &[u8]) -> ErrorKind {
        parse(raw).expect_err("must be refused")
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:80\r\nAccept: */*\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path.get(raw), b"/a/b?x=1");
        assert_eq!(h.route_path.get(raw), b"/a/b");
        assert_eq!(h.authority.unwrap().get(raw), b"example.com:80");
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert_eq!(h.head_len, raw.len());
        assert_eq!(h.headers.len(), 2);
    }

    #[test]
    fn incomplete_and_too_large() {
        let mut h = RequestHead::default();
        assert_eq!(h.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 1024), Ok(None));
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(h.parse(&big, 64), Err(ErrorKind::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(h.parse(&many, 1 << 20), Err(ErrorKind::HeadTooLarge));
    }

    #[test]
    fn framing_and_smuggling() {
        let te =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(te.framing, Framing::Chunked);
        let cl = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(cl.framing, Framing::Length(5));
        let cl2 =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(cl2.unwrap().framing, Framing::Length(5));
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \x00\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\x01: b\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(kind(bad), ErrorKind::BadRequest, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            ErrorKind::Unsupported
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            ErrorKind::BadRequest,
            "the last coding is not chunked: the length is unknowable"
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ErrorKind::Unsupported
        );
        assert_eq!(
            kind(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"),
            ErrorKind::BadRequest,
            "CONNECT has no content"
        );
        assert_eq!(
            kind(b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadRequest
        );
        let raw = b"CONNECT db.example:5432 HTTP/1.1\r\nHost: x\r\n\r\n";
        let h = parse(raw).unwrap();
        assert_eq!(h.authority.unwrap().get(raw), b"db.example:5432");
        assert!(h.path.is_empty() && h.route_path.is_empty());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, Host\r\n\
            X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\n\
            Proxy-Connection: x\r\nX-Other: 2\r\nX-Forwarded-Proto: evil\r\n\r\n";
        let h = parse(raw).unwrap();
        let kept: Vec<&[u8]> = h
            .headers
            .iter()
            .filter(|h| !h.drop)
            .map(|h| h.name.get(raw))
            .collect();
        assert_eq!(kept, vec![&b"Host"[..], b"X-Other"]);
        assert!(h.upgrade.is_none(), "h2c is never passed on");
    }

    #[test]
    fn upgrades_are_passed_on_only_when_fully_asked_for() {
        let up = |raw: &[u8]| parse(raw).unwrap().upgrade.map(|s| s.get(raw).to_vec());
        assert_eq!(
            up(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n"),
            Some(b"websocket".to_vec())
        );
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo, h2c/1\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: a\r\nUpgrade: b\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: a\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\nx",
        ] {
            assert_eq!(up(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn versions_and_keep_alive() {
        assert!(
            !parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        let h10 = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h10.keep_alive);
        assert_eq!(h10.version, Version::Http10);
        assert!(h10.authority.is_none());
        assert!(
            parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn absolute_form_replaces_host() {
        let raw = b"GET http://Example.com:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = parse(raw).unwrap();
        assert!(h.absolute_form);
        assert_eq!(h.authority.unwrap().get(raw), b"Example.com:8080");
        assert_eq!(h.path.get(raw), b"/p?q");
        assert!(h.headers[0].drop, "the received Host is replaced");
        let raw = b"GET http://a HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = parse(raw).unwrap();
        assert!(h.path.is_empty());
        assert_eq!(h.route_path.get(raw), b"");
    }

    #[test]
    fn expect_continue() {
        let h = parse(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert!(h.expect_continue);
        assert!(h.headers[1].drop);
    }

    #[test]
    fn options_star() {
        let raw = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parse(raw).unwrap().path.get(raw), b"*");
    }
}
