//! Load balancing: which endpoint of a cluster takes the next request.
//!
//! Pure code: the caller passes the endpoints' loads, the time and the RNG. Three policies:
//! power of two choices over peak-EWMA cost (default, as in Finagle and Linkerd), smooth
//! weighted round robin (as in nginx) and weighted random.
//!
//! Each worker balances on what it sees itself: its own in-flight requests and its own latency
//! samples. Envoy makes the same trade; it keeps the request path free of shared writes, and with
//! SO_REUSEPORT spreading connections evenly the per-worker views converge.

use std::time::{Duration, Instant};

use crate::rng::Rng;

/// Balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lb {
    /// Power of two choices over peak-EWMA cost.
    #[default]
    P2cEwma,
    /// Smooth weighted round robin.
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

/// Peak-EWMA latency estimate: jumps up to any slower sample at once, decays towards faster
/// ones (and towards zero while idle) with a time constant of [`DECAY`].
///
/// The default RTT is only a prior: the first sample replaces it, so that endpoints are told
/// apart from the first answer instead of after a decay period.
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
        let sample = rtt.as_nanos() as f64;
        let current = self.decayed(now);
        self.estimate_ns = if !self.sampled {
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

    /// The estimate at `now`, in nanoseconds.
    pub fn estimate_ns(&self, now: Instant) -> f64 {
        self.decayed(now)
    }

    #[inline]
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        (-elapsed / DECAY.as_nanos() as f64).exp()
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
    fn available(&self) -> bool;
}

/// State a policy keeps between picks (per cluster, per worker).
#[derive(Debug, Clone, Default)]
pub struct BalanceState {
    /// Smooth weighted round robin: current weight of each endpoint.
    current: Vec<i64>,
    /// Plain round robin: the next position.
    cursor: usize,
    /// Whether every endpoint has the same weight (then picks are O(1)), once known.
    uniform: Option<bool>,
}

/// Picks an endpoint among `eps` that is available and not `avoid`. `None` when none is.
pub fn pick<L: Load>(
    lb: Lb,
    eps: &[L],
    state: &mut BalanceState,
    rng: &mut Rng,
    now: Instant,
    avoid: Option<usize>,
) -> Option<usize> {
    let ok = |i: usize| Some(i) != avoid && eps[i].available();
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
        (Lb::RoundRobin, false) => smooth_rr(eps, state, &ok),
        (Lb::Random, true) => uniform_random(eps.len(), rng, &ok),
        (Lb::Random, false) => weighted_random(eps, rng, &ok),
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

/// nginx's smooth weighted round robin: spreads heavy endpoints' turns evenly.
fn smooth_rr<L: Load>(
    eps: &[L],
    state: &mut BalanceState,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    if state.current.len() != eps.len() {
        state.current = vec![0; eps.len()];
    }
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, l) in eps.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        let w = i64::from(l.weight().max(1));
        state.current[i] += w;
        total += w;
        if best.is_none_or(|b| state.current[i] > state.current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    state.current[b] -= total;
    Some(b)
}

fn weighted_random<L: Load>(
    eps: &[L],
    rng: &mut Rng,
    ok: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let total: u64 = (0..eps.len())
        .filter(|&i| ok(i))
        .map(|i| u64::from(eps[i].weight().max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.next_u64() % total;
    for (i, l) in eps.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        let w = u64::from(l.weight().max(1));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
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
        fn available(&self) -> bool {
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

    fn counts(lb: Lb, eps: &[Ep], n: usize, avoid: Option<usize>) -> Vec<usize> {
        let mut c = vec![0; eps.len()];
        let mut st = BalanceState::default();
        let mut rng = Rng::new(42);
        let now = Instant::now();
        for _ in 0..n {
            if let Some(i) = pick(lb, eps, &mut st, &mut rng, now, avoid) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let eps = [ep(5, 1.0), ep(1, 1.0), ep(1, 1.0)];
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
                )
                .unwrap()
            })
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn random_follows_weights() {
        let c = counts(Lb::Random, &[ep(1, 1.0), ep(3, 1.0)], 40_000, None);
        assert!((9_000..11_000).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn p2c_prefers_the_fast_endpoint() {
        let c = counts(Lb::P2cEwma, &[ep(1, 1.0), ep(1, 21.0)], 10_000, None);
        // Both picks land on the slow one a quarter of the time... unless distinct: with two
        // endpoints the pair is always both, so the fast one always wins.
        assert_eq!(c, vec![10_000, 0]);
        let c = counts(
            Lb::P2cEwma,
            &[ep(1, 1.0), ep(1, 21.0), ep(1, 21.0)],
            9_000,
            None,
        );
        assert!(c[0] > 5_000, "{c:?}");
    }

    #[test]
    fn never_picks_unavailable_or_avoided() {
        for lb in [Lb::P2cEwma, Lb::RoundRobin, Lb::Random] {
            let mut eps = vec![ep(1, 1.0), ep(1, 1.0), ep(1, 1.0), ep(1, 1.0)];
            eps[1].up = false;
            let c = counts(lb, &eps, 1_000, Some(2));
            assert_eq!((c[1], c[2]), (0, 0), "{lb:?} {c:?}");
            assert_eq!(c[0] + c[3], 1_000);
            for e in &mut eps {
                e.up = false;
            }
            assert_eq!(counts(lb, &eps, 10, None), vec![0; 4]);
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
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
        let t1 = t0 + Duration::from_secs(10);
        e.observe(t1, Duration::from_millis(1));
        let est = e.estimate_ns(t1) / 1e6;
        assert!(est < 40.0 && est > 1.0, "{est}");
        let idle = e.estimate_ns(t1 + Duration::from_secs(100));
        assert!(idle < 1e3, "decays while idle: {idle}");
    }
}
