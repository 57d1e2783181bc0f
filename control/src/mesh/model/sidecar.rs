//! A node's `sidecar` section in the mesh file: the control plane assigns a sidecar its ports,
//! opaque ports, zone and mTLS modes, and renders the listeners and clusters that serve them
//! (docs/sidecar.md):
//!
//! ```yaml
//! sidecar:
//!   zone: dc1                    # its zone; with `service`, zone-aware routing
//!   service: back                # the cluster of its own service
//!   inbound:                     # the workload's ports
//!     - { port: 8080 }                        # mtls: strict (the default), or permissive
//!     - { port: 2525, opaque: true }
//!   opaque_ports: [ 5432 ]       # outbound: no protocol detection
//!   unknown_destinations: passthrough
//!   ipv6: true                   # dual-stack listeners (false: IPv4 only)
//! ```
//!
//! Rendered: an outbound listener on `[::]:15001` and an inbound listener on `[::]:15006` with
//! the mesh's mTLS (`tls: mesh`), both dual-stack (IPv4 arrives on them as mapped addresses:
//! `ringmesh init` redirects both families), or on `127.0.0.1` and `0.0.0.0` with `ipv6: false`
//! (for hosts where IPv6 sockets cannot be made); a cluster `inbound-PORT` reaching the
//! application on `127.0.0.1:PORT` for each port; every mesh cluster (the application may call
//! any service); and the node's `zone`. The names `outbound` and `inbound`, the ports 15001 and
//! 15006, and clusters named `inbound-*` are the sidecar's.

use serde_json::{Map, Value, json};

use super::*;

/// Where `ringmesh init` redirects by default (its `--outbound-port` and `--inbound-port`).
pub(super) const OUTBOUND: u16 = 15001;
pub(super) const INBOUND: u16 = 15006;
/// The listeners a sidecar section adds, by name.
pub(super) const LISTENERS: &[&str] = &["outbound", "inbound"];

/// What a node's `sidecar` section renders to.
#[derive(Debug, Default)]
pub(super) struct Sidecar {
    /// Listeners, added to the node's own.
    pub listeners: Vec<Value>,
    /// Clusters of this node only (`inbound-PORT`).
    pub clusters: Vec<Value>,
    /// The proxy's top-level `zone`.
    pub zone: Option<Value>,
}

const FIELDS: &[&str] = &[
    "zone",
    "service",
    "inbound",
    "opaque_ports",
    "unknown_destinations",
    "ipv6",
];

/// Checks and renders `v`, the section at `path`. `clusters`: the mesh's clusters (all are
/// sent to a sidecar, and those with mesh TLS need the node's identity).
pub(super) fn expand(
    v: &Value,
    path: &str,
    has_identity: bool,
    clusters: &[ClusterSpec],
    errors: &mut Vec<ConfigError>,
) -> Sidecar {
    let mut out = Sidecar::default();
    let Some(m) = v.as_object() else {
        errors.push(error(path, "expected a mapping"));
        return out;
    };
    if !has_identity {
        // Its inbound listener serves the node's issued certificate, and the mesh's clusters
        // it is sent present it: without an identity the proxy could load neither.
        errors.push(error(
            path,
            "a sidecar needs the node's `identity` (and `token_sha256`): the mesh's mTLS is its own",
        ));
    }
    if let Some(c) = clusters.iter().find(|c| c.name.starts_with("inbound-")) {
        errors.push(error(
            path,
            format!(
                "cluster `{}`: names `inbound-*` are the sidecar's own",
                c.name
            ),
        ));
    }
    for k in m.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        errors.push(error(
            format!("{path}.{k}"),
            format!(
                "unknown field `{k}`; expected one of: {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let mut outbound = Map::new();
    if let Some(ports) = m.get("opaque_ports") {
        outbound.insert(
            "opaque_ports".into(),
            Value::Array(ports_of(ports, &format!("{path}.opaque_ports"), errors)),
        );
    }
    match m.get("unknown_destinations") {
        None => {}
        Some(Value::String(s)) if s == "passthrough" || s == "refuse" => {
            outbound.insert("unknown_destinations".into(), json!(s));
        }
        Some(_) => errors.push(error(
            format!("{path}.unknown_destinations"),
            "expected passthrough or refuse",
        )),
    }
    let ipv6 = match m.get("ipv6") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(error(format!("{path}.ipv6"), "expected true or false"));
            false
        }
    };
    // Dual-stack sockets take both families; a connection made straight to them from outside
    // has no original destination and is closed.
    let (out_ip, in_ip) = if ipv6 {
        ("[::]", "[::]")
    } else {
        ("127.0.0.1", "0.0.0.0")
    };
    out.listeners.push(json!({
        "name": "outbound", "bind": format!("{out_ip}:{OUTBOUND}"), "outbound": outbound, "routes": [],
    }));
    let ports = inbound_ports(m.get("inbound"), &format!("{path}.inbound"), errors);
    if !ports.is_empty() {
        let mut list = Vec::new();
        for (port, mtls, opaque) in ports {
            let cluster = format!("inbound-{port}");
            list.push(json!({ "port": port, "cluster": cluster, "mtls": mtls, "opaque": opaque }));
            out.clusters.push(json!({
                "name": cluster,
                "endpoints": [ { "addr": format!("127.0.0.1:{port}") } ],
            }));
        }
        out.listeners.push(json!({
            "name": "inbound",
            "bind": format!("{in_ip}:{INBOUND}"),
            "tls": "mesh",
            "inbound": { "ports": list },
            "routes": [],
        }));
    }
    match m.get("zone") {
        None => {
            if m.contains_key("service") {
                errors.push(error(format!("{path}.service"), "applies with `zone`"));
            }
        }
        Some(Value::String(zone)) if !crate::config::valid_zone(zone) => errors.push(error(
            format!("{path}.zone"),
            "a zone is 1 to 128 printable characters",
        )),
        Some(Value::String(zone)) => {
            let mut z = json!({ "name": zone });
            match m.get("service") {
                None => {}
                Some(Value::String(s)) if clusters.iter().any(|c| c.name == *s) => {
                    z["callers"] = json!(s);
                }
                Some(s) => errors.push(error(
                    format!("{path}.service"),
                    format!("no cluster named {s}: the cluster of this node's own service"),
                )),
            }
            out.zone = Some(z);
        }
        Some(_) => errors.push(error(format!("{path}.zone"), "expected a zone name")),
    }
    out
}

/// A list of ports, each 1 to 65535.
fn ports_of(v: &Value, path: &str, errors: &mut Vec<ConfigError>) -> Vec<Value> {
    let Some(list) = v.as_array() else {
        errors.push(error(path, "expected a list of ports"));
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, p)| match p.as_u64() {
            Some(n @ 1..=65535) => Some(json!(n)),
            _ => {
                errors.push(error(format!("{path}[{i}]"), "a port is 1 to 65535"));
                None
            }
        })
        .collect()
}

/// `inbound: [ { port, mtls, opaque } ]`: (port, `strict` or `permissive`, opaque).
fn inbound_ports(
    v: Option<&Value>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(u64, String, bool)> {
    let Some(v) = v else {
        return Vec::new();
    };
    let Some(list) = v.as_array() else {
        errors.push(error(path, "expected a list of { port, mtls, opaque }"));
        return Vec::new();
    };
    let mut out: Vec<(u64, String, bool)> = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(p) = p.as_object() else {
            errors.push(error(at, "expected { port, mtls, opaque }"));
            continue;
        };
        for k in p
            .keys()
            .filter(|k| !["port", "mtls", "opaque"].contains(&k.as_str()))
        {
            errors.push(error(
                format!("{at}.{k}"),
                format!("unknown field `{k}`; expected one of: port, mtls, opaque"),
            ));
        }
        let port = match p.get("port").and_then(Value::as_u64) {
            Some(n @ 1..=65535) if out.iter().any(|(q, _, _)| *q == n) => {
                errors.push(error(
                    format!("{at}.port"),
                    format!("port {n} is listed twice"),
                ));
                continue;
            }
            Some(n) if n == u64::from(OUTBOUND) || n == u64::from(INBOUND) => {
                errors.push(error(
                    format!("{at}.port"),
                    format!("port {n} is the sidecar's own (ringmesh init never redirects it)"),
                ));
                continue;
            }
            Some(n @ 1..=65535) => n,
            _ => {
                errors.push(error(format!("{at}.port"), "a port is 1 to 65535"));
                continue;
            }
        };
        let mtls = match p.get("mtls") {
            None => "strict".to_string(),
            Some(Value::String(s)) if s == "strict" || s == "permissive" => s.clone(),
            Some(_) => {
                errors.push(error(format!("{at}.mtls"), "expected strict or permissive"));
                continue;
            }
        };
        let opaque = match p.get("opaque") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(error(format!("{at}.opaque"), "expected true or false"));
                continue;
            }
        };
        out.push((port, mtls, opaque));
    }
    out
}
