//! The proxy's side of the control plane: one thread that long-polls `GET /v1/watch/{node}`,
//! hands each new snapshot to the control thread (the same parse, compile and two-phase apply as
//! a file reload), reports the outcome, and writes the snapshot it applied to a cache file.
//!
//! When the control plane is unreachable the proxy keeps its config, and the watcher tries the
//! next URL after a backoff (100 ms doubling to 5 s, with jitter so that a fleet does not
//! reconnect in step). A proxy started with a cache applies it at once, so it can restart and
//! serve while the control plane is away.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::http::percent_encode;
use crate::runtime::{ControlMsg, State};

/// How long a watch waits on the control plane for a change.
const WAIT: Duration = Duration::from_secs(30);
/// Backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest snapshot accepted.
const MAX_SNAPSHOT: usize = 64 * 1024 * 1024;

/// Where a proxy gets its config from.
#[derive(Debug, Clone)]
pub struct ControlSource {
    /// Control plane addresses (`host:port`, with or without `http://`), tried in turn.
    pub urls: Vec<String>,
    /// This proxy's node name in the mesh.
    pub node: String,
    /// Where the last applied snapshot is kept.
    pub cache: Option<PathBuf>,
    /// The bootstrap token that proves this node's identity to the mesh CA.
    pub token: Option<String>,
    /// Where the issued key, certificate and trust bundle are written (default: a private
    /// directory under the system's temporary directory).
    pub identity_dir: Option<PathBuf>,
}

impl ControlSource {
    /// Parses `--control URL[,URL...]`.
    pub fn parse(urls: &str, node: &str, cache: Option<PathBuf>) -> Result<ControlSource, String> {
        let mut out = Vec::new();
        for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if u.starts_with("https://") {
                return Err(format!("--control: `{u}`: only http:// is supported"));
            }
            let hostport = u.strip_prefix("http://").unwrap_or(u);
            let hostport = hostport.split('/').next().unwrap_or_default();
            if hostport
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!(
                    "--control: `{u}` is not an address such as 127.0.0.1:9900"
                ));
            }
            out.push(hostport.to_string());
        }
        if out.is_empty() {
            return Err("--control: at least one address is required".into());
        }
        if node.is_empty() {
            return Err("--node: a node name is required".into());
        }
        Ok(ControlSource {
            urls: out,
            node: node.to_string(),
            cache,
            token: None,
            identity_dir: None,
        })
    }
}

/// Starts the watcher thread.
pub(crate) fn spawn(
    source: ControlSource,
    control: flume::Sender<ControlMsg>,
    state: Arc<State>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringmesh-watch".into())
        .spawn(move || Agent::new(source, control, state).run())
        .map(|_| ())
}

struct Agent {
    source: ControlSource,
    control: flume::Sender<ControlMsg>,
    state: Arc<State>,
    /// The last version seen (applied or refused).
    seen: Option<u64>,
    /// The last version applied, and its config text.
    applied: Option<(u64, String)>,
    rng: ringmesh_core::rng::Rng,
    /// The certificate in use: the CA's marks it was issued under, and when to renew it.
    identity: Option<(Marks, SystemTime)>,
    /// Where it is written.
    dir: PathBuf,
}

/// The CA's trust bundle and issuer, as a snapshot names them.
type Marks = (String, String);

/// What a watch brought.
enum Watched {
    Snapshot(u64, String, Option<Marks>),
    Unchanged,
}

impl Agent {
    fn new(source: ControlSource, control: flume::Sender<ControlMsg>, state: Arc<State>) -> Agent {
        let dir = source.identity_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "ringmesh-identity-{}-{}",
                percent_encode(&source.node),
                std::process::id()
            ))
        });
        Agent {
            identity: None,
            dir,
            source,
            control,
            state,
            seen: None,
            applied: None,
            rng: ringmesh_core::rng::Rng::from_entropy(),
        }
    }

    fn run(mut self) {
        self.load_cache();
        let mut url = 0usize;
        let mut failures = 0u32;
        loop {
            let addr = self.source.urls[url % self.source.urls.len()].clone();
            if self.renewal_due() {
                if let Err(e) = self.renew(&addr) {
                    tracing::warn!(error = %e, "cannot renew the mesh certificate; keeping the one in use");
                }
            }
            match self.watch(&addr) {
                Ok(w) => {
                    failures = 0;
                    self.contact(true);
                    if let Watched::Snapshot(version, text, marks) = w {
                        tracing::debug!(version, node = %self.source.node, "control plane snapshot received");
                        let mut fresh = false;
                        let stale =
                            |m: &Marks| self.identity.as_ref().is_none_or(|(have, _)| have != m);
                        if marks.as_ref().is_some_and(stale) {
                            match self.fetch_identity(&addr) {
                                Ok(()) => fresh = true,
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot get a certificate from the mesh CA")
                                }
                            }
                        }
                        match self.apply(version, text, fresh) {
                            Some(result) => self.report(&addr, version, result.err()),
                            None => return,
                        }
                    }
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(control = %addr, error = %e, "control plane unreachable; keeping the config in force");
                    }
                    self.contact(false);
                    failures = failures.saturating_add(1);
                    url += 1;
                    let backoff = BACKOFF_MIN
                        .saturating_mul(1 << failures.min(6))
                        .min(BACKOFF_MAX);
                    // Between half and all of the backoff.
                    let jitter = 0.5 + f64::from(self.rng.below(1000)) / 2000.0;
                    std::thread::sleep(backoff.mul_f64(jitter));
                }
            }
            if self.control.is_disconnected() {
                return;
            }
        }
    }

    fn contact(&self, ok: bool) {
        self.state.control_connected.store(ok, Ordering::Relaxed);
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.state
                .control_contact_unix_ms
                .store(now, Ordering::Relaxed);
        }
    }

    /// Applies the cached snapshot, if it is this node's.
    fn load_cache(&mut self) {
        let Some(path) = &self.source.cache else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!(path = %path.display(), "snapshot cache unreadable; ignored");
            return;
        };
        if v["node"].as_str() != Some(self.source.node.as_str()) {
            tracing::warn!(path = %path.display(), "snapshot cache is another node's; ignored");
            return;
        }
        let (Some(version), Some(config)) = (v["version"].as_u64(), v.get("config")) else {
            return;
        };
        tracing::info!(
            version,
            "applying the cached snapshot until the control plane answers"
        );
        let _ = self.apply(version, config.to_string(), false);
    }

    fn renewal_due(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|(_, at)| SystemTime::now() >= *at)
    }

    /// Renews the certificate and applies the config in force again, so that listeners and
    /// clusters load it.
    fn renew(&mut self, addr: &str) -> Result<(), String> {
        self.fetch_identity(addr)?;
        match &self.applied {
            Some((_, text)) => self.apply_text(text.clone()),
            None => Ok(()),
        }
    }

    /// Asks the mesh CA for a certificate over a new key, and writes key, certificate and
    /// trust bundle to the identity directory.
    fn fetch_identity(&mut self, addr: &str) -> Result<(), String> {
        let token = self
            .source
            .token
            .as_deref()
            .ok_or("this node has an identity in the mesh but the proxy was given no token (--token-file or RINGMESH_TOKEN)")?;
        let (key_pem, public) = super::ca::new_key()?;
        let body = serde_json::json!({ "public_key": public }).to_string();
        let path = format!(
            "/v1/nodes/{}/certificate",
            percent_encode(&self.source.node)
        );
        let (status, resp) = request_with(
            addr,
            "POST",
            &path,
            Some(body.as_bytes()),
            Duration::from_secs(10),
            &format!("authorization: Bearer {token}\r\n"),
        )?;
        if status != 200 {
            return Err(format!(
                "the mesh CA answered {status}: {}",
                String::from_utf8_lossy(&resp[..resp.len().min(200)]).trim()
            ));
        }
        let v: Value = serde_json::from_slice(&resp).map_err(|e| format!("invalid answer: {e}"))?;
        let (Some(cert), Some(bundle), Some(expires)) = (
            v["cert"].as_str(),
            v["bundle"].as_str(),
            v["expires_unix"].as_i64(),
        ) else {
            return Err("the mesh CA's answer lacks cert, bundle or expires_unix".into());
        };
        let marks = (
            v["marks"]["bundle"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            v["marks"]["issuer"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        write_identity(&self.dir, &key_pem, cert, bundle)?;
        // Renewed at half its life, give or take a tenth, so that a fleet spreads out.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let life = (expires - now).max(1) as f64;
        let half = life * (0.4 + f64::from(self.rng.below(1000)) / 5000.0);
        let renew_at = SystemTime::now() + Duration::from_secs_f64(half);
        tracing::info!(
            identity = v["identity"].as_str().unwrap_or_default(),
            expires,
            "mesh certificate issued"
        );
        self.identity = Some((marks, renew_at));
        Ok(())
    }

    /// One long-poll; it ends in time for the next certificate renewal.
    fn watch(&mut self, addr: &str) -> Result<Watched, String> {
        let wait = match &self.identity {
            Some((_, at)) => at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .clamp(Duration::from_secs(1), WAIT),
            None => WAIT,
        };
        let mut path = format!(
            "/v1/watch/{}?wait={}ms",
            percent_encode(&self.source.node),
            wait.as_millis()
        );
        if let Some(v) = self.seen {
            path.push_str(&format!("&version={v}"));
        }
        if let Some((v, _)) = &self.applied {
            path.push_str(&format!("&applied={v}"));
        }
        let (status, body) = request(addr, "GET", &path, None, wait + Duration::from_secs(10))?;
        match status {
            200 => {
                let v: Value =
                    serde_json::from_slice(&body).map_err(|e| format!("invalid snapshot: {e}"))?;
                let version = v["version"].as_u64().ok_or("snapshot without a version")?;
                let config = v.get("config").ok_or("snapshot without a config")?;
                let marks = v.get("identity").map(|i| {
                    (
                        i["bundle"].as_str().unwrap_or_default().to_string(),
                        i["issuer"].as_str().unwrap_or_default().to_string(),
                    )
                });
                Ok(Watched::Snapshot(version, config.to_string(), marks))
            }
            304 => Ok(Watched::Unchanged),
            _ => Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
        }
    }

    /// Applies a snapshot through the control thread (again even if unchanged when `fresh`: a
    /// new certificate is loaded that way); `None` when the proxy is stopping.
    fn apply(&mut self, version: u64, text: String, fresh: bool) -> Option<Result<(), String>> {
        self.seen = Some(version);
        let result = if !fresh && self.applied.as_ref().is_some_and(|(_, t)| *t == text) {
            // Same config under a new version (a change elsewhere in the mesh).
            Ok(())
        } else {
            if self.control.is_disconnected() {
                return None;
            }
            self.apply_text(text.clone())
        };
        match &result {
            Ok(()) => {
                self.state.control_version.store(version, Ordering::Relaxed);
                self.write_cache(version, &text);
                self.applied = Some((version, text));
                tracing::info!(version, "control plane snapshot applied");
            }
            Err(e) => {
                tracing::error!(version, error = %e, "control plane snapshot refused; the config in force stays");
            }
        }
        Some(result)
    }

    /// Hands the config to the control thread, the identity directory put in place.
    fn apply_text(&self, text: String) -> Result<(), String> {
        let dir = Value::String(self.dir.display().to_string()).to_string();
        // Inside a JSON string: the directory without its quotes.
        let dir = &dir[1..dir.len() - 1];
        let text = text.replace(super::model::IDENTITY_DIR, dir);
        let (tx, rx) = flume::bounded(1);
        self.control
            .send(ControlMsg::Apply { text, reply: tx })
            .map_err(|_| "the proxy is stopping".to_string())?;
        rx.recv()
            .map_err(|_| "the proxy is stopping".to_string())?
            .map(|_| ())
            .map_err(|errs| errs.join("; "))
    }

    fn write_cache(&self, version: u64, config: &str) {
        let Some(path) = &self.source.cache else {
            return;
        };
        let text = format!(
            "{{\"node\":{},\"version\":{version},\"config\":{config}}}\n",
            Value::String(self.source.node.clone())
        );
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the snapshot cache");
        }
    }

    /// Tells the control plane what became of a snapshot (best effort: the next watch carries
    /// the applied version too).
    fn report(&self, addr: &str, version: u64, error: Option<String>) {
        let body = serde_json::json!({ "version": version, "error": error }).to_string();
        let path = format!("/v1/nodes/{}/report", percent_encode(&self.source.node));
        if let Err(e) = request(
            addr,
            "POST",
            &path,
            Some(body.as_bytes()),
            Duration::from_secs(5),
        ) {
            tracing::debug!(error = %e, "cannot report to the control plane");
        }
    }
}

/// Writes the identity files: the key readable by the proxy's user only; each file replaced in
/// one step.
fn write_identity(
    dir: &std::path::Path,
    key: &str,
    cert: &str,
    bundle: &str,
) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, data, mode) in [
        ("key.pem", key, 0o600),
        ("cert.pem", cert, 0o644),
        ("bundle.pem", bundle, 0o644),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// One HTTP/1.1 exchange on a new connection; returns the status and the body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    request_with(addr, method, path, body, timeout, "")
}

/// [`request`] with extra header lines (each ending in CRLF).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
    headers: &str,
) -> Result<(u16, Vec<u8>), String> {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or_default();
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n{headers}",
        body.len()
    )
    .into_bytes();
    if !body.is_empty() {
        out.extend_from_slice(b"content-type: application/json\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    s.write_all(&out).map_err(|e| format!("{addr}: {e}"))?;
    // The answer is complete before the server's close arrives.
    let (status, body, _) =
        super::http::read_answer(&mut s, MAX_SNAPSHOT).map_err(|e| format!("{addr}: {e}"))?;
    Ok((status, body))
}
