//! Passive health: outlier ejection by consecutive failures (Linkerd's consecutive-failure
//! breaker, Envoy's outlier detection).
//!
//! Pure state machine, one per endpoint per worker; the caller passes the time and a random
//! number. Consecutive failures (connect errors, resets, timeouts, 5xx) reach the threshold:
//! the endpoint is ejected for a backoff that doubles with each ejection (with jitter), up to a
//! cap. When the backoff ends one probe request is let through: success brings the endpoint
//! back, failure ejects it again for the next backoff. The cluster-wide cap (`max_ejected`) is
//! checked by the caller, which knows how many endpoints are ejected.

use std::time::{Duration, Instant};

/// Settings of outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection time; doubled for each further ejection.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most endpoints of a cluster ejected at once, in percent.
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Where an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking requests; counting consecutive failures.
    Active,
    /// Ejected until this time.
    Ejected(Instant),
    /// The backoff ended: one probe request may go; it decides.
    Probing {
        /// Whether the probe is out.
        sent: bool,
    },
}

/// Outlier state of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    phase: Phase,
    failures: u32,
    /// Ejections so far (the backoff doubles with each); forgiven after a healthy stretch.
    ejections: u32,
    /// When the endpoint last came back, to forgive past ejections.
    back_since: Option<Instant>,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            phase: Phase::Active,
            failures: 0,
            ejections: 0,
            back_since: None,
        }
    }
}

/// What a recorded outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing that changes availability.
    None,
    /// The endpoint was ejected.
    Ejected,
    /// The endpoint came back.
    Returned,
}

impl Outlier {
    /// The current phase, after letting time pass (an ended backoff turns into probing).
    pub fn phase(&mut self, now: Instant) -> Phase {
        if let Phase::Ejected(until) = self.phase {
            if now >= until {
                self.phase = Phase::Probing { sent: false };
            }
        }
        self.phase
    }

    /// Whether a request may be sent now. In probing, only one.
    pub fn available(&mut self, now: Instant) -> bool {
        match self.phase(now) {
            Phase::Active => true,
            Phase::Ejected(_) => false,
            Phase::Probing { sent } => !sent,
        }
    }

    /// Whether the endpoint is out of rotation (ejected, or probing with the probe out).
    pub fn is_ejected(&self) -> bool {
        !matches!(self.phase, Phase::Active)
    }

    /// Notes that a request was sent; true when it is the probe.
    pub fn sent(&mut self, now: Instant) -> bool {
        let probe = self.phase(now) == Phase::Probing { sent: false };
        if probe {
            self.phase = Phase::Probing { sent: true };
        }
        probe
    }

    /// A probe ended with no outcome (the client left, a limit refused it): the next request
    /// probes instead.
    pub fn probe_abandoned(&mut self) {
        if self.phase == (Phase::Probing { sent: true }) {
            self.phase = Phase::Probing { sent: false };
        }
    }

    /// Records a success.
    pub fn success(&mut self, now: Instant, cfg: &OutlierConfig) -> Change {
        self.failures = 0;
        if let Some(since) = self.back_since {
            // A healthy stretch as long as the first ejection forgives past ejections.
            if now.saturating_duration_since(since) >= cfg.base_ejection {
                self.ejections = 0;
                self.back_since = None;
            }
        }
        match self.phase(now) {
            Phase::Probing { .. } => {
                self.phase = Phase::Active;
                self.back_since = Some(now);
                Change::Returned
            }
            _ => Change::None,
        }
    }

    /// Records a failure. `may_eject` says whether the cluster's cap allows one more ejection;
    /// `jitter` is uniform in [0, 1).
    pub fn failure(
        &mut self,
        now: Instant,
        cfg: &OutlierConfig,
        may_eject: bool,
        jitter: f64,
    ) -> Change {
        self.failures = self.failures.saturating_add(1);
        match self.phase(now) {
            Phase::Probing { .. } => {
                // The probe failed: straight back out, for longer (not bounded by the cap: it
                // was already counted as ejected).
                self.eject(now, cfg, jitter);
                Change::Ejected
            }
            Phase::Active if self.failures >= cfg.consecutive_failures.max(1) && may_eject => {
                self.eject(now, cfg, jitter);
                Change::Ejected
            }
            _ => Change::None,
        }
    }

    fn eject(&mut self, now: Instant, cfg: &OutlierConfig, jitter: f64) {
        self.ejections = self.ejections.saturating_add(1);
        self.failures = 0;
        self.back_since = None;
        let doubled = cfg
            .base_ejection
            .saturating_mul(1u32 << (self.ejections - 1).min(20));
        let backoff = doubled.min(cfg.max_ejection);
        // Jitter of ±25% so that workers and endpoints do not come back in lockstep.
        let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
        self.phase = Phase::Ejected(now + backoff.mul_f64(factor));
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }
}

/// Whether one more of `n` endpoints may be ejected when `ejected` already are.
pub fn may_eject(ejected: usize, n: usize, max_percent: u32) -> bool {
    n > 0 && (ejected + 1) * 100 <= n * max_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_then_probes() {
        let c = cfg();
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.failure(t0, &c, true, 0.5), Change::None);
        assert_eq!(
            o.success(t0, &c),
            Change::None,
            "a success resets the count"
        );
        assert_eq!(o.failure(t0, &c, true, 0.5), Change::None);
        assert_eq!(o.failure(t0, &c, true, 0.5), Change::None);
        assert_eq!(o.failure(t0, &c, true, 0.5), Change::Ejected);
        assert!(!o.available(t0 + Duration::from_secs(9)));
        // Backoff over: one probe, and only one.
        let t1 = t0 + Duration::from_secs(10);
        assert!(o.available(t1));
        o.sent(t1);
        assert!(!o.available(t1), "one probe at a time");
        assert_eq!(o.success(t1, &c), Change::Returned);
        assert!(o.available(t1));
        assert!(!o.is_ejected());
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap() {
        let c = cfg();
        let mut t = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..3 {
            o.failure(t, &c, true, 0.5);
        }
        let mut expected = [10u64, 20, 35, 35].into_iter();
        loop {
            let Phase::Ejected(until) = o.phase(t) else {
                panic!("ejected")
            };
            let secs = until.duration_since(t).as_secs();
            let Some(e) = expected.next() else { break };
            assert_eq!(secs, e);
            t = until;
            assert!(o.available(t));
            o.sent(t);
            assert_eq!(
                o.failure(t, &c, false, 0.5),
                Change::Ejected,
                "probe failure ignores the cap"
            );
        }
    }

    #[test]
    fn jitter_spreads_the_backoff() {
        let c = cfg();
        let t = Instant::now();
        let backoff = |j: f64| {
            let mut o = Outlier::default();
            for _ in 0..3 {
                o.failure(t, &c, true, j);
            }
            match o.phase(t) {
                Phase::Ejected(u) => u.duration_since(t).as_secs_f64(),
                _ => 0.0,
            }
        };
        assert!((backoff(0.0) - 7.5).abs() < 0.01);
        assert!((backoff(0.999) - 12.5).abs() < 0.01);
    }

    #[test]
    fn the_cap_holds_and_a_healthy_stretch_forgives() {
        assert!(may_eject(0, 4, 50));
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        assert!(
            !may_eject(0, 1, 50),
            "the only endpoint of a cluster is never ejected at 50%"
        );
        assert!(may_eject(0, 1, 100));
        let c = cfg();
        let t = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..5 {
            assert_eq!(
                o.failure(t, &c, false, 0.5),
                Change::None,
                "over the cap: not ejected"
            );
        }
        assert!(o.available(t));
        // Eject, come back, stay healthy for a base period: the next ejection is short again.
        o.failure(t, &c, true, 0.5);
        let back = t + Duration::from_secs(10);
        o.sent(back);
        o.success(back, &c);
        o.success(back + Duration::from_secs(11), &c);
        assert_eq!(o.ejections(), 0);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let c = OutlierConfig::default();
        let t = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..5 {
            o.failure(t, &c, true, 0.5);
        }
        let later = t + Duration::from_secs(20);
        assert!(
            o.sent(later),
            "the first request after the backoff is the probe"
        );
        assert!(!o.available(later), "one probe at a time");
        assert!(!o.sent(later));
        o.probe_abandoned();
        assert!(
            o.available(later),
            "no outcome came back: another request may probe"
        );
    }
}
