//! A connection's byte stream, to a client or an upstream: plain TCP or TLS, whole or split in
//! two halves while a request body streams in as the answer streams out.

use std::io;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::h2::client::{H2Up, UpRead, UpWrite};
use crate::h2::server::{H2Recv, H2Send, H2Stream};
use crate::tls::{TlsRead, TlsStream, TlsWrite};

/// A whole client connection (or, for HTTP/2, one stream of one).
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(TlsStream),
    H2(Box<H2Stream>),
    /// A stream to an HTTP/2 upstream.
    H2Up(Box<H2Up>),
}

/// The reading half of a split client connection.
pub(crate) enum IoRead {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(TlsRead),
    H2(Box<H2Recv>),
    H2Up(Box<UpRead>),
}

/// The writing half of a split client connection.
pub(crate) enum IoWrite {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(TlsWrite),
    H2(Box<H2Send>),
    H2Up(Box<UpWrite>),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr, $Ty:ident) => {
        match $self {
            $Ty::Plain($s) => $e,
            $Ty::Tls($s) => $e,
            $Ty::H2($s) => $e,
            $Ty::H2Up($s) => $e,
        }
    };
}

impl Io {
    /// The socket to wait on before a read; `None` when a read completes at once.
    pub(crate) fn socket_to_wait_on(&self) -> Option<&TcpStream> {
        match self {
            Io::Plain(s) => Some(s),
            Io::Tls(s) => s.socket_to_wait_on(),
            Io::H2(_) | Io::H2Up(_) => None,
        }
    }

    pub(crate) fn into_split(self) -> (IoRead, IoWrite) {
        match self {
            Io::Plain(s) => {
                let (r, w) = s.into_split();
                (IoRead::Plain(r), IoWrite::Plain(w))
            }
            Io::Tls(s) => {
                let (r, w) = s.into_split();
                (IoRead::Tls(r), IoWrite::Tls(w))
            }
            Io::H2(s) => {
                let H2Stream { recv, send } = *s;
                (IoRead::H2(Box::new(recv)), IoWrite::H2(Box::new(send)))
            }
            Io::H2Up(s) => {
                let H2Up { read, write } = *s;
                (IoRead::H2Up(Box::new(read)), IoWrite::H2Up(Box::new(write)))
            }
        }
    }

    /// The socket's descriptor (-1 for an HTTP/2 stream, which has none of its own).
    pub(crate) fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Io::Plain(s) => s.as_raw_fd(),
            Io::Tls(s) => s.as_raw_fd(),
            Io::H2(_) | Io::H2Up(_) => -1,
        }
    }
}

impl IoRead {
    /// Puts the halves back together; `None` if they do not belong together.
    pub(crate) fn reunite(self, w: IoWrite) -> Option<Io> {
        match (self, w) {
            (IoRead::Plain(r), IoWrite::Plain(w)) => r.reunite(w).ok().map(Io::Plain),
            (IoRead::Tls(r), IoWrite::Tls(w)) => r.reunite(w).map(Io::Tls),
            (IoRead::H2(recv), IoWrite::H2(send)) => Some(Io::H2(Box::new(H2Stream {
                recv: *recv,
                send: *send,
            }))),
            (IoRead::H2Up(read), IoWrite::H2Up(write)) => Some(Io::H2Up(Box::new(H2Up {
                read: *read,
                write: *write,
            }))),
            _ => None,
        }
    }
}

/// A whole TLS stream sends what reading produced (an alert, an answer to a key update) at
/// once: a peer may be waiting for it. Best effort: the read's own result is what counts.
async fn flush_after_read(s: &mut TlsStream) {
    if s.has_pending_output() {
        let _ = s.flush_pending().await;
    }
}

impl AsyncReadRent for Io {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => {
                let r = s.read(buf).await;
                flush_after_read(s).await;
                r
            }
            Io::H2(s) => s.recv.read(buf).await,
            Io::H2Up(s) => s.read.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.readv(buf).await,
            Io::Tls(s) => s.readv(buf).await,
            Io::H2(s) => s.recv.readv(buf).await,
            Io::H2Up(s) => s.read.readv(buf).await,
        }
    }
}

impl CancelableAsyncReadRent for Io {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.cancelable_read(buf, c).await,
            Io::Tls(s) => {
                let r = s.cancelable_read(buf, c).await;
                flush_after_read(s).await;
                r
            }
            Io::H2(s) => s.recv.cancelable_read(buf, c).await,
            Io::H2Up(s) => s.read.cancelable_read(buf, c).await,
        }
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.cancelable_readv(buf, c).await,
            Io::Tls(s) => s.cancelable_readv(buf, c).await,
            Io::H2(s) => s.recv.cancelable_readv(buf, c).await,
            Io::H2Up(s) => s.read.cancelable_readv(buf, c).await,
        }
    }
}

impl AsyncWriteRent for Io {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.write(buf).await,
            Io::Tls(s) => s.write(buf).await,
            Io::H2(s) => s.send.write(buf).await,
            Io::H2Up(s) => s.write.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.writev(buf).await,
            Io::Tls(s) => s.writev(buf).await,
            Io::H2(s) => s.send.writev(buf).await,
            Io::H2Up(s) => s.write.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush().await,
            Io::Tls(s) => s.flush().await,
            Io::H2(_) | Io::H2Up(_) => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.shutdown().await,
            Io::Tls(s) => s.shutdown().await,
            Io::H2(s) => s.send.shutdown().await,
            Io::H2Up(s) => s.write.shutdown().await,
        }
    }
}

impl AsyncReadRent for IoRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.read(buf).await, IoRead)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.readv(buf).await, IoRead)
    }
}

impl CancelableAsyncReadRent for IoRead {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_read(buf, c).await, IoRead)
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_readv(buf, c).await, IoRead)
    }
}

impl AsyncWriteRent for IoWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write(buf).await, IoWrite)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.writev(buf).await, IoWrite)
    }

    async fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush().await, IoWrite)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await, IoWrite)
    }
}
