//! The soak and fault harness: ringmesh (one worker) in front of three endpoints, under mixed
//! load for a while, with endpoints killed and restarted, one frozen and thawed, the config
//! reloaded every few seconds (an invalid file now and then), HTTP/2 bursts, a large-body
//! burst, 10,000 connections that come and go, and slowloris on a listener of its own. It
//! samples the proxy's memory, descriptors and threads every second, then reports failed
//! requests by fault, the access log against the clients' counts, and what the cool-down gave
//! back. See perf/README.md.

// The harness's threads share tallies and samples; it is a test tool, not the data plane.
#[allow(clippy::disallowed_types)]
mod client;
mod fleet;
mod report;
#[allow(clippy::disallowed_types)]
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use client::{Shape, Tally};
use fleet::{Endpoint, Proxy};
pub use report::Report;

/// How long, and where the binaries are.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds of load.
    pub load: Duration,
    /// Seconds of quiet after it, watching what is given back.
    pub cooldown: Duration,
    /// `ringmesh` and `ringmesh-upstream`.
    pub ringmesh: PathBuf,
    pub upstream: PathBuf,
    /// Where configs and logs go.
    pub dir: PathBuf,
}

/// A fault, as it happened.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Seconds since the soak began.
    pub start: f64,
    pub end: f64,
    pub what: String,
    /// The endpoint's port, for faults of an endpoint.
    pub endpoint: Option<u16>,
}

/// Runs the soak and returns its report.
pub fn run(o: &Options) -> Result<Report, String> {
    let _ = ringmesh_core::sys::raise_fd_limit();
    std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
    let mut endpoints = (0..3)
        .map(|_| Endpoint::start(&o.upstream, fleet::free_port()))
        .collect::<Result<Vec<_>, _>>()?;
    let ports: Vec<u16> = endpoints.iter().map(|e| e.port).collect();
    let mut proxy = Proxy::start(&o.ringmesh, &o.dir, ports)?;
    let wall_start = SystemTime::now();
    let tally = Tally::new();
    let t = |tally: &Tally| tally.now();
    // Before any client: the descriptors of an idle proxy.
    std::thread::sleep(Duration::from_millis(500));
    let idle = watch::sample(proxy.pid(), t(&tally)).ok_or("cannot read the proxy's /proc")?;
    let watching = Arc::new(AtomicBool::new(false));
    let (samples, sampler) = watch::every_second(proxy.pid(), tally.start, watching.clone());

    let main: SocketAddr = ([127, 0, 0, 1], proxy.ports.main).into();
    let slow: SocketAddr = ([127, 0, 0, 1], proxy.ports.slow).into();
    let mut threads = Vec::new();
    let steady = [
        (
            4,
            Shape {
                kind: 0,
                path: "/?size=2",
                body: 0,
                fresh: false,
                rate: 1500,
            },
        ),
        (
            2,
            Shape {
                kind: 1,
                path: "/?size=2",
                body: 0,
                fresh: true,
                rate: 300,
            },
        ),
        (
            1,
            Shape {
                kind: 2,
                path: "/upload",
                body: 48 * 1024,
                fresh: false,
                rate: 200,
            },
        ),
    ];
    for (n, shape) in steady {
        for _ in 0..n {
            let tally = tally.clone();
            threads.push(std::thread::spawn(move || {
                client::request_loop_until(main, shape, &tally, &tally.stop)
            }));
        }
    }
    let slow_stop = Arc::new(AtomicBool::new(false));
    let slowloris = {
        let stop = slow_stop.clone();
        std::thread::spawn(move || client::slowloris(slow, 200, Duration::from_secs(1), &stop))
    };

    let load = o.load.as_secs_f64();
    let plan = Plan::new(load);
    let mut faults: Vec<Fault> = Vec::new();
    let mut h2 = (0u64, 0u64);
    let mut h2_errors = Vec::new();
    let mut baseline = None;
    let mut crashed = None;
    let mut done = vec![false; plan.events.len()];
    let mut bursts: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut h2_runs: Vec<std::thread::JoinHandle<Result<(u64, u64), String>>> = Vec::new();
    while t(&tally) < load {
        let now = t(&tally);
        if baseline.is_none() && now >= 10.0 {
            baseline = watch::sample(proxy.pid(), now);
        }
        if !proxy.alive() && crashed.is_none() {
            crashed = Some(now);
        }
        for (i, ev) in plan.events.iter().enumerate() {
            if done[i] || now < ev.at {
                continue;
            }
            done[i] = true;
            match *ev {
                Event {
                    what: What::Kill(k),
                    ..
                } => {
                    endpoints[k].kill();
                    faults.push(Fault {
                        start: now,
                        end: now + 3.0,
                        what: "killed (SIGKILL), restarted 3 s later".into(),
                        endpoint: Some(endpoints[k].port),
                    });
                }
                Event {
                    what: What::Restart(k),
                    ..
                } => endpoints[k].restart()?,
                Event {
                    what: What::Freeze(k),
                    ..
                } => {
                    endpoints[k].freeze();
                    faults.push(Fault {
                        start: now,
                        end: now + 10.0,
                        what: "frozen (SIGSTOP) for 10 s".into(),
                        endpoint: Some(endpoints[k].port),
                    });
                }
                Event {
                    what: What::Thaw(k),
                    ..
                } => endpoints[k].thaw(),
                Event {
                    what: What::Reload(invalid),
                    ..
                } => {
                    proxy.reload(invalid)?;
                    if invalid {
                        faults.push(Fault {
                            start: now,
                            end: now,
                            what: "an invalid config file (the next reload fixes it)".into(),
                            endpoint: None,
                        });
                    }
                }
                Event {
                    what: What::H2Burst,
                    ..
                } => {
                    h2_runs.push(std::thread::spawn(move || client::h2_burst(main, 200_000)));
                }
                Event {
                    what: What::Downloads,
                    ..
                } => {
                    for _ in 0..8 {
                        let tally = tally.clone();
                        let shape = Shape {
                            kind: 3,
                            path: "/?size=1048576",
                            body: 0,
                            fresh: false,
                            rate: 60,
                        };
                        bursts.push(std::thread::spawn(move || {
                            let stop = Arc::new(AtomicBool::new(false));
                            let until = {
                                let stop = stop.clone();
                                std::thread::spawn(move || {
                                    std::thread::sleep(Duration::from_secs(5));
                                    stop.store(true, Ordering::Relaxed);
                                })
                            };
                            client::request_loop_until(main, shape, &tally, &stop);
                            let _ = until.join();
                        }));
                    }
                }
                Event {
                    what: What::ComeAndGo,
                    ..
                } => {
                    let tally = tally.clone();
                    bursts.push(std::thread::spawn(move || {
                        client::come_and_go(main, 10_000, &tally)
                    }));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tally.stop.store(true, Ordering::Relaxed);
    slow_stop.store(true, Ordering::Relaxed);
    for th in threads.into_iter().chain(bursts) {
        let _ = th.join();
    }
    let _ = slowloris.join();
    for r in h2_runs {
        match r.join() {
            Ok(Ok((ok, failed))) => {
                h2.0 += ok;
                h2.1 += failed;
            }
            Ok(Err(e)) => h2_errors.push(e),
            Err(_) => h2_errors.push("the h2load thread panicked".into()),
        }
    }
    // Every endpoint up again, every one thawed.
    for e in &mut endpoints {
        e.thaw();
    }
    let load_end = t(&tally);
    std::thread::sleep(o.cooldown);
    if !proxy.alive() && crashed.is_none() {
        crashed = Some(t(&tally));
    }
    let after = watch::sample(proxy.pid(), t(&tally));
    watching.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
    let metrics = proxy.metrics();
    let failures = tally.failures.lock().map(|v| v.clone()).unwrap_or_default();
    let counts: Vec<(&'static str, u64)> = client::KINDS
        .iter()
        .zip(&tally.done)
        .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
        .collect();
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    Ok(report::build(report::Input {
        load: o.load,
        cooldown: o.cooldown,
        load_end,
        wall_start,
        counts,
        h2,
        h2_errors,
        failures,
        faults,
        idle,
        baseline: baseline.unwrap_or(idle),
        after,
        samples,
        log: &log,
        metrics: &metrics,
        crashed,
    }))
}

/// Something the timeline does.
#[derive(Debug, Clone, Copy)]
enum What {
    Kill(usize),
    Restart(usize),
    Freeze(usize),
    Thaw(usize),
    Reload(bool),
    H2Burst,
    Downloads,
    ComeAndGo,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    at: f64,
    what: What,
}

/// The timeline of a soak of `load` seconds: an endpoint killed every 45 s from 20 s (the
/// next one each time, restarted 3 s later); one frozen for 10 s halfway between two kills;
/// a reload every 5 s, invalid at 30 s past each minute; an HTTP/2 burst every 30 s; the
/// large-body burst at 60% and the crowd of connections at 70% of the load.
struct Plan {
    events: Vec<Event>,
}

impl Plan {
    fn new(load: f64) -> Plan {
        let mut events = Vec::new();
        let mut push = |at: f64, what| {
            if at < load - 1.0 {
                events.push(Event { at, what });
            }
        };
        let mut k = 0;
        let mut at = 20.0;
        while at < load - 5.0 {
            push(at, What::Kill(k % 3));
            push(at + 3.0, What::Restart(k % 3));
            k += 1;
            at += 45.0;
        }
        // Halfway between two kills near the middle: 42.5 + 45 n, of the endpoint killed next.
        let n = ((load / 2.0 - 42.5) / 45.0).round().max(0.0);
        let freeze = 42.5 + 45.0 * n;
        let target = (n as usize + 1) % 3;
        push(freeze, What::Freeze(target));
        push(freeze + 10.0, What::Thaw(target));
        let mut r = 5.0;
        while r < load {
            let invalid = (r as u64) % 60 == 30;
            push(r, What::Reload(invalid));
            r += 5.0;
        }
        let mut b = 15.0;
        while b < load - 5.0 {
            push(b, What::H2Burst);
            b += 30.0;
        }
        push(load * 0.6, What::Downloads);
        push(load * 0.7, What::ComeAndGo);
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        Plan { events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_minute_plan_has_kills_a_freeze_reloads_and_bursts_apart() {
        let p = Plan::new(120.0);
        let kills: Vec<f64> = p
            .events
            .iter()
            .filter(|e| matches!(e.what, What::Kill(_)))
            .map(|e| e.at)
            .collect();
        assert_eq!(kills, vec![20.0, 65.0, 110.0]);
        let freeze = p
            .events
            .iter()
            .find(|e| matches!(e.what, What::Freeze(_)))
            .unwrap();
        assert!(
            kills
                .iter()
                .all(|k| (freeze.at - k).abs() >= 10.0 && (freeze.at + 10.0 - k).abs() >= 3.0)
        );
        let invalid = p
            .events
            .iter()
            .filter(|e| matches!(e.what, What::Reload(true)))
            .count();
        assert_eq!(invalid, 2);
        assert!(p.events.iter().any(|e| matches!(e.what, What::ComeAndGo)));
        assert!(p.events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn a_ten_minute_plan_kills_at_least_five_times() {
        let p = Plan::new(600.0);
        let kills = p
            .events
            .iter()
            .filter(|e| matches!(e.what, What::Kill(_)))
            .count();
        assert!(kills >= 5, "{kills}");
        assert_eq!(
            p.events
                .iter()
                .filter(|e| matches!(e.what, What::Freeze(_)))
                .count(),
            1
        );
    }
}
