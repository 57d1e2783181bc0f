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

/// An etcd error: `unavailable` when no endpoint answered (worth retrying), else what etcd said.
#[derive(Debug, Clone)]
pub struct Error {
    pub unavailable: bool,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn unavailable(message: String) -> Error {
    Error {
        unavailable: true,
        message,
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
    ) -> Result<Cluster, String> {
        let mut endpoints = Vec::new();
        let mut schemes = std::collections::BTreeSet::new();
        for url in urls.split(',').map(str::trim) {
            let (scheme, hostport) = url.split_once("://").unwrap_or(("http", url));
            let hostport = hostport.trim_end_matches('/');
            if !matches!(scheme, "http" | "https")
                || hostport.contains('/')
                || !hostport.contains(':')
            {
                return Err(format!(
                    "`{url}`: expected an etcd client URL such as http://127.0.0.1:2379"
                ));
            }
            schemes.insert(scheme);
            endpoints.push(hostport.to_string());
        }
        if schemes.len() > 1 {
            return Err("every etcd URL must have the same scheme".into());
        }
        let tls = if schemes.contains("https") {
            let ca = ca.ok_or("https:// needs the CA of etcd's certificate (--etcd-ca)")?;
            // The name checked is each endpoint's host; this one only builds the config.
            let client =
                ringmesh_core::tls::ClientTls::build("localhost", ca, cert_key, &[b"http/1.1"])
                    .map_err(|e| match e.field.as_str() {
                        "" => e.message,
                        f => format!("--etcd-{f}: {}", e.message),
                    })?;
            Some(client.rustls_config())
        } else {
            if ca.is_some() || cert_key.is_some() {
                return Err("a CA or client certificate needs https:// URLs".into());
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
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value, Error> {
        let body = body.to_string();
        let mut last = String::from("no etcd endpoint");
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
                    return Err(Error {
                        unavailable: false,
                        message: format!("etcd: TLS: {e}"),
                    });
                }
                last = e.to_string();
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
                    let v: Value = serde_json::from_slice(&data).map_err(|e| Error {
                        unavailable: false,
                        message: format!("etcd: malformed answer: {e}"),
                    })?;
                    if status != 200 {
                        let msg = v["message"].as_str().unwrap_or("error").to_string();
                        return Err(Error {
                            // 503s are elections and lost quorum: worth retrying.
                            unavailable: status == 503,
                            message: format!("etcd: {msg}"),
                        });
                    }
                    return Ok(v.get("result").cloned().unwrap_or(v));
                }
                Err(Unanswered::Closed) if reused => last = "connection closed".into(),
                // A TLS failure (a certificate refused either way) will not pass by itself.
                Err(Unanswered::Tls(e)) => {
                    return Err(Error {
                        unavailable: false,
                        message: format!("etcd: TLS: {e}"),
                    });
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
        Err(unavailable(format!("etcd: {last}")))
    }

    fn connect(&mut self) -> Result<Conn, String> {
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
    pub fn range_prefix(&mut self, prefix: &str) -> Result<(i64, Vec<Kv>), Error> {
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
    pub fn put(&mut self, key: &str, value: &[u8], lease: i64) -> Result<i64, Error> {
        let v = self.call("/v3/kv/put", &put(key, value, lease))?;
        Ok(revision(&v))
    }

    /// Deletes `key`; returns the revision and whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<(i64, bool), Error> {
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
    ) -> Result<(bool, i64), Error> {
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
    pub fn grant(&mut self, ttl: i64) -> Result<i64, Error> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        Ok(num(&v["ID"]))
    }

    /// Renews a lease; returns its TTL, 0 when it is gone.
    pub fn keepalive(&mut self, lease: i64) -> Result<i64, Error> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        Ok(num(&v["TTL"]))
    }

    /// Ends a lease and deletes its keys.
    pub fn revoke(&mut self, lease: i64) -> Result<(), Error> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Ok(_) => Ok(()),
            // Already gone.
            Err(e) if !e.unavailable => Ok(()),
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
) -> Result<(), String> {
    let mut last = String::from("no etcd endpoint");
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
    s.post("/v3/watch", &body).map_err(|e| e.to_string())?;
    // Short reads, so that a stop is noticed while the stream is quiet.
    s.tcp()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
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
            Ok(0) => return Err("etcd closed the watch".into()),
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
                        .map_err(|e| format!("etcd stopped answering: {e}"))?;
                    heard = std::time::Instant::now();
                }
                continue;
            }
            Err(e) => return Err(e.to_string()),
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
                        return Err(format!("etcd refused the watch ({:?})", r.code));
                    }
                    head_done = true;
                    body.feed(&raw[n..])?
                }
                Ok(httparse::Status::Partial) if raw.len() < 64 * 1024 => continue,
                _ => return Err("etcd: malformed answer".into()),
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
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<Event>>, String> {
        let decoded = &mut self.decoded;
        let p = self
            .chunks
            .feed(bytes, |r| decoded.extend_from_slice(&bytes[r]))
            .map_err(|_| "etcd: malformed chunk".to_string())?;
        if p.done {
            return Err("etcd ended the watch".into());
        }
        if self.decoded.len() > MAX_ANSWER {
            return Err("etcd: watch message too large".into());
        }
        let mut batches = Vec::new();
        while let Some(end) = self.decoded.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.decoded.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                return Err("etcd: malformed watch message".into());
            };
            if let Some(e) = v.get("error") {
                return Err(format!(
                    "etcd: {}",
                    e["message"].as_str().unwrap_or("watch error")
                ));
            }
            let r = &v["result"];
            if r["canceled"].as_bool() == Some(true) || num(&r["compact_revision"]) > 0 {
                return Err(format!(
                    "etcd cancelled the watch: {}",
                    r["cancel_reason"].as_str().unwrap_or("compacted")
                ));
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

fn open(ep: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Conn, String> {
    let addr: SocketAddr = ep
        .to_socket_addrs()
        .map_err(|e| format!("{ep}: {e}"))?
        .next()
        .ok_or_else(|| format!("{ep}: no address"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{ep}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let Some(config) = tls else {
        return Ok(Conn::Plain(s));
    };
    // The name checked against etcd's certificate: the endpoint's host (a name or an address).
    let host = ep
        .rsplit_once(':')
        .map_or(ep, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{ep}: {e}"))?;
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| format!("{ep}: {e}"))?;
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
            Cluster::parse("https://127.0.0.1:2379", None, None).is_err(),
            "no CA"
        );
        assert!(Cluster::parse("http://a:1,https://b:1", None, None).is_err());
        assert!(Cluster::parse("127.0.0.1", None, None).is_err());
        assert!(Cluster::parse("ftp://a:1", None, None).is_err());
        assert!(Cluster::parse("http://a:1", Some("/ca.pem"), None).is_err());
    }
}
