//! `ringmesh ctl` against a real control plane and a proxy it feeds: `status`, `check`,
//! `clusters`, `endpoints` and `split`, as text and as JSON, with the exit codes scripts rely
//! on; and what a caller without the right credentials gets.

use std::process::Output;
use std::time::Duration;

use ringmesh_tests::mesh::{ADMIN_TOKEN, At, ctl, fed, node, plane, source, text};
use ringmesh_tests::*;
use serde_json::Value;

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn operators_see_and_change_the_mesh_with_ctl() {
    let up = Upstream::fixed("v1");
    let mesh = format!(
        "clusters:\n  - {{ name: web, endpoints: [ {{ addr: \"{}\" }} ] }}\n  - {{ name: web-v2, endpoints: [ {{ addr: \"{}\" }} ] }}\nnodes:\n{}{}",
        up.addr,
        up.addr,
        node(
            "edge-1",
            "    listeners:\n      - name: edge\n        bind: 127.0.0.1:0\n        routes: [ { name: web, match: { path_prefix: / }, cluster: web } ]\n"
        ),
        node(
            "edge-2",
            "    listeners:\n      - { name: edge, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] }\n"
        ),
    );
    let cp = plane(&mesh);
    let at = At::of(&cp);
    let server = at.addr.to_string();
    let env = [
        ("RINGMESH_SERVER", server.as_str()),
        ("RINGMESH_TOKEN", ADMIN_TOKEN),
        ("RINGMESH_CA_SHA256", at.pin.as_str()),
    ];
    let proxy = fed(source(std::slice::from_ref(&at), "edge-1", None));
    assert!(eventually(Duration::from_secs(15), || proxy.version() > 0));

    // edge-2 has no proxy: `status` says so, and exits 1 for scripts.
    let mut status = ctl(&env, &["status", "--output", "json"]);
    assert!(
        eventually(Duration::from_secs(15), || {
            status = ctl(&env, &["status", "--output", "json"]);
            json(&status)["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["name"] == "edge-1" && n["in_sync"] == true)
            })
        }),
        "{}",
        text(&status)
    );
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let report = json(&status);
    assert_eq!(report["ok"], false);
    let nodes = report["nodes"].as_array().expect("nodes");
    let edge1 = nodes
        .iter()
        .find(|n| n["name"] == "edge-1")
        .expect("edge-1");
    assert_eq!(edge1["problems"], serde_json::json!([]));
    assert!(edge1["cert_expires_unix"].as_i64().is_some_and(|t| t > 0));
    let edge2 = nodes
        .iter()
        .find(|n| n["name"] == "edge-2")
        .expect("edge-2");
    assert_eq!(
        edge2["problems"],
        serde_json::json!(["has applied nothing yet", "never seen"])
    );
    let table = ctl(&env, &["status"]);
    let t = text(&table);
    assert!(t.contains("NODE") && t.contains("never seen"), "{t}");
    // Not a terminal: no colour codes.
    assert!(!t.contains('\u{1b}'), "{t}");
    let check = ctl(&env, &["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("[FAIL] every node in sync: edge-2"));

    // Without edge-2 (removed with the versioned API), every check passes.
    let version = at.get("/v1/config")["version"].as_u64().expect("version");
    let (code, _) = at.call("DELETE", "/v1/config/nodes/edge-2", None, Some(version));
    assert_eq!(code, 200);
    let status = ctl(&env, &["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let check = ctl(&env, &["check", "--output", "json"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let checks = json(&check);
    let names: Vec<&str> = checks["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for expected in [
        "control plane reachable",
        "admin credentials accepted",
        "CA valid, not about to expire",
        "every node in sync",
        "no node on an old snapshot",
        "clock skew",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    // A CA that expires within 28 years fails a check that asks for 28 years.
    let strict = ctl(&env, &["check", "--ca-warn", "250000h"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(text(&strict).contains("[FAIL] CA valid"));

    // Clusters and endpoints.
    let clusters = text(&ctl(&env, &["clusters"]));
    assert!(clusters.contains("web-v2"), "{clusters}");
    let eps = ctl(&env, &["endpoints", "web", "-o", "json"]);
    assert_eq!(json(&eps)["endpoints"][0]["addr"], up.addr.to_string());
    let none = ctl(&env, &["endpoints", "nope"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none).contains("no cluster named `nope`"));

    // A split, against a version the operator reviewed that is no longer current: refused,
    // nothing changed. Then against the version read now: done, and the proxy applies it.
    let before = at.get("/v1/config")["version"].as_u64().expect("version");
    let stale = ctl(
        &env,
        &[
            "split",
            "edge-1",
            "web",
            "web=90",
            "web-v2=10",
            "--expect-version",
            &(before - 1).to_string(),
        ],
    );
    assert_eq!(stale.status.code(), Some(2), "{}", text(&stale));
    assert!(
        text(&stale).contains("nothing was changed"),
        "{}",
        text(&stale)
    );
    assert_eq!(at.get("/v1/config")["version"].as_u64(), Some(before));
    let done = ctl(&env, &["split", "edge-1", "web", "web=90", "web-v2=10"]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let route = &at.get("/v1/config")["config"]["nodes"]["edge-1"]["listeners"][0]["routes"][0];
    assert_eq!(
        route["split"],
        serde_json::json!([{"cluster": "web", "weight": 90}, {"cluster": "web-v2", "weight": 10}])
    );
    assert!(route.get("cluster").is_none());
    assert!(eventually(Duration::from_secs(15), || ctl(
        &env,
        &["status"]
    )
    .status
    .success()));
    let bad = ctl(&env, &["split", "edge-1", "web", "web=x"]);
    assert_eq!(bad.status.code(), Some(2));
    let unknown = ctl(&env, &["split", "edge-1", "web", "nope=1"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));

    // Callers without the right credentials get nothing, and are told why.
    let wrong_token = ctl(
        &[
            ("RINGMESH_SERVER", server.as_str()),
            ("RINGMESH_TOKEN", "not-the-token"),
            ("RINGMESH_CA_SHA256", at.pin.as_str()),
        ],
        &["status"],
    );
    assert_eq!(wrong_token.status.code(), Some(2));
    assert!(text(&wrong_token).contains("401"), "{}", text(&wrong_token));
    let wrong_pin = ctl(
        &[
            ("RINGMESH_SERVER", server.as_str()),
            ("RINGMESH_TOKEN", ADMIN_TOKEN),
            ("RINGMESH_CA_SHA256", &"ab".repeat(32)),
        ],
        &["status"],
    );
    assert_eq!(wrong_pin.status.code(), Some(2));
    let unverified = ctl(
        &[
            ("RINGMESH_SERVER", server.as_str()),
            ("RINGMESH_TOKEN", ADMIN_TOKEN),
        ],
        &["status"],
    );
    assert!(text(&unverified).contains("cannot be verified"));
    let cleartext = ctl(&env, &["--server", &format!("http://{server}"), "status"]);
    assert!(text(&cleartext).contains("never sent in the clear"));
    // Flags win over the environment.
    let flagged = ctl(
        &[("RINGMESH_SERVER", "127.0.0.1:1")],
        &[
            "--server",
            &server,
            "--ca-sha256",
            &at.pin,
            "--token-file",
            "/nonexistent/token",
            "status",
        ],
    );
    assert!(text(&flagged).contains("/nonexistent/token"));
}
