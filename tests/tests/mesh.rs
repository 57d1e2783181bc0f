//! The control plane with real proxies over real sockets: registration and expiry, DNS
//! discovery, the versioned API, snapshots refused and reported, the control plane going away
//! and coming back, restart from the cached snapshot, and a traffic shift under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringmesh_control::Proxy;
use ringmesh_control::mesh::etcd::Cluster;
use ringmesh_control::mesh::{ApiTls, ControlOptions, ControlPlane, MeshSource, StoreOptions};
use ringmesh_tests::mesh::{At, Who, fed, node, plane, source};
use ringmesh_tests::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn listener(name: &str, route: &str) -> String {
    format!(
        "    listeners:\n      - name: {name}\n        bind: 127.0.0.1:0\n        routes: [ {{ match: {{ path_prefix: / }}, {route} }} ]\n"
    )
}

/// A proxy for `node`, fed by the control planes at `at` (tried in turn).
fn control_proxy(at: &[At], node: &str, cache: Option<PathBuf>) -> Proxy {
    fed(source(at, node, cache))
}

/// Waits for the proxy's first snapshot; returns its `edge` listener.
fn ready(p: &Proxy) -> SocketAddr {
    assert!(eventually(WAIT, || p.version() > 0), "no snapshot applied");
    p.listener_addr("edge").expect("edge is bound")
}

fn body_of(edge: SocketAddr) -> (u16, String) {
    let r = one_shot(
        edge,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    );
    (r.status, r.text())
}

/// Registers (or heartbeats) an instance, as the test admin.
fn register(at: &At, cluster: &str, id: &str, addr: SocketAddr, ttl: &str) -> u16 {
    let body = json!({ "addr": addr.to_string(), "zone": "dc1", "ttl": ttl });
    at.call(
        "PUT",
        &format!("/v1/clusters/{cluster}/endpoints/{id}"),
        Some(&body),
        None,
    )
    .0
}

/// A proxy's admin API, in plain text.
fn admin_text(addr: SocketAddr, path: &str) -> String {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes());
    c.response(false).text()
}

#[test]
fn instances_register_take_traffic_and_leave_when_heartbeats_stop() {
    let (a, b) = (Upstream::fixed("a"), Upstream::fixed("b"));
    let mesh = format!(
        "clusters:\n  - {{ name: web, endpoints: [] }}\nnodes:\n{}",
        node("edge-1", &listener("edge", "cluster: web")),
    );
    let cp = plane(&mesh);
    let at = At::of(&cp);
    let proxy = control_proxy(std::slice::from_ref(&at), "edge-1", None);
    let edge = ready(&proxy);
    assert_eq!(body_of(edge).0, 503, "no endpoint yet");

    assert_eq!(register(&at, "web", "a-1", a.addr, "10s"), 200);
    assert_eq!(register(&at, "web", "b-1", b.addr, "1s"), 200);
    assert_eq!(register(&at, "nope", "x", b.addr, "1s"), 404);
    let mut seen_b = false;
    assert!(
        eventually(WAIT, || {
            // Heartbeats keep b registered while the test looks for it.
            register(&at, "web", "b-1", b.addr, "1s");
            seen_b |= body_of(edge) == (200, "b".into());
            seen_b
        }),
        "the registered instance never took traffic"
    );
    // b's heartbeats stop: it leaves, a (still within its TTL) takes everything.
    assert!(
        eventually(WAIT, || {
            let clusters = at.get("/v1/clusters");
            clusters["clusters"]["web"]["endpoints"]
                .as_array()
                .map(Vec::len)
                == Some(1)
        }),
        "b was not removed when its heartbeats stopped"
    );
    assert!(eventually(WAIT, || (0..20).all(|_| body_of(edge) == (200, "a".into()))));
    let nodes = at.get("/v1/nodes");
    assert!(
        eventually(WAIT, || at.get("/v1/nodes")["nodes"]["edge-1"]["in_sync"]
            == true),
        "{nodes}"
    );
    // Deregistration removes at once.
    let (status, _) = at.call("DELETE", "/v1/clusters/web/endpoints/a-1", None, None);
    assert_eq!(status, 200);
    assert!(eventually(WAIT, || body_of(edge).0 == 503));
    let metrics = at.text("/metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "ringmesh_control_endpoints{source=\"registered\"}"
        ),
        Some(0.0)
    );
}

/// Cluster `web` with one endpoint, and node `edge-1` routing everything to it.
fn web_mesh(up: SocketAddr) -> String {
    format!(
        "clusters:\n  - {{ name: web, endpoints: [ {{ addr: {up} }} ] }}\nnodes:\n{}",
        node("edge-1", &listener("edge", "cluster: web")),
    )
}

#[test]
fn the_api_refuses_races_and_invalid_changes_and_changes_nothing() {
    let up = Upstream::fixed("a");
    let cp = plane(&web_mesh(up.addr));
    let at = At::of(&cp);
    let v0 = at.get("/v1/config")["version"].as_u64().expect("version");
    let path = "/v1/config/nodes/edge-1/listeners/0/routes/0/cluster";
    assert_eq!(at.get(path)["value"], "web");
    // A request target that is not a path is refused, and the API goes on.
    let admin = Who::admin(&at.pin);
    let (status, _) = at
        .raw(
            &admin,
            &format!(
                "PUT v1/config HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                at.addr
            ),
        )
        .expect("answered");
    assert_eq!(status, 400);
    assert_eq!(at.get(path)["value"], "web");
    // No version: refused.
    assert_eq!(at.call("PUT", path, Some(&json!("web")), None).0, 428);
    // A change that points at a cluster that does not exist: every error, by field.
    let (status, v) = at.call("PUT", path, Some(&json!("nope")), Some(v0));
    assert_eq!(status, 422, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("nodes.edge-1.listeners[0].routes[0].cluster")),
        "{v}"
    );
    // A valid change, then a second change made against the first version: refused.
    let add = json!({ "name": "api", "endpoints": [ { "addr": up.addr.to_string() } ] });
    let (status, v) = at.call("PUT", "/v1/config/clusters/-", Some(&add), Some(v0));
    assert_eq!(status, 200, "{v}");
    let v1 = v["version"].as_u64().expect("version");
    assert!(v1 > v0);
    let (status, v) = at.call("PUT", path, Some(&json!("api")), Some(v0));
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["version"], v1);
    assert_eq!(
        at.get(path)["value"],
        "web",
        "the refused change was not applied"
    );
    assert_eq!(at.call("PUT", path, Some(&json!("api")), Some(v1)).0, 200);
    assert_eq!(at.get(path)["value"], "api");
    // Bad bodies and unknown places.
    assert_eq!(at.call("GET", "/v1/config/nodes/nobody", None, None).0, 404);
    // A registration a proxy would refuse is refused here, naming the field.
    for (body, field) in [
        (json!({"addr": "nowhere"}), "addr"),
        (json!({"addr": "127.0.0.1:1", "ttl": "0s"}), "ttl"),
    ] {
        let (status, v) = at.call("PUT", "/v1/clusters/web/endpoints/x", Some(&body), None);
        assert_eq!(status, 422, "{v}");
        assert!(
            v["errors"][0]
                .as_str()
                .is_some_and(|e| e.starts_with(field)),
            "{v}"
        );
    }
    // Only a node's own proxy watches it.
    assert_eq!(at.call("GET", "/v1/watch/edge-1", None, None).0, 403);
    let (status, _) = at
        .raw(
            &admin,
            &format!(
                "PUT /v1/config HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nIf-Match: *\r\nContent-Length: 5\r\n\r\n{{nope",
                at.addr,
                ringmesh_tests::mesh::ADMIN_TOKEN
            ),
        )
        .expect("answered");
    assert_eq!(status, 400);
}

#[test]
fn dns_names_are_resolved_and_a_failing_name_keeps_the_rest() {
    let up = Upstream::fixed("found");
    let mesh = format!(
        "dns_interval: 200ms\nclusters:\n  - name: web\n    endpoints:\n      - {{ dns: \"localhost:{}\" }}\n      - {{ dns: \"ringmesh-test.invalid:80\" }}\nnodes:\n{}",
        up.addr.port(),
        node("edge-1", &listener("edge", "cluster: web")),
    );
    let cp = plane(&mesh);
    let at = At::of(&cp);
    let proxy = control_proxy(std::slice::from_ref(&at), "edge-1", None);
    let edge = ready(&proxy);
    assert!(
        eventually(WAIT, || body_of(edge) == (200, "found".into())),
        "the name's address never took traffic"
    );
    // The failing name may take longer to fail than the other to resolve.
    assert!(
        eventually(WAIT, || {
            at.get("/v1/clusters")["clusters"]["web"]["dns"][1]["error"].is_string()
        }),
        "the failing name shows no error"
    );
    let clusters = at.get("/v1/clusters");
    let dns = &clusters["clusters"]["web"]["dns"];
    assert!(
        dns[0]["addrs"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(up.addr.to_string()))),
        "{clusters}"
    );
    let metrics = at.text("/metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "ringmesh_control_source_up{source=\"dns\",name=\"ringmesh-test.invalid:80\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[test]
fn a_snapshot_the_proxy_refuses_leaves_it_on_the_old_one_and_is_reported() {
    let up = Upstream::fixed("a");
    let cp = plane(&web_mesh(up.addr));
    let at = At::of(&cp);
    let proxy = control_proxy(std::slice::from_ref(&at), "edge-1", None);
    let edge = ready(&proxy);
    assert_eq!(body_of(edge), (200, "a".into()));
    let applied = proxy.version();
    // Valid for the control plane, but the address is taken on the proxy's host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let v = at.get("/v1/config")["version"].as_u64();
    let path = "/v1/config/nodes/edge-1/listeners/0/bind";
    let (status, r) = at.call(
        "PUT",
        path,
        Some(&json!(taken.local_addr().expect("addr").to_string())),
        v,
    );
    assert_eq!(status, 200, "{r}");
    let wanted = r["version"].as_u64();
    assert!(
        eventually(WAIT, || {
            let n = &at.get("/v1/nodes")["nodes"]["edge-1"];
            n["last_rejection"]["version"].as_u64() == wanted
                && n["last_rejection"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot bind"))
        }),
        "{}",
        at.get("/v1/nodes")
    );
    assert_eq!(proxy.version(), applied, "the proxy stays on its config");
    assert_eq!(body_of(edge), (200, "a".into()));
    let metrics = admin_text(proxy.admin_addr(), "/metrics");
    assert_eq!(
        metric_value(&metrics, "ringmesh_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "ringmesh_control_connected"),
        Some(1.0)
    );
    let n = &at.get("/v1/nodes")["nodes"]["edge-1"];
    assert_eq!(n["in_sync"], false, "{n}");
}

#[test]
fn proxies_serve_without_the_control_plane_converge_when_it_returns_and_restart_from_cache() {
    let (a, b) = (Upstream::fixed("a"), Upstream::fixed("b"));
    let cluster = |up: SocketAddr| {
        format!(
            "clusters:\n  - {{ name: web, endpoints: [ {{ addr: {up} }} ] }}\n  - {{ name: spare, endpoints: [] }}\n"
        )
    };
    let nodes = format!(
        "nodes:\n{}{}",
        node("edge-1", &listener("edge", "cluster: web")),
        node("edge-2", &listener("edge", "cluster: web")),
    );
    let admins = ringmesh_tests::mesh::admin_section();
    let file = temp_config(
        "mesh-converge",
        &format!("{admins}{}{nodes}", cluster(a.addr)),
    );
    let cache = file.with_file_name("edge-1.snapshot.json");
    let _ = std::fs::remove_file(&cache);
    let _ = std::fs::remove_file(file.with_file_name("config.yaml.state.json"));
    let opts = ControlOptions {
        source: MeshSource::File(file.clone()),
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        state_file: None,
        store: None,
        tls: ApiTls::Mesh,
    };
    let cp = ControlPlane::start(opts.clone()).expect("control plane");
    let at = At::of(&cp);
    let addr = cp.addr();
    // A second address where nothing listens: proxies try it in turn.
    let dead = at.with_addr(free_port());
    let p1 = control_proxy(&[dead.clone(), at.clone()], "edge-1", Some(cache.clone()));
    let p2 = control_proxy(&[at.clone(), dead], "edge-2", None);
    let (e1, e2) = (ready(&p1), ready(&p2));
    assert_eq!(body_of(e1), (200, "a".into()));
    assert_eq!(body_of(e2), (200, "a".into()));
    assert_eq!(register(&at, "spare", "s-1", free_port(), "1h"), 200);

    cp.stop();
    assert!(eventually(WAIT, || {
        metric_value(
            &admin_text(p1.admin_addr(), "/metrics"),
            "ringmesh_control_connected",
        ) == Some(0.0)
            && metric_value(
                &admin_text(p2.admin_addr(), "/metrics"),
                "ringmesh_control_connected",
            ) == Some(0.0)
    }));
    for _ in 0..10 {
        assert_eq!(body_of(e1), (200, "a".into()));
        assert_eq!(body_of(e2), (200, "a".into()));
    }
    // The mesh changes while the control plane is away; it comes back on the same address.
    write_atomically(&file, &format!("{admins}{}{nodes}", cluster(b.addr)));
    let cp = ControlPlane::start(ControlOptions {
        bind: Some(addr),
        ..opts.clone()
    })
    .expect("control plane again");
    assert!(
        eventually(WAIT, || body_of(e1) == (200, "b".into())
            && body_of(e2) == (200, "b".into())),
        "{} {:?} {:?}\n{}",
        at.get("/v1/nodes"),
        body_of(e1),
        body_of(e2),
        admin_text(p1.admin_addr(), "/metrics")
            .lines()
            .filter(|l| l.contains("control") || l.contains("config"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The registration survived the restart (state file).
    let clusters = at.get("/v1/clusters");
    assert_eq!(
        clusters["clusters"]["spare"]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{clusters}"
    );
    let metrics = admin_text(p1.admin_addr(), "/metrics");
    assert!(metric_value(&metrics, "ringmesh_control_snapshot_version").is_some_and(|v| v > 0.0));
    assert!(metric_value(&metrics, "ringmesh_config_age_seconds").is_some());

    // Restart a proxy while the control plane is away: it serves from its cache.
    assert!(eventually(WAIT, || std::fs::read_to_string(&cache)
        .is_ok_and(|c| c.contains(&b.addr.to_string()))));
    drop(p1);
    cp.stop();
    let p1 = control_proxy(std::slice::from_ref(&at), "edge-1", Some(cache.clone()));
    let e1 = ready(&p1);
    assert_eq!(body_of(e1).1, "b");
    let ready_answer = admin_text(p1.admin_addr(), "/ready");
    assert!(ready_answer.contains("ready"), "{ready_answer}");
}

#[test]
fn a_proxy_is_not_ready_before_its_first_snapshot() {
    let nowhere = At {
        addr: free_port(),
        pin: "00".repeat(32),
        learned: None,
    };
    let proxy = control_proxy(&[nowhere], "edge-1", None);
    let r = {
        let mut c = Client::connect(proxy.admin_addr());
        c.send(
            format!(
                "GET /ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                proxy.admin_addr()
            )
            .as_bytes(),
        );
        c.response(false)
    };
    assert_eq!(r.status, 503);
    assert_eq!(proxy.version(), 0);
}

#[test]
fn a_weight_shift_under_load_moves_traffic_on_every_proxy_and_fails_nothing() {
    let (a, b) = (Upstream::fixed("a"), Upstream::fixed("b"));
    let split = |wa: u32, wb: u32| {
        format!("split: [ {{ cluster: a, weight: {wa} }}, {{ cluster: b, weight: {wb} }} ]")
    };
    let mesh = format!(
        "clusters:\n  - {{ name: a, endpoints: [ {{ addr: {} }} ] }}\n  - {{ name: b, endpoints: [ {{ addr: {} }} ] }}\nnodes:\n{}{}",
        a.addr,
        b.addr,
        node("edge-1", &listener("edge", &split(100, 0))),
        node("edge-2", &listener("edge", &split(100, 0))),
    );
    let cp = plane(&mesh);
    let at = At::of(&cp);
    let (p1, p2) = (
        control_proxy(std::slice::from_ref(&at), "edge-1", None),
        control_proxy(std::slice::from_ref(&at), "edge-2", None),
    );
    let (e1, e2) = (ready(&p1), ready(&p2));
    let (l1, l2) = (Load::start(e1, 4, "/"), Load::start(e2, 4, "/"));
    std::thread::sleep(Duration::from_millis(300));
    // One change for the whole mesh: both nodes' splits from 100/0 to 0/100.
    let state = at.get("/v1/config");
    let mut doc = state["config"].clone();
    for node in ["edge-1", "edge-2"] {
        doc["nodes"][node]["listeners"][0]["routes"][0]["split"] =
            json!([{ "cluster": "a", "weight": 0 }, { "cluster": "b", "weight": 100 }]);
    }
    let (status, r) = at.call("PUT", "/v1/config", Some(&doc), state["version"].as_u64());
    assert_eq!(status, 200, "{r}");
    let version = r["version"].as_u64();
    assert!(eventually(WAIT, || {
        let n = at.get("/v1/nodes");
        ["edge-1", "edge-2"]
            .iter()
            .all(|node| n["nodes"][node]["applied_version"].as_u64() == version)
    }));
    let (before1, before2) = (l1.take(), l2.take());
    std::thread::sleep(Duration::from_millis(300));
    let (after1, after2) = (l1.stop(), l2.stop());
    for counts in [&before1, &before2, &after1, &after2] {
        let failed: u64 = counts
            .iter()
            .filter(|((s, _), _)| *s != 200)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(failed, 0, "{counts:?}");
    }
    assert!(count_of(&before1, 200, "a") > 0 && count_of(&before2, 200, "a") > 0);
    // Once a proxy reported the new version, all its traffic goes to b.
    for counts in [&after1, &after2] {
        assert_eq!(count_of(counts, 200, "a"), 0, "{counts:?}");
        assert!(count_of(counts, 200, "b") > 0, "{counts:?}");
    }
}

/// A proxy for `node` with bootstrap token `token`; with `on_disk`, its identity is also kept
/// in a fresh private directory.
fn identity_proxy(at: &At, node: &str, token: &str, on_disk: bool) -> Proxy {
    let mut s = source(std::slice::from_ref(at), node, None);
    s.token = Some(token.to_string());
    if on_disk {
        let dir = std::env::temp_dir().join(format!(
            "ringmesh-test-identity-{}-{node}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        s.identity_dir = Some(dir);
    }
    fed(s)
}

#[test]
fn mtls_with_issued_certificates_identity_policies_renewal_and_a_ca_rotation() {
    use ringmesh_control::mesh::ca::sha256_hex;
    let app = Upstream::http(|req| {
        Resp::new(
            200,
            req.header("ringmesh-client-identity")
                .unwrap_or("none")
                .to_string(),
        )
    });
    let caller = |sa: &str, token: &str| {
        format!(
            "  {sa}:\n    identity: {{ ns: default, sa: {sa} }}\n    token_sha256: {}\n    listeners: [ {{ name: edge, bind: 127.0.0.1:0, routes: [ {{ match: {{ path_prefix: / }}, cluster: back }} ] }} ]\n",
            sha256_hex(token.as_bytes())
        )
    };
    let mesh = format!(
        "trust_domain: mesh.local
ca: {{ cert_ttl: 4s, rotation_grace: 1m }}
policies:
  - {{ name: no-intruders, action: deny, match: {{ identity: \"spiffe://mesh.local/ns/default/sa/intruder\" }} }}
clusters:
  - {{ name: app, endpoints: [ {{ addr: {} }} ] }}
  - {{ name: back, tls: {{ mesh: \"spiffe://mesh.local/ns/default/sa/back\" }}, endpoints: [] }}
nodes:
  back:
    identity: {{ ns: default, sa: back }}
    token_sha256: {}
    listeners: [ {{ name: inbound, bind: 127.0.0.1:0, tls: mesh, routes: [ {{ match: {{ path_prefix: / }}, cluster: app }} ] }} ]
{}{}",
        app.addr,
        sha256_hex(b"back-token"),
        caller("front", "front-token"),
        caller("intruder", "intruder-token"),
    );
    let cp = plane(&mesh);
    let at = At::of(&cp);
    let back = identity_proxy(&at, "back", "back-token", true);
    assert!(
        eventually(WAIT, || back.version() > 0),
        "{}",
        at.get("/v1/nodes")
    );
    let inbound = back.listener_addr("inbound").expect("inbound");
    assert_eq!(register(&at, "back", "back-1", inbound, "1h"), 200);
    let front = identity_proxy(&at, "front", "front-token", false);
    let intruder = identity_proxy(&at, "intruder", "intruder-token", false);
    let (fe, ie) = (ready(&front), ready(&intruder));
    // The back proxy verified the caller's issued certificate and passed its identity on.
    assert!(
        eventually(WAIT, || body_of(fe)
            == (200, "spiffe://mesh.local/ns/default/sa/front".into())),
        "{:?}",
        body_of(fe)
    );
    // The identity policy denies the other caller, with its own valid certificate.
    assert_eq!(body_of(ie).0, 403);
    // Plain text to the mTLS listener, and a wrong token, are refused.
    let mut plain = Client::connect(inbound);
    plain.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        plain.try_response(false).is_err(),
        "plain text is not served by an mTLS listener"
    );
    let (status, _) = at.call_as(
        &Who::bearer(&at.pin, "nope"),
        "POST",
        "/v1/nodes/front/certificate",
        Some(&json!({})),
        None,
    );
    assert_eq!(status, 401);

    // Under load: certificates renew at half their 4 s life, and the CA rotates.
    let load = Load::start(fe, 2, "/");
    let issued_before = at.get("/v1/ca")["issued"].as_u64().expect("issued");
    let first_issuer = at.get("/v1/ca")["issuer"].clone();
    let (status, r) = at.call("POST", "/v1/ca/rotate", None, None);
    assert_eq!(status, 200, "{r}");
    // An admin takes the new bundle while both authorities are in it.
    let mut at = at;
    at.learn();
    assert_eq!(at.get("/v1/ca")["rotating"], true);
    // Every proxy took the new bundle, so the new authority issues; the old one is retired once
    // the certificates it issued have expired.
    assert!(
        eventually(WAIT, || {
            let ca = at.get("/v1/ca");
            ca["rotating"] == false && ca["issuer"] != first_issuer && ca["previous"].is_null()
        }),
        "{}",
        at.get("/v1/ca")
    );
    // Let every proxy renew under the new authority alone.
    std::thread::sleep(Duration::from_secs(3));
    let counts = load.stop();
    let ok = count_of(&counts, 200, "spiffe://mesh.local/ns/default/sa/front");
    let total: u64 = counts.values().sum();
    assert_eq!(
        ok, total,
        "every request succeeded through renewals and the rotation: {counts:?}"
    );
    assert!(ok > 0);
    let issued = at.get("/v1/ca")["issued"].as_u64().expect("issued");
    assert!(
        issued >= issued_before + 3,
        "certificates were renewed: {issued_before} -> {issued}"
    );
    assert_eq!(
        body_of(fe),
        (200, "spiffe://mesh.local/ns/default/sa/front".into())
    );
    assert_eq!(body_of(ie).0, 403);
}

/// An etcd server of the test's own, on free loopback ports, removed when dropped. A missing
/// etcd fails the test; `None` (the test skipped) only with `RINGMESH_SKIP_MISSING_TOOLS=1`.
struct Etcd {
    child: Option<std::process::Child>,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    /// Client TLS: the CA clients' certificates must chain to, and etcd's certificate and key.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Etcd {
    fn start() -> Option<Etcd> {
        Etcd::start_with(None)
    }

    /// etcd serving its clients over TLS, asking them for certificates from `ca`.
    fn start_tls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Option<Etcd> {
        Etcd::start_with(Some((ca, cert, key)))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Option<Etcd> {
        tool(&["etcd"])?;
        let (client, peer) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "ringmesh-etcd-{}-{}",
            std::process::id(),
            client.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut etcd = Etcd {
            child: None,
            client,
            peer,
            dir,
            tls,
        };
        etcd.run();
        Some(etcd)
    }

    /// Starts etcd (again, on the same ports and data).
    fn run(&mut self) {
        let (client, peer) = (self.client, self.peer);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = std::process::Command::new("etcd");
        if let Some((ca, cert, key)) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = cmd
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://{client}"),
                "--listen-peer-urls",
                &format!("http://{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://{peer}"),
                "--initial-cluster",
                &format!("test=http://{peer}"),
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        // Connections are refused until it listens.
        let tls = self.tls.is_some();
        let healthy = || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(client) else {
                return false;
            };
            if tls {
                // Listening is enough: the replicas wait for the rest.
                return true;
            }
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.contains("\"health\":\"true\"")
        };
        assert!(eventually(WAIT, healthy), "etcd did not become healthy");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn replica(yaml: &str, etcd: &Etcd) -> ControlPlane {
    ControlPlane::start(ControlOptions {
        store: Some(StoreOptions {
            etcd: Cluster::plain(vec![etcd.client.to_string()]),
            prefix: "/ringmesh-test/".into(),
        }),
        ..ringmesh_tests::mesh::options(yaml)
    })
    .expect("replica starts")
}

fn endpoint_ids(cp: &At, cluster: &str) -> Vec<String> {
    let v = cp.get("/v1/clusters");
    let mut ids: Vec<String> = v["clusters"][cluster]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["id"]
                .as_str()
                .or(e["addr"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

fn leader(cp: &At) -> bool {
    metric_value(&cp.text("/metrics"), "ringmesh_control_leader") == Some(1.0)
}

#[test]
fn two_replicas_on_one_etcd_agree_and_losing_one_loses_nothing() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let (a, b, blue) = (
        Upstream::fixed("a"),
        Upstream::fixed("b"),
        Upstream::fixed("blue"),
    );
    let mesh = format!(
        "clusters:\n  - {{ name: web, endpoints: [] }}\n  - {{ name: blue, endpoints: [ {{ addr: {} }} ] }}\n  - {{ name: named, endpoints: [ {{ dns: \"localhost:{}\" }} ] }}\nnodes:\n{}{}",
        blue.addr,
        a.addr.port(),
        node("edge-1", &listener("edge", "cluster: web")),
        node("edge-2", &listener("edge", "cluster: web")),
    );
    let r1 = replica(&mesh, &etcd);
    // The second replica's file differs: the store, already seeded, wins.
    let r2 = replica(&mesh.replace("name: blue", "name: blue2"), &etcd);
    let (x, y) = (At::of(&r1), At::of(&r2));
    assert_eq!(
        y.get("/v1/config")["config"]["clusters"][1]["name"],
        "blue",
        "the second replica serves the store's desired state"
    );
    let p1 = control_proxy(&[x.clone(), y.clone()], "edge-1", None);
    let p2 = control_proxy(&[y.clone(), x.clone()], "edge-2", None);
    let (e1, e2) = (ready(&p1), ready(&p2));

    // Registered on one replica, served by both.
    assert_eq!(register(&x, "web", "a-1", a.addr, "10s"), 200);
    assert!(
        eventually(WAIT, || endpoint_ids(&y, "web") == ["a-1"]),
        "registration not replicated"
    );
    assert!(
        eventually(WAIT, || body_of(e1) == (200, "a".into())
            && body_of(e2) == (200, "a".into())),
        "a registration made on one replica did not reach both proxies"
    );
    // Replicas following the same changes number them alike; each knows what every proxy
    // applied, whichever replica it watches.
    assert!(
        eventually(WAIT, || {
            let (n1, n2) = (x.get("/v1/nodes"), y.get("/v1/nodes"));
            ["edge-1", "edge-2"].iter().all(|n| {
                n1["nodes"][n]["version"] == n2["nodes"][n]["version"]
                    && n1["nodes"][n]["in_sync"] == true
                    && n2["nodes"][n]["in_sync"] == true
            })
        }),
        "the replicas disagree on versions, or a proxy is behind"
    );
    // DNS is resolved once (by the leader) for both; one leader.
    assert!(
        eventually(WAIT, || endpoint_ids(&x, "named")
            == endpoint_ids(&y, "named")
            && !endpoint_ids(&y, "named").is_empty()),
        "DNS results are not shared"
    );
    assert!(
        eventually(WAIT, || leader(&x) != leader(&y)),
        "not exactly one leader"
    );
    // The mesh CA is one.
    assert_eq!(x.get("/v1/ca")["issuer"], y.get("/v1/ca")["issuer"]);

    // Two changes against the same version on two replicas: one wins, the other is refused.
    let v = x.get("/v1/config")["version"].as_u64().expect("version");
    let route = "/v1/config/nodes/edge-1/listeners/0/routes/0/cluster";
    assert_eq!(x.call("PUT", route, Some(&json!("blue")), Some(v)).0, 200);
    let (status, body) = y.call("PUT", route, Some(&json!("web")), Some(v));
    assert_eq!(status, 409, "a racing change was not refused: {body}");
    assert_eq!(
        y.get(route)["value"],
        "blue",
        "the refused change was applied"
    );
    assert!(
        eventually(WAIT, || body_of(e1) == (200, "blue".into())),
        "the change did not reach the proxy"
    );
    assert_eq!(body_of(e2), (200, "a".into()), "edge-2 was not to change");

    // A heartbeat on the other replica keeps the registration; a registration without
    // heartbeats expires in the store, for both.
    assert_eq!(register(&y, "web", "a-1", a.addr, "10s"), 200);
    assert_eq!(register(&y, "web", "b-1", b.addr, "2s"), 200);
    assert_eq!(endpoint_ids(&y, "web"), ["a-1", "b-1"]);
    assert!(
        eventually(WAIT, || endpoint_ids(&x, "web") == ["a-1"]
            && endpoint_ids(&y, "web") == ["a-1"]),
        "an expired registration stayed"
    );

    // etcd goes away: the replicas serve what they have, refuse changes, and say so; when it
    // returns they take changes again.
    etcd.kill();
    let store_up = |cp: &At| {
        metric_value(
            &cp.text("/metrics"),
            "ringmesh_control_source_up{source=\"etcd\",name=\"store\"}",
        )
    };
    assert!(
        eventually(WAIT, || store_up(&x) == Some(0.0)
            && store_up(&y) == Some(0.0)),
        "a lost store does not show"
    );
    let v = y.get("/v1/config")["version"].as_u64().expect("version");
    assert_eq!(
        y.call("PUT", route, Some(&json!("web")), Some(v)).0,
        503,
        "a change was taken without the store"
    );
    assert_eq!(body_of(e1), (200, "blue".into()));
    assert_eq!(body_of(e2), (200, "a".into()));
    etcd.run();
    assert!(
        eventually(WAIT, || store_up(&x) == Some(1.0)
            && store_up(&y) == Some(1.0)),
        "the replicas did not follow the store again"
    );

    // One replica goes: its proxy moves to the other, and nothing it held is lost.
    let was_leader = leader(&x);
    r1.stop();
    let keep_alive = |cp: &At| assert_eq!(register(cp, "web", "a-1", a.addr, "10s"), 200);
    keep_alive(&y);
    assert!(
        eventually(WAIT, || leader(&y)),
        "the remaining replica did not take the lead (the lost one led: {was_leader})"
    );
    let v = y.get("/v1/config")["version"].as_u64().expect("version");
    assert_eq!(y.call("PUT", route, Some(&json!("web")), Some(v)).0, 200);
    assert!(
        eventually(WAIT, || body_of(e1) == (200, "a".into())),
        "the proxy of the lost replica did not converge through the other"
    );
    // A new replica starts from the store: the same registrations, desired state and CA.
    let r3 = replica("clusters: []\nnodes: {}\n", &etcd);
    let z = At::of(&r3);
    keep_alive(&z);
    assert_eq!(endpoint_ids(&z, "web"), ["a-1"]);
    assert_eq!(z.get(route)["value"], "web");
    assert_eq!(z.get("/v1/ca")["issuer"], y.get("/v1/ca")["issuer"]);
    // It knows the proxies run their current config, though it numbers it anew.
    assert!(
        eventually(WAIT, || {
            let nodes = z.get("/v1/nodes");
            nodes["nodes"]["edge-1"]["in_sync"] == true
                && nodes["nodes"]["edge-2"]["in_sync"] == true
        }),
        "a new replica does not know the proxies are in sync: {} (the other replica: {})",
        z.get("/v1/nodes"),
        y.get("/v1/nodes")
    );
    drop(etcd);
}

#[test]
fn replicas_reach_etcd_over_mutual_tls() {
    let pki = ringmesh_tests::tls::Pki::new("etcd");
    let server = pki.leaf("etcd", &["127.0.0.1"], false);
    let client = pki.leaf("replica", &["replica"], false);
    let Some(etcd) = Etcd::start_tls(pki.ca_file(), server.cert.clone(), server.key.clone()) else {
        return;
    };
    let up = Upstream::fixed("a");
    let mesh = format!(
        "clusters:\n  - {{ name: web, endpoints: [] }}\nnodes:\n{}",
        node("edge-1", &listener("edge", "cluster: web")),
    );
    let url = format!("https://{}", etcd.client);
    let ca = pki.ca_file().display().to_string();
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let start = |with_cert: bool| {
        let etcd = Cluster::parse(&url, Some(&ca), with_cert.then_some((&cert[..], &key[..])))
            .expect("etcd options");
        ControlPlane::start(ControlOptions {
            store: Some(StoreOptions {
                etcd,
                prefix: "/ringmesh-tls/".into(),
            }),
            ..ringmesh_tests::mesh::options(&mesh)
        })
    };
    // etcd asks for a client certificate: without one, a replica does not start, and says why.
    let errors = start(false).expect_err("started without a client certificate");
    assert!(errors.join(" ").contains("TLS"), "{errors:?}");
    let (r1, r2) = (
        start(true).expect("replica starts"),
        start(true).expect("replica starts"),
    );
    let (a1, a2) = (At::of(&r1), At::of(&r2));
    assert_eq!(register(&a1, "web", "a-1", up.addr, "10s"), 200);
    assert!(
        eventually(WAIT, || endpoint_ids(&a2, "web") == ["a-1"]),
        "registration not replicated over TLS"
    );
    let p = control_proxy(std::slice::from_ref(&a2), "edge-1", None);
    let edge = ready(&p);
    assert!(
        eventually(WAIT, || body_of(edge) == (200, "a".into())),
        "the proxy of the other replica does not route to the registration"
    );
}
