//! `ringmesh ctl status`: every node, the version it is served and the one its proxy applied,
//! in sync or why not, its last contact and its certificate's expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Api;
use super::output::{Format, Out, age};

/// What is wrong with one node (empty: nothing).
pub(super) fn problems(
    n: &Value,
    now_unix: f64,
    stale_after: Duration,
    cert_warn: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    let served = n["version"].as_u64().unwrap_or(0);
    if !n["in_sync"].as_bool().unwrap_or(false) {
        match n["applied_version"].as_u64() {
            Some(v) => out.push(format!("runs version {v}, served {served}")),
            None => out.push("has applied nothing yet".into()),
        }
        if let Some(r) = n["last_rejection"].as_object() {
            if r.get("version").and_then(Value::as_u64) == Some(served) {
                out.push(format!(
                    "refused version {served}: {}",
                    r.get("error").and_then(Value::as_str).unwrap_or("?")
                ));
            }
        }
    }
    match n["last_seen_seconds_ago"].as_f64() {
        None => out.push("never seen".into()),
        Some(s) if s > stale_after.as_secs_f64() => out.push(format!("not seen for {}", age(s))),
        Some(_) => {}
    }
    if let Some(exp) = n["cert_expires_unix"].as_f64() {
        let left = exp - now_unix;
        if left <= 0.0 {
            out.push("certificate expired".into());
        } else if left < cert_warn.as_secs_f64() {
            out.push(format!("certificate expires in {}", age(left)));
        }
    }
    out
}

pub(super) fn run(
    api: &Api,
    out: &Out,
    stale_after: Duration,
    cert_warn: Duration,
) -> Result<bool, String> {
    let v = api.get("/v1/nodes")?;
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut all_good = true;
    let mut rows = Vec::new();
    let mut report = Vec::new();
    for (name, n) in v["nodes"].as_object().into_iter().flatten() {
        let wrong = problems(n, now_unix, stale_after, cert_warn);
        all_good &= wrong.is_empty();
        let cert = n["cert_expires_unix"]
            .as_f64()
            .map_or("-".to_string(), |e| format!("in {}", age(e - now_unix)));
        let seen = n["last_seen_seconds_ago"]
            .as_f64()
            .map_or("never".to_string(), |s| format!("{} ago", age(s)));
        let applied = n["applied_version"]
            .as_u64()
            .map_or("-".to_string(), |v| v.to_string());
        let sync = n["in_sync"].as_bool().unwrap_or(false);
        rows.push(vec![
            name.clone(),
            n["version"].as_u64().unwrap_or(0).to_string(),
            applied,
            out.mark(sync, if sync { "yes" } else { "no" }),
            seen,
            cert,
            if wrong.is_empty() {
                out.mark(true, "ok")
            } else {
                out.mark(false, &wrong.join("; "))
            },
        ]);
        let mut node = n.clone();
        node["name"] = json!(name);
        node["problems"] = json!(wrong);
        report.push(node);
    }
    match out.format {
        Format::Json => out.json(&json!({
            "version": v["version"], "ok": all_good, "nodes": report,
        })),
        Format::Text => {
            println!("desired state: version {}", v["version"]);
            out.table(
                &[
                    "NODE",
                    "SERVED",
                    "APPLIED",
                    "IN SYNC",
                    "LAST CONTACT",
                    "CERTIFICATE",
                    "STATUS",
                ],
                &rows,
            );
        }
    }
    Ok(all_good)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_wrong_for_each_reason_it_can_be() {
        let h = Duration::from_secs(3600);
        let good = json!({"version": 3, "applied_version": 3, "in_sync": true,
                          "last_seen_seconds_ago": 1.0, "cert_expires_unix": 1_000_000.0});
        assert!(problems(&good, 900_000.0, h, h).is_empty());
        let bad = json!({"version": 4, "applied_version": 3, "in_sync": false,
                         "last_rejection": {"version": 4, "error": "listeners[0]: bad"},
                         "last_seen_seconds_ago": 600.0, "cert_expires_unix": 900_100.0});
        let p = problems(&bad, 900_000.0, Duration::from_secs(120), h);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("runs version 3, served 4"));
        assert!(p[1].contains("listeners[0]: bad"));
        assert!(p[2].contains("not seen for 10m"));
        assert!(p[3].contains("expires in"));
        let never = json!({"version": 1, "in_sync": false});
        assert_eq!(
            problems(&never, 0.0, h, h),
            ["has applied nothing yet", "never seen"]
        );
    }
}
