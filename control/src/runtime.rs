//! The running proxy: worker threads, the admin thread, and the control thread that loads the
//! config, watches its file, and applies new versions to every worker in two phases.
//!
//! ```text
//! control thread ── Prepare(snapshot) ──> every worker   (bind new listeners, build view)
//!                <─ ok / error ─────────
//!                ── Commit / Abort ─────> every worker   (swap view between requests)
//! ```
//! A config that fails to parse, compile or prepare leaves the running one in force and counts
//! in `ringmesh_config_reloads_total{result="error"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringmesh_core::health::Checker;
use ringmesh_core::snapshot::Snapshot;
use ringmesh_core::worker::{self, Command, WorkerHandle, WorkerOptions};
use socket2::{Domain, Socket, Type};

use crate::admin;
use crate::compile::Compiler;
use crate::config::{Config, EMBEDDED_DEFAULT};
use crate::shared::{ControlMsg, Current, State};

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The embedded default config (its fields are in docs/config.md).
    Embedded,
    /// A YAML file, watched for changes.
    File(PathBuf),
    /// YAML text (tests, embedding).
    Text(String),
    /// Snapshots from a control plane (`--control URL[,URL...] --node NAME`).
    Control(crate::mesh::agent::ControlSource),
}

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The config.
    pub source: ConfigSource,
    /// Worker threads; overrides the config's `workers`.
    pub workers: Option<usize>,
    /// Admin address; overrides the config's `admin`.
    pub admin: Option<SocketAddr>,
    /// How long a drain waits for requests in flight.
    pub drain_timeout: Duration,
    /// How often the config file is checked for changes.
    pub watch_interval: Duration,
    /// Pin each worker to a CPU.
    pub pin_workers: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            source: ConfigSource::Embedded,
            workers: None,
            admin: None,
            drain_timeout: Duration::from_secs(10),
            watch_interval: Duration::from_millis(500),
            pin_workers: true,
        }
    }
}

/// A running proxy.
pub struct Proxy {
    control: flume::Sender<ControlMsg>,
    control_thread: Option<std::thread::JoinHandle<()>>,
    admin_addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("admin", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid; one line per problem.
    #[error("invalid config:\n{}", .0.join("\n"))]
    Config(Vec<String>),
    /// Something else (threads, sockets).
    #[error("{0}")]
    Io(String),
}

impl Proxy {
    /// Loads the config, starts the workers and applies it, then starts the admin API and the
    /// control thread. Returns once every listener is bound.
    pub fn start(opts: ProxyOptions) -> Result<Proxy, StartError> {
        // Fed by a control plane, the proxy starts with no config and is not ready until the
        // first snapshot (or the cached one) is applied.
        let config = match &opts.source {
            ConfigSource::Control(_) => None,
            source => {
                let text =
                    read_source(source).map_err(|e| StartError::Config(vec![e.to_string()]))?;
                Some(Config::parse(&text).map_err(|errs| {
                    StartError::Config(errs.iter().map(ToString::to_string).collect())
                })?)
            }
        };
        let n = opts
            .workers
            .or(config.as_ref().and_then(|c| c.workers))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cpus = ringmesh_core::sys::allowed_cpus();
        let mut workers = Vec::with_capacity(n);
        for id in 0..n {
            let cpu = (opts.pin_workers && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
            let h = worker::spawn(
                id,
                WorkerOptions {
                    cpu,
                    ..WorkerOptions::default()
                },
            )
            .map_err(|e| StartError::Io(format!("cannot start worker {id}: {e}")))?;
            workers.push(h);
        }
        let state = Arc::new(State::default());
        state.workers.store(n as u64, Ordering::Relaxed);
        let mut controller = Controller {
            source: opts.source.clone(),
            workers,
            state: state.clone(),
            config: None,
            version: 0,
            binds: HashMap::new(),
            json: Arc::from("{}"),
            stamp: None,
            drain_timeout: opts.drain_timeout,
            compiler: Compiler::new(n),
            checker: None,
        };
        controller.stamp = controller.file_stamp();
        if let Some(config) = config {
            if let Err(errs) = controller.apply(config) {
                controller.stop_workers();
                return Err(StartError::Config(errs));
            }
        }
        let admin_addr = opts
            .admin
            .or(controller.config.as_ref().map(|c| c.admin))
            .or(crate::config::DEFAULT_ADMIN.parse().ok());
        let Some(admin_addr) = admin_addr else {
            return Err(StartError::Io("no admin address".into()));
        };
        let (tx, rx) = flume::unbounded();
        let senders: Vec<_> = controller
            .workers
            .iter()
            .map(WorkerHandle::sender)
            .collect();
        let admin_addr = admin::start(admin_addr, senders.clone(), tx.clone(), state.clone())
            .map_err(|e| StartError::Io(format!("admin: cannot bind {admin_addr}: {e}")))?;
        let interval = opts.watch_interval;
        let control_thread = std::thread::Builder::new()
            .name("ringmesh-control".into())
            .spawn(move || controller.run(rx, interval))
            .map_err(|e| StartError::Io(e.to_string()))?;
        if let ConfigSource::Control(source) = &opts.source {
            state.control_mode.store(true, Ordering::Relaxed);
            crate::mesh::agent::spawn(source.clone(), tx.clone(), state.clone(), senders)
                .map_err(|e| StartError::Io(format!("cannot start the control watcher: {e}")))?;
        }
        tracing::info!(admin = %admin_addr, workers = n, "ringmesh started");
        Ok(Proxy {
            control: tx,
            control_thread: Some(control_thread),
            admin_addr,
            state,
        })
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The config in force.
    pub fn current(&self) -> Option<Current> {
        let (tx, rx) = flume::bounded(1);
        self.control.send(ControlMsg::Current(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Where the listener called `name` is bound.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.current()?
            .listeners
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// The version of the config in force.
    pub fn version(&self) -> u64 {
        self.state.version.load(Ordering::Relaxed)
    }

    /// Reloads now; returns the new version or why the config was refused.
    pub fn reload(&self) -> Result<u64, Vec<String>> {
        let (tx, rx) = flume::bounded(1);
        self.control
            .send(ControlMsg::Reload(Some(tx)))
            .map_err(|_| vec!["the control thread is gone".to_string()])?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| vec!["no answer from the control thread".to_string()])?
    }

    /// Asks for a reload without waiting (signal handlers).
    pub fn reload_later(&self) {
        let _ = self.control.send(ControlMsg::Reload(None));
    }

    /// A handle that can request reloads and drains from another thread.
    pub fn remote(&self) -> Remote {
        Remote {
            control: self.control.clone(),
        }
    }

    /// Stops accepting, lets requests in flight finish (up to the drain timeout), and stops.
    /// Returns whether every connection finished in time.
    pub fn drain(mut self) -> bool {
        let (tx, rx) = flume::bounded(1);
        let finished =
            self.control.send(ControlMsg::Drain(tx)).is_ok() && rx.recv().unwrap_or(false);
        if let Some(t) = self.control_thread.take() {
            let _ = t.join();
        }
        // The workers handed over their last log lines as they stopped.
        ringmesh_core::access_log::sync(Duration::from_secs(5));
        finished
    }
}

/// Requests reloads and drains from other threads (signal handling).
#[derive(Debug, Clone)]
pub struct Remote {
    control: flume::Sender<ControlMsg>,
}

impl Remote {
    /// Asks for a reload without waiting.
    pub fn reload(&self) {
        let _ = self.control.send(ControlMsg::Reload(None));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.control_thread.take() {
            let (tx, rx) = flume::bounded(1);
            if self.control.send(ControlMsg::Drain(tx)).is_ok() {
                let _ = rx.recv();
            }
            let _ = t.join();
        }
    }
}

/// Why the config's text could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The config file cannot be read.
    #[error("{}: cannot read: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config comes in snapshots from a control plane: there is no text to read.
    #[error("the config comes from the control plane")]
    Control,
}

fn read_source(source: &ConfigSource) -> Result<String, ReadError> {
    match source {
        ConfigSource::Embedded => Ok(EMBEDDED_DEFAULT.to_string()),
        ConfigSource::Text(t) => Ok(t.clone()),
        ConfigSource::File(p) => std::fs::read_to_string(p).map_err(|source| ReadError::File {
            path: p.clone(),
            source,
        }),
        ConfigSource::Control(_) => Err(ReadError::Control),
    }
}

/// A listener's configured and actual address.
struct Bound {
    configured: SocketAddr,
    actual: SocketAddr,
}

/// Identity of a config file's contents, to notice changes.
type Stamp = (SystemTime, u64, u64);

struct Controller {
    source: ConfigSource,
    workers: Vec<WorkerHandle>,
    state: Arc<State>,
    config: Option<Config>,
    version: u64,
    binds: HashMap<String, Bound>,
    json: Arc<str>,
    stamp: Option<Stamp>,
    drain_timeout: Duration,
    compiler: Compiler,
    /// Health checks, started with the first config that has any.
    checker: Option<Checker>,
}

impl Controller {
    fn run(mut self, rx: flume::Receiver<ControlMsg>, interval: Duration) {
        loop {
            match rx.recv_timeout(interval) {
                Ok(ControlMsg::Reload(reply)) => {
                    let r = self.reload();
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
                Ok(ControlMsg::Apply { text, reply }) => {
                    let r = Config::parse(&text)
                        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
                        .and_then(|config| self.apply(config));
                    if r.is_err() {
                        self.state.reloads_error.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(r);
                }
                Ok(ControlMsg::Current(reply)) => {
                    let _ = reply.send(self.current());
                }
                Ok(ControlMsg::Drain(reply)) => {
                    let finished = self.drain();
                    let _ = reply.send(finished);
                    return;
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    let stamp = self.file_stamp();
                    if stamp.is_some() && stamp != self.stamp {
                        self.stamp = stamp;
                        let _ = self.reload();
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    self.drain();
                    return;
                }
            }
        }
    }

    fn file_stamp(&self) -> Option<Stamp> {
        let ConfigSource::File(p) = &self.source else {
            return None;
        };
        let m = std::fs::metadata(p).ok()?;
        use std::os::unix::fs::MetadataExt;
        Some((m.modified().ok()?, m.len(), m.ino()))
    }

    fn current(&self) -> Current {
        Current {
            version: self.version,
            json: self.json.clone(),
            listeners: self
                .binds
                .iter()
                .map(|(n, b)| (n.clone(), b.actual))
                .collect(),
        }
    }

    fn reload(&mut self) -> Result<u64, Vec<String>> {
        if matches!(self.source, ConfigSource::Control(_)) {
            // Snapshots arrive from the control plane; there is nothing to read again.
            return Ok(self.version);
        }
        self.stamp = self.file_stamp();
        let result = read_source(&self.source)
            .map_err(|e| vec![e.to_string()])
            .and_then(|text| {
                Config::parse(&text).map_err(|errs| errs.iter().map(ToString::to_string).collect())
            });
        let result = result.and_then(|config| {
            if let Some(old) = &self.config {
                if old.admin != config.admin {
                    tracing::warn!("admin address changes take effect on restart");
                }
                if old.workers != config.workers {
                    tracing::warn!("worker count changes take effect on restart");
                }
            }
            self.apply(config)
        });
        if let Err(errs) = &result {
            self.state.reloads_error.fetch_add(1, Ordering::Relaxed);
            for e in errs {
                tracing::error!(error = %e, "config refused; the running config stays in force");
            }
        }
        result
    }

    /// Compiles `config` and applies it to every worker, or to none.
    fn apply(&mut self, config: Config) -> Result<u64, Vec<String>> {
        let (binds, placeholders) = self.resolve_binds(&config)?;
        let version = self.version + 1;
        let snapshot = Arc::new(
            self.compiler
                .compile(&config, version, &binds)
                .map_err(|e| vec![e.to_string()])?,
        );
        let (tx, rx) = flume::unbounded();
        for w in &self.workers {
            w.send(Command::Prepare {
                snapshot: snapshot.clone(),
                reply: tx.clone(),
            });
        }
        let mut errors = Vec::new();
        for _ in &self.workers {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push("a worker did not answer".into()),
            }
        }
        if !errors.is_empty() {
            for w in &self.workers {
                w.send(Command::Abort);
            }
            errors.dedup();
            return Err(errors);
        }
        let (tx, rx) = flume::unbounded();
        for w in &self.workers {
            w.send(Command::Commit { reply: tx.clone() });
        }
        for _ in &self.workers {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        drop(placeholders);
        self.update_health_checks(&snapshot);
        self.binds = config
            .listeners
            .iter()
            .zip(&binds)
            .map(|(l, &actual)| {
                (
                    l.name.clone(),
                    Bound {
                        configured: l.bind,
                        actual,
                    },
                )
            })
            .collect();
        self.json = Arc::from(config.to_json().to_string());
        self.config = Some(config);
        self.version = version;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.state.version.store(version, Ordering::Relaxed);
        self.state
            .applied_at_unix_ms
            .store(now_ms, Ordering::Relaxed);
        self.state.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.state.ready.store(true, Ordering::Relaxed);
        for (name, b) in &self.binds {
            tracing::debug!(listener = %name, addr = %b.actual, "listening");
        }
        tracing::info!(version, "config applied");
        self.probe_shortcut();
        Ok(version)
    }

    /// Tells the shortcut tracker whether a sidecar listener is configured (it probes then).
    fn probe_shortcut(&self) {
        let sidecar = self.config.as_ref().is_some_and(|c| {
            c.listeners
                .iter()
                .any(|l| l.outbound.is_some() || l.inbound.is_some())
        });
        self.state.shortcut.set_sidecar(sidecar);
    }

    /// Points the health checker at the endpoints `snapshot` checks.
    fn update_health_checks(&mut self, snapshot: &Snapshot) {
        let targets = self.compiler.applied(snapshot);
        if self.checker.is_none() && !targets.is_empty() {
            match Checker::spawn() {
                Ok(c) => self.checker = Some(c),
                Err(e) => tracing::error!(error = %e, "cannot start health checks"),
            }
        }
        if let Some(c) = &self.checker {
            c.update(targets);
        }
    }

    /// Where each listener will be bound. Port 0 is resolved once per listener and kept across
    /// reloads; a new fixed address is checked to be free first (SO_REUSEPORT would otherwise
    /// silently share it with another process). The returned sockets hold resolved ports until
    /// the workers have bound them.
    fn resolve_binds(
        &self,
        config: &Config,
    ) -> Result<(Vec<SocketAddr>, Vec<Socket>), Vec<String>> {
        let mut binds = Vec::with_capacity(config.listeners.len());
        let mut placeholders = Vec::new();
        let mut errors = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if let Some(b) = self.binds.get(&l.name).filter(|b| b.configured == l.bind) {
                binds.push(b.actual);
                continue;
            }
            let ours = self.binds.values().any(|b| b.actual == l.bind);
            let r = if l.bind.port() == 0 {
                reserve_port(l.bind).map(|(s, a)| {
                    placeholders.push(s);
                    a
                })
            } else if ours {
                Ok(l.bind)
            } else {
                std::net::TcpListener::bind(l.bind).map(|_| l.bind)
            };
            match r {
                Ok(a) => binds.push(a),
                Err(e) => errors.push(format!("listeners[{i}].bind: cannot bind {}: {e}", l.bind)),
            }
        }
        if errors.is_empty() {
            Ok((binds, placeholders))
        } else {
            Err(errors)
        }
    }

    fn drain(&mut self) -> bool {
        let (tx, rx) = flume::unbounded();
        for w in &self.workers {
            w.send(Command::Drain { reply: tx.clone() });
        }
        let deadline = std::time::Instant::now() + self.drain_timeout;
        let mut done = 0;
        while done < self.workers.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(()) => done += 1,
                Err(_) => break,
            }
        }
        let finished = done == self.workers.len();
        if finished {
            self.stop_workers();
        } else {
            tracing::warn!("drain timeout: closing connections still open");
        }
        self.state.ready.store(false, Ordering::Relaxed);
        finished
    }

    fn stop_workers(&mut self) {
        for w in self.workers.drain(..) {
            w.join();
        }
    }
}

/// Learns a free port for `addr` (port 0) and holds it with SO_REUSEPORT until the workers
/// bind the same. The port is asked for without SO_REUSEPORT: with it, the kernel may hand out
/// a port that another reuse-port socket of this user already listens on (another ringmesh,
/// say), and the two would then share its connections.
fn reserve_port(addr: SocketAddr) -> std::io::Result<(Socket, SocketAddr)> {
    let actual = std::net::TcpListener::bind(addr)?.local_addr()?;
    let s = Socket::new(Domain::for_address(actual), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&actual.into())?;
    Ok((s, actual))
}
