//! One local TCP hop alone: a client thread and an echo thread of this process exchange
//! `--size`-byte messages over one loopback connection, `--count` round trips, and the
//! process reports round trips per second, latency percentiles and its CPU per round trip
//! (user and kernel, from getrusage, so both ends of the hop are counted). Run inside a cgroup
//! with `ringmesh init --accelerate`, as the proxy's user, its connection is shortcut (the
//! sidecar-to-application hop's shape); elsewhere it goes through TCP. `--unix` uses a Unix
//! socket pair instead: the floor of any local exchange (two system calls and a wake-up each
//! way, no protocol). perf/sidecar-accelerate.sh runs all three.
//!
//! `--no-reader` measures flow control instead: the client writes without the other end
//! reading, until a write would block (TCP stops it at its buffers) or 256 MiB are queued or
//! two seconds pass, and reports how much was accepted; then the other end reads it all and
//! checks that every byte arrived once and in order.
//!
//!   ringmesh-pingpong [--count 200000] [--size 100] [--unix] [--no-reader]

use lexopt::prelude::*;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut count, mut size, mut unix, mut no_reader) = (200_000u64, 100usize, false, false);
    let mut args = lexopt::Parser::from_env();
    while let Some(arg) = args.next()? {
        match arg {
            Long("count") => count = args.value()?.parse()?,
            Long("size") => size = args.value()?.parse()?,
            Long("unix") => unix = true,
            Long("no-reader") => no_reader = true,
            other => return Err(other.unexpected().into()),
        }
    }
    if unix {
        let (client, server) = std::os::unix::net::UnixStream::pair()?;
        return exchange(client, server, count, size, None);
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let fd = client.as_raw_fd();
    if no_reader {
        return queue_without_reader(client, server);
    }
    exchange(client, server, count, size, Some(fd))
}

/// Writes until the kernel pushes back; the other end never reads.
fn queue_without_reader(
    mut client: TcpStream,
    mut server: TcpStream,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{Read as _, Write as _};
    // One byte each way first, so that both ends have chosen the shortcut (or TCP).
    server.write_all(b"?")?;
    client.read_exact(&mut [0u8; 1])?;
    client.write_all(b"!")?;
    server.read_exact(&mut [0u8; 1])?;
    client.set_nonblocking(true)?;
    // Byte i of the stream is i mod 251: a lost, repeated or reordered block shows.
    let pattern: Vec<u8> = (0..65536u32 * 251).map(|i| (i % 251) as u8).collect();
    let (start, mut queued) = (Instant::now(), 0u64);
    let stopped = loop {
        if queued >= 256 << 20 {
            break "256 MiB cap";
        }
        if start.elapsed() > Duration::from_secs(2) {
            break "two seconds";
        }
        let at = (queued % 251) as usize;
        match client.write(&pattern[at..at + 65536]) {
            Ok(n) => queued += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break "the kernel pushed back",
            Err(e) => return Err(e.into()),
        }
    };
    let sent = ringmesh_core::sys::tcp_bytes_sent(client.as_raw_fd()).unwrap_or(u64::MAX);
    drop(client);
    let mut got = Vec::with_capacity(queued as usize);
    server.read_to_end(&mut got)?;
    let in_order =
        got.len() as u64 == queued && got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8);
    println!(
        "without a reader: {:.1} MiB accepted before {stopped}, {:.1} MiB of it transmitted by TCP; read back {}",
        queued as f64 / (1u64 << 20) as f64,
        sent.saturating_sub(1) as f64 / (1u64 << 20) as f64,
        if in_order {
            "whole and in order"
        } else {
            "CHANGED"
        }
    );
    if !in_order {
        return Err("the stream arrived changed".into());
    }
    Ok(())
}

/// The round trips, then the report; `tcp`: the client's socket, whose TCP byte count says
/// whether the exchange was shortcut.
fn exchange<S: std::io::Read + std::io::Write + Send + 'static>(
    mut client: S,
    mut server: S,
    count: u64,
    size: usize,
    tcp: Option<std::os::fd::RawFd>,
) -> Result<(), Box<dyn std::error::Error>> {
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = server.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            server.write_all(&buf[..n])?;
        }
    });
    let message = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    // Warm up, then measure.
    for _ in 0..1000 {
        client.write_all(&message)?;
        client.read_exact(&mut back)?;
    }
    let cpu0 = ringmesh_perf::procfs::own_cpu();
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        client.write_all(&message)?;
        client.read_exact(&mut back)?;
        latency.record(t.elapsed().as_nanos() as u64)?;
    }
    let wall = start.elapsed();
    let cpu1 = ringmesh_perf::procfs::own_cpu();
    let how = match tcp.map(ringmesh_core::sys::tcp_bytes_sent) {
        None => "Unix socket pair".to_string(),
        Some(Ok(sent)) if sent < size as u64 => format!("TCP sent {sent} B: shortcut"),
        Some(Ok(sent)) => format!("TCP sent {sent} B: through TCP"),
        Some(Err(e)) => format!("TCP_INFO: {e}"),
    };
    drop(client);
    let _ = echo.join();
    let per = |d: Duration| d.as_nanos() as f64 / count as f64 / 1000.0;
    println!(
        "{count} round trips of {size} B: {:.0}/s  p50 {:.2} us  p99 {:.2} us  CPU/round trip: user {:.2} us  kernel {:.2} us  ({how})",
        count as f64 / wall.as_secs_f64(),
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        per(cpu1.user.saturating_sub(cpu0.user)),
        per(cpu1.system.saturating_sub(cpu0.system)),
    );
    Ok(())
}
