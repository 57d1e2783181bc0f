//! Per-worker state of one upstream endpoint: its pool of idle keep-alive connections, requests
//! in flight, latency estimate, outlier state and outcome counters.
//!
//! An [`Endpoint`] is keyed by (cluster, address) and survives reloads for as long as the
//! endpoint stays in the config, so its pool, estimate and ejection are not lost to a config
//! change.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::Io;

use crate::balance::{FAILURE_PENALTY, Load, PeakEwma};
use crate::breaker::{ClusterState, ConnCount};
use crate::health::HealthCell;
use crate::metrics::{EndpointReport, Outcome};
use crate::outlier::{Change, Outlier, OutlierConfig};
use crate::pacing::{OpenSlot, Pacing};

/// An upstream connection, counted against its cluster's connection limit, and against its
/// endpoint's ([`Pacing`]), while it lives.
pub struct UpConn {
    /// The connection.
    pub(crate) stream: Io,
    /// `None` for a stream on an HTTP/2 connection (the connection itself is counted).
    counted: Option<Counted>,
}

/// Where a connection is counted, held apart from it while its stream is split.
pub(crate) struct Counted {
    _cluster: ConnCount,
    _endpoint: Option<OpenSlot<UpConn>>,
}

impl UpConn {
    /// Counts `stream` as one of `cluster`'s connections, and as `endpoint`'s (its slot taken
    /// when the connect began), until dropped.
    pub(crate) fn new(
        stream: Io,
        cluster: Rc<ClusterState>,
        endpoint: Option<OpenSlot<UpConn>>,
    ) -> UpConn {
        UpConn {
            stream,
            counted: Some(Counted {
                _cluster: ConnCount::new(cluster),
                _endpoint: endpoint,
            }),
        }
    }

    /// A stream on an HTTP/2 connection.
    pub(crate) fn stream(stream: Io) -> UpConn {
        UpConn {
            stream,
            counted: None,
        }
    }

    /// The stream and its place in the counts, apart (to split the stream for full duplex).
    pub(crate) fn into_parts(self) -> (Io, Option<Counted>) {
        (self.stream, self.counted)
    }

    /// Puts back what [`UpConn::into_parts`] took apart.
    pub(crate) fn from_parts(stream: Io, counted: Option<Counted>) -> UpConn {
        UpConn { stream, counted }
    }
}

/// A pooled connection and when it went idle.
struct Idle {
    conn: UpConn,
    since: Instant,
}

/// See the module docs.
pub struct Endpoint {
    /// Cluster name.
    pub cluster: Arc<str>,
    /// Address.
    pub addr: SocketAddr,
    /// `ip:port`, sent as Host when a client sent none.
    pub host: Box<[u8]>,
    pool: RefCell<Vec<Idle>>,
    /// New HTTP/1.1 connections, paced; and the line of requests waiting for one.
    pub(crate) pacing: Rc<Pacing<UpConn>>,
    /// HTTP/2 connections (clusters speaking HTTP/2).
    pub(crate) h2: crate::h2::drive::client::Conns,
    in_flight: Cell<u32>,
    ewma: Cell<PeakEwma>,
    outlier: Cell<Outlier>,
    outcomes: [Cell<u64>; Outcome::COUNT],
    ejections: Cell<u64>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("cluster", &self.cluster)
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight.get())
            .finish()
    }
}

impl Endpoint {
    /// A fresh endpoint with an empty pool and the default latency estimate.
    pub fn new(cluster: Arc<str>, addr: SocketAddr, now: Instant) -> Self {
        Endpoint {
            cluster,
            addr,
            host: addr.to_string().into_bytes().into(),
            pool: RefCell::new(Vec::new()),
            pacing: Rc::default(),
            h2: Default::default(),
            in_flight: Cell::new(0),
            ewma: Cell::new(PeakEwma::new(now)),
            outlier: Cell::new(Outlier::default()),
            outcomes: Default::default(),
            ejections: Cell::new(0),
        }
    }

    /// The most recently pooled connection that has not been idle too long, if any.
    pub fn checkout(&self, now: Instant, idle_timeout: Duration) -> Option<UpConn> {
        let mut pool = self.pool.borrow_mut();
        let idle = pool.pop()?;
        if now.saturating_duration_since(idle.since) < idle_timeout {
            return Some(idle.conn);
        }
        // The newest is stale, so all are.
        pool.clear();
        None
    }

    /// Hands a connection that can carry another request to the first request waiting for
    /// one, or pools it.
    pub fn checkin(&self, conn: UpConn, now: Instant, max_idle: usize) {
        if matches!(conn.stream, Io::H2Up(_)) {
            // An HTTP/2 stream ends with its exchange; its connection stays with `h2`.
            return;
        }
        let Some(conn) = self.pacing.hand_over(conn) else {
            return;
        };
        let mut pool = self.pool.borrow_mut();
        if pool.len() < max_idle {
            pool.push(Idle { conn, since: now });
        }
    }

    /// Closes pooled connections idle for `idle_timeout` or more.
    pub fn sweep(&self, now: Instant, idle_timeout: Duration) {
        self.pool
            .borrow_mut()
            .retain(|i| now.saturating_duration_since(i.since) < idle_timeout);
    }

    /// Idle pooled connections.
    pub fn pooled(&self) -> usize {
        self.pool.borrow().len()
    }

    /// Counts a request in flight until the guard drops; in outlier probing, it is the probe.
    pub fn begin(self: &Rc<Self>, now: Instant) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        let mut o = self.outlier.get();
        let probe = o.sent(now);
        self.outlier.set(o);
        InFlight {
            ep: self.clone(),
            probe,
        }
    }

    /// Records a round trip (request sent to response head).
    pub fn observe(&self, now: Instant, rtt: Duration) {
        let mut e = self.ewma.get();
        e.observe(now, rtt);
        self.ewma.set(e);
    }

    /// Records how a request ended: outcome counters, latency, outlier state. A failure is
    /// recorded as a slow round trip, so that an endpoint failing fast does not attract
    /// traffic. `may_eject` tells whether the cluster's ejection cap leaves room.
    pub fn record(
        &self,
        outcome: Outcome,
        now: Instant,
        rtt: Duration,
        outlier: Option<(&OutlierConfig, bool, f64)>,
    ) -> Change {
        let c = &self.outcomes[outcome as usize];
        c.set(c.get() + 1);
        let failed = !matches!(outcome, Outcome::Success);
        self.observe(
            now,
            if failed {
                rtt.max(FAILURE_PENALTY)
            } else {
                rtt
            },
        );
        let Some((cfg, may_eject, jitter)) = outlier else {
            return Change::None;
        };
        let mut o = self.outlier.get();
        let change = if failed {
            o.failure(now, cfg, may_eject, jitter)
        } else {
            o.success(now, cfg)
        };
        self.outlier.set(o);
        if change == Change::Ejected {
            self.ejections.set(self.ejections.get() + 1);
            tracing::warn!(cluster = %self.cluster, endpoint = %self.addr, "ejected after consecutive failures");
        }
        change
    }

    /// Whether outlier detection lets a request through now.
    pub fn outlier_available(&self, now: Instant) -> bool {
        let mut o = self.outlier.get();
        let ok = o.available(now);
        self.outlier.set(o);
        ok
    }

    /// Whether the endpoint is ejected (or probing).
    pub fn is_ejected(&self) -> bool {
        self.outlier.get().is_ejected()
    }

    /// Requests in flight from this worker.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// Latency estimate.
    pub fn latency_ns(&self, now: Instant) -> f64 {
        self.ewma.get().estimate_ns(now)
    }

    /// Cost input for balancing. An endpoint never measured, or not measured for a while, with
    /// nothing in flight costs nothing: it gets one request, whose sample tells the truth,
    /// instead of waiting for the others' estimates to decay below its old one. With that
    /// request out, its estimate applies.
    pub fn balance_latency_ns(&self, now: Instant) -> f64 {
        let e = self.ewma.get();
        if self.in_flight.get() == 0 && (!e.is_sampled() || e.is_stale(now)) {
            return 0.0;
        }
        e.estimate_ns(now)
    }

    /// State for the scraper, as `m` (this endpoint in the current view) stands.
    pub fn report(&self, m: &Member, now: Instant) -> EndpointReport {
        EndpointReport {
            cluster: self.cluster.clone(),
            addr: self.addr,
            zone: m.zone.clone(),
            priority: m.priority,
            weight: m.weight,
            in_flight: self.in_flight.get(),
            ewma_seconds: self.latency_ns(now) / 1e9,
            pooled: self.pooled(),
            outcomes: self.outcomes.each_ref().map(Cell::get),
            ejected: u32::from(self.is_ejected()),
            ejections: self.ejections.get(),
            healthy: m.healthy(),
            checks: m.health.as_ref().map(|h| h.counts()),
        }
    }
}

/// Guard of one request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight {
    ep: Rc<Endpoint>,
    /// The request is the outlier probe: if it ends with no outcome booked, another may probe.
    probe: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = &self.ep.in_flight;
        n.set(n.get().saturating_sub(1));
        if self.probe {
            let mut o = self.ep.outlier.get();
            o.probe_abandoned();
            self.ep.outlier.set(o);
        }
    }
}

/// An endpoint as one cluster of one view sees it: shared state plus this config's weight and
/// health cell.
#[derive(Debug, Clone)]
pub struct Member {
    /// Shared per-worker state.
    pub ep: Rc<Endpoint>,
    /// Weight in this config.
    pub weight: u32,
    /// Priority level.
    pub priority: u32,
    /// Active health, when the cluster checks it.
    pub health: Option<Arc<HealthCell>>,
    /// Zone (datacenter), if known.
    pub zone: Option<Arc<str>>,
}

impl Member {
    /// Passes its health checks (or has none).
    #[inline]
    pub fn healthy(&self) -> bool {
        self.health.as_ref().is_none_or(|h| h.is_healthy())
    }
}

impl Load for Member {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> u32 {
        self.ep.in_flight()
    }
    fn latency_ns(&self, now: Instant) -> f64 {
        self.ep.balance_latency_ns(now)
    }
    fn available(&self, now: Instant) -> bool {
        self.healthy() && self.ep.outlier_available(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(now: Instant) -> Rc<Endpoint> {
        Rc::new(Endpoint::new(
            "c".into(),
            "127.0.0.1:1".parse().unwrap(),
            now,
        ))
    }

    #[test]
    fn an_unmeasured_or_stale_idle_endpoint_gets_a_probe() {
        let now = Instant::now();
        let ep = ep(now);
        assert_eq!(ep.balance_latency_ns(now), 0.0);
        let guard = ep.begin(now);
        assert!(
            (ep.balance_latency_ns(now) - 30e6).abs() < 1.0,
            "no flood while the probe is out"
        );
        drop(guard);
        ep.observe(now, Duration::from_millis(2));
        assert!((ep.balance_latency_ns(now) - 2e6).abs() < 1.0);
        assert_eq!(
            ep.balance_latency_ns(now + Duration::from_secs(2)),
            0.0,
            "stale: probe again"
        );
    }

    #[test]
    fn fast_failures_look_slow_and_eject() {
        let now = Instant::now();
        let ep = ep(now);
        let cfg = OutlierConfig {
            consecutive_failures: 2,
            ..OutlierConfig::default()
        };
        ep.record(
            Outcome::Success,
            now,
            Duration::from_millis(1),
            Some((&cfg, true, 0.5)),
        );
        assert!(ep.latency_ns(now) < 2e6);
        let c = ep.record(
            Outcome::Status5xx,
            now,
            Duration::from_micros(100),
            Some((&cfg, true, 0.5)),
        );
        assert_eq!(c, Change::None);
        assert!(
            ep.latency_ns(now) >= 1e9,
            "a fast 503 is recorded as a slow answer"
        );
        let c = ep.record(
            Outcome::Reset,
            now,
            Duration::from_micros(100),
            Some((&cfg, true, 0.5)),
        );
        assert_eq!(c, Change::Ejected);
        assert!(!ep.outlier_available(now));
        assert!(ep.is_ejected());
    }
}
