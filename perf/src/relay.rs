//! A bare TCP relay on monoio: each accepted connection gets one upstream connection and two
//! copy loops, with no parsing, routing, pooling or metrics. It runs on a ringmesh worker's
//! runtime (`worker::runtime`: the same io_uring flags and fallbacks), so for small requests and
//! answers its CPU time per request is the floor that the kernel's TCP and io_uring set for any
//! proxy on this machine; ringmesh's distance from it is what its own work costs.

use std::net::SocketAddr;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// Runs the relay on the calling thread (pinned to `cpu` if given) until the process ends.
/// `ready` gets the bound address, or the error that stopped the bind.
pub fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    cpu: Option<usize>,
    ready: impl FnOnce(std::io::Result<SocketAddr>),
) {
    if let Some(cpu) = cpu {
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
                monoio::spawn(relay(s, upstream));
            }
        }
    });
}

async fn relay(client: TcpStream, upstream: SocketAddr) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let back = monoio::spawn(copy(ur, cw));
    copy(cr, uw).await;
    back.await;
}

/// Copies until end of stream or an error, then shuts the writing side.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(mut from: R, mut to: W) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (res, b) = to.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
