//! HTTP/2 to upstreams (cluster `protocol: http2` or `mesh`): a few multiplexed connections per
//! endpoint per worker, and each request a stream on one of them. A stream is an upstream
//! connection as the HTTP/1.1 forwarding path sees it ([`H2Up`]): the request head and body it
//! writes become HEADERS, DATA and trailers; the answer reads back as an HTTP/1.1 head and body
//! (chunk-coded, with trailers, when it has no length). Retries, timeouts, outlier ejection and
//! the rest of the forwarding path therefore hold for HTTP/2 upstreams unchanged.
//!
//! The client side of the protocol is written here rather than taken from h2: the translation
//! happens at the frame level. A request's HEADERS are encoded straight from its parsed
//! HTTP/1.1 head, and an answer's header block is decoded straight into the HTTP/1.1 head the
//! forwarding path reads, with no field map, shared buffers or per-stream task in between.
//! Each connection has two tasks: one reads and handles frames, one writes what the streams
//! and the reader queued (a burst of streams goes out in one write).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use monoio::BufResult;
use monoio::buf::{IoBufMut, IoVecBufMut};
use monoio::io::CancelableAsyncReadRent;
use monoio::io::Canceller;

use super::frame::{
    self, MAX_ID, Outbox, PeerSettings, Sending, be32, code, frame_head, on_ping, parse_length,
    push_block, push_goaway, push_rst, push_window_update, unpad, valid_name, valid_value,
    write_loop,
};
use super::frame::{next_frame, take_inbox};
use super::hpack::{self, Decoder};
use super::stream::{ChunkedOut, is_connection_specific};
use crate::endpoint::ConnCount;
use crate::http1::chunked::write_chunk_size;
use crate::http1::{Framing, RequestHead};
use crate::io::{Io, IoRead};

/// Streams opened on one connection at most, whatever the peer allows (Envoy's default is 100
/// too; more streams per connection only deepen head-of-line blocking on loss).
const MAX_STREAMS_PER_CONN: u32 = 100;
/// Receive windows for answers: per stream, and per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// The field that tells the next ringmesh a request came in as HTTP/1.1 (`protocol: mesh`).
pub const ORIGINAL_PROTOCOL: &str = "ringmesh-original-protocol";

/// A header block (HEADERS and its CONTINUATIONs) we accept at most.
const MAX_BLOCK: usize = 256 * 1024;
/// An answer's head (or trailers) as HTTP/1.1, at most: a block of one-byte references to a
/// large table entry would otherwise decode to hundreds of times its size.
const MAX_HEAD: usize = 256 * 1024;
/// Our SETTINGS_HEADER_TABLE_SIZE (the default).
const TABLE_SIZE: usize = 4096;
/// What one read takes at most.
const READ_BUF: usize = 32 * 1024;
/// Queued output past which the peer is making us answer faster than it reads (PINGs, SETTINGS,
/// frames we must reset): the connection ends.
const OUT_CAP: usize = 1024 * 1024;

/// How a stream ended before its answer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The peer reset it with this code.
    Reset(u32),
    /// We reset it (a malformed answer, or the request was given up).
    Local(u32),
    /// The connection ended.
    Connection,
}

impl Failure {
    fn error(self) -> io::Error {
        match self {
            Failure::Reset(c) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the upstream reset the HTTP/2 stream (code {c})"),
            ),
            Failure::Local(c) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the upstream's HTTP/2 answer was refused (code {c})"),
            ),
            Failure::Connection => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the upstream HTTP/2 connection ended",
            ),
        }
    }
}

/// Where a stream's answer is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Head,
    Body,
    Done,
}

/// One stream's state, kept by the connection.
struct Stream {
    /// The answer as HTTP/1.1 bytes, `inbox[taken..]` not yet read.
    inbox: Vec<u8>,
    taken: usize,
    phase: Phase,
    chunked: bool,
    /// Body bytes the declared length still allows.
    left: Option<u64>,
    /// The request was HEAD: a declared length has no body.
    head_request: bool,
    failure: Option<Failure>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// DATA bytes in the inbox, to credit back once read.
    unread: u32,
    /// Consumed, not yet credited back to the peer.
    credit: u32,
    recv_window: i64,
    send_window: i64,
    sent_end: bool,
}

impl Stream {
    fn new(inbox: Vec<u8>, send_window: i64, head_request: bool, sent_end: bool) -> Stream {
        Stream {
            inbox,
            taken: 0,
            phase: Phase::Head,
            chunked: false,
            left: None,
            head_request,
            failure: None,
            reader: None,
            writer: None,
            unread: 0,
            credit: 0,
            recv_window: STREAM_WINDOW as i64,
            send_window,
            sent_end,
        }
    }

    fn fail(&mut self, f: Failure) {
        if self.failure.is_none() && self.phase != Phase::Done {
            self.failure = Some(f);
        }
        self.phase = Phase::Done;
        wake(&mut self.reader);
        wake(&mut self.writer);
    }

    /// Done both ways: nothing to reset.
    fn closed(&self) -> bool {
        self.phase == Phase::Done && (self.sent_end || self.failure.is_some())
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// A header block being received.
#[derive(Default)]
struct Block {
    bytes: Vec<u8>,
    /// The stream it is for (0: none in progress).
    stream: u32,
    end_stream: bool,
}

/// One connection's state: what the two tasks and the streams share.
struct State {
    /// Frames to write.
    out: Vec<u8>,
    writer: Option<Waker>,
    /// Streams waiting for connection window or room in `out`.
    blocked: Vec<Waker>,
    next_id: u32,
    ids: Vec<u32>,
    streams: Vec<Stream>,
    send_window: i64,
    /// What the sending side follows of the peer's SETTINGS.
    peer: PeerSettings,
    recv_window: i64,
    credit: u32,
    /// The peer's first frame, its SETTINGS, has come.
    settled: bool,
    /// The last stream the peer will process, once it has sent GOAWAY.
    goaway: Option<u32>,
    /// The connection has ended (or is ending): no stream goes on.
    dead: bool,
    /// Close once idle (the worker is stopping).
    close_asked: bool,
    decoder: Decoder,
    block: Block,
    /// Scratch for a request's header block.
    scratch: Vec<u8>,
    /// Inboxes of ended streams, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Stops the reader's read once the connection is done.
    canceller: Option<Canceller>,
    /// The peer's limit on concurrent streams, within ours.
    max: u32,
}

/// One HTTP/2 connection to an endpoint.
struct Conn {
    st: RefCell<State>,
    /// Streams reserved on it now.
    slots: Cell<u32>,
}

impl Conn {
    fn usable(&self) -> bool {
        let st = self.st.borrow();
        !st.dead && !st.close_asked && st.goaway.is_none() && st.next_id <= MAX_ID
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
            wake(&mut st.writer);
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
            .filter(|c| c.slots.get() < c.st.borrow().max)
            .min_by_key(|c| c.slots.get())?;
        Some(Slot::on(c))
    }

    /// Sets up HTTP/2 on a new connection (counted by `count` while it lives, if counted), and
    /// returns a stream slot on it.
    pub(crate) async fn open(&self, io: Io, count: Option<ConnCount>) -> io::Result<Slot> {
        let canceller = Canceller::new();
        let handle = canceller.handle();
        let conn = Rc::new(Conn {
            st: RefCell::new(State::new(canceller)),
            slots: Cell::new(0),
        });
        let (r, w) = io.into_split();
        let count = Rc::new(count);
        // Contained as client connections are: a bug met on this connection ends it only.
        let (c, n) = (conn.clone(), count.clone());
        monoio::spawn(crate::listener::contained(async move {
            let _count = n;
            read_loop(&c, r, handle).await;
        }));
        let c = conn.clone();
        monoio::spawn(crate::listener::contained(async move {
            let _count = count;
            write_loop(&*c, w).await;
        }));
        let slot = Slot::on(&conn);
        self.list.borrow_mut().push(conn);
        Ok(slot)
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

impl State {
    fn new(canceller: Canceller) -> State {
        let mut out = Vec::with_capacity(16 * 1024);
        out.extend_from_slice(super::PREFACE);
        // Our SETTINGS: no push, no streams from the server, our stream window.
        frame_head(&mut out, 18, frame::SETTINGS, 0, 0);
        for (id, v) in [(2u16, 0u32), (3, 0), (4, STREAM_WINDOW)] {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&v.to_be_bytes());
        }
        push_window_update(&mut out, 0, CONNECTION_WINDOW - 65_535);
        State {
            out,
            writer: None,
            blocked: Vec::new(),
            next_id: 1,
            ids: Vec::new(),
            streams: Vec::new(),
            send_window: 65_535,
            peer: PeerSettings::default(),
            recv_window: CONNECTION_WINDOW as i64,
            credit: 0,
            settled: false,
            goaway: None,
            dead: false,
            close_asked: false,
            decoder: Decoder::new(TABLE_SIZE),
            block: Block::default(),
            scratch: Vec::new(),
            spare: Vec::new(),
            canceller: Some(canceller),
            max: MAX_STREAMS_PER_CONN,
        }
    }

    /// A connection with `n` requests sent whole (streams 1, 3, ...), for fuzzing and tests.
    fn with_requests(n: u8) -> State {
        let mut st = State::new(Canceller::new());
        for _ in 0..n {
            let id = st.next_id;
            st.next_id += 2;
            st.ids.push(id);
            st.streams
                .push(Stream::new(Vec::new(), st.peer.window, false, true));
        }
        st
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        let i = self.find(id)?;
        Some(&mut self.streams[i])
    }

    fn wake_blocked(&mut self) {
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }

    /// The output has something new for the writer.
    fn queued(&mut self) {
        wake(&mut self.writer);
    }

    /// Ends the connection: every stream fails, the writer sends what is queued (a GOAWAY with
    /// `code` when it is our error) and closes.
    fn fail(&mut self, code: Option<u32>) {
        if self.dead {
            return;
        }
        self.dead = true;
        if let Some(code) = code {
            push_goaway(&mut self.out, 0, code);
        }
        let goaway = self.goaway;
        for (id, s) in self.ids.iter().zip(self.streams.iter_mut()) {
            // Past the peer's GOAWAY, the request was never processed.
            let f = match goaway {
                Some(last) if *id > last => Failure::Reset(code::REFUSED_STREAM),
                _ => Failure::Connection,
            };
            s.fail(f);
        }
        self.wake_blocked();
        self.queued();
    }

    /// Ends one stream with a reset of ours.
    fn reset(&mut self, id: u32, code: u32) {
        push_rst(&mut self.out, id, code);
        self.queued();
        if let Some(s) = self.stream(id) {
            // Nothing more goes out on it, and it needs no second reset.
            s.sent_end = true;
            s.fail(Failure::Local(code));
        }
    }

    /// Credits read DATA back to the peer, in halves of the windows.
    fn credit(&mut self, id: u32, n: u32) {
        let (out, window) = (&mut self.out, &mut self.recv_window);
        if frame::credit(out, 0, &mut self.credit, window, n, CONNECTION_WINDOW) {
            self.queued();
        }
        let Some(i) = self.find(id) else { return };
        let s = &mut self.streams[i];
        // A stream that has ended needs no more window.
        let open = s.phase != Phase::Done;
        if open
            && frame::credit(
                &mut self.out,
                id,
                &mut s.credit,
                &mut s.recv_window,
                n,
                STREAM_WINDOW,
            )
        {
            self.queued();
        }
    }

    /// Handles every whole frame at the start of `buf`; how many bytes that was. An error is
    /// the connection's: its code for GOAWAY.
    fn on_bytes(&mut self, buf: &[u8]) -> Result<usize, u32> {
        let mut at = 0;
        while let Some((ty, flags, id, p)) = next_frame(&buf[at..])? {
            self.on_frame(ty, flags, id, p)?;
            at += 9 + p.len();
            if self.out.len() > OUT_CAP {
                return Err(code::ENHANCE_YOUR_CALM);
            }
            if self.dead {
                break;
            }
        }
        Ok(at)
    }

    fn on_frame(&mut self, ty: u8, flags: u8, id: u32, p: &[u8]) -> Result<(), u32> {
        if !self.settled && ty != frame::SETTINGS {
            return Err(code::PROTOCOL_ERROR);
        }
        if self.block.stream != 0 && ty != frame::CONTINUATION {
            // A header block is one run of frames (RFC 9113 section 6.10).
            return Err(code::PROTOCOL_ERROR);
        }
        match ty {
            frame::DATA => self.on_data(flags, id, p),
            frame::HEADERS => self.on_headers(flags, id, p),
            frame::CONTINUATION => {
                if self.block.stream == 0 || id != self.block.stream {
                    return Err(code::PROTOCOL_ERROR);
                }
                self.add_block(p)?;
                if flags & frame::END_HEADERS != 0 {
                    self.end_block()?;
                }
                Ok(())
            }
            frame::PRIORITY => {
                if id == 0 {
                    return Err(code::PROTOCOL_ERROR);
                }
                if p.len() != 5 {
                    self.reset(id, code::FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if id == 0 || self.idle(id) {
                    return Err(code::PROTOCOL_ERROR);
                }
                if p.len() != 4 {
                    return Err(code::FRAME_SIZE_ERROR);
                }
                if let Some(s) = self.stream(id) {
                    // The peer is done with the stream either way: nothing to reset back.
                    s.sent_end = true;
                    s.fail(Failure::Reset(be32(p)));
                    wake(&mut s.writer);
                }
                Ok(())
            }
            frame::SETTINGS => self.on_settings(flags, id, p),
            frame::PUSH_PROMISE => Err(code::PROTOCOL_ERROR),
            frame::PING => {
                if on_ping(flags, id, p, &mut self.out)? {
                    self.queued();
                }
                Ok(())
            }
            frame::GOAWAY => {
                if id != 0 {
                    return Err(code::PROTOCOL_ERROR);
                }
                if p.len() < 8 {
                    return Err(code::FRAME_SIZE_ERROR);
                }
                let last = be32(p) & MAX_ID;
                let last = self.goaway.map_or(last, |l| l.min(last));
                self.goaway = Some(last);
                for (sid, s) in self.ids.iter().zip(self.streams.iter_mut()) {
                    if *sid > last {
                        s.sent_end = true;
                        s.fail(Failure::Reset(code::REFUSED_STREAM));
                    }
                }
                self.queued();
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                if p.len() != 4 {
                    return Err(code::FRAME_SIZE_ERROR);
                }
                let n = (be32(p) & MAX_ID) as i64;
                if id == 0 {
                    if n == 0 {
                        return Err(code::PROTOCOL_ERROR);
                    }
                    self.send_window += n;
                    if self.send_window > MAX_ID as i64 {
                        return Err(code::FLOW_CONTROL_ERROR);
                    }
                    self.wake_blocked();
                    return Ok(());
                }
                if self.idle(id) {
                    return Err(code::PROTOCOL_ERROR);
                }
                if n == 0 {
                    self.reset(id, code::PROTOCOL_ERROR);
                    return Ok(());
                }
                let Some(s) = self.stream(id) else {
                    return Ok(());
                };
                if let Err(c) = frame::move_window(&mut s.send_window, &mut s.writer, n) {
                    self.reset(id, c);
                }
                Ok(())
            }
            // Unknown frame types are ignored (RFC 9113 section 4.1).
            _ => Ok(()),
        }
    }

    /// A stream id we never opened: the server may not open streams.
    fn idle(&self, id: u32) -> bool {
        id >= self.next_id || id % 2 == 0
    }

    fn on_settings(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), u32> {
        let streams = &mut self.streams;
        let move_windows = |delta| {
            for s in streams.iter_mut() {
                frame::move_window(&mut s.send_window, &mut s.writer, delta)?;
            }
            Ok(())
        };
        let max = &mut self.max;
        let other = |k, v: u32| {
            if k == 3 {
                *max = v.clamp(1, MAX_STREAMS_PER_CONN);
            }
            Ok(())
        };
        let (out, peer) = (&mut self.out, &mut self.peer);
        if frame::on_settings(flags, id, p, out, peer, move_windows, other)? {
            self.settled = true;
            self.queued();
        }
        Ok(())
    }

    fn on_data(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), u32> {
        if id == 0 || self.idle(id) {
            return Err(code::PROTOCOL_ERROR);
        }
        let n = p.len() as i64;
        if n > self.recv_window {
            return Err(code::FLOW_CONTROL_ERROR);
        }
        self.recv_window -= n;
        let (data, _) = unpad(flags, p, false)?;
        let Some(i) = self.find(id) else {
            // A stream we are done with: its window is the connection's again at once.
            self.credit(id, p.len() as u32);
            return Ok(());
        };
        let s = &mut self.streams[i];
        if s.phase != Phase::Body {
            let code = if s.phase == Phase::Head {
                code::PROTOCOL_ERROR
            } else {
                code::STREAM_CLOSED
            };
            self.credit(id, p.len() as u32);
            if self.streams[i].failure.is_none() {
                self.reset(id, code);
            }
            return Ok(());
        }
        if n > s.recv_window {
            self.credit(id, p.len() as u32);
            self.reset(id, code::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.recv_window -= n;
        let end = flags & frame::END_STREAM != 0;
        let fits = match s.left.as_mut() {
            Some(left) if data.len() as u64 > *left => false,
            Some(left) => {
                *left -= data.len() as u64;
                !end || *left == 0
            }
            None => true,
        };
        if !fits {
            // More or less body than the declared length (RFC 9113 section 8.1.1).
            self.credit(id, p.len() as u32);
            self.reset(id, code::PROTOCOL_ERROR);
            return Ok(());
        }
        if !data.is_empty() {
            if s.chunked {
                write_chunk_size(&mut s.inbox, data.len());
                s.inbox.extend_from_slice(data);
                s.inbox.extend_from_slice(b"\r\n");
            } else {
                s.inbox.extend_from_slice(data);
            }
            s.unread += data.len() as u32;
        }
        if end {
            if s.chunked {
                s.inbox.extend_from_slice(b"0\r\n\r\n");
            }
            s.phase = Phase::Done;
        }
        wake(&mut s.reader);
        let padding = (p.len() - data.len()) as u32;
        if padding > 0 {
            self.credit(id, padding);
        }
        Ok(())
    }

    fn on_headers(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), u32> {
        if id == 0 || self.idle(id) {
            return Err(code::PROTOCOL_ERROR);
        }
        let (block, _) = unpad(flags, p, true)?;
        self.block.stream = id;
        self.block.end_stream = flags & frame::END_STREAM != 0;
        self.block.bytes.clear();
        self.add_block(block)?;
        if flags & frame::END_HEADERS != 0 {
            self.end_block()?;
        }
        Ok(())
    }

    fn add_block(&mut self, p: &[u8]) -> Result<(), u32> {
        if self.block.bytes.len() + p.len() > MAX_BLOCK {
            return Err(code::ENHANCE_YOUR_CALM);
        }
        self.block.bytes.extend_from_slice(p);
        Ok(())
    }

    /// A whole header block has come: an answer's head, an interim answer, or trailers.
    fn end_block(&mut self) -> Result<(), u32> {
        let id = std::mem::take(&mut self.block.stream);
        let end = self.block.end_stream;
        let block = std::mem::take(&mut self.block.bytes);
        let r = self.on_block(id, end, &block);
        self.block.bytes = block;
        r
    }

    fn on_block(&mut self, id: u32, end: bool, block: &[u8]) -> Result<(), u32> {
        let i = self.find(id);
        let Some(s) = i
            .map(|i| &mut self.streams[i])
            .filter(|s| s.phase != Phase::Done)
        else {
            // Decoded all the same: the table must stay in step.
            let r = self.decoder.decode(block, |_, _| {});
            r.map_err(|_| self.decoder.error_code())?;
            if i.is_some_and(|i| self.streams[i].failure.is_none()) {
                // Past the end of the answer.
                self.reset(id, code::STREAM_CLOSED);
            }
            return Ok(());
        };
        let mut t = Translate::new(s.phase, s.inbox.len());
        let r = self
            .decoder
            .decode(block, |n, v| t.field(&mut s.inbox, n, v));
        r.map_err(|_| self.decoder.error_code())?;
        match t.finish(s, end) {
            Ok(()) => {
                wake(&mut s.reader);
                Ok(())
            }
            Err(start) => {
                s.inbox.truncate(start);
                self.reset(id, code::PROTOCOL_ERROR);
                Ok(())
            }
        }
    }
}

/// An answer's header block becoming HTTP/1.1, one field at a time, straight into the stream's
/// inbox.
struct Translate {
    /// The block is trailers (the head has been given).
    trailers: bool,
    /// Where the block's bytes start in the inbox (to take them back if it is malformed).
    start: usize,
    fields: usize,
    malformed: bool,
    /// An interim (1xx) answer: skipped.
    interim: bool,
    length: Option<u64>,
    grpc: bool,
    status: u16,
}

impl Translate {
    fn new(phase: Phase, start: usize) -> Translate {
        Translate {
            trailers: phase == Phase::Body,
            start,
            fields: 0,
            malformed: false,
            interim: false,
            length: None,
            grpc: false,
            status: 0,
        }
    }

    fn field(&mut self, inbox: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        let first = self.fields == 0;
        self.fields += 1;
        if self.malformed || self.interim {
            return;
        }
        if !valid_value(value) || inbox.len() - self.start + name.len() + value.len() > MAX_HEAD {
            self.malformed = true;
            return;
        }
        if name.first() == Some(&b':') {
            // Only :status, and first, in an answer's head (RFC 9113 section 8.3.2).
            if self.trailers || !first || name != b":status" {
                self.malformed = true;
                return;
            }
            let status = match value {
                [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
                    (a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16
                }
                _ => {
                    self.malformed = true;
                    return;
                }
            };
            self.status = status;
            if status < 200 {
                // 101 has no place in HTTP/2 (RFC 9113 section 8.6); other interim answers
                // are not passed on.
                self.interim = status != 101;
                self.malformed = status == 101;
                return;
            }
            inbox.extend_from_slice(b"HTTP/1.1 ");
            inbox.extend_from_slice(value);
            inbox.push(b' ');
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown");
            inbox.extend_from_slice(reason.as_bytes());
            inbox.extend_from_slice(b"\r\n");
            return;
        }
        if !self.trailers && self.status == 0 {
            self.malformed = true;
            return;
        }
        if !valid_name(name) || is_connection_specific(name) || name == b"te" {
            self.malformed = true;
            return;
        }
        if self.trailers && !crate::http1::allowed_in_trailer(name) {
            // Framing, routing, authentication and the like never come in trailers.
            return;
        }
        if !self.trailers {
            if name == b"content-length" {
                match parse_length(value) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => {
                        self.malformed = true;
                        return;
                    }
                }
            }
            self.grpc |= name == b"content-type" && value.starts_with(b"application/grpc");
        }
        inbox.extend_from_slice(name);
        inbox.extend_from_slice(b": ");
        inbox.extend_from_slice(value);
        inbox.extend_from_slice(b"\r\n");
    }

    /// Ends the block: the head's framing, or the trailer section's end. `Err`: the block was
    /// malformed, with where its bytes start in the inbox.
    fn finish(self, s: &mut Stream, end: bool) -> Result<(), usize> {
        if self.malformed || (!self.trailers && !self.interim && self.status == 0) {
            return Err(self.start);
        }
        if self.interim {
            // An interim answer may not end the stream.
            return if end { Err(self.start) } else { Ok(()) };
        }
        if self.trailers {
            // Trailers end the stream, and the body must have had its declared length.
            if !end || s.left.is_some_and(|l| l > 0) {
                return Err(self.start);
            }
            if s.chunked {
                // The trailer fields were written after the body; the last chunk goes first.
                let fields = s.inbox.split_off(self.start);
                s.inbox.extend_from_slice(b"0\r\n");
                s.inbox.extend_from_slice(&fields);
                s.inbox.extend_from_slice(b"\r\n");
            } else {
                s.inbox.truncate(self.start);
            }
            s.phase = Phase::Done;
            return Ok(());
        }
        // Trailers need chunked framing in HTTP/1.1: a body without a length, or gRPC's (whose
        // status comes last), goes chunked.
        let bodiless = s.head_request || self.status == 204 || self.status == 304;
        s.chunked = !end && (self.length.is_none() || self.grpc) && !bodiless;
        if s.chunked {
            s.inbox.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if self.length.is_none() && !bodiless {
            s.inbox.extend_from_slice(b"content-length: 0\r\n");
        }
        s.inbox.extend_from_slice(b"\r\n");
        // A bodiless answer's declared length is not its body's: it may have none.
        s.left = if bodiless {
            Some(0)
        } else if s.chunked {
            None
        } else {
            self.length
        };
        if end {
            if s.left.is_some_and(|l| l > 0) {
                return Err(self.start);
            }
            s.phase = Phase::Done;
        } else {
            s.phase = Phase::Body;
        }
        Ok(())
    }
}

/// Reads and handles frames until the connection ends.
async fn read_loop(conn: &Conn, mut r: IoRead, cancel: monoio::io::CancelHandle) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        let room = buf.capacity() - buf.len();
        let at = buf.len();
        let (res, slice) = r
            .cancelable_read(buf.slice_mut(at..at + room), cancel.clone())
            .await;
        buf = slice.into_inner();
        let mut st = conn.st.borrow_mut();
        match res {
            Ok(0) | Err(_) => {
                st.fail(None);
                return;
            }
            Ok(_) => {}
        }
        match st.on_bytes(&buf) {
            Ok(n) => {
                buf.copy_within(n.., 0);
                buf.truncate(buf.len() - n);
            }
            Err(code) => st.fail(Some(code)),
        }
        if st.dead {
            return;
        }
    }
}

impl Outbox for Conn {
    fn poll_out(&self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<bool> {
        let mut st = self.st.borrow_mut();
        if !st.out.is_empty() {
            std::mem::swap(&mut st.out, buf);
            st.wake_blocked();
            return Poll::Ready(true);
        }
        let idle = st.streams.is_empty();
        if st.dead || (idle && (st.close_asked || st.goaway.is_some())) {
            return Poll::Ready(false);
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn wrote(&self, ok: bool) {
        if !ok {
            self.st.borrow_mut().fail(None);
        }
    }

    fn finish(&self) -> Option<Canceller> {
        let mut st = self.st.borrow_mut();
        st.fail(None);
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
        if f == Failure::Reset(code::REFUSED_STREAM) {
            self.refused.set(true);
        }
        f.error()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let id = self.id.get();
        if id == 0 {
            return;
        }
        let mut st = self.conn().st.borrow_mut();
        let Some(i) = st.find(id) else { return };
        st.ids.swap_remove(i);
        let mut s = st.streams.swap_remove(i);
        if !s.closed() && !st.dead {
            // Given up before it ended: the upstream stops working on it.
            push_rst(&mut st.out, id, code::CANCEL);
        }
        // What the peer sent and nobody read is the connection's window again. (`s.credit`
        // is read data: the connection has counted it already.)
        if s.unread > 0 {
            st.credit(0, s.unread);
        }
        if s.inbox.capacity() <= 64 * 1024 && st.spare.len() < 16 {
            s.inbox.clear();
            st.spare.push(s.inbox);
        }
        st.queued();
    }
}

/// An upstream stream as an HTTP/1.1 connection.
pub(crate) struct H2Up {
    pub write: UpWrite,
    pub read: UpRead,
}

/// The request side.
pub(crate) struct UpWrite {
    h: Rc<Handle>,
    /// A head written in parts, kept until it is whole.
    head: Vec<u8>,
    tls: bool,
    mesh: bool,
    out: Out,
}

enum Out {
    Head,
    Length(u64),
    Chunked(Box<ChunkedOut>),
    Done,
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
                head: Vec::new(),
                tls,
                mesh,
                out: Out::Head,
            },
            read: UpRead { h },
        }
    }

    /// The peer refused the stream unprocessed: the request may go again, whatever its method.
    pub(crate) fn refused(&self) -> bool {
        self.write.h.refused.get()
    }
}

fn invalid() -> io::Error {
    io::ErrorKind::InvalidData.into()
}

impl UpWrite {
    async fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Out::Head = self.out {
            // The forwarding path writes a head whole: it is parsed where it is, and kept
            // only when it comes in parts.
            let mut head = std::mem::take(&mut self.head);
            let data: &[u8] = if head.is_empty() {
                bytes
            } else {
                head.extend_from_slice(bytes);
                &head
            };
            let mut req = RequestHead::default();
            let n = match req.parse(data, 1 << 20) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    if head.is_empty() {
                        head.extend_from_slice(bytes);
                    }
                    self.head = head;
                    return Ok(());
                }
                Err(_) => return Err(invalid()),
            };
            if let Err(e) = self.send_head(&req, data) {
                self.h.failed.set(true);
                if let Some(w) = self.h.waiting.borrow_mut().take() {
                    w.wake();
                }
                return Err(e);
            }
            return self.body(&data[n..]).await;
        }
        self.body(bytes).await
    }

    /// Opens the stream with the request's head.
    fn send_head(&mut self, req: &RequestHead, buf: &[u8]) -> io::Result<()> {
        self.out = match req.framing {
            Framing::Length(0) => Out::Done,
            Framing::Length(n) => Out::Length(n),
            Framing::Chunked => Out::Chunked(Box::default()),
            Framing::None | Framing::Close => Out::Done,
        };
        let end = matches!(self.out, Out::Done);
        let mut st = self.h.conn().st.borrow_mut();
        if st.dead || st.goaway.is_some() || st.close_asked || st.next_id > MAX_ID {
            // Never sent: the request may go again.
            self.h.refused.set(true);
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let mut block = std::mem::take(&mut st.scratch);
        block.clear();
        encode_request(req, buf, self.tls, self.mesh, &mut block);
        let id = st.next_id;
        st.next_id += 2;
        let max = st.peer.max_frame;
        push_block(&mut st.out, id, end, &block, max);
        st.scratch = block;
        let inbox = st.spare.pop().unwrap_or_default();
        let head_request = req.method_span.get(buf) == b"HEAD";
        let stream = Stream::new(inbox, st.peer.window, head_request, end);
        st.ids.push(id);
        st.streams.push(stream);
        st.queued();
        self.h.id.set(id);
        if let Some(w) = self.h.waiting.borrow_mut().take() {
            w.wake();
        }
        Ok(())
    }

    /// Body bytes of the request, as the proxy framed them.
    async fn body(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Out::Head | Out::Done if bytes.is_empty() => Ok(()),
            Out::Head | Out::Done => Err(invalid()),
            Out::Length(left) => {
                if bytes.len() as u64 > *left {
                    return Err(invalid());
                }
                *left -= bytes.len() as u64;
                let end = *left == 0;
                if end {
                    self.out = Out::Done;
                }
                send_data(&self.h, bytes, end).await
            }
            Out::Chunked(out) => {
                let done = out.decode(bytes)?;
                for r in &out.ranges {
                    send_data(&self.h, &bytes[r.clone()], false).await?;
                }
                if !done {
                    return Ok(());
                }
                let trailers = std::mem::take(&mut out.trailers);
                self.out = Out::Done;
                if trailer_fields(&trailers).next().is_none() {
                    send_data(&self.h, &[], true).await
                } else {
                    send_trailers(&self.h, &trailers)
                }
            }
        }
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.cancel();
        Ok(())
    }

    /// A request not sent in full is cancelled, so that the upstream stops working on it.
    fn cancel(&mut self) {
        if matches!(self.out, Out::Done) {
            return;
        }
        self.out = Out::Done;
        let id = self.h.id.get();
        if id == 0 {
            return;
        }
        let mut st = self.h.conn().st.borrow_mut();
        if st.dead || st.stream(id).is_none_or(|s| s.closed()) {
            return;
        }
        st.reset(id, code::CANCEL);
    }
}

impl Drop for UpWrite {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The request's header block: pseudo-fields, then the head's fields but those HTTP/2 carries
/// otherwise (Host as :authority, the framing) or forbids. (The parser's `drop` marks what a
/// client's head loses; here the deadline and trace fields must stay.)
fn encode_request(req: &RequestHead, buf: &[u8], tls: bool, mesh: bool, out: &mut Vec<u8>) {
    match req.method_span.get(buf) {
        b"GET" => hpack::put_indexed(out, hpack::METHOD_GET),
        b"POST" => hpack::put_indexed(out, hpack::METHOD_POST),
        m => hpack::put_named(out, hpack::METHOD, m),
    }
    hpack::put_indexed(
        out,
        if tls {
            hpack::SCHEME_HTTPS
        } else {
            hpack::SCHEME_HTTP
        },
    );
    let (authority, path) = target(req, buf);
    if let Some(a) = authority.filter(|a| !a.is_empty()) {
        hpack::put_named(out, hpack::AUTHORITY, a);
    }
    if path == b"/" {
        hpack::put_indexed(out, hpack::PATH_ROOT);
    } else {
        hpack::put_named(out, hpack::PATH, path);
    }
    for h in &req.headers {
        let name = h.name.get(buf);
        if name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"te")
            || is_connection_specific(name)
        {
            continue;
        }
        hpack::put_literal(out, name, h.value.get(buf));
    }
    // The proxy takes trailers, and gRPC servers insist on being told so.
    hpack::put_literal(out, b"te", b"trailers");
    if mesh {
        hpack::put_literal(out, ORIGINAL_PROTOCOL.as_bytes(), b"HTTP/1.1");
    }
    if let Framing::Length(n) = req.framing {
        hpack::put_named_u64(out, hpack::CONTENT_LENGTH, n);
    }
}

/// The request's :authority and :path.
fn target<'a>(req: &RequestHead, buf: &'a [u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    let path = req.path.get(buf);
    let authority = req
        .authority
        .map(|a| a.get(buf))
        .or_else(|| req.header(buf, b"host"));
    if path.is_empty() {
        return (authority, b"/");
    }
    (authority, path)
}

/// The trailer fields HTTP/2 allows (`te` belongs in a request's head only).
fn trailer_fields(fields: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    super::stream::trailer_fields(fields).filter(|(name, value)| {
        !name.is_empty() && !name.eq_ignore_ascii_case(b"te") && valid_value(value)
    })
}

/// Ends the stream with trailers.
fn send_trailers(h: &Handle, fields: &[u8]) -> io::Result<()> {
    let id = h.id.get();
    let mut st = h.conn().st.borrow_mut();
    if st.dead {
        return Err(Failure::Connection.error());
    }
    match st.stream(id) {
        Some(s) if s.failure.is_none() => s.sent_end = true,
        Some(s) => return Err(h.failure(s.failure.unwrap_or(Failure::Connection))),
        None => return Err(io::ErrorKind::BrokenPipe.into()),
    }
    let mut block = std::mem::take(&mut st.scratch);
    block.clear();
    for (n, v) in trailer_fields(fields) {
        hpack::put_literal(&mut block, n, v);
    }
    let max = st.peer.max_frame;
    push_block(&mut st.out, id, true, &block, max);
    st.scratch = block;
    st.queued();
    Ok(())
}

/// Sends `data` on the stream as the windows allow; `end`: END_STREAM with the last byte (or
/// alone when `data` is empty).
async fn send_data(h: &Handle, data: &[u8], end: bool) -> io::Result<()> {
    let id = h.id.get();
    let sending = |step: &mut dyn FnMut(Sending<'_>) -> Poll<()>| {
        let mut st = h.conn().st.borrow_mut();
        if st.dead {
            return Err(Failure::Connection.error());
        }
        let st = &mut *st;
        let Some(i) = st.find(id) else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let s = &mut st.streams[i];
        if let Some(f) = s.failure {
            return Err(h.failure(f));
        }
        if s.sent_end {
            // The peer reset the stream after a whole answer: it wants no more body.
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(step(Sending {
            out: &mut st.out,
            conn_window: &mut st.send_window,
            max_frame: st.peer.max_frame,
            window: &mut s.send_window,
            sent_end: &mut s.sent_end,
            writer: &mut s.writer,
            blocked: &mut st.blocked,
            flush: &mut st.writer,
        }))
    };
    frame::send_data(sending, id, data, end).await
}

impl UpRead {
    pub(crate) async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let h = &self.h;
        let r = poll_fn(|cx| {
            let id = h.id.get();
            if id == 0 {
                if h.failed.get() {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
                }
                *h.waiting.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut st = h.conn().st.borrow_mut();
            let Some(i) = st.find(id) else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            };
            let s = &mut st.streams[i];
            if s.taken < s.inbox.len() {
                let (n, read) = take_inbox(&mut s.inbox, &mut s.taken, &mut s.unread, &mut buf);
                if read > 0 {
                    st.credit(id, read);
                }
                return Poll::Ready(Ok(n));
            }
            if let Some(f) = s.failure {
                return Poll::Ready(Err(h.failure(f)));
            }
            if s.phase == Phase::Done {
                return Poll::Ready(Ok(0));
            }
            s.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        (r, buf)
    }

    pub(crate) async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        // The forwarding path reads into one buffer; a vectored read is not asked of it.
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }
}

super::stream::read_glue!(UpRead);
super::stream::write_glue!(UpWrite);

/// Fuzzing: feeds `input` to a connection's frame handling as if the upstream had sent it,
/// with `streams` requests open (at most 8). Whatever comes, nothing panics, and the receive
/// window never grows past what was granted.
pub fn drive_client(input: &[u8], streams: u8) {
    let mut st = State::with_requests(streams.min(8));
    let mut at = 0;
    while at < input.len() && !st.dead {
        match st.on_bytes(&input[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(code) => st.fail(Some(code)),
        }
        // Readers take what came, as the forwarding path would.
        for i in 0..st.ids.len() {
            let id = st.ids[i];
            let s = &mut st.streams[i];
            let unread = std::mem::take(&mut s.unread);
            s.inbox.clear();
            st.credit(id, unread);
        }
        assert!(st.recv_window <= CONNECTION_WINDOW as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::super::testing::{block_on, serve_one};
    use super::*;
    use crate::cluster::ClusterState;

    async fn stream_to(addr: std::net::SocketAddr) -> H2Up {
        let s = monoio::net::TcpStream::connect(addr).await.unwrap();
        let count = ConnCount::new(Rc::new(ClusterState::new(Instant::now())));
        let slot = Conns::default()
            .open(Io::Plain(s), Some(count))
            .await
            .unwrap();
        H2Up::new(slot, false, false)
    }

    /// Writes bytes of the request; all are taken.
    async fn send(up: &mut H2Up, bytes: &[u8]) {
        let (r, _) = up.write.write(bytes.to_vec()).await;
        r.unwrap();
    }

    /// Reads the answer to its end, `size` bytes at a time at most.
    async fn read_to_end(up: &mut H2Up, size: usize) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let (r, buf) = up.read.read(Vec::with_capacity(size)).await;
            match r.unwrap() {
                0 => return got,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    async fn read_all(up: &mut H2Up) -> String {
        String::from_utf8_lossy(&read_to_end(up, 4096).await).into_owned()
    }

    /// An answer whose body comes in DATA frames right behind its head reaches the forwarding
    /// path in one read with the head, and so reaches the client in one write.
    #[test]
    fn a_small_answer_is_read_whole_with_its_head() {
        block_on(async {
            let addr = serve_one(|_req, mut respond| async move {
                let head = http::Response::builder()
                    .header("content-length", "4")
                    .body(())
                    .unwrap();
                let mut body = respond.send_response(head, false).unwrap();
                body.send_data(Bytes::from_static(b"ab"), false).unwrap();
                body.send_data(Bytes::from_static(b"cd"), true).unwrap();
            });
            let mut up = stream_to(addr).await;
            send(&mut up, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
            let (r, buf) = up.read.read(Vec::with_capacity(4096)).await;
            let n = r.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\nabcd"), "{text}");
            let (r, _) = up.read.read(Vec::with_capacity(4096)).await;
            assert_eq!(r.unwrap(), 0, "the answer ends after its body");
        });
    }

    /// The request as the server sees it: pseudo-fields from the HTTP/1.1 head, names
    /// lowercased, Host as :authority, hop-by-hop fields gone; a chunked body as DATA and its
    /// trailers as trailers; and the answer's trailers after a chunked body.
    #[test]
    fn a_chunked_request_with_trailers_goes_as_data_and_trailers() {
        block_on(async {
            let addr = serve_one(|req, mut respond| async move {
                let (parts, mut body) = req.into_parts();
                let mut got = Vec::new();
                while let Some(d) = body.data().await {
                    let d = d.unwrap();
                    body.flow_control().release_capacity(d.len()).unwrap();
                    got.extend_from_slice(&d);
                }
                let trailers = body.trailers().await.unwrap().unwrap_or_default();
                let echo = format!(
                    "{} {} {:?} x-a={:?} conn={:?} body={} trailer={:?}",
                    parts.method,
                    parts.uri,
                    parts.headers.get("te"),
                    parts.headers.get("x-a"),
                    parts.headers.get("connection"),
                    String::from_utf8_lossy(&got),
                    trailers.get("x-sum"),
                );
                let mut send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                send.send_data(Bytes::from(echo), false).unwrap();
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                send.send_trailers(t).unwrap();
            });
            let mut up = stream_to(addr).await;
            let head = b"PUT /p?q=1 HTTP/1.1\r\nHost: up.example\r\nX-A: 1\r\nConnection: x\r\n\
                         Transfer-Encoding: chunked\r\n\r\n";
            send(&mut up, head).await;
            send(&mut up, b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n").await;
            let text = read_all(&mut up).await;
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
            assert!(
                text.contains(
                    "PUT http://up.example/p?q=1 Some(\"trailers\") x-a=Some(\"1\") conn=None \
                     body=abcde trailer=Some(\"5\")"
                ),
                "{text}"
            );
            assert!(text.ends_with("\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{text}");
        });
    }

    /// A large answer comes through whole, past the initial windows, read in small pieces.
    #[test]
    fn a_large_answer_flows_past_the_windows() {
        const SIZE: usize = 3 * 1024 * 1024 + 7;
        block_on(async {
            let addr = serve_one(|_req, mut respond| async move {
                let head = http::Response::builder()
                    .header("content-length", SIZE.to_string())
                    .body(())
                    .unwrap();
                let mut send = respond.send_response(head, false).unwrap();
                // Sent from a task of its own: the helper drives the connection once this
                // returns, and capacity comes only then.
                monoio::spawn(async move {
                    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
                    send.reserve_capacity(SIZE);
                    let mut rest = Bytes::from(data);
                    while !rest.is_empty() {
                        let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                            .await
                            .unwrap()
                            .unwrap();
                        let chunk = rest.split_to(cap.min(rest.len()));
                        send.send_data(chunk, rest.is_empty()).unwrap();
                    }
                });
            });
            let mut up = stream_to(addr).await;
            send(&mut up, b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n").await;
            let got = read_to_end(&mut up, 1000).await;
            let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let body = &got[end..];
            assert_eq!(body.len(), SIZE);
            assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        });
    }

    /// An answer the upstream resets halfway reads as what came and then an error, never as an
    /// answer that ended: the client must not take a cut body for a whole one.
    #[test]
    fn an_answer_reset_halfway_ends_in_an_error() {
        block_on(async {
            // The reset goes only once the client has read the head: h2 drops what a stream
            // still has queued when it is reset.
            let got_head = Rc::new(Cell::new(false));
            let seen = got_head.clone();
            let addr = serve_one(|_req, mut respond| async move {
                let head = http::Response::builder()
                    .header("content-length", "10")
                    .body(())
                    .unwrap();
                let mut send = respond.send_response(head, false).unwrap();
                send.send_data(Bytes::from_static(b"abc"), false).unwrap();
                monoio::spawn(async move {
                    while !seen.get() {
                        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                });
            });
            let mut up = stream_to(addr).await;
            send(&mut up, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
            let mut got = Vec::new();
            let err = loop {
                let (r, buf) = up.read.read(Vec::with_capacity(4096)).await;
                match r {
                    Ok(0) => panic!("a cut answer read as whole: {got:?}"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
                got_head.set(got.ends_with(b"abc"));
            };
            assert!(got.ends_with(b"\r\n\r\nabc"), "{got:?}");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
            assert!(
                !up.refused(),
                "a stream the upstream answered was processed"
            );
        });
    }

    /// A request body larger than every window the server grants goes out whole, the writer
    /// waiting for WINDOW_UPDATEs.
    #[test]
    fn a_large_request_body_waits_for_the_windows() {
        const SIZE: usize = 2 * 1024 * 1024 + 3;
        block_on(async {
            let addr = serve_one(|req, mut respond| async move {
                monoio::spawn(async move {
                    let mut body = req.into_body();
                    let (mut n, mut sum) = (0usize, 0u64);
                    while let Some(d) = body.data().await {
                        let d = d.unwrap();
                        body.flow_control().release_capacity(d.len()).unwrap();
                        n += d.len();
                        sum += d.iter().map(|&b| b as u64).sum::<u64>();
                    }
                    let head = http::Response::builder().body(()).unwrap();
                    let mut send = respond.send_response(head, false).unwrap();
                    send.send_data(Bytes::from(format!("{n} {sum}")), true)
                        .unwrap();
                });
            });
            let mut up = stream_to(addr).await;
            let head = format!("POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: {SIZE}\r\n\r\n");
            send(&mut up, head.as_bytes()).await;
            let body: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
            let want: u64 = body.iter().map(|&b| b as u64).sum();
            for part in body.chunks(100_000) {
                send(&mut up, part).await;
            }
            let text = read_all(&mut up).await;
            assert!(
                text.ends_with(&format!("\r\n{SIZE} {want}\r\n0\r\n\r\n")),
                "{text}"
            );
        });
    }

    /// What an upstream may not send ends its stream, and the forwarding path gets an error,
    /// not a forged answer.
    #[test]
    fn an_answer_with_a_line_break_in_a_value_is_refused() {
        let mut st = State::with_requests(1);
        st.settled = true;
        let id = 1;
        let mut block = Vec::new();
        hpack::put_indexed(&mut block, 8);
        hpack::put_literal(&mut block, b"x-evil", b"a\r\nset-cookie: b");
        let mut frame = Vec::new();
        frame_head(
            &mut frame,
            block.len(),
            frame::HEADERS,
            frame::END_HEADERS,
            id,
        );
        frame.extend_from_slice(&block);
        assert_eq!(st.on_bytes(&frame), Ok(frame.len()));
        let s = &st.streams[0];
        assert!(
            s.inbox.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&s.inbox)
        );
        assert_eq!(s.failure, Some(Failure::Local(code::PROTOCOL_ERROR)));
        assert!(!st.dead, "a stream error, not the connection's");
    }

    /// The fuzz seeds: what each stream's reader gets, as HTTP/1.1.
    #[test]
    fn the_fuzz_seeds_translate_as_expected() {
        let seed = |name: &str| {
            let path = format!(
                "{}/../fuzz/corpus/h2_client/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read(path).unwrap()
        };
        let run = |input: &[u8]| {
            let mut st = State::with_requests(input[0]);
            let n = st.on_bytes(&input[1..]).unwrap();
            assert_eq!(n, input.len() - 1, "every frame taken");
            st
        };
        let text =
            |st: &State, i: usize| String::from_utf8_lossy(&st.streams[i].inbox).into_owned();
        let st = run(&seed("answer"));
        assert_eq!(
            text(&st, 0),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert_eq!(st.streams[0].phase, Phase::Done);
        let st = run(&seed("chunked-trailers"));
        assert_eq!(
            text(&st, 0),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
        let st = run(&seed("control"));
        assert_eq!(st.goaway, Some(1));
        assert_eq!(
            st.streams[1].failure,
            Some(Failure::Reset(code::REFUSED_STREAM))
        );
        assert!(
            st.streams[0].failure.is_none(),
            "stream 1 goes on after GOAWAY 1"
        );
        let st = run(&seed("interim"));
        assert_eq!(text(&st, 0), "HTTP/1.1 204 No Content\r\n\r\n");
    }

    /// A small block of references to one large table entry does not become a large head.
    #[test]
    fn a_block_that_expands_past_the_head_limit_is_refused() {
        let mut st = State::with_requests(2);
        st.settled = true;
        // An answer that puts a 4,000-byte field in the table...
        let mut block = Vec::new();
        hpack::put_indexed(&mut block, 8);
        block.push(0x40);
        hpack::put_int(&mut block, 0, 7, 3);
        block.extend_from_slice(b"x-a");
        hpack::put_int(&mut block, 0, 7, 4000);
        block.extend_from_slice(&[b'a'; 4000]);
        let mut frames = Vec::new();
        frame_head(
            &mut frames,
            block.len(),
            frame::HEADERS,
            frame::END_HEADERS,
            1,
        );
        frames.extend_from_slice(&block);
        // ...then one of 100 references to it: 400 KB from 101 bytes.
        let mut bomb = vec![0x88];
        bomb.extend_from_slice(&[0xbe; 100]);
        frame_head(
            &mut frames,
            bomb.len(),
            frame::HEADERS,
            frame::END_HEADERS,
            3,
        );
        frames.extend_from_slice(&bomb);
        assert_eq!(st.on_bytes(&frames), Ok(frames.len()));
        assert!(st.streams[0].failure.is_none());
        assert!(st.streams[0].inbox.len() > 4000);
        assert_eq!(
            st.streams[1].failure,
            Some(Failure::Local(code::PROTOCOL_ERROR))
        );
        assert!(st.streams[1].inbox.is_empty());
        assert!(!st.dead);
    }

    /// PINGs from a peer that does not read our answers cost a bounded amount of memory.
    #[test]
    fn a_ping_flood_from_a_peer_that_does_not_read_ends_the_connection() {
        let mut st = State::with_requests(0);
        st.settled = true;
        let mut ping = Vec::new();
        frame_head(&mut ping, 8, frame::PING, 0, 0);
        ping.extend_from_slice(b"12345678");
        let flood = ping.repeat(OUT_CAP / ping.len() + 10);
        assert_eq!(st.on_bytes(&flood), Err(code::ENHANCE_YOUR_CALM));
        assert!(st.out.len() <= OUT_CAP + ping.len());
    }

    #[test]
    fn fuzz_driver_takes_arbitrary_bytes() {
        drive_client(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 1], 2);
        drive_client(
            b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x7f\xff\xff\xff",
            3,
        );
    }
}
