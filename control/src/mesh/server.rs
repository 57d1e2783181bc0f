//! `ringmesh control`: holds the desired state, discovers endpoints, and serves each proxy its
//! snapshot over a long-poll watch (SPEC.md section 7; the API is in docs/control.md).
//!
//! Everything runs on one thread with its own monoio runtime: the state lives in a `RefCell`
//! that no `.await` holds. A change (API, mesh file, DNS, registration, expiry) bumps the
//! version, renders every node's config again (each cluster once), and wakes the watchers whose
//! node's config changed. Resolving DNS (blocking `getaddrinfo`) and writing the state file run
//! on their own threads.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::net::{TcpListener, TcpStream};
use serde_json::{Value, json};

use super::ca::{Ca, sha256_hex};
use super::http::{self, Request, Response};
use super::model::{Mesh, Registered, render_cluster, render_node};

mod replicated;

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

/// A running control plane.
pub struct ControlPlane {
    addr: SocketAddr,
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
        let text = read(&opts.source).map_err(|e| vec![e])?;
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
        let listener = std::net::TcpListener::bind(bind)
            .map_err(|e| vec![format!("bind: cannot bind {bind}: {e}")])?;
        listener
            .set_nonblocking(true)
            .map_err(|e| vec![e.to_string()])?;
        let addr = listener.local_addr().map_err(|e| vec![e.to_string()])?;
        let mut st = State::new(mesh, &text, opts.source.clone(), state_file.clone())
            .map_err(|e| vec![format!("mesh CA: {e}")])?;
        if let Some(p) = &state_file {
            st.restore(p);
        }
        let store = match &opts.store {
            Some(o) => Some(replicated::open(o, &mut st).map_err(|e| vec![e])?),
            None => None,
        };
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ringmesh-control-plane".into())
            .spawn(move || run(listener, st, stop_rx, store))
            .map_err(|e| vec![e.to_string()])?;
        tracing::info!(%addr, "control plane started");
        Ok(ControlPlane {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

fn read(source: &MeshSource) -> Result<String, String> {
    match source {
        MeshSource::File(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
        }
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

/// A registered instance.
#[derive(Debug, Clone)]
struct Registration {
    ep: Registered,
    ttl: Duration,
    deadline: Instant,
    /// Its etcd lease, with a store (0 without).
    lease: i64,
}

impl Registration {
    /// As registered: `{"addr", "zone", "weight", "ttl"}`.
    fn to_json(&self) -> Value {
        json!({
            "addr": self.ep.addr.to_string(), "zone": self.ep.zone, "weight": self.ep.weight,
            "ttl": crate::config::format_duration(self.ttl),
        })
    }
}

/// What DNS last said about a name.
#[derive(Debug, Default)]
struct Resolved {
    addrs: Vec<SocketAddr>,
    error: Option<String>,
    at: Option<SystemTime>,
}

/// A node as served and as reported by its proxy.
#[derive(Debug)]
struct NodeState {
    /// Version of its config: the mesh version when it last changed.
    version: u64,
    /// Fingerprint of its config.
    hash: u64,
    /// The watch answer: `{"version":..,"node":..,"config":..}`.
    body: std::sync::Arc<str>,
    applied: Option<(u64, SystemTime)>,
    /// The fingerprint of the config applied, when known: replicas may number the same
    /// config differently (one that started from the store's snapshot).
    applied_hash: Option<u64>,
    rejected: Option<(u64, String, SystemTime)>,
    last_seen: Option<SystemTime>,
}

impl NodeState {
    /// The proxy applied this version (`now`).
    fn applied(&mut self, version: u64, now: SystemTime) {
        self.applied = Some((version, now));
        self.applied_hash = (version == self.version).then_some(self.hash);
    }

    /// Whether the proxy runs the node's current config.
    fn in_sync(&self) -> bool {
        self.applied.is_some_and(|(v, _)| v == self.version) || self.applied_hash == Some(self.hash)
    }
}

/// The control plane's state. Only the runtime's thread touches it.
struct State {
    mesh: Mesh,
    version: u64,
    source: MeshSource,
    file_hash: u64,
    file_stamp: Option<(SystemTime, u64)>,
    file_error: Option<String>,
    state_file: Option<PathBuf>,
    registrations: BTreeMap<String, BTreeMap<String, Registration>>,
    dns: BTreeMap<String, Resolved>,
    nodes: BTreeMap<String, NodeState>,
    /// Each cluster's rendered JSON (clusters some node uses).
    cluster_text: BTreeMap<String, String>,
    /// The nodes that use each cluster.
    users: BTreeMap<String, Vec<String>>,
    watchers: usize,
    /// The state file needs writing.
    dirty: bool,
    /// The mesh CA.
    ca: Ca,
    /// The version that started the CA rotation in progress.
    rotation_version: u64,
}

impl State {
    fn new(
        mesh: Mesh,
        text: &str,
        source: MeshSource,
        state_file: Option<PathBuf>,
    ) -> Result<State, String> {
        let ca = Ca::generate(&mesh.trust_domain)?;
        // Versions start from the clock (milliseconds), so that they keep growing across
        // restarts even without a state file: a proxy never sees an old number for a new config.
        let mut st = State {
            mesh,
            version: unix_ms(SystemTime::now()).max(1),
            file_hash: fingerprint(text),
            file_stamp: None,
            file_error: None,
            state_file,
            registrations: BTreeMap::new(),
            dns: BTreeMap::new(),
            nodes: BTreeMap::new(),
            cluster_text: BTreeMap::new(),
            users: BTreeMap::new(),
            watchers: 0,
            dirty: true,
            source,
            ca,
            rotation_version: 0,
        };
        st.file_stamp = st.stamp();
        st.render();
        Ok(st)
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let MeshSource::File(p) = &self.source else {
            return None;
        };
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Takes the desired state and registrations from the state file when it was written for
    /// this same mesh file; registrations get a full TTL from now.
    fn restore(&mut self, path: &PathBuf) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let Ok(saved) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!(path = %path.display(), "state file unreadable; starting from the mesh file");
            return;
        };
        match Ca::from_json(&saved["ca"], &self.mesh.trust_domain) {
            Ok(ca) => self.ca = ca,
            Err(e) => tracing::warn!(error = %e, "state file has no usable CA; a new one was made"),
        }
        let version = saved["version"].as_u64().unwrap_or(0);
        self.version = self.version.max(version + 1);
        if saved["file_hash"].as_u64() == Some(self.file_hash) {
            match Mesh::check(saved["mesh"].clone()) {
                Ok(m) => self.mesh = m,
                Err(errs) => tracing::warn!(
                    errors = errs.len(),
                    "state file's desired state is invalid; using the mesh file"
                ),
            }
        }
        let now = Instant::now();
        for r in saved["registrations"].as_array().into_iter().flatten() {
            let (Some(cluster), Some(id)) = (r["cluster"].as_str(), r["id"].as_str()) else {
                continue;
            };
            let Ok(reg) = registration(r, now) else {
                continue;
            };
            self.registrations
                .entry(cluster.to_string())
                .or_default()
                .insert(id.to_string(), reg);
        }
        self.nodes.clear();
        self.render();
        tracing::info!(
            version = self.version,
            registrations = self
                .registrations
                .values()
                .map(BTreeMap::len)
                .sum::<usize>(),
            "state restored"
        );
    }

    /// The state file's contents.
    fn saved(&self) -> Vec<u8> {
        let regs: Vec<Value> = self
            .registrations
            .iter()
            .flat_map(|(c, m)| {
                m.iter().map(move |(id, r)| {
                    let mut v = r.to_json();
                    v["cluster"] = json!(c);
                    v["id"] = json!(id);
                    v
                })
            })
            .collect();
        json!({
            "version": self.version,
            "file_hash": self.file_hash,
            "mesh": self.mesh.doc,
            "registrations": regs,
            "ca": self.ca.to_json(),
        })
        .to_string()
        .into_bytes()
    }

    /// Something changed: a new version, every node rendered again.
    fn changed(&mut self) {
        self.version += 1;
        self.dirty = true;
        self.render();
    }

    /// Renders every node's config; a node whose config differs gets the current version.
    fn render(&mut self) {
        self.users.clear();
        for (node, spec) in &self.mesh.nodes {
            for c in &spec.clusters {
                self.users.entry(c.clone()).or_default().push(node.clone());
            }
        }
        self.cluster_text.clear();
        let names: Vec<String> = self.users.keys().cloned().collect();
        for name in &names {
            self.render_cluster(name);
        }
        self.nodes
            .retain(|name, _| self.mesh.nodes.contains_key(name));
        let all: Vec<String> = self.mesh.nodes.keys().cloned().collect();
        self.render_nodes(&all);
    }

    /// After a change to these clusters' endpoints: renders them and the nodes that use them.
    fn changed_clusters(&mut self, clusters: &[String]) {
        self.version += 1;
        self.dirty = true;
        self.render_clusters(clusters);
    }

    /// Renders these clusters and the nodes that use them.
    fn render_clusters(&mut self, clusters: &[String]) {
        let mut nodes = Vec::new();
        for c in clusters {
            if self.users.contains_key(c) {
                self.render_cluster(c);
                nodes.extend(self.users[c].iter().cloned());
            }
        }
        nodes.sort();
        nodes.dedup();
        self.render_nodes(&nodes);
    }

    fn render_cluster(&mut self, name: &str) {
        let Some(spec) = self.mesh.cluster(name) else {
            return;
        };
        let empty = BTreeMap::new();
        let regs = self.registrations.get(name).unwrap_or(&empty);
        let text = render_cluster(
            spec,
            |n| self.dns.get(n).map(|r| &r.addrs[..]),
            regs.values().map(|r| &r.ep),
        );
        self.cluster_text.insert(name.to_string(), text);
    }

    fn render_nodes(&mut self, names: &[String]) {
        let version = self.version;
        let (bundle, issuer) = self.ca.marks();
        for name in names {
            let Some(spec) = self.mesh.nodes.get(name) else {
                continue;
            };
            let config = render_node(&self.mesh, spec, &self.cluster_text);
            // A node with an identity is told the CA's marks: a change makes it fetch a new
            // certificate and trust bundle.
            let marks = match &spec.identity {
                Some(id) => format!(
                    ",\"identity\":{{\"id\":{},\"bundle\":\"{bundle}\",\"issuer\":\"{issuer}\"}}",
                    Value::String(id.clone())
                ),
                None => String::new(),
            };
            let hash = fingerprint(&config) ^ fingerprint(&marks).rotate_left(1);
            let body = || -> std::sync::Arc<str> {
                std::sync::Arc::from(format!(
                    "{{\"version\":{version},\"node\":{}{marks},\"config\":{config}}}\n",
                    Value::String(name.clone())
                ))
            };
            match self.nodes.get_mut(name) {
                Some(n) if n.hash == hash => {}
                Some(n) => {
                    n.version = version;
                    n.body = body();
                    n.hash = hash;
                }
                None => {
                    let b = body();
                    self.nodes.insert(
                        name.clone(),
                        NodeState {
                            version,
                            hash,
                            body: b,
                            applied: None,
                            applied_hash: None,
                            rejected: None,
                            last_seen: None,
                        },
                    );
                }
            }
        }
    }
}

impl State {
    /// The clusters that take endpoints from DNS name `name`.
    fn dns_users(&self, name: &str) -> Vec<String> {
        self.mesh
            .clusters
            .iter()
            .filter(|c| c.dns.iter().any(|d| d.name == name))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Removes a registration; returns whether there was one.
    fn unregister(&mut self, cluster: &str, id: &str) -> bool {
        let Some(m) = self.registrations.get_mut(cluster) else {
            return false;
        };
        let removed = m.remove(id).is_some();
        if m.is_empty() {
            self.registrations.remove(cluster);
        }
        removed
    }

    /// Whether every node with an identity whose proxy was seen lately applied `version` or later.
    fn all_have(&self, version: u64) -> bool {
        let recent = SystemTime::now() - Duration::from_secs(120);
        self.mesh
            .nodes
            .iter()
            .filter(|(_, spec)| spec.identity.is_some())
            .filter_map(|(name, _)| self.nodes.get(name))
            .filter(|n| n.last_seen.is_some_and(|t| t >= recent))
            .all(|n| n.applied.is_some_and(|(v, _)| v >= version))
    }
}

/// Parses a registration body (`{"addr", "zone", "weight", "ttl"}`).
pub fn parse_registration(body: &[u8]) -> Result<(Registered, Duration), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let reg = registration(&v, Instant::now())?;
    Ok((reg.ep, reg.ttl))
}

fn registration(v: &Value, now: Instant) -> Result<Registration, String> {
    let obj = v.as_object().ok_or("expected an object")?;
    for k in obj.keys() {
        if !["addr", "zone", "weight", "ttl", "cluster", "id"].contains(&k.as_str()) {
            return Err(format!(
                "unknown field `{k}`; expected one of: addr, zone, weight, ttl"
            ));
        }
    }
    let addr = obj
        .get("addr")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .filter(|a| a.port() != 0)
        .ok_or("addr: expected an address such as 127.0.0.1:9000")?;
    let zone = match obj.get("zone") {
        None | Some(Value::Null) => None,
        Some(Value::String(z)) if !z.is_empty() && z.len() <= 128 => Some(z.clone()),
        _ => return Err("zone: expected a name of 1 to 128 characters".into()),
    };
    let weight = match obj.get("weight") {
        None | Some(Value::Null) => None,
        Some(w) => Some(
            w.as_u64()
                .filter(|w| *w <= 1_000_000)
                .ok_or("weight: expected a number from 0 to 1000000")? as u32,
        ),
    };
    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => TTL_DEFAULT,
        Some(Value::String(s)) => crate::config::decode::parse_duration(s)
            .filter(|d| (TTL_MIN..=TTL_MAX).contains(d))
            .ok_or("ttl: expected a duration from 1s to 1h, such as 10s")?,
        _ => return Err("ttl: expected a duration from 1s to 1h, such as 10s".into()),
    };
    Ok(Registration {
        ep: Registered { addr, zone, weight },
        ttl,
        deadline: now + ttl,
        lease: 0,
    })
}

/// Wakes the watchers when the state changes. Each waiting watch holds a slot, removed when it
/// ends however it ends, so the set stays as large as the watches in progress.
#[derive(Default)]
struct Signal {
    generation: Cell<u64>,
    next_key: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, w) in waiting {
            w.wake();
        }
    }

    fn wait(&self) -> Changed<'_> {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        Changed {
            signal: self,
            generation: self.generation.get(),
            key,
        }
    }
}

struct Changed<'a> {
    signal: &'a Signal,
    generation: u64,
    key: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.signal
            .waiting
            .borrow_mut()
            .insert(self.key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.signal.waiting.borrow_mut().remove(&self.key);
    }
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
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        ringmesh_core::sys::set_cloexec(std::os::fd::AsRawFd::as_raw_fd(&stream));
                        monoio::spawn(serve(plane.clone(), stream));
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
    loop {
        monoio::time::sleep(TICK).await;
        let mut changed = false;
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
            st.file_error = Some(e);
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

/// Applies what the DNS thread found.
async fn discovered(
    plane: Rc<Plane>,
    found: flume::Receiver<(String, Result<Vec<SocketAddr>, String>)>,
) {
    while let Ok((name, result)) = found.recv_async().await {
        if let Some(store) = &plane.store {
            // The leader writes it to the store; every replica takes it from there.
            replicated::resolved(&plane.st.borrow(), store, &name, &result);
            continue;
        }
        let changed = {
            let mut st = plane.st.borrow_mut();
            let entry = st.dns.entry(name.clone()).or_default();
            let changed = match result {
                Ok(addrs) => {
                    entry.error = None;
                    entry.at = Some(SystemTime::now());
                    let changed = entry.addrs != addrs;
                    entry.addrs = addrs;
                    changed
                }
                Err(e) => {
                    if entry.error.as_deref() != Some(&e) {
                        tracing::warn!(%name, error = %e, "DNS: cannot resolve; keeping the last addresses");
                    }
                    entry.error = Some(e);
                    false
                }
            };
            if changed {
                let users = st.dns_users(&name);
                st.changed_clusters(&users);
            }
            changed
        };
        if changed {
            plane.signal.notify();
        }
    }
}

/// The DNS thread: resolves every name now and then each interval.
fn resolve_loop(
    names: &flume::Receiver<(Vec<String>, Duration)>,
    found: &flume::Sender<(String, Result<Vec<SocketAddr>, String>)>,
) {
    use std::net::ToSocketAddrs;
    let Ok((mut list, mut interval)) = names.recv() else {
        return;
    };
    loop {
        for name in &list {
            let r = match name.to_socket_addrs() {
                Ok(it) => {
                    let mut v: Vec<SocketAddr> = it.collect();
                    v.sort();
                    v.dedup();
                    if v.is_empty() {
                        Err("no addresses".to_string())
                    } else {
                        Ok(v)
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            if found.send((name.clone(), r)).is_err() {
                return;
            }
        }
        match names.recv_timeout(interval) {
            Ok(mut next) => {
                while let Ok(n) = names.try_recv() {
                    next = n;
                }
                // Only new names need resolving before the interval is up.
                let fresh = next.0.iter().any(|n| !list.contains(n));
                (list, interval) = next;
                if !fresh {
                    match names.recv_timeout(interval) {
                        Ok(n) => (list, interval) = n,
                        Err(flume::RecvTimeoutError::Timeout) => {}
                        Err(flume::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return,
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
        let r = std::fs::write(&tmp, &data).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::error!(path = %path.display(), error = %e, "cannot write the state file");
        }
    }
}

async fn serve(plane: Rc<Plane>, mut stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    plane.conns.borrow_mut().insert(fd);
    let _open = OpenConn(&plane, fd);
    let mut buf = Vec::new();
    loop {
        let req = match http::read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err((status, msg)) => {
                let _ = http::respond(&mut stream, Response::error(status, msg), true).await;
                return;
            }
        };
        // An idle connection keeps no buffer.
        if buf.is_empty() {
            buf = Vec::new();
        }
        let close = req.close;
        let resp = answer(&plane, req).await;
        if !http::respond(&mut stream, resp, close).await || close {
            return;
        }
    }
}

async fn answer(plane: &Plane, req: Request) -> Response {
    let path = req.path.clone();
    if !path.starts_with('/') {
        return Response::error(400, "the request target must be a path");
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let Some(store) = &plane.store {
        if let Some(r) = replicated::answer(plane, store, &req, &segs).await {
            return r;
        }
    }
    match (req.method.as_str(), &segs[..]) {
        ("GET", ["ready"]) => Response::json(200, "{\"ready\":true}\n"),
        ("GET", ["metrics"]) => Response {
            ctype: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::json(200, metrics(&plane.st.borrow(), plane.store.as_ref()))
        },
        ("GET", ["v1", "config", ..]) => get_config(&plane.st.borrow(), config_pointer(&path)),
        ("PUT" | "DELETE", ["v1", "config", ..]) => {
            let r = edit_config(&mut plane.st.borrow_mut(), &req, config_pointer(&path));
            if r.status == 200 {
                plane.changed();
            }
            r
        }
        ("PUT", ["v1", "clusters", cluster, "endpoints", id]) => {
            let (r, changed) = register(&mut plane.st.borrow_mut(), cluster, id, &req.body);
            if changed {
                plane.changed();
            }
            r
        }
        ("DELETE", ["v1", "clusters", cluster, "endpoints", id]) => {
            let mut st = plane.st.borrow_mut();
            if !st.unregister(cluster, id) {
                return Response::error(404, "no such registration");
            }
            st.changed_clusters(&[cluster.to_string()]);
            let v = st.version;
            drop(st);
            plane.changed();
            Response::json(200, json!({ "version": v }).to_string() + "\n")
        }
        ("GET", ["v1", "clusters"]) => Response::json(200, clusters_json(&plane.st.borrow())),
        ("GET", ["v1", "nodes"]) => Response::json(200, nodes_json(&plane.st.borrow())),
        ("GET", ["v1", "watch", node]) => watch(plane, node, &req).await,
        ("POST", ["v1", "nodes", node, "certificate"]) => {
            certificate(&mut plane.st.borrow_mut(), node, &req)
        }
        ("GET", ["v1", "ca"]) => ca_json(&plane.st.borrow()),
        ("POST", ["v1", "ca", "rotate"]) => {
            let r = {
                let mut st = plane.st.borrow_mut();
                let td = st.mesh.trust_domain.clone();
                match st.ca.rotate(&td) {
                    Ok(()) => {
                        st.changed();
                        st.rotation_version = st.version;
                        tracing::info!("mesh CA rotation started");
                        Response::json(200, json!({ "version": st.version }).to_string() + "\n")
                    }
                    Err(e) => Response::error(409, &e),
                }
            };
            if r.status == 200 {
                plane.changed();
            }
            r
        }
        ("POST", ["v1", "nodes", node, "report"]) => {
            report(&mut plane.st.borrow_mut(), node, &req.body)
        }
        (
            _,
            ["ready" | "metrics"]
            | ["v1", "config", ..]
            | ["v1", "clusters", ..]
            | ["v1", "nodes", ..]
            | ["v1", "watch", ..]
            | ["v1", "ca", ..],
        ) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "not found"),
    }
}

/// The JSON pointer after `/v1/config` in a path.
fn config_pointer(path: &str) -> &str {
    path.strip_prefix("/v1/config").unwrap_or_default()
}

/// `GET /v1/config[/pointer]`: the desired state (or a part), with its version.
fn get_config(st: &State, pointer: &str) -> Response {
    let value = if pointer.is_empty() || pointer == "/" {
        Some(&st.mesh.doc)
    } else {
        st.mesh.doc.pointer(pointer)
    };
    match value {
        Some(v) => {
            let key = if pointer.is_empty() || pointer == "/" {
                "config"
            } else {
                "value"
            };
            let mut r = Response::json(
                200,
                format!("{{\"version\":{},\"{key}\":{v}}}\n", st.version),
            );
            r.etag = Some(st.version);
            r
        }
        None => Response::error(404, "no such field"),
    }
}

/// `PUT` or `DELETE /v1/config[/pointer]` with `If-Match: VERSION`: changes the desired state,
/// or refuses with every error and changes nothing.
fn edit_config(st: &mut State, req: &Request, pointer: &str) -> Response {
    let Some(expected) = req.if_match.as_deref() else {
        return if_match_required();
    };
    if expected != st.version.to_string() && expected != "*" {
        return conflict(st);
    }
    let mut doc = st.mesh.doc.clone();
    if let Err(r) = apply_edit(&mut doc, req, pointer) {
        return r;
    }
    match Mesh::check(doc) {
        Ok(m) => {
            if m.bind != st.mesh.bind {
                tracing::warn!("bind changes take effect on restart");
            }
            st.mesh = m;
            st.changed();
            tracing::info!(
                version = st.version,
                "desired state changed through the API"
            );
            let mut r = Response::json(200, json!({ "version": st.version }).to_string() + "\n");
            r.etag = Some(st.version);
            r
        }
        Err(errs) => invalid(&errs),
    }
}

fn if_match_required() -> Response {
    Response::error(
        428,
        "If-Match: the version this change was made against is required (GET /v1/config)",
    )
}

/// 409: the change was made against an older desired state.
fn conflict(st: &State) -> Response {
    let mut r = Response::json(
        409,
        json!({
            "error": "the desired state changed since that version; read it again",
            "version": st.version,
        })
        .to_string()
            + "\n",
    );
    r.etag = Some(st.version);
    r
}

/// 422 with every error, by field.
fn invalid(errs: &[impl ToString]) -> Response {
    Response::json(
        422,
        json!({ "errors": errs.iter().map(ToString::to_string).collect::<Vec<_>>() }).to_string()
            + "\n",
    )
}

/// Edits `doc` at a JSON pointer: PUT sets (a new key of a mapping, an item of a list, or `-`
/// or the length to append), DELETE removes.
pub fn apply_edit(doc: &mut Value, req: &Request, pointer: &str) -> Result<(), Response> {
    let value = if req.method == "PUT" {
        Some(
            serde_json::from_slice::<Value>(&req.body)
                .map_err(|e| Response::error(400, &format!("invalid JSON: {e}")))?,
        )
    } else {
        None
    };
    let pointer = pointer.trim_end_matches('/');
    if pointer.is_empty() {
        return match value {
            Some(v) => {
                *doc = v;
                Ok(())
            }
            None => Err(Response::error(405, "the desired state cannot be deleted")),
        };
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let key = last.replace("~1", "/").replace("~0", "~");
    let missing = || Response::error(404, "no such field");
    let parent = if parent.is_empty() {
        Some(doc)
    } else {
        doc.pointer_mut(parent)
    };
    match (parent.ok_or_else(missing)?, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(key, v);
        }
        (Value::Object(m), None) => {
            m.remove(&key).ok_or_else(missing)?;
        }
        (Value::Array(a), v) => {
            let len = a.len();
            let i = if key == "-" {
                len
            } else {
                key.parse().map_err(|_| missing())?
            };
            match v {
                Some(v) if i < len => a[i] = v,
                Some(v) if i == len => a.push(v),
                None if i < len => {
                    a.remove(i);
                }
                _ => return Err(missing()),
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

/// `PUT /v1/clusters/{cluster}/endpoints/{id}`: registers or heartbeats. Returns whether the
/// served state changed (a heartbeat only moves the deadline).
fn register(st: &mut State, cluster: &str, id: &str, body: &[u8]) -> (Response, bool) {
    let reg = match checked_registration(st, cluster, id, body) {
        Ok(r) => r,
        Err(r) => return (r, false),
    };
    let ttl = reg.ttl;
    let regs = st.registrations.entry(cluster.to_string()).or_default();
    let changed = regs.get(id).is_none_or(|old| old.ep != reg.ep);
    regs.insert(id.to_string(), reg);
    if changed {
        st.changed_clusters(&[cluster.to_string()]);
    }
    (registered(cluster, id, ttl, st.version), changed)
}

/// A registration request checked: the cluster exists, the id fits, the body is one.
fn checked_registration(
    st: &State,
    cluster: &str,
    id: &str,
    body: &[u8],
) -> Result<Registration, Response> {
    if st.mesh.cluster(cluster).is_none() {
        return Err(Response::error(
            404,
            &format!("no cluster named `{cluster}`"),
        ));
    }
    if id.is_empty() || id.len() > 253 {
        return Err(Response::error(400, "id: expected 1 to 253 characters"));
    }
    serde_json::from_slice::<Value>(body)
        .map_err(|e| format!("invalid JSON: {e}"))
        .and_then(|v| registration(&v, Instant::now()))
        .map_err(|e| Response::error(400, &e))
}

/// The answer to a registration or heartbeat.
fn registered(cluster: &str, id: &str, ttl: Duration, version: u64) -> Response {
    let ttl = crate::config::format_duration(ttl);
    Response::json(
        200,
        json!({ "cluster": cluster, "id": id, "ttl": ttl, "version": version }).to_string() + "\n",
    )
}

/// `GET /v1/watch/{node}?version=V&applied=A&wait=30s`: the node's snapshot as soon as its
/// version differs from `V` (at once without `V`), or 304 after `wait`.
async fn watch(plane: &Plane, node: &str, req: &Request) -> Response {
    let seen: Option<u64> = req.param("version").and_then(|v| v.parse().ok());
    let applied: Option<u64> = req.param("applied").and_then(|v| v.parse().ok());
    let wait = match req.param("wait") {
        None => WAIT_DEFAULT,
        Some(w) => match crate::config::decode::parse_duration(w) {
            Some(d) if d <= WAIT_MAX => d,
            _ => return Response::error(400, "wait: expected a duration up to 5m, such as 30s"),
        },
    };
    let deadline = monoio::time::sleep(wait);
    let mut deadline = std::pin::pin!(deadline);
    let _watching = Watching::new(plane);
    loop {
        if plane.stopping.get() {
            return Response::error(503, "the control plane is stopping");
        }
        let changed = plane.signal.wait();
        {
            let mut st = plane.st.borrow_mut();
            let Some(n) = st.nodes.get_mut(node) else {
                return Response::error(404, &format!("no node named `{node}` in the mesh"));
            };
            n.last_seen = Some(SystemTime::now());
            let mut news = false;
            if let Some(a) = applied.filter(|a| n.applied.is_none_or(|(v, _)| v != *a)) {
                n.applied(a, SystemTime::now());
                news = true;
            }
            let answer = (seen != Some(n.version)).then(|| {
                let mut r = Response::json(200, n.body.as_bytes());
                r.etag = Some(n.version);
                r
            });
            drop(st);
            if let Some(store) = &plane.store {
                replicated::note_node(plane, store, node, news);
            }
            if let Some(r) = answer {
                return r;
            }
        }
        monoio::select! {
            _ = changed => {}
            _ = &mut deadline => return Response {
                status: 304,
                ctype: "application/json",
                body: Vec::new(),
                etag: seen,
            },
        }
    }
}

/// An open connection, known to the plane for as long as it lasts.
struct OpenConn<'a>(&'a Plane, std::os::fd::RawFd);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.conns.borrow_mut().remove(&self.1);
    }
}

/// Counts a watch in progress for as long as it lasts.
struct Watching<'a>(&'a Plane);

impl<'a> Watching<'a> {
    fn new(plane: &'a Plane) -> Self {
        plane.st.borrow_mut().watchers += 1;
        Watching(plane)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        // No borrow of the state is held across an await, so none is held here.
        self.0.st.borrow_mut().watchers -= 1;
    }
}

/// `POST /v1/nodes/{node}/certificate` with `Authorization: Bearer TOKEN`, body
/// `{"public_key": HEX}`: signs a certificate for the node's identity over the proxy's key.
fn certificate(st: &mut State, node: &str, req: &Request) -> Response {
    let Some(spec) = st.mesh.nodes.get(node) else {
        return Response::error(404, &format!("no node named `{node}` in the mesh"));
    };
    let (Some(id), Some(expected)) = (&spec.identity, &spec.token_sha256) else {
        return Response::error(409, &format!("node `{node}` has no identity in the mesh"));
    };
    let token = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared as digests, so the comparison's time says nothing about the token.
    let given = sha256_hex(token.as_bytes());
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if token.is_empty() || !same {
        tracing::warn!(node, "certificate refused: bad bootstrap token");
        return Response::error(401, "the bootstrap token is not this node's");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Response::error(400, "invalid JSON");
    };
    let Some(public_key) = body["public_key"].as_str() else {
        return Response::error(400, "public_key: expected a P-256 public key in hex");
    };
    let (ns, sa) = id
        .rsplit_once("/sa/")
        .map(|(head, sa)| (head.rsplit('/').next().unwrap_or_default(), sa))
        .unwrap_or_default();
    let dns = super::model::identity_dns_name(&st.mesh.trust_domain, ns, sa);
    let ttl = st.mesh.ca.cert_ttl;
    match st.ca.current.issue(public_key, id, &dns, ttl) {
        Ok((cert, expires)) => {
            st.ca.issued += 1;
            let (bundle_mark, issuer_mark) = st.ca.marks();
            Response::json(
                200,
                json!({
                    "identity": id,
                    "cert": cert,
                    "bundle": st.ca.bundle(),
                    "expires_unix": expires,
                    "marks": { "bundle": bundle_mark, "issuer": issuer_mark },
                })
                .to_string()
                    + "\n",
            )
        }
        Err(e) => Response::error(400, &e),
    }
}

/// `GET /v1/ca`: the trust bundle and the rotation's state.
fn ca_json(st: &State) -> Response {
    let (bundle_mark, issuer_mark) = st.ca.marks();
    Response::json(
        200,
        json!({
            "bundle": st.ca.bundle(),
            "marks": { "bundle": bundle_mark, "issuer": issuer_mark },
            "issuer": st.ca.current.fingerprint,
            "rotating": st.ca.next.is_some(),
            "next": st.ca.next.as_ref().map(|(a, _)| &a.fingerprint),
            "previous": st.ca.previous.as_ref().map(|(a, until)| json!({ "fingerprint": a.fingerprint, "trusted_until_unix": until })),
            "issued": st.ca.issued,
            "cert_ttl": crate::config::format_duration(st.mesh.ca.cert_ttl),
        })
        .to_string()
            + "\n",
    )
}

/// `POST /v1/nodes/{node}/report` body `{"version": V, "error": null | "why"}`.
fn report(st: &mut State, node: &str, body: &[u8]) -> Response {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Response::error(400, &format!("invalid JSON: {e}")),
    };
    let Some(version) = v["version"].as_u64() else {
        return Response::error(400, "version: expected a number");
    };
    let Some(n) = st.nodes.get_mut(node) else {
        return Response::error(404, &format!("no node named `{node}` in the mesh"));
    };
    let now = SystemTime::now();
    match v["error"].as_str() {
        Some(e) => {
            tracing::warn!(node, version, error = %e, "a proxy refused its snapshot");
            n.rejected = Some((version, e.chars().take(4096).collect(), now));
        }
        None => n.applied(version, now),
    }
    Response::json(200, "{}\n")
}

fn nodes_json(st: &State) -> Vec<u8> {
    let now = SystemTime::now();
    let ago = |t: SystemTime| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64());
    let nodes: serde_json::Map<String, Value> = st
        .nodes
        .iter()
        .map(|(name, n)| {
            let v = json!({
                "version": n.version,
                "applied_version": n.applied.map(|(v, _)| v),
                "applied_at_unix_ms": n.applied.map(|(_, t)| unix_ms(t)),
                "in_sync": n.in_sync(),
                "last_rejection": n.rejected.as_ref().map(|(v, e, t)| json!({
                    "version": v, "error": e, "at_unix_ms": unix_ms(*t),
                })),
                "last_seen_seconds_ago": n.last_seen.map(ago),
            });
            (name.clone(), v)
        })
        .collect();
    (json!({ "version": st.version, "nodes": nodes }).to_string() + "\n").into_bytes()
}

fn clusters_json(st: &State) -> Vec<u8> {
    let now = Instant::now();
    let mut out = serde_json::Map::new();
    for c in &st.mesh.clusters {
        let mut eps = Vec::new();
        for e in &c.statics {
            eps.push(json!({ "addr": e.get("addr"), "source": "static" }));
        }
        let mut dns = Vec::new();
        for d in &c.dns {
            let r = st.dns.get(&d.name);
            for a in r.map(|r| &r.addrs[..]).unwrap_or_default() {
                eps.push(json!({ "addr": a.to_string(), "source": "dns", "name": d.name }));
            }
            dns.push(json!({
                "name": d.name,
                "addrs": r.map(|r| r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "error": r.and_then(|r| r.error.clone()),
                "resolved_at_unix_ms": r.and_then(|r| r.at).map(unix_ms),
            }));
        }
        for (id, r) in st.registrations.get(&c.name).into_iter().flatten() {
            eps.push(json!({
                "addr": r.ep.addr.to_string(), "source": "registered", "id": id,
                "zone": r.ep.zone,
                "expires_in_ms": r.deadline.saturating_duration_since(now).as_millis() as u64,
            }));
        }
        out.insert(c.name.clone(), json!({ "endpoints": eps, "dns": dns }));
    }
    (json!({ "version": st.version, "clusters": out }).to_string() + "\n").into_bytes()
}

fn metrics(st: &State, store: Option<&replicated::Store>) -> Vec<u8> {
    let mut o = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, series: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in series {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    gauge(
        "ringmesh_control_version",
        "Version of the desired state.",
        &[(String::new(), st.version as f64)],
    );
    gauge(
        "ringmesh_control_watchers",
        "Watches in progress.",
        &[(String::new(), st.watchers as f64)],
    );
    let stale = st.nodes.values().filter(|n| !n.in_sync()).count();
    gauge(
        "ringmesh_control_nodes",
        "Nodes of the mesh, by whether their proxy applied their current snapshot.",
        &[
            (
                "{state=\"in_sync\"}".into(),
                (st.nodes.len() - stale) as f64,
            ),
            ("{state=\"behind\"}".into(), stale as f64),
        ],
    );
    let statics: usize = st.mesh.clusters.iter().map(|c| c.statics.len()).sum();
    let dns: usize = st.dns.values().map(|r| r.addrs.len()).sum();
    let regs: usize = st.registrations.values().map(BTreeMap::len).sum();
    gauge(
        "ringmesh_control_endpoints",
        "Endpoints known, by source.",
        &[
            ("{source=\"static\"}".into(), statics as f64),
            ("{source=\"dns\"}".into(), dns as f64),
            ("{source=\"registered\"}".into(), regs as f64),
        ],
    );
    let up: Vec<(String, f64)> = st
        .dns
        .iter()
        .map(|(name, r)| {
            (
                format!(
                    "{{source=\"dns\",name=\"{}\"}}",
                    name.replace(['"', '\\', '\n'], "_")
                ),
                if r.error.is_none() { 1.0 } else { 0.0 },
            )
        })
        .chain(std::iter::once((
            "{source=\"file\",name=\"mesh\"}".to_string(),
            if st.file_error.is_none() { 1.0 } else { 0.0 },
        )))
        .chain(store.map(|s| {
            (
                "{source=\"etcd\",name=\"store\"}".to_string(),
                if s.up() { 1.0 } else { 0.0 },
            )
        }))
        .collect();
    gauge(
        "ringmesh_control_source_up",
        "1 when a discovery source's last attempt worked, 0 when it failed (its last good result is kept).",
        &up,
    );
    if let Some(s) = store {
        gauge(
            "ringmesh_control_leader",
            "1 on the replica that resolves DNS and moves CA rotations on for the others.",
            &[(String::new(), if s.leader() { 1.0 } else { 0.0 })],
        );
    }
    o.into_bytes()
}
