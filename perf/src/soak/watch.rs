//! The proxy's resources, sampled every second: resident memory, open descriptors, threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the soak began.
    pub at: f64,
    pub rss_kib: u64,
    /// The anonymous part of it: heap and buffers, without the binary's pages.
    pub anon_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

/// Reads the resources of `pid` now.
pub fn sample(pid: u32, at: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        at,
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        fds,
        threads: field("Threads:"),
    })
}

/// Samples `pid` every second on a thread of its own until `stop`.
pub fn every_second(
    pid: u32,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sample>>>, std::thread::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(s) = sample(pid, start.elapsed().as_secs_f64()) {
                if let Ok(mut v) = out.lock() {
                    v.push(s);
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    (samples, t)
}

/// Least-squares slope of `y` over `x` (per second).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_found() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 + 2.0 * f64::from(i)))
            .collect();
        assert!((slope(&pts) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 7.0)).collect();
        assert_eq!(slope(&flat), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id(), 0.0).expect("a sample of ourselves");
        assert!(
            s.rss_kib > 0 && s.anon_kib > 0 && s.fds > 0 && s.threads > 0,
            "{s:?}"
        );
    }
}
