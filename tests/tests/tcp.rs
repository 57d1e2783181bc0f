//! TCP listeners: bytes both ways, half-close passed on, balancing, and the idle timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
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

/// An upstream that reads until the client half-closes, then answers with what it read,
/// reversed, and closes.
fn reverser() -> Upstream {
    Upstream::raw(|mut s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got.reverse();
        let _ = s.write_all(&got);
    })
}

#[test]
fn bytes_flow_both_ways_and_half_close_is_passed_on() {
    let up = reverser();
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
