//! Per-worker state of one upstream endpoint: its pool of idle keep-alive connections, requests
//! in flight, latency estimate and outcome counters.
//!
//! An [`Endpoint`] is keyed by (cluster, address) and survives reloads for as long as the
//! endpoint stays in the config, so its pool and estimate are not lost to a config change.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balance::{Load, PeakEwma};
use crate::metrics::{EndpointReport, Outcome};
use crate::snapshot::EndpointSpec;

/// A pooled connection and when it went idle.
struct Idle {
    stream: TcpStream,
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
    in_flight: Cell<u32>,
    ewma: Cell<PeakEwma>,
    outcomes: [Cell<u64>; Outcome::COUNT],
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
            in_flight: Cell::new(0),
            ewma: Cell::new(PeakEwma::new(now)),
            outcomes: Default::default(),
        }
    }

    /// The most recently pooled connection that has not been idle too long, if any.
    pub fn checkout(&self, now: Instant, idle_timeout: Duration) -> Option<TcpStream> {
        let mut pool = self.pool.borrow_mut();
        let idle = pool.pop()?;
        if now.saturating_duration_since(idle.since) < idle_timeout {
            return Some(idle.stream);
        }
        // The newest is stale, so all are.
        pool.clear();
        None
    }

    /// Pools a connection that can carry another request.
    pub fn checkin(&self, stream: TcpStream, now: Instant, max_idle: usize) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < max_idle {
            pool.push(Idle { stream, since: now });
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

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.clone())
    }

    /// Records a round trip (request sent to response head).
    pub fn observe(&self, now: Instant, rtt: Duration) {
        let mut e = self.ewma.get();
        e.observe(now, rtt);
        self.ewma.set(e);
    }

    /// Counts how a request ended.
    pub fn record(&self, outcome: Outcome) {
        let c = &self.outcomes[outcome as usize];
        c.set(c.get() + 1);
    }

    /// Requests in flight from this worker.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// Latency estimate.
    pub fn latency_ns(&self, now: Instant) -> f64 {
        self.ewma.get().estimate_ns(now)
    }

    /// Cost input for balancing: an endpoint never measured and with nothing in flight costs
    /// nothing, so that it is measured at its first chance instead of waiting for the others'
    /// estimates to decay below the default; once one request is out, the default applies.
    pub fn balance_latency_ns(&self, now: Instant) -> f64 {
        let e = self.ewma.get();
        if !e.is_sampled() && self.in_flight.get() == 0 {
            return 0.0;
        }
        e.estimate_ns(now)
    }

    /// State for the scraper.
    pub fn report(&self, spec: &EndpointSpec, now: Instant) -> EndpointReport {
        EndpointReport {
            cluster: self.cluster.clone(),
            addr: self.addr,
            zone: spec.zone.clone(),
            priority: spec.priority,
            weight: spec.weight,
            in_flight: self.in_flight.get(),
            ewma_seconds: self.latency_ns(now) / 1e9,
            pooled: self.pooled(),
            outcomes: self.outcomes.each_ref().map(Cell::get),
        }
    }
}

/// Guard of one request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight(Rc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = &self.0.in_flight;
        n.set(n.get().saturating_sub(1));
    }
}

/// An endpoint as one cluster of one view sees it: shared state plus this config's weight.
#[derive(Debug, Clone)]
pub struct Member {
    /// Shared per-worker state.
    pub ep: Rc<Endpoint>,
    /// Weight in this config.
    pub weight: u32,
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
    fn available(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_idle_endpoint_is_tried_first_then_costs_the_default() {
        let now = Instant::now();
        let ep = Rc::new(Endpoint::new(
            "c".into(),
            "127.0.0.1:1".parse().unwrap(),
            now,
        ));
        assert_eq!(ep.balance_latency_ns(now), 0.0);
        let guard = ep.begin();
        assert!(
            (ep.balance_latency_ns(now) - 30e6).abs() < 1.0,
            "no flood while the probe is out"
        );
        drop(guard);
        ep.observe(now, Duration::from_millis(2));
        assert!((ep.balance_latency_ns(now) - 2e6).abs() < 1.0);
        assert_eq!(ep.in_flight(), 0);
    }
}
