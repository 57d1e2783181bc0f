//! tokio's poll-based `AsyncRead`/`AsyncWrite` (what h2 is written against) over a client
//! connection's own rent-based halves, plain or TLS: the connection stays on io_uring. Each
//! read or write in flight is a boxed future owning its half and its buffer; writes are
//! gathered until h2 flushes, so a burst of frames goes out in one write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use tokio::io::ReadBuf;

use crate::transport::{Transport, TransportRead, TransportWrite};

/// What a read gathers at most.
const READ_BUF: usize = 16 * 1024;
/// Writes gathered past this go out before h2 flushes.
const WRITE_BATCH: usize = 64 * 1024;

type ReadOp = Pin<Box<dyn Future<Output = (TransportRead, io::Result<usize>, Vec<u8>)>>>;
type WriteOp = Pin<Box<dyn Future<Output = (TransportWrite, io::Result<()>, Vec<u8>)>>>;

enum Reader {
    /// Bytes `buf[at..]` are read and not yet handed to h2.
    Idle {
        half: TransportRead,
        buf: Vec<u8>,
        at: usize,
    },
    Busy(ReadOp),
    Failed,
}

enum Writer {
    /// `buf` holds bytes written by h2 and not yet sent.
    Idle {
        half: TransportWrite,
        buf: Vec<u8>,
    },
    Busy(WriteOp),
    Failed,
}

/// A client connection as h2 sees it.
pub(crate) struct PollIo {
    reader: Reader,
    writer: Writer,
}

impl PollIo {
    /// `read`: bytes already read from the connection (the preface), handed to h2 first.
    pub(crate) fn new(io: Transport, read: Vec<u8>) -> PollIo {
        let (r, w) = io.into_split();
        PollIo {
            reader: Reader::Idle {
                half: r,
                buf: read,
                at: 0,
            },
            writer: Writer::Idle {
                half: w,
                buf: Vec::with_capacity(READ_BUF),
            },
        }
    }

    /// Waits for a write in flight; its error, if it failed.
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Writer::Busy(op) = &mut self.writer else {
            return Poll::Ready(match self.writer {
                Writer::Failed => Err(io::ErrorKind::BrokenPipe.into()),
                _ => Ok(()),
            });
        };
        let (half, r, mut buf) = ready!(op.as_mut().poll(cx));
        match r {
            Ok(()) => {
                buf.clear();
                self.writer = Writer::Idle { half, buf };
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                self.writer = Writer::Failed;
                Poll::Ready(Err(e))
            }
        }
    }

    /// Starts sending what is gathered, if anything.
    fn start_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let state = std::mem::replace(&mut self.writer, Writer::Failed);
        match state {
            Writer::Idle { half, buf } if buf.is_empty() => {
                self.writer = Writer::Idle { half, buf };
                Poll::Ready(Ok(()))
            }
            Writer::Idle { mut half, buf } => {
                self.writer = Writer::Busy(Box::pin(async move {
                    let (r, buf) = half.write_all(buf).await;
                    (half, r.map(|_| ()), buf)
                }));
                self.poll_write_done(cx)
            }
            other => {
                self.writer = other;
                self.poll_write_done(cx)
            }
        }
    }
}

impl tokio::io::AsyncRead for PollIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.reader {
                Reader::Idle { buf, at, .. } if *at < buf.len() => {
                    let n = (buf.len() - *at).min(out.remaining());
                    out.put_slice(&buf[*at..*at + n]);
                    *at += n;
                    return Poll::Ready(Ok(()));
                }
                Reader::Idle { .. } => {
                    let Reader::Idle {
                        mut half, mut buf, ..
                    } = std::mem::replace(&mut this.reader, Reader::Failed)
                    else {
                        return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                    };
                    buf.clear();
                    if buf.capacity() < READ_BUF {
                        buf.reserve(READ_BUF);
                    }
                    this.reader = Reader::Busy(Box::pin(async move {
                        let (r, buf) = half.read(buf).await;
                        (half, r, buf)
                    }));
                }
                Reader::Busy(op) => {
                    let (half, r, buf) = ready!(op.as_mut().poll(cx));
                    this.reader = Reader::Idle { half, buf, at: 0 };
                    match r {
                        Ok(0) => return Poll::Ready(Ok(())),
                        Ok(_) => {}
                        Err(e) => {
                            this.reader = Reader::Failed;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Reader::Failed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl tokio::io::AsyncWrite for PollIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_done(cx))?;
        let Writer::Idle { buf, .. } = &mut this.writer else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        buf.extend_from_slice(data);
        if buf.len() >= WRITE_BATCH {
            // Started now; the next write or flush waits for it.
            if let Poll::Ready(Err(e)) = this.start_write(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_done(cx))?;
        this.start_write(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_done(cx))?;
        ready!(this.start_write(cx))?;
        let state = std::mem::replace(&mut this.writer, Writer::Failed);
        match state {
            Writer::Idle { mut half, buf } => {
                this.writer = Writer::Busy(Box::pin(async move {
                    let r = half.shutdown().await;
                    (half, r, buf)
                }));
                this.poll_write_done(cx)
            }
            other => {
                this.writer = other;
                this.poll_write_done(cx)
            }
        }
    }
}
