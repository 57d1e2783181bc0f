//! TCP listeners: bytes both ways, half-close passed on, balancing, and the idle timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ringmesh_tests::*;

fn tcp_config(upstreams: &[std::net::SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = upstreams
        .iter()
        .map(|a| format!("{{ addr: {a} }}"))
        .collect();
    format!(
        "listeners:\n  - {{ name: edge, bind: 127.0.0.1:0, protocol: tcp, cluster: db{extra} }}\nclusters:\n  - {{ name: db, lb: round-robin, endpoints: [ {} ] }}\n",
        eps.join(", ")
    )
}

#[test]
fn bytes_flow_both_ways_and_half_close_is_passed_on() {
    let up = Upstream::reverser();
    let p = TestProxy::start(&tcp_config(&[up.addr], ""), 1);
    let mut c = TcpStream::connect(p.edge()).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_to_end(&mut back).unwrap();
    let mut want = data.clone();
    want.reverse();
    assert!(back == want, "got {} bytes", back.len());
}

#[test]
fn connections_are_balanced_and_a_dead_upstream_closes_the_client() {
    let a = Upstream::raw(|mut s| {
        let _ = s.write_all(b"a");
    });
    let b = Upstream::raw(|mut s| {
        let _ = s.write_all(b"b");
    });
    let p = TestProxy::start(&tcp_config(&[a.addr, b.addr], ""), 1);
    let mut seen = String::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(p.edge()).unwrap();
        c.read_to_string(&mut seen).unwrap();
    }
    assert_eq!(seen, "abab");
    let dead = TestProxy::start(&tcp_config(&[free_port()], ""), 1);
    let mut c = TcpStream::connect(dead.edge()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn idle_tcp_connections_time_out() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        drop(s);
    });
    let p = TestProxy::start(&tcp_config(&[addr], ", idle_timeout: 300ms"), 1);
    let mut c = TcpStream::connect(p.edge()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0, "closed by the proxy");
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// A TCP listener routing by SNI: clusters `a` (exact name), `b` (wildcard) and, when
/// `fallback`, `other` for the rest.
fn sni_config(a: SocketAddr, b: SocketAddr, other: Option<SocketAddr>) -> String {
    let fallback = other.map_or(String::new(), |_| "\n    cluster: other".to_string());
    let other = other.map_or(String::new(), |o| {
        format!("\n  - {{ name: other, endpoints: [ {{ addr: {o} }} ] }}")
    });
    format!(
        "listeners:
  - name: edge
    bind: 127.0.0.1:0
    protocol: tcp{fallback}
    sni:
      - {{ names: [a.example], cluster: a }}
      - {{ names: [\"*.b.example\"], cluster: b }}
clusters:
  - {{ name: a, endpoints: [ {{ addr: {a} }} ] }}
  - {{ name: b, endpoints: [ {{ addr: {b} }} ] }}{other}
"
    )
}

#[test]
fn tls_is_routed_by_server_name_and_passes_through_untouched() {
    use ringmesh_tests::tls::{Pki, TlsClient, tls_upstream};
    let pki = Pki::new("sni-pass");
    let a_leaf = pki.leaf("a", &["a.example"], false);
    let b_leaf = pki.leaf("b", &["x.b.example"], true);
    let (a, a_count) = tls_upstream(&pki, &a_leaf, false);
    let (b, b_count) = tls_upstream(&pki, &b_leaf, false);
    let other = Upstream::raw(|mut s| {
        let _ = s.write_all(b"other");
    });
    let p = TestProxy::start(&sni_config(a, b, None), 2);
    let config = pki.client_config(&["http/1.1"]);
    // The handshake is the upstream's own: its certificate comes back through the proxy.
    for _ in 0..3 {
        let mut c = TlsClient::connect(p.edge(), "A.Example", &config).unwrap();
        assert_eq!(c.peer_certificate().as_ref(), Some(&a_leaf.der));
        assert_eq!(c.get("/").unwrap().status, 200);
    }
    let mut c = TlsClient::connect(p.edge(), "x.b.example", &config).unwrap();
    assert_eq!(c.peer_certificate().as_ref(), Some(&b_leaf.der));
    assert_eq!(c.get("/").unwrap().text(), "anonymous");
    assert_eq!(a_count.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(b_count.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Without a fallback cluster: an unknown name, no name, or not TLS at all is closed
    // unanswered, and counted.
    assert!(TlsClient::connect(p.edge(), "y.y.b.example", &config).is_err());
    assert!(TlsClient::connect(p.edge(), "127.0.0.1", &config).is_err());
    let mut plain = TcpStream::connect(p.edge()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    assert!(plain.read_to_end(&mut got).is_ok_and(|_| got.is_empty()));
    assert!(eventually(Duration::from_secs(5), || {
        p.metric("ringmesh_local_replies_total{listener=\"edge\",kind=\"no-route\"}") == Some(3.0)
    }));

    // With one, the rest goes there (the bytes read to find the name included).
    let p = TestProxy::start(&sni_config(a, b, Some(other.addr)), 1);
    let mut plain = TcpStream::connect(p.edge()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain.write_all(b"hello").unwrap();
    let mut got = String::new();
    plain.read_to_string(&mut got).unwrap();
    assert_eq!(got, "other");
    assert!(TlsClient::connect(p.edge(), "a.example", &config).is_ok());
}

#[test]
fn a_client_that_never_finishes_its_hello_is_timed_out() {
    let up = Upstream::raw(|_| {});
    let yaml = format!(
        "listeners:
  - {{ name: edge, bind: 127.0.0.1:0, protocol: tcp, request_head_timeout: 300ms, sni: [ {{ names: [a.example], cluster: a }} ] }}
clusters:
  - {{ name: a, endpoints: [ {{ addr: {} }} ] }}
",
        up.addr
    );
    let p = TestProxy::start(&yaml, 1);
    let mut c = TcpStream::connect(p.edge()).unwrap();
    // A record header and the start of a hello, then nothing.
    c.write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    // Closed by the proxy (EOF or reset), not left hanging until the read timeout.
    match c.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "still open: {e}"
        ),
    }
    assert_eq!(up.accepted(), 0);
}
