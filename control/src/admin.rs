//! The admin API: `/` (the dashboard), `/ready`, `/metrics`, `/config`, `/clusters`, `/tap`.
//!
//! It runs on its own thread with its own runtime, away from the workers. It binds 127.0.0.1 by
//! default: it exposes the config and can be asked for reloads, so it should not be reachable
//! from outside the host. Metrics and endpoint state are gathered by asking every worker for a
//! report over its command channel; nothing is shared with the request path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use ringmesh_core::metrics::{self, WorkerReport};
use ringmesh_core::tap;
use ringmesh_core::worker::Command;
use serde_json::json;

use crate::http::{self, Response};
use crate::shared::{ControlMsg, State};

struct Admin {
    /// Where the API is bound: requests must be addressed to it (DNS rebinding).
    bound: SocketAddr,
    workers: Vec<flume::Sender<Command>>,
    control: flume::Sender<ControlMsg>,
    state: Arc<State>,
}

/// Binds `addr` and serves the admin API on a new thread; returns the bound address.
pub(crate) fn start(
    addr: SocketAddr,
    workers: Vec<flume::Sender<Command>>,
    control: flume::Sender<ControlMsg>,
    state: Arc<State>,
) -> std::io::Result<SocketAddr> {
    // Bound here, not on the admin thread, so that a conflict is reported at start.
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringmesh-admin".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else {
                tracing::error!("admin: cannot start runtime");
                return;
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin: cannot listen");
                        return;
                    }
                };
                let admin = Rc::new(Admin {
                    bound,
                    workers,
                    control,
                    state,
                });
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            ringmesh_core::sys::set_cloexec(std::os::fd::AsRawFd::as_raw_fd(
                                &stream,
                            ));
                            monoio::spawn(serve(admin.clone(), stream));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin: accept failed");
                            monoio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        })?;
    Ok(bound)
}

async fn serve(admin: Rc<Admin>, mut stream: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The admin API takes no body: a small one is read and refused with its method.
        let req = match http::read_request(&mut stream, &mut buf, &|_| 64 * 1024).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err((status, why)) => {
                let _ = http::respond(&mut stream, Response::text(status, why), true, false).await;
                return;
            }
        };
        if !crate::api_guard::host_allowed(req.host.as_deref().map(str::as_bytes), &[], admin.bound)
        {
            // A page that rebound its own name to this address: no answer it could read.
            let msg = "the Host is not this admin API's address: use its IP address or localhost";
            let _ = http::respond(&mut stream, Response::text(403, msg), true, false).await;
            return;
        }
        if req.path == "/tap" && req.method == "GET" {
            // The connection is the tap's until it ends.
            tap(&mut stream, &req.query).await;
            return;
        }
        let resp = if req.is_read() {
            admin.answer(&req.path).await
        } else {
            Response::text(405, "method not allowed")
        };
        let head_only = req.method == "HEAD";
        if !http::respond(&mut stream, resp, req.close, head_only).await || req.close {
            return;
        }
    }
}

const DASHBOARD: &[u8] = include_bytes!("dashboard.html");

use tap::{DEFAULT_EVENTS as TAP_DEFAULT, MAX_EVENTS as TAP_MAX};

/// `GET /tap?listener=..&route=..&cluster=..&n=..`: streams one JSON line per matching request
/// as it ends (the access log's fields), until `n` lines were sent or the client leaves. The
/// answer is chunked; each chunk carries whatever lines are ready.
async fn tap(stream: &mut TcpStream, query: &[(String, String)]) {
    let mut filter = tap::Filter::default();
    let mut n = TAP_DEFAULT;
    for (k, v) in query {
        match k.as_str() {
            "listener" => filter.listener = Some(v.clone()),
            "route" => filter.route = Some(v.clone()),
            "cluster" => filter.cluster = Some(v.clone()),
            "n" => match v.parse::<u64>() {
                Ok(v) if (1..=TAP_MAX).contains(&v) => n = v,
                _ => {
                    let msg = format!("n: expected a number from 1 to {TAP_MAX}");
                    let _ = http::respond(stream, Response::text(400, &msg), true, false).await;
                    return;
                }
            },
            _ => {
                let msg = format!("unknown parameter `{k}`: listener, route, cluster, n");
                let _ = http::respond(stream, Response::text(400, &msg), true, false).await;
                return;
            }
        }
    }
    let session = tap::Session::start(filter, n, 4096);
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                 transfer-encoding: chunked\r\ncache-control: no-store\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.to_vec()).await.0.is_err() {
        return;
    }
    let mut sent = 0u64;
    let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
    while sent < n {
        let first = monoio::select! {
            e = session.rx.recv_async() => e.ok(),
            _ = monoio::time::sleep(Duration::from_secs(1)) => None,
        };
        let Some(first) = first else {
            // Nothing for a while: end if the client has gone.
            if ringmesh_core::sys::idle_connection_is_dead(stream.as_raw_fd()) {
                return;
            }
            continue;
        };
        chunk.clear();
        let mut body = first;
        sent += 1;
        while sent < n && body.len() < 60 * 1024 {
            match session.rx.try_recv() {
                Ok(line) => {
                    body.extend_from_slice(&line);
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        chunk.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(b"\r\n");
        let (r, c) = stream.write_all(std::mem::take(&mut chunk)).await;
        chunk = c;
        if r.is_err() {
            return;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n".to_vec()).await;
    if session.dropped() > 0 {
        tracing::info!(dropped = session.dropped(), "tap: the reader fell behind");
    }
}

impl Admin {
    async fn answer(&self, path: &str) -> Response {
        let (status, ctype, body) = match path.as_bytes() {
            b"/ready" => {
                if self.state.ready.load(Ordering::Relaxed) {
                    (200, "text/plain", b"ready\n".to_vec())
                } else {
                    (503, "text/plain", b"not ready\n".to_vec())
                }
            }
            b"/metrics" => {
                let reports = self.reports().await;
                let mut out = String::with_capacity(16 * 1024);
                metrics::render(&mut out, &metrics::merge(&reports));
                self.render_control(&mut out);
                (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    out.into_bytes(),
                )
            }
            b"/config" => match self.current().await {
                Some(c) => {
                    let bound: serde_json::Map<String, serde_json::Value> = c
                        .listeners
                        .iter()
                        .map(|(name, addr)| (name.clone(), json!(addr.to_string())))
                        .collect();
                    // The admin address in force is the one bound (a flag may have overridden
                    // the file's, and port 0 picks one).
                    let mut config: serde_json::Value =
                        serde_json::from_str(&c.json).unwrap_or(serde_json::Value::Null);
                    if let Some(m) = config.as_object_mut() {
                        m.insert("admin".into(), json!(self.bound.to_string()));
                    }
                    let body = format!(
                        "{{\"version\":{},\"admin\":{},\"bound\":{},\"config\":{}}}\n",
                        c.version,
                        json!(self.bound.to_string()),
                        serde_json::Value::Object(bound),
                        config
                    );
                    (200, "application/json", body.into_bytes())
                }
                None => (503, "text/plain", b"control thread unavailable\n".to_vec()),
            },
            b"/clusters" => {
                let merged = metrics::merge(&self.reports().await);
                (200, "application/json", clusters_json(&merged).into_bytes())
            }
            // The dashboard: one self-contained page (no external scripts, styles or fonts) that
            // polls /metrics and /clusters.
            b"/" => (200, "text/html; charset=utf-8", DASHBOARD.to_vec()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        Response::new(status, ctype, body)
    }

    /// Every worker's report; a worker that does not answer within a second is left out.
    async fn reports(&self) -> Vec<WorkerReport> {
        let (tx, rx) = flume::unbounded();
        let mut asked = 0;
        for w in &self.workers {
            if w.send(Command::Report { reply: tx.clone() }).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let mut reports = Vec::with_capacity(asked);
        let deadline = monoio::time::sleep(Duration::from_secs(1));
        let mut deadline = std::pin::pin!(deadline);
        while reports.len() < asked {
            monoio::select! {
                r = rx.recv_async() => match r {
                    Ok(r) => reports.push(r),
                    Err(_) => break,
                },
                _ = &mut deadline => break,
            }
        }
        reports
    }

    async fn current(&self) -> Option<crate::shared::Current> {
        let (tx, rx) = flume::bounded(1);
        self.control.send(ControlMsg::Current(tx)).ok()?;
        rx.recv_async().await.ok()
    }

    fn render_control(&self, out: &mut String) {
        let s = &self.state;
        let _ = writeln!(
            out,
            "# HELP ringmesh_config_version Version of the config in force."
        );
        let _ = writeln!(out, "# TYPE ringmesh_config_version gauge");
        let _ = writeln!(
            out,
            "ringmesh_config_version {}",
            s.version.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringmesh_config_reloads_total Config loads by result."
        );
        let _ = writeln!(out, "# TYPE ringmesh_config_reloads_total counter");
        let _ = writeln!(
            out,
            "ringmesh_config_reloads_total{{result=\"ok\"}} {}",
            s.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "ringmesh_config_reloads_total{{result=\"error\"}} {}",
            s.reloads_error.load(Ordering::Relaxed)
        );
        let applied = s.applied_at_unix_ms.load(Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let _ = writeln!(
            out,
            "# HELP ringmesh_config_age_seconds Time since the config in force was applied."
        );
        let _ = writeln!(out, "# TYPE ringmesh_config_age_seconds gauge");
        let _ = writeln!(
            out,
            "ringmesh_config_age_seconds {}",
            now.saturating_sub(applied) as f64 / 1000.0
        );
        if s.control_mode.load(Ordering::Relaxed) {
            render_control_plane(out, s, now);
        }
        let _ = writeln!(
            out,
            "# HELP ringmesh_io_uring 1 when workers run on io_uring, 0 on the epoll fallback."
        );
        let _ = writeln!(out, "# TYPE ringmesh_io_uring gauge");
        let _ = writeln!(
            out,
            "ringmesh_io_uring {}",
            u8::from(ringmesh_core::worker::io_uring_available())
        );
        if let Some(accelerated) = s.shortcut.accelerated() {
            let _ = writeln!(
                out,
                "# HELP ringmesh_accelerated 1 when this sidecar's local hops skip TCP/IP (ringmesh init --accelerate), 0 when they do not."
            );
            let _ = writeln!(out, "# TYPE ringmesh_accelerated gauge");
            let _ = writeln!(out, "ringmesh_accelerated {}", u8::from(accelerated));
        }
        let _ = writeln!(out, "# HELP ringmesh_workers Worker threads.");
        let _ = writeln!(out, "# TYPE ringmesh_workers gauge");
        let _ = writeln!(
            out,
            "ringmesh_workers {}",
            s.workers.load(Ordering::Relaxed)
        );
    }
}

/// Staleness of a proxy fed by a control plane.
fn render_control_plane(out: &mut String, s: &State, now_ms: u64) {
    let contact = s.control_contact_unix_ms.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP ringmesh_control_snapshot_version Version of the control plane's snapshot in force (0: none yet).\n\
         # TYPE ringmesh_control_snapshot_version gauge\n\
         ringmesh_control_snapshot_version {}",
        s.control_version.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP ringmesh_control_connected 1 when the last exchange with the control plane worked.\n\
         # TYPE ringmesh_control_connected gauge\n\
         ringmesh_control_connected {}",
        u8::from(s.control_connected.load(Ordering::Relaxed))
    );
    if contact > 0 {
        let _ = writeln!(
            out,
            "# HELP ringmesh_control_contact_age_seconds Time since the control plane last answered.\n\
             # TYPE ringmesh_control_contact_age_seconds gauge\n\
             ringmesh_control_contact_age_seconds {}",
            now_ms.saturating_sub(contact) as f64 / 1000.0
        );
    }
}

fn clusters_json(m: &metrics::Merged) -> String {
    let mut clusters: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for e in &m.endpoints {
        let ep = json!({
            "address": e.addr.to_string(),
            "zone": e.zone.as_deref(),
            "priority": e.priority,
            "weight": e.weight,
            "health": if e.healthy { "healthy" } else { "unhealthy" },
            "health_checks": e.checks.map(|(passed, failed)| json!({ "passed": passed, "failed": failed })),
            "ejected": e.ejected > 0,
            "ejected_in_workers": e.ejected,
            "ejections": e.ejections,
            "ewma_seconds": e.ewma_seconds,
            "in_flight": e.in_flight,
            "pooled_connections": e.pooled,
            "requests": metrics::Outcome::ALL
                .iter()
                .map(|o| (o.name().to_string(), json!(e.outcomes[*o as usize])))
                .collect::<serde_json::Map<_, _>>(),
        });
        match clusters.iter_mut().find(|(n, _)| **n == *e.cluster) {
            Some((_, eps)) => eps.push(ep),
            None => clusters.push((e.cluster.to_string(), vec![ep])),
        }
    }
    let list: Vec<_> = clusters
        .into_iter()
        .map(|(name, eps)| {
            let mut c = json!({ "name": name, "endpoints": eps });
            if let Some(r) = m.clusters.iter().find(|r| *r.name == *name) {
                c["requests_active"] = json!(r.active);
                c["connections"] = json!(r.connections);
                c["overflow"] = metrics::Limit::ALL
                    .iter()
                    .map(|l| (l.name().to_string(), json!(r.overflow[*l as usize])))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                c["retry_budget_exhausted"] = json!(r.budget_refused);
                if r.zone_reports > 0 {
                    // Zone-aware routing: each zone's share of requests, averaged over workers.
                    c["zone_shares_percent"] = r
                        .zones
                        .iter()
                        .map(|(zone, bp)| {
                            let percent = *bp as f64 / f64::from(r.zone_reports) / 100.0;
                            (zone.to_string(), json!((percent * 100.0).round() / 100.0))
                        })
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
            }
            c
        })
        .collect();
    let mut s = json!({ "clusters": list }).to_string();
    s.push('\n');
    s
}
