//! One request to a cluster: pick an endpoint, take a pooled connection or connect, send the
//! request, read the answer's head, and either relay it or (when the route's retry policy, the
//! budget and the deadline allow) try again on another endpoint.
//!
//! ```text
//! mod.rs        Exchange::run: circuit breaker, the body kept or streamed, booking, the end
//! whole.rs      a body in the buffer: tries until an answer (retry::after_failure decides)
//! streaming.rs  a body that streams: full duplex on a connection known to be alive
//! upstream.rs   a connection: pooled, a stream on an HTTP/2 one, or new; the head sent on it
//! tunnel.rs     CONNECT and upgrades: bytes both ways
//! ```
//!
//! A request whose body is in the buffer (no body, a small one, or up to 64 KiB when the route
//! retries) is sent in one write and can be sent again. A request the upstream cannot have seen
//! (a pooled connection it had closed, a stream it refused) goes again at once on a fresh
//! connection, not counted as a retry. A request with a streaming body is sent full duplex
//! ([`super::body::duplex`]) on a connection known to be alive, and is only retried when the
//! connection could not be made.
//!
//! Every try is booked on its endpoint: outcome counters, latency (a failure counts as a slow
//! answer), outlier ejection. Circuit breakers refuse at once with 503 `overflow`.

pub(super) mod mirror;
mod streaming;
mod tunnel;
mod upstream;
mod whole;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::body::{ClientSide, Progress, Relayed};
use super::client::Client;
use super::client_keeps_alive;
use crate::breaker::Active;
use crate::buf::BUF_SIZE;
use crate::cluster::ClusterView;
use crate::endpoint::{Endpoint, UpConn};
use crate::error::{Error, ErrorKind};
use crate::head::{Forwarded, Framing, Method, RequestHead, ResponseHead, Version};
use crate::http1::{ChunkedDecoder, encode};
use crate::io::HeadsTo;
use crate::metrics::{Limit, Outcome, RouteStats};
use crate::retry::{self, Failure, MAX_REPLAY_BODY, RetryPolicy};
use crate::snapshot::{Cluster, HttpLimits};
use crate::worker::state::Worker;

/// How long a request drawn for a copy waits for a body it would not otherwise wait for; a
/// slower one goes to the primary as it streams, and is not copied.
const MIRROR_BODY_WAIT: Duration = Duration::from_secs(1);

/// How long a body of unknown length may pause while it is waited for a copy's sake.
const MIRROR_BODY_PAUSE: Duration = Duration::from_millis(50);

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
    /// Edits of the request's fields (route, cluster, request id), and of the answer's.
    pub edits: Option<&'a crate::head::edit::RequestEdits<'a>>,
    pub answer_edits: Option<&'a crate::head::edit::ResponseEdits<'a>>,
    /// The route's rewrites: the target to send, and how the authority is rewritten.
    pub target: Option<&'a [u8]>,
    pub host: Option<&'a crate::rewrite::HostRewrite>,
    /// The route compresses answers: what this request accepts.
    pub compress: Option<super::coded::Offer<'a>>,
    /// The route mirrors, and this request was drawn for a copy.
    pub mirror: Option<mirror::Shadow<'a>>,
}

/// What an exchange did, beyond its status: for the access log and tap, and for what the
/// connection does after a failure.
#[derive(Debug, Default)]
pub(super) struct Note {
    /// The endpoint of the last try.
    pub endpoint: Cell<Option<std::net::SocketAddr>>,
    /// Tries after the first (not counting a resend of a request the upstream never saw).
    pub retries: Cell<u32>,
    /// From the request sent to the answer's head, on the try that was relayed.
    pub upstream: Cell<Option<Duration>>,
    /// Bytes read from the client: head and body.
    pub bytes_in: Cell<u64>,
    /// The request body was read in full from the client: the connection may go on.
    pub body_consumed: Cell<bool>,
    /// The relay's progress (whether the answer's head went to the client).
    pub progress: Progress,
}

/// A request answered by the upstream.
pub(super) struct Done {
    pub status: u16,
    pub client_keep_alive: bool,
}

impl Exchange<'_> {
    /// Sends the request (and its retries) and relays the answer.
    pub async fn run(&self, c: &mut Client, resp: &mut ResponseHead) -> Result<Done, Error> {
        let state = &self.cv.state;
        if state.active.get() >= self.cluster.limits.max_requests {
            state.overflowed(Limit::Requests);
            self.note.body_consumed.set(c.skip_request(self.req));
            return Err(Error::internal(ErrorKind::Overflow));
        }
        let _active = Active::new(state);
        state.budget.borrow_mut().deposit(self.started);
        if self.req.method == Method::Connect {
            // Boxed: rare, and it lives as long as its tunnel.
            return Box::pin(self.connect_tunnel(c)).await;
        }
        let body = self.buffered_body(c).await;
        if self.mirror.is_some() {
            self.mirror(c, body.as_ref().ok().copied().flatten());
        }
        match body {
            Ok(Some(len)) => self.send_whole(c, resp, len).await,
            // Boxed: the streaming path's state is large and rare; the common path stays small,
            // and so does the future moved into place for every request.
            Ok(None) => Box::pin(self.send_streaming(c, resp)).await,
            Err(e) => Err(e),
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
    /// fits (up to 64 KiB when the route retries, so it can be sent again; up to the mirror's
    /// `max_body` when it is copied). `None`: it streams.
    async fn buffered_body(&self, c: &mut Client) -> Result<Option<usize>, Error> {
        let head_len = self.req.head_len;
        let replay = self.retry.is_some();
        // A request drawn for a copy keeps its body, up to the mirror's limit, for the copy;
        // but not one waiting for `100 Continue` (the primary upstream answers that), and not
        // for longer than MIRROR_BODY_WAIT: a slow body then streams to the primary, uncopied.
        let copied = match self.mirror {
            Some(m) if !self.req.expect_continue => m.body_room(),
            _ => 0,
        };
        match self.req.framing {
            Framing::None | Framing::Close => Ok(Some(0)),
            Framing::Chunked => {
                let kept = if replay { MAX_REPLAY_BODY } else { 0 };
                let max = kept.max(copied);
                let waiting_since = Instant::now();
                // One decoder across reads: each read's bytes are decoded once.
                let mut d = ChunkedDecoder::new();
                let mut fed = 0;
                loop {
                    let p = d
                        .feed(&c.data()[head_len + fed..], |_| {})
                        .map_err(|_| Error::downstream(ErrorKind::BadRequest))?;
                    fed += p.consumed;
                    if p.done {
                        let limit = self.limits.max_request_body;
                        if limit.is_some_and(|m| d.data_len() > m) {
                            return Err(Error::downstream(ErrorKind::BodyTooLarge));
                        }
                        return Ok(Some(c.forwardable_chunked(head_len, fed)));
                    }
                    if c.data().len() - head_len >= max {
                        return Ok(None);
                    }
                    self.continue_if_expected(c).await?;
                    let have = c.data().len();
                    c.make_room(self.worker, (have + 4096).min(head_len + max + 1));
                    // For a copy only: a body of unknown length is waited for while it keeps
                    // coming; a pause (a streaming call waiting for its answer) ends the wait.
                    let give_up = (copied > kept && c.data().len() - head_len >= kept).then(|| {
                        (Instant::now() + MIRROR_BODY_PAUSE).min(waiting_since + MIRROR_BODY_WAIT)
                    });
                    if !Box::pin(self.fill(c, have + 1, give_up)).await? {
                        return Ok(None);
                    }
                }
            }
            Framing::Length(n) => {
                let need = head_len as u64 + n;
                if (c.data().len() as u64) >= need {
                    return Ok(Some(n as usize));
                }
                // A small body still on its way: wait for it so the request can be replayed.
                let kept = if replay {
                    (head_len + MAX_REPLAY_BODY) as u64
                } else {
                    BUF_SIZE as u64
                };
                let max = kept.max((head_len + copied) as u64);
                if need > max || (self.req.expect_continue && !replay) {
                    return Ok(None);
                }
                let give_up = (need > kept).then(|| Instant::now() + MIRROR_BODY_WAIT);
                self.continue_if_expected(c).await?;
                c.make_room(self.worker, need as usize);
                if !Box::pin(self.fill(c, need as usize, give_up)).await? {
                    return Ok(None);
                }
                Ok(Some(n as usize))
            }
        }
    }

    /// A client waiting for `100 Continue` before its body gets one now.
    async fn continue_if_expected(&self, c: &mut Client) -> Result<(), Error> {
        if !self.req.expect_continue || self.req.version == Version::Http10 || c.continued {
            return Ok(());
        }
        c.continued = true;
        let gone = || Error::downstream(ErrorKind::ClientClosed);
        if let Some(h2) = c.stream.as_mut().and_then(HeadsTo::h2) {
            return h2.send_continue().map_err(|_| gone());
        }
        let mut out = self.worker.bufs.get();
        out.extend_from_slice(encode::CONTINUE);
        let (ok, out) = c.write(out).await;
        self.worker.put_buf(out);
        if ok { Ok(()) } else { Err(gone()) }
    }

    /// Reads until `c.data()` holds `need` bytes (which fit the buffer).
    async fn fill(
        &self,
        c: &mut Client,
        need: usize,
        give_up: Option<Instant>,
    ) -> Result<bool, Error> {
        let deadline = Instant::now() + self.limits.request_head_timeout;
        let gone = || Error::downstream(ErrorKind::ClientClosed);
        while c.data().len() < need {
            let (Some(stream), Some(buf)) = (c.stream.as_mut(), c.buf.take()) else {
                return Err(gone());
            };
            // An HTTP/2 stream's read cannot be cancelled with its buffer given back: for a
            // copy's wait, wait until it is readable (which holds nothing), then read.
            if let (Some(g), Some(h2)) = (give_up, stream.h2_recv()) {
                let ready = monoio::select! {
                    _ = h2.readable() => true,
                    _ = crate::sleep_until(g.min(deadline)) => false,
                };
                if !ready {
                    c.buf = Some(buf);
                    return Ok(false);
                }
            }
            let len = buf.len();
            let slice = monoio::buf::IoBufMut::slice_mut(buf, len..);
            let (res, slice) = match give_up {
                // Out of time, the request fails: the read (and its buffer) can go.
                None => monoio::select! {
                    r = monoio::io::AsyncReadRent::read(stream, slice) => r,
                    _ = crate::sleep_until(deadline) => {
                        return Err(Error::downstream(ErrorKind::HeadTimeout));
                    }
                },
                // An HTTP/2 stream is readable now: its read completes at once.
                Some(_) if stream.h2_recv().is_some() => {
                    monoio::io::AsyncReadRent::read(stream, slice).await
                }
                // Waiting for a copy's sake only: cancelled, then awaited, the buffer comes back
                // with any bytes that won the race, and the request goes on streaming.
                Some(g) => {
                    use monoio::io::{CancelableAsyncReadRent, Canceller};
                    let cancel = c.canceller.get_or_insert_with(Canceller::new);
                    let mut read = std::pin::pin!(stream.cancelable_read(slice, cancel.handle()));
                    let mut timed_out = false;
                    let r = monoio::select! {
                        r = &mut read => r,
                        _ = crate::sleep_until(g.min(deadline)) => {
                            timed_out = true;
                            if let Some(old) = c.canceller.take() {
                                c.canceller = Some(old.cancel());
                            }
                            read.await
                        }
                    };
                    if timed_out && !matches!(r.0, Ok(n) if n > 0) {
                        // The request would have streamed without the copy: it does.
                        c.buf = Some(r.1.into_inner());
                        return Ok(false);
                    }
                    r
                }
            };
            c.buf = Some(slice.into_inner());
            match res {
                Ok(n) if n > 0 => {}
                _ => return Err(gone()),
            }
        }
        Ok(true)
    }

    /// What the upstream is told beside the client's fields: `deadline` is passed on as the
    /// time left after `now`.
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
            edits: self.edits,
            target: self.target,
            authority: self.host.map(|h| match h {
                crate::rewrite::HostRewrite::Literal(name) => &name[..],
                crate::rewrite::HostRewrite::Endpoint => &ep.host[..],
            }),
        }
    }

    fn client_side(&self) -> ClientSide<'_> {
        ClientSide {
            edits: self.answer_edits.map(|e| {
                let mut e = *e;
                e.vars.upstream = self.note.endpoint.get();
                e
            }),
            version: self.req.version,
            keep_alive: client_keeps_alive(self.worker, self.req),
            head_request: self.req.method == Method::Head,
            body_idle: self.limits.idle_timeout,
            upgrade: self.req.upgrade.is_some(),
            compress: self.compress,
        }
    }

    fn idempotent(&self) -> bool {
        self.req.method.is_idempotent()
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
            f,
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

    /// Books the end of a relayed answer: outcome, latency, pooling, the result for the caller.
    fn finish(
        &self,
        ep: &Endpoint,
        r: Result<Relayed, Error>,
        up: Option<UpConn>,
        sent_at: Instant,
        resp: &ResponseHead,
    ) -> Result<Done, Error> {
        let relayed = match r {
            Ok(relayed) => relayed,
            Err(e) => {
                let outcome = match e.kind {
                    // The answer was going out: the upstream did its part.
                    ErrorKind::ClientClosed if self.note.progress.started.get() => {
                        if resp.status >= 500 {
                            Some(Outcome::Status5xx)
                        } else {
                            Some(Outcome::Success)
                        }
                    }
                    ErrorKind::ClientClosed => None,
                    k => Some(outcome_of_kind(k)),
                };
                if let Some(outcome) = outcome {
                    self.book(ep, outcome, Instant::now(), sent_at.elapsed());
                }
                return Err(e);
            }
        };
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

/// The endpoint outcome of a failure kind.
fn outcome_of_kind(kind: ErrorKind) -> Outcome {
    match kind {
        ErrorKind::ConnectFailed => Outcome::ConnectFailed,
        ErrorKind::UpstreamProtocol => Outcome::ProtocolError,
        ErrorKind::Timeout => Outcome::Timeout,
        _ => Outcome::Reset,
    }
}
