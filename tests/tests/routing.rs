//! Routing over real sockets: host (exact, wildcard), path (exact, prefix), method and header
//! matches, first match wins, weighted splits, 404 for no match, and balancing policies.

use std::collections::HashMap;
use std::net::SocketAddr;

use ringmesh_tests::*;

fn tagged(tag: &'static str) -> Upstream {
    Upstream::http(move |_| Resp::new(200, tag))
}

fn config(routes: &str, clusters: &[(&str, SocketAddr)]) -> String {
    let mut y = format!(
        "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n{routes}clusters:\n"
    );
    for (name, addr) in clusters {
        y.push_str(&format!(
            "  - {{ name: {name}, endpoints: [ {{ addr: {addr} }} ] }}\n"
        ));
    }
    y
}

fn hit(c: &mut Client, raw: &str) -> (u16, String) {
    c.send(raw.as_bytes());
    let r = c.response(false);
    (r.status, r.text())
}

#[test]
fn matches_in_order() {
    let ups: Vec<_> = ["exact", "wild", "method", "header", "path", "fallback"]
        .into_iter()
        .map(tagged)
        .collect();
    let routes = concat!(
        "      - { name: exact, match: { host: api.example.com, path_prefix: /v1/ }, cluster: exact }\n",
        "      - { name: wild, match: { host: '*.example.com' }, cluster: wild }\n",
        "      - { name: method, match: { method: DELETE }, cluster: method }\n",
        "      - { name: header, match: { headers: { x-canary: \"1\" } }, cluster: header }\n",
        "      - { name: path, match: { path: /exact }, cluster: path }\n",
        "      - { name: fallback, match: { path_prefix: /static/ }, cluster: fallback }\n",
    );
    let names = ["exact", "wild", "method", "header", "path", "fallback"];
    let clusters: Vec<_> = names.iter().zip(&ups).map(|(n, u)| (*n, u.addr)).collect();
    let p = TestProxy::start(&config(routes, &clusters), 1);
    let mut c = Client::connect(p.edge());
    let get = |host: &str, path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(hit(&mut c, &get("api.example.com", "/v1/users")).1, "exact");
    assert_eq!(
        hit(&mut c, &get("API.EXAMPLE.COM:8443", "/v1/users")).1,
        "exact",
        "host: no case, no port"
    );
    assert_eq!(hit(&mut c, &get("api.example.com", "/v2")).1, "wild");
    assert_eq!(hit(&mut c, &get("a.b.example.com", "/")).1, "wild");
    assert_eq!(
        hit(&mut c, "DELETE /x HTTP/1.1\r\nHost: example.com\r\n\r\n").1,
        "method"
    );
    assert_eq!(
        hit(
            &mut c,
            "GET /x HTTP/1.1\r\nHost: other\r\nX-Canary: 1\r\n\r\n"
        )
        .1,
        "header"
    );
    assert_eq!(hit(&mut c, &get("other", "/exact")).1, "path");
    assert_eq!(
        hit(&mut c, &get("other", "/exact?query=1")).1,
        "path",
        "the query is not part of the path"
    );
    assert_eq!(hit(&mut c, &get("other", "/static/a.css")).1, "fallback");
    let (status, body) = hit(&mut c, &get("other", "/exact/"));
    assert_eq!((status, body.as_str()), (404, "no-route\n"));
    let (status, _) = hit(&mut c, &get("example.com", "/nothing"));
    assert_eq!(
        status, 404,
        "`*.example.com` does not match example.com itself"
    );
    assert_eq!(
        hit(&mut c, &get("other", "/exact")).1,
        "path",
        "a 404 leaves the connection usable"
    );
}

#[test]
fn weighted_split_follows_weights() {
    let a = tagged("a");
    let b = tagged("b");
    let routes = "      - match: { path_prefix: / }\n        split: [ { cluster: a, weight: 1 }, { cluster: b, weight: 3 } ]\n";
    let p = TestProxy::start(&config(routes, &[("a", a.addr), ("b", b.addr)]), 2);
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut c = Client::connect(p.edge());
    for _ in 0..4000 {
        *counts.entry(c.get("/").text()).or_default() += 1;
    }
    let share_a = f64::from(counts["a"]) / 4000.0;
    assert!((0.22..0.28).contains(&share_a), "{counts:?}");
    let m = p.admin("/metrics").text();
    let total_a = metric_value(
        &m,
        "ringmesh_requests_total{listener=\"edge\",route=\"0\",cluster=\"a\",code=\"200\"}",
    );
    assert_eq!(total_a, Some(f64::from(counts["a"])));
}

fn lb_config(lb: &str, ups: &[&Upstream]) -> String {
    let eps: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ addr: {} }}", u.addr))
        .collect();
    format!(
        "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: c }} ]\nclusters:\n  - {{ name: c, lb: {lb}, endpoints: [ {} ] }}\n",
        eps.join(", ")
    )
}

#[test]
fn round_robin_and_random_spread_requests() {
    for lb in ["round-robin", "random"] {
        let ups: Vec<_> = (0..3)
            .map(|i| Upstream::http(move |_| Resp::new(200, i.to_string())))
            .collect();
        let p = TestProxy::start(&lb_config(lb, &ups.iter().collect::<Vec<_>>()), 1);
        let mut c = Client::connect(p.edge());
        let mut counts = [0u32; 3];
        for _ in 0..600 {
            let i: usize = c.get("/").text().parse().unwrap();
            counts[i] += 1;
        }
        if lb == "round-robin" {
            assert_eq!(counts, [200, 200, 200], "{lb}");
        } else {
            assert!(counts.iter().all(|&n| n > 140), "{lb}: {counts:?}");
        }
    }
}

#[test]
fn p2c_ewma_prefers_the_faster_endpoint() {
    let fast = Upstream::http(|_| Resp::new(200, "fast"));
    let slow = Upstream::http(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        Resp::new(200, "slow")
    });
    let p = TestProxy::start(&lb_config("p2c-ewma", &[&fast, &slow]), 1);
    let mut c = Client::connect(p.edge());
    let slow_hits = (0..300).filter(|_| c.get("/").text() == "slow").count();
    assert!(slow_hits < 15, "slow endpoint took {slow_hits} of 300");
}

#[test]
fn routes_are_resolved_per_request_on_one_connection() {
    let a = tagged("a");
    let b = tagged("b");
    let routes = "      - { match: { path_prefix: /a }, cluster: a }\n      - { match: { path_prefix: /b }, cluster: b }\n";
    let p = TestProxy::start(&config(routes, &[("a", a.addr), ("b", b.addr)]), 1);
    let mut c = Client::connect(p.edge());
    for _ in 0..5 {
        assert_eq!(c.get("/a").text(), "a");
        assert_eq!(c.get("/b").text(), "b");
    }
}
