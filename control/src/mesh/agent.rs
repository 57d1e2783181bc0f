//! The proxy's side of the control plane: one thread that gets the node its certificate (with
//! its bootstrap token the first time, then by renewing over mTLS), long-polls
//! `GET /v1/watch/{node}`, hands each new snapshot to the control thread (the same parse,
//! compile and two-phase apply as a file reload), reports the outcome, and writes the snapshot
//! it applied to a cache file.
//!
//! Every call goes over TLS to a control plane whose certificate the proxy verifies
//! ([`super::client`]); the node proves who it is with the certificate the mesh CA issued it.
//! Its key is made here and never leaves the process (nor memory, without `--identity-dir`:
//! [`super::keep`]).
//!
//! When the control plane is unreachable the proxy keeps its config, and the watcher tries the
//! next URL after a backoff (100 ms doubling to 5 s, with jitter so that a fleet does not
//! reconnect in step). A proxy started with a cache applies it at once, so it can restart and
//! serve while the control plane is away.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::ca::CaError;
use super::client::{Client, ClientError, Trust};
use super::keep::{Keep, KeepError};
use crate::http::percent_encode;
use crate::shared::{ControlMsg, State};
use ringmesh_core::tls::PemError;

/// Why `--control` and the options that go with it were refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A URL's scheme is neither `https` nor `http`.
    #[error("--control: `{url}`: expected https://HOST:PORT")]
    Scheme { url: String },
    /// A URL holds no `HOST:PORT`.
    #[error("--control: `{url}` is not an address such as https://127.0.0.1:9900")]
    Address { url: String },
    /// No URL was given.
    #[error("--control: at least one address is required")]
    NoUrl,
    /// The node's name is empty.
    #[error("--node: a node name is required")]
    NoNode,
    /// The URLs mix `http://` and `https://`.
    #[error("--control: every URL must have the same scheme")]
    MixedSchemes,
    /// `--insecure-plaintext` with a control plane that is not on this host.
    #[error(
        "--insecure-plaintext: `{host}` is not on this host; cleartext is for a loopback control plane only"
    )]
    NotLoopback { host: String },
    /// `http://` URLs without `--insecure-plaintext`.
    #[error(
        "--control: http:// is cleartext; it needs --insecure-plaintext (and the control plane's too)"
    )]
    Cleartext,
    /// `--control-ca` or `--control-ca-sha256` with `http://` URLs.
    #[error("--control-ca and --control-ca-sha256 need https:// URLs")]
    TrustWithoutTls,
    /// `--insecure-plaintext` with `https://` URLs.
    #[error("--insecure-plaintext needs http:// URLs")]
    PlaintextWithTls,
    /// TLS without a way to verify the control plane's certificate.
    #[error(
        "--control: the control plane's certificate must be verified: give --control-ca FILE or --control-ca-sha256 HEX"
    )]
    Unverified,
}

/// Why a round with the control plane failed, or a snapshot was not applied.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane could not be reached, or did not answer.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The identity could not be kept (`--identity-dir`).
    #[error("{0}")]
    Keep(#[from] KeepError),
    /// No key pair could be made.
    #[error("{0}")]
    Ca(#[from] CaError),
    /// The issued certificate does not go with the node's key.
    #[error("{0}")]
    Pem(#[from] PemError),
    /// The node has no certificate and no bootstrap token to get one.
    #[error(
        "the node has no certificate and the proxy was given no bootstrap token (--token-file or RINGMESH_TOKEN)"
    )]
    NoToken,
    /// The mesh CA refused a certificate, with this status and message.
    #[error("the mesh CA answered {status}: {message}")]
    CaRefused { status: u16, message: String },
    /// The mesh CA's answer is not JSON.
    #[error("invalid answer: {0}")]
    InvalidAnswer(serde_json::Error),
    /// The mesh CA's answer lacks a field.
    #[error("the mesh CA's answer lacks cert, bundle or expires_unix")]
    IncompleteAnswer,
    /// A watch was answered with this status and message.
    #[error("answered {status}: {message}")]
    WatchRefused { status: u16, message: String },
    /// A snapshot is not JSON.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(serde_json::Error),
    /// A snapshot lacks this field.
    #[error("snapshot without a {0}")]
    SnapshotLacks(&'static str),
    /// A snapshot's listener logs to a file on this host.
    #[error(
        "listeners[{listener}].access_log: a control plane's config may log to stdout only, not to a file on this host"
    )]
    LogsToFile { listener: usize },
    /// The proxy is stopping: the snapshot was not applied.
    #[error("the proxy is stopping")]
    Stopping,
    /// The proxy refused the snapshot's config; one message per problem.
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
    /// The snapshot cache cannot be examined.
    #[error("{0}")]
    Cache(std::io::Error),
    /// The snapshot cache is not a regular file.
    #[error("not a regular file")]
    CacheNotAFile,
    /// Another user owns the snapshot cache, or may write to it.
    #[error("owned by user {owner} with mode {mode:o}: another user could have written it")]
    CacheForeign { owner: u32, mode: u32 },
}

/// How long a watch waits on the control plane for a change.
const WAIT: Duration = Duration::from_secs(30);
/// Backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where a proxy gets its config from.
#[derive(Debug, Clone)]
pub struct ControlSource {
    /// Control plane addresses (`host:port`), tried in turn.
    pub urls: Vec<String>,
    /// This proxy's node name in the mesh.
    pub node: String,
    /// Where the last applied snapshot is kept.
    pub cache: Option<PathBuf>,
    /// The bootstrap token that gets this node its first certificate.
    pub token: Option<String>,
    /// Where the issued key, certificate and trust bundle are also written (default: kept in
    /// memory only).
    pub identity_dir: Option<PathBuf>,
    /// How the control plane's certificate is verified (or `Plaintext`).
    pub trust: Trust,
}

impl ControlSource {
    /// Parses `--control URL[,URL...]`: `https://HOST:PORT` (or `HOST:PORT`, the same), or
    /// `http://HOST:PORT` for cleartext, which needs `plaintext` (`--insecure-plaintext`); and
    /// how the control plane is trusted (`--control-ca FILE` or `--control-ca-sha256 HEX`, one
    /// of them for TLS).
    pub fn parse(
        urls: &str,
        node: &str,
        cache: Option<PathBuf>,
        trust: Option<Trust>,
        plaintext: bool,
    ) -> Result<ControlSource, SourceError> {
        let mut out = Vec::new();
        let mut schemes = std::collections::BTreeSet::new();
        for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (scheme, rest) = match u.split_once("://") {
                Some((s, rest)) => (s, rest),
                None => ("https", u),
            };
            if !matches!(scheme, "http" | "https") {
                return Err(SourceError::Scheme { url: u.to_string() });
            }
            schemes.insert(scheme);
            let hostport = rest.split('/').next().unwrap_or_default();
            if hostport
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(SourceError::Address { url: u.to_string() });
            }
            out.push(hostport.to_string());
        }
        if out.is_empty() {
            return Err(SourceError::NoUrl);
        }
        if node.is_empty() {
            return Err(SourceError::NoNode);
        }
        let trust = match (
            schemes.contains("http"),
            schemes.contains("https"),
            plaintext,
            trust,
        ) {
            (true, true, _, _) => {
                return Err(SourceError::MixedSchemes);
            }
            (true, false, true, None) => {
                // Cleartext crosses no network: the control plane must be on this host.
                let on_this_host = |hostport: &String| {
                    let host = hostport
                        .rsplit_once(':')
                        .map_or(hostport.as_str(), |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                };
                if let Some(h) = out.iter().find(|h| !on_this_host(h)) {
                    return Err(SourceError::NotLoopback { host: h.clone() });
                }
                Trust::Plaintext
            }
            (true, false, false, _) => {
                return Err(SourceError::Cleartext);
            }
            (true, false, true, Some(_)) => {
                return Err(SourceError::TrustWithoutTls);
            }
            (false, _, true, _) => {
                return Err(SourceError::PlaintextWithTls);
            }
            (false, _, false, None) => {
                return Err(SourceError::Unverified);
            }
            (false, _, false, Some(t)) => t,
        };
        Ok(ControlSource {
            urls: out,
            node: node.to_string(),
            cache,
            token: None,
            identity_dir: None,
            trust,
        })
    }
}

/// Starts the watcher thread, and the threads that report the node's traffic and relay its
/// taps ([`super::link`]), which ask `workers` for their reports.
pub(crate) fn spawn(
    source: ControlSource,
    control: flume::Sender<ControlMsg>,
    state: Arc<State>,
    workers: Vec<flume::Sender<ringmesh_core::worker::Command>>,
) -> std::io::Result<()> {
    let keep = Keep::new(&source.node, source.identity_dir.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let shared = super::link::Shared {
        urls: Arc::new(source.urls.clone()),
        url: Arc::default(),
        node: source.node.clone(),
        control: control.clone(),
    };
    let mut agent = Agent::new(source, keep, control, state);
    agent.links = Some(super::link::spawn(shared, workers)?);
    std::thread::Builder::new()
        .name("ringmesh-watch".into())
        .spawn(move || agent.run())
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
    client: Client,
    /// The certificate in use: the CA's marks it was issued under, and when to renew it.
    identity: Option<(Marks, SystemTime)>,
    keep: Keep,
    /// A problem with getting a certificate was logged; not again until it changes.
    cert_problem: Option<String>,
    /// The key pair of a first certificate not yet received: asked for again with the same
    /// key, so that a lost answer is answered again instead of spending the token in vain.
    pending_key: Option<(String, String)>,
    /// When the certificate in use expires (unix seconds).
    expires: Option<i64>,
    /// The link threads: told the address in use, and handed the client when it changes.
    links: Option<super::link::Handoff>,
}

/// The CA's trust bundle and issuer, as a snapshot names them.
type Marks = (String, String);

/// What a watch brought.
enum Watched {
    Snapshot(u64, String, Option<Marks>),
    Unchanged,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Agent {
    fn new(
        source: ControlSource,
        keep: Keep,
        control: flume::Sender<ControlMsg>,
        state: Arc<State>,
    ) -> Agent {
        Agent {
            client: Client {
                trust: source.trust.clone(),
                learned: None,
                identity: None,
            },
            identity: None,
            keep,
            source,
            control,
            state,
            seen: None,
            applied: None,
            rng: ringmesh_core::rng::Rng::from_entropy(),
            cert_problem: None,
            pending_key: None,
            expires: None,
            links: None,
        }
    }

    fn tls(&self) -> bool {
        self.source.trust != Trust::Plaintext
    }

    fn run(mut self) {
        self.load_identity();
        self.load_cache();
        let mut url = 0usize;
        let mut failures = 0u32;
        loop {
            let addr = self.source.urls[url % self.source.urls.len()].clone();
            if let Some(l) = &self.links {
                l.using(url);
            }
            let outcome = self.step(&addr);
            if let Some(l) = &mut self.links {
                l.hand_over(&self.client);
            }
            match outcome {
                Ok(()) => failures = 0,
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(control = %addr, error = %e, "control plane unreachable or refusing; keeping the config in force");
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

    /// One round: a certificate if one is needed, then one watch and what it brought.
    fn step(&mut self, addr: &str) -> Result<(), AgentError> {
        if self.expires.is_some_and(|t| now_secs() >= t) {
            // Offline past its certificate's life: the control plane will refuse it; only a
            // (new) bootstrap token gets the node a certificate again.
            tracing::error!(
                "the node's certificate has expired: it needs a bootstrap token again (--token-file or RINGMESH_TOKEN)"
            );
            self.client.identity = None;
            self.identity = None;
            self.expires = None;
        }
        if self.tls() && self.client.identity.is_none() {
            self.bootstrap(addr)?;
        }
        if self.renewal_due() {
            if let Err(e) = self.renew(addr) {
                tracing::warn!(error = %e, "cannot renew the mesh certificate; keeping the one in use");
            }
        }
        let w = self.watch(addr)?;
        self.contact(true);
        if let Watched::Snapshot(version, text, marks) = w {
            tracing::debug!(version, node = %self.source.node, "control plane snapshot received");
            let mut fresh = false;
            let stale = |m: &Marks| self.identity.as_ref().is_none_or(|(have, _)| have != m);
            if self.tls() && marks.as_ref().is_some_and(stale) {
                match self.fetch_identity(addr, false) {
                    Ok(()) => fresh = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot get a certificate from the mesh CA")
                    }
                }
            }
            if !self.tls() && marks.is_some() && self.cert_problem.is_none() {
                let why = "this node has an identity, but certificates are issued over TLS only: its mesh listeners and clusters cannot load";
                tracing::error!("{why}");
                self.cert_problem = Some(why.into());
            }
            match self.apply(version, text, fresh) {
                Some(result) => self.report(addr, version, result.err().map(|e| e.to_string())),
                None => return Ok(()),
            }
        }
        Ok(())
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

    /// Takes the identity a previous run left in `--identity-dir`, if it is this node's: it is
    /// renewed at once (over mTLS with it), so a restart needs no new token.
    fn load_identity(&mut self) {
        let Some((key, cert, bundle)) = self.keep.load() else {
            return;
        };
        let node = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
            .ok()
            .and_then(|der| ringmesh_core::tls::mesh_node(&der));
        if node.as_deref() != Some(self.source.node.as_str()) {
            tracing::warn!("the identity directory holds another node's certificate; ignored");
            return;
        }
        let expires = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
            .ok()
            .and_then(|der| ringmesh_core::tls::not_after(&der));
        if expires.is_none_or(|t| t <= now_secs()) {
            tracing::warn!(
                "the kept certificate has expired; the node needs a bootstrap token again"
            );
            return;
        }
        match ringmesh_core::tls::certified_key_from_pem(cert.as_bytes(), key.as_bytes()) {
            Ok(ck) => {
                if let Err(e) = self.keep.store(&key, &cert, &bundle) {
                    tracing::warn!(error = %e, "cannot keep the identity");
                    return;
                }
                self.expires = expires;
                self.client.identity = Some(ck);
                self.client.learned = Some(bundle.into_bytes());
                self.identity = Some(((String::new(), String::new()), SystemTime::now()));
                tracing::info!("using the identity kept from the last run; renewing it");
            }
            Err(e) => tracing::warn!(error = %e, "the kept identity is unusable; ignored"),
        }
    }

    /// Applies the cached snapshot, if it is this node's and no other user could have
    /// written it.
    fn load_cache(&mut self) {
        let Some(path) = &self.source.cache else {
            return;
        };
        if let Err(e) = private_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "snapshot cache ignored");
            return;
        }
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
    fn renew(&mut self, addr: &str) -> Result<(), AgentError> {
        self.fetch_identity(addr, false)?;
        match &self.applied {
            Some((_, text)) => self.apply_text(text.clone()),
            None => Ok(()),
        }
    }

    /// The node's first certificate, with its bootstrap token.
    fn bootstrap(&mut self, addr: &str) -> Result<(), AgentError> {
        let r = self.fetch_identity(addr, true);
        if let Err(e) = &r {
            // Said once while it stays the same: the proxy keeps trying quietly.
            let said = e.to_string();
            if self.cert_problem.as_ref() != Some(&said) {
                tracing::error!(error = %said, "this node cannot get its certificate: it cannot watch the control plane");
                self.cert_problem = Some(said);
            }
        } else {
            self.cert_problem = None;
        }
        r
    }

    /// Asks the mesh CA for a certificate over a new key: with the bootstrap token
    /// (`bootstrap`), or over mTLS with the certificate in use. Keeps key, certificate and
    /// trust bundle.
    fn fetch_identity(&mut self, addr: &str, bootstrap: bool) -> Result<(), AgentError> {
        let header = if bootstrap {
            let token = self.source.token.as_deref().ok_or(AgentError::NoToken)?;
            format!("authorization: Bearer {token}\r\n")
        } else {
            String::new()
        };
        // A first certificate is asked for with the same key until it comes.
        let (key_pem, public) = match (&self.pending_key, bootstrap) {
            (Some(k), true) => k.clone(),
            _ => super::ca::new_key()?,
        };
        if bootstrap {
            self.pending_key = Some((key_pem.clone(), public.clone()));
        }
        let body = serde_json::json!({ "public_key": public }).to_string();
        let path = format!(
            "/v1/nodes/{}/certificate",
            percent_encode(&self.source.node)
        );
        let mut client = self.client.clone();
        if bootstrap {
            client.identity = None;
        }
        let (status, resp) = client.request(
            addr,
            "POST",
            &path,
            Some(body.as_bytes()),
            Duration::from_secs(10),
            &header,
        )?;
        if status != 200 {
            return Err(AgentError::CaRefused {
                status,
                message: String::from_utf8_lossy(&resp[..resp.len().min(300)])
                    .trim()
                    .to_string(),
            });
        }
        let v: Value = serde_json::from_slice(&resp).map_err(AgentError::InvalidAnswer)?;
        let (Some(cert), Some(bundle), Some(expires)) = (
            v["cert"].as_str(),
            v["bundle"].as_str(),
            v["expires_unix"].as_i64(),
        ) else {
            return Err(AgentError::IncompleteAnswer);
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
        let ck = ringmesh_core::tls::certified_key_from_pem(cert.as_bytes(), key_pem.as_bytes())?;
        self.keep.store(&key_pem, cert, bundle)?;
        self.pending_key = None;
        self.expires = Some(expires);
        self.client.identity = Some(ck);
        self.client.learned = Some(bundle.as_bytes().to_vec());
        // Renewed at half its life, give or take a tenth, so that a fleet spreads out.
        let life = (expires - now_secs()).max(1) as f64;
        let half = life * (0.4 + f64::from(self.rng.below(1000)) / 5000.0);
        let renew_at = SystemTime::now() + Duration::from_secs_f64(half);
        tracing::info!(
            identity = v["identity"].as_str().unwrap_or_default(),
            expires,
            bootstrap,
            "mesh certificate issued"
        );
        self.identity = Some((marks, renew_at));
        Ok(())
    }

    /// One long-poll; it ends in time for the next certificate renewal.
    fn watch(&mut self, addr: &str) -> Result<Watched, AgentError> {
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
        let timeout = wait + Duration::from_secs(10);
        let (status, body) = self.client.request(addr, "GET", &path, None, timeout, "")?;
        match status {
            200 => {
                let v: Value =
                    serde_json::from_slice(&body).map_err(AgentError::InvalidSnapshot)?;
                let version = v["version"]
                    .as_u64()
                    .ok_or(AgentError::SnapshotLacks("version"))?;
                let config = v.get("config").ok_or(AgentError::SnapshotLacks("config"))?;
                let marks = v.get("identity").map(|i| {
                    (
                        i["bundle"].as_str().unwrap_or_default().to_string(),
                        i["issuer"].as_str().unwrap_or_default().to_string(),
                    )
                });
                Ok(Watched::Snapshot(version, config.to_string(), marks))
            }
            304 => Ok(Watched::Unchanged),
            _ => Err(AgentError::WatchRefused {
                status,
                message: String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_string(),
            }),
        }
    }

    /// Applies a snapshot through the control thread (again even if unchanged when `fresh`: a
    /// new certificate is loaded that way); `None` when the proxy is stopping.
    fn apply(&mut self, version: u64, text: String, fresh: bool) -> Option<Result<(), AgentError>> {
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

    /// Hands the config to the control thread, with where the identity is put in place. A
    /// config that names a file for an access log is refused here, whatever sent it (the
    /// cache, a control plane): the control plane never names files on proxy hosts.
    fn apply_text(&self, text: String) -> Result<(), AgentError> {
        names_no_files(&text)?;
        let at = Value::String(self.keep.location()).to_string();
        // Inside a JSON string: the location without its quotes.
        let at = &at[1..at.len() - 1];
        let text = text.replace(super::model::IDENTITY_DIR, at);
        let (tx, rx) = flume::bounded(1);
        self.control
            .send(ControlMsg::Apply { text, reply: tx })
            .map_err(|_| AgentError::Stopping)?;
        rx.recv()
            .map_err(|_| AgentError::Stopping)?
            .map(|_| ())
            .map_err(AgentError::Refused)
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
        let tmp = PathBuf::from(tmp);
        // A new file only this user can read and write (no link followed), then renamed.
        let r = {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let _ = std::fs::remove_file(&tmp);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .and_then(|()| std::fs::rename(&tmp, path))
        };
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the snapshot cache");
        }
    }

    /// Tells the control plane what became of a snapshot (best effort: the next watch carries
    /// the applied version too).
    fn report(&self, addr: &str, version: u64, error: Option<String>) {
        let body = serde_json::json!({ "version": version, "error": error }).to_string();
        let path = format!("/v1/nodes/{}/report", percent_encode(&self.source.node));
        let r = self.client.request(
            addr,
            "POST",
            &path,
            Some(body.as_bytes()),
            Duration::from_secs(5),
            "",
        );
        if let Err(e) = r {
            tracing::debug!(error = %e, "cannot report to the control plane");
        }
    }
}

use rustls_pki_types::pem::PemObject as _;

/// Refuses a config that names a file for an access log (a control plane's config goes to
/// stdout only).
fn names_no_files(text: &str) -> Result<(), AgentError> {
    let v: Value = serde_json::from_str(text).map_err(AgentError::InvalidSnapshot)?;
    for (i, l) in v["listeners"].as_array().into_iter().flatten().enumerate() {
        let Some(log) = l.get("access_log") else {
            continue;
        };
        let target = log.as_str().or_else(|| log.get("path")?.as_str());
        if target != Some("stdout") {
            return Err(AgentError::LogsToFile { listener: i });
        }
    }
    Ok(())
}

/// A file this user owns and nobody else may write.
fn private_file(path: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::symlink_metadata(path).map_err(AgentError::Cache)?;
    if !m.is_file() {
        return Err(AgentError::CacheNotAFile);
    }
    if m.uid() != ringmesh_core::sys::euid() || m.mode() & 0o022 != 0 {
        return Err(AgentError::CacheForeign {
            owner: m.uid(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}
