//! Replicas sharing one state through etcd.
//!
//! The store holds everything the snapshots are made of, under one prefix:
//!
//! | key | value |
//! |---|---|
//! | `epoch` | when this prefix was first written (ms); versions are `epoch + revision` |
//! | `mesh` | the desired state |
//! | `ca` | the mesh CA (its keys included) and the rotation's state |
//! | `dns/NAME` | what DNS last said about a name (written by the leader) |
//! | `reg/CLUSTER/ID` | a registration, attached to an etcd lease of its TTL |
//! | `node/NAME` | what the node's proxy last reported |
//! | `spent/NAME` | the node's bootstrap token that got it its first certificate |
//! | `leader` | the replica that resolves DNS and moves CA rotations on (leased) |
//!
//! Each replica watches the prefix and applies changes in revision order to its own `State`,
//! which serves reads and watches as without a store. Writes go to etcd first, guarded by
//! transactions where they must not race (desired state, CA); the API answers once the
//! replica's own watch has seen the write, so a client reads its writes on the replica it
//! wrote to. A version is `epoch + revision`: the same number on any replica means the same
//! snapshot, so a proxy may move between replicas. Registrations expire by their lease, in
//! etcd, so a lost replica takes none of them with it, and heartbeats work on any replica.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::super::ca::Ca;
use super::super::etcd::{self, Etcd, EtcdError, Event, Kv};
use super::super::model::Mesh;
use super::auth::Caller;
use super::{
    DnsError, Plane, Resolved, Spent, State, StoreOptions, apply_edit, checked_registration,
    conflict, identity, if_match_required, invalid, may_touch, owner_of, registered, registration,
    unix_ms,
};
use crate::http::{Request, Response};

/// Threads making etcd calls for the API (each with its own connection).
const WORKERS: usize = 4;
/// The leader's lease: another replica takes over this long after the leader is lost.
const LEADER_TTL: i64 = 3;
/// How long a write waits for the replica's own watch to see it before answering anyway.
const SEEN_WAIT: Duration = Duration::from_secs(5);
/// Node reports waiting to be written; beyond, they are written later.
const REPORTS_QUEUED: usize = 4096;
/// How long an API write waits for its etcd call.
const EXEC_WAIT: Duration = Duration::from_secs(15);
/// How often reports that could not be written are tried again.
const REWRITE_EVERY: Duration = Duration::from_secs(2);
/// How often a node's `last_seen` is written to the store while its proxy keeps watching.
const SEEN_WRITE: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce(&mut Etcd) + Send>;

/// Changes from the store's watch, for the runtime.
pub(super) enum Batch {
    /// Everything under the prefix at a revision (at start and after the watch was lost).
    Snapshot(i64, Vec<Kv>),
    /// Changes, in revision order.
    Events(Vec<Event>),
}

/// The runtime's handle on the store.
pub(super) struct Store {
    prefix: String,
    epoch: u64,
    jobs: flume::Sender<Job>,
    /// Until when (unix ms) this replica surely holds the leader key: its lease's last renewal,
    /// counted from before it was asked, plus the lease's TTL less a margin.
    leader_until: Arc<AtomicU64>,
    /// A leader key exists (this replica's or another's).
    led: Arc<AtomicBool>,
    /// The watch is connected.
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The last revision applied to the state.
    applied: Cell<i64>,
    mesh_rev: Cell<i64>,
    ca_rev: Cell<i64>,
    /// A CA change by the leader is being written.
    ca_pending: Arc<AtomicBool>,
    /// The mesh file is being written.
    mesh_writing: Cell<bool>,
    /// What DNS last said here about each name.
    resolved: RefCell<BTreeMap<String, Result<Vec<std::net::SocketAddr>, DnsError>>>,
    /// This replica led at the last tick.
    led_here: Cell<bool>,
    /// etcd went back in time: nothing more is followed until a restart.
    diverged: Cell<bool>,
    /// Node reports, written by a thread of their own so that they never hold up the API.
    reports: flume::Sender<Job>,
    /// When reports that could not be written were last tried again.
    rewritten: Cell<Instant>,
    /// When each node's report was last written by this replica.
    node_written: RefCell<HashMap<String, Instant>>,
    /// The desired state this replica checked and is writing: its text and the checked form,
    /// so that seeing it come back does not check it again (1,000 nodes take a while).
    checked: RefCell<Option<(Vec<u8>, Mesh)>>,
    /// Nodes whose report could not be written, to write again once the store is back.
    unwritten: (flume::Sender<String>, flume::Receiver<String>),
    threads: RefCell<Vec<std::thread::JoinHandle<()>>>,
}

/// Why a replica could not open the store.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    /// etcd refused or failed a call made to seed or read the prefix.
    #[error("store: {0}")]
    Etcd(#[from] EtcdError),
    /// The prefix's `epoch` key does not hold a number.
    #[error("store: the epoch key is unreadable")]
    Epoch,
    /// A store thread cannot be started.
    #[error("store: cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Connects to etcd, seeds an empty prefix from this replica's mesh file and CA, reads the
/// state into `st`, and starts the store's threads. Returns the store and its changes.
pub(super) fn open(
    opts: &StoreOptions,
    st: &mut State,
) -> Result<(Store, flume::Receiver<Batch>), StoreError> {
    let prefix = opts.prefix.clone();
    let mut etcd = Etcd::new(opts.etcd.clone());
    // Wait a little for etcd (it may be starting beside us).
    let started = Instant::now();
    let now_ms = unix_ms(SystemTime::now()).to_string();
    loop {
        match etcd.put_if(&format!("{prefix}epoch"), 0, now_ms.as_bytes(), 0) {
            Ok(_) => break,
            Err(e) if e.unavailable() && started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mesh = mesh_value(&st.mesh, st.file_hash);
    let ca = json!({ "ca": st.ca.to_json() }).to_string();
    let seeded = |e: &mut Etcd, key: &str, value: &str| {
        e.put_if(&format!("{prefix}{key}"), 0, value.as_bytes(), 0)
            .map(|(written, _)| written)
    };
    if seeded(&mut etcd, "mesh", &mesh)? {
        tracing::info!(%prefix, "store was empty: seeded with this mesh file");
    }
    seeded(&mut etcd, "ca", &ca)?;
    let (rev, kvs) = etcd.range_prefix(&prefix)?;
    let epoch = kvs
        .iter()
        .find(|kv| kv.key == format!("{prefix}epoch"))
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok())
        .ok_or(StoreError::Epoch)?;
    let (jobs_tx, jobs_rx) = flume::unbounded::<Job>();
    let (reports_tx, reports_rx) = flume::bounded::<Job>(REPORTS_QUEUED);
    let (batch_tx, batch_rx) = flume::unbounded();
    let store = Store {
        prefix: prefix.clone(),
        epoch,
        jobs: jobs_tx,
        leader_until: Arc::default(),
        led: Arc::default(),
        up: Arc::new(AtomicBool::new(true)),
        stop: Arc::default(),
        applied: Cell::new(0),
        mesh_rev: Cell::new(0),
        ca_rev: Cell::new(0),
        ca_pending: Arc::default(),
        mesh_writing: Cell::new(false),
        resolved: RefCell::default(),
        led_here: Cell::new(false),
        diverged: Cell::new(false),
        reports: reports_tx,
        rewritten: Cell::new(Instant::now()),
        node_written: RefCell::default(),
        unwritten: flume::unbounded(),
        checked: RefCell::default(),
        threads: RefCell::default(),
    };
    apply(st, &store, Batch::Snapshot(rev, kvs));
    let mut threads = Vec::new();
    for i in 0..=WORKERS {
        // The last one writes the reports.
        let rx = if i == WORKERS {
            reports_rx.clone()
        } else {
            jobs_rx.clone()
        };
        let eps = opts.etcd.clone();
        let stop = store.stop.clone();
        threads.push(spawn(&format!("ringmesh-store-{i}"), move || {
            let mut etcd = Etcd::new(eps);
            while !stop.load(Ordering::Relaxed) {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(job) => job(&mut etcd),
                    Err(flume::RecvTimeoutError::Timeout) => {}
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?);
    }
    let (eps, p, up, stop) = (
        opts.etcd.clone(),
        prefix.clone(),
        store.up.clone(),
        store.stop.clone(),
    );
    threads.push(spawn("ringmesh-store-watch", move || {
        follow(&eps, &p, rev + 1, &up, &stop, &batch_tx);
    })?);
    let (eps, p, leader, led, stop) = (
        opts.etcd.clone(),
        prefix,
        store.leader_until.clone(),
        store.led.clone(),
        store.stop.clone(),
    );
    threads.push(spawn("ringmesh-store-leader", move || {
        lead(&eps, &p, &leader, &led, &stop);
    })?);
    *store.threads.borrow_mut() = threads;
    Ok((store, batch_rx))
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(StoreError::Thread)
}

/// The watch thread: follows the prefix; after losing the watch, reads it whole again.
fn follow(
    cluster: &etcd::Cluster,
    prefix: &str,
    mut from: i64,
    up: &AtomicBool,
    stop: &Arc<AtomicBool>,
    out: &flume::Sender<Batch>,
) {
    let mut etcd = Etcd::new(cluster.clone());
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let r = etcd::watch(cluster, prefix, from, stop, &mut etcd, |rev, events| {
            from = rev + 1;
            out.send(Batch::Events(events)).is_ok()
        });
        match r {
            Ok(()) => return,
            Err(e) => {
                if up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "store: watch lost; serving the last state");
                }
            }
        }
        // Read everything again: changes made while the watch was down (or compacted away)
        // are in the range.
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if let Ok((rev, kvs)) = etcd.range_prefix(prefix) {
                if out.send(Batch::Snapshot(rev, kvs)).is_err() {
                    return;
                }
                from = rev + 1;
                backoff = Duration::from_millis(100);
                up.store(true, Ordering::Relaxed);
                tracing::info!(revision = rev, "store: watch restored");
                break;
            }
        }
    }
}

/// The leader thread: takes the leader key when nobody holds it, and keeps its lease alive.
fn lead(
    cluster: &etcd::Cluster,
    prefix: &str,
    leader_until: &AtomicU64,
    led: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut etcd = Etcd::new(cluster.clone());
    let key = format!("{prefix}leader");
    let me = format!("{}-{}", std::process::id(), unix_ms(SystemTime::now()));
    // Half a second less than the lease: clocks and the time etcd takes to answer.
    let hold = LEADER_TTL as u64 * 1000 - 500;
    let mut lease = 0;
    while !stop.load(Ordering::Relaxed) {
        let asked = unix_ms(SystemTime::now());
        if lease != 0 {
            match etcd.keepalive(lease) {
                Ok(ttl) if ttl > 0 => leader_until.store(asked + hold, Ordering::Relaxed),
                r => {
                    tracing::warn!(error = ?r.err(), "store: leadership lost");
                    leader_until.store(0, Ordering::Relaxed);
                    lease = 0;
                }
            }
        } else if !led.load(Ordering::Relaxed) {
            if let Ok(l) = etcd.grant(LEADER_TTL) {
                match etcd.put_if(&key, 0, me.as_bytes(), l) {
                    Ok((true, _)) => {
                        lease = l;
                        leader_until.store(asked + hold, Ordering::Relaxed);
                        tracing::info!("store: this replica leads");
                    }
                    _ => {
                        let _ = etcd.revoke(l);
                    }
                }
            }
        }
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if lease != 0 {
        // Another replica takes over at once.
        let _ = etcd.revoke(lease);
    }
}

impl Drop for Store {
    /// However the runtime ends, the threads end (and the leadership is given up).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Store {
    /// Stops the store's threads, giving up the leadership.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.borrow_mut().drain(..) {
            let _ = t.join();
        }
    }

    pub(super) fn leader(&self) -> bool {
        unix_ms(SystemTime::now()) < self.leader_until.load(Ordering::Relaxed)
    }

    pub(super) fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.diverged.get()
    }

    /// The version of the state at revision `rev`.
    fn version(&self, rev: i64) -> u64 {
        self.epoch + rev.max(0) as u64
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Runs `f` on a store thread and waits for its answer.
    async fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Etcd) -> Result<T, EtcdError> + Send + 'static,
    ) -> Result<T, EtcdError> {
        let (tx, rx) = flume::bounded(1);
        let job: Job = Box::new(move |e| {
            let _ = tx.send(f(e));
        });
        if self.jobs.send(job).is_err() {
            return Err(EtcdError::Stopping);
        }
        let deadline = monoio::time::sleep(EXEC_WAIT);
        monoio::select! {
            r = rx.recv_async() => r.unwrap_or(Err(EtcdError::Stopping)),
            _ = deadline => Err(EtcdError::TimedOut),
        }
    }

    /// Runs `f` on a store thread without waiting.
    fn submit(&self, f: impl FnOnce(&mut Etcd) + Send + 'static) {
        let _ = self.jobs.send(Box::new(f));
    }

    pub(super) fn mesh_writing(&self) -> bool {
        self.mesh_writing.get()
    }
}

/// The `mesh` key's value: the desired state, and the fingerprint of the file it came from.
fn mesh_value(mesh: &Mesh, file_hash: u64) -> String {
    json!({ "mesh": mesh.doc, "file_hash": file_hash }).to_string()
}

/// Applies the store's changes to the state: the version becomes `epoch + revision`, and what
/// they touched is rendered again.
///
/// Changes are applied one revision at a time, so that replicas following the same stream
/// give a node the same version whatever batches the stream came in.
pub(super) fn apply(st: &mut State, store: &Store, batch: Batch) -> bool {
    if store.diverged.get() {
        return false;
    }
    match batch {
        Batch::Snapshot(rev, mut kvs) => {
            if rev < store.applied.get() {
                // Versions would be reused for other snapshots if this were followed.
                tracing::error!(
                    revision = rev,
                    applied = store.applied.get(),
                    "store: etcd went back in time (restored from a backup?); restart the replicas"
                );
                store.diverged.set(true);
                return false;
            }
            if rev == store.applied.get() {
                // Nothing changed while the watch was away.
                return false;
            }
            st.registrations.clear();
            st.dns.clear();
            // The leader key is in the snapshot if someone holds it.
            store.led.store(false, Ordering::Relaxed);
            if store.applied.get() == 0 {
                // Node versions so far came from the mesh file, not from the store.
                st.nodes.clear();
            }
            // The desired state first: the rest refers to its nodes and clusters.
            kvs.sort_by_key(|kv| kv.key != format!("{}mesh", store.prefix));
            let events = kvs.into_iter().map(Event::Put).collect();
            apply_at(st, store, rev, events, true)
        }
        Batch::Events(events) => {
            let mut group = Vec::new();
            let mut at = 0;
            let mut rendered = false;
            for e in events {
                let (Event::Put(kv) | Event::Delete(kv)) = &e;
                if kv.mod_revision != at && !group.is_empty() {
                    rendered |= apply_at(st, store, at, std::mem::take(&mut group), false);
                }
                at = kv.mod_revision;
                group.push(e);
            }
            if !group.is_empty() {
                rendered |= apply_at(st, store, at, group, false);
            }
            rendered
        }
    }
}

/// Applies the changes of one revision; returns whether nodes were rendered again.
fn apply_at(st: &mut State, store: &Store, rev: i64, events: Vec<Event>, mut full: bool) -> bool {
    let mut clusters = BTreeSet::new();
    let mut reports = Vec::new();
    if rev <= store.applied.get() {
        return false;
    }
    for e in events {
        let (kv, put) = match e {
            Event::Put(kv) => (kv, true),
            Event::Delete(kv) => (kv, false),
        };
        let Some(rel) = kv.key.strip_prefix(&store.prefix) else {
            continue;
        };
        let value: Value = if put {
            serde_json::from_slice(&kv.value).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        match rel.split_once('/').unwrap_or((rel, "")) {
            ("mesh", "") if put => {
                store.mesh_rev.set(kv.mod_revision);
                let mine = store.checked.borrow_mut().take();
                let checked = match mine {
                    Some((text, m)) if text == kv.value => Ok(m),
                    _ => Mesh::check(value["mesh"].clone()),
                };
                match checked {
                    Ok(m) => {
                        st.mesh = m;
                        full = true;
                    }
                    Err(errs) => tracing::error!(
                        errors = ?errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "store: the desired state there is invalid; the state in force stays"
                    ),
                }
            }
            ("ca", "") if put => match Ca::from_json(&value["ca"], &st.mesh.trust_domain) {
                Ok(mut ca) => {
                    ca.issued = st.ca.issued;
                    st.ca = ca;
                    store.ca_rev.set(kv.mod_revision);
                    st.rotation_version = store.version(kv.mod_revision);
                    full = true;
                }
                Err(e) => tracing::error!(error = %e, "store: the mesh CA there is unusable"),
            },
            ("dns", name) => {
                if put {
                    let addrs = value["addrs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str()?.parse().ok())
                        .collect();
                    st.dns.insert(
                        name.to_string(),
                        Resolved {
                            addrs,
                            error: value["error"].as_str().map(str::to_string),
                            at: value["at_ms"]
                                .as_u64()
                                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                        },
                    );
                } else {
                    st.dns.remove(name);
                }
                clusters.extend(st.dns_users(name));
            }
            ("reg", rest) => {
                let Some((cluster, id)) = rest.split_once('/') else {
                    continue;
                };
                if put {
                    match registration(&value, Instant::now(), true) {
                        Ok(mut r) => {
                            r.lease = kv.lease;
                            st.registrations
                                .entry(cluster.to_string())
                                .or_default()
                                .insert(id.to_string(), r);
                        }
                        Err(e) => {
                            tracing::warn!(cluster, id, error = %e.join("; "), "store: unreadable registration")
                        }
                    }
                } else {
                    st.unregister(cluster, id);
                }
                clusters.insert(cluster.to_string());
            }
            ("spent", node) => match Spent::from_json(&value) {
                Some(mut s) if put => {
                    s.rev = kv.mod_revision;
                    st.spent.insert(node.to_string(), s);
                }
                _ => {
                    st.spent.remove(node);
                }
            },
            ("leader", "") => store.led.store(put, Ordering::Relaxed),
            _ => {}
        }
        if let ("node", name) = rel.split_once('/').unwrap_or((rel, "")) {
            reports.push((name.to_string(), value));
        }
    }
    store.applied.set(rev);
    st.version = store.version(rev);
    let rendered = full || !clusters.is_empty();
    if full {
        st.render();
    } else if rendered {
        st.render_clusters(&clusters.into_iter().collect::<Vec<_>>());
    }
    // After rendering: reports may be about nodes the render just made.
    for (name, value) in reports {
        node_report(st, &name, &value);
    }
    rendered
}

/// A node's report as stored: `{"applied": [V, MS], "rejected": [V, WHY, MS], "seen_ms": MS}`.
fn node_report(st: &mut State, name: &str, v: &Value) {
    let Some(n) = st.nodes.get_mut(name) else {
        return;
    };
    let at = |ms: &Value| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.as_u64().unwrap_or(0));
    if let Some(version) = v["applied"][0].as_u64() {
        let t = at(&v["applied"][1]);
        if n.applied.is_none_or(|(_, old)| old <= t) {
            n.applied = Some((version, t));
            n.applied_hash = v["hash"].as_u64();
        }
    }
    if let (Some(version), Some(why)) = (v["rejected"][0].as_u64(), v["rejected"][1].as_str()) {
        let t = at(&v["rejected"][2]);
        if n.rejected.as_ref().is_none_or(|(_, _, old)| *old <= t) {
            n.rejected = Some((version, why.to_string(), t));
        }
    }
    if !v["seen_ms"].is_null() {
        let t = at(&v["seen_ms"]);
        if n.last_seen.is_none_or(|old| old < t) {
            n.last_seen = Some(t);
        }
    }
}

/// Writes a node's report to the store: when it changed (`force`), or now and then while its
/// proxy is watching, so that every replica knows it is alive.
pub(super) fn note_node(plane: &Plane, store: &Store, node: &str, force: bool) {
    let due = force
        || store
            .node_written
            .borrow()
            .get(node)
            .is_none_or(|t| t.elapsed() >= SEEN_WRITE);
    if !due {
        return;
    }
    let body = {
        let st = plane.st.borrow();
        let Some(n) = st.nodes.get(node) else {
            return;
        };
        json!({
            "applied": n.applied.map(|(v, t)| json!([v, unix_ms(t)])),
            "hash": n.applied_hash,
            "rejected": n.rejected.as_ref().map(|(v, e, t)| json!([v, e, unix_ms(*t)])),
            "seen_ms": n.last_seen.map(unix_ms),
        })
        .to_string()
    };
    store
        .node_written
        .borrow_mut()
        .insert(node.to_string(), Instant::now());
    let key = store.key(&format!("node/{node}"));
    let (failed, name) = (store.unwritten.0.clone(), node.to_string());
    let job: Job = Box::new(move |e| {
        if let Err(err) = e.put(&key, body.as_bytes(), 0) {
            tracing::debug!(error = %err, "store: cannot write a node's report; will again");
            let _ = failed.send(name);
        }
    });
    if store.reports.try_send(job).is_err() {
        let _ = store.unwritten.0.send(node.to_string());
    }
}

/// Writes again the reports that could not be written, once the store is back.
pub(super) fn rewrite_reports(plane: &Plane, store: &Store) {
    if !store.up()
        || store.unwritten.1.is_empty()
        || store.rewritten.get().elapsed() < REWRITE_EVERY
    {
        return;
    }
    store.rewritten.set(Instant::now());
    let nodes: BTreeSet<String> = store.unwritten.1.try_iter().collect();
    for node in nodes {
        note_node(plane, store, &node, true);
    }
}

/// Waits until this replica's state includes revision `rev` (or [`SEEN_WAIT`] passed).
async fn seen(plane: &Plane, store: &Store, rev: i64) {
    let deadline = monoio::time::sleep(SEEN_WAIT);
    let mut deadline = std::pin::pin!(deadline);
    while store.applied.get() < rev && !plane.stopping.get() {
        let changed = plane.progress.wait();
        monoio::select! {
            _ = changed => {}
            _ = &mut deadline => {
                tracing::warn!(revision = rev, "store: a write was not seen back in time");
                return;
            }
        }
    }
}

fn unavailable(e: &EtcdError) -> Response {
    Response::error(503, &format!("the store is unavailable: {e}"))
}

/// The answer to a write made at `rev`: its version is the one that carries it, which is also
/// the version of every snapshot it changed (later changes may have moved the state on).
fn versioned(store: &Store, rev: i64) -> Response {
    let version = store.version(rev);
    let mut r = Response::json(200, json!({ "version": version }).to_string() + "\n");
    r.etag = Some(version);
    r
}

/// The API's writes with a store. `None` for what is served as without one.
pub(super) async fn answer(
    plane: &Plane,
    store: &Store,
    req: &Request,
    segs: &[&str],
    (caller, peer): (&Caller, std::net::IpAddr),
) -> Option<Response> {
    Some(match (req.method.as_str(), segs) {
        ("PUT" | "DELETE", ["v1", "config", ..]) => {
            edit_config(plane, store, req, super::config_pointer(&req.path)).await
        }
        ("PUT", ["v1", "clusters", cluster, "endpoints", id]) => {
            register(plane, store, cluster, id, &req.body, (caller, peer)).await
        }
        ("POST", ["v1", "nodes", node, "certificate"]) => {
            certificate(plane, store, node, req, caller).await
        }
        ("DELETE", ["v1", "clusters", cluster, "endpoints", id]) => {
            let lease = {
                let st = plane.st.borrow();
                let existing = st.registrations.get(*cluster).and_then(|m| m.get(*id));
                if let Err(r) = may_touch(existing, caller) {
                    return Some(r);
                }
                existing.map_or(0, |r| r.lease)
            };
            let key = store.key(&format!("reg/{cluster}/{id}"));
            match store
                .exec(move |e| {
                    let r = e.delete(&key)?;
                    if lease != 0 {
                        e.revoke(lease)?;
                    }
                    Ok(r)
                })
                .await
            {
                Ok((_, false)) => Response::error(404, "no such registration"),
                Ok((rev, true)) => {
                    seen(plane, store, rev).await;
                    versioned(store, rev)
                }
                Err(e) => unavailable(&e),
            }
        }
        ("POST", ["v1", "ca", "rotate"]) => {
            let (value, rev) = {
                let st = plane.st.borrow();
                let mut ca = match Ca::from_json(&st.ca.to_json(), &st.mesh.trust_domain) {
                    Ok(ca) => ca,
                    Err(e) => return Some(Response::error(500, &e.to_string())),
                };
                if let Err(e) = ca.rotate(&st.mesh.trust_domain) {
                    return Some(Response::error(409, &e.to_string()));
                }
                (
                    json!({ "ca": ca.to_json() }).to_string(),
                    store.ca_rev.get(),
                )
            };
            let key = store.key("ca");
            match store
                .exec(move |e| e.put_if(&key, rev, value.as_bytes(), 0))
                .await
            {
                Ok((true, rev)) => {
                    seen(plane, store, rev).await;
                    tracing::info!("mesh CA rotation started");
                    versioned(store, rev)
                }
                Ok((false, _)) => Response::error(409, "the mesh CA changed meanwhile; try again"),
                Err(e) => unavailable(&e),
            }
        }
        ("POST", ["v1", "nodes", node, "report"]) => {
            let r = super::report(&mut plane.st.borrow_mut(), node, &req.body);
            if r.status == 200 {
                note_node(plane, store, node, true);
            }
            r
        }
        _ => return None,
    })
}

/// `PUT`/`DELETE /v1/config[/pointer]`: checked here against the desired state this replica
/// has, written only if the store's is still that one.
async fn edit_config(plane: &Plane, store: &Store, req: &Request, pointer: &str) -> Response {
    let (value, mesh_rev) = {
        let st = plane.st.borrow();
        let Some(expected) = req.if_match.as_deref() else {
            return if_match_required();
        };
        let mesh_rev = store.mesh_rev.get();
        // Any version read since the desired state last changed is good.
        let current = store.version(mesh_rev);
        if expected != "*" && expected.parse::<u64>().ok().is_none_or(|v| v < current) {
            return conflict(&st);
        }
        let mut doc = st.mesh.doc.clone();
        if let Err(r) = apply_edit(&mut doc, req, pointer) {
            return r;
        }
        let files = crate::mesh::model::api_may_not_name_files(&st.mesh.doc, &doc);
        if !files.is_empty() {
            return invalid(&files);
        }
        match Mesh::check(doc) {
            Ok(m) => {
                let text = mesh_value(&m, st.file_hash);
                *store.checked.borrow_mut() = Some((text.clone().into_bytes(), m));
                (text, mesh_rev)
            }
            Err(errs) => return invalid(&errs),
        }
    };
    let key = store.key("mesh");
    match store
        .exec(move |e| e.put_if(&key, mesh_rev, value.as_bytes(), 0))
        .await
    {
        Ok((true, rev)) => {
            seen(plane, store, rev).await;
            tracing::info!(
                version = store.version(rev),
                "desired state changed through the API"
            );
            versioned(store, rev)
        }
        // Another replica changed it first (at `rev`); this one may not have seen that yet.
        Ok((false, rev)) => {
            seen(plane, store, rev).await;
            conflict(&plane.st.borrow())
        }
        Err(e) => unavailable(&e),
    }
}

/// `PUT /v1/clusters/{cluster}/endpoints/{id}`: a heartbeat renews the lease; a new or changed
/// registration is written under a new lease of its TTL.
async fn register(
    plane: &Plane,
    store: &Store,
    cluster: &str,
    id: &str,
    body: &[u8],
    (caller, peer): (&Caller, std::net::IpAddr),
) -> Response {
    let (value, ttl, old_lease, heartbeat) = {
        let st = plane.st.borrow();
        let mut reg = match checked_registration(&st, cluster, id, body) {
            Ok(r) => r,
            Err(r) => return r,
        };
        if let Err(r) = super::may_register(&st, &reg, cluster, id, caller, peer) {
            return r;
        }
        let old = st.registrations.get(cluster).and_then(|m| m.get(id));
        if let Err(r) = may_touch(old, caller) {
            return r;
        }
        reg.owner = owner_of(caller).or_else(|| old.and_then(|o| o.owner.clone()));
        let old_lease = old.map_or(0, |o| o.lease);
        let heartbeat = old.is_some_and(|o| {
            o.ep == reg.ep && o.ttl == reg.ttl && o.owner == reg.owner && o.lease != 0
        });
        (reg.to_json().to_string(), reg.ttl, old_lease, heartbeat)
    };
    let key = store.key(&format!("reg/{cluster}/{id}"));
    let ttl_secs = ttl.as_secs_f64().ceil() as i64;
    let r = store
        .exec(move |e| {
            if heartbeat && e.keepalive(old_lease)? > 0 {
                return Ok(None);
            }
            let lease = e.grant(ttl_secs)?;
            let rev = e.put(&key, value.as_bytes(), lease)?;
            if old_lease != 0 {
                let _ = e.revoke(old_lease);
            }
            Ok(Some(rev))
        })
        .await;
    let rev = match r {
        Ok(rev) => rev,
        Err(e) => return unavailable(&e),
    };
    let version = match rev {
        Some(rev) => {
            seen(plane, store, rev).await;
            store.version(rev)
        }
        None => {
            let mut st = plane.st.borrow_mut();
            if let Some(r) = st
                .registrations
                .get_mut(cluster)
                .and_then(|m| m.get_mut(id))
            {
                r.deadline = Instant::now() + r.ttl;
            }
            st.version
        }
    };
    registered(cluster, id, ttl, version)
}

/// `POST /v1/nodes/{node}/certificate` with a store: a bootstrap token is spent in the store
/// first, by a transaction on the node's `spent` record as this replica saw it, so that two
/// replicas given the same token at once issue one certificate between them.
async fn certificate(
    plane: &Plane,
    store: &Store,
    node: &str,
    req: &Request,
    caller: &Caller,
) -> Response {
    // A lost race means another replica wrote the record: decide again on what it wrote.
    for _ in 0..3 {
        let decision = identity::decide(&plane.st.borrow(), node, req, caller);
        let (public_key, spend) = match decision {
            identity::Decision::Refuse(r) => return r,
            identity::Decision::Issue { public_key, spend } => (public_key, spend),
        };
        let Some(s) = spend else {
            return identity::issue(&mut plane.st.borrow_mut(), node, &public_key);
        };
        let seen_rev = plane.st.borrow().spent.get(node).map_or(0, |s| s.rev);
        let key = store.key(&format!("spent/{node}"));
        let value = s.to_json().to_string();
        match store
            .exec(move |e| e.put_if(&key, seen_rev, value.as_bytes(), 0))
            .await
        {
            Ok((true, rev)) => {
                seen(plane, store, rev).await;
                return identity::issue(&mut plane.st.borrow_mut(), node, &public_key);
            }
            Ok((false, rev)) => seen(plane, store, rev).await,
            Err(e) => return unavailable(&e),
        }
    }
    Response::error(503, "the node's token record keeps changing; try again")
}

/// The leader's part of the tick: moves a CA rotation on, or starts the one to an operator's
/// CA the desired state names anew, through the store.
pub(super) fn advance_ca(st: &State, store: &Store) {
    let operator = st.mesh.ca.operator.as_ref();
    let adopt = operator.is_some_and(|op| {
        st.ca.next.is_none()
            && !st
                .ca
                .authorities()
                .take(2)
                .any(|a| a.fingerprint == op.fingerprint)
    });
    // Nothing to move on without a rotation (and restoring the CA to try costs signatures).
    let rotating = st.ca.next.is_some() || st.ca.previous.is_some() || adopt;
    if !rotating || !store.leader() || store.ca_pending.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut ca) = Ca::from_json(&st.ca.to_json(), &st.mesh.trust_domain) else {
        return;
    };
    let all = st.all_have(st.rotation_version);
    let moved = match ca.adopt(operator) {
        Ok(true) => true,
        Ok(false) => ca.advance(all, st.mesh.ca.rotation_grace, st.mesh.ca.cert_ttl),
        Err(e) => {
            tracing::error!(error = %e, "cannot rotate to the operator's CA");
            false
        }
    };
    if !moved {
        return;
    }
    store.ca_pending.store(true, Ordering::Relaxed);
    let value = json!({ "ca": ca.to_json() }).to_string();
    let (key, rev, pending) = (
        store.key("ca"),
        store.ca_rev.get(),
        store.ca_pending.clone(),
    );
    store.submit(move |e| {
        match e.put_if(&key, rev, value.as_bytes(), 0) {
            Ok((true, _)) => tracing::info!("mesh CA rotation moved on"),
            Ok((false, _)) => {}
            Err(err) => tracing::warn!(error = %err, "store: cannot move the CA rotation on"),
        }
        // Whatever the result: the next ticks see the outcome through the watch.
        pending.store(false, Ordering::Relaxed);
    });
}

/// A replica that has just come to lead writes the DNS answers it has (the leader before it
/// may have been gone for a while).
pub(super) fn took_lead(st: &State, store: &Store) {
    let leads = store.leader();
    if leads && !store.led_here.get() {
        let known: Vec<_> = store
            .resolved
            .borrow()
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (name, result) in known {
            resolved(st, store, &name, &result);
        }
    }
    store.led_here.set(leads);
}

/// The leader writes what DNS said when it differs from the store's.
pub(super) fn resolved(
    st: &State,
    store: &Store,
    name: &str,
    result: &Result<Vec<std::net::SocketAddr>, DnsError>,
) {
    // Every replica resolves and keeps its last answers, for when it comes to lead.
    store
        .resolved
        .borrow_mut()
        .insert(name.to_string(), result.clone());
    if !store.leader() {
        return;
    }
    let known = st.dns.get(name);
    let (addrs, failing) = match result {
        Ok(a) => (a.clone(), false),
        // A failure keeps the last addresses.
        Err(_) => (known.map(|r| r.addrs.clone()).unwrap_or_default(), true),
    };
    // Only news is written: the store has it until the next interval's answer.
    if known.is_some_and(|r| r.addrs == addrs && r.error.is_some() == failing) {
        return;
    }
    let value = json!({
        "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "error": result.as_ref().err().map(ToString::to_string),
        "at_ms": unix_ms(SystemTime::now()),
    })
    .to_string();
    let key = store.key(&format!("dns/{name}"));
    store.submit(move |e| {
        if let Err(err) = e.put(&key, value.as_bytes(), 0) {
            tracing::warn!(error = %err, "store: cannot write a DNS result");
        }
    });
}

/// A replica's mesh file changed while it runs: the file is the new desired state, for every
/// replica (as a file edit wins over the API without a store).
/// A write that fails is tried again at the next check of the file.
pub(super) async fn write_mesh(plane: std::rc::Rc<Plane>, mesh: Mesh, file_hash: u64) {
    let Some(store) = &plane.store else {
        return;
    };
    store.mesh_writing.set(true);
    let value = mesh_value(&mesh, file_hash);
    let key = store.key("mesh");
    let r = store.exec(move |e| e.put(&key, value.as_bytes(), 0)).await;
    store.mesh_writing.set(false);
    match r {
        Ok(_) => tracing::info!("mesh file written to the store"),
        Err(err) => {
            tracing::error!(error = %err, "store: cannot write the mesh file's state; will again");
            let mut st = plane.st.borrow_mut();
            st.file_hash = 0;
            st.file_stamp = None;
        }
    }
}
