//! Live tap: the metadata of matching requests, streamed to whoever asked (`GET /tap` on the
//! admin API), as they end.
//!
//! With nobody tapping, a request pays one relaxed load of [`generation`] (a cache line written
//! only when a tap starts or ends) and a compare with the worker's cached copy. While someone
//! taps, each worker keeps its own copy of the tap list, refreshed when the generation moves, so
//! the request path takes no lock; an event is formatted once and offered to each matching tap
//! with a non-blocking send (a tap that does not keep up loses events, counted, rather than
//! slowing requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
// The list of taps is read only when a tap starts or ends (a worker refreshes its own copy then),
// never per request.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

/// Events a tap may ask for, and how many it gets when it does not say.
pub const MAX_EVENTS: u64 = 1_000_000;
pub const DEFAULT_EVENTS: u64 = 100;

/// What a tap wants to see; an empty field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub listener: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
}

impl Filter {
    /// Whether a request on this listener, route and cluster matches.
    pub fn matches(&self, listener: &str, route: Option<&str>, cluster: Option<&str>) -> bool {
        let ok = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        ok(&self.listener, Some(listener)) && ok(&self.route, route) && ok(&self.cluster, cluster)
    }
}

/// One tap session.
#[derive(Debug)]
pub struct Tap {
    /// What it wants.
    pub filter: Filter,
    /// Events still wanted; the workers stop offering at zero.
    left: AtomicU64,
    /// Events dropped because the reader was behind.
    pub dropped: AtomicU64,
    tx: flume::Sender<Vec<u8>>,
}

impl Tap {
    /// Offers one event (a JSON line); false once the tap wants no more.
    pub fn offer(&self, line: &[u8]) -> bool {
        // Claim one of the events left, or stop.
        let claimed = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
            return false;
        }
        if self.tx.try_send(line.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            // Not delivered: give the event back so that `n` counts what the reader got.
            self.left.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::disallowed_types)]
static TAPS: Mutex<Vec<Arc<Tap>>> = Mutex::new(Vec::new());

/// Moves whenever a tap starts or ends; a worker whose copy is older refreshes it with [`taps`].
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The taps in force (for a worker to keep its own copy).
pub fn taps() -> Vec<Arc<Tap>> {
    TAPS.lock().map(|t| t.clone()).unwrap_or_default()
}

/// A running tap; ends when dropped.
#[derive(Debug)]
pub struct Session {
    tap: Arc<Tap>,
    /// Events, as JSON lines.
    pub rx: flume::Receiver<Vec<u8>>,
}

impl Session {
    /// Starts tapping for at most `n` events, buffering up to `capacity` that the reader has
    /// not taken yet.
    pub fn start(filter: Filter, n: u64, capacity: usize) -> Session {
        let (tx, rx) = flume::bounded(capacity.max(1));
        let tap = Arc::new(Tap {
            filter,
            left: AtomicU64::new(n),
            dropped: AtomicU64::new(0),
            tx,
        });
        if let Ok(mut taps) = TAPS.lock() {
            taps.push(tap.clone());
        }
        GENERATION.fetch_add(1, Ordering::Release);
        Session { tap, rx }
    }

    /// Events dropped because the reader was behind.
    pub fn dropped(&self) -> u64 {
        self.tap.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(mut taps) = TAPS.lock() {
            taps.retain(|t| !Arc::ptr_eq(t, &self.tap));
        }
        GENERATION.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_by_each_field() {
        let f = Filter {
            route: Some("api".into()),
            ..Filter::default()
        };
        assert!(f.matches("edge", Some("api"), Some("be")));
        assert!(!f.matches("edge", Some("web"), Some("be")));
        assert!(!f.matches("edge", None, None));
        assert!(Filter::default().matches("edge", None, None));
    }

    #[test]
    fn a_session_gets_at_most_n_and_leaves_on_drop() {
        let g0 = generation();
        let s = Session::start(Filter::default(), 2, 16);
        assert_ne!(generation(), g0);
        let tap = taps().into_iter().find(|t| Arc::ptr_eq(t, &s.tap)).unwrap();
        assert!(tap.offer(b"a"));
        assert!(tap.offer(b"b"));
        assert!(!tap.offer(b"c"));
        assert_eq!(s.rx.try_iter().count(), 2);
        let g1 = generation();
        drop(s);
        assert_ne!(generation(), g1);
        assert!(!taps().iter().any(|t| Arc::ptr_eq(t, &tap)));
    }
}
