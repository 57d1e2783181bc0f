//! Connections from HTTP/2 clients: a reading task (frames into the connection state, a task
//! started per accepted stream), a writing task, and a timer for the handshake, idle and drain
//! deadlines. Each stream is served as one request by the caller's [`Service`] (the proxy),
//! which reads the request body from [`H2Recv`] and answers through [`H2Send`]: heads as heads,
//! bodies as HTTP/1.1-framed bytes.
//!
//! Buffers follow the load: reads start at 1 KiB and double when a read fills one, and a
//! connection idle for a tick cancels its pending read to wait on with a small buffer and lets
//! its output buffers go.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::BufResult;
use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};

use super::{BodyOut, Outbox, Shared, Table, wake, write_loop};
use crate::buf::BufPool;
use crate::error::ErrorKind;
use crate::h2::block::Block;
use crate::h2::conn::{Config, Connection, Events, Failure, Role, Verdict};
use crate::h2::frame::Code;
use crate::h2::server;
use crate::head::reply::OwnReply;
use crate::head::{Framing, RequestHead, ResponseHead};
use crate::metrics::{H2Event, ListenerStats};
use crate::transport::{Transport, TransportRead};

/// Streams a client may have open at once (nginx's default is 128, Envoy's 100 for upstreams).
pub const MAX_STREAMS: u32 = 128;
/// A stream's receive window: what a client may send ahead on one stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: what a client may send ahead on all its streams together,
/// the most body data the proxy holds for one connection.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// How often the timer checks the idle timeout and drain.
const TICK: Duration = Duration::from_secs(1);
/// What one read takes at most.
const READ_BUF: usize = 32 * 1024;
/// What a read takes at first, and again once the connection has been idle for a tick.
const IDLE_READ: usize = 1024;

/// The deadlines and limits of the listener a connection came to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest request head.
    pub max_head: usize,
    /// A connection with no stream, or a client that reads nothing, for this long ends.
    pub idle_timeout: Duration,
    /// The client's SETTINGS must come within this.
    pub handshake_timeout: Duration,
}

/// Parsed-head storage, lent by the worker.
pub(crate) type Heads = (RequestHead, ResponseHead);

/// A stream's request as the service gets it.
pub(crate) struct Request {
    /// The request's head (and storage for its answer's).
    pub heads: Heads,
    /// The bytes the head's spans point into; the body is read after them.
    pub buf: Vec<u8>,
    /// The head is one the proxy answers with this error, as it would over HTTP/1.1.
    pub refused: Option<ErrorKind>,
}

/// What serves the streams: the proxy.
pub(crate) trait Service: 'static {
    /// Serves one stream's request until its answer ends.
    fn serve(&self, stream: H2Stream, req: Request) -> impl Future<Output = ()>;
    /// The worker's buffers.
    fn bufs(&self) -> &BufPool;
    /// Head storage, and its return.
    fn heads(&self) -> Heads;
    fn put_heads(&self, heads: Heads);
    /// The worker is draining: connections end once their streams are done.
    fn draining(&self) -> bool;
}

/// A stream ready to be served.
struct Accepted {
    id: u32,
    req: Request,
}

/// One connection's state: what its tasks and its streams share.
struct State {
    conn: Connection,
    table: Table<()>,
    /// Streams to start.
    accepted: Vec<Accepted>,
    stats: Option<Rc<ListenerStats>>,
    /// Stops the reader's read once the connection is done.
    canceller: Option<Canceller>,
    /// A write is in flight.
    writing: bool,
    /// The pending read holds a large buffer.
    read_large: bool,
    /// The pending read was cancelled to go on with a small buffer, and the writer is to let
    /// its buffers go (the connection has been idle for a tick).
    shrink: bool,
    trim: bool,
}

/// One connection, as its tasks and its streams' halves share it.
pub(crate) struct Conn {
    st: RefCell<State>,
    /// The client's verified identity (mTLS).
    identity: Option<Rc<str>>,
}

impl Shared for Conn {
    type Side = ();

    fn with<R>(&self, f: impl FnOnce(&mut Connection, &mut Table<()>) -> R) -> R {
        let st = &mut *self.st.borrow_mut();
        f(&mut st.conn, &mut st.table)
    }

    fn error(&self, f: Failure) -> io::Error {
        match f {
            Failure::Reset(c) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the client reset the HTTP/2 stream (code {})", c.0),
            ),
            Failure::Local(c) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the client's HTTP/2 request was refused (code {})", c.0),
            ),
            Failure::Connection => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the client's HTTP/2 connection ended",
            ),
        }
    }
}

/// What the connection state tells the streams' side as frames are handled.
struct Rx<'a, S> {
    table: &'a mut Table<()>,
    accepted: &'a mut Vec<Accepted>,
    stats: Option<&'a ListenerStats>,
    service: &'a S,
}

impl<S: Service> Events for Rx<'_, S> {
    fn head(&mut self, id: u32, block: &Block) -> Verdict {
        let mut heads = self.service.heads();
        let mut buf = self.service.bufs().get();
        let (verdict, result) = server::request(block, &mut heads.0, &mut buf);
        if let Verdict::Accept { .. } = verdict {
            self.table.add(id, heads.0.framing == Framing::Chunked);
            let refused = result.err();
            self.accepted.push(Accepted {
                id,
                req: Request {
                    heads,
                    buf,
                    refused,
                },
            });
        } else {
            self.service.put_heads(heads);
            self.service.bufs().put(buf);
        }
        verdict
    }

    fn trailers(&mut self, id: u32, block: &Block) {
        if let Some(e) = self.table.get(id) {
            e.inbox.trailers(block);
            wake(&mut e.reader);
        }
    }

    fn data(&mut self, id: u32, data: &[u8], end: bool) {
        self.table.data(id, data, end);
    }

    fn failed(&mut self, id: u32, _: Failure) {
        self.table.failed(id);
    }

    fn window(&mut self, id: u32) {
        self.table.window(id);
    }

    fn note(&mut self, e: H2Event) {
        if let Some(s) = self.stats {
            s.h2(e);
        }
    }
}

/// Serves an HTTP/2 connection until it closes. `read`: its first bytes, already read.
pub(crate) async fn serve<S: Service>(
    service: S,
    io: Transport,
    read: Vec<u8>,
    limits: Limits,
    stats: Rc<ListenerStats>,
) {
    let identity = io.tls().and_then(|s| s.identity()).map(Rc::from);
    let config = Config {
        role: Role::Server,
        max_streams: MAX_STREAMS,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_head: limits.max_head,
    };
    let conn = Rc::new(Conn {
        st: RefCell::new(State {
            conn: Connection::new(config, Instant::now()),
            table: Table::default(),
            accepted: Vec::new(),
            stats: Some(stats.clone()),
            canceller: Some(Canceller::new()),
            writing: false,
            read_large: false,
            shrink: false,
            trim: false,
        }),
        identity,
    });
    let service = Rc::new(service);
    let (r, w) = io.into_split();
    let both = async { monoio::join!(read_loop(&conn, &service, r, read), write_loop(&*conn, w)) };
    monoio::select! {
        _ = both => {}
        _ = tick_loop(&conn, &*service, &limits) => {}
    }
    let st = conn.st.borrow();
    match st.conn.error() {
        Some(Code::ENHANCE_YOUR_CALM) => stats.h2(H2Event::Abuse),
        Some(_) => stats.h2(H2Event::Error),
        None => {}
    }
}

/// Reads and handles frames until the connection ends, starting a task per new stream.
async fn read_loop<S: Service>(
    conn: &Rc<Conn>,
    service: &Rc<S>,
    mut r: TransportRead,
    first: Vec<u8>,
) {
    // Reads start small and a buffer that fills up doubles, to READ_BUF: a connection that
    // sends a request now and then never holds a large one. The first bytes leave the buffer
    // they came in (a pooled one, possibly) for one of their size.
    let mut buf = Vec::with_capacity(first.len().max(IDLE_READ));
    buf.extend_from_slice(&first);
    service.bufs().put(first);
    let mut filled = false;
    loop {
        let accepted = {
            let st = &mut *conn.st.borrow_mut();
            let mut rx = Rx {
                table: &mut st.table,
                accepted: &mut st.accepted,
                stats: st.stats.as_deref(),
                service: &**service,
            };
            match st.conn.on_bytes(&buf, Instant::now(), &mut rx) {
                Ok(n) => {
                    buf.copy_within(n.., 0);
                    buf.truncate(buf.len() - n);
                }
                Err(code) => {
                    st.conn.fail(Some(code));
                    st.table.wake_everyone();
                }
            }
            if st.conn.has_output() {
                st.table.queued();
            }
            std::mem::take(&mut st.accepted)
        };
        for a in accepted {
            start(conn, service, a);
        }
        if conn.st.borrow().conn.is_dead() {
            return;
        }
        if filled || buf.len() == buf.capacity() {
            let want = (buf.capacity() * 2)
                .clamp(IDLE_READ, READ_BUF)
                .max(buf.len() + IDLE_READ);
            buf.reserve(want - buf.len());
        }
        let cancel = {
            let mut st = conn.st.borrow_mut();
            st.read_large = buf.capacity() > 2 * IDLE_READ;
            match &st.canceller {
                Some(c) => c.handle(),
                None => return,
            }
        };
        let at = buf.len();
        let room = buf.capacity() - at;
        let (res, slice) = r
            .cancelable_read(buf.slice_mut(at..at + room), cancel)
            .await;
        buf = slice.into_inner();
        let st = &mut *conn.st.borrow_mut();
        st.read_large = false;
        let shrink = std::mem::take(&mut st.shrink);
        filled = false;
        match res {
            Ok(n) if n > 0 => filled = n == room,
            // Cancelled by the timer (a cancelled read took no bytes): the connection has been
            // idle, and waits on with a small buffer.
            Err(_) if shrink && !st.conn.is_dead() => {
                if buf.is_empty() {
                    buf = Vec::with_capacity(IDLE_READ);
                }
            }
            _ => {
                st.conn.fail(None);
                st.table.wake_everyone();
                return;
            }
        }
    }
}

/// Takes a stream off the connection: its side is done with it.
fn close_stream(st: &mut State, id: u32) {
    let unread = st.table.remove(id).map_or(0, |(n, _)| n);
    st.conn.close(id, unread, Instant::now());
    st.table.queued();
}

/// Starts serving a stream, unless the client reset it already.
fn start<S: Service>(conn: &Rc<Conn>, service: &Rc<S>, a: Accepted) {
    {
        let st = &mut *conn.st.borrow_mut();
        if st.conn.stream(a.id).is_none_or(|s| s.failure.is_some()) {
            close_stream(st, a.id);
            service.put_heads(a.req.heads);
            service.bufs().put(a.req.buf);
            return;
        }
        if let Some(s) = &st.stats {
            s.h2(H2Event::Stream);
        }
    }
    let h = Rc::new(Handle {
        conn: conn.clone(),
        id: a.id,
    });
    // Contained as connections are: a bug in one stream ends that stream only.
    monoio::spawn(crate::task::contained(stream(h, service.clone(), a.req)));
}

/// Serves one stream until it is done or fails.
async fn stream<S: Service>(h: Rc<Handle>, service: Rc<S>, req: Request) {
    let s = H2Stream {
        recv: H2Recv {
            h: h.clone(),
            identity: h.conn.identity.clone(),
        },
        send: H2Send {
            h: h.clone(),
            body: BodyOut::new(),
        },
    };
    let failed = poll_fn(|cx| {
        let st = &mut *h.conn.st.borrow_mut();
        match st.conn.stream(h.id) {
            Some(s) if s.failure.is_none() => {
                if let Some(e) = st.table.get(h.id) {
                    e.watcher = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    });
    monoio::select! {
        _ = service.serve(s, req) => {}
        // The client gave up on the stream, or the connection ended: the request (and its
        // upstream exchange) stops here.
        _ = failed => {}
    }
}

impl Outbox for Conn {
    fn poll_out(&self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<bool> {
        let st = &mut *self.st.borrow_mut();
        if st.conn.take_output(buf) {
            st.table.wake_blocked();
            return Poll::Ready(true);
        }
        let idle = st.conn.stream_count() == 0 && st.accepted.is_empty();
        if st.conn.is_dead() || (idle && st.conn.winding_down()) {
            return Poll::Ready(false);
        }
        if std::mem::take(&mut st.trim) {
            // Idle for a tick: the buffer goes, and comes again with the next output.
            *buf = Vec::new();
        }
        st.table.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn writing(&self) {
        self.st.borrow_mut().writing = true;
    }

    fn wrote(&self, ok: bool) {
        let st = &mut *self.st.borrow_mut();
        st.writing = false;
        st.conn.wrote(Instant::now());
        if !ok {
            st.conn.fail(None);
            st.table.wake_everyone();
        }
    }

    fn finish(&self) -> Option<Canceller> {
        let st = &mut *self.st.borrow_mut();
        st.conn.fail(None);
        st.table.wake_everyone();
        st.canceller.take()
    }
}

/// Checks the handshake deadline, the idle timeout and the drain once a tick. Returns once the
/// connection has been dead for a whole tick: a client that reads nothing holds no task.
async fn tick_loop(conn: &Conn, service: &impl Service, limits: &Limits) {
    let tick = TICK.min(limits.idle_timeout);
    let started = Instant::now();
    let mut dead_ticks = 0;
    loop {
        monoio::time::sleep(tick).await;
        let now = Instant::now();
        let st = &mut *conn.st.borrow_mut();
        if st.conn.is_dead() {
            dead_ticks += 1;
            if dead_ticks > 1 {
                return;
            }
            continue;
        }
        if !st.conn.settled() {
            if now - started >= limits.handshake_timeout {
                st.conn.fail(None);
                st.table.wake_everyone();
            }
            continue;
        }
        let no_streams = st.conn.stream_count() == 0;
        let quiet = no_streams && !st.conn.has_output() && !st.writing;
        if quiet && now.saturating_duration_since(st.conn.idle_since()) >= tick {
            if st.read_large {
                // The pending read holds a large buffer: it is cancelled, and the reader
                // waits on with a small one.
                st.shrink = true;
                if let Some(c) = st.canceller.replace(Canceller::new()) {
                    c.cancel();
                }
            }
            st.trim = true;
            st.conn.trim();
            st.table.queued();
            // The buffers kept for the next streams go too.
            st.table.spare = Vec::new();
            st.table.entries = Vec::new();
        }
        let idle = no_streams
            && now.saturating_duration_since(st.conn.idle_since()) >= limits.idle_timeout;
        if (idle || service.draining()) && st.conn.go_away() {
            if let Some(s) = &st.stats {
                s.h2(H2Event::Goaway);
            }
            st.table.queued();
        }
        // Answers waiting for a client that neither reads nor grants window: after the idle
        // timeout they, and their upstream exchanges, are given up.
        let waiting = st.writing
            || !st.table.blocked.is_empty()
            || st.table.entries.iter().any(|e| e.writer.is_some());
        if waiting && now.saturating_duration_since(st.conn.progress()) >= limits.idle_timeout {
            st.conn.fail(None);
            st.table.wake_everyone();
        }
    }
}

/// What a stream's two halves share: the connection, and the stream's id. The stream leaves
/// the connection when both halves are gone.
struct Handle {
    conn: Rc<Conn>,
    id: u32,
}

impl Drop for Handle {
    fn drop(&mut self) {
        close_stream(&mut self.conn.st.borrow_mut(), self.id);
    }
}

/// A stream whole, as the forwarding path's client connection.
pub(crate) struct H2Stream {
    pub recv: H2Recv,
    pub send: H2Send,
}

/// The request side: the body, as HTTP/1.1 bytes.
pub(crate) struct H2Recv {
    h: Rc<Handle>,
    /// The connection's verified client identity (mTLS).
    pub identity: Option<Rc<str>>,
}

/// The answer side: heads as heads, the body as HTTP/1.1 bytes in, HTTP/2 frames out.
pub(crate) struct H2Send {
    h: Rc<Handle>,
    body: BodyOut,
}

impl H2Recv {
    /// Waits until a read would not wait (data, the end, or a failure), holding no buffer: a
    /// wait that can be given up without losing anything, where a read cannot be cancelled.
    pub(crate) async fn readable(&self) {
        let h = &self.h;
        poll_fn(|cx| {
            let st = &mut *h.conn.st.borrow_mut();
            let Some(e) = st.table.get(h.id) else {
                return Poll::Ready(());
            };
            if e.inbox.pending() {
                return Poll::Ready(());
            }
            match st.conn.stream(h.id) {
                Some(s) if s.failure.is_none() && !s.recv_end => {
                    e.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await
    }

    pub(crate) async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let h = &self.h;
        let r = poll_fn(|cx| {
            let st = &mut *h.conn.st.borrow_mut();
            let Some(e) = st.table.get(h.id) else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            };
            if e.inbox.pending() {
                let (n, credit) = e.inbox.read_into(&mut buf);
                if credit > 0 {
                    st.conn.consumed(h.id, credit);
                    if st.conn.has_output() {
                        st.table.queued();
                    }
                }
                return Poll::Ready(Ok(n));
            }
            match st.conn.stream(h.id) {
                None => Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe))),
                Some(s) if s.failure.is_some() => {
                    let f = s.failure.unwrap_or(Failure::Connection);
                    Poll::Ready(Err(h.conn.error(f)))
                }
                Some(s) if s.recv_end => Poll::Ready(Ok(0)),
                Some(_) => {
                    e.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        (r, buf)
    }
}

impl H2Send {
    /// Queues a header block: an answer's head, an interim answer, or the end.
    fn head(&self, block: &[u8], end: bool) -> io::Result<()> {
        let c = &*self.h.conn;
        c.with(|conn, t| {
            t.queued();
            conn.send_head(self.h.id, block, end)
        })
        .map_err(|f| c.error(f))
    }

    /// Sends the answer's head (`resp`, its bytes in `buf`), declaring `length` when known;
    /// body bytes framed as `body` follow (none if it is `None`). How many bytes the head took.
    pub(crate) fn send_answer(
        &mut self,
        resp: &ResponseHead,
        buf: &[u8],
        length: Option<u64>,
        body: Framing,
        edits: Option<&crate::head::edit::ResponseEdits<'_>>,
    ) -> io::Result<usize> {
        let mut block = Vec::with_capacity(64 + resp.headers.len() * 32);
        server::answer_block(resp, buf, length, &mut block, edits);
        self.body.start(body);
        self.head(&block, self.body.done())?;
        Ok(block.len())
    }

    /// Sends an interim answer (`100 Continue`, `103 Early Hints`; 101 has no place in HTTP/2).
    pub(crate) fn send_interim(&mut self, resp: &ResponseHead, buf: &[u8]) -> io::Result<()> {
        if resp.status == 101 {
            return Ok(());
        }
        let mut block = Vec::with_capacity(64);
        server::answer_block(resp, buf, None, &mut block, None);
        self.head(&block, false)
    }

    /// Sends `100 Continue`.
    pub(crate) fn send_continue(&mut self) -> io::Result<()> {
        let mut block = Vec::with_capacity(4);
        server::continue_block(&mut block);
        self.head(&block, false)
    }

    /// Sends an answer the proxy makes itself; the bytes it took.
    pub(crate) async fn send_local_reply(&mut self, reply: &impl OwnReply) -> io::Result<u64> {
        let mut block = Vec::with_capacity(128);
        server::local_reply_block(reply, &mut block);
        let mut body = Vec::new();
        reply.write_body(&mut body);
        self.body.start(Framing::Length(body.len() as u64));
        self.head(&block, body.is_empty())?;
        self.take(&body).await?;
        Ok((block.len() + body.len()) as u64)
    }

    /// Takes bytes of the answer's body, as framed for the client; all of them are consumed.
    async fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.body.take(&*self.h.conn, self.h.id, bytes).await
    }

    /// The proxy is done with the answer: an answer with no length ends here, one not sent in
    /// full is reset.
    fn end(&mut self) {
        let until_end = self.body.end_at_shutdown();
        let st = &mut *self.h.conn.st.borrow_mut();
        let id = self.h.id;
        let Some(s) = st.conn.stream(id) else { return };
        if st.conn.is_dead() || s.sent_end {
            return;
        }
        if until_end && s.failure.is_none() {
            let _ = st.conn.send_data(id, &[], true);
        } else {
            st.conn.reset(id, Code::INTERNAL_ERROR);
            st.table.failed(id);
        }
        st.table.queued();
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.end();
        Ok(())
    }
}

impl Drop for H2Send {
    fn drop(&mut self) {
        self.end();
    }
}

super::read_glue!(H2Recv);
super::write_glue!(H2Send);
