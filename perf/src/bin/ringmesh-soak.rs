//! `ringmesh-soak`: the soak and fault harness (see perf/README.md).
//!
//! ringmesh-soak [--minutes N | --seconds N] [--cooldown 60s] [--out FILE] [--check] [--ringmesh BIN]
//!
//! Run from the workspace (`cargo run --release -p ringmesh-perf --bin ringmesh-soak -- --minutes 10`)
//! it builds the proxy and the test upstream first.
//!
//! With `--check` the exit status is 1 when a check failed (a crash, a failed request, a lost
//! access-log line, descriptors, threads or memory not given back).

use std::time::Duration;

use ringmesh_perf::soak::{self, Options};

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ringmesh-soak: {e}");
            std::process::exit(2);
        }
    }
}

fn real_main() -> Result<i32, Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut o = Options {
        load: Duration::from_secs(600),
        cooldown: Duration::from_secs(60),
        ringmesh: bin_dir.join("ringmesh"),
        upstream: bin_dir.join("ringmesh-upstream"),
        dir: std::env::temp_dir().join(format!("ringmesh-soak-{}", std::process::id())),
    };
    let mut out = None;
    let mut check = false;
    let mut given_ringmesh = false;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("minutes") => o.load = Duration::from_secs(60 * p.value()?.parse::<u64>()?),
            Long("seconds") => o.load = Duration::from_secs(p.value()?.parse()?),
            Long("cooldown") => {
                o.cooldown =
                    ringmesh_perf::duration(&p.value()?.string()?).ok_or("bad --cooldown")?
            }
            Long("out") => out = Some(std::path::PathBuf::from(p.value()?)),
            Long("check") => check = true,
            Long("ringmesh") => {
                o.ringmesh = p.value()?.into();
                given_ringmesh = true;
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if o.load < Duration::from_secs(30) {
        return Err("a soak needs at least 30 s of load".into());
    }
    if !given_ringmesh {
        // As the comparison driver does: the proxy under test is the workspace's code as it is
        // now, never a stale binary (a no-op when it is up to date).
        build_release(&bin_dir);
    }
    for bin in [&o.ringmesh, &o.upstream] {
        if !bin.exists() {
            return Err(format!(
                "{} is missing: cargo build --release -p ringmesh-control --bin ringmesh -p ringmesh-perf",
                bin.display()
            )
            .into());
        }
    }
    eprintln!(
        "soak: {:?} of load, {:?} of cool-down, in {}",
        o.load,
        o.cooldown,
        o.dir.display()
    );
    let report = soak::run(&o)?;
    println!("{}", report.markdown);
    if let Some(path) = out {
        std::fs::write(&path, &report.markdown)?;
    }
    let _ = std::fs::remove_dir_all(&o.dir);
    Ok(if check && !report.failed_checks.is_empty() {
        1
    } else {
        0
    })
}

/// Builds `ringmesh` and `ringmesh-upstream` (release) in the workspace this harness was built
/// from, when the harness runs from its release directory.
fn build_release(bin_dir: &std::path::Path) {
    if bin_dir != ringmesh_perf::workspace().join("target/release") {
        return;
    }
    let built = ringmesh_perf::build_release(&[
        ("ringmesh-control", "ringmesh"),
        ("ringmesh-perf", "ringmesh-upstream"),
    ]);
    if !built {
        eprintln!("ringmesh-soak: building ringmesh and ringmesh-upstream failed");
    }
}
