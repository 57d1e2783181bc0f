//! Connections to HTTP/2 upstreams (cluster `protocol: http2` or `mesh`): a few multiplexed
//! connections per endpoint per worker ([`Conns`]), and each request a stream on one of them
//! ([`H2Up`]). The forwarding path sends a request's head as a head and its body as HTTP/1.1
//! bytes, and gets the answer's head as a head and its body as HTTP/1.1 bytes (chunk-coded,
//! with trailers, when it has no length), so retries, timeouts and ejection hold for HTTP/2
//! upstreams unchanged. Each connection has two tasks: one reads and handles frames, one writes
//! what the streams and the reader queued (a burst of streams goes out in one write).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::BufResult;
use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};

use super::{BodyOut, Outbox, Shared, Table, wake, write_loop};
use crate::h2::block::Block;
use crate::h2::client;
use crate::h2::conn::{Config, Connection, Events, Failure, Role, Verdict};
use crate::h2::frame::Code;
use crate::head::{Forwarded, Method, RequestHead, ResponseHead};
use crate::transport::{Transport, TransportRead};

/// Streams opened on one connection at most, whatever the peer allows (Envoy's default is 100
/// too; more streams per connection only deepen head-of-line blocking on loss).
const MAX_STREAMS_PER_CONN: u32 = 100;
/// Receive windows for answers: per stream, and per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// An answer's head (or trailers) at most, decoded: a block of one-byte references to a large
/// table entry would otherwise decode to hundreds of times its size.
const MAX_HEAD: usize = 256 * 1024;
/// What one read takes at most.
const READ_BUF: usize = 32 * 1024;

/// What this side keeps of a stream: its answer's head, once it came.
#[derive(Default)]
pub(crate) struct Answer {
    /// The request was HEAD: a declared length has no body.
    head_request: bool,
    /// The answer's head; its bytes open the stream's inbox.
    head: Option<ResponseHead>,
    head_len: usize,
}

/// One connection's state: what the two tasks and the streams share.
struct State {
    conn: Connection,
    table: Table<Answer>,
    /// Close once idle (the worker is stopping).
    close_asked: bool,
    /// Stops the reader's read once the connection is done.
    canceller: Option<Canceller>,
    /// Answer heads of ended streams, for the next ones.
    spare_heads: Vec<ResponseHead>,
}

/// One HTTP/2 connection to an endpoint.
pub(crate) struct Conn {
    st: RefCell<State>,
    /// Streams reserved on it now.
    slots: Cell<u32>,
}

impl Conn {
    fn usable(&self) -> bool {
        let st = self.st.borrow();
        !st.close_asked && st.conn.usable()
    }
}

impl Shared for Conn {
    type Side = Answer;

    fn with<R>(&self, f: impl FnOnce(&mut Connection, &mut Table<Answer>) -> R) -> R {
        let st = &mut *self.st.borrow_mut();
        f(&mut st.conn, &mut st.table)
    }

    fn error(&self, f: Failure) -> io::Error {
        match f {
            Failure::Reset(c) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the upstream reset the HTTP/2 stream (code {})", c.0),
            ),
            Failure::Local(c) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the upstream's HTTP/2 answer was refused (code {})", c.0),
            ),
            Failure::Connection => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the upstream HTTP/2 connection ended",
            ),
        }
    }
}

/// What the connection state tells the streams' side as frames are handled.
struct Rx<'a> {
    table: &'a mut Table<Answer>,
    spare_heads: &'a mut Vec<ResponseHead>,
}

impl Events for Rx<'_> {
    fn head(&mut self, id: u32, block: &Block) -> Verdict {
        let Some(e) = self.table.get(id) else {
            return Verdict::Malformed;
        };
        let mut resp = self.spare_heads.pop().unwrap_or_default();
        let (verdict, body) = client::answer(block, e.side.head_request, &mut resp);
        if let Verdict::Accept { .. } = verdict {
            // The head's bytes open the inbox; the body follows them.
            e.inbox.bytes.extend_from_slice(&block.bytes);
            e.inbox.chunked = body.chunked;
            e.side.head_len = block.bytes.len();
            e.side.head = Some(resp);
            wake(&mut e.reader);
        } else {
            self.spare_heads.push(resp);
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
}

/// An endpoint's HTTP/2 connections, in one worker.
#[derive(Default)]
pub(crate) struct Conns {
    list: RefCell<Vec<Rc<Conn>>>,
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
            let mut st = c.st.borrow_mut();
            st.close_asked = true;
            st.table.queued();
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
        list.retain(|c| c.usable());
        let c = list
            .iter()
            .filter(|c| c.slots.get() < c.st.borrow().conn.max_concurrent())
            .min_by_key(|c| c.slots.get())?;
        Some(Slot::on(c))
    }

    /// Sets up HTTP/2 on a new connection, `guard` kept while it lives (what counts it), and
    /// returns a stream slot on it.
    pub(crate) fn open<G: 'static>(&self, io: Transport, guard: G) -> Slot {
        let canceller = Canceller::new();
        let handle = canceller.handle();
        let config = Config {
            role: Role::Client,
            max_streams: MAX_STREAMS_PER_CONN,
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            max_head: MAX_HEAD,
        };
        let conn = Rc::new(Conn {
            st: RefCell::new(State {
                conn: Connection::new(config, Instant::now()),
                table: Table::default(),
                close_asked: false,
                canceller: Some(canceller),
                spare_heads: Vec::new(),
            }),
            slots: Cell::new(0),
        });
        let (r, w) = io.into_split();
        let guard = Rc::new(guard);
        // Contained as client connections are: a bug met on this connection ends it only.
        let (c, g) = (conn.clone(), guard.clone());
        monoio::spawn(crate::task::contained(async move {
            let _guard = g;
            read_loop(&c, r, handle).await;
        }));
        let c = conn.clone();
        monoio::spawn(crate::task::contained(async move {
            let _guard = guard;
            write_loop(&*c, w).await;
        }));
        let slot = Slot::on(&conn);
        self.list.borrow_mut().push(conn);
        slot
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
    conn: Rc<Conn>,
}

impl Slot {
    fn on(c: &Rc<Conn>) -> Slot {
        c.slots.set(c.slots.get() + 1);
        Slot { conn: c.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.slots.set(self.conn.slots.get().saturating_sub(1));
    }
}

/// Reads and handles frames until the connection ends.
async fn read_loop(conn: &Conn, mut r: TransportRead, cancel: monoio::io::CancelHandle) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        let room = buf.capacity() - buf.len();
        let at = buf.len();
        let (res, slice) = r
            .cancelable_read(buf.slice_mut(at..at + room), cancel.clone())
            .await;
        buf = slice.into_inner();
        let st = &mut *conn.st.borrow_mut();
        if !matches!(res, Ok(n) if n > 0) {
            st.conn.fail(None);
            st.table.wake_everyone();
            return;
        }
        let mut rx = Rx {
            table: &mut st.table,
            spare_heads: &mut st.spare_heads,
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
        if st.conn.is_dead() {
            return;
        }
    }
}

impl Outbox for Conn {
    fn poll_out(&self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<bool> {
        let st = &mut *self.st.borrow_mut();
        if st.conn.take_output(buf) {
            st.table.wake_blocked();
            return Poll::Ready(true);
        }
        let idle = st.conn.stream_count() == 0;
        if st.conn.is_dead() || (idle && (st.close_asked || st.conn.winding_down())) {
            return Poll::Ready(false);
        }
        st.table.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn wrote(&self, ok: bool) {
        let st = &mut *self.st.borrow_mut();
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

/// What the two halves of a stream share.
struct Handle {
    slot: Slot,
    /// The stream's id, once its HEADERS are queued.
    id: Cell<u32>,
    /// The peer guarantees it did not act on the request.
    refused: Cell<bool>,
    /// The writing half failed before the request went out.
    failed: Cell<bool>,
    /// The reading half waits for the request to go out.
    waiting: RefCell<Option<Waker>>,
}

impl Handle {
    fn conn(&self) -> &Conn {
        &self.slot.conn
    }

    /// The stream has failed: remember whether the request may go again.
    fn failure(&self, f: Failure) -> io::Error {
        if f == Failure::Reset(Code::REFUSED_STREAM) {
            self.refused.set(true);
        }
        self.conn().error(f)
    }

    fn wake_reader(&self) {
        wake(&mut self.waiting.borrow_mut());
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let id = self.id.get();
        if id == 0 {
            return;
        }
        let st = &mut *self.conn().st.borrow_mut();
        let Some((unread, side)) = st.table.remove(id) else {
            return;
        };
        if let Some(head) = side.head {
            if st.spare_heads.len() < 16 {
                st.spare_heads.push(head);
            }
        }
        // Given up before it ended: the upstream stops working on it (a reset, queued here).
        st.conn.close(id, unread, Instant::now());
        st.table.queued();
    }
}

/// An upstream stream as the forwarding path's upstream connection.
pub(crate) struct H2Up {
    pub write: UpWrite,
    pub read: UpRead,
}

/// The request side.
pub(crate) struct UpWrite {
    h: Rc<Handle>,
    tls: bool,
    mesh: bool,
    body: BodyOut,
}

/// The answer side.
pub(crate) struct UpRead {
    h: Rc<Handle>,
}

impl H2Up {
    /// A stream on `slot`; `tls`: the scheme is https; `mesh`: the request is marked as having
    /// come in as HTTP/1.1.
    pub(crate) fn new(slot: Slot, tls: bool, mesh: bool) -> H2Up {
        let h = Rc::new(Handle {
            slot,
            id: Cell::new(0),
            refused: Cell::new(false),
            failed: Cell::new(false),
            waiting: RefCell::new(None),
        });
        H2Up {
            write: UpWrite {
                h: h.clone(),
                tls,
                mesh,
                body: BodyOut::new(),
            },
            read: UpRead { h },
        }
    }
}

impl UpWrite {
    /// Opens the stream with the request's head (`req`, its bytes in `buf`) and what the proxy
    /// adds to it; its body, if any, follows through `write`.
    pub(crate) fn send_head(
        &mut self,
        req: &RequestHead,
        buf: &[u8],
        fwd: &Forwarded<'_>,
    ) -> io::Result<()> {
        let mut block = Vec::with_capacity(256 + req.headers.len() * 32);
        client::request_block(req, buf, fwd, self.tls, self.mesh, &mut block);
        self.body.start(req.framing);
        let h = &self.h;
        let opened = {
            let st = &mut *h.conn().st.borrow_mut();
            let id = if st.close_asked {
                None
            } else {
                st.conn.open(&block, self.body.done())
            };
            if let Some(id) = id {
                st.table.add(id, false).side.head_request = req.method == Method::Head;
                st.table.queued();
            }
            id
        };
        match opened {
            Some(id) => {
                h.id.set(id);
                h.wake_reader();
                Ok(())
            }
            None => {
                // Never sent: the request may go again.
                h.refused.set(true);
                h.failed.set(true);
                h.wake_reader();
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
    }

    /// Body bytes of the request, as the proxy framed them.
    async fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        let id = self.h.id.get();
        if id == 0 {
            return if bytes.is_empty() {
                Ok(())
            } else {
                Err(io::ErrorKind::InvalidData.into())
            };
        }
        self.body.take(self.h.conn(), id, bytes).await
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.cancel();
        Ok(())
    }

    /// A request not sent in full is cancelled, so that the upstream stops working on it.
    fn cancel(&mut self) {
        if self.body.done() {
            return;
        }
        self.body.end_at_shutdown();
        let id = self.h.id.get();
        if id == 0 {
            return;
        }
        let st = &mut *self.h.conn().st.borrow_mut();
        let closed = st
            .conn
            .stream(id)
            .is_none_or(|s| s.sent_end || s.failure.is_some());
        if st.conn.is_dead() || closed {
            return;
        }
        st.conn.reset(id, Code::CANCEL);
        st.table.failed(id);
        st.table.queued();
    }
}

impl Drop for UpWrite {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl UpRead {
    /// The peer refused the stream unprocessed: the request may go again, whatever its method.
    pub(crate) fn refused(&self) -> bool {
        self.h.refused.get()
    }

    /// Waits for the answer's final head and puts it in `resp`, its bytes at the start of
    /// `ubuf` (empty when given) and what came of the body behind them; the head's length.
    pub(crate) async fn read_head(
        &mut self,
        resp: &mut ResponseHead,
        ubuf: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let h = &self.h;
        ubuf.clear();
        poll_fn(|cx| {
            let id = match self.ready(cx) {
                Ok(Some(id)) => id,
                Ok(None) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let st = &mut *h.conn().st.borrow_mut();
            let Some(e) = st.table.get(id) else {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            };
            if let Some(mut head) = e.side.head.take() {
                std::mem::swap(resp, &mut head);
                if st.spare_heads.len() < 16 {
                    st.spare_heads.push(head);
                }
                let credit = e.inbox.take_all(ubuf);
                let head_len = e.side.head_len;
                if credit > 0 {
                    st.conn.consumed(id, credit);
                    st.table.queued();
                }
                return Poll::Ready(Ok(head_len));
            }
            match st.conn.stream(id).and_then(|s| s.failure) {
                Some(f) => Poll::Ready(Err(h.failure(f))),
                None if st.conn.is_dead() => Poll::Ready(Err(h.failure(Failure::Connection))),
                None => {
                    e.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The stream's id once the request went out (`None`: not yet, and `cx` is woken when it
    /// does); `Err` if it never will.
    fn ready(&self, cx: &mut std::task::Context<'_>) -> io::Result<Option<u32>> {
        let h = &self.h;
        match h.id.get() {
            0 if h.failed.get() => Err(io::ErrorKind::BrokenPipe.into()),
            0 => {
                *h.waiting.borrow_mut() = Some(cx.waker().clone());
                Ok(None)
            }
            id => Ok(Some(id)),
        }
    }

    /// Reads the answer's body, as HTTP/1.1 bytes.
    pub(crate) async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let h = &self.h;
        let r = poll_fn(|cx| {
            let id = match self.ready(cx) {
                Ok(Some(id)) => id,
                Ok(None) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let st = &mut *h.conn().st.borrow_mut();
            let Some(e) = st.table.get(id) else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            };
            if e.inbox.pending() {
                let (n, credit) = e.inbox.read_into(&mut buf);
                if credit > 0 {
                    st.conn.consumed(id, credit);
                    st.table.queued();
                }
                return Poll::Ready(Ok(n));
            }
            match st.conn.stream(id) {
                None => Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe))),
                Some(s) if s.failure.is_some() => {
                    let f = s.failure.unwrap_or(Failure::Connection);
                    Poll::Ready(Err(h.failure(f)))
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

super::read_glue!(UpRead);
super::write_glue!(UpWrite);
#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
