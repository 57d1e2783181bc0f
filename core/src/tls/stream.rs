//! A TLS connection over a monoio socket, as server (clients of a listener) or client (to
//! upstreams, and the load generator): rustls does the protocol, the socket does completions.
//!
//! Ciphertext is read into a pooled scratch buffer taken only for the read and given back at
//! once, so an idle connection holds no I/O buffer of its own. The rustls connection sits in
//! an `Rc<RefCell>` shared by the two halves of a split stream (a request body streaming in
//! while the answer streams out); it is borrowed only between awaits.
//!
//! A read or write of ciphertext abandoned half-way (its future dropped) would lose bytes of a
//! record: the stream then refuses further use instead of producing garbage.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, HandshakeKind, ServerConfig, ServerConnection};

use crate::metrics::Handshake;

/// Ciphertext read per operation: at most this much plaintext results, which rustls always
/// has room for once its plaintext buffer is empty.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Scratch buffers of this worker, for ciphertext in and out.
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn scratch() -> Vec<u8> {
    SCRATCH
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_CHUNK))
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

struct Shared {
    conn: RefCell<Connection>,
    /// A read of ciphertext is under way; still set when one was abandoned.
    reading: Cell<bool>,
    /// Likewise for writes.
    writing: Cell<bool>,
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
    match ServerConnection::new(config) {
        Ok(conn) => handshake(tcp, conn.into()).await,
        Err(_) => (None, Handshake::Other),
    }
}

/// Runs a client handshake on `tcp` for `name`. The result says how it ended.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> (Option<TlsStream>, Handshake) {
    match ClientConnection::new(config, name) {
        Ok(conn) => handshake(tcp, conn.into()).await,
        Err(_) => (None, Handshake::Other),
    }
}

async fn handshake(mut tcp: TcpStream, conn: Connection) -> (Option<TlsStream>, Handshake) {
    let shared = Rc::new(Shared {
        conn: RefCell::new(conn),
        reading: Cell::new(false),
        writing: Cell::new(false),
    });
    loop {
        if flush(&mut tcp, &shared).await.is_err() {
            return (None, Handshake::Closed);
        }
        if !shared.conn.borrow().is_handshaking() {
            break;
        }
        match fill(&mut tcp, &shared, None).await {
            Ok(0) => return (None, Handshake::Closed),
            Ok(_) => {}
            Err(Fail::Io) => return (None, Handshake::Closed),
            Err(Fail::Tls(e)) => {
                // The alert rustls queued tells the client why.
                let _ = flush(&mut tcp, &shared).await;
                return (None, classify(&e));
            }
        }
    }
    let kind = match shared.conn.borrow().handshake_kind() {
        Some(HandshakeKind::Resumed) => Handshake::Resumed,
        _ => Handshake::Full,
    };
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

enum Fail {
    Io,
    Tls(rustls::Error),
}

/// Reads ciphertext once and gives it to rustls. `Ok(0)`: the peer closed the connection.
async fn fill<R: CancelableAsyncReadRent>(
    io: &mut R,
    shared: &Shared,
    cancel: Option<CancelHandle>,
) -> Result<usize, Fail> {
    let buf = scratch();
    shared.reading.set(true);
    let (res, buf) = match cancel {
        Some(c) => io.cancelable_read(buf, c).await,
        None => io.read(buf).await,
    };
    shared.reading.set(false);
    let n = match res {
        Ok(n) => n,
        Err(_) => {
            give_back(buf);
            return Err(Fail::Io);
        }
    };
    let result = feed(&mut shared.conn.borrow_mut(), &buf[..n]);
    give_back(buf);
    result.map(|()| n)
}

/// Hands ciphertext to rustls, processing records as they complete.
fn feed(conn: &mut Connection, mut data: &[u8]) -> Result<(), Fail> {
    while !data.is_empty() {
        conn.read_tls(&mut data).map_err(|_| Fail::Io)?;
        conn.process_new_packets().map_err(Fail::Tls)?;
    }
    Ok(())
}

/// Sends whatever ciphertext rustls has queued.
async fn flush<W: AsyncWriteRent>(io: &mut W, shared: &Shared) -> io::Result<()> {
    loop {
        let mut out = scratch();
        {
            let mut conn = shared.conn.borrow_mut();
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
        }
        if out.is_empty() {
            give_back(out);
            return Ok(());
        }
        shared.writing.set(true);
        let (res, out) = io.write_all(out).await;
        shared.writing.set(false);
        give_back(out);
        res?;
    }
}

/// Copies decrypted bytes to `dst` (`len` bytes of room); `None` when rustls has none.
fn take_plaintext(
    conn: &mut Connection,
    dst: *mut u8,
    len: usize,
) -> Option<io::Result<usize>> {
    let mut reader = conn.reader();
    match reader.fill_buf() {
        Ok(data) => {
            let n = data.len().min(len);
            raw::copy_to(data, dst, n);
            reader.consume(n);
            Some(Ok(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        // The peer closed without close_notify: HTTP frames its own messages, so this is an
        // ordinary end of stream.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
        Err(e) => Some(Err(e)),
    }
}

/// The raw-pointer side of monoio's buffer traits, kept in one place.
#[allow(unsafe_code)]
mod raw {
    use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};

    /// Copies `n` bytes of `src` (n <= src.len()) to `dst`, which the caller got from a
    /// buffer with at least `n` bytes of room.
    pub(super) fn copy_to(src: &[u8], dst: *mut u8, n: usize) {
        debug_assert!(n <= src.len());
        // SAFETY: `dst` has room for `n` bytes (the caller's buffer), `src` holds `n` bytes,
        // and a borrowed slice cannot overlap a buffer the caller owns.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) }
    }

    /// Marks the first `n` bytes written to `buf`'s room as initialized.
    pub(super) fn set_init<T: IoBufMut>(buf: &mut T, n: usize) {
        // SAFETY: `copy_to` has just written `n` bytes at `write_ptr`.
        unsafe { buf.set_init(n) }
    }

    pub(super) fn set_init_vec<T: IoVecBufMut>(buf: &mut T, n: usize) {
        // SAFETY: as above, into the first iovec.
        unsafe { buf.set_init(n) }
    }

    /// The initialized bytes of `buf`.
    pub(super) fn bytes<T: IoBuf>(buf: &T) -> &[u8] {
        // SAFETY: an IoBuf's first `bytes_init` bytes at `read_ptr` are initialized and live
        // as long as the buffer.
        unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
    }

    /// The `i`th buffer of an iovec list.
    pub(super) fn iovec<T: IoVecBuf>(buf: &T, i: usize) -> &[u8] {
        // SAFETY: `i` is below `read_iovec_len`; each iovec points at initialized bytes that
        // live as long as `buf`.
        unsafe {
            let v = &*buf.read_iovec_ptr().add(i);
            std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
        }
    }

    /// The room of the first buffer of an iovec list, if any.
    pub(super) fn first_room<T: IoVecBufMut>(buf: &mut T) -> Option<(*mut u8, usize)> {
        if buf.write_iovec_len() == 0 {
            return None;
        }
        // SAFETY: there is at least one iovec.
        let v = unsafe { &*buf.write_iovec_ptr() };
        Some((v.iov_base.cast::<u8>(), v.iov_len))
    }
}

impl<IO> Tls<IO> {
    /// Decrypted bytes are waiting to be read: a read now completes at once.
    pub fn has_plaintext(&self) -> bool {
        // Plaintext, or the end of the stream: either way a read returns at once.
        let mut conn = self.shared.conn.borrow_mut();
        let mut reader = conn.reader();
        !matches!(reader.fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The SNI name the client sent (server side).
    pub fn server_name(&self) -> Option<String> {
        match &*self.shared.conn.borrow() {
            Connection::Server(c) => c.server_name().map(str::to_owned),
            Connection::Client(_) => None,
        }
    }

    /// The peer's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.shared.conn.borrow().peer_certificates().map(<[_]>::to_vec)
    }

    /// The application protocol agreed by ALPN.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.shared
            .conn
            .borrow()
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    /// Reads plaintext into `len` bytes of room at `dst`, which the caller's buffer owns and
    /// keeps in place for the whole call.
    async fn read_into(
        &mut self,
        dst: *mut u8,
        len: usize,
        cancel: Option<CancelHandle>,
    ) -> io::Result<usize>
    where
        IO: AsyncReadRent + CancelableAsyncReadRent,
    {
        usable(&self.shared.reading)?;
        loop {
            if let Some(r) = take_plaintext(&mut self.shared.conn.borrow_mut(), dst, len) {
                return r;
            }
            match fill(&mut self.io, &self.shared, cancel.clone()).await {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(Fail::Io) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "TLS read failed",
                    ));
                }
                Err(Fail::Tls(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    async fn read_buf<T: IoBufMut>(
        &mut self,
        mut buf: T,
        cancel: Option<CancelHandle>,
    ) -> BufResult<usize, T>
    where
        IO: AsyncReadRent + CancelableAsyncReadRent,
    {
        let r = self
            .read_into(buf.write_ptr(), buf.bytes_total(), cancel)
            .await;
        if let Ok(n) = r {
            raw::set_init(&mut buf, n);
        }
        (r, buf)
    }

    async fn write_inner(&mut self, data: &[u8]) -> io::Result<usize>
    where
        IO: AsyncWriteRent,
    {
        usable(&self.shared.writing)?;
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.shared.conn.borrow_mut().writer().write(rest)?;
            rest = &rest[n..];
            // rustls holds a bounded amount of ciphertext: send it before encrypting more.
            flush(&mut self.io, &self.shared).await?;
        }
        Ok(data.len())
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

    /// Waits until the socket has bytes (or the connection has plaintext already).
    pub async fn readable(&self) -> io::Result<()> {
        if self.has_plaintext() {
            return Ok(());
        }
        self.io.readable(false).await
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

impl<IO: AsyncReadRent + CancelableAsyncReadRent> AsyncReadRent for Tls<IO> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.read_buf(buf, None).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Into the first buffer only: a short read, which callers of readv handle.
        let Some((ptr, len)) = raw::first_room(&mut buf) else {
            return (Ok(0), buf);
        };
        let r = self.read_into(ptr, len, None).await;
        if let Ok(n) = r {
            raw::set_init_vec(&mut buf, n);
        }
        (r, buf)
    }
}

impl<IO: AsyncReadRent + CancelableAsyncReadRent> CancelableAsyncReadRent for Tls<IO> {
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
        flush(&mut self.io, &self.shared).await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.shared.conn.borrow_mut().send_close_notify();
        flush(&mut self.io, &self.shared).await?;
        self.io.shutdown().await
    }
}
