//! The control plane with real proxies over real sockets: registration and expiry, DNS
//! discovery, the versioned API, snapshots refused and reported, the control plane going away
//! and coming back, restart from the cached snapshot, and a traffic shift under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringmesh_control::mesh::agent::ControlSource;
use ringmesh_control::mesh::etcd::Cluster;
use ringmesh_control::mesh::{ControlOptions, ControlPlane, MeshSource, StoreOptions};
use ringmesh_control::{ConfigSource, Proxy, ProxyOptions};
use ringmesh_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn listener(name: &str, route: &str) -> String {
    format!(
        "    listeners:\n      - name: {name}\n        bind: 127.0.0.1:0\n        routes: [ {{ match: {{ path_prefix: / }}, {route} }} ]\n"
    )
}

fn plane(yaml: &str) -> ControlPlane {
    ControlPlane::start(ControlOptions {
        source: MeshSource::Text(yaml.to_string()),
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        state_file: None,
        store: None,
    })
    .expect("control plane starts")
}

fn control_proxy(planes: &[SocketAddr], node: &str, cache: Option<PathBuf>) -> Proxy {
    let urls: Vec<String> = planes.iter().map(|a| format!("http://{a}")).collect();
    start_fed(ControlSource::parse(&urls.join(","), node, cache).expect("source"))
}

/// A one-worker proxy fed by a control plane.
fn start_fed(source: ControlSource) -> Proxy {
    Proxy::start(ProxyOptions {
        source: ConfigSource::Control(source),
        workers: Some(1),
        admin: Some("127.0.0.1:0".parse().expect("addr")),
        drain_timeout: Duration::from_secs(2),
        ..ProxyOptions::default()
    })
    .expect("proxy starts")
}

/// Waits for the proxy's first snapshot; returns its `edge` listener.
fn ready(p: &Proxy) -> SocketAddr {
    assert!(eventually(WAIT, || p.version() > 0), "no snapshot applied");
    p.listener_addr("edge").expect("edge is bound")
}

fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    if_match: Option<u64>,
) -> (u16, Value) {
    let mut c = Client::connect(addr);
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: control\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(v) = if_match {
        head.push_str(&format!("If-Match: \"{v}\"\r\n"));
    }
    c.send(format!("{head}\r\n{body}").as_bytes());
    let r = c.response(false);
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or(Value::Null),
    )
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = api(addr, "GET", path, None, None);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn body_of(edge: SocketAddr) -> (u16, String) {
    let r = one_shot(
        edge,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    );
    (r.status, r.text())
}

fn register(cp: SocketAddr, cluster: &str, id: &str, addr: SocketAddr, ttl: &str) -> u16 {
    let body = json!({ "addr": addr.to_string(), "zone": "dc1", "ttl": ttl });
    api(
        cp,
        "PUT",
        &format!("/v1/clusters/{cluster}/endpoints/{id}"),
        Some(&body),
        None,
    )
    .0
}

#[test]
fn instances_register_take_traffic_and_leave_when_heartbeats_stop() {
    let (a, b) = (Upstream::fixed("a"), Upstream::fixed("b"));
    let mesh = format!(
        "clusters:\n  - {{ name: web, endpoints: [] }}\nnodes:\n  edge-1:\n{}",
        listener("edge", "cluster: web")
    );
    let cp = plane(&mesh);
    let proxy = control_proxy(&[cp.addr()], "edge-1", None);
    let edge = ready(&proxy);
    assert_eq!(body_of(edge).0, 503, "no endpoint yet");

    assert_eq!(register(cp.addr(), "web", "a-1", a.addr, "10s"), 200);
    assert_eq!(register(cp.addr(), "web", "b-1", b.addr, "1s"), 200);
    assert_eq!(register(cp.addr(), "nope", "x", b.addr, "1s"), 404);
    let mut seen_b = false;
    assert!(
        eventually(WAIT, || {
            // Heartbeats keep b registered while the test looks for it.
            register(cp.addr(), "web", "b-1", b.addr, "1s");
            seen_b |= body_of(edge) == (200, "b".into());
            seen_b
        }),
        "the registered instance never took traffic"
    );
    // b's heartbeats stop: it leaves, a (still within its TTL) takes everything.
    assert!(
        eventually(WAIT, || {
            let clusters = get(cp.addr(), "/v1/clusters");
            clusters["clusters"]["web"]["endpoints"]
                .as_array()
                .map(Vec::len)
                == Some(1)
        }),
        "b was not removed when its heartbeats stopped"
    );
    assert!(eventually(WAIT, || (0..20).all(|_| body_of(edge) == (200, "a".into()))));
    let nodes = get(cp.addr(), "/v1/nodes");
    assert!(
        eventually(
            WAIT,
            || get(cp.addr(), "/v1/nodes")["nodes"]["edge-1"]["in_sync"] == true
        ),
        "{nodes}"
    );
    // Deregistration removes at once.
    let (status, _) = api(
        cp.addr(),
        "DELETE",
        "/v1/clusters/web/endpoints/a-1",
        None,
        None,
    );
    assert_eq!(status, 200);
    assert!(eventually(WAIT, || body_of(edge).0 == 503));
    let metrics = get_text(cp.addr(), "/metrics");
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
        "clusters:\n  - {{ name: web, endpoints: [ {{ addr: {up} }} ] }}\nnodes:\n  edge-1:\n{}",
        listener("edge", "cluster: web")
    )
}

fn get_text(addr: SocketAddr, path: &str) -> String {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes());
    c.response(false).text()
}

#[test]
fn the_api_refuses_races_and_invalid_changes_and_changes_nothing() {
    let up = Upstream::fixed("a");
    let cp = plane(&web_mesh(up.addr));
    let v0 = get(cp.addr(), "/v1/config")["version"]
        .as_u64()
        .expect("version");
    let path = "/v1/config/nodes/edge-1/listeners/0/routes/0/cluster";
    assert_eq!(get(cp.addr(), path)["value"], "web");
    // A request target that is not a path is refused, and the API goes on.
    let r = one_shot(
        cp.addr(),
        b"PUT v1/config HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(get(cp.addr(), path)["value"], "web");
    // No version: refused.
    assert_eq!(
        api(cp.addr(), "PUT", path, Some(&json!("web")), None).0,
        428
    );
    // A change that points at a cluster that does not exist: every error, by field.
    let (status, v) = api(cp.addr(), "PUT", path, Some(&json!("nope")), Some(v0));
    assert_eq!(status, 422, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("nodes.edge-1.listeners[0].routes[0].cluster")),
        "{v}"
    );
    // A valid change, then a second change made against the first version: refused.
    let add = json!({ "name": "api", "endpoints": [ { "addr": up.addr.to_string() } ] });
    let (status, v) = api(
        cp.addr(),
        "PUT",
        "/v1/config/clusters/-",
        Some(&add),
        Some(v0),
    );
    assert_eq!(status, 200, "{v}");
    let v1 = v["version"].as_u64().expect("version");
    assert!(v1 > v0);
    let (status, v) = api(cp.addr(), "PUT", path, Some(&json!("api")), Some(v0));
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["version"], v1);
    assert_eq!(
        get(cp.addr(), path)["value"],
        "web",
        "the refused change was not applied"
    );
    assert_eq!(
        api(cp.addr(), "PUT", path, Some(&json!("api")), Some(v1)).0,
        200
    );
    assert_eq!(get(cp.addr(), path)["value"], "api");
    // Bad bodies and unknown places.
    assert_eq!(
        api(cp.addr(), "GET", "/v1/config/nodes/nobody", None, None).0,
        404
    );
    assert_eq!(
        api(
            cp.addr(),
            "PUT",
            "/v1/clusters/web/endpoints/x",
            Some(&json!({"addr": "nowhere"})),
            None
        )
        .0,
        400
    );
    assert_eq!(
        api(
            cp.addr(),
            "PUT",
            "/v1/clusters/web/endpoints/x",
            Some(&json!({"addr": "127.0.0.1:1", "ttl": "0s"})),
            None
        )
        .0,
        400
    );
    assert_eq!(api(cp.addr(), "GET", "/v1/watch/nobody", None, None).0, 404);
    let mut c = Client::connect(cp.addr());
    c.send(b"PUT /v1/config HTTP/1.1\r\nHost: a\r\nIf-Match: *\r\nContent-Length: 5\r\n\r\n{nope");
    assert_eq!(c.response(false).status, 400);
}

#[test]
fn dns_names_are_resolved_and_a_failing_name_keeps_the_rest() {
    let up = Upstream::fixed("found");
    let mesh = format!(
        "dns_interval: 200ms\nclusters:\n  - name: web\n    endpoints:\n      - {{ dns: \"localhost:{}\" }}\n      - {{ dns: \"ringmesh-test.invalid:80\" }}\nnodes:\n  edge-1:\n{}",
        up.addr.port(),
        listener("edge", "cluster: web")
    );
    let cp = plane(&mesh);
    let proxy = control_proxy(&[cp.addr()], "edge-1", None);
    let edge = ready(&proxy);
    assert!(
        eventually(WAIT, || body_of(edge) == (200, "found".into())),
        "the name's address never took traffic"
    );
    // The failing name may take longer to fail than the other to resolve.
    assert!(
        eventually(WAIT, || {
            get(cp.addr(), "/v1/clusters")["clusters"]["web"]["dns"][1]["error"].is_string()
        }),
        "the failing name shows no error"
    );
    let clusters = get(cp.addr(), "/v1/clusters");
    let dns = &clusters["clusters"]["web"]["dns"];
    assert!(
        dns[0]["addrs"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(up.addr.to_string()))),
        "{clusters}"
    );
    let metrics = get_text(cp.addr(), "/metrics");
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
    let proxy = control_proxy(&[cp.addr()], "edge-1", None);
    let edge = ready(&proxy);
    assert_eq!(body_of(edge), (200, "a".into()));
    let applied = proxy.version();
    // Valid for the control plane, but the address is taken on the proxy's host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let v = get(cp.addr(), "/v1/config")["version"].as_u64();
    let path = "/v1/config/nodes/edge-1/listeners/0/bind";
    let (status, r) = api(
        cp.addr(),
        "PUT",
        path,
        Some(&json!(taken.local_addr().expect("addr").to_string())),
        v,
    );
    assert_eq!(status, 200, "{r}");
    let wanted = r["version"].as_u64();
    assert!(
        eventually(WAIT, || {
            let n = &get(cp.addr(), "/v1/nodes")["nodes"]["edge-1"];
            n["last_rejection"]["version"].as_u64() == wanted
                && n["last_rejection"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot bind"))
        }),
        "{}",
        get(cp.addr(), "/v1/nodes")
    );
    assert_eq!(proxy.version(), applied, "the proxy stays on its config");
    assert_eq!(body_of(edge), (200, "a".into()));
    let metrics = get_text(proxy.admin_addr(), "/metrics");
    assert_eq!(
        metric_value(&metrics, "ringmesh_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "ringmesh_control_connected"),
        Some(1.0)
    );
    let n = &get(cp.addr(), "/v1/nodes")["nodes"]["edge-1"];
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
        "nodes:\n  edge-1:\n{}  edge-2:\n{}",
        listener("edge", "cluster: web"),
        listener("edge", "cluster: web")
    );
    let file = temp_config("mesh-converge", &format!("{}{nodes}", cluster(a.addr)));
    let cache = file.with_file_name("edge-1.snapshot.json");
    let _ = std::fs::remove_file(&cache);
    let _ = std::fs::remove_file(file.with_file_name("config.yaml.state.json"));
    let opts = ControlOptions {
        source: MeshSource::File(file.clone()),
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        state_file: None,
        store: None,
    };
    let cp = ControlPlane::start(opts.clone()).expect("control plane");
    let addr = cp.addr();
    // A second address where nothing listens: proxies try it in turn.
    let dead = free_port();
    let p1 = control_proxy(&[dead, addr], "edge-1", Some(cache.clone()));
    let p2 = control_proxy(&[addr, dead], "edge-2", None);
    let (e1, e2) = (ready(&p1), ready(&p2));
    assert_eq!(body_of(e1), (200, "a".into()));
    assert_eq!(body_of(e2), (200, "a".into()));
    assert_eq!(register(addr, "spare", "s-1", free_port(), "1h"), 200);

    cp.stop();
    assert!(eventually(WAIT, || {
        metric_value(
            &get_text(p1.admin_addr(), "/metrics"),
            "ringmesh_control_connected",
        ) == Some(0.0)
            && metric_value(
                &get_text(p2.admin_addr(), "/metrics"),
                "ringmesh_control_connected",
            ) == Some(0.0)
    }));
    for _ in 0..10 {
        assert_eq!(body_of(e1), (200, "a".into()));
        assert_eq!(body_of(e2), (200, "a".into()));
    }
    // The mesh changes while the control plane is away; it comes back on the same address.
    write_atomically(&file, &format!("{}{nodes}", cluster(b.addr)));
    let cp = ControlPlane::start(ControlOptions {
        bind: Some(addr),
        ..opts.clone()
    })
    .expect("control plane again");
    assert!(
        eventually(WAIT, || body_of(e1) == (200, "b".into())
            && body_of(e2) == (200, "b".into())),
        "{} {:?} {:?}\n{}",
        get(addr, "/v1/nodes"),
        body_of(e1),
        body_of(e2),
        get_text(p1.admin_addr(), "/metrics")
            .lines()
            .filter(|l| l.contains("control") || l.contains("config"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The registration survived the restart (state file).
    let clusters = get(addr, "/v1/clusters");
    assert_eq!(
        clusters["clusters"]["spare"]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{clusters}"
    );
    let metrics = get_text(p1.admin_addr(), "/metrics");
    assert!(metric_value(&metrics, "ringmesh_control_snapshot_version").is_some_and(|v| v > 0.0));
    assert!(metric_value(&metrics, "ringmesh_config_age_seconds").is_some());

    // Restart a proxy while the control plane is away: it serves from its cache.
    assert!(eventually(WAIT, || std::fs::read_to_string(&cache)
        .is_ok_and(|c| c.contains(&b.addr.to_string()))));
    drop(p1);
    cp.stop();
    let p1 = control_proxy(&[addr], "edge-1", Some(cache.clone()));
    let e1 = ready(&p1);
    assert_eq!(body_of(e1).1, "b");
    let ready_answer = get_text(p1.admin_addr(), "/ready");
    assert!(ready_answer.contains("ready"), "{ready_answer}");
}

#[test]
fn a_proxy_is_not_ready_before_its_first_snapshot() {
    let proxy = control_proxy(&[free_port()], "edge-1", None);
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
        "clusters:\n  - {{ name: a, endpoints: [ {{ addr: {} }} ] }}\n  - {{ name: b, endpoints: [ {{ addr: {} }} ] }}\nnodes:\n  edge-1:\n{}  edge-2:\n{}",
        a.addr,
        b.addr,
        listener("edge", &split(100, 0)),
        listener("edge", &split(100, 0)),
    );
    let cp = plane(&mesh);
    let (p1, p2) = (
        control_proxy(&[cp.addr()], "edge-1", None),
        control_proxy(&[cp.addr()], "edge-2", None),
    );
    let (e1, e2) = (ready(&p1), ready(&p2));
    let (l1, l2) = (Load::start(e1, 4, "/"), Load::start(e2, 4, "/"));
    std::thread::sleep(Duration::from_millis(300));
    // One change for the whole mesh: both nodes' splits from 100/0 to 0/100.
    let state = get(cp.addr(), "/v1/config");
    let mut doc = state["config"].clone();
    for node in ["edge-1", "edge-2"] {
        doc["nodes"][node]["listeners"][0]["routes"][0]["split"] =
            json!([{ "cluster": "a", "weight": 0 }, { "cluster": "b", "weight": 100 }]);
    }
    let (status, r) = api(
        cp.addr(),
        "PUT",
        "/v1/config",
        Some(&doc),
        state["version"].as_u64(),
    );
    assert_eq!(status, 200, "{r}");
    let version = r["version"].as_u64();
    assert!(eventually(WAIT, || {
        let n = get(cp.addr(), "/v1/nodes");
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

fn identity_proxy(cp: SocketAddr, node: &str, token: &str) -> Proxy {
    let mut source = ControlSource::parse(&cp.to_string(), node, None).expect("source");
    source.token = Some(token.to_string());
    source.identity_dir = Some(std::env::temp_dir().join(format!(
        "ringmesh-test-identity-{}-{node}",
        std::process::id()
    )));
    start_fed(source)
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
    let back = identity_proxy(cp.addr(), "back", "back-token");
    assert!(
        eventually(WAIT, || back.version() > 0),
        "{}",
        get(cp.addr(), "/v1/nodes")
    );
    let inbound = back.listener_addr("inbound").expect("inbound");
    assert_eq!(register(cp.addr(), "back", "back-1", inbound, "1h"), 200);
    let front = identity_proxy(cp.addr(), "front", "front-token");
    let intruder = identity_proxy(cp.addr(), "intruder", "intruder-token");
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
    let mut c = Client::connect(cp.addr());
    c.send(b"POST /v1/nodes/front/certificate HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(c.response(false).status, 401);

    // Under load: certificates renew at half their 4 s life, and the CA rotates.
    let load = Load::start(fe, 2, "/");
    let issued_before = get(cp.addr(), "/v1/ca")["issued"].as_u64().expect("issued");
    let first_issuer = get(cp.addr(), "/v1/ca")["issuer"].clone();
    let (status, r) = api(cp.addr(), "POST", "/v1/ca/rotate", None, None);
    assert_eq!(status, 200, "{r}");
    assert_eq!(get(cp.addr(), "/v1/ca")["rotating"], true);
    // Every proxy took the new bundle, so the new authority issues; the old one is retired once
    // the certificates it issued have expired.
    assert!(
        eventually(WAIT, || {
            let ca = get(cp.addr(), "/v1/ca");
            ca["rotating"] == false && ca["issuer"] != first_issuer && ca["previous"].is_null()
        }),
        "{}",
        get(cp.addr(), "/v1/ca")
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
    let issued = get(cp.addr(), "/v1/ca")["issued"].as_u64().expect("issued");
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

/// An etcd server of the test's own, on free loopback ports, removed when dropped. `None`
/// (the test skipped) when etcd is not installed, unless `RINGMESH_REQUIRE_TOOLS=1`.
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
        source: MeshSource::Text(yaml.to_string()),
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        state_file: None,
        store: Some(StoreOptions {
            etcd: Cluster::plain(vec![etcd.client.to_string()]),
            prefix: "/ringmesh-test/".into(),
        }),
    })
    .expect("replica starts")
}

fn endpoint_ids(cp: SocketAddr, cluster: &str) -> Vec<String> {
    let v = get(cp, "/v1/clusters");
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

fn leader(cp: SocketAddr) -> bool {
    metric_value(&get_text(cp, "/metrics"), "ringmesh_control_leader") == Some(1.0)
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
        "clusters:\n  - {{ name: web, endpoints: [] }}\n  - {{ name: blue, endpoints: [ {{ addr: {} }} ] }}\n  - {{ name: named, endpoints: [ {{ dns: \"localhost:{}\" }} ] }}\nnodes:\n  edge-1:\n{}  edge-2:\n{}",
        blue.addr,
        a.addr.port(),
        listener("edge", "cluster: web"),
        listener("edge", "cluster: web")
    );
    let r1 = replica(&mesh, &etcd);
    // The second replica's file differs: the store, already seeded, wins.
    let r2 = replica(&mesh.replace("name: blue", "name: blue2"), &etcd);
    let (x, y) = (r1.addr(), r2.addr());
    assert_eq!(
        get(y, "/v1/config")["config"]["clusters"][1]["name"],
        "blue",
        "the second replica serves the store's desired state"
    );
    let p1 = control_proxy(&[x, y], "edge-1", None);
    let p2 = control_proxy(&[y, x], "edge-2", None);
    let (e1, e2) = (ready(&p1), ready(&p2));

    // Registered on one replica, served by both.
    assert_eq!(register(x, "web", "a-1", a.addr, "10s"), 200);
    assert!(
        eventually(WAIT, || endpoint_ids(y, "web") == ["a-1"]),
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
            let (n1, n2) = (get(x, "/v1/nodes"), get(y, "/v1/nodes"));
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
        eventually(WAIT, || endpoint_ids(x, "named")
            == endpoint_ids(y, "named")
            && !endpoint_ids(y, "named").is_empty()),
        "DNS results are not shared"
    );
    assert!(
        eventually(WAIT, || leader(x) != leader(y)),
        "not exactly one leader"
    );
    // The mesh CA is one.
    assert_eq!(get(x, "/v1/ca")["issuer"], get(y, "/v1/ca")["issuer"]);

    // Two changes against the same version on two replicas: one wins, the other is refused.
    let v = get(x, "/v1/config")["version"].as_u64().expect("version");
    let route = "/v1/config/nodes/edge-1/listeners/0/routes/0/cluster";
    assert_eq!(api(x, "PUT", route, Some(&json!("blue")), Some(v)).0, 200);
    let (status, body) = api(y, "PUT", route, Some(&json!("web")), Some(v));
    assert_eq!(status, 409, "a racing change was not refused: {body}");
    assert_eq!(
        get(y, route)["value"],
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
    assert_eq!(register(y, "web", "a-1", a.addr, "10s"), 200);
    assert_eq!(register(y, "web", "b-1", b.addr, "2s"), 200);
    assert_eq!(endpoint_ids(y, "web"), ["a-1", "b-1"]);
    assert!(
        eventually(WAIT, || endpoint_ids(x, "web") == ["a-1"]
            && endpoint_ids(y, "web") == ["a-1"]),
        "an expired registration stayed"
    );

    // etcd goes away: the replicas serve what they have, refuse changes, and say so; when it
    // returns they take changes again.
    etcd.kill();
    let store_up = |cp: SocketAddr| {
        metric_value(
            &get_text(cp, "/metrics"),
            "ringmesh_control_source_up{source=\"etcd\",name=\"store\"}",
        )
    };
    assert!(
        eventually(WAIT, || store_up(x) == Some(0.0)
            && store_up(y) == Some(0.0)),
        "a lost store does not show"
    );
    let v = get(y, "/v1/config")["version"].as_u64().expect("version");
    assert_eq!(
        api(y, "PUT", route, Some(&json!("web")), Some(v)).0,
        503,
        "a change was taken without the store"
    );
    assert_eq!(body_of(e1), (200, "blue".into()));
    assert_eq!(body_of(e2), (200, "a".into()));
    etcd.run();
    assert!(
        eventually(WAIT, || store_up(x) == Some(1.0)
            && store_up(y) == Some(1.0)),
        "the replicas did not follow the store again"
    );

    // One replica goes: its proxy moves to the other, and nothing it held is lost.
    let was_leader = leader(x);
    r1.stop();
    let keep_alive = |cp: SocketAddr| assert_eq!(register(cp, "web", "a-1", a.addr, "10s"), 200);
    keep_alive(y);
    assert!(
        eventually(WAIT, || leader(y)),
        "the remaining replica did not take the lead (the lost one led: {was_leader})"
    );
    let v = get(y, "/v1/config")["version"].as_u64().expect("version");
    assert_eq!(api(y, "PUT", route, Some(&json!("web")), Some(v)).0, 200);
    assert!(
        eventually(WAIT, || body_of(e1) == (200, "a".into())),
        "the proxy of the lost replica did not converge through the other"
    );
    // A new replica starts from the store: the same registrations, desired state and CA.
    let r3 = replica("clusters: []\nnodes: {}\n", &etcd);
    let z = r3.addr();
    keep_alive(z);
    assert_eq!(endpoint_ids(z, "web"), ["a-1"]);
    assert_eq!(get(z, route)["value"], "web");
    assert_eq!(get(z, "/v1/ca")["issuer"], get(y, "/v1/ca")["issuer"]);
    // It knows the proxies run their current config, though it numbers it anew.
    assert!(
        eventually(WAIT, || {
            let nodes = get(z, "/v1/nodes");
            nodes["nodes"]["edge-1"]["in_sync"] == true
                && nodes["nodes"]["edge-2"]["in_sync"] == true
        }),
        "a new replica does not know the proxies are in sync: {} (the other replica: {})",
        get(z, "/v1/nodes"),
        get(y, "/v1/nodes")
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
        "clusters:\n  - {{ name: web, endpoints: [] }}\nnodes:\n  edge-1:\n{}",
        listener("edge", "cluster: web")
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
            source: MeshSource::Text(mesh.clone()),
            bind: Some("127.0.0.1:0".parse().expect("addr")),
            state_file: None,
            store: Some(StoreOptions {
                etcd,
                prefix: "/ringmesh-tls/".into(),
            }),
        })
    };
    // etcd asks for a client certificate: without one, a replica does not start, and says why.
    let errors = start(false).expect_err("started without a client certificate");
    assert!(errors.join(" ").contains("TLS"), "{errors:?}");
    let (r1, r2) = (
        start(true).expect("replica starts"),
        start(true).expect("replica starts"),
    );
    assert_eq!(register(r1.addr(), "web", "a-1", up.addr, "10s"), 200);
    assert!(
        eventually(WAIT, || endpoint_ids(r2.addr(), "web") == ["a-1"]),
        "registration not replicated over TLS"
    );
    let p = control_proxy(&[r2.addr()], "edge-1", None);
    let edge = ready(&p);
    assert!(
        eventually(WAIT, || body_of(edge) == (200, "a".into())),
        "the proxy of the other replica does not route to the registration"
    );
}
