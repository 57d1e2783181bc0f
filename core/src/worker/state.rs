//! What a worker's tasks share: the view in force, endpoint and cluster state that outlives
//! config versions, buffers, parsed-head storage, the RNG, the idle sets, metrics, access log
//! buffers, TLS sessions and the tap list. One per thread, shared through `Rc`; nothing in it is
//! touched by another thread.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashMap;

use super::view::{ListenerView, RouteTarget, View};
use crate::access_log::{self, Sink, Target};
use crate::breaker::ClusterState;
use crate::buf::{BUF_SIZE, BULK_BUF_SIZE, BufPool, SMALL_BUF_SIZE};
use crate::cluster::ClusterView;
use crate::endpoint::Endpoint;
use crate::head::{RequestHead, ResponseHead};
use crate::idle::IdleSet;
use crate::metrics::{ListenerStats, WorkerMetrics, WorkerReport};
use crate::rng::Rng;
use crate::route::{Action, SplitState};
use crate::snapshot::{Protocol, Snapshot};
use crate::tap::{self, Tap};

/// Endpoint state is kept across reloads by (cluster, address).
type EndpointKey = (Arc<str>, SocketAddr);

/// Audit-mode policy hits logged per worker per second (all are counted in metrics).
pub const AUDIT_LINES_PER_SECOND: u32 = 20;

/// A worker's whole state; one per thread, shared by its tasks through `Rc`.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    pub(super) view: RefCell<Rc<View>>,
    pub(super) endpoints: RefCell<FxHashMap<EndpointKey, Rc<Endpoint>>>,
    pub(super) clusters: RefCell<FxHashMap<Arc<str>, Rc<ClusterState>>>,
    /// Bumped when endpoint availability may have changed; cluster views recompute their
    /// failover split when it moves.
    availability: Cell<u64>,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) bufs: BufPool,
    /// Bulk buffers, for large bodies.
    pub(crate) bulk: BufPool,
    /// Small buffers, for connections waiting for their next request.
    pub(crate) small: BufPool,
    /// Parsed-head storage, lent to connections while they handle requests.
    heads: RefCell<Vec<(RequestHead, ResponseHead)>>,
    rng: RefCell<Rng>,
    /// Set by drain: connections close after their current request.
    pub(super) draining: Cell<bool>,
    /// Audit log lines in the current second, and that second's start: audit logging is
    /// bounded so that a busy audited route cannot flood the log.
    audit_lines: Cell<(Option<Instant>, u32)>,
    /// Connections waiting for their next request.
    pub(crate) idle: IdleSet,
    /// Long request deadlines (route and body timeouts of seconds), kept to the sweeper's tick
    /// instead of a timer each; drain does not fire them.
    pub(crate) deadlines: IdleSet,
    pub(super) connections: Cell<usize>,
    /// Answers being compressed (each holds an encoder; see `proxy::coded`).
    pub(crate) coded_streams: Cell<usize>,
    /// Copies of requests in flight to shadow clusters (`proxy::forward::mirror`).
    pub(crate) mirrors: Cell<usize>,
    /// Bytes held for copies: bodies being buffered for one, and copies in flight.
    pub(crate) mirror_bytes: Cell<usize>,
    /// Access log buffers, by destination, kept across reloads.
    pub(super) sinks: RefCell<FxHashMap<Target, Rc<Sink>>>,
    /// Span export buffer (`tracing`), kept across reloads.
    pub(crate) spans: crate::spans::SpanSink,
    /// This worker's copy of the live taps, and the generation it was taken at.
    taps: RefCell<(u64, Vec<Arc<Tap>>)>,
    /// A monotonic instant and the wall-clock time then, renewed every sweeper tick: log lines
    /// get their wall time from the instant already read, not from another clock read.
    pub(super) wall: Cell<(Instant, SystemTime)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub(super) fn new(id: usize) -> Worker {
        Worker {
            id,
            view: RefCell::new(Rc::new(View::empty())),
            endpoints: RefCell::new(FxHashMap::default()),
            clusters: RefCell::new(FxHashMap::default()),
            availability: Cell::new(0),
            coded_streams: Cell::new(0),
            mirrors: Cell::new(0),
            mirror_bytes: Cell::new(0),
            metrics: WorkerMetrics::default(),
            bufs: BufPool::new(BUF_SIZE, 256),
            small: BufPool::new(SMALL_BUF_SIZE, 1024),
            bulk: BufPool::new(BULK_BUF_SIZE, 64),
            heads: RefCell::new(Vec::new()),
            rng: RefCell::new(Rng::from_entropy()),
            draining: Cell::new(false),
            audit_lines: Cell::new((None, 0)),
            idle: IdleSet::default(),
            deadlines: IdleSet::default(),
            connections: Cell::new(0),
            sinks: RefCell::new(FxHashMap::default()),
            spans: Default::default(),
            taps: RefCell::new((tap::generation(), Vec::new())),
            wall: Cell::new((Instant::now(), SystemTime::now())),
        }
    }

    /// The wall-clock time at `at` (to the accuracy of the last tick's clock reading).
    #[inline]
    pub(crate) fn wall_time(&self, at: Instant) -> SystemTime {
        let (i, t) = self.wall.get();
        match at.checked_duration_since(i) {
            Some(d) => t + d,
            None => t - i.saturating_duration_since(at),
        }
    }

    /// Calls `f` with the live taps, if there are any. Costs one atomic load when there are
    /// none.
    #[inline]
    pub(crate) fn with_taps(&self, f: impl FnOnce(&[Arc<Tap>])) {
        let generation = tap::generation();
        let mut taps = self.taps.borrow_mut();
        if taps.0 != generation {
            *taps = (generation, tap::taps());
        }
        if !taps.1.is_empty() {
            f(&taps.1);
        }
    }

    /// Hands every buffered access log line and span to its writer.
    pub(crate) fn flush_logs(&self) {
        for sink in self.sinks.borrow().values() {
            sink.flush();
        }
        self.spans.flush();
    }

    /// Returns a buffer of either size to its pool.
    #[inline]
    pub(crate) fn put_buf(&self, buf: Vec<u8>) {
        match buf.capacity() {
            SMALL_BUF_SIZE => self.small.put(buf),
            BULK_BUF_SIZE => self.bulk.put(buf),
            _ => self.bufs.put(buf),
        }
    }

    /// Head storage for a connection handling requests.
    #[inline]
    pub(crate) fn take_heads(&self) -> (RequestHead, ResponseHead) {
        self.heads.borrow_mut().pop().unwrap_or_default()
    }

    /// Gives head storage back.
    #[inline]
    pub(crate) fn put_heads(&self, heads: (RequestHead, ResponseHead)) {
        let mut h = self.heads.borrow_mut();
        if h.len() < 1024 {
            h.push(heads);
        }
    }

    /// The view in force; a request holds it until it ends.
    #[inline]
    pub(crate) fn view(&self) -> Rc<View> {
        self.view.borrow().clone()
    }

    /// The worker's RNG, for a synchronous call.
    #[inline]
    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.borrow_mut())
    }

    /// What the cluster views choose with: the worker's random numbers, and its availability
    /// generation.
    #[inline]
    pub fn draw(&self) -> crate::cluster::Draw<'_> {
        crate::cluster::Draw {
            rng: &self.rng,
            availability: &self.availability,
        }
    }

    /// Notes that an endpoint's availability changed (ejection, return, health).
    pub(crate) fn availability_changed(&self) {
        self.availability
            .set(self.availability.get().wrapping_add(1));
    }

    /// Whether the worker is draining: connections close after their current request.
    #[inline]
    pub(crate) fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Counts an open connection until the guard drops.
    pub(crate) fn connection(self: &Rc<Self>, stats: Rc<ListenerStats>) -> ConnGuard {
        self.connections.set(self.connections.get() + 1);
        stats.active.set(stats.active.get() + 1);
        stats.accepted.set(stats.accepted.get() + 1);
        ConnGuard {
            worker: self.clone(),
            stats,
        }
    }

    pub(crate) fn build_view(&self, snapshot: Arc<Snapshot>) -> View {
        let now = Instant::now();
        let endpoints = self.endpoints.borrow();
        let states = self.clusters.borrow();
        let clusters = snapshot
            .clusters
            .iter()
            .map(|c| {
                let state = states
                    .get(&c.name)
                    .cloned()
                    .unwrap_or_else(|| Rc::new(ClusterState::new(now)));
                ClusterView::new(c, state, |addr| {
                    endpoints
                        .get(&(c.name.clone(), addr))
                        .cloned()
                        .unwrap_or_else(|| Rc::new(Endpoint::new(c.name.clone(), addr, now)))
                })
            })
            .collect();
        let unrouted: Arc<str> = Arc::from("");
        let listeners = snapshot
            .listeners
            .iter()
            .map(|l| {
                let target = |route: &Arc<str>, ci: usize| {
                    let cluster = &snapshot.clusters[ci].name;
                    let named = (!route.is_empty()).then_some(&**route);
                    RouteTarget {
                        stats: self.metrics.route(&l.name, route, cluster),
                        log_names: access_log::names(&l.name, named, Some(cluster)),
                    }
                };
                let routes = match &l.protocol {
                    Protocol::Http(h) => h
                        .routes
                        .routes()
                        .iter()
                        .map(|r| {
                            let mut t: Vec<RouteTarget> =
                                r.clusters().map(|ci| target(&r.name, ci)).collect();
                            if t.is_empty() {
                                // A route that answers itself: its series has no cluster.
                                let named = (!r.name.is_empty()).then_some(&*r.name);
                                t.push(RouteTarget {
                                    stats: self.metrics.route(&l.name, &r.name, &unrouted),
                                    log_names: access_log::names(&l.name, named, None),
                                });
                            }
                            t
                        })
                        .collect(),
                    Protocol::Tcp { route, .. } => vec![
                        route
                            .clusters()
                            .into_iter()
                            .map(|ci| target(&unrouted, ci))
                            .collect(),
                    ],
                };
                let splits = match &l.protocol {
                    Protocol::Http(h) => h
                        .routes
                        .routes()
                        .iter()
                        .map(|r| {
                            RefCell::new(match &r.action {
                                Action::Split(s) => s.state(),
                                _ => SplitState::default(),
                            })
                        })
                        .collect(),
                    Protocol::Tcp { .. } => Vec::new(),
                };
                let log = match &l.protocol {
                    Protocol::Http(h) => h.access_log.as_ref().map(|spec| {
                        let sink = self
                            .sinks
                            .borrow_mut()
                            .entry(spec.target.clone())
                            .or_insert_with(|| Rc::new(Sink::new(spec.target.clone())))
                            .clone();
                        (sink, spec.threshold())
                    }),
                    Protocol::Tcp { .. } => None,
                };
                let tls = match &l.protocol {
                    Protocol::Http(h) => h.tls.as_ref().map(crate::tls::ServerTls::config),
                    Protocol::Tcp { .. } => None,
                };
                let buckets = match &l.protocol {
                    Protocol::Http(h) => h
                        .routes
                        .routes()
                        .iter()
                        .map(|r| {
                            r.rate_limit.map(|share| {
                                RefCell::new(crate::ratelimit::Bucket::new(share, Instant::now()))
                            })
                        })
                        .collect(),
                    Protocol::Tcp { .. } => Vec::new(),
                };
                ListenerView {
                    buckets,
                    tls,
                    stats: self.metrics.listener(&l.name),
                    routes,
                    splits,
                    log,
                    unrouted: self.metrics.route(&l.name, &unrouted, &unrouted),
                    unrouted_names: access_log::names(&l.name, None, None),
                }
            })
            .collect();
        View {
            snapshot,
            clusters,
            listeners,
        }
    }

    /// Serves from `view` from now on. Endpoint and cluster state lives on for those that
    /// remain; the rest is dropped once the last request holding it ends (closing its pooled
    /// connections).
    pub(super) fn install(&self, view: Rc<View>) {
        let mut eps = FxHashMap::default();
        for cv in &view.clusters {
            for m in &cv.members {
                eps.insert((m.ep.cluster.clone(), m.ep.addr), m.ep.clone());
            }
        }
        *self.endpoints.borrow_mut() = eps;
        *self.clusters.borrow_mut() = view
            .snapshot
            .clusters
            .iter()
            .zip(&view.clusters)
            .map(|(c, cv)| (c.name.clone(), cv.state.clone()))
            .collect();
        self.availability_changed();
        self.spans.set(view.snapshot.spans.clone());
        *self.view.borrow_mut() = view;
        self.metrics.forget_unused();
        // Destinations no listener logs to any more: written out, then closed.
        self.sinks.borrow_mut().retain(|_, sink| {
            let used = Rc::strong_count(sink) > 1;
            if !used {
                sink.flush();
            }
            used
        });
    }

    /// Endpoints this worker keeps state for.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.borrow().len()
    }

    /// Whether an audit line may be logged now (at most [`AUDIT_LINES_PER_SECOND`]).
    pub(crate) fn audit_log_allowed(&self, now: Instant) -> bool {
        let (since, n) = self.audit_lines.get();
        match since {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => {
                self.audit_lines.set((since, n + 1));
                n < AUDIT_LINES_PER_SECOND
            }
            _ => {
                self.audit_lines.set((Some(now), 1));
                true
            }
        }
    }

    pub(super) fn report(&self) -> WorkerReport {
        let view = self.view();
        let now = Instant::now();
        let mut endpoints = Vec::new();
        let mut clusters = Vec::new();
        for (c, cv) in view.snapshot.clusters.iter().zip(&view.clusters) {
            for m in &cv.members {
                endpoints.push(m.ep.report(m, now));
            }
            let mut report = cv.state.report(&c.name);
            report.zones = cv.zone_shares(self.draw(), now);
            report.zone_reports = u32::from(!report.zones.is_empty());
            clusters.push(report);
        }
        self.metrics.report(self.id, endpoints, clusters)
    }
}

/// Counts one open connection.
pub(crate) struct ConnGuard {
    worker: Rc<Worker>,
    stats: Rc<ListenerStats>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let c = &self.worker.connections;
        c.set(c.get().saturating_sub(1));
        self.stats
            .active
            .set(self.stats.active.get().saturating_sub(1));
    }
}
