//! A connection as the forwarding path sees it, to a client or an upstream: a byte stream
//! ([`Transport`]: plain TCP or TLS), or one stream of an HTTP/2 connection, which reads and
//! writes bodies as the byte stream would and takes heads as heads ([`HeadsTo`], [`HeadsFrom`]).
//! Whole, or split in two halves while a request body streams in as the answer streams out.

use std::io;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;

use crate::h2::drive::client::{H2Up, UpRead, UpWrite};
use crate::h2::drive::server::{H2Recv, H2Send, H2Stream};
use crate::transport::{Transport, TransportRead, TransportWrite};

/// A whole connection (or, for HTTP/2, one stream of one).
pub(crate) enum Io {
    Wire(Transport),
    /// A stream from an HTTP/2 client.
    H2(Box<H2Stream>),
    /// A stream to an HTTP/2 upstream.
    H2Up(Box<H2Up>),
}

/// The reading half of a split connection.
pub(crate) enum IoRead {
    Wire(TransportRead),
    H2(Box<H2Recv>),
    H2Up(Box<UpRead>),
}

/// The writing half of a split connection.
pub(crate) enum IoWrite {
    Wire(TransportWrite),
    H2(Box<H2Send>),
    H2Up(Box<UpWrite>),
}

/// Where an answer's heads go as heads rather than bytes: a stream to an HTTP/2 client.
pub(crate) trait HeadsTo: AsyncWriteRent {
    fn h2(&mut self) -> Option<&mut H2Send>;
}

/// Where an answer's head comes as a head rather than bytes: a stream to an HTTP/2 upstream.
pub(crate) trait HeadsFrom: AsyncReadRent {
    fn h2(&mut self) -> Option<&mut UpRead>;
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr, $Ty:ident) => {
        match $self {
            $Ty::Wire($s) => $e,
            $Ty::H2($s) => $e,
            $Ty::H2Up($s) => $e,
        }
    };
}

impl Io {
    /// The socket to wait on before a read; `None` when a read completes at once.
    pub(crate) fn socket_to_wait_on(&self) -> Option<&TcpStream> {
        match self {
            Io::Wire(t) => t.socket_to_wait_on(),
            Io::H2(_) | Io::H2Up(_) => None,
        }
    }

    /// The TLS session of a connection that has one.
    pub(crate) fn tls(&self) -> Option<&crate::tls::TlsStream> {
        match self {
            Io::Wire(t) => t.tls(),
            Io::H2(_) | Io::H2Up(_) => None,
        }
    }

    pub(crate) fn into_split(self) -> (IoRead, IoWrite) {
        match self {
            Io::Wire(t) => {
                let (r, w) = t.into_split();
                (IoRead::Wire(r), IoWrite::Wire(w))
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
        match self {
            Io::Wire(t) => t.as_raw_fd(),
            Io::H2(_) | Io::H2Up(_) => -1,
        }
    }

    /// The stream to an HTTP/2 upstream, if this is one.
    pub(crate) fn h2_up(&mut self) -> Option<&mut H2Up> {
        match self {
            Io::H2Up(s) => Some(s),
            _ => None,
        }
    }

    /// The request side of an HTTP/2 client's stream.
    pub(crate) fn h2_recv(&self) -> Option<&H2Recv> {
        match self {
            Io::H2(s) => Some(&s.recv),
            _ => None,
        }
    }
}

impl IoRead {
    /// Puts the halves back together; `None` if they do not belong together.
    pub(crate) fn reunite(self, w: IoWrite) -> Option<Io> {
        match (self, w) {
            (IoRead::Wire(r), IoWrite::Wire(w)) => r.reunite(w).map(Io::Wire),
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

impl HeadsTo for Io {
    fn h2(&mut self) -> Option<&mut H2Send> {
        match self {
            Io::H2(s) => Some(&mut s.send),
            _ => None,
        }
    }
}

impl HeadsTo for IoWrite {
    fn h2(&mut self) -> Option<&mut H2Send> {
        match self {
            IoWrite::H2(s) => Some(s),
            _ => None,
        }
    }
}

impl HeadsFrom for Io {
    fn h2(&mut self) -> Option<&mut UpRead> {
        match self {
            Io::H2Up(s) => Some(&mut s.read),
            _ => None,
        }
    }
}

impl HeadsFrom for IoRead {
    fn h2(&mut self) -> Option<&mut UpRead> {
        match self {
            IoRead::H2Up(s) => Some(s),
            _ => None,
        }
    }
}

impl AsyncReadRent for Io {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Wire(t) => t.read(buf).await,
            Io::H2(s) => s.recv.read(buf).await,
            Io::H2Up(s) => s.read.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Wire(t) => t.readv(buf).await,
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
            Io::Wire(t) => t.cancelable_read(buf, c).await,
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
            Io::Wire(t) => t.cancelable_readv(buf, c).await,
            Io::H2(s) => s.recv.cancelable_readv(buf, c).await,
            Io::H2Up(s) => s.read.cancelable_readv(buf, c).await,
        }
    }
}

impl AsyncWriteRent for Io {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Wire(t) => t.write(buf).await,
            Io::H2(s) => s.send.write(buf).await,
            Io::H2Up(s) => s.write.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Wire(t) => t.writev(buf).await,
            Io::H2(s) => s.send.writev(buf).await,
            Io::H2Up(s) => s.write.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Wire(t) => t.flush().await,
            Io::H2(_) | Io::H2Up(_) => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Io::Wire(t) => t.shutdown().await,
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
