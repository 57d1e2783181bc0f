//! The comparison driver: one backend, the same load against it directly and through each proxy,
//! pinned to the same cores, rounds interleaved; CPU per request, memory under load and per idle
//! connection; a markdown table with ratios to ringmesh, written to perf/RESULTS.md.
//!
//! Cores: the load generator runs on the first CPU; the backend and the proxy under test share
//! the second (`taskset`), so that every proxy pays the same context switches. Each target runs
//! in a cgroup of its own, which counts the CPU of every process it ever ran.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::load::LoadConfig;
use crate::procfs;
use crate::tls::CertFiles;

mod external;
mod measure;
mod target;
mod variants;

use measure::{Run, Summary, Window, idle_cost, measure, measure_meters, summarize};
pub use target::{Meter, Target, build_ringmesh};
use target::{
    backend_config, free_port, haproxy_config, hard_fd_limit, have, install_peers,
    nginx_proxy_config, ringmesh_config,
};
use variants::{Variants, access_log_scenario, mesh_scenario};

/// What to compare, and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds per scenario (targets rotate between rounds).
    pub rounds: usize,
    /// Recorded time per run.
    pub duration: Duration,
    /// Warm-up per run.
    pub warmup: Duration,
    /// Scenarios to run, by name.
    pub scenarios: Vec<String>,
    /// Extra peers: (name, shell command with `{port}` and `{backend}`).
    pub peers: Vec<(String, String)>,
    /// Leave out nginx and HAProxy as proxies.
    pub skip_peers: bool,
    /// Where to write the report.
    pub out: Option<PathBuf>,
    /// CPU for the load generator.
    pub load_cpu: usize,
    /// CPU for the backend and the proxy under test.
    pub proxy_cpu: usize,
    /// Idle connections to open in the idle scenario.
    pub idle_connections: usize,
    /// Another ringmesh binary to measure beside this build (`ringmesh-before`), such as a
    /// release build of an earlier commit.
    pub baseline: Option<PathBuf>,
    /// Also run the `small` scenario under wrk (an HTTP/1.1 load generator of another make).
    pub wrk: bool,
}

/// Every scenario, in report order.
pub const SCENARIOS: [&str; 12] = [
    "small",
    "one",
    "idle",
    "1mib",
    "upload",
    "newconn",
    "tls-small",
    "tls-newconn",
    "tls-idle",
    "h2",
    "mesh",
    "access-log",
];

/// The name of the baseline's row (`--baseline`).
const BASELINE: &str = "ringmesh-before";

/// The name of the bare relay's row (`ringmesh-relay`).
const FLOOR: &str = "relay-floor";

/// Where the relay is a floor: small requests and answers, one read and one write each way. It
/// copies large bodies through one 16 KiB buffer and opens an upstream connection for each
/// client's, which a proxy need not.
const FLOOR_SCENARIOS: [&str; 2] = ["small", "one"];

fn scenario_load(name: &str, t: &Target, o: &Options, certs: &CertFiles) -> LoadConfig {
    let (port, tls) = match name.strip_prefix("tls-") {
        Some(_) => (
            t.tls_port.unwrap_or(t.port),
            crate::tls::client_config(&certs.ca, false)
                .ok()
                .map(|c| (c, "localhost".to_string())),
        ),
        None => (t.port, None),
    };
    let name = name.strip_prefix("tls-").unwrap_or(name);
    let base = LoadConfig {
        tls,
        addr: ([127, 0, 0, 1], port).into(),
        warmup: o.warmup,
        duration: o.duration,
        cpus: vec![o.load_cpu],
        ..LoadConfig::default()
    };
    match name {
        "one" => LoadConfig {
            connections: 1,
            ..base
        },
        "1mib" => LoadConfig {
            connections: 10,
            path: "/1m".into(),
            ..base
        },
        "upload" => LoadConfig {
            connections: 10,
            path: "/upload".into(),
            body: 100 * 1024,
            ..base
        },
        "newconn" => LoadConfig {
            connections: 10,
            new_connection: true,
            ..base
        },
        _ => LoadConfig {
            connections: 50,
            ..base
        },
    }
}

fn describe(name: &str) -> &'static str {
    match name {
        "small" => "small GET (2-byte answer), 50 keep-alive connections, closed loop",
        "one" => "small GET on one connection: latency added over the direct path",
        "idle" => "memory per idle keep-alive connection (one request each, then idle)",
        "1mib" => "1 MiB answers, 10 connections: throughput",
        "upload" => "100 KiB uploads (PUT), 10 connections",
        "newconn" => "a new connection per request, 10 at a time",
        "tls-small" => "small GET over TLS 1.3 (ECDSA P-256), 50 keep-alive connections",
        "tls-newconn" => {
            "a new TLS connection per request, full handshake (no resumption), 10 at a time: handshakes/s"
        }
        "tls-idle" => "memory per idle TLS keep-alive connection (one request each, then idle)",
        "mesh" => {
            "two ringmesh hops (client → sender → receiver → backend), small GET, 50 HTTP/1.1 client connections: the hop between the proxies in HTTP/1.1 (pooled) or upgraded to HTTP/2 (`protocol: mesh`); CPU and RSS are both proxies'"
        }
        "access-log" => {
            "what access logging costs: small GET, 50 connections, through ringmesh without an access log and logging every request to a file (metrics on in both)"
        }
        "h2" => {
            "small GET over HTTP/2 in cleartext (prior knowledge) to the HTTP/1.1 backend: h2load, 10 connections x 10 streams; h2load reports no percentiles: p50 is its mean"
        }
        _ => "",
    }
}

/// Runs the comparison and returns the markdown report.
pub fn run(o: &Options) -> Result<String, String> {
    let _ = ringmesh_core::sys::raise_fd_limit();
    if !o.skip_peers {
        install_peers()?;
    }
    if !have("taskset") {
        return Err("taskset (util-linux) is needed to pin processes".into());
    }
    let ringmesh = build_ringmesh()?;
    let dir = std::env::temp_dir().join(format!("ringmesh-perf-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("www/1m"), vec![b'm'; 1 << 20]).map_err(|e| e.to_string())?;
    let certs = crate::tls::make_certs(&dir)?;

    let be_port = free_port();
    std::fs::write(dir.join("backend.conf"), backend_config(&dir, be_port))
        .map_err(|e| e.to_string())?;
    let mut backend = Target::start(
        "backend",
        o.proxy_cpu,
        &format!("nginx -c {}/backend.conf", dir.display()),
        (be_port, None),
        &dir,
    )?;

    let mut targets: Vec<Target> = Vec::new();
    let rm_ports = (free_port(), free_port());
    std::fs::write(
        dir.join("ringmesh.yaml"),
        ringmesh_config(rm_ports, be_port, &certs),
    )
    .map_err(|e| e.to_string())?;
    targets.push(Target::start(
        "ringmesh",
        o.proxy_cpu,
        &format!(
            "{} proxy --config {}/ringmesh.yaml --workers 1 --log-level warn",
            ringmesh.display(),
            dir.display()
        ),
        (rm_ports.0, Some(rm_ports.1)),
        &dir,
    )?);
    // The plain listener takes HTTP/2 by its preface.
    if let Some(t) = targets.last_mut() {
        t.h2_port = Some(rm_ports.0);
    }
    if let Some(before) = &o.baseline {
        let ports = (free_port(), free_port());
        std::fs::write(
            dir.join("ringmesh-before.yaml"),
            ringmesh_config(ports, be_port, &certs),
        )
        .map_err(|e| e.to_string())?;
        targets.push(Target::start(
            BASELINE,
            o.proxy_cpu,
            &format!(
                "{} proxy --config {}/ringmesh-before.yaml --workers 1 --log-level warn",
                before.display(),
                dir.display()
            ),
            (ports.0, Some(ports.1)),
            &dir,
        )?);
        if let Some(t) = targets.last_mut() {
            t.h2_port = Some(ports.0);
        }
    }
    if !o.skip_peers {
        let p = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.join("nginx.conf"),
            nginx_proxy_config(&dir, p, be_port, &certs),
        )
        .map_err(|e| e.to_string())?;
        targets.push(Target::start(
            "nginx",
            o.proxy_cpu,
            &format!("nginx -c {}/nginx.conf", dir.display()),
            (p.0, Some(p.1)),
            &dir,
        )?);
        if let Some(t) = targets.last_mut() {
            t.h2_port = Some(p.2);
        }
        let p = (free_port(), free_port(), free_port());
        std::fs::write(dir.join("haproxy.cfg"), haproxy_config(p, be_port, &certs))
            .map_err(|e| e.to_string())?;
        targets.push(Target::start(
            "haproxy",
            o.proxy_cpu,
            &format!("haproxy -f {}/haproxy.cfg", dir.display()),
            (p.0, Some(p.1)),
            &dir,
        )?);
        if let Some(t) = targets.last_mut() {
            t.h2_port = Some(p.2);
        }
    }
    // The bare relay sets the floor for CPU per request: it does only what the kernel and
    // io_uring must do for a hop.
    let relay = ringmesh.with_file_name("ringmesh-relay");
    if relay.exists() {
        let p = free_port();
        targets.push(Target::start(
            FLOOR,
            o.proxy_cpu,
            &format!(
                "{} --listen 127.0.0.1:{p} --upstream 127.0.0.1:{be_port}",
                relay.display()
            ),
            (p, None),
            &dir,
        )?);
    }
    for (name, cmd) in &o.peers {
        let p = free_port();
        let cmd = cmd
            .replace("{port}", &p.to_string())
            .replace("{backend}", &be_port.to_string());
        targets.push(Target::start(name, o.proxy_cpu, &cmd, (p, None), &dir)?);
    }

    let mut md = String::new();
    let _ = writeln!(md, "# ringmesh performance comparison\n");
    let _ = writeln!(md, "- date: {}", chrono_like_now());
    let _ = writeln!(md, "- machine: {}", procfs::machine());
    let _ = writeln!(
        md,
        "- layout: load generator on CPU {}; backend (nginx, 1 worker) and the proxy under test share CPU {}; every proxy runs one worker",
        o.load_cpu, o.proxy_cpu
    );
    let _ = writeln!(
        md,
        "- runs: {} round(s) per scenario, {:?} recorded after {:?} of warm-up, targets rotated between rounds; medians shown",
        o.rounds, o.duration, o.warmup
    );
    let _ = writeln!(
        md,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let by_cgroup = std::iter::once(&backend)
        .chain(targets.iter())
        .all(Target::counted_by_cgroup);
    let _ = writeln!(
        md,
        "- CPU/req: user+system time over the recorded window (warm-up left out) of {}, divided by the requests answered in that window; for `direct` it is the backend's own",
        if by_cgroup {
            "every process the target ran, read from a cgroup of its own (so that worker processes that exit, are replaced or are restarted are all counted)"
        } else {
            "the target's live process tree read from /proc (no cgroup could be made: processes that exit during a run are not counted)"
        }
    );
    if let Some(b) = &o.baseline {
        let _ = writeln!(
            md,
            "- {BASELINE}: the same config on `{}`, to compare this build with",
            b.display()
        );
    }
    if targets.iter().any(|t| t.name == FLOOR) {
        let _ = writeln!(
            md,
            "- {FLOOR}: `ringmesh-relay`, a bare TCP relay (two copy loops per connection, no parsing) on ringmesh's io_uring setup: the least CPU per request that a proxy can spend here, shown where it is a floor (`small`, `one`)"
        );
    }
    let _ = writeln!(md);

    let variants = Variants {
        ringmesh: &ringmesh,
        baseline: o.baseline.as_deref(),
        dir: &dir,
        be_port,
        o,
    };
    for scenario in &o.scenarios {
        let _ = writeln!(md, "## {scenario}: {}\n", describe(scenario));
        eprintln!("scenario {scenario}");
        let tls = scenario.starts_with("tls-");
        if scenario == "idle" || scenario == "tls-idle" {
            // HAProxy reserves two descriptors per connection it may hold: every target gets the
            // same count, within what the descriptor limit allows it.
            let n = o
                .idle_connections
                .min((hard_fd_limit() as usize / 2).saturating_sub(700));
            let _ = writeln!(
                md,
                "{n} idle connections, after 500 to warm up, each target freshly started.\n"
            );
            backend.restart()?;
            for t in targets.iter_mut() {
                t.restart()?;
            }
            let _ = writeln!(
                md,
                "| target | bytes per idle connection | ratio to ringmesh |\n|---|---|---|"
            );
            let mut rows = Vec::new();
            let client = if tls {
                Some(crate::tls::client_config(&certs.ca, false)?)
            } else {
                None
            };
            for t in std::iter::once(&backend)
                .chain(targets.iter())
                .filter(|t| !tls || t.tls_port.is_some())
                .filter(|t| t.name != FLOOR)
            {
                let name = if t.name == "backend" {
                    "direct (backend)".to_string()
                } else {
                    t.name.clone()
                };
                match idle_cost(t, n, client.as_ref()) {
                    Ok(b) => rows.push((name, b)),
                    Err(e) => rows.push((format!("{name} (failed: {e})"), f64::NAN)),
                }
            }
            let ours = rows
                .iter()
                .find(|(n, _)| n == "ringmesh")
                .map_or(f64::NAN, |r| r.1);
            for (n, b) in rows {
                let _ = writeln!(md, "| {n} | {b:.0} | {:.2} |", b / ours);
            }
            let _ = writeln!(md);
            continue;
        }
        if scenario == "mesh" {
            mesh_scenario(&mut md, &variants)?;
            continue;
        }
        if scenario == "access-log" {
            access_log_scenario(&mut md, &variants)?;
            continue;
        }
        // TLS scenarios: the proxies that terminate TLS (the backend speaks plain HTTP); the
        // HTTP/2 one: the proxies that serve it.
        let h2 = scenario == "h2";
        let all: Vec<&Target> = std::iter::once(&backend)
            .chain(targets.iter())
            .filter(|t| !tls || t.tls_port.is_some())
            .filter(|t| !h2 || t.h2_port.is_some())
            .filter(|t| t.name != FLOOR || FLOOR_SCENARIOS.contains(&scenario.as_str()))
            .collect();
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); all.len()];
        for round in 0..o.rounds {
            for k in 0..all.len() {
                let i = (k + round) % all.len();
                let t = all[i];
                let r = if h2 {
                    // h2load's own warm-up is whole seconds, at least one.
                    let window = Window {
                        warmup: Duration::from_secs(o.warmup.as_secs().max(1)),
                        duration: Duration::from_secs(o.duration.as_secs().max(1)),
                    };
                    let port = t.h2_port.unwrap_or(t.port);
                    measure_meters(&[t.meter()], window, || external::h2load(port, o))
                } else {
                    measure(t, &scenario_load(scenario, t, o, &certs))
                };
                eprintln!(
                    "  round {round} {:10} {:>10.0} req/s p99 {:>8.0} us cpu {:>6.2} us/req errors {}",
                    t.name, r.report.rps, r.report.p99_us, r.cpu_us_per_req, r.report.errors
                );
                runs[i].push(r);
            }
        }
        let sums: Vec<Summary> = runs.iter().map(|r| summarize(r)).collect();
        let ours = all
            .iter()
            .position(|t| t.name == "ringmesh")
            .map(|i| sums[i].clone())
            .unwrap_or_default();
        let direct = if h2 {
            Summary::default()
        } else {
            sums[0].clone()
        };
        let throughput = scenario == "1mib";
        let _ = writeln!(
            md,
            "| target | {} | ratio to ringmesh | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/req | RSS MiB | errors |",
            if throughput { "MB/s" } else { "requests/s" }
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for (t, s) in all.iter().zip(&sums) {
            let name = if t.name == "backend" {
                "direct (backend)"
            } else {
                &t.name
            };
            let (v, ov) = if throughput {
                (s.mbps, ours.mbps)
            } else {
                (s.rps, ours.rps)
            };
            row(&mut md, name, v, v / ov, s);
        }
        if scenario == "small" && o.wrk {
            wrk_table(&mut md, &all, o);
        }
        if scenario == "one" {
            let _ = writeln!(md, "\nLatency added over the direct path (p50): ");
            for (t, s) in all.iter().zip(&sums).skip(1) {
                let _ = write!(md, "{} {:.0} µs; ", t.name, s.p50 - direct.p50);
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
    }
    drop(targets);
    drop(backend);
    if let Some(out) = &o.out {
        std::fs::write(out, &md).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(md)
}

/// One row of a results table: the figure, its ratio, then latency, CPU, memory, errors.
fn row(md: &mut String, name: &str, v: f64, ratio: f64, s: &Summary) {
    let p999 = if s.p999.is_finite() {
        format!("{:.0}", s.p999)
    } else {
        "–".into()
    };
    let _ = writeln!(
        md,
        "| {name} | {v:.0} | {ratio:.2} | {:.0} | {:.0} | {p999} | {:.0} | {:.2} | {:.1} | {} |",
        s.p50, s.p99, s.max, s.cpu_us, s.rss_mib, s.errors
    );
}

/// The `small` load again, generated by wrk (`-t1 -c50`, the same layout), in interleaved
/// rounds: a load generator of another make, to check the driver's own figures against.
fn wrk_table(md: &mut String, all: &[&Target], o: &Options) {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); all.len()];
    for round in 0..o.rounds {
        for k in 0..all.len() {
            let i = (k + round) % all.len();
            let t = all[i];
            external::wrk_warmup(t.port, o);
            let window = Window {
                warmup: Duration::ZERO,
                duration: Duration::from_secs(o.duration.as_secs().max(1)),
            };
            let r = measure_meters(&[t.meter()], window, || external::wrk(t.port, o));
            eprintln!(
                "  wrk round {round} {:10} {:>10.0} req/s p99 {:>8.0} us cpu {:>6.2} us/req errors {}",
                t.name, r.report.rps, r.report.p99_us, r.cpu_us_per_req, r.report.errors
            );
            runs[i].push(r);
        }
    }
    let sums: Vec<Summary> = runs.iter().map(|r| summarize(r)).collect();
    let ours = all
        .iter()
        .position(|t| t.name == "ringmesh")
        .map_or(f64::NAN, |i| sums[i].rps);
    let _ = writeln!(
        md,
        "\nThe same under wrk (`wrk -t1 -c50 --latency`, after a warm-up run; wrk reports no p99.9):\n"
    );
    let _ = writeln!(
        md,
        "| target | requests/s | ratio to ringmesh | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/req | RSS MiB | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (t, s) in all.iter().zip(&sums) {
        let name = if t.name == "backend" {
            "direct (backend)"
        } else {
            &t.name
        };
        row(md, name, s.rps, s.rps / ours, s);
    }
}

/// UTC date and time, without a date crate.
fn chrono_like_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
