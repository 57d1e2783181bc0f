//! A small etcd v3 client over etcd's JSON gateway (HTTP/1.1 on the client port): what the
//! replicated control plane needs (ranges, puts, transactions, leases, a prefix watch), with no
//! gRPC stack. Blocking: it runs on the control plane's store threads, never on its runtime.
//!
//! Keys and values travel base64-encoded and 64-bit numbers as strings, as the gateway wants.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::http::{Unanswered, read_answer};
use ringmesh_core::http1::ChunkedDecoder;
use ringmesh_core::tls::TlsError;

/// Largest answer read (a range of the whole prefix included).
const MAX_ANSWER: usize = 256 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A key and its value as stored.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone)]
pub enum Event {
    Put(Kv),
    /// The key, and the revision of its deletion in `mod_revision`.
    Delete(Kv),
}

/// Why etcd's options were refused, a call failed, or a watch ended. [`EtcdError::unavailable`]
/// tells what is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An etcd URL is not `http(s)://HOST:PORT`.
    #[error("`{url}`: expected an etcd client URL such as http://127.0.0.1:2379")]
    Url { url: String },
    /// The URLs mix `http://` and `https://`.
    #[error("every etcd URL must have the same scheme")]
    MixedSchemes,
    /// `https://` URLs without `--etcd-ca`.
    #[error("https:// needs the CA of etcd's certificate (--etcd-ca)")]
    NoCa,
    /// The CA or client certificate files are unusable.
    #[error("{}", client_tls(.0))]
    ClientTls(TlsError),
    /// A CA or client certificate with `http://` URLs.
    #[error("a CA or client certificate needs https:// URLs")]
    TlsWithoutHttps,
    /// An endpoint's address does not resolve.
    #[error("{endpoint}: {source}")]
    Resolve {
        endpoint: String,
        source: std::io::Error,
    },
    /// An endpoint's address resolves to nothing.
    #[error("{endpoint}: no address")]
    NoAddress { endpoint: String },
    /// A connection to an endpoint cannot be made.
    #[error("{endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    /// An endpoint's host is not a name its certificate can be checked against.
    #[error("{endpoint}: {source}")]
    ServerName {
        endpoint: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// A TLS session with an endpoint cannot be started.
    #[error("{endpoint}: {source}")]
    Session {
        endpoint: String,
        source: rustls::Error,
    },
    /// A connection cannot be set up (its timeouts), or it failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No endpoint to call.
    #[error("no etcd endpoint")]
    NoEndpoint,
    /// An endpoint gave no (whole, well-formed) answer.
    #[error("{0}")]
    Unanswered(#[from] Unanswered),
    /// No endpoint answered; the last one's failure (worth retrying).
    #[error("etcd: {0}")]
    Unreachable(Box<EtcdError>),
    /// TLS with etcd failed (a certificate refused either way): it will not pass by itself.
    #[error("etcd: TLS: {0}")]
    Tls(std::io::Error),
    /// etcd's answer is not JSON.
    #[error("etcd: malformed answer: {0}")]
    Malformed(serde_json::Error),
    /// etcd answered with an error status and this message (503: worth retrying).
    #[error("etcd: {message}")]
    Refused { status: u16, message: String },
    /// A call did not end in time (worth retrying).
    #[error("etcd did not answer in time")]
    TimedOut,
    /// The control plane is stopping: the call was not made.
    #[error("the control plane is stopping")]
    Stopping,
    /// etcd closed a watch's connection.
    #[error("etcd closed the watch")]
    WatchClosed,
    /// A quorum read made while a watch was quiet failed.
    #[error("etcd stopped answering: {0}")]
    Silent(Box<EtcdError>),
    /// etcd answered a watch with this status instead of 200.
    #[error("etcd refused the watch ({0:?})")]
    WatchRefused(Option<u16>),
    /// A watch answer's head is malformed or too large.
    #[error("etcd: malformed answer")]
    MalformedHead,
    /// A watch answer's chunked body is malformed.
    #[error("etcd: malformed chunk")]
    MalformedChunk,
    /// etcd ended a watch's body.
    #[error("etcd ended the watch")]
    WatchEnded,
    /// A watch message is larger than any answer read.
    #[error("etcd: watch message too large")]
    WatchTooLarge,
    /// A watch message is not JSON.
    #[error("etcd: malformed watch message")]
    MalformedWatch,
    /// etcd sent an error on a watch, with this message.
    #[error("etcd: {0}")]
    WatchError(String),
    /// etcd cancelled a watch, for this reason.
    #[error("etcd cancelled the watch: {0}")]
    Cancelled(String),
}

impl EtcdError {
    /// No endpoint answered, or etcd is between leaders or without a quorum: worth retrying.
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            EtcdError::Unreachable(_)
                | EtcdError::TimedOut
                | EtcdError::Stopping
                | EtcdError::Refused { status: 503, .. }
        )
    }
}

/// A client TLS problem, with the flag at fault (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
fn client_tls(e: &TlsError) -> String {
    match e.field.as_str() {
        "" => e.message.clone(),
        f => format!("--etcd-{f}: {}", e.message),
    }
}

/// Where etcd is: its client endpoints (`host:port`), and TLS for `https://` ones.
#[derive(Clone)]
pub struct Cluster {
    pub endpoints: Vec<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Cluster {
    /// Plain-text endpoints (`host:port`).
    pub fn plain(endpoints: Vec<String>) -> Cluster {
        Cluster {
            endpoints,
            tls: None,
        }
    }

    /// Parses `http://host:port[,...]`, or `https://...` with the CA etcd's certificate chains
    /// to and, for etcd's `--client-cert-auth`, a client certificate and key (PEM files).
    pub fn parse(
        urls: &str,
        ca: Option<&str>,
        cert_key: Option<(&str, &str)>,
    ) -> Result<Cluster, EtcdError> {
        let mut endpoints = Vec::new();
        let mut schemes = std::collections::BTreeSet::new();
        for url in urls.split(',').map(str::trim) {
            let (scheme, hostport) = url.split_once("://").unwrap_or(("http", url));
            let hostport = hostport.trim_end_matches('/');
            if !matches!(scheme, "http" | "https")
                || hostport.contains('/')
                || !hostport.contains(':')
            {
                return Err(EtcdError::Url {
                    url: url.to_string(),
                });
            }
            schemes.insert(scheme);
            endpoints.push(hostport.to_string());
        }
        if schemes.len() > 1 {
            return Err(EtcdError::MixedSchemes);
        }
        let tls = if schemes.contains("https") {
            let ca = ca.ok_or(EtcdError::NoCa)?;
            // The name checked is each endpoint's host; this one only builds the config.
            let client =
                ringmesh_core::tls::ClientTls::build("localhost", ca, cert_key, &[b"http/1.1"])
                    .map_err(EtcdError::ClientTls)?;
            Some(client.rustls_config())
        } else {
            if ca.is_some() || cert_key.is_some() {
                return Err(EtcdError::TlsWithoutHttps);
            }
            None
        };
        Ok(Cluster { endpoints, tls })
    }
}

/// A connection to etcd, in plain text or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    /// Sends a gateway request: a POST of `body` (JSON) to `path`.
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<()> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: etcd\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        self.write_all(head.as_bytes())?;
        self.write_all(body.as_bytes())?;
        self.flush()
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

/// A client: one kept-alive connection to the first endpoint that answers.
pub struct Etcd {
    cluster: Cluster,
    conn: Option<Conn>,
    next: usize,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    pub fn new(cluster: Cluster) -> Etcd {
        Etcd {
            cluster,
            conn: None,
            next: 0,
        }
    }

    /// One gateway call. It is sent again only where etcd cannot have seen it: when a
    /// connection cannot be made (the next endpoint is tried), or when a kept-alive connection
    /// turns out closed before answering anything. A call that timed out is not sent again:
    /// a transaction that did commit would then fail against its own write.
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let body = body.to_string();
        let mut last = EtcdError::NoEndpoint;
        for _ in 0..=self.cluster.endpoints.len() {
            let (mut stream, reused) = match self.conn.take() {
                Some(s) => (s, true),
                None => match self.connect() {
                    Ok(s) => (s, false),
                    Err(e) => {
                        last = e;
                        continue;
                    }
                },
            };
            if let Err(e) = stream.post(path, &body) {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    return Err(EtcdError::Tls(e));
                }
                last = EtcdError::Io(e);
                if reused {
                    continue;
                }
                break;
            }
            match read_answer(&mut stream, MAX_ANSWER) {
                Ok((status, data, reusable)) => {
                    if reusable {
                        self.conn = Some(stream);
                    }
                    let v: Value = serde_json::from_slice(&data).map_err(EtcdError::Malformed)?;
                    if status != 200 {
                        // 503s are elections and lost quorum: worth retrying.
                        return Err(EtcdError::Refused {
                            status,
                            message: v["message"].as_str().unwrap_or("error").to_string(),
                        });
                    }
                    return Ok(v.get("result").cloned().unwrap_or(v));
                }
                Err(Unanswered::Closed) if reused => last = Unanswered::Closed.into(),
                // A TLS failure (a certificate refused either way) will not pass by itself.
                Err(Unanswered::Tls(e)) => return Err(EtcdError::Tls(e)),
                Err(e) => {
                    last = e.into();
                    break;
                }
            }
        }
        Err(EtcdError::Unreachable(Box::new(last)))
    }

    fn connect(&mut self) -> Result<Conn, EtcdError> {
        let n = self.cluster.endpoints.len().max(1);
        let ep = self
            .cluster
            .endpoints
            .get(self.next % n)
            .cloned()
            .unwrap_or_default();
        self.next = (self.next + 1) % n;
        let s = open(&ep, self.cluster.tls.as_ref())?;
        // Keep the endpoint that answered first for the next calls.
        self.next = (self.next + n - 1) % n;
        Ok(s)
    }

    /// Every key under `prefix`, and the store's revision.
    pub fn range_prefix(&mut self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) }),
        )?;
        let kvs = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(kv)
            .collect();
        Ok((revision(&v), kvs))
    }

    /// Writes `key` (with a lease, or none for 0); returns the revision.
    pub fn put(&mut self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/kv/put", &put(key, value, lease))?;
        Ok(revision(&v))
    }

    /// Deletes `key`; returns the revision and whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<(i64, bool), EtcdError> {
        let v = self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))?;
        Ok((revision(&v), num(&v["deleted"]) > 0))
    }

    /// Writes `key` only if its last change was at `mod_revision` (0: only if it does not
    /// exist). Returns whether it was written, and the revision of the write or, when refused,
    /// of the key's last change.
    pub fn put_if(
        &mut self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<(bool, i64), EtcdError> {
        let compare = if mod_revision == 0 {
            json!({ "key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" })
        } else {
            json!({ "key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string() })
        };
        let v = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [compare],
                "success": [{ "request_put": put(key, value, lease) }],
                "failure": [{ "request_range": { "key": b64(key) } }],
            }),
        )?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok((true, revision(&v)));
        }
        let last = v["responses"][0]["response_range"]["kvs"][0]["mod_revision"].clone();
        Ok((false, num(&last)))
    }

    /// A lease of `ttl` seconds.
    pub fn grant(&mut self, ttl: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        Ok(num(&v["ID"]))
    }

    /// Renews a lease; returns its TTL, 0 when it is gone.
    pub fn keepalive(&mut self, lease: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        Ok(num(&v["TTL"]))
    }

    /// Ends a lease and deletes its keys.
    pub fn revoke(&mut self, lease: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Ok(_) => Ok(()),
            // Already gone.
            Err(e) if !e.unavailable() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// How long a watch may stay quiet before etcd is asked whether it still answers (a host that
/// died without closing the connection, or a member that lost its quorum, says nothing).
const QUIET: Duration = Duration::from_secs(10);

/// Watches every key under `prefix` from revision `from`, giving each batch of changes and its
/// revision to `on` until `on` returns false, `stop` is set, or the stream fails (an error:
/// the caller reads the prefix again and watches anew). While the stream is quiet, `check`
/// makes a read that needs etcd's quorum now and then; a failed read ends the watch.
pub fn watch(
    cluster: &Cluster,
    prefix: &str,
    from: i64,
    stop: &Arc<AtomicBool>,
    check: &mut Etcd,
    mut on: impl FnMut(i64, Vec<Event>) -> bool,
) -> Result<(), EtcdError> {
    let mut last = EtcdError::NoEndpoint;
    let mut stream = None;
    for ep in &cluster.endpoints {
        match open(ep, cluster.tls.as_ref()) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or(last)?;
    let body = json!({ "create_request": {
        "key": b64(prefix), "range_end": b64(&prefix_end(prefix)),
        "start_revision": from.to_string(),
    }})
    .to_string();
    s.post("/v3/watch", &body)?;
    // Short reads, so that a stop is noticed while the stream is quiet.
    s.tcp().set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut raw = Vec::new();
    let mut head_done = false;
    let mut body = WatchStream::default();
    let mut chunk = [0u8; 16 * 1024];
    let mut heard = std::time::Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = match s.read(&mut chunk) {
            Ok(0) => return Err(EtcdError::WatchClosed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if heard.elapsed() >= QUIET {
                    // A linearizable read: it fails without a quorum.
                    check
                        .call(
                            "/v3/kv/range",
                            &json!({ "key": b64(&format!("{prefix}epoch")) }),
                        )
                        .map_err(|e| EtcdError::Silent(Box::new(e)))?;
                    heard = std::time::Instant::now();
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        heard = std::time::Instant::now();
        let batches = if head_done {
            body.feed(&chunk[..n])?
        } else {
            raw.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&raw) {
                Ok(httparse::Status::Complete(n)) => {
                    if r.code != Some(200) {
                        return Err(EtcdError::WatchRefused(r.code));
                    }
                    head_done = true;
                    body.feed(&raw[n..])?
                }
                Ok(httparse::Status::Partial) if raw.len() < 64 * 1024 => continue,
                _ => return Err(EtcdError::MalformedHead),
            }
        };
        for events in batches {
            // The batch's revision: its last change's (the header's may run ahead).
            let rev = events
                .iter()
                .map(|e| match e {
                    Event::Put(kv) | Event::Delete(kv) => kv.mod_revision,
                })
                .max()
                .unwrap_or(0);
            if !on(rev, events) {
                return Ok(());
            }
        }
    }
}

/// The body of a watch answer, decoded as it arrives: HTTP/1.1 chunks holding one JSON message
/// per line, each a batch of changes.
#[derive(Debug)]
pub struct WatchStream {
    chunks: ChunkedDecoder,
    decoded: Vec<u8>,
}

impl Default for WatchStream {
    fn default() -> Self {
        WatchStream {
            chunks: ChunkedDecoder::new(),
            decoded: Vec::new(),
        }
    }
}

impl WatchStream {
    /// Takes the next bytes of the body; returns the batches of changes they complete. An error
    /// ends the watch: a malformed stream, an error or cancellation from etcd, or the end.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<Event>>, EtcdError> {
        let decoded = &mut self.decoded;
        let p = self
            .chunks
            .feed(bytes, |r| decoded.extend_from_slice(&bytes[r]))
            .map_err(|_| EtcdError::MalformedChunk)?;
        if p.done {
            return Err(EtcdError::WatchEnded);
        }
        if self.decoded.len() > MAX_ANSWER {
            return Err(EtcdError::WatchTooLarge);
        }
        let mut batches = Vec::new();
        while let Some(end) = self.decoded.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.decoded.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                return Err(EtcdError::MalformedWatch);
            };
            if let Some(e) = v.get("error") {
                let message = e["message"].as_str().unwrap_or("watch error");
                return Err(EtcdError::WatchError(message.to_string()));
            }
            let r = &v["result"];
            if r["canceled"].as_bool() == Some(true) || num(&r["compact_revision"]) > 0 {
                let reason = r["cancel_reason"].as_str().unwrap_or("compacted");
                return Err(EtcdError::Cancelled(reason.to_string()));
            }
            let events: Vec<Event> = r["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let kv = kv(&e["kv"])?;
                    Some(if e["type"].as_str() == Some("DELETE") {
                        Event::Delete(kv)
                    } else {
                        Event::Put(kv)
                    })
                })
                .collect();
            if !events.is_empty() {
                batches.push(events);
            }
        }
        Ok(batches)
    }
}

fn open(ep: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Conn, EtcdError> {
    let endpoint = || ep.to_string();
    let addr: SocketAddr = ep
        .to_socket_addrs()
        .map_err(|source| EtcdError::Resolve {
            endpoint: endpoint(),
            source,
        })?
        .next()
        .ok_or_else(|| EtcdError::NoAddress {
            endpoint: endpoint(),
        })?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|source| {
        EtcdError::Connect {
            endpoint: endpoint(),
            source,
        }
    })?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))?;
    let Some(config) = tls else {
        return Ok(Conn::Plain(s));
    };
    // The name checked against etcd's certificate: the endpoint's host (a name or an address).
    let host = ep
        .rsplit_once(':')
        .map_or(ep, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|source| {
        EtcdError::ServerName {
            endpoint: endpoint(),
            source,
        }
    })?;
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|source| {
        EtcdError::Session {
            endpoint: endpoint(),
            source,
        }
    })?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, s))))
}

fn put(key: &str, value: &[u8], lease: i64) -> Value {
    let mut v = json!({ "key": b64(key), "value": B64.encode(value) });
    if lease != 0 {
        v["lease"] = Value::String(lease.to_string());
    }
    v
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0x7f {
            b.push(last + 1);
            return String::from_utf8(b).unwrap_or_default();
        }
    }
    "\0".into()
}

/// A 64-bit number as the gateway writes it (a string), or 0.
fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn revision(v: &Value) -> i64 {
    num(&v["header"]["revision"])
}

fn kv(v: &Value) -> Option<Kv> {
    let key = String::from_utf8(B64.decode(v["key"].as_str()?).ok()?).ok()?;
    let value = match v["value"].as_str() {
        Some(s) => B64.decode(s).ok()?,
        None => Vec::new(),
    };
    Some(Kv {
        key,
        value,
        mod_revision: num(&v["mod_revision"]),
        lease: num(&v["lease"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_stream_decodes_however_its_bytes_arrive() {
        let msg = |rev: i64| {
            let key = B64.encode("/p/mesh");
            format!(
                "{{\"result\":{{\"header\":{{\"revision\":\"{rev}\"}},\"events\":[{{\"kv\":{{\"key\":\"{key}\",\"mod_revision\":\"{rev}\",\"value\":\"e30=\"}}}}]}}}}\n"
            )
        };
        let created = "{\"result\":{\"header\":{},\"created\":true}}\n";
        let body: String = [created.to_string(), msg(5), msg(6)]
            .iter()
            .map(|m| format!("{:x}\r\n{m}\r\n", m.len()))
            .collect();
        let whole = WatchStream::default()
            .feed(body.as_bytes())
            .expect("decodes");
        assert_eq!(whole.len(), 2, "two batches, the creation message skipped");
        for cut in 0..body.len() {
            let mut w = WatchStream::default();
            let mut got = w.feed(&body.as_bytes()[..cut]).expect("first piece");
            got.extend(w.feed(&body.as_bytes()[cut..]).expect("second piece"));
            assert_eq!(got.len(), 2, "cut at {cut}");
            let Event::Put(kv) = &got[1][0] else {
                panic!("a put")
            };
            assert_eq!((kv.key.as_str(), kv.mod_revision), ("/p/mesh", 6));
        }
        let cancelled = "{\"result\":{\"canceled\":true,\"compact_revision\":\"3\"}}\n";
        let body = format!("{:x}\r\n{cancelled}\r\n", cancelled.len());
        assert!(WatchStream::default().feed(body.as_bytes()).is_err());
        assert!(
            WatchStream::default().feed(b"0\r\n\r\n").is_err(),
            "the end is an error"
        );
    }

    #[test]
    fn prefix_ranges_and_endpoints() {
        assert_eq!(prefix_end("/ringmesh/"), "/ringmesh0");
        let c = Cluster::parse("http://127.0.0.1:2379/, 10.0.0.2:2379", None, None).expect("ok");
        assert_eq!(c.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert!(c.tls.is_none());
        assert!(
            matches!(
                Cluster::parse("https://127.0.0.1:2379", None, None),
                Err(EtcdError::NoCa)
            ),
            "no CA"
        );
        assert!(matches!(
            Cluster::parse("http://a:1,https://b:1", None, None),
            Err(EtcdError::MixedSchemes)
        ));
        assert!(matches!(
            Cluster::parse("127.0.0.1", None, None),
            Err(EtcdError::Url { .. })
        ));
        assert!(matches!(
            Cluster::parse("ftp://a:1", None, None),
            Err(EtcdError::Url { .. })
        ));
        assert!(matches!(
            Cluster::parse("http://a:1", Some("/ca.pem"), None),
            Err(EtcdError::TlsWithoutHttps)
        ));
    }
}
