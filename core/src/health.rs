//! Active health checks.
//!
//! Checks run once per process, not once per worker: a dedicated thread (its own monoio
//! runtime) sends `GET path` to every endpoint of every cluster that has `health_check`, every
//! `interval`, and publishes each endpoint's state in a [`HealthCell`] that the workers read
//! when they balance. A cell is written only when its state changes, so the workers' reads stay
//! on a clean, shared cache line; the request path never waits for a check. An endpoint starts
//! healthy; `unhealthy_threshold` consecutive failures mark it unhealthy, `healthy_threshold`
//! consecutive successes mark it healthy again. A check succeeds on a 2xx or 3xx answer within
//! `timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use crate::h2::drive::client::{Conns, H2Up};
use crate::head::{Forwarded, RequestHead, ResponseHead};
use crate::io::Io;

/// Settings of a cluster's health checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    /// Path to GET.
    pub path: String,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Time allowed for an answer.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

/// The published health of one endpoint, shared by the checker and every worker.
#[derive(Debug)]
pub struct HealthCell {
    healthy: AtomicBool,
    passed: AtomicU64,
    failed: AtomicU64,
}

impl Default for HealthCell {
    fn default() -> Self {
        HealthCell {
            healthy: AtomicBool::new(true),
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl HealthCell {
    /// Whether the endpoint passes its checks.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Checks passed and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.passed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Publishes a new state (the checker's write).
    pub fn set(&self, healthy: bool) {
        // Write only on change: the line stays shared in every worker's cache.
        if self.healthy.load(Ordering::Relaxed) != healthy {
            self.healthy.store(healthy, Ordering::Relaxed);
        }
    }
}

/// One endpoint to check.
#[derive(Debug, Clone)]
pub struct Target {
    /// Cluster name, for logs.
    pub cluster: Arc<str>,
    /// Address.
    pub addr: SocketAddr,
    /// Where results go.
    pub cell: Arc<HealthCell>,
    /// How to check.
    pub config: HealthConfig,
    /// TLS, when the cluster's endpoints speak it.
    pub tls: Option<crate::tls::ClientTls>,
    /// The protocol the cluster's endpoints speak: checks speak it too.
    pub protocol: crate::dial::UpstreamProtocol,
}

/// The checker thread's handle: send it the full set of targets after every config change.
#[derive(Debug)]
pub struct Checker {
    tx: flume::Sender<Vec<Target>>,
}

impl Checker {
    /// Starts the checker thread.
    pub fn spawn() -> std::io::Result<Checker> {
        let (tx, rx) = flume::unbounded::<Vec<Target>>();
        std::thread::Builder::new()
            .name("ringmesh-health".into())
            .spawn(move || {
                let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build();
                let Ok(mut rt) = rt else {
                    tracing::error!("health checks: cannot start a runtime");
                    return;
                };
                rt.block_on(run(rx));
            })?;
        Ok(Checker { tx })
    }

    /// Replaces the set of endpoints to check.
    pub fn update(&self, targets: Vec<Target>) {
        let _ = self.tx.send(targets);
    }
}

type Key = (Arc<str>, SocketAddr);

async fn run(rx: flume::Receiver<Vec<Target>>) {
    // A running check loop per endpoint, stopped through its flag.
    let mut running: HashMap<Key, (HealthConfig, Rc<std::cell::Cell<bool>>)> = HashMap::new();
    while let Ok(targets) = rx.recv_async().await {
        let mut next = HashMap::new();
        for t in targets {
            let key = (t.cluster.clone(), t.addr);
            if let Some((cfg, stop)) = running.remove(&key) {
                if cfg == t.config {
                    next.insert(key, (cfg, stop));
                    continue;
                }
                stop.set(true);
            }
            let stop = Rc::new(std::cell::Cell::new(false));
            monoio::spawn(check_loop(t.clone(), stop.clone()));
            next.insert(key, (t.config, stop));
        }
        for (_, (_, stop)) in running.drain() {
            stop.set(true);
        }
        running = next;
    }
    for (_, (_, stop)) in running {
        stop.set(true);
    }
}

async fn check_loop(t: Target, stop: Rc<std::cell::Cell<bool>>) {
    let mut streak_ok = 0u32;
    let mut streak_fail = 0u32;
    // Spread the first checks over one interval so that endpoints are not checked in bursts.
    let spread = t
        .config
        .interval
        .mul_f64((t.addr.port() % 97) as f64 / 97.0);
    monoio::time::sleep(spread).await;
    while !stop.get() {
        let started = Instant::now();
        let ok = check_once(&t).await;
        if stop.get() {
            return;
        }
        if ok {
            t.cell.passed.fetch_add(1, Ordering::Relaxed);
            streak_ok += 1;
            streak_fail = 0;
            if !t.cell.is_healthy() && streak_ok >= t.config.healthy_threshold.max(1) {
                tracing::info!(cluster = %t.cluster, endpoint = %t.addr, "health check: healthy");
                t.cell.set(true);
            }
        } else {
            t.cell.failed.fetch_add(1, Ordering::Relaxed);
            streak_fail += 1;
            streak_ok = 0;
            if t.cell.is_healthy() && streak_fail >= t.config.unhealthy_threshold.max(1) {
                tracing::warn!(cluster = %t.cluster, endpoint = %t.addr, "health check: unhealthy");
                t.cell.set(false);
            }
        }
        let next = started + t.config.interval;
        monoio::time::sleep(next.saturating_duration_since(Instant::now())).await;
    }
}

async fn check_once(t: &Target) -> bool {
    matches!(
        monoio::time::timeout(t.config.timeout, probe(t)).await,
        Ok(true)
    )
}

async fn probe(t: &Target) -> bool {
    let Ok(s) = crate::dial::dial(t.addr, t.tls.as_ref(), false).await else {
        return false;
    };
    let h2 = t.protocol.speaks_h2(&s);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringmesh-health-check\r\nConnection: close\r\n\r\n",
        t.config.path, t.addr
    )
    .into_bytes();
    let mut head = ResponseHead::default();
    if h2 {
        // A stream on a connection of its own, which closes with the check.
        let tls = s.tls().is_some();
        let conns = CloseOnDrop(Conns::default());
        let slot = conns.0.open(s, ());
        let mut up = H2Up::new(slot, tls, false);
        let mut parsed = RequestHead::default();
        if !matches!(parsed.parse(&req, req.len()), Ok(Some(_))) {
            return false;
        }
        let fwd = Forwarded {
            client_ip: b"127.0.0.1",
            proto: if tls { b"https" } else { b"http" },
            fallback_host: b"",
            deadline: None,
            trace: None,
            identity: None,
            edits: None,
            target: None,
            authority: None,
        };
        if up.write.send_head(&parsed, &req, &fwd).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        return match up.read.read_head(&mut head, &mut buf).await {
            Ok(_) => (200..400).contains(&head.status),
            Err(_) => false,
        };
    }
    let mut s = Io::Wire(s);
    if s.write_all(req).await.0.is_err() {
        return false;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if !buf.is_empty() {
            match head.parse(&buf, 64 * 1024) {
                Ok(Some(n)) if head.is_interim() => {
                    buf.drain(..n);
                    continue;
                }
                Ok(Some(_)) => return (200..400).contains(&head.status),
                Ok(None) => {}
                Err(_) => return false,
            }
        }
        let len = buf.len();
        if len == buf.capacity() {
            buf.reserve(len.max(1024));
        }
        let (r, b) = s.read(buf.slice_mut(len..)).await;
        buf = b.into_inner();
        if !matches!(r, Ok(n) if n > 0) {
            return false;
        }
    }
}

/// An HTTP/2 connection closed once the check is over (or given up).
struct CloseOnDrop(Conns);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_all();
    }
}
