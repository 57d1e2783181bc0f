//! A bare TCP relay on monoio: each accepted connection gets one upstream connection and two
//! copy loops, with no parsing, routing, pooling or metrics. It runs on a ringmesh worker's
//! runtime (`worker::runtime`: the same io_uring flags and fallbacks), so for small requests and
//! answers its CPU time per request is the floor that the kernel's TCP and io_uring set for any
//! proxy on this machine; ringmesh's distance from it is what its own work costs.
//!
//! Two options turn it into a model of a proxy, for finding what shapes a proxy's latency
//! (perf/tail-structure.sh): `work` burns that much CPU on each message before passing it on,
//! as parsing and routing would; `sequential` serves each connection with one task that reads
//! a request, sends it upstream, reads the answer and sends it back, in turn, as a proxy's
//! connection task does, instead of two copy loops that each keep a read posted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// How the relay serves a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The CPU to pin the relay's thread to.
    pub cpu: Option<usize>,
    /// CPU time burned on each message (a request, an answer) before it is passed on.
    pub work: Duration,
    /// One task per connection, request and answer in turn (see the module's doc).
    pub sequential: bool,
}

/// Runs the relay on the calling thread until the process ends. `ready` gets the bound address,
/// or the error that stopped the bind.
pub fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    options: Options,
    ready: impl FnOnce(std::io::Result<SocketAddr>),
) {
    if let Some(cpu) = options.cpu {
        let _ = monoio::utils::bind_to_cpu_set([cpu]);
    }
    let mut rt = match ringmesh_core::worker::runtime(4096) {
        Ok(rt) => rt,
        Err(e) => return ready(Err(e)),
    };
    rt.block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
        let l = match TcpListener::bind_with_config(listen, &opts) {
            Ok(l) => l,
            Err(e) => return ready(Err(e)),
        };
        ready(l.local_addr());
        loop {
            if let Ok((s, _)) = l.accept().await {
                monoio::spawn(relay(s, upstream, options));
            }
        }
    });
}

async fn relay(client: TcpStream, upstream: SocketAddr, options: Options) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    if options.sequential {
        return in_turn(client, up, options.work).await;
    }
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let back = monoio::spawn(copy(ur, cw, options.work));
    copy(cr, uw, options.work).await;
    back.await;
}

/// Copies until end of stream or an error, then shuts the writing side.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(mut from: R, mut to: W, work: Duration) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        burn(work);
        let (res, b) = to.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Serves a connection in turn: a request from the client, sent upstream, then the answer from
/// the upstream, sent back; the next request is read only once the answer is written. A read is
/// taken for a whole message, which holds for the small requests and answers it models.
async fn in_turn(mut client: TcpStream, mut up: TcpStream, work: Duration) {
    let mut buf = Some(Vec::with_capacity(16 * 1024));
    while let Some(b) = buf {
        buf = match pass(&mut client, &mut up, b, work).await {
            Some(b) => pass(&mut up, &mut client, b, work).await,
            None => None,
        };
    }
}

/// Reads one message from `from` and writes it to `to`; `None` at end of stream or an error.
async fn pass(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut buf: Vec<u8>,
    work: Duration,
) -> Option<Vec<u8>> {
    buf.clear();
    let (res, buf) = from.read(buf).await;
    if !matches!(res, Ok(n) if n > 0) {
        return None;
    }
    burn(work);
    let (res, buf) = to.write_all(buf).await;
    res.ok().map(|_| buf)
}

/// Keeps the CPU busy for `work` (a spin, not a sleep: the point is to use the core).
fn burn(work: Duration) {
    if work.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < work {
        std::hint::spin_loop();
    }
}
