//! Checks that need the whole config: names unique, what fields refer to exists.

use std::collections::BTreeMap;

use super::decode::Decoder;
use super::model::*;

/// Checks that need the whole config.
pub(super) fn check(d: &mut Decoder, c: &Config) {
    let mut names = BTreeMap::new();
    for (i, cl) in c.clusters.iter().enumerate() {
        if !cl.name.is_empty() && names.insert(cl.name.as_str(), i).is_some() {
            d.error(
                &format!("clusters[{i}].name"),
                None,
                format!("duplicate cluster name `{}`", cl.name),
            );
        }
        let mut seen = BTreeMap::new();
        for (j, e) in cl.endpoints.iter().enumerate() {
            if seen.insert(e.addr, j).is_some() {
                d.error(
                    &format!("clusters[{i}].endpoints[{j}].addr"),
                    None,
                    format!("duplicate endpoint {}", e.addr),
                );
            }
        }
    }
    // An address names one service: two clusters claiming it would make a sidecar's choice
    // depend on their order.
    let mut claimed = BTreeMap::new();
    for (i, cl) in c.clusters.iter().enumerate() {
        for (j, a) in cl.addresses.iter().enumerate() {
            match claimed.insert(*a, i) {
                Some(other) if other != i => d.error(
                    &format!("clusters[{i}].addresses[{j}]"),
                    None,
                    format!(
                        "{a} is already the address of cluster `{}`",
                        c.clusters[other].name
                    ),
                ),
                Some(_) => d.error(
                    &format!("clusters[{i}].addresses[{j}]"),
                    None,
                    format!("duplicate address {a}"),
                ),
                None => {}
            }
        }
    }
    if let Some(cl) = c.zone.as_ref().and_then(|z| z.callers.as_ref()) {
        if !names.contains_key(cl.as_str()) {
            d.error("zone.callers", None, format!("no cluster named `{cl}`"));
        }
    }
    let mut listener_names = BTreeMap::new();
    let mut binds = BTreeMap::new();
    for (i, l) in c.listeners.iter().enumerate() {
        if !l.name.is_empty() && listener_names.insert(l.name.as_str(), i).is_some() {
            d.error(
                &format!("listeners[{i}].name"),
                None,
                format!("duplicate listener name `{}`", l.name),
            );
        }
        if l.bind.port() != 0 && binds.insert(l.bind, i).is_some() {
            d.error(
                &format!("listeners[{i}].bind"),
                None,
                format!("{} is used by another listener", l.bind),
            );
        }
        if let Some(cl) = &l.cluster {
            if !names.contains_key(cl.as_str()) {
                d.error(
                    &format!("listeners[{i}].cluster"),
                    None,
                    format!("no cluster named `{cl}`"),
                );
            }
        }
        for (j, p) in l.inbound.iter().flat_map(|b| b.ports.iter()).enumerate() {
            if !names.contains_key(p.cluster.as_str()) {
                d.error(
                    &format!("listeners[{i}].inbound.ports[{j}].cluster"),
                    None,
                    format!("no cluster named `{}`", p.cluster),
                );
            }
        }
        for (j, r) in l.sni.iter().enumerate() {
            if !names.contains_key(r.cluster.as_str()) {
                d.error(
                    &format!("listeners[{i}].sni[{j}].cluster"),
                    None,
                    format!("no cluster named `{}`", r.cluster),
                );
            }
        }
        let mut route_names = BTreeMap::new();
        for (j, r) in l.routes.iter().enumerate() {
            if route_names.insert(r.name.as_str(), j).is_some() {
                d.error(
                    &format!("listeners[{i}].routes[{j}].name"),
                    None,
                    format!("duplicate route name `{}`", r.name),
                );
            }
            if let Some(cl) = &r.cluster {
                if !names.contains_key(cl.as_str()) {
                    d.error(
                        &format!("listeners[{i}].routes[{j}].cluster"),
                        None,
                        format!("no cluster named `{cl}`"),
                    );
                }
            }
            if let Some(svc) = &r.matcher.service {
                let path = format!("listeners[{i}].routes[{j}].match.service");
                if l.outbound.is_none() && l.inbound.is_none() {
                    d.error(
                        &path,
                        None,
                        "only a sidecar's outbound or inbound listener knows which service a connection was going to",
                    );
                } else if !names.contains_key(svc.as_str()) {
                    d.error(&path, None, format!("no cluster named `{svc}`"));
                }
            }
            if r.compression.is_some() {
                let route_path = format!("listeners[{i}].routes[{j}]");
                coding_fields_left_alone(d, c, r, &names, &route_path);
            }
            if let Some(m) = &r.mirror {
                let path = format!("listeners[{i}].routes[{j}].mirror.cluster");
                match names.get(m.cluster.as_str()).map(|&k| &c.clusters[k]) {
                    None => d.error(&path, None, format!("no cluster named `{}`", m.cluster)),
                    Some(k)
                        if k.protocol == UpstreamProtocol::Http2
                            || k.protocol == UpstreamProtocol::Mesh && k.tls.is_none() =>
                    {
                        d.error(
                            &path,
                            None,
                            format!(
                                "copies go over HTTP/1.1, which cluster `{}` does not take (`http2`, or `mesh` without TLS)",
                                m.cluster
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
            for (k, t) in r.split.iter().enumerate() {
                if !names.contains_key(t.cluster.as_str()) {
                    d.error(
                        &format!("listeners[{i}].routes[{j}].split[{k}].cluster"),
                        None,
                        format!("no cluster named `{}`", t.cluster),
                    );
                }
            }
        }
    }
    if c.admin.port() != 0 && c.listeners.iter().any(|l| l.bind == c.admin) {
        d.error(
            "admin",
            None,
            format!("{} is also a listener's address", c.admin),
        );
    }
}

/// Fields a compressing route's answers get from the coding alone: an edit of them (the
/// route's, or a cluster's it sends to) would contradict the coding (two codings, a strong ETag
/// on coded bytes, ranges over the wrong bytes, a `Vary` without `Accept-Encoding`).
const CODING_FIELDS: &[&str] = &["content-encoding", "vary", "etag", "accept-ranges"];

fn coding_fields_left_alone(
    d: &mut Decoder,
    c: &Config,
    r: &RouteConfig,
    names: &BTreeMap<&str, usize>,
    route_path: &str,
) {
    let touched = |h: &HeadersConfig| {
        h.add
            .keys()
            .chain(h.set.keys())
            .chain(&h.remove)
            .find(|n| CODING_FIELDS.contains(&n.to_ascii_lowercase().as_str()))
            .cloned()
    };
    if let Some(name) = r.response_headers.as_ref().and_then(touched) {
        d.error(
            &format!("{route_path}.response_headers"),
            None,
            format!("`{name}` is the compression's to write on this route"),
        );
    }
    let clusters = r.cluster.iter().chain(r.split.iter().map(|t| &t.cluster));
    for k in clusters.filter_map(|n| names.get(n.as_str()).map(|&k| &c.clusters[k])) {
        if let Some(name) = k.response_headers.as_ref().and_then(touched) {
            d.error(
                &format!("{route_path}.compression"),
                None,
                format!(
                    "cluster `{}` edits `{name}` in its answers, which the compression writes",
                    k.name
                ),
            );
        }
    }
}
