//! The Grafana dashboards of `dashboards/`, read as the tests check them: their queries, the
//! metric names in them, and each query as Prometheus would receive it from Grafana.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// `dashboards/NAME` of the repository.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards")
        .join(name)
}

/// Every PromQL query of a dashboard: each panel's targets (rows' nested panels included) and
/// each template variable's query.
pub fn queries(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path(name)).expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = d["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The `ringmesh_*` metric names a query reads.
pub fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("ringmesh_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names a `/metrics` text exposes: each `# TYPE` family, and for a histogram the
/// `_bucket`, `_sum` and `_count` series Prometheus stores.
pub fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// A query as Grafana sends it with every variable at "All" over the last minutes; `None` for
/// a variable's `label_values(...)`, which Grafana answers itself from the series API.
pub fn as_sent(query: &str) -> Option<String> {
    if query.starts_with("label_values(") {
        return None;
    }
    Some(
        query
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$route", ".*")
            .replace("$cluster", ".*"),
    )
}
