//! Decoding the whole file: its top-level fields and access policies.

use super::cluster::decode_cluster;
use super::listener::decode_listener;
use super::route::decode_match_fields;
use super::{Decoder, Node, required};

use crate::config::model::*;

pub(crate) fn decode_config(d: &mut Decoder, root: Node<'_, '_>) -> Option<Config> {
    let f = d.mapping(
        root,
        "",
        &[
            "admin",
            "workers",
            "listeners",
            "clusters",
            "default_policy",
            "policies",
            "zone",
            "tracing",
        ],
    )?;
    let admin = match f.get("admin") {
        Some((n, p)) => d.socket_addr(n, &p),
        None => DEFAULT_ADMIN.parse().ok(),
    };
    let workers = f.get("workers").and_then(|(n, p)| {
        let w = d.integer(n, &p, 1024)?;
        if w == 0 {
            d.error(&p, Some(n), "must be at least 1");
            return None;
        }
        Some(w as usize)
    });
    let default_deny = f
        .get("default_policy")
        .is_some_and(|(n, p)| d.choice(n, &p, &["allow", "deny"]) == Some("deny"));
    let policies = match f.get("policies") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .enumerate()
            .filter_map(|(i, (n, p))| decode_policy(d, n, &p, i))
            .collect(),
        None => Vec::new(),
    };
    let listeners = match f.get("listeners") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| decode_listener(d, n, &p))
            .collect(),
        None => {
            d.error("listeners", None, "required: at least one listener");
            Vec::new()
        }
    };
    let clusters = match f.get("clusters") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| decode_cluster(d, n, &p))
            .collect(),
        None => Vec::new(),
    };
    let zone = f.get("zone").and_then(|(n, p)| decode_zone(d, n, &p));
    let tracing = f.get("tracing").and_then(|(n, p)| decode_tracing(d, n, &p));
    Some(Config {
        zone,
        tracing,
        admin: admin.unwrap_or(PLACEHOLDER_ADDR),
        workers,
        listeners,
        clusters,
        default_deny,
        policies,
    })
}

/// `{ name, action: allow|deny, audit, match: { identity, source, host, path, path_prefix,
/// method, headers } }`.
pub(super) fn decode_policy(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    index: usize,
) -> Option<PolicyConfig> {
    let f = d.mapping(
        node,
        path,
        &["name", "action", "audit", "match", "applies_to"],
    )?;
    let applies_to = f
        .get("applies_to")
        .map(|(n, p)| decode_applies_to(d, n, &p));
    let name = f.get("name").and_then(|(n, p)| d.string(n, &p));
    let deny = required(d, &f, "action").and_then(|(n, p)| d.choice(n, &p, &["allow", "deny"]))
        == Some("deny");
    let audit = f
        .get("audit")
        .and_then(|(n, p)| d.boolean(n, &p))
        .unwrap_or(false);
    if audit && !deny {
        if let Some((n, p)) = f.get("audit") {
            d.error(&p, Some(n), "audit applies to deny policies");
        }
    }
    let (mut identity, mut source) = (None, None);
    let request = match required(d, &f, "match") {
        Some((n, p)) => {
            let m = d.mapping(
                n,
                &p,
                &[
                    "identity",
                    "source",
                    "host",
                    "path",
                    "path_prefix",
                    "ignore_case",
                    "method",
                    "headers",
                    "query",
                    "path_regex",
                ],
            )?;
            if let Some((n, p)) = m.get("identity") {
                identity = d.string(n, &p);
                if identity
                    .as_deref()
                    .is_some_and(|id| !ringmesh_core::tls::valid_spiffe_id(id))
                {
                    d.error(
                        &p,
                        Some(n),
                        "expected a SPIFFE ID such as spiffe://mesh.local/ns/default/sa/web",
                    );
                }
            }
            if let Some((n, p)) = m.get("source") {
                source = d.string(n, &p);
                if source
                    .as_deref()
                    .is_some_and(|s| ringmesh_core::policy::Cidr::parse(s).is_none())
                {
                    d.error(&p, Some(n), "expected an address range such as 10.0.0.0/8");
                }
            }
            decode_match_fields(d, &m)
        }
        None => return None,
    };
    Some(PolicyConfig {
        name: name.unwrap_or_else(|| format!("policies[{index}]")),
        deny,
        audit,
        identity,
        source,
        request,
        applies_to,
    })
}

/// `applies_to: { ports: [8080] }`: the workload's ports a policy is scoped to (none listed:
/// all of them).
fn decode_applies_to(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Vec<u16> {
    let Some(f) = d.mapping(node, path, &["ports"]) else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    if let Some((n, p)) = f.get("ports") {
        for (n, p) in d.list(n, &p) {
            match d.integer(n, &p, u64::from(u16::MAX)) {
                Some(0) => d.error(&p, Some(n), "a port is 1 to 65535"),
                Some(v) => ports.push(v as u16),
                None => {}
            }
        }
    }
    ports
}

/// `zone: { name, callers, min_cluster_size: 6 }`.
fn decode_zone(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<ZoneConfig> {
    let f = d.mapping(node, path, &["name", "callers", "min_cluster_size"])?;
    let name = required(d, &f, "name").and_then(|(n, p)| {
        let z = d.string(n, &p)?;
        if !super::cluster::valid_zone(&z) {
            d.error(&p, Some(n), "a zone is 1 to 128 printable characters");
            return None;
        }
        Some(z)
    });
    let callers = f.get("callers").and_then(|(n, p)| d.string(n, &p));
    let min_cluster_size = match f.get("min_cluster_size") {
        Some((n, p)) => d.integer(n, &p, 1_000_000)? as usize,
        None => ringmesh_core::zone::MIN_CLUSTER_SIZE,
    };
    Some(ZoneConfig {
        name: name?,
        callers,
        min_cluster_size,
    })
}

/// `tracing: { otlp: URL, sample: 100%, service_name: ringmesh }`.
fn decode_tracing(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<TracingConfig> {
    let f = d.mapping(node, path, &["otlp", "sample", "service_name"])?;
    let otlp = required(d, &f, "otlp").and_then(|(n, p)| {
        let url = d.string(n, &p)?;
        if let Err(why) = ringmesh_core::spans::Endpoint::parse(&url) {
            d.error(&p, Some(n), why);
            return None;
        }
        Some(url)
    });
    let sample = match f.get("sample") {
        Some((n, p)) => d.fraction(n, &p),
        None => Some(1.0),
    };
    let service_name = match f.get("service_name") {
        Some((n, p)) => d.string(n, &p).and_then(|s| {
            if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
                d.error(&p, Some(n), "1 to 256 printable characters");
                return None;
            }
            Some(s)
        }),
        None => Some("ringmesh".to_string()),
    };
    Some(TracingConfig {
        otlp: otlp?,
        sample: sample?,
        service_name: service_name?,
    })
}
