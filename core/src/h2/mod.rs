//! HTTP/2 from clients (RFC 9113): over TLS when ALPN agrees on `h2`, and in cleartext when a
//! connection on an `http` listener starts with the HTTP/2 preface (prior knowledge).
//!
//! The h2 crate handles framing, HPACK, stream states, flow control, SETTINGS and GOAWAY. Each
//! stream is then served by the same path as an HTTP/1.1 request ([`crate::proxy`]): its head
//! is written as HTTP/1.1 from the HTTP/2 fields, its body is read from the stream (chunk-coded
//! when the client gave no length, trailers included), and the HTTP/1.1 answer the proxy
//! writes becomes HEADERS, DATA and trailers ([`stream`]). Routing, policies, rate limits,
//! retries, deadlines, metrics, access logs and tap therefore hold for HTTP/2 as they do for
//! HTTP/1.1.
//!
//! Abuse is bounded per connection: at most [`MAX_STREAMS`] streams at once; the receive
//! windows bound what a client can make the proxy hold; a client that resets streams before
//! they are answered faster than [`RESETS_PER_SECOND`] (after a burst of [`RESET_BURST`]:
//! rapid reset, CVE-2023-44487), or makes the proxy reset more than [`MAX_LOCAL_RESETS`]
//! streams for its protocol errors ("MadeYouReset"), gets GOAWAY `ENHANCE_YOUR_CALM`; header
//! blocks (CONTINUATION frames included) are cut at the listener's `max_request_head_bytes`.

pub(crate) mod client;
pub(crate) mod hpack;
pub(crate) mod io;
pub(crate) mod stream;

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};

use self::stream::{H2Stream, SendState, is_connection_specific};
use crate::io::Io;
use crate::metrics::{H2Event, ListenerStats};
use crate::proxy::{Client, serve_stream};
use crate::ratelimit::{Bucket, RateLimit};
use crate::snapshot::HttpLimits;
use crate::worker::Worker;

/// The client connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may have open at once (nginx's default is 128, Envoy's 100 for upstreams).
pub const MAX_STREAMS: u32 = 128;
/// A stream's receive window: what a client may send ahead on one stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: what a client may send ahead on all its streams together,
/// the most body data the proxy holds for one connection.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams the proxy may reset for a client's protocol errors before it sends GOAWAY.
pub const MAX_LOCAL_RESETS: usize = 100;
/// Client resets of streams not yet answered: allowed at once, then per second.
pub const RESET_BURST: f64 = 200.0;
pub const RESETS_PER_SECOND: f64 = 50.0;
/// How often an idle connection checks its idle timeout and drain.
const TICK: Duration = Duration::from_secs(1);

/// Whether `data` could be the start of the preface.
pub(crate) fn may_be_preface(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    data[..n] == PREFACE[..n]
}

/// What the streams of one connection share.
struct Conn {
    stats: Rc<ListenerStats>,
    peer: SocketAddr,
    tls: bool,
    identity: Option<Rc<str>>,
    /// Streams being served.
    active: Cell<u32>,
    /// When the last stream ended (the start of an idle period).
    idle_since: Cell<Instant>,
    /// Resets of unanswered streams the client may still make.
    resets: RefCell<Bucket>,
    /// The client reset too many: the connection ends with ENHANCE_YOUR_CALM.
    abusive: Cell<bool>,
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
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(limits.max_request_head.min(u32::MAX as usize) as u32)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_send_buffer_size(64 * 1024);
    let handshake = builder.handshake::<_, Bytes>(io::PollIo::new(io, read));
    let mut conn = match monoio::time::timeout(limits.request_head_timeout, handshake).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    stats.h2(H2Event::Connection);
    let now = Instant::now();
    let shared = Rc::new(Conn {
        stats,
        peer,
        tls,
        identity,
        active: Cell::new(0),
        idle_since: Cell::new(now),
        resets: RefCell::new(Bucket::new(
            RateLimit {
                rps: RESETS_PER_SECOND,
                burst: RESET_BURST,
            },
            now,
        )),
        abusive: Cell::new(false),
    });
    let mut closing = false;
    let mut aborted = false;
    let tick = TICK.min(limits.idle_timeout);
    // One timer for the connection, armed again each time it fires: a timeout around each
    // accept would put a timer in the wheel and take it out again for every stream.
    let mut ticker = std::pin::pin!(monoio::time::sleep(tick));
    loop {
        let next = poll_fn(|cx| {
            if let Poll::Ready(r) = conn.poll_accept(cx) {
                return Poll::Ready(Ok(r));
            }
            ready!(ticker.as_mut().poll(cx));
            Poll::Ready(Err(()))
        })
        .await;
        match next {
            Ok(Some(Ok((req, respond)))) => {
                let (w2, l2) = (w.clone(), listener.clone());
                let active = Active::new(shared.clone());
                shared.stats.h2(H2Event::Stream);
                // Contained as connections are: a bug in one stream ends that stream only.
                monoio::spawn(crate::listener::contained(stream(
                    w2, l2, req, respond, active,
                )));
            }
            Ok(Some(Err(e))) => {
                if !aborted {
                    let calm = e.reason() == Some(Reason::ENHANCE_YOUR_CALM);
                    shared
                        .stats
                        .h2(if calm { H2Event::Abuse } else { H2Event::Error });
                }
                break;
            }
            Ok(None) => break,
            Err(()) => {
                ticker.as_mut().reset(monoio::time::Instant::now() + tick);
                let idle = shared.active.get() == 0
                    && shared.idle_since.get().elapsed() >= limits.idle_timeout;
                if !closing && (idle || w.draining()) {
                    // GOAWAY naming the last stream: open streams finish, no new ones start.
                    conn.graceful_shutdown();
                    shared.stats.h2(H2Event::Goaway);
                    closing = true;
                }
            }
        }
        if shared.abusive.get() && !aborted {
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            shared.stats.h2(H2Event::Abuse);
            aborted = true;
            closing = true;
        }
    }
    // Frames still owed (GOAWAY, the last DATA) go out before the connection closes.
    let _ = monoio::time::timeout(TICK, poll_fn(|cx| conn.poll_closed(cx))).await;
}

/// Serves one stream: as an HTTP/1.1 request through the proxy, unless the client resets it.
async fn stream(
    w: Rc<Worker>,
    listener: Arc<str>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    active: Active,
) {
    let conn = &active.0;
    let (parts, body) = req.into_parts();
    let state = SendState::new(respond);
    if parts.method == http::Method::CONNECT {
        // Tunnels over HTTP/2 (RFC 9113 section 8.5, RFC 8441) are not offered.
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::NOT_IMPLEMENTED;
        let mut st = state.borrow_mut();
        let _ = st.send_response(r);
    } else {
        let mut head = w.bufs.get();
        let chunked = write_head(&parts, body.is_end_stream(), &mut head);
        let head_request = parts.method == http::Method::HEAD;
        let s = H2Stream::new(
            body,
            chunked,
            state.clone(),
            head_request,
            conn.identity.clone(),
        );
        let mut c = Client::for_stream(Io::H2(Box::new(s)), conn.peer, conn.tls, head);
        let reset = poll_fn(|cx| state.borrow_mut().poll_reset(cx));
        monoio::select! {
            _ = serve_stream(&w, &listener, &mut c) => {}
            _ = reset => {
                // The client gave up on a stream the proxy was still serving: the request
                // (and its upstream exchange) stops here.
                if !state.borrow().finished {
                    conn.stats.h2(H2Event::ClientReset);
                    let mut bucket = conn.resets.borrow_mut();
                    if bucket.take(Instant::now()).is_err() {
                        conn.abusive.set(true);
                    }
                }
            }
        }
        c.release(&w);
    }
}

/// A stream counted as active on its connection until dropped (also when its task ends in a
/// panic, so that the connection can still go idle).
struct Active(Rc<Conn>);

impl Active {
    fn new(conn: Rc<Conn>) -> Active {
        conn.active.set(conn.active.get() + 1);
        Active(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let conn = &self.0;
        let left = conn.active.get().saturating_sub(1);
        conn.active.set(left);
        if left == 0 {
            conn.idle_since.set(Instant::now());
        }
    }
}

/// Writes an HTTP/2 request's head as HTTP/1.1 into `out` (RFC 9113 section 8.3.1: the
/// authority becomes Host; cookies are joined; connection-specific fields cannot be there, h2
/// refuses them). Returns whether the body is presented chunk-coded: the stream has a body and
/// no content-length.
fn write_head(p: &http::request::Parts, end_stream: bool, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(p.method.as_str().as_bytes());
    out.push(b' ');
    match p.uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = p.uri.authority();
    if let Some(a) = authority {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut has_length = false;
    let mut cookies = 0;
    for (name, value) in &p.headers {
        let n = name.as_str();
        // The mark another ringmesh puts on requests it upgraded is for this hop only.
        if (authority.is_some() && n == "host")
            || n == "te"
            || n == client::ORIGINAL_PROTOCOL
            || is_connection_specific(n.as_bytes())
        {
            continue;
        }
        if n == "cookie" {
            cookies += 1;
            continue;
        }
        has_length |= n == "content-length";
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, v) in p.headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !end_stream && !has_length;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

pub use client::drive_client;

/// Fuzzing: the server side of HTTP/2 over `input` as the client's bytes, cut into reads at
/// `cuts`. Every stream's head goes through the HTTP/1.1 translation and is answered; the
/// output is thrown away. Runs without a runtime: the input never makes it wait.
pub fn drive_server(input: &[u8], cuts: &[usize]) {
    let io = MemIo {
        input,
        at: 0,
        cuts,
        cut: 0,
    };
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(64 * 1024)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS));
    let server = async move {
        let Ok(mut conn) = builder.handshake::<_, Bytes>(io).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let (parts, body) = req.into_parts();
            let mut head = Vec::new();
            let chunked = write_head(&parts, body.is_end_stream(), &mut head);
            let mut req = crate::http1::RequestHead::default();
            let status = match req.parse(&head, 64 * 1024) {
                Ok(Some(_)) => 200,
                _ => 400,
            };
            assert!(!chunked || req.framing == crate::http1::Framing::Chunked || status == 400);
            let mut r = http::Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
            let _ = respond.send_response(r, true);
        }
    };
    let mut server = std::pin::pin!(server);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..100_000 {
        if server.as_mut().poll(&mut cx).is_ready() {
            return;
        }
    }
}

/// The client's bytes in memory, for [`drive_server`].
struct MemIo<'a> {
    input: &'a [u8],
    at: usize,
    cuts: &'a [usize],
    cut: usize,
}

impl tokio::io::AsyncRead for MemIo<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let step = this
            .cuts
            .get(this.cut)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        this.cut += 1;
        let n = (this.input.len() - this.at).min(step).min(out.remaining());
        out.put_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for MemIo<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// HTTP/2 over loopback for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;

    use super::*;

    /// Runs `f` on a runtime of the kind a worker runs.
    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Listens on loopback, hands the first stream of the first HTTP/2 connection to
    /// `serve`, then drives that connection until it closes; where it listens.
    pub(crate) fn serve_one<F, Fut>(serve: F) -> SocketAddr
    where
        F: FnOnce(http::Request<RecvStream>, SendResponse<Bytes>) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        monoio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(io::PollIo::new(Io::Plain(s), Vec::new()))
                .await
                .unwrap();
            let (req, respond) = conn.accept().await.unwrap().unwrap();
            serve(req, respond).await;
            let _ = poll_fn(|cx| conn.poll_closed(cx)).await;
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: http::Request<()>, end: bool) -> (String, bool) {
        let (parts, _) = req.into_parts();
        let mut out = Vec::new();
        let chunked = write_head(&parts, end, &mut out);
        (String::from_utf8(out).unwrap(), chunked)
    }

    #[test]
    fn heads_become_http1() {
        let req = http::Request::post("http://api.example/v1/x?q=1")
            .header("cookie", "a=1")
            .header("x-id", "7")
            .header("cookie", "b=2")
            .header("host", "ignored.example")
            .body(())
            .unwrap();
        let (h, chunked) = head(req, false);
        assert!(chunked);
        assert_eq!(
            h,
            "POST /v1/x?q=1 HTTP/1.1\r\nhost: api.example\r\nx-id: 7\r\ncookie: a=1; b=2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let req = http::Request::put("http://a/")
            .header("content-length", "3")
            .body(())
            .unwrap();
        let (h, chunked) = head(req, false);
        assert!(!chunked);
        assert!(h.contains("content-length: 3\r\n"));
        let (h, chunked) = head(http::Request::get("http://a/").body(()).unwrap(), true);
        assert!(!chunked);
        assert_eq!(h, "GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        assert!(may_be_preface(b"PRI * HT"));
        assert!(!may_be_preface(b"POST / HTTP/1.1"));
    }
}
