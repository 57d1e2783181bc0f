//! What a proxy fed by a control plane tells it beyond its snapshots, on two threads of its
//! own beside the watcher ([`super::agent`]), over the same verified TLS and node certificate:
//!
//! - **reports** (`ringmesh-report`): every [`REPORT_EVERY`], the node's traffic per cluster
//!   (requests, 5xx answers, the duration histogram's buckets, all since the proxy started) and
//!   each endpoint's health, ejection, zone and weight, posted to `/v1/nodes/{node}/stats`. The
//!   control plane builds the mesh-wide view from them (the page, `ringmesh ctl`).
//! - **taps** (`ringmesh-tap`): a long-poll on `/v1/nodes/{node}/taps` for taps an admin asked
//!   of this node; each runs on a thread of its own that taps the proxy in-process
//!   ([`ringmesh_core::tap`]) and posts the events back, so that the admin port never needs to
//!   be reachable from outside.
//!
//! Both go to the control plane address the watcher uses now, and take the node's certificate
//! as the watcher renews it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringmesh_core::metrics::{self, Merged, WorkerReport};
use ringmesh_core::tap;
use ringmesh_core::worker::Command;
use serde_json::{Map, Value, json};

use super::client::{Client, Trust};
use crate::http::percent_encode;
use crate::shared::ControlMsg;

/// How often a node reports its traffic and endpoints.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Taps relayed at once (the control plane allows as many per node).
const MAX_TAPS: usize = 8;

/// Endpoints reported per cluster (the control plane keeps as many).
const MAX_ENDPOINTS: usize = 4096;

/// A tap event longer than this (a huge request target) is not sent, but counted as dropped:
/// a post must stay within the control plane's 64 KiB.
const MAX_LINE: usize = 16 * 1024;

/// Events per post, at most, and how long a relay gathers them.
const POST_BYTES: usize = 32 * 1024;
const GATHER: Duration = Duration::from_millis(250);

/// A relay with nothing to send still posts this often, to learn whether its reader is gone.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// What the link threads share with the watcher.
#[derive(Clone)]
pub(crate) struct Shared {
    pub urls: Arc<Vec<String>>,
    /// The index (into `urls`, modulo) the watcher uses now.
    pub url: Arc<AtomicUsize>,
    pub node: String,
    pub control: flume::Sender<ControlMsg>,
}

impl Shared {
    fn addr(&self) -> &str {
        &self.urls[self.url.load(Ordering::Relaxed) % self.urls.len()]
    }

    fn stopped(&self) -> bool {
        self.control.is_disconnected()
    }
}

/// The latest client (trust and node certificate) the watcher handed over.
pub(crate) struct Latest {
    rx: flume::Receiver<Client>,
    client: Option<Client>,
}

impl Latest {
    pub(crate) fn new(rx: flume::Receiver<Client>) -> Latest {
        Latest { rx, client: None }
    }

    /// The newest client; `None` until one usable for this node's calls came (over TLS, one
    /// with the node's certificate).
    fn get(&mut self) -> Option<&Client> {
        while let Ok(c) = self.rx.try_recv() {
            self.client = Some(c);
        }
        self.client
            .as_ref()
            .filter(|c| c.trust == Trust::Plaintext || c.identity.is_some())
    }
}

/// The watcher's end: tells the threads which address is in use, and hands them the client
/// whenever its certificate or learned bundle changes.
pub(crate) struct Handoff {
    to: [flume::Sender<Client>; 2],
    url: Arc<AtomicUsize>,
    /// What was handed last: the certificate (compared by pointer) and the bundle.
    handed: Option<Handed>,
}

/// The node's certificate and the learned trust bundle, as last handed over.
type Handed = (Option<Arc<rustls::sign::CertifiedKey>>, Option<Vec<u8>>);

impl Handoff {
    pub(crate) fn using(&self, url: usize) {
        self.url.store(url, Ordering::Relaxed);
    }

    pub(crate) fn hand_over(&mut self, client: &Client) {
        let same = self.handed.as_ref().is_some_and(|(id, learned)| {
            let same_id = match (id, &client.identity) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            same_id && *learned == client.learned
        });
        if same {
            return;
        }
        for t in &self.to {
            let _ = t.send(client.clone());
        }
        self.handed = Some((client.identity.clone(), client.learned.clone()));
    }
}

/// Starts both threads; the watcher keeps the [`Handoff`].
pub(crate) fn spawn(
    shared: Shared,
    workers: Vec<flume::Sender<Command>>,
) -> std::io::Result<Handoff> {
    let (a, ra) = flume::unbounded();
    let (b, rb) = flume::unbounded();
    let handoff = Handoff {
        to: [a, b],
        url: shared.url.clone(),
        handed: None,
    };
    let s = shared.clone();
    std::thread::Builder::new()
        .name("ringmesh-report".into())
        .spawn(move || report_loop(&s, Latest::new(ra), &workers))?;
    std::thread::Builder::new()
        .name("ringmesh-tap".into())
        .spawn(move || tap_loop(&shared, Latest::new(rb)))?;
    Ok(handoff)
}

fn report_loop(s: &Shared, mut latest: Latest, workers: &[flume::Sender<Command>]) {
    let path = format!("/v1/nodes/{}/stats", percent_encode(&s.node));
    let mut failing = false;
    // Started with the proxy: its counters are as old as this.
    let started = Instant::now();
    loop {
        std::thread::sleep(REPORT_EVERY);
        if s.stopped() {
            return;
        }
        let Some(client) = latest.get() else {
            continue;
        };
        let Some(reports) = collect(workers) else {
            return;
        };
        // A worker that did not answer in time: no report this round, rather than totals
        // that go down and come back (which would read as a restart and a burst).
        if reports.len() < workers.len() {
            continue;
        }
        let mut body = stats(&metrics::merge(&reports));
        body["uptime_seconds"] = json!(started.elapsed().as_secs_f64());
        let body = body.to_string();
        let r = client.request(
            s.addr(),
            "POST",
            &path,
            Some(body.as_bytes()),
            Duration::from_secs(5),
            "",
        );
        match r {
            Ok((200, _)) => failing = false,
            other => {
                if !failing {
                    let why = match other {
                        Ok((status, body)) => {
                            format!("{status}: {}", String::from_utf8_lossy(&body).trim())
                        }
                        Err(e) => e.to_string(),
                    };
                    // Once per failing spell (the watcher says when it cannot reach at all).
                    tracing::warn!(error = %why, "cannot report traffic and endpoints to the control plane");
                }
                failing = true;
            }
        }
    }
}

/// Every worker's report, waiting a second at most; `None` when the workers are gone.
fn collect(workers: &[flume::Sender<Command>]) -> Option<Vec<WorkerReport>> {
    let (tx, rx) = flume::unbounded();
    let asked = workers
        .iter()
        .filter(|w| w.send(Command::Report { reply: tx.clone() }).is_ok())
        .count();
    drop(tx);
    if asked == 0 {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut reports = Vec::with_capacity(asked);
    while reports.len() < asked {
        match rx.recv_deadline(deadline) {
            Ok(r) => reports.push(r),
            Err(_) => break,
        }
    }
    Some(reports)
}

/// The report's body: per cluster, requests, 5xx answers and duration buckets summed over its
/// routes; and its endpoints as the workers see them.
pub(crate) fn stats(m: &Merged) -> Value {
    let mut clusters: Map<String, Value> = Map::new();
    for r in m.routes.iter().filter(|r| !r.cluster.is_empty()) {
        let requests: u64 = r.codes.iter().map(|(_, n)| n).sum();
        let errors: u64 = r
            .codes
            .iter()
            .filter(|(c, _)| *c >= 500)
            .map(|(_, n)| n)
            .sum();
        let buckets = r
            .hist
            .as_ref()
            .map(metrics::bucket_counts)
            .unwrap_or_default();
        let e = clusters.entry(r.cluster.to_string()).or_insert_with(
            || json!({ "requests": 0, "errors": 0, "buckets": vec![0u64; buckets.len()] }),
        );
        let add = |v: &mut Value, n: u64| *v = json!(v.as_u64().unwrap_or(0) + n);
        add(&mut e["requests"], requests);
        add(&mut e["errors"], errors);
        if let Some(b) = e["buckets"].as_array_mut() {
            for (slot, n) in b.iter_mut().zip(buckets) {
                add(slot, n);
            }
        }
    }
    let mut endpoints: Map<String, Value> = Map::new();
    for e in &m.endpoints {
        let list = endpoints
            .entry(e.cluster.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        // As many as the control plane keeps.
        if let Some(l) = list.as_array_mut().filter(|l| l.len() < MAX_ENDPOINTS) {
            l.push(json!({
                "address": e.addr.to_string(),
                "zone": e.zone.as_deref(),
                "weight": e.weight,
                "healthy": e.healthy,
                "ejected": e.ejected > 0,
            }));
        }
    }
    json!({ "clusters": clusters, "endpoints": endpoints })
}

fn tap_loop(s: &Shared, mut latest: Latest) {
    let path = format!("/v1/nodes/{}/taps?wait=25s", percent_encode(&s.node));
    let running = Arc::new(AtomicUsize::new(0));
    let mut backoff = Duration::from_millis(500);
    loop {
        if s.stopped() {
            return;
        }
        let Some(client) = latest.get().cloned() else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let r = client.request(s.addr(), "GET", &path, None, Duration::from_secs(35), "");
        let taps = match r {
            Ok((200, body)) => {
                backoff = Duration::from_millis(500);
                serde_json::from_slice::<Value>(&body).unwrap_or_default()
            }
            _ => {
                // The control plane is away or refusing (the watcher says why): later.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        for t in taps["taps"].as_array().into_iter().flatten() {
            if running.load(Ordering::Relaxed) >= MAX_TAPS {
                break;
            }
            let Some(id) = t["id"].as_str().map(str::to_string) else {
                continue;
            };
            let name = |k: &str| t[k].as_str().map(str::to_string);
            let filter = tap::Filter {
                listener: name("listener"),
                route: name("route"),
                cluster: name("cluster"),
            };
            let n = t["n"]
                .as_u64()
                .unwrap_or(tap::DEFAULT_EVENTS)
                .clamp(1, tap::MAX_EVENTS);
            let (s, client, running) = (s.clone(), client.clone(), running.clone());
            running.fetch_add(1, Ordering::Relaxed);
            let started = std::thread::Builder::new()
                .name("ringmesh-tap-relay".into())
                .spawn(move || {
                    relay(&s, &client, &id, filter, n);
                    running.fetch_sub(1, Ordering::Relaxed);
                });
            if started.is_err() {
                tracing::warn!("cannot start a tap relay thread");
            }
        }
    }
}

/// Taps this proxy for the control plane's tap `id` until `n` events went, its reader is gone,
/// or the control plane cannot be reached three times in a row. Events that could not be
/// delivered (the reader behind, a post that failed, a line too long) are told as dropped.
fn relay(s: &Shared, client: &Client, id: &str, filter: tap::Filter, n: u64) {
    let session = tap::Session::start(filter, n, 4096);
    let base = format!(
        "/v1/nodes/{}/taps/{}",
        percent_encode(&s.node),
        percent_encode(id)
    );
    let (mut taken, mut failures) = (0u64, 0);
    // Dropped events not told yet, and the session's count already added to them.
    let (mut untold, mut seen_dropped) = (0u64, 0u64);
    // The first post goes at once, empty: the control plane learns the tap was picked up.
    let mut posted = Instant::now()
        .checked_sub(HEARTBEAT)
        .unwrap_or_else(Instant::now);
    let mut body = Vec::with_capacity(POST_BYTES + MAX_LINE);
    loop {
        if s.stopped() {
            return;
        }
        body.clear();
        let mut lines = 0u64;
        let until = Instant::now() + GATHER;
        while body.len() < POST_BYTES && taken < n {
            let Ok(line) = session.rx.recv_deadline(until) else {
                break;
            };
            taken += 1;
            if line.len() > MAX_LINE {
                untold += 1;
                continue;
            }
            body.extend_from_slice(&line);
            if !line.ends_with(b"\n") {
                body.push(b'\n');
            }
            lines += 1;
        }
        let dropped = session.dropped();
        untold += dropped - seen_dropped;
        seen_dropped = dropped;
        let done = taken >= n;
        if lines == 0 && untold == 0 && !done && posted.elapsed() < HEARTBEAT {
            continue;
        }
        let mut path = format!("{base}?dropped={untold}");
        if done {
            path.push_str("&done=1");
        }
        let r = client.request(
            s.addr(),
            "POST",
            &path,
            Some(&body),
            Duration::from_secs(5),
            "",
        );
        posted = Instant::now();
        match r {
            Ok((200, _)) => {
                failures = 0;
                untold = 0;
                if done {
                    return;
                }
            }
            // The reader is gone, or the tap was never this node's.
            Ok((404 | 410 | 403, _)) => return,
            _ => {
                // These lines are lost: told with the next post.
                untold += lines;
                failures += 1;
                if failures >= 3 {
                    tracing::info!(
                        tap = id,
                        "tap: the control plane cannot be reached; ending it"
                    );
                    return;
                }
            }
        }
    }
}
