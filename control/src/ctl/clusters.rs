//! `ringmesh ctl clusters` and `endpoints CLUSTER`: the endpoints the control plane serves,
//! by source (static, DNS, registered), and each DNS name's state.

use serde_json::{Value, json};

use super::Api;
use super::output::{Format, Out, age};

pub(super) fn list(api: &Api, out: &Out) -> Result<bool, String> {
    let v = api.get("/v1/clusters")?;
    let clusters = v["clusters"].as_object().cloned().unwrap_or_default();
    if out.format == Format::Json {
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
            rows.push(vec![
                name.clone(),
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
                        text("zone"),
                        e["expires_in_ms"]
                            .as_f64()
                            .map_or("-".into(), |ms| format!("in {}", age(ms / 1000.0))),
                    ]
                })
                .collect();
            out.table(
                &["ADDRESS", "SOURCE", "NAME / ID", "ZONE", "EXPIRES"],
                &rows,
            );
        }
    }
    Ok(!eps.is_empty())
}
