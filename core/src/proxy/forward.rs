//! One request to a cluster: pick an endpoint, take a pooled connection or connect, send the
//! request, read the answer's head, and either relay it or (when the route's retry policy, the
//! budget and the deadline allow) try again on another endpoint.
//!
//! A request whose body is in the buffer (no body, a small one, or up to 64 KiB when the route
//! retries) is sent in one write and can be sent again. A pooled connection that the upstream
//! had already closed, with no byte of an answer back, is retried at once on a fresh connection
//! whatever the method (the upstream never saw the request); that is not counted as a retry. A
//! request with a streaming body is sent full duplex ([`body::duplex`]) on a connection known to
//! be alive, and is only retried when the connection could not be made.
//!
//! Every try is booked on its endpoint: outcome counters, latency (a failure counts as a slow
//! answer), outlier ejection. Circuit breakers refuse at once with 503 `overflow`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use crate::io::Io;
use crate::transport::Transport;

use super::body::{self, ClientSide, DuplexEnd, Progress, PumpError, RelayError, Relayed, Until};
use super::{Client, client_keeps_alive};
use crate::breaker::{Active, ConnCount};
use crate::buf::BUF_SIZE;
use crate::cluster::ClusterView;
use crate::endpoint::{Endpoint, UpConn};
use crate::error::ErrorKind;
use crate::h2::drive::client::{H2Up, Slot};
use crate::head::{Forwarded, Framing, Method, RequestHead, ResponseHead, Version};
use crate::http1::ChunkedDecoder;
use crate::http1::encode;
use crate::io::HeadsTo;
use crate::metrics::{Limit, Outcome, RouteStats};
use crate::retry::{self, Failure, MAX_REPLAY_BODY, RetryPolicy};
use crate::snapshot::{Cluster, HttpLimits, UpstreamProtocol};
use crate::tcp::{Moved, tunnel};
use crate::worker::state::Worker;

/// A request on its way to a cluster.
pub(super) struct Exchange<'a> {
    pub worker: &'a Rc<Worker>,
    pub req: &'a RequestHead,
    pub cluster: &'a Cluster,
    pub cv: &'a ClusterView,
    pub retry: Option<&'a RetryPolicy>,
    pub stats: &'a RouteStats,
    pub limits: &'a HttpLimits,
    /// Route timeout: until the response head, counted from the end of the request.
    pub timeout: Duration,
    pub started: Instant,
    /// The trace context sent upstream.
    pub trace: &'a crate::trace::Trace,
    /// What happened, for the access log and tap.
    pub note: &'a Note,
}

/// What an exchange did, beyond its status: for the access log and tap.
#[derive(Debug, Default)]
pub(super) struct Note {
    /// The endpoint of the last try.
    pub endpoint: Cell<Option<std::net::SocketAddr>>,
    /// Tries after the first (not counting a resend after a stale pooled connection).
    pub retries: Cell<u32>,
    /// From the request sent to the answer's head, on the try that was relayed.
    pub upstream: Cell<Option<Duration>>,
    /// Bytes read from the client: head and body.
    pub bytes_in: Cell<u64>,
    /// The relay's progress.
    pub progress: Progress,
}

/// A request answered by the upstream.
pub(super) struct Done {
    pub status: u16,
    pub client_keep_alive: bool,
}

/// A request that failed.
#[derive(Debug)]
pub(super) struct Fail {
    pub kind: ErrorKind,
    /// The status already sent to the client, if the answer had begun.
    pub status_sent: Option<u16>,
    /// The request body was read in full from the client.
    pub body_consumed: bool,
}

impl Fail {
    fn before(kind: ErrorKind, body_consumed: bool) -> Fail {
        Fail {
            kind,
            status_sent: None,
            body_consumed,
        }
    }
}

/// One try of a buffered request.
struct Attempt<'a> {
    ep: &'a Endpoint,
    /// The body's length, in the client buffer after the head.
    body_len: usize,
    /// On a new connection, whatever the pool holds.
    fresh: bool,
    /// How long the answer's head may take.
    until: Until,
    deadline: Instant,
    /// When the try started.
    now: Instant,
}

/// How one try ended before its answer was relayed.
enum TryEnd {
    /// A final response head, ready to relay (or to drop for a retry).
    Head {
        up: UpConn,
        head: body::HeadIn,
        sent_at: Instant,
    },
    /// Failed; `stale`: a reused connection closed with no byte back (safe to send again).
    Failed {
        kind: ErrorKind,
        failure: Option<Failure>,
        stale: bool,
        sent_at: Instant,
    },
    /// A circuit breaker refused a new connection.
    Overflow(Limit),
    /// The client went away.
    ClientGone,
}

impl Exchange<'_> {
    /// Sends the request (and its retries) and relays the answer.
    pub async fn run(&self, c: &mut Client, resp: &mut ResponseHead) -> Result<Done, Fail> {
        let state = &self.cv.state;
        if state.active.get() >= self.cluster.limits.max_requests {
            state.overflowed(Limit::Requests);
            let skipped = c.skip_request(self.req);
            return Err(Fail::before(ErrorKind::Overflow, skipped));
        }
        let _active = Active::new(state);
        state.budget.borrow_mut().deposit(self.started);
        if self.req.method == Method::Connect {
            // Boxed: rare, and it lives as long as its tunnel.
            return Box::pin(self.connect_tunnel(c)).await;
        }
        match self.buffered_body(c).await {
            Ok(Some(len)) => self.send_whole(c, resp, len).await,
            // Boxed: the streaming path's state is large and rare; the common path stays small,
            // and so does the future moved into place for every request.
            Ok(None) => Box::pin(self.send_streaming(c, resp)).await,
            Err(f) => Err(f),
        }
    }

    /// When the answer is due: the route timeout, or the caller's deadline if shorter.
    fn deadline(&self) -> Instant {
        let t = self
            .req
            .deadline
            .map_or(self.timeout, |d| d.min(self.timeout));
        self.started + t
    }

    /// The length of the body when all of it is in the client buffer, reading more when it
    /// fits (up to 64 KiB when the route retries, so it can be sent again). `None`: it streams.
    async fn buffered_body(&self, c: &mut Client) -> Result<Option<usize>, Fail> {
        let head_len = self.req.head_len;
        let replay = self.retry.is_some();
        match self.req.framing {
            Framing::None | Framing::Close => Ok(Some(0)),
            Framing::Chunked => {
                let max = if replay { MAX_REPLAY_BODY } else { 0 };
                loop {
                    let mut d = ChunkedDecoder::new();
                    match d.feed(&c.data()[head_len..], |_| {}) {
                        Ok(p) if p.done => {
                            if self
                                .limits
                                .max_request_body
                                .is_some_and(|m| d.data_len() > m)
                            {
                                return Err(Fail::before(ErrorKind::BodyTooLarge, false));
                            }
                            return Ok(Some(c.forwardable_chunked(head_len, p.consumed)));
                        }
                        Ok(_) if c.data().len() - head_len < max => {
                            self.continue_if_expected(c).await?;
                            let have = c.data().len();
                            c.make_room(self.worker, (have + 4096).min(head_len + max + 1));
                            Box::pin(self.fill(c, have + 1)).await?;
                        }
                        Ok(_) => return Ok(None),
                        Err(_) => return Err(Fail::before(ErrorKind::BadRequest, false)),
                    }
                }
            }
            Framing::Length(n) => {
                let need = head_len as u64 + n;
                if (c.data().len() as u64) >= need {
                    return Ok(Some(n as usize));
                }
                // A small body still on its way: wait for it so the request can be replayed.
                let max = if replay {
                    (head_len + MAX_REPLAY_BODY) as u64
                } else {
                    BUF_SIZE as u64
                };
                if need > max || (self.req.expect_continue && !replay) {
                    return Ok(None);
                }
                self.continue_if_expected(c).await?;
                c.make_room(self.worker, need as usize);
                Box::pin(self.fill(c, need as usize)).await?;
                Ok(Some(n as usize))
            }
        }
    }

    /// A client waiting for `100 Continue` before its body gets one now.
    async fn continue_if_expected(&self, c: &mut Client) -> Result<(), Fail> {
        if !self.req.expect_continue || self.req.version == Version::Http10 || c.continued {
            return Ok(());
        }
        c.continued = true;
        if let Some(h2) = c.stream.as_mut().and_then(HeadsTo::h2) {
            return h2
                .send_continue()
                .map_err(|_| Fail::before(ErrorKind::ClientClosed, false));
        }
        let mut out = self.worker.bufs.get();
        out.extend_from_slice(encode::CONTINUE);
        let (ok, out) = c.write(out).await;
        self.worker.put_buf(out);
        if ok {
            Ok(())
        } else {
            Err(Fail::before(ErrorKind::ClientClosed, false))
        }
    }

    /// Reads until `c.data()` holds `need` bytes (which fit the buffer).
    async fn fill(&self, c: &mut Client, need: usize) -> Result<(), Fail> {
        let deadline = Instant::now() + self.limits.request_head_timeout;
        while c.data().len() < need {
            let (Some(stream), Some(buf)) = (c.stream.as_mut(), c.buf.take()) else {
                return Err(Fail::before(ErrorKind::ClientClosed, false));
            };
            let len = buf.len();
            let read = monoio::io::AsyncReadRent::read(
                stream,
                monoio::buf::IoBufMut::slice_mut(buf, len..),
            );
            let (res, slice) = monoio::select! {
                r = read => r,
                _ = crate::sleep_until(deadline) => {
                    return Err(Fail::before(ErrorKind::HeadTimeout, false));
                }
            };
            c.buf = Some(slice.into_inner());
            match res {
                Ok(n) if n > 0 => {}
                _ => return Err(Fail::before(ErrorKind::ClientClosed, false)),
            }
        }
        Ok(())
    }

    /// What the proxy adds to the request; `deadline` is passed on as the time left.
    /// What the upstream is told: `deadline` is passed on as the time left after `now`.
    fn forwarded<'b>(
        &'b self,
        c: &'b Client,
        ep: &'b Endpoint,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Forwarded<'b> {
        Forwarded {
            client_ip: c.ip(),
            proto: c.proto(),
            fallback_host: &ep.host,
            deadline: deadline.map(|d| d.saturating_duration_since(now)),
            trace: Some(self.trace),
            identity: c.identity(),
        }
    }

    fn client_side(&self) -> ClientSide {
        ClientSide {
            version: self.req.version,
            keep_alive: client_keeps_alive(self.worker, self.req),
            head_request: self.req.method == Method::Head,
            body_idle: self.limits.idle_timeout,
            upgrade: self.req.upgrade.is_some(),
        }
    }

    fn idempotent(&self) -> bool {
        self.req.method.is_idempotent()
    }

    /// A pooled connection (unless `fresh`), else a new one within the circuit breakers. For a
    /// cluster speaking HTTP/2, a stream on one of the endpoint's connections (a new connection
    /// when `fresh` or when they are all busy).
    async fn connection(
        &self,
        ep: &Endpoint,
        fresh: bool,
        deadline: Instant,
        must_be_alive: bool,
    ) -> Result<(UpConn, bool), TryEnd> {
        // Upgrades and CONNECT are HTTP/1.1 only: they go on an HTTP/1.1 connection whatever
        // the cluster speaks (another ringmesh takes both).
        let proto = if self.req.upgrade.is_some() || self.req.method == Method::Connect {
            UpstreamProtocol::Http1
        } else {
            self.cluster.protocol
        };
        let h2_only = matches!(proto, UpstreamProtocol::Http2 | UpstreamProtocol::Mesh);
        if !fresh && proto != UpstreamProtocol::Http1 {
            let slot = if h2_only {
                ep.h2.pick_or_wait().await
            } else {
                ep.h2.pick()
            };
            if let Some(slot) = slot {
                return Ok((self.h2_stream(slot), true));
            }
        }
        if !fresh && !h2_only {
            while let Some(s) = ep.checkout(self.started, self.cluster.pool_idle_timeout) {
                // A request that cannot be sent twice goes only on a connection seen alive: one
                // non-blocking peek, spent only on such requests.
                if must_be_alive && crate::sys::idle_connection_is_dead(s.stream.as_raw_fd()) {
                    continue;
                }
                return Ok((s, true));
            }
        }
        let state = &self.cv.state;
        let limits = &self.cluster.limits;
        if state.connections.get() >= limits.max_connections {
            return Err(TryEnd::Overflow(Limit::Connections));
        }
        if state.pending.get() >= limits.max_pending {
            return Err(TryEnd::Overflow(Limit::Pending));
        }
        state.pending.set(state.pending.get() + 1);
        let opening = h2_only.then(|| ep.h2.opening());
        let r = Box::pin(self.connect(ep, deadline, proto == UpstreamProtocol::Http1)).await;
        let r = match r {
            Ok(io) if proto.speaks_h2(&io) => {
                let slot = ep.h2.open(io, ConnCount::new(state.clone()));
                Ok(self.h2_stream(slot))
            }
            Ok(io) => Ok(UpConn::new(Io::Wire(io), state.clone())),
            Err(e) => Err(e),
        };
        drop(opening);
        state.pending.set(state.pending.get().saturating_sub(1));
        r.map(|c| (c, false))
    }

    fn h2_stream(&self, slot: Slot) -> UpConn {
        let tls = self.cluster.tls.is_some();
        let mesh = self.cluster.protocol == UpstreamProtocol::Mesh;
        UpConn::stream(Io::H2Up(Box::new(H2Up::new(slot, tls, mesh))))
    }

    /// A new connection within the connect timeout (and the request's deadline). `http1`: over
    /// TLS, offer only `http/1.1` by ALPN (an upgrade to a cluster that otherwise speaks HTTP/2).
    async fn connect(
        &self,
        ep: &Endpoint,
        deadline: Instant,
        http1: bool,
    ) -> Result<Transport, TryEnd> {
        let now = Instant::now();
        let budget = self
            .cluster
            .connect_timeout
            .min(deadline.saturating_duration_since(now));
        let failed = |kind| TryEnd::Failed {
            kind,
            failure: Some(Failure::Connect),
            stale: false,
            sent_at: now,
        };
        let open = crate::dial::dial(ep.addr, self.cluster.tls.as_ref(), http1);
        match monoio::time::timeout(budget, open).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(failed(ErrorKind::ConnectFailed)),
            Err(_) if deadline <= Instant::now() => Err(failed(ErrorKind::Timeout)),
            Err(_) => Err(failed(ErrorKind::ConnectFailed)),
        }
    }

    /// Sends the request's head to `up` as its protocol takes it, what the proxy adds with it
    /// ([`Forwarded`], with the deadline left after `now`): written into `out` for a byte
    /// stream, queued as HEADERS on an HTTP/2 stream.
    fn send_head(
        &self,
        c: &Client,
        up: &mut Io,
        ep: &Endpoint,
        deadline: Option<Instant>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let fwd = self.forwarded(c, ep, deadline, now);
        match up.h2_up() {
            Some(h2) => h2.write.send_head(self.req, c.data(), &fwd),
            None => {
                encode::request_head(out, c.data(), self.req, &fwd);
                Ok(())
            }
        }
    }

    /// One try of a buffered request: connect (or reuse), send it all, read the answer's head.
    async fn try_whole(&self, c: &mut Client, resp: &mut ResponseHead, t: &Attempt<'_>) -> TryEnd {
        let alive = !self.idempotent();
        let (mut up, reused) = match self.connection(t.ep, t.fresh, t.deadline, alive).await {
            Ok(x) => x,
            Err(end) => return end,
        };
        let w = self.worker;
        let mut out = w.bufs.get();
        let mut sent = self.send_head(c, &mut up.stream, t.ep, Some(t.deadline), t.now, &mut out);
        if sent.is_ok() {
            let head_len = self.req.head_len;
            out.extend_from_slice(&c.data()[head_len..head_len + t.body_len]);
            let (r, o) = up.stream.write_all(out).await;
            out = o;
            sent = r.map(|_| ());
        }
        w.put_buf(out);
        let sent_at = Instant::now();
        if sent.is_err() {
            let failure = if reused { None } else { Some(Failure::Reset) };
            return TryEnd::Failed {
                kind: ErrorKind::UpstreamReset,
                failure,
                stale: reused,
                sent_at,
            };
        }
        let Some(client) = c.stream.as_mut() else {
            return TryEnd::ClientGone;
        };
        let r = body::read_head(
            self.worker,
            &mut up.stream,
            client,
            resp,
            self.client_side(),
            t.until,
        )
        .await;
        match r {
            Ok(head) => TryEnd::Head { up, head, sent_at },
            Err(RelayError::Before {
                kind: ErrorKind::ClientClosed,
                ..
            }) => TryEnd::ClientGone,
            Err(RelayError::Before { kind, retryable }) => {
                // No byte back on a reused connection: the upstream had most likely closed it
                // before the request came. Only a request that is safe to repeat is sent again;
                // or, once, one an HTTP/2 upstream says it did not process (refused, or past
                // its GOAWAY), whatever its method.
                let refused = matches!(&up.stream, Io::H2Up(s) if s.refused());
                let stale = retryable && ((reused && self.idempotent()) || (refused && !t.fresh));
                let failure = match kind {
                    ErrorKind::UpstreamReset | ErrorKind::Timeout => Some(Failure::Reset),
                    _ => None,
                };
                TryEnd::Failed {
                    kind,
                    failure,
                    stale,
                    sent_at,
                }
            }
            Err(RelayError::After { kind }) => TryEnd::Failed {
                kind,
                failure: None,
                stale: false,
                sent_at,
            },
        }
    }

    /// The whole request is in the client buffer: tries until an answer, or until the retry
    /// policy, the budget or the deadline says stop.
    async fn send_whole(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
        body_len: usize,
    ) -> Result<Done, Fail> {
        let w = self.worker;
        let deadline = self.deadline();
        let mut retries = 0u32;
        let mut fresh = false;
        let mut avoid: Option<Rc<Endpoint>> = None;
        let mut retry_guard = RetryGuard(None);
        let result = loop {
            // The first try starts as the request does (read a moment ago, after its head).
            let now = if retries == 0 && !fresh {
                self.started
            } else {
                Instant::now()
            };
            if now >= deadline {
                break Err(Fail::before(ErrorKind::Timeout, true));
            }
            let Some(ep) = self.cv.pick(w.draw(), self.cluster, now, avoid.as_ref()) else {
                break Err(Fail::before(ErrorKind::NoEndpoint, true));
            };
            if retries > 0 && !self.can_finish(&ep, now, deadline) {
                break Err(Fail::before(ErrorKind::Timeout, true));
            }
            let _in_flight = ep.begin(now);
            self.note.endpoint.set(Some(ep.addr));
            self.note.retries.set(retries);
            let attempt = Attempt {
                ep: &ep,
                body_len,
                fresh,
                until: self.try_until(now, deadline),
                deadline,
                now,
            };
            let end = self.try_whole(c, resp, &attempt).await;
            fresh = false;
            let failure = match end {
                TryEnd::Head {
                    mut up,
                    head,
                    sent_at,
                } => {
                    let status = resp.status;
                    if status == 101 {
                        break Box::pin(self.switch(c, up, head, resp, &ep, sent_at)).await;
                    }
                    let rtt = head.at.saturating_duration_since(sent_at);
                    let failure = if status >= 500 {
                        Some(Failure::Status(status))
                    } else if self.req.grpc && grpc_unavailable(resp, &head.ubuf) {
                        Some(Failure::GrpcUnavailable)
                    } else {
                        None
                    };
                    if let Some(f) = failure.filter(|&f| {
                        time_for_another(head.at, deadline, rtt)
                            && self.should_retry(f, retries, &mut retry_guard)
                    }) {
                        let outcome = match f {
                            Failure::Status(_) => Outcome::Status5xx,
                            _ => Outcome::Reset,
                        };
                        self.book(&ep, outcome, head.at, rtt);
                        w.put_buf(head.ubuf);
                        // Its body is not read: the connection goes.
                        drop(up);
                        retries += 1;
                        self.backoff_and_count(retries).await;
                        avoid = Some(ep.clone());
                        continue;
                    }
                    let Some(client) = c.stream.as_mut() else {
                        break Err(Fail::before(ErrorKind::ClientClosed, true));
                    };
                    let r = body::relay_body(
                        w,
                        &mut up.stream,
                        client,
                        resp,
                        self.client_side(),
                        head,
                        &self.note.progress,
                    )
                    .await;
                    break self.finish(&ep, r, Some(up), true, sent_at, resp);
                }
                TryEnd::Failed { stale: true, .. } => {
                    // The pooled connection was dead: the same request, a fresh connection.
                    fresh = true;
                    avoid = None;
                    continue;
                }
                TryEnd::Failed {
                    kind,
                    failure,
                    sent_at,
                    ..
                } => {
                    let now = Instant::now();
                    let took = now.saturating_duration_since(sent_at);
                    self.book(&ep, outcome_of_kind(kind), now, took);
                    // A try cut by its timeout says the endpoint was slow, not how long the
                    // next one will take: only the next endpoint's usual latency counts then.
                    let judge = if kind == ErrorKind::Timeout {
                        Duration::ZERO
                    } else {
                        took
                    };
                    match failure {
                        Some(f)
                            if time_for_another(now, deadline, judge)
                                && self.should_retry(f, retries, &mut retry_guard) =>
                        {
                            retries += 1;
                            self.backoff_and_count(retries).await;
                            avoid = Some(ep.clone());
                            continue;
                        }
                        _ => kind,
                    }
                }
                TryEnd::Overflow(limit) => {
                    self.cv.state.overflowed(limit);
                    ErrorKind::Overflow
                }
                TryEnd::ClientGone => ErrorKind::ClientClosed,
            };
            break Err(Fail::before(failure, true));
        };
        drop(retry_guard);
        c.start += self.req.head_len + body_len;
        // Added to: a tunnel counts what went up it.
        self.note
            .bytes_in
            .set(self.note.bytes_in.get() + (self.req.head_len + body_len) as u64);
        result
    }

    /// Whether `ep` can still answer before the deadline: a retry is not started when the time
    /// left is under the endpoint's usual latency.
    fn can_finish(&self, ep: &Endpoint, now: Instant, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(now);
        let usual = Duration::from_nanos(ep.latency_ns(now) as u64).min(Duration::from_secs(1));
        left > usual.max(Duration::from_millis(1))
    }

    /// How long this try may wait for its answer's head.
    fn try_until(&self, now: Instant, deadline: Instant) -> Until {
        let left = deadline.saturating_duration_since(now);
        let t = match self.retry.and_then(|p| p.per_try_timeout) {
            Some(per_try) => per_try.min(left),
            None => left,
        };
        Until::after(now, t)
    }

    /// Whether a failure goes again: the policy covers it, attempts are left, the budget allows.
    fn should_retry<'s>(&'s self, f: Failure, retries: u32, guard: &mut RetryGuard<'s>) -> bool {
        let Some(policy) = self.retry else {
            return false;
        };
        if retries >= policy.attempts || !policy.covers(f, self.idempotent()) {
            return false;
        }
        let state = &self.cv.state;
        // The previous retry (if any) has ended: it no longer counts as in flight.
        guard.release();
        let allowed = state.budget.borrow_mut().withdraw(
            Instant::now(),
            state.active.get(),
            policy.budget_ratio,
            policy.min_per_second,
        );
        if !allowed {
            state.budget_refused.set(state.budget_refused.get() + 1);
            return false;
        }
        guard.0 = Some(self.cv);
        true
    }

    async fn backoff_and_count(&self, retries: u32) {
        self.stats.retried();
        let unit = self.worker.with_rng(|r| r.unit());
        let pause = retry::backoff(retries - 1, unit);
        if !pause.is_zero() {
            monoio::time::sleep(pause).await;
        }
    }

    /// Books one try on its endpoint.
    fn book(&self, ep: &Endpoint, outcome: Outcome, now: Instant, rtt: Duration) {
        self.cv
            .book(self.worker.draw(), self.cluster, ep, outcome, now, rtt);
    }

    /// The body streams: full duplex on a connection known to be alive. Only a failed connect
    /// is retried (nothing of the body was read yet).
    async fn send_streaming(&self, c: &mut Client, resp: &mut ResponseHead) -> Result<Done, Fail> {
        let w = self.worker;
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut fresh = false;
        let (ep, up) = loop {
            let (ep, mut up, reused) = self.connect_retrying(fresh, deadline, false).await?;
            let mut out = w.bufs.get();
            // The answer's timeout runs from the end of a streamed body: only a deadline the
            // caller set is passed on.
            let caller = self.req.deadline.map(|d| self.started + d);
            let mut sent = self.send_head(c, &mut up.stream, &ep, caller, Instant::now(), &mut out);
            if sent.is_ok() && !out.is_empty() {
                let (r, o) = up.stream.write_all(out).await;
                out = o;
                sent = r.map(|_| ());
            }
            w.put_buf(out);
            match sent {
                Ok(_) => break (ep, up),
                Err(_) if reused => fresh = true,
                Err(_) => return Err(Fail::before(ErrorKind::UpstreamReset, false)),
            }
        };
        c.start += self.req.head_len;
        self.note.bytes_in.set(self.req.head_len as u64);
        let _in_flight = ep.begin(Instant::now());
        self.continue_if_expected(c).await?;
        let sent_at = Instant::now();
        let Some(stream) = c.stream.take() else {
            return Err(Fail::before(ErrorKind::ClientClosed, false));
        };
        let (mut cr, mut cw) = stream.into_split();
        let (ustream, count) = up.into_parts();
        let (mut ur, mut uw) = ustream.into_split();
        let progress = &self.note.progress;
        let end = {
            let pump = body::pump(
                w,
                &mut cr,
                &mut c.buf,
                &mut c.start,
                &mut uw,
                self.req.framing,
                self.limits.max_request_body,
                self.limits.idle_timeout,
                &progress.body_in,
            );
            let relay = body::relay(
                w,
                &mut ur,
                &mut cw,
                resp,
                self.client_side(),
                Until::Never,
                progress,
            );
            body::duplex(pump, relay, &progress.started, self.timeout).await
        };
        c.stream = cr.reunite(cw);
        let up = ur.reunite(uw).map(|s| UpConn::from_parts(s, count));
        self.note
            .bytes_in
            .set(self.req.head_len as u64 + progress.body_in.get());
        let status_sent = progress.started.get().then_some(resp.status);
        match end {
            DuplexEnd::Relayed { relay, pumped } => {
                let mut r = self.finish(&ep, relay, up.filter(|_| pumped), pumped, sent_at, resp);
                if let Ok(done) = &mut r {
                    // The client's body was not read to its end: the connection cannot go on.
                    done.client_keep_alive &= pumped;
                }
                r
            }
            DuplexEnd::PumpFailed(e) => {
                let kind = match e {
                    PumpError::ClientClosed => ErrorKind::ClientClosed,
                    PumpError::BadChunk => ErrorKind::BadRequest,
                    PumpError::TooLarge => ErrorKind::BodyTooLarge,
                    PumpError::Stalled => ErrorKind::HeadTimeout,
                    PumpError::UpstreamGone => ErrorKind::UpstreamReset,
                };
                if matches!(e, PumpError::UpstreamGone) {
                    self.book(&ep, Outcome::Reset, Instant::now(), sent_at.elapsed());
                }
                Err(Fail {
                    kind,
                    status_sent,
                    body_consumed: false,
                })
            }
            DuplexEnd::TimedOut => {
                self.book(&ep, Outcome::Timeout, Instant::now(), sent_at.elapsed());
                Err(Fail {
                    kind: ErrorKind::Timeout,
                    status_sent,
                    body_consumed: true,
                })
            }
        }
    }

    /// An endpoint and a connection to it: pooled (and seen alive) unless `fresh`, else new.
    /// A connection that cannot be made is tried on another endpoint when the route's retry
    /// policy and budget allow. `body_consumed` goes into the failure.
    async fn connect_retrying(
        &self,
        mut fresh: bool,
        deadline: Instant,
        body_consumed: bool,
    ) -> Result<(Rc<Endpoint>, UpConn, bool), Fail> {
        let w = self.worker;
        let mut avoid: Option<Rc<Endpoint>> = None;
        let mut retries = self.note.retries.get();
        let mut guard = RetryGuard(None);
        loop {
            let now = Instant::now();
            let Some(ep) = self.cv.pick(w.draw(), self.cluster, now, avoid.as_ref()) else {
                return Err(Fail::before(ErrorKind::NoEndpoint, body_consumed));
            };
            self.note.endpoint.set(Some(ep.addr));
            self.note.retries.set(retries);
            match self.connection(&ep, fresh, deadline, true).await {
                Ok((up, reused)) => return Ok((ep, up, reused)),
                Err(TryEnd::Overflow(limit)) => {
                    self.cv.state.overflowed(limit);
                    return Err(Fail::before(ErrorKind::Overflow, body_consumed));
                }
                Err(TryEnd::Failed {
                    kind,
                    failure: Some(f),
                    sent_at,
                    ..
                }) => {
                    self.book(
                        &ep,
                        outcome_of_kind(kind),
                        Instant::now(),
                        sent_at.elapsed(),
                    );
                    if self.should_retry(f, retries, &mut guard) {
                        retries += 1;
                        self.backoff_and_count(retries).await;
                        avoid = Some(ep);
                        fresh = false;
                        continue;
                    }
                    return Err(Fail::before(kind, body_consumed));
                }
                Err(_) => return Err(Fail::before(ErrorKind::ConnectFailed, body_consumed)),
            }
        }
    }

    /// CONNECT: a new connection to an endpoint of the route's cluster, `200` to the client,
    /// then bytes both ways (the target's port is not used: the route decides where a tunnel
    /// goes, so the proxy never opens one to an address a client names).
    async fn connect_tunnel(&self, c: &mut Client) -> Result<Done, Fail> {
        let w = self.worker;
        let started = Instant::now();
        let (ep, up, _) = self.connect_retrying(true, self.deadline(), true).await?;
        let _in_flight = ep.begin(started);
        let now = Instant::now();
        let rtt = now.saturating_duration_since(started);
        self.note.upstream.set(Some(rtt));
        self.book(&ep, Outcome::Success, now, rtt);
        let mut out = w.bufs.get();
        out.extend_from_slice(encode::CONNECT_ESTABLISHED);
        self.open_tunnel(c, up, out).await;
        Ok(Done {
            status: 200,
            client_keep_alive: false,
        })
    }

    /// The upstream agreed to the client's upgrade: its 101 goes to the client, then bytes
    /// flow both ways until both sides close. The whole tunnel is one request in the access
    /// log, written when it ends.
    async fn switch(
        &self,
        c: &mut Client,
        up: UpConn,
        head: body::HeadIn,
        resp: &ResponseHead,
        ep: &Endpoint,
        sent_at: Instant,
    ) -> Result<Done, Fail> {
        let w = self.worker;
        let rtt = head.at.saturating_duration_since(sent_at);
        self.note.upstream.set(Some(rtt));
        self.book(ep, Outcome::Success, head.at, rtt);
        let mut out = w.bufs.get();
        encode::switching_head(&mut out, &head.ubuf, resp);
        // What the upstream sent after its head already speaks the new protocol.
        out.extend_from_slice(&head.ubuf[head.head_len..]);
        w.put_buf(head.ubuf);
        self.open_tunnel(c, up, out).await;
        Ok(Done {
            status: 101,
            client_keep_alive: false,
        })
    }

    /// Sends `first` to the client, then what the client sent past its request head to the
    /// upstream, then copies both ways until both sides close, one fails, or the connection
    /// stays idle for the listener's idle timeout. The client connection ends with it.
    async fn open_tunnel(&self, c: &mut Client, up: UpConn, first: Vec<u8>) {
        let w = self.worker;
        let progress = &self.note.progress;
        progress.started.set(true);
        let (ok, out) = c.write(first).await;
        if ok {
            progress.bytes_out.set(out.len() as u64);
        }
        w.put_buf(out);
        let (mut ustream, _count) = up.into_parts();
        let early = c.data().get(self.req.head_len..).unwrap_or_default();
        let early_len = early.len();
        let mut sent = ok;
        if ok && early_len > 0 {
            let mut buf = w.bufs.get();
            buf.extend_from_slice(early);
            let (r, buf) = ustream.write_all(buf).await;
            w.put_buf(buf);
            sent = r.is_ok();
        }
        // The client buffer is spent: the connection is the tunnel's from here on.
        c.release(w);
        let Some(stream) = c.stream.take().filter(|_| sent) else {
            return;
        };
        let moved = Moved::default();
        let idle = self.limits.idle_timeout;
        let (mut cr, mut cw) = stream.into_split();
        let (mut ur, mut uw) = ustream.into_split();
        let client = (&mut cr, &mut cw);
        let _ = tunnel(w, client, (&mut ur, &mut uw), idle, Some(&moved)).await;
        // Kept for the access log (the client's identity); nothing more is read or written.
        c.stream = cr.reunite(cw);
        self.note.bytes_in.set(early_len as u64 + moved.up.get());
        progress
            .bytes_out
            .set(progress.bytes_out.get() + moved.down.get());
    }

    /// Books the end of a relayed answer: outcome, latency, pooling, the result for the caller.
    fn finish(
        &self,
        ep: &Endpoint,
        r: Result<Relayed, RelayError>,
        up: Option<UpConn>,
        body_consumed: bool,
        sent_at: Instant,
        resp: &ResponseHead,
    ) -> Result<Done, Fail> {
        match r {
            Ok(relayed) => {
                let outcome = if relayed.status >= 500 {
                    Outcome::Status5xx
                } else {
                    Outcome::Success
                };
                let took = relayed.head_at.saturating_duration_since(sent_at);
                self.note.upstream.set(Some(took));
                self.book(ep, outcome, relayed.head_at, took);
                if relayed.upstream_reusable {
                    if let Some(up) = up {
                        // The head's arrival is near enough for the pool's idle clock.
                        ep.checkin(up, relayed.head_at, self.cluster.pool_max_idle);
                    }
                }
                Ok(Done {
                    status: relayed.status,
                    client_keep_alive: relayed.client_keep_alive,
                })
            }
            Err(RelayError::Before { kind, .. }) => {
                if kind != ErrorKind::ClientClosed {
                    self.book(ep, outcome_of_kind(kind), Instant::now(), sent_at.elapsed());
                }
                Err(Fail::before(kind, body_consumed))
            }
            Err(RelayError::After { kind }) => {
                let outcome = match kind {
                    ErrorKind::ClientClosed if resp.status >= 500 => Outcome::Status5xx,
                    ErrorKind::ClientClosed => Outcome::Success,
                    k => outcome_of_kind(k),
                };
                self.book(ep, outcome, Instant::now(), sent_at.elapsed());
                Err(Fail {
                    kind,
                    status_sent: Some(resp.status),
                    body_consumed,
                })
            }
        }
    }
}

/// Ends the budget's count of a retry in flight when dropped.
struct RetryGuard<'a>(Option<&'a ClusterView>);

impl RetryGuard<'_> {
    fn release(&mut self) {
        if let Some(cv) = self.0.take() {
            cv.state.budget.borrow_mut().retry_done();
        }
    }
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether another try could finish before the deadline, judging by the one that just
/// ended: when less time is left than it took, the answer in hand is passed on instead.
fn time_for_another(now: Instant, deadline: Instant, took: Duration) -> bool {
    deadline.saturating_duration_since(now) > took.max(Duration::from_millis(1))
}

/// A gRPC answer whose head says UNAVAILABLE (a trailers-only answer).
fn grpc_unavailable(resp: &ResponseHead, buf: &[u8]) -> bool {
    resp.headers
        .iter()
        .any(|h| h.name.get(buf).eq_ignore_ascii_case(b"grpc-status") && h.value.get(buf) == b"14")
}

/// The endpoint outcome of a failure kind.
fn outcome_of_kind(kind: ErrorKind) -> Outcome {
    match kind {
        ErrorKind::ConnectFailed => Outcome::ConnectFailed,
        ErrorKind::UpstreamProtocol => Outcome::ProtocolError,
        ErrorKind::Timeout => Outcome::Timeout,
        _ => Outcome::Reset,
    }
}
