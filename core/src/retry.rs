//! Retries: which failures may go again, how long to wait, and the budget that keeps retries
//! from multiplying load when an upstream is already struggling.
//!
//! The budget has both usual forms: a rate (retries within a 10 s window at most
//! `ratio` of first tries plus a floor per second, as Linkerd and Finagle do) and a concurrency
//! cap (retries in flight at most max(3, `ratio` of requests in flight), as Envoy does). Each
//! worker keeps its own budget per cluster, so the floor applies per worker. Pure code: time
//! and randomness are passed in.
//!
//! The concurrency cap applies to retries that add load: those after an endpoint answered (a
//! status the policy retries, gRPC UNAVAILABLE), which go to endpoints that may be struggling
//! as well. A try that could not connect, was reset or timed out before an answer *moves* its
//! request off that endpoint instead: when an endpoint dies or hangs, every request it held
//! fails at the same instant, and all of them must be able to go elsewhere at once (at most
//! one retry per request is in flight, and the endpoint left behind gets nothing more). Those
//! retries are bounded by the rate alone, which in a total outage still keeps retries within
//! `ratio` of first tries (plus the floor).

use std::time::{Duration, Instant};

/// Base of the exponential backoff between tries.
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Cap of the backoff.
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);
/// Largest request body kept to be sent again.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// What makes a try worth repeating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The upstream could not be connected to (the request never left).
    pub connect_failure: bool,
    /// The connection was reset or closed, or the try timed out, before an answer.
    pub reset: bool,
    /// Any 5xx answer.
    pub status_5xx: bool,
    /// These statuses.
    pub statuses: Vec<u16>,
    /// A gRPC answer with status UNAVAILABLE (14) in its head (a trailers-only answer).
    pub grpc_unavailable: bool,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Time allowed for each try, to the response head.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Budget: retries as a share of first tries (0.2 = 20%).
    pub budget_ratio: f64,
    /// Budget: retries per second always allowed.
    pub min_per_second: u32,
}

/// How a try failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect: nothing was sent.
    Connect,
    /// Reset, closed, or timed out before an answer; the request may have been processed.
    Reset,
    /// The upstream answered with this status.
    Status(u16),
    /// A gRPC answer with status UNAVAILABLE, before any message.
    GrpcUnavailable,
}

impl Failure {
    /// Whether a retry after this failure moves the request off an endpoint that did not
    /// answer (rather than adding load to endpoints that did): see the module docs.
    pub fn moves_request(self) -> bool {
        matches!(self, Failure::Connect | Failure::Reset)
    }
}

impl RetryPolicy {
    /// Whether `failure` is one this policy retries, for a request with this idempotency.
    pub fn covers(&self, failure: Failure, idempotent: bool) -> bool {
        match failure {
            Failure::Connect => self.on.connect_failure,
            // The upstream may have acted on it: only idempotent requests go again.
            Failure::Reset => idempotent && self.on.reset,
            Failure::Status(s) => {
                idempotent && ((self.on.status_5xx && s >= 500) || self.on.statuses.contains(&s))
            }
            // gRPC's own word: the server did not process the call, whatever its method.
            Failure::GrpcUnavailable => self.on.grpc_unavailable,
        }
    }
}

/// What the forwarding path does after a try failed before its answer went to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The same request again at once, on a fresh connection, not counted as a retry: the
    /// upstream never saw it (a pooled connection it had closed, or a stream it refused).
    Resend,
    /// A retry, if the route's policy covers this failure and its budget allows.
    AskPolicy(Failure),
    /// The failure goes to the client.
    GiveUp,
}

/// What a try was, for the retry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tried {
    /// It went on a pooled (or, for HTTP/2, shared) connection.
    pub reused: bool,
    /// It was already a resend on a fresh connection.
    pub fresh: bool,
    /// The request is safe to repeat (RFC 9110 section 9.2.2).
    pub idempotent: bool,
}

/// The retry rule: what comes after a try that failed with `error` before its answer was
/// relayed.
///
/// A request the upstream cannot have seen goes again at once: one it refused unprocessed
/// (unless that was already the resend), one that could not be written to a pooled
/// connection, and one safe to repeat that got nothing back on a pooled connection (which the
/// upstream had most likely closed before it came). Otherwise the route's policy decides on a
/// connect failure, or on a reset or timeout (which it retries only for idempotent requests).
pub fn after_failure(error: &crate::error::Error, t: Tried) -> Next {
    use crate::error::{ErrorKind, Retry};
    match error.retry {
        Retry::Never => Next::GiveUp,
        Retry::NotConnected => Next::AskPolicy(Failure::Connect),
        Retry::Refused if !t.fresh => Next::Resend,
        Retry::NotWritten if t.reused => Next::Resend,
        Retry::NothingBack if t.reused && t.idempotent => Next::Resend,
        Retry::Refused | Retry::NotWritten | Retry::NothingBack | Retry::Sent => match error.kind {
            ErrorKind::UpstreamReset | ErrorKind::Timeout => Next::AskPolicy(Failure::Reset),
            _ => Next::GiveUp,
        },
    }
}

/// Full jitter: uniform in `[0, min(cap, base * 2^retry))`; `unit` is uniform in `[0, 1)`.
pub fn backoff(retry: u32, unit: f64) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Seconds in the rate window.
const WINDOW: usize = 10;

/// A retry budget: see the module docs.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Per second of the window: (first tries, retries).
    slots: [(u32, u32); WINDOW],
    /// The second `slots[second % WINDOW]` stands for.
    second: u64,
    origin: Instant,
    /// Retries in flight.
    active: u32,
}

impl RetryBudget {
    /// An empty budget.
    pub fn new(now: Instant) -> Self {
        RetryBudget {
            slots: [(0, 0); WINDOW],
            second: 0,
            origin: now,
            active: 0,
        }
    }

    fn advance(&mut self, now: Instant) -> usize {
        let s = now.saturating_duration_since(self.origin).as_secs();
        if s > self.second {
            let gap = (s - self.second).min(WINDOW as u64);
            for k in 1..=gap {
                self.slots[((self.second + k) % WINDOW as u64) as usize] = (0, 0);
            }
            self.second = s;
        }
        (self.second % WINDOW as u64) as usize
    }

    /// Counts a first try.
    pub fn deposit(&mut self, now: Instant) {
        let i = self.advance(now);
        self.slots[i].0 = self.slots[i].0.saturating_add(1);
    }

    /// Whether a retry after `failure` may go now, given the requests in flight; counts it if
    /// so (call [`RetryBudget::retry_done`] when it ends). Only retries that add load are held
    /// to the concurrency cap (see the module docs).
    pub fn withdraw(
        &mut self,
        now: Instant,
        failure: Failure,
        in_flight: u32,
        ratio: f64,
        min_per_second: u32,
    ) -> bool {
        let i = self.advance(now);
        let (tries, retries) = self.slots.iter().fold((0u64, 0u64), |(a, b), &(t, r)| {
            (a + u64::from(t), b + u64::from(r))
        });
        let rate_ok =
            (retries as f64) < ratio * tries as f64 + f64::from(min_per_second) * WINDOW as f64;
        let concurrency_ok = failure.moves_request()
            || self.active < 3u32.max((ratio * f64::from(in_flight)) as u32);
        if rate_ok && concurrency_ok {
            self.slots[i].1 = self.slots[i].1.saturating_add(1);
            self.active += 1;
            true
        } else {
            false
        }
    }

    /// A retry that was allowed has ended.
    pub fn retry_done(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Retries in flight.
    pub fn active(&self) -> u32 {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                status_5xx: false,
                statuses: vec![503],
                grpc_unavailable: false,
            },
            budget_ratio: 0.2,
            min_per_second: 10,
        }
    }

    #[test]
    fn the_retry_rule_resends_only_what_the_upstream_cannot_have_seen() {
        use crate::error::{Error, ErrorKind as K, Retry as R};
        let up = |kind, retry| Error::upstream(kind, retry);
        let t = |reused, fresh, idempotent| Tried {
            reused,
            fresh,
            idempotent,
        };
        let (pooled, new, resend) = ((true, false), (false, false), (false, true));
        let cases = [
            // (error, (reused, fresh), idempotent, next)
            (
                up(K::ConnectFailed, R::NotConnected),
                new,
                false,
                Next::AskPolicy(Failure::Connect),
            ),
            (
                up(K::Timeout, R::NotConnected),
                new,
                true,
                Next::AskPolicy(Failure::Connect),
            ),
            (
                up(K::UpstreamReset, R::Refused),
                pooled,
                false,
                Next::Resend,
            ),
            (
                up(K::UpstreamReset, R::Refused),
                resend,
                false,
                Next::AskPolicy(Failure::Reset),
            ),
            (
                up(K::UpstreamReset, R::NotWritten),
                pooled,
                false,
                Next::Resend,
            ),
            (
                up(K::UpstreamReset, R::NotWritten),
                new,
                true,
                Next::AskPolicy(Failure::Reset),
            ),
            (
                up(K::UpstreamReset, R::NothingBack),
                pooled,
                true,
                Next::Resend,
            ),
            (
                up(K::UpstreamReset, R::NothingBack),
                pooled,
                false,
                Next::AskPolicy(Failure::Reset),
            ),
            (
                up(K::UpstreamReset, R::NothingBack),
                new,
                true,
                Next::AskPolicy(Failure::Reset),
            ),
            (
                up(K::UpstreamReset, R::NothingBack),
                resend,
                true,
                Next::AskPolicy(Failure::Reset),
            ),
            (
                up(K::Timeout, R::Sent),
                pooled,
                true,
                Next::AskPolicy(Failure::Reset),
            ),
            (up(K::UpstreamProtocol, R::Sent), pooled, true, Next::GiveUp),
            (
                up(K::UpstreamProtocol, R::NothingBack),
                new,
                true,
                Next::GiveUp,
            ),
            (up(K::UpstreamReset, R::Never), pooled, true, Next::GiveUp),
            (
                Error::downstream(K::ClientClosed),
                pooled,
                true,
                Next::GiveUp,
            ),
            (Error::internal(K::Overflow), new, true, Next::GiveUp),
        ];
        for (error, (reused, fresh), idempotent, want) in cases {
            let got = after_failure(&error, t(reused, fresh, idempotent));
            assert_eq!(
                got, want,
                "{error} reused={reused} fresh={fresh} idem={idempotent}"
            );
        }
    }

    #[test]
    fn conditions_and_idempotency() {
        let p = policy();
        assert!(
            p.covers(Failure::Connect, false),
            "nothing was sent: any method"
        );
        assert!(
            !p.covers(Failure::Reset, false),
            "a POST that may have been acted on"
        );
        assert!(p.covers(Failure::Reset, true));
        assert!(p.covers(Failure::Status(503), true));
        assert!(!p.covers(Failure::Status(500), true));
        assert!(!p.covers(Failure::Status(503), false));
        let mut all = p.clone();
        all.on.status_5xx = true;
        assert!(all.covers(Failure::Status(500), true));
        assert!(!all.covers(Failure::Status(404), true));
    }

    #[test]
    fn backoff_is_full_jitter_under_the_cap() {
        assert_eq!(backoff(0, 0.0), Duration::ZERO);
        assert_eq!(backoff(0, 0.5), Duration::from_micros(12_500));
        assert_eq!(backoff(1, 0.5), Duration::from_millis(25));
        assert_eq!(backoff(2, 0.999).as_millis(), 99);
        assert_eq!(backoff(3, 0.999).as_millis(), 199);
        assert_eq!(backoff(4, 0.999).as_millis(), 249, "capped at 250 ms");
        assert_eq!(backoff(30, 0.999).as_millis(), 249);
    }

    /// A retry after an answer the policy retries: held to both limits.
    const ANSWERED: Failure = Failure::Status(503);

    #[test]
    fn budget_holds_the_rate_with_a_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        // No traffic: the floor (10/s over a 10 s window) allows 100 retries.
        let allowed = (0..200)
            .filter(|_| {
                let ok = b.withdraw(t0, ANSWERED, 1000, 0.2, 10);
                b.retry_done();
                ok
            })
            .count();
        assert_eq!(allowed, 100);
        // 10,000 first tries a second for ten seconds: about 20% more.
        let mut b = RetryBudget::new(t0);
        let mut retries = 0;
        for s in 0..10u64 {
            let now = t0 + Duration::from_secs(s);
            for _ in 0..10_000 {
                b.deposit(now);
                if b.withdraw(now, ANSWERED, 1000, 0.2, 10) {
                    retries += 1;
                }
                b.retry_done();
            }
        }
        assert!((20_000..=20_100).contains(&retries), "{retries}");
        // The window slides: old first tries stop counting.
        let later = t0 + Duration::from_secs(30);
        let allowed = (0..500)
            .filter(|_| b.withdraw(later, ANSWERED, 1000, 0.2, 0))
            .count();
        assert_eq!(
            allowed, 0,
            "no first tries in the last 10 s, no floor: nothing"
        );
    }

    #[test]
    fn budget_caps_concurrency() {
        let t = Instant::now();
        let mut b = RetryBudget::new(t);
        for _ in 0..1000 {
            b.deposit(t);
        }
        // 10 in flight: max(3, 2) = 3 retries at once.
        assert!(b.withdraw(t, ANSWERED, 10, 0.2, 10));
        assert!(b.withdraw(t, ANSWERED, 10, 0.2, 10));
        assert!(b.withdraw(t, ANSWERED, 10, 0.2, 10));
        assert!(!b.withdraw(t, ANSWERED, 10, 0.2, 10));
        b.retry_done();
        assert!(b.withdraw(t, ANSWERED, 10, 0.2, 10));
        // 100 in flight: 20 at once.
        let mut b = RetryBudget::new(t);
        for _ in 0..1000 {
            b.deposit(t);
        }
        assert_eq!(
            (0..50)
                .filter(|_| b.withdraw(t, ANSWERED, 100, 0.2, 10))
                .count(),
            20
        );
        assert_eq!(b.active(), 20);
    }

    #[test]
    fn a_burst_of_requests_leaving_a_dead_endpoint_all_go_but_the_rate_still_holds() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        for _ in 0..10_000 {
            b.deposit(t0);
        }
        // 300 requests in flight; the endpoint holding 100 of them dies at once: every one of
        // them leaves, where the cap would have let max(3, 60) go.
        for f in [Failure::Connect, Failure::Reset] {
            let mut b = b.clone();
            let moved = (0..100).filter(|_| b.withdraw(t0, f, 300, 0.2, 10)).count();
            assert_eq!(moved, 100, "{f:?}");
            let mut b2 = b.clone();
            assert!(
                !b2.withdraw(t0, ANSWERED, 300, 0.2, 10),
                "answered failures stay capped"
            );
        }
        // A total outage: every try fails. Retries stay within 20% of first tries (plus the
        // floor of 10/s) whatever the kind of failure.
        let mut b = RetryBudget::new(t0);
        let (mut tries, mut retries) = (0u64, 0u64);
        for ms in 0..30_000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..10 {
                b.deposit(now);
                tries += 1;
                if b.withdraw(now, Failure::Connect, 500, 0.2, 10) {
                    retries += 1;
                    b.retry_done();
                }
            }
        }
        let bound = 0.2 * tries as f64 + 10.0 * 30.0 + 100.0;
        assert!(
            (retries as f64) <= bound,
            "{retries} retries for {tries} first tries"
        );
        assert!(
            retries as f64 >= 0.19 * tries as f64,
            "the budget is spent, not hoarded"
        );
    }
}
