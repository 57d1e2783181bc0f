//! The soak's clients: plain blocking HTTP/1.1 on their own threads, each request's outcome
//! recorded with its time, so that a failure can be laid beside the fault that caused it.
//! Keep-alive GETs, a new connection per request, uploads, 1 MiB downloads, connections that
//! come and go, slowloris (on a listener of its own), and HTTP/2 bursts (h2load).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmesh_core::head::{Framing, ResponseHead};
use ringmesh_core::http1::ChunkedDecoder;

/// A request that did not get a 2xx.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Seconds since the soak began.
    pub at: f64,
    /// Which client.
    pub client: &'static str,
    /// The status, or 0 when the connection failed.
    pub status: u16,
    /// `ringmesh-error`, or the I/O error.
    pub why: String,
}

/// What the clients share: the clock, the stop flag, counts per client kind, and failures.
#[derive(Debug)]
pub struct Tally {
    pub start: Instant,
    pub stop: AtomicBool,
    /// Requests completed (any status), per client kind in [`KINDS`] order.
    pub done: [AtomicU64; KINDS.len()],
    pub failures: Mutex<Vec<Failure>>,
}

/// The kinds of HTTP/1.1 client, in report order.
pub const KINDS: [&str; 5] = [
    "keep-alive",
    "new-connection",
    "upload",
    "download",
    "come-and-go",
];

impl Tally {
    pub fn new() -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            done: Default::default(),
            failures: Mutex::new(Vec::new()),
        })
    }

    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn count(&self, kind: usize) {
        self.done[kind].fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, client: &'static str, status: u16, why: String) {
        let f = Failure {
            at: self.now(),
            client,
            status,
            why,
        };
        if let Ok(mut v) = self.failures.lock() {
            v.push(f);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One answer read off a connection: its status, `ringmesh-error`, and whether the
/// connection may carry another request.
struct Answer {
    status: u16,
    error: Option<String>,
    reusable: bool,
}

/// Sends `head` (and `body`) and reads the whole answer.
fn exchange(s: &mut TcpStream, head: &[u8], body: &[u8]) -> std::io::Result<Answer> {
    s.write_all(head)?;
    if !body.is_empty() {
        s.write_all(body)?;
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let mut resp = ResponseHead::default();
    let head_len = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match resp.parse(&buf, 64 * 1024) {
            Ok(Some(n)) => break n,
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(format!("bad answer: {e:?}"))),
        }
    };
    let error = resp
        .headers
        .iter()
        .find(|h| h.name.get(&buf).eq_ignore_ascii_case(b"ringmesh-error"))
        .map(|h| String::from_utf8_lossy(h.value.get(&buf)).into_owned());
    let close = resp.headers.iter().any(|h| {
        h.name.get(&buf).eq_ignore_ascii_case(b"connection")
            && h.value.get(&buf).eq_ignore_ascii_case(b"close")
    });
    let mut rest = buf[head_len..].to_vec();
    match resp.body_framing(false) {
        Framing::None => {}
        Framing::Length(n) => {
            let mut left = n as usize;
            left = left.saturating_sub(rest.len());
            while left > 0 {
                let k = s.read(&mut chunk)?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                left = left.saturating_sub(k);
            }
        }
        Framing::Chunked => {
            let mut d = ChunkedDecoder::new();
            loop {
                let p = d
                    .feed(&rest, |_| {})
                    .map_err(|e| std::io::Error::other(format!("bad chunking: {e:?}")))?;
                if p.done {
                    break;
                }
                rest.clear();
                let k = s.read(&mut chunk)?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                rest.extend_from_slice(&chunk[..k]);
            }
        }
        Framing::Close => {
            while s.read(&mut chunk)? > 0 {}
            return Ok(Answer {
                status: resp.status,
                error,
                reusable: false,
            });
        }
    }
    Ok(Answer {
        status: resp.status,
        error,
        reusable: !close,
    })
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What a request loop sends.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub kind: usize,
    /// `GET /?size=2` or `PUT /upload`.
    pub path: &'static str,
    pub body: usize,
    /// A new connection for every request.
    pub fresh: bool,
    /// Requests per second this thread aims at.
    pub rate: u32,
}

/// Runs requests of `shape` against `addr` until `stop`.
pub fn request_loop_until(addr: SocketAddr, shape: Shape, tally: &Tally, stop: &AtomicBool) {
    let kind = KINDS[shape.kind];
    let method = if shape.body > 0 { "PUT" } else { "GET" };
    let head = format!(
        "{method} {} HTTP/1.1\r\nHost: soak\r\n{}\r\n",
        shape.path,
        if shape.body > 0 {
            format!("Content-Length: {}\r\n", shape.body)
        } else {
            String::new()
        }
    )
    .into_bytes();
    let body = vec![b'u'; shape.body];
    let gap = Duration::from_secs_f64(1.0 / f64::from(shape.rate.max(1)));
    let mut next = Instant::now();
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) && !tally.stopped() {
        next += gap;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            // Fell behind (a stall): the schedule restarts rather than bursting.
            next = now;
        }
        let mut s = match conn.take() {
            Some(s) => s,
            None => match connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    tally.fail(kind, 0, format!("connect: {e}"));
                    continue;
                }
            },
        };
        match exchange(&mut s, &head, &body) {
            Ok(a) => {
                tally.count(shape.kind);
                if !(200..300).contains(&a.status) {
                    tally.fail(kind, a.status, a.error.unwrap_or_default());
                }
                if a.reusable && !shape.fresh {
                    conn = Some(s);
                }
            }
            Err(e) => {
                // Counted as done: the proxy saw the request (its access log has a line).
                tally.count(shape.kind);
                tally.fail(kind, 0, e.to_string());
            }
        }
    }
}

/// Opens `n` connections, one request each, then closes them all: memory for a crowd of
/// connections, and whether it is given back.
pub fn come_and_go(addr: SocketAddr, n: usize, tally: &Tally) {
    let kind = 4;
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        if tally.stopped() {
            break;
        }
        match connect(addr) {
            Ok(mut s) => {
                match exchange(&mut s, b"GET /?size=2 HTTP/1.1\r\nHost: soak\r\n\r\n", b"") {
                    Ok(a) => {
                        tally.count(kind);
                        if !(200..300).contains(&a.status) {
                            tally.fail(KINDS[kind], a.status, a.error.unwrap_or_default());
                        }
                        open.push(s);
                    }
                    Err(e) => {
                        tally.count(kind);
                        tally.fail(KINDS[kind], 0, e.to_string());
                    }
                }
            }
            Err(e) => tally.fail(KINDS[kind], 0, format!("connect: {e}")),
        }
    }
    drop(open);
}

/// Slowloris: `n` connections on their own listener, each sending its head a byte at a time,
/// a byte every `every`, reconnecting when the proxy gives up on it. Nothing is counted: the
/// proxy's head timeout is what is tried.
pub fn slowloris(addr: SocketAddr, n: usize, every: Duration, stop: &AtomicBool) {
    let head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut conns: Vec<(Option<TcpStream>, usize)> = (0..n).map(|_| (None, 0)).collect();
    while !stop.load(Ordering::Relaxed) {
        for (conn, at) in conns.iter_mut() {
            if conn.is_none() {
                *conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok();
                *at = 0;
            }
            let Some(s) = conn.as_mut() else { continue };
            let byte = &head[*at % head.len()..*at % head.len() + 1];
            if s.write_all(byte).is_err() {
                *conn = None;
            } else {
                *at += 1;
            }
        }
        std::thread::sleep(every);
    }
}

/// An HTTP/2 burst by h2load (cleartext, prior knowledge): (succeeded, failed).
pub fn h2_burst(addr: SocketAddr, requests: u32) -> Result<(u64, u64), String> {
    // A count, not a duration: h2load stopped by `-D` drops the streams it has in flight,
    // which the proxy rightly logs as closed by the client.
    let out = Command::new("h2load")
        .args(["-c", "20", "-m", "10", "-t", "1", "-n"])
        .arg(requests.to_string())
        .arg(format!("http://{addr}/?size=2"))
        .output()
        .map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .ok_or_else(|| format!("h2load said: {text}"))?;
    let num = |key: &str| -> u64 {
        line.split(", ")
            .find(|p| p.ends_with(key))
            .and_then(|p| p.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        num("succeeded"),
        num("failed") + num("errored") + num("timeout"),
    ))
}
