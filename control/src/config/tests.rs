//! Decoding and checking config files: what is taken, and every error with its path.

use std::time::Duration;

use super::*;

fn errors(src: &str) -> Vec<String> {
    Config::parse(src)
        .expect_err("must be invalid")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
    assert_eq!(c.admin.to_string(), "127.0.0.1:9901");
    assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:8080");
    assert_eq!(
        c.clusters[0].endpoints[0].addr.to_string(),
        "127.0.0.1:8081"
    );
    assert_eq!(c.listeners[0].routes[0].name, "0");
}

#[test]
fn full_example_parses() {
    let c = Config::parse(
        r#"
admin: 127.0.0.1:9901
workers: 2
listeners:
  - name: edge
    bind: 127.0.0.1:8080
    protocol: http
    max_request_body_bytes: 10MiB
    routes:
      - match: { host: api.example, path_prefix: /v1/, method: GET, headers: { x-canary: "1" } }
        split:
          - { cluster: api-v2, weight: 10 }
          - { cluster: api-v1, weight: 90 }
        timeout: 5s
      - match: { path_prefix: / }
        cluster: api-v1
  - name: db
    bind: 127.0.0.1:15432
    protocol: tcp
    cluster: api-v1
clusters:
  - name: api-v1
    lb: round-robin
    connect_timeout: 250ms
    endpoints:
      - { addr: 127.0.0.1:8081, zone: dc1 }
      - { addr: 127.0.0.1:9081, zone: dc2, priority: 1, weight: 3 }
  - name: api-v2
    endpoints: []
"#,
    )
    .unwrap();
    assert_eq!(c.workers, Some(2));
    let r = &c.listeners[0].routes[0];
    assert_eq!(r.split.len(), 2);
    assert_eq!(r.timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        r.matcher.headers.get("x-canary").map(String::as_str),
        Some("1")
    );
    assert_eq!(c.listeners[0].max_request_body_bytes, Some(10 << 20));
    assert_eq!(c.listeners[1].protocol, ListenerProtocol::Tcp);
    assert_eq!(c.clusters[0].lb, LbPolicy::RoundRobin);
    let json = c.to_json();
    assert_eq!(json["listeners"][0]["routes"][0]["timeout"], "5s");
    assert_eq!(json["clusters"][0]["connect_timeout"], "250ms");
}

#[test]
fn every_error_names_its_field() {
    let e = errors(
        r#"
admin: nowhere
listners: []
listeners:
  - name: a
    bind: 127.0.0.1:80
    routes:
      - match: { path_prefix: v1, hots: x }
        cluster: missing
        timeout: 5
      - match: { path: /x }
        split: [ { cluster: web, weight: 0 } ]
  - name: a
    bind: 127.0.0.1:80
    routes: []
clusters:
  - name: web
    lb: fastest
    endpoints:
      - { addr: "1.2.3.4" }
      - { addr: 127.0.0.1:1, weight: 0 }
"#,
    );
    let joined = e.join("\n");
    for want in [
        "admin: `nowhere` is not an address",
        "listners: unknown field `listners` (did you mean `listeners`?)",
        "listeners[0].routes[0].match.path_prefix: must start with /",
        "listeners[0].routes[0].match.hots: unknown field",
        "listeners[0].routes[0].timeout: expected a string, got an integer",
        "listeners[0].routes[1].split: needs at least one target with a positive weight",
        "clusters[0].lb: `fastest` is not one of",
        "clusters[0].endpoints[0].addr: `1.2.3.4` is not an address",
        "clusters[0].endpoints[1].weight: must be at least 1",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert!(e.iter().all(|l| l.contains("(line ")), "{joined}");
}

#[test]
fn cross_field_errors() {
    let e = errors(
        r#"
listeners:
  - { name: a, bind: 127.0.0.1:80, routes: [ { match: { path: /x }, cluster: missing } ] }
  - { name: a, bind: 127.0.0.1:80, protocol: tcp, cluster: nope }
clusters:
  - { name: web }
  - { name: web }
"#,
    )
    .join("\n");
    for want in [
        "listeners[0].routes[0].cluster: no cluster named `missing`",
        "listeners[1].name: duplicate listener name `a`",
        "listeners[1].bind: 127.0.0.1:80 is used by another listener",
        "listeners[1].cluster: no cluster named `nope`",
        "clusters[1].name: duplicate cluster name `web`",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn sni_routes_are_checked() {
    let e = errors(
            r#"
listeners:
  - name: t
    bind: 127.0.0.1:1
    protocol: tcp
    sni:
      - { names: [a.example, "*.b.example"], cluster: c }
      - { names: [A.example, "x..y"], cluster: missing }
      - { names: [], cluster: c }
  - { name: h, bind: 127.0.0.1:2, sni: [ { names: [a], cluster: c } ], routes: [ { match: { path: / }, cluster: c } ] }
  - { name: n, bind: 127.0.0.1:3, protocol: tcp }
clusters: [ { name: c } ]
"#,
        )
        .join("
");
    for want in [
        "listeners[0].sni[1].names: `A.example` is routed by an earlier entry",
        "listeners[0].sni[1].names[1]: expected a DNS name",
        "listeners[0].sni[1].cluster: no cluster named `missing`",
        "listeners[0].sni[2].names: at least one name is required",
        "listeners[1].sni: only tcp listeners route by server name",
        "listeners[2].cluster: required for a tcp listener (or `sni`)",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn tls_settings_are_checked() {
    let e = errors(
            "listeners:\n  - { name: a, bind: 127.0.0.1:1, tls: { certs: [] }, routes: [ { match: { path: / }, cluster: c } ] }\nclusters: [ { name: c, tls: { cert: c.pem } } ]\n",
        )
        .join("\n");
    for want in [
        "listeners[0].tls.certs: at least one certificate",
        "clusters[0].tls.sni: required",
        "clusters[0].tls.ca: required",
        "clusters[0].tls.key: required with `cert`",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
}

#[test]
fn resilience_settings_parse_with_defaults() {
    let c = Config::parse(
        r#"
listeners:
  - name: a
    bind: 127.0.0.1:1
    routes:
      - match: { path_prefix: / }
        cluster: web
        retry: { attempts: 2, per_try_timeout: 1s, on: [connect-failure, reset, 503], budget: 20% }
      - match: { path_prefix: /b }
        cluster: web
        retry: {}
clusters:
  - name: web
    limits: { max_connections: 1024, max_pending: 10, max_requests: 4096, max_endpoint_connections: 100, max_endpoint_connecting: 8 }
    outlier: { consecutive_failures: 3, base_ejection: 5s, max_ejected: 30% }
    health_check: { path: /healthz, interval: 2s, timeout: 1s }
  - name: plain
    outlier: off
"#,
    )
    .unwrap();
    let r = c.listeners[0].routes[0].retry.as_ref().unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(r.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(r.on, ["connect-failure", "reset", "503"]);
    assert_eq!((r.budget_percent, r.min_retries_per_second), (20, 10));
    let d = c.listeners[0].routes[1].retry.as_ref().unwrap();
    assert_eq!((d.attempts, d.on.len()), (1, DEFAULT_RETRY_ON.len()));
    let web = &c.clusters[0];
    assert_eq!(web.limits.max_pending, Some(10));
    assert_eq!(
        (
            web.limits.max_endpoint_connections,
            web.limits.max_endpoint_connecting
        ),
        (Some(100), Some(8))
    );
    let o = web.outlier.as_ref().unwrap();
    assert_eq!((o.consecutive_failures, o.max_ejected_percent), (3, 30));
    assert_eq!(o.max_ejection, Duration::from_secs(300));
    let h = web.health_check.as_ref().unwrap();
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
    assert_eq!(c.clusters[1].outlier, None);
    assert_eq!(c.clusters[1].limits, LimitsConfig::default());
    // Outlier ejection is on unless switched off.
    let json = c.to_json();
    assert_eq!(json["clusters"][0]["outlier"]["base_ejection"], "5s");
}

#[test]
fn resilience_errors_name_their_field() {
    let e = errors(
        r#"
listeners:
  - name: a
    bind: 127.0.0.1:1
    routes:
      - match: { path_prefix: / }
        cluster: web
        retry: { attempts: 20, on: [sometimes, 5xx, 700], budget: 120%, per_try_timeout: 0s }
clusters:
  - name: web
    limits: { max_connections: 0, max_inflight: 3 }
    outlier: { consecutive_failures: 0, base_ejection: 10s, max_ejection: 1s }
    health_check: { interval: 1s, healthy_threshold: 0 }
"#,
    )
    .join("\n");
    for want in [
        "listeners[0].routes[0].retry.attempts: 20 is out of range",
        "listeners[0].routes[0].retry.on[0]: `sometimes` is not connect-failure",
        "listeners[0].routes[0].retry.on[2]: `700` is not",
        "listeners[0].routes[0].retry.budget: expected a percentage",
        "listeners[0].routes[0].retry.per_try_timeout: must be greater than zero",
        "clusters[0].limits.max_connections: must be at least 1",
        "clusters[0].limits.max_inflight: unknown field",
        "clusters[0].outlier.consecutive_failures: must be at least 1",
        "clusters[0].outlier.max_ejection: must not be shorter than base_ejection",
        "clusters[0].health_check.path: required",
        "clusters[0].health_check.healthy_threshold: must be at least 1",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn syntax_errors_have_a_line() {
    let e = errors("listeners:\n  - name: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("invalid YAML"), "{e:?}");
    assert!(e[0].contains("line"), "{e:?}");
    assert!(errors("").iter().any(|l| l.contains("empty")));
    let dup = errors("admin: 127.0.0.1:1\nadmin: 127.0.0.1:2\nlisteners: []\n");
    assert!(dup[0].contains("invalid YAML"), "{dup:?}");
}

#[test]
fn outbound_listeners_parse_with_defaults() {
    let c = Config::parse(
        r#"
listeners:
  - name: out
    bind: 127.0.0.1:15001
    outbound: { opaque_ports: [5432], unknown_destinations: refuse }
    routes: [ { name: slow-back, match: { service: back, path_prefix: /slow }, cluster: back, timeout: 30s } ]
clusters:
  - { name: back, addresses: [ "10.96.0.10:80", "[fd00::10]:80" ], endpoints: [ { addr: "10.0.0.1:8080" } ] }
"#,
    )
    .unwrap();
    let o = c.listeners[0].outbound.as_ref().unwrap();
    assert_eq!(o.detect_timeout, Duration::from_millis(100));
    assert_eq!(o.opaque_ports, [5432]);
    assert!(!o.passthrough);
    assert_eq!(
        c.listeners[0].routes[0].matcher.service.as_deref(),
        Some("back")
    );
    assert_eq!(c.clusters[0].addresses.len(), 2);
}

#[test]
fn outbound_errors_name_their_field() {
    let e = errors(
        r#"
listeners:
  - { name: t, bind: 127.0.0.1:1, protocol: tcp, cluster: a, outbound: {} }
  - name: o
    bind: 127.0.0.1:2
    outbound: { detect_timeout: 1m, opaque_ports: [0], unknown_destinations: drop }
    routes: [ { match: { service: nope }, cluster: a } ]
  - { name: h, bind: 127.0.0.1:3, routes: [ { match: { service: a }, cluster: a } ] }
clusters:
  - { name: a, addresses: [ "10.96.0.1:80", "0.0.0.0:80" ] }
  - { name: b, addresses: [ "10.96.0.1:80" ] }
"#,
    )
    .join("\n");
    for want in [
        "listeners[0].outbound: an outbound listener is an http listener",
        "listeners[1].outbound.detect_timeout: at most 10s",
        "listeners[1].outbound.opaque_ports[0]: a port is 1 to 65535",
        "listeners[1].outbound.unknown_destinations:",
        "listeners[1].routes[0].match.service: no cluster named `nope`",
        "listeners[2].routes[0].match.service: only a sidecar's outbound or inbound listener knows",
        "clusters[0].addresses[1]: 0.0.0.0:80 is not an address an application can connect to",
        "clusters[1].addresses[0]: 10.96.0.1:80 is already the address of cluster `a`",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn inbound_listeners_parse_and_their_errors_name_the_field() {
    let c = Config::parse(
        r#"
listeners:
  - name: in
    bind: 0.0.0.0:15006
    tls: { certs: [ { cert: c.pem, key: c.key } ], client_ca: ca.pem }
    inbound:
      mtls: permissive
      ports: [ { port: 8080, cluster: app, mtls: strict }, { port: 9090, cluster: app }, { port: 25, cluster: app, opaque: true } ]
    routes: []
clusters:
  - { name: app, endpoints: [ { addr: "127.0.0.1:8080" } ] }
"#,
    )
    .unwrap();
    let b = c.listeners[0].inbound.as_ref().unwrap();
    let modes: Vec<(u16, bool, bool)> = b
        .ports
        .iter()
        .map(|p| (p.port, p.permissive, p.opaque))
        .collect();
    assert_eq!(
        modes,
        [(8080, false, false), (9090, true, false), (25, true, true)]
    );

    let e = errors(
        r#"
listeners:
  - { name: a, bind: 127.0.0.1:1, inbound: { ports: [ { port: 80, cluster: app } ] }, routes: [] }
  - name: b
    bind: 127.0.0.1:2
    tls: { certs: [ { cert: c.pem, key: c.key } ], client_ca: ca.pem }
    outbound: {}
    inbound: { mtls: loose, ports: [ { port: 0, cluster: app }, { port: 81, cluster: nope }, { port: 81, cluster: app } ] }
    routes: []
clusters:
  - { name: app }
"#,
    )
    .join("\n");
    for want in [
        "listeners[0].inbound: an inbound listener takes the mesh's mTLS off: it needs `tls` with `client_ca`",
        "listeners[1].inbound: a listener is inbound or outbound, not both",
        "listeners[1].inbound.mtls:",
        "listeners[1].inbound.ports[0].port: a port is 1 to 65535",
        "listeners[1].inbound.ports[2].port: port 81 is listed twice",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let e = errors(
        r#"
listeners:
  - name: in
    bind: 127.0.0.1:2
    tls: { certs: [ { cert: c.pem, key: c.key } ], client_ca: ca.pem }
    inbound: { ports: [ { port: 80, cluster: app }, { port: 81, cluster: nope } ] }
    routes: []
clusters:
  - { name: app }
"#,
    )
    .join("\n");
    assert!(
        e.contains("listeners[0].inbound.ports[1].cluster: no cluster named `nope`"),
        "{e}"
    );
}

#[test]
fn zone_settings_are_checked() {
    let c = Config::parse(
        "zone: { name: eu-west-1a, callers: me }\nlisteners: [ { name: e, bind: 127.0.0.1:1, routes: [] } ]\nclusters: [ { name: me } ]\n",
    )
    .unwrap();
    let z = c.zone.unwrap();
    assert_eq!((z.name.as_str(), z.min_cluster_size), ("eu-west-1a", 6));
    let e = errors(
        "zone: { name: \"\", callers: nobody, min_cluster_size: -1 }\nlisteners: [ { name: e, bind: 127.0.0.1:1, routes: [] } ]\n",
    )
    .join("\n");
    assert!(
        e.contains("zone.name: a zone is 1 to 128 printable characters"),
        "{e}"
    );
    assert!(e.contains("zone.min_cluster_size:"), "{e}");
    let e = errors(
        "zone: { name: a, callers: nobody }\nlisteners: [ { name: e, bind: 127.0.0.1:1, routes: [] } ]\n",
    )
    .join("\n");
    assert!(e.contains("zone.callers: no cluster named `nobody`"), "{e}");
}
