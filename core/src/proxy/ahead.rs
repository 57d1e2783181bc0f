//! Read-ahead on a hot plain-TCP client connection: while a request's exchange goes on, a read
//! for the next request is already posted, so that a request arriving while the backend runs is
//! found at the start of the worker's next turn rather than one submission later (see
//! perf/README.md, "What sets the p99 under wrk").
//!
//! monoio's read future borrows its stream, so the posted read cannot live in the connection's
//! own task across the exchange: a reader task, started when the connection turns hot and
//! dropped when it turns cold, reads through a second descriptor of the same socket and hands what it read to the
//! connection's task. The exchange's bookkeeping is not held back by it: the connection's task
//! collects the read only when it wants the next request.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::idle::Fired;
use crate::worker::state::Worker;

/// The reader of a connection, as its task sees it.
pub(super) struct Ahead {
    shared: Rc<Shared>,
}

/// What the reader read: the read's result and its buffer, and whether the idle set ended it.
pub(super) struct Read {
    pub res: io::Result<usize>,
    pub buf: Vec<u8>,
    pub fired: Option<Fired>,
}

struct Shared {
    state: RefCell<State>,
    /// The reader, waiting to be armed.
    reader: RefCell<Option<Waker>>,
    /// The connection's task, waiting for the read.
    conn: RefCell<Option<Waker>>,
    /// Cancels the reader's posted read when the connection ends.
    canceller: RefCell<Option<Canceller>>,
}

enum State {
    Idle,
    Armed,
    Done(Read),
    Stopped,
}

impl Ahead {
    /// Starts a reader on a second descriptor of `stream`'s socket. The idle set ends its reads
    /// as it ends `read_small`'s: shed after `shed`, expired after `idle_timeout`.
    pub(super) fn start(
        w: &Rc<Worker>,
        stream: &TcpStream,
        shed: Duration,
        idle_timeout: Duration,
    ) -> io::Result<Ahead> {
        use std::os::fd::AsRawFd;
        let fd = crate::sys::duplicate(stream.as_raw_fd())?;
        let second = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        let shared = Rc::new(Shared {
            state: RefCell::new(State::Idle),
            reader: RefCell::new(None),
            conn: RefCell::new(None),
            canceller: RefCell::new(Some(Canceller::new())),
        });
        // Contained as connections are: a panic in it ends this connection's reader only.
        monoio::spawn(crate::task::contained(reader(
            w.clone(),
            second,
            shared.clone(),
            shed,
            idle_timeout,
        )));
        Ok(Ahead { shared })
    }

    /// Posts the read for the next request.
    pub(super) fn arm(&self) {
        let mut s = self.shared.state.borrow_mut();
        if matches!(*s, State::Idle) {
            *s = State::Armed;
            drop(s);
            if let Some(w) = self.shared.reader.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Whether a read is posted or done and not yet collected.
    pub(super) fn armed(&self) -> bool {
        matches!(*self.shared.state.borrow(), State::Armed | State::Done(_))
    }

    /// Waits for the posted read. `None` when none was posted.
    pub(super) async fn collect(&self) -> Option<Read> {
        if !self.armed() {
            return None;
        }
        poll_fn(|cx| {
            let mut s = self.shared.state.borrow_mut();
            match std::mem::replace(&mut *s, State::Idle) {
                State::Done(r) => Poll::Ready(Some(r)),
                State::Armed => {
                    *s = State::Armed;
                    *self.shared.conn.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
                other => {
                    *s = other;
                    Poll::Ready(None)
                }
            }
        })
        .await
    }
}

impl Drop for Ahead {
    /// The connection ends: the reader's read is cancelled and the reader ends, closing its
    /// descriptor (the socket closes with the last one).
    fn drop(&mut self) {
        let was = self.shared.state.replace(State::Stopped);
        // Only a posted read has anything to cancel.
        if matches!(was, State::Armed) {
            if let Some(c) = self.shared.canceller.borrow_mut().take() {
                c.cancel();
            }
        }
        if let Some(w) = self.shared.reader.borrow_mut().take() {
            w.wake();
        }
    }
}

async fn reader(
    w: Rc<Worker>,
    mut stream: TcpStream,
    shared: Rc<Shared>,
    shed: Duration,
    idle_timeout: Duration,
) {
    loop {
        let go = poll_fn(|cx| match *shared.state.borrow() {
            State::Armed => Poll::Ready(true),
            State::Stopped => Poll::Ready(false),
            _ => {
                *shared.reader.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !go {
            return;
        }
        let mut buf = w.small.get();
        buf.clear();
        let Some(handle) = shared.canceller.borrow().as_ref().map(Canceller::handle) else {
            // Stopped while it was being armed.
            w.small.put(buf);
            return;
        };
        let mut read = std::pin::pin!(stream.cancelable_read(buf, handle));
        let mut fired = None;
        let (res, buf) = monoio::select! {
            r = &mut read => r,
            f = w.idle.wait(Instant::now(), Some(shed), idle_timeout) => {
                fired = Some(f);
                // Cancel, then wait for the read to end: its buffer comes back, and bytes that
                // won the race are kept.
                let fresh = shared.canceller.take().map(Canceller::cancel);
                shared.canceller.replace(fresh);
                read.await
            }
        };
        let mut s = shared.state.borrow_mut();
        if matches!(*s, State::Stopped) {
            w.small.put(buf);
            return;
        }
        *s = State::Done(Read { res, buf, fired });
        drop(s);
        if let Some(c) = shared.conn.borrow_mut().take() {
            c.wake();
        }
    }
}
