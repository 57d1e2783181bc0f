//! A client connection as a request's stages see it: its stream (a byte stream, or one HTTP/2
//! stream), the bytes read and not yet consumed, and who the client is.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use monoio::io::{AsyncWriteRentExt, Canceller};

use crate::buf::BUF_SIZE;
use crate::head::{Framing, RequestHead};
use crate::io::Io;
use crate::worker::state::Worker;

/// A client connection and its read buffer.
pub(crate) struct Client {
    /// `None` only while split for a streaming body, or after a failure that ends it.
    pub(super) stream: Option<Io>,
    /// Bytes read and not yet consumed are `buf[start..]`; `None` while idle.
    pub(super) buf: Option<Vec<u8>>,
    pub(super) start: usize,
    /// The client's IP address as text, for X-Forwarded-For.
    pub(super) ip: [u8; 48],
    pub(super) ip_len: usize,
    /// Cancels the pending read when the idle set fires.
    pub(super) canceller: Option<Canceller>,
    /// Requests answered on this connection.
    pub(super) served: u32,
    /// The current request's client was already sent `100 Continue`.
    pub(super) continued: bool,
    pub(super) peer: SocketAddr,
    /// The connection is TLS (X-Forwarded-Proto: https).
    pub(super) tls: bool,
    /// When the last exchange ended: the start of the wait for the next request.
    pub(super) ended: Instant,
    /// The client sent the HTTP/2 preface: the connection is served as HTTP/2 from here.
    pub(super) h2_preface: bool,
    /// The current request is a gRPC call: the proxy's own answers take gRPC's form.
    pub(super) grpc: bool,
    /// On an outbound listener: where the application's connection was going.
    pub(super) destination: Option<SocketAddr>,
    /// The reader that keeps the next request's read posted on a hot connection.
    pub(super) ahead: Option<super::ahead::Ahead>,
}

impl Client {
    pub(super) fn new(stream: Io, peer: SocketAddr) -> Client {
        let mut ip = [0u8; 48];
        let mut cursor = &mut ip[..];
        let _ = write!(cursor, "{}", peer.ip());
        let ip_len = 48 - cursor.len();
        Client {
            tls: stream.tls().is_some(),
            stream: Some(stream),
            buf: None,
            start: 0,
            ip,
            ip_len,
            canceller: None,
            peer,
            ended: Instant::now(),
            served: 0,
            continued: false,
            h2_preface: false,
            grpc: false,
            destination: None,
            ahead: None,
        }
    }

    /// An HTTP/2 stream, as one request whose head's bytes are in `buf` (its body is read
    /// after them).
    pub(super) fn for_stream(stream: Io, peer: SocketAddr, tls: bool, buf: Vec<u8>) -> Client {
        let mut c = Client::new(stream, peer);
        c.tls = tls;
        c.buf = Some(buf);
        c
    }

    /// Consumes a request that is refused unsent, when its body is already here, so that the
    /// connection can go on. False when the body is not all here: it would have to be read and
    /// thrown away, so the connection closes instead.
    pub(super) fn skip_request(&mut self, req: &RequestHead) -> bool {
        let body = match req.framing {
            Framing::None => 0,
            Framing::Length(n) if (self.data().len() - req.head_len) as u64 >= n => n as usize,
            _ => return false,
        };
        self.start += req.head_len + body;
        true
    }

    /// Makes the whole chunked body at `data()[head_len..][..len]` what may be forwarded, in
    /// the buffer: chunk extensions and trailer fields that may not cross are left out, and
    /// what follows the body moves behind the result (which may be longer than what came: a
    /// trailer line is rewritten as `name: value`). Returns its new length. Called only on a
    /// body the decoder has taken whole, so it cannot fail; were it to, nothing of the body
    /// would be forwarded as it came.
    pub(super) fn forwardable_chunked(&mut self, head_len: usize, len: usize) -> usize {
        let Some(buf) = self.buf.as_mut() else {
            return len;
        };
        let at = self.start + head_len;
        let mut out = Vec::new();
        match crate::http1::ChunkedForward::default().feed(&buf[at..at + len], &mut out, false) {
            Ok(f) if f.direct => len,
            Ok(_) => {
                let n = out.len();
                buf.splice(at..at + len, out);
                n
            }
            // Unreachable (the body was validated): forward an empty final chunk, not it.
            Err(_) => {
                buf.splice(at..at + len, b"0\r\n\r\n".iter().copied());
                5
            }
        }
    }

    /// The client's verified identity (mTLS). Not known while the stream is split.
    pub(super) fn identity(&self) -> Option<&str> {
        match &self.stream {
            Some(Io::H2(s)) => s.recv.identity.as_deref(),
            Some(io) => io.tls().and_then(|s| s.identity()),
            None => None,
        }
    }

    /// `http` or `https`, for X-Forwarded-Proto.
    pub(super) fn proto(&self) -> &'static [u8] {
        if self.tls { b"https" } else { b"http" }
    }

    /// Unconsumed bytes.
    #[inline]
    pub(super) fn data(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[self.start..])
    }

    #[inline]
    pub(super) fn ip(&self) -> &[u8] {
        &self.ip[..self.ip_len]
    }

    /// Writes `out` to the client; the buffer comes back either way.
    pub(super) async fn write(&mut self, out: Vec<u8>) -> (bool, Vec<u8>) {
        match self.stream.as_mut() {
            Some(s) => {
                let (r, out) = s.write_all(out).await;
                (r.is_ok(), out)
            }
            None => (false, out),
        }
    }

    pub(crate) fn release(&mut self, w: &Worker) {
        if let Some(b) = self.buf.take() {
            w.put_buf(b);
        }
        self.start = 0;
    }

    /// A buffer grown for a large body (kept for a retry or a copy) goes back to a pooled
    /// size once the body is gone, so that a kept-alive connection does not hold it.
    pub(super) fn shrink(&mut self, w: &Worker) {
        const GROWN: usize = 4 * BUF_SIZE;
        let Some(buf) = self.buf.as_ref() else { return };
        if buf.capacity() <= GROWN || buf.len() - self.start > BUF_SIZE {
            return;
        }
        let mut small = w.bufs.get();
        small.extend_from_slice(self.data());
        self.start = 0;
        self.buf = Some(small);
    }

    /// Makes room for `total` unconsumed bytes, moving them to the front of a large enough
    /// buffer (a pooled one up to [`BUF_SIZE`], grown past it).
    pub(super) fn make_room(&mut self, w: &Worker, total: usize) {
        let mut buf = self.buf.take().unwrap_or_else(|| w.small.get());
        if self.start > 0 {
            buf.drain(..self.start);
            self.start = 0;
        }
        if total > buf.capacity() {
            if total <= BUF_SIZE && buf.capacity() < BUF_SIZE {
                let mut large = w.bufs.get();
                large.extend_from_slice(&buf);
                w.put_buf(std::mem::replace(&mut buf, large));
            } else {
                buf.reserve(total - buf.len());
            }
        }
        self.buf = Some(buf);
    }
}
