//! HTTP/2 to upstreams (cluster `protocol: http2` or `mesh`): a few multiplexed connections per
//! endpoint per worker, and each request a stream on one of them. A stream is an upstream
//! connection as the HTTP/1.1 forwarding path sees it ([`H2Up`]): the request head and body it
//! writes become HEADERS, DATA and trailers; the answer reads back as an HTTP/1.1 head and body
//! (chunk-coded, with trailers, when it has no length). Retries, timeouts, outlier ejection and
//! the rest of the forwarding path therefore hold for HTTP/2 upstreams unchanged.

use std::cell::{Cell, RefCell, RefMut};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::{HeaderName, HeaderValue};
use monoio::BufResult;
use monoio::buf::{IoBufMut, IoVecBufMut};

use super::stream::{
    ChunkedOut, H2Recv, h2_error, is_connection_specific, read_glue, send_flow, share_head,
    write_glue,
};
use crate::endpoint::ConnCount;
use crate::http1::{Framing, RequestHead, Span};
use crate::io::Io;
use crate::rawbuf;

/// Streams opened on one connection at most, whatever the peer allows (Envoy's default is 100
/// too; more streams per connection only deepen head-of-line blocking on loss).
const MAX_STREAMS_PER_CONN: u32 = 100;
/// Receive windows for answers: per stream, and per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// The field that tells the next ringmesh a request came in as HTTP/1.1 (`protocol: mesh`).
pub const ORIGINAL_PROTOCOL: &str = "ringmesh-original-protocol";

/// One HTTP/2 connection to an endpoint.
#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    /// The connection's task is still running.
    alive: Rc<Cell<bool>>,
    /// Streams open on it now.
    streams: Rc<Cell<u32>>,
    /// Streams it may have open: the peer's limit, within ours.
    max: Rc<Cell<u32>>,
    /// Asks the connection's task to close it.
    close: Rc<Close>,
}

/// A request to close a connection, and the task to wake for it.
#[derive(Default)]
struct Close {
    asked: Cell<bool>,
    task: RefCell<Option<Waker>>,
}

/// An endpoint's HTTP/2 connections, in one worker.
#[derive(Default)]
pub(crate) struct Conns {
    list: RefCell<Vec<Conn>>,
    /// Connections being opened: requests wait for them rather than open more (a burst on a
    /// cold endpoint makes one connection, not one per request).
    opening: Cell<u32>,
    waiting: RefCell<Vec<Waker>>,
}

impl Conns {
    /// A stream slot, waiting for a connection being opened if there is one; `None`: a new
    /// connection is needed.
    pub(crate) async fn pick_or_wait(&self) -> Option<Slot> {
        loop {
            if let Some(s) = self.pick() {
                return Some(s);
            }
            if self.opening.get() == 0 {
                return None;
            }
            let mut waited = false;
            poll_fn(|cx| {
                if waited {
                    return Poll::Ready(());
                }
                waited = true;
                self.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            })
            .await;
        }
    }

    /// Closes every connection (the worker is stopping; no request is in flight).
    pub(crate) fn close_all(&self) {
        for c in self.list.borrow_mut().drain(..) {
            c.close.asked.set(true);
            if let Some(w) = c.close.task.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Marks a connection as being opened until the guard drops.
    pub(crate) fn opening(&self) -> Opening<'_> {
        self.opening.set(self.opening.get() + 1);
        Opening(self)
    }

    /// A stream slot on a live connection with room, the least busy; `None`: a new connection
    /// is needed.
    pub(crate) fn pick(&self) -> Option<Slot> {
        let mut list = self.list.borrow_mut();
        list.retain(|c| c.alive.get());
        let c = list
            .iter()
            .filter(|c| c.streams.get() < c.max.get())
            .min_by_key(|c| c.streams.get())?;
        Some(Slot::on(c))
    }

    /// Sets up HTTP/2 on a new connection (counted by `count` while it lives), and returns a
    /// stream slot on it.
    pub(crate) async fn open(&self, io: Io, count: ConnCount) -> io::Result<Slot> {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(0)
            .enable_push(false);
        let (send, mut conn) = b
            .handshake::<_, Bytes>(super::io::PollIo::new(io, Vec::new()))
            .await
            .map_err(h2_error)?;
        let c = Conn {
            send,
            alive: Rc::new(Cell::new(true)),
            streams: Rc::new(Cell::new(0)),
            max: Rc::new(Cell::new(MAX_STREAMS_PER_CONN)),
            close: Rc::default(),
        };
        let (alive, max, close) = (c.alive.clone(), c.max.clone(), c.close.clone());
        // Contained as client connections are: a bug met on this connection ends it only.
        monoio::spawn(crate::listener::contained(async move {
            let _count = count;
            // However the task ends, the connection takes no more streams.
            let _alive = Alive(alive);
            let _ = poll_fn(|cx| {
                if close.asked.get() {
                    return Poll::Ready(Ok(()));
                }
                *close.task.borrow_mut() = Some(cx.waker().clone());
                let r = Pin::new(&mut conn).poll(cx);
                let peer = conn.max_concurrent_send_streams().min(u32::MAX as usize) as u32;
                max.set(peer.clamp(1, MAX_STREAMS_PER_CONN));
                r
            })
            .await;
        }));
        let slot = Slot::on(&c);
        self.list.borrow_mut().push(c);
        Ok(slot)
    }
}

/// Marks a connection's task as running until dropped.
struct Alive(Rc<Cell<bool>>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// A connection being opened; when it is done (either way), waiting requests look again.
pub(crate) struct Opening<'a>(&'a Conns);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let c = self.0;
        c.opening.set(c.opening.get().saturating_sub(1));
        for w in c.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A stream reserved on a connection (counted until dropped).
pub(crate) struct Slot {
    send: SendRequest<Bytes>,
    streams: Rc<Cell<u32>>,
}

impl Slot {
    fn on(c: &Conn) -> Slot {
        c.streams.set(c.streams.get() + 1);
        Slot {
            send: c.send.clone(),
            streams: c.streams.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.streams.set(self.streams.get().saturating_sub(1));
    }
}

/// What the two halves of a stream share: the answer on its way.
struct Shared {
    response: Option<ResponseFuture>,
    /// The reading half waits for the request to be sent.
    waker: Option<Waker>,
    /// The peer refused the stream (REFUSED_STREAM, or past its GOAWAY): nothing was processed.
    refused: bool,
    /// The writing half failed before the request went out.
    failed: bool,
    slot: Option<Slot>,
}

/// An upstream stream as an HTTP/1.1 connection.
pub(crate) struct H2Up {
    pub write: UpWrite,
    pub read: UpRead,
}

/// The request side.
pub(crate) struct UpWrite {
    shared: Rc<RefCell<Shared>>,
    head: Vec<u8>,
    scheme: &'static str,
    mesh: bool,
    out: Out,
    stream: RefCell<Option<SendStream<Bytes>>>,
}

enum Out {
    Head,
    Length(u64),
    Chunked(ChunkedOut),
    Done,
}

/// The answer side.
pub(crate) struct UpRead {
    shared: Rc<RefCell<Shared>>,
    head: Vec<u8>,
    head_at: usize,
    body: Option<H2Recv>,
}

impl H2Up {
    /// A stream on `slot`; `tls`: the scheme is https; `mesh`: the request is marked as having
    /// come in as HTTP/1.1.
    pub(crate) fn new(slot: Slot, tls: bool, mesh: bool) -> H2Up {
        let shared = Rc::new(RefCell::new(Shared {
            response: None,
            waker: None,
            refused: false,
            failed: false,
            slot: Some(slot),
        }));
        H2Up {
            write: UpWrite {
                shared: shared.clone(),
                head: Vec::new(),
                scheme: if tls { "https" } else { "http" },
                mesh,
                out: Out::Head,
                stream: RefCell::new(None),
            },
            read: UpRead {
                shared,
                head: Vec::new(),
                head_at: 0,
                body: None,
            },
        }
    }

    /// The peer refused the stream unprocessed: the request may go again, whatever its method.
    pub(crate) fn refused(&self) -> bool {
        self.write.shared.borrow().refused
    }
}

fn invalid() -> io::Error {
    io::ErrorKind::InvalidData.into()
}

impl UpWrite {
    async fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Out::Head = self.out {
            // The forwarding path writes a head whole: it is parsed where it is, and kept
            // only when it comes in parts.
            let mut head = std::mem::take(&mut self.head);
            let data: &[u8] = if head.is_empty() {
                bytes
            } else {
                head.extend_from_slice(bytes);
                &head
            };
            let mut req = RequestHead::default();
            let n = match req.parse(data, 1 << 20) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    if head.is_empty() {
                        head.extend_from_slice(bytes);
                    }
                    self.head = head;
                    return Ok(());
                }
                Err(_) => return Err(invalid()),
            };
            if let Err(e) = self.send_head(&req, data, n).await {
                let mut sh = self.shared.borrow_mut();
                sh.failed = true;
                if let Some(w) = sh.waker.take() {
                    w.wake();
                }
                return Err(e);
            }
            return self.body(&data[n..]).await;
        }
        self.body(bytes).await
    }

    /// Opens the stream with the request's head (`buf[..n]`).
    async fn send_head(&mut self, req: &RequestHead, buf: &[u8], n: usize) -> io::Result<()> {
        let length = match req.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        // The URI's parts and the field values share one copy of the head.
        let (shared, length) = share_head(&buf[..n], length);
        let part = |s: Span| shared.slice(s.start as usize..s.end as usize);
        let mut r = http::Request::new(());
        *r.method_mut() =
            http::Method::from_bytes(req.method_span.get(buf)).map_err(|_| invalid())?;
        *r.uri_mut() = self.uri(req, buf, &part)?;
        let headers = r.headers_mut();
        headers.reserve(req.headers.len() + 2);
        // The head is the proxy's own: every field goes but those HTTP/2 carries otherwise
        // (Host as :authority, the framing) or forbids. (The parser's `drop` marks what a
        // client's head loses; here the deadline and trace fields must stay.)
        for h in &req.headers {
            let name = h.name.get(buf);
            if name.eq_ignore_ascii_case(b"host")
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"te")
                || is_connection_specific(name)
            {
                continue;
            }
            let (Ok(n), Ok(v)) = (
                header_name(name),
                HeaderValue::from_maybe_shared(part(h.value)),
            ) else {
                return Err(invalid());
            };
            headers.append(n, v);
        }
        // The proxy takes trailers, and gRPC servers insist on being told so.
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        if self.mesh {
            // A name built once: inserting by a `&str` would copy it for every request.
            const NAME: HeaderName = HeaderName::from_static(ORIGINAL_PROTOCOL);
            headers.insert(NAME, HeaderValue::from_static("HTTP/1.1"));
        }
        if let Some(length) = length {
            headers.insert(http::header::CONTENT_LENGTH, length);
        }
        self.out = match req.framing {
            Framing::Length(n) => Out::Length(n),
            Framing::Chunked => Out::Chunked(ChunkedOut::default()),
            Framing::None | Framing::Close => Out::Done,
        };
        let end = matches!(self.out, Out::Done);
        let send = self
            .shared
            .borrow()
            .slot
            .as_ref()
            .map(|s| s.send.clone())
            .ok_or(io::ErrorKind::BrokenPipe)?;
        let mut send = send.ready().await.map_err(|e| self.note(e))?;
        let (response, stream) = send.send_request(r, end).map_err(|e| self.note(e))?;
        *self.stream.borrow_mut() = Some(stream);
        let mut sh = self.shared.borrow_mut();
        sh.response = Some(response);
        if let Some(w) = sh.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// The request's URI: the scheme, the Host field as the authority, the target.
    fn uri(
        &self,
        req: &RequestHead,
        buf: &[u8],
        part: &impl Fn(Span) -> Bytes,
    ) -> io::Result<http::Uri> {
        // The parser took the authority from Host (the head is the proxy's own, in origin form).
        let origin_form = req.path.get(buf).starts_with(b"/");
        if let Some(at) = req.authority.filter(|at| !at.is_empty() && origin_form) {
            let mut p = http::uri::Parts::default();
            p.scheme = Some(match self.scheme {
                "https" => http::uri::Scheme::HTTPS,
                _ => http::uri::Scheme::HTTP,
            });
            p.authority =
                Some(http::uri::Authority::from_maybe_shared(part(at)).map_err(|_| invalid())?);
            p.path_and_query = Some(
                http::uri::PathAndQuery::from_maybe_shared(part(req.path))
                    .map_err(|_| invalid())?,
            );
            return http::Uri::from_parts(p).map_err(|_| invalid());
        }
        // Anything else (no Host, an empty or asterisk target) is parsed whole, as written.
        let authority = req.header(buf, b"host").unwrap_or_default();
        let path = if req.path.is_empty() {
            &b"/"[..]
        } else {
            req.path.get(buf)
        };
        let mut uri = Vec::with_capacity(authority.len() + path.len() + 8);
        uri.extend_from_slice(self.scheme.as_bytes());
        uri.extend_from_slice(b"://");
        uri.extend_from_slice(authority);
        uri.extend_from_slice(path);
        http::Uri::try_from(uri).map_err(|_| invalid())
    }

    /// Records whether an error means the peer never processed the request.
    fn note(&self, e: h2::Error) -> io::Error {
        if unprocessed(&e) {
            self.shared.borrow_mut().refused = true;
        }
        h2_error(e)
    }

    fn get(&self) -> Option<RefMut<'_, SendStream<Bytes>>> {
        RefMut::filter_map(self.stream.borrow_mut(), Option::as_mut).ok()
    }

    /// Body bytes of the request, as the proxy framed them.
    async fn body(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Out::Head | Out::Done if bytes.is_empty() => Ok(()),
            Out::Head | Out::Done => Err(invalid()),
            Out::Length(left) => {
                if bytes.len() as u64 > *left {
                    return Err(invalid());
                }
                *left -= bytes.len() as u64;
                let end = *left == 0;
                if end {
                    self.out = Out::Done;
                }
                send_flow(|| self.get(), bytes, end).await
            }
            Out::Chunked(out) => {
                let stream = &self.stream;
                let sending = || RefMut::filter_map(stream.borrow_mut(), Option::as_mut).ok();
                if out.send(sending, bytes).await? {
                    self.out = Out::Done;
                }
                Ok(())
            }
        }
    }
}

/// A field's name; those the proxy itself adds to every request are not copied (a name not
/// in HTTP's standard list is copied into one of its own otherwise).
fn header_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    const OWN: [&str; 5] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "ringmesh-deadline-ms",
        "traceparent",
        "tracestate",
    ];
    for own in OWN {
        if name.eq_ignore_ascii_case(own.as_bytes()) {
            return Ok(HeaderName::from_static(own));
        }
    }
    HeaderName::from_bytes(name)
}

/// The peer guarantees it did not act on the request: refused, or past its GOAWAY.
fn unprocessed(e: &h2::Error) -> bool {
    e.reason() == Some(Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}

impl UpRead {
    /// Waits for the answer's head and writes it as HTTP/1.1.
    async fn head(&mut self) -> io::Result<()> {
        let r = poll_fn(|cx| {
            let mut sh = self.shared.borrow_mut();
            if sh.failed {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            match sh.response.as_mut() {
                Some(f) => Pin::new(f).poll(cx).map(|r| {
                    r.map_err(|e| {
                        if unprocessed(&e) {
                            sh.refused = true;
                        }
                        h2_error(e)
                    })
                }),
                None => {
                    sh.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        let (parts, body) = r.into_parts();
        let out = &mut self.head;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        let mut length = false;
        let mut grpc = false;
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if is_connection_specific(n.as_bytes()) {
                continue;
            }
            length |= n == "content-length";
            grpc |= n == "content-type" && value.as_bytes().starts_with(b"application/grpc");
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // Trailers need chunked framing in HTTP/1.1: a body without a length, or gRPC's (whose
        // status comes last), goes chunked.
        let chunked = !body.is_end_stream() && (!length || grpc);
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if !length {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.body = Some(H2Recv::new(body, chunked));
        Ok(())
    }

    pub(crate) async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.body.is_none() {
            if let Err(e) = self.head().await {
                return (Err(e), buf);
            }
        }
        if self.head_at < self.head.len() {
            let mut n = rawbuf::fill(&mut buf, &self.head[self.head_at..]);
            self.head_at += n;
            if self.head_at == self.head.len() {
                // A body that came with the head (a small answer: in the same read from the
                // connection) goes with it, so that the client gets both in one write.
                if let Some(b) = self.body.as_mut() {
                    n += b.fill_now(&mut buf, n);
                }
            }
            return (Ok(n), buf);
        }
        match self.body.as_mut() {
            Some(b) => b.read(buf).await,
            None => (Ok(0), buf),
        }
    }

    pub(crate) async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        // The forwarding path reads into one buffer; a vectored read is not asked of it.
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }
}

read_glue!(UpRead);
write_glue!(UpWrite);

impl UpWrite {
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        if !matches!(self.out, Out::Done) {
            if let Some(mut s) = self.get() {
                s.send_reset(Reason::CANCEL);
            }
        }
        Ok(())
    }
}

impl Drop for UpWrite {
    fn drop(&mut self) {
        // A request not sent in full is cancelled, so that the upstream stops working on it.
        if !matches!(self.out, Out::Done) {
            if let Some(mut s) = self.get() {
                s.send_reset(Reason::CANCEL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::testing::{block_on, serve_one};
    use super::*;
    use crate::cluster::ClusterState;

    /// An answer whose body comes in DATA frames right behind its head reaches the forwarding
    /// path in one read with the head, and so reaches the client in one write.
    #[test]
    fn a_small_answer_is_read_whole_with_its_head() {
        block_on(async {
            let addr = serve_one(|_req, mut respond| async move {
                let head = http::Response::builder()
                    .header("content-length", "4")
                    .body(())
                    .unwrap();
                let mut body = respond.send_response(head, false).unwrap();
                body.send_data(Bytes::from_static(b"ab"), false).unwrap();
                body.send_data(Bytes::from_static(b"cd"), true).unwrap();
            });
            let s = monoio::net::TcpStream::connect(addr).await.unwrap();
            let count = ConnCount::new(Rc::new(ClusterState::new(Instant::now())));
            let slot = Conns::default().open(Io::Plain(s), count).await.unwrap();
            let mut up = H2Up::new(slot, false, false);
            let (r, _) = up
                .write
                .write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n".to_vec())
                .await;
            r.unwrap();
            let (r, buf) = up.read.read(Vec::with_capacity(4096)).await;
            let n = r.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\nabcd"), "{text}");
            let (r, _) = up.read.read(Vec::with_capacity(4096)).await;
            assert_eq!(r.unwrap(), 0, "the answer ends after its body");
        });
    }
}
