//! `ringmesh ctl clusters` and `endpoints CLUSTER`: each cluster's golden signals as the
//! proxies report them, the endpoints the control plane serves, by source (static, DNS,
//! registered), each DNS name's state, and each endpoint's health and ejection as the proxies
//! see them.

use serde_json::{Value, json};

use super::Api;
use super::output::{Format, Out, age};

pub(super) fn list(api: &Api, out: &Out) -> Result<bool, String> {
    let mut v = api.get("/v1/clusters")?;
    // A control plane from before `/v1/stats` still lists its clusters.
    let stats = api.get("/v1/stats").unwrap_or(Value::Null);
    let clusters = v["clusters"].as_object().cloned().unwrap_or_default();
    if out.format == Format::Json {
        v["stats"] = stats;
        out.json(&v);
    } else {
        let mut rows = Vec::new();
        for (name, c) in &clusters {
            let eps = c["endpoints"].as_array().cloned().unwrap_or_default();
            let count = |source: &str| eps.iter().filter(|e| e["source"] == source).count();
            let dns_errors: Vec<String> = c["dns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| Some(format!("{}: {}", d["name"].as_str()?, d["error"].as_str()?)))
                .collect();
            let w = &stats["clusters"][name]["window"];
            let percent = |x: &Value| {
                x.as_f64()
                    .map_or("-".into(), |r| format!("{:.2}%", r * 100.0))
            };
            let ms = |x: &Value| {
                x.as_f64()
                    .map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
            };
            let rps = w["requests_per_second"].as_f64().unwrap_or(0.0);
            rows.push(vec![
                name.clone(),
                format!("{rps:.1}"),
                percent(&w["success_rate"]),
                ms(&w["p50_seconds"]),
                ms(&w["p99_seconds"]),
                eps.len().to_string(),
                count("static").to_string(),
                count("dns").to_string(),
                count("registered").to_string(),
                if dns_errors.is_empty() {
                    "-".into()
                } else {
                    out.mark(false, &dns_errors.join("; "))
                },
            ]);
        }
        out.table(
            &[
                "CLUSTER",
                "RPS",
                "SUCCESS",
                "P50",
                "P99",
                "ENDPOINTS",
                "STATIC",
                "DNS",
                "REGISTERED",
                "DNS ERRORS",
            ],
            &rows,
        );
    }
    // A cluster whose DNS names all fail is wrong.
    Ok(clusters.values().all(|c| {
        c["dns"]
            .as_array()
            .is_none_or(|d| d.is_empty() || d.iter().any(|d| d["error"].is_null()))
    }))
}

pub(super) fn endpoints(api: &Api, out: &Out, cluster: &str) -> Result<bool, String> {
    let v = api.get("/v1/clusters")?;
    let Some(c) = v["clusters"].get(cluster) else {
        let known: Vec<&String> = v["clusters"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        return Err(format!(
            "no cluster named `{cluster}` (clusters: {known:?})"
        ));
    };
    let eps: Vec<Value> = c["endpoints"].as_array().cloned().unwrap_or_default();
    match out.format {
        Format::Json => {
            out.json(&json!({ "cluster": cluster, "version": v["version"], "endpoints": eps }))
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = eps
                .iter()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or("-").to_string();
                    vec![
                        text("addr"),
                        text("source"),
                        match e["source"].as_str() {
                            Some("dns") => text("name"),
                            Some("registered") => text("id"),
                            _ => "-".into(),
                        },
                        e["zone"]
                            .as_str()
                            .or(e["reported_zone"].as_str())
                            .unwrap_or("-")
                            .to_string(),
                        e["weight"]
                            .as_u64()
                            .or(e["reported_weight"].as_u64())
                            .map_or("-".into(), |w| w.to_string()),
                        {
                            let h = text("health");
                            out.mark(h == "healthy" || h == "unknown", &h)
                        },
                        {
                            let by: Vec<&str> = e["ejected_by"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_str)
                                .collect();
                            if by.is_empty() {
                                "-".into()
                            } else {
                                out.mark(false, &by.join(","))
                            }
                        },
                        e["expires_in_ms"]
                            .as_f64()
                            .map_or("-".into(), |ms| format!("in {}", age(ms / 1000.0))),
                    ]
                })
                .collect();
            out.table(
                &[
                    "ADDRESS",
                    "SOURCE",
                    "NAME / ID",
                    "ZONE",
                    "WEIGHT",
                    "HEALTH",
                    "EJECTED BY",
                    "EXPIRES",
                ],
                &rows,
            );
        }
    }
    Ok(!eps.is_empty())
}
