//! Workers: one pinned thread per core, each running its own monoio runtime.
//!
//! A worker owns everything its connections touch: listeners (its own SO_REUSEPORT sockets),
//! endpoint state and pools, balancer state, metrics and buffers. The control side talks to it
//! only through its command channel ([`Command`]): config changes in two phases (every worker
//! prepares, then all commit or all abort), metric scrapes and drain. Nothing on the request path
//! takes a lock or writes memory another thread reads.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashMap;

use crate::access_log::{self, Sink, Target};
use crate::buf::{BUF_SIZE, BULK_BUF_SIZE, BufPool, SMALL_BUF_SIZE};
use crate::cluster::{ClusterState, ClusterView};
use crate::endpoint::Endpoint;
use crate::http1::{RequestHead, ResponseHead};
use crate::idle::{self, IdleSet};
use crate::listener::{self, ListenerTask};
use crate::metrics::{ListenerStats, RouteStats, WorkerMetrics, WorkerReport};
use crate::rng::Rng;
use crate::route::{Action, SplitState};
use crate::snapshot::{Protocol, Snapshot};
use crate::tap::{self, Tap};

/// A request from the control side to a worker.
#[derive(Debug)]
pub enum Command {
    /// Build a view of this snapshot and bind its new listeners, without serving from it yet.
    Prepare {
        /// The snapshot.
        snapshot: Arc<Snapshot>,
        /// Ok, or why this worker cannot serve it.
        reply: flume::Sender<Result<(), String>>,
    },
    /// Serve from the prepared view.
    Commit {
        /// Sent once the new view is in force.
        reply: flume::Sender<()>,
    },
    /// Forget the prepared view.
    Abort,
    /// Send a copy of the metrics and endpoint state.
    Report {
        /// Where to send it.
        reply: flume::Sender<WorkerReport>,
    },
    /// Stop accepting, let connections finish their current request, then answer.
    Drain {
        /// Sent when no connection is left.
        reply: flume::Sender<()>,
    },
    /// End the thread (after a drain); open connections are closed.
    Stop,
}

/// The control side's handle on a worker thread.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Worker index.
    pub id: usize,
    tx: flume::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Sends a command; false if the worker is gone.
    pub fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// A sender of commands to this worker, for other threads (admin scrapes).
    pub fn sender(&self) -> flume::Sender<Command> {
        self.tx.clone()
    }

    /// Stops the worker and waits for its thread to end.
    pub fn join(mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Settings of a worker thread.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// CPU to pin the thread to, if any.
    pub cpu: Option<usize>,
    /// io_uring submission queue size.
    pub ring_entries: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            cpu: None,
            ring_entries: 4096,
        }
    }
}

static LOGGED_FALLBACK: AtomicBool = AtomicBool::new(false);

/// Whether workers run on io_uring (false: monoio's epoll driver, where io_uring is missing,
/// forbidden by seccomp, or `MONOIO_FORCE_LEGACY_DRIVER` is set).
pub fn io_uring_available() -> bool {
    monoio::utils::detect_uring()
}

/// Starts a worker thread.
pub fn spawn(id: usize, opts: WorkerOptions) -> io::Result<WorkerHandle> {
    let (tx, rx) = flume::unbounded();
    let thread = std::thread::Builder::new()
        .name(format!("ringmesh-w{id}"))
        .spawn(move || {
            if let Some(cpu) = opts.cpu {
                if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                    tracing::warn!(worker = id, cpu, error = %e, "could not pin worker");
                }
            }
            let mut rt = match runtime(opts.ring_entries) {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = id, error = %e, "cannot start runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let legacy = !monoio::utils::detect_uring();
                if legacy && !LOGGED_FALLBACK.swap(true, Ordering::Relaxed) {
                    tracing::warn!("io_uring unavailable: workers use the epoll driver");
                }
                tracing::debug!(worker = id, cpu = ?opts.cpu, io_uring = !legacy, "worker started");
                let w = Rc::new(Worker::new(id));
                monoio::spawn(sweep(w.clone()));
                run(w, rx).await;
            });
        })?;
    Ok(WorkerHandle {
        id,
        tx,
        thread: Some(thread),
    })
}

/// What [`runtime`] builds: io_uring with timers, or epoll with timers.
pub type WorkerRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// The runtime a worker runs on, with `entries` in its io_uring (the epoll driver where io_uring
/// is unavailable).
///
/// Completions run when the worker enters the kernel itself (one issuer per ring), not by
/// interrupting it. Kernels before 6.1 refuse these flags: the ring is then built without them.
pub fn runtime(entries: u32) -> std::io::Result<WorkerRuntime> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(entries)
        .uring_builder(ring)
        .enable_timer()
        .build()
        .or_else(|_| {
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(entries)
                .enable_timer()
                .build()
        })
}

/// Endpoint state is kept across reloads by (cluster, address).
type EndpointKey = (Arc<str>, SocketAddr);

/// Audit-mode policy hits logged per worker per second (all are counted in metrics).
pub const AUDIT_LINES_PER_SECOND: u32 = 20;

/// A worker's whole state; one per thread, shared by its tasks through `Rc`.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    view: RefCell<Rc<View>>,
    pending: RefCell<Option<Pending>>,
    endpoints: RefCell<FxHashMap<EndpointKey, Rc<Endpoint>>>,
    clusters: RefCell<FxHashMap<Arc<str>, Rc<ClusterState>>>,
    /// Bumped when endpoint availability may have changed; cluster views recompute their
    /// failover split when it moves.
    availability: Cell<u64>,
    listeners: RefCell<FxHashMap<Arc<str>, ListenerTask>>,
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
    draining: Cell<bool>,
    /// Audit log lines in the current second, and that second's start: audit logging is
    /// bounded so that a busy audited route cannot flood the log.
    audit_lines: Cell<(Option<Instant>, u32)>,
    /// Connections waiting for their next request.
    pub(crate) idle: IdleSet,
    /// Long request deadlines (route and body timeouts of seconds), kept to the sweeper's tick
    /// instead of a timer each; drain does not fire them.
    pub(crate) deadlines: IdleSet,
    connections: Cell<usize>,
    /// Access log buffers, by destination, kept across reloads.
    sinks: RefCell<FxHashMap<Target, Rc<Sink>>>,
    /// TLS sessions for resumption, kept across reloads.
    tls_sessions: RefCell<crate::tls::SessionCaches>,
    /// This worker's copy of the live taps, and the generation it was taken at.
    taps: RefCell<(u64, Vec<Arc<Tap>>)>,
    /// A monotonic instant and the wall-clock time then, renewed every sweeper tick: log lines
    /// get their wall time from the instant already read, not from another clock read.
    wall: Cell<(Instant, SystemTime)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A snapshot paired with this worker's state for it.
pub(crate) struct View {
    pub snapshot: Arc<Snapshot>,
    /// Aligned with `snapshot.clusters`.
    pub clusters: Vec<ClusterView>,
    /// Aligned with `snapshot.listeners`.
    pub listeners: Vec<ListenerView>,
}

pub(crate) struct ListenerView {
    pub stats: Rc<ListenerStats>,
    /// Per route, per target (in `Route::clusters` order).
    pub routes: Vec<Vec<RouteTarget>>,
    /// Requests answered before a route was chosen.
    pub unrouted: Rc<RouteStats>,
    /// The access log's names of listener, route and cluster for requests answered before a
    /// route was chosen.
    pub unrouted_names: Box<[u8]>,
    /// Per route: the running state of its split (empty for a single cluster).
    pub splits: Vec<RefCell<SplitState>>,
    /// The access log and its sampling threshold (`None`: every request).
    pub log: Option<(Rc<Sink>, Option<u32>)>,
    /// TLS settings with this worker's session cache.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per route: this worker's rate-limit bucket, if the route is limited.
    pub buckets: Vec<Option<RefCell<crate::ratelimit::Bucket>>>,
}

/// One cluster a route sends to, as a worker sees it.
pub(crate) struct RouteTarget {
    pub stats: Rc<RouteStats>,
    /// The access log's names of listener, route and cluster ([`access_log::names`]).
    pub log_names: Box<[u8]>,
}

struct Pending {
    view: Rc<View>,
    sockets: Vec<(Arc<str>, SocketAddr, monoio::net::TcpListener)>,
}

impl View {
    fn empty() -> View {
        View {
            snapshot: Arc::new(Snapshot {
                version: 0,
                listeners: vec![],
                clusters: vec![],
                policies: Default::default(),
            }),
            clusters: vec![],
            listeners: vec![],
        }
    }

    /// The position of the listener called `name`.
    #[inline]
    pub fn listener_index(&self, name: &Arc<str>) -> Option<usize> {
        self.snapshot
            .listeners
            .iter()
            .position(|l| Arc::ptr_eq(&l.name, name) || l.name == *name)
    }
}

impl Worker {
    fn new(id: usize) -> Worker {
        Worker {
            id,
            view: RefCell::new(Rc::new(View::empty())),
            pending: RefCell::new(None),
            endpoints: RefCell::new(FxHashMap::default()),
            clusters: RefCell::new(FxHashMap::default()),
            availability: Cell::new(0),
            listeners: RefCell::new(FxHashMap::default()),
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
            tls_sessions: RefCell::default(),
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

    /// Writes every buffered access log line.
    pub(crate) fn flush_logs(&self) {
        for sink in self.sinks.borrow().values() {
            sink.flush();
        }
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

    /// A random number below `n`.
    #[inline]
    pub(crate) fn random_below(&self, n: u32) -> u32 {
        self.rng.borrow_mut().below(n)
    }

    /// The worker's RNG, for a synchronous call.
    #[inline]
    /// Seeds the worker's generator, for reproducible simulations.
    #[cfg(test)]
    pub(crate) fn seed(&self, seed: u64) {
        *self.rng.borrow_mut() = Rng::new(seed);
    }

    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.borrow_mut())
    }

    /// The availability generation (see [`Worker::availability_changed`]).
    #[inline]
    pub(crate) fn availability(&self) -> u64 {
        self.availability.get()
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

    fn build_view(&self, snapshot: Arc<Snapshot>) -> View {
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
                        .map(|r| r.clusters().map(|ci| target(&r.name, ci)).collect())
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
                                Action::Cluster(_) => SplitState::default(),
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
                    Protocol::Http(h) => h
                        .tls
                        .as_ref()
                        .map(|t| t.for_worker(&mut self.tls_sessions.borrow_mut())),
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

    fn prepare(&self, snapshot: Arc<Snapshot>) -> Result<(), String> {
        if self.draining() {
            return Err("worker is draining".into());
        }
        let view = Rc::new(self.build_view(snapshot.clone()));
        let mut sockets = Vec::new();
        {
            let running = self.listeners.borrow();
            for l in &snapshot.listeners {
                if running.get(&l.name).is_some_and(|t| t.bind == l.bind) {
                    continue;
                }
                let sock = listener::bind(l.bind)
                    .map_err(|e| format!("listener {}: cannot bind {}: {e}", l.name, l.bind))?;
                sockets.push((l.name.clone(), l.bind, sock));
            }
        }
        *self.pending.borrow_mut() = Some(Pending { view, sockets });
        Ok(())
    }

    fn commit(self: &Rc<Self>) {
        let Some(p) = self.pending.borrow_mut().take() else {
            return;
        };
        let snapshot = p.view.snapshot.clone();
        // Endpoint state lives on for endpoints that remain; the rest is dropped once the last
        // request holding it ends (closing its pooled connections).
        let mut eps = FxHashMap::default();
        for cv in &p.view.clusters {
            for m in &cv.members {
                eps.insert((m.ep.cluster.clone(), m.ep.addr), m.ep.clone());
            }
        }
        *self.endpoints.borrow_mut() = eps;
        *self.clusters.borrow_mut() = snapshot
            .clusters
            .iter()
            .zip(&p.view.clusters)
            .map(|(c, cv)| (c.name.clone(), cv.state.clone()))
            .collect();
        self.availability_changed();
        *self.view.borrow_mut() = p.view;
        let mut listeners = self.listeners.borrow_mut();
        listeners.retain(|name, task| {
            let keep = snapshot
                .listeners
                .iter()
                .any(|l| &l.name == name && l.bind == task.bind);
            if !keep {
                task.stop();
            }
            keep
        });
        for (name, bind, sock) in p.sockets {
            let task = listener::start(self.clone(), name.clone(), bind, sock);
            listeners.insert(name, task);
        }
        drop(listeners);
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

    /// A worker for use inside an existing runtime (benchmarks, tests): no thread, no commands.
    pub fn standalone(id: usize) -> Rc<Worker> {
        Rc::new(Worker::new(id))
    }

    /// Prepares and commits `snapshot`, as a reload does on every worker.
    pub fn apply(self: &Rc<Self>, snapshot: Arc<Snapshot>) -> Result<(), String> {
        self.prepare(snapshot)?;
        self.commit();
        Ok(())
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

    fn report(&self) -> WorkerReport {
        let view = self.view();
        let now = Instant::now();
        let mut endpoints = Vec::new();
        let mut clusters = Vec::new();
        for (c, cv) in view.snapshot.clusters.iter().zip(&view.clusters) {
            for m in &cv.members {
                endpoints.push(m.ep.report(m, now));
            }
            clusters.push(cv.state.report(&c.name));
        }
        self.metrics.report(self.id, endpoints, clusters)
    }

    async fn drain_all(&self) {
        self.draining.set(true);
        self.idle.expire_all();
        // Dropping a listener task stops its accept loop.
        self.listeners.borrow_mut().clear();
        while self.connections.get() > 0 {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        // Upstream HTTP/2 connections live in tasks of their own: close them while the
        // runtime still runs (a socket closes at the runtime's next turn).
        let view = self.view();
        for cv in &view.clusters {
            for m in &cv.members {
                m.ep.h2.close_all();
            }
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
        self.flush_logs();
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

async fn run(w: Rc<Worker>, rx: flume::Receiver<Command>) {
    while let Ok(cmd) = rx.recv_async().await {
        match cmd {
            Command::Prepare { snapshot, reply } => {
                let _ = reply.send(w.prepare(snapshot));
            }
            Command::Commit { reply } => {
                w.commit();
                let _ = reply.send(());
            }
            Command::Abort => {
                w.pending.borrow_mut().take();
            }
            Command::Report { reply } => {
                let _ = reply.send(w.report());
            }
            Command::Drain { reply } => {
                let w = w.clone();
                monoio::spawn(async move {
                    w.drain_all().await;
                    let _ = reply.send(());
                });
            }
            Command::Stop => break,
        }
    }
    // Stopped, or the control side is gone: stop serving.
    w.draining.set(true);
    w.idle.expire_all();
    w.listeners.borrow_mut().clear();
    w.flush_logs();
}

/// The worker's clock: fires idle-connection deadlines every tick, and closes pooled upstream
/// connections that have been idle too long about once a second.
async fn sweep(w: Rc<Worker>) {
    let mut ticks = 0u32;
    loop {
        monoio::time::sleep(idle::TICK).await;
        let now = Instant::now();
        w.idle.sweep(now);
        w.deadlines.sweep(now);
        w.wall.set((now, SystemTime::now()));
        w.flush_logs();
        // Health-check results and ended ejections change availability without an event here.
        w.availability_changed();
        ticks = ticks.wrapping_add(1);
        if ticks % 5 != 0 {
            continue;
        }
        let view = w.view();
        for (c, cv) in view.snapshot.clusters.iter().zip(&view.clusters) {
            for m in &cv.members {
                m.ep.sweep(now, c.pool_idle_timeout);
            }
        }
    }
}
