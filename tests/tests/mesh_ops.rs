//! Operating the mesh through the control plane, against two proxies it feeds over TLS: the
//! mesh page in a real Chromium (it logs in with an admin token, refuses a wrong one, shows
//! every node, and its numbers match the proxies' `/metrics`), `ringmesh ctl tap` seeing live
//! requests of a proxy whose admin port it never reaches, `ringmesh ctl endpoints` showing
//! health as the proxies see it, and what callers without the right credential get.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringmesh_control::Proxy;
use ringmesh_tests::mesh::{ADMIN_TOKEN, At, Who, bootstrap, ctl, fed, node, plane, source, text};
use ringmesh_tests::*;
use serde_json::{Value, json};

/// Two nodes, each with a listener `edge` routing `/fail` to cluster `flaky` (503s) and the
/// rest to `web`.
fn mesh(web: SocketAddr, flaky: SocketAddr, extra_web: &str) -> String {
    let listeners = "    listeners:\n      - name: edge\n        bind: 127.0.0.1:0\n        routes:\n          - { name: fail, match: { path_prefix: /fail }, cluster: flaky }\n          - { name: web, match: { path_prefix: / }, cluster: web }\n";
    format!(
        "clusters:\n  - {{ name: web, endpoints: [ {{ addr: \"{web}\", zone: z1 }} ]{extra_web} }}\n  - {{ name: flaky, outlier: off, endpoints: [ {{ addr: \"{flaky}\" }} ] }}\nnodes:\n{}{}",
        node("edge-1", listeners),
        node("edge-2", listeners),
    )
}

fn metrics(p: &Proxy) -> String {
    let admin = p.admin_addr();
    let mut c = Client::connect(admin);
    c.send(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    c.response(false).text()
}

/// Requests and 5xx answers of `cluster` in a proxy's `/metrics`.
fn counted(metrics: &str, cluster: &str) -> (u64, u64) {
    let (mut all, mut bad) = (0, 0);
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("ringmesh_requests_total{"))
    {
        if !l.contains(&format!("cluster=\"{cluster}\"")) {
            continue;
        }
        let n: u64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        all += n;
        if l.contains("code=\"5") {
            bad += n;
        }
    }
    (all, bad)
}

fn send(addr: SocketAddr, path: &str, n: usize) {
    let mut c = Client::connect(addr);
    for _ in 0..n {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes());
        let _ = c.response(false);
    }
}

/// The text of the cell `field` in the row `row` of the table `table` in a DOM.
fn cell(dom: &str, table: &str, row: &str, field: &str) -> String {
    let t = &dom[dom
        .find(&format!("id=\"{table}\""))
        .unwrap_or_else(|| panic!("no table {table}"))..];
    let start = t
        .find(&format!("<tr data-key=\"{row}\">"))
        .unwrap_or_else(|| panic!("no row {row} in {table}: {}", &t[..t.len().min(3000)]));
    let tr = &t[start..start + t[start..].find("</tr>").unwrap()];
    let at = tr
        .find(&format!("data-key=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} in row {row}: {tr}"));
    let rest = &tr[at..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_mesh_page_logs_in_shows_every_node_and_matches_metrics() {
    let Some(chromium) = tool(&["chromium", "chromium-browser", "google-chrome"]) else {
        return;
    };
    // Every answer of `web` takes about 15 ms: its p50 and p99 are in (10 ms, 25 ms].
    let web = Upstream::http(|_| {
        std::thread::sleep(Duration::from_millis(15));
        Resp::new(200, "ok")
    });
    let flaky = Upstream::http(|_| Resp::new(503, "down"));
    let cp = plane(&mesh(web.addr, flaky.addr, ""));
    let at = At::of(&cp);
    let p1 = fed(source(std::slice::from_ref(&at), "edge-1", None));
    let p2 = fed(source(std::slice::from_ref(&at), "edge-2", None));
    assert!(eventually(Duration::from_secs(15), || p1.version() > 0
        && p2.version() > 0));
    let (e1, e2) = (
        p1.listener_addr("edge").unwrap(),
        p2.listener_addr("edge").unwrap(),
    );

    // Traffic through both, for a while (the stats window sees it whole).
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = [e1, e2]
        .into_iter()
        .map(|addr| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    send(addr, "/page", 10);
                    send(addr, "/fail", 1);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|t| t.join().unwrap());
    let (m1, m2) = (metrics(&p1), metrics(&p2));
    let (web_all, web_bad) = {
        let (a, b) = (counted(&m1, "web"), counted(&m2, "web"));
        (a.0 + b.0, a.1 + b.1)
    };
    let (flaky_all, flaky_bad) = {
        let (a, b) = (counted(&m1, "flaky"), counted(&m2, "flaky"));
        (a.0 + b.0, a.1 + b.1)
    };
    assert!(web_all > 50 && flaky_all > 5 && flaky_bad == flaky_all && web_bad == 0);
    // The control plane has the proxies' last counts.
    assert!(
        eventually(Duration::from_secs(15), || {
            let s = at.get("/v1/stats");
            s["clusters"]["web"]["total"]["requests"] == web_all
                && s["clusters"]["flaky"]["total"]["requests"] == flaky_all
        }),
        "{}",
        at.get("/v1/stats")
    );

    let spki = base64(&hex(&at.pin));
    let url = format!("https://{}/", at.addr);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/chromium_page.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&chromium)
        .arg(&url)
        .arg(format!("--tokens=not-the-token,{ADMIN_TOKEN}"))
        .arg(format!("--spki={spki}"))
        .arg("--refreshes=2")
        .stderr(Stdio::inherit())
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium driver failed: {}",
        text(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("driver output");
    let errors = v["errors"].as_array().unwrap();
    assert!(
        errors[0].as_str().unwrap().contains("not an admin's"),
        "a wrong token is refused: {v}"
    );
    assert_eq!(errors[1], "", "the admin token logs in");
    assert_eq!(v["refreshed"], true, "the page refreshed");
    assert_eq!(
        v["session_storage_items"], 1,
        "the token is kept in the tab only"
    );
    let dom = v["dom"].as_str().unwrap();
    assert!(!dom.contains(ADMIN_TOKEN), "the token is not in the page");

    // Every node, in sync.
    for n in ["edge-1", "edge-2"] {
        assert_eq!(cell(dom, "nodes", n, "in_sync"), "yes", "{n}");
        assert_ne!(cell(dom, "nodes", n, "cert_expires"), "—");
    }
    // The numbers are the proxies' own.
    assert_eq!(
        cell(dom, "clusters", "web", "requests"),
        web_all.to_string()
    );
    assert_eq!(cell(dom, "clusters", "web", "errors"), "0");
    assert_eq!(cell(dom, "clusters", "web", "total_success"), "100.00%");
    assert_eq!(
        cell(dom, "clusters", "flaky", "requests"),
        flaky_all.to_string()
    );
    assert_eq!(cell(dom, "clusters", "flaky", "total_success"), "0.00%");
    assert_eq!(cell(dom, "clusters", "flaky", "success"), "0.00%");
    for q in ["p50", "p99"] {
        let ms: f64 = cell(dom, "clusters", "web", q)
            .trim_end_matches(" ms")
            .parse()
            .unwrap_or_else(|_| panic!("{q}: {}", cell(dom, "clusters", "web", q)));
        assert!(
            (10.0..=25.0).contains(&ms),
            "web {q} {ms} ms is in the (10, 25] ms bucket"
        );
    }
    let rps: f64 = cell(dom, "clusters", "web", "rps").parse().unwrap();
    assert!(rps > 0.0, "requests/s over the window");
    assert_eq!(cell(dom, "clusters", "web", "nodes"), "edge-1, edge-2");
    assert_eq!(
        cell(dom, "endpoints", &format!("web {}", web.addr), "health"),
        "healthy"
    );
}

#[test]
fn the_page_is_static_and_every_view_needs_a_credential() {
    let cp = plane(&mesh(free_port(), free_port(), ""));
    let at = At::of(&cp);
    let anyone = Who::anonymous(&at.pin);
    // The page itself carries no data, and says what it may load.
    let (code, _) = at.call_as(&anyone, "GET", "/", None, None);
    assert_eq!(code, 200);
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        at.addr
    );
    let (code, _) = at.raw(&anyone, &raw).expect("page");
    assert_eq!(code, 200);
    // A page elsewhere cannot read the views with a token it got hold of: a rebound name
    // (foreign Host) and a cross-origin fetch (Origin) are refused before the token is looked at.
    let admin = Who::admin(&at.pin);
    let rebound = format!(
        "GET / HTTP/1.1\r\nhost: evil.example:{}\r\nconnection: close\r\n\r\n",
        at.addr.port()
    );
    let (code, v) = at.raw(&anyone, &rebound).expect("answer");
    assert_eq!(
        (code, v["kind"].as_str()),
        (403, Some("host-not-allowed")),
        "{v}"
    );
    let cross = format!(
        "GET /v1/stats HTTP/1.1\r\nhost: {}\r\norigin: https://evil.example\r\nauthorization: Bearer {ADMIN_TOKEN}\r\nconnection: close\r\n\r\n",
        at.addr
    );
    let (code, v) = at.raw(&admin, &cross).expect("answer");
    assert_eq!(
        (code, v["kind"].as_str()),
        (403, Some("origin-refused")),
        "{v}"
    );
    for path in ["/v1/stats", "/v1/clusters", "/v1/nodes"] {
        let (code, v) = at.call_as(&anyone, "GET", path, None, None);
        assert_eq!(code, 401, "{path}: {v}");
    }
    let (code, v) = at.call_as(
        &anyone,
        "POST",
        "/v1/nodes/edge-1/taps",
        Some(&json!({})),
        None,
    );
    assert_eq!(code, 401, "{v}");

    // A node's certificate: its own reports and taps only, no admin's view.
    let ck = bootstrap(&at, "edge-2").expect("edge-2's certificate");
    let edge2 = Who::with_certificate(&at.pin, ck);
    let (code, v) = at.call_as(&edge2, "GET", "/v1/stats", None, None);
    assert_eq!((code, v["kind"].as_str()), (403, Some("admin-only")), "{v}");
    let (code, v) = at.call_as(
        &edge2,
        "POST",
        "/v1/nodes/edge-1/taps",
        Some(&json!({})),
        None,
    );
    assert_eq!((code, v["kind"].as_str()), (403, Some("admin-only")), "{v}");
    let report = json!({ "clusters": {}, "endpoints": {} });
    let (code, v) = at.call_as(
        &edge2,
        "POST",
        "/v1/nodes/edge-1/stats",
        Some(&report),
        None,
    );
    assert_eq!((code, v["kind"].as_str()), (403, Some("other-node")), "{v}");
    let (code, v) = at.call_as(&edge2, "GET", "/v1/nodes/edge-1/taps?wait=1s", None, None);
    assert_eq!((code, v["kind"].as_str()), (403, Some("other-node")), "{v}");
    // An admin cannot pose as a node.
    let (code, v) = at.call("POST", "/v1/nodes/edge-1/stats", Some(&report), None);
    assert_eq!((code, v["kind"].as_str()), (403, Some("nodes-only")), "{v}");

    // A node reporting garbage changes nothing.
    let (code, _) = at.call_as(
        &edge2,
        "POST",
        "/v1/nodes/edge-2/stats",
        Some(&report),
        None,
    );
    assert_eq!(code, 200);
    let bad = json!({ "clusters": { "web": { "requests": 5, "errors": 0, "buckets": [1, 2] } } });
    let (code, v) = at.call_as(&edge2, "POST", "/v1/nodes/edge-2/stats", Some(&bad), None);
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        at.get("/v1/stats")["clusters"]["web"]["total"]["requests"],
        0
    );
    // A tap's events go to its reader only from the node it was asked of.
    let (code, t) = at.call(
        "POST",
        "/v1/nodes/edge-1/taps",
        Some(&json!({ "n": 1 })),
        None,
    );
    assert_eq!(code, 201, "{t}");
    let id = t["id"].as_str().unwrap();
    let (code, _) = at.call_as(
        &edge2,
        "POST",
        &format!("/v1/nodes/edge-2/taps/{id}"),
        Some(&json!({"forged": true})),
        None,
    );
    assert_eq!(code, 410);
    let v = at.get(&format!("/v1/taps/{id}?wait=0s"));
    assert_eq!(v["events"], json!([]), "{v}");
    assert_eq!(v["picked_up"], false);
}

/// The child's output once it exits; killed (and the test failed) past `limit`.
fn finish(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("ctl tap did not end: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn ctl_tap_sees_live_requests_through_the_control_plane() {
    let web = Upstream::fixed("ok");
    // Taps are the process's: a route name of its own keeps other tests' requests out.
    let m = mesh(web.addr, web.addr, "").replace("name: web, match", "name: tapped, match");
    let cp = plane(&m);
    let at = At::of(&cp);
    let p1 = fed(source(std::slice::from_ref(&at), "edge-1", None));
    assert!(eventually(Duration::from_secs(15), || p1.version() > 0));
    let e1 = p1.listener_addr("edge").unwrap();
    let server = at.addr.to_string();
    let env = [
        ("RINGMESH_SERVER", server.as_str()),
        ("RINGMESH_TOKEN", ADMIN_TOKEN),
        ("RINGMESH_CA_SHA256", at.pin.as_str()),
    ];
    let args: Vec<String> = [
        "tap", "edge-1", "--route", "tapped", "--n", "3", "-o", "json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let child = Command::new(binary())
        .arg("ctl")
        .args(&args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctl tap");
    // Requests until the tap has its three: `/fail` ones are another route's, not tapped.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                send(e1, "/fail/x", 1);
                send(e1, &format!("/tapped/{i}"), 1);
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = finish(child, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", text(&out));
    for l in &lines {
        assert_eq!(l["route"], "tapped", "{l}");
        assert!(l["path"].as_str().unwrap().starts_with("/tapped/"), "{l}");
        assert_eq!(l["status"], 200);
    }

    // A node whose proxy is not there: ctl says so, and ends.
    let none = ctl(&env, &["tap", "edge-2", "--pickup-timeout", "2s"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(
        text(&none).contains("did not pick the tap up"),
        "{}",
        text(&none)
    );
    // Text output for people.
    let sender = std::thread::spawn(move || {
        for i in 0..40 {
            send(e1, &format!("/text/{i}"), 1);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let t = ctl(&env, &["tap", "edge-1", "--route", "tapped", "--n", "1"]);
    sender.join().unwrap();
    assert_eq!(t.status.code(), Some(0), "{}", text(&t));
    let line = String::from_utf8_lossy(&t.stdout);
    assert!(
        line.contains(" 200 GET shop/text/") && line.contains("edge/tapped -> web"),
        "{line}"
    );
}

#[test]
fn ctl_endpoints_show_health_and_ctl_clusters_the_golden_signals() {
    let web = Upstream::fixed("ok");
    let dead = free_port();
    let checks = ", health_check: { path: /, interval: 200ms, unhealthy_threshold: 1 }";
    let mut m = mesh(web.addr, web.addr, checks);
    m = m.replacen(
        &format!("{{ addr: \"{}\", zone: z1 }}", web.addr),
        &format!(
            "{{ addr: \"{}\", zone: z1 }}, {{ addr: \"{dead}\", zone: z2 }}",
            web.addr
        ),
        1,
    );
    let cp = plane(&m);
    let at = At::of(&cp);
    // Two proxies: the control plane gathers what both report.
    let p1 = fed(source(std::slice::from_ref(&at), "edge-1", None));
    let p2 = fed(source(std::slice::from_ref(&at), "edge-2", None));
    assert!(eventually(Duration::from_secs(15), || p1.version() > 0
        && p2.version() > 0));
    send(p1.listener_addr("edge").unwrap(), "/x", 20);
    send(p2.listener_addr("edge").unwrap(), "/x", 20);
    let server = at.addr.to_string();
    let env = [
        ("RINGMESH_SERVER", server.as_str()),
        ("RINGMESH_TOKEN", ADMIN_TOKEN),
        ("RINGMESH_CA_SHA256", at.pin.as_str()),
    ];
    let mut eps = Value::Null;
    let seen = eventually(Duration::from_secs(20), || {
        let o = ctl(&env, &["endpoints", "web", "-o", "json"]);
        eps = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let health = |addr: String| {
            eps["endpoints"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["addr"] == addr.as_str()))
                .map(|e| e["health"].clone())
        };
        let by = |addr: String| {
            eps["endpoints"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["addr"] == addr.as_str()))
                .map(|e| e["reported_by"].clone())
        };
        health(web.addr.to_string()) == Some(json!("healthy"))
            && health(dead.to_string()) == Some(json!("unhealthy"))
            && by(dead.to_string()) == Some(json!(2))
    });
    assert!(seen, "{eps}");
    let dead_ep = eps["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["addr"] == dead.to_string().as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        dead_ep["unhealthy_in"],
        json!(["edge-1", "edge-2"]),
        "{dead_ep}"
    );
    assert_eq!(dead_ep["zone"], "z2");
    let table = text(&ctl(&env, &["endpoints", "web"]));
    assert!(
        table.contains("HEALTH") && table.contains("unhealthy"),
        "{table}"
    );
    // The requests went through: web has a success rate and latency over the window.
    let mut clusters = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            clusters = text(&ctl(&env, &["clusters"]));
            clusters
                .lines()
                .any(|l| l.starts_with("web ") && l.contains('%') && l.contains("ms"))
        }),
        "{clusters}"
    );
    assert!(clusters.contains("P99"), "{clusters}");
}

#[test]
fn a_node_that_refuses_its_snapshot_fails_status_and_check_saying_why() {
    let web = Upstream::fixed("ok");
    let m = format!(
        "clusters:\n  - {{ name: web, endpoints: [ {{ addr: \"{}\" }} ] }}\nnodes:\n{}",
        web.addr,
        node(
            "edge-1",
            "    listeners:\n      - { name: edge, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] }\n"
        ),
    );
    let cp = plane(&m);
    let at = At::of(&cp);
    let p1 = fed(source(std::slice::from_ref(&at), "edge-1", None));
    let server = at.addr.to_string();
    let env = [
        ("RINGMESH_SERVER", server.as_str()),
        ("RINGMESH_TOKEN", ADMIN_TOKEN),
        ("RINGMESH_CA_SHA256", at.pin.as_str()),
    ];
    assert!(eventually(Duration::from_secs(15), || {
        ctl(&env, &["status"]).status.success()
    }));
    // A valid config the proxy cannot apply: its listener's port is taken on its host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let version = at.get("/v1/config")["version"].as_u64().unwrap();
    let (code, v) = at.call(
        "PUT",
        "/v1/config/nodes/edge-1/listeners/0/bind",
        Some(&json!(taken.local_addr().unwrap().to_string())),
        Some(version),
    );
    assert_eq!(code, 200, "{v}");
    let mut status = ctl(&env, &["status"]);
    assert!(
        eventually(Duration::from_secs(15), || {
            status = ctl(&env, &["status"]);
            text(&status).contains("refused version")
        }),
        "{}",
        text(&status)
    );
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let check = ctl(&env, &["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let t = text(&check);
    assert!(
        t.contains("[FAIL] every node in sync") && t.contains("edge-1"),
        "{t}"
    );
    // The proxy kept serving the config in force.
    assert_eq!(
        Client::connect(p1.listener_addr("edge").unwrap())
            .get("/")
            .status,
        200
    );
}
