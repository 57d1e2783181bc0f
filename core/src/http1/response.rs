//! HTTP/1.1 response heads from upstreams: parse, validate, classify (RFC 9112 section 4 and 6.3).
//!
//! The proxy holds upstreams to the same strictness as clients: a response whose framing is
//! ambiguous is a 502 and its connection is never reused.

use std::mem::MaybeUninit;

use super::{
    ConnectionOptions, MAX_HEADERS, drop_connection_options, line_endings_are_crlf,
    parse_content_length,
};
use crate::head::{Framing, Header, Known, ResponseHead, Span, Version, classify};

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Malformed or ambiguous.
    Invalid,
    /// Larger than allowed.
    TooLarge,
}

impl ResponseHead {
    /// Parses the response head at the start of `buf`, within `max_len` bytes. `Ok(None)`: not
    /// complete yet.
    pub fn parse(&mut self, buf: &[u8], max_len: usize) -> Result<Option<usize>, ResponseError> {
        let window = &buf[..buf.len().min(max_len)];
        let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let head_len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, window, &mut raw)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= max_len {
                    Err(ResponseError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
            Err(_) => return Err(ResponseError::Invalid),
        };
        if !line_endings_are_crlf(&window[..head_len]) {
            return Err(ResponseError::Invalid);
        }
        let (Some(minor), Some(code), Some(reason)) = (resp.version, resp.code, resp.reason) else {
            return Err(ResponseError::Invalid);
        };
        if !(100..=999).contains(&code) {
            return Err(ResponseError::Invalid);
        }
        self.status = code;
        self.reason = Span::within(buf, reason.as_bytes());
        self.version = if minor == 1 {
            Version::Http11
        } else {
            Version::Http10
        };
        self.head_len = head_len;
        self.headers.clear();

        let mut length: Option<u64> = None;
        let mut te = false;
        let mut connection = ConnectionOptions::default();
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            let value = h.value;
            let mut header = Header {
                name: Span::within(buf, name),
                value: Span::within(buf, value),
                drop: false,
            };
            match classify(name) {
                Known::ContentLength => {
                    let n = parse_content_length(value).ok_or(ResponseError::Invalid)?;
                    if length.is_some_and(|p| p != n) {
                        return Err(ResponseError::Invalid);
                    }
                    length = Some(n);
                    header.drop = true;
                }
                Known::TransferEncoding => {
                    // Strict: exactly one "chunked" coding. Other codings would need the body
                    // delimited by close, which no sane upstream relies on.
                    if te || !value.eq_ignore_ascii_case(b"chunked") {
                        return Err(ResponseError::Invalid);
                    }
                    te = true;
                    header.drop = true;
                }
                Known::Connection => {
                    connection.add(value);
                    header.drop = true;
                }
                Known::KeepAlive | Known::ProxyConnection | Known::Te | Known::Upgrade => {
                    header.drop = true;
                }
                _ => {}
            }
            self.headers.push(header);
        }
        if connection.names_fields {
            drop_connection_options(&mut self.headers, buf);
        }
        // RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing
        // (an HTTP/1.0 recipient would read the body to the close, the proxy by chunks).
        if te && (length.is_some() || self.version == Version::Http10) {
            return Err(ResponseError::Invalid);
        }
        self.content_length = length;
        self.framing = match (te, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        };
        self.keep_alive = connection.persistent(self.version) && self.framing != Framing::Close;
        Ok(Some(head_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<ResponseHead, ResponseError> {
        let mut h = ResponseHead::default();
        h.parse(raw, 64 * 1024).map(|n| {
            assert!(n.is_some(), "incomplete");
            h
        })
    }

    #[test]
    fn framings() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (200, Framing::Length(2), true)
        );
        assert_eq!(r.head_len, 38);
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n")
            .unwrap();
        assert!(r.keep_alive);
        let r = parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(r.body_framing(false), Framing::None);
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(r.body_framing(true), Framing::None);
        assert_eq!(r.content_length, Some(5));
        let r = parse(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n").unwrap();
        assert!(r.is_interim());
        let r = parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(r.reason.is_empty());
    }

    #[test]
    fn refuses_ambiguous() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\nX: a\n\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).unwrap_err(),
                ResponseError::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
