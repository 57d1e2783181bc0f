//! Scenarios that compare ringmesh with itself: two hops in HTTP/1.1 or HTTP/2 between the
//! proxies (`mesh`), and with or without an access log (`access-log`); with `--baseline`, the
//! baseline binary's hops beside this build's.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::measure::{Run, Summary, Window, measure_meters, median, summarize};
use super::target::{Meter, Target, free_port};
use super::{Options, row};
use crate::load::{self, LoadConfig};

/// What the scenarios comparing ringmesh with itself start their proxies from.
pub struct Variants<'a> {
    pub ringmesh: &'a Path,
    /// The binary to compare with (`--baseline`), if any.
    pub baseline: Option<&'a Path>,
    /// Where configs, logs and process output go.
    pub dir: &'a Path,
    pub be_port: u16,
    pub o: &'a Options,
}

/// One row of such a comparison: where the load goes, and every process it goes through.
struct Variant<'a> {
    label: String,
    entry: &'a Target,
    meters: Vec<Meter>,
}

/// Starts a one-worker ringmesh (`bin`) named `name` on `port` in front of `to`, with `cluster`
/// and `listener` as extra YAML members of its cluster and its listener.
fn ringmesh_variant(
    v: &Variants<'_>,
    bin: &Path,
    (name, port, to): (&str, u16, u16),
    (listener, cluster): (&str, &str),
) -> Result<Target, String> {
    let cfg = format!(
        "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:{port}\n    idle_timeout: 300s\n{listener}    routes: [ {{ match: {{ path_prefix: / }}, cluster: be }} ]\n\
clusters:\n  - {{ name: be, {cluster}endpoints: [ {{ addr: 127.0.0.1:{to} }} ] }}\n"
    );
    let file = v.dir.join(format!("{name}.yaml"));
    std::fs::write(&file, cfg).map_err(|e| e.to_string())?;
    Target::start(
        name,
        v.o.proxy_cpu,
        &format!(
            "{} proxy --config {} --workers 1 --log-level warn",
            bin.display(),
            file.display()
        ),
        (port, None),
        v.dir,
    )
}

/// Runs the small-GET load (50 connections) against each variant in interleaved rounds,
/// measuring the CPU of every process the variant goes through, and writes a table with ratios
/// to variant `reference`. Returns the runs, by variant.
fn compare_variants(
    md: &mut String,
    (what, reference_name): (&str, &str),
    variants: &[Variant<'_>],
    reference: usize,
    o: &Options,
) -> Vec<Vec<Run>> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    for round in 0..o.rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let v = &variants[i];
            let cfg = LoadConfig {
                addr: ([127, 0, 0, 1], v.entry.port).into(),
                warmup: o.warmup,
                duration: o.duration,
                cpus: vec![o.load_cpu],
                connections: 50,
                ..LoadConfig::default()
            };
            let window = Window {
                warmup: o.warmup,
                duration: o.duration,
            };
            let r = measure_meters(&v.meters, window, || load::run(&cfg));
            eprintln!(
                "  round {round} {:34} {:>10.0} req/s p99 {:>8.0} us cpu {:>6.2} us/req errors {}",
                v.label, r.report.rps, r.report.p99_us, r.cpu_us_per_req, r.report.errors
            );
            runs[i].push(r);
        }
    }
    let sums: Vec<Summary> = runs.iter().map(|r| summarize(r)).collect();
    let ours = sums[reference].clone();
    let both = if variants.iter().any(|v| v.meters.len() > 1) {
        " (all proxies)"
    } else {
        ""
    };
    let _ = writeln!(
        md,
        "| {what} | requests/s | ratio to {reference_name} | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/req{both} | RSS MiB{both} | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (v, s) in variants.iter().zip(&sums) {
        row(md, &v.label, s.rps, s.rps / ours.rps, s);
    }
    let _ = writeln!(md);
    runs
}

/// Two ringmesh hops: one receiver in front of the backend, and two senders whose cluster is the
/// receiver, one speaking HTTP/1.1 to it and one upgrading to HTTP/2 (`protocol: mesh`). With a
/// baseline, the same three processes again from the baseline binary.
pub fn mesh_scenario(md: &mut String, v: &Variants<'_>) -> Result<(), String> {
    struct Hops {
        receiver: Target,
        http1: Target,
        mesh: Target,
    }
    let hops = |bin: &Path, tag: &str| -> Result<Hops, String> {
        let proxy = |name: &str, to: u16, protocol: &str| {
            let cluster = format!("protocol: {protocol}, ");
            ringmesh_variant(
                v,
                bin,
                (&format!("{name}{tag}"), free_port(), to),
                ("", &cluster),
            )
        };
        let receiver = proxy("mesh-receiver", v.be_port, "http1")?;
        let http1 = proxy("mesh-sender-http1", receiver.port, "http1")?;
        let mesh = proxy("mesh-sender-h2", receiver.port, "mesh")?;
        Ok(Hops {
            receiver,
            http1,
            mesh,
        })
    };
    let ours = hops(v.ringmesh, "")?;
    let before = v.baseline.map(|b| hops(b, "-before")).transpose()?;
    fn variant<'a>(label: &str, sender: &'a Target, h: &Hops) -> Variant<'a> {
        Variant {
            label: label.to_string(),
            meters: vec![sender.meter(), h.receiver.meter()],
            entry: sender,
        }
    }
    let mut variants = vec![
        variant("HTTP/1.1 between the proxies", &ours.http1, &ours),
        variant("HTTP/2 between the proxies (mesh)", &ours.mesh, &ours),
    ];
    if let Some(b) = &before {
        variants.push(variant(
            "HTTP/1.1 between the proxies, baseline",
            &b.http1,
            b,
        ));
        variants.push(variant(
            "HTTP/2 between the proxies (mesh), baseline",
            &b.mesh,
            b,
        ));
    }
    let what = ("hop between the proxies", "mesh");
    let runs = compare_variants(md, what, &variants, 1, v.o);
    // Each proxy's share, for finding which side of the hop costs what.
    let _ = write!(md, "CPU µs/req, sender + receiver (medians):");
    for (variant, r) in variants.iter().zip(&runs) {
        let each = |i: usize| median(r.iter().map(|r| r.cpu_us_each[i]).collect());
        let _ = write!(md, " {}: {:.2} + {:.2};", variant.label, each(0), each(1));
    }
    let _ = writeln!(md, "\n");
    Ok(())
}

/// What access logging costs: the same ringmesh without an access log and logging every request
/// to a file (in the run's directory), metrics on in both.
pub fn access_log_scenario(md: &mut String, v: &Variants<'_>) -> Result<(), String> {
    let log = v.dir.join("access.log");
    let on = format!("    access_log: {}\n", log.display());
    let off = ringmesh_variant(v, v.ringmesh, ("log-off", free_port(), v.be_port), ("", ""))?;
    let on = ringmesh_variant(v, v.ringmesh, ("log-on", free_port(), v.be_port), (&on, ""))?;
    let variants = [
        Variant {
            label: "no access log".into(),
            meters: vec![off.meter()],
            entry: &off,
        },
        Variant {
            label: "every request logged to a file".into(),
            meters: vec![on.meter()],
            entry: &on,
        },
    ];
    let runs = compare_variants(md, ("access log", "no log"), &variants, 0, v.o);
    // Each round's own ratio: the machine's drift between rounds cancels out.
    let per_round = median(
        runs[1]
            .iter()
            .zip(&runs[0])
            .map(|(on, off)| on.report.rps / off.report.rps)
            .collect(),
    );
    // Batches reach the file within 300 ms of their requests.
    std::thread::sleep(Duration::from_millis(500));
    let lines = std::fs::read(&log).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let measured: u64 = runs[1].iter().map(|r| r.report.requests).sum();
    let _ = writeln!(
        md,
        "Median of the rounds' own ratios (logged / not logged): {per_round:.3}. The log holds \
         {lines} lines for {measured} requests measured (and those of the warm-ups).\n"
    );
    Ok(())
}
