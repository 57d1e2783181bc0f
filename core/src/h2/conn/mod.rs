//! One HTTP/2 connection's protocol state (RFC 9113), for either side: frames, SETTINGS, flow
//! control windows, stream states, GOAWAY, and the bounds a peer is held to.
//!
//! No I/O, no clock, no wakers. Bytes come in through [`Connection::on_bytes`] with the time
//! they were read; what they mean for streams goes to the caller's [`Events`] as it is found;
//! frames to send accumulate in the connection's output, which the caller writes out. Both
//! drivers (`serve.rs` for clients' connections, `upstream.rs` for connections to upstreams)
//! are thin loops around it, and the two sides differ here only where the protocol makes them
//! (who opens streams, what a header block on a stream is).
//!
//! Abuse is bounded per connection: the streams a client may have open at once (refused past
//! it); the receive windows bound what a peer can make us hold; a client that resets streams
//! before they are answered faster than [`RESETS_PER_SECOND`] after a burst of
//! [`RESET_BURST`] (rapid reset, CVE-2023-44487), or a peer that makes us reset more than
//! [`MAX_LOCAL_RESETS`] streams for its protocol errors ("MadeYouReset"), gets GOAWAY
//! `ENHANCE_YOUR_CALM`; header blocks are held to the head limit in few frames; and output
//! queued past [`OUT_CAP`] (a peer that makes us answer faster than it reads) ends the
//! connection.

use std::time::Instant;

use super::block::Block;
use super::frame::{
    self, Code, MAX_ID, PeerSettings, frame_head, push_block, push_goaway, push_rst,
    push_window_update,
};
use super::hpack::{self, Decoder};
use crate::metrics::H2Event;
use crate::ratelimit::{Bucket, RateLimit};

mod recv;
#[cfg(test)]
mod tests;

/// Streams the proxy may reset for a peer's protocol errors before it sends GOAWAY
/// ("MadeYouReset": each costs the peer nothing).
pub const MAX_LOCAL_RESETS: usize = 100;
/// Client resets of streams not yet answered: allowed at once, then per second (rapid reset,
/// CVE-2023-44487).
pub const RESET_BURST: f64 = 200.0;
/// See [`RESET_BURST`].
pub const RESETS_PER_SECOND: f64 = 50.0;
/// Queued output past which the peer is making us answer faster than it reads (PINGs, SETTINGS,
/// resets): the connection ends.
pub(crate) const OUT_CAP: usize = 1024 * 1024;
/// Output queued past which DATA waits for the writer.
pub(crate) const OUT_LIMIT: usize = 256 * 1024;
/// Our SETTINGS_HEADER_TABLE_SIZE (the default).
const TABLE_SIZE: usize = 4096;
/// Stream ids remembered as reset or cut short, for the frames that may still come on them.
const REMEMBERED: usize = 128;

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Clients open streams to us.
    Server,
    /// We open streams to an upstream.
    Client,
}

/// What a connection announces and holds its peer to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub role: Role,
    /// Server: streams a client may have open at once. Client: streams we open at most,
    /// whatever the peer allows.
    pub max_streams: u32,
    /// Receive window of a stream, and of the connection.
    pub stream_window: u32,
    pub connection_window: u32,
    /// The largest head we take, as its fields would weigh written as lines.
    pub max_head: usize,
}

/// How a stream ended before both sides were done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The peer reset it with this code (REFUSED_STREAM too for a request past its GOAWAY:
    /// it was not processed).
    Reset(Code),
    /// We reset it with this code.
    Local(Code),
    /// The connection ended.
    Connection,
}

/// What becomes of a stream whose head came, as the side's translation judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Taken; its body must be `length` bytes when that is said.
    Accept { length: Option<u64> },
    /// An interim answer: the final head is still to come.
    Interim,
    /// Malformed (RFC 9113 section 8.1.1): the stream is reset.
    Malformed,
    /// A request answered at once with this status (too large a head, a method not served).
    Answer(u16),
}

/// What the frames mean for streams, told to the side as they are handled.
pub(crate) trait Events {
    /// A head came on stream `id` (a request, or an answer to ours), decoded in `block`.
    fn head(&mut self, id: u32, block: &Block) -> Verdict;
    /// Trailers ended stream `id`.
    fn trailers(&mut self, id: u32, block: &Block);
    /// DATA on stream `id`; `end`: nothing follows.
    fn data(&mut self, id: u32, data: &[u8], end: bool);
    /// Stream `id` failed: its side stops using it.
    fn failed(&mut self, id: u32, failure: Failure);
    /// The send window of stream `id` (0: the connection's) grew.
    fn window(&mut self, id: u32);
    /// Something to count (metrics).
    fn note(&mut self, _event: H2Event) {}
}

/// One stream's protocol state.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u32,
    /// The peer's head came (for an answer, its final head).
    pub head: bool,
    /// END_STREAM came.
    pub recv_end: bool,
    /// END_STREAM went, or the stream was reset: nothing more goes out on it.
    pub sent_end: bool,
    pub failure: Option<Failure>,
    recv_window: i64,
    send_window: i64,
    /// Read, not yet credited back to the peer.
    credit: u32,
    /// Body bytes the declared length still allows.
    left: Option<u64>,
}

impl Stream {
    fn new(id: u32, send_window: i64, recv_window: u32) -> Stream {
        Stream {
            id,
            head: false,
            recv_end: false,
            sent_end: false,
            failure: None,
            recv_window: recv_window as i64,
            send_window,
            credit: 0,
            left: None,
        }
    }

    fn fail(&mut self, f: Failure) {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
    }
}

/// A header block being received (HEADERS, then CONTINUATIONs).
#[derive(Default)]
struct Assembly {
    bytes: Vec<u8>,
    /// The stream it is for (0: none in progress).
    stream: u32,
    end_stream: bool,
    /// Its stream said it depends on itself (RFC 9113 section 5.3.1).
    self_dependent: bool,
    /// Frames it came in.
    frames: usize,
}

/// The last stream ids of a kind, to recognise frames that may still come on them.
struct Recent {
    ids: [u32; REMEMBERED],
    at: usize,
}

impl Recent {
    fn new() -> Recent {
        Recent {
            ids: [0; REMEMBERED],
            at: 0,
        }
    }

    fn add(&mut self, id: u32) {
        self.ids[self.at % REMEMBERED] = id;
        self.at += 1;
    }

    fn contains(&self, id: u32) -> bool {
        self.ids.contains(&id)
    }
}

/// How much DATA [`Connection::send_data`] queued, and what it waits for if not all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub n: usize,
    pub blocked: Option<Blocked>,
}

/// What a sender waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// The stream's window.
    Stream,
    /// The connection's window, or room in the output.
    Connection,
}

/// See the module docs.
pub(crate) struct Connection {
    config: Config,
    /// Frames to write.
    out: Vec<u8>,
    streams: Vec<Stream>,
    /// The highest stream id the peer has opened (server).
    peer_last: u32,
    /// The id of the next stream we open (client).
    next_id: u32,
    send_window: i64,
    peer: PeerSettings,
    recv_window: i64,
    credit: u32,
    /// The client's preface has come (a client sends its own and waits for none).
    preface: bool,
    /// The peer's first frame, its SETTINGS, has come.
    settled: bool,
    /// We sent GOAWAY naming this stream as the last: no new stream starts.
    goaway_sent: Option<u32>,
    /// The peer sent GOAWAY naming this stream as the last it processes.
    goaway_received: Option<u32>,
    /// The connection has ended (or is ending): no stream goes on.
    dead: bool,
    /// The error code we ended the connection with.
    error: Option<Code>,
    decoder: Decoder,
    assembly: Assembly,
    block: Block,
    /// Resets we made for the peer's protocol errors.
    local_resets: usize,
    /// Streams we reset or ended early, lately: frames the peer sent on them before it knew
    /// are ignored (RFC 9113 section 5.1), where on other closed streams they are errors.
    cut: Recent,
    /// Streams the peer reset, lately: a frame on one (but PRIORITY) is a stream error
    /// STREAM_CLOSED (RFC 9113 section 5.1).
    peer_reset: Recent,
    /// Resets of unanswered streams the client may still make.
    resets: Bucket,
    /// When the last stream ended (the start of an idle period).
    idle_since: Instant,
    /// When the peer last let us send: a write done, or window granted.
    progress: Instant,
}

impl Connection {
    /// A connection whose first output is our preface (a client's) and SETTINGS.
    pub fn new(config: Config, now: Instant) -> Connection {
        let client = config.role == Role::Client;
        let mut out = Vec::with_capacity(if client { 16 * 1024 } else { 256 });
        if client {
            out.extend_from_slice(super::PREFACE);
        }
        // Our SETTINGS. A client takes no push and no stream from the server; a server says
        // its stream limit and the head limit.
        let head_list = config.max_head.min(u32::MAX as usize) as u32;
        let settings: [(u16, u32); 3] = if client {
            [(2, 0), (3, 0), (4, config.stream_window)]
        } else {
            [
                (3, config.max_streams),
                (4, config.stream_window),
                (6, head_list),
            ]
        };
        frame_head(&mut out, 18, frame::SETTINGS, 0, 0);
        for (id, v) in settings {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&v.to_be_bytes());
        }
        push_window_update(&mut out, 0, config.connection_window - 65_535);
        let mut decoder = Decoder::new(TABLE_SIZE);
        decoder.list_limit = decoder.list_limit.max(2 * config.max_head);
        Connection {
            config,
            out,
            streams: Vec::new(),
            peer_last: 0,
            next_id: 1,
            send_window: 65_535,
            peer: PeerSettings::default(),
            recv_window: config.connection_window as i64,
            credit: 0,
            preface: client,
            settled: false,
            goaway_sent: None,
            goaway_received: None,
            dead: false,
            error: None,
            decoder,
            assembly: Assembly::default(),
            block: Block::default(),
            local_resets: 0,
            cut: Recent::new(),
            peer_reset: Recent::new(),
            resets: Bucket::new(
                RateLimit {
                    rps: RESETS_PER_SECOND,
                    burst: RESET_BURST,
                },
                now,
            ),
            idle_since: now,
            progress: now,
        }
    }

    // ---- What the drivers read.

    pub fn role(&self) -> Role {
        self.config.role
    }

    /// The connection has ended (or is ending).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The error code we ended the connection with, if we did.
    pub fn error(&self) -> Option<Code> {
        self.error
    }

    /// The peer's SETTINGS have come.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// A stream, if the connection still keeps it.
    pub fn stream(&self, id: u32) -> Option<&Stream> {
        self.streams.iter().find(|s| s.id == id)
    }

    /// Streams kept (open, or ended and not yet closed by their side).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The streams kept.
    #[cfg(any(fuzzing, test))]
    pub fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.streams.iter()
    }

    /// What the peer may still send on the connection.
    #[cfg(any(fuzzing, test))]
    pub fn receive_window(&self) -> i64 {
        self.recv_window
    }

    /// GOAWAY went or came: the connection ends once its streams are done.
    pub fn winding_down(&self) -> bool {
        self.goaway_sent.is_some() || self.goaway_received.is_some()
    }

    /// New streams may go on it (client).
    pub fn usable(&self) -> bool {
        !self.dead && self.goaway_received.is_none() && self.next_id <= MAX_ID
    }

    /// Streams we may have open at once on it (client): ours, within the peer's.
    pub fn max_concurrent(&self) -> u32 {
        self.peer.max_streams.clamp(1, self.config.max_streams)
    }

    /// Frames are queued.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// When the last stream ended; when the peer last let us send.
    pub fn idle_since(&self) -> Instant {
        self.idle_since
    }

    pub fn progress(&self) -> Instant {
        self.progress
    }

    /// Hands what is queued to the writer (swapped into `buf`); false: nothing is.
    pub fn take_output(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.out.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.out, buf);
        true
    }

    /// A write ended at `now`: the peer is reading.
    pub fn wrote(&mut self, now: Instant) {
        self.progress = now;
    }

    /// Idle: the buffers kept for the next streams go (they come again with use).
    pub fn trim(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        self.streams = Vec::new();
        self.block = Block::default();
        self.assembly = Assembly::default();
    }

    fn find_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    fn position(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    // ---- Ending things.

    /// Ends the connection: every stream fails, and a GOAWAY with `code` is queued when it is
    /// our error. Streams past the peer's GOAWAY were not processed: they fail as refused.
    pub fn fail(&mut self, code: Option<Code>) {
        if self.dead {
            return;
        }
        self.dead = true;
        if let Some(code) = code {
            // A second GOAWAY may not name a later stream than the first.
            let last = self.goaway_sent.unwrap_or(self.peer_last);
            push_goaway(&mut self.out, last, code);
            self.error = Some(code);
        }
        let refused_past = self.goaway_received.filter(|_| self.role() == Role::Client);
        for s in &mut self.streams {
            s.fail(match refused_past {
                Some(last) if s.id > last => Failure::Reset(Code::REFUSED_STREAM),
                _ => Failure::Connection,
            });
        }
    }

    /// GOAWAY naming the last stream the peer opened: open streams finish, no new one starts.
    /// False if one went already.
    pub fn go_away(&mut self) -> bool {
        if self.goaway_sent.is_some() || self.dead {
            return false;
        }
        push_goaway(&mut self.out, self.peer_last, Code::NO_ERROR);
        self.goaway_sent = Some(self.peer_last);
        true
    }

    /// Resets a stream (whether or not we still keep it).
    pub fn reset(&mut self, id: u32, code: Code) {
        push_rst(&mut self.out, id, code);
        self.cut.add(id);
        if let Some(s) = self.find_mut(id) {
            s.sent_end = true;
            s.fail(Failure::Local(code));
        }
    }

    /// Resets a stream for the peer's protocol error. A peer that makes us do it too often
    /// ("MadeYouReset") loses the connection.
    fn refuse(&mut self, id: u32, code: Code, ev: &mut impl Events) -> Result<(), Code> {
        self.reset(id, code);
        ev.failed(id, Failure::Local(code));
        self.count_local_reset()
    }

    fn count_local_reset(&mut self) -> Result<(), Code> {
        self.local_resets += 1;
        if self.local_resets > MAX_LOCAL_RESETS {
            return Err(Code::ENHANCE_YOUR_CALM);
        }
        Ok(())
    }

    /// Takes a stream off the connection: its side is done with it, and had `unread` bytes of
    /// its DATA not read. A stream not ended both ways is reset: an answer (or request) not
    /// sent whole with CANCEL; a request answered whole before it ended with NO_ERROR (the
    /// client may stop sending it, RFC 9113 section 8.1).
    pub fn close(&mut self, id: u32, unread: u32, now: Instant) {
        let Some(i) = self.streams.iter().position(|s| s.id == id) else {
            return;
        };
        let s = self.streams.swap_remove(i);
        if !self.dead {
            let early = !s.recv_end && s.failure.is_none();
            if !s.sent_end || (early && self.role() == Role::Client) {
                push_rst(&mut self.out, id, Code::CANCEL);
                self.cut.add(id);
            } else if early {
                push_rst(&mut self.out, id, Code::NO_ERROR);
                self.cut.add(id);
            }
        }
        // What the peer sent and nobody read is the connection's window again.
        if unread > 0 {
            self.credit_connection(unread);
        }
        if self.streams.is_empty() {
            self.idle_since = now;
        }
    }

    // ---- Sending.

    /// Opens a stream with a request's header block (client); its id, or `None` if the
    /// connection takes no new stream (the request was never sent: it may go elsewhere).
    pub fn open(&mut self, block: &[u8], end: bool) -> Option<u32> {
        if !self.usable() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 2;
        push_block(&mut self.out, id, end, block, self.peer.max_frame);
        let mut s = Stream::new(id, self.peer.window, self.config.stream_window);
        s.sent_end = end;
        self.streams.push(s);
        Some(id)
    }

    /// Sends a header block on stream `id`: an answer's head (`end` when it has no body), an
    /// interim answer, or trailers (`end`).
    pub fn send_head(&mut self, id: u32, block: &[u8], end: bool) -> Result<(), Failure> {
        self.sendable(id)?;
        push_block(&mut self.out, id, end, block, self.peer.max_frame);
        if let Some(s) = self.find_mut(id) {
            s.sent_end = end;
        }
        Ok(())
    }

    /// Queues as much of `data` as the windows and the output allow; `end`: END_STREAM with
    /// the last byte (or alone when `data` is empty).
    pub fn send_data(&mut self, id: u32, data: &[u8], end: bool) -> Result<Sent, Failure> {
        self.sendable(id)?;
        let i = self.position(id).ok_or(Failure::Connection)?;
        let max_frame = self.peer.max_frame;
        let (out, conn_window) = (&mut self.out, &mut self.send_window);
        let s = &mut self.streams[i];
        if data.is_empty() {
            if end {
                frame_head(out, 0, frame::DATA, frame::END_STREAM, id);
                s.sent_end = true;
            }
            return Ok(Sent {
                n: 0,
                blocked: None,
            });
        }
        let mut sent = 0;
        while sent < data.len() {
            let window = s.send_window.min(*conn_window).max(0) as usize;
            let n = (data.len() - sent).min(window).min(max_frame);
            if n == 0 || out.len() >= OUT_LIMIT {
                let blocked = if s.send_window <= 0 {
                    Blocked::Stream
                } else {
                    Blocked::Connection
                };
                return Ok(Sent {
                    n: sent,
                    blocked: Some(blocked),
                });
            }
            let last = end && sent + n == data.len();
            frame_head(
                out,
                n,
                frame::DATA,
                if last { frame::END_STREAM } else { 0 },
                id,
            );
            out.extend_from_slice(&data[sent..sent + n]);
            s.send_window -= n as i64;
            *conn_window -= n as i64;
            s.sent_end = last;
            sent += n;
        }
        Ok(Sent {
            n: sent,
            blocked: None,
        })
    }

    /// Whether something may still go out on stream `id`.
    fn sendable(&self, id: u32) -> Result<(), Failure> {
        if self.dead {
            return Err(Failure::Connection);
        }
        match self.stream(id) {
            Some(s) if s.failure.is_some() => Err(s.failure.unwrap_or(Failure::Connection)),
            // The peer is done with it (a reset after a whole answer): it wants no more.
            Some(s) if s.sent_end => Err(Failure::Local(Code::STREAM_CLOSED)),
            Some(_) => Ok(()),
            None => Err(Failure::Connection),
        }
    }

    /// `n` bytes of stream `id`'s DATA were read: credited back to the peer, in halves of the
    /// windows.
    pub fn consumed(&mut self, id: u32, n: u32) {
        self.credit_connection(n);
        let (out, window) = (&mut self.out, self.config.stream_window);
        let Some(s) = self.streams.iter_mut().find(|s| s.id == id) else {
            return;
        };
        // A stream that has ended needs no more window.
        if !s.recv_end && s.failure.is_none() {
            frame::credit(out, id, &mut s.credit, &mut s.recv_window, n, window);
        }
    }

    fn credit_connection(&mut self, n: u32) {
        let window = self.config.connection_window;
        frame::credit(
            &mut self.out,
            0,
            &mut self.credit,
            &mut self.recv_window,
            n,
            window,
        );
    }

    /// A request answered at once (a head past the limit, a method not served), the stream
    /// ended with it. Cheap for the client, so counted as the resets are.
    fn answer_now(&mut self, id: u32, status: u16, end: bool) -> Result<(), Code> {
        let mut block = Vec::with_capacity(8);
        hpack::put_named_u64(&mut block, hpack::STATUS, status as u64);
        hpack::put_named_u64(&mut block, hpack::CONTENT_LENGTH, 0);
        push_block(&mut self.out, id, true, &block, self.peer.max_frame);
        if !end {
            push_rst(&mut self.out, id, Code::NO_ERROR);
            self.cut.add(id);
        }
        self.count_local_reset()
    }
}
