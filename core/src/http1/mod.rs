//! HTTP/1.1 codec (RFC 9110, RFC 9112): strict parsing of request and response heads, the chunked
//! body decoder, and the writers of outgoing heads. No I/O here: every function takes bytes and
//! returns offsets, so the codec is unit-tested and fuzzed without sockets.
//!
//! Heads are parsed with httparse into *offsets* ([`crate::head::Span`]) of the connection's read buffer, as the
//! protocol-neutral heads of [`crate::head`]; the
//! proxy copies nothing until it writes the outgoing head. Anything ambiguous (two framings, bare
//! CR or LF, obs-fold, invalid bytes) is an error: the proxy never guesses where a message ends.

pub mod chunked;
pub mod encode;
pub mod request;
pub mod response;

pub use chunked::{ChunkError, ChunkedDecoder, ChunkedForward};
pub use response::ResponseError;

use crate::head::{Header, Known, Version, allowed_in_trailer, classify, for_each_token, trim_ows};

/// Most header fields a head may carry; past it the answer is 431 (502 for responses).
pub const MAX_HEADERS: usize = 128;

/// The options of a message's `Connection` fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    /// The `upgrade` option: the message asks to switch protocols.
    pub upgrade: bool,
    /// Some option names a header field (to drop as hop-by-hop).
    pub names_fields: bool,
}

impl ConnectionOptions {
    /// Adds the options of one `Connection` field.
    pub fn add(&mut self, value: &[u8]) {
        for_each_token(value, |t| {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
                self.names_fields = true;
            }
        });
    }

    /// Whether the connection persists after this message (RFC 9112 section 9.3).
    pub fn persistent(&self, version: Version) -> bool {
        match version {
            Version::Http11 | Version::Http2 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        }
    }
}

/// Marks the headers named by `Connection` options as hop-by-hop (RFC 9110 section 7.6.1).
pub(crate) fn drop_connection_options(headers: &mut [Header], buf: &[u8]) {
    for i in 0..headers.len() {
        if classify(headers[i].name.get(buf)) != Known::Connection {
            continue;
        }
        let value = headers[i].value.get(buf);
        for_each_token(value, |t| {
            if !connection_may_drop(t) {
                return;
            }
            for h in headers.iter_mut() {
                if h.name.get(buf).eq_ignore_ascii_case(t) {
                    h.drop = true;
                }
            }
        });
    }
}

/// Whether a `Connection` option may name this header for removal. Framing and routing headers
/// are never removed that way: a client must not be able to strip them from what the next hop
/// sees (hop-by-hop header abuse).
pub(crate) fn connection_may_drop(name: &[u8]) -> bool {
    !matches!(
        classify(name),
        Known::Host | Known::ContentLength | Known::TransferEncoding
    )
}

/// Parses a Content-Length value: one or more comma-separated copies of the same decimal number.
/// Anything else (sign, spaces inside, differing copies, overflow) is `None`.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

/// Every line of a head must end in CRLF: a bare LF or a bare CR is a framing ambiguity that
/// other parsers read differently (RFC 9112 section 2.2), so it is refused.
pub(crate) fn line_endings_are_crlf(head: &[u8]) -> bool {
    let mut lf = 0usize;
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head[i - 1] != b'\r' {
            return false;
        }
        lf += 1;
    }
    memchr::memchr_iter(b'\r', head).count() == lf
}

/// The lines of an HTTP/1.1 trailer section (`name: value\r\n` each; anything after the last
/// CRLF, such as the CR of the final CRLF, is ignored).
pub fn trailer_lines(section: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    section.split_inclusive(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r\n")?;
        let colon = memchr::memchr(b':', line)?;
        let value = &line[colon + 1..];
        let start = value.iter().position(|&b| b != b' ' && b != b'\t')?;
        let end = value.iter().rposition(|&b| b != b' ' && b != b'\t')? + 1;
        Some((&line[..colon], &value[start..end]))
    })
}

/// Writes the fields of a received trailer section that may cross
/// ([`allowed_in_trailer`]), then the final CRLF.
pub fn write_trailers(section: &[u8], out: &mut Vec<u8>) {
    for (name, value) in trailer_lines(section).filter(|(n, _)| allowed_in_trailer(n)) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_accepts_only_identical_decimal_copies() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"42, 42"), Some(42));
        assert_eq!(parse_content_length(b"42,43"), None);
        assert_eq!(parse_content_length(b"+4"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"0x10"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
    }

    #[test]
    fn line_endings() {
        assert!(line_endings_are_crlf(b"a\r\nb\r\n\r\n"));
        assert!(!line_endings_are_crlf(b"a\nb\r\n\r\n"));
        assert!(!line_endings_are_crlf(b"a\rb\r\n\r\n"));
        assert!(!line_endings_are_crlf(b"\n"));
    }
}
