//! `ringmesh-relay`: a bare TCP relay with ringmesh's io_uring setup, to measure the floor that
//! the kernel sets for a proxy's CPU per request (see perf/README.md).
//!
//! ringmesh-relay --listen 127.0.0.1:8082 --upstream 127.0.0.1:8081 [--cpu 1]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut listen: std::net::SocketAddr = "127.0.0.1:8082".parse()?;
    let mut upstream: Option<std::net::SocketAddr> = None;
    let mut cpu = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => listen = p.value()?.parse()?,
            Long("upstream") => upstream = Some(p.value()?.parse()?),
            Long("cpu") => cpu = Some(p.value()?.parse()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let upstream = upstream.ok_or("--upstream ADDR is required")?;
    let mut failed = None;
    ringmesh_perf::relay::run(listen, upstream, cpu, |bound| match bound {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => failed = Some(e),
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
