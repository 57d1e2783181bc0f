//! Helpers for ringmesh's end-to-end tests: upstreams built in the test, a raw HTTP/1.1 client
//! that shows exactly what came over the wire, and a proxy started in-process or as a binary.
//!
//! The helpers use plain blocking sockets and their own small HTTP reader, independent of the
//! proxy's code, so that a bug in the proxy's codec cannot hide itself in the tests. Everything
//! binds 127.0.0.1:0.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub mod grafana;
pub mod h2;
pub mod mesh;
pub mod netns;
pub mod proto;
pub mod rawh2;
pub mod tls;

pub use ringmesh_control::{ConfigSource, Proxy, ProxyOptions};

/// A request as an upstream received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Req {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Minor version (0 or 1).
    pub version: u8,
    /// Header fields in order, names as received.
    pub headers: Vec<(String, String)>,
    /// Body (decoded if chunked).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The body came chunked.
    pub chunked: bool,
}

impl Req {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A response an upstream sends.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers (framing headers are added from `body`).
    pub headers: Vec<(String, String)>,
    /// Body and its framing.
    pub body: Body,
}

/// How an upstream frames its body.
#[derive(Debug, Clone)]
pub enum Body {
    /// Content-Length.
    Fixed(Vec<u8>),
    /// Chunked, with trailers.
    Chunked(Vec<Vec<u8>>, Vec<(String, String)>),
    /// No length: ends when the upstream closes.
    Close(Vec<u8>),
    /// No body and no framing header (HEAD, 204, 304).
    None,
}

impl Resp {
    /// `status` with a Content-Length body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Resp {
        Resp {
            status,
            headers: vec![],
            body: Body::Fixed(body.into()),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Serializes the response (HTTP/1.1).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} X\r\n", self.status).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        match &self.body {
            Body::Fixed(b) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Body::Chunked(chunks, trailers) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (n, v) in trailers {
                    out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            Body::Close(b) => {
                out.extend_from_slice(b"Connection: close\r\n\r\n");
                out.extend_from_slice(b);
            }
            Body::None => out.extend_from_slice(b"\r\n"),
        }
        out
    }
}

/// An upstream server running on threads, one per connection.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Each accepted connection is handed to `f` on its own thread.
    pub fn raw(f: impl Fn(TcpStream) + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let f = Arc::new(f);
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                let f = f.clone();
                std::thread::spawn(move || f(conn));
            }
        });
        Upstream {
            addr,
            accepted,
            received: Arc::default(),
            stop,
        }
    }

    /// An HTTP/1.1 keep-alive server answering each request with `f`; requests are recorded.
    pub fn http(f: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Upstream {
        let received: Arc<Mutex<Vec<Req>>> = Arc::default();
        let rec = received.clone();
        let mut up = Upstream::raw(move |conn| {
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut conn = conn;
            while let Ok(Some(req)) = read_request(&mut reader) {
                rec.lock().expect("lock").push(req.clone());
                let resp = f(&req);
                let close = matches!(resp.body, Body::Close(_));
                if conn.write_all(&resp.to_bytes()).is_err() || close {
                    break;
                }
            }
        });
        up.received = received;
        up
    }

    /// Answers every request with 200 and `body`.
    pub fn fixed(body: &'static str) -> Upstream {
        Upstream::http(move |_| Resp::new(200, body))
    }

    /// Echoes the request back: method, path and body, plus the headers as `x-echo-*`.
    pub fn echo() -> Upstream {
        Upstream::http(|r| {
            let mut resp = Resp::new(200, r.body.clone())
                .header("x-method", &r.method)
                .header("x-path", &r.path);
            for (n, v) in &r.headers {
                resp = resp.header(&format!("x-echo-{}", n.to_ascii_lowercase()), v);
            }
            resp
        })
    }

    /// Reads until the client half-closes, then answers with what it read, reversed, and
    /// closes: proves both directions and the half-close.
    pub fn reverser() -> Upstream {
        Upstream::raw(|mut s| {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            got.reverse();
            let _ = s.write_all(&got);
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Requests received so far (HTTP upstreams).
    pub fn requests(&self) -> Vec<Req> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (n, v) = line.split_once(':').ok_or(io::ErrorKind::InvalidData)?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
}

/// Header fields, in order.
pub type Fields = Vec<(String, String)>;

fn read_chunked(r: &mut impl BufRead) -> io::Result<(Vec<u8>, Fields)> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size = line.split(';').next().unwrap_or("");
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| io::ErrorKind::InvalidData)?;
        if n == 0 {
            return Ok((body, read_headers(r)?));
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])?;
        if !read_line(r)?.is_empty() {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}

/// Reads one request; `Ok(None)` at a clean end of the connection.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<Req>> {
    let line = match read_line(r) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::ErrorKind::InvalidData.into());
    };
    let headers = read_headers(r)?;
    let mut req = Req {
        method: method.into(),
        path: path.into(),
        version: if version == "HTTP/1.0" { 0 } else { 1 },
        headers,
        ..Req::default()
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, trailers) = read_chunked(r)?;
        req.body = body;
        req.trailers = trailers;
        req.chunked = true;
    } else if let Some(n) = req.header("content-length") {
        let n: usize = n.parse().map_err(|_| io::ErrorKind::InvalidData)?;
        req.body = vec![0; n];
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// A response as the client received it.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status.
    pub status: u16,
    /// Version line, e.g. `HTTP/1.1`.
    pub version: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body (decoded if chunked).
    pub body: Vec<u8>,
    /// Trailers of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The body came chunked.
    pub chunked: bool,
}

impl Response {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `reader` (an interim one included). `head`: it answers a HEAD request.
pub fn read_response(reader: &mut impl BufRead, head: bool) -> io::Result<Response> {
    let line = read_line(reader)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(io::ErrorKind::InvalidData)?;
    let headers = read_headers(reader)?;
    let mut resp = Response {
        status,
        version,
        headers,
        ..Response::default()
    };
    if head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, trailers) = read_chunked(reader)?;
        resp.body = body;
        resp.trailers = trailers;
        resp.chunked = true;
    } else if let Some(n) = resp.header("content-length") {
        let n: usize = n.parse().map_err(|_| io::ErrorKind::InvalidData)?;
        resp.body = vec![0; n];
        reader.read_exact(&mut resp.body)?;
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// A raw HTTP/1.1 client on one connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            stream,
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> &mut Client {
        self.stream.write_all(bytes).expect("send");
        self
    }

    /// Sends a GET for `path` with Host `a.test`.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
        self.response(false)
    }

    /// Reads the next response (an interim one included). `head`: it answers a HEAD request.
    pub fn response(&mut self, head: bool) -> Response {
        self.try_response(head).expect("read response")
    }

    /// Reads the next response, or the error that ended the connection.
    pub fn try_response(&mut self, head: bool) -> io::Result<Response> {
        read_response(&mut self.reader, head)
    }
    /// Whether the proxy closed the connection (EOF within `wait`).
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut b = [0u8; 1];
        let closed = matches!(self.reader.read(&mut b), Ok(0) | Err(_));
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        closed
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Reads `s` until its peer closes it, throwing the bytes away: how many there were, and how
/// the stream ended (`Ok` at end of stream, else the error's kind: a reset, or the read timeout).
pub fn read_until_closed(s: &mut impl Read) -> (usize, Result<(), io::ErrorKind>) {
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got += n,
            Err(e) => return (got, Err(e.kind())),
        }
    }
}

/// Sends `raw` on a new connection and returns the first response.
pub fn one_shot(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.response(raw.starts_with(b"HEAD "))
}

/// A proxy started in-process from YAML, with admin on a free port.
pub struct TestProxy {
    /// The running proxy.
    pub proxy: Proxy,
}

impl TestProxy {
    /// Starts a proxy from `yaml` with `workers` workers.
    pub fn start(yaml: &str, workers: usize) -> TestProxy {
        let opts = ProxyOptions {
            source: ConfigSource::Text(yaml.to_string()),
            workers: Some(workers),
            admin: Some("127.0.0.1:0".parse().expect("addr")),
            drain_timeout: Duration::from_secs(5),
            ..ProxyOptions::default()
        };
        TestProxy {
            proxy: Proxy::start(opts).expect("proxy starts"),
        }
    }

    /// A proxy with one `http` listener named `edge` whose only route sends everything to
    /// `upstream`; `extra` is spliced into the listener.
    pub fn simple(upstream: SocketAddr, workers: usize, extra: &str) -> TestProxy {
        TestProxy::start(&simple_config(upstream, extra), workers)
    }

    /// Where listener `name` is bound.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.proxy.listener_addr(name).expect("listener is bound")
    }

    /// The `edge` listener.
    pub fn edge(&self) -> SocketAddr {
        self.addr("edge")
    }

    /// GET on the admin API.
    pub fn admin(&self, path: &str) -> Response {
        let admin = self.proxy.admin_addr();
        let mut c = Client::connect(admin);
        c.send(
            format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        c.response(false)
    }

    /// The value of one metric series in `/metrics` (exact series text before the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.admin("/metrics").text(), series)
    }
}

/// The value of `series` in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// The YAML of [`TestProxy::simple`].
pub fn simple_config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
{extra}
    routes:
      - match: {{ path_prefix: / }}
        cluster: up
clusters:
  - name: up
    endpoints: [ {{ addr: {upstream} }} ]
"
    )
}

/// A listener `edge` with routes `api` (`/api/`) and `web` (`/web/`), both to cluster `up`
/// whose one endpoint is `up`; `listener_extra` is spliced into the listener.
pub fn two_routes(up: SocketAddr, listener_extra: &str) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
{listener_extra}
    routes:
      - {{ name: api, match: {{ path_prefix: /api/ }}, cluster: up }}
      - {{ name: web, match: {{ path_prefix: /web/ }}, cluster: up }}
clusters:
  - name: up
    endpoints: [ {{ addr: {up} }} ]
"
    )
}

/// Path of the `ringmesh` binary, built from `control/src/main.rs` with the tests.
pub fn binary() -> PathBuf {
    let mut p = std::env::current_exe().expect("exe");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("ringmesh-e2e")
}

/// A `ringmesh` process, killed on drop.
pub struct ProxyProcess {
    /// The child.
    pub child: Child,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl ProxyProcess {
    /// Runs `ringmesh proxy --config FILE` with extra args; waits until `/ready`.
    pub fn start(config: &std::path::Path, args: &[&str]) -> ProxyProcess {
        let admin = free_port();
        let child = Command::new(binary())
            .arg("proxy")
            .arg("--config")
            .arg(config)
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringmesh");
        let p = ProxyProcess { child, admin };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(admin) {
                let _ = c.write_all(
                    format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                let mut s = String::new();
                let _ = c.read_to_string(&mut s);
                if s.starts_with("HTTP/1.1 200") {
                    return p;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ringmesh did not become ready");
    }

    /// GET on the admin API.
    pub fn admin(&self, path: &str) -> Response {
        let mut c = Client::connect(self.admin);
        c.send(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.admin
            )
            .as_bytes(),
        );
        c.response(false)
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every error a config gets from the proxy's decoder, one a line (it must be refused).
pub fn config_errors(yaml: &str) -> String {
    ringmesh_control::config::Config::parse(yaml)
        .expect_err("the config is refused")
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A port that was free a moment ago (for the admin address of a child process, which must be
/// given before it starts).
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The path of the first of `names` found in PATH. A missing tool fails the test (`bash
/// tests/run` installs them all); only `RINGMESH_SKIP_MISSING_TOOLS=1` lets the test skip,
/// saying so.
pub fn tool(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    missing_tool(names[0]);
    None
}

/// A tool a test needs is missing: a failure, unless `RINGMESH_SKIP_MISSING_TOOLS=1` asks to
/// skip (then it says so, and returns false).
pub fn missing_tool(name: &str) -> bool {
    if std::env::var("RINGMESH_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {name} is not installed (RINGMESH_SKIP_MISSING_TOOLS=1)");
        return false;
    }
    panic!(
        "{name} is needed by this test and not installed: `bash tests/run` installs what the \
         tests need, or set RINGMESH_SKIP_MISSING_TOOLS=1 to skip such tests"
    );
}

/// Waits until `f` is true or `wait` passes; returns whether it became true.
pub fn eventually(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A channel-fed upstream: each request's raw head bytes are sent to the test, which decides
/// what to answer by writing to the connection it gets.
pub fn raw_requests() -> (Upstream, mpsc::Receiver<TcpStream>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = Upstream::raw(move |s| {
        let _ = tx.lock().expect("lock").send(s);
    });
    (up, rx)
}

/// Writes `text` to a new config file for test `name` and returns its path.
pub fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmesh-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("config.yaml");
    write_atomically(&p, text);
    p
}

/// Replaces a file's contents in one step (as config management tools do).
pub fn write_atomically(p: &std::path::Path, text: &str) {
    let tmp = p.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write temp file");
    std::fs::rename(&tmp, p).expect("rename");
}

/// A proxy in-process on a config file (watched every 50 ms), with `workers` workers.
pub fn file_proxy(path: &std::path::Path, workers: usize) -> Proxy {
    Proxy::start(ProxyOptions {
        source: ConfigSource::File(path.to_path_buf()),
        workers: Some(workers),
        admin: Some("127.0.0.1:0".parse().expect("addr")),
        watch_interval: Duration::from_millis(50),
        ..ProxyOptions::default()
    })
    .expect("proxy starts")
}

/// What a [`Backend`] does with what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answers 200 (health checks too).
    Up = 0,
    /// Answers 503 (health checks too).
    Fail = 1,
    /// Closes the connection without answering.
    Reset = 2,
    /// Not listening: connections are refused, open ones are closed.
    Down = 3,
}

struct BackendState {
    tag: String,
    mode: AtomicU8,
    delay_ms: AtomicU64,
    hits: AtomicUsize,
    checks: AtomicUsize,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    requests: Mutex<Vec<Req>>,
}

/// An HTTP/1.1 upstream whose behaviour the test switches while it runs: up, failing,
/// resetting, down (refusing connections) or slow. It answers `GET /healthz` as its mode says,
/// and everything else with its tag as the body (and in `x-backend`).
pub struct Backend {
    /// Where it listens (the same address across downs and ups).
    pub addr: SocketAddr,
    state: Arc<BackendState>,
}

impl Backend {
    /// A backend that is up, answering with `tag`.
    pub fn start(tag: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(BackendState {
            tag: tag.to_string(),
            mode: AtomicU8::new(Mode::Up as u8),
            delay_ms: AtomicU64::new(0),
            hits: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
            requests: Mutex::default(),
        });
        let st = state.clone();
        std::thread::spawn(move || accept_loop(addr, Some(listener), &st));
        Backend { addr, state }
    }

    /// Switches the behaviour; `Down` also closes open connections.
    pub fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
        if mode == Mode::Down {
            for c in self.state.conns.lock().expect("lock").drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Delays every answer (not health checks) by `d`.
    pub fn delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests received, health checks excepted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Health checks received.
    pub fn checks(&self) -> usize {
        self.state.checks.load(Ordering::SeqCst)
    }

    /// Requests received, health checks excepted.
    pub fn requests(&self) -> Vec<Req> {
        self.state.requests.lock().expect("lock").clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.set(Mode::Down);
    }
}

fn mode_of(state: &BackendState) -> Mode {
    match state.mode.load(Ordering::SeqCst) {
        0 => Mode::Up,
        1 => Mode::Fail,
        2 => Mode::Reset,
        _ => Mode::Down,
    }
}

fn accept_loop(addr: SocketAddr, mut listener: Option<TcpListener>, state: &Arc<BackendState>) {
    while !state.stop.load(Ordering::SeqCst) {
        if mode_of(state) == Mode::Down {
            // Closing the socket makes connects fail with "connection refused".
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(l) = &listener else {
            listener = TcpListener::bind(addr).ok();
            if let Some(l) = &listener {
                let _ = l.set_nonblocking(true);
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
            continue;
        };
        let _ = l.set_nonblocking(true);
        match l.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                if let Ok(c) = conn.try_clone() {
                    state.conns.lock().expect("lock").push(c);
                }
                let st = state.clone();
                std::thread::spawn(move || serve_backend(conn, &st));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve_backend(conn: TcpStream, state: &BackendState) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    while let Ok(Some(req)) = read_request(&mut reader) {
        let check = req.path == "/healthz";
        if check {
            state.checks.fetch_add(1, Ordering::SeqCst);
        } else {
            state.hits.fetch_add(1, Ordering::SeqCst);
            state.requests.lock().expect("lock").push(req.clone());
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
        }
        let status = match mode_of(state) {
            Mode::Up => 200,
            Mode::Fail => 503,
            Mode::Reset | Mode::Down => break,
        };
        let resp = Resp::new(status, state.tag.clone()).header("x-backend", &state.tag);
        if conn.write_all(&resp.to_bytes()).is_err() {
            break;
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Clients sending `GET path` in a loop, each on its own keep-alive connection, counting
/// answers by status and by body, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<HashMap<(u16, String), u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients against `addr`.
    pub fn start(addr: SocketAddr, clients: usize, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Mutex<HashMap<(u16, String), u64>>> = Arc::default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n");
        let threads = (0..clients)
            .map(|_| {
                let (stop, counts, request) = (stop.clone(), counts.clone(), request.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        c.send(request.as_bytes());
                        let key = match c.try_response(false) {
                            Ok(r) => (r.status, r.text()),
                            Err(_) => {
                                c = Client::connect(addr);
                                (0, String::new())
                            }
                        };
                        *counts.lock().expect("lock").entry(key).or_default() += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    /// Answers so far, by (status, body); status 0 counts broken connections. Resets them.
    pub fn take(&self) -> HashMap<(u16, String), u64> {
        std::mem::take(&mut *self.counts.lock().expect("lock"))
    }

    /// Stops the clients and returns the answers not yet taken.
    pub fn stop(mut self) -> HashMap<(u16, String), u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.take()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How many answers in `counts` had this status and body.
pub fn count_of(counts: &HashMap<(u16, String), u64>, status: u16, body: &str) -> u64 {
    counts
        .get(&(status, body.to_string()))
        .copied()
        .unwrap_or(0)
}
