//! The comparison driver: one backend, the same load against it directly and through each proxy,
//! pinned to the same cores, rounds interleaved; CPU per request, memory under load and per idle
//! connection; a markdown table with ratios to ringmesh, written to perf/RESULTS.md.
//!
//! Cores: the load generator runs on the first CPU; the backend and the proxy under test share
//! the second (`taskset`), so that every proxy pays the same context switches.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::load::{self, LoadConfig, Report};
use crate::procfs;
use crate::tls::CertFiles;

/// What to compare, and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds per scenario (targets rotate between rounds).
    pub rounds: usize,
    /// Recorded time per run.
    pub duration: Duration,
    /// Warm-up per run.
    pub warmup: Duration,
    /// Scenarios to run, by name.
    pub scenarios: Vec<String>,
    /// Extra peers: (name, shell command with `{port}` and `{backend}`).
    pub peers: Vec<(String, String)>,
    /// Leave out nginx and HAProxy as proxies.
    pub skip_peers: bool,
    /// Where to write the report.
    pub out: Option<PathBuf>,
    /// CPU for the load generator.
    pub load_cpu: usize,
    /// CPU for the backend and the proxy under test.
    pub proxy_cpu: usize,
    /// Idle connections to open in the idle scenario.
    pub idle_connections: usize,
}

/// Every scenario, in report order.
pub const SCENARIOS: [&str; 12] = [
    "small",
    "one",
    "idle",
    "1mib",
    "upload",
    "newconn",
    "tls-small",
    "tls-newconn",
    "tls-idle",
    "h2",
    "mesh",
    "access-log",
];

/// The name of the bare relay's row (`ringmesh-relay`).
const FLOOR: &str = "relay-floor";

/// Where the relay is a floor: small requests and answers, one read and one write each way. It
/// copies large bodies through one 16 KiB buffer and opens an upstream connection for each
/// client's, which a proxy need not.
const FLOOR_SCENARIOS: [&str; 2] = ["small", "one"];

/// A process to measure: the backend, or a proxy.
struct Target {
    name: String,
    port: u16,
    /// The same proxy terminating TLS (ECDSA P-256 certificate), if it does.
    tls_port: Option<u16>,
    /// Where it serves HTTP/2 in cleartext (prior knowledge), if it does.
    h2_port: Option<u16>,
    child: Child,
    /// How it was started, to start it again.
    cpu: usize,
    cmd: String,
    dir: PathBuf,
}

impl Target {
    fn kill(&mut self) {
        // nginx and HAProxy leave workers behind if only the master is killed.
        for pid in procfs::tree(self.child.id()).into_iter().rev() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.wait();
    }

    /// A fresh process: memory measurements must not reuse what earlier scenarios freed.
    fn restart(&mut self) -> Result<(), String> {
        self.kill();
        // The ports are free once the old process is gone.
        std::thread::sleep(Duration::from_millis(300));
        self.child = spawn_pinned(
            self.cpu,
            &self.cmd,
            &self.dir.join(format!("{}.log", self.name)),
        )?;
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        if !wait_port(self.port) || !self.tls_port.is_none_or(wait_port) {
            return Err(format!(
                "{} did not start: see {}",
                self.name,
                self.dir.join(format!("{}.log", self.name)).display()
            ));
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs nginx and HAProxy from Debian's packages when missing.
fn install_peers() -> Result<(), String> {
    if have("nginx") && have("haproxy") && have("h2load") {
        return Ok(());
    }
    eprintln!("installing nginx, haproxy and h2load (apt-get)");
    let ok = Command::new("sh")
        .arg("-c")
        .arg("export DEBIAN_FRONTEND=noninteractive; (apt-get install -y -q nginx haproxy nghttp2-client || (apt-get update -q && apt-get install -y -q nginx haproxy nghttp2-client)) >/dev/null")
        .status()
        .is_ok_and(|s| s.success());
    if ok && have("nginx") && have("haproxy") && have("h2load") {
        Ok(())
    } else {
        Err("cannot install nginx, haproxy and h2load".into())
    }
}

fn spawn_pinned(cpu: usize, cmd: &str, log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))
}

fn start(
    name: &str,
    cpu: usize,
    cmd: &str,
    (port, tls_port): (u16, Option<u16>),
    dir: &Path,
) -> Result<Target, String> {
    let child = spawn_pinned(cpu, cmd, &dir.join(format!("{name}.log")))?;
    let t = Target {
        name: name.into(),
        port,
        tls_port,
        h2_port: None,
        cpu,
        cmd: cmd.into(),
        dir: dir.into(),
        child,
    };
    t.wait_ready()?;
    Ok(t)
}

fn backend_config(dir: &Path, port: u16) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/backend.pid;\nerror_log {d}/backend.err warn;\nworker_rlimit_nofile 65536;\n\
events {{ worker_connections 32768; }}\n\
http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  sendfile on;\n  client_max_body_size 16m;\n  client_body_buffer_size 256k;\n\
  server {{\n    listen 127.0.0.1:{port} reuseport backlog=4096;\n    root {d}/www;\n\
    location = / {{ return 200 \"ok\"; }}\n    location = /1m {{ }}\n    location = /upload {{ return 200 \"ok\"; }}\n  }}\n}}\n",
        d = dir.display()
    )
}

fn nginx_proxy_config(
    dir: &Path,
    (port, tls, h2): (u16, u16, u16),
    backend: u16,
    certs: &CertFiles,
) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err warn;\nworker_rlimit_nofile 65536;\n\
events {{ worker_connections 32768; }}\n\
http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  client_max_body_size 16m;\n\
  upstream be {{ server 127.0.0.1:{backend}; keepalive 512; keepalive_requests 1000000; }}\n\
  server {{\n    listen 127.0.0.1:{port} reuseport backlog=4096;\n\
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_request_buffering off; }}\n  }}\n\
  server {{\n    listen 127.0.0.1:{tls} ssl reuseport backlog=4096;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n\
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_request_buffering off; }}\n  }}\n\
  server {{\n    listen 127.0.0.1:{h2} http2 reuseport backlog=4096;\n    http2_max_requests 1000000;\n\
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_request_buffering off; }}\n  }}\n}}\n",
        d = dir.display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

fn haproxy_config((port, tls, h2): (u16, u16, u16), backend: u16, certs: &CertFiles) -> String {
    // HAProxy refuses to start when it cannot raise its descriptor limit to what `maxconn`
    // asks; stay within the hard limit (20,000 on the machines we measure on).
    let fds = hard_fd_limit().min(1 << 20);
    let maxconn = (fds - 100) / 2;
    format!(
        "global\n  nbthread 1\n  maxconn {maxconn}\n  ulimit-n {fds}\n\
defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  http-reuse always\n\
frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
frontend t\n  bind 127.0.0.1:{tls} ssl crt {crt} ssl-min-ver TLSv1.2\n  default_backend b\n\
frontend h\n  bind 127.0.0.1:{h2} proto h2\n  default_backend b\n\
backend b\n  server s1 127.0.0.1:{backend}\n",
        crt = certs.combined.display(),
    )
}

fn hard_fd_limit() -> u64 {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -Hn")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(20_000)
}

fn ringmesh_config((port, tls): (u16, u16), backend: u16, certs: &CertFiles) -> String {
    format!(
        "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:{port}\n    idle_timeout: 300s\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]\n  \
- name: edge-tls\n    bind: 127.0.0.1:{tls}\n    idle_timeout: 300s\n    tls: {{ certs: [ {{ cert: {cert}, key: {key} }} ] }}\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]\n\
clusters:\n  - {{ name: be, endpoints: [ {{ addr: 127.0.0.1:{backend} }} ] }}\n",
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

/// Finds the workspace root (the driver is built inside it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds `target/release/ringmesh` and `ringmesh-relay` beside it (release profile) and returns
/// the proxy's path.
pub fn build_ringmesh() -> Result<PathBuf, String> {
    let root = workspace();
    let ok = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "ringmesh-control",
            "--bin",
            "ringmesh",
            "-p",
            "ringmesh-perf",
            "--bin",
            "ringmesh-relay",
        ])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    let bin = root.join("target/release/ringmesh");
    if ok && bin.exists() {
        Ok(bin)
    } else {
        Err("cannot build target/release/ringmesh".into())
    }
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    report: Report,
    cpu_us_per_req: f64,
    /// CPU per request of each process tree measured, in the order given.
    cpu_us_each: Vec<f64>,
    rss_kib: u64,
}

fn measure(target: &Target, cfg: &LoadConfig) -> Run {
    measure_with(target, || load::run(cfg))
}

fn measure_with(target: &Target, load: impl FnOnce() -> Report) -> Run {
    measure_pids(&[target.child.id()], load)
}

/// A run, with CPU and memory summed over the process trees of `pids`.
fn measure_pids(pids: &[u32], load: impl FnOnce() -> Report) -> Run {
    let pids: Vec<u32> = pids.to_vec();
    let tree_cpu =
        |pids: &[u32]| -> Vec<f64> { pids.iter().map(|&p| procfs::tree_cpu_seconds(p)).collect() };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, pids) = (stop.clone(), peak.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let rss = pids.iter().map(|&p| procfs::tree_rss_kib(p)).sum();
                peak.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // CPU is counted over the whole run, warm-up included; requests too, by scaling.
    let cpu0 = tree_cpu(&pids);
    let t0 = Instant::now();
    let report = load();
    let wall = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = tree_cpu(&pids)
        .iter()
        .zip(&cpu0)
        .map(|(after, before)| after - before)
        .collect();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    // Requests over the whole run, estimated from the recorded rate.
    let requests = (report.rps * wall).max(1.0);
    Run {
        cpu_us_per_req: cpu.iter().sum::<f64>() * 1e6 / requests,
        cpu_us_each: cpu.iter().map(|c| c * 1e6 / requests).collect(),
        rss_kib: peak.load(Ordering::Relaxed),
        report,
    }
}

/// RSS growth per idle keep-alive connection, in bytes; over TLS when `tls` is given.
fn idle_cost(
    target: &Target,
    n: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<f64, String> {
    let pid = target.child.id();
    if let Some(config) = tls {
        let port = target.tls_port.ok_or("no TLS port")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut conns = Vec::with_capacity(n);
        let mut open = |k: usize| -> Result<(), String> {
            for _ in 0..k {
                conns.push(crate::tls::open_idle(addr, config)?);
            }
            Ok(())
        };
        return settle_and_measure(pid, &mut open, n);
    }
    let addr: SocketAddr = ([127, 0, 0, 1], target.port).into();
    let mut conns = Vec::with_capacity(n);
    let mut open = |k: usize| -> Result<(), String> {
        for _ in 0..k {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: perf\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            while !got.ends_with(b"ok") {
                let r = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if r == 0 {
                    return Err("closed".into());
                }
                got.extend_from_slice(&buf[..r]);
            }
            conns.push(s);
        }
        Ok(())
    };
    settle_and_measure(pid, &mut open, n)
}

/// A first batch warms allocators and pools; the second (`n` connections) is measured once
/// settled. The connections stay open until `open` is dropped by the caller.
fn settle_and_measure(
    pid: u32,
    open: &mut dyn FnMut(usize) -> Result<(), String>,
    n: usize,
) -> Result<f64, String> {
    open(500)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = procfs::tree_rss_kib(pid);
    open(n)?;
    std::thread::sleep(Duration::from_secs(3));
    let after = procfs::tree_rss_kib(pid);
    Ok(after.saturating_sub(before) as f64 * 1024.0 / n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Per target, the median of its rounds.
#[derive(Debug, Clone, Default)]
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    cpu_us: f64,
    rss_mib: f64,
    mbps: f64,
    errors: u64,
}

fn summarize(runs: &[Run]) -> Summary {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Summary {
        rps: m(&|r| r.report.rps),
        p50: m(&|r| r.report.p50_us),
        p99: m(&|r| r.report.p99_us),
        p999: m(&|r| r.report.p999_us),
        max: m(&|r| r.report.max_us),
        cpu_us: m(&|r| r.cpu_us_per_req),
        rss_mib: m(&|r| r.rss_kib as f64 / 1024.0),
        mbps: m(&|r| r.report.bytes_per_sec / 1e6),
        errors: runs.iter().map(|r| r.report.errors).sum(),
    }
}

fn scenario_load(name: &str, t: &Target, o: &Options, certs: &CertFiles) -> LoadConfig {
    let (port, tls) = match name.strip_prefix("tls-") {
        Some(_) => (
            t.tls_port.unwrap_or(t.port),
            crate::tls::client_config(&certs.ca, false)
                .ok()
                .map(|c| (c, "localhost".to_string())),
        ),
        None => (t.port, None),
    };
    let name = name.strip_prefix("tls-").unwrap_or(name);
    let base = LoadConfig {
        tls,
        addr: ([127, 0, 0, 1], port).into(),
        warmup: o.warmup,
        duration: o.duration,
        cpus: vec![o.load_cpu],
        ..LoadConfig::default()
    };
    match name {
        "one" => LoadConfig {
            connections: 1,
            ..base
        },
        "1mib" => LoadConfig {
            connections: 10,
            path: "/1m".into(),
            ..base
        },
        "upload" => LoadConfig {
            connections: 10,
            path: "/upload".into(),
            body: 100 * 1024,
            ..base
        },
        "newconn" => LoadConfig {
            connections: 10,
            new_connection: true,
            ..base
        },
        _ => LoadConfig {
            connections: 50,
            ..base
        },
    }
}

fn describe(name: &str) -> &'static str {
    match name {
        "small" => "small GET (2-byte answer), 50 keep-alive connections, closed loop",
        "one" => "small GET on one connection: latency added over the direct path",
        "idle" => "memory per idle keep-alive connection (one request each, then idle)",
        "1mib" => "1 MiB answers, 10 connections: throughput",
        "upload" => "100 KiB uploads (PUT), 10 connections",
        "newconn" => "a new connection per request, 10 at a time",
        "tls-small" => "small GET over TLS 1.3 (ECDSA P-256), 50 keep-alive connections",
        "tls-newconn" => {
            "a new TLS connection per request, full handshake (no resumption), 10 at a time: handshakes/s"
        }
        "tls-idle" => "memory per idle TLS keep-alive connection (one request each, then idle)",
        "mesh" => {
            "two ringmesh hops (client → sender → receiver → backend), small GET, 50 HTTP/1.1 client connections: the hop between the proxies in HTTP/1.1 (pooled) or upgraded to HTTP/2 (`protocol: mesh`); CPU and RSS are both proxies'"
        }
        "access-log" => {
            "what access logging costs: small GET, 50 connections, through ringmesh without an access log and logging every request to a file (metrics on in both)"
        }
        "h2" => {
            "small GET over HTTP/2 in cleartext (prior knowledge) to the HTTP/1.1 backend: h2load, 10 connections x 10 streams; h2load reports no percentiles: p50 is its mean"
        }
        _ => "",
    }
}

/// Runs the comparison and returns the markdown report.
pub fn run(o: &Options) -> Result<String, String> {
    let _ = ringmesh_core::sys::raise_fd_limit();
    if !o.skip_peers {
        install_peers()?;
    }
    if !have("taskset") {
        return Err("taskset (util-linux) is needed to pin processes".into());
    }
    let ringmesh = build_ringmesh()?;
    let dir = std::env::temp_dir().join(format!("ringmesh-perf-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("www/1m"), vec![b'm'; 1 << 20]).map_err(|e| e.to_string())?;
    let certs = crate::tls::make_certs(&dir)?;

    let be_port = free_port();
    std::fs::write(dir.join("backend.conf"), backend_config(&dir, be_port))
        .map_err(|e| e.to_string())?;
    let mut backend = start(
        "backend",
        o.proxy_cpu,
        &format!("nginx -c {}/backend.conf", dir.display()),
        (be_port, None),
        &dir,
    )?;

    let mut targets: Vec<Target> = Vec::new();
    let rm_ports = (free_port(), free_port());
    std::fs::write(
        dir.join("ringmesh.yaml"),
        ringmesh_config(rm_ports, be_port, &certs),
    )
    .map_err(|e| e.to_string())?;
    targets.push(start(
        "ringmesh",
        o.proxy_cpu,
        &format!(
            "{} proxy --config {}/ringmesh.yaml --workers 1 --log-level warn",
            ringmesh.display(),
            dir.display()
        ),
        (rm_ports.0, Some(rm_ports.1)),
        &dir,
    )?);
    // The plain listener takes HTTP/2 by its preface.
    if let Some(t) = targets.last_mut() {
        t.h2_port = Some(rm_ports.0);
    }
    if !o.skip_peers {
        let p = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.join("nginx.conf"),
            nginx_proxy_config(&dir, p, be_port, &certs),
        )
        .map_err(|e| e.to_string())?;
        targets.push(start(
            "nginx",
            o.proxy_cpu,
            &format!("nginx -c {}/nginx.conf", dir.display()),
            (p.0, Some(p.1)),
            &dir,
        )?);
        if let Some(t) = targets.last_mut() {
            t.h2_port = Some(p.2);
        }
        let p = (free_port(), free_port(), free_port());
        std::fs::write(dir.join("haproxy.cfg"), haproxy_config(p, be_port, &certs))
            .map_err(|e| e.to_string())?;
        targets.push(start(
            "haproxy",
            o.proxy_cpu,
            &format!("haproxy -f {}/haproxy.cfg", dir.display()),
            (p.0, Some(p.1)),
            &dir,
        )?);
        if let Some(t) = targets.last_mut() {
            t.h2_port = Some(p.2);
        }
    }
    // The bare relay sets the floor for CPU per request: it does only what the kernel and
    // io_uring must do for a hop.
    let relay = ringmesh.with_file_name("ringmesh-relay");
    if relay.exists() {
        let p = free_port();
        targets.push(start(
            FLOOR,
            o.proxy_cpu,
            &format!(
                "{} --listen 127.0.0.1:{p} --upstream 127.0.0.1:{be_port}",
                relay.display()
            ),
            (p, None),
            &dir,
        )?);
    }
    for (name, cmd) in &o.peers {
        let p = free_port();
        let cmd = cmd
            .replace("{port}", &p.to_string())
            .replace("{backend}", &be_port.to_string());
        targets.push(start(name, o.proxy_cpu, &cmd, (p, None), &dir)?);
    }

    let mut md = String::new();
    let _ = writeln!(md, "# ringmesh performance comparison\n");
    let _ = writeln!(md, "- date: {}", chrono_like_now());
    let _ = writeln!(md, "- machine: {}", procfs::machine());
    let _ = writeln!(
        md,
        "- layout: load generator on CPU {}; backend (nginx, 1 worker) and the proxy under test share CPU {}; every proxy runs one worker",
        o.load_cpu, o.proxy_cpu
    );
    let _ = writeln!(
        md,
        "- runs: {} round(s) per scenario, {:?} recorded after {:?} of warm-up, targets rotated between rounds; medians shown",
        o.rounds, o.duration, o.warmup
    );
    let _ = writeln!(
        md,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        md,
        "- CPU/req: user+system time of the target's processes during the run, divided by its requests; for `direct` it is the backend's own"
    );
    if targets.iter().any(|t| t.name == FLOOR) {
        let _ = writeln!(
            md,
            "- {FLOOR}: `ringmesh-relay`, a bare TCP relay (two copy loops per connection, no parsing) on ringmesh's io_uring setup: the least CPU per request that a proxy can spend here, shown where it is a floor (`small`, `one`)"
        );
    }
    let _ = writeln!(md);

    let variants = Variants {
        ringmesh: &ringmesh,
        dir: &dir,
        be_port,
        o,
    };
    for scenario in &o.scenarios {
        let _ = writeln!(md, "## {scenario}: {}\n", describe(scenario));
        eprintln!("scenario {scenario}");
        let tls = scenario.starts_with("tls-");
        if scenario == "idle" || scenario == "tls-idle" {
            // HAProxy reserves two descriptors per connection it may hold: every target gets the
            // same count, within what the descriptor limit allows it.
            let n = o
                .idle_connections
                .min((hard_fd_limit() as usize / 2).saturating_sub(700));
            let _ = writeln!(
                md,
                "{n} idle connections, after 500 to warm up, each target freshly started.\n"
            );
            backend.restart()?;
            for t in targets.iter_mut() {
                t.restart()?;
            }
            let _ = writeln!(
                md,
                "| target | bytes per idle connection | ratio to ringmesh |\n|---|---|---|"
            );
            let mut rows = Vec::new();
            let client = if tls {
                Some(crate::tls::client_config(&certs.ca, false)?)
            } else {
                None
            };
            for t in std::iter::once(&backend)
                .chain(targets.iter())
                .filter(|t| !tls || t.tls_port.is_some())
                .filter(|t| t.name != FLOOR)
            {
                let name = if t.name == "backend" {
                    "direct (backend)".to_string()
                } else {
                    t.name.clone()
                };
                match idle_cost(t, n, client.as_ref()) {
                    Ok(b) => rows.push((name, b)),
                    Err(e) => rows.push((format!("{name} (failed: {e})"), f64::NAN)),
                }
            }
            let ours = rows
                .iter()
                .find(|(n, _)| n == "ringmesh")
                .map_or(f64::NAN, |r| r.1);
            for (n, b) in rows {
                let _ = writeln!(md, "| {n} | {b:.0} | {:.2} |", b / ours);
            }
            let _ = writeln!(md);
            continue;
        }
        if scenario == "mesh" {
            mesh_scenario(&mut md, &variants)?;
            continue;
        }
        if scenario == "access-log" {
            access_log_scenario(&mut md, &variants)?;
            continue;
        }
        // TLS scenarios: the proxies that terminate TLS (the backend speaks plain HTTP); the
        // HTTP/2 one: the proxies that serve it.
        let h2 = scenario == "h2";
        let all: Vec<&Target> = std::iter::once(&backend)
            .chain(targets.iter())
            .filter(|t| !tls || t.tls_port.is_some())
            .filter(|t| !h2 || t.h2_port.is_some())
            .filter(|t| t.name != FLOOR || FLOOR_SCENARIOS.contains(&scenario.as_str()))
            .collect();
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); all.len()];
        for round in 0..o.rounds {
            for k in 0..all.len() {
                let i = (k + round) % all.len();
                let t = all[i];
                let r = if h2 {
                    measure_with(t, || h2load(t.h2_port.unwrap_or(t.port), o))
                } else {
                    measure(t, &scenario_load(scenario, t, o, &certs))
                };
                eprintln!(
                    "  round {round} {:10} {:>10.0} req/s p99 {:>8.0} us cpu {:>6.2} us/req errors {}",
                    t.name, r.report.rps, r.report.p99_us, r.cpu_us_per_req, r.report.errors
                );
                runs[i].push(r);
            }
        }
        let sums: Vec<Summary> = runs.iter().map(|r| summarize(r)).collect();
        let ours = all
            .iter()
            .position(|t| t.name == "ringmesh")
            .map(|i| sums[i].clone())
            .unwrap_or_default();
        let direct = if h2 {
            Summary::default()
        } else {
            sums[0].clone()
        };
        let throughput = scenario == "1mib";
        let _ = writeln!(
            md,
            "| target | {} | ratio to ringmesh | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/req | RSS MiB | errors |",
            if throughput { "MB/s" } else { "requests/s" }
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for (t, s) in all.iter().zip(&sums) {
            let name = if t.name == "backend" {
                "direct (backend)"
            } else {
                &t.name
            };
            let (v, ov) = if throughput {
                (s.mbps, ours.mbps)
            } else {
                (s.rps, ours.rps)
            };
            row(&mut md, name, v, v / ov, s);
        }
        if scenario == "one" {
            let _ = writeln!(md, "\nLatency added over the direct path (p50): ");
            for (t, s) in all.iter().zip(&sums).skip(1) {
                let _ = write!(md, "{} {:.0} µs; ", t.name, s.p50 - direct.p50);
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
    }
    drop(targets);
    drop(backend);
    if let Some(out) = &o.out {
        std::fs::write(out, &md).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(md)
}

/// One row of a results table: the figure, its ratio, then latency, CPU, memory, errors.
fn row(md: &mut String, name: &str, v: f64, ratio: f64, s: &Summary) {
    let _ = writeln!(
        md,
        "| {name} | {v:.0} | {ratio:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {} |",
        s.p50, s.p99, s.p999, s.max, s.cpu_us, s.rss_mib, s.errors
    );
}

/// What the scenarios comparing ringmesh with itself start their proxies from.
struct Variants<'a> {
    ringmesh: &'a Path,
    /// Where configs, logs and process output go.
    dir: &'a Path,
    be_port: u16,
    o: &'a Options,
}

/// Starts a one-worker ringmesh named `name` on `port` in front of `to`, with `cluster` and
/// `listener` as extra YAML members of its cluster and its listener.
fn ringmesh_variant(
    &Variants {
        ringmesh, dir, o, ..
    }: &Variants<'_>,
    (name, port, to): (&str, u16, u16),
    (listener, cluster): (&str, &str),
) -> Result<Target, String> {
    let cfg = format!(
        "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:{port}\n    idle_timeout: 300s\n{listener}    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]\n\
clusters:\n  - {{ name: be, {cluster}endpoints: [ {{ addr: 127.0.0.1:{to} }} ] }}\n"
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, cfg).map_err(|e| e.to_string())?;
    start(
        name,
        o.proxy_cpu,
        &format!(
            "{} proxy --config {} --workers 1 --log-level warn",
            ringmesh.display(),
            file.display()
        ),
        (port, None),
        dir,
    )
}

/// Runs the small-GET load (50 connections) against each variant in interleaved rounds,
/// measuring the CPU of the variant's process and of `with` (processes every variant goes
/// through), and writes a table with ratios to variant `reference`. Returns the runs, by
/// variant.
fn compare_variants(
    md: &mut String,
    (what, reference_name): (&str, &str),
    variants: &[(&str, &Target)],
    with: &[u32],
    reference: usize,
    o: &Options,
) -> Vec<Vec<Run>> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    for round in 0..o.rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let t = variants[i].1;
            let cfg = LoadConfig {
                addr: ([127, 0, 0, 1], t.port).into(),
                warmup: o.warmup,
                duration: o.duration,
                cpus: vec![o.load_cpu],
                connections: 50,
                ..LoadConfig::default()
            };
            let pids: Vec<u32> = std::iter::once(t.child.id())
                .chain(with.iter().copied())
                .collect();
            let r = measure_pids(&pids, || load::run(&cfg));
            eprintln!(
                "  round {round} {:18} {:>10.0} req/s p99 {:>8.0} us cpu {:>6.2} us/req errors {}",
                t.name, r.report.rps, r.report.p99_us, r.cpu_us_per_req, r.report.errors
            );
            runs[i].push(r);
        }
    }
    let sums: Vec<Summary> = runs.iter().map(|r| summarize(r)).collect();
    let ours = sums[reference].clone();
    let both = if with.is_empty() { "" } else { " (both)" };
    let _ = writeln!(
        md,
        "| {what} | requests/s | ratio to {reference_name} | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/req{both} | RSS MiB{both} | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for ((name, _), s) in variants.iter().zip(&sums) {
        row(md, name, s.rps, s.rps / ours.rps, s);
    }
    let _ = writeln!(md);
    runs
}

/// Two ringmesh hops: one receiver in front of the backend, and two senders whose cluster is the
/// receiver, one speaking HTTP/1.1 to it and one upgrading to HTTP/2 (`protocol: mesh`).
fn mesh_scenario(md: &mut String, v: &Variants<'_>) -> Result<(), String> {
    let proxy = |name: &str, to: u16, protocol: &str| {
        let cluster = format!("protocol: {protocol}, ");
        ringmesh_variant(v, (name, free_port(), to), ("", &cluster))
    };
    let receiver = proxy("mesh-receiver", v.be_port, "http1")?;
    let http1 = proxy("mesh-sender-http1", receiver.port, "http1")?;
    let mesh = proxy("mesh-sender-h2", receiver.port, "mesh")?;
    let senders = [
        ("HTTP/1.1 between the proxies", &http1),
        ("HTTP/2 between the proxies (mesh)", &mesh),
    ];
    let what = ("hop between the proxies", "mesh");
    let runs = compare_variants(md, what, &senders, &[receiver.child.id()], 1, v.o);
    // Each proxy's share, for finding which side of the hop costs what.
    let _ = write!(md, "CPU µs/req, sender + receiver (medians):");
    for ((name, _), r) in senders.iter().zip(&runs) {
        let each = |i: usize| median(r.iter().map(|r| r.cpu_us_each[i]).collect());
        let _ = write!(md, " {name}: {:.2} + {:.2};", each(0), each(1));
    }
    let _ = writeln!(md, "\n");
    Ok(())
}

/// What access logging costs: the same ringmesh without an access log and logging every request
/// to a file (in the run's directory), metrics on in both.
fn access_log_scenario(md: &mut String, v: &Variants<'_>) -> Result<(), String> {
    let log = v.dir.join("access.log");
    let on = format!("    access_log: {}\n", log.display());
    let off = ringmesh_variant(v, ("log-off", free_port(), v.be_port), ("", ""))?;
    let on = ringmesh_variant(v, ("log-on", free_port(), v.be_port), (&on, ""))?;
    let variants = [
        ("no access log", &off),
        ("every request logged to a file", &on),
    ];
    let runs = compare_variants(md, ("access log", "no log"), &variants, &[], 0, v.o);
    // Each round's own ratio: the machine's drift between rounds cancels out.
    let per_round = median(
        runs[1]
            .iter()
            .zip(&runs[0])
            .map(|(on, off)| on.report.rps / off.report.rps)
            .collect(),
    );
    // Batches reach the file within 300 ms of their requests.
    std::thread::sleep(Duration::from_millis(500));
    let lines = std::fs::read(&log).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let measured: u64 = runs[1].iter().map(|r| r.report.requests).sum();
    let _ = writeln!(
        md,
        "Median of the rounds' own ratios (logged / not logged): {per_round:.3}. The log holds \
         {lines} lines for {measured} requests measured (and those of the warm-ups).\n"
    );
    Ok(())
}

/// HTTP/2 load from h2load (nghttp2-client), pinned to the load CPU: 10 connections with 10
/// streams each, small GETs, for the warm-up and then the recorded duration.
fn h2load(port: u16, o: &Options) -> Report {
    let out = Command::new("taskset")
        .arg("-c")
        .arg(o.load_cpu.to_string())
        .arg("h2load")
        .args(["-c", "10", "-m", "10", "-t", "1"])
        .arg("--warm-up-time")
        .arg(format!("{}", o.warmup.as_secs().max(1)))
        .arg("-D")
        .arg(format!("{}", o.duration.as_secs().max(1)))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_h2load(&text)
}

/// The figures of an h2load report.
fn parse_h2load(text: &str) -> Report {
    let mut r = Report::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 5.00s, 61234.20 req/s, 1.23MB/s
            let parts: Vec<&str> = rest.split(", ").collect();
            r.seconds = parts
                .first()
                .and_then(|s| s.trim_end_matches('s').parse().ok())
                .unwrap_or(0.0);
            r.rps = parts
                .get(1)
                .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            let num = |key: &str| -> u64 {
                rest.split(", ")
                    .find(|p| p.ends_with(key))
                    .and_then(|p| p.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            r.requests = num("succeeded");
            r.errors = num("failed") + num("errored") + num("timeout");
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min max mean sd +/- sd
            let v: Vec<f64> = rest
                .split_whitespace()
                .filter_map(parse_h2load_time)
                .collect();
            if v.len() >= 3 {
                r.max_us = v[1];
                r.mean_us = v[2];
                r.p50_us = v[2];
            }
        }
    }
    r
}

/// `123us`, `1.23ms`, `1.2s` in microseconds.
fn parse_h2load_time(s: &str) -> Option<f64> {
    if let Some(v) = s.strip_suffix("us") {
        v.parse().ok()
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse::<f64>().ok().map(|v| v * 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().ok().map(|v| v * 1e6)
    } else {
        None
    }
}

/// UTC date and time, without a date crate.
fn chrono_like_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
