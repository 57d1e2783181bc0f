//! HTTP/2 to upstreams: requests multiplexed on few connections, trailers, GOAWAY and refused
//! streams retried safely, and the mesh upgrade of HTTP/1.1 traffic between two proxies.

use std::sync::atomic::Ordering;

use ringmesh_tests::h2::{H2Action, H2Answer, H2Client, H2Upstream};
use ringmesh_tests::*;

fn h2_cluster(up: std::net::SocketAddr, protocol: &str, extra: &str) -> String {
    format!(
        "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        cluster: up{extra}
clusters:
  - {{ name: up, protocol: {protocol}, endpoints: [ {{ addr: {up} }} ] }}
"
    )
}

/// An upstream that accepts a WebSocket upgrade, then echoes what it reads once.
fn websocket_echo() -> Upstream {
    Upstream::raw(|mut s| {
        use std::io::{Read, Write};
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = s.write_all(&buf[..n]);
    })
}

#[test]
fn http1_clients_are_multiplexed_onto_few_http2_connections() {
    let up = H2Upstream::start(None, |req, _| {
        H2Answer {
            status: 200,
            headers: vec![("x-path", req.path.clone())],
            body: req.body.clone(),
            trailers: Vec::new(),
        }
        .into()
    });
    let p = TestProxy::start(&h2_cluster(up.addr, "http2", ""), 1);
    let edge = p.edge();
    let threads: Vec<_> = (0..20)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(edge);
                for i in 0..10 {
                    let body = format!("t{t}-{i}");
                    c.send(
                        format!(
                            "POST /p/{t}/{i} HTTP/1.1\r\nHost: svc.local\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let r = c.response(false);
                    assert_eq!(r.status, 200);
                    assert_eq!(r.header("x-path"), Some(format!("/p/{t}/{i}").as_str()));
                    assert_eq!(r.text(), body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 200);
    assert!(
        seen.iter()
            .all(|r| r.authority.as_deref() == Some("svc.local"))
    );
    assert!(
        up.connections.load(Ordering::SeqCst) <= 2,
        "{} connections for 20 clients",
        up.connections.load(Ordering::SeqCst)
    );
    // A streaming upload (chunked, without a length) goes as DATA frames.
    let mut c = Client::connect(edge);
    c.send(b"PUT /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(c.response(false).text(), "hello world");
}

#[test]
fn grpc_style_trailers_reach_http1_and_http2_clients() {
    let up = H2Upstream::start(None, |req, _| {
        let te = req
            .headers
            .get("te")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        H2Answer {
            status: 200,
            headers: vec![("content-type", "application/grpc".into()), ("x-te", te)],
            body: b"\x00\x00\x00\x00\x02hi".to_vec(),
            trailers: vec![("grpc-status", "0".into()), ("grpc-message", "fine".into())],
        }
        .into()
    });
    let p = TestProxy::start(&h2_cluster(up.addr, "http2", ""), 1);
    // HTTP/1.1 client: chunked, trailers at the end.
    let mut c = Client::connect(p.edge());
    c.send(b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-te"),
        Some("trailers"),
        "gRPC servers need te: trailers"
    );
    assert_eq!(r.body, b"\x00\x00\x00\x00\x02hi");
    assert!(
        r.trailers
            .iter()
            .any(|(n, v)| n == "grpc-status" && v == "0"),
        "{:?}",
        r.trailers
    );
    // HTTP/2 client: trailers as a HEADERS frame.
    let mut h = H2Client::connect(p.edge());
    let req = http::Request::post("http://a/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let r = h.request(req, b"\x00\x00\x00\x00\x00", None).unwrap();
    assert_eq!(r.body, b"\x00\x00\x00\x00\x02hi");
    let t = r.trailers.expect("trailers");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    assert_eq!(t.get("grpc-message").unwrap(), "fine");
}

#[test]
fn goaway_and_refused_streams_are_retried_without_failing_requests() {
    // Every connection goes away after 5 streams; every 7th request is refused unprocessed.
    let up = H2Upstream::start(Some(5), |req, i| {
        if i % 7 == 3 {
            H2Action::Reset(::h2::Reason::REFUSED_STREAM)
        } else {
            H2Answer::ok(req.method.clone()).into()
        }
    });
    let p = TestProxy::start(&h2_cluster(up.addr, "http2", ""), 1);
    let mut c = Client::connect(p.edge());
    for i in 0..40 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        c.send(format!("{method} /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").as_bytes());
        let r = c.response(false);
        assert_eq!(
            (r.status, r.text()),
            (200, method.to_string()),
            "request {i}"
        );
    }
    assert!(up.connections.load(Ordering::SeqCst) >= 8);
}

#[test]
fn the_mesh_upgrade_carries_http1_between_proxies_over_http2() {
    let app = Upstream::echo();
    // The receiving proxy, in front of the application.
    let b = TestProxy::simple(app.addr, 1, "");
    // The sending proxy: its cluster is the other ringmesh.
    let a = TestProxy::start(&h2_cluster(b.edge(), "mesh", ""), 1);
    let edge = a.edge();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(edge);
                for i in 0..20 {
                    let r = c.get(&format!("/m/{t}/{i}"));
                    assert_eq!(r.status, 200);
                    assert_eq!(r.header("x-path"), Some(format!("/m/{t}/{i}").as_str()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The application sees HTTP/1.1, without the mark between the proxies.
    let seen = app.requests();
    assert_eq!(seen.len(), 160);
    assert!(
        seen.iter()
            .all(|r| r.version == 1 && r.header("ringmesh-original-protocol").is_none())
    );
    // Between the proxies: one HTTP/2 connection carried all 8 clients' requests.
    let h2 = |e: &str| {
        b.metric(&format!(
            "ringmesh_http2_events_total{{listener=\"edge\",event=\"{e}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert_eq!(h2("connection"), 1.0);
    assert_eq!(h2("stream"), 160.0);
    // A WebSocket upgrade is not converted: it goes over HTTP/1.1 and still tunnels.
    let ws = websocket_echo();
    let b2 = TestProxy::simple(ws.addr, 1, "");
    let a2 = TestProxy::start(&h2_cluster(b2.edge(), "mesh", ""), 1);
    let mut c = Client::connect(a2.edge());
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
    let r = c.response(true);
    assert_eq!(r.status, 101);
    c.send(b"ping");
    let mut got = [0u8; 4];
    std::io::Read::read_exact(c.stream(), &mut got).unwrap();
    assert_eq!(&got, b"ping");
    // Stopping the sender closes its connection to the receiver, which can then drain within
    // its deadline (the connection does not linger).
    drop(c);
    drop(a2);
    drop(a);
    assert!(b.proxy.drain(), "the receiver drained in time");
}

#[test]
fn health_checks_speak_http2_to_http2_upstreams() {
    let answer = |name: &'static str, health: u16| {
        move |req: &ringmesh_tests::h2::H2Seen, _: usize| -> H2Action {
            let mut a = H2Answer::ok(name);
            if req.path == "/healthz" {
                a.status = health;
            }
            a.into()
        }
    };
    let good = H2Upstream::start(None, answer("good", 200));
    let sick = H2Upstream::start(None, answer("sick", 503));
    let p = TestProxy::start(
        &format!(
            "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - name: up
    protocol: http2
    lb: round-robin
    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1 }}
    endpoints: [ {{ addr: {} }}, {{ addr: {} }} ]
",
            good.addr, sick.addr
        ),
        1,
    );
    let healthy = |a: std::net::SocketAddr| {
        p.metric(&format!(
            "ringmesh_endpoint_healthy{{cluster=\"up\",endpoint=\"{a}\"}}"
        ))
    };
    assert!(eventually(std::time::Duration::from_secs(5), || {
        healthy(good.addr) == Some(1.0) && healthy(sick.addr) == Some(0.0)
    }));
    // The checks went as HTTP/2 requests (an HTTP/1.1 one would not have been understood).
    assert!(sick.requests().iter().any(|r| r.path == "/healthz"));
    let mut c = Client::connect(p.edge());
    for _ in 0..10 {
        assert_eq!(c.get("/x").text(), "good");
    }
}

#[test]
fn upgrades_to_a_tls_cluster_speaking_http2_go_on_http1_by_alpn() {
    let pki = ringmesh_tests::tls::Pki::new("mesh-upgrade");
    let leaf = pki.leaf("b", &["b.example"], false);
    let app = Upstream::echo();
    let ws = websocket_echo();
    // The receiving ringmesh terminates TLS and offers h2 and http/1.1.
    let b = TestProxy::start(
        &format!(
            "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
{}    routes:
      - {{ match: {{ path_prefix: /ws }}, cluster: ws }}
      - {{ match: {{ path_prefix: / }}, cluster: app }}
clusters:
  - {{ name: ws, endpoints: [ {{ addr: {} }} ] }}
  - {{ name: app, endpoints: [ {{ addr: {} }} ] }}
",
            leaf.listener_tls(),
            ws.addr,
            app.addr
        ),
        1,
    );
    for protocol in ["mesh", "auto", "http2"] {
        let a = TestProxy::start(
            &format!(
                "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - {{ name: up, protocol: {protocol}, tls: {{ sni: b.example, ca: {} }}, endpoints: [ {{ addr: {} }} ] }}
",
                pki.ca_file().display(),
                b.edge()
            ),
            1,
        );
        let streams = |b: &TestProxy| {
            b.metric("ringmesh_http2_events_total{listener=\"edge\",event=\"stream\"}")
                .unwrap_or(0.0)
        };
        let before = streams(&b);
        let mut c = Client::connect(a.edge());
        let r = c.get("/plain");
        assert_eq!(
            (r.status, r.header("x-path")),
            (200, Some("/plain")),
            "{protocol}"
        );
        assert_eq!(
            streams(&b),
            before + 1.0,
            "{protocol}: the request went as HTTP/2"
        );
        // The upgrade goes on a TLS connection of its own that agreed on http/1.1, and tunnels.
        let mut c = Client::connect(a.edge());
        c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
        let r = c.response(true);
        assert_eq!(r.status, 101, "{protocol}: {}", r.text());
        c.send(b"ping");
        let mut got = [0u8; 4];
        std::io::Read::read_exact(c.stream(), &mut got).unwrap();
        assert_eq!(&got, b"ping", "{protocol}");
        assert_eq!(
            streams(&b),
            before + 1.0,
            "{protocol}: the upgrade was not converted"
        );
    }
}
