//! `ringmesh control`: holds the desired state, discovers endpoints, and serves each proxy its
//! snapshot over a long-poll watch (the API is in docs/control.md).
//!
//! The API is served over TLS and trusts nobody by default: who may do what is in `auth`,
//! the API's certificate in `tls`, docs/security.md has the whole trust model.
//!
//! Everything runs on one thread with its own monoio runtime: the state lives in a `RefCell`
//! that no `.await` holds. A change (API, mesh file, DNS, registration, expiry) bumps the
//! version, renders every node's config again (each cluster once), and wakes the watchers whose
//! node's config changed. Resolving DNS (blocking `getaddrinfo`) and writing the state file run
//! on their own threads.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::net::TcpListener;

use super::model::Mesh;

mod api;
mod auth;
mod desired;
mod discovery;
mod identity;
mod metrics;
mod observed;
mod ops;
mod registry;
mod replicated;
mod state;
mod status;
mod taps;
#[cfg(test)]
mod tests;
mod tls;
mod watch;

use api::*;
use desired::*;
use discovery::*;
use metrics::*;
use registry::*;
use state::*;
use status::*;
use watch::*;

pub use desired::apply_edit;

/// For the fuzz harness: a node's stats report and tap events, as the API takes them from a
/// node. Nothing panics; what is kept renders into the views.
#[doc(hidden)]
pub fn node_input(mesh: &Mesh, body: &[u8]) {
    let mut o = observed::Observed::default();
    let _ = o.ingest(mesh, "edge-1", body);
    let _ = o.ingest(mesh, "edge-1", body);
    let _ = o.stats_json(mesh);
    let _ = o.health();
    let mut t = taps::Taps::default();
    let _ = t.start("edge-1", body, "t".into());
    let _ = t.pick_up("edge-1");
    let req = crate::http::Request {
        method: "POST".into(),
        body: body.to_vec(),
        ..Default::default()
    };
    let _ = t.events("edge-1", "t", &req);
}
pub use state::parse_registration;
pub use tls::ApiTls;

/// Where the mesh file comes from.
#[derive(Debug, Clone)]
pub enum MeshSource {
    /// A YAML file, watched for changes.
    File(PathBuf),
    /// YAML text (tests).
    Text(String),
}

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// The mesh file.
    pub source: MeshSource,
    /// API address; overrides the file's `bind`.
    pub bind: Option<SocketAddr>,
    /// State file; overrides the file's `state_file` (default: the mesh file's path with
    /// `.state.json` appended; none for text). Not used with a store.
    pub state_file: Option<PathBuf>,
    /// Share the state with other replicas through etcd.
    pub store: Option<StoreOptions>,
    /// TLS for the API (the mesh CA's certificate by default).
    pub tls: ApiTls,
}

/// Where replicas share their state.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// etcd's client endpoints, and TLS to them.
    pub etcd: super::etcd::Cluster,
    /// Key prefix of this mesh's state (default `/ringmesh/`).
    pub prefix: String,
}

/// Registration TTL bounds and default.
const TTL_DEFAULT: Duration = Duration::from_secs(30);
const TTL_MIN: Duration = Duration::from_secs(1);
const TTL_MAX: Duration = Duration::from_secs(3600);
/// Longest a watch may wait, and its default.
const WAIT_MAX: Duration = Duration::from_secs(300);
const WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// How often registrations expire, the mesh file is checked and the state file written.
const TICK: Duration = Duration::from_millis(100);

/// Why the control plane could not start (besides an invalid mesh file, whose problems are
/// listed one by one).
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The mesh file cannot be read (at start, or when it changed).
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The API would be reachable from other hosts without TLS or without an admin.
    #[error(
        "bind: {bind} is reachable from other hosts, and the API would lack {}",
        .missing.join(" and ")
    )]
    Exposed {
        bind: SocketAddr,
        missing: Vec<&'static str>,
    },
    /// The API's address cannot be bound.
    #[error("bind: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The API's socket cannot be set up, or the control plane's thread started.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The mesh CA cannot be made or taken in.
    #[error("mesh CA: {0}")]
    Ca(#[from] super::ca::CaError),
    /// The shared store cannot be opened.
    #[error("{0}")]
    Store(#[from] replicated::StoreError),
    /// The API's TLS cannot be built.
    #[error("{0}")]
    Tls(#[from] tls::ApiTlsError),
}

/// One problem, as [`ControlPlane::start`] lists them.
fn one(e: impl Into<StartError>) -> Vec<String> {
    vec![e.into().to_string()]
}

/// A running control plane.
pub struct ControlPlane {
    addr: SocketAddr,
    /// SHA-256 of the issuing CA's key at start (what `--control-ca-sha256` pins).
    pin: String,
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Loads the mesh file (and the state file, if it belongs to the same mesh file), binds the
    /// API and starts serving. Errors name the field.
    pub fn start(opts: ControlOptions) -> Result<ControlPlane, Vec<String>> {
        let text = read(&opts.source).map_err(one)?;
        let mesh = Mesh::parse(&text)
            .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let state_file = match (&opts.state_file, &mesh.state_file, &opts.source) {
            // The store keeps the state.
            _ if opts.store.is_some() => None,
            (Some(p), _, _) => Some(p.clone()),
            (None, Some(p), _) => p.clone(),
            (None, None, MeshSource::File(f)) => {
                let mut s = f.clone().into_os_string();
                s.push(".state.json");
                Some(PathBuf::from(s))
            }
            (None, None, MeshSource::Text(_)) => None,
        };
        let bind = opts.bind.unwrap_or(mesh.bind);
        exposed_safely(bind, &opts.tls, &mesh).map_err(one)?;
        let listener =
            listen(bind).map_err(|source| one(StartError::Bind { addr: bind, source }))?;
        listener.set_nonblocking(true).map_err(one)?;
        let addr = listener.local_addr().map_err(one)?;
        let mut st =
            State::new(mesh, &text, opts.source.clone(), state_file.clone()).map_err(one)?;
        if let Some(p) = &state_file {
            st.restore(p);
        }
        let store = match &opts.store {
            Some(o) => Some(replicated::open(o, &mut st).map_err(one)?),
            None => None,
        };
        let served = tls::build(&opts.tls, &st, addr).map_err(one)?;
        if served.is_none() {
            tracing::warn!(
                "the control plane's API is in plaintext (--insecure-plaintext): tokens and snapshots cross the network in the clear, and nodes cannot prove who they are"
            );
        }
        tracing::info!(
            pin = %format!("sha256:{}", st.ca.current.spki_sha256),
            "mesh CA: proxies can pin it with --control-ca-sha256"
        );
        let pin = st.ca.current.spki_sha256.clone();
        let api = Api {
            bound: addr,
            plaintext: opts.tls == ApiTls::Plaintext,
            tls: opts.tls.clone(),
        };
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ringmesh-control-plane".into())
            .spawn(move || run(listener, st, stop_rx, store, api, served))
            .map_err(one)?;
        tracing::info!(%addr, "control plane started");
        Ok(ControlPlane {
            addr,
            pin,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The SHA-256 (hex) of the issuing CA's key when the control plane started: what a proxy
    /// pins with `--control-ca-sha256`.
    pub fn ca_pin(&self) -> &str {
        &self.pin
    }

    /// Stops serving: the API closes and every watch ends.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A control plane reachable from other hosts must be served over TLS and have someone to
/// administer it: otherwise it refuses to start, saying what is missing.
fn exposed_safely(bind: SocketAddr, tls: &ApiTls, mesh: &Mesh) -> Result<(), StartError> {
    if bind.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if *tls == ApiTls::Plaintext {
        missing.push("TLS (drop --insecure-plaintext)");
    }
    if mesh.api.admins.is_empty() {
        missing.push("an admin (api.admins in the mesh file)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(StartError::Exposed { bind, missing })
}

/// Writes the state file now, synced to disk, from the runtime's thread (for what must be
/// durable before an answer leaves: a spent token). The writer thread's later writes carry the
/// same and more.
fn persist_now(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".sync.tmp");
    let tmp = PathBuf::from(tmp);
    write_private(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `data` to a new file `path` that only this user can read (an old one is replaced).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
}

/// The API's socket, with a deep accept queue: a fleet of proxies reconnects at once after a
/// restart, and each connection costs a TLS handshake before the next is accepted.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// How the API is served, as fixed at start.
struct Api {
    bound: SocketAddr,
    plaintext: bool,
    tls: ApiTls,
}

fn read(source: &MeshSource) -> Result<String, StartError> {
    match source {
        MeshSource::File(p) => std::fs::read_to_string(p).map_err(|source| StartError::Read {
            path: p.clone(),
            source,
        }),
        MeshSource::Text(t) => Ok(t.clone()),
    }
}

/// FNV-1a: a stable fingerprint of the mesh file, to know whether a state file belongs to it.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Plane {
    st: RefCell<State>,
    /// Some node's snapshot changed (the watches wait on it).
    signal: Signal,
    /// The state took in more of the store (writes wait on it to read their own).
    progress: Signal,
    /// Set when the control plane stops: watches end.
    stopping: Cell<bool>,
    /// Open API connections, shut down when the control plane stops.
    conns: RefCell<std::collections::HashSet<std::os::fd::RawFd>>,
    dns: flume::Sender<(Vec<String>, Duration)>,
    persist: flume::Sender<(PathBuf, Vec<u8>)>,
    /// The shared store, for replicas.
    store: Option<replicated::Store>,
    /// Where the API is bound (requests must be addressed to it).
    bound: SocketAddr,
    /// The API runs without TLS (`--insecure-plaintext`).
    plaintext: bool,
    /// How its TLS is made, and the TLS it serves with now (`None` in plaintext).
    api_tls: ApiTls,
    tls: RefCell<Option<tls::Served>>,
    /// Refusals, counted and logged.
    refusals: auth::Refusals,
    /// The proxies' reports of their traffic and endpoints.
    observed: RefCell<observed::Observed>,
    /// Taps through the control plane; what wakes their readers (events came), and what
    /// wakes the nodes waiting for taps (one was asked): apart, so that events do not wake
    /// every node.
    taps: RefCell<taps::Taps>,
    tap_signal: Signal,
    tap_asked: Signal,
    /// Tap ids.
    rng: RefCell<ringmesh_core::rng::Rng>,
}

impl Plane {
    /// After a change: wake watchers, and resolve any new DNS name.
    fn changed(&self) {
        self.signal.notify();
        let st = self.st.borrow();
        let _ = self.dns.send((
            st.mesh.dns_names().into_iter().collect(),
            st.mesh.dns_interval,
        ));
    }
}

fn run(
    listener: std::net::TcpListener,
    st: State,
    stop: flume::Receiver<()>,
    store: Option<(replicated::Store, flume::Receiver<replicated::Batch>)>,
    api: Api,
    served: Option<tls::Served>,
) {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let Ok(mut rt) = rt else {
        tracing::error!("control plane: cannot start runtime");
        return;
    };
    let (dns_tx, dns_rx) = flume::unbounded();
    let (found_tx, found_rx) = flume::unbounded();
    let resolver = std::thread::Builder::new()
        .name("ringmesh-dns".into())
        .spawn(move || resolve_loop(&dns_rx, &found_tx));
    if let Err(e) = resolver {
        tracing::error!(error = %e, "control plane: cannot start the DNS thread");
    }
    let (persist_tx, persist_rx) = flume::unbounded::<(PathBuf, Vec<u8>)>();
    let writer = std::thread::Builder::new()
        .name("ringmesh-state".into())
        .spawn(move || write_loop(&persist_rx));
    if let Err(e) = writer {
        tracing::error!(error = %e, "control plane: cannot start the state writer");
    }
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "control plane: cannot listen");
                return;
            }
        };
        let (store, batches) = store.unzip();
        let plane = Rc::new(Plane {
            st: RefCell::new(st),
            signal: Signal::default(),
            progress: Signal::default(),
            stopping: Cell::new(false),
            conns: RefCell::default(),
            dns: dns_tx,
            persist: persist_tx,
            store,
            bound: api.bound,
            plaintext: api.plaintext,
            api_tls: api.tls,
            tls: RefCell::new(served),
            refusals: auth::Refusals::default(),
            observed: RefCell::default(),
            taps: RefCell::default(),
            tap_signal: Signal::default(),
            tap_asked: Signal::default(),
            rng: RefCell::new(ringmesh_core::rng::Rng::from_entropy()),
        });
        plane.changed();
        if let Some(rx) = batches {
            monoio::spawn(follow(plane.clone(), rx));
        }
        monoio::spawn(tick(plane.clone()));
        monoio::spawn(discovered(plane.clone(), found_rx));
        loop {
            monoio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        ringmesh_core::sys::set_cloexec(std::os::fd::AsRawFd::as_raw_fd(&stream));
                        monoio::spawn(accepted(plane.clone(), stream, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control plane: accept failed");
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.recv_async() => break,
            }
        }
        // Write what is pending, then end every connection. On io_uring a dropped socket is
        // closed at the runtime's next park, so the runtime runs a little longer for the
        // closes (the listener's first) to go out.
        {
            let st = plane.st.borrow();
            if let Some(p) = &st.state_file {
                let _ = plane.persist.send((p.clone(), st.saved()));
            }
        }
        drop(listener);
        plane.stopping.set(true);
        for &fd in plane.conns.borrow().iter() {
            ringmesh_core::sys::shutdown(fd);
        }
        plane.signal.notify();
        plane.progress.notify();
        plane.tap_signal.notify();
        plane.tap_asked.notify();
        monoio::time::sleep(Duration::from_millis(50)).await;
        if let Some(store) = &plane.store {
            store.stop();
        }
    });
}

/// Applies the store's changes as they come.
async fn follow(plane: Rc<Plane>, rx: flume::Receiver<replicated::Batch>) {
    while let Ok(batch) = rx.recv_async().await {
        let Some(store) = &plane.store else {
            return;
        };
        // Reports and leader changes render nothing: the watches sleep on.
        let rendered = replicated::apply(&mut plane.st.borrow_mut(), store, batch);
        plane.progress.notify();
        if rendered {
            plane.changed();
        }
    }
}

/// Expires registrations, watches the mesh file, and writes the state file.
async fn tick(plane: Rc<Plane>) {
    let mut since_file_check = Duration::ZERO;
    let mut since_tls_check = Duration::ZERO;
    loop {
        monoio::time::sleep(TICK).await;
        let mut changed = false;
        since_tls_check += TICK;
        if since_tls_check >= Duration::from_millis(500) {
            since_tls_check = Duration::ZERO;
            renew_tls(&plane);
        }
        if let Some(store) = &plane.store {
            // Registrations expire by their leases, in the store.
            replicated::rewrite_reports(&plane, store);
            let mut st = plane.st.borrow_mut();
            replicated::took_lead(&st, store);
            replicated::advance_ca(&st, store);
            since_file_check += TICK;
            // One write of the file at a time, so that two quick edits land in order.
            if since_file_check >= Duration::from_millis(500) && !store.mesh_writing() {
                since_file_check = Duration::ZERO;
                if let Some((mesh, hash)) = changed_file(&mut st) {
                    st.file_hash = hash;
                    monoio::spawn(replicated::write_mesh(plane.clone(), mesh, hash));
                }
            }
            continue;
        }
        {
            let mut st = plane.st.borrow_mut();
            let now = Instant::now();
            let mut expired = 0;
            let mut touched = Vec::new();
            for (cluster, regs) in st.registrations.iter_mut() {
                let before = regs.len();
                regs.retain(|_, r| r.deadline > now);
                if regs.len() < before {
                    expired += before - regs.len();
                    touched.push(cluster.clone());
                }
            }
            st.registrations.retain(|_, m| !m.is_empty());
            if expired > 0 {
                tracing::info!(expired, "registrations expired");
                st.changed_clusters(&touched);
                changed = true;
            }
            let grace = st.mesh.ca.rotation_grace;
            let ttl = st.mesh.ca.cert_ttl;
            let all = st.all_have(st.rotation_version);
            if st.ca.advance(all, grace, ttl) {
                tracing::info!(issuer = %st.ca.current.fingerprint, "mesh CA rotation moved on");
                st.changed();
                changed = true;
            }
            since_file_check += TICK;
            if since_file_check >= Duration::from_millis(500) {
                since_file_check = Duration::ZERO;
                changed |= reload_file(&mut st);
            }
            changed |= adopt_operator_ca(&mut st);
            if st.dirty {
                st.dirty = false;
                if let Some(p) = &st.state_file {
                    let _ = plane.persist.send((p.clone(), st.saved()));
                }
            }
        }
        if changed {
            plane.changed();
        }
    }
}

/// Builds the API's TLS again when its certificate is half through its life, another
/// authority issues, the trust bundle changed, or the operator's files changed. A failure
/// keeps the TLS in force (and is tried again).
fn renew_tls(plane: &Plane) {
    let st = plane.st.borrow();
    if !plane.tls.borrow().as_ref().is_some_and(|s| s.due(&st)) {
        return;
    }
    match tls::build(&plane.api_tls, &st, plane.bound) {
        Ok(served) => {
            *plane.tls.borrow_mut() = served;
            tracing::info!("the API's TLS was renewed");
        }
        Err(e) => tracing::error!(error = %e, "cannot renew the API's TLS; the one in force stays"),
    }
}

/// Starts the rotation to an operator's CA that the desired state names and that neither
/// issues nor is about to (without a store; with one, the leader does it in the store).
fn adopt_operator_ca(st: &mut State) -> bool {
    match st.ca.adopt(st.mesh.ca.operator.as_ref()) {
        Ok(true) => {
            st.changed();
            st.rotation_version = st.version;
            tracing::info!("rotating to the operator's CA named in the desired state");
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::error!(error = %e, "cannot rotate to the operator's CA");
            false
        }
    }
}

/// Applies the mesh file if it changed and is valid; a bad file leaves the state in force.
fn reload_file(st: &mut State) -> bool {
    let Some((m, hash)) = changed_file(st) else {
        return false;
    };
    st.mesh = m;
    st.file_hash = hash;
    st.changed();
    tracing::info!(version = st.version, "mesh file applied");
    true
}

/// The mesh file when it changed and is valid, and its fingerprint; a bad file is reported and
/// leaves the state in force.
fn changed_file(st: &mut State) -> Option<(Mesh, u64)> {
    let stamp = st.stamp();
    if stamp.is_none() || stamp == st.file_stamp {
        return None;
    }
    st.file_stamp = stamp;
    let text = match read(&st.source) {
        Ok(t) => t,
        Err(e) => {
            st.file_error = Some(e.to_string());
            return None;
        }
    };
    let hash = fingerprint(&text);
    if hash == st.file_hash {
        return None;
    }
    match Mesh::parse(&text) {
        Ok(m) => {
            if m.bind != st.mesh.bind {
                tracing::warn!("bind changes take effect on restart");
            }
            st.file_error = None;
            Some((m, hash))
        }
        Err(errs) => {
            for e in &errs {
                tracing::error!(error = %e, "mesh file refused; the state in force stays");
            }
            st.file_error = Some(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            None
        }
    }
}

/// The state-file thread: writes the latest state (to a temporary file, then renamed).
fn write_loop(rx: &flume::Receiver<(PathBuf, Vec<u8>)>) {
    while let Ok(mut job) = rx.recv() {
        while let Ok(newer) = rx.try_recv() {
            job = newer;
        }
        let (path, data) = job;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        // It holds the CA's private keys: readable by this user only, from its first byte.
        let r = write_private(std::path::Path::new(&tmp), &data)
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::error!(path = %path.display(), error = %e, "cannot write the state file");
        }
    }
}
