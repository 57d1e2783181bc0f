//! A TLS connection over a monoio socket, as server (clients of a listener) or client (to
//! upstreams, and the load generator): rustls's unbuffered API does the protocol, the socket
//! does completions, and every buffer is ours.
//!
//! Ciphertext is read into a pooled scratch buffer, processed there, and the buffer goes back
//! at once; only what rustls has not finished with is kept (a partial record, or a handshake
//! message being reassembled: at most [`MAX_PENDING`] bytes, past which the peer is cut off). Plaintext is
//! encrypted straight into a pooled buffer that is sent and given back. So an idle connection
//! holds no I/O buffer at all: rustls's state and the socket.
//!
//! The connection sits in an `Rc` shared by the two halves of a split stream (a request body
//! streaming in while the answer streams out); it is borrowed only between awaits. TLS output
//! that reading produces (alerts, key-update answers) waits for the next write when the stream
//! is split. A read or write of ciphertext abandoned half-way (its future dropped) would lose
//! bytes of a record: the stream then refuses further reads (or writes) instead of producing
//! garbage.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};

use crate::metrics::Handshake;
use crate::rawbuf as raw;

#[cfg(any(fuzzing, test))]
mod fuzzing;
mod records;
use records::{close_notify, encode_queued, handle, has_handshake_record};
#[cfg(test)]
mod tests;
#[cfg(any(fuzzing, test))]
pub use fuzzing::drive_server;

/// Ciphertext read per operation.
const READ_CHUNK: usize = 16 * 1024;
/// Room for a record's header, tag and content type, per record.
const RECORD_OVERHEAD: usize = 64;
/// Largest plaintext per record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Most ciphertext kept unprocessed: a handshake message being reassembled (rustls's own
/// buffered API allows 64 KiB) and one record. A peer that makes rustls keep more is cut off.
const MAX_PENDING: usize = 64 * 1024 + MAX_FRAGMENT + 2048;

thread_local! {
    /// Scratch buffers of this worker, for ciphertext in and out.
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn scratch() -> Vec<u8> {
    SCRATCH
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_CHUNK + RECORD_OVERHEAD))
}

fn give_back(mut b: Vec<u8>) {
    // Grown past the usual size (a large write): not worth keeping.
    if b.capacity() > 4 * READ_CHUNK {
        return;
    }
    b.clear();
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 64 {
            s.push(b);
        }
    });
}

enum Conn {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

impl Conn {
    fn common(&self) -> &rustls::CommonState {
        match self {
            Conn::Server(c) => c,
            Conn::Client(c) => c,
        }
    }
}

struct Shared {
    conn: RefCell<Conn>,
    /// Ciphertext received and not processed yet (a partial record). Empty, without capacity,
    /// most of the time.
    incoming: RefCell<Vec<u8>>,
    /// Decrypted bytes not read yet, from `plain_at`.
    plain: RefCell<Vec<u8>>,
    plain_at: Cell<usize>,
    /// TLS output produced while reading on a split stream, sent before the next write.
    pending_out: RefCell<Vec<u8>>,
    /// The peer sent close_notify, or the connection is closed.
    peer_closed: Cell<bool>,
    /// rustls reported an error: the connection is over (rustls must not run again).
    failed: Cell<bool>,
    /// The peer was cut off for sending too much: not even the alert may be asked of rustls
    /// (the bytes it was working on are gone).
    cut_off: Cell<bool>,
    /// The peer's SPIFFE ID, found once after the handshake.
    identity: Option<Box<str>>,
    /// ALPN agreed on `h2`.
    h2: bool,
    /// A read of ciphertext is under way; still set when one was abandoned.
    reading: Cell<bool>,
    /// Likewise for writes.
    writing: Cell<bool>,
}

/// What processing the ciphertext at hand led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Something was done; process again.
    Again,
    /// More ciphertext is needed.
    NeedData,
    /// The handshake is done and nothing is pending (any plaintext given was encrypted).
    Ready,
    /// The peer closed.
    Closed,
}

impl Shared {
    fn new(conn: Conn) -> Rc<Shared> {
        Rc::new(Shared {
            conn: RefCell::new(conn),
            incoming: RefCell::new(Vec::new()),
            plain: RefCell::new(Vec::new()),
            plain_at: Cell::new(0),
            pending_out: RefCell::new(Vec::new()),
            peer_closed: Cell::new(false),
            failed: Cell::new(false),
            cut_off: Cell::new(false),
            identity: None,
            h2: false,
            reading: Cell::new(false),
            writing: Cell::new(false),
        })
    }

    /// Processes `data[start..]` until rustls needs more ciphertext or is ready to send;
    /// plaintext goes to `self.plain`, TLS output to `out`. Returns where processing stopped
    /// (the rest is a partial record) and the last step.
    fn process(
        &self,
        data: &mut [u8],
        out: &mut Vec<u8>,
        plaintext: Option<&[u8]>,
    ) -> (usize, Result<Next, rustls::Error>) {
        if self.failed.get() {
            return (
                0,
                Err(rustls::Error::General("the TLS connection failed".into())),
            );
        }
        let mut conn = self.conn.borrow_mut();
        let mut plain = self.plain.borrow_mut();
        let mut start = 0;
        loop {
            let (discard, next) = match &mut *conn {
                Conn::Server(c) => handle(
                    c.process_tls_records(&mut data[start..]),
                    &mut plain,
                    out,
                    plaintext,
                    &self.peer_closed,
                ),
                Conn::Client(c) => handle(
                    c.process_tls_records(&mut data[start..]),
                    &mut plain,
                    out,
                    plaintext,
                    &self.peer_closed,
                ),
            };
            start += discard;
            match next {
                Ok(Next::Again) => {}
                Err(e) => {
                    self.failed.set(true);
                    return (start, Err(e));
                }
                other => return (start, other),
            }
        }
    }

    /// Processes ciphertext just read (`buf[..n]`) after any partial record kept from before;
    /// keeps what is left of a partial record.
    fn take_in(&self, mut buf: Vec<u8>, out: &mut Vec<u8>) -> Result<Next, rustls::Error> {
        let mut pending = std::mem::take(&mut *self.incoming.borrow_mut());
        // A handshake record after the handshake is a TLS 1.2 renegotiation (TLS 1.3 sends
        // everything after the handshake as application data records). rustls answers it
        // with a warning and carries on, and the client would wait for a handshake that never
        // comes: the connection is refused at once instead, as nginx does.
        let after_handshake = self.is_server_after_handshake();
        let (left, result, renegotiating) = if pending.is_empty() {
            let renegotiating = after_handshake && has_handshake_record(&buf);
            let (used, r) = self.process(&mut buf, out, None);
            (
                buf.get(used..).unwrap_or_default().to_vec(),
                r,
                renegotiating,
            )
        } else {
            pending.extend_from_slice(&buf);
            let renegotiating = after_handshake && has_handshake_record(&pending);
            let (used, r) = self.process(&mut pending, out, None);
            pending.drain(..used.min(pending.len()));
            (pending, r, renegotiating)
        };
        give_back(buf);
        if renegotiating && result.is_ok() {
            self.failed.set(true);
            return Err(rustls::Error::General("TLS renegotiation refused".into()));
        }
        if left.len() > MAX_PENDING {
            self.failed.set(true);
            self.cut_off.set(true);
            return Err(rustls::Error::General(
                "too much TLS data kept unprocessed".into(),
            ));
        }
        // Nothing kept (the usual case) holds no memory.
        *self.incoming.borrow_mut() = if left.is_empty() { Vec::new() } else { left };
        result
    }

    /// Processes the ciphertext kept from before (never a fresh empty buffer: rustls may be
    /// reassembling a handshake message in it).
    fn process_pending(
        &self,
        out: &mut Vec<u8>,
        plaintext: Option<&[u8]>,
    ) -> Result<Next, rustls::Error> {
        let mut pending = std::mem::take(&mut *self.incoming.borrow_mut());
        let (used, next) = self.process(&mut pending, out, plaintext);
        pending.drain(..used.min(pending.len()));
        *self.incoming.borrow_mut() = if pending.is_empty() {
            Vec::new()
        } else {
            pending
        };
        next
    }

    /// A server connection whose handshake is over.
    fn is_server_after_handshake(&self) -> bool {
        match &*self.conn.borrow() {
            Conn::Server(c) => !c.is_handshaking(),
            Conn::Client(_) => false,
        }
    }

    /// The alert rustls queued when it failed, to tell the peer why (after the ServerHello
    /// it queued first, when a TLS 1.3 server fails on what the hello asked: the alert is
    /// then encrypted under the handshake keys). Only the queued output is taken: rustls hands
    /// queued output out before it looks at any input, and is asked only while it has some,
    /// because processing input again after a failure is not allowed (it would fail again).
    /// The input kept from before goes in as it is: its handshake reassembly may point into it.
    fn alert(&self, out: &mut Vec<u8>) {
        if self.cut_off.get() {
            return;
        }
        let mut pending = std::mem::take(&mut *self.incoming.borrow_mut());
        let mut conn = self.conn.borrow_mut();
        // Bounded: rustls queues a handful of chunks at most.
        for _ in 0..8 {
            if !conn.common().wants_write() {
                break;
            }
            let encoded = match &mut *conn {
                Conn::Server(c) => encode_queued(c.process_tls_records(&mut pending), out),
                Conn::Client(c) => encode_queued(c.process_tls_records(&mut pending), out),
            };
            if !encoded {
                break;
            }
        }
    }

    /// Copies plaintext into `dst`; how much, or `None` when there is none.
    fn take_plain(&self, dst: &mut raw::Room<'_>) -> Option<usize> {
        let mut plain = self.plain.borrow_mut();
        let at = self.plain_at.get();
        if at >= plain.len() {
            return None;
        }
        let n = dst.put(&plain[at..]);
        if at + n == plain.len() {
            plain.clear();
            if plain.capacity() > 4 * MAX_FRAGMENT {
                *plain = Vec::new();
            }
            self.plain_at.set(0);
        } else {
            self.plain_at.set(at + n);
        }
        Some(n)
    }

    fn has_plain(&self) -> bool {
        self.plain_at.get() < self.plain.borrow().len()
    }
}

/// One side (or both) of a TLS connection: `IO` is the socket or one of its halves.
pub struct Tls<IO> {
    io: IO,
    shared: Rc<Shared>,
}

/// A whole TLS connection.
pub type TlsStream = Tls<TcpStream>;
/// The reading half of a split connection.
pub type TlsRead = Tls<OwnedReadHalf<TcpStream>>;
/// The writing half of a split connection.
pub type TlsWrite = Tls<OwnedWriteHalf<TcpStream>>;

/// Runs a server handshake on `tcp`. The result says how it ended, for the metrics.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> (Option<TlsStream>, Handshake) {
    match UnbufferedServerConnection::new(config) {
        Ok(conn) => handshake(tcp, Conn::Server(conn)).await,
        Err(_) => (None, Handshake::Other),
    }
}

/// Runs a client handshake on `tcp` for `name`. The result says how it ended.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> (Option<TlsStream>, Handshake) {
    match UnbufferedClientConnection::new(config, name) {
        Ok(conn) => handshake(tcp, Conn::Client(conn)).await,
        Err(_) => (None, Handshake::Other),
    }
}

async fn handshake(mut tcp: TcpStream, conn: Conn) -> (Option<TlsStream>, Handshake) {
    let shared = Shared::new(conn);
    // A client speaks first: process with nothing in hand to produce its hello.
    let mut out = scratch();
    let mut next = shared.process_pending(&mut out, None);
    loop {
        if !out.is_empty() {
            let (r, o) = tcp.write_all(out).await;
            out = o;
            out.clear();
            if r.is_err() {
                give_back(out);
                return (None, Handshake::Closed);
            }
        }
        match next {
            Ok(Next::Ready) => break,
            Ok(Next::Closed) => {
                give_back(out);
                return (None, Handshake::Closed);
            }
            Ok(_) => {}
            Err(e) => {
                give_back(out);
                return (None, classify(&e));
            }
        }
        let buf = scratch();
        let (r, buf) = tcp.read(buf).await;
        match r {
            Ok(n) if n > 0 => next = shared.take_in(buf, &mut out),
            _ => {
                give_back(buf);
                give_back(out);
                return (None, Handshake::Closed);
            }
        }
        if let Err(e) = &next {
            // Send the alert rustls queued, to tell the peer why.
            shared.alert(&mut out);
            let (_, o) = tcp.write_all(out).await;
            give_back(o);
            return (None, classify(e));
        }
    }
    give_back(out);
    let (kind, identity, h2) = {
        let conn = shared.conn.borrow();
        let common = conn.common();
        let h2 = common.alpn_protocol() == Some(b"h2");
        let kind = match common.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        let identity = common
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::spiffe_id(leaf))
            .map(String::into_boxed_str);
        (kind, identity, h2)
    };
    let mut shared = shared;
    if let Some(s) = Rc::get_mut(&mut shared) {
        s.identity = identity;
        s.h2 = h2;
    }
    (Some(Tls { io: tcp, shared }), kind)
}

fn classify(e: &rustls::Error) -> Handshake {
    use rustls::Error as E;
    match e {
        E::PeerIncompatible(_) | E::NoApplicationProtocol => Handshake::Incompatible,
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::PeerMisbehaved(_)
        | E::DecryptError => Handshake::Malformed,
        E::NoCertificatesPresented | E::InvalidCertificate(_) => Handshake::ClientCertificate,
        E::AlertReceived(_) => Handshake::AlertReceived,
        _ => Handshake::Other,
    }
}

/// Refuses a read (or write) after one was abandoned mid-way: reads and writes may each be under
/// way at once on split halves, but never two of the same kind.
fn usable(abandoned: &Cell<bool>) -> io::Result<()> {
    if abandoned.get() {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "TLS stream abandoned mid-record",
        ));
    }
    Ok(())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO> Tls<IO> {
    /// Decrypted bytes are waiting, or the peer closed: a read now completes at once.
    pub fn has_plaintext(&self) -> bool {
        self.shared.has_plain() || self.shared.peer_closed.get()
    }

    /// The SPIFFE ID of the peer's certificate, if it presented one with an ID.
    pub fn identity(&self) -> Option<&str> {
        self.shared.identity.as_deref()
    }

    /// The peer's certificate (its leaf, DER), if it presented one (copied: for callers
    /// outside the request path, such as the control plane's API).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let conn = self.shared.conn.borrow();
        conn.common()
            .peer_certificates()?
            .first()
            .map(|c| c.to_vec())
    }

    /// The client and the proxy agreed on HTTP/2 (ALPN `h2`).
    pub fn is_h2(&self) -> bool {
        self.shared.h2
    }

    /// Reads plaintext into `dst` (the room of the caller's buffer, borrowed for the whole
    /// call); how many bytes.
    async fn read_into(
        &mut self,
        dst: &mut raw::Room<'_>,
        cancel: Option<CancelHandle>,
    ) -> io::Result<usize>
    where
        IO: CancelableAsyncReadRent,
    {
        usable(&self.shared.reading)?;
        loop {
            if let Some(n) = self.shared.take_plain(dst) {
                return Ok(n);
            }
            if self.shared.peer_closed.get() {
                return Ok(0);
            }
            let buf = scratch();
            self.shared.reading.set(true);
            let (r, buf) = match &cancel {
                Some(c) => self.io.cancelable_read(buf, c.clone()).await,
                None => self.io.read(buf).await,
            };
            self.shared.reading.set(false);
            match r {
                Ok(n) if n > 0 => {}
                // The peer closed without close_notify. A client's requests are framed by HTTP,
                // so that is an ordinary end; from an upstream it may be a truncation (an answer
                // delimited by the connection's end), so it is an error; and a partial record
                // left over always is.
                Ok(_) => {
                    give_back(buf);
                    self.shared.peer_closed.set(true);
                    let server = matches!(&*self.shared.conn.borrow(), Conn::Server(_));
                    if server && self.shared.incoming.borrow().is_empty() {
                        return Ok(0);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS connection closed without close_notify",
                    ));
                }
                Err(e) => {
                    give_back(buf);
                    return Err(e);
                }
            }
            let mut out = std::mem::take(&mut *self.shared.pending_out.borrow_mut());
            let r = self.shared.take_in(buf, &mut out);
            if r.is_err() {
                // The alert says why; it goes with the next flush (the whole stream flushes
                // after every read, see `io.rs`).
                self.shared.alert(&mut out);
            }
            *self.shared.pending_out.borrow_mut() = out;
            r.map_err(tls_error)?;
        }
    }

    async fn read_buf<T: IoBufMut>(
        &mut self,
        mut buf: T,
        cancel: Option<CancelHandle>,
    ) -> BufResult<usize, T>
    where
        IO: CancelableAsyncReadRent,
    {
        let mut room = raw::room(&mut buf);
        let r = self.read_into(&mut room, cancel).await;
        let filled = room.filled();
        if r.is_ok() {
            raw::commit(&mut buf, filled);
        }
        (r, buf)
    }

    /// Encrypts `data` and sends it, after any TLS output left by reads.
    async fn write_inner(&mut self, data: &[u8]) -> io::Result<usize>
    where
        IO: AsyncWriteRent,
    {
        usable(&self.shared.writing)?;
        let mut out = std::mem::take(&mut *self.shared.pending_out.borrow_mut());
        if out.capacity() == 0 {
            out = scratch();
        }
        let next = self.shared.process_pending(&mut out, Some(data));
        let result = match next {
            Ok(Next::Ready) => Ok(data.len()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS connection cannot send",
            )),
            Err(e) => Err(tls_error(e)),
        };
        if !out.is_empty() {
            self.shared.writing.set(true);
            let (r, o) = self.io.write_all(out).await;
            self.shared.writing.set(false);
            out = o;
            r?;
        }
        give_back(out);
        result
    }

    /// Whether reading left TLS output to send (an alert, a key-update answer).
    pub fn has_pending_output(&self) -> bool {
        !self.shared.pending_out.borrow().is_empty()
    }

    /// Sends TLS output left by reads.
    pub async fn flush_pending(&mut self) -> io::Result<()>
    where
        IO: AsyncWriteRent,
    {
        let out = std::mem::take(&mut *self.shared.pending_out.borrow_mut());
        if out.is_empty() {
            return Ok(());
        }
        usable(&self.shared.writing)?;
        self.shared.writing.set(true);
        let (r, o) = self.io.write_all(out).await;
        self.shared.writing.set(false);
        give_back(o);
        r.map(|_| ())
    }
}

impl TlsStream {
    /// Splits the connection so that a body can stream in while the answer streams out.
    pub fn into_split(self) -> (TlsRead, TlsWrite) {
        let (r, w) = self.io.into_split();
        (
            Tls {
                io: r,
                shared: self.shared.clone(),
            },
            Tls {
                io: w,
                shared: self.shared,
            },
        )
    }

    /// The socket's descriptor.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.io)
    }

    /// The socket to wait on for the next bytes; `None` when a read completes at once
    /// (plaintext already decrypted, or the peer closed).
    pub fn socket_to_wait_on(&self) -> Option<&TcpStream> {
        (!self.has_plaintext()).then_some(&self.io)
    }
}

impl TlsRead {
    /// Puts the halves back together.
    pub fn reunite(self, w: TlsWrite) -> Option<TlsStream> {
        let io = self.io.reunite(w.io).ok()?;
        Some(Tls {
            io,
            shared: self.shared,
        })
    }
}

impl<IO: CancelableAsyncReadRent> AsyncReadRent for Tls<IO> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.read_buf(buf, None).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Into the first buffer only: a short read, which callers of readv handle.
        let Some(mut room) = raw::first_room(&mut buf) else {
            return (Ok(0), buf);
        };
        let r = self.read_into(&mut room, None).await;
        let filled = room.filled();
        if r.is_ok() {
            raw::commit_vec(&mut buf, filled);
        }
        (r, buf)
    }
}

impl<IO: CancelableAsyncReadRent> CancelableAsyncReadRent for Tls<IO> {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        self.read_buf(buf, Some(c)).await
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        _c: CancelHandle,
    ) -> BufResult<usize, T> {
        self.readv(buf).await
    }
}

impl<IO: AsyncWriteRent> AsyncWriteRent for Tls<IO> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let r = self.write_inner(raw::bytes(&buf)).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut total = 0;
        for i in 0..buf.read_iovec_len() {
            match self.write_inner(raw::iovec(&buf, i)).await {
                Ok(n) => total += n,
                Err(e) if total == 0 => return (Err(e), buf),
                Err(_) => break,
            }
        }
        (Ok(total), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_pending().await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.flush_pending().await?;
        if self.shared.failed.get() {
            return self.io.shutdown().await;
        }
        let mut out = scratch();
        out.resize(256, 0);
        let n = {
            let mut pending = std::mem::take(&mut *self.shared.incoming.borrow_mut());
            let mut conn = self.shared.conn.borrow_mut();
            let n = match &mut *conn {
                Conn::Server(c) => close_notify(c.process_tls_records(&mut pending), &mut out),
                Conn::Client(c) => close_notify(c.process_tls_records(&mut pending), &mut out),
            };
            *self.shared.incoming.borrow_mut() = pending;
            n
        };
        out.truncate(n);
        if !out.is_empty() {
            let (_, o) = self.io.write_all(out).await;
            out = o;
        }
        give_back(out);
        self.io.shutdown().await
    }
}
