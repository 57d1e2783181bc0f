//! Response heads: what the proxy knows of an answer before its body.

use super::{Framing, Header, Span, Version};

/// A response head, whichever protocol it came in: offsets into the buffer that holds its
/// bytes.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code, 100 to 999.
    pub status: u16,
    /// Reason phrase (may be empty; an HTTP/2 answer has none, and gets the status's own when
    /// written as HTTP/1.1).
    pub reason: Span,
    /// Protocol version of the upstream.
    pub version: Version,
    /// Body framing as the head declares it (before the request method and status apply).
    pub framing: Framing,
    /// The declared Content-Length, if any (kept for HEAD and 304 answers).
    pub content_length: Option<u64>,
    /// The upstream allows the connection to be reused.
    pub keep_alive: bool,
    /// Length of the head including its final empty line.
    pub head_len: usize,
    /// Header fields, in order, hop-by-hop ones marked `drop`.
    pub headers: Vec<Header>,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            status: 0,
            reason: Span::default(),
            version: Version::Http11,
            framing: Framing::Close,
            content_length: None,
            keep_alive: false,
            head_len: 0,
            headers: Vec::with_capacity(16),
        }
    }
}

impl ResponseHead {
    /// The framing of the body that actually follows, given the request method and the status
    /// (RFC 9112 section 6.3): HEAD answers, 1xx, 204 and 304 have none.
    pub fn body_framing(&self, request_was_head: bool) -> Framing {
        if request_was_head || self.is_interim() || self.status == 204 || self.status == 304 {
            Framing::None
        } else {
            match self.framing {
                Framing::Length(0) => Framing::None,
                f => f,
            }
        }
    }

    /// A 1xx interim response; a final one follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}
