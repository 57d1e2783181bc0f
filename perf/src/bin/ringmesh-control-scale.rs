//! `ringmesh-control-scale`: one `ringmesh control` process, many watching proxies (simulated:
//! one long-poll connection each), many registered endpoints. Measures how long a change takes to
//! reach every watcher and what each watcher costs the control plane in memory. It runs as
//! production does: the API over TLS, verified by the CA's pinned key; the admin with a bearer
//! token; each watcher first gets its node's certificate with its bootstrap token, then watches
//! over mTLS. See perf/README.md; the last run is in perf/CONTROL.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringmesh_perf::procfs;

struct Opts {
    watchers: usize,
    endpoints: usize,
    clusters: usize,
    changes: usize,
    out: Option<std::path::PathBuf>,
    /// Replicated mode: the control plane keeps its state in this etcd.
    etcd: Option<String>,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("ringmesh-control-scale: {e}");
        std::process::exit(1);
    }
}

const ADMIN_TOKEN: &str = "scale-admin-token";

/// One keep-alive HTTP/1.1 exchange as the admin (or with `extra` credentials); returns the
/// status and the body.
fn exchange<S: Read + Write>(
    r: &mut BufReader<S>,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let json = if matches!(method, "PUT" | "POST") {
        "content-type: application/json\r\n"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n{json}{extra}\r\n{body}",
        body.len()
    );
    r.get_mut().write_all(req.as_bytes())?;
    r.get_mut().flush()?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

type Conn = BufReader<ringmesh_control::mesh::client::Stream>;

/// A TLS connection to the control plane, verified by `pin`, presenting `identity` if any.
fn connect(
    addr: SocketAddr,
    pin: &str,
    identity: Option<Arc<rustls::sign::CertifiedKey>>,
) -> std::io::Result<Conn> {
    let client = ringmesh_control::mesh::client::Client {
        trust: ringmesh_control::mesh::client::Trust::Pin(pin.to_string()),
        learned: None,
        identity,
    };
    client
        .open(&addr.to_string(), Duration::from_secs(600))
        .map(BufReader::new)
        .map_err(std::io::Error::other)
}

fn sha256_hex(data: &[u8]) -> String {
    ringmesh_control::mesh::ca::sha256_hex(data)
}

/// Node `n`'s certificate and key, got with its bootstrap token.
fn certificate(
    addr: SocketAddr,
    pin: &str,
    n: usize,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let (key, public) = ringmesh_control::mesh::ca::new_key().map_err(|e| e.to_string())?;
    let mut c = connect(addr, pin, None).map_err(|e| e.to_string())?;
    let body = format!("{{\"public_key\":\"{public}\"}}");
    let auth = format!("authorization: Bearer token-n{n}\r\n");
    let (s, b) = exchange(
        &mut c,
        "POST",
        &format!("/v1/nodes/n{n}/certificate"),
        &auth,
        &body,
    )
    .map_err(|e| e.to_string())?;
    if s != 200 {
        return Err(format!("node n{n}'s certificate: {s} {b}"));
    }
    let v: serde_json::Value = serde_json::from_str(&b).map_err(|e| e.to_string())?;
    let cert = v["cert"].as_str().ok_or("no cert")?;
    ringmesh_core::tls::certified_key_from_pem(cert.as_bytes(), key.as_bytes())
        .map_err(|e| e.to_string())
}

/// `"version":N` at the start of a snapshot.
fn version_of(body: &str) -> Option<u64> {
    let rest = body.split_once("\"version\":")?.1;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

struct Plane(Child);

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn real_main() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut o = Opts {
        watchers: 1000,
        endpoints: 10_000,
        clusters: 100,
        changes: 5,
        out: Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("CONTROL.md")),
        etcd: None,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("watchers") => o.watchers = p.value()?.parse()?,
            Long("endpoints") => o.endpoints = p.value()?.parse()?,
            Long("clusters") => o.clusters = p.value()?.parse()?,
            Long("changes") => o.changes = p.value()?.parse()?,
            Long("out") => o.out = Some(p.value()?.into()),
            Long("no-out") => o.out = None,
            Long("etcd") => {
                o.etcd = Some(p.value()?.string()?);
                if o.out.as_ref().is_some_and(|p| p.ends_with("CONTROL.md")) {
                    o.out = Some(
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("CONTROL-ETCD.md"),
                    );
                }
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if o.clusters == 0 || o.watchers == 0 {
        return Err("--clusters and --watchers must be at least 1".into());
    }
    let bin = ringmesh_perf::compare::build_ringmesh()?;
    let dir = std::env::temp_dir().join(format!("ringmesh-control-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // One node per watcher, each routing to one cluster: what a fleet of sidecars looks like.
    let mut mesh = format!(
        "state_file: off\napi:\n  admins:\n    - {{ name: scale, token_sha256: {} }}\nclusters:\n",
        sha256_hex(ADMIN_TOKEN.as_bytes())
    );
    for c in 0..o.clusters {
        mesh.push_str(&format!("  - {{ name: c{c}, endpoints: [] }}\n"));
    }
    mesh.push_str("nodes:\n");
    for n in 0..o.watchers {
        mesh.push_str(&format!(
            "  n{n}: {{ identity: {{ ns: default, sa: n{n} }}, token_sha256: {}, listeners: [ {{ name: edge, bind: 127.0.0.1:0, routes: [ {{ match: {{ path_prefix: / }}, cluster: c{} }} ] }} ] }}\n",
            sha256_hex(format!("token-n{n}").as_bytes()),
            n % o.clusters
        ));
    }
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, mesh)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["control", "--config"]).arg(&file).args([
        "--bind",
        &port.to_string(),
        "--log-level",
        "warn",
    ]);
    if let Some(url) = &o.etcd {
        // A prefix of this run's own: the store may hold earlier runs.
        let prefix = format!("/ringmesh-scale-{}/", std::process::id());
        cmd.args(["--etcd", url, "--etcd-prefix", &prefix]);
    }
    let mut child = cmd
        .args(["--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The log says how to pin the CA; the rest of it is read (and dropped) on a thread.
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let plane = Plane(child);
    let pin = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let at = l.find("pin=sha256:")? + "pin=sha256:".len();
            l.get(at..at + 64).map(str::to_string)
        })
        .ok_or("the control plane did not start (no CA pin in its log)")?;
    std::thread::spawn(move || lines.for_each(drop));
    let pid = plane.0.id();
    let started = Instant::now();
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}\r\n");
    let mut api = loop {
        match connect(port, &pin, None) {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("control plane did not start: {e}").into()),
        }
    };
    let rss_empty = procfs::rss_kib(pid);

    let t = Instant::now();
    for e in 0..o.endpoints {
        let addr = format!("10.{}.{}.{}:8080", (e >> 16) & 255, (e >> 8) & 255, e & 255);
        let body = format!(
            "{{\"addr\":\"{addr}\",\"zone\":\"dc{}\",\"ttl\":\"1h\"}}",
            e % 3
        );
        let (s, b) = exchange(
            &mut api,
            "PUT",
            &format!("/v1/clusters/c{}/endpoints/e{e}", e % o.clusters),
            &auth,
            &body,
        )?;
        if s != 200 {
            return Err(format!("registration answered {s}: {b}").into());
        }
    }
    let registering = t.elapsed();
    let rss_endpoints = procfs::rss_kib(pid);

    // Certificates: one per node, with its bootstrap token.
    let t = Instant::now();
    let mut identities = Vec::with_capacity(o.watchers);
    for n in 0..o.watchers {
        identities.push(certificate(port, &pin, n)?);
    }
    let certifying = t.elapsed();
    // Watchers: each takes its node's snapshot, then long-polls for the next, over mTLS.
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..o.watchers).map(|_| AtomicU64::new(0)).collect());
    let bytes = Arc::new(AtomicU64::new(0));
    for (n, identity) in identities.into_iter().enumerate() {
        let (seen, bytes, pin) = (seen.clone(), bytes.clone(), pin.clone());
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut c = match connect(port, &pin, Some(identity)) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("watcher n{n}: cannot connect: {e}");
                        return;
                    }
                };
                let mut version: Option<u64> = None;
                loop {
                    let path = match version {
                        Some(v) => format!("/v1/watch/n{n}?wait=300s&version={v}&applied={v}"),
                        None => format!("/v1/watch/n{n}?wait=300s"),
                    };
                    match exchange(&mut c, "GET", &path, "", "") {
                        Ok((200, body)) => {
                            bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            version = version_of(&body);
                            seen[n].store(version.unwrap_or(0), Ordering::Release);
                        }
                        // The long poll ran out with no change.
                        Ok((304, _)) => {}
                        Ok((status, body)) => {
                            eprintln!("watcher n{n}: {status} {body}");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        // The run is over (the control plane stopped) or it failed.
                        Err(_) => return,
                    }
                }
            })?;
    }
    let wait_all = |target: &dyn Fn(u64) -> bool, limit: Duration| -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if seen.iter().all(|v| target(v.load(Ordering::Acquire))) {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    };
    wait_all(&|v| v > 0, Duration::from_secs(60)).ok_or("watchers did not get their snapshots")?;
    // Every watcher is waiting in a long-poll now.
    std::thread::sleep(Duration::from_millis(500));
    let rss_watching = procfs::rss_kib(pid);
    let initial_bytes = bytes.load(Ordering::Relaxed);

    // Changes that reach every node: a policy added and removed through the API.
    let mut times = Vec::new();
    for i in 0..o.changes {
        let (_, all) = exchange(&mut api, "GET", "/v1/config", &auth, "")?;
        let version = version_of(&all).ok_or("no version")?;
        let policies = if i % 2 == 0 {
            r#"[{"name":"reads","action":"allow","match":{"method":"GET"}}]"#
        } else {
            "[]"
        };
        let t0 = Instant::now();
        let (s, b) = exchange(
            &mut api,
            "PUT",
            "/v1/config/policies",
            &format!("if-match: \"{version}\"\r\n{auth}"),
            policies,
        )?;
        if s != 200 {
            return Err(format!("change answered {s}: {b}").into());
        }
        let target = version_of(&b).ok_or("no version in the answer")?;
        wait_all(&|v| v >= target, Duration::from_secs(30))
            .ok_or("a change did not reach every watcher in 30 s")?;
        times.push(t0.elapsed());
    }
    // One registration: reaches the nodes of one cluster.
    let (_, b) = exchange(
        &mut api,
        "PUT",
        "/v1/clusters/c0/endpoints/late",
        &auth,
        r#"{"addr":"10.255.255.1:8080","ttl":"1h"}"#,
    )?;
    let reg_version = version_of(&b).ok_or("no version")?;
    let t0 = Instant::now();
    let mine: Vec<usize> = (0..o.watchers).step_by(o.clusters).collect();
    while !mine
        .iter()
        .all(|&n| seen[n].load(Ordering::Acquire) >= reg_version)
    {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("the registration did not reach its watchers".into());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let reg_time = t0.elapsed();
    let cpu = procfs::cpu_seconds(pid);
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let per_watcher = (rss_watching.saturating_sub(rss_endpoints)) * 1024 / o.watchers as u64;
    let table = format!(
        "| measure | value |\n|---|---|\n\
         | watchers (one node each) | {} |\n\
         | endpoints registered (clusters) | {} ({}) |\n\
         | registering them, one API call each | {:.2} s |\n\
         | a certificate for each node (bootstrap token) | {:.2} s |\n\
         | snapshot bytes sent to all watchers at start | {} KiB |\n\
         | change reaching all watchers: median, max of {} | {:.1} ms, {:.1} ms |\n\
         | registration reaching its {} watchers | {:.1} ms |\n\
         | control plane RSS: empty, with endpoints, with watchers | {} KiB, {} KiB, {} KiB |\n\
         | memory per watcher | {} B |\n\
         | control plane CPU for the whole run | {:.2} s |\n",
        o.watchers,
        o.endpoints,
        o.clusters,
        registering.as_secs_f64(),
        certifying.as_secs_f64(),
        initial_bytes / 1024,
        times.len(),
        times.get(times.len() / 2).map_or(0.0, |d| ms(*d)),
        times.last().map_or(0.0, |d| ms(*d)),
        mine.len(),
        ms(reg_time),
        rss_empty,
        rss_endpoints,
        rss_watching,
        per_watcher,
        cpu,
    );
    print!("{table}");
    if let Some(out) = &o.out {
        let text = format!(
            "# Control plane at scale{}\n\n\
             Last run: `{}` on {} ({}).\n\n\
             One `ringmesh control` process, its API over TLS; each watcher is a simulated proxy:\n\
             its node's certificate got with its bootstrap token, then one keep-alive mTLS\n\
             connection long-polling `GET /v1/watch/{{node}}`. The admin calls with a bearer token.\n\
             A change is timed from the API call to the moment the last watcher holds the new\n\
             version.\n\n{table}",
            if o.etcd.is_some() {
                ", state in etcd"
            } else {
                ""
            },
            std::env::args().collect::<Vec<_>>().join(" "),
            procfs::machine(),
            String::from_utf8_lossy(
                &Command::new("date")
                    .args(["-u", "+%Y-%m-%d %H:%M UTC"])
                    .output()?
                    .stdout
            )
            .trim(),
        );
        std::fs::write(out, text)?;
    }
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
