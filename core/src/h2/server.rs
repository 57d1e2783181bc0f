//! The server side of HTTP/2 (RFC 9113), written for the translation the proxy makes: a
//! request's header block is decoded straight into the HTTP/1.1 head the forwarding path
//! reads, its DATA appended behind it (chunk-coded when it has no length, trailers included),
//! and the HTTP/1.1 answer the proxy writes is encoded straight into HEADERS, DATA and
//! trailers. No field map, shared buffer or per-stream channel sits in between.
//!
//! A connection has a reading task (frames, windows, SETTINGS, PING, GOAWAY, resets; it
//! starts a task per stream), a writing task (what the streams and the reader queued since
//! its last write goes in one write), and a timer for the idle timeout and drain.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::BufResult;
use monoio::buf::{IoBufMut, IoVecBufMut};
use monoio::io::{CancelableAsyncReadRent, Canceller};

use super::frame::{
    self, MAX_FRAME, MAX_ID, Outbox, PeerSettings, Sending, be32, code, frame_head, on_ping,
    parse_length, push_block, push_goaway, push_rst, push_window_update, unpad, valid_name,
    valid_value, write_loop,
};
use super::frame::{next_frame, take_inbox};
use super::hpack::{self, Decoder};
use super::stream::{ChunkedOut, is_connection_specific, trailer_fields};
use crate::http1::chunked::write_chunk_size;
use crate::http1::{Framing, ResponseHead};
use crate::io::{Io, IoRead};
use crate::metrics::{H2Event, ListenerStats};
use crate::proxy::{Client, serve_stream};
use crate::ratelimit::{Bucket, RateLimit};
use crate::snapshot::HttpLimits;
use crate::worker::Worker;

/// Streams a client may have open at once (nginx's default is 128, Envoy's 100 for upstreams).
pub const MAX_STREAMS: u32 = 128;
/// A stream's receive window: what a client may send ahead on one stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: what a client may send ahead on all its streams together,
/// the most body data the proxy holds for one connection.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams the proxy may reset for a client's protocol errors before it sends GOAWAY
/// ("MadeYouReset": each costs the client nothing).
pub const MAX_LOCAL_RESETS: usize = 100;
/// Client resets of streams not yet answered: allowed at once, then per second (rapid reset,
/// CVE-2023-44487).
pub const RESET_BURST: f64 = 200.0;
pub const RESETS_PER_SECOND: f64 = 50.0;
/// How often the timer checks the idle timeout and drain.
const TICK: Duration = Duration::from_secs(1);
/// Our SETTINGS_HEADER_TABLE_SIZE (the default).
const TABLE_SIZE: usize = 4096;
/// What one read takes at most.
const READ_BUF: usize = 32 * 1024;
/// What a read takes at first, and again once the connection has been idle for a tick.
const IDLE_READ: usize = 1024;
/// Queued output past which the client is making us answer faster than it reads (PINGs,
/// SETTINGS, resets): the connection ends.
const OUT_CAP: usize = 1024 * 1024;
/// The answer head the proxy writes, at most (it wrote it itself: a bound, not a limit in use).
const MAX_ANSWER_HEAD: usize = 256 * 1024;

/// How a stream ended before both sides were done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The client reset it with this code.
    Reset(u32),
    /// We reset it with this code.
    Local(u32),
    /// The connection ended.
    Connection,
}

impl Failure {
    fn error(self) -> io::Error {
        match self {
            Failure::Reset(c) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the client reset the HTTP/2 stream (code {c})"),
            ),
            Failure::Local(c) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the client's HTTP/2 request was refused (code {c})"),
            ),
            Failure::Connection => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the client's HTTP/2 connection ended",
            ),
        }
    }
}

/// One stream's state, kept by the connection.
struct Stream {
    id: u32,
    /// The request as HTTP/1.1 bytes (its head is taken when the stream starts),
    /// `inbox[taken..]` not yet read.
    inbox: Vec<u8>,
    taken: usize,
    /// The request has ended (END_STREAM came).
    ended: bool,
    chunked: bool,
    /// Body bytes the declared length still allows.
    left: Option<u64>,
    failure: Option<Failure>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The stream's task, which stops serving when the stream fails.
    watcher: Option<Waker>,
    /// DATA bytes in the inbox, to credit back once read.
    unread: u32,
    /// Read, not yet credited back to the client.
    credit: u32,
    recv_window: i64,
    send_window: i64,
    /// The answer went out whole (or the stream was reset): nothing more goes out on it.
    sent_end: bool,
}

impl Stream {
    fn fail(&mut self, f: Failure) {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
        wake(&mut self.reader);
        wake(&mut self.writer);
        wake(&mut self.watcher);
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
    /// Its stream said it depends on itself (RFC 9113 section 5.3.1).
    self_dependent: bool,
    /// Frames it came in.
    frames: usize,
}

/// A stream ready to be served: its id, and its head as HTTP/1.1.
struct Accepted {
    id: u32,
    head: Vec<u8>,
    head_request: bool,
}

/// One connection's state: what its tasks and its streams share.
pub(crate) struct State {
    /// Frames to write.
    out: Vec<u8>,
    writer: Option<Waker>,
    /// Streams waiting for connection window or room in `out`.
    blocked: Vec<Waker>,
    streams: Vec<Stream>,
    /// The highest stream id the client has opened.
    last_id: u32,
    send_window: i64,
    /// What the sending side follows of the client's SETTINGS.
    peer: PeerSettings,
    recv_window: i64,
    credit: u32,
    /// The client's preface has come.
    preface: bool,
    /// The client's first frame, its SETTINGS, has come.
    settled: bool,
    /// We sent GOAWAY naming this stream as the last: no new stream starts.
    goaway: Option<u32>,
    /// The client sent GOAWAY: the connection closes once its streams are done.
    peer_goaway: bool,
    /// The connection has ended (or is ending): no stream goes on.
    dead: bool,
    /// The error code we ended the connection with.
    error: Option<u32>,
    decoder: Decoder,
    block: Block,
    /// Scratch for an answer's header block, and for a request's pseudo-fields and cookies.
    scratch: Vec<u8>,
    pseudo: Vec<u8>,
    cookies: Vec<u8>,
    /// Inboxes of ended streams, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Streams to start.
    accepted: Vec<Accepted>,
    /// The listener's limit on a request head, as HTTP/1.1.
    max_head: usize,
    /// Resets we made for the client's protocol errors.
    local_resets: usize,
    /// Streams we reset or answered early, lately: frames the client sent on them before it
    /// knew are ignored (RFC 9113 section 5.1), where on other closed streams they are errors.
    cut: [u32; MAX_STREAMS as usize],
    cut_at: usize,
    /// Streams the client reset, lately: a frame on one (but PRIORITY) is a stream error
    /// STREAM_CLOSED (RFC 9113 section 5.1).
    client_reset: [u32; MAX_STREAMS as usize],
    client_reset_at: usize,
    /// Resets of unanswered streams the client may still make.
    resets: Bucket,
    stats: Option<Rc<ListenerStats>>,
    /// Stops the reader's read once the connection is done.
    canceller: Option<Canceller>,
    /// When the last stream ended (the start of an idle period).
    idle_since: Instant,
    /// When the client last let us send: a write done, or window granted.
    progress: Instant,
    /// A write is in flight.
    writing: bool,
    /// The pending read holds a large buffer.
    read_large: bool,
    /// The pending read was cancelled to go on with a small buffer, and the writer is to let
    /// its buffers go (the connection has been idle for a tick).
    shrink: bool,
    trim: bool,
}

impl State {
    fn new(max_head: usize, stats: Option<Rc<ListenerStats>>, canceller: Canceller) -> State {
        let now = Instant::now();
        // Output starts small and grows with use (an idle connection lets it go again).
        let mut out = Vec::with_capacity(256);
        // Our SETTINGS: the stream limit, the stream window, the head limit.
        frame_head(&mut out, 18, frame::SETTINGS, 0, 0);
        let list = max_head.min(u32::MAX as usize) as u32;
        for (id, v) in [(3u16, MAX_STREAMS), (4, STREAM_WINDOW), (6, list)] {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&v.to_be_bytes());
        }
        push_window_update(&mut out, 0, CONNECTION_WINDOW - 65_535);
        let mut decoder = Decoder::new(TABLE_SIZE);
        decoder.list_limit = decoder.list_limit.max(2 * max_head);
        State {
            out,
            writer: None,
            blocked: Vec::new(),
            streams: Vec::new(),
            last_id: 0,
            send_window: 65_535,
            peer: PeerSettings::default(),
            recv_window: CONNECTION_WINDOW as i64,
            credit: 0,
            preface: false,
            settled: false,
            goaway: None,
            peer_goaway: false,
            dead: false,
            error: None,
            decoder,
            block: Block::default(),
            scratch: Vec::new(),
            pseudo: Vec::new(),
            cookies: Vec::new(),
            spare: Vec::new(),
            accepted: Vec::new(),
            max_head,
            local_resets: 0,
            cut: [0; MAX_STREAMS as usize],
            cut_at: 0,
            client_reset: [0; MAX_STREAMS as usize],
            client_reset_at: 0,
            resets: Bucket::new(
                RateLimit {
                    rps: RESETS_PER_SECOND,
                    burst: RESET_BURST,
                },
                now,
            ),
            stats,
            canceller: Some(canceller),
            idle_since: now,
            progress: now,
            writing: false,
            read_large: false,
            shrink: false,
            trim: false,
        }
    }

    fn event(&self, e: H2Event) {
        if let Some(s) = &self.stats {
            s.h2(e);
        }
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
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
            // A second GOAWAY may not name a later stream than the first.
            let last = self.goaway.unwrap_or(self.last_id);
            push_goaway(&mut self.out, last, code);
            self.error = Some(code);
        }
        for s in &mut self.streams {
            s.fail(Failure::Connection);
        }
        self.wake_blocked();
        self.queued();
    }

    /// GOAWAY naming the last stream: open streams finish, no new one starts.
    fn go_away(&mut self) {
        if self.goaway.is_some() || self.dead {
            return;
        }
        push_goaway(&mut self.out, self.last_id, code::NO_ERROR);
        self.goaway = Some(self.last_id);
        self.event(H2Event::Goaway);
        self.queued();
    }

    /// Notes that the client may still send frames on a stream we ended.
    fn cut(&mut self, id: u32) {
        self.cut[self.cut_at % self.cut.len()] = id;
        self.cut_at += 1;
    }

    /// A frame of type `ty` on stream `id`, which is closed or which the client reset (RFC 9113
    /// section 5.1): ignored on a stream we ended early (the client may not have heard yet);
    /// a stream error STREAM_CLOSED on one the client reset; on one both sides ended, a
    /// connection error STREAM_CLOSED, but for the WINDOW_UPDATE or RST_STREAM that may cross
    /// our end of it. HEADERS on either opens a used stream id again (or sends trailers after
    /// a reset): a connection error. PRIORITY is allowed on any stream.
    fn on_closed(&mut self, id: u32, ty: u8) -> Result<(), u32> {
        if ty == frame::PRIORITY || self.cut.contains(&id) {
            return Ok(());
        }
        let reset_by_client = self.client_reset.contains(&id)
            || self
                .find(id)
                .is_some_and(|i| matches!(self.streams[i].failure, Some(Failure::Reset(_))));
        match ty {
            // Never a reset in answer to a reset (RFC 9113 section 5.4.2).
            frame::RST_STREAM => Ok(()),
            frame::HEADERS => Err(code::STREAM_CLOSED),
            _ if reset_by_client => self.refuse(id, code::STREAM_CLOSED),
            frame::WINDOW_UPDATE => Ok(()),
            _ => Err(code::STREAM_CLOSED),
        }
    }

    /// Resets a stream (whether or not we still keep it).
    fn reset(&mut self, id: u32, code: u32) {
        push_rst(&mut self.out, id, code);
        self.cut(id);
        self.queued();
        if let Some(s) = self.stream(id) {
            s.sent_end = true;
            s.fail(Failure::Local(code));
        }
    }

    /// Resets a stream for the client's protocol error. A client that makes us do it too often
    /// ("MadeYouReset") loses the connection.
    fn refuse(&mut self, id: u32, code: u32) -> Result<(), u32> {
        self.reset(id, code);
        self.local_resets += 1;
        if self.local_resets > MAX_LOCAL_RESETS {
            return Err(code::ENHANCE_YOUR_CALM);
        }
        Ok(())
    }

    /// Credits read DATA back to the client, in halves of the windows.
    fn credit(&mut self, id: u32, n: u32) {
        let (out, window) = (&mut self.out, &mut self.recv_window);
        if frame::credit(out, 0, &mut self.credit, window, n, CONNECTION_WINDOW) {
            self.queued();
        }
        let Some(i) = self.find(id) else { return };
        let s = &mut self.streams[i];
        // A stream that has ended needs no more window.
        let open = !s.ended;
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

    /// Takes a stream off the connection (its task is done with it). An answer not sent in
    /// full was reset already; a request the client is still sending is cut short.
    fn close(&mut self, id: u32) {
        let Some(i) = self.find(id) else { return };
        let mut s = self.streams.swap_remove(i);
        if !self.dead {
            if !s.sent_end {
                push_rst(&mut self.out, id, code::CANCEL);
                self.cut(id);
            } else if !s.ended && s.failure.is_none() {
                // Answered whole before the request ended: the client may stop sending it
                // (RFC 9113 section 8.1).
                push_rst(&mut self.out, id, code::NO_ERROR);
                self.cut(id);
            }
        }
        // What the client sent and nobody read is the connection's window again.
        if s.unread > 0 {
            self.credit(0, s.unread);
        }
        if s.inbox.capacity() <= 64 * 1024 && self.spare.len() < 16 {
            s.inbox.clear();
            self.spare.push(s.inbox);
        }
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
        self.queued();
    }

    /// Handles the preface and every whole frame at the start of `buf`; how many bytes that
    /// was. An error is the connection's: its code for GOAWAY.
    fn on_bytes(&mut self, buf: &[u8]) -> Result<usize, u32> {
        let mut at = 0;
        if !self.preface {
            let n = buf.len().min(super::PREFACE.len());
            if buf[..n] != super::PREFACE[..n] {
                return Err(code::PROTOCOL_ERROR);
            }
            if n < super::PREFACE.len() {
                return Ok(0);
            }
            self.preface = true;
            at = n;
        }
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
                // A stream error on a stream not yet open cannot be a reset (RFC 9113
                // section 6.4): it is the connection's.
                let error = if p.len() != 5 {
                    code::FRAME_SIZE_ERROR
                } else if be32(p) & MAX_ID == id {
                    code::PROTOCOL_ERROR
                } else {
                    return Ok(());
                };
                if self.idle(id) {
                    return Err(error);
                }
                self.refuse(id, error)
            }
            frame::RST_STREAM => {
                if id == 0 || self.idle(id) {
                    return Err(code::PROTOCOL_ERROR);
                }
                if p.len() != 4 {
                    return Err(code::FRAME_SIZE_ERROR);
                }
                let Some(i) = self.find(id) else {
                    return self.on_closed(id, frame::RST_STREAM);
                };
                if matches!(self.streams[i].failure, Some(Failure::Reset(_))) {
                    return Ok(());
                }
                self.client_reset[self.client_reset_at % MAX_STREAMS as usize] = id;
                self.client_reset_at += 1;
                let s = &mut self.streams[i];
                let unanswered = !s.sent_end && s.failure.is_none();
                // The client is done with the stream either way: nothing to reset back.
                s.sent_end = true;
                s.fail(Failure::Reset(be32(p)));
                if unanswered {
                    self.event(H2Event::ClientReset);
                    if self.resets.take(Instant::now()).is_err() {
                        return Err(code::ENHANCE_YOUR_CALM);
                    }
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
                self.peer_goaway = true;
                self.queued();
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                if p.len() != 4 {
                    return Err(code::FRAME_SIZE_ERROR);
                }
                self.progress = Instant::now();
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
                    return self.refuse(id, code::PROTOCOL_ERROR);
                }
                if self
                    .find(id)
                    .is_none_or(|i| matches!(self.streams[i].failure, Some(Failure::Reset(_))))
                {
                    return self.on_closed(id, frame::WINDOW_UPDATE);
                }
                let Some(s) = self.stream(id) else {
                    return Ok(());
                };
                match frame::move_window(&mut s.send_window, &mut s.writer, n) {
                    Ok(()) => Ok(()),
                    Err(c) => self.refuse(id, c),
                }
            }
            // Unknown frame types are ignored (RFC 9113 section 4.1).
            _ => Ok(()),
        }
    }

    /// A stream id the client has not opened yet.
    fn idle(&self, id: u32) -> bool {
        id > self.last_id
    }

    fn on_settings(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), u32> {
        let streams = &mut self.streams;
        let move_windows = |delta| {
            for s in streams.iter_mut() {
                frame::move_window(&mut s.send_window, &mut s.writer, delta)?;
            }
            Ok(())
        };
        let (out, peer) = (&mut self.out, &mut self.peer);
        if !frame::on_settings(flags, id, p, out, peer, move_windows, |_, _| Ok(()))? {
            return Ok(());
        }
        if !self.settled {
            self.settled = true;
            self.event(H2Event::Connection);
        }
        self.queued();
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
            return self.on_closed(id, frame::DATA);
        };
        let s = &mut self.streams[i];
        if s.ended || s.failure.is_some() {
            let failure = s.failure;
            self.credit(id, p.len() as u32);
            return match failure {
                // DATA after the end of the request: half-closed (RFC 9113 section 5.1).
                None => self.refuse(id, code::STREAM_CLOSED),
                Some(Failure::Reset(_)) => self.on_closed(id, frame::DATA),
                Some(_) => Ok(()),
            };
        }
        if n > s.recv_window {
            self.credit(id, p.len() as u32);
            return self.refuse(id, code::FLOW_CONTROL_ERROR);
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
            return self.refuse(id, code::PROTOCOL_ERROR);
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
            s.ended = true;
        }
        wake(&mut s.reader);
        let padding = (p.len() - data.len()) as u32;
        if padding > 0 {
            self.credit(id, padding);
        }
        Ok(())
    }

    fn on_headers(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), u32> {
        if id == 0 || id % 2 == 0 {
            return Err(code::PROTOCOL_ERROR);
        }
        let (block, _) = unpad(flags, p, true)?;
        // Priority fields sit between the pad length and the block; unpad has checked them.
        let at = if flags & frame::PADDED != 0 { 1 } else { 0 };
        self.block.self_dependent =
            flags & frame::PRIORITY_FLAG != 0 && be32(&p[at..at + 4]) & MAX_ID == id;
        self.block.stream = id;
        self.block.end_stream = flags & frame::END_STREAM != 0;
        self.block.bytes.clear();
        self.block.frames = 0;
        self.add_block(block)?;
        if flags & frame::END_HEADERS != 0 {
            self.end_block()?;
        }
        Ok(())
    }

    /// Collects a header block's fragment. A block is held to the head limit and a frame
    /// size's slack, in few frames: a CONTINUATION flood ends the connection.
    fn add_block(&mut self, p: &[u8]) -> Result<(), u32> {
        let limit = self.max_head + MAX_FRAME;
        self.block.frames += 1;
        if self.block.bytes.len() + p.len() > limit || self.block.frames > 16 + limit / 1024 {
            return Err(code::ENHANCE_YOUR_CALM);
        }
        self.block.bytes.extend_from_slice(p);
        Ok(())
    }

    /// A whole header block has come: a request's head, or its trailers.
    fn end_block(&mut self) -> Result<(), u32> {
        let id = std::mem::take(&mut self.block.stream);
        let end = self.block.end_stream;
        let block = std::mem::take(&mut self.block.bytes);
        let r = self.on_block(id, end, &block);
        self.block.bytes = block;
        r
    }

    /// Decodes a block for no stream: the table must stay in step.
    fn skip_block(&mut self, block: &[u8]) -> Result<(), u32> {
        let r = self.decoder.decode(block, |_, _| {});
        r.map_err(|_| self.decoder.error_code())
    }

    fn on_block(&mut self, id: u32, end: bool, block: &[u8]) -> Result<(), u32> {
        if self.block.self_dependent {
            self.skip_block(block)?;
            self.last_id = self.last_id.max(id);
            return self.refuse(id, code::PROTOCOL_ERROR);
        }
        if let Some(i) = self.find(id) {
            return self.on_trailers(i, end, block);
        }
        if self.goaway.is_some_and(|last| id > last) {
            // Past our GOAWAY: ignored, the client may try it elsewhere (RFC 9113 section 6.8).
            self.last_id = self.last_id.max(id);
            return self.skip_block(block);
        }
        if id <= self.last_id {
            self.skip_block(block)?;
            return self.on_closed(id, frame::HEADERS);
        }
        self.last_id = id;
        // Streams the client reset may still be here, their tasks not yet ended: they do not
        // count.
        let open = self.streams.iter().filter(|s| s.failure.is_none()).count();
        if open >= MAX_STREAMS as usize {
            // Not counted as an abuse: the client may not have heard of the limit yet.
            self.skip_block(block)?;
            self.reset(id, code::REFUSED_STREAM);
            return Ok(());
        }
        let mut head = self.spare.pop().unwrap_or_default();
        let mut pseudo = std::mem::take(&mut self.pseudo);
        let mut cookies = std::mem::take(&mut self.cookies);
        let mut t = Request::new(self.max_head, &mut pseudo, &mut cookies);
        let r = self.decoder.decode(block, |n, v| t.field(&mut head, n, v));
        let outcome = t.finish(&mut head, end);
        // Scratch kept for the connection's next requests, unless a large head grew it.
        if pseudo.capacity() <= 4096 {
            self.pseudo = pseudo;
        }
        if cookies.capacity() <= 4096 {
            self.cookies = cookies;
        }
        r.map_err(|_| self.decoder.error_code())?;
        let req = match outcome {
            Ok(req) => req,
            Err(status) => {
                head.clear();
                self.spare.push(head);
                return match status {
                    Some(status) => self.answer_now(id, status, end),
                    None => self.refuse(id, code::PROTOCOL_ERROR),
                };
            }
        };
        let accepted = Accepted {
            id,
            head,
            head_request: req.head_request,
        };
        let mut s = Stream {
            id,
            inbox: self.spare.pop().unwrap_or_default(),
            taken: 0,
            ended: end,
            chunked: req.chunked,
            left: req.length,
            failure: None,
            reader: None,
            writer: None,
            watcher: None,
            unread: 0,
            credit: 0,
            recv_window: STREAM_WINDOW as i64,
            send_window: self.peer.window,
            sent_end: false,
        };
        if end && s.chunked {
            s.inbox.extend_from_slice(b"0\r\n\r\n");
        }
        self.streams.push(s);
        self.accepted.push(accepted);
        Ok(())
    }

    /// Answers a request the proxy will not serve (a head past the limit, CONNECT) at once.
    fn answer_now(&mut self, id: u32, status: u16, end: bool) -> Result<(), u32> {
        let mut block = std::mem::take(&mut self.scratch);
        block.clear();
        hpack::put_named_u64(&mut block, STATUS, status as u64);
        hpack::put_named_u64(&mut block, hpack::CONTENT_LENGTH, 0);
        let max = self.peer.max_frame;
        push_block(&mut self.out, id, true, &block, max);
        self.scratch = block;
        if !end {
            push_rst(&mut self.out, id, code::NO_ERROR);
            self.cut(id);
        }
        self.queued();
        // Cheap for the client, so counted as the resets are.
        self.local_resets += 1;
        if self.local_resets > MAX_LOCAL_RESETS {
            return Err(code::ENHANCE_YOUR_CALM);
        }
        Ok(())
    }

    /// A block on an open stream: the request's trailers.
    fn on_trailers(&mut self, i: usize, end: bool, block: &[u8]) -> Result<(), u32> {
        let id = self.streams[i].id;
        if self.streams[i].ended || self.streams[i].failure.is_some() {
            let failure = self.streams[i].failure;
            self.skip_block(block)?;
            return match failure {
                None => self.refuse(id, code::STREAM_CLOSED),
                Some(Failure::Reset(_)) => self.on_closed(id, frame::HEADERS),
                Some(_) => Ok(()),
            };
        }
        let s = &mut self.streams[i];
        let start = s.inbox.len();
        let mut malformed = !end || s.left.is_some_and(|l| l > 0);
        let max = self.max_head;
        let r = self.decoder.decode(block, |n, v| {
            if malformed || n.first() == Some(&b':') || !valid_name(n) || !valid_value(v) {
                malformed = true;
                return;
            }
            // Fields a trailer may not carry are dropped, as connection-specific ones are.
            let dropped = is_connection_specific(n) || !crate::http1::allowed_in_trailer(n);
            if !s.chunked || dropped || s.inbox.len() - start > max {
                return;
            }
            s.inbox.extend_from_slice(n);
            s.inbox.extend_from_slice(b": ");
            s.inbox.extend_from_slice(v);
            s.inbox.extend_from_slice(b"\r\n");
        });
        r.map_err(|_| self.decoder.error_code())?;
        if malformed {
            s.inbox.truncate(start);
            return self.refuse(id, code::PROTOCOL_ERROR);
        }
        if s.chunked {
            // The trailer fields were written after the body; the last chunk goes first.
            let fields = s.inbox.split_off(start);
            s.inbox.extend_from_slice(b"0\r\n");
            s.inbox.extend_from_slice(&fields);
            s.inbox.extend_from_slice(b"\r\n");
        }
        s.ended = true;
        wake(&mut s.reader);
        Ok(())
    }
}

/// `:status` in the static table.
const STATUS: usize = 8;

/// What a request's head said about the rest of it.
struct Head {
    chunked: bool,
    length: Option<u64>,
    head_request: bool,
}

/// A request's header block becoming an HTTP/1.1 head, one field at a time, straight into the
/// stream's inbox (RFC 9113 section 8.3.1: the authority becomes Host, cookies are joined).
struct Request<'a> {
    max: usize,
    /// The pseudo-fields' values: method, scheme, authority, path, as ranges of `pseudo`.
    pseudo: &'a mut Vec<u8>,
    method: Option<(usize, usize)>,
    scheme: bool,
    authority: Option<(usize, usize)>,
    path: Option<(usize, usize)>,
    /// The request line is written (a regular field has come).
    line: bool,
    cookies: &'a mut Vec<u8>,
    length: Option<u64>,
    malformed: bool,
    too_large: bool,
}

impl<'a> Request<'a> {
    fn new(max: usize, pseudo: &'a mut Vec<u8>, cookies: &'a mut Vec<u8>) -> Request<'a> {
        pseudo.clear();
        cookies.clear();
        Request {
            max,
            pseudo,
            method: None,
            scheme: false,
            authority: None,
            path: None,
            line: false,
            cookies,
            length: None,
            malformed: false,
            too_large: false,
        }
    }

    fn get(&self, r: Option<(usize, usize)>) -> Option<&[u8]> {
        r.map(|(a, b)| &self.pseudo[a..b])
    }

    fn field(&mut self, inbox: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        if self.malformed || self.too_large {
            return;
        }
        if !valid_value(value) {
            self.malformed = true;
            return;
        }
        if name.first() == Some(&b':') {
            // Pseudo-fields come first, each once (RFC 9113 section 8.3).
            let slot = match name {
                b":method" => &mut self.method,
                b":authority" => &mut self.authority,
                b":path" => &mut self.path,
                b":scheme" if !self.scheme && !self.line => {
                    self.scheme = true;
                    return;
                }
                _ => {
                    self.malformed = true;
                    return;
                }
            };
            if slot.is_some() || self.line {
                self.malformed = true;
                return;
            }
            let at = self.pseudo.len();
            self.pseudo.extend_from_slice(value);
            *slot = Some((at, self.pseudo.len()));
            return;
        }
        if !self.line && !self.request_line(inbox) {
            return;
        }
        if !valid_name(name) || is_connection_specific(name) {
            self.malformed = true;
            return;
        }
        match name {
            b"te" => {
                // Only `te: trailers` may cross, and it is for this hop only.
                self.malformed = value != b"trailers";
                return;
            }
            b"host" if self.authority.is_some() => return,
            // The mark another ringmesh puts on requests it upgraded is for this hop only.
            n if n == super::client::ORIGINAL_PROTOCOL.as_bytes() => return,
            b"cookie" => {
                if self.cookies.len() + value.len() + 2 > self.max {
                    self.too_large = true;
                    return;
                }
                if !self.cookies.is_empty() {
                    self.cookies.extend_from_slice(b"; ");
                }
                self.cookies.extend_from_slice(value);
                return;
            }
            b"content-length" => match parse_length(value) {
                Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                _ => {
                    self.malformed = true;
                    return;
                }
            },
            _ => {}
        }
        if inbox.len() + name.len() + value.len() + 4 > self.max {
            self.too_large = true;
            return;
        }
        inbox.extend_from_slice(name);
        inbox.extend_from_slice(b": ");
        inbox.extend_from_slice(value);
        inbox.extend_from_slice(b"\r\n");
    }

    /// Writes the request line and Host once the pseudo-fields are all in; false if they
    /// make no request.
    fn request_line(&mut self, inbox: &mut Vec<u8>) -> bool {
        self.line = true;
        let (Some(method), Some(path)) = (self.get(self.method), self.get(self.path)) else {
            self.malformed = true;
            return false;
        };
        let path_ok = (path.first() == Some(&b'/') || (path == b"*" && method == b"OPTIONS"))
            && path.iter().all(|&b| b > b' ' && b != 0x7f);
        let authority_ok = self.get(self.authority).is_none_or(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|&b| b > b' ' && b != 0x7f && !b"/?#@".contains(&b))
        });
        let method_ok = !method.is_empty()
            && method
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !method_ok || !path_ok || !authority_ok || !self.scheme {
            self.malformed = true;
            return false;
        }
        inbox.extend_from_slice(method);
        inbox.push(b' ');
        inbox.extend_from_slice(path);
        inbox.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some((a, b)) = self.authority {
            inbox.extend_from_slice(b"host: ");
            inbox.extend_from_slice(&self.pseudo[a..b]);
            inbox.extend_from_slice(b"\r\n");
        }
        true
    }

    /// Ends the head. `Err(None)`: malformed (the stream is reset); `Err(Some(status))`: the
    /// proxy answers with `status` at once.
    fn finish(mut self, inbox: &mut Vec<u8>, end: bool) -> Result<Head, Option<u16>> {
        if !self.malformed && self.get(self.method) == Some(b"CONNECT") {
            // Tunnels over HTTP/2 (RFC 9113 section 8.5, RFC 8441) are not offered.
            return Err(Some(501));
        }
        if !self.line && !self.malformed {
            self.request_line(inbox);
        }
        if self.malformed {
            return Err(None);
        }
        if self.too_large || inbox.len() + self.cookies.len() + 40 > self.max {
            return Err(Some(431));
        }
        if !self.cookies.is_empty() {
            inbox.extend_from_slice(b"cookie: ");
            inbox.extend_from_slice(self.cookies);
            inbox.extend_from_slice(b"\r\n");
        }
        // A request that ends with its head but declares a body is malformed (RFC 9113 8.1.1).
        if end && self.length.is_some_and(|n| n > 0) {
            return Err(None);
        }
        let chunked = !end && self.length.is_none();
        if chunked {
            inbox.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        inbox.extend_from_slice(b"\r\n");
        let head_request = self.get(self.method) == Some(b"HEAD");
        Ok(Head {
            chunked,
            length: if chunked { None } else { self.length },
            head_request,
        })
    }
}

/// One connection's state, and what its streams are served with.
struct Conn {
    st: RefCell<State>,
    w: Rc<Worker>,
    listener: Arc<str>,
    peer: SocketAddr,
    tls: bool,
    identity: Option<Rc<str>>,
}

/// Serves an HTTP/2 connection until it closes. `read`: its first bytes, already read.
pub(crate) async fn serve(
    w: Rc<Worker>,
    listener: Arc<str>,
    io: Io,
    read: Vec<u8>,
    peer: SocketAddr,
    limits: HttpLimits,
    stats: Rc<ListenerStats>,
) {
    let (tls, identity) = match &io {
        Io::Tls(s) => (true, s.identity().map(Rc::from)),
        _ => (false, None),
    };
    let canceller = Canceller::new();
    let conn = Rc::new(Conn {
        st: RefCell::new(State::new(
            limits.max_request_head,
            Some(stats.clone()),
            canceller,
        )),
        w,
        listener,
        peer,
        tls,
        identity,
    });
    let (r, wr) = io.into_split();
    let both = async { monoio::join!(read_loop(&conn, r, read), write_loop(&*conn, wr)) };
    monoio::select! {
        _ = both => {}
        _ = tick_loop(&conn, &limits) => {}
    }
    let st = conn.st.borrow();
    match st.error {
        Some(code::ENHANCE_YOUR_CALM) => stats.h2(H2Event::Abuse),
        Some(_) => stats.h2(H2Event::Error),
        None => {}
    }
}

/// Reads and handles frames until the connection ends, starting a task per new stream.
async fn read_loop(conn: &Rc<Conn>, mut r: IoRead, first: Vec<u8>) {
    // Reads start small and a buffer that fills up doubles, to READ_BUF: a connection that
    // sends a request now and then never holds a large one. The first bytes leave the buffer
    // they came in (a pooled one, possibly) for one of their size.
    let mut buf = Vec::with_capacity(first.len().max(IDLE_READ));
    buf.extend_from_slice(&first);
    conn.w.bufs.put(first);
    let mut filled = false;
    loop {
        let accepted = {
            let mut st = conn.st.borrow_mut();
            match st.on_bytes(&buf) {
                Ok(n) => {
                    buf.copy_within(n.., 0);
                    buf.truncate(buf.len() - n);
                }
                Err(code) => st.fail(Some(code)),
            }
            std::mem::take(&mut st.accepted)
        };
        for a in accepted {
            start(conn, a);
        }
        if conn.st.borrow().dead {
            return;
        }
        if filled || buf.len() == buf.capacity() {
            let want = (buf.capacity() * 2)
                .clamp(IDLE_READ, READ_BUF)
                .max(buf.len() + IDLE_READ);
            buf.reserve(want - buf.len());
        }
        let cancel = {
            let mut st = conn.st.borrow_mut();
            st.read_large = buf.capacity() > 2 * IDLE_READ;
            match &st.canceller {
                Some(c) => c.handle(),
                None => return,
            }
        };
        let at = buf.len();
        let room = buf.capacity() - at;
        let (res, slice) = r
            .cancelable_read(buf.slice_mut(at..at + room), cancel)
            .await;
        buf = slice.into_inner();
        let mut st = conn.st.borrow_mut();
        st.read_large = false;
        let shrink = std::mem::take(&mut st.shrink);
        filled = false;
        match res {
            Ok(n) if n > 0 => filled = n == room,
            // Cancelled by the timer (a cancelled read took no bytes): the connection has been
            // idle, and waits on with a small buffer.
            Err(_) if shrink && !st.dead => {
                if buf.is_empty() {
                    buf = Vec::with_capacity(IDLE_READ);
                }
            }
            _ => {
                st.fail(None);
                return;
            }
        }
    }
}

/// Starts serving a stream, unless the client reset it already.
fn start(conn: &Rc<Conn>, a: Accepted) {
    {
        let mut st = conn.st.borrow_mut();
        if st.stream(a.id).is_none_or(|s| s.failure.is_some()) {
            st.close(a.id);
            return;
        }
        st.event(H2Event::Stream);
    }
    let mut head = conn.w.bufs.get();
    head.extend_from_slice(&a.head);
    {
        let mut st = conn.st.borrow_mut();
        if st.spare.len() < 16 {
            let mut b = a.head;
            b.clear();
            st.spare.push(b);
        }
    }
    let h = Rc::new(Handle {
        conn: conn.clone(),
        id: a.id,
    });
    // Contained as connections are: a bug in one stream ends that stream only.
    monoio::spawn(crate::listener::contained(stream(h, head, a.head_request)));
}

/// Serves one stream: as an HTTP/1.1 request through the proxy, until the stream fails.
async fn stream(h: Rc<Handle>, head: Vec<u8>, head_request: bool) {
    let conn = h.conn.clone();
    let s = H2Stream {
        recv: H2Recv {
            h: h.clone(),
            identity: conn.identity.clone(),
        },
        send: H2Send {
            h: h.clone(),
            head: Vec::new(),
            body: BodyOut::Head,
            head_request,
        },
    };
    let mut c = Client::for_stream(Io::H2(Box::new(s)), conn.peer, conn.tls, head);
    let failed = poll_fn(|cx| {
        let mut st = h.conn.st.borrow_mut();
        match st.stream(h.id) {
            Some(s) if s.failure.is_none() => {
                s.watcher = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    });
    monoio::select! {
        _ = serve_stream(&conn.w, &conn.listener, &mut c) => {}
        // The client gave up on the stream, or the connection ended: the request (and its
        // upstream exchange) stops here.
        _ = failed => {}
    }
    c.release(&conn.w);
}

impl Outbox for Conn {
    fn poll_out(&self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<bool> {
        let mut st = self.st.borrow_mut();
        if !st.out.is_empty() {
            std::mem::swap(&mut st.out, buf);
            st.wake_blocked();
            return Poll::Ready(true);
        }
        let idle = st.streams.is_empty() && st.accepted.is_empty();
        if st.dead || (idle && (st.goaway.is_some() || st.peer_goaway)) {
            return Poll::Ready(false);
        }
        if std::mem::take(&mut st.trim) {
            // Idle for a tick: the buffers go, and come again with the next output.
            *buf = Vec::new();
            st.out = Vec::new();
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn writing(&self) {
        self.st.borrow_mut().writing = true;
    }

    fn wrote(&self, ok: bool) {
        let mut st = self.st.borrow_mut();
        st.writing = false;
        st.progress = Instant::now();
        if !ok {
            st.fail(None);
        }
    }

    fn finish(&self) -> Option<Canceller> {
        let mut st = self.st.borrow_mut();
        st.fail(None);
        st.canceller.take()
    }
}

/// Checks the handshake deadline, the idle timeout and the drain once a tick. Returns once the
/// connection has been dead for a whole tick: a client that reads nothing holds no task.
async fn tick_loop(conn: &Conn, limits: &HttpLimits) {
    let tick = TICK.min(limits.idle_timeout);
    let started = Instant::now();
    let mut dead_ticks = 0;
    loop {
        monoio::time::sleep(tick).await;
        let mut st = conn.st.borrow_mut();
        if st.dead {
            dead_ticks += 1;
            if dead_ticks > 1 {
                return;
            }
            continue;
        }
        if !st.settled {
            if started.elapsed() >= limits.request_head_timeout {
                st.fail(None);
            }
            continue;
        }
        let quiet = st.streams.is_empty() && st.out.is_empty() && !st.writing;
        if quiet && st.idle_since.elapsed() >= tick {
            if st.read_large {
                // The pending read holds a large buffer: it is cancelled, and the reader
                // waits on with a small one.
                st.shrink = true;
                if let Some(c) = st.canceller.replace(Canceller::new()) {
                    c.cancel();
                }
            }
            if st.out.capacity() > 0 {
                st.trim = true;
                st.queued();
            }
            // The buffers kept for the next streams go too.
            st.spare = Vec::new();
            st.scratch = Vec::new();
            st.streams = Vec::new();
        }
        let idle = st.streams.is_empty() && st.idle_since.elapsed() >= limits.idle_timeout;
        if idle || conn.w.draining() {
            st.go_away();
        }
        // Answers waiting for a client that neither reads nor grants window: after the idle
        // timeout they, and their upstream exchanges, are given up.
        let waiting =
            st.writing || !st.blocked.is_empty() || st.streams.iter().any(|s| s.writer.is_some());
        if waiting && st.progress.elapsed() >= limits.idle_timeout {
            st.fail(None);
        }
    }
}

/// What a stream's two halves share: the connection, and the stream's id.
struct Handle {
    conn: Rc<Conn>,
    id: u32,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.conn.st.borrow_mut().close(self.id);
    }
}

/// A stream whole, as the forwarding path's client connection.
pub(crate) struct H2Stream {
    pub recv: H2Recv,
    pub send: H2Send,
}

/// The request side: the body as HTTP/1.1 bytes.
pub(crate) struct H2Recv {
    h: Rc<Handle>,
    /// The connection's verified client identity (mTLS).
    pub identity: Option<Rc<str>>,
}

/// How the answer's body is being turned into DATA.
enum BodyOut {
    /// Still reading the head.
    Head,
    Length(u64),
    Chunked(Box<ChunkedOut>),
    /// Until the proxy shuts the stream down.
    UntilEnd,
    Done,
}

/// The answer side: HTTP/1.1 bytes in, HTTP/2 frames out.
pub(crate) struct H2Send {
    h: Rc<Handle>,
    /// A head written in parts, kept until it is whole.
    head: Vec<u8>,
    body: BodyOut,
    /// The request was HEAD: the answer has no body whatever its fields say.
    head_request: bool,
}

fn invalid() -> io::Error {
    io::ErrorKind::InvalidData.into()
}

impl H2Recv {
    pub(crate) async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let h = &self.h;
        let r = poll_fn(|cx| {
            let mut st = h.conn.st.borrow_mut();
            let Some(i) = st.find(h.id) else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            };
            let s = &mut st.streams[i];
            if s.taken < s.inbox.len() {
                let (n, read) = take_inbox(&mut s.inbox, &mut s.taken, &mut s.unread, &mut buf);
                if read > 0 {
                    st.credit(h.id, read);
                }
                return Poll::Ready(Ok(n));
            }
            if let Some(f) = s.failure {
                return Poll::Ready(Err(f.error()));
            }
            if s.ended {
                return Poll::Ready(Ok(0));
            }
            s.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        (r, buf)
    }

    pub(crate) async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        // The forwarding path reads a stream into one buffer; a vectored read is not asked.
        (Err(io::ErrorKind::Unsupported.into()), buf)
    }
}

impl H2Send {
    /// Takes bytes of the HTTP/1.1 answer; all of them are consumed.
    async fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !matches!(self.body, BodyOut::Head) {
            return self.body_bytes(bytes).await;
        }
        // The forwarding path writes a head whole: it is parsed where it is, and kept only
        // when it comes in parts.
        let mut kept = std::mem::take(&mut self.head);
        if !kept.is_empty() {
            if kept.len() + bytes.len() > MAX_ANSWER_HEAD {
                return Err(invalid());
            }
            kept.extend_from_slice(bytes);
        }
        let data: &[u8] = if kept.is_empty() { bytes } else { &kept };
        let (done, at) = self.send_head(data)?;
        if done {
            return self.body_bytes(&data[at..]).await;
        }
        // Interim answers before `at` are sent; the rest waits for more.
        if kept.is_empty() {
            kept.extend_from_slice(&bytes[at..]);
        } else {
            kept.drain(..at);
        }
        self.head = kept;
        Ok(())
    }

    /// Sends the heads in `data` (interim answers go as such, the final one ends the heads);
    /// whether the final head was sent, and where the bytes not yet sent start (the body's,
    /// or an incomplete head's).
    fn send_head(&mut self, data: &[u8]) -> io::Result<(bool, usize)> {
        let mut at = 0;
        loop {
            let head = &data[at..];
            let mut resp = ResponseHead::default();
            let n = match resp.parse(head, MAX_ANSWER_HEAD) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok((false, at)),
                Err(_) => return Err(invalid()),
            };
            if resp.is_interim() {
                // 100 Continue and 103 Early Hints are informational in HTTP/2 too; 101 has
                // no place in it.
                if resp.status != 101 {
                    self.push_head(&resp, head, None, false)?;
                }
                at += n;
                continue;
            }
            let framing = resp.body_framing(self.head_request);
            self.body = match framing {
                Framing::None | Framing::Length(0) => BodyOut::Done,
                Framing::Length(len) => BodyOut::Length(len),
                Framing::Chunked => BodyOut::Chunked(Box::default()),
                Framing::Close => BodyOut::UntilEnd,
            };
            let length = match framing {
                Framing::Length(len) => Some(len),
                _ if self.head_request => resp.content_length,
                _ => None,
            };
            let end = matches!(self.body, BodyOut::Done);
            self.push_head(&resp, head, length, end)?;
            return Ok((true, at + n));
        }
    }

    /// Queues an answer head as HEADERS.
    fn push_head(
        &self,
        resp: &ResponseHead,
        head: &[u8],
        length: Option<u64>,
        end: bool,
    ) -> io::Result<()> {
        let h = &self.h;
        let mut st = h.conn.st.borrow_mut();
        if st.dead {
            return Err(Failure::Connection.error());
        }
        let st = &mut *st;
        let Some(i) = st.find(h.id) else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        if let Some(f) = st.streams[i].failure {
            return Err(f.error());
        }
        let mut block = std::mem::take(&mut st.scratch);
        block.clear();
        encode_answer(resp, head, length, &mut block);
        push_block(&mut st.out, h.id, end, &block, st.peer.max_frame);
        st.scratch = block;
        st.streams[i].sent_end = end;
        st.queued();
        Ok(())
    }

    /// Body bytes of the HTTP/1.1 answer, as framed by the proxy.
    async fn body_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.body {
            BodyOut::Head | BodyOut::Done if bytes.is_empty() => Ok(()),
            // Nothing may follow a complete answer.
            BodyOut::Head | BodyOut::Done => Err(invalid()),
            BodyOut::Length(left) => {
                if bytes.len() as u64 > *left {
                    return Err(invalid());
                }
                *left -= bytes.len() as u64;
                let end = *left == 0;
                if end {
                    self.body = BodyOut::Done;
                }
                send_data(&self.h, bytes, end).await
            }
            BodyOut::UntilEnd => send_data(&self.h, bytes, false).await,
            BodyOut::Chunked(out) => {
                let done = out.decode(bytes)?;
                for r in &out.ranges {
                    send_data(&self.h, &bytes[r.clone()], false).await?;
                }
                if !done {
                    return Ok(());
                }
                let trailers = std::mem::take(&mut out.trailers);
                self.body = BodyOut::Done;
                if trailer_fields(&trailers).next().is_none() {
                    send_data(&self.h, &[], true).await
                } else {
                    send_trailers(&self.h, &trailers)
                }
            }
        }
    }

    /// The proxy is done with the answer: an answer with no length ends here, one not sent in
    /// full is reset.
    fn end(&mut self) {
        let body = std::mem::replace(&mut self.body, BodyOut::Done);
        let h = &self.h;
        let mut st = h.conn.st.borrow_mut();
        if st.dead {
            return;
        }
        let st = &mut *st;
        let Some(s) = st.stream(h.id) else { return };
        if s.sent_end {
            return;
        }
        if matches!(body, BodyOut::UntilEnd) && s.failure.is_none() {
            s.sent_end = true;
            frame_head(&mut st.out, 0, frame::DATA, frame::END_STREAM, h.id);
            st.queued();
            return;
        }
        st.reset(h.id, code::INTERNAL_ERROR);
    }

    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.end();
        Ok(())
    }
}

impl Drop for H2Send {
    fn drop(&mut self) {
        self.end();
    }
}

/// An answer's header block: `:status`, then the head's fields but those HTTP/2 carries
/// otherwise or forbids, and `length` as content-length.
fn encode_answer(resp: &ResponseHead, head: &[u8], length: Option<u64>, out: &mut Vec<u8>) {
    match resp.status {
        200 => hpack::put_indexed(out, STATUS),
        204 => hpack::put_indexed(out, STATUS + 1),
        206 => hpack::put_indexed(out, STATUS + 2),
        304 => hpack::put_indexed(out, STATUS + 3),
        400 => hpack::put_indexed(out, STATUS + 4),
        404 => hpack::put_indexed(out, STATUS + 5),
        500 => hpack::put_indexed(out, STATUS + 6),
        s => hpack::put_named_u64(out, STATUS, s as u64),
    }
    for h in &resp.headers {
        let name = h.name.get(head);
        if h.drop || is_connection_specific(name) || name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        hpack::put_literal(out, name, h.value.get(head));
    }
    if let Some(n) = length {
        hpack::put_named_u64(out, hpack::CONTENT_LENGTH, n);
    }
}

/// Ends the answer with trailers.
fn send_trailers(h: &Handle, fields: &[u8]) -> io::Result<()> {
    let mut st = h.conn.st.borrow_mut();
    if st.dead {
        return Err(Failure::Connection.error());
    }
    match st.stream(h.id) {
        Some(s) if s.failure.is_none() => s.sent_end = true,
        Some(s) => return Err(s.failure.unwrap_or(Failure::Connection).error()),
        None => return Err(io::ErrorKind::BrokenPipe.into()),
    }
    let mut block = std::mem::take(&mut st.scratch);
    block.clear();
    for (n, v) in trailer_fields(fields) {
        if !n.is_empty() && !n.eq_ignore_ascii_case(b"te") && valid_value(v) {
            hpack::put_literal(&mut block, n, v);
        }
    }
    let max = st.peer.max_frame;
    push_block(&mut st.out, h.id, true, &block, max);
    st.scratch = block;
    st.queued();
    Ok(())
}

/// Sends `data` on the stream as the windows allow; `end`: END_STREAM with the last byte (or
/// alone when `data` is empty).
async fn send_data(h: &Handle, data: &[u8], end: bool) -> io::Result<()> {
    let sending = |step: &mut dyn FnMut(Sending<'_>) -> Poll<()>| {
        let mut st = h.conn.st.borrow_mut();
        if st.dead {
            return Err(Failure::Connection.error());
        }
        let st = &mut *st;
        let Some(i) = st.find(h.id) else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let s = &mut st.streams[i];
        if let Some(f) = s.failure {
            return Err(f.error());
        }
        if s.sent_end {
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
    frame::send_data(sending, h.id, data, end).await
}

super::stream::read_glue!(H2Recv);
super::stream::write_glue!(H2Send);

/// Fuzzing: the server side of HTTP/2 over `input` as the client's bytes, cut into reads at
/// `cuts`. Every stream's head must read as an HTTP/1.1 request; each is answered and closed.
/// Runs without a runtime: nothing here waits.
pub fn drive_server(input: &[u8], cuts: &[usize]) {
    let mut st = State::new(64 * 1024, None, Canceller::new());
    let mut buf = Vec::new();
    let mut at = 0;
    let mut cut = 0;
    while at < input.len() && !st.dead {
        let step = cuts.get(cut).copied().unwrap_or(usize::MAX).max(1);
        cut += 1;
        let n = (input.len() - at).min(step);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        match st.on_bytes(&buf) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(code) => st.fail(Some(code)),
        }
        for a in std::mem::take(&mut st.accepted) {
            let mut req = crate::http1::RequestHead::default();
            // A head the parser refuses is answered 400 by the proxy; one it reads must be
            // whole, nothing before or after it.
            match req.parse(&a.head, 64 * 1024) {
                Ok(Some(n)) => assert_eq!(n, a.head.len()),
                Ok(None) => panic!("a translated head is cut short"),
                Err(_) => {}
            }
            let mut resp = ResponseHead::default();
            let answer = b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n";
            if resp.parse(answer, 1024).is_ok() {
                let mut block = Vec::new();
                encode_answer(&resp, answer, Some(0), &mut block);
                let max = st.peer.max_frame;
                push_block(&mut st.out, a.id, true, &block, max);
                if let Some(s) = st.stream(a.id) {
                    s.sent_end = true;
                }
            }
        }
        // Each stream's body is read, then the stream closes, as the forwarding path would.
        let ids: Vec<u32> = st.streams.iter().map(|s| s.id).collect();
        for id in ids {
            if let Some(s) = st.stream(id) {
                let unread = std::mem::take(&mut s.unread);
                s.inbox.clear();
                let ended = s.ended || s.failure.is_some();
                st.credit(id, unread);
                if ended {
                    st.close(id);
                }
            }
        }
        assert!(st.recv_window <= CONNECTION_WINDOW as i64);
        assert!(st.streams.len() <= MAX_STREAMS as usize);
        st.out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, flags: u8, id: u32, p: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_head(&mut out, p.len(), ty, flags, id);
        out.extend_from_slice(p);
        out
    }

    /// A connection past the preface and the client's SETTINGS, heads held to `max`.
    fn open(max: usize) -> State {
        let mut st = State::new(max, None, Canceller::new());
        let mut input = super::super::PREFACE.to_vec();
        input.extend(frame(frame::SETTINGS, 0, 0, &[]));
        assert_eq!(st.on_bytes(&input), Ok(input.len()));
        st.out.clear();
        st
    }

    /// A header block of literal fields, written as given (no lowercasing).
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            b.push(0);
            hpack::put_int(&mut b, 0, 7, n.len());
            b.extend_from_slice(n.as_bytes());
            hpack::put_int(&mut b, 0, 7, v.len());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a.test"),
        (":path", "/"),
    ];

    fn headers(st: &mut State, id: u32, fields: &[(&str, &str)], end: bool) -> Result<(), u32> {
        let flags = frame::END_HEADERS | if end { frame::END_STREAM } else { 0 };
        let f = frame(frame::HEADERS, flags, id, &block(fields));
        st.on_bytes(&f).map(|n| assert_eq!(n, f.len()))
    }

    /// The frames queued for the client: type, stream, and the first four payload bytes
    /// (a reset's or a GOAWAY's error code sits there or after the last stream id).
    fn sent(out: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 9 <= out.len() {
            let len = u32::from_be_bytes([0, out[at], out[at + 1], out[at + 2]]) as usize;
            let id = be32(&out[at + 5..at + 9]);
            frames.push((out[at + 3], id, out[at + 9..at + 9 + len].to_vec()));
            at += 9 + len;
        }
        frames
    }

    fn resets(st: &State) -> Vec<(u32, u32)> {
        sent(&st.out)
            .into_iter()
            .filter(|f| f.0 == frame::RST_STREAM)
            .map(|(_, id, p)| (id, be32(&p)))
            .collect()
    }

    /// An answer head as it decodes: (name, value) pairs.
    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        Decoder::new(TABLE_SIZE)
            .decode(block, |n, v| {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                fields.push((s(n), s(v)));
            })
            .unwrap();
        fields
    }

    #[test]
    fn a_request_becomes_an_http1_head_and_its_body_follows_chunked() {
        let mut st = open(64 * 1024);
        let fields = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.example"),
            (":path", "/v1/x?q=1"),
            ("cookie", "a=1"),
            ("x-id", "7"),
            ("cookie", "b=2"),
            ("host", "ignored.example"),
            ("te", "trailers"),
            ("ringmesh-original-protocol", "HTTP/1.1"),
        ];
        headers(&mut st, 1, &fields, false).unwrap();
        let a = st.accepted.pop().unwrap();
        assert_eq!(
            String::from_utf8(a.head).unwrap(),
            "POST /v1/x?q=1 HTTP/1.1\r\nhost: api.example\r\nx-id: 7\r\ncookie: a=1; b=2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        st.on_bytes(&frame(frame::DATA, 0, 1, b"hello")).unwrap();
        let trailers = block(&[("grpc-status", "0")]);
        let f = frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            1,
            &trailers,
        );
        st.on_bytes(&f).unwrap();
        let s = st.stream(1).unwrap();
        assert!(s.ended);
        assert_eq!(s.inbox, b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
        assert!(resets(&st).is_empty());
    }

    #[test]
    fn a_request_with_a_length_keeps_it_and_one_without_a_body_has_none() {
        let mut st = open(64 * 1024);
        let mut fields = GET.to_vec();
        fields[0] = (":method", "PUT");
        fields.push(("content-length", "3"));
        headers(&mut st, 1, &fields, false).unwrap();
        let head = String::from_utf8(st.accepted.pop().unwrap().head).unwrap();
        assert!(head.ends_with("content-length: 3\r\n\r\n"), "{head}");
        // More body than declared resets the stream.
        st.on_bytes(&frame(frame::DATA, frame::END_STREAM, 1, b"four"))
            .unwrap();
        assert_eq!(resets(&st), [(1, code::PROTOCOL_ERROR)]);
        headers(&mut st, 3, &GET, true).unwrap();
        let head = st.accepted.pop().unwrap().head;
        assert_eq!(head, b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n");
    }

    #[test]
    fn malformed_requests_are_reset_and_never_served() {
        let mut st = open(64 * 1024);
        let with = |f: (&'static str, &'static str)| {
            let mut v = GET.to_vec();
            v.push(f);
            v
        };
        let without = |name: &str| GET.iter().copied().filter(|f| f.0 != name).collect();
        let cases: Vec<Vec<(&str, &str)>> = vec![
            with(("X-Upper", "1")),
            with(("connection", "close")),
            with(("transfer-encoding", "chunked")),
            with(("te", "gzip")),
            with(("x-a", "a\r\nx-b: b")),
            with(("x-a", "\u{1}")),
            with((":path", "/again")),
            with((":protocol", "websocket")),
            with(("content-length", "5")),
            with(("content-length", "x")),
            without(":scheme"),
            without(":path"),
            without(":method"),
            vec![("x-a", "1"), GET[0], GET[1], GET[2], GET[3]],
            vec![GET[0], GET[1], GET[2], (":path", "/a b")],
            vec![GET[0], GET[1], GET[2], (":path", "a")],
            vec![(":method", "G T"), GET[1], GET[2], GET[3]],
            vec![GET[0], GET[1], (":authority", "a@b"), GET[3]],
            vec![GET[0], GET[1], (":authority", ""), GET[3]],
        ];
        let mut id = 1;
        for fields in &cases {
            headers(&mut st, id, fields, true).unwrap();
            assert!(st.accepted.is_empty(), "{fields:?} was accepted");
            assert_eq!(resets(&st), [(id, code::PROTOCOL_ERROR)], "{fields:?}");
            st.out.clear();
            id += 2;
        }
        // The connection goes on.
        headers(&mut st, id, &GET, true).unwrap();
        assert_eq!(st.accepted.len(), 1);
    }

    #[test]
    fn connect_and_heads_past_the_limit_are_answered_at_once() {
        let mut st = open(1024);
        let connect = [(":method", "CONNECT"), (":authority", "a.test:443")];
        headers(&mut st, 1, &connect, false).unwrap();
        let big = "x".repeat(1000);
        let mut fields = GET.to_vec();
        fields.push(("x-big", &big));
        headers(&mut st, 3, &fields, true).unwrap();
        assert!(st.accepted.is_empty());
        let frames = sent(&st.out);
        let answers: Vec<_> = frames.iter().filter(|f| f.0 == frame::HEADERS).collect();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].1, 1);
        assert_eq!(decode(&answers[0].2)[0], (":status".into(), "501".into()));
        assert_eq!(decode(&answers[1].2)[0], (":status".into(), "431".into()));
        // The CONNECT stream was still open: the client is told to stop sending on it.
        assert_eq!(resets(&st), [(1, code::NO_ERROR)]);
        // Frames it sent meanwhile on the stream are ignored.
        st.on_bytes(&frame(frame::DATA, frame::END_STREAM, 1, b"x"))
            .unwrap();
        let f = frame(frame::HEADERS, 5, 1, &block(&[("x-t", "1")]));
        assert_eq!(st.on_bytes(&f), Ok(f.len()));
    }

    #[test]
    fn streams_past_the_limit_are_refused() {
        let mut st = open(64 * 1024);
        for i in 0..MAX_STREAMS {
            headers(&mut st, 2 * i + 1, &GET, false).unwrap();
        }
        st.out.clear();
        let id = 2 * MAX_STREAMS + 1;
        headers(&mut st, id, &GET, true).unwrap();
        assert_eq!(st.accepted.len(), MAX_STREAMS as usize);
        assert_eq!(resets(&st), [(id, code::REFUSED_STREAM)]);
        // One ends: there is room again.
        st.close(1);
        headers(&mut st, id + 2, &GET, true).unwrap();
        assert_eq!(st.accepted.len(), MAX_STREAMS as usize + 1);
    }

    #[test]
    fn a_headers_frame_on_a_stream_the_client_closed_ends_the_connection() {
        let mut st = open(64 * 1024);
        headers(&mut st, 1, &GET, false).unwrap();
        st.on_bytes(&frame(frame::RST_STREAM, 0, 1, &8u32.to_be_bytes()))
            .unwrap();
        st.close(1);
        assert_eq!(
            headers(&mut st, 1, &GET, true),
            Err(code::STREAM_CLOSED),
            "a stream id may not be used again"
        );
    }

    #[test]
    fn frames_on_closed_streams_are_stream_closed_errors() {
        let f = frame;
        // The client reset stream 1 (still being served), 3 and 5 (done with): DATA or
        // WINDOW_UPDATE on any is a stream error (once: the stream is then ours to ignore);
        // another RST_STREAM and PRIORITY are not.
        let mut st = open(64 * 1024);
        for id in [1, 3, 5] {
            headers(&mut st, id, &GET, false).unwrap();
            st.on_bytes(&f(frame::RST_STREAM, 0, id, &8u32.to_be_bytes()))
                .unwrap();
        }
        st.close(3);
        st.close(5);
        st.out.clear();
        for (ty, id) in [
            (frame::DATA, 1),
            (frame::WINDOW_UPDATE, 3),
            (frame::DATA, 5),
        ] {
            let payload: &[u8] = if ty == frame::DATA {
                b"late"
            } else {
                &[0, 0, 0, 1]
            };
            let bytes = f(ty, 0, id, payload);
            assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()), "type {ty} on {id}");
            assert_eq!(
                resets(&st),
                [(id, code::STREAM_CLOSED)],
                "type {ty} on {id}"
            );
            st.out.clear();
        }
        for bytes in [
            f(frame::RST_STREAM, 0, 3, &8u32.to_be_bytes()),
            f(frame::PRIORITY, 0, 3, &[0, 0, 0, 0, 16]),
        ] {
            assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
            assert!(resets(&st).is_empty());
        }
        // Stream 7 ended both ways (the request with its head, the answer whole): a late
        // WINDOW_UPDATE may cross our end and is ignored, DATA is a connection error.
        headers(&mut st, 7, &GET, true).unwrap();
        if let Some(s) = st.stream(7) {
            s.sent_end = true;
        }
        st.close(7);
        st.out.clear();
        let bytes = f(frame::WINDOW_UPDATE, 0, 7, &[0, 0, 0, 1]);
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
        assert_eq!(
            st.on_bytes(&f(frame::DATA, 0, 7, b"late")),
            Err(code::STREAM_CLOSED)
        );
        // A stream we reset: what the client sent before it heard is ignored.
        let mut st = open(64 * 1024);
        headers(&mut st, 1, &GET, false).unwrap();
        st.close(1);
        st.out.clear();
        let bytes = f(frame::DATA, 0, 1, b"late");
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
        assert!(resets(&st).is_empty());
    }

    #[test]
    fn field_values_with_whitespace_at_either_end_are_malformed() {
        for value in [" x", "x ", "\tx", "x\t"] {
            let mut st = open(64 * 1024);
            let mut fields = GET.to_vec();
            fields.push(("x-padded", value));
            headers(&mut st, 1, &fields, true).unwrap();
            assert!(st.accepted.is_empty(), "{value:?}");
            assert_eq!(resets(&st), [(1, code::PROTOCOL_ERROR)], "{value:?}");
        }
        let mut st = open(64 * 1024);
        let mut fields = GET.to_vec();
        fields.push(("x-inner", "a b\tc"));
        headers(&mut st, 1, &fields, true).unwrap();
        assert_eq!(st.accepted.len(), 1);
    }

    #[test]
    fn a_flood_of_empty_continuation_frames_is_cut_off() {
        let mut st = open(16 * 1024);
        let mut input = frame(frame::HEADERS, 0, 1, &block(&GET));
        for _ in 0..1000 {
            input.extend(frame(frame::CONTINUATION, 0, 1, &[]));
        }
        assert_eq!(st.on_bytes(&input), Err(code::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn rapid_resets_past_the_burst_end_the_connection() {
        let mut st = open(64 * 1024);
        let mut id = 1;
        let r = loop {
            let mut f = frame(
                frame::HEADERS,
                frame::END_HEADERS | frame::END_STREAM,
                id,
                &block(&GET),
            );
            f.extend(frame(frame::RST_STREAM, 0, id, &8u32.to_be_bytes()));
            if let Err(code) = st.on_bytes(&f) {
                break code;
            }
            st.close(id);
            id += 2;
            assert!(id < 1000, "never cut off");
        };
        assert_eq!(r, code::ENHANCE_YOUR_CALM);
        assert!(id / 2 >= RESET_BURST as u32);
    }

    #[test]
    fn an_answer_head_is_encoded_without_what_http2_forbids() {
        let head = b"HTTP/1.1 201 Created\r\nX-A: 1\r\nConnection: keep-alive\r\n\
                     Content-Length: 9\r\nset-cookie: s=1\r\n\r\n";
        let mut resp = ResponseHead::default();
        resp.parse(head, 1024).unwrap().unwrap();
        let mut out = Vec::new();
        encode_answer(&resp, head, Some(9), &mut out);
        let fields = decode(&out);
        let want = [
            (":status", "201"),
            ("x-a", "1"),
            ("set-cookie", "s=1"),
            ("content-length", "9"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(fields, want);
        let mut out = Vec::new();
        let ok = b"HTTP/1.1 200 OK\r\n\r\n";
        resp.parse(ok, 1024).unwrap().unwrap();
        encode_answer(&resp, ok, None, &mut out);
        assert_eq!(out, [0x80 | STATUS as u8], "a common status is one byte");
    }

    #[test]
    fn connection_errors_get_the_codes_rfc_9113_names() {
        let get = block(&GET);
        let f = frame;
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "DATA on stream 0",
                f(frame::DATA, 0, 0, b"x"),
                code::PROTOCOL_ERROR,
            ),
            (
                "DATA on an idle stream",
                f(frame::DATA, 0, 9, b"x"),
                code::PROTOCOL_ERROR,
            ),
            (
                "HEADERS on stream 0",
                f(frame::HEADERS, 5, 0, &get),
                code::PROTOCOL_ERROR,
            ),
            (
                "HEADERS on an even stream",
                f(frame::HEADERS, 5, 2, &get),
                code::PROTOCOL_ERROR,
            ),
            (
                "a frame past SETTINGS_MAX_FRAME_SIZE",
                f(frame::DATA, 0, 1, &[0; MAX_FRAME + 1]),
                code::FRAME_SIZE_ERROR,
            ),
            (
                "padding as long as the frame",
                f(frame::HEADERS, 0x8 | 5, 1, &[4, 0, 0, 0]),
                code::PROTOCOL_ERROR,
            ),
            (
                "CONTINUATION without HEADERS",
                f(frame::CONTINUATION, 4, 1, &get),
                code::PROTOCOL_ERROR,
            ),
            (
                "SETTINGS on a stream",
                f(frame::SETTINGS, 0, 1, &[]),
                code::PROTOCOL_ERROR,
            ),
            (
                "SETTINGS of a partial length",
                f(frame::SETTINGS, 0, 0, &[0, 4, 0]),
                code::FRAME_SIZE_ERROR,
            ),
            (
                "a SETTINGS ACK with a payload",
                f(frame::SETTINGS, 1, 0, &[0; 6]),
                code::FRAME_SIZE_ERROR,
            ),
            (
                "ENABLE_PUSH of 2",
                f(frame::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
                code::PROTOCOL_ERROR,
            ),
            (
                "INITIAL_WINDOW_SIZE past 2^31-1",
                f(frame::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
                code::FLOW_CONTROL_ERROR,
            ),
            (
                "MAX_FRAME_SIZE below 16384",
                f(frame::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x3f, 0xff]),
                code::PROTOCOL_ERROR,
            ),
            (
                "PING on a stream",
                f(frame::PING, 0, 1, &[0; 8]),
                code::PROTOCOL_ERROR,
            ),
            (
                "PING of 7 bytes",
                f(frame::PING, 0, 0, &[0; 7]),
                code::FRAME_SIZE_ERROR,
            ),
            (
                "GOAWAY on a stream",
                f(frame::GOAWAY, 0, 1, &[0; 8]),
                code::PROTOCOL_ERROR,
            ),
            (
                "RST_STREAM on stream 0",
                f(frame::RST_STREAM, 0, 0, &[0; 4]),
                code::PROTOCOL_ERROR,
            ),
            (
                "RST_STREAM on an idle stream",
                f(frame::RST_STREAM, 0, 7, &[0; 4]),
                code::PROTOCOL_ERROR,
            ),
            (
                "WINDOW_UPDATE of 0 on the connection",
                f(frame::WINDOW_UPDATE, 0, 0, &[0; 4]),
                code::PROTOCOL_ERROR,
            ),
            (
                "WINDOW_UPDATE of 3 bytes",
                f(frame::WINDOW_UPDATE, 0, 0, &[0, 0, 1]),
                code::FRAME_SIZE_ERROR,
            ),
            (
                "the connection window past 2^31-1",
                f(frame::WINDOW_UPDATE, 0, 0, &[0x7f, 0xff, 0xff, 0xff]),
                code::FLOW_CONTROL_ERROR,
            ),
            (
                "PUSH_PROMISE from a client",
                f(frame::PUSH_PROMISE, 4, 1, &[0, 0, 0, 2]),
                code::PROTOCOL_ERROR,
            ),
            (
                "an HPACK index past the tables",
                f(frame::HEADERS, 5, 1, &[0xff, 0x7f]),
                code::COMPRESSION_ERROR,
            ),
            (
                "a table size past SETTINGS_HEADER_TABLE_SIZE",
                f(frame::HEADERS, 5, 1, &[0x3f, 0xe2, 0x1f]),
                code::COMPRESSION_ERROR,
            ),
            (
                "a table size update after a field",
                f(frame::HEADERS, 5, 1, &[0x82, 0x20]),
                code::COMPRESSION_ERROR,
            ),
            (
                "a literal cut short",
                f(frame::HEADERS, 5, 1, &[0x00, 0x05, b'a']),
                code::COMPRESSION_ERROR,
            ),
        ];
        for (what, bytes, want) in cases {
            let mut st = open(64 * 1024);
            // Stream 1 open and ended, so that later ids are new and lower ones closed.
            if what.contains("RST_STREAM on an idle") {
                headers(&mut st, 1, &GET, true).unwrap();
            }
            assert_eq!(st.on_bytes(&bytes), Err(want), "{what}");
        }
        // A frame interleaved in a header block.
        let mut st = open(64 * 1024);
        let mut bytes = f(frame::HEADERS, 1, 1, &get);
        bytes.extend(f(frame::PRIORITY, 0, 3, &[0; 5]));
        assert_eq!(st.on_bytes(&bytes), Err(code::PROTOCOL_ERROR));
        // Unknown frame types and settings are ignored.
        let mut st = open(64 * 1024);
        let mut bytes = f(0x42, 0xff, 0, b"whatever");
        bytes.extend(f(frame::SETTINGS, 0, 0, &[0x7f, 0x7f, 0, 0, 0, 1]));
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
    }

    #[test]
    fn stream_errors_reset_the_stream_and_the_connection_goes_on() {
        let mut st = open(64 * 1024);
        headers(&mut st, 1, &GET, false).unwrap();
        headers(&mut st, 3, &GET, true).unwrap();
        headers(&mut st, 5, &GET, false).unwrap();
        st.out.clear();
        let f = frame;
        let cases = [
            (
                f(frame::WINDOW_UPDATE, 0, 1, &[0; 4]),
                1,
                code::PROTOCOL_ERROR,
            ),
            (f(frame::DATA, 0, 3, b"late"), 3, code::STREAM_CLOSED),
            (f(frame::PRIORITY, 0, 5, &[0; 4]), 5, code::FRAME_SIZE_ERROR),
        ];
        for (bytes, id, want) in cases {
            assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
            assert_eq!(resets(&st), [(id, want)]);
            st.out.clear();
        }
        // A stream may not depend on itself (RFC 9113 section 5.3.1).
        let mut p = vec![0, 0, 0, 7, 16];
        p.extend(block(&GET));
        let bytes = f(frame::HEADERS, 0x20 | 5, 7, &p);
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
        assert_eq!(resets(&st), [(7, code::PROTOCOL_ERROR)]);
        // On a stream not yet open, no reset can answer it: the connection ends.
        let bytes = f(frame::PRIORITY, 0, 9, &[0, 0, 0, 9, 16]);
        assert_eq!(st.on_bytes(&bytes), Err(code::PROTOCOL_ERROR));
    }

    #[test]
    fn a_block_of_references_to_a_large_entry_ends_the_connection() {
        let mut st = open(64 * 1024);
        let mut b = block(&GET);
        // cookie: 4,000 bytes, indexed; then 200 one-byte references to it (800 KB decoded).
        b.push(0x40 | 32);
        hpack::put_int(&mut b, 0, 7, 4000);
        b.extend(std::iter::repeat_n(b'c', 4000));
        b.extend(std::iter::repeat_n(0x80 | 62, 200));
        assert!(b.len() < 5000);
        let bytes = frame(frame::HEADERS, 5, 1, &b);
        assert_eq!(st.on_bytes(&bytes), Err(code::ENHANCE_YOUR_CALM));
        assert!(st.cookies.capacity() <= 4096, "{}", st.cookies.capacity());
    }

    #[test]
    fn after_our_goaway_new_streams_are_ignored_and_the_last_id_never_grows() {
        let mut st = open(64 * 1024);
        headers(&mut st, 1, &GET, false).unwrap();
        st.go_away();
        headers(&mut st, 3, &GET, false).unwrap();
        assert_eq!(st.accepted.len(), 1, "stream 3 is past the GOAWAY");
        // Its trailers, sent before the client heard, are ignored too.
        let t = frame(frame::HEADERS, 5, 3, &block(&[("x-t", "1")]));
        assert_eq!(st.on_bytes(&t), Ok(t.len()));
        st.fail(Some(code::PROTOCOL_ERROR));
        let lasts: Vec<u32> = sent(&st.out)
            .into_iter()
            .filter(|f| f.0 == frame::GOAWAY)
            .map(|f| be32(&f.2))
            .collect();
        assert_eq!(lasts, [1, 1]);
    }

    #[test]
    fn streams_refused_for_the_limit_are_not_counted_as_abuse() {
        let mut st = open(64 * 1024);
        for i in 0..MAX_STREAMS {
            headers(&mut st, 2 * i + 1, &GET, false).unwrap();
        }
        for i in 0..2 * MAX_LOCAL_RESETS as u32 {
            headers(&mut st, 2 * (MAX_STREAMS + i) + 1, &GET, true).unwrap();
        }
        // A stream the client reset leaves room, though its task has not ended yet.
        let id = 1;
        let r = frame(frame::RST_STREAM, 0, id, &8u32.to_be_bytes());
        st.on_bytes(&r).unwrap();
        let accepted = st.accepted.len();
        let next = 2 * (MAX_STREAMS + 2 * MAX_LOCAL_RESETS as u32) + 1;
        headers(&mut st, next, &GET, true).unwrap();
        assert_eq!(st.accepted.len(), accepted + 1);
    }

    #[test]
    fn fuzz_driver_takes_arbitrary_bytes() {
        let mut input = super::super::PREFACE.to_vec();
        input.extend(frame(frame::SETTINGS, 0, 0, &[]));
        let mut fields = GET.to_vec();
        fields.push(("content-length", "2"));
        input.extend(frame(
            frame::HEADERS,
            frame::END_HEADERS,
            1,
            &block(&fields),
        ));
        input.extend(frame(frame::DATA, frame::END_STREAM, 1, b"ok"));
        drive_server(&input, &[3, 30, 1]);
        drive_server(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", &[]);
        drive_server(&[0xff; 64], &[]);
    }
}
