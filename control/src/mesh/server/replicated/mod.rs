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
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::super::etcd::{self, Etcd, EtcdError, Event, Kv};
use super::super::model::Mesh;
use super::{DnsError, State, StoreOptions, unix_ms};

mod api;
mod apply;
mod leader;

pub(super) use api::answer;
pub(super) use apply::{apply, note_node, rewrite_reports};
pub(super) use leader::{advance_ca, resolved, took_lead, write_mesh};

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
