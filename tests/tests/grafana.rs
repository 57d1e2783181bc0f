//! The Grafana dashboards of `dashboards/` query only metrics that exist: every name in every
//! query is one that a running proxy (static, sidecar, fed by a control plane) or a running
//! control plane exposes, so a rename breaks this test, not an operator's dashboard. That
//! Prometheus accepts every query is checked in tests/tests/dashboard.rs, with real Prometheus.

use std::collections::BTreeSet;

use ringmesh_tests::grafana::{exposed, metric_names, queries};
use ringmesh_tests::mesh::{At, fed, node, plane, source};
use ringmesh_tests::*;

/// Names in `dashboard`'s queries that `have` lacks, with the query each is in.
fn missing(dashboard: &str, have: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for q in queries(dashboard) {
        for name in metric_names(&q) {
            if !have.contains(&name) {
                out.push(format!("{name} (in `{q}`)"));
            }
        }
    }
    out
}

#[test]
fn the_dashboards_query_only_metrics_that_exist() {
    // A static proxy with a sidecar's outbound listener (ringmesh_accelerated is a sidecar's).
    let up = Upstream::fixed("ok");
    let config = format!(
        "admin: 127.0.0.1:0\n\
         listeners:\n\
         \x20 - {{ name: edge, bind: 127.0.0.1:0, routes: [ {{ name: web, match: {{ path_prefix: / }}, cluster: up }} ] }}\n\
         \x20 - {{ name: outbound, bind: 127.0.0.1:0, outbound: {{}}, routes: [] }}\n\
         clusters:\n  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}\n",
        up.addr
    );
    let p = TestProxy::start(&config, 1);
    let mut proxy = exposed(&p.admin("/metrics").text());
    // A proxy fed by a control plane adds the control plane's staleness (the contact age once
    // it has answered).
    let mesh = format!(
        "clusters:\n  - {{ name: web, endpoints: [ {{ addr: 127.0.0.1:9 }} ] }}\nnodes:\n{}",
        node(
            "edge-1",
            "    listeners:\n      - { name: edge, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] }\n"
        )
    );
    let cp = plane(&mesh);
    let at = At::of(&cp);
    let node = fed(source(std::slice::from_ref(&at), "edge-1", None));
    let admin = node.admin_addr();
    let mut fed_text = String::new();
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            let mut c = Client::connect(admin);
            c.send(
                format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            fed_text = c.response(false).text();
            fed_text.contains("ringmesh_control_contact_age_seconds")
        }),
        "the fed proxy never showed its control plane's metrics"
    );
    proxy.extend(exposed(&fed_text));
    let control = exposed(&at.text("/metrics"));
    assert!(
        proxy.contains("ringmesh_requests_total") && control.contains("ringmesh_control_version")
    );

    let gone = missing("ringmesh-proxy.json", &proxy);
    assert!(
        gone.is_empty(),
        "the proxy dashboard reads metrics no proxy exposes: {gone:#?}"
    );
    let gone = missing("ringmesh-control.json", &control);
    assert!(
        gone.is_empty(),
        "the control-plane dashboard reads metrics it does not expose: {gone:#?}"
    );
    // The check can fail: a renamed metric is caught.
    let renamed = queries("ringmesh-proxy.json")
        .join("\n")
        .replace("ringmesh_requests_total", "ringmesh_request_total");
    assert!(metric_names(&renamed).iter().any(|n| !proxy.contains(n)));
    // Each dashboard covers what it promises.
    let read: BTreeSet<String> = queries("ringmesh-proxy.json")
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    for family in [
        "ringmesh_requests_total",
        "ringmesh_request_duration_seconds_bucket",
        "ringmesh_upstream_rq_total",
        "ringmesh_retries_total",
        "ringmesh_retry_budget_exhausted_total",
        "ringmesh_outlier_ejections_total",
        "ringmesh_tls_handshakes_total",
        "ringmesh_config_reloads_total",
        "ringmesh_control_contact_age_seconds",
    ] {
        assert!(read.contains(family), "the proxy dashboard has no {family}");
    }
}
