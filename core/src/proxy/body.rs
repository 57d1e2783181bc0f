//! Moving bodies: the response from upstream to client ([`relay`]), the request body from client
//! to upstream ([`pump`]), and both at once ([`duplex`]) so that an upstream may answer before
//! it has read the whole request, or stream its answer while the request still streams in.
//!
//! Bodies stream through pooled buffers in bounded memory whatever their size. Chunked bodies are
//! validated by [`ChunkedDecoder`] and forwarded as received when both sides speak chunked; an
//! HTTP/1.0 client gets the data alone, the end marked by the close of the connection.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::reframe::BodyState;
use crate::buf::BULK_BUF_SIZE;
use crate::error::{Error, ErrorKind, Retry, Side};
use crate::head::{Framing, ResponseHead, Version};
use crate::http1::{ChunkedForward, encode};
use crate::io::{HeadsFrom, HeadsTo};
use crate::worker::state::Worker;

/// Largest response head accepted from an upstream.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What the relay needs to know of the client.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientSide<'a> {
    /// The route's and cluster's edits of the answer's fields (`${upstream}` filled in).
    pub edits: Option<crate::head::edit::ResponseEdits<'a>>,
    pub version: Version,
    pub keep_alive: bool,
    pub head_request: bool,
    /// Time allowed between two reads of a response body.
    pub body_idle: Duration,
    /// The request asked for an upgrade that is passed on: a 101 ends the head.
    pub upgrade: bool,
    /// The route compresses answers: what this request accepts.
    pub compress: Option<super::coded::Offer<'a>>,
}

/// A response relayed in full.
#[derive(Debug, Clone, Copy)]
pub(super) struct Relayed {
    pub status: u16,
    pub client_keep_alive: bool,
    pub upstream_reusable: bool,
    /// When the response head arrived.
    pub head_at: Instant,
}

/// A failure once the answer's head went to the client: it goes to the client as a cut answer,
/// and nothing goes again.
fn after(kind: ErrorKind) -> Error {
    match kind {
        ErrorKind::ClientClosed => Error::downstream(kind),
        _ => Error::upstream(kind, Retry::Never),
    }
}

/// When a wait gives up.
#[derive(Debug, Clone, Copy)]
pub(super) enum Until {
    /// Never (another timer bounds it).
    Never,
    /// At this instant, to the millisecond.
    Precise(Instant),
    /// At this instant, to the worker's sweeper tick: for timeouts of seconds, where a timer
    /// per read would cost more than the precision is worth.
    Coarse(Instant),
}

impl Until {
    /// A deadline `d` from `now`: coarse when it is far enough for the tick not to matter.
    pub fn after(now: Instant, d: Duration) -> Until {
        if d >= COARSE_FROM {
            Until::Coarse(now + d)
        } else {
            Until::Precise(now + d)
        }
    }
}

/// Timeouts at least this long are kept to the sweeper's tick.
const COARSE_FROM: Duration = Duration::from_secs(2);

/// Reads into `buf` after its current length, until `until`. `None`: timed out.
async fn read_until<R: AsyncReadRent>(
    w: &Worker,
    r: &mut R,
    buf: Vec<u8>,
    until: Until,
) -> Option<(io::Result<usize>, Vec<u8>)> {
    let len = buf.len();
    debug_assert!(
        len < buf.capacity(),
        "a read into a full buffer looks like EOF"
    );
    let read = r.read(buf.slice_mut(len..));
    match until {
        Until::Never => {
            let (res, s) = read.await;
            Some((res, s.into_inner()))
        }
        Until::Precise(d) => {
            monoio::select! {
                (res, s) = read => Some((res, s.into_inner())),
                _ = crate::sleep_until(d) => None,
            }
        }
        Until::Coarse(d) => {
            monoio::select! {
                (res, s) = read => Some((res, s.into_inner())),
                _ = w.deadlines.wait_until(None, d) => None,
            }
        }
    }
}

/// Writes all of `buf` to the client, until `until`. `None`: timed out, a client that reads
/// nothing (the write is given up with the connection).
async fn write_until<W: AsyncWriteRent, B: monoio::buf::IoBuf>(
    w: &Worker,
    wr: &mut W,
    buf: B,
    until: Until,
) -> Option<(io::Result<usize>, B)> {
    let write = wr.write_all(buf);
    match until {
        Until::Never => Some(write.await),
        Until::Precise(d) => {
            monoio::select! {
                r = write => Some(r),
                _ = crate::sleep_until(d) => None,
            }
        }
        Until::Coarse(d) => {
            monoio::select! {
                r = write => Some(r),
                _ = w.deadlines.wait_until(None, d) => None,
            }
        }
    }
}

/// Runs `f` until `until`. `None`: timed out.
async fn within<F: Future>(w: &Worker, f: F, until: Until) -> Option<F::Output> {
    match until {
        Until::Never => Some(f.await),
        Until::Precise(d) => {
            monoio::select! {
                r = f => Some(r),
                _ = crate::sleep_until(d) => None,
            }
        }
        Until::Coarse(d) => {
            monoio::select! {
                r = f => Some(r),
                _ = w.deadlines.wait_until(None, d) => None,
            }
        }
    }
}

/// What a relay has done so far, watched by its caller.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The final head was handed to the client.
    pub started: Cell<bool>,
    /// Bytes of the answer written to the client.
    pub bytes_out: Cell<u64>,
    /// Bytes of a streamed request body sent upstream.
    pub body_in: Cell<u64>,
}

impl Progress {
    fn wrote(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }
}

/// Reads the response head (forwarding interim answers), then the body, writing both to the
/// client. `progress.started` turns true once the final head is handed to the client.
pub(super) async fn relay<R: HeadsFrom, W: HeadsTo>(
    w: &Worker,
    up: &mut R,
    client: &mut W,
    resp: &mut ResponseHead,
    side: ClientSide<'_>,
    deadline: Until,
    progress: &Progress,
) -> Result<Relayed, Error> {
    let head = read_head(w, up, client, resp, side, deadline).await?;
    relay_body(w, up, client, resp, side, head, progress).await
}

/// A final response head read from the upstream, not yet sent on.
pub(super) struct HeadIn {
    /// The bytes read: the head, then perhaps some of the body.
    pub ubuf: Vec<u8>,
    /// Length of the head in `ubuf`.
    pub head_len: usize,
    /// When the head arrived.
    pub at: Instant,
}

/// Reads the final response head, forwarding interim (1xx) answers to the client.
pub(super) async fn read_head<R: HeadsFrom, W: HeadsTo>(
    w: &Worker,
    up: &mut R,
    client: &mut W,
    resp: &mut ResponseHead,
    side: ClientSide<'_>,
    deadline: Until,
) -> Result<HeadIn, Error> {
    // Before the head is relayed: a failure may be one to try again.
    let before = |kind| Error::upstream(kind, Retry::Sent);
    let mut ubuf = w.bufs.get();
    if let Some(h2) = up.h2() {
        // An HTTP/2 upstream's head comes decoded (its interim answers are not passed on).
        let read = h2.read_head(resp, &mut ubuf);
        let Some(r) = within(w, read, deadline).await else {
            w.put_buf(ubuf);
            return Err(before(ErrorKind::Timeout));
        };
        return match r {
            Ok(head_len) => Ok(HeadIn {
                ubuf,
                head_len,
                at: Instant::now(),
            }),
            Err(_) => {
                w.put_buf(ubuf);
                // Nothing came: on a stream the upstream refused, the request may go again.
                let retry = if h2.refused() {
                    Retry::Refused
                } else {
                    Retry::NothingBack
                };
                Err(Error::upstream(ErrorKind::UpstreamReset, retry))
            }
        };
    }
    let mut received = false;
    let head_len = loop {
        if !ubuf.is_empty() {
            match resp.parse(&ubuf, MAX_RESPONSE_HEAD) {
                // The upstream agrees to the client's upgrade: what follows is the tunnel.
                Ok(Some(n)) if resp.status == 101 && side.upgrade => break n,
                Ok(Some(n)) if resp.is_interim() => {
                    // 101 answers an upgrade the proxy did not pass on; 100 answers an
                    // Expect the proxy handled itself. Other 1xx go to HTTP/1.1 clients.
                    if resp.status == 101 {
                        w.put_buf(ubuf);
                        return Err(before(ErrorKind::UpstreamProtocol));
                    }
                    if resp.status != 100 && super::takes_interim(side.version) {
                        let sent = match client.h2() {
                            Some(h2) => h2.send_interim(resp, &ubuf).is_ok(),
                            None => {
                                let mut out = w.bufs.get();
                                encode::interim_head(&mut out, &ubuf, resp);
                                let until = Until::after(Instant::now(), side.body_idle);
                                match write_until(w, client, out, until).await {
                                    Some((r, out)) => {
                                        w.put_buf(out);
                                        r.is_ok()
                                    }
                                    None => false,
                                }
                            }
                        };
                        if !sent {
                            w.put_buf(ubuf);
                            return Err(Error::downstream(ErrorKind::ClientClosed));
                        }
                    }
                    ubuf.drain(..n);
                    continue;
                }
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(_) => {
                    w.put_buf(ubuf);
                    return Err(before(ErrorKind::UpstreamProtocol));
                }
            }
        }
        if ubuf.len() == ubuf.capacity() {
            ubuf.reserve(ubuf.capacity());
        }
        let Some((res, buf)) = read_until(w, up, ubuf, deadline).await else {
            return Err(before(ErrorKind::Timeout));
        };
        ubuf = buf;
        match res {
            Ok(n) if n > 0 => received = true,
            _ => {
                w.put_buf(ubuf);
                let kind = ErrorKind::UpstreamReset;
                let retry = if received {
                    Retry::Sent
                } else {
                    Retry::NothingBack
                };
                return Err(Error::upstream(kind, retry));
            }
        }
    };
    Ok(HeadIn {
        ubuf,
        head_len,
        at: Instant::now(),
    })
}

/// Sends a response head read by [`read_head`] to the client, then its body.
/// `progress.started` turns true once the head is handed to the client.
pub(super) async fn relay_body<R: AsyncReadRent, W: HeadsTo>(
    w: &Worker,
    up: &mut R,
    client: &mut W,
    resp: &mut ResponseHead,
    side: ClientSide<'_>,
    head: HeadIn,
    progress: &Progress,
) -> Result<Relayed, Error> {
    let HeadIn {
        mut ubuf,
        head_len,
        at: head_at,
    } = head;
    let body = resp.body_framing(side.head_request);
    // Drain may have begun while the upstream was answering: say the connection ends.
    let keep_alive = side.keep_alive && !w.draining();
    let mut cf = encode::client_framing(body, resp, side.version, keep_alive);
    let judged = side
        .compress
        .as_ref()
        .and_then(|o| super::coded::judge(w, o, resp, &ubuf));
    let mut edits = side.edits;
    let mut coded = None;
    if let Some(mut j) = judged {
        if body == Framing::None && !side.head_request {
            // No body to code (an empty answer): it goes as it is, with its own framing.
            j.coding = None;
        }
        if let (Some(a), Some(offer)) = (j.coding, &side.compress) {
            if body != Framing::None {
                let chunked = side.version != Version::Http10;
                match super::coded::CodedBody::new(w, offer, a, body, chunked) {
                    Ok(c) => coded = Some(Box::new(c)),
                    // No encoder (no memory for one): the answer goes as it came.
                    Err(_) => j.coding = None,
                }
            }
        }
        if j.coding.is_some() {
            // The coded length is not known beforehand: chunked, or to the close.
            cf = encode::coded_framing(body, side.version, keep_alive);
        }
        edits.get_or_insert_with(Default::default).coding =
            Some(crate::compress::Coding::of(&j, &ubuf));
    }
    let mut out = w.bufs.get();
    match client.h2() {
        Some(h2) => {
            // Heads go to an HTTP/2 client as heads; the body as it would to HTTP/1.1.
            let length = match cf.framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            let framing = if body == Framing::None {
                Framing::None
            } else {
                cf.framing
            };
            match h2.send_answer(resp, &ubuf, length, framing, edits.as_ref()) {
                Ok(n) => progress.wrote(n),
                Err(_) => {
                    w.put_buf(ubuf);
                    w.put_buf(out);
                    return Err(Error::downstream(ErrorKind::ClientClosed));
                }
            }
        }
        None => encode::response_head(&mut out, &ubuf, resp, cf, edits.as_ref()),
    }
    progress.started.set(true);

    let mut state = match coded {
        Some(c) => BodyState::Coded(c),
        None => BodyState::new(body, cf.framing),
    };
    let mut from = head_len;
    let mut reusable = resp.keep_alive;
    loop {
        // Bytes of this message in ubuf[from..] go to the client; bytes past it mean the
        // upstream sent more than it declared, so its connection is not reused.
        let data = &ubuf[from..];
        let step = match state.step(data, &mut out) {
            Ok(s) => s,
            Err(kind) => {
                w.put_buf(ubuf);
                w.put_buf(out);
                return Err(after(kind));
            }
        };
        if step.done && step.consumed < data.len() {
            reusable = false;
        }
        // A client that reads nothing for the idle timeout is given up, and the upstream
        // exchange with it.
        let write = if step.direct > 0 {
            // Forwarded as received: write straight from the read buffer, no copy.
            debug_assert!(out.is_empty());
            let until = Until::after(Instant::now(), side.body_idle);
            let written = ubuf.slice(from..from + step.direct);
            match write_until(w, client, written, until).await {
                Some((r, b)) => {
                    ubuf = b.into_inner();
                    r
                }
                None => {
                    w.put_buf(out);
                    return Err(after(ErrorKind::ClientClosed));
                }
            }
        } else if !out.is_empty() {
            let until = Until::after(Instant::now(), side.body_idle);
            match write_until(w, client, out, until).await {
                Some((r, o)) => {
                    out = o;
                    out.clear();
                    r
                }
                None => {
                    w.put_buf(ubuf);
                    return Err(after(ErrorKind::ClientClosed));
                }
            }
        } else {
            Ok(0)
        };
        match write {
            Ok(n) => progress.wrote(n),
            Err(_) => {
                w.put_buf(ubuf);
                w.put_buf(out);
                return Err(after(ErrorKind::ClientClosed));
            }
        }
        if step.done {
            break;
        }
        if from + step.consumed < ubuf.len() {
            // A coded body takes its input a step at a time: the rest before reading more.
            from += step.consumed;
            continue;
        }
        ubuf.clear();
        from = 0;
        if ubuf.capacity() < BULK_BUF_SIZE {
            // More than a buffer's worth: move the rest in bulk buffers, fewer operations.
            w.put_buf(std::mem::replace(&mut ubuf, w.bulk.get()));
        }
        let until = Until::after(Instant::now(), side.body_idle);
        let Some((res, buf)) = read_until(w, up, ubuf, until).await else {
            return Err(after(ErrorKind::Timeout));
        };
        ubuf = buf;
        match res {
            Ok(n) if n > 0 => {}
            _ if state.ends_at_close() => {
                if let Err(kind) = state.finish(&mut out) {
                    w.put_buf(ubuf);
                    w.put_buf(out);
                    return Err(after(kind));
                }
                reusable = false;
                if !out.is_empty() {
                    let until = Until::after(Instant::now(), side.body_idle);
                    match write_until(w, client, out, until).await {
                        Some((Ok(n), o)) => {
                            out = o;
                            progress.wrote(n);
                        }
                        r => {
                            if let Some((_, o)) = r {
                                w.put_buf(o);
                            }
                            w.put_buf(ubuf);
                            return Err(after(ErrorKind::ClientClosed));
                        }
                    }
                }
                break;
            }
            _ => {
                w.put_buf(ubuf);
                w.put_buf(out);
                return Err(after(ErrorKind::UpstreamReset));
            }
        }
    }
    w.put_buf(ubuf);
    w.put_buf(out);
    Ok(Relayed {
        status: resp.status,
        client_keep_alive: !cf.close,
        upstream_reusable: reusable,
        head_at,
    })
}

/// The upstream stopped taking the request body (it may still answer).
fn upstream_gone() -> Error {
    Error::upstream(ErrorKind::UpstreamReset, Retry::Never)
}

/// Streams the request body from the client (starting with the bytes in `cbuf[*cstart..]`) to
/// the upstream. On success `cbuf[*cstart..]` holds whatever followed the body (a pipelined
/// request).
#[allow(clippy::too_many_arguments)]
pub(super) async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    w: &Worker,
    client: &mut R,
    cbuf: &mut Option<Vec<u8>>,
    cstart: &mut usize,
    up: &mut W,
    framing: Framing,
    max_body: Option<u64>,
    idle: Duration,
    sent: &Cell<u64>,
) -> Result<(), Error> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut forward = ChunkedForward::default();
    let chunked = framing == Framing::Chunked;
    if framing == Framing::None || framing == Framing::Close {
        return Ok(());
    }
    let mut buf = cbuf.take().unwrap_or_else(|| w.bufs.get());
    // What goes up when chunk extensions or trailers had to be left out (taken when needed).
    let mut edited: Option<Vec<u8>> = None;
    loop {
        let avail = &buf[*cstart..];
        let (take, done, direct) = if chunked {
            let out = edited.get_or_insert_with(Vec::new);
            out.clear();
            let p = match forward.feed(avail, out, false) {
                Ok(p) => p,
                Err(_) => {
                    *cbuf = Some(buf);
                    return Err(Error::downstream(ErrorKind::BadRequest));
                }
            };
            if max_body.is_some_and(|m| forward.data_len() > m) {
                *cbuf = Some(buf);
                return Err(Error::downstream(ErrorKind::BodyTooLarge));
            }
            (p.consumed, p.done, p.direct)
        } else {
            let n = (avail.len() as u64).min(left) as usize;
            left -= n as u64;
            (n, left == 0, true)
        };
        if take > 0 && direct {
            // An upstream that stops reading without closing must not hold the client forever.
            let write = up.write_all(buf.slice(*cstart..*cstart + take));
            let (r, b) = monoio::select! {
                r = write => r,
                _ = monoio::time::sleep(idle) => return Err(upstream_gone()),
            };
            buf = b.into_inner();
            if r.is_err() {
                *cbuf = Some(buf);
                return Err(upstream_gone());
            }
            sent.set(sent.get() + take as u64);
        } else if let Some(out) = edited.take().filter(|o| !o.is_empty()) {
            let n = out.len() as u64;
            let write = up.write_all(out);
            let (r, o) = monoio::select! {
                r = write => r,
                _ = monoio::time::sleep(idle) => return Err(upstream_gone()),
            };
            edited = Some(o);
            if r.is_err() {
                *cbuf = Some(buf);
                return Err(upstream_gone());
            }
            sent.set(sent.get() + n);
        }
        *cstart += take;
        if done {
            *cbuf = Some(buf);
            return Ok(());
        }
        buf.clear();
        *cstart = 0;
        if buf.capacity() < BULK_BUF_SIZE {
            // The body streams: move it in bulk buffers, fewer operations.
            w.put_buf(std::mem::replace(&mut buf, w.bulk.get()));
        }
        let until = Until::after(Instant::now(), idle);
        let Some((res, b)) = read_until(w, client, buf, until).await else {
            return Err(Error::downstream(ErrorKind::HeadTimeout));
        };
        buf = b;
        match res {
            Ok(n) if n > 0 => {}
            _ => {
                *cbuf = Some(buf);
                return Err(Error::downstream(ErrorKind::ClientClosed));
            }
        }
    }
}

/// How a full-duplex exchange ended.
pub(super) enum DuplexEnd<T> {
    /// The relay ended; `pumped` tells whether the whole request body went up.
    Relayed { relay: T, pumped: bool },
    /// The request body failed on the client's side; the relay was abandoned.
    PumpFailed(Error),
    /// No response head within `timeout` after the request body ended.
    TimedOut,
}

/// Runs the body pump and the response relay together. A client-side pump failure before the
/// answer abandons the relay; an upstream-side one lets the relay finish (the upstream may have
/// answered early). An answer that completes before the request body goes on pumping the body,
/// as the upstream may still read it: then both connections stay usable. The route timeout runs
/// from the end of the request body until the response head.
pub(super) async fn duplex(
    pump: impl Future<Output = Result<(), Error>>,
    relay: impl Future<Output = Result<Relayed, Error>>,
    started: &Cell<bool>,
    timeout: Duration,
) -> DuplexEnd<Result<Relayed, Error>> {
    let mut pump = pin!(pump);
    let mut relay = pin!(relay);
    let mut pumped: Option<bool> = None;
    let mut relayed: Option<Result<Relayed, Error>> = None;
    let mut timer: Option<std::pin::Pin<Box<monoio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if relayed.is_none() {
            if let Poll::Ready(r) = relay.as_mut().poll(cx) {
                // An answer that failed, or that ends the upstream connection: the upstream will
                // not read the rest of the body, so stop here (the client connection closes).
                if r.as_ref().map_or(true, |r| !r.upstream_reusable) {
                    return Poll::Ready(DuplexEnd::Relayed {
                        relay: r,
                        pumped: pumped == Some(true),
                    });
                }
                relayed = Some(r);
            }
        }
        if pumped.is_none() {
            if let Poll::Ready(r) = pump.as_mut().poll(cx) {
                match r {
                    Ok(()) => pumped = Some(true),
                    Err(e) if e.side == Side::Upstream => pumped = Some(false),
                    // The client got its whole answer already: just end the connection.
                    Err(_) if relayed.is_some() => pumped = Some(false),
                    Err(e) => return Poll::Ready(DuplexEnd::PumpFailed(e)),
                }
                timer = Some(Box::pin(monoio::time::sleep(timeout)));
            }
        }
        if let (Some(p), true) = (pumped, relayed.is_some()) {
            if let Some(relay) = relayed.take() {
                return Poll::Ready(DuplexEnd::Relayed { relay, pumped: p });
            }
        }
        if let Some(t) = timer.as_mut() {
            if !started.get() && t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(DuplexEnd::TimedOut);
            }
        }
        Poll::Pending
    })
    .await
}
