//! What both sides of HTTP/2 share to present a stream as an HTTP/1.1 connection: the glue the
//! connection enums ask of a stream's halves, and the translation of chunk-coded bodies and
//! trailer sections.

use std::io;

use crate::http1::ChunkedDecoder;

/// The cancelable reads the connection enums ask of a stream half that reads with `read` and
/// `readv`: an HTTP/2 stream is never waited on with a read to cancel (it is never idle between
/// requests, nor tunneled), so they are plain reads.
macro_rules! read_glue {
    ($t:ty) => {
        impl $t {
            pub(crate) async fn cancelable_read<T: monoio::buf::IoBufMut>(
                &mut self,
                buf: T,
                _c: monoio::io::CancelHandle,
            ) -> monoio::BufResult<usize, T> {
                self.read(buf).await
            }

            pub(crate) async fn cancelable_readv<T: monoio::buf::IoVecBufMut>(
                &mut self,
                buf: T,
                _c: monoio::io::CancelHandle,
            ) -> monoio::BufResult<usize, T> {
                self.readv(buf).await
            }
        }
    };
}

/// The writes the connection enums ask of a stream half that takes the bytes written with
/// `take` (all of them, or an error).
macro_rules! write_glue {
    ($t:ty) => {
        impl $t {
            pub(crate) async fn write<T: monoio::buf::IoBuf>(
                &mut self,
                buf: T,
            ) -> monoio::BufResult<usize, T> {
                let r = self.take(crate::rawbuf::bytes(&buf)).await;
                (r.map(|_| monoio::buf::IoBuf::bytes_init(&buf)), buf)
            }

            pub(crate) async fn writev<T: monoio::buf::IoVecBuf>(
                &mut self,
                buf: T,
            ) -> monoio::BufResult<usize, T> {
                let mut total = 0;
                for i in 0..monoio::buf::IoVecBuf::read_iovec_len(&buf) {
                    let part = crate::rawbuf::iovec(&buf, i);
                    if let Err(e) = self.take(part).await {
                        return (Err(e), buf);
                    }
                    total += part.len();
                }
                (Ok(total), buf)
            }

            pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use {read_glue, write_glue};

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

/// A chunk-coded HTTP/1.1 body going out as DATA frames, and its trailer section as a
/// trailing HEADERS frame: an answer to a client, or a request to an upstream.
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
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> io::Result<bool> {
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

/// The fields of an HTTP/1.1 trailer section (`name: value\r\n` lines) that may cross: not
/// connection-specific ones, nor any a trailer may not carry
/// ([`crate::http1::allowed_in_trailer`]).
pub(crate) fn trailer_fields(fields: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    fields.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        let value = crate::http1::trim_ows(&line[colon + 1..]);
        (!is_connection_specific(name) && crate::http1::allowed_in_trailer(name))
            .then_some((name, value))
    })
}
