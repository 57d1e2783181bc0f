//! A test upstream on monoio: fixed-size answers, echo, and injected delays and stalls.
//!
//! Paths: `/echo` answers with the request body; anything else answers with `size` bytes (or
//! `?size=N`). `?delay=MS` delays that answer; `/stall?ms=MS` makes every answer of that worker
//! wait until MS milliseconds from now (to show a stall to the load generator).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use ringmesh_core::head::{Framing, RequestHead};
use ringmesh_core::http1::ChunkedDecoder;

/// How the upstream answers.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Where to listen (port 0: any).
    pub addr: SocketAddr,
    /// Default answer size.
    pub size: usize,
    /// CPUs to run on, one thread each.
    pub cpus: Vec<usize>,
}

/// A running upstream.
#[derive(Debug, Clone)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub served: Arc<AtomicU64>,
}

/// Starts the upstream on its threads.
pub fn start(cfg: UpstreamConfig) -> std::io::Result<Running> {
    let served = Arc::new(AtomicU64::new(0));
    let std_l = std::net::TcpListener::bind(cfg.addr)?;
    let addr = std_l.local_addr()?;
    drop(std_l);
    let threads = cfg.cpus.len().max(1);
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..threads {
        let cfg = cfg.clone();
        let tx = tx.clone();
        let served = served.clone();
        std::thread::spawn(move || {
            crate::block_on(cfg.cpus.get(t).copied(), async move {
                let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
                let l = match TcpListener::bind_with_config(addr, &opts) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let stall = Rc::new(Cell::new(Instant::now()));
                let body = Rc::new(vec![b'x'; cfg.size]);
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        monoio::spawn(serve(s, body.clone(), stall.clone(), served.clone()));
                    }
                }
            });
        });
    }
    for _ in 0..threads {
        rx.recv()
            .map_err(|_| std::io::Error::other("upstream thread died"))??;
    }
    Ok(Running { addr, served })
}

fn query(path: &[u8], key: &str) -> Option<u64> {
    let q = std::str::from_utf8(path).ok()?.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn serve(
    mut s: TcpStream,
    body: Rc<Vec<u8>>,
    stall: Rc<Cell<Instant>>,
    served: Arc<AtomicU64>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut req = RequestHead::default();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        // Head.
        let head_len = loop {
            if !buf.is_empty() {
                match req.parse(&buf, 1 << 20) {
                    Ok(Some(n)) => break n,
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity());
            }
            let len = buf.len();
            let (r, b) = s.read(buf.slice_mut(len..)).await;
            buf = b.into_inner();
            if !matches!(r, Ok(n) if n > 0) {
                return;
            }
        };
        let path = req.path.get(&buf).to_vec();
        let echo = path.starts_with(b"/echo");
        // Body: kept for echo, else counted and dropped.
        let mut received = Vec::new();
        let mut rest = buf.split_off(head_len);
        buf.clear();
        match req.framing {
            Framing::Length(n) => {
                let mut left = n;
                loop {
                    let take = (rest.len() as u64).min(left) as usize;
                    if echo {
                        received.extend_from_slice(&rest[..take]);
                    }
                    left -= take as u64;
                    if left == 0 {
                        buf.extend_from_slice(&rest[take..]);
                        break;
                    }
                    rest.clear();
                    if rest.capacity() < 64 * 1024 {
                        rest.reserve(64 * 1024);
                    }
                    let (r, b) = s.read(rest.slice_mut(0..)).await;
                    rest = b.into_inner();
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
            }
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                loop {
                    let Ok(p) = d.feed(&rest, |r| {
                        if echo {
                            received.extend_from_slice(&rest[r]);
                        }
                    }) else {
                        return;
                    };
                    if p.done {
                        buf.extend_from_slice(&rest[p.consumed..]);
                        break;
                    }
                    rest.clear();
                    if rest.capacity() < 64 * 1024 {
                        rest.reserve(64 * 1024);
                    }
                    let (r, b) = s.read(rest.slice_mut(0..)).await;
                    rest = b.into_inner();
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
            }
            _ => buf.extend_from_slice(&rest),
        }
        if path.starts_with(b"/stall") {
            let ms = query(&path, "ms").unwrap_or(100);
            stall.set(Instant::now() + Duration::from_millis(ms));
        }
        let until = stall.get();
        if until > Instant::now() {
            monoio::time::sleep(until - Instant::now()).await;
        }
        if let Some(ms) = query(&path, "delay") {
            monoio::time::sleep(Duration::from_millis(ms)).await;
        }
        let size = query(&path, "size").map(|n| n as usize);
        let payload: &[u8] = if echo {
            &received
        } else {
            &body[..size.unwrap_or(body.len()).min(body.len())]
        };
        let big = size.is_some_and(|n| n > body.len());
        out.clear();
        let len = if big {
            size.unwrap_or(0)
        } else {
            payload.len()
        };
        out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
        );
        if !big && payload.len() <= 16 * 1024 {
            out.extend_from_slice(payload);
            let (r, o) = s.write_all(out).await;
            out = o;
            if r.is_err() {
                return;
            }
        } else {
            let (r, o) = s.write_all(out).await;
            out = o;
            if r.is_err() {
                return;
            }
            let mut left = len;
            while left > 0 {
                out.clear();
                let n = left.min(64 * 1024);
                out.resize(n, b'x');
                if !big {
                    out.copy_from_slice(&payload[len - left..len - left + n]);
                }
                let (r, o) = s.write_all(out).await;
                out = o;
                if r.is_err() {
                    return;
                }
                left -= n;
            }
        }
        served.fetch_add(1, Ordering::Relaxed);
        if !req.keep_alive {
            return;
        }
    }
}
