//! The clusters and nodes of a mesh file: each cluster's endpoints (addresses or DNS names)
//! and each node's identity and listeners, the proxy's own decoder checking the parts it reads.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::*;

/// Clusters: `endpoints` entries are either `{ addr, ... }`, checked by the proxy's decoder, or
/// `{ dns: "host:port", ... }`, resolved later. The rest of each cluster is the proxy's.
pub(super) fn check_clusters(
    root: &Map<String, Value>,
    trust_domain: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<ClusterSpec> {
    let list = match root.get("clusters") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(l)) => l,
        Some(_) => {
            errors.push(error("clusters", "expected a list"));
            return Vec::new();
        }
    };
    let mut specs = Vec::with_capacity(list.len());
    // What the proxy's decoder checks: every cluster with only its address endpoints, and the
    // original index of each, to name the right entry in its errors.
    let mut checked = Vec::with_capacity(list.len());
    let mut index_of: Vec<Vec<usize>> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let path = format!("clusters[{i}]");
        let Some(obj) = c.as_object() else {
            errors.push(error(path, "expected a mapping"));
            continue;
        };
        let mut base = obj.clone();
        let endpoints = base.remove("endpoints");
        // Who may register into it: the control plane's business, not the proxies'.
        let servers = match base.remove("servers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .enumerate()
                .filter_map(|(j, id)| match id.as_str() {
                    Some(s) if ringmesh_core::tls::valid_spiffe_id(s) => Some(s.to_string()),
                    _ => {
                        errors.push(error(
                            format!("{path}.servers[{j}]"),
                            "expected a SPIFFE ID such as spiffe://mesh.local/ns/default/sa/web",
                        ));
                        None
                    }
                })
                .collect(),
            Some(_) => {
                errors.push(error(
                    format!("{path}.servers"),
                    "expected a list of SPIFFE IDs: the identities that may register instances",
                ));
                Vec::new()
            }
        };
        if let Some(tls) = base.get_mut("tls") {
            expand_cluster_tls(tls, trust_domain, &format!("{path}.tls"), errors);
        }
        let mut statics = Vec::new();
        let mut dns = Vec::new();
        let mut indices = Vec::new();
        match endpoints {
            None | Some(Value::Null) => {}
            Some(Value::Array(eps)) => {
                for (j, e) in eps.into_iter().enumerate() {
                    match e.as_object().and_then(|o| o.get("dns")) {
                        Some(name) => {
                            let p = format!("{path}.endpoints[{j}]");
                            if let Some(d) = check_dns(&e, name, &p, errors) {
                                dns.push(d);
                            }
                        }
                        None => {
                            statics.push(e);
                            indices.push(j);
                        }
                    }
                }
            }
            Some(other) => statics.push(other),
        }
        let mut full = base.clone();
        full.insert("endpoints".into(), Value::Array(statics.clone()));
        checked.push(Value::Object(full));
        index_of.push(indices);
        specs.push(ClusterSpec {
            name: obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            base,
            statics,
            dns,
            servers,
        });
    }
    let mut probe = Map::new();
    probe.insert("listeners".into(), Value::Array(vec![]));
    probe.insert("clusters".into(), Value::Array(checked));
    if let Some(v) = root.get("default_policy") {
        probe.insert("default_policy".into(), v.clone());
    }
    if let Some(v) = root.get("tracing") {
        probe.insert("tracing".into(), v.clone());
    }
    // The proxy's decoder checks each policy as a node gets it: without `applies_to.nodes`.
    match root.get("policies") {
        Some(Value::Array(list)) => {
            let list = list.iter().map(|p| without_nodes(p).0).collect();
            probe.insert("policies".into(), Value::Array(list));
        }
        Some(v) => {
            probe.insert("policies".into(), v.clone());
        }
        None => {}
    }
    if let Err(errs) = Config::parse(&Value::Object(probe).to_string()) {
        for mut e in errs {
            e.line = None;
            e.path = renumber_endpoint(&e.path, &index_of);
            errors.push(e);
        }
    }
    specs
}

/// `clusters[i].endpoints[k]...` with `k` counted among address entries, counted among all.
pub(super) fn renumber_endpoint(path: &str, index_of: &[Vec<usize>]) -> String {
    let parse = || -> Option<String> {
        let rest = path.strip_prefix("clusters[")?;
        let (i, rest) = rest.split_once(']')?;
        let rest = rest.strip_prefix(".endpoints[")?;
        let (k, rest) = rest.split_once(']')?;
        let i: usize = i.parse().ok()?;
        let k: usize = k.parse().ok()?;
        let j = *index_of.get(i)?.get(k)?;
        Some(format!("clusters[{i}].endpoints[{j}]{rest}"))
    };
    parse().unwrap_or_else(|| path.to_string())
}

pub(super) fn check_dns(
    entry: &Value,
    name: &Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<DnsSource> {
    let mut template = entry.as_object()?.clone();
    template.remove("dns");
    for k in template.keys() {
        if !["zone", "priority", "weight"].contains(&k.as_str()) {
            errors.push(error(
                format!("{path}.{k}"),
                format!("unknown field `{k}`; expected one of: dns, zone, priority, weight"),
            ));
        }
    }
    let ok = name.as_str().and_then(|s| {
        let (host, port) = s.rsplit_once(':')?;
        (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).then(|| s.to_string())
    });
    match ok {
        Some(name) => Some(DnsSource { name, template }),
        None => {
            errors.push(error(
                format!("{path}.dns"),
                "expected a name and port such as web.internal:8080",
            ));
            None
        }
    }
}

/// Nodes: each is checked as a proxy config of its listeners and the mesh's clusters.
pub(super) fn check_nodes(
    root: &Map<String, Value>,
    clusters: &[ClusterSpec],
    trust_domain: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, NodeSpec> {
    let mut out = BTreeMap::new();
    let nodes = match root.get("nodes") {
        Some(Value::Object(n)) => n,
        None | Some(Value::Null) => {
            errors.push(error(
                "nodes",
                "required: what each proxy serves, by node name",
            ));
            return out;
        }
        Some(_) => {
            errors.push(error("nodes", "expected a mapping of node names"));
            return out;
        }
    };
    // Clusters without endpoints: enough for the checks across fields (names referred to).
    let bare: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let mut b = c.base.clone();
            b.insert("endpoints".into(), Value::Array(vec![]));
            Value::Object(b)
        })
        .collect();
    let bare = Value::Array(bare).to_string();
    for (name, node) in nodes {
        let path = format!("nodes.{name}");
        if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
            errors.push(error(
                path.clone(),
                "node names must be 1 to 253 printable characters",
            ));
        }
        let Some(obj) = node.as_object() else {
            errors.push(error(path, "expected a mapping"));
            continue;
        };
        const NODE_FIELDS: &[&str] = &[
            "listeners",
            "identity",
            "token_sha256",
            "token_expires",
            "sidecar",
        ];
        for k in obj.keys().filter(|k| !NODE_FIELDS.contains(&k.as_str())) {
            errors.push(error(
                format!("{path}.{k}"),
                format!(
                    "unknown field `{k}`; expected one of: {}",
                    NODE_FIELDS.join(", ")
                ),
            ));
        }
        let identity = match obj.get("identity") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let id = v.as_object().and_then(|m| {
                    let ns = m.get("ns")?.as_str()?;
                    let sa = m.get("sa")?.as_str()?;
                    (m.len() == 2 && dns_label(ns) && dns_label(sa))
                        .then(|| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
                });
                if id.is_none() {
                    errors.push(error(
                        format!("{path}.identity"),
                        "expected { ns, sa }: lowercase letters, digits and -, 1 to 63 each",
                    ));
                }
                id
            }
        };
        let token_sha256 = match obj.get("token_sha256") {
            None | Some(Value::Null) => None,
            Some(Value::String(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(_) => {
                errors.push(error(
                    format!("{path}.token_sha256"),
                    "expected the SHA-256 of the node's bootstrap token, as 64 hex digits",
                ));
                None
            }
        };
        let token_expires = match obj.get("token_expires") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                {
                    Ok(t) => Some(t.unix_timestamp()),
                    Err(_) => {
                        errors.push(error(
                            format!("{path}.token_expires"),
                            "expected a time such as 2026-12-31T00:00:00Z (RFC 3339)",
                        ));
                        None
                    }
                }
            }
            Some(_) => {
                errors.push(error(
                    format!("{path}.token_expires"),
                    "expected a time such as 2026-12-31T00:00:00Z (RFC 3339)",
                ));
                None
            }
        };
        if token_expires.is_some() && token_sha256.is_none() {
            errors.push(error(
                format!("{path}.token_expires"),
                "applies to the node's token_sha256",
            ));
        }
        if identity.is_some() != token_sha256.is_some() {
            errors.push(error(
                path.clone(),
                "`identity` and `token_sha256` go together: a node proves its identity with its token",
            ));
        }
        let mut listeners = obj.get("listeners").cloned().unwrap_or(Value::Null);
        // A sidecar's listeners come after the node's own, its clusters are the node's alone.
        let sidecar = obj.get("sidecar").map(|v| {
            super::sidecar::expand(
                v,
                &format!("{path}.sidecar"),
                identity.is_some(),
                clusters,
                errors,
            )
        });
        if let Some(sc) = &sidecar {
            // The sidecar's names and ports are its own: a node listener on them would clash
            // on the proxy, where the error could not name this file's field.
            for (i, l) in listeners.as_array().into_iter().flatten().enumerate() {
                let name = l.get("name").and_then(Value::as_str).unwrap_or_default();
                if super::sidecar::LISTENERS.contains(&name) {
                    errors.push(error(
                        format!("{path}.listeners[{i}].name"),
                        format!("`{name}` is the sidecar's listener"),
                    ));
                }
                let port = l
                    .get("bind")
                    .and_then(Value::as_str)
                    .and_then(|b| b.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port());
                if let Some(p) =
                    port.filter(|p| [super::sidecar::OUTBOUND, super::sidecar::INBOUND].contains(p))
                {
                    errors.push(error(
                        format!("{path}.listeners[{i}].bind"),
                        format!("port {p} is the sidecar's"),
                    ));
                }
            }
            match &mut listeners {
                Value::Array(l) => l.extend(sc.listeners.iter().cloned()),
                Value::Null => listeners = Value::Array(sc.listeners.clone()),
                _ => {}
            }
        }
        for (i, l) in listeners.as_array().into_iter().flatten().enumerate() {
            // A proxy (root, often) must not be told to write files the control plane names.
            let log = l.get("access_log");
            let target = log.and_then(|a| a.as_str().or_else(|| a.get("path")?.as_str()));
            if log.is_some() && target != Some("stdout") {
                errors.push(error(
                    format!("{path}.listeners[{i}].access_log"),
                    "a node's access log goes to stdout: the control plane does not name files on proxy hosts",
                ));
            }
        }
        for (i, l) in listeners.as_array_mut().into_iter().flatten().enumerate() {
            if let Some(tls) = l.get_mut("tls") {
                let p = format!("{path}.listeners[{i}].tls");
                // (A sidecar without an identity is reported once, on its section.)
                if expand_listener_tls(tls, &p, errors) && identity.is_none() && sidecar.is_none() {
                    errors.push(error(p, "`mesh` TLS needs the node's `identity`"));
                }
            }
        }
        let listeners_text = listeners.to_string();
        let local: Vec<String> = sidecar
            .iter()
            .flat_map(|sc| sc.clusters.iter().map(Value::to_string))
            .collect();
        let mut probe_clusters = bare.clone();
        if !local.is_empty() {
            probe_clusters.pop();
            if probe_clusters.len() > 1 {
                probe_clusters.push(',');
            }
            probe_clusters.push_str(&local.join(","));
            probe_clusters.push(']');
        }
        let probe = format!("{{\"listeners\":{listeners_text},\"clusters\":{probe_clusters}}}");
        if let Err(errs) = Config::parse(&probe) {
            for e in errs {
                // Errors in the clusters are the clusters' own, reported once above.
                if e.path.starts_with("clusters") {
                    continue;
                }
                errors.push(ConfigError {
                    path: decode::join(&path, &e.path),
                    line: None,
                    message: e.message,
                });
            }
        }
        let mut named = BTreeSet::new();
        referenced(&listeners, &mut named);
        if sidecar.is_some() {
            // Its application may call any service of the mesh.
            named.extend(clusters.iter().map(|c| c.name.clone()));
        }
        let zone = sidecar
            .as_ref()
            .and_then(|sc| sc.zone.as_ref())
            .map(Value::to_string);
        out.insert(
            name.clone(),
            NodeSpec {
                listeners: listeners_text,
                clusters: named,
                identity,
                token_sha256,
                token_expires,
                local_clusters: local,
                zone,
            },
        );
    }
    out
}

/// A DNS label: what namespaces and service accounts are made of.
pub(super) fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A listener's `tls: mesh` (or `tls: { mesh: true, alpn: [...] }`): serve the node's issued
/// certificate and require clients to present one from the mesh CA. Returns whether it was.
pub(super) fn expand_listener_tls(
    tls: &mut Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> bool {
    let alpn = match tls {
        Value::String(s) if s == "mesh" => None,
        Value::Object(m) if m.contains_key("mesh") => {
            if m.get("mesh") != Some(&Value::Bool(true)) {
                errors.push(error(format!("{path}.mesh"), "expected true"));
            }
            for k in m.keys().filter(|k| !["mesh", "alpn"].contains(&k.as_str())) {
                errors.push(error(
                    format!("{path}.{k}"),
                    format!("unknown field `{k}` with `mesh`; expected one of: mesh, alpn"),
                ));
            }
            m.get("alpn").cloned()
        }
        _ => return false,
    };
    let mut out = Map::new();
    out.insert(
        "certs".into(),
        serde_json::json!([{
            "cert": format!("{IDENTITY_DIR}/cert.pem"),
            "key": format!("{IDENTITY_DIR}/key.pem"),
        }]),
    );
    out.insert(
        "client_ca".into(),
        Value::String(format!("{IDENTITY_DIR}/bundle.pem")),
    );
    if let Some(a) = alpn {
        out.insert("alpn".into(), a);
    }
    *tls = Value::Object(out);
    true
}

/// A cluster's `tls: { mesh: "spiffe://TD/ns/NS/sa/SA" }`: mutual TLS with the node's issued
/// certificate, to endpoints that must present that identity.
pub(super) fn expand_cluster_tls(
    tls: &mut Value,
    trust_domain: &str,
    path: &str,
    errors: &mut Vec<ConfigError>,
) {
    let Some(m) = tls.as_object() else {
        return;
    };
    let Some(id) = m.get("mesh") else {
        return;
    };
    for k in m.keys().filter(|k| *k != "mesh") {
        errors.push(error(
            format!("{path}.{k}"),
            format!("unknown field `{k}` with `mesh`: the mesh CA provides the rest"),
        ));
    }
    let sni = id.as_str().and_then(|id| {
        let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
        let rest = rest.strip_prefix("/ns/")?;
        let (ns, sa) = rest.split_once("/sa/")?;
        (dns_label(ns) && dns_label(sa)).then(|| identity_dns_name(trust_domain, ns, sa))
    });
    let Some(sni) = sni else {
        errors.push(error(
            format!("{path}.mesh"),
            format!("expected the endpoints' identity, such as spiffe://{trust_domain}/ns/default/sa/web"),
        ));
        return;
    };
    *tls = serde_json::json!({
        "sni": sni,
        "ca": format!("{IDENTITY_DIR}/bundle.pem"),
        "cert": format!("{IDENTITY_DIR}/cert.pem"),
        "key": format!("{IDENTITY_DIR}/key.pem"),
    });
}

/// Every cluster a node's listeners name: the value of any `cluster` field (routes, splits, TCP
/// listeners, SNI routes).
pub(super) fn referenced(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("cluster", Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    _ => referenced(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| referenced(v, out)),
        _ => {}
    }
}
