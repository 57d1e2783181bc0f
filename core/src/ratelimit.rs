//! Rate limits: a token bucket per route in each worker.
//!
//! A route's limit (`rps`, `burst`) is divided among the workers: each of N workers refills at
//! rps/N tokens per second and holds at most burst/N (at least one). With traffic spread over
//! the workers, as SO_REUSEPORT spreads connections, the total holds; nothing is shared between
//! workers on the request path.

use std::time::{Duration, Instant};

/// A route's limit: for the whole proxy as configured, or one worker's share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rps: f64,
    pub burst: f64,
}

impl RateLimit {
    /// What each of `workers` workers enforces: the rate divided, the burst divided but at
    /// least one request.
    pub fn share(self, workers: usize) -> RateLimit {
        let n = workers.max(1) as f64;
        RateLimit {
            rps: self.rps / n,
            burst: (self.burst / n).max(1.0),
        }
    }
}

/// One worker's bucket for one route.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket enforcing `share` (one worker's), full at `now`.
    pub fn new(share: RateLimit, now: Instant) -> Bucket {
        let capacity = share.burst.max(1.0);
        Bucket {
            rate: share.rps,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes a token; when there is none, how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = if self.rate > 0.0 {
            (1.0 - self.tokens) / self.rate
        } else {
            3600.0
        };
        Err(Duration::from_secs_f64(wait.min(3600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                rps: 100.0,
                burst: 20.0,
            }
            .share(2),
            t0,
        );
        let mut ok = 0;
        for _ in 0..100 {
            ok += usize::from(b.take(t0).is_ok());
        }
        assert_eq!(ok, 10, "half the burst in this worker");
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.02).abs() < 1e-9, "{wait:?}");
        // One second later: 50 tokens came, but at most 10 are held.
        let t1 = t0 + Duration::from_secs(1);
        let mut ok = 0;
        for _ in 0..100 {
            ok += usize::from(b.take(t1).is_ok());
        }
        assert_eq!(ok, 10);
        // Over ten seconds of steady demand: the rate.
        let mut ok = 0;
        for ms in 0..10_000u64 {
            let t = t1 + Duration::from_millis(ms);
            while b.take(t).is_ok() {
                ok += 1;
            }
        }
        assert!((495..=510).contains(&ok), "{ok}");
    }

    #[test]
    fn a_tiny_share_still_allows_one_request() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                rps: 1.0,
                burst: 1.0,
            }
            .share(4),
            t0,
        );
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(4));
    }
}
