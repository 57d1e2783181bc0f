//! Rendering desired state into the config each node is served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde_json::{Map, Value};

use super::*;

/// An endpoint the registration API added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Its address.
    pub addr: SocketAddr,
    /// Its zone.
    pub zone: Option<String>,
    /// Its weight.
    pub weight: Option<u32>,
}

/// A cluster's JSON with its endpoints: the listed ones, then those DNS found, then the
/// registered ones; an address already present is not repeated.
pub fn render_cluster<'a>(
    spec: &ClusterSpec,
    dns: impl Fn(&str) -> Option<&'a [SocketAddr]>,
    registered: impl Iterator<Item = &'a Registered>,
) -> String {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut eps: Vec<Value> = Vec::with_capacity(spec.statics.len());
    for e in &spec.statics {
        if let Some(a) = e.get("addr").and_then(Value::as_str) {
            seen.insert(normalize(a));
        }
        eps.push(e.clone());
    }
    for d in &spec.dns {
        for a in dns(&d.name).unwrap_or_default() {
            if seen.insert(a.to_string()) {
                let mut e = d.template.clone();
                e.insert("addr".into(), Value::String(a.to_string()));
                eps.push(Value::Object(e));
            }
        }
    }
    for r in registered {
        if seen.insert(r.addr.to_string()) {
            let mut e = Map::new();
            e.insert("addr".into(), Value::String(r.addr.to_string()));
            if let Some(z) = &r.zone {
                e.insert("zone".into(), Value::String(z.clone()));
            }
            if let Some(w) = r.weight {
                e.insert("weight".into(), Value::from(w));
            }
            eps.push(Value::Object(e));
        }
    }
    let mut c = spec.base.clone();
    c.insert("endpoints".into(), Value::Array(eps));
    Value::Object(c).to_string()
}

/// Every cluster of `mesh` rendered with only its listed endpoints (nothing discovered or
/// registered yet): what a node's config is checked against before any discovery runs.
pub fn render_static_clusters(mesh: &Mesh) -> BTreeMap<String, String> {
    mesh.clusters
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                render_cluster(c, |_| None, std::iter::empty()),
            )
        })
        .collect()
}

pub(super) fn normalize(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.to_string())
}

/// Node `name`'s config: its listeners, the clusters they name (pre-rendered), and the
/// policies (mesh-wide ones, and those scoped to it).
pub fn render_node(
    mesh: &Mesh,
    name: &str,
    node: &NodeSpec,
    clusters: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(256 + node.listeners.len());
    out.push_str("{\"listeners\":");
    out.push_str(&node.listeners);
    out.push_str(",\"clusters\":[");
    let mut first = true;
    let named = node.clusters.iter().filter_map(|name| clusters.get(name));
    for c in named.chain(&node.local_clusters) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(c);
    }
    // Mesh-wide policies, and those scoped to this node.
    out.push_str("],\"policies\":[");
    let mut first = true;
    for (nodes, p) in &mesh.policies {
        if nodes.as_ref().is_some_and(|n| !n.iter().any(|n| n == name)) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(p);
    }
    out.push(']');
    out.push_str(",\"default_policy\":");
    out.push_str(&Value::String(mesh.default_policy.clone()).to_string());
    if let Some(zone) = &node.zone {
        out.push_str(",\"zone\":");
        out.push_str(zone);
    }
    if let Some(t) = &mesh.tracing {
        let mut t = t.clone();
        t.entry("service_name")
            .or_insert_with(|| Value::String(name.to_string()));
        out.push_str(",\"tracing\":");
        out.push_str(&Value::Object(t).to_string());
    }
    out.push('}');
    out
}
