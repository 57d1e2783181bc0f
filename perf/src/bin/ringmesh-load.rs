//! `ringmesh-load`: HTTP/1.1 load, closed or open loop, with latency percentiles.
//!
//! ringmesh-load --addr 127.0.0.1:8080 [-c 50] [--rate 20000] [--new-conn] [--body BYTES]
//!               [--path /] [--duration 10s] [--warmup 1s] [--cpus 0] [--json]
//!               [--tls-ca CA.pem [--tls-name localhost] [--no-resume]]

use ringmesh_perf::load::{self, LoadConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut cfg = LoadConfig::default();
    let mut json = false;
    let (mut ca, mut name, mut resume) = (None::<String>, "localhost".to_string(), true);
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("addr") => cfg.addr = p.value()?.parse()?,
            Short('c') | Long("connections") => cfg.connections = p.value()?.parse()?,
            Long("rate") => cfg.rate = Some(p.value()?.parse()?),
            Long("new-conn") => cfg.new_connection = true,
            Long("body") => cfg.body = p.value()?.parse()?,
            Long("path") => cfg.path = p.value()?.string()?,
            Long("host") => cfg.host = p.value()?.string()?,
            Long("duration") => {
                cfg.duration =
                    ringmesh_perf::duration(&p.value()?.string()?).ok_or("bad --duration")?
            }
            Long("warmup") => {
                cfg.warmup = ringmesh_perf::duration(&p.value()?.string()?).ok_or("bad --warmup")?
            }
            Long("cpus") => cfg.cpus = ringmesh_perf::cpus(&p.value()?.string()?),
            Long("json") => json = true,
            Long("tls-ca") => ca = Some(p.value()?.string()?),
            Long("tls-name") => name = p.value()?.string()?,
            Long("no-resume") => resume = false,
            Long("help") | Short('h') => {
                println!(
                    "{}",
                    include_str!("ringmesh-load.rs")
                        .lines()
                        .skip(2)
                        .take(4)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if let Some(ca) = ca {
        cfg.tls = Some((
            ringmesh_perf::tls::client_config(std::path::Path::new(&ca), resume)?,
            name,
        ));
    }
    let r = load::run(&cfg);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", load::table(&r));
    }
    Ok(())
}
