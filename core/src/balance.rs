//! Load balancing: which endpoint of a priority level takes the next request.
//!
//! Pure code: the caller passes the endpoints' loads, the time and the RNG. Three policies:
//! power of two choices over peak-EWMA cost (default, as in Finagle and Linkerd), weighted round
//! robin (earliest deadline first, as Envoy does, O(log n)) and weighted random (binary search
//! over cumulative weights, O(log n)); equal weights take O(1) paths. Endpoints that are not
//! available (ejected, failing health checks) are skipped unless the level is in panic
//! ([`crate::failover`]).
//!
//! Each worker balances on what it sees itself: its own in-flight requests and its own latency
//! samples. Envoy makes the same trade; it keeps the request path free of shared writes, and with
//! SO_REUSEPORT spreading connections evenly the per-worker views converge.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::rng::Rng;

/// Balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lb {
    /// Power of two choices over peak-EWMA cost.
    #[default]
    P2cEwma,
    /// Weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
}

/// Default RTT estimate of an endpoint with no sample yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Decay period of the estimate.
pub const DECAY: Duration = Duration::from_secs(10);
/// Floor on the default estimate, so a new endpoint is not flooded.
pub const RTT_FLOOR: Duration = Duration::from_millis(1);
/// An estimate with no sample for this long is stale: the endpoint gets a probe request, and
/// the probe's sample replaces the estimate.
pub const STALE_AFTER: Duration = Duration::from_secs(1);
/// The sample recorded for a failed request (connect error, reset, timeout, 5xx): an endpoint
/// that fails fast must look slow, not fast.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Peak-EWMA latency estimate: jumps up to any slower sample at once, decays towards faster
/// ones (and towards zero while idle) with a time constant of [`DECAY`].
///
/// The default RTT is only a prior: the first sample replaces it, and so does the first sample
/// after [`STALE_AFTER`] of silence, so that an endpoint that recovered is seen at once.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    estimate_ns: f64,
    stamp: Instant,
    sampled: bool,
}

impl PeakEwma {
    /// A fresh estimate at the default RTT.
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            estimate_ns: DEFAULT_RTT.max(RTT_FLOOR).as_nanos() as f64,
            stamp: now,
            sampled: false,
        }
    }

    /// Records one round trip.
    pub fn observe(&mut self, now: Instant, rtt: Duration) {
        let sample = rtt.as_secs_f64() * 1e9;
        let current = self.decayed(now);
        self.estimate_ns = if !self.sampled || self.is_stale(now) {
            self.sampled = true;
            sample
        } else if sample > current {
            sample
        } else {
            let w = self.weight(now);
            current * w + sample * (1.0 - w)
        };
        self.stamp = now;
    }

    /// Whether any round trip was recorded.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// Whether the last sample is older than [`STALE_AFTER`].
    pub fn is_stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stamp) >= STALE_AFTER
    }

    /// The estimate at `now`, in nanoseconds.
    pub fn estimate_ns(&self, now: Instant) -> f64 {
        self.decayed(now)
    }

    #[inline]
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / DECAY.as_secs_f64()).exp()
    }

    #[inline]
    fn decayed(&self, now: Instant) -> f64 {
        self.estimate_ns * self.weight(now)
    }
}

/// What the balancer needs to know of one endpoint.
pub trait Load {
    /// Relative weight, at least 1.
    fn weight(&self) -> u32;
    /// Requests in flight from this worker.
    fn in_flight(&self) -> u32;
    /// Latency estimate in nanoseconds at `now`.
    fn latency_ns(&self, now: Instant) -> f64;
    /// Whether it may take requests now.
    fn available(&self, now: Instant) -> bool;
}

/// State a policy keeps between picks (per priority level, per worker).
#[derive(Debug, Clone, Default)]
pub struct BalanceState {
    /// Round robin with equal weights: the next position.
    cursor: usize,
    /// Weighted round robin: (deadline, position), earliest first.
    edf: BinaryHeap<Reverse<(u64, u32)>>,
    /// Weighted random: cumulative weights.
    cumulative: Vec<u64>,
    /// Whether every endpoint has the same weight, once known.
    uniform: Option<bool>,
}

/// Fixed-point scale of EDF deadlines.
const EDF_SCALE: u64 = 1 << 32;

/// Picks an endpoint among `eps` that is available (or any, in `panic`) and not `avoid`.
/// `None` when none is. Weights and the set of endpoints must not change between calls with
/// the same `state` (a new config builds new state).
pub fn pick<L: Load>(
    lb: Lb,
    eps: &[L],
    state: &mut BalanceState,
    rng: &mut Rng,
    now: Instant,
    avoid: Option<usize>,
    panic: bool,
) -> Option<usize> {
    let ok = |i: usize| Some(i) != avoid && (panic || eps[i].available(now));
    match eps.len() {
        0 => return None,
        1 => return ok(0).then_some(0),
        _ => {}
    }
    let uniform = *state
        .uniform
        .get_or_insert_with(|| eps.iter().all(|e| e.weight() == eps[0].weight()));
    match (lb, uniform) {
        (Lb::P2cEwma, _) => p2c(eps, rng, now, &ok),
        (Lb::RoundRobin, true) => round_robin(eps.len(), state, &ok),
        (Lb::RoundRobin, false) => edf(eps, state, &ok),
        (Lb::Random, true) => uniform_random(eps.len(), rng, &ok),
        (Lb::Random, false) => weighted_random(eps, state, rng, &ok),
    }
}

/// Two distinct random picks among the usable endpoints; the lower cost wins.
fn p2c<L: Load>(
    eps: &[L],
    rng: &mut Rng,
    now: Instant,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = eps.len() as u32;
    // Sample without scanning: a few tries find usable endpoints when most are usable; fall back
    // to a scan when many are not.
    let mut first = None;
    for _ in 0..8 {
        let i = rng.below(n) as usize;
        if ok(i) {
            first = Some(i);
            break;
        }
    }
    let a = match first {
        Some(a) => a,
        None => return scan_random(eps.len(), rng, ok),
    };
    let mut b = None;
    for _ in 0..8 {
        // A uniform pick among the other n-1 endpoints.
        let j = rng.below(n - 1) as usize;
        let j = if j >= a { j + 1 } else { j };
        if ok(j) {
            b = Some(j);
            break;
        }
    }
    let Some(b) = b else {
        return Some(a);
    };
    let cost = |i: usize| {
        let l = &eps[i];
        l.latency_ns(now) * (f64::from(l.in_flight()) + 1.0) / f64::from(l.weight().max(1))
    };
    Some(if cost(b) < cost(a) { b } else { a })
}

/// A uniformly random usable index, by scanning from a random start.
fn scan_random(n: usize, rng: &mut Rng, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let start = rng.below(n as u32) as usize;
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

/// Equal weights: the next usable position after the last pick.
fn round_robin(n: usize, state: &mut BalanceState, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..n {
        let i = state.cursor % n;
        state.cursor = i + 1;
        if ok(i) {
            return Some(i);
        }
    }
    None
}

/// Weighted round robin as earliest deadline first: each endpoint's next turn comes
/// `1/weight` after its last. An unusable endpoint loses its turn.
fn edf<L: Load>(eps: &[L], state: &mut BalanceState, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let step = |i: usize| EDF_SCALE / u64::from(eps[i].weight().max(1));
    if state.edf.is_empty() {
        for i in 0..eps.len() {
            // Spread first turns by position so that equal deadlines do not bunch up.
            state.edf.push(Reverse((step(i) + i as u64, i as u32)));
        }
    }
    for _ in 0..eps.len() {
        let Reverse((deadline, i)) = state.edf.pop()?;
        let i = i as usize;
        state.edf.push(Reverse((deadline + step(i), i as u32)));
        if ok(i) {
            return Some(i);
        }
    }
    None
}

/// Equal weights: a few random draws, then a scan when most endpoints are unusable.
fn uniform_random(n: usize, rng: &mut Rng, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..8 {
        let i = rng.below(n as u32) as usize;
        if ok(i) {
            return Some(i);
        }
    }
    scan_random(n, rng, ok)
}

/// Weighted random by binary search over cumulative weights; unusable endpoints are redrawn.
fn weighted_random<L: Load>(
    eps: &[L],
    state: &mut BalanceState,
    rng: &mut Rng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    if state.cumulative.len() != eps.len() {
        let mut total = 0;
        state.cumulative = eps
            .iter()
            .map(|e| {
                total += u64::from(e.weight().max(1));
                total
            })
            .collect();
    }
    let total = *state.cumulative.last()?;
    for _ in 0..8 {
        let r = rng.next_u64() % total;
        let i = state.cumulative.partition_point(|&c| c <= r);
        if ok(i) {
            return Some(i);
        }
    }
    scan_random(eps.len(), rng, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ep {
        weight: u32,
        in_flight: u32,
        latency_ms: f64,
        up: bool,
    }

    impl Load for Ep {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn in_flight(&self) -> u32 {
            self.in_flight
        }
        fn latency_ns(&self, _: Instant) -> f64 {
            self.latency_ms * 1e6
        }
        fn available(&self, _: Instant) -> bool {
            self.up
        }
    }

    fn ep(weight: u32, latency_ms: f64) -> Ep {
        Ep {
            weight,
            in_flight: 0,
            latency_ms,
            up: true,
        }
    }

    fn counts(lb: Lb, eps: &[Ep], n: usize, avoid: Option<usize>, panic: bool) -> Vec<usize> {
        let mut c = vec![0; eps.len()];
        let mut st = BalanceState::default();
        let mut rng = Rng::new(42);
        let now = Instant::now();
        for _ in 0..n {
            if let Some(i) = pick(lb, eps, &mut st, &mut rng, now, avoid, panic) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact_and_spread() {
        let eps = [ep(5, 1.0), ep(1, 1.0), ep(1, 1.0)];
        assert_eq!(
            counts(Lb::RoundRobin, &eps, 7_000, None, false),
            vec![5_000, 1_000, 1_000]
        );
        let mut st = BalanceState::default();
        let mut rng = Rng::new(1);
        let seq: Vec<_> = (0..7)
            .map(|_| {
                pick(
                    Lb::RoundRobin,
                    &eps,
                    &mut st,
                    &mut rng,
                    Instant::now(),
                    None,
                    false,
                )
                .unwrap()
            })
            .collect();
        // Within every seven picks each endpoint has its share.
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5, "{seq:?}");
        assert_eq!(
            counts(
                Lb::RoundRobin,
                &[ep(1, 1.0), ep(1, 1.0), ep(1, 1.0)],
                600,
                None,
                false
            ),
            vec![200; 3]
        );
    }

    #[test]
    fn random_follows_weights() {
        let c = counts(Lb::Random, &[ep(1, 1.0), ep(3, 1.0)], 40_000, None, false);
        assert!((9_000..11_000).contains(&c[0]), "{c:?}");
        let c = counts(Lb::Random, &[ep(1, 1.0), ep(1, 1.0)], 40_000, None, false);
        assert!((19_000..21_000).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn p2c_prefers_low_cost_and_honours_weights() {
        // With two endpoints the pair is always both: the cheaper always wins.
        assert_eq!(
            counts(Lb::P2cEwma, &[ep(1, 1.0), ep(1, 21.0)], 10_000, None, false),
            vec![10_000, 0]
        );
        let c = counts(
            Lb::P2cEwma,
            &[ep(1, 1.0), ep(1, 21.0), ep(1, 21.0)],
            9_000,
            None,
            false,
        );
        assert!(c[0] > 5_000, "{c:?}");
        // Same latency, weight 4 against 1: the heavy one is four times cheaper.
        assert_eq!(
            counts(Lb::P2cEwma, &[ep(4, 10.0), ep(1, 10.0)], 1_000, None, false),
            vec![1_000, 0]
        );
        // In-flight requests raise the cost.
        let mut busy = ep(1, 1.0);
        busy.in_flight = 50;
        assert_eq!(
            counts(Lb::P2cEwma, &[busy, ep(1, 20.0)], 100, None, false),
            vec![0, 100]
        );
    }

    #[test]
    fn never_picks_unavailable_or_avoided_unless_in_panic() {
        for lb in [Lb::P2cEwma, Lb::RoundRobin, Lb::Random] {
            for weights in [[1, 1, 1, 1], [1, 2, 3, 4]] {
                let mut eps: Vec<Ep> = weights.iter().map(|&w| ep(w, 1.0)).collect();
                eps[1].up = false;
                let c = counts(lb, &eps, 1_000, Some(2), false);
                assert_eq!((c[1], c[2]), (0, 0), "{lb:?} {c:?}");
                assert_eq!(c[0] + c[3], 1_000);
                let c = counts(lb, &eps, 1_000, None, true);
                assert!(c[1] > 0, "panic uses unhealthy endpoints: {lb:?} {c:?}");
                for e in &mut eps {
                    e.up = false;
                }
                assert_eq!(counts(lb, &eps, 10, None, false), vec![0; 4]);
            }
        }
    }

    #[test]
    fn peak_ewma_jumps_up_decays_down_and_refreshes_when_stale() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        assert!((e.estimate_ns(t0) - 30e6).abs() < 1.0);
        e.observe(t0, Duration::from_millis(5));
        assert!(
            (e.estimate_ns(t0) - 5e6).abs() < 1.0,
            "the first sample replaces the prior"
        );
        e.observe(t0, Duration::from_millis(100));
        assert!((e.estimate_ns(t0) - 100e6).abs() < 1.0, "peaks at once");
        let t1 = t0 + Duration::from_millis(100);
        e.observe(t1, Duration::from_millis(1));
        let est = e.estimate_ns(t1) / 1e6;
        assert!(est > 90.0, "decays slowly while samples keep coming: {est}");
        let idle = e.estimate_ns(t1 + Duration::from_secs(200));
        assert!(idle < 1e3, "decays while idle: {idle}");
        // After a second of silence the next sample is taken as the truth.
        let t2 = t1 + STALE_AFTER;
        assert!(e.is_stale(t2));
        e.observe(t2, Duration::from_millis(1));
        assert!((e.estimate_ns(t2) - 1e6).abs() < 1.0);
    }
}
