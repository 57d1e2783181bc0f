//! A connection's byte stream as the kernel and TLS give it: plain TCP or TLS, whole or split in
//! two halves (one task reads while another writes). HTTP/2 runs over it; the forwarding path's
//! own view of a connection ([`crate::io::Io`]) adds HTTP/2 streams beside it.

use std::io;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::tls::{TlsRead, TlsStream, TlsWrite};

/// A whole connection.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(TlsStream),
}

/// The reading half of a split connection.
pub(crate) enum TransportRead {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(TlsRead),
}

/// The writing half of a split connection.
pub(crate) enum TransportWrite {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(TlsWrite),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr, $Ty:ident) => {
        match $self {
            $Ty::Plain($s) => $e,
            $Ty::Tls($s) => $e,
        }
    };
}

impl Transport {
    /// The socket to wait on before a read; `None` when a read completes at once (TLS holding
    /// decrypted bytes).
    pub(crate) fn socket_to_wait_on(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(s) => s.socket_to_wait_on(),
        }
    }

    pub(crate) fn into_split(self) -> (TransportRead, TransportWrite) {
        match self {
            Transport::Plain(s) => {
                let (r, w) = s.into_split();
                (TransportRead::Plain(r), TransportWrite::Plain(w))
            }
            Transport::Tls(s) => {
                let (r, w) = s.into_split();
                (TransportRead::Tls(r), TransportWrite::Tls(w))
            }
        }
    }

    /// The socket's descriptor.
    pub(crate) fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        each!(self, s => s.as_raw_fd(), Transport)
    }

    /// The TLS session, if the connection is TLS.
    pub(crate) fn tls(&self) -> Option<&TlsStream> {
        match self {
            Transport::Tls(s) => Some(s),
            Transport::Plain(_) => None,
        }
    }

    /// Whether TLS agreed on HTTP/2 (ALPN `h2`).
    pub(crate) fn is_h2(&self) -> bool {
        self.tls().is_some_and(TlsStream::is_h2)
    }
}

impl TransportRead {
    /// Puts the halves back together; `None` if they do not belong together.
    pub(crate) fn reunite(self, w: TransportWrite) -> Option<Transport> {
        match (self, w) {
            (TransportRead::Plain(r), TransportWrite::Plain(w)) => {
                r.reunite(w).ok().map(Transport::Plain)
            }
            (TransportRead::Tls(r), TransportWrite::Tls(w)) => r.reunite(w).map(Transport::Tls),
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

impl AsyncReadRent for Transport {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.read(buf).await,
            Transport::Tls(s) => {
                let r = s.read(buf).await;
                flush_after_read(s).await;
                r
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.readv(buf).await, Transport)
    }
}

impl CancelableAsyncReadRent for Transport {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.cancelable_read(buf, c).await,
            Transport::Tls(s) => {
                let r = s.cancelable_read(buf, c).await;
                flush_after_read(s).await;
                r
            }
        }
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_readv(buf, c).await, Transport)
    }
}

impl AsyncWriteRent for Transport {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write(buf).await, Transport)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.writev(buf).await, Transport)
    }

    async fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush().await, Transport)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await, Transport)
    }
}

impl AsyncReadRent for TransportRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.read(buf).await, TransportRead)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.readv(buf).await, TransportRead)
    }
}

impl CancelableAsyncReadRent for TransportRead {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_read(buf, c).await, TransportRead)
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_readv(buf, c).await, TransportRead)
    }
}

impl AsyncWriteRent for TransportWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write(buf).await, TransportWrite)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.writev(buf).await, TransportWrite)
    }

    async fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush().await, TransportWrite)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await, TransportWrite)
    }
}
