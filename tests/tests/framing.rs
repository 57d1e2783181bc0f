//! What crosses the proxy in a body's framing: chunk extensions stay with the hop that got
//! them, trailers never carry framing, routing, authentication or the proxy's own fields (in
//! either direction, over HTTP/1.1 and HTTP/2), and an HTTP/1.0 answer with Transfer-Encoding
//! is refused as faulty framing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use http::{HeaderMap, Request};
use ringmesh_tests::h2::{H2Action, H2Answer, H2Client, H2Upstream};
use ringmesh_tests::*;

/// Trailer fields a hostile peer sends; only `x-sum` and `grpc-status` may cross.
const HOSTILE_TRAILERS: &str = "X-Sum: 8\r\nContent-Length: 99\r\nHost: evil.example\r\n\
    Authorization: Bearer stolen\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
    ringmesh-client-identity: spiffe://mesh.local/ns/default/sa/admin\r\n\
    Set-Cookie: a=b\r\ngrpc-status: 0\r\n";

/// Reads from `s` until a chunked message ending in a trailer section has fully come.
fn read_chunked_message(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(body) = text.find("\r\n\r\n").map(|i| &text[i + 4..]) {
            if let Some(last) = body.find("0\r\n") {
                if body[last..].ends_with("\r\n\r\n") {
                    return text;
                }
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn trailer_names(message: &str) -> Vec<String> {
    let body = &message[message.find("\r\n\r\n").expect("head") + 4..];
    let at = body.rfind("\r\n0").map_or(0, |i| i + 2);
    body[at..]
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(':').next().unwrap_or_default().to_ascii_lowercase())
        .collect()
}

#[test]
fn http1_chunk_extensions_and_forbidden_trailers_stay_behind_both_ways() {
    let (seen_tx, seen) = mpsc::channel();
    let up = Upstream::raw(move |mut s| {
        let _ = seen_tx.send(read_chunked_message(&mut s));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             4;up-ext=\"secret\"\r\npong\r\n0\r\n{HOSTILE_TRAILERS}\r\n"
        );
        let _ = s.write_all(answer.as_bytes());
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let request = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         4;client-ext=1;q=\"x\"\r\nping\r\n0 ; last\r\n{HOSTILE_TRAILERS}\r\n"
    );
    // Whole (the body is gathered before it goes up), then in two pieces (it streams).
    let split = request.find("ping").expect("body");
    for pieces in [
        vec![&request[..]],
        vec![&request[..split], &request[split..]],
    ] {
        let mut c = TcpStream::connect(p.edge()).unwrap();
        for piece in &pieces {
            c.write_all(piece.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        let answer = read_chunked_message(&mut c);
        let upstream_saw = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream");
        for (who, message) in [("upstream", &upstream_saw), ("client", &answer)] {
            assert!(
                !message.contains("ext"),
                "{who} got an extension: {message}"
            );
            assert!(message.contains("\r\n4\r\n"), "{who}: {message}");
            assert_eq!(
                trailer_names(message),
                ["x-sum", "grpc-status"],
                "{who} ({} pieces): {message}",
                pieces.len()
            );
        }
    }
}

#[test]
fn http2_trailers_that_may_not_cross_are_dropped_both_ways() {
    // HTTP/2 client to an HTTP/1.1 upstream, and back.
    let up = Upstream::http(|req| {
        let names: Vec<&str> = req.trailers.iter().map(|(n, _)| n.as_str()).collect();
        Resp::new(200, names.join(","))
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let mut t = HeaderMap::new();
    for (n, v) in [
        ("x-sum", "8"),
        ("content-length", "99"),
        ("host", "evil.example"),
        ("authorization", "Bearer stolen"),
        (
            "ringmesh-client-identity",
            "spiffe://mesh.local/ns/default/sa/admin",
        ),
        ("cookie", "a=b"),
        ("grpc-status", "0"),
    ] {
        t.insert(n, v.parse().unwrap());
    }
    let req = Request::post("http://a.test/up").body(()).unwrap();
    let r = c.request(req, b"ping", Some(t)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body).to_lowercase(),
        "x-sum,grpc-status"
    );

    // An HTTP/1.1 upstream's trailers reaching an HTTP/2 client.
    let up = Upstream::raw(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npong\r\n0\r\n{HOSTILE_TRAILERS}\r\n"
        );
        let _ = s.write_all(answer.as_bytes());
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let r = c.get("/").unwrap();
    let mut names: Vec<String> = r
        .trailers
        .expect("trailers")
        .keys()
        .map(|k| k.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["grpc-status", "x-sum"]);

    // An HTTP/2 upstream: its trailers reaching an HTTP/1.1 client, and the client's reaching it.
    let h2up = H2Upstream::start(None, |_, _| {
        H2Action::Answer(H2Answer {
            trailers: vec![
                ("x-sum", "8".into()),
                ("authorization", "Bearer stolen".into()),
                ("ringmesh-client-identity", "spiffe://x/y".into()),
                ("grpc-status", "0".into()),
            ],
            ..H2Answer::ok("pong")
        })
    });
    let p = TestProxy::start(
        &format!(
            "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - {{ name: up, protocol: http2, endpoints: [ {{ addr: {} }} ] }}
",
            h2up.addr
        ),
        1,
    );
    let mut c = TcpStream::connect(p.edge()).unwrap();
    let request = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         4;e=1\r\nping\r\n0\r\n{HOSTILE_TRAILERS}\r\n"
    );
    c.write_all(request.as_bytes()).unwrap();
    let answer = read_chunked_message(&mut c);
    assert_eq!(trailer_names(&answer), ["x-sum", "grpc-status"], "{answer}");
    let seen = h2up.requests();
    let mut names: Vec<String> = seen[0]
        .trailers
        .as_ref()
        .expect("trailers")
        .keys()
        .map(|k| k.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["grpc-status", "x-sum"]);
}

#[test]
fn an_http10_answer_with_transfer_encoding_is_refused() {
    let up = Upstream::raw(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("ringmesh-error"), Some("upstream-protocol"));
}

#[test]
fn trailers_that_grow_when_rewritten_are_still_filtered() {
    // `a:1` becomes `a: 1`: the cleaned body is longer than the one received.
    let (seen_tx, seen) = mpsc::channel();
    let up = Upstream::raw(move |mut s| {
        let _ = seen_tx.send(read_chunked_message(&mut s));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut trailers = String::new();
    for _ in 0..50 {
        trailers.push_str("a:1\r\n");
    }
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;e=1\r\nx\r\n0\r\n{trailers}\
         ringmesh-client-identity:spiffe://mesh.local/ns/ops/sa/admin\r\nauthorization:x\r\n\r\n"
    );
    let mut c = TcpStream::connect(p.edge()).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let upstream_saw = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream");
    assert!(
        !upstream_saw.contains("ringmesh-client-identity"),
        "{upstream_saw}"
    );
    assert!(!upstream_saw.contains("authorization"), "{upstream_saw}");
    assert!(!upstream_saw.contains("e=1"), "{upstream_saw}");
    assert_eq!(trailer_names(&upstream_saw).len(), 50, "{upstream_saw}");
}
