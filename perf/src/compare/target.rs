//! The processes measured: the backend and each proxy, started pinned to a CPU in a cgroup of
//! their own (so that every process they run is counted, across restarts), and their configs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::Group;
use crate::procfs;
use crate::tls::CertFiles;

/// A process to measure: the backend, or a proxy.
pub struct Target {
    pub name: String,
    pub port: u16,
    /// The same proxy terminating TLS (ECDSA P-256 certificate), if it does.
    pub tls_port: Option<u16>,
    /// Where it serves HTTP/2 in cleartext (prior knowledge), if it does.
    pub h2_port: Option<u16>,
    child: Child,
    /// Where its CPU time is counted; `None` where no cgroup can be made (then its process
    /// tree is read from /proc, which misses processes that exit during a run).
    group: Option<Arc<Group>>,
    /// How it was started, to start it again.
    cpu: usize,
    cmd: String,
    dir: PathBuf,
}

/// How a target's cost is read.
#[derive(Clone)]
pub enum Meter {
    /// Everything that ran in its cgroup.
    Group(Arc<Group>),
    /// The live process tree under this pid.
    Tree(u32),
}

impl Meter {
    /// CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        match self {
            Meter::Group(g) => g.cpu_seconds(),
            Meter::Tree(pid) => procfs::tree_cpu_seconds(*pid),
        }
    }

    /// Resident memory of its processes now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        match self {
            Meter::Group(g) => g.pids().into_iter().map(procfs::rss_kib).sum(),
            Meter::Tree(pid) => procfs::tree_rss_kib(*pid),
        }
    }
}

impl Target {
    /// Starts `cmd` (a shell command) pinned to `cpu`, its output in `dir/NAME.log`, and waits
    /// until it listens on `port` (and `tls_port`).
    pub fn start(
        name: &str,
        cpu: usize,
        cmd: &str,
        (port, tls_port): (u16, Option<u16>),
        dir: &Path,
    ) -> Result<Target, String> {
        let group = match Group::new(name) {
            Ok(g) => Some(Arc::new(g)),
            Err(e) => {
                eprintln!("{name}: CPU read from /proc (no cgroup: {e})");
                None
            }
        };
        let child = spawn_pinned(cpu, cmd, group.as_deref(), &log_of(dir, name))?;
        let t = Target {
            name: name.into(),
            port,
            tls_port,
            h2_port: None,
            cpu,
            cmd: cmd.into(),
            dir: dir.into(),
            child,
            group,
        };
        t.wait_ready()?;
        Ok(t)
    }

    /// Starts `cmd` without waiting for a port: a target that does its work and exits (see
    /// [`Target::wait`]).
    pub fn run(name: &str, cpu: usize, cmd: &str, dir: &Path) -> Result<Target, String> {
        let group = Group::new(name).map(Arc::new).ok();
        let child = spawn_pinned(cpu, cmd, group.as_deref(), &log_of(dir, name))?;
        Ok(Target {
            name: name.into(),
            port: 0,
            tls_port: None,
            h2_port: None,
            cpu,
            cmd: cmd.into(),
            dir: dir.into(),
            child,
            group,
        })
    }

    /// Whether the target's first process has exited (and reaps it if so).
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// How its cost is read.
    pub fn meter(&self) -> Meter {
        match &self.group {
            Some(g) => Meter::Group(g.clone()),
            None => Meter::Tree(self.child.id()),
        }
    }

    /// Its first process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether its CPU is read from a cgroup.
    pub fn counted_by_cgroup(&self) -> bool {
        self.group.is_some()
    }

    fn kill(&mut self) {
        // nginx and HAProxy leave workers behind if only the master is killed.
        for pid in procfs::tree(self.child.id()).into_iter().rev() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.wait();
        if let Some(g) = &self.group {
            g.kill_all();
        }
    }

    /// A fresh process: memory measurements must not reuse what earlier scenarios freed. It
    /// goes into the same cgroup, so CPU is still counted whole.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        // The ports are free once the old process is gone.
        std::thread::sleep(Duration::from_millis(300));
        self.child = spawn_pinned(
            self.cpu,
            &self.cmd,
            self.group.as_deref(),
            &log_of(&self.dir, &self.name),
        )?;
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        if !wait_port(self.port) || !self.tls_port.is_none_or(wait_port) {
            return Err(format!(
                "{} did not start: see {}",
                self.name,
                log_of(&self.dir, &self.name).display()
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

fn log_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// `sh -c` running `cmd` on `cpu`, inside `group` when there is one.
fn spawn_pinned(cpu: usize, cmd: &str, group: Option<&Group>, log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let enter = group.map_or_else(String::new, |g| format!("{} && ", g.enter_command()));
    Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg("sh")
        .arg("-c")
        .arg(format!("{enter}exec {cmd}"))
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))
}

pub fn free_port() -> u16 {
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

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs nginx, HAProxy, h2load and wrk from Debian's packages when missing.
pub fn install_peers() -> Result<(), String> {
    let all = || have("nginx") && have("haproxy") && have("h2load") && have("wrk");
    if all() {
        return Ok(());
    }
    eprintln!("installing nginx, haproxy, h2load and wrk (apt-get)");
    let ok = Command::new("sh")
        .arg("-c")
        .arg("export DEBIAN_FRONTEND=noninteractive; P='nginx haproxy nghttp2-client wrk'; (apt-get install -y -q $P || (apt-get update -q && apt-get install -y -q $P)) >/dev/null")
        .status()
        .is_ok_and(|s| s.success());
    if ok && all() {
        Ok(())
    } else {
        Err("cannot install nginx, haproxy, h2load and wrk".into())
    }
}

/// Builds `target/release/ringmesh` and `ringmesh-relay` beside it (release profile) and returns
/// the proxy's path.
pub fn build_ringmesh() -> Result<PathBuf, String> {
    let ok = crate::build_release(&[
        ("ringmesh-control", "ringmesh"),
        ("ringmesh-perf", "ringmesh-relay"),
    ]);
    let bin = crate::workspace().join("target/release/ringmesh");
    if ok && bin.exists() {
        Ok(bin)
    } else {
        Err("cannot build target/release/ringmesh".into())
    }
}

pub fn backend_config(dir: &Path, port: u16) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/backend.pid;\nerror_log {d}/backend.err warn;\nworker_rlimit_nofile 65536;\n\
events {{ worker_connections 32768; }}\n\
http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  sendfile on;\n  client_max_body_size 16m;\n  client_body_buffer_size 256k;\n\
  server {{\n    listen 127.0.0.1:{port} reuseport backlog=4096;\n    root {d}/www;\n\
    location = / {{ return 200 \"ok\"; }}\n    location = /1m {{ }}\n    location = /upload {{ return 200 \"ok\"; }}\n  }}\n}}\n",
        d = dir.display()
    )
}

pub fn nginx_proxy_config(
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

pub fn haproxy_config((port, tls, h2): (u16, u16, u16), backend: u16, certs: &CertFiles) -> String {
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

pub fn hard_fd_limit() -> u64 {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -Hn")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(20_000)
}

pub fn ringmesh_config((port, tls): (u16, u16), backend: u16, certs: &CertFiles) -> String {
    format!(
        "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:{port}\n    idle_timeout: 300s\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]\n  \
- name: edge-tls\n    bind: 127.0.0.1:{tls}\n    idle_timeout: 300s\n    tls: {{ certs: [ {{ cert: {cert}, key: {key} }} ] }}\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]\n\
clusters:\n  - {{ name: be, endpoints: [ {{ addr: 127.0.0.1:{backend} }} ] }}\n",
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}
