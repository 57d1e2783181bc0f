//! Bodies between HTTP/2 and the forwarding path, which moves bodies framed as HTTP/1.1 (a
//! length, or chunks and a trailer section): DATA and trailers received become those bytes
//! ([`Inbox`]), and those bytes become DATA and trailers to send ([`ChunkedOut`],
//! [`trailer_fields`]). Both sides use them: a client's request body and an upstream's
//! answer come in; an answer and a request body go out.

use std::io;

use super::block::{Block, is_connection_specific};
use super::frame::valid_value;
use crate::head::allowed_in_trailer;
use crate::http1::ChunkedDecoder;
use crate::http1::chunked::write_chunk_size;

/// What came on a stream for its reader, as HTTP/1.1 body bytes: `bytes[taken..]` not yet
/// read. An answer's inbox starts with its head's bytes (see `client.rs`).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub bytes: Vec<u8>,
    pub taken: usize,
    /// DATA bytes in it, to credit back to the peer once read.
    pub unread: u32,
    /// The body has no declared length: it is chunk-coded, and trailers may end it.
    pub chunked: bool,
}

impl Inbox {
    /// An inbox for a stream, reusing `bytes`.
    pub fn new(mut bytes: Vec<u8>) -> Inbox {
        bytes.clear();
        Inbox {
            bytes,
            ..Inbox::default()
        }
    }

    /// Appends a DATA frame's payload; `end`: the body ends with it.
    pub fn data(&mut self, data: &[u8], end: bool) {
        if !data.is_empty() {
            if self.chunked {
                write_chunk_size(&mut self.bytes, data.len());
                self.bytes.extend_from_slice(data);
                self.bytes.extend_from_slice(b"\r\n");
            } else {
                self.bytes.extend_from_slice(data);
            }
            self.unread += data.len() as u32;
        }
        if end && self.chunked {
            self.bytes.extend_from_slice(b"0\r\n\r\n");
        }
    }

    /// Ends the body with trailers: those a trailer may carry, after the last chunk (a body of
    /// declared length has nowhere to put them in HTTP/1.1: they are dropped).
    pub fn trailers(&mut self, block: &Block) {
        if !self.chunked {
            return;
        }
        self.bytes.extend_from_slice(b"0\r\n");
        for &(n, v) in &block.fields {
            let name = block.get(n);
            if allowed_in_trailer(name) {
                self.bytes.extend_from_slice(name);
                self.bytes.extend_from_slice(b": ");
                self.bytes.extend_from_slice(block.get(v));
                self.bytes.extend_from_slice(b"\r\n");
            }
        }
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// Whether bytes wait to be read.
    pub fn pending(&self) -> bool {
        self.taken < self.bytes.len()
    }

    /// Hands out what is unread into `buf`: how many bytes, and the DATA bytes to credit back
    /// (once the inbox is read whole, it starts again empty).
    pub fn read_into<T: monoio::buf::IoBufMut>(&mut self, buf: &mut T) -> (usize, u32) {
        let n = crate::rawbuf::fill(buf, &self.bytes[self.taken..]);
        self.taken += n;
        if self.taken < self.bytes.len() {
            return (n, 0);
        }
        self.bytes.clear();
        self.taken = 0;
        (n, std::mem::take(&mut self.unread))
    }

    /// Takes everything unread onto `out`; the DATA bytes to credit back.
    pub fn take_all(&mut self, out: &mut Vec<u8>) -> u32 {
        out.extend_from_slice(&self.bytes[self.taken..]);
        self.bytes.clear();
        self.taken = 0;
        std::mem::take(&mut self.unread)
    }
}

/// A chunk-coded HTTP/1.1 body going out as DATA frames, and its trailer section as a trailing
/// HEADERS frame: an answer to a client, or a request to an upstream.
#[derive(Default)]
pub(crate) struct ChunkedOut {
    decoder: ChunkedDecoder,
    /// The trailer section, once the body has ended.
    pub trailers: Vec<u8>,
    /// The data ranges of the bytes last decoded.
    pub ranges: Vec<std::ops::Range<usize>>,
}

impl ChunkedOut {
    /// Takes the chunk framing off `bytes`: their data is at [`ranges`](Self::ranges). True
    /// once the body has ended (its trailer section is then in [`trailers`](Self::trailers)).
    pub fn decode(&mut self, bytes: &[u8]) -> io::Result<bool> {
        self.ranges.clear();
        let (ranges, trailers) = (&mut self.ranges, &mut self.trailers);
        let progress = self
            .decoder
            .feed_with_trailers(bytes, |r| ranges.push(r), |b| trailers.push(b))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        if !progress.done && progress.consumed < bytes.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok(progress.done)
    }
}

/// The fields of an HTTP/1.1 trailer section (`name: value\r\n` lines) that may cross to an
/// HTTP/2 peer: not connection-specific ones, nor `te`, nor any a trailer may not carry
/// ([`allowed_in_trailer`]), and only values HTTP/2 allows.
pub(crate) fn trailer_fields(fields: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    fields.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        let value = crate::head::trim_ows(&line[colon + 1..]);
        let crosses = !name.is_empty()
            && !is_connection_specific(name)
            && !name.eq_ignore_ascii_case(b"te")
            && allowed_in_trailer(name)
            && valid_value(value);
        crosses.then_some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_a_length_comes_as_chunks_and_its_trailers_after_the_last() {
        let mut inbox = Inbox {
            chunked: true,
            ..Inbox::default()
        };
        inbox.data(b"hello", false);
        let mut block = Block::default();
        block
            .bytes
            .extend_from_slice(b"grpc-status0content-length9");
        block
            .fields
            .push((crate::head::Span::at(0, 11), crate::head::Span::at(11, 1)));
        block
            .fields
            .push((crate::head::Span::at(12, 14), crate::head::Span::at(26, 1)));
        inbox.trailers(&block);
        assert_eq!(
            String::from_utf8_lossy(&inbox.bytes),
            "5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
        assert_eq!(inbox.unread, 5);
        let mut out = Vec::with_capacity(4);
        let (n, credit) = inbox.read_into(&mut out);
        assert_eq!((n, credit), (4, 0));
        let mut rest = Vec::new();
        assert_eq!(inbox.take_all(&mut rest), 5);
        assert!(!inbox.pending());
    }

    #[test]
    fn only_trailer_fields_that_may_cross_go_out() {
        let section =
            b"grpc-status: 0\r\nconnection: x\r\nte: trailers\r\nhost: h\r\nx-e: \x01\r\n";
        let got: Vec<_> = trailer_fields(section).collect();
        assert_eq!(got, [(&b"grpc-status"[..], &b"0"[..])]);
    }
}
