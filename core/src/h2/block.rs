//! A received header block, decoded and held to what RFC 9113 section 8 asks of every message,
//! whichever side sent it: pseudo-fields first and each once, of the kinds the message may
//! carry; field names lowercase tokens; no connection-specific field; `te` only in a request
//! and only as `trailers`; values without NUL, CR, LF or whitespace at either end; one content
//! length. What a request or an answer must hold beyond that is for each side's translation
//! (`request.rs`, `response.rs`).
//!
//! Names and values are copied one after the other into [`Block::bytes`], and fields are spans
//! of it: the side that takes a head keeps the bytes and the spans as they are.

use super::frame::{parse_length, valid_name, valid_value};
use super::hpack::{Decoder, Malformed};
use crate::head::Span;

/// What a header block is, from where it comes on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A request's head: `:method`, `:scheme`, `:authority`, `:path`.
    Request,
    /// An answer's head (interim or final): `:status`.
    Answer,
    /// Trailers: no pseudo-field.
    Trailers,
}

/// A decoded header block.
#[derive(Debug, Default)]
pub(crate) struct Block {
    /// Names and values, one after the other.
    pub bytes: Vec<u8>,
    /// The regular fields, in order: name and value.
    pub fields: Vec<(Span, Span)>,
    pub method: Option<Span>,
    pub scheme: Option<Span>,
    pub authority: Option<Span>,
    pub path: Option<Span>,
    pub status: Option<Span>,
    /// The content length the fields declare.
    pub content_length: Option<u64>,
    /// Broke a rule above: the stream is reset (the connection goes on).
    pub malformed: bool,
    /// What the block weighs as a head: names, values and four bytes a field (a line's
    /// framing), for the head limit. Bytes past the limit are not kept.
    pub size: usize,
    /// The head limit it was decoded under.
    max: usize,
    /// The block came with END_STREAM.
    pub end_stream: bool,
}

impl Block {
    /// Whether the block weighs more as a head than the limit it was decoded under.
    pub fn too_large(&self) -> bool {
        self.size > self.max
    }

    /// The bytes of `span`.
    #[inline]
    pub fn get(&self, span: Span) -> &[u8] {
        span.get(&self.bytes)
    }

    /// The bytes of an optional pseudo-field.
    pub fn pseudo(&self, span: Option<Span>) -> Option<&[u8]> {
        span.map(|s| self.get(s))
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
        self.method = None;
        self.scheme = None;
        self.authority = None;
        self.path = None;
        self.status = None;
        self.content_length = None;
        self.malformed = false;
        self.size = 0;
        self.end_stream = false;
    }

    /// Decodes `raw` as a block of `kind`, keeping at most `max` bytes of it. `Err`: the
    /// block breaks HPACK (the connection's error, from `decoder`).
    pub fn decode(
        &mut self,
        decoder: &mut Decoder,
        raw: &[u8],
        kind: Kind,
        max: usize,
    ) -> Result<(), Malformed> {
        self.clear();
        self.max = max;
        let mut regular = false;
        decoder.decode(raw, |name, value| {
            self.size += name.len() + value.len() + 4;
            if self.malformed {
                return;
            }
            if !valid_value(value) {
                self.malformed = true;
                return;
            }
            if name.first() == Some(&b':') {
                // Pseudo-fields come first, each once (RFC 9113 section 8.3).
                let slot = match (kind, name) {
                    (_, _) if regular => None,
                    (Kind::Request, b":method") => Some(&mut self.method),
                    (Kind::Request, b":scheme") => Some(&mut self.scheme),
                    (Kind::Request, b":authority") => Some(&mut self.authority),
                    (Kind::Request, b":path") => Some(&mut self.path),
                    (Kind::Answer, b":status") => Some(&mut self.status),
                    _ => None,
                };
                match slot {
                    Some(slot) if slot.is_none() => {
                        // Past the limit the block is refused as too large: nothing of it
                        // need be kept.
                        if self.size <= max {
                            let at = self.bytes.len();
                            self.bytes.extend_from_slice(value);
                            *slot = Some(Span::at(at, value.len()));
                        }
                    }
                    _ => self.malformed = true,
                }
                return;
            }
            regular = true;
            let allowed = valid_name(name)
                && !is_connection_specific(name)
                && (name != b"te" || (kind != Kind::Answer && value == b"trailers"));
            if !allowed {
                self.malformed = true;
                return;
            }
            if name == b"content-length" {
                match parse_length(value) {
                    Some(n) if self.content_length.is_none_or(|l| l == n) => {
                        self.content_length = Some(n);
                    }
                    _ => {
                        self.malformed = true;
                        return;
                    }
                }
            }
            if self.size > max {
                return;
            }
            let at = self.bytes.len();
            self.bytes.extend_from_slice(name);
            self.bytes.extend_from_slice(value);
            let name_span = Span::at(at, name.len());
            self.fields
                .push((name_span, Span::at(at + name.len(), value.len())));
        })
    }

    /// The status of an answer's head, if it is three digits.
    pub fn status_code(&self) -> Option<u16> {
        match self.pseudo(self.status)? {
            [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
                Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
            }
            _ => None,
        }
    }
}

/// Fields HTTP/2 forbids (RFC 9113 section 8.2.2).
pub(crate) fn is_connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::hpack;

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
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

    fn decode(kind: Kind, fields: &[(&str, &str)]) -> Block {
        let mut b = Block::default();
        let mut d = Decoder::new(4096);
        b.decode(&mut d, &block(fields), kind, 1 << 16).unwrap();
        b
    }

    #[test]
    fn fields_are_spans_of_the_decoded_bytes() {
        let b = decode(
            Kind::Request,
            &[
                (":method", "GET"),
                (":path", "/x"),
                ("x-a", "1"),
                ("x-b", "22"),
            ],
        );
        assert!(!b.malformed);
        assert_eq!(b.pseudo(b.method), Some(&b"GET"[..]));
        assert_eq!(b.pseudo(b.path), Some(&b"/x"[..]));
        let fields: Vec<(&[u8], &[u8])> = b
            .fields
            .iter()
            .map(|&(n, v)| (b.get(n), b.get(v)))
            .collect();
        assert_eq!(fields, [(&b"x-a"[..], &b"1"[..]), (b"x-b", b"22")]);
    }

    #[test]
    fn what_every_message_must_hold() {
        let bad: &[(Kind, &[(&str, &str)])] = &[
            (Kind::Request, &[("x", "1"), (":path", "/")]),
            (Kind::Request, &[(":path", "/"), (":path", "/")]),
            (Kind::Request, &[(":status", "200")]),
            (Kind::Answer, &[(":method", "GET")]),
            (Kind::Trailers, &[(":status", "200")]),
            (Kind::Request, &[(":protocol", "websocket")]),
            (Kind::Request, &[("X-Upper", "1")]),
            (Kind::Request, &[("connection", "close")]),
            (Kind::Request, &[("transfer-encoding", "chunked")]),
            (Kind::Request, &[("te", "gzip")]),
            (Kind::Answer, &[(":status", "200"), ("te", "trailers")]),
            (Kind::Request, &[("x", " padded")]),
            (Kind::Request, &[("x", "a\r\nb")]),
            (
                Kind::Request,
                &[("content-length", "1"), ("content-length", "2")],
            ),
            (Kind::Request, &[("content-length", "+1")]),
        ];
        for (kind, fields) in bad {
            assert!(decode(*kind, fields).malformed, "{kind:?} {fields:?}");
        }
        let ok = decode(
            Kind::Request,
            &[
                ("te", "trailers"),
                ("content-length", "3"),
                ("content-length", "3"),
            ],
        );
        assert!(!ok.malformed);
        assert_eq!(ok.content_length, Some(3));
        let answer = decode(Kind::Answer, &[(":status", "204")]);
        assert_eq!(answer.status_code(), Some(204));
        assert_eq!(
            decode(Kind::Answer, &[(":status", "20")]).status_code(),
            None
        );
    }

    #[test]
    fn a_block_past_the_limit_keeps_nothing_past_it() {
        let mut b = Block::default();
        let mut d = Decoder::new(4096);
        let big = "v".repeat(1000);
        let raw = block(&[(":path", "/"), ("x-a", &big), ("x-b", &big)]);
        b.decode(&mut d, &raw, Kind::Request, 1500).unwrap();
        assert!(b.too_large());
        assert!(!b.malformed);
        assert!(b.bytes.len() <= 1500, "{}", b.bytes.len());
    }
}
