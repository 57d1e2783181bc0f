//! Metrics: recorded per worker without locks, merged only when scraped.
//!
//! A worker owns its counters and histograms (plain `Cell`s and hdrhistograms). A scrape asks
//! every worker for a [`WorkerReport`] over its command channel; the reports are merged and
//! rendered in the Prometheus text format (the names are listed in docs/config.md). Series are keyed by name, so they
//! survive reloads for as long as their route, listener or endpoint does.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use crate::error::ErrorKind;

mod count;
mod render;
pub use count::Count;
use render::{by_kind, header};
pub use render::{escape_label, render};

/// Upper bounds (seconds) of the request-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Requests per bucket of [`DURATION_BUCKETS`] (not cumulative), and past the last bound.
pub fn bucket_counts(h: &Histogram<u64>) -> [u64; DURATION_BUCKETS.len() + 1] {
    let mut counts = [0u64; DURATION_BUCKETS.len() + 1];
    for v in h.iter_recorded() {
        let s = v.value_iterated_to() as f64 / 1e6;
        let i = DURATION_BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(DURATION_BUCKETS.len());
        counts[i] += v.count_at_value();
    }
    counts
}

/// Highest duration tracked exactly (one hour, in microseconds); longer ones saturate.
const HIST_MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // Two significant digits keep each histogram near 20 KiB; it is created on first use.
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("constant histogram bounds are valid")
}

/// Counters of one (listener, route, cluster).
#[derive(Debug, Default)]
pub struct RouteStats {
    codes: RefCell<Vec<(u16, u64)>>,
    hist: RefCell<Option<Box<Histogram<u64>>>>,
    sum_us: Cell<u64>,
    retries: Cell<u64>,
    /// The route actions' own counters, by [`Count`].
    counts: [Cell<u64>; Count::N],
}

impl RouteStats {
    /// Records one finished request.
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        {
            let mut codes = self.codes.borrow_mut();
            match codes.iter_mut().find(|(c, _)| *c == status) {
                Some((_, n)) => *n += 1,
                None => codes.push((status, 1)),
            }
        }
        let us = elapsed.as_micros().min(u128::from(HIST_MAX_US)) as u64;
        self.sum_us.set(self.sum_us.get() + us);
        let mut h = self.hist.borrow_mut();
        h.get_or_insert_with(|| Box::new(new_histogram()))
            .saturating_record(us.max(1));
    }

    /// Counts a retry.
    #[inline]
    pub fn retried(&self) {
        self.retries.set(self.retries.get() + 1);
    }

    /// Adds `n` to one of the route's action counters.
    #[inline]
    pub fn count(&self, what: Count, n: u64) {
        let c = &self.counts[what as usize];
        c.set(c.get() + n);
    }

    fn report(&self, listener: &Arc<str>, route: &Arc<str>, cluster: &Arc<str>) -> RouteReport {
        RouteReport {
            listener: listener.clone(),
            route: route.clone(),
            cluster: cluster.clone(),
            codes: self.codes.borrow().clone(),
            hist: self.hist.borrow().as_deref().cloned(),
            sum_us: self.sum_us.get(),
            retries: self.retries.get(),
            counts: std::array::from_fn(|i| self.counts[i].get()),
        }
    }
}

/// Counters of one listener on one worker.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open connections.
    pub active: Cell<u64>,
    /// Connections accepted.
    pub accepted: Cell<u64>,
    local: [Cell<u64>; ErrorKind::ALL.len()],
    tls: [Cell<u64>; Handshake::ALL.len()],
    h2: [Cell<u64>; H2Event::ALL.len()],
    redirected: [Cell<u64>; Redirected::ALL.len()],
    inbound: [Cell<u64>; InboundConn::ALL.len()],
}

impl ListenerStats {
    /// Counts a connection an inbound listener took, by how it was served.
    #[inline]
    pub fn inbound(&self, r: InboundConn) {
        let c = &self.inbound[r as usize];
        c.set(c.get() + 1);
    }

    /// Counts a connection an outbound listener took, by where it went.
    #[inline]
    pub fn redirected(&self, r: Redirected) {
        let c = &self.redirected[r as usize];
        c.set(c.get() + 1);
    }

    /// Counts an HTTP/2 event.
    #[inline]
    pub fn h2(&self, e: H2Event) {
        let c = &self.h2[e as usize];
        c.set(c.get() + 1);
    }

    /// Counts a TLS handshake by how it ended.
    #[inline]
    pub fn handshake(&self, h: Handshake) {
        let c = &self.tls[h as usize];
        c.set(c.get() + 1);
    }

    /// Counts an answer the proxy made itself (or a request it dropped).
    #[inline]
    pub fn local_reply(&self, kind: ErrorKind) {
        let c = &self.local[kind.index()];
        c.set(c.get() + 1);
    }
}

/// How one upstream request ended, per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response.
    Status5xx,
    /// Could not connect.
    ConnectFailed,
    /// Closed or reset before the response was complete.
    Reset,
    /// Malformed response.
    ProtocolError,
    /// No response in time.
    Timeout,
}

impl Outcome {
    /// Number of outcomes.
    pub const COUNT: usize = 6;
    /// Every outcome, by index.
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Success,
        Outcome::Status5xx,
        Outcome::ConnectFailed,
        Outcome::Reset,
        Outcome::ProtocolError,
        Outcome::Timeout,
    ];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Status5xx => "5xx",
            Outcome::ConnectFailed => "connect-failed",
            Outcome::Reset => "reset",
            Outcome::ProtocolError => "protocol-error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Key of a route series.
pub type RouteKey = (Arc<str>, Arc<str>, Arc<str>);

/// Every metric a worker records, by name.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    routes: RefCell<FxHashMap<RouteKey, Rc<RouteStats>>>,
    listeners: RefCell<FxHashMap<Arc<str>, Rc<ListenerStats>>>,
    /// Policy denials by (listener, policy, audit).
    denials: RefCell<FxHashMap<DenialKey, u64>>,
}

/// Key of a policy-denial series: listener, policy, audit mode.
pub type DenialKey = (Arc<str>, Arc<str>, bool);

impl WorkerMetrics {
    /// The series of (listener, route, cluster), created on first use.
    pub fn route(
        &self,
        listener: &Arc<str>,
        route: &Arc<str>,
        cluster: &Arc<str>,
    ) -> Rc<RouteStats> {
        let key = (listener.clone(), route.clone(), cluster.clone());
        self.routes.borrow_mut().entry(key).or_default().clone()
    }

    /// The series of a listener, created on first use.
    pub fn listener(&self, name: &Arc<str>) -> Rc<ListenerStats> {
        self.listeners
            .borrow_mut()
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// Counts a request (or connection) a policy denied, or would deny in audit mode.
    pub fn denied(&self, listener: &Arc<str>, policy: &str, audit: bool) {
        let mut d = self.denials.borrow_mut();
        // Looked up by name first: no allocation once the series exists.
        if let Some((_, n)) = d
            .iter_mut()
            .find(|((l, p, a), _)| l == listener && &**p == policy && *a == audit)
        {
            *n += 1;
            return;
        }
        d.insert((listener.clone(), Arc::from(policy), audit), 1);
    }

    /// Forgets route series no configuration refers to any more (after a reload), so that
    /// route churn does not grow memory without bound.
    pub fn forget_unused(&self) {
        self.routes
            .borrow_mut()
            .retain(|_, s| Rc::strong_count(s) > 1);
    }

    /// A copy of everything, to send to the scraper.
    pub fn report(
        &self,
        worker: usize,
        endpoints: Vec<EndpointReport>,
        clusters: Vec<ClusterReport>,
    ) -> WorkerReport {
        let routes = self
            .routes
            .borrow()
            .iter()
            .map(|((l, r, c), s)| s.report(l, r, c))
            .collect();
        let listeners = self
            .listeners
            .borrow()
            .iter()
            .map(|(name, s)| ListenerReport {
                name: name.clone(),
                active: s.active.get(),
                accepted: s.accepted.get(),
                local: ErrorKind::ALL.map(|k| s.local[k.index()].get()),
                tls: Handshake::ALL.map(|h| s.tls[h as usize].get()),
                h2: H2Event::ALL.map(|e| s.h2[e as usize].get()),
                redirected: Redirected::ALL.map(|r| s.redirected[r as usize].get()),
                inbound: InboundConn::ALL.map(|r| s.inbound[r as usize].get()),
            })
            .collect();
        let denials = self
            .denials
            .borrow()
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        WorkerReport {
            denials,
            worker,
            routes,
            listeners,
            endpoints,
            clusters,
        }
    }
}

/// One worker's metrics at scrape time.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    /// Worker index.
    pub worker: usize,
    /// Route series.
    pub routes: Vec<RouteReport>,
    /// Listener series.
    pub listeners: Vec<ListenerReport>,
    /// Endpoint state.
    pub endpoints: Vec<EndpointReport>,
    /// Cluster counters.
    pub clusters: Vec<ClusterReport>,
    /// Policy denials.
    pub denials: Vec<(DenialKey, u64)>,
}

/// A circuit-breaker limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections`.
    Connections,
    /// `max_pending`.
    Pending,
    /// `max_requests`.
    Requests,
}

impl Limit {
    /// Every limit, by index.
    pub const ALL: [Limit; 3] = [Limit::Connections, Limit::Pending, Limit::Requests];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Pending => "pending",
            Limit::Requests => "requests",
        }
    }
}

/// A cluster's counters in one worker at scrape time.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    /// Cluster name.
    pub name: Arc<str>,
    /// Requests in flight.
    pub active: u32,
    /// Open upstream connections.
    pub connections: u32,
    /// Requests refused per limit.
    pub overflow: [u64; 3],
    /// Retries refused by the budget.
    pub budget_refused: u64,
    /// Zone-aware routing: each zone's share of requests, in basis points (summed over the
    /// workers that report one; divide by `zone_reports`). Empty when off.
    pub zones: Vec<(Arc<str>, u64)>,
    /// How many workers' shares `zones` adds up.
    pub zone_reports: u32,
}

/// A route series at scrape time.
#[derive(Debug, Clone)]
pub struct RouteReport {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route name (empty for requests no route matched).
    pub route: Arc<str>,
    /// Cluster name (empty when none was chosen).
    pub cluster: Arc<str>,
    /// Count per status code.
    pub codes: Vec<(u16, u64)>,
    /// Durations in microseconds.
    pub hist: Option<Histogram<u64>>,
    /// Sum of durations in microseconds.
    pub sum_us: u64,
    /// Retries.
    pub retries: u64,
    /// The route actions' counters, by [`Count`].
    pub counts: [u64; Count::N],
}

/// A counter family with one series per listener and `label` value.
fn listener_counts(
    out: &mut String,
    m: &Merged,
    (name, label): (&str, &str),
    help: &str,
    counts: impl Fn(&ListenerReport) -> Vec<(&'static str, u64)>,
) {
    header(out, name, "counter", help);
    for l in &m.listeners {
        by_kind(out, name, &l.name, label, &counts(l));
    }
}

/// A listener series at scrape time.
#[derive(Debug, Clone)]
pub struct ListenerReport {
    /// Listener name.
    pub name: Arc<str>,
    /// Open connections.
    pub active: u64,
    /// Accepted connections.
    pub accepted: u64,
    /// Answers made by the proxy, per error kind.
    pub local: [u64; ErrorKind::ALL.len()],
    /// TLS handshakes, by [`Handshake`].
    pub tls: [u64; Handshake::ALL.len()],
    /// HTTP/2 events, by [`H2Event`].
    pub h2: [u64; H2Event::ALL.len()],
    /// Connections of an outbound listener, by [`Redirected`].
    pub redirected: [u64; Redirected::ALL.len()],
    /// Connections of an inbound listener, by [`InboundConn`].
    pub inbound: [u64; InboundConn::ALL.len()],
}

/// How an inbound listener served a connection from another pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundConn {
    /// Over the mesh's mTLS.
    Mesh,
    /// In cleartext, on a permissive port.
    Plaintext,
    /// In cleartext on a strict port: closed.
    RefusedPlaintext,
    /// To a port the workload does not declare: closed.
    UndeclaredPort,
    /// Not redirected, or going back to the listener itself: closed.
    NotRedirected,
}

impl InboundConn {
    /// Every value, in index order.
    pub const ALL: [InboundConn; 5] = [
        InboundConn::Mesh,
        InboundConn::Plaintext,
        InboundConn::RefusedPlaintext,
        InboundConn::UndeclaredPort,
        InboundConn::NotRedirected,
    ];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            InboundConn::Mesh => "mesh",
            InboundConn::Plaintext => "plaintext",
            InboundConn::RefusedPlaintext => "refused-plaintext",
            InboundConn::UndeclaredPort => "undeclared-port",
            InboundConn::NotRedirected => "not-redirected",
        }
    }
}

/// Where an outbound listener sent a connection an application made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirected {
    /// To a mesh service, served request by request (HTTP/1.1 or HTTP/2 detected).
    MeshHttp,
    /// To a mesh service, as opaque TCP balanced over its endpoints.
    MeshOpaque,
    /// Outside the mesh, passed through to where it was going.
    Passthrough,
    /// Outside the mesh, refused (`unknown_destinations: refuse`).
    Refused,
    /// Not redirected (made straight to the listener), or going back to the proxy itself:
    /// closed.
    NotRedirected,
}

impl Redirected {
    /// Every value, in index order.
    pub const ALL: [Redirected; 5] = [
        Redirected::MeshHttp,
        Redirected::MeshOpaque,
        Redirected::Passthrough,
        Redirected::Refused,
        Redirected::NotRedirected,
    ];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            Redirected::MeshHttp => "mesh-http",
            Redirected::MeshOpaque => "mesh-opaque",
            Redirected::Passthrough => "passthrough",
            Redirected::Refused => "refused",
            Redirected::NotRedirected => "not-redirected",
        }
    }
}

/// What happens on HTTP/2 connections, counted per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Event {
    /// A connection began speaking HTTP/2.
    Connection,
    /// A stream was served (a request).
    Stream,
    /// The client reset a stream before it was answered.
    ClientReset,
    /// The connection ended with GOAWAY `ENHANCE_YOUR_CALM`: the client reset too many
    /// streams, or made the proxy reset too many for its protocol errors.
    Abuse,
    /// The connection ended on a protocol error (GOAWAY with an error, or an I/O error).
    Error,
    /// The proxy ended the connection gracefully (idle, or drain).
    Goaway,
}

impl H2Event {
    /// Every event, in index order.
    pub const ALL: [H2Event; 6] = [
        H2Event::Connection,
        H2Event::Stream,
        H2Event::ClientReset,
        H2Event::Abuse,
        H2Event::Error,
        H2Event::Goaway,
    ];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            H2Event::Connection => "connection",
            H2Event::Stream => "stream",
            H2Event::ClientReset => "client_reset",
            H2Event::Abuse => "abuse",
            H2Event::Error => "error",
            H2Event::Goaway => "goaway",
        }
    }
}

/// How a TLS handshake with a client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed with a full handshake.
    Full,
    /// Completed by resuming a session (ticket or session id).
    Resumed,
    /// No protocol version, cipher suite, group or ALPN protocol in common.
    Incompatible,
    /// The client sent something that is not TLS, or TLS out of order.
    Malformed,
    /// The client's certificate was missing or not trusted.
    ClientCertificate,
    /// The client ended the handshake with an alert (for example, it does not trust ours).
    AlertReceived,
    /// The client closed the connection or reset it mid-handshake.
    Closed,
    /// The handshake took longer than the listener's `request_head_timeout`.
    Timeout,
    /// Any other failure.
    Other,
}

impl Handshake {
    /// Every result, by index.
    pub const ALL: [Handshake; 9] = [
        Handshake::Full,
        Handshake::Resumed,
        Handshake::Incompatible,
        Handshake::Malformed,
        Handshake::ClientCertificate,
        Handshake::AlertReceived,
        Handshake::Closed,
        Handshake::Timeout,
        Handshake::Other,
    ];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            Handshake::Full => "full",
            Handshake::Resumed => "resumed",
            Handshake::Incompatible => "incompatible",
            Handshake::Malformed => "malformed",
            Handshake::ClientCertificate => "client_certificate",
            Handshake::AlertReceived => "alert_received",
            Handshake::Closed => "closed",
            Handshake::Timeout => "timeout",
            Handshake::Other => "other",
        }
    }
}

/// An endpoint's state in one worker at scrape time.
#[derive(Debug, Clone)]
pub struct EndpointReport {
    /// Cluster name.
    pub cluster: Arc<str>,
    /// Address.
    pub addr: SocketAddr,
    /// Zone.
    pub zone: Option<Arc<str>>,
    /// Priority.
    pub priority: u32,
    /// Weight.
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate, seconds.
    pub ewma_seconds: f64,
    /// Idle pooled connections.
    pub pooled: usize,
    /// Requests per outcome.
    pub outcomes: [u64; Outcome::COUNT],
    /// Workers that have the endpoint ejected by outlier detection (each decides alone).
    pub ejected: u32,
    /// Ejections so far.
    pub ejections: u64,
    /// Passes its health checks (or has none).
    pub healthy: bool,
    /// Health checks passed and failed, when checked (shared by all workers).
    pub checks: Option<(u64, u64)>,
}

/// Sums of every worker's reports, keyed for rendering.
#[derive(Debug, Default)]
pub struct Merged {
    /// Route series, sorted by key.
    pub routes: Vec<RouteReport>,
    /// Listener series, sorted by name.
    pub listeners: Vec<ListenerReport>,
    /// Endpoints, sorted by cluster and address; `in_flight`, `pooled` and `outcomes` summed,
    /// `ewma_seconds` averaged over workers.
    pub endpoints: Vec<EndpointReport>,
    /// Clusters, sorted by name, summed over workers.
    pub clusters: Vec<ClusterReport>,
    /// Policy denials, sorted, summed over workers.
    pub denials: Vec<(DenialKey, u64)>,
}

/// Merges worker reports.
pub fn merge(reports: &[WorkerReport]) -> Merged {
    let mut routes: FxHashMap<RouteKey, RouteReport> = FxHashMap::default();
    let mut clusters: FxHashMap<Arc<str>, ClusterReport> = FxHashMap::default();
    for c in reports.iter().flat_map(|r| &r.clusters) {
        match clusters.get_mut(&c.name) {
            None => {
                clusters.insert(c.name.clone(), c.clone());
            }
            Some(m) => {
                m.active += c.active;
                m.connections += c.connections;
                m.budget_refused += c.budget_refused;
                for (a, b) in m.overflow.iter_mut().zip(c.overflow) {
                    *a += b;
                }
                if !c.zones.is_empty() {
                    m.zone_reports += c.zone_reports;
                    for (name, share) in &c.zones {
                        match m.zones.iter_mut().find(|(n, _)| n == name) {
                            Some((_, s)) => *s += share,
                            None => m.zones.push((name.clone(), *share)),
                        }
                    }
                }
            }
        }
    }
    let mut clusters: Vec<_> = clusters.into_values().collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut listeners: FxHashMap<Arc<str>, ListenerReport> = FxHashMap::default();
    let mut endpoints: FxHashMap<(Arc<str>, SocketAddr), (EndpointReport, u32)> =
        FxHashMap::default();
    for rep in reports {
        for r in &rep.routes {
            let key = (r.listener.clone(), r.route.clone(), r.cluster.clone());
            match routes.get_mut(&key) {
                None => {
                    routes.insert(key, r.clone());
                }
                Some(m) => {
                    for &(code, n) in &r.codes {
                        match m.codes.iter_mut().find(|(c, _)| *c == code) {
                            Some((_, t)) => *t += n,
                            None => m.codes.push((code, n)),
                        }
                    }
                    m.sum_us += r.sum_us;
                    m.retries += r.retries;
                    for (t, n) in m.counts.iter_mut().zip(r.counts) {
                        *t += n;
                    }
                    match (&mut m.hist, &r.hist) {
                        (Some(a), Some(b)) => {
                            let _ = a.add(b);
                        }
                        (a @ None, Some(b)) => *a = Some(b.clone()),
                        _ => {}
                    }
                }
            }
        }
        for l in &rep.listeners {
            match listeners.get_mut(&l.name) {
                None => {
                    listeners.insert(l.name.clone(), l.clone());
                }
                Some(m) => {
                    m.active += l.active;
                    m.accepted += l.accepted;
                    for (a, b) in m.tls.iter_mut().zip(l.tls) {
                        *a += b;
                    }
                    for (a, b) in m.h2.iter_mut().zip(l.h2) {
                        *a += b;
                    }
                    for (a, b) in m.redirected.iter_mut().zip(l.redirected) {
                        *a += b;
                    }
                    for (a, b) in m.inbound.iter_mut().zip(l.inbound) {
                        *a += b;
                    }
                    for (a, b) in m.local.iter_mut().zip(l.local) {
                        *a += b;
                    }
                }
            }
        }
        for e in &rep.endpoints {
            let key = (e.cluster.clone(), e.addr);
            match endpoints.get_mut(&key) {
                None => {
                    endpoints.insert(key, (e.clone(), 1));
                }
                Some((m, n)) => {
                    m.in_flight += e.in_flight;
                    m.pooled += e.pooled;
                    m.ewma_seconds += e.ewma_seconds;
                    m.ejected += e.ejected;
                    m.ejections += e.ejections;
                    *n += 1;
                    for (a, b) in m.outcomes.iter_mut().zip(e.outcomes) {
                        *a += b;
                    }
                }
            }
        }
    }
    let mut routes: Vec<_> = routes.into_values().collect();
    routes.sort_by(|a, b| {
        (&a.listener, &a.route, &a.cluster).cmp(&(&b.listener, &b.route, &b.cluster))
    });
    for r in &mut routes {
        r.codes.sort_unstable();
    }
    let mut listeners: Vec<_> = listeners.into_values().collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    let mut endpoints: Vec<_> = endpoints
        .into_values()
        .map(|(mut e, n)| {
            e.ewma_seconds /= f64::from(n);
            e
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.cluster, a.addr).cmp(&(&b.cluster, b.addr)));
    let mut denials: FxHashMap<DenialKey, u64> = FxHashMap::default();
    for (k, n) in reports.iter().flat_map(|r| &r.denials) {
        *denials.entry(k.clone()).or_default() += n;
    }
    let mut denials: Vec<_> = denials.into_iter().collect();
    denials.sort();
    Merged {
        routes,
        listeners,
        endpoints,
        clusters,
        denials,
    }
}

#[cfg(test)]
mod tests;
