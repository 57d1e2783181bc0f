//! Load from other makers' generators: h2load for HTTP/2 and wrk for HTTP/1.1, pinned to the
//! load CPU, and their reports read into the driver's [`Report`].

use std::process::Command;
use std::time::Duration;

use super::Options;
use crate::load::Report;

/// wrk against `port`: `-t1 -c50`, a warm-up run first (wrk has none of its own), then the
/// recorded run of `o.duration` with `--latency` (percentiles 50, 75, 90, 99).
pub fn wrk_warmup(port: u16, o: &Options) {
    let _ = wrk_command(port, o.load_cpu, o.warmup.max(Duration::from_secs(1))).output();
}

/// The recorded wrk run (see [`wrk_warmup`]).
pub fn wrk(port: u16, o: &Options) -> Report {
    let out = wrk_command(port, o.load_cpu, o.duration).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_wrk(&text)
}

fn wrk_command(port: u16, cpu: usize, d: Duration) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c")
        .arg(cpu.to_string())
        .arg("wrk")
        .args(["-t1", "-c50", "--latency"])
        .arg(format!("-d{}s", d.as_secs().max(1)))
        .arg(format!("http://127.0.0.1:{port}/"));
    c
}

/// The figures of a wrk report. p99.9 is not among wrk's percentiles: it stays NaN.
pub fn parse_wrk(text: &str) -> Report {
    let mut r = Report {
        p999_us: f64::NAN,
        ..Report::default()
    };
    let mut in_distribution = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next().and_then(parse_time)) {
                (Some("50%"), Some(v)) => r.p50_us = v,
                (Some("90%"), Some(v)) => r.p90_us = v,
                (Some("99%"), Some(v)) => r.p99_us = v,
                (Some("75%"), Some(_)) => {}
                _ => in_distribution = false,
            }
            if in_distribution {
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Latency ") {
            // Latency   830.12us  200.00us   5.00ms   90.00%  (avg, stdev, max, +/- stdev)
            let v: Vec<f64> = rest.split_whitespace().filter_map(parse_time).collect();
            if v.len() >= 3 {
                r.mean_us = v[0];
                r.max_us = v[2];
            }
        } else if let Some(at) = line.find(" requests in ") {
            // 300000 requests in 5.00s, 30.00MB read
            r.requests = line[..at].trim().parse().unwrap_or(0);
            r.seconds = line[at + 13..]
                .split(',')
                .next()
                .and_then(parse_time)
                .map_or(0.0, |us| us / 1e6);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // Socket errors: connect 0, read 0, write 0, timeout 0
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    r
}

/// HTTP/2 load from h2load (nghttp2-client), pinned to the load CPU: 10 connections with 10
/// streams each, small GETs, for the warm-up and then the recorded duration.
pub fn h2load(port: u16, o: &Options) -> Report {
    let out = Command::new("taskset")
        .arg("-c")
        .arg(o.load_cpu.to_string())
        .arg("h2load")
        .args(["-c", "10", "-m", "10", "-t", "1"])
        .arg("--warm-up-time")
        .arg(format!("{}", o.warmup.as_secs().max(1)))
        .arg("-D")
        .arg(format!("{}", o.duration.as_secs().max(1)))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_h2load(&text)
}

/// The figures of an h2load report.
pub fn parse_h2load(text: &str) -> Report {
    let mut r = Report::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 5.00s, 61234.20 req/s, 1.23MB/s
            let parts: Vec<&str> = rest.split(", ").collect();
            r.seconds = parts
                .first()
                .and_then(|s| s.trim_end_matches('s').parse().ok())
                .unwrap_or(0.0);
            r.rps = parts
                .get(1)
                .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            let num = |key: &str| -> u64 {
                rest.split(", ")
                    .find(|p| p.ends_with(key))
                    .and_then(|p| p.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            r.requests = num("succeeded");
            r.errors = num("failed") + num("errored") + num("timeout");
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min max mean sd +/- sd
            let v: Vec<f64> = rest.split_whitespace().filter_map(parse_time).collect();
            if v.len() >= 3 {
                r.max_us = v[1];
                r.mean_us = v[2];
                r.p50_us = v[2];
            }
        }
    }
    r
}

/// `123us`, `1.23ms`, `1.2s` in microseconds.
fn parse_time(s: &str) -> Option<f64> {
    if let Some(v) = s.strip_suffix("us") {
        v.parse().ok()
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse::<f64>().ok().map(|v| v * 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().ok().map(|v| v * 1e6)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrk_report_is_read_whole() {
        let text = "Running 5s test @ http://127.0.0.1:18091/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   830.12us  200.00us   5.00ms   90.00%
    Req/Sec    60.00k     1.00k   62.00k    80.00%
  Latency Distribution
     50%  800.00us
     75%  900.00us
     90%    1.00ms
     99%    1.40ms
  300000 requests in 5.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  60000.00
Transfer/sec:      6.00MB
";
        let r = parse_wrk(text);
        assert_eq!(r.requests, 300_000);
        assert_eq!(r.rps, 60_000.0);
        assert_eq!(r.seconds, 5.0);
        assert_eq!((r.p50_us, r.p90_us, r.p99_us), (800.0, 1000.0, 1400.0));
        assert_eq!((r.mean_us, r.max_us), (830.12, 5000.0));
        assert_eq!(r.errors, 7);
        assert!(r.p999_us.is_nan());
    }

    #[test]
    fn an_h2load_report_is_read_whole() {
        let text = "finished in 5.00s, 61234.20 req/s, 1.23MB/s
requests: 306171 total, 306171 started, 306171 done, 306170 succeeded, 1 failed, 0 errored, 0 timeout
time for request:      123us      4.56ms       1.62ms       300us    70.00%
";
        let r = parse_h2load(text);
        assert_eq!((r.seconds, r.rps), (5.0, 61234.2));
        assert_eq!((r.requests, r.errors), (306_170, 1));
        assert_eq!((r.max_us, r.mean_us, r.p50_us), (4560.0, 1620.0, 1620.0));
    }

    #[test]
    fn nothing_to_read_gives_zeros() {
        let r = parse_wrk("");
        assert_eq!((r.requests, r.rps), (0, 0.0));
        assert_eq!(parse_h2load("").requests, 0);
    }
}
