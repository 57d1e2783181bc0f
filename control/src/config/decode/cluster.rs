//! Decoding a cluster: its endpoints, TLS, limits, outlier ejection and health checks; and an
//! endpoint on its own (a registration through the control plane's API).

use std::time::Duration;

use std::net::SocketAddr;

use super::{ConfigError, Decoder, Node, required};

use crate::config::model::*;

pub(super) fn decode_cluster(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<ClusterConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "name",
            "lb",
            "connect_timeout",
            "pool_idle_timeout",
            "tls",
            "protocol",
            "limits",
            "outlier",
            "health_check",
            "addresses",
            "endpoints",
            "request_headers",
            "response_headers",
        ],
    )?;
    let request_headers = f
        .get("request_headers")
        .and_then(|(n, p)| super::edits::decode_header_edits(d, n, &p, true));
    let response_headers = f
        .get("response_headers")
        .and_then(|(n, p)| super::edits::decode_header_edits(d, n, &p, false));
    let tls = f.get("tls").and_then(|(n, p)| decode_cluster_tls(d, n, &p));
    let protocol = match f
        .get("protocol")
        .and_then(|(n, p)| d.choice(n, &p, &["http1", "http2", "auto", "mesh"]))
    {
        Some("http2") => UpstreamProtocol::Http2,
        Some("auto") => UpstreamProtocol::Auto,
        Some("mesh") => UpstreamProtocol::Mesh,
        _ => UpstreamProtocol::Http1,
    };
    let name = required(d, &f, "name").and_then(|(n, p)| d.string(n, &p));
    let lb = match f.get("lb") {
        Some((n, p)) => d
            .choice(n, &p, &["p2c-ewma", "round-robin", "random"])
            .map(|v| match v {
                "round-robin" => LbPolicy::RoundRobin,
                "random" => LbPolicy::Random,
                _ => LbPolicy::P2cEwma,
            }),
        None => Some(LbPolicy::P2cEwma),
    };
    let connect_timeout = match f.get("connect_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(ringmesh_core::snapshot::defaults::CONNECT_TIMEOUT),
    };
    let pool_idle_timeout = match f.get("pool_idle_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(ringmesh_core::snapshot::defaults::POOL_IDLE_TIMEOUT),
    };
    let endpoints = match f.get("endpoints") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| decode_endpoint(d, n, &p))
            .collect(),
        None => Vec::new(),
    };
    let addresses = match f.get("addresses") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| service_address(d, n, &p))
            .collect(),
        None => Vec::new(),
    };
    let limits = f
        .get("limits")
        .map_or_else(LimitsConfig::default, |(n, p)| decode_limits(d, n, &p));
    let outlier = match f.get("outlier") {
        Some((n, p)) => decode_outlier(d, n, &p),
        None => Some(OutlierSettings::default()),
    };
    let health_check = f
        .get("health_check")
        .and_then(|(n, p)| decode_health_check(d, n, &p));
    Some(ClusterConfig {
        name: name.unwrap_or_default(),
        lb: lb.unwrap_or(LbPolicy::P2cEwma),
        connect_timeout: connect_timeout.unwrap_or_default(),
        pool_idle_timeout: pool_idle_timeout.unwrap_or_default(),
        limits,
        outlier,
        health_check,
        addresses,
        endpoints,
        tls,
        protocol,
        request_headers,
        response_headers,
    })
}

/// One of a cluster's `addresses`: an IP and a port an application can connect to.
fn service_address(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<SocketAddr> {
    let a = d.socket_addr(node, path)?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        d.error(
            path,
            Some(node),
            format!("{a} is not an address an application can connect to"),
        );
        return None;
    }
    Some(a)
}

/// `tls: { sni, ca, cert, key }` on a cluster; `cert` and `key` go together.
pub(super) fn decode_cluster_tls(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<ClusterTlsConfig> {
    let f = d.mapping(node, path, &["sni", "ca", "cert", "key"])?;
    let sni = required(d, &f, "sni").and_then(|(n, p)| d.string(n, &p));
    let ca = required(d, &f, "ca").and_then(|(n, p)| d.string(n, &p));
    let cert = f.get("cert").and_then(|(n, p)| d.string(n, &p));
    let key = f.get("key").and_then(|(n, p)| d.string(n, &p));
    match (&cert, &key, f.get("cert"), f.get("key")) {
        (Some(_), None, _, None) => d.error(&f.path_of("key"), None, "required with `cert`"),
        (None, Some(_), None, _) => d.error(&f.path_of("cert"), None, "required with `key`"),
        _ => {}
    }
    Some(ClusterTlsConfig {
        sni: sni?,
        ca: ca?,
        cert,
        key,
    })
}

/// A zone name: 1 to 128 printable characters (the one rule for endpoints and nodes).
pub fn valid_zone(z: &str) -> bool {
    !z.is_empty() && z.len() <= 128 && !z.contains(char::is_control)
}

pub(super) fn decode_endpoint(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<EndpointConfig> {
    let f = d.mapping(node, path, &["addr", "zone", "priority", "weight"])?;
    let addr = required(d, &f, "addr").and_then(|(n, p)| {
        let a = d.socket_addr(n, &p)?;
        // 0.0.0.0 and :: reach this host itself; a port 0 reaches nothing.
        let ip = a.ip();
        if a.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
            d.error(
                &p,
                Some(n),
                format!(
                    "`{a}` is no endpoint address (an unspecified or multicast address, or port 0)"
                ),
            );
            return None;
        }
        Some(a)
    });
    let zone = f.get("zone").and_then(|(n, p)| {
        let z = d.string(n, &p)?;
        if !valid_zone(&z) {
            d.error(&p, Some(n), "a zone is 1 to 128 printable characters");
            return None;
        }
        Some(z)
    });
    let priority = match f.get("priority") {
        Some((n, p)) => d.integer(n, &p, 1000).map(|v| v as u32),
        None => Some(0),
    };
    let weight = match f.get("weight") {
        Some((n, p)) => d.integer(n, &p, 10_000).filter(|&w| {
            if w == 0 {
                d.error(&p, Some(n), "must be at least 1");
            }
            w > 0
        }),
        None => Some(1),
    };
    Some(EndpointConfig {
        addr: addr.unwrap_or(PLACEHOLDER_ADDR),
        zone,
        priority: priority.unwrap_or_default(),
        weight: weight.unwrap_or(1) as u32,
    })
}

/// Checks one endpoint (`{ addr, zone, priority, weight }`) exactly as a cluster's endpoints
/// are checked; error paths are relative to the endpoint. The control plane checks
/// registrations with it, so that it takes none a proxy would refuse.
pub fn check_endpoint(v: &serde_json::Value) -> Result<EndpointConfig, Vec<ConfigError>> {
    let probe = serde_json::json!({
        "listeners": [],
        "clusters": [ { "name": "probe", "endpoints": [ v ] } ],
    });
    match Config::parse(&probe.to_string()) {
        Ok(c) => c
            .clusters
            .into_iter()
            .next()
            .and_then(|c| c.endpoints.into_iter().next())
            .ok_or_else(|| {
                vec![ConfigError {
                    path: String::new(),
                    line: None,
                    message: "expected an endpoint".into(),
                }]
            }),
        Err(errs) => Err(errs
            .into_iter()
            .map(|mut e| {
                e.path = e
                    .path
                    .strip_prefix("clusters[0].endpoints[0]")
                    .map(|p| p.trim_start_matches('.').to_string())
                    .unwrap_or(e.path);
                e.line = None;
                e
            })
            .collect()),
    }
}

pub(super) fn decode_limits(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> LimitsConfig {
    let Some(f) = d.mapping(
        node,
        path,
        &[
            "max_connections",
            "max_pending",
            "max_requests",
            "max_endpoint_connections",
            "max_endpoint_connecting",
        ],
    ) else {
        return LimitsConfig::default();
    };
    let mut limit = |name: &str| {
        let (n, p) = f.get(name)?;
        let v = d.integer(n, &p, u64::from(u32::MAX))?;
        if v == 0 {
            d.error(&p, Some(n), "must be at least 1");
            return None;
        }
        Some(v as u32)
    };
    LimitsConfig {
        max_connections: limit("max_connections"),
        max_pending: limit("max_pending"),
        max_requests: limit("max_requests"),
        max_endpoint_connections: limit("max_endpoint_connections"),
        max_endpoint_connecting: limit("max_endpoint_connecting"),
    }
}

pub(super) fn decode_outlier(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<OutlierSettings> {
    if node.is_off() {
        return None;
    }
    let mut o = OutlierSettings::default();
    let f = d.mapping(
        node,
        path,
        &[
            "consecutive_failures",
            "base_ejection",
            "max_ejection",
            "max_ejected",
        ],
    )?;
    if let Some((n, p)) = f.get("consecutive_failures") {
        match d.integer(n, &p, 1000) {
            Some(0) => d.error(&p, Some(n), "must be at least 1 (use `outlier: off`)"),
            Some(v) => o.consecutive_failures = v as u32,
            None => {}
        }
    }
    if let Some(v) = f
        .get("base_ejection")
        .and_then(|(n, p)| d.positive_duration(n, &p))
    {
        o.base_ejection = v;
    }
    if let Some(v) = f
        .get("max_ejection")
        .and_then(|(n, p)| d.positive_duration(n, &p))
    {
        o.max_ejection = v;
    }
    if let Some(v) = f.get("max_ejected").and_then(|(n, p)| d.percent(n, &p)) {
        o.max_ejected_percent = v;
    }
    if o.max_ejection < o.base_ejection {
        d.error(
            &f.path_of("max_ejection"),
            None,
            "must not be shorter than base_ejection",
        );
    }
    Some(o)
}

pub(super) fn decode_health_check(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<HealthCheckConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "path",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
        ],
    )?;
    let check_path = required(d, &f, "path").and_then(|(n, p)| {
        let s = d.string(n, &p)?;
        let ok = s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            d.error(&p, Some(n), "must start with / and contain no spaces");
        }
        ok.then_some(s)
    });
    let duration = |d: &mut Decoder, name: &str, default: Duration| match f.get(name) {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(default),
    };
    let interval = duration(d, "interval", Duration::from_secs(5));
    let timeout = duration(d, "timeout", Duration::from_secs(1));
    let threshold = |d: &mut Decoder, name: &str, default: u32| match f.get(name) {
        Some((n, p)) => match d.integer(n, &p, 100) {
            Some(0) => {
                d.error(&p, Some(n), "must be at least 1");
                None
            }
            v => v.map(|v| v as u32),
        },
        None => Some(default),
    };
    let healthy = threshold(d, "healthy_threshold", 2);
    let unhealthy = threshold(d, "unhealthy_threshold", 3);
    Some(HealthCheckConfig {
        path: check_path?,
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: healthy?,
        unhealthy_threshold: unhealthy?,
    })
}
