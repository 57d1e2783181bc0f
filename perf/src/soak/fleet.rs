//! The processes of a soak: three endpoints (`ringmesh-upstream`) that the faults kill,
//! restart, freeze and thaw, and the proxy under test, whose config file is rewritten for
//! reloads (every few seconds, and now and then with an invalid one).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An endpoint process.
#[derive(Debug)]
pub struct Endpoint {
    pub port: u16,
    child: Option<Child>,
    bin: PathBuf,
    frozen: bool,
}

impl Endpoint {
    /// Starts `ringmesh-upstream` on `port` and waits until it listens.
    pub fn start(bin: &Path, port: u16) -> Result<Endpoint, String> {
        let mut e = Endpoint {
            port,
            child: None,
            bin: bin.to_path_buf(),
            frozen: false,
        };
        e.restart()?;
        Ok(e)
    }

    /// Kills it (SIGKILL: no goodbye to the connections it holds).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                signal(c.id(), "CONT");
                self.frozen = false;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let child = Command::new(&self.bin)
            .args(["--addr", &format!("127.0.0.1:{}", self.port), "--size", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        self.child = Some(child);
        if !wait_port(self.port, Duration::from_secs(10)) {
            return Err(format!("endpoint :{} did not start", self.port));
        }
        Ok(())
    }

    /// SIGSTOP: it keeps its connections and answers nothing.
    pub fn freeze(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), "STOP");
            self.frozen = true;
        }
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), "CONT");
            self.frozen = false;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Waits until something accepts on `port`.
pub fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// Where the proxy listens.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The listener the counted clients use (HTTP/1.1 and HTTP/2).
    pub main: u16,
    /// Slowloris's own listener.
    pub slow: u16,
    pub admin: u16,
}

/// The proxy under test and its config file.
#[derive(Debug)]
pub struct Proxy {
    pub ports: Ports,
    pub config: PathBuf,
    pub log: PathBuf,
    endpoints: Vec<u16>,
    child: Child,
    /// Config versions written so far (each reload changes a route's timeout).
    pub version: u32,
}

impl Proxy {
    /// Starts `ringmesh proxy` (one worker) in front of `endpoints`.
    pub fn start(bin: &Path, dir: &Path, endpoints: Vec<u16>) -> Result<Proxy, String> {
        let ports = Ports {
            main: free_port(),
            slow: free_port(),
            admin: free_port(),
        };
        let config = dir.join("ringmesh.yaml");
        let log = dir.join("access.log");
        let text = config_text(ports, &endpoints, &log, 0);
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(dir.join("ringmesh.out")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["proxy", "--config"])
            .arg(&config)
            .args(["--workers", "1", "--log-level", "warn"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if !wait_port(ports.main, Duration::from_secs(10)) {
            return Err("the proxy did not start: see ringmesh.out".into());
        }
        Ok(Proxy {
            ports,
            config,
            log,
            endpoints,
            child,
            version: 0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Rewrites the config: a valid change, or (`invalid`) a file the proxy must refuse while
    /// keeping the config in force.
    pub fn reload(&mut self, invalid: bool) -> Result<(), String> {
        self.version += 1;
        let text = if invalid {
            "listeners:\n  - name: soak\n    bind: not-an-address\n    routes: []\n".to_string()
        } else {
            config_text(self.ports, &self.endpoints, &self.log, self.version)
        };
        // Written whole under another name and renamed: the watcher never reads half a file.
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &self.config).map_err(|e| e.to_string())
    }

    /// The admin API's metrics text.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.ports.admin)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's config: the main listener with retries and a per-try timeout (so that a frozen
/// endpoint costs one timeout, then another endpoint), slowloris's listener with a short head
/// timeout, outlier ejection, short-lived pools (so that descriptors drain in the cool-down).
fn config_text(ports: Ports, endpoints: &[u16], log: &Path, version: u32) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("{{ addr: 127.0.0.1:{p} }}"))
        .collect();
    // Each reload changes the route's timeout, so that the proxy really builds a new config.
    let timeout = 20 + version % 2;
    format!(
        "admin: 127.0.0.1:{admin}
listeners:
  - name: soak
    bind: 127.0.0.1:{main}
    access_log: {log}
    routes:
      - match: {{ path_prefix: / }}
        cluster: be
        timeout: {timeout}s
        retry: {{ attempts: 2, per_try_timeout: 1s, on: [connect-failure, reset] }}
  - name: slow
    bind: 127.0.0.1:{slow}
    request_head_timeout: 5s
    access_log: {log}
    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]
clusters:
  - name: be
    connect_timeout: 1s
    pool_idle_timeout: 5s
    outlier: {{ consecutive_failures: 3, base_ejection: 5s }}
    endpoints: [ {eps} ]
",
        admin = ports.admin,
        main = ports.main,
        slow = ports.slow,
        log = log.display(),
        eps = eps.join(", "),
    )
}
