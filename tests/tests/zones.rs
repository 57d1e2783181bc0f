//! Zone-aware routing over real sockets: a proxy in zone `a`, whose own service runs one
//! instance in each of zones `a` and `b`, calls a cluster with three endpoints in each zone.
//! Traffic stays in its zone while the zone is healthy, and spills to the other zone in
//! proportion when it is not (Envoy's arithmetic, unit-tested in core/src/zone.rs).

use std::time::Duration;

use ringmesh_tests::{Backend, Client, Mode, TestProxy, eventually};

fn config(backends: &[&Backend]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let zone = if i < 3 { "a" } else { "b" };
            format!("{{ addr: \"{}\", zone: {zone} }}", b.addr)
        })
        .collect();
    format!(
        r#"
zone: {{ name: a, callers: self, min_cluster_size: 2 }}
listeners:
  - {{ name: edge, bind: 127.0.0.1:0, routes: [ {{ match: {{ path_prefix: / }}, cluster: back }} ] }}
clusters:
  - name: back
    lb: round-robin
    health_check: {{ path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2 }}
    endpoints: [ {} ]
  - {{ name: self, endpoints: [ {{ addr: "127.0.0.1:1", zone: a }}, {{ addr: "127.0.0.1:2", zone: b }} ] }}
"#,
        eps.join(", ")
    )
}

/// Requests answered by zone `a`'s backends and by zone `b`'s, out of `n`.
fn by_zone(p: &TestProxy, n: usize) -> (usize, usize) {
    let mut c = Client::connect(p.edge());
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        match c.get("/").text().as_str() {
            "a0" | "a1" | "a2" => a += 1,
            _ => b += 1,
        }
    }
    (a, b)
}

fn zone_shares(p: &TestProxy) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(&p.admin("/clusters").text()).expect("json");
    body["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == "back")
        .expect("back")["zone_shares_percent"]
        .clone()
}

#[test]
fn traffic_stays_in_its_zone_and_spills_in_proportion() {
    let backends: Vec<Backend> = ["a0", "a1", "a2", "b0", "b1", "b2"]
        .iter()
        .map(|t| Backend::start(t))
        .collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    let p = TestProxy::start(&config(&refs), 1);
    assert!(eventually(Duration::from_secs(3), || backends
        .iter()
        .all(|b| b.checks() >= 2)));

    // Healthy: zone a has half the endpoints and half the callers, so it keeps everything.
    let (a, b) = by_zone(&p, 300);
    assert_eq!((a, b), (300, 0));
    assert_eq!(zone_shares(&p), serde_json::json!({ "a": 100.0, "b": 0.0 }));

    // One of zone a's three endpoints fails its checks: zone a has 2 of 5 healthy endpoints
    // (40%) for half the callers (50%), so it keeps 40/50 = 80% and spills 20% to zone b.
    backends[0].set(Mode::Fail);
    assert!(
        eventually(Duration::from_secs(5), || zone_shares(&p)
            == serde_json::json!({ "a": 80.0, "b": 20.0 })),
        "{}",
        zone_shares(&p)
    );
    let before = backends[0].hits();
    let (a, b) = by_zone(&p, 2000);
    assert!(
        (1500..1700).contains(&a) && (300..500).contains(&b),
        "{a} {b}"
    );
    assert_eq!(
        backends[0].hits(),
        before,
        "the failed endpoint takes no request"
    );

    // Back to health: everything stays local again.
    backends[0].set(Mode::Up);
    assert!(eventually(Duration::from_secs(5), || zone_shares(&p)
        == serde_json::json!({ "a": 100.0, "b": 0.0 })));
    assert_eq!(by_zone(&p, 300), (300, 0));
}
