//! A request whose body is in the client buffer: it goes in one write and can go again. Tries
//! follow each other until an answer, or until the retry rule, the policy, the budget or the
//! deadline says stop.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use super::super::body::{self, HeadIn, Until};
use super::super::client::Client;
use super::upstream::Failed;
use super::{Done, Exchange, RetryGuard, outcome_of_kind};
use crate::endpoint::{Endpoint, UpConn};
use crate::error::{Error, ErrorKind, Retry};
use crate::head::ResponseHead;
use crate::metrics::Outcome;
use crate::retry::{Failure, Next, Tried, after_failure};

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

/// A final answer's head, read from the upstream and not yet sent on.
struct Answer {
    up: UpConn,
    head: HeadIn,
    sent_at: Instant,
}

impl Exchange<'_> {
    /// One try: connect (or reuse), send the whole request, read the answer's head. A failure
    /// says whether the connection was reused.
    async fn try_whole(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
        t: &Attempt<'_>,
    ) -> Result<Answer, (Failed, bool)> {
        let alive = !self.idempotent();
        let (mut up, reused) = self
            .connection(t.ep, t.fresh, t.deadline, alive)
            .await
            .map_err(|f| (f, false))?;
        let w = self.worker;
        let mut out = w.bufs.get();
        let mut sent = self.send_head(c, &mut up.stream, t.ep, Some(t.deadline), t.now, &mut out);
        if sent.is_ok() {
            let head_len = self.req.head_len;
            out.extend_from_slice(&c.data()[head_len..head_len + t.body_len]);
            let (r, o) = up.stream.write_all(out).await;
            out = o;
            if r.is_err() {
                sent = Err(Error::upstream(ErrorKind::UpstreamReset, Retry::NotWritten));
            }
        }
        w.put_buf(out);
        let sent_at = Instant::now();
        sent.map_err(|e| ((e, sent_at), reused))?;
        let Some(client) = c.stream.as_mut() else {
            let gone = Error::downstream(ErrorKind::ClientClosed);
            return Err(((gone, sent_at), reused));
        };
        let side = self.client_side();
        match body::read_head(w, &mut up.stream, client, resp, side, t.until).await {
            Ok(head) => Ok(Answer { up, head, sent_at }),
            Err(e) => Err(((e, sent_at), reused)),
        }
    }

    /// The whole request is in the client buffer: tries until an answer, or until the retry
    /// rule, the policy, the budget or the deadline says stop.
    pub(super) async fn send_whole(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
        body_len: usize,
    ) -> Result<Done, Error> {
        let result = self.tries(c, resp, body_len).await;
        c.start += self.req.head_len + body_len;
        c.shrink(self.worker);
        self.note.body_consumed.set(true);
        // Added to: a tunnel counts what went up it.
        let n = self.note.bytes_in.get() + (self.req.head_len + body_len) as u64;
        self.note.bytes_in.set(n);
        result
    }

    async fn tries(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
        body_len: usize,
    ) -> Result<Done, Error> {
        let w = self.worker;
        let deadline = self.deadline();
        let mut retries = 0u32;
        let mut fresh = false;
        let mut avoid: Option<Rc<Endpoint>> = None;
        let mut guard = RetryGuard(None);
        loop {
            // The first try starts as the request does (read a moment ago, after its head).
            let now = if retries == 0 && !fresh {
                self.started
            } else {
                Instant::now()
            };
            let timed_out = Error::internal(ErrorKind::Timeout);
            if now >= deadline {
                return Err(timed_out);
            }
            let Some(ep) = self.cv.pick(w.draw(), self.cluster, now, avoid.as_ref()) else {
                return Err(Error::internal(ErrorKind::NoEndpoint));
            };
            if retries > 0 && !can_finish(&ep, now, deadline) {
                return Err(timed_out);
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
            let tried = self.try_whole(c, resp, &attempt).await;
            fresh = false;
            let ((error, sent_at), reused) = match tried {
                Ok(Answer { up, head, sent_at }) => {
                    if resp.status == 101 {
                        return Box::pin(self.switch(c, up, head, resp, &ep, sent_at)).await;
                    }
                    let rtt = head.at.saturating_duration_since(sent_at);
                    let failure = if resp.status >= 500 {
                        Some(Failure::Status(resp.status))
                    } else if self.req.grpc && grpc_unavailable(resp, &head.ubuf) {
                        Some(Failure::GrpcUnavailable)
                    } else {
                        None
                    };
                    let again = failure.filter(|&f| {
                        time_for_another(head.at, deadline, rtt)
                            && self.should_retry(f, retries, &mut guard)
                    });
                    let Some(f) = again else {
                        return self.relay_answer(c, resp, &ep, up, head, sent_at).await;
                    };
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
                Err(failed) => failed,
            };
            let facts = Tried {
                reused,
                fresh: attempt.fresh,
                idempotent: self.idempotent(),
            };
            let f = match after_failure(&error, facts) {
                Next::Resend => {
                    // The upstream never saw it: the same request, a fresh connection.
                    fresh = true;
                    avoid = None;
                    continue;
                }
                Next::AskPolicy(f) => Some(f),
                Next::GiveUp => None,
            };
            // The endpoint failed, or the request could not get a connection to it in time
            // (its line, which says nothing against the endpoint: not booked).
            let upstream = error.side == crate::error::Side::Upstream;
            if upstream || error.retry == Retry::NotConnected {
                let now = Instant::now();
                let took = now.saturating_duration_since(sent_at);
                if upstream {
                    self.book(&ep, outcome_of_kind(error.kind), now, took);
                }
                // A try cut by its timeout says the endpoint was slow, not how long the next
                // one will take: only the next endpoint's usual latency counts then.
                let judge = if error.kind == ErrorKind::Timeout {
                    Duration::ZERO
                } else {
                    took
                };
                let again = f.filter(|&f| {
                    time_for_another(now, deadline, judge)
                        && self.should_retry(f, retries, &mut guard)
                });
                if again.is_some() {
                    retries += 1;
                    self.backoff_and_count(retries).await;
                    avoid = Some(ep.clone());
                    continue;
                }
            }
            return Err(error);
        }
    }

    /// Relays an answer whose head came.
    async fn relay_answer(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
        ep: &Endpoint,
        mut up: UpConn,
        head: HeadIn,
        sent_at: Instant,
    ) -> Result<Done, Error> {
        let Some(client) = c.stream.as_mut() else {
            self.worker.put_buf(head.ubuf);
            return Err(Error::downstream(ErrorKind::ClientClosed));
        };
        let (w, side, progress) = (self.worker, self.client_side(), &self.note.progress);
        let r = body::relay_body(w, &mut up.stream, client, resp, side, head, progress).await;
        self.finish(ep, r, Some(up), sent_at, resp)
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
}

/// Whether `ep` can still answer before the deadline: a retry is not started when the time
/// left is under the endpoint's usual latency.
fn can_finish(ep: &Endpoint, now: Instant, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(now);
    let usual = Duration::from_nanos(ep.latency_ns(now) as u64).min(Duration::from_secs(1));
    left > usual.max(Duration::from_millis(1))
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
