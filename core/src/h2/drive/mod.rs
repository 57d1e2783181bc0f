//! The async drivers around the connection state machine ([`super::conn`]): a task reads and
//! feeds the bytes to it, a task writes what it queued (what the streams and the reader queued
//! since the last write goes in one write), and each stream's side waits here for what it
//! needs (body bytes, window). The wakers live here, beside the connection, never in it.
//!
//! [`server`] serves connections from clients, each stream a request through the proxy;
//! [`client`] keeps connections to upstreams, each request a stream.

pub(crate) mod client;
pub(crate) mod server;

use std::future::poll_fn;
use std::io;
use std::task::{Poll, Waker};

use super::body::Inbox;
use super::conn::{Blocked, Connection, Failure};
use crate::transport::TransportWrite;

/// What the driver keeps of a stream beside its protocol state: what came for its reader, the
/// tasks waiting on it, and what its side keeps of it (`X`).
pub(crate) struct Entry<X> {
    pub id: u32,
    pub inbox: Inbox,
    pub reader: Option<Waker>,
    pub writer: Option<Waker>,
    /// A task that stops when the stream fails.
    pub watcher: Option<Waker>,
    pub side: X,
}

impl<X> Entry<X> {
    pub fn wake_all(&mut self) {
        wake(&mut self.reader);
        wake(&mut self.writer);
        wake(&mut self.watcher);
    }
}

/// The streams' side of one connection, and the connection's writer.
pub(crate) struct Table<X> {
    pub entries: Vec<Entry<X>>,
    /// The writing task, waiting for output.
    pub writer: Option<Waker>,
    /// Senders waiting for the connection's window or room in the output.
    pub blocked: Vec<Waker>,
    /// Inboxes of ended streams, for the next ones.
    pub spare: Vec<Vec<u8>>,
}

impl<X> Default for Table<X> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            writer: None,
            blocked: Vec::new(),
            spare: Vec::new(),
        }
    }
}

impl<X: Default> Table<X> {
    /// A new stream's entry.
    pub fn add(&mut self, id: u32, chunked: bool) -> &mut Entry<X> {
        let mut inbox = Inbox::new(self.spare.pop().unwrap_or_default());
        inbox.chunked = chunked;
        self.entries.push(Entry {
            id,
            inbox,
            reader: None,
            writer: None,
            watcher: None,
            side: X::default(),
        });
        let last = self.entries.len() - 1;
        &mut self.entries[last]
    }
}

impl<X> Table<X> {
    pub fn get(&mut self, id: u32) -> Option<&mut Entry<X>> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// Takes a stream's entry off; its inbox's bytes are kept for the next stream, unless a
    /// large body grew them. The DATA bytes nobody read, and what the side kept.
    pub fn remove(&mut self, id: u32) -> Option<(u32, X)> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        let e = self.entries.swap_remove(i);
        let mut bytes = e.inbox.bytes;
        if bytes.capacity() <= 64 * 1024 && self.spare.len() < 16 {
            bytes.clear();
            self.spare.push(bytes);
        }
        Some((e.inbox.unread, e.side))
    }

    /// The output has something new for the writer.
    pub fn queued(&mut self) {
        wake(&mut self.writer);
    }

    pub fn wake_blocked(&mut self) {
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }

    /// The connection ended: everything waiting on it goes on (to find it dead).
    pub fn wake_everyone(&mut self) {
        for e in &mut self.entries {
            e.wake_all();
        }
        self.wake_blocked();
        self.queued();
    }

    /// DATA came on a stream.
    pub fn data(&mut self, id: u32, data: &[u8], end: bool) {
        if let Some(e) = self.get(id) {
            e.inbox.data(data, end);
            wake(&mut e.reader);
        }
    }

    /// A stream failed.
    pub fn failed(&mut self, id: u32) {
        if let Some(e) = self.get(id) {
            e.wake_all();
        }
    }

    /// A send window grew (0: the connection's).
    pub fn window(&mut self, id: u32) {
        if id == 0 {
            self.wake_blocked();
        } else if let Some(e) = self.get(id) {
            wake(&mut e.writer);
        }
    }
}

pub(crate) fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// A connection's state as its tasks share it.
pub(crate) trait Shared {
    /// What the side keeps of each stream.
    type Side;
    /// Runs `f` on the connection and its streams' side.
    fn with<R>(&self, f: impl FnOnce(&mut Connection, &mut Table<Self::Side>) -> R) -> R;
    /// The error a failed stream's reader or writer sees.
    fn error(&self, f: Failure) -> io::Error;
}

/// Sends `data` on stream `id` as the windows allow; `end`: END_STREAM with the last byte (or
/// alone when `data` is empty).
pub(crate) async fn send_data(c: &impl Shared, id: u32, data: &[u8], end: bool) -> io::Result<()> {
    let mut rest = data;
    let mut first = true;
    poll_fn(|cx| {
        let r = c.with(|conn, t| {
            if rest.is_empty() && !(first && end) {
                return Poll::Ready(Ok(()));
            }
            first = false;
            let sent = match conn.send_data(id, rest, end) {
                Ok(s) => s,
                Err(f) => return Poll::Ready(Err(f)),
            };
            rest = &rest[sent.n..];
            t.queued();
            match sent.blocked {
                None => Poll::Ready(Ok(())),
                Some(Blocked::Stream) => {
                    if let Some(e) = t.get(id) {
                        e.writer = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Some(Blocked::Connection) => {
                    if !t.blocked.iter().any(|w| w.will_wake(cx.waker())) {
                        t.blocked.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        });
        r.map_err(|f| c.error(f))
    })
    .await
}

/// A connection as its writing task sees it.
pub(crate) trait Outbox {
    /// Swaps what is queued into `buf` (true), says the connection is done (false), or waits.
    fn poll_out(&self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<bool>;
    /// A write of what was swapped out starts.
    fn writing(&self) {}
    /// The write ended, `ok` or not.
    fn wrote(&self, ok: bool);
    /// The writing is over: what is left fails, and the reader's read is to be cancelled.
    fn finish(&self) -> Option<monoio::io::Canceller>;
}

/// Writes what is queued until the connection ends, then closes it.
pub(crate) async fn write_loop(conn: &impl Outbox, mut w: TransportWrite) {
    use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if !poll_fn(|cx| conn.poll_out(cx, &mut buf)).await {
            break;
        }
        conn.writing();
        let (r, b) = w.write_all(buf).await;
        buf = b;
        buf.clear();
        conn.wrote(r.is_ok());
        if r.is_err() {
            break;
        }
    }
    let canceller = conn.finish();
    let _ = w.shutdown().await;
    // The reader's read would otherwise wait for the peer to close.
    if let Some(c) = canceller {
        c.cancel();
    }
}

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

            pub(crate) async fn readv<T: monoio::buf::IoVecBufMut>(
                &mut self,
                buf: T,
            ) -> monoio::BufResult<usize, T> {
                // The forwarding path reads a stream into one buffer; a vectored read is not
                // asked of it.
                (Err(std::io::ErrorKind::Unsupported.into()), buf)
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

/// Takes the HTTP/1.1 framing off body bytes the forwarding path writes, and sends what they
/// carry on stream `id`: DATA as the windows allow, then the end (with trailers when a
/// chunk-coded body has some).
pub(crate) struct BodyOut {
    framing: Out,
}

/// How body bytes are being turned into DATA.
enum Out {
    /// No head sent yet: no body may come.
    Head,
    Length(u64),
    Chunked(Box<super::body::ChunkedOut>),
    /// Until the writer shuts the stream down.
    UntilEnd,
    Done,
}

impl BodyOut {
    pub fn new() -> BodyOut {
        BodyOut { framing: Out::Head }
    }

    /// The head went: a body of `framing` follows (or none).
    pub fn start(&mut self, framing: crate::head::Framing) {
        use crate::head::Framing;
        self.framing = match framing {
            Framing::None | Framing::Length(0) => Out::Done,
            Framing::Length(n) => Out::Length(n),
            Framing::Chunked => Out::Chunked(Box::default()),
            Framing::Close => Out::UntilEnd,
        };
    }

    /// Whether the body went whole (or there is none).
    pub fn done(&self) -> bool {
        matches!(self.framing, Out::Done)
    }

    /// The writer is done: an answer without a length ends here; true if it did.
    pub fn end_at_shutdown(&mut self) -> bool {
        let until_end = matches!(self.framing, Out::UntilEnd);
        self.framing = Out::Done;
        until_end
    }

    /// Takes body bytes, as framed by the proxy, and sends them.
    pub async fn take(&mut self, c: &impl Shared, id: u32, bytes: &[u8]) -> io::Result<()> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidData);
        match &mut self.framing {
            Out::Head | Out::Done if bytes.is_empty() => Ok(()),
            // Nothing may follow a complete message.
            Out::Head | Out::Done => Err(invalid()),
            Out::Length(left) => {
                if bytes.len() as u64 > *left {
                    return Err(invalid());
                }
                *left -= bytes.len() as u64;
                let end = *left == 0;
                if end {
                    self.framing = Out::Done;
                }
                send_data(c, id, bytes, end).await
            }
            Out::UntilEnd => send_data(c, id, bytes, false).await,
            Out::Chunked(out) => {
                let done = out.decode(bytes)?;
                for r in &out.ranges {
                    send_data(c, id, &bytes[r.clone()], false).await?;
                }
                if !done {
                    return Ok(());
                }
                let trailers = std::mem::take(&mut out.trailers);
                self.framing = Out::Done;
                if super::body::trailer_fields(&trailers).next().is_none() {
                    return send_data(c, id, &[], true).await;
                }
                let mut block = Vec::with_capacity(trailers.len());
                for (n, v) in super::body::trailer_fields(&trailers) {
                    super::hpack::put_literal(&mut block, n, v);
                }
                c.with(|conn, t| {
                    t.queued();
                    conn.send_head(id, &block, true)
                })
                .map_err(|f| c.error(f))
            }
        }
    }
}
