//! The control plane trusts nobody by default. Every attack a caller on the same host, another
//! node, or a web page could try is made here, over real sockets, and each gets its 401, 403,
//! 415 or 422 and changes nothing: no state, no file, no certificate, no traffic.

use std::net::SocketAddr;
use std::time::Duration;

use ringmesh_control::mesh::ca::sha256_hex;
use ringmesh_control::mesh::{ApiTls, ControlOptions, ControlPlane};
use ringmesh_tests::mesh::{At, Who, bootstrap, fed, node, plane, source, token_of};
use ringmesh_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn listener(cluster: &str) -> String {
    format!(
        "    listeners:\n      - name: edge\n        bind: 127.0.0.1:0\n        routes: [ {{ match: {{ path_prefix: / }}, cluster: {cluster} }} ]\n"
    )
}

/// Cluster `web` (one endpoint, `back`'s identity a server of it), cluster `other` (no
/// servers), and nodes `edge`, `back` and `spy`.
fn mesh(up: SocketAddr) -> String {
    format!(
        "clusters:
  - {{ name: web, servers: [ \"spiffe://mesh.local/ns/default/sa/back\" ], endpoints: [ {{ addr: {up} }} ] }}
  - {{ name: other, endpoints: [] }}
nodes:
{}{}{}",
        node("edge", &listener("web")),
        node("back", &listener("other")),
        node("spy", "    listeners: []\n"),
    )
}

fn kind(v: &Value) -> Option<&str> {
    v["kind"].as_str()
}

fn body_of(edge: SocketAddr) -> (u16, String) {
    let r = one_shot(
        edge,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    );
    (r.status, r.text())
}

#[test]
fn strangers_and_nodes_cannot_change_the_mesh_mint_identities_or_steal_traffic() {
    let up = Upstream::fixed("legit");
    let rogue = Upstream::fixed("rogue");
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let anonymous = Who::anonymous(&at.pin);
    let as_edge = Who::with_certificate(&at.pin, bootstrap(&at, "spy").expect("spy's certificate"));
    let proxy = fed(source(std::slice::from_ref(&at), "edge", None));
    assert!(eventually(WAIT, || proxy.version() > 0));
    let edge = proxy.listener_addr("edge").expect("edge");
    let before = at.get("/v1/config");
    let issued = at.get("/v1/ca")["issued"].as_u64();

    // Set a rogue node's token (If-Match: *), then get it a certificate for any identity.
    let rogue_node = json!({
        "identity": { "ns": "default", "sa": "admin" },
        "token_sha256": sha256_hex(b"mine"),
        "listeners": [],
    });
    for (who, status, why) in [
        (&anonymous, 401, "unauthenticated"),
        (&as_edge, 403, "admin-only"),
        (&Who::bearer(&at.pin, "guess"), 401, "bad-token"),
        (&Who::bearer(&at.pin, &token_of("back")), 401, "bad-token"),
    ] {
        let (s, v) = at.call_as(
            who,
            "PUT",
            "/v1/config/nodes/rogue",
            Some(&rogue_node),
            Some(0),
        );
        let (s2, v2) = at.raw(
            who,
            &format!(
                "PUT /v1/config/nodes/rogue HTTP/1.1\r\nHost: {}\r\nIf-Match: *\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
                at.addr
            ),
        ).expect("answered");
        assert_eq!((s, kind(&v)), (status, Some(why)), "{v}");
        assert!(matches!(s2, 401 | 403), "{v2}");
    }
    // A certificate for another node's identity: not with a guessed token, not with a node's
    // own certificate, not with another node's token.
    let (_, public) = ringmesh_control::mesh::ca::new_key().expect("key");
    let key = json!({ "public_key": public });
    for (who, path, status) in [
        (&anonymous, "/v1/nodes/back/certificate", 401),
        (
            &Who::bearer(&at.pin, "guess"),
            "/v1/nodes/back/certificate",
            401,
        ),
        (
            &Who::bearer(&at.pin, &token_of("spy")),
            "/v1/nodes/back/certificate",
            401,
        ),
        (&as_edge, "/v1/nodes/back/certificate", 403),
        (&Who::admin(&at.pin), "/v1/nodes/back/certificate", 403),
    ] {
        let (s, v) = at.call_as(who, "POST", path, Some(&key), None);
        assert_eq!(s, status, "{path}: {v}");
    }
    // Registering an endpoint of one's own into a live cluster.
    let register = |who: &Who, cluster: &str| {
        let body = json!({ "addr": rogue.addr.to_string(), "ttl": "1h" });
        at.call_as(
            who,
            "PUT",
            &format!("/v1/clusters/{cluster}/endpoints/x"),
            Some(&body),
            None,
        )
    };
    assert_eq!(register(&anonymous, "web").0, 401);
    let (s, v) = register(&as_edge, "web");
    assert_eq!((s, kind(&v)), (403, Some("not-a-server")), "{v}");
    // Rotating the CA, reading the desired state (token hashes), the nodes, the metrics.
    for (who, method, path) in [
        (&anonymous, "POST", "/v1/ca/rotate"),
        (&as_edge, "POST", "/v1/ca/rotate"),
        (&anonymous, "GET", "/v1/config"),
        (&as_edge, "GET", "/v1/config"),
        (&as_edge, "GET", "/v1/nodes"),
        (&anonymous, "GET", "/metrics"),
        (&anonymous, "GET", "/v1/clusters"),
    ] {
        let (s, _) = at.call_as(
            who,
            method,
            path,
            Some(&json!({})).filter(|_| method == "POST"),
            None,
        );
        assert!(matches!(s, 401 | 403), "{method} {path}: {s}");
    }
    // Nothing changed: the desired state, the CA, the certificates issued.
    let after = at.get("/v1/config");
    assert_eq!(after["config"], before["config"]);
    assert_eq!(at.get("/v1/ca")["issued"].as_u64(), issued);
    assert_eq!(at.get("/v1/ca")["rotating"], false);
    let clusters = at.get("/v1/clusters");
    assert_eq!(
        clusters["clusters"]["web"]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // The refusals were counted by route and reason.
    let metrics = at.text("/metrics");
    assert!(
        metric_value(
            &metrics,
            "ringmesh_control_api_refused_total{route=\"PUT /v1/config\",reason=\"unauthenticated\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"not-a-server\""), "{metrics}");
    // The traffic of the proxy using the cluster never went to the rogue endpoint.
    for _ in 0..20 {
        assert_eq!(body_of(edge), (200, "legit".into()));
    }
    assert_eq!(rogue.accepted(), 0);
}

#[test]
fn web_pages_cannot_drive_the_api() {
    let up = Upstream::fixed("a");
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let admin = Who::admin(&at.pin);
    let before = at.get("/v1/config")["config"].clone();
    let token = ringmesh_tests::mesh::ADMIN_TOKEN;
    // Even with the admin's token (a page that learned it cannot use it from a browser).
    for (extra, ctype, host, status, why) in [
        ("", "text/plain", at.addr.to_string(), 415, "not-json"),
        (
            "",
            "application/x-www-form-urlencoded",
            at.addr.to_string(),
            415,
            "not-json",
        ),
        (
            "Origin: http://evil.example\r\n",
            "application/json",
            at.addr.to_string(),
            403,
            "origin-refused",
        ),
        (
            "",
            "application/json",
            format!("evil.example:{}", at.addr.port()),
            403,
            "host-not-allowed",
        ),
        (
            "",
            "application/json",
            "localhost.evil.example".into(),
            403,
            "host-not-allowed",
        ),
    ] {
        let body = r#"{"listeners": []}"#;
        let raw = format!(
            "PUT /v1/config/nodes/rogue HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n{extra}If-Match: *\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (s, v) = at.raw(&admin, &raw).expect("answered");
        assert_eq!((s, kind(&v)), (status, Some(why)), "{raw}: {v}");
    }
    // DNS rebinding cannot read either.
    let raw = format!(
        "GET /v1/config HTTP/1.1\r\nHost: rebound.example\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let (s, v) = at.raw(&admin, &raw).expect("answered");
    assert_eq!(s, 403, "{v}");
    assert!(v.get("config").is_none());
    assert_eq!(at.get("/v1/config")["config"], before);
    // Plain text to the TLS port gets no HTTP answer at all.
    let mut c = Client::connect(at.addr);
    c.send(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(c.try_response(false).is_err(), "answered in plain text");
}

#[test]
fn a_node_acts_for_itself_only() {
    let up = Upstream::fixed("a");
    let other = Upstream::fixed("b");
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let edge = Who::with_certificate(&at.pin, bootstrap(&at, "edge").expect("edge"));
    let back = Who::with_certificate(&at.pin, bootstrap(&at, "back").expect("back"));
    // Each reads and reports for itself, not for the other.
    let (s, v) = at.call_as(&edge, "GET", "/v1/watch/edge?wait=1s", None, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["node"], "edge");
    for (who, other_node) in [(&edge, "back"), (&back, "edge")] {
        let (s, v) = at.call_as(who, "GET", &format!("/v1/watch/{other_node}"), None, None);
        assert_eq!((s, kind(&v)), (403, Some("other-node")), "{v}");
        let report = json!({ "version": 1, "error": "forged" });
        let path = format!("/v1/nodes/{other_node}/report");
        let (s, v) = at.call_as(who, "POST", &path, Some(&report), None);
        assert_eq!((s, kind(&v)), (403, Some("other-node")), "{v}");
    }
    let nodes = at.get("/v1/nodes");
    assert!(
        nodes["nodes"]["edge"]["last_rejection"].is_null(),
        "{nodes}"
    );
    assert!(
        nodes["nodes"]["back"]["last_rejection"].is_null(),
        "{nodes}"
    );
    // back serves `web`: it registers there, not into `other`; it cannot touch an admin's
    // registration; it may remove its own.
    let reg = |addr: SocketAddr| json!({ "addr": addr.to_string(), "ttl": "1h" });
    let path = |c: &str, id: &str| format!("/v1/clusters/{c}/endpoints/{id}");
    let (s, v) = at.call_as(
        &back,
        "PUT",
        &path("web", "b-1"),
        Some(&reg(other.addr)),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // Only at its own address: not at another host's, not at a metadata service.
    for addr in ["10.1.2.3:80", "169.254.169.254:80"] {
        let body = json!({ "addr": addr });
        let (s, v) = at.call_as(&back, "PUT", &path("web", "b-x"), Some(&body), None);
        assert_eq!((s, kind(&v)), (403, Some("not-own-address")), "{v}");
    }
    let (s, v) = at.call_as(
        &back,
        "PUT",
        &path("other", "b-1"),
        Some(&reg(other.addr)),
        None,
    );
    assert_eq!((s, kind(&v)), (403, Some("not-a-server")), "{v}");
    assert_eq!(
        at.call("PUT", &path("web", "admins"), Some(&reg(up.addr)), None)
            .0,
        200
    );
    for method in ["PUT", "DELETE"] {
        let body = (method == "PUT").then(|| reg(other.addr));
        let (s, v) = at.call_as(&back, method, &path("web", "admins"), body.as_ref(), None);
        assert_eq!((s, kind(&v)), (403, Some("not-the-owner")), "{method}: {v}");
    }
    let (s, v) = at.call_as(&edge, "DELETE", &path("web", "b-1"), None, None);
    assert!(matches!(s, 403), "{v}");
    let (s, v) = at.call_as(&back, "DELETE", &path("web", "b-1"), None, None);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn two_proxies_over_tls_each_on_its_own_node() {
    let up = Upstream::fixed("a");
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let (p1, p2) = (
        fed(source(std::slice::from_ref(&at), "edge", None)),
        fed(source(std::slice::from_ref(&at), "back", None)),
    );
    assert!(
        eventually(WAIT, || p1.version() > 0 && p2.version() > 0),
        "{}",
        at.get("/v1/nodes")
    );
    let e1 = p1.listener_addr("edge").expect("edge");
    assert_eq!(body_of(e1), (200, "a".into()));
    assert!(eventually(WAIT, || {
        let n = at.get("/v1/nodes");
        n["nodes"]["edge"]["in_sync"] == true && n["nodes"]["back"]["in_sync"] == true
    }));
    // Both tokens are spent now: a second use (another key) is refused, and logged.
    for n in ["edge", "back"] {
        let (s, v) = bootstrap(&at, n).expect_err("a token works once");
        assert_eq!((s, kind(&v)), (403, Some("token-spent")), "{v}");
    }
}

#[test]
fn a_bootstrap_token_is_good_once_for_one_key_and_may_expire() {
    let up = Upstream::fixed("a");
    let expired = format!(
        "  late:\n    identity: {{ ns: default, sa: late }}\n    token_sha256: {}\n    token_expires: 2020-01-01T00:00:00Z\n    listeners: []\n",
        sha256_hex(token_of("late").as_bytes())
    );
    let cp = plane(&format!("{}{expired}", mesh(up.addr)));
    let at = At::of(&cp);
    let (key, public) = ringmesh_control::mesh::ca::new_key().expect("key");
    let ask = |token: &str, public: &str| {
        at.call_as(
            &Who::bearer(&at.pin, token),
            "POST",
            "/v1/nodes/edge/certificate",
            Some(&json!({ "public_key": public })),
            None,
        )
    };
    let (s, first) = ask(&token_of("edge"), &public);
    assert_eq!(s, 200, "{first}");
    // The same request again (its answer lost on the way): answered again.
    let (s, again) = ask(&token_of("edge"), &public);
    assert_eq!(s, 200, "{again}");
    // Another key with the same token: refused.
    let (_, other) = ringmesh_control::mesh::ca::new_key().expect("key");
    let (s, v) = ask(&token_of("edge"), &other);
    assert_eq!((s, kind(&v)), (403, Some("token-spent")), "{v}");
    // The certificate renews itself over mTLS, with no token.
    let ck = ringmesh_core::tls::certified_key_from_pem(
        first["cert"].as_str().expect("cert").as_bytes(),
        key.as_bytes(),
    )
    .expect("key pair");
    let (_, renewed_key) = ringmesh_control::mesh::ca::new_key().expect("key");
    let (s, v) = at.call_as(
        &Who::with_certificate(&at.pin, ck),
        "POST",
        "/v1/nodes/edge/certificate",
        Some(&json!({ "public_key": renewed_key })),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // An expired token gets nothing.
    let (s, v) = at.call_as(
        &Who::bearer(&at.pin, &token_of("late")),
        "POST",
        "/v1/nodes/late/certificate",
        Some(&json!({ "public_key": other })),
        None,
    );
    assert_eq!((s, kind(&v)), (403, Some("token-expired")), "{v}");
}

#[test]
fn no_accepted_call_makes_a_proxy_refuse_its_snapshot() {
    let up = Upstream::fixed("a");
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let proxy = fed(source(std::slice::from_ref(&at), "edge", None));
    assert!(eventually(WAIT, || proxy.version() > 0));
    let reg = |v: Value| at.call("PUT", "/v1/clusters/web/endpoints/r", Some(&v), None);
    let a = up.addr.to_string();
    // Every registration a proxy would refuse is refused here, naming the field.
    for (body, field) in [
        (json!({ "addr": a, "weight": 0 }), "weight"),
        (json!({ "addr": a, "weight": 10_001 }), "weight"),
        (json!({ "addr": a, "weight": -1 }), "weight"),
        (json!({ "addr": a, "weight": "1" }), "weight"),
        (json!({ "addr": "127.0.0.1:0" }), "addr"),
        (json!({ "addr": "0.0.0.0:80" }), "addr"),
        (json!({ "addr": "[::]:80" }), "addr"),
        (json!({ "addr": "224.0.0.1:80" }), "addr"),
        (json!({ "addr": "nowhere:80" }), "addr"),
        (json!({ "addr": a, "zone": "" }), "zone"),
        (json!({ "addr": a, "zone": "z".repeat(129) }), "zone"),
        (json!({ "addr": a, "zone": "a\nb" }), "zone"),
        (json!({ "addr": a, "ttl": "2h" }), "ttl"),
        (json!({ "addr": a, "ttl": 5 }), "ttl"),
        (json!({ "addr": a, "priority": 1 }), "priority"),
        (json!({ "addr": a, "owner": "edge" }), "owner"),
    ] {
        let (s, v) = reg(body.clone());
        assert_eq!(s, 422, "{body}: {v}");
        assert!(
            v["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e.as_str().is_some_and(|e| e.starts_with(field))),
            "{body}: {v}"
        );
    }
    // And desired-state changes: a file for the access log, a weight the proxy refuses.
    let v = at.get("/v1/config")["version"].as_u64();
    let log = json!({ "path": "/tmp/ringmesh-pwned.log" });
    let (s, r) = at.call(
        "PUT",
        "/v1/config/nodes/edge/listeners/0/access_log",
        Some(&log),
        v,
    );
    assert_eq!(s, 422, "{r}");
    assert!(!std::path::Path::new("/tmp/ringmesh-pwned.log").exists());
    let (s, r) = at.call(
        "PUT",
        "/v1/config/nodes/edge/listeners/0/routes/0",
        Some(&json!({ "match": { "path_prefix": "/" }, "split": [ { "cluster": "web", "weight": 0 } ] })),
        v,
    );
    assert_eq!(s, 422, "{r}");
    // What is taken, the proxy applies.
    for (id, body) in [
        ("w1", json!({ "addr": a, "weight": 1 })),
        (
            "w2",
            json!({ "addr": "127.0.0.2:9", "weight": 10_000, "zone": "dc-2" }),
        ),
        ("w3", json!({ "addr": "[::1]:9", "ttl": "1h" })),
    ] {
        let path = format!("/v1/clusters/web/endpoints/{id}");
        assert_eq!(at.call("PUT", &path, Some(&body), None).0, 200, "{body}");
    }
    assert!(
        eventually(WAIT, || {
            let n = &at.get("/v1/nodes")["nodes"]["edge"];
            n["in_sync"] == true && n["last_rejection"].is_null()
        }),
        "{}",
        at.get("/v1/nodes")
    );
}

#[test]
fn plaintext_must_be_asked_for_on_both_sides_and_issues_no_certificates() {
    use ringmesh_control::mesh::agent::ControlSource;
    use ringmesh_control::mesh::client::Trust;
    // The proxy side: cleartext needs the flag; TLS needs a way to verify the control plane.
    assert!(ControlSource::parse("http://127.0.0.1:9900", "n", None, None, false).is_err());
    assert!(ControlSource::parse("127.0.0.1:9900", "n", None, None, false).is_err());
    let pin = Some(Trust::Pin("00".repeat(32)));
    assert!(ControlSource::parse("https://127.0.0.1:9900", "n", None, pin.clone(), true).is_err());
    assert!(ControlSource::parse("http://127.0.0.1:9900", "n", None, None, true).is_ok());
    assert!(ControlSource::parse("127.0.0.1:9900", "n", None, pin, false).is_ok());
    // The control plane's side: in cleartext, watches work, certificates are refused.
    let up = Upstream::fixed("a");
    let cp = ControlPlane::start(ControlOptions {
        tls: ApiTls::Plaintext,
        ..ringmesh_tests::mesh::options(&mesh(up.addr))
    })
    .expect("starts");
    let raw = |req: &str| {
        let mut c = Client::connect(cp.addr());
        c.send(req.as_bytes());
        c.response(false)
    };
    let host = cp.addr();
    let r = raw(&format!(
        "GET /v1/watch/edge?wait=1s HTTP/1.1\r\nHost: {host}\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    let body = r#"{"public_key":"04"}"#;
    let r = raw(&format!(
        "POST /v1/nodes/edge/certificate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token_of("edge"),
        body.len()
    ));
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (403, Some("tls-required"))
    );
    // Admin calls still need the admin's token.
    let r = raw(&format!("GET /v1/config HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    assert_eq!(r.status, 401);
}

#[test]
fn the_state_file_and_an_identity_directory_are_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let up = Upstream::fixed("a");
    let file = temp_config(
        "trust-state",
        &format!("{}{}", ringmesh_tests::mesh::admin_section(), mesh(up.addr)),
    );
    let state = file.with_file_name("trust.state.json");
    let _ = std::fs::remove_file(&state);
    let cp = ControlPlane::start(ControlOptions {
        source: ringmesh_control::mesh::MeshSource::File(file.clone()),
        state_file: Some(state.clone()),
        ..ringmesh_tests::mesh::options("")
    })
    .expect("starts");
    let at = At::of(&cp);
    at.call(
        "PUT",
        "/v1/clusters/web/endpoints/s",
        Some(&json!({ "addr": "127.0.0.1:9" })),
        None,
    );
    assert!(eventually(WAIT, || state.exists()));
    let mode = std::fs::metadata(&state)
        .expect("state")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the state file (CA keys) is readable by others: {mode:o}"
    );
    drop(cp);
    // A proxy refuses an identity directory another user owns (as root, the test makes one).
    let dir = std::env::temp_dir().join(format!("ringmesh-foreign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("mode");
    let chowned = std::process::Command::new("chown")
        .args(["65534:65534"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if chowned && std::fs::metadata(&dir).expect("dir").uid() == 65534 {
        let e =
            ringmesh_control::mesh::keep::Keep::new("n", Some(dir.clone())).expect_err("refused");
        assert!(e.to_string().contains("owned by user 65534"), "{e}");
    }
    // A path through a symbolic link another user owns is refused.
    let link = std::env::temp_dir().join(format!("ringmesh-foreign-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::fs::create_dir_all(&dir).expect("dir");
    std::os::unix::fs::symlink(&dir, &link).expect("link");
    let linked = std::process::Command::new("chown")
        .args(["-h", "65534:65534"])
        .arg(&link)
        .status()
        .is_ok_and(|s| s.success());
    if linked && std::fs::symlink_metadata(&link).expect("link").uid() == 65534 {
        let e = ringmesh_control::mesh::keep::Keep::new("n", Some(link.join("id")))
            .expect_err("refused");
        assert!(
            e.to_string().contains("symbolic link owned by user 65534"),
            "{e}"
        );
    }
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An operator's PKI: a root, and intermediates it signed (each written as its certificate
/// then the root, with its PKCS#8 key).
struct OperatorPki {
    root: rcgen::Certificate,
    root_key: rcgen::KeyPair,
    dir: std::path::PathBuf,
}

impl OperatorPki {
    fn new(name: &str) -> OperatorPki {
        let dir = std::env::temp_dir().join(format!("ringmesh-opca-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let root_key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "operator root");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let root = p.self_signed(&root_key).expect("root");
        std::fs::write(dir.join("root.pem"), root.pem()).expect("write");
        OperatorPki {
            root,
            root_key,
            dir,
        }
    }

    /// An intermediate: the paths of its certificate file (it, then the root) and key file.
    fn intermediate(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("operator {name}"));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p
            .signed_by(&key, &self.root, &self.root_key)
            .expect("intermediate");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, format!("{}{}", cert.pem(), self.root.pem())).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    fn root_pem(&self) -> Vec<u8> {
        self.root.pem().into_bytes()
    }
}

impl Drop for OperatorPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the chain in `pem` (leaf first) verifies against `root` alone, for `name`.
fn chains_to(pem: &str, root: &[u8], name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("pem");
    let roots = ringmesh_core::tls::roots_from_pem(root).expect("root");
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        ringmesh_core::tls::provider(),
    )
    .build()
    .expect("verifier");
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    v.verify_server_cert(
        &certs[0],
        &certs[1..],
        &name,
        &[],
        rustls::pki_types::UnixTime::now(),
    )
    .is_ok()
}

#[test]
fn an_operators_ca_issues_and_a_new_one_takes_over_with_overlap() {
    use ringmesh_control::mesh::client::Trust;
    let pki = OperatorPki::new("byo");
    let (c1, k1) = pki.intermediate("first");
    let (c2, k2) = pki.intermediate("second");
    let up = Upstream::fixed("a");
    let ca = |c: &std::path::Path, k: &std::path::Path| {
        format!(
            "ca: {{ cert: {}, key: {}, cert_ttl: 3s, rotation_grace: 1m }}\n",
            c.display(),
            k.display()
        )
    };
    let admins = ringmesh_tests::mesh::admin_section();
    let file = temp_config(
        "byo-ca",
        &format!("{admins}{}{}", ca(&c1, &k1), mesh(up.addr)),
    );
    // The state file beside it may be an earlier run's (its process had the same id): the
    // tokens it spent would be refused.
    let _ = std::fs::remove_file(format!("{}.state.json", file.display()));
    let cp = ControlPlane::start(ControlOptions {
        source: ringmesh_control::mesh::MeshSource::File(file.clone()),
        state_file: None,
        ..ringmesh_tests::mesh::options("")
    })
    .expect("starts");
    let mut at = At::of(&cp);
    // Issued certificates chain to the operator's root (through the intermediate sent along).
    let (_, public) = ringmesh_control::mesh::ca::new_key().expect("key");
    let (s, v) = at.call_as(
        &Who::bearer(&at.pin, &token_of("spy")),
        "POST",
        "/v1/nodes/spy/certificate",
        Some(&json!({ "public_key": public })),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let cert = v["cert"].as_str().expect("cert");
    assert!(
        chains_to(cert, &pki.root_pem(), "spy.default.mesh.local"),
        "{cert}"
    );
    // A proxy that trusts the operator's root (not the mesh CA) reaches the control plane.
    let mut s = source(std::slice::from_ref(&at), "edge", None);
    s.trust = Trust::Ca(pki.root_pem());
    let proxy = fed(s);
    assert!(
        eventually(WAIT, || proxy.version() > 0),
        "{}",
        at.get("/v1/nodes")
    );
    let edge = proxy.listener_addr("edge").expect("edge");
    assert_eq!(body_of(edge), (200, "a".into()));
    // The API may not name files on the control plane's host (not even an admin), whatever
    // they hold: not another CA, not /dev/zero.
    let version = at.get("/v1/config")["version"].as_u64();
    for (cert, key) in [
        (c2.display().to_string(), k2.display().to_string()),
        ("/dev/zero".to_string(), k1.display().to_string()),
    ] {
        let bogus = json!({ "cert": cert, "key": key });
        let (s, r) = at.call("PUT", "/v1/config/ca", Some(&bogus), version);
        assert_eq!(s, 422, "{r}");
        assert!(
            r["errors"][0]
                .as_str()
                .is_some_and(|e| e.starts_with("ca.cert")),
            "{r}"
        );
    }
    // The mesh file names a new operator CA with a key that does not match: refused, the
    // state in force stays.
    write_atomically(&file, &format!("{admins}{}{}", ca(&c2, &k1), mesh(up.addr)));
    assert!(eventually(WAIT, || {
        metric_value(
            &at.text("/metrics"),
            "ringmesh_control_source_up{source=\"file\",name=\"mesh\"}",
        ) == Some(0.0)
    }));
    // Then with its key: trusted first, then issuing, and the first retired once what it
    // issued has expired; the proxy never stops serving.
    let first = at.get("/v1/ca")["issuer"].clone();
    at.learn();
    write_atomically(&file, &format!("{admins}{}{}", ca(&c2, &k2), mesh(up.addr)));
    assert!(eventually(WAIT, || at.get("/v1/ca")["rotating"] == true
        || at.get("/v1/ca")["issuer"] != first));
    at.learn();
    let load = Load::start(edge, 2, "/");
    assert!(
        eventually(Duration::from_secs(30), || {
            let ca = at.get("/v1/ca");
            ca["issuer"] != first && ca["previous"].is_null()
        }),
        "{}",
        at.get("/v1/ca")
    );
    std::thread::sleep(Duration::from_secs(2));
    let counts = load.stop();
    assert_eq!(
        count_of(&counts, 200, "a"),
        counts.values().sum::<u64>(),
        "{counts:?}"
    );
    let authorities = at.get("/v1/ca")["authorities"].clone();
    assert_eq!(authorities[0]["operator"], true, "{authorities}");
}

#[test]
fn the_api_may_serve_the_operators_certificate_and_takes_a_new_one_without_a_restart() {
    use ringmesh_control::mesh::client::Trust;
    use ringmesh_tests::tls::{Pki, TlsClient};
    let pki = Pki::new("api-cert");
    let first = pki.leaf("api", &["127.0.0.1"], false);
    let up = Upstream::fixed("a");
    let cp = ControlPlane::start(ControlOptions {
        tls: ApiTls::Files {
            cert: first.cert.clone(),
            key: first.key.clone(),
        },
        ..ringmesh_tests::mesh::options(&mesh(up.addr))
    })
    .expect("starts");
    let presented = || {
        let config = pki.client_config(&["http/1.1"]);
        TlsClient::connect(cp.addr(), "127.0.0.1", &config)
            .ok()
            .and_then(|c| c.peer_certificate())
    };
    assert_eq!(presented(), Some(first.der.clone()));
    // A proxy that trusts the operator's CA is served, and still proves its node by mTLS.
    let ca = std::fs::read(pki.ca_file()).expect("ca");
    let mut s = source(&[At::of(&cp)], "edge", None);
    s.trust = Trust::Ca(ca.clone());
    let proxy = fed(s);
    assert!(eventually(WAIT, || proxy.version() > 0));
    // New files: served from the next handshakes on.
    let second = pki.leaf("api-next", &["127.0.0.1"], false);
    std::fs::copy(&second.cert, &first.cert).expect("copy");
    std::fs::copy(&second.key, &first.key).expect("copy");
    assert!(eventually(WAIT, || presented() == Some(second.der.clone())));
    // A pin of the mesh CA does not verify the operator's certificate.
    let (s, _) = At::of(&cp)
        .raw(
            &Who::anonymous(cp.ca_pin()),
            "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .map_or((0, Value::Null), |r| r);
    assert_eq!(s, 0, "a client pinning another CA was served");
}

#[test]
fn guessing_tokens_is_slowed_down_and_an_admin_identity_is_no_nodes() {
    let up = Upstream::fixed("a");
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let mut codes = Vec::new();
    for i in 0..25 {
        let who = Who::bearer(&at.pin, &format!("guess-{i}"));
        codes.push(at.call_as(&who, "GET", "/v1/config", None, None).0);
    }
    assert_eq!(&codes[..20], &[401; 20]);
    assert_eq!(&codes[20..], &[429; 5], "{codes:?}");
    // Even the right token waits out the window from that address.
    assert_eq!(at.call("GET", "/v1/config", None, None).0, 429);
    // A bootstrap token for a node that does not exist, and a wrong one for a node that does,
    // answer alike (from another address's point of view: a fresh plane).
    let cp = plane(&mesh(up.addr));
    let at = At::of(&cp);
    let (_, public) = ringmesh_control::mesh::ca::new_key().expect("key");
    let key = json!({ "public_key": public });
    let ask = |node: &str| {
        let who = Who::bearer(&at.pin, "wrong");
        let (s, v) = at.call_as(
            &who,
            "POST",
            &format!("/v1/nodes/{node}/certificate"),
            Some(&key),
            None,
        );
        (s, v["kind"].clone())
    };
    assert_eq!(ask("edge"), ask("no-such-node"));
    // An admin identity that is a node's is refused.
    let errors = ringmesh_control::mesh::model::Mesh::parse(&format!(
        "api:\n  admins:\n    - {{ name: x, identity: \"spiffe://mesh.local/ns/default/sa/edge\" }}\n{}",
        mesh(up.addr)
    ))
    .expect_err("refused");
    assert!(
        errors.iter().any(|e| e.path == "api.admins[0].identity"),
        "{errors:?}"
    );
}

#[test]
fn a_proxy_takes_no_file_from_a_control_plane_or_its_cache() {
    use ringmesh_control::mesh::client::Trust;
    let dir = std::env::temp_dir().join(format!("ringmesh-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let target = dir.join("pwned.log");
    let cache = dir.join("edge.json");
    let config = json!({
        "listeners": [ { "name": "edge", "bind": "127.0.0.1:0",
            "access_log": target.display().to_string(),
            "routes": [ { "match": { "path_prefix": "/" }, "cluster": "c" } ] } ],
        "clusters": [ { "name": "c", "endpoints": [ { "addr": "127.0.0.1:9" } ] } ],
    });
    std::fs::write(
        &cache,
        json!({ "node": "edge", "version": 5, "config": config }).to_string(),
    )
    .expect("cache");
    // A control plane that is not there; the cache alone would name a file.
    let nowhere = At {
        addr: free_port(),
        pin: "00".repeat(32),
        learned: None,
    };
    let mut s = source(&[nowhere], "edge", Some(cache.clone()));
    s.trust = Trust::Pin("00".repeat(32));
    let p = fed(s);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.version(), 0, "the cached config was applied");
    assert!(!target.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
