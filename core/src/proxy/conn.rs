//! One client connection, served as HTTP/1.1 request after request (handed to the HTTP/2 side
//! when it speaks HTTP/2): waiting for the next request, reading its head, and handing it to the
//! pipeline ([`super::pipeline`]) while the connection may stay open.
//!
//! Requests on a connection are handled in order, so pipelined requests are answered in order.
//! While a connection is idle it holds no buffer: it waits for readiness, then takes one from
//! the worker's pool.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use super::client::Client;
use super::pipeline::{exchange, listener_of};
use super::reply::refuse_head;
use crate::buf::SMALL_BUF_SIZE;
use crate::error::ErrorKind;
use crate::head::RequestHead;
use crate::idle::Fired;
use crate::io::Io;
use crate::metrics::Handshake;
use crate::sleep_until;
use crate::snapshot::HttpLimits;
use crate::transport::Transport;
use crate::worker::state::Worker;

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
pub(crate) async fn serve(w: Rc<Worker>, listener: Arc<str>, accepted: Box<Accepted>) {
    // An HTTP/2 connection's state is boxed apart: it must not weigh on every HTTP/1.1
    // connection's future.
    if let Some(h) = serve_http1(&w, &listener, accepted).await {
        let Handoff {
            stream,
            read,
            peer,
            destination,
            limits,
            stats,
            guard,
        } = *h;
        let service = super::h2::StreamService {
            w: w.clone(),
            listener,
            peer,
            tls: stream.tls().is_some(),
            destination,
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

/// A connection as a listener accepted it.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// On an outbound listener: where the application's connection was going.
    pub destination: Option<SocketAddr>,
    /// Served in cleartext although the listener has TLS (a client outside the mesh, on an
    /// inbound listener's permissive port).
    pub plaintext: bool,
}

/// A connection that turned out to speak HTTP/2, handed over with what was read of it.
struct Handoff {
    stream: Transport,
    read: Vec<u8>,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    limits: HttpLimits,
    stats: Rc<crate::metrics::ListenerStats>,
    guard: crate::worker::state::ConnGuard,
}

/// Serves the connection as HTTP/1.1 until it closes, or returns it when it speaks HTTP/2 (ALPN
/// `h2`, or the preface in cleartext).
async fn serve_http1(
    w: &Rc<Worker>,
    listener: &Arc<str>,
    accepted: Box<Accepted>,
) -> Option<Box<Handoff>> {
    let Accepted {
        stream,
        peer,
        destination,
        plaintext,
    } = *accepted;
    // Only the client lives across the waits below: what else this needs is looked up again.
    let (guard, tls, stats, timeout) = {
        let view = w.view();
        let (li, limits) = listener_of(&view, listener)?;
        let l = &view.listeners[li];
        let guard = w.connection(l.stats.clone());
        (
            guard,
            l.tls.clone().filter(|_| !plaintext),
            l.stats.clone(),
            limits.request_head_timeout,
        )
    };
    let mut c = {
        let stream = upgrade(stream, tls, stats, timeout).await?;
        if stream.is_h2() {
            return handoff(w, listener, stream, Vec::new(), (peer, destination), guard);
        }
        let mut c = Client::new(Io::Wire(stream), peer);
        c.destination = destination;
        c
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
        return handoff(w, listener, stream, read, (c.peer, c.destination), guard);
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
    (peer, destination): (SocketAddr, Option<SocketAddr>),
    guard: crate::worker::state::ConnGuard,
) -> Option<Box<Handoff>> {
    let view = w.view();
    let (li, limits) = listener_of(&view, listener)?;
    Some(Box::new(Handoff {
        stream,
        read,
        peer,
        destination,
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
    if let Some(r) = collect_ahead(c).await {
        match r.res {
            Ok(n) if n > 0 => {
                c.buf = Some(r.buf);
                return true;
            }
            // The idle set ended the read ahead (its clock ran from the request's start): the
            // wait below starts from the exchange's end.
            _ if r.fired.is_some() => w.small.put(r.buf),
            _ => {
                w.small.put(r.buf);
                return false;
            }
        }
    }
    // Cold: the reader and its descriptor go until the connection is hot again.
    c.ahead = None;
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
        // Hot after this request: the next one's read may be posted while it is served.
        let hot = gap < HOT_GAP && c.served >= 1;
        if !handle(w, listener, c, hot).await {
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
            Wait::Data => {
                gap = Duration::ZERO;
                start_ahead(w, c, limits.idle_timeout);
            }
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
    if c.ahead.as_ref().is_some_and(super::ahead::Ahead::armed) {
        c.release(w);
        if let Some(r) = collect_ahead(c).await {
            match r.res {
                Ok(n) if n > 0 => {
                    c.buf = Some(r.buf);
                    return Wait::Data;
                }
                // Ended by the idle set, whose clock ran from the request's start: the read
                // below waits as long as it would have after the exchange.
                _ if r.fired.is_some() => w.small.put(r.buf),
                _ => {
                    w.small.put(r.buf);
                    return Wait::Closed;
                }
            }
        }
    }
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
async fn handle(w: &Rc<Worker>, listener: &Arc<str>, c: &mut Client, hot: bool) -> bool {
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
        if let Some(a) = c.ahead.as_ref().filter(|_| hot) {
            // Nothing else reads the client while this exchange goes on: no body, no upgrade,
            // no bytes of a next request already here.
            let alone = req.framing == crate::head::Framing::None
                && req.upgrade.is_none()
                && req.method != crate::head::Method::Connect
                && req.keep_alive
                && c.data().len() == req.head_len
                && !w.draining();
            if alone {
                a.arm();
            }
        }
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

/// Starts the reader of a hot plain-TCP connection, once.
fn start_ahead(w: &Rc<Worker>, c: &mut Client, idle_timeout: Duration) {
    if c.ahead.is_some() {
        return;
    }
    if let Some(Io::Wire(Transport::Plain(s))) = c.stream.as_ref() {
        c.ahead = super::ahead::Ahead::start(w, s, SHED_AFTER, idle_timeout).ok();
    }
}

/// The next request's bytes the reader read ahead, if it was armed.
async fn collect_ahead(c: &mut Client) -> Option<super::ahead::Read> {
    let r = c.ahead.as_ref()?.collect().await?;
    c.start = 0;
    Some(r)
}
