//! The control side over real sockets: admin API, metrics, hot reload (file change, explicit,
//! under load), refusal of bad configs, endpoint state surviving reloads, and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ringmesh_tests::*;

fn route_config(body_cluster: &str, ups: &[(&str, SocketAddr)]) -> String {
    let mut y = format!(
        "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: {body_cluster} }} ]\nclusters:\n"
    );
    for (name, addr) in ups {
        y.push_str(&format!(
            "  - {{ name: {name}, endpoints: [ {{ addr: {addr} }} ] }}\n"
        ));
    }
    y
}

fn admin_get(addr: SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes());
    c.response(false)
}

#[test]
fn admin_api() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, 2, "");
    assert_eq!(p.admin("/ready").status, 200);
    let config = p.admin("/config");
    assert_eq!(config.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["config"]["listeners"][0]["name"], "edge");
    assert_eq!(v["bound"]["edge"], p.edge().to_string());
    let mut c = Client::connect(p.edge());
    for _ in 0..3 {
        c.get("/");
    }
    let clusters: serde_json::Value = serde_json::from_slice(&p.admin("/clusters").body).unwrap();
    let ep = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(clusters["clusters"][0]["name"], "up");
    assert_eq!(ep["address"], up.addr.to_string());
    assert_eq!(ep["requests"]["success"], 3);
    assert_eq!(ep["pooled_connections"], 1);
    assert!(ep["ewma_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(ep["ejected"], false);
    assert_eq!(p.admin("/nope").status, 404);
}

#[test]
fn the_admin_api_answers_only_to_its_own_address_and_says_which_it_is() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, 1, "");
    let admin = p.proxy.admin_addr();
    // The config asked for port 0: /config says where the API really is.
    let v: serde_json::Value = serde_json::from_slice(&p.admin("/config").body).unwrap();
    assert_eq!(v["admin"], admin.to_string());
    assert_eq!(v["config"]["admin"], admin.to_string());
    // A page that rebound its own name to this address reads nothing: not the config, not
    // the tap, not the metrics.
    for host in [
        "attacker.example",
        &format!("attacker.example:{}", admin.port()),
        "127.0.0.1.nip.io",
        "localhost.attacker.example",
    ] {
        for path in ["/config", "/tap", "/metrics", "/"] {
            let mut c = Client::connect(admin);
            c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
            let r = c.response(false);
            assert_eq!(r.status, 403, "{host} {path}");
            assert!(!r.text().contains("listeners"), "{host} {path}");
        }
    }
    for host in [admin.to_string(), format!("localhost:{}", admin.port())] {
        assert_eq!(admin_get_as(admin, &host, "/ready").status, 200, "{host}");
    }
}

fn admin_get_as(addr: SocketAddr, host: &str, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    c.response(false)
}

#[test]
fn metrics_count_requests_and_answers() {
    let up = Upstream::http(|r| {
        if r.path == "/fail" {
            Resp::new(503, "no")
        } else {
            Resp::new(200, "ok")
        }
    });
    let p = TestProxy::simple(up.addr, 2, "");
    let mut c = Client::connect(p.edge());
    for _ in 0..5 {
        c.get("/");
    }
    c.get("/fail");
    one_shot(p.edge(), b"GET / HTTP/1.1\r\n\r\n");
    let m = p.admin("/metrics").text();
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(
        v("ringmesh_requests_total{listener=\"edge\",route=\"0\",cluster=\"up\",code=\"200\"}"),
        Some(5.0)
    );
    assert_eq!(
        v("ringmesh_requests_total{listener=\"edge\",route=\"0\",cluster=\"up\",code=\"503\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("ringmesh_requests_total{listener=\"edge\",route=\"\",cluster=\"\",code=\"400\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("ringmesh_local_replies_total{listener=\"edge\",kind=\"bad-request\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("ringmesh_request_duration_seconds_count{listener=\"edge\",route=\"0\",cluster=\"up\"}"),
        Some(6.0)
    );
    assert_eq!(
        v(
            "ringmesh_request_duration_seconds_bucket{listener=\"edge\",route=\"0\",cluster=\"up\",le=\"+Inf\"}"
        ),
        Some(6.0)
    );
    assert_eq!(
        v(&format!(
            "ringmesh_upstream_rq_total{{cluster=\"up\",endpoint=\"{}\",outcome=\"success\"}}",
            up.addr
        )),
        Some(5.0)
    );
    assert_eq!(
        v(&format!(
            "ringmesh_upstream_rq_total{{cluster=\"up\",endpoint=\"{}\",outcome=\"5xx\"}}",
            up.addr
        )),
        Some(1.0)
    );
    assert_eq!(
        v("ringmesh_connections_active{listener=\"edge\"}"),
        Some(1.0)
    );
    assert_eq!(v("ringmesh_config_version"), Some(1.0));
    assert_eq!(v("ringmesh_config_reloads_total{result=\"ok\"}"), Some(1.0));
    assert_eq!(v("ringmesh_workers"), Some(2.0));
    let uring = ringmesh_core::worker::io_uring_available();
    assert_eq!(v("ringmesh_io_uring"), Some(f64::from(u8::from(uring))));
    for name in [
        "ringmesh_endpoint_ejected",
        "ringmesh_endpoint_ewma_seconds",
    ] {
        assert!(
            m.contains(&format!(
                "\n{name}{{cluster=\"up\",endpoint=\"{}\"}} ",
                up.addr
            )),
            "{name}"
        );
    }
    drop(c);
    assert!(eventually(Duration::from_secs(5), || {
        p.metric("ringmesh_connections_active{listener=\"edge\"}") == Some(0.0)
    }));
}

#[test]
fn file_changes_reload_and_bad_files_are_refused() {
    let a = Upstream::fixed("a");
    let b = Upstream::fixed("b");
    let ups = [("a", a.addr), ("b", b.addr)];
    let path = temp_config("reload", &route_config("a", &ups));
    let p = file_proxy(&path, 2);
    let edge = p.listener_addr("edge").unwrap();
    let mut c = Client::connect(edge);
    assert_eq!(c.get("/").text(), "a");

    write_atomically(&path, &route_config("b", &ups));
    assert!(
        eventually(Duration::from_secs(5), || p.version() == 2),
        "file change reloads"
    );
    assert_eq!(
        c.get("/").text(),
        "b",
        "the same connection follows the new routes"
    );
    assert_eq!(
        p.listener_addr("edge"),
        Some(edge),
        "a kept listener keeps its port"
    );

    write_atomically(&path, "listeners:\n  - name: edge\n    bind: nowhere\n");
    let admin = p.admin_addr();
    assert!(eventually(Duration::from_secs(5), || {
        metric_value(
            &admin_get(admin, "/metrics").text(),
            "ringmesh_config_reloads_total{result=\"error\"}",
        ) == Some(1.0)
    }));
    assert_eq!(p.version(), 2);
    assert_eq!(c.get("/").text(), "b", "the running config stays in force");
    let errs = p.reload().unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("listeners[0].bind")),
        "{errs:?}"
    );
}

#[test]
fn reload_adds_and_removes_listeners() {
    let up = Upstream::fixed("ok");
    let one = format!(
        "listeners:\n  - {{ name: l1, bind: 127.0.0.1:0, routes: [ {{ match: {{ path_prefix: / }}, cluster: c }} ] }}\nclusters: [ {{ name: c, endpoints: [ {{ addr: {} }} ] }} ]\n",
        up.addr
    );
    let two = one.replace("listeners:\n", "listeners:\n  - { name: l2, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: c } ] }\n");
    let path = temp_config("listeners", &one);
    let p = file_proxy(&path, 2);
    let l1 = p.listener_addr("l1").unwrap();
    write_atomically(&path, &two);
    p.reload().unwrap();
    let l2 = p.listener_addr("l2").unwrap();
    assert_eq!(Client::connect(l2).get("/").status, 200);
    assert_eq!(Client::connect(l1).get("/").status, 200);
    write_atomically(&path, &two.replace("  - { name: l1, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: c } ] }\n", ""));
    p.reload().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(l1)
            .is_err()),
        "removed listener stops accepting"
    );
    assert_eq!(Client::connect(l2).get("/").status, 200);
}

#[test]
fn a_listener_that_cannot_bind_refuses_the_whole_config() {
    let up = Upstream::fixed("ok");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let good = format!(
        "listeners:\n  - {{ name: l1, bind: 127.0.0.1:0, routes: [ {{ match: {{ path_prefix: / }}, cluster: c }} ] }}\nclusters: [ {{ name: c, endpoints: [ {{ addr: {} }} ] }} ]\n",
        up.addr
    );
    let path = temp_config("bindfail", &good);
    let p = file_proxy(&path, 2);
    let bad = good.replace("listeners:\n", &format!("listeners:\n  - {{ name: l2, bind: {}, routes: [ {{ match: {{ path_prefix: / }}, cluster: c }} ] }}\n", taken.local_addr().unwrap()));
    write_atomically(&path, &bad);
    let errs = p.reload().unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("listeners[0].bind") && e.contains("cannot bind")),
        "{errs:?}"
    );
    assert_eq!(p.version(), 1);
    assert_eq!(
        Client::connect(p.listener_addr("l1").unwrap())
            .get("/")
            .status,
        200
    );
}

#[test]
fn pooled_connections_survive_reloads() {
    let up = Upstream::fixed("ok");
    let other = Upstream::fixed("other");
    let ups = [("a", up.addr), ("b", other.addr)];
    let path = temp_config("pool", &route_config("a", &ups));
    let p = file_proxy(&path, 2);
    let mut c = Client::connect(p.listener_addr("edge").unwrap());
    c.get("/");
    for i in 0..5 {
        // Change something unrelated to cluster a: its endpoint state and pool stay.
        write_atomically(&path, &format!("{}# {i}\n", route_config("a", &ups)));
        p.reload().unwrap();
        assert_eq!(c.get("/").text(), "ok");
    }
    assert_eq!(
        up.accepted(),
        1,
        "the pooled upstream connection survived five reloads"
    );
}

#[test]
fn reloads_under_load_fail_no_request() {
    let a = Upstream::fixed("a");
    let b = Upstream::fixed("b");
    let ups = [("a", a.addr), ("b", b.addr)];
    let path = temp_config("load", &route_config("a", &ups));
    let p = file_proxy(&path, 2);
    let edge = p.listener_addr("edge").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(edge);
                while !stop.load(Ordering::Relaxed) {
                    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                    match c.try_response(false) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            c = Client::connect(edge);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut reloads = 0;
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        let target = if reloads % 2 == 0 { "b" } else { "a" };
        write_atomically(&path, &route_config(target, &ups));
        p.reload().expect("reload");
        reloads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(reloads >= 50, "{reloads}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 1000);
}

#[test]
fn drain_lets_requests_in_flight_finish() {
    let up = Upstream::http(|_| {
        std::thread::sleep(Duration::from_millis(500));
        Resp::new(200, "slow")
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let edge = p.edge();
    let mut idle = Client::connect(edge);
    assert_eq!(idle.get("/").status, 200);
    let mut c = Client::connect(edge);
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let drained = std::thread::spawn(move || p.proxy.drain());
    let r = c.response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "told the connection ends"
    );
    assert!(
        idle.is_closed(Duration::from_secs(5)),
        "idle connections are closed"
    );
    assert!(
        drained.join().unwrap(),
        "drain finished before its deadline"
    );
    assert!(
        std::net::TcpStream::connect(edge).is_err(),
        "no longer accepting"
    );
}
