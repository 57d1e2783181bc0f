//! Protocol upgrades (WebSocket and the like) and CONNECT over HTTP/1.1: after the switch,
//! bytes flow both ways until each side closes; h2c is never passed on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use ringmesh_tests::*;

/// Reads a head (status or request line and fields) up to its empty line.
fn read_head(r: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("read head") == 0 {
            panic!("closed mid-head after {lines:?}");
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return lines;
        }
        lines.push(line);
    }
}

fn field<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upstream that switches to "echo": it answers an upgrade request with 101 and a
/// greeting, echoes every byte until the proxy half-closes, then closes its side. The heads it
/// received are sent on `heads`.
fn switching_upstream(heads: mpsc::Sender<Vec<String>>) -> Upstream {
    Upstream::raw(move |s| {
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let head = read_head(&mut r);
        let _ = heads.send(head);
        let _ = w.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\ngreeting;",
        );
        let mut buf = [0u8; 16384];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = w.write_all(b";bye");
        let _ = w.shutdown(Shutdown::Write);
    })
}

const WEBSOCKET: &str = "GET /chat HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn a_websocket_upgrade_tunnels_both_ways_until_each_side_closes() {
    let (tx, heads) = mpsc::channel();
    let up = switching_upstream(tx);
    let p = TestProxy::simple(up.addr, 1, "");
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Bytes of the new protocol may follow the request at once: they must not be lost.
    s.write_all(format!("{WEBSOCKET}early;").as_bytes())
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert_eq!(head[0], "HTTP/1.1 101 Switching Protocols");
    assert_eq!(field(&head, "upgrade"), Some("websocket"));
    assert_eq!(field(&head, "connection"), Some("upgrade"));
    assert_eq!(
        field(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let sent = heads.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(sent[0], "GET /chat HTTP/1.1");
    assert_eq!(field(&sent, "upgrade"), Some("websocket"));
    assert_eq!(field(&sent, "connection"), Some("upgrade"));
    assert_eq!(
        field(&sent, "sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    let mut got = vec![0u8; "greeting;early;".len()];
    r.read_exact(&mut got).unwrap();
    assert_eq!(got, b"greeting;early;");
    // Large traffic both ways, then the client's half-close reaches the upstream, whose own
    // last bytes and close come back.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let mut s = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            s.write_all(&data).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len() + 4);
    assert!(back[..data.len()] == data[..], "echo differs");
    assert_eq!(&back[data.len()..], b";bye");
    // The tunnel is one request, answered 101.
    let series =
        "ringmesh_requests_total{listener=\"edge\",route=\"0\",cluster=\"up\",code=\"101\"}";
    assert!(eventually(Duration::from_secs(5), || p.metric(series) == Some(1.0)));
}

#[test]
fn a_websocket_tunnels_through_a_tls_listener() {
    let (tx, _heads) = mpsc::channel();
    let up = switching_upstream(tx);
    let pki = ringmesh_tests::tls::Pki::new("ws");
    let leaf = pki.leaf("a", &["a.example"], false);
    let p = TestProxy::simple(up.addr, 1, &leaf.listener_tls());
    let config = pki.client_config(&["http/1.1"]);
    let mut c = ringmesh_tests::tls::TlsClient::connect(p.edge(), "a.example", &config).unwrap();
    c.send(WEBSOCKET.as_bytes()).unwrap();
    let head = read_head(c.reader());
    assert_eq!(head[0], "HTTP/1.1 101 Switching Protocols");
    let mut got = vec![0u8; "greeting;".len()];
    c.reader().read_exact(&mut got).unwrap();
    assert_eq!(got, b"greeting;");
    for i in 0..20 {
        let msg = format!("message {i} ").repeat(1000);
        c.send(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.reader().read_exact(&mut back).unwrap();
        assert!(back == msg.as_bytes(), "message {i} came back different");
    }
    // close_notify is the client's half-close: the upstream sees its end, says goodbye, and
    // the proxy closes the client's side cleanly (a truncation would be an error here).
    c.close_write().unwrap();
    let mut rest = Vec::new();
    c.reader().read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b";bye");
}

#[test]
fn an_upgrade_the_upstream_declines_is_an_ordinary_answer_and_the_connection_goes_on() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(WEBSOCKET.as_bytes());
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-upgrade"), Some("websocket"));
    assert_eq!(r.header("x-echo-connection"), Some("upgrade"));
    let again = c.get("/next");
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-echo-upgrade"), None);
}

#[test]
fn h2c_and_half_asked_upgrades_are_never_passed_on() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    // h2c smuggling: the upgrade would tunnel past the proxy's routing and policies.
    c.send(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-upgrade"), None);
    assert_eq!(r.header("x-echo-connection"), None);
    assert_eq!(r.header("x-echo-http2-settings"), None);
    // The same, with h2c hidden behind another protocol.
    c.send(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket, H2C\r\nConnection: upgrade\r\n\r\n",
    );
    assert_eq!(c.response(false).header("x-echo-upgrade"), None);
    // Upgrade without the connection option, or with a body, or from HTTP/1.0: not an upgrade.
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(c.response(false).header("x-echo-upgrade"), None);
    c.send(
        b"POST / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
          Content-Length: 2\r\n\r\nhi",
    );
    let r = c.response(false);
    assert_eq!(r.header("x-echo-upgrade"), None);
    assert_eq!(r.body, b"hi");
    let r = one_shot(
        p.edge(),
        b"GET / HTTP/1.0\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    );
    assert_eq!(r.header("x-echo-upgrade"), None);
    assert_eq!(up.requests().len(), 5);
}

#[test]
fn a_101_nobody_asked_for_is_a_bad_answer() {
    let up = Upstream::raw(|mut s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        read_head(&mut r);
        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxx");
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let r = one_shot(p.edge(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("ringmesh-error"), Some("upstream-protocol"));
}

fn connect_config(db: std::net::SocketAddr, web: std::net::SocketAddr) -> String {
    format!(
        "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - match: {{ host: db.internal, method: CONNECT }}
        cluster: db
      - match: {{ path_prefix: / }}
        cluster: web
clusters:
  - {{ name: db, endpoints: [ {{ addr: {db} }} ] }}
  - {{ name: web, endpoints: [ {{ addr: {web} }} ] }}
"
    )
}

#[test]
fn connect_opens_a_tunnel_to_the_routes_cluster_and_passes_half_close_on() {
    let db = Upstream::reverser();
    let web = Upstream::fixed("web");
    let p = TestProxy::start(&connect_config(db.addr, web.addr), 1);
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\nfirst,")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r);
    assert_eq!(
        head,
        vec!["HTTP/1.1 200 Connection established".to_string()]
    );
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    let mut want = b"first,".to_vec();
    want.extend_from_slice(&data);
    want.reverse();
    assert!(back == want, "got {} bytes", back.len());
    assert_eq!(db.accepted(), 1);
    assert_eq!(web.accepted(), 0);
}

#[test]
fn connect_is_routed_like_any_request_and_never_reaches_an_address_a_client_names() {
    let db = Upstream::reverser();
    let web = Upstream::fixed("web");
    let p = TestProxy::start(&connect_config(db.addr, web.addr), 1);
    // No route takes CONNECT to this host (the catch-all has a path condition, and CONNECT
    // has no path): 404, and nothing is opened.
    let target = format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", web.addr);
    let r = one_shot(p.edge(), target.as_bytes());
    assert_eq!(r.status, 404);
    // Malformed CONNECT targets and a CONNECT with content are refused.
    for bad in [
        &b"CONNECT db.internal HTTP/1.1\r\nHost: db.internal\r\n\r\n"[..],
        b"CONNECT /x HTTP/1.1\r\nHost: db.internal\r\n\r\n",
        b"CONNECT u@db.internal:1 HTTP/1.1\r\nHost: db.internal\r\n\r\n",
        b"CONNECT db.internal:1 HTTP/1.1\r\nHost: db.internal\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let r = one_shot(p.edge(), bad);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(db.accepted(), 0);
    assert_eq!(web.accepted(), 0);
    // A dead cluster endpoint: 502, as for any request.
    let p = TestProxy::start(&connect_config(free_port(), web.addr), 1);
    let r = one_shot(
        p.edge(),
        b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal\r\n\r\n",
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.header("ringmesh-error"), Some("connect-failed"));
}
