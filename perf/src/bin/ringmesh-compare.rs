//! `ringmesh-compare`: runs the same load against the backend directly, ringmesh, nginx, HAProxy
//! and any peer given, and writes perf/RESULTS.md. See perf/README.md.

use std::time::Duration;

use ringmesh_perf::compare::{self, Options, SCENARIOS};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("ringmesh-compare: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut o = Options {
        rounds: 3,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        peers: Vec::new(),
        skip_peers: false,
        out: Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")),
        load_cpu: 0,
        proxy_cpu: 1,
        idle_connections: 10_000,
        baseline: None,
        wrk: true,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("rounds") => o.rounds = p.value()?.parse()?,
            Long("duration") => {
                o.duration =
                    ringmesh_perf::duration(&p.value()?.string()?).ok_or("bad --duration")?
            }
            Long("warmup") => {
                o.warmup = ringmesh_perf::duration(&p.value()?.string()?).ok_or("bad --warmup")?
            }
            Long("scenarios") => {
                o.scenarios = p
                    .value()?
                    .string()?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            Long("peer") => {
                let v = p.value()?.string()?;
                let (name, cmd) = v
                    .split_once('=')
                    .ok_or("--peer NAME=COMMAND (with {port} and {backend})")?;
                o.peers.push((name.into(), cmd.into()));
            }
            Long("no-peers") => o.skip_peers = true,
            Long("out") => o.out = Some(p.value()?.into()),
            Long("no-out") => o.out = None,
            Long("idle") => o.idle_connections = p.value()?.parse()?,
            Long("quick") => {
                o.rounds = 1;
                o.duration = Duration::from_secs(3);
                o.idle_connections = 2000;
            }
            Long("baseline") => o.baseline = Some(p.value()?.into()),
            Long("no-wrk") => o.wrk = false,
            Long("load-cpu") => o.load_cpu = p.value()?.parse()?,
            Long("proxy-cpu") => o.proxy_cpu = p.value()?.parse()?,
            _ => return Err(arg.unexpected().into()),
        }
    }
    for s in &o.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(format!("unknown scenario {s}; known: {}", SCENARIOS.join(", ")).into());
        }
    }
    let md = compare::run(&o)?;
    println!("{md}");
    Ok(())
}
