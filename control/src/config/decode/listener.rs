//! Decoding a listener: HTTP or TCP, its paths, TLS, server-name routes, access log and rate
//! limits.

use std::collections::BTreeMap;
use std::time::Duration;

use super::route::decode_route;
use super::{Decoder, Node, required};

use crate::config::model::*;

pub(super) fn decode_listener(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<ListenerConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "name",
            "bind",
            "protocol",
            "tls",
            "routes",
            "cluster",
            "sni",
            "max_request_head_bytes",
            "max_request_body_bytes",
            "request_head_timeout",
            "idle_timeout",
            "access_log",
            "paths",
            "outbound",
            "inbound",
            "request_id",
        ],
    )?;
    let name = required(d, &f, "name").and_then(|(n, p)| d.string(n, &p));
    let bind = required(d, &f, "bind").and_then(|(n, p)| d.socket_addr(n, &p));
    // An unreadable protocol is reported; the rest is still checked as http.
    let protocol = match f
        .get("protocol")
        .map(|(n, p)| d.choice(n, &p, &["http", "tcp"]))
    {
        Some(Some("tcp")) => ListenerProtocol::Tcp,
        _ => ListenerProtocol::Http,
    };
    let tls = match (protocol, f.get("tls")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "TLS is terminated on http listeners only");
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => decode_tls(d, n, &p),
    };
    let routes = match (protocol, f.get("routes")) {
        (ListenerProtocol::Http, Some((n, p))) => d
            .list(n, &p)
            .into_iter()
            .enumerate()
            .filter_map(|(i, (n, p))| decode_route(d, n, &p, i))
            .collect(),
        (ListenerProtocol::Http, None) => {
            d.error(&f.path_of("routes"), None, "required for an http listener");
            Vec::new()
        }
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "a tcp listener has no routes; use `cluster`");
            Vec::new()
        }
        (ListenerProtocol::Tcp, None) => Vec::new(),
    };
    let sni = match (protocol, f.get("sni")) {
        (_, None) => Vec::new(),
        (ListenerProtocol::Http, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "only tcp listeners route by server name (an http listener picks its certificate with `tls.certs[].sni`)",
            );
            Vec::new()
        }
        (ListenerProtocol::Tcp, Some((n, p))) => decode_sni_routes(d, n, &p),
    };
    let cluster = match (protocol, f.get("cluster")) {
        (ListenerProtocol::Tcp, Some((n, p))) => d.string(n, &p),
        (ListenerProtocol::Tcp, None) if f.get("sni").is_some() => None,
        (ListenerProtocol::Tcp, None) => {
            d.error(
                &f.path_of("cluster"),
                None,
                "required for a tcp listener (or `sni`)",
            );
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "an http listener sends to clusters through `routes`",
            );
            None
        }
        (ListenerProtocol::Http, None) => None,
    };
    let max_head = match f.get("max_request_head_bytes") {
        Some((n, p)) => d.size(n, &p).filter(|v| {
            let ok = (1024..=16 << 20).contains(v);
            if !ok {
                d.error(&p, Some(n), "must be between 1KiB and 16MiB");
            }
            ok
        }),
        None => Some(64 * 1024),
    };
    let max_body = f
        .get("max_request_body_bytes")
        .and_then(|(n, p)| d.size(n, &p));
    let head_timeout = match f.get("request_head_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(Duration::from_secs(10)),
    };
    let default_idle = match protocol {
        ListenerProtocol::Http => Duration::from_secs(60),
        ListenerProtocol::Tcp => Duration::from_secs(3600),
    };
    let idle = match f.get("idle_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(default_idle),
    };
    let access_log = match (protocol, f.get("access_log")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "access logs are written for http listeners only",
            );
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => decode_access_log(d, n, &p),
    };
    let request_id = match (protocol, f.get("request_id")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "request ids are for http listeners only");
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => super::edits::decode_request_id(d, n, &p),
    };
    let paths = match (protocol, f.get("paths")) {
        (_, None) => PathsConfig::default(),
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "paths are normalized on http listeners only");
            PathsConfig::default()
        }
        (ListenerProtocol::Http, Some((n, p))) => decode_paths(d, n, &p),
    };
    let outbound = match (protocol, f.get("outbound")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "an outbound listener is an http listener (it detects what each connection speaks)",
            );
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => {
            if let Some((tn, tp)) = f.get("tls") {
                d.error(
                    &tp,
                    Some(tn),
                    "an outbound listener takes the application's own connections: no TLS to terminate",
                );
            }
            decode_outbound(d, n, &p)
        }
    };
    let inbound = match (protocol, f.get("inbound")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "an inbound listener is an http listener");
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => {
            if tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                d.error(
                    &p,
                    Some(n),
                    "an inbound listener takes the mesh's mTLS off: it needs `tls` with `client_ca`",
                );
            }
            if f.get("outbound").is_some() {
                d.error(&p, Some(n), "a listener is inbound or outbound, not both");
            }
            decode_inbound(d, n, &p)
        }
    };
    // Fields in error keep placeholders so that checks across fields still run; the config
    // as a whole is refused anyway.
    Some(ListenerConfig {
        paths,
        tls,
        access_log,
        request_id,
        name: name.unwrap_or_default(),
        bind: bind.unwrap_or(PLACEHOLDER_ADDR),
        protocol,
        routes,
        cluster,
        sni,
        max_request_head_bytes: max_head.unwrap_or(64 * 1024),
        max_request_body_bytes: max_body,
        request_head_timeout: head_timeout.unwrap_or_default(),
        idle_timeout: idle.unwrap_or_default(),
        outbound,
        inbound,
    })
}

/// `inbound: { mtls: strict, tcp_idle_timeout: 1h, ports: [ { port, cluster, mtls, opaque } ] }`.
fn decode_inbound(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<InboundConfig> {
    let f = d.mapping(node, path, &["mtls", "ports", "tcp_idle_timeout"])?;
    let mtls = |d: &mut Decoder, (n, p): (Node<'_, '_>, String)| {
        d.choice(n, &p, &["strict", "permissive"]) == Some("permissive")
    };
    let default_permissive = f.get("mtls").is_some_and(|np| mtls(d, np));
    let tcp_idle_timeout = f
        .get("tcp_idle_timeout")
        .and_then(|(n, p)| d.positive_duration(n, &p))
        .unwrap_or(ringmesh_core::snapshot::defaults::TCP_IDLE_TIMEOUT);
    let mut ports = Vec::new();
    let mut seen = BTreeMap::new();
    let listed = required(d, &f, "ports")
        .map(|(n, p)| d.list(n, &p))
        .unwrap_or_default();
    for (i, (n, p)) in listed.into_iter().enumerate() {
        let Some(pf) = d.mapping(n, &p, &["port", "cluster", "mtls", "opaque"]) else {
            continue;
        };
        let port = required(d, &pf, "port").and_then(|(n, p)| {
            match d.integer(n, &p, u64::from(u16::MAX)) {
                Some(0) => {
                    d.error(&p, Some(n), "a port is 1 to 65535");
                    None
                }
                Some(v) => {
                    if seen.insert(v, i).is_some() {
                        d.error(&p, Some(n), format!("port {v} is listed twice"));
                    }
                    Some(v as u16)
                }
                None => None,
            }
        });
        let cluster = required(d, &pf, "cluster").and_then(|(n, p)| d.string(n, &p));
        let permissive = pf.get("mtls").map_or(default_permissive, |np| mtls(d, np));
        let opaque = pf
            .get("opaque")
            .and_then(|(n, p)| d.boolean(n, &p))
            .unwrap_or(false);
        if let (Some(port), Some(cluster)) = (port, cluster) {
            ports.push(InboundPortConfig {
                port,
                cluster,
                permissive,
                opaque,
            });
        }
    }
    Some(InboundConfig {
        ports,
        tcp_idle_timeout,
    })
}

/// `outbound: { detect_timeout: 100ms, opaque_ports: [], unknown_destinations: passthrough,
/// connect_timeout: 1s, tcp_idle_timeout: 1h }`.
fn decode_outbound(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<OutboundConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "detect_timeout",
            "opaque_ports",
            "unknown_destinations",
            "connect_timeout",
            "tcp_idle_timeout",
        ],
    )?;
    let mut out = OutboundConfig {
        detect_timeout: Duration::from_millis(100),
        opaque_ports: Vec::new(),
        passthrough: true,
        connect_timeout: ringmesh_core::snapshot::defaults::CONNECT_TIMEOUT,
        tcp_idle_timeout: ringmesh_core::snapshot::defaults::TCP_IDLE_TIMEOUT,
    };
    if let Some((n, p)) = f.get("detect_timeout") {
        match d.positive_duration(n, &p) {
            Some(t) if t > Duration::from_secs(10) => d.error(
                &p,
                Some(n),
                "at most 10s: a server-speaks-first protocol waits this long for its first byte",
            ),
            Some(t) => out.detect_timeout = t,
            None => {}
        }
    }
    if let Some((n, p)) = f.get("opaque_ports") {
        for (n, p) in d.list(n, &p) {
            match d.integer(n, &p, u64::from(u16::MAX)) {
                Some(0) => d.error(&p, Some(n), "a port is 1 to 65535"),
                Some(port) => out.opaque_ports.push(port as u16),
                None => {}
            }
        }
    }
    if let Some((n, p)) = f.get("unknown_destinations") {
        out.passthrough = d.choice(n, &p, &["passthrough", "refuse"]) != Some("refuse");
    }
    for (field, slot) in [
        ("connect_timeout", &mut out.connect_timeout),
        ("tcp_idle_timeout", &mut out.tcp_idle_timeout),
    ] {
        if let Some(t) = f.get(field).and_then(|(n, p)| d.positive_duration(n, &p)) {
            *slot = t;
        }
    }
    Some(out)
}

/// `paths: { merge_slashes: true, escaped_slashes: reject, semicolons: reject }`.
pub(super) fn decode_paths(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> PathsConfig {
    let mut out = PathsConfig::default();
    let Some(f) = d.mapping(
        node,
        path,
        &["merge_slashes", "escaped_slashes", "semicolons"],
    ) else {
        return out;
    };
    if let Some(v) = f.get("merge_slashes").and_then(|(n, p)| d.boolean(n, &p)) {
        out.merge_slashes = v;
    }
    if let Some((n, p)) = f.get("escaped_slashes") {
        out.escaped_slashes = match d.choice(n, &p, &["reject", "keep", "unescape"]) {
            Some("keep") => "keep",
            Some("unescape") => "unescape",
            _ => "reject",
        };
    }
    if let Some((n, p)) = f.get("semicolons") {
        out.semicolons = match d.choice(n, &p, &["reject", "keep"]) {
            Some("keep") => "keep",
            _ => "reject",
        };
    }
    out
}

/// `tls: { certs: [{ cert, key, sni }], alpn }`.
pub(super) fn decode_tls(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<ListenerTlsConfig> {
    let f = d.mapping(node, path, &["certs", "alpn", "client_ca"])?;
    let client_ca = f.get("client_ca").and_then(|(n, p)| d.string(n, &p));
    let certs: Vec<_> = match required(d, &f, "certs") {
        Some((n, p)) => {
            let items = d.list(n, &p);
            if items.is_empty() {
                d.error(&p, Some(n), "at least one certificate is required");
            }
            items
                .into_iter()
                .filter_map(|(n, p)| {
                    let c = d.mapping(n, &p, &["cert", "key", "sni"])?;
                    let cert = required(d, &c, "cert").and_then(|(n, p)| d.string(n, &p));
                    let key = required(d, &c, "key").and_then(|(n, p)| d.string(n, &p));
                    let sni = match c.get("sni") {
                        Some((n, p)) => server_names(d, n, &p),
                        None => Vec::new(),
                    };
                    Some(CertConfig {
                        cert: cert?,
                        key: key?,
                        sni,
                    })
                })
                .collect()
        }
        None => Vec::new(),
    };
    let alpn = match f.get("alpn") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| d.choice(n, &p, &["h2", "http/1.1"]).map(str::to_string))
            .collect(),
        None => vec!["h2".to_string(), "http/1.1".to_string()],
    };
    Some(ListenerTlsConfig {
        certs,
        alpn,
        client_ca,
    })
}

/// A list of server names: exact DNS names or `*.` followed by one.
fn server_names(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Vec<String> {
    d.list(node, path)
        .into_iter()
        .filter_map(|(n, p)| {
            let s = d.string(n, &p)?;
            valid_sni(&s).then_some(s).or_else(|| {
                d.error(&p, Some(n), "expected a DNS name or `*.` followed by one");
                None
            })
        })
        .collect()
}

/// `sni: [ { names: [a.example, "*.b.example"], cluster: c } ]`; a name appears once.
pub(super) fn decode_sni_routes(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Vec<SniRouteConfig> {
    let items = d.list(node, path);
    if items.is_empty() {
        d.error(path, Some(node), "at least one entry is required");
    }
    let mut seen = BTreeMap::new();
    items
        .into_iter()
        .filter_map(|(n, p)| {
            let f = d.mapping(n, &p, &["names", "cluster"])?;
            let names = match required(d, &f, "names") {
                Some((n, p)) => {
                    let names = server_names(d, n, &p);
                    if names.is_empty() {
                        d.error(&p, Some(n), "at least one name is required");
                    }
                    for name in &names {
                        if seen.insert(name.to_ascii_lowercase(), ()).is_some() {
                            d.error(
                                &p,
                                Some(n),
                                format!("`{name}` is routed by an earlier entry"),
                            );
                        }
                    }
                    names
                }
                None => Vec::new(),
            };
            let cluster = required(d, &f, "cluster").and_then(|(n, p)| d.string(n, &p))?;
            Some(SniRouteConfig { names, cluster })
        })
        .collect()
}

/// A DNS name (letters, digits, hyphens, dots), or `*.` and one.
fn valid_sni(s: &str) -> bool {
    valid_dns_name(s.strip_prefix("*.").unwrap_or(s))
}

/// A DNS name: dot-separated labels of letters, digits and hyphens, 1 to 63 each, 253 in all.
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `access_log: PATH` (every request), or `{ path: PATH, sample: 10% }`; PATH is `stdout` or a
/// file.
pub(super) fn decode_access_log(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<AccessLogConfig> {
    if let Some(p) = node.as_str() {
        d.string(node, path);
        return valid_log_path(d, node, path, p).map(|p| AccessLogConfig {
            path: p,
            sample: 1.0,
        });
    }
    let f = d.mapping(node, path, &["path", "sample"])?;
    let target = required(d, &f, "path")
        .and_then(|(n, p)| d.string(n, &p).and_then(|s| valid_log_path(d, n, &p, &s)));
    let sample = match f.get("sample") {
        Some((n, p)) => d.fraction(n, &p),
        None => Some(1.0),
    };
    Some(AccessLogConfig {
        path: target?,
        sample: sample?,
    })
}

fn valid_log_path(d: &mut Decoder, node: Node<'_, '_>, path: &str, p: &str) -> Option<String> {
    if p.is_empty() {
        d.error(path, Some(node), "expected `stdout` or a file path");
        return None;
    }
    Some(p.to_string())
}
