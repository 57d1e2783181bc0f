//! TCP listeners: each connection is balanced to an endpoint of the listener's cluster and bytes
//! are copied both ways until both sides have closed (half-close is passed on), or until no byte
//! has moved either way for the idle timeout.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller, Splitable,
};
use monoio::net::TcpStream;

use crate::buf::{BUF_SIZE, SMALL_BUF_SIZE};
use crate::error::ErrorKind;
use crate::metrics::{ListenerStats, Outcome};
use crate::policy::{Caller, Verdict};
use crate::snapshot::{Protocol, TcpRoute};
use crate::sni::{Hello, MAX_HELLO, NameMap, server_name};
use crate::transport::Transport;
use crate::worker::state::Worker;
use crate::worker::view::View;

/// Serves one connection on a TCP listener.
pub(crate) async fn serve(
    w: Rc<Worker>,
    view: Rc<View>,
    li: usize,
    client: TcpStream,
    peer: std::net::SocketAddr,
) {
    let Protocol::Tcp {
        route,
        idle_timeout,
        hello_timeout,
    } = &view.snapshot.listeners[li].protocol
    else {
        return;
    };
    let idle_timeout = *idle_timeout;
    let lview = &view.listeners[li];
    let _guard = w.connection(lview.stats.clone());
    let who = Caller {
        identity: None,
        source: peer.ip(),
        port: view.snapshot.listeners[li].bind.port(),
        egress: false,
    };
    if !admit_connection(&w, &view, li, &who) {
        return;
    }
    let mut client = client;
    // Routing by server name reads the ClientHello first; its bytes go upstream before the rest.
    let (ci, first) = match route {
        TcpRoute::Cluster(ci) => (*ci, None),
        TcpRoute::Sni(names) => {
            let Some((ci, first)) = read_hello(&w, &mut client, names, *hello_timeout).await else {
                lview.stats.local_reply(ErrorKind::NoRoute);
                return;
            };
            (ci, Some(first))
        }
    };
    let stats = lview.stats.clone();
    let client = Transport::Plain(client);
    let via = Via {
        idle_timeout,
        tls: false,
    };
    to_cluster(&w, view, ci, client, first, via, &stats).await;
}

/// How [`to_cluster`] reaches the endpoints.
pub(crate) struct Via {
    /// Close after this long with no byte either way.
    pub idle_timeout: Duration,
    /// Over the cluster's TLS, when it has one (opaque traffic between sidecars). A `tcp`
    /// listener sends plain TCP: the bytes are the client's own (TLS passes through it).
    pub tls: bool,
}

/// Access policies for a connection taken as TCP: only identity and source apply, and a denied
/// one is closed before anything is read from it. False: denied (counted).
pub(crate) fn admit_connection(w: &Worker, view: &View, li: usize, who: &Caller<'_>) -> bool {
    let policies = &view.snapshot.policies;
    if policies.is_empty() {
        return true;
    }
    let name = &view.snapshot.listeners[li].name;
    let verdict = policies.check_connection(who, |i| {
        w.metrics
            .denied(name, policies.name_of(Verdict::Deny(i)), true);
    });
    if verdict != Verdict::Allow {
        w.metrics.denied(name, policies.name_of(verdict), false);
        view.listeners[li].stats.local_reply(ErrorKind::Denied);
        return false;
    }
    true
}

/// Balances a connection over cluster `ci`'s endpoints (a connect that fails is tried on
/// another endpoint, once: nothing was sent yet), sends `first` (bytes already read from the
/// client), then copies bytes both ways until both sides have closed.
pub(crate) async fn to_cluster(
    w: &Rc<Worker>,
    view: Rc<View>,
    ci: usize,
    client: Transport,
    first: Option<Vec<u8>>,
    via: Via,
    stats: &ListenerStats,
) {
    let idle_timeout = via.idle_timeout;
    let tls = if via.tls {
        view.snapshot.clusters[ci].tls.clone()
    } else {
        None
    };
    let started = Instant::now();
    let cluster = &view.snapshot.clusters[ci];
    let cv = &view.clusters[ci];
    // A connection that cannot be made is tried on another endpoint, once: nothing was sent.
    let mut avoid = None;
    let (ep, up) = loop {
        let now = Instant::now();
        let Some(ep) = cv.pick(w.draw(), cluster, now, avoid.as_ref()) else {
            stats.local_reply(ErrorKind::NoEndpoint);
            return;
        };
        let in_flight = ep.begin(now);
        let connect = connect_via(ep.addr, tls.as_ref());
        match monoio::time::timeout(cluster.connect_timeout, connect).await {
            Ok(Some(s)) => break ((ep, in_flight), s),
            _ => {
                let now = Instant::now();
                cv.book(
                    w.draw(),
                    cluster,
                    &ep,
                    Outcome::ConnectFailed,
                    now,
                    now - started,
                );
                drop(in_flight);
                if avoid.is_some() || cv.members.len() < 2 {
                    stats.local_reply(ErrorKind::ConnectFailed);
                    return;
                }
                avoid = Some(ep);
            }
        }
    };
    let (ep, _in_flight) = ep;
    let mut up = up;
    if let Some(first) = first {
        let (r, b) = up.write_all(first).await;
        w.put_buf(b);
        if r.is_err() {
            return;
        }
    }
    let connected = Instant::now();
    let rtt = connected.saturating_duration_since(started);
    // A long-lived stream does not hold its config version: the outcome is booked against the
    // cluster as the view then in force has it.
    let name = cluster.name.clone();
    drop(view);

    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let (ra, rb) = tunnel(
        w,
        (&mut cr, &mut cw),
        (&mut ur, &mut uw),
        idle_timeout,
        None,
    )
    .await;
    // The connect time is the latency sample: a TCP stream has no request/answer to time.
    let outcome = if ra.is_ok() && rb.is_ok() {
        Outcome::Success
    } else {
        Outcome::Reset
    };
    let view = w.view();
    if let Some(ci) = view.snapshot.cluster_index(&name) {
        view.clusters[ci].book(
            w.draw(),
            &view.snapshot.clusters[ci],
            &ep,
            outcome,
            connected,
            rtt,
        );
    }
}

/// A connection to `addr`, over `tls` (offering no application protocol) when given.
async fn connect_via(
    addr: std::net::SocketAddr,
    tls: Option<&crate::tls::ClientTls>,
) -> Option<Transport> {
    let s = TcpStream::connect_addr(addr).await.ok()?;
    let _ = s.set_nodelay(true);
    match tls {
        None => Some(Transport::Plain(s)),
        Some(tls) => tls.connect_opaque(s).await.0.map(Transport::Tls),
    }
}

/// Passes a connection through to `dst` (where an application was going, outside the mesh) and
/// copies bytes both ways until both sides have closed. False: `dst` could not be reached.
pub(crate) async fn passthrough(
    w: &Worker,
    client: TcpStream,
    dst: std::net::SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> bool {
    let up = match monoio::time::timeout(connect_timeout, connect_via(dst, None)).await {
        Ok(Some(s)) => s,
        _ => return false,
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let _ = tunnel(
        w,
        (&mut cr, &mut cw),
        (&mut ur, &mut uw),
        idle_timeout,
        None,
    )
    .await;
    true
}

/// Reads the connection's ClientHello and picks the cluster its server name routes to. `None`:
/// not TLS, too slow, closed, or a name no entry (and no default) takes. The bytes read are
/// returned to be sent upstream first.
async fn read_hello(
    w: &Worker,
    client: &mut TcpStream,
    names: &NameMap<usize>,
    timeout: Duration,
) -> Option<(usize, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut buf = w.bufs.get();
    let mut scratch = Vec::new();
    loop {
        match server_name(&buf, &mut scratch) {
            Hello::Incomplete => {}
            Hello::Tls(name) => {
                let ci = names.get(name).copied();
                return match ci {
                    Some(ci) => Some((ci, buf)),
                    None => {
                        w.put_buf(buf);
                        None
                    }
                };
            }
            Hello::NotTls => {
                // Not TLS, or no hello the proxy can read: only a default takes it.
                return match names.default {
                    Some(ci) => Some((ci, buf)),
                    None => {
                        w.put_buf(buf);
                        None
                    }
                };
            }
        }
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HELLO + 5 * 8 {
                w.put_buf(buf);
                return None;
            }
            buf.reserve(buf.len());
        }
        let len = buf.len();
        let read = client.read(buf.slice_mut(len..));
        let (res, slice) = monoio::select! {
            r = read => r,
            _ = crate::sleep_until(deadline) => {
                return None;
            }
        };
        buf = slice.into_inner();
        match res {
            Ok(n) if n > 0 => {}
            _ => {
                w.put_buf(buf);
                return None;
            }
        }
    }
}

/// Bytes moved by a tunnel, each way.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// From the client to the upstream.
    pub up: Cell<u64>,
    /// From the upstream to the client.
    pub down: Cell<u64>,
}

/// Copies bytes both ways between a client and an upstream until both sides have closed
/// (each end is passed on as a half-close), one side fails, or no byte has moved either way
/// for `idle`. Holds a small buffer per direction while traffic is light.
pub(crate) async fn tunnel<CR, CW, UR, UW>(
    w: &Worker,
    (cr, cw): (&mut CR, &mut CW),
    (ur, uw): (&mut UR, &mut UW),
    idle: Duration,
    moved: Option<&Moved>,
) -> (Result<CopyEnd, CopyError>, Result<CopyEnd, CopyError>)
where
    CR: CancelableAsyncReadRent,
    CW: AsyncWriteRent,
    UR: CancelableAsyncReadRent,
    UW: AsyncWriteRent,
{
    let last = Cell::new(Instant::now());
    let unused = Moved::default();
    let moved = moved.unwrap_or(&unused);
    let a = copy(w, cr, uw, &last, idle, &moved.up);
    let b = copy(w, ur, cw, &last, idle, &moved.down);
    both_or_first_failure(a, b).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyEnd {
    /// The reader closed its side (its end was passed on as a half-close).
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyError {
    Io,
    Idle,
}

/// Copies from `r` to `wr` until EOF (then shuts `wr` down for writing).
async fn copy<R: CancelableAsyncReadRent, W: AsyncWriteRent>(
    w: &Worker,
    r: &mut R,
    wr: &mut W,
    last: &Cell<Instant>,
    idle: Duration,
    moved: &Cell<u64>,
) -> Result<CopyEnd, CopyError> {
    // Reads wait with a small buffer while traffic is light, so idle connections hold little.
    let mut buf = w.small.get();
    loop {
        let (res, b) = read_idle(r, buf, last, idle).await?;
        buf = b;
        let n = match res {
            Ok(0) => {
                let _ = wr.shutdown().await;
                w.put_buf(buf);
                return Ok(CopyEnd::Eof);
            }
            Ok(n) => n,
            Err(_) => return Err(CopyError::Io),
        };
        last.set(Instant::now());
        moved.set(moved.get() + n as u64);
        let full = n == buf.capacity();
        let (res, b) = wr.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return Err(CopyError::Io);
        }
        last.set(Instant::now());
        // Grow to a pooled buffer while reads fill the buffer; shrink back when traffic is
        // light so that an idle connection holds little.
        if full && buf.capacity() < BUF_SIZE {
            w.put_buf(std::mem::replace(&mut buf, w.bufs.get()));
        } else if !full && buf.capacity() >= BUF_SIZE && n < SMALL_BUF_SIZE {
            w.put_buf(std::mem::replace(&mut buf, w.small.get()));
        }
        buf.clear();
    }
}

/// A read that gives up once nothing has moved either way for `idle`. Uses a cancelable read
/// so that bytes arriving as the timer fires are never lost.
async fn read_idle<R: CancelableAsyncReadRent>(
    r: &mut R,
    buf: Vec<u8>,
    last: &Cell<Instant>,
    idle: Duration,
) -> Result<(std::io::Result<usize>, Vec<u8>), CopyError> {
    let mut buf = buf;
    loop {
        let canceller = Canceller::new();
        let mut read = std::pin::pin!(r.cancelable_read(buf, canceller.handle()));
        let wait = (last.get() + idle).saturating_duration_since(Instant::now());
        let (res, b) = monoio::select! {
            r = &mut read => r,
            _ = monoio::time::sleep(wait) => {
                let _ = canceller.cancel();
                read.await
            }
        };
        match res {
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                buf = b;
                if last.get().elapsed() >= idle {
                    return Err(CopyError::Idle);
                }
            }
            res => return Ok((res, b)),
        }
    }
}

/// Runs both directions; returns when both ended, or as soon as one fails.
async fn both_or_first_failure<A, B>(
    a: A,
    b: B,
) -> (Result<CopyEnd, CopyError>, Result<CopyEnd, CopyError>)
where
    A: std::future::Future<Output = Result<CopyEnd, CopyError>>,
    B: std::future::Future<Output = Result<CopyEnd, CopyError>>,
{
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let mut ra = None;
    let mut rb = None;
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(r) = a.as_mut().poll(cx) {
                ra = Some(r);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(r) = b.as_mut().poll(cx) {
                rb = Some(r);
            }
        }
        match (ra, rb) {
            (Some(x), Some(y)) => std::task::Poll::Ready((x, y)),
            (Some(Err(e)), None) => std::task::Poll::Ready((Err(e), Err(e))),
            (None, Some(Err(e))) => std::task::Poll::Ready((Err(e), Err(e))),
            _ => std::task::Poll::Pending,
        }
    })
    .await
}
