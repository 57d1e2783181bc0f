//! What the control plane knows of its nodes and clusters: the proxies' reports, and the views
//! of nodes, clusters and the CA the API serves.

use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use super::*;
use crate::http::Response;

/// `GET /v1/ca`: the trust bundle and the rotation's state.
pub(super) fn ca_json(st: &State) -> Response {
    let (bundle_mark, issuer_mark) = st.ca.marks();
    // What `--control-ca-sha256` pins, for each authority in the bundle.
    let authorities: Vec<Value> = [
        Some(("current", &st.ca.current)),
        st.ca.next.as_ref().map(|(a, _)| ("next", a)),
        st.ca.previous.as_ref().map(|(a, _)| ("previous", a)),
    ]
    .into_iter()
    .flatten()
    .map(|(role, a)| {
        json!({
            "role": role, "fingerprint": a.fingerprint, "spki_sha256": a.spki_sha256,
            "operator": a.operator,
        })
    })
    .collect();
    Response::json(
        200,
        json!({
            "bundle": st.ca.bundle(),
            "marks": { "bundle": bundle_mark, "issuer": issuer_mark },
            "issuer": st.ca.current.fingerprint,
            "rotating": st.ca.next.is_some(),
            "next": st.ca.next.as_ref().map(|(a, _)| &a.fingerprint),
            "previous": st.ca.previous.as_ref().map(|(a, until)| json!({ "fingerprint": a.fingerprint, "trusted_until_unix": until })),
            "issued": st.ca.issued,
            "cert_ttl": crate::config::format_duration(st.mesh.ca.cert_ttl),
            "authorities": authorities,
        })
        .to_string()
            + "\n",
    )
}

/// `POST /v1/nodes/{node}/report` body `{"version": V, "error": null | "why"}`.
pub(super) fn report(st: &mut State, node: &str, body: &[u8]) -> Response {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Response::error(400, &format!("invalid JSON: {e}")),
    };
    let Some(version) = v["version"].as_u64() else {
        return Response::error(400, "version: expected a number");
    };
    let Some(n) = st.nodes.get_mut(node) else {
        return Response::error(404, &format!("no node named `{node}` in the mesh"));
    };
    let now = SystemTime::now();
    match v["error"].as_str() {
        Some(e) => {
            tracing::warn!(node, version, error = %e, "a proxy refused its snapshot");
            n.rejected = Some((version, e.chars().take(4096).collect(), now));
        }
        None => n.applied(version, now),
    }
    Response::json(200, "{}\n")
}

pub(super) fn nodes_json(st: &State) -> Vec<u8> {
    let now = SystemTime::now();
    let ago = |t: SystemTime| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64());
    let nodes: serde_json::Map<String, Value> = st
        .nodes
        .iter()
        .map(|(name, n)| {
            let v = json!({
                "version": n.version,
                "applied_version": n.applied.map(|(v, _)| v),
                "applied_at_unix_ms": n.applied.map(|(_, t)| unix_ms(t)),
                "in_sync": n.in_sync(),
                "last_rejection": n.rejected.as_ref().map(|(v, e, t)| json!({
                    "version": v, "error": e, "at_unix_ms": unix_ms(*t),
                })),
                "last_seen_seconds_ago": n.last_seen.map(ago),
                "cert_expires_unix": n.cert_expires_unix,
            });
            (name.clone(), v)
        })
        .collect();
    // The control plane's clock, for `ringmesh ctl check`'s skew test.
    let now_unix_ms = unix_ms(now);
    (json!({ "version": st.version, "now_unix_ms": now_unix_ms, "nodes": nodes }).to_string()
        + "\n")
        .into_bytes()
}

pub(super) fn clusters_json(st: &State, observed: &super::observed::Observed) -> Vec<u8> {
    use super::observed::Health;
    let now = Instant::now();
    let health = observed.health();
    let mut out = serde_json::Map::new();
    for c in &st.mesh.clusters {
        let mut eps = Vec::new();
        for e in &c.statics {
            eps.push(json!({
                "addr": e.get("addr"), "source": "static",
                "zone": e.get("zone"), "weight": e.get("weight"),
            }));
        }
        let mut dns = Vec::new();
        for d in &c.dns {
            let r = st.dns.get(&d.name);
            for a in r.map(|r| &r.addrs[..]).unwrap_or_default() {
                eps.push(json!({
                    "addr": a.to_string(), "source": "dns", "name": d.name,
                    "zone": d.template.get("zone"), "weight": d.template.get("weight"),
                }));
            }
            dns.push(json!({
                "name": d.name,
                "addrs": r.map(|r| r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "error": r.and_then(|r| r.error.clone()),
                "resolved_at_unix_ms": r.and_then(|r| r.at).map(unix_ms),
            }));
        }
        for (id, r) in st.registrations.get(&c.name).into_iter().flatten() {
            eps.push(json!({
                "addr": r.ep.addr.to_string(), "source": "registered", "id": id,
                "zone": r.ep.zone, "weight": r.ep.weight,
                "expires_in_ms": r.deadline.saturating_duration_since(now).as_millis() as u64,
            }));
        }
        // Health and ejection as the nodes that use the cluster report them.
        for e in &mut eps {
            let addr = e["addr"].as_str().unwrap_or_default();
            let addr = addr
                .parse::<std::net::SocketAddr>()
                .map_or_else(|_| addr.to_string(), |a| a.to_string());
            let seen = Health::json(health.get(&(c.name.as_str(), addr.as_str())));
            if let (Some(m), Value::Object(seen)) = (e.as_object_mut(), seen) {
                m.extend(seen);
            }
        }
        out.insert(c.name.clone(), json!({ "endpoints": eps, "dns": dns }));
    }
    (json!({ "version": st.version, "clusters": out }).to_string() + "\n").into_bytes()
}
