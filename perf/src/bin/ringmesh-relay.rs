//! `ringmesh-relay`: a bare TCP relay with ringmesh's io_uring setup, to measure the floor that
//! the kernel sets for a proxy's CPU per request (see perf/README.md).
//!
//! ringmesh-relay --listen 127.0.0.1:8082 --upstream 127.0.0.1:8081 [--cpu 1]
//!                [--work-ns N] [--sequential]
//!
//! `--work-ns` burns N ns of CPU on each message passed on, `--sequential` serves each
//! connection request and answer in turn (see `ringmesh_perf::relay::Options`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut listen: std::net::SocketAddr = "127.0.0.1:8082".parse()?;
    let mut upstream: Option<std::net::SocketAddr> = None;
    let mut options = ringmesh_perf::relay::Options::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => listen = p.value()?.parse()?,
            Long("upstream") => upstream = Some(p.value()?.parse()?),
            Long("cpu") => options.cpu = Some(p.value()?.parse()?),
            Long("work-ns") => options.work = std::time::Duration::from_nanos(p.value()?.parse()?),
            Long("sequential") => options.sequential = true,
            _ => return Err(arg.unexpected().into()),
        }
    }
    let upstream = upstream.ok_or("--upstream ADDR is required")?;
    let mut failed = None;
    ringmesh_perf::relay::run(listen, upstream, options, |bound| match bound {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => failed = Some(e),
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
