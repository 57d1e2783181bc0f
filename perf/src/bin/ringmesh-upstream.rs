//! `ringmesh-upstream`: a test upstream (fixed-size answers, `/echo`, `?delay=MS`,
//! `/stall?ms=MS`).
//!
//! ringmesh-upstream [--addr 127.0.0.1:8081] [--size 2] [--cpus 1]

use ringmesh_perf::upstream::{self, UpstreamConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut cfg = UpstreamConfig {
        addr: "127.0.0.1:8081".parse()?,
        size: 2,
        cpus: vec![],
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => cfg.addr = p.value()?.parse()?,
            Long("size") => cfg.size = p.value()?.parse()?,
            Long("cpus") => cfg.cpus = ringmesh_perf::cpus(&p.value()?.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let up = upstream::start(cfg)?;
    println!("listening on {}", up.addr);
    loop {
        std::thread::park();
    }
}
