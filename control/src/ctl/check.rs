//! `ringmesh ctl check`: a preflight, as `linkerd check` is. Each check says what it found;
//! the command fails if one does.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::Api;
use super::output::{Format, Out, age};

/// The thresholds.
pub(super) struct Limits {
    /// A node out of sync for longer than this (since it last applied) fails.
    pub max_age: Duration,
    /// The control plane's clock and ours may differ by this much.
    pub max_skew: Duration,
    /// A CA certificate expiring sooner than this fails.
    pub ca_warn: Duration,
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

pub(super) fn run(api: &Api, out: &Out, limits: Limits) -> Result<bool, String> {
    let mut checks = Vec::new();
    let mut add = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    match api.ready() {
        Ok(200) => add("control plane reachable", true, api.addr().to_string()),
        Ok(s) => add(
            "control plane reachable",
            false,
            format!("/ready answered {s}"),
        ),
        Err(e) => add("control plane reachable", false, e),
    }
    let ca = api.get("/v1/ca");
    add(
        "admin credentials accepted",
        ca.is_ok(),
        ca.as_ref()
            .err()
            .cloned()
            .unwrap_or_else(|| "GET /v1/ca".into()),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if let Ok(ca) = &ca {
        let (ok, detail) = ca_validity(ca, now, limits.ca_warn);
        add("CA valid, not about to expire", ok, detail);
    }
    let asked = Instant::now();
    let nodes = api.get("/v1/nodes");
    let rtt = asked.elapsed();
    match &nodes {
        Err(e) => add("nodes listed", false, e.clone()),
        Ok(v) => {
            let list: Vec<(&String, &Value)> =
                v["nodes"].as_object().into_iter().flatten().collect();
            let behind: Vec<String> = list
                .iter()
                .filter(|(_, n)| !n["in_sync"].as_bool().unwrap_or(false))
                .map(|(name, n)| {
                    format!(
                        "{name} (runs {}, served {})",
                        n["applied_version"], n["version"]
                    )
                })
                .collect();
            add(
                "every node in sync",
                behind.is_empty(),
                if behind.is_empty() {
                    format!("{} nodes", list.len())
                } else {
                    behind.join(", ")
                },
            );
            let old: Vec<String> = list
                .iter()
                .filter(|(_, n)| !n["in_sync"].as_bool().unwrap_or(false))
                .filter_map(|(name, n)| {
                    let applied = n["applied_at_unix_ms"].as_f64().map(|ms| now - ms / 1000.0);
                    match applied {
                        Some(a) if a <= limits.max_age.as_secs_f64() => None,
                        Some(a) => Some(format!("{name} ({} old)", age(a))),
                        None => Some(format!("{name} (none applied)")),
                    }
                })
                .collect();
            add(
                "no node on an old snapshot",
                old.is_empty(),
                if old.is_empty() {
                    format!("none older than {}", age(limits.max_age.as_secs_f64()))
                } else {
                    old.join(", ")
                },
            );
            // The server's clock read halfway through the exchange.
            match v["now_unix_ms"].as_f64() {
                Some(theirs) => {
                    let ours = now + rtt.as_secs_f64() / 2.0;
                    let skew = theirs / 1000.0 - ours;
                    add(
                        "clock skew",
                        skew.abs() <= limits.max_skew.as_secs_f64() + rtt.as_secs_f64(),
                        format!("{:+.3}s against the control plane", skew),
                    );
                }
                None => add(
                    "clock skew",
                    false,
                    "the control plane does not say its time".into(),
                ),
            }
        }
    }
    let all = checks.iter().all(|c| c.ok);
    match out.format {
        Format::Json => out.json(&json!({
            "ok": all,
            "checks": checks.iter().map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            for c in &checks {
                let mark = out.mark(c.ok, if c.ok { "[ok]  " } else { "[FAIL]" });
                println!("{mark} {}: {}", c.name, c.detail);
            }
            println!("{}", out.mark(all, if all { "all checks passed" } else { "some checks failed" }));
        }
    }
    Ok(all)
}

/// Whether every certificate of the trust bundle is valid for longer than `warn`.
fn ca_validity(ca: &Value, now: f64, warn: Duration) -> (bool, String) {
    let Some(bundle) = ca["bundle"].as_str() else {
        return (false, "no trust bundle in /v1/ca".into());
    };
    let ends: Vec<i64> = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|c| ringmesh_core::tls::not_after(&c))
        .collect();
    let Some(first) = ends.iter().min() else {
        return (false, "no certificate in the trust bundle".into());
    };
    let left = *first as f64 - now;
    let detail = format!(
        "{} certificate(s); the first expires in {}{}",
        ends.len(),
        age(left),
        if ca["rotating"].as_bool() == Some(true) {
            " (a rotation is in progress)"
        } else {
            ""
        }
    );
    (left > warn.as_secs_f64(), detail)
}
