//! One measured run: the load, and the CPU and memory of the targets it went through, counted
//! over the recorded window only; summaries over rounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::target::{Meter, Target};
use crate::load::{self, LoadConfig, Report};

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    pub report: Report,
    pub cpu_us_per_req: f64,
    /// CPU per request of each target measured, in the order given.
    pub cpu_us_each: Vec<f64>,
    pub rss_kib: u64,
}

/// The part of a load's run that it reports on: after `warmup`, for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// The driver's own load against `target`.
pub fn measure(target: &Target, cfg: &LoadConfig) -> Run {
    let window = Window {
        warmup: cfg.warmup,
        duration: cfg.duration,
    };
    measure_meters(&[target.meter()], window, || load::run(cfg))
}

/// A run of `load`, which records during `window`, with CPU read at the window's edges and
/// memory sampled throughout, summed over `meters`. CPU per request is the window's CPU over
/// the window's requests: connection set-up in the warm-up and the load's wind-down are left
/// out for every target alike.
pub fn measure_meters(meters: &[Meter], window: Window, load: impl FnOnce() -> Report) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, meters) = (stop.clone(), peak.clone(), meters.to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let rss = meters.iter().map(Meter::rss_kib).sum();
                peak.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let start = Instant::now();
    let edges = {
        let meters = meters.to_vec();
        std::thread::spawn(move || {
            let read = || meters.iter().map(Meter::cpu_seconds).collect::<Vec<_>>();
            std::thread::sleep((start + window.warmup).saturating_duration_since(Instant::now()));
            let before = read();
            let end = start + window.warmup + window.duration;
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            let after = read();
            after
                .iter()
                .zip(&before)
                .map(|(a, b)| a - b)
                .collect::<Vec<f64>>()
        })
    };
    let report = load();
    let cpu = edges.join().unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let requests = (report.requests as f64).max(1.0);
    Run {
        cpu_us_per_req: cpu.iter().sum::<f64>() * 1e6 / requests,
        cpu_us_each: cpu.iter().map(|c| c * 1e6 / requests).collect(),
        rss_kib: peak.load(Ordering::Relaxed),
        report,
    }
}

/// RSS growth per idle keep-alive connection, in bytes; over TLS when `tls` is given.
pub fn idle_cost(
    target: &Target,
    n: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<f64, String> {
    let meter = target.meter();
    if let Some(config) = tls {
        let port = target.tls_port.ok_or("no TLS port")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut conns = Vec::with_capacity(n);
        let mut open = |k: usize| -> Result<(), String> {
            for _ in 0..k {
                conns.push(crate::tls::open_idle(addr, config)?);
            }
            Ok(())
        };
        return settle_and_measure(&meter, &mut open, n);
    }
    let addr: SocketAddr = ([127, 0, 0, 1], target.port).into();
    let mut conns = Vec::with_capacity(n);
    let mut open = |k: usize| -> Result<(), String> {
        for _ in 0..k {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: perf\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            while !got.ends_with(b"ok") {
                let r = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if r == 0 {
                    return Err("closed".into());
                }
                got.extend_from_slice(&buf[..r]);
            }
            conns.push(s);
        }
        Ok(())
    };
    settle_and_measure(&meter, &mut open, n)
}

/// A first batch warms allocators and pools; the second (`n` connections) is measured once
/// settled. The connections stay open until `open` is dropped by the caller.
fn settle_and_measure(
    meter: &Meter,
    open: &mut dyn FnMut(usize) -> Result<(), String>,
    n: usize,
) -> Result<f64, String> {
    open(500)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = meter.rss_kib();
    open(n)?;
    std::thread::sleep(Duration::from_secs(3));
    let after = meter.rss_kib();
    Ok(after.saturating_sub(before) as f64 * 1024.0 / n as f64)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Per target, the median of its rounds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub cpu_us: f64,
    pub rss_mib: f64,
    pub mbps: f64,
    pub errors: u64,
}

pub fn summarize(runs: &[Run]) -> Summary {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Summary {
        rps: m(&|r| r.report.rps),
        p50: m(&|r| r.report.p50_us),
        p99: m(&|r| r.report.p99_us),
        p999: m(&|r| r.report.p999_us),
        max: m(&|r| r.report.max_us),
        cpu_us: m(&|r| r.cpu_us_per_req),
        rss_mib: m(&|r| r.rss_kib as f64 / 1024.0),
        mbps: m(&|r| r.report.bytes_per_sec / 1e6),
        errors: runs.iter().map(|r| r.report.errors).sum(),
    }
}
