//! A client connection's byte stream: plain TCP or TLS, whole or split in two halves while a
//! request body streams in as the answer streams out.

use std::io;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::tls::{TlsRead, TlsStream, TlsWrite};

/// A whole client connection.
pub(crate) enum ClientIo {
    Plain(TcpStream),
    Tls(TlsStream),
}

/// The reading half of a split client connection.
pub(crate) enum ClientRead {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(TlsRead),
}

/// The writing half of a split client connection.
pub(crate) enum ClientWrite {
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

impl ClientIo {
    /// Waits until a read would not block.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            ClientIo::Plain(s) => s.readable(false).await,
            ClientIo::Tls(s) => s.readable().await,
        }
    }

    pub(crate) fn into_split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientIo::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientIo::Tls(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
        }
    }

    /// Scheme, for X-Forwarded-Proto.
    pub(crate) fn proto(&self) -> &'static [u8] {
        match self {
            ClientIo::Plain(_) => b"http",
            ClientIo::Tls(_) => b"https",
        }
    }
}

impl ClientRead {
    /// Puts the halves back together; `None` if they do not belong together.
    pub(crate) fn reunite(self, w: ClientWrite) -> Option<ClientIo> {
        match (self, w) {
            (ClientRead::Plain(r), ClientWrite::Plain(w)) => r.reunite(w).ok().map(ClientIo::Plain),
            (ClientRead::Tls(r), ClientWrite::Tls(w)) => r.reunite(w).map(ClientIo::Tls),
            _ => None,
        }
    }
}

impl AsyncReadRent for ClientIo {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.read(buf).await, ClientIo)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.readv(buf).await, ClientIo)
    }
}

impl CancelableAsyncReadRent for ClientIo {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_read(buf, c).await, ClientIo)
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        each!(self, s => s.cancelable_readv(buf, c).await, ClientIo)
    }
}

impl AsyncWriteRent for ClientIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write(buf).await, ClientIo)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.writev(buf).await, ClientIo)
    }

    async fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush().await, ClientIo)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await, ClientIo)
    }
}

impl AsyncReadRent for ClientRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.read(buf).await, ClientRead)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.readv(buf).await, ClientRead)
    }
}

impl AsyncWriteRent for ClientWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write(buf).await, ClientWrite)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.writev(buf).await, ClientWrite)
    }

    async fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush().await, ClientWrite)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await, ClientWrite)
    }
}
