//! Access policies and rate limits over real sockets: identity, source, path, method, header
//! and host conditions; deny over allow; the default; audit mode; TCP listeners; rate-limit
//! totals whatever the number of workers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringmesh_tests::tls::{Pki, TlsClient};
use ringmesh_tests::*;

fn denials(p: &TestProxy, policy: &str, mode: &str) -> f64 {
    p.metric(&format!(
        "ringmesh_policy_denials_total{{listener=\"edge\",policy=\"{policy}\",mode=\"{mode}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn policies_allow_and_deny_by_identity_path_and_method_with_deny_winning() {
    let pki = Pki::new("policy-id");
    let server = pki.leaf("server", &["a.example"], false);
    let web = pki.client_leaf("web", "spiffe://mesh.local/ns/default/sa/web");
    let batch = pki.client_leaf("batch", "spiffe://mesh.local/ns/default/sa/batch");
    let up = Upstream::fixed("ok");
    let config = format!(
        "admin: 127.0.0.1:0
default_policy: deny
policies:
  - {{ name: web-reads, action: allow, match: {{ identity: \"spiffe://mesh.local/ns/default/sa/web\", method: GET }} }}
  - {{ name: no-admin, action: deny, match: {{ path_prefix: /admin }} }}
  - {{ name: loopback-audit, action: deny, audit: true, match: {{ source: 127.0.0.0/8 }} }}
listeners:
  - name: edge
    bind: 127.0.0.1:0
    tls:
      certs: [ {{ cert: {}, key: {} }} ]
      client_ca: {}
    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
        server.cert.display(),
        server.key.display(),
        pki.ca_file().display(),
        up.addr
    );
    let p = TestProxy::start(&config, 2);

    let mut c = TlsClient::connect(p.edge(), "a.example", &pki.mtls_client_config(&web)).unwrap();
    let r = c.get("/data").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "web may GET");
    // The connection stays open after a denial.
    let r = c.get("/admin/users").unwrap();
    assert_eq!(r.status, 403, "deny wins over the allow");
    assert_eq!(r.header("ringmesh-error"), Some("denied"));
    c.send(b"POST /data HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    assert_eq!(
        c.response().unwrap().status,
        403,
        "no allow for POST: the default denies"
    );
    assert_eq!(c.get("/data").unwrap().status, 200);

    let mut b = TlsClient::connect(p.edge(), "a.example", &pki.mtls_client_config(&batch)).unwrap();
    assert_eq!(b.get("/data").unwrap().status, 403, "another identity");

    assert!(eventually(Duration::from_secs(5), || {
        denials(&p, "no-admin", "enforced") == 1.0 && denials(&p, "default", "enforced") == 2.0
    }));
    // Every request came from loopback: the audit policy counted all five, denied none.
    assert_eq!(denials(&p, "loopback-audit", "audit"), 5.0);
    assert_eq!(up.accepted(), 1, "denied requests never reach the upstream");
}

#[test]
fn policies_match_source_headers_and_host_without_tls() {
    let up = Upstream::fixed("ok");
    let config = format!(
        "admin: 127.0.0.1:0
policies:
  - {{ name: evil, action: deny, match: {{ headers: {{ x-evil: \"1\" }} }} }}
  - {{ name: internal-host, action: deny, match: {{ host: \"*.internal\", method: DELETE }} }}
  - {{ name: elsewhere, action: deny, match: {{ source: 10.0.0.0/8 }} }}
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
        up.addr
    );
    let p = TestProxy::start(&config, 1);
    let mut c = Client::connect(p.edge());
    let mut send = |raw: &str| {
        c.send(raw.as_bytes());
        c.response(false).status
    };
    assert_eq!(send("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(send("GET / HTTP/1.1\r\nHost: a\r\nX-Evil: 1\r\n\r\n"), 403);
    assert_eq!(send("GET / HTTP/1.1\r\nHost: a\r\nX-Evil: 2\r\n\r\n"), 200);
    assert_eq!(
        send("DELETE /x HTTP/1.1\r\nHost: db.internal:8080\r\n\r\n"),
        403
    );
    assert_eq!(send("DELETE /x HTTP/1.1\r\nHost: DB.Internal\r\n\r\n"), 403);
    assert_eq!(send("GET /x HTTP/1.1\r\nHost: db.internal\r\n\r\n"), 200);
    assert_eq!(send("DELETE /x HTTP/1.1\r\nHost: internal\r\n\r\n"), 200);
    assert_eq!(denials(&p, "evil", "enforced"), 1.0);
    assert_eq!(denials(&p, "internal-host", "enforced"), 2.0);
    assert_eq!(denials(&p, "elsewhere", "enforced"), 0.0);
}

#[test]
fn a_denied_tcp_connection_is_closed_unforwarded() {
    let (up, conns) = raw_requests();
    let deny = format!(
        "admin: 127.0.0.1:0
policies:
  - {{ name: loopback, action: deny, match: {{ source: 127.0.0.1/32 }} }}
listeners:
  - {{ name: edge, bind: 127.0.0.1:0, protocol: tcp, cluster: up }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
        up.addr
    );
    let p = TestProxy::start(&deny, 1);
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed");
    assert!(
        conns.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing forwarded"
    );
    assert_eq!(denials(&p, "loopback", "enforced"), 1.0);

    // A policy with an HTTP condition cannot match a TCP connection.
    let http_only = deny.replace("source: 127.0.0.1/32", "path_prefix: /");
    let p = TestProxy::start(&http_only, 1);
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.write_all(b"hello").unwrap();
    assert!(
        conns.recv_timeout(Duration::from_secs(5)).is_ok(),
        "forwarded"
    );
}

/// Requests answered 200 under a limit of `rps` (burst `burst`) with `workers` workers, from
/// 16 closed-loop clients for about two seconds; and the elapsed time.
fn limited_run(workers: usize, rps: u32, burst: u32) -> (u64, u64, f64) {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, workers, "");
    drop(p);
    let config = simple_config(up.addr, "").replace(
        "cluster: up\n",
        &format!("cluster: up\n        rate_limit: {{ rps: {rps}, burst: {burst} }}\n"),
    );
    let p = TestProxy::start(&config, workers);
    let t0 = Instant::now();
    let load = Load::start(p.edge(), 16, "/");
    std::thread::sleep(Duration::from_secs(2));
    let counts = load.stop();
    let elapsed = t0.elapsed().as_secs_f64();
    let ok = count_of(&counts, 200, "ok");
    let limited = count_of(&counts, 429, "rate-limited\n");
    (ok, limited, elapsed)
}

#[test]
fn rate_limits_hold_their_total_whatever_the_number_of_workers() {
    let (rps, burst) = (400, 40);
    for workers in [1, 2] {
        let (ok, limited, elapsed) = limited_run(workers, rps, burst);
        let expected = f64::from(burst) + f64::from(rps) * elapsed;
        let ratio = ok as f64 / expected;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{workers} workers: {ok} allowed in {elapsed:.2}s, expected {expected:.0} ({ratio:.3})"
        );
        assert!(limited > ok, "the rest was refused: {limited}");
    }
}

#[test]
fn a_limited_request_says_when_to_retry() {
    let up = Upstream::fixed("ok");
    let config = simple_config(up.addr, "").replace(
        "cluster: up\n",
        "cluster: up\n        rate_limit: { rps: 1, burst: 1 }\n",
    );
    let p = TestProxy::start(&config, 1);
    let mut c = Client::connect(p.edge());
    assert_eq!(c.get("/").status, 200);
    let r = c.get("/");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ringmesh-error"), Some("rate-limited"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        p.metric(
            "ringmesh_requests_total{listener=\"edge\",route=\"0\",cluster=\"up\",code=\"429\"}"
        ),
        Some(1.0),
        "counted under the route"
    );
}

#[test]
fn policy_and_rate_limit_errors_name_their_field() {
    let up: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let base = simple_config(up, "");
    let cases = [
        (
            "policies:\n  - { action: allow, match: { identity: \"web\" } }\n",
            "policies[0].match.identity",
        ),
        (
            "policies:\n  - { action: deny, match: { source: 10.0.0.0/40 } }\n",
            "policies[0].match.source",
        ),
        (
            "policies:\n  - { action: allow, audit: true, match: { path: /x } }\n",
            "policies[0].audit",
        ),
        (
            "policies:\n  - { action: maybe, match: { path: /x } }\n",
            "policies[0].action",
        ),
        (
            "policies:\n  - { action: deny, match: { paths: /x } }\n",
            "policies[0].match.paths",
        ),
        ("default_policy: never\n", "default_policy"),
    ];
    for (extra, field) in cases {
        let e = ringmesh_control::config::Config::parse(&format!("{base}{extra}"))
            .err()
            .unwrap_or_else(|| panic!("accepted: {extra}"))
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(e.contains(field), "{field} in {e}");
    }
    let bad_rate = base.replace(
        "cluster: up\n",
        "cluster: up\n        rate_limit: { rps: 0 }\n",
    );
    let e = ringmesh_control::config::Config::parse(&bad_rate)
        .err()
        .map(|v| {
            v.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(e.contains("listeners[0].routes[0].rate_limit.rps"), "{e}");
}

/// A policy scoped to one port of the workload (`applies_to`) allow-lists that port only:
/// "only callers from 10.0.0.0/8 may call the admin port" leaves the public port, and the
/// mesh-wide default, alone.
#[test]
fn a_scoped_allow_constrains_its_port_and_nothing_else() {
    let up = Upstream::fixed("ok");
    let (public, private) = (free_port(), free_port());
    let config = format!(
        "admin: 127.0.0.1:0
policies:
  - {{ name: internal-only, action: allow, applies_to: {{ ports: [ {} ] }}, match: {{ source: 10.0.0.0/8 }} }}
listeners:
  - {{ name: public, bind: \"{public}\", routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ] }}
  - {{ name: private, bind: \"{private}\", routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ] }}
  - {{ name: private-tcp, bind: \"127.0.0.1:0\", protocol: tcp, cluster: up }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: \"{}\" }} ] }}
",
        private.port(),
        up.addr
    );
    let p = TestProxy::start(&config, 1);
    // The client is 127.0.0.1, outside 10.0.0.0/8: refused on the scoped port only.
    assert_eq!(Client::connect(public).get("/").status, 200);
    assert_eq!(Client::connect(private).get("/").status, 403);
    assert_eq!(
        p.metric("ringmesh_policy_denials_total{listener=\"private\",policy=\"default\",mode=\"enforced\"}"),
        Some(1.0)
    );
    // Another port, TCP this time, keeps the default too.
    assert_eq!(Client::connect(p.addr("private-tcp")).get("/").status, 200);
}
