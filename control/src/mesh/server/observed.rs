//! What the proxies report of their traffic and endpoints (`POST /v1/nodes/{node}/stats`, every
//! few seconds), kept in memory only, and the mesh-wide view made of it: golden signals per
//! cluster (`GET /v1/stats`, the page, `ringmesh ctl clusters`) and each endpoint's health and
//! ejection as the nodes see them (`GET /v1/clusters`, `ringmesh ctl endpoints`).
//!
//! A node reports counters since it started; rates and latency quantiles come from the
//! difference between its reports, so a lost report costs resolution, not correctness, and a
//! restarted proxy (counters that went down) starts a new series.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use ringmesh_core::metrics::DURATION_BUCKETS;
use serde_json::{Map, Value, json};

use crate::http::Response;
use crate::mesh::model::Mesh;

/// Reports kept per node: enough to span [`WINDOW`] at the proxies' interval.
const HISTORY: usize = 12;

/// The window rates and quantiles are computed over.
pub(super) const WINDOW: Duration = Duration::from_secs(30);

/// A node that has not reported for this long is left out (stopped, or cut off).
const STALE: Duration = Duration::from_secs(60);

/// Endpoints taken per cluster from one report.
const MAX_ENDPOINTS: usize = 4096;

/// Buckets per histogram: [`DURATION_BUCKETS`] and one past the last bound.
const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// One cluster's counters in one report (since the proxy started).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    requests: u64,
    errors: u64,
    buckets: [u64; BUCKETS],
}

impl Counts {
    const ZERO: Counts = Counts {
        requests: 0,
        errors: 0,
        buckets: [0; BUCKETS],
    };

    /// `self - older`; a counter that went down means the proxy restarted: all of `self`.
    fn since(&self, older: &Counts) -> Counts {
        let restarted = self.requests < older.requests
            || self.errors < older.errors
            || self.buckets.iter().zip(&older.buckets).any(|(a, b)| a < b);
        if restarted {
            return *self;
        }
        let mut d = Counts {
            requests: self.requests - older.requests,
            errors: self.errors - older.errors,
            buckets: [0; BUCKETS],
        };
        for (i, b) in d.buckets.iter_mut().enumerate() {
            *b = self.buckets[i] - older.buckets[i];
        }
        d
    }

    fn add(&mut self, o: &Counts) {
        self.requests = self.requests.saturating_add(o.requests);
        self.errors = self.errors.saturating_add(o.errors);
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a = a.saturating_add(*b);
        }
    }

    /// The `q` quantile in seconds, interpolated inside its bucket as Prometheus's
    /// `histogram_quantile` does; `None` without samples.
    fn quantile(&self, q: f64) -> Option<f64> {
        // Counts come from nodes: added without overflow, whatever they say.
        let total = self.buckets.iter().fold(0u64, |a, &b| a.saturating_add(b));
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if below.saturating_add(n) as f64 >= rank && n > 0 {
                let Some(&upper) = DURATION_BUCKETS.get(i) else {
                    // Past the last bound: the last bound is all that is known.
                    return DURATION_BUCKETS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
                return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
            }
            below = below.saturating_add(n);
        }
        DURATION_BUCKETS.last().copied()
    }

    fn json(&self, seconds: Option<f64>) -> Value {
        let mut v = json!({
            "requests": self.requests,
            "errors": self.errors,
            "success_rate": (self.requests > 0)
                .then(|| 1.0 - self.errors as f64 / self.requests as f64),
            "p50_seconds": self.quantile(0.5),
            "p99_seconds": self.quantile(0.99),
        });
        if let Some(s) = seconds {
            v["requests_per_second"] = json!(if s > 0.0 {
                self.requests as f64 / s
            } else {
                0.0
            });
        }
        v
    }
}

/// An endpoint as one node sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    healthy: bool,
    ejected: bool,
    zone: Option<String>,
    weight: u64,
}

#[derive(Debug)]
struct Report {
    at: Instant,
    at_unix_ms: u64,
    /// How long the proxy had been up.
    uptime: Option<Duration>,
    clusters: BTreeMap<String, Counts>,
    /// Kept in the newest report only (older ones serve the rates).
    endpoints: BTreeMap<String, BTreeMap<String, Seen>>,
}

/// The nodes' recent reports.
#[derive(Debug, Default)]
pub(super) struct Observed {
    nodes: BTreeMap<String, VecDeque<Report>>,
}

fn counts(v: &Value) -> Option<Counts> {
    let b = v.get("buckets")?.as_array()?;
    if b.len() != BUCKETS {
        return None;
    }
    let mut buckets = [0u64; BUCKETS];
    for (o, x) in buckets.iter_mut().zip(b) {
        *o = x.as_u64()?;
    }
    Some(Counts {
        requests: v.get("requests")?.as_u64()?,
        errors: v.get("errors")?.as_u64()?,
        buckets,
    })
}

fn seen(v: &Value) -> Option<(String, Seen)> {
    let address = v.get("address")?.as_str()?;
    if address.len() > 64 {
        return None;
    }
    let zone = match v.get("zone") {
        None | Some(Value::Null) => None,
        Some(z) => Some(z.as_str().filter(|z| z.len() <= 128)?.to_string()),
    };
    Some((
        address.to_string(),
        Seen {
            healthy: v.get("healthy")?.as_bool()?,
            ejected: v.get("ejected")?.as_bool()?,
            zone,
            weight: v.get("weight").and_then(Value::as_u64).unwrap_or(1),
        },
    ))
}

impl Observed {
    /// `POST /v1/nodes/{node}/stats`: `{"clusters": {NAME: {requests, errors, buckets}},
    /// "endpoints": {NAME: [{address, zone, weight, healthy, ejected}]}}`. Only the mesh's
    /// clusters are kept; a malformed entry refuses the whole report (nothing is kept of it).
    pub(super) fn ingest(&mut self, mesh: &Mesh, node: &str, body: &[u8]) -> Response {
        if !mesh.nodes.contains_key(node) {
            return Response::error(404, &format!("no node named `{node}` in the mesh"));
        }
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Response::error(400, &format!("invalid JSON: {e}")),
        };
        let known = |name: &String| mesh.cluster(name).is_some();
        let mut clusters = BTreeMap::new();
        for (name, c) in v["clusters"].as_object().into_iter().flatten() {
            let Some(c) = counts(c) else {
                return Response::error(
                    400,
                    &format!("clusters.{name}: expected {{requests, errors, buckets[{BUCKETS}]}}"),
                );
            };
            if known(name) {
                clusters.insert(name.clone(), c);
            }
        }
        let mut endpoints = BTreeMap::new();
        for (name, list) in v["endpoints"].as_object().into_iter().flatten() {
            let Some(list) = list.as_array() else {
                return Response::error(400, &format!("endpoints.{name}: expected a list"));
            };
            let mut m = BTreeMap::new();
            for e in list.iter().take(MAX_ENDPOINTS) {
                let Some((addr, s)) = seen(e) else {
                    return Response::error(
                        400,
                        &format!(
                            "endpoints.{name}: expected {{address, zone, weight, healthy, ejected}}"
                        ),
                    );
                };
                m.insert(addr, s);
            }
            if known(name) {
                endpoints.insert(name.clone(), m);
            }
        }
        let now = Instant::now();
        let uptime = v["uptime_seconds"]
            .as_f64()
            .filter(|u| u.is_finite() && *u >= 0.0 && *u < 10.0 * 365.0 * 86_400.0)
            .map(Duration::from_secs_f64);
        let reports = self.nodes.entry(node.to_string()).or_default();
        // A proxy that is younger than at its last report restarted: a new series begins.
        // (A counter that went down without that, a route forgotten by a reload, counts
        // again from zero: `Counts::since`.)
        let restarted = reports
            .back()
            .is_some_and(|last| matches!((last.uptime, uptime), (Some(a), Some(b)) if b < a));
        if reports.is_empty() || restarted {
            reports.clear();
            // The counters started at zero when the proxy did: that is the series' first
            // point, so the traffic before the first report counts in the window too.
            let start = uptime
                .filter(|u| *u <= WINDOW + STALE)
                .and_then(|u| now.checked_sub(u));
            if let Some(start) = start {
                reports.push_back(Report {
                    at: start,
                    at_unix_ms: 0,
                    uptime: Some(Duration::ZERO),
                    clusters: BTreeMap::new(),
                    endpoints: BTreeMap::new(),
                });
            }
        }
        if reports.len() == HISTORY {
            reports.pop_front();
        }
        if let Some(last) = reports.back_mut() {
            last.endpoints.clear();
        }
        reports.push_back(Report {
            uptime,
            at: now,
            at_unix_ms: super::unix_ms(SystemTime::now()),
            clusters,
            endpoints,
        });
        Response::json(200, "{}\n")
    }

    /// Forgets nodes the mesh no longer has.
    pub(super) fn retain(&mut self, mesh: &Mesh) {
        self.nodes.retain(|n, _| mesh.nodes.contains_key(n));
    }

    /// Each live node's newest report, and the oldest one within [`WINDOW`] of it.
    fn live(&self, now: Instant) -> impl Iterator<Item = (&String, &Report, &Report)> {
        self.nodes.iter().filter_map(move |(name, reports)| {
            let newest = reports.back()?;
            if now.saturating_duration_since(newest.at) > STALE {
                return None;
            }
            let oldest = reports
                .iter()
                .find(|r| newest.at.saturating_duration_since(r.at) <= WINDOW)
                .unwrap_or(newest);
            Some((name, newest, oldest))
        })
    }

    /// `GET /v1/stats`: per cluster, the golden signals over the last [`WINDOW`] (requests/s,
    /// success rate, p50 and p99) and since the proxies started, summed over the live nodes.
    pub(super) fn stats_json(&self, mesh: &Mesh) -> Value {
        let now = Instant::now();
        let mut nodes = Map::new();
        let mut clusters: BTreeMap<&str, (Counts, f64, Counts, Vec<&str>)> = BTreeMap::new();
        for (name, newest, oldest) in self.live(now) {
            nodes.insert(
                name.clone(),
                json!({
                    "reported_unix_ms": newest.at_unix_ms,
                    "window_seconds": newest.at.saturating_duration_since(oldest.at).as_secs_f64(),
                }),
            );
            let span = newest.at.saturating_duration_since(oldest.at).as_secs_f64();
            for (c, counts) in &newest.clusters {
                let before = oldest.clusters.get(c).unwrap_or(&Counts::ZERO);
                let delta = if span > 0.0 {
                    counts.since(before)
                } else {
                    Counts::ZERO
                };
                let e = clusters
                    .entry(c)
                    .or_insert((Counts::ZERO, 0.0, Counts::ZERO, Vec::new()));
                e.0.add(&delta);
                if span > 0.0 {
                    e.1 += delta.requests as f64 / span;
                }
                e.2.add(counts);
                e.3.push(name);
            }
        }
        let out: Map<String, Value> = mesh
            .clusters
            .iter()
            .map(|c| {
                let v = match clusters.get(c.name.as_str()) {
                    Some((window, rps, total, by)) => {
                        let mut w = window.json(None);
                        w["requests_per_second"] = json!(rps);
                        json!({ "window": w, "total": total.json(None), "nodes": by })
                    }
                    None => json!({
                        "window": Counts::ZERO.json(Some(0.0)),
                        "total": Counts::ZERO.json(None),
                        "nodes": [],
                    }),
                };
                (c.name.clone(), v)
            })
            .collect();
        json!({
            "now_unix_ms": super::unix_ms(SystemTime::now()),
            "window_seconds": WINDOW.as_secs(),
            "nodes": nodes,
            "clusters": out,
        })
    }

    /// Every endpoint as the live nodes see it, by cluster and address, built in one pass over
    /// the nodes' newest reports: see [`Health::json`].
    pub(super) fn health(&self) -> BTreeMap<(&str, &str), Health<'_>> {
        let now = Instant::now();
        let mut out: BTreeMap<(&str, &str), Health<'_>> = BTreeMap::new();
        for (name, newest) in self.nodes.iter().filter_map(|(name, reports)| {
            let newest = reports.back()?;
            (now.saturating_duration_since(newest.at) <= STALE).then_some((name, newest))
        }) {
            for (cluster, eps) in &newest.endpoints {
                for (addr, s) in eps {
                    let h = out.entry((cluster.as_str(), addr.as_str())).or_default();
                    if s.healthy { &mut h.up } else { &mut h.down }.push(name.as_str());
                    if s.ejected {
                        h.ejected_by.push(name.as_str());
                    }
                    h.last = Some(s);
                }
            }
        }
        out
    }
}

/// One endpoint as the nodes that report it see it.
#[derive(Debug, Default)]
pub(super) struct Health<'a> {
    up: Vec<&'a str>,
    down: Vec<&'a str>,
    ejected_by: Vec<&'a str>,
    last: Option<&'a Seen>,
}

impl Health<'_> {
    /// `health` (`healthy`, `unhealthy`, `mixed`, or `unknown` when no node reports it), the
    /// nodes that see it unhealthy and that ejected it, and zone and weight as reported.
    pub(super) fn json(h: Option<&Health<'_>>) -> Value {
        let empty = Health::default();
        let h = h.unwrap_or(&empty);
        let health = match (h.up.is_empty(), h.down.is_empty()) {
            (true, true) => "unknown",
            (false, true) => "healthy",
            (true, false) => "unhealthy",
            (false, false) => "mixed",
        };
        json!({
            "health": health,
            "unhealthy_in": h.down,
            "ejected_by": h.ejected_by,
            "reported_by": h.up.len() + h.down.len(),
            "reported_zone": h.last.and_then(|s| s.zone.clone()),
            "reported_weight": h.last.map(|s| s.weight),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(requests: u64, errors: u64, at: &[(usize, u64)]) -> Counts {
        let mut buckets = [0; BUCKETS];
        for &(i, n) in at {
            buckets[i] = n;
        }
        Counts {
            requests,
            errors,
            buckets,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_as_prometheus_does() {
        // 100 samples in (25 ms, 50 ms]: the median halfway.
        let x = c(100, 0, &[(8, 100)]);
        let p50 = x.quantile(0.5).unwrap();
        assert!((p50 - 0.0375).abs() < 1e-9, "{p50}");
        assert!((x.quantile(0.99).unwrap() - 0.04975).abs() < 1e-9);
        assert_eq!(Counts::ZERO.quantile(0.5), None);
        // Past the last bound: the last bound.
        assert_eq!(c(1, 0, &[(BUCKETS - 1, 1)]).quantile(0.5), Some(30.0));
    }

    #[test]
    fn quantiles_of_absurd_counts_do_not_overflow() {
        let x = c(u64::MAX, 0, &[(0, u64::MAX), (1, u64::MAX)]);
        assert!(x.quantile(0.99).is_some());
    }

    #[test]
    fn deltas_start_over_when_a_proxy_restarted() {
        let a = c(100, 5, &[(3, 100)]);
        let b = c(150, 5, &[(3, 150)]);
        assert_eq!(b.since(&a), c(50, 0, &[(3, 50)]));
        let restarted = c(10, 0, &[(3, 10)]);
        assert_eq!(restarted.since(&b), restarted);
    }
}
