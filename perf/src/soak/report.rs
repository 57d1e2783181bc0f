//! What a soak found: failed requests by fault (from the access log, with the endpoint and the
//! time, checked against what the clients saw), the log's lines against the clients' counts,
//! memory and descriptors before, during and after, and a verdict.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Fault;
use super::client::Failure;
use super::watch::{Sample, slope};

/// What [`build`] needs.
pub struct Input<'a> {
    pub load: Duration,
    pub cooldown: Duration,
    pub load_end: f64,
    pub wall_start: SystemTime,
    /// Requests completed per HTTP/1.1 client kind.
    pub counts: Vec<(&'static str, u64)>,
    /// HTTP/2 requests (succeeded, failed) and h2load's own errors.
    pub h2: (u64, u64),
    pub h2_errors: Vec<String>,
    pub failures: Vec<Failure>,
    pub faults: Vec<Fault>,
    /// Before any client.
    pub idle: Sample,
    /// 10 s into the load.
    pub baseline: Sample,
    /// After the cool-down.
    pub after: Option<Sample>,
    pub samples: Vec<Sample>,
    pub log: &'a str,
    pub metrics: &'a str,
    pub crashed: Option<f64>,
}

/// The report, and whether the soak passed each check.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: String,
    /// Checks that failed, each with why; empty: passed.
    pub failed_checks: Vec<String>,
    /// RSS after the cool-down over RSS 10 s into the load.
    pub rss_ratio: f64,
}

/// One non-2xx line of the access log on the counted listener.
#[derive(Debug, Clone)]
struct Logged {
    at: f64,
    status: u64,
    error: String,
    endpoint: String,
    method: String,
}

pub fn build(i: Input<'_>) -> Report {
    let mut md = String::new();
    let mut failed_checks = Vec::new();
    let start_unix = i
        .wall_start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    // The access log: lines per listener, and the failures on the counted one.
    let (mut lines, mut slow_lines) = (0u64, 0u64);
    let mut logged = Vec::new();
    for line in i.log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            failed_checks.push(format!("an access-log line is not JSON: {line}"));
            continue;
        };
        match v["listener"].as_str() {
            Some("soak") => lines += 1,
            Some("slow") => {
                slow_lines += 1;
                continue;
            }
            _ => continue,
        }
        let status = v["status"].as_u64().unwrap_or(0);
        if (200..300).contains(&status) {
            continue;
        }
        logged.push(Logged {
            at: v["time"]
                .as_str()
                .and_then(rfc3339_seconds)
                .map_or(-1.0, |t| t - start_unix),
            status,
            error: v["error"].as_str().unwrap_or("").to_string(),
            endpoint: v["endpoint"].as_str().unwrap_or("-").to_string(),
            method: v["method"].as_str().unwrap_or("").to_string(),
        });
    }
    let http1: u64 = i.counts.iter().map(|(_, n)| n).sum();
    let expected = http1 + i.h2.0 + i.h2.1;
    let client_failures = i.failures.len() as u64 + i.h2.1;

    let _ = writeln!(md, "# ringmesh soak\n");
    let _ = writeln!(
        md,
        "- load {:?}, then {:?} of cool-down; one worker, three endpoints; {} HTTP/1.1 requests ({}), {} HTTP/2 requests in bursts",
        i.load,
        i.cooldown,
        http1,
        i.counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        i.h2.0 + i.h2.1,
    );
    let _ = writeln!(
        md,
        "- the proxy {}",
        match i.crashed {
            Some(t) => format!("**died** at {t:.1} s"),
            None => "ran throughout".into(),
        }
    );
    if let Some(t) = i.crashed {
        failed_checks.push(format!("the proxy died at {t:.1} s"));
    }

    let _ = writeln!(
        md,
        "\n## Faults\n\n| at (s) | until | endpoint | what | failed requests |\n|---|---|---|---|---|"
    );
    let attributed = |f: &Fault| -> usize {
        logged
            .iter()
            .filter(|l| l.at >= f.start - 1.0 && l.at <= f.end + 5.0)
            .count()
    };
    for f in &i.faults {
        let _ = writeln!(
            md,
            "| {:.1} | {:.1} | {} | {} | {} |",
            f.start,
            f.end,
            f.endpoint.map_or("-".into(), |p| format!(":{p}")),
            f.what,
            attributed(f)
        );
    }
    let _ = writeln!(
        md,
        "\n## Failed requests\n\n{} seen by the clients ({} HTTP/1.1, {} HTTP/2); {} non-2xx lines in the access log.\n",
        client_failures,
        i.failures.len(),
        i.h2.1,
        logged.len()
    );
    if !logged.is_empty() {
        let _ = writeln!(
            md,
            "| at (s) | method | status | error | endpoint | during |\n|---|---|---|---|---|---|"
        );
        for l in logged.iter().take(200) {
            let during = i
                .faults
                .iter()
                .find(|f| l.at >= f.start - 1.0 && l.at <= f.end + 5.0)
                .map_or("no fault".to_string(), |f| {
                    format!(
                        "{} {}",
                        f.endpoint.map_or("-".into(), |p| format!(":{p}")),
                        f.what
                    )
                });
            let _ = writeln!(
                md,
                "| {:.2} | {} | {} | {} | {} | {} |",
                l.at, l.method, l.status, l.error, l.endpoint, during
            );
        }
    }
    for f in i.failures.iter().filter(|f| f.status == 0).take(50) {
        let _ = writeln!(md, "- client {} at {:.2} s: {}", f.client, f.at, f.why);
    }
    for e in &i.h2_errors {
        let _ = writeln!(md, "- h2load: {e}");
    }
    if client_failures > 0 || !logged.is_empty() {
        failed_checks.push(format!(
            "{client_failures} failed requests seen by clients, {} in the access log: every request here is safe to retry and two endpoints were healthy",
            logged.len()
        ));
    }
    if !i.h2_errors.is_empty() {
        failed_checks.push(format!("h2load could not run: {}", i.h2_errors.join("; ")));
    }

    let _ = writeln!(
        md,
        "\n## Access log\n\n{lines} lines on the counted listener for {expected} requests the clients completed ({} lines from slowloris's listener).\n",
        slow_lines
    );
    if lines != expected {
        failed_checks.push(format!(
            "the access log holds {lines} lines for {expected} requests"
        ));
    }

    // Resources: before any client, 10 s in, the peak, after the cool-down.
    let peak = i.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let during: Vec<&Sample> = i
        .samples
        .iter()
        .filter(|s| s.at > 10.0 && s.at < i.load_end)
        .collect();
    let fd_slope = slope(
        &during
            .iter()
            .map(|s| (s.at, s.fds as f64))
            .collect::<Vec<_>>(),
    );
    let rss_slope = slope(
        &during
            .iter()
            .map(|s| (s.at, s.rss_kib as f64))
            .collect::<Vec<_>>(),
    );
    let after = i.after.unwrap_or(i.idle);
    let base = i.baseline;
    let rss_ratio = after.rss_kib as f64 / base.rss_kib.max(1) as f64;
    let anon_ratio = after.anon_kib as f64 / base.anon_kib.max(1) as f64;
    let _ = writeln!(
        md,
        "## Resources\n\n| | RSS KiB | anonymous KiB | descriptors | threads |\n|---|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| idle, before any client | {} | {} | {} | {} |",
        i.idle.rss_kib, i.idle.anon_kib, i.idle.fds, i.idle.threads
    );
    let _ = writeln!(
        md,
        "| 10 s into the load | {} | {} | | |",
        base.rss_kib, base.anon_kib
    );
    let _ = writeln!(
        md,
        "| peak during the load | {peak} | {} | {} | {} |",
        i.samples.iter().map(|s| s.anon_kib).max().unwrap_or(0),
        i.samples.iter().map(|s| s.fds).max().unwrap_or(0),
        i.samples.iter().map(|s| s.threads).max().unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "| after the cool-down | {} | {} | {} | {} |",
        after.rss_kib, after.anon_kib, after.fds, after.threads
    );
    let cooling: Vec<String> = [5.0, 15.0, 30.0, 60.0]
        .iter()
        .filter_map(|d| {
            i.samples
                .iter()
                .find(|s| s.at >= i.load_end + d)
                .map(|s| format!("+{d:.0} s {} KiB ({} anonymous)", s.rss_kib, s.anon_kib))
        })
        .collect();
    if !cooling.is_empty() {
        let _ = writeln!(md, "\nRSS in the cool-down: {}.", cooling.join(", "));
    }
    let _ = writeln!(
        md,
        "\nSlopes over the load (after the first 10 s): descriptors {fd_slope:+.3}/s, RSS {rss_slope:+.1} KiB/s. After the cool-down, RSS is {:.0}% of RSS 10 s into the load, anonymous memory (heap and buffers; the rest is mostly the binary's pages) {:.0}%.\n",
        rss_ratio * 100.0,
        anon_ratio * 100.0
    );
    // Pools close within their idle timeout (5 s here): an idle proxy holds what it held
    // before any client, give or take a connection being closed as the sample is taken.
    if after.fds > i.idle.fds + 2 {
        failed_checks.push(format!(
            "descriptors: {} before any client, {} after the cool-down",
            i.idle.fds, after.fds
        ));
    }
    // The bursts' memory is given back: RSS within 25% of what the steady load alone held.
    if rss_ratio > 1.25 {
        failed_checks.push(format!(
            "memory: RSS {} KiB 10 s into the load, {} KiB after the cool-down",
            base.rss_kib, after.rss_kib
        ));
    }
    // The access log's writer thread starts with the first line: threads are counted from the
    // load's second second on.
    let under_load = i
        .samples
        .iter()
        .find(|s| s.at >= 2.0)
        .map_or(i.idle.threads, |s| s.threads);
    if after.threads > under_load {
        failed_checks.push(format!(
            "threads: {under_load} 2 s into the load, {} after the cool-down",
            after.threads
        ));
    }
    let reloads: Vec<&str> = i
        .metrics
        .lines()
        .filter(|l| {
            l.starts_with("ringmesh_config_reloads_total")
                || l.starts_with("ringmesh_retry_budget_exhausted_total")
                || l.starts_with("ringmesh_retries_total")
        })
        .collect();
    if !reloads.is_empty() {
        let _ = writeln!(
            md,
            "## From the proxy's metrics\n\n```\n{}\n```\n",
            reloads.join("\n")
        );
    }
    let _ = writeln!(
        md,
        "## Verdict\n\n{}",
        if failed_checks.is_empty() {
            "passed: no crash, no failed request, every request in the access log, descriptors, threads and memory back to where they were.".to_string()
        } else {
            failed_checks
                .iter()
                .map(|c| format!("- FAILED: {c}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    );
    Report {
        markdown: md,
        failed_checks,
        rss_ratio,
    }
}

/// `2026-12-06T17:05:01.123Z` as seconds since the epoch.
fn rfc3339_seconds(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days since the epoch (Howard Hinnant's civil-from-days, inverted).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_times_are_read() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(
            rfc3339_seconds("2000-03-01T00:00:01.500Z"),
            Some(951_868_801.5)
        );
        assert_eq!(
            rfc3339_seconds("2026-12-06T17:05:01Z"),
            Some(1_796_576_701.0)
        );
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }
}
