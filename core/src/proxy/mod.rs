//! One HTTP/1.1 client connection, request by request: read a head, route it, pick an endpoint,
//! forward, relay the answer, and go again while the connection may stay open.
//!
//! ```text
//! serve ─ read_head ─ exchange ─ route::resolve ─ balance::pick ─ forward::send ─ body::relay
//!                        └─ local_reply (errors: error::ErrorKind → status, ringmesh-error)
//! ```
//!
//! Requests on a connection are handled in order, so pipelined requests are answered in order.
//! While a connection is idle it holds no buffer: it waits for readiness, then takes one from the
//! worker's pool. Every answer the proxy makes itself goes through [`local_reply`].

mod body;
mod forward;
mod h2;

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller,
};
use monoio::net::TcpStream;

use crate::head::reply::LocalReply;
use crate::io::{HeadsTo, Io};
use crate::transport::Transport;

use crate::access_log::{self, Sink};
use crate::buf::{BUF_SIZE, SMALL_BUF_SIZE};
use crate::error::ErrorKind;
use crate::head::{Framing, RequestHead, ResponseHead, Version, host_of};
use crate::http1::encode;
use crate::idle::Fired;
use crate::metrics::Handshake;
use crate::policy::{Caller, Verdict};
use crate::route::{Action, RequestView};
use crate::sleep_until;
use crate::snapshot::{HttpLimits, Protocol, defaults};
use crate::trace::Trace;
use crate::worker::state::Worker;
use crate::worker::view::View;

/// A client connection and its read buffer.
pub(crate) struct Client {
    /// `None` only while split for a streaming body, or after a failure that ends it.
    stream: Option<Io>,
    /// Bytes read and not yet consumed are `buf[start..]`; `None` while idle.
    buf: Option<Vec<u8>>,
    start: usize,
    /// The client's IP address as text, for X-Forwarded-For.
    ip: [u8; 48],
    ip_len: usize,
    /// Cancels the pending read when the idle set fires.
    canceller: Option<Canceller>,
    /// Requests answered on this connection.
    served: u32,
    /// The current request's client was already sent `100 Continue`.
    continued: bool,
    peer: SocketAddr,
    /// The connection is TLS (X-Forwarded-Proto: https).
    tls: bool,
    /// When the last exchange ended: the start of the wait for the next request.
    ended: Instant,
    /// The client sent the HTTP/2 preface: the connection is served as HTTP/2 from here.
    h2_preface: bool,
    /// The current request is a gRPC call: the proxy's own answers take gRPC's form.
    grpc: bool,
}

impl Client {
    fn new(stream: Io, peer: SocketAddr) -> Client {
        let mut ip = [0u8; 48];
        let mut cursor = &mut ip[..];
        let _ = write!(cursor, "{}", peer.ip());
        let ip_len = 48 - cursor.len();
        Client {
            tls: stream.tls().is_some(),
            stream: Some(stream),
            buf: None,
            start: 0,
            ip,
            ip_len,
            canceller: None,
            peer,
            ended: Instant::now(),
            served: 0,
            continued: false,
            h2_preface: false,
            grpc: false,
        }
    }

    /// An HTTP/2 stream, as one request whose head's bytes are in `buf` (its body is read
    /// after them).
    fn for_stream(stream: Io, peer: SocketAddr, tls: bool, buf: Vec<u8>) -> Client {
        let mut c = Client::new(stream, peer);
        c.tls = tls;
        c.buf = Some(buf);
        c
    }

    /// Consumes a request that is refused unsent, when its body is already here, so that the
    /// connection can go on. False when the body is not all here: it would have to be read and
    /// thrown away, so the connection closes instead.
    fn skip_request(&mut self, req: &RequestHead) -> bool {
        let body = match req.framing {
            Framing::None => 0,
            Framing::Length(n) if (self.data().len() - req.head_len) as u64 >= n => n as usize,
            _ => return false,
        };
        self.start += req.head_len + body;
        true
    }

    /// Makes the whole chunked body at `data()[head_len..][..len]` what may be forwarded, in
    /// the buffer: chunk extensions and trailer fields that may not cross are left out, and
    /// what follows the body moves behind the result (which may be longer than what came: a
    /// trailer line is rewritten as `name: value`). Returns its new length. Called only on a
    /// body the decoder has taken whole, so it cannot fail; were it to, nothing of the body
    /// would be forwarded as it came.
    fn forwardable_chunked(&mut self, head_len: usize, len: usize) -> usize {
        let Some(buf) = self.buf.as_mut() else {
            return len;
        };
        let at = self.start + head_len;
        let mut out = Vec::new();
        match crate::http1::ChunkedForward::default().feed(&buf[at..at + len], &mut out, false) {
            Ok(f) if f.direct => len,
            Ok(_) => {
                let n = out.len();
                buf.splice(at..at + len, out);
                n
            }
            // Unreachable (the body was validated): forward an empty final chunk, not it.
            Err(_) => {
                buf.splice(at..at + len, b"0\r\n\r\n".iter().copied());
                5
            }
        }
    }

    /// The client's verified identity (mTLS). Not known while the stream is split.
    fn identity(&self) -> Option<&str> {
        match &self.stream {
            Some(Io::H2(s)) => s.recv.identity.as_deref(),
            Some(io) => io.tls().and_then(|s| s.identity()),
            None => None,
        }
    }

    /// `http` or `https`, for X-Forwarded-Proto.
    fn proto(&self) -> &'static [u8] {
        if self.tls { b"https" } else { b"http" }
    }

    /// Unconsumed bytes.
    #[inline]
    fn data(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[self.start..])
    }

    #[inline]
    fn ip(&self) -> &[u8] {
        &self.ip[..self.ip_len]
    }

    /// Writes `out` to the client; the buffer comes back either way.
    async fn write(&mut self, out: Vec<u8>) -> (bool, Vec<u8>) {
        match self.stream.as_mut() {
            Some(s) => {
                let (r, out) = s.write_all(out).await;
                (r.is_ok(), out)
            }
            None => (false, out),
        }
    }

    pub(crate) fn release(&mut self, w: &Worker) {
        if let Some(b) = self.buf.take() {
            w.put_buf(b);
        }
        self.start = 0;
    }

    /// Makes room for `total` unconsumed bytes, moving them to the front of a large enough
    /// buffer (a pooled one up to [`BUF_SIZE`], grown past it).
    fn make_room(&mut self, w: &Worker, total: usize) {
        let mut buf = self.buf.take().unwrap_or_else(|| w.small.get());
        if self.start > 0 {
            buf.drain(..self.start);
            self.start = 0;
        }
        if total > buf.capacity() {
            if total <= BUF_SIZE && buf.capacity() < BUF_SIZE {
                let mut large = w.bufs.get();
                large.extend_from_slice(&buf);
                w.put_buf(std::mem::replace(&mut buf, large));
            } else {
                buf.reserve(total - buf.len());
            }
        }
        self.buf = Some(buf);
    }
}

/// How long a hot connection waits for its next request with a small read pending, before it
/// gives the buffer back and waits for readiness holding nothing.
const SHED_AFTER: Duration = Duration::from_millis(250);

/// Serves one accepted connection until it closes.
///
/// Between requests a connection is a small future holding the socket and an entry in the
/// worker's idle set, waiting for readiness with no buffer. A *hot* connection, whose requests
/// follow each other closely, instead waits with a read into a 1 KiB buffer already issued (one
/// io_uring operation per request instead of two), for at most [`SHED_AFTER`]. The state a
/// request needs (routing, forwarding, relaying) lives in a box only while requests are handled.
///
/// The accepted socket comes boxed: arguments of an async fn keep their place in its state for
/// its whole life, and this one lives as long as the connection.
pub(crate) async fn serve(
    w: Rc<Worker>,
    listener: Arc<str>,
    accepted: Box<(TcpStream, SocketAddr)>,
) {
    // An HTTP/2 connection's state is boxed apart: it must not weigh on every HTTP/1.1
    // connection's future.
    if let Some(h) = serve_http1(&w, &listener, accepted).await {
        let Handoff {
            stream,
            read,
            peer,
            limits,
            stats,
            guard,
        } = *h;
        let service = h2::StreamService {
            w: w.clone(),
            listener,
            peer,
            tls: stream.tls().is_some(),
        };
        let limits = crate::h2::drive::server::Limits {
            max_head: limits.max_request_head,
            idle_timeout: limits.idle_timeout,
            handshake_timeout: limits.request_head_timeout,
        };
        Box::pin(crate::h2::drive::server::serve(
            service, stream, read, limits, stats,
        ))
        .await;
        drop(guard);
    }
}

/// A connection that turned out to speak HTTP/2, handed over with what was read of it.
struct Handoff {
    stream: Transport,
    read: Vec<u8>,
    peer: SocketAddr,
    limits: HttpLimits,
    stats: Rc<crate::metrics::ListenerStats>,
    guard: crate::worker::state::ConnGuard,
}

/// Serves the connection as HTTP/1.1 until it closes, or returns it when it speaks HTTP/2 (ALPN
/// `h2`, or the preface in cleartext).
async fn serve_http1(
    w: &Rc<Worker>,
    listener: &Arc<str>,
    accepted: Box<(TcpStream, SocketAddr)>,
) -> Option<Box<Handoff>> {
    let (stream, peer) = *accepted;
    // Only the client lives across the waits below: what else this needs is looked up again.
    let (guard, tls, stats, timeout) = {
        let view = w.view();
        let (li, limits) = listener_of(&view, listener)?;
        let l = &view.listeners[li];
        let guard = w.connection(l.stats.clone());
        (
            guard,
            l.tls.clone(),
            l.stats.clone(),
            limits.request_head_timeout,
        )
    };
    let mut c = {
        let stream = upgrade(stream, tls, stats, timeout).await?;
        if stream.is_h2() {
            return handoff(w, listener, stream, Vec::new(), peer, guard);
        }
        Client::new(Io::Wire(stream), peer)
    };
    loop {
        let waited = Instant::now();
        if !wait_cold(w, &mut c, listener).await {
            break;
        }
        // Everything a request needs lives in this box, kept for as long as requests follow
        // each other closely.
        if !Box::pin(active(w, listener, &mut c, waited.elapsed())).await {
            break;
        }
    }
    if c.h2_preface {
        let Some(Io::Wire(stream)) = c.stream.take() else {
            return None;
        };
        let read = c.data().to_vec();
        c.release(w);
        return handoff(w, listener, stream, read, c.peer, guard);
    }
    c.release(w);
    if let Some(Io::Wire(Transport::Tls(s))) = c.stream.as_mut() {
        // close_notify, so that the client can tell the end from a truncation. Boxed: rare
        // and short-lived.
        let _ = Box::pin(monoio::time::timeout(CLOSE_NOTIFY_WAIT, s.shutdown())).await;
    }
    drop(guard);
    None
}

fn handoff(
    w: &Worker,
    listener: &Arc<str>,
    stream: Transport,
    read: Vec<u8>,
    peer: SocketAddr,
    guard: crate::worker::state::ConnGuard,
) -> Option<Box<Handoff>> {
    let view = w.view();
    let (li, limits) = listener_of(&view, listener)?;
    Some(Box::new(Handoff {
        stream,
        read,
        peer,
        limits,
        stats: view.listeners[li].stats.clone(),
        guard,
    }))
}

/// How long a closing TLS connection may take to send its close_notify.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// The connection as the listener serves it: TLS after a handshake (within `timeout`), else
/// as accepted. `None`: the handshake failed (counted in `stats`).
async fn upgrade(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    stats: Rc<crate::metrics::ListenerStats>,
    timeout: Duration,
) -> Option<Transport> {
    let Some(config) = tls else {
        return Some(Transport::Plain(stream));
    };
    // Boxed: the handshake's state is large and short-lived.
    let (tls, result) = Box::pin(async move {
        monoio::select! {
            r = crate::tls::accept(stream, config) => r,
            _ = monoio::time::sleep(timeout) => (None, Handshake::Timeout),
        }
    })
    .await;
    stats.handshake(result);
    tls.map(Transport::Tls)
}

/// A keep-alive connection whose requests come closer than this waits for the next one with a
/// read already issued.
const HOT_GAP: Duration = Duration::from_millis(50);

/// Waits for the client's next bytes holding no buffer. False: closed, idle timeout, drain.
async fn wait_cold(w: &Worker, c: &mut Client, listener: &Arc<str>) -> bool {
    c.release(w);
    let Some((_, limits)) = listener_of(&w.view(), listener) else {
        return false;
    };
    let Some(stream) = c.stream.as_ref() else {
        return false;
    };
    let Some(socket) = stream.socket_to_wait_on() else {
        return true;
    };
    monoio::select! {
        r = socket.readable(false) => r.is_ok(),
        _ = w.idle.wait(Instant::now(), None, limits.idle_timeout) => false,
    }
}

/// Handles requests while they come back to back; true when the connection turns cold.
async fn active(w: &Rc<Worker>, listener: &Arc<str>, c: &mut Client, mut gap: Duration) -> bool {
    loop {
        if !handle(w, listener, c).await {
            return false;
        }
        // Hot only once two requests came close together: a client that sends one request
        // and goes quiet never holds a buffer while it waits.
        if gap >= HOT_GAP || c.served < 2 {
            return true;
        }
        let Some((_, limits)) = listener_of(&w.view(), listener) else {
            return false;
        };
        // Data before the shed deadline: still hot.
        match read_small(w, c, limits.idle_timeout, c.ended).await {
            Wait::Data => gap = Duration::ZERO,
            Wait::Shed => return true,
            Wait::Closed => return false,
        }
    }
}

enum Wait {
    Data,
    Shed,
    Closed,
}

/// A cancelable read into a small buffer, ended by data or by the idle set.
async fn read_small(w: &Worker, c: &mut Client, idle_timeout: Duration, now: Instant) -> Wait {
    let mut buf = match c.buf.take() {
        Some(b) if b.capacity() == SMALL_BUF_SIZE => b,
        Some(b) => {
            w.put_buf(b);
            w.small.get()
        }
        None => w.small.get(),
    };
    buf.clear();
    c.start = 0;
    let Some(stream) = c.stream.as_mut() else {
        return Wait::Closed;
    };
    let cancel = c.canceller.get_or_insert_with(Canceller::new);
    let mut read = std::pin::pin!(stream.cancelable_read(buf, cancel.handle()));
    let mut fired = None;
    let (res, buf) = monoio::select! {
        r = &mut read => r,
        f = w.idle.wait(now, Some(SHED_AFTER), idle_timeout) => {
            fired = Some(f);
            // Cancel, then wait for the read to end: its buffer comes back, and bytes that
            // won the race are kept.
            if let Some(old) = c.canceller.take() {
                c.canceller = Some(old.cancel());
            }
            read.await
        }
    };
    match res {
        Ok(n) if n > 0 => {
            c.buf = Some(buf);
            Wait::Data
        }
        Err(_) if fired == Some(Fired::Shed) => {
            w.small.put(buf);
            Wait::Shed
        }
        _ => {
            w.small.put(buf);
            Wait::Closed
        }
    }
}

/// Handles the requests that have arrived; true when the connection waits for more.
async fn handle(w: &Rc<Worker>, listener: &Arc<str>, c: &mut Client) -> bool {
    let mut heads = w.take_heads();
    let keep = loop {
        let Some((_, limits)) = listener_of(&w.view(), listener) else {
            break false;
        };
        let (req, resp) = &mut heads;
        c.grpc = false;
        match read_head(w, c, req, &limits).await {
            Head::Ready => {}
            Head::Closed => break false,
            Head::H2 => {
                c.h2_preface = true;
                break false;
            }
            Head::Error(kind) => {
                refuse_head(w, listener, c, kind).await;
                break false;
            }
        }
        let view = w.view();
        let Some(li) = view.listener_index(listener) else {
            break false;
        };
        c.served = c.served.saturating_add(1);
        c.continued = false;
        c.grpc = req.grpc;
        if !exchange(w, &view, li, c, req, resp).await || w.draining() {
            break false;
        }
        if c.data().is_empty() {
            break true;
        }
    };
    w.put_heads(heads);
    keep
}

/// Answers a request whose head is refused (malformed, too large, too slow); the connection
/// ends with it.
async fn refuse_head(w: &Worker, listener: &Arc<str>, c: &mut Client, kind: ErrorKind) {
    let started = Instant::now();
    let view = w.view();
    let lv = view.listener_index(listener).map(|li| &view.listeners[li]);
    if let Some(lv) = lv {
        lv.stats.local_reply(kind);
        lv.unrouted.record(kind.status(), Duration::ZERO);
    }
    // Nothing of the head is trusted: the line says only what went wrong.
    let blank = RequestHead::default();
    let log = lv.and_then(|lv| lv.log.as_ref());
    let fallback;
    let names: &[u8] = match lv {
        Some(lv) => &lv.unrouted_names,
        None => {
            fallback = access_log::names(listener, None, None);
            &fallback
        }
    };
    let seen = Seen::new(w, &[], &blank, (listener, names), log, None, None, started);
    let note = forward::Note::default();
    if kind != ErrorKind::ClientClosed {
        let (_, n) = local_reply(w, c, kind, false, true).await;
        note.progress.bytes_out.set(n);
    }
    seen.report(w, c, kind.status(), Some(kind), started, Some(&note), None);
}

fn listener_of(view: &View, name: &Arc<str>) -> Option<(usize, HttpLimits)> {
    let li = view.listener_index(name)?;
    match &view.snapshot.listeners[li].protocol {
        Protocol::Http(h) => Some((li, h.limits)),
        Protocol::Tcp { .. } => None,
    }
}

enum Head {
    Ready,
    Closed,
    /// The HTTP/2 preface, in cleartext (prior knowledge).
    H2,
    Error(ErrorKind),
}

/// Reads until `req` holds a complete head at `c.data()`; the first bytes are already there.
async fn read_head(w: &Worker, c: &mut Client, req: &mut RequestHead, limits: &HttpLimits) -> Head {
    let mut deadline: Option<Instant> = None;
    loop {
        let data = c.data();
        if c.served == 0 && !c.tls && !data.is_empty() && crate::h2::may_be_preface(data) {
            if data.len() >= crate::h2::PREFACE.len() {
                return Head::H2;
            }
        } else if !data.is_empty() {
            match req.parse(data, limits.max_request_head) {
                Ok(Some(_)) => {
                    // Policies, routes and the upstream all see the normalized path.
                    let start = c.start;
                    let Some(buf) = c.buf.as_mut() else {
                        return Head::Closed;
                    };
                    return match req.normalize_path(&mut buf[start..], &limits.paths) {
                        Ok(()) => Head::Ready,
                        Err(kind) => Head::Error(kind),
                    };
                }
                Ok(None) => {}
                Err(kind) => return Head::Error(kind),
            }
        }
        let want = (c.data().len() + 1).max(SMALL_BUF_SIZE);
        c.make_room(w, want.min(limits.max_request_head + 1));
        let (Some(stream), Some(buf)) = (c.stream.as_mut(), c.buf.take()) else {
            return Head::Closed;
        };
        let len = buf.len();
        let read = stream.read(buf.slice_mut(len..));
        let (res, slice) = monoio::select! {
            r = read => r,
            _ = sleep_until(*deadline.get_or_insert_with(|| Instant::now() + limits.request_head_timeout)) => {
                return Head::Error(ErrorKind::HeadTimeout);
            }
        };
        c.buf = Some(slice.into_inner());
        match res {
            Ok(0) | Err(_) => {
                // A client that leaves mid-head gets no answer; one that leaves between requests
                // is the normal end of a keep-alive connection.
                return if c.data().is_empty() {
                    Head::Closed
                } else {
                    Head::Error(ErrorKind::ClientClosed)
                };
            }
            Ok(_) => {}
        }
    }
}

/// The parts of a request that routing looks at.
struct RouteInput<'a> {
    buf: &'a [u8],
    req: &'a RequestHead,
    host: &'a [u8],
}

impl RequestView for RouteInput<'_> {
    fn host(&self) -> &[u8] {
        self.host
    }
    fn path(&self) -> &[u8] {
        // An absolute-form target without a path (`http://a`) goes upstream as `/`, so that is
        // what is matched too.
        match self.req.route_path.get(self.buf) {
            b"" if !self.is_connect() => b"/",
            p => p,
        }
    }
    fn method(&self) -> &[u8] {
        self.req.method_span.get(self.buf)
    }
    fn has_header(&self, name: &[u8], value: &[u8]) -> bool {
        self.req.headers.iter().any(|h| {
            h.name.get(self.buf).eq_ignore_ascii_case(name) && h.value.get(self.buf) == value
        })
    }
    fn is_connect(&self) -> bool {
        self.req.method == crate::head::Method::Connect
    }
}

/// Handles one request whose head is at `c.data()`. Returns whether the connection stays open.
async fn exchange(
    w: &Rc<Worker>,
    view: &Rc<View>,
    li: usize,
    c: &mut Client,
    req: &RequestHead,
    resp: &mut ResponseHead,
) -> bool {
    let started = Instant::now();
    let lspec = &view.snapshot.listeners[li];
    let lview = &view.listeners[li];
    let Protocol::Http(http) = &lspec.protocol else {
        return false;
    };
    let head_request = req.method == crate::head::Method::Head;

    if let (Some(max), Framing::Length(n)) = (http.limits.max_request_body, req.framing) {
        if n > max {
            return refuse(
                w,
                c,
                req,
                &lspec.name,
                lview,
                ErrorKind::BodyTooLarge,
                started,
            )
            .await;
        }
    }
    let policies = &view.snapshot.policies;
    if !policies.is_empty() {
        let buf = c.data();
        let host = req.authority.map_or(&b""[..], |a| host_of(a.get(buf)));
        let input = RouteInput { buf, req, host };
        let who = Caller {
            identity: c.identity(),
            source: c.peer.ip(),
        };
        let verdict = policies.check(&who, Some(&input), |i| {
            let name = policies.name_of(Verdict::Deny(i));
            w.metrics.denied(&lspec.name, name, true);
            if w.audit_log_allowed(started) {
                let path = String::from_utf8_lossy(req.path.get(buf));
                tracing::info!(
                    listener = &*lspec.name,
                    policy = name,
                    client = %c.peer,
                    identity = who.identity.unwrap_or("-"),
                    path = %path,
                    "audit: a policy would deny this request"
                );
            }
        });
        if verdict != Verdict::Allow {
            w.metrics
                .denied(&lspec.name, policies.name_of(verdict), false);
            return refuse(w, c, req, &lspec.name, lview, ErrorKind::Denied, started).await;
        }
    }
    let route_index = {
        let buf = c.data();
        let host = req.authority.map_or(&b""[..], |a| host_of(a.get(buf)));
        http.routes.resolve(&RouteInput { buf, req, host })
    };
    let Some(ri) = route_index else {
        return refuse(w, c, req, &lspec.name, lview, ErrorKind::NoRoute, started).await;
    };
    let route = &http.routes.routes()[ri];
    let (target, ci) = match &route.action {
        Action::Cluster(ci) => (0, *ci),
        Action::Split(s) => {
            let t = s.pick(&mut lview.splits[ri].borrow_mut());
            (t, s.cluster(t))
        }
    };
    let route_target = &lview.routes[ri][target];
    let stats = &route_target.stats;
    if let Some(bucket) = lview.buckets.get(ri).and_then(Option::as_ref) {
        let taken = bucket.borrow_mut().take(started);
        if let Err(wait) = taken {
            let series = (&**stats, &*route_target.log_names);
            let kind = ErrorKind::RateLimited;
            return refuse_as(
                w,
                c,
                req,
                &lspec.name,
                lview,
                series,
                kind,
                started,
                Some(wait),
            )
            .await;
        }
    }
    let trace = {
        let buf = c.data();
        let tp = req.traceparent.map(|s| s.get(buf));
        let b3 = req.b3.map(|s| s.get(buf));
        w.with_rng(|r| Trace::continue_or_start(tp, b3, r))
    };
    let note = forward::Note::default();
    let cluster = &view.snapshot.clusters[ci];
    let exchange = forward::Exchange {
        worker: w,
        req,
        cluster,
        cv: &view.clusters[ci],
        retry: route.retry.as_ref(),
        stats,
        limits: &http.limits,
        timeout: route.timeout.unwrap_or(defaults::ROUTE_TIMEOUT),
        started,
        trace: &trace,
        note: &note,
    };
    let seen = Seen::new(
        w,
        c.data(),
        req,
        (&lspec.name, &route_target.log_names),
        lview.log.as_ref(),
        Some(&route.name),
        Some(&cluster.name),
        started,
    );
    match exchange.run(c, resp).await {
        Ok(done) => {
            let end = Instant::now();
            c.ended = end;
            stats.record(done.status, end - started);
            seen.report(w, c, done.status, None, end, Some(&note), Some(&trace));
            done.client_keep_alive
        }
        Err(fail) => {
            let end = Instant::now();
            c.ended = end;
            let status = fail.status_sent.unwrap_or_else(|| fail.kind.status());
            stats.record(status, end - started);
            let answered = fail.status_sent.is_some();
            if !answered {
                lview.stats.local_reply(fail.kind);
            }
            // The answer had begun (the connection is cut so the client sees it incomplete), or
            // the client is gone: nothing more to send.
            if answered || fail.kind == ErrorKind::ClientClosed {
                let (note, trace) = (Some(&note), Some(&trace));
                seen.report(w, c, status, Some(fail.kind), end, note, trace);
                return false;
            }
            let close = !fail.body_consumed || fail.kind.closes_connection() || !req.keep_alive;
            let sent = local_reply(w, c, fail.kind, head_request, close).await;
            note.progress
                .bytes_out
                .set(note.progress.bytes_out.get() + sent.1);
            seen.report(
                w,
                c,
                status,
                Some(fail.kind),
                end,
                Some(&note),
                Some(&trace),
            );
            sent.0 && !close
        }
    }
}

/// What the access log and tap are told about a request.
struct Seen<'a> {
    listener: &'a str,
    /// The access log's rendering of listener, route and cluster.
    names: &'a [u8],
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    started: Instant,
    /// Set when the request is logged (sampled in) or tapped, decided as it starts.
    watch: Option<Watch<'a>>,
}

/// A logged or tapped request: where its line goes, and the parts of its head the line quotes
/// (copied, as the client buffer moves on while the request is forwarded).
struct Watch<'a> {
    sink: Option<&'a Sink>,
    tapped: bool,
    head: Vec<u8>,
    method: usize,
    authority: Option<usize>,
}

impl<'a> Seen<'a> {
    /// Decides whether the request starting now is logged or tapped. Costs a random number
    /// when the log samples, an atomic load for the tap check, and nothing else unless
    /// watched.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn new(
        w: &Worker,
        buf: &[u8],
        req: &RequestHead,
        (listener, names): (&'a str, &'a [u8]),
        log: Option<&'a (Rc<Sink>, Option<u32>)>,
        route: Option<&'a str>,
        cluster: Option<&'a str>,
        started: Instant,
    ) -> Seen<'a> {
        let sink = log
            .filter(|(_, threshold)| {
                threshold.is_none_or(|t| w.with_rng(|r| (r.next_u64() as u32) < t))
            })
            .map(|(s, _)| &**s);
        let mut tapped = false;
        w.with_taps(|_| tapped = true);
        let watch = (sink.is_some() || tapped).then(|| {
            let mut head = w.bufs.get();
            head.extend_from_slice(req.method_span.get(buf));
            let method = head.len();
            let authority = req.authority.map(|a| {
                head.extend_from_slice(a.get(buf));
                head.len()
            });
            head.extend_from_slice(req.path.get(buf));
            Watch {
                sink,
                tapped,
                head,
                method,
                authority,
            }
        });
        Seen {
            listener,
            names,
            route,
            cluster,
            started,
            watch,
        }
    }

    /// Logs and taps a request that ended at `end`, if it is watched.
    #[allow(clippy::too_many_arguments)]
    fn report(
        self,
        w: &Worker,
        c: &Client,
        status: u16,
        error: Option<ErrorKind>,
        end: Instant,
        note: Option<&forward::Note>,
        trace: Option<&Trace>,
    ) {
        let Some(watch) = self.watch else {
            return;
        };
        let h = &watch.head;
        let (authority, path_from) = match watch.authority {
            Some(a) => (Some(&h[watch.method..a]), a),
            None => (None, watch.method),
        };
        let trace_id = trace.map(Trace::trace_id_hex);
        let entry = access_log::Entry {
            time: w.wall_time(end),
            names: self.names,
            endpoint: note.and_then(|n| n.endpoint.get()),
            method: &h[..watch.method],
            authority,
            path: &h[path_from..],
            status,
            bytes_in: note.map_or(0, |n| n.bytes_in.get()),
            bytes_out: note.map_or(0, |n| n.progress.bytes_out.get()),
            duration: end - self.started,
            upstream: note.and_then(|n| n.upstream.get()),
            retries: note.map_or(0, |n| n.retries.get()),
            error,
            trace_id: trace_id.as_ref(),
            client_identity: c.identity().map(str::as_bytes),
            client: c.peer,
        };
        if let Some(sink) = watch.sink {
            sink.log(&entry);
        }
        if watch.tapped {
            w.with_taps(|taps| {
                let mut line = Vec::new();
                for t in taps {
                    if t.filter.matches(self.listener, self.route, self.cluster) {
                        if line.is_empty() {
                            access_log::write_entry(&mut line, &entry, &mut Default::default());
                        }
                        t.offer(&line);
                    }
                }
            });
        }
        w.put_buf(watch.head);
    }
}

/// Answers a request with an error before any upstream is involved, counting it as unrouted.
async fn refuse(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    listener: &str,
    lview: &crate::worker::view::ListenerView,
    kind: ErrorKind,
    started: Instant,
) -> bool {
    let series = (&*lview.unrouted, &*lview.unrouted_names);
    refuse_as(w, c, req, listener, lview, series, kind, started, None).await
}

/// Answers a request with an error before any upstream is involved, counting it in `series`
/// (a route's stats and log names). `retry_after`: when the client may try again.
#[allow(clippy::too_many_arguments)]
async fn refuse_as(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    listener: &str,
    lview: &crate::worker::view::ListenerView,
    (stats, log_names): (&crate::metrics::RouteStats, &[u8]),
    kind: ErrorKind,
    started: Instant,
    retry_after: Option<Duration>,
) -> bool {
    let end = Instant::now();
    c.ended = end;
    stats.record(kind.status(), end - started);
    let log = lview.log.as_ref();
    let names = (listener, log_names);
    let seen = Seen::new(w, c.data(), req, names, log, None, None, started);
    let note = forward::Note::default();
    note.bytes_in.set(req.head_len as u64);
    let (keep, sent) = refuse_counted(w, c, req, lview, kind, retry_after).await;
    note.progress.bytes_out.set(sent);
    seen.report(w, c, kind.status(), Some(kind), end, Some(&note), None);
    keep
}

async fn refuse_counted(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    lview: &crate::worker::view::ListenerView,
    kind: ErrorKind,
    retry_after: Option<Duration>,
) -> (bool, u64) {
    lview.stats.local_reply(kind);
    let close = !c.skip_request(req) || kind.closes_connection() || !req.keep_alive;
    let head_request = req.method == crate::head::Method::Head;
    let (ok, sent) = local_reply_after(w, c, kind, head_request, close, retry_after).await;
    (ok && !close, sent)
}

/// Writes an answer the proxy makes itself. Returns whether it was written.
pub(crate) async fn local_reply(
    w: &Worker,
    c: &mut Client,
    kind: ErrorKind,
    head_request: bool,
    close: bool,
) -> (bool, u64) {
    local_reply_after(w, c, kind, head_request, close, None).await
}

/// [`local_reply`], saying when to retry (`Retry-After`, in whole seconds rounded up).
async fn local_reply_after(
    w: &Worker,
    c: &mut Client,
    kind: ErrorKind,
    head_request: bool,
    close: bool,
    retry_after: Option<Duration>,
) -> (bool, u64) {
    let reply = LocalReply {
        kind,
        grpc: c.grpc,
        head_request,
        retry_after: retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
    };
    if let Some(h2) = c.stream.as_mut().and_then(HeadsTo::h2) {
        return match h2.send_local_reply(&reply).await {
            Ok(n) => (true, n),
            Err(_) => (false, 0),
        };
    }
    let mut out = w.bufs.get();
    encode::local_reply(&mut out, &reply, close || w.draining());
    let len = out.len() as u64;
    let (ok, out) = c.write(out).await;
    w.put_buf(out);
    (ok, if ok { len } else { 0 })
}

/// Whether the client connection can stay open after this exchange, as the client sees it.
fn client_keeps_alive(w: &Worker, req: &RequestHead) -> bool {
    req.keep_alive && !w.draining()
}

/// Whether a client of this version can take interim (1xx) answers.
fn takes_interim(v: Version) -> bool {
    v != Version::Http10
}
