//! The load generator: HTTP/1.1 over monoio, one pinned thread per CPU it is given.
//!
//! Closed loop: each connection sends its next request as soon as the previous answer is in.
//! Open loop: the total rate is fixed; each connection has a schedule of intended send times,
//! and latency is measured from the intended time, so that a stall shows in the percentiles
//! instead of hiding as fewer requests (coordinated omission, as wrk2 corrects it).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringmesh_core::head::{Framing, ResponseHead};
use ringmesh_core::http1::ChunkedDecoder;
use ringmesh_core::tls::TlsStream;
use serde::Serialize;

/// What to send, how, and for how long.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Target address.
    pub addr: SocketAddr,
    /// Request path.
    pub path: String,
    /// Host header.
    pub host: String,
    /// Connections in total.
    pub connections: usize,
    /// Open loop: requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// A new connection for every request.
    pub new_connection: bool,
    /// Request body size (a PUT when non-zero).
    pub body: usize,
    /// Time before recording starts.
    pub warmup: Duration,
    /// Time recorded.
    pub duration: Duration,
    /// CPUs to run on, one thread each.
    pub cpus: Vec<usize>,
    /// TLS: the client settings and the server name to send.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: "127.0.0.1:8080".parse().expect("literal"),
            path: "/".into(),
            host: "localhost".into(),
            connections: 50,
            rate: None,
            new_connection: false,
            body: 0,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            cpus: vec![0],
            tls: None,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Requests answered with 2xx within the recorded window.
    pub requests: u64,
    /// Requests per second over the recorded window.
    pub rps: f64,
    /// Failed requests (connection errors, non-2xx, malformed answers).
    pub errors: u64,
    /// Response bytes received per second (heads and bodies).
    pub bytes_per_sec: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Recorded seconds.
    pub seconds: f64,
    /// Recorded requests slower than 100 ms (stall detector).
    pub over_100ms: u64,
}

/// Counters of one thread.
struct Stats {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    bytes: u64,
    over_100ms: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: 0,
            bytes: 0,
            over_100ms: 0,
        }
    }
}

/// Runs the load and returns what it measured.
pub fn run(cfg: &LoadConfig) -> Report {
    let cfg = Arc::new(cfg.clone());
    let threads = cfg.cpus.len().max(1);
    let start = Instant::now() + Duration::from_millis(50);
    let record_from = start + cfg.warmup;
    let until = record_from + cfg.duration;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let cpu = cfg.cpus.get(t).copied();
                crate::block_on(cpu, thread_main(cfg, t, threads, start, record_from, until))
            })
        })
        .collect();
    let mut total = Stats::new();
    for h in handles {
        let Ok(s) = h.join() else { continue };
        let _ = total.hist.add(&s.hist);
        total.ok += s.ok;
        total.errors += s.errors;
        total.bytes += s.bytes;
        total.over_100ms += s.over_100ms;
    }
    let secs = cfg.duration.as_secs_f64();
    let h = &total.hist;
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(p) as f64
        }
    };
    Report {
        requests: total.ok,
        rps: total.ok as f64 / secs,
        errors: total.errors,
        bytes_per_sec: total.bytes as f64 / secs,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: h.max() as f64,
        mean_us: h.mean(),
        seconds: secs,
        over_100ms: total.over_100ms,
    }
}

async fn thread_main(
    cfg: Arc<LoadConfig>,
    t: usize,
    threads: usize,
    start: Instant,
    record_from: Instant,
    until: Instant,
) -> Stats {
    let stats = Rc::new(RefCell::new(Stats::new()));
    // Connections of this thread, and its share of the rate.
    let conns = (cfg.connections / threads) + usize::from(t < cfg.connections % threads);
    let per_conn_interval = cfg.rate.map(|r| {
        let per_conn = r / cfg.connections.max(1) as f64;
        Duration::from_secs_f64(1.0 / per_conn.max(1e-9))
    });
    let request = Rc::new(request_bytes(&cfg));
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        // Spread the connections' schedules over one interval.
        let offset = per_conn_interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(c as f64 / conns.max(1) as f64)
        });
        let ctx = Conn {
            cfg: cfg.clone(),
            stats: stats.clone(),
            request: request.clone(),
            record_from,
            until,
            interval: per_conn_interval,
            first: start + offset,
        };
        tasks.push(monoio::spawn(ctx.run()));
    }
    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|_| Stats::new())
}

fn request_bytes(cfg: &LoadConfig) -> Vec<u8> {
    let method = if cfg.body > 0 { "PUT" } else { "GET" };
    let mut r = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", cfg.path, cfg.host);
    if cfg.body > 0 {
        r.push_str(&format!("Content-Length: {}\r\n", cfg.body));
    }
    if cfg.new_connection {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend(std::iter::repeat_n(b'x', cfg.body));
    bytes
}

struct Conn {
    cfg: Arc<LoadConfig>,
    stats: Rc<RefCell<Stats>>,
    request: Rc<Vec<u8>>,
    record_from: Instant,
    until: Instant,
    interval: Option<Duration>,
    first: Instant,
}

impl Conn {
    async fn run(self) {
        let mut next = self.first;
        let mut stream: Option<Stream> = None;
        let mut out = (*self.request).clone();
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut head = ResponseHead::default();
        let mut prev_done = self.first;
        // Every connection of every thread starts at the same instant.
        let now = Instant::now();
        if self.first > now {
            monoio::time::sleep(self.first - now).await;
        }
        loop {
            let now = Instant::now();
            if now >= self.until {
                return;
            }
            // Open loop: wait for the intended time. When the previous answer came after it,
            // this request is late because of the server: go at once and count from the
            // intended time. When only our own timer (1 ms granularity) woke us late, count
            // from the actual send.
            let intended = match self.interval {
                Some(i) => {
                    if next > now {
                        monoio::time::sleep(next - now).await;
                    }
                    let t = next;
                    next += i;
                    if prev_done > t { t } else { Instant::now() }
                }
                None => now,
            };
            if stream.is_none() {
                match self.connect().await {
                    Some(s) => stream = Some(s),
                    None => {
                        self.count_error(intended);
                        monoio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            let result = match stream.as_mut() {
                Some(Stream::Plain(s)) => exchange(s, &mut out, &mut buf, &mut head).await,
                Some(Stream::Tls(s)) => exchange(s, &mut out, &mut buf, &mut head).await,
                None => continue,
            };
            let done = Instant::now();
            prev_done = done;
            match result {
                Ok((status, bytes, keep)) => {
                    if done >= self.record_from && intended < self.until {
                        let mut st = self.stats.borrow_mut();
                        if (200..300).contains(&status) {
                            st.ok += 1;
                            let us = done.saturating_duration_since(intended).as_micros() as u64;
                            let _ = st.hist.record(us.max(1));
                            if us >= 100_000 {
                                st.over_100ms += 1;
                            }
                        } else {
                            st.errors += 1;
                        }
                        st.bytes += bytes;
                    }
                    if !keep || self.cfg.new_connection {
                        stream = None;
                    }
                }
                Err(()) => {
                    self.count_error(intended);
                    stream = None;
                }
            }
        }
    }

    /// A new connection, with its TLS handshake when the load is over TLS.
    async fn connect(&self) -> Option<Stream> {
        let s = TcpStream::connect_addr(self.cfg.addr).await.ok()?;
        let _ = s.set_nodelay(true);
        let Some((config, name)) = &self.cfg.tls else {
            return Some(Stream::Plain(s));
        };
        let name = rustls::pki_types::ServerName::try_from(name.clone()).ok()?;
        let (tls, _) = ringmesh_core::tls::connect(s, config.clone(), name).await;
        tls.map(Stream::Tls)
    }

    fn count_error(&self, intended: Instant) {
        if intended >= self.record_from && intended < self.until {
            self.stats.borrow_mut().errors += 1;
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(TlsStream),
}

/// Sends the request and reads the answer.
async fn exchange<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    head: &mut ResponseHead,
) -> Result<(u16, u64, bool), ()> {
    let (res, o) = s.write_all(std::mem::take(out)).await;
    *out = o;
    res.map_err(|_| ())?;
    read_response(s, buf, head).await
}

/// Reads one response; returns its status, the bytes read, and whether the connection may be
/// reused.
async fn read_response<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head: &mut ResponseHead,
) -> Result<(u16, u64, bool), ()> {
    buf.clear();
    let mut total = 0u64;
    let head_len = loop {
        if !buf.is_empty() {
            match head.parse(buf, 64 * 1024) {
                Ok(Some(n)) if head.is_interim() => {
                    buf.drain(..n);
                    continue;
                }
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(_) => return Err(()),
            }
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let b = std::mem::take(buf);
        let len = b.len();
        let (r, b) = s.read(b.slice_mut(len..)).await;
        *buf = b.into_inner();
        match r {
            Ok(n) if n > 0 => total += n as u64,
            _ => return Err(()),
        }
    };
    let status = head.status;
    let keep = head.keep_alive;
    let mut have = buf.len() - head_len;
    match head.framing {
        Framing::None | Framing::Length(0) => Ok((status, total, keep)),
        Framing::Length(n) => {
            let mut left = n.saturating_sub(have as u64);
            while left > 0 {
                let b = std::mem::take(buf);
                let (r, b) = s.read(b.slice_mut(0..)).await;
                let mut b = b.into_inner();
                match r {
                    Ok(k) if k > 0 => {
                        total += k as u64;
                        left = left.saturating_sub(k as u64);
                    }
                    _ => return Err(()),
                }
                b.clear();
                *buf = b;
            }
            Ok((status, total, keep))
        }
        Framing::Chunked => {
            let mut d = ChunkedDecoder::new();
            let mut start = head_len;
            loop {
                let p = d.feed(&buf[start..start + have], |_| {}).map_err(|_| ())?;
                if p.done {
                    return Ok((status, total, keep));
                }
                let b = std::mem::take(buf);
                let (r, b) = s.read(b.slice_mut(0..)).await;
                let mut b = b.into_inner();
                match r {
                    Ok(k) if k > 0 => {
                        total += k as u64;
                        have = k;
                        start = 0;
                        b.truncate(k);
                    }
                    _ => return Err(()),
                }
                *buf = b;
            }
        }
        Framing::Close => {
            loop {
                let b = std::mem::take(buf);
                let (r, b) = s.read(b.slice_mut(0..)).await;
                let mut b = b.into_inner();
                b.clear();
                *buf = b;
                match r {
                    Ok(k) if k > 0 => total += k as u64,
                    _ => break,
                }
            }
            Ok((status, total, false))
        }
    }
}

/// The report as a markdown table row set.
pub fn table(r: &Report) -> String {
    format!(
        "| requests/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors | MB/s |\n|---|---|---|---|---|---|---|---|\n| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} |\n",
        r.rps,
        r.p50_us,
        r.p90_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.errors,
        r.bytes_per_sec / 1e6
    )
}
