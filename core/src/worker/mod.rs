//! Workers: one pinned thread per core, each running its own monoio runtime.
//!
//! A worker owns everything its connections touch: listeners (its own SO_REUSEPORT sockets),
//! endpoint state and pools, balancer state, metrics and buffers. The control side talks to it
//! only through its command channel ([`Command`]): config changes in two phases (every worker
//! prepares, then all commit or all abort), metric scrapes and drain. Nothing on the request path
//! takes a lock or writes memory another thread reads.

pub mod state;
pub(crate) mod view;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashMap;

pub use state::{AUDIT_LINES_PER_SECOND, Worker};
use view::View;

use crate::idle;
use crate::listener::{self, ListenerTask};
use crate::metrics::WorkerReport;
use crate::snapshot::Snapshot;

/// A request from the control side to a worker.
#[derive(Debug)]
pub enum Command {
    /// Build a view of this snapshot and bind its new listeners, without serving from it yet.
    Prepare {
        /// The snapshot.
        snapshot: Arc<Snapshot>,
        /// Ok, or why this worker cannot serve it.
        reply: flume::Sender<Result<(), PrepareError>>,
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

/// Why a worker cannot serve a snapshot ([`Command::Prepare`]).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The worker is draining: it takes no new config.
    #[error("worker is draining")]
    Draining,
    /// A listener new to this worker (or moved) cannot be bound.
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: Arc<str>,
        addr: SocketAddr,
        source: io::Error,
    },
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
    crate::trim::start();
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
                let r = Runner::standalone(id);
                monoio::spawn(sweep(r.w.clone()));
                run(r, rx).await;
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

/// A worker thread's state and the listeners it runs: what applies config changes and drains.
pub struct Runner {
    w: Rc<Worker>,
    listeners: RefCell<FxHashMap<Arc<str>, ListenerTask>>,
    /// A view prepared and its new listeners' sockets, until commit or abort.
    pending: RefCell<Option<Pending>>,
}

struct Pending {
    view: Rc<View>,
    sockets: Vec<(Arc<str>, SocketAddr, monoio::net::TcpListener)>,
}

impl Runner {
    /// A worker for use inside an existing runtime (benchmarks, tests): no thread, no commands.
    pub fn standalone(id: usize) -> Runner {
        Runner {
            w: Rc::new(Worker::new(id)),
            listeners: RefCell::new(FxHashMap::default()),
            pending: RefCell::new(None),
        }
    }

    /// The worker's state.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.w
    }

    /// Prepares and commits `snapshot`, as a reload does on every worker.
    pub fn apply(&self, snapshot: Arc<Snapshot>) -> Result<(), PrepareError> {
        self.prepare(snapshot)?;
        self.commit();
        Ok(())
    }

    /// Builds the view of `snapshot` and binds its new listeners, without serving from it.
    fn prepare(&self, snapshot: Arc<Snapshot>) -> Result<(), PrepareError> {
        if self.w.draining() {
            return Err(PrepareError::Draining);
        }
        let view = Rc::new(self.w.build_view(snapshot.clone()));
        let mut sockets = Vec::new();
        {
            let running = self.listeners.borrow();
            for l in &snapshot.listeners {
                if running.get(&l.name).is_some_and(|t| t.bind == l.bind) {
                    continue;
                }
                let sock = listener::bind(l.bind).map_err(|source| PrepareError::Bind {
                    listener: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
                sockets.push((l.name.clone(), l.bind, sock));
            }
        }
        *self.pending.borrow_mut() = Some(Pending { view, sockets });
        Ok(())
    }

    /// Serves from the prepared view: listeners the snapshot dropped or moved stop, new ones
    /// start.
    fn commit(&self) {
        let Some(p) = self.pending.borrow_mut().take() else {
            return;
        };
        let snapshot = p.view.snapshot.clone();
        self.w.install(p.view);
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
            let task = listener::start(self.w.clone(), name.clone(), bind, sock);
            listeners.insert(name, task);
        }
    }

    /// Stops accepting, and waits for every connection to end.
    async fn drain_all(&self) {
        let w = &self.w;
        w.draining.set(true);
        w.idle.expire_all();
        // Dropping a listener task stops its accept loop.
        self.listeners.borrow_mut().clear();
        while w.connections.get() > 0 {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        // Upstream HTTP/2 connections live in tasks of their own: close them while the
        // runtime still runs (a socket closes at the runtime's next turn).
        let view = w.view();
        for cv in &view.clusters {
            for m in &cv.members {
                m.ep.h2.close_all();
            }
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
        w.flush_logs();
    }
}

async fn run(r: Runner, rx: flume::Receiver<Command>) {
    let r = Rc::new(r);
    let w = r.w.clone();
    while let Ok(cmd) = rx.recv_async().await {
        match cmd {
            Command::Prepare { snapshot, reply } => {
                let _ = reply.send(r.prepare(snapshot));
            }
            Command::Commit { reply } => {
                r.commit();
                let _ = reply.send(());
            }
            Command::Abort => {
                r.pending.borrow_mut().take();
            }
            Command::Report { reply } => {
                let _ = reply.send(w.report());
            }
            Command::Drain { reply } => {
                let r = r.clone();
                monoio::spawn(async move {
                    r.drain_all().await;
                    let _ = reply.send(());
                });
            }
            Command::Stop => break,
        }
    }
    // Stopped, or the control side is gone: stop serving.
    w.draining.set(true);
    w.idle.expire_all();
    r.listeners.borrow_mut().clear();
    w.flush_logs();
}

/// The worker's clock: fires idle-connection deadlines every tick, and closes pooled upstream
/// connections that have been idle too long about once a second.
async fn sweep(w: Rc<Worker>) {
    let mut ticks = 0u32;
    let mut memory = MemoryWatch::default();
    loop {
        monoio::time::sleep(idle::TICK).await;
        // The two clocks read back to back: log lines and spans get their wall time from this
        // pair, and a gap between the reads would shift them all.
        let now = Instant::now();
        w.wall.set((now, SystemTime::now()));
        w.idle.sweep(now);
        w.deadlines.sweep(now);
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
        drop(view);
        memory.after_a_period(&w);
    }
}

/// Gives memory back once a burst has passed: every period (about a second) the buffer pools
/// free what nobody needed, and when that amounts to enough, or the work in hand (connections
/// open and requests in flight) has fallen to half of its peak or less, by a burst's worth, the
/// allocator returns its free pages to the system. An HTTP/2 burst frees its streams' memory to
/// the allocator, not to a pool, over a handful of connections: requests in flight see it.
#[derive(Debug, Default)]
struct MemoryWatch {
    /// The most work in hand at once since memory was last given back.
    peak_work: usize,
    /// Bytes of pooled buffers freed since then.
    freed: usize,
    /// Periods since then: the allocator is asked at most every [`Self::EVERY`] periods
    /// (trimming walks its arenas: see [`crate::trim`]).
    periods: u32,
}

impl MemoryWatch {
    /// Freed bytes worth a `malloc_trim` (it runs on its own thread, so the bar is low: eight
    /// large-body buffers, whose pages glibc would otherwise keep).
    const FREED_ENOUGH: usize = 256 << 10;
    /// Connections closed or requests ended (each held a few KiB) worth one.
    const BURST: usize = 16;
    const EVERY: u32 = 10;

    fn after_a_period(&mut self, w: &Worker) {
        self.freed += w.bufs.trim() + w.small.trim() + w.bulk.trim();
        self.periods = self.periods.saturating_add(1);
        let in_flight: usize = w
            .clusters
            .borrow()
            .values()
            .map(|c| c.active.get() as usize)
            .sum();
        let work = w.connections.get() + in_flight;
        self.peak_work = self.peak_work.max(work);
        let fallen = work * 2 <= self.peak_work && work + Self::BURST <= self.peak_work;
        if (self.freed >= Self::FREED_ENOUGH || fallen) && self.periods >= Self::EVERY {
            crate::trim::request();
            self.freed = 0;
            self.peak_work = work;
            self.periods = 0;
        }
    }
}
