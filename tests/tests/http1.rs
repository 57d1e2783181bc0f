//! HTTP/1.1 through the proxy, over real sockets: framing, keep-alive, pipelining, bodies in
//! both directions, interim answers, header rules, and every malformed input refused.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringmesh_tests::*;

#[test]
fn forwards_and_sets_forwarding_headers() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let r = one_shot(
        p.edge(),
        b"GET /a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nX-Forwarded-For: 10.1.1.1\r\n\
          X-Forwarded-Proto: https\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
          Upgrade: websocket\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-path"), Some("/a/b?c=d"));
    assert_eq!(
        r.header("x-echo-host"),
        Some("Example.com:8080"),
        "Host is kept"
    );
    assert_eq!(
        r.header("x-echo-x-forwarded-for"),
        Some("10.1.1.1, 127.0.0.1")
    );
    assert_eq!(r.header("x-echo-x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-echo-accept"), Some("*/*"));
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            r.header(&format!("x-echo-{hop}")),
            None,
            "{hop} must not be forwarded"
        );
    }
    let req = &up.requests()[0];
    assert_eq!(req.version, 1);
    assert_eq!(req.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
}

#[test]
fn response_hop_by_hop_headers_are_removed() {
    let up = Upstream::http(|_| {
        Resp::new(200, "x")
            .header("Connection", "X-Secret")
            .header("X-Secret", "1")
            .header("Keep-Alive", "timeout=5")
            .header("X-Kept", "yes")
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let r = one_shot(p.edge(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert_eq!(r.header("x-secret"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("connection"), None);
}

#[test]
fn keep_alive_reuses_both_connections() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    for _ in 0..20 {
        let r = c.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        up.accepted(),
        1,
        "one pooled upstream connection carried all requests"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        batch.extend_from_slice(
            format!("POST /p{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nb{i:02}")
                .as_bytes(),
        );
    }
    c.send(&batch);
    for i in 0..10 {
        let r = c.response(false);
        assert_eq!(r.header("x-path"), Some(format!("/{i}").as_str()));
        let r = c.response(false);
        assert_eq!(r.header("x-path"), Some(format!("/p{i}").as_str()));
        assert_eq!(r.text(), format!("b{i:02}"));
    }
}

#[test]
fn content_length_and_chunked_bodies_both_ways() {
    let up = Upstream::http(|r| {
        if r.path == "/chunked" {
            Resp {
                status: 200,
                headers: vec![],
                body: Body::Chunked(
                    vec![r.body.clone(), b"-tail".to_vec()],
                    vec![("X-Checksum".into(), "abc".into())],
                ),
            }
        } else {
            Resp::new(200, r.body.clone()).header("x-chunked", &r.chunked.to_string())
        }
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world");
    let r = c.response(false);
    assert_eq!(
        (r.text().as_str(), r.header("x-chunked")),
        ("hello world", Some("false"))
    );

    c.send(b"POST /cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    let r = c.response(false);
    assert_eq!(
        (r.text().as_str(), r.header("x-chunked")),
        ("hello world", Some("true"))
    );
    let seen = up.requests().pop().unwrap();
    assert_eq!(
        seen.trailers,
        vec![("X-Trailer".to_string(), "t".to_string())],
        "request trailers pass"
    );

    c.send(b"POST /chunked HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody");
    let r = c.response(false);
    assert!(r.chunked);
    assert_eq!(r.text(), "body-tail");
    assert_eq!(
        r.trailers,
        vec![("X-Checksum".to_string(), "abc".to_string())],
        "response trailers pass"
    );
}

#[test]
fn large_bodies_stream_in_both_directions() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 2, "");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut c = Client::connect(p.edge());
    c.send(
        format!(
            "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(&body);
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echoed body differs");
    // And chunked, in many small chunks.
    let mut raw = b"PUT /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(7_777) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.send(&raw);
    let r = c.response(false);
    assert!(r.body == body, "echoed chunked body differs");
}

#[test]
fn expect_100_continue() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response(false);
    assert_eq!(
        interim.status, 100,
        "the client is told to go on before it sends the body"
    );
    c.send(b"hello");
    let r = c.response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(r.header("x-echo-expect"), None);
    // A route that does not exist answers at once, without asking for the body.
    let p2 = TestProxy::start(
        &format!(
            "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes: [ {{ match: {{ path: /only }}, cluster: up }} ]\nclusters: [ {{ name: up, endpoints: [ {{ addr: {} }} ] }} ]\n",
            up.addr
        ),
        1,
    );
    let mut c = Client::connect(p2.edge());
    c.send(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let r = c.response(false);
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (404, Some("no-route"))
    );
    assert!(
        c.is_closed(Duration::from_secs(5)),
        "the unread body makes the connection unusable"
    );
}

#[test]
fn head_204_and_304_have_no_body() {
    let up = Upstream::http(|r| match r.path.as_str() {
        "/204" => Resp {
            status: 204,
            headers: vec![],
            body: Body::None,
        },
        "/304" => Resp {
            status: 304,
            headers: vec![("ETag".into(), "\"x\"".into())],
            body: Body::None,
        },
        _ => Resp::new(200, "twelve bytes"),
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("12")));
    for path in ["/204", "/304"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        let r = c.response(true);
        assert_eq!(r.status.to_string(), path[1..]);
    }
    // The connection is still in sync: no stray body bytes came before this answer.
    let r = c.get("/");
    assert_eq!(r.text(), "twelve bytes");
}

#[test]
fn interim_answers_are_forwarded() {
    let up = Upstream::raw(|mut s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let _ = read_request(&mut r);
        let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n");
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let hint = c.response(false);
    assert_eq!(
        (hint.status, hint.header("link")),
        (103, Some("</style.css>; rel=preload"))
    );
    assert_eq!(c.response(false).text(), "ok");
    // An HTTP/1.0 client never sees 1xx.
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
}

#[test]
fn http10_clients() {
    let up = Upstream::http(|r| {
        if r.path == "/chunked" {
            Resp {
                status: 200,
                headers: vec![],
                body: Body::Chunked(vec![b"ab".to_vec(), b"cd".to_vec()], vec![]),
            }
        } else {
            Resp::new(200, r.header("host").unwrap_or("none").to_string())
        }
    });
    let p = TestProxy::simple(up.addr, 1, "");
    // No Host: the proxy supplies the endpoint's; the connection closes after the answer.
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.text(), up.addr.to_string());
    assert!(c.is_closed(Duration::from_secs(5)));
    // Keep-alive on request, and a chunked upstream answer turned into a close-delimited one.
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response(false);
    assert_eq!(
        (r.text().as_str(), r.header("connection")),
        ("h", Some("keep-alive"))
    );
    c.send(b"GET /chunked HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response(false);
    assert!(!r.chunked);
    assert_eq!(r.text(), "abcd");
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn absolute_form_targets() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let r = one_shot(
        p.edge(),
        b"GET http://b.example:81/x?y HTTP/1.1\r\nHost: ignored\r\n\r\n",
    );
    assert_eq!(r.header("x-path"), Some("/x?y"));
    assert_eq!(r.header("x-echo-host"), Some("b.example:81"));
}

#[test]
fn close_delimited_upstream_answers_are_rechunked() {
    let up = Upstream::http(|_| Resp {
        status: 200,
        headers: vec![],
        body: Body::Close(b"until close".to_vec()),
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    let r = c.get("/");
    assert!(r.chunked, "an HTTP/1.1 client keeps its connection");
    assert_eq!(r.text(), "until close");
    assert_eq!(c.get("/").text(), "until close");
    assert_eq!(
        up.accepted(),
        2,
        "a close-delimited connection is not reused"
    );
}

/// What every malformed request must get: the status, `ringmesh-error`, a closed connection,
/// and nothing at the upstream.
fn refused(raw: &[u8], status: u16, kind: &str) {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "    max_request_body_bytes: 100\n");
    let mut c = Client::connect(p.edge());
    c.send(raw);
    let r = c.response(false);
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (status, Some(kind)),
        "{:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed(Duration::from_secs(5)));
    assert!(
        up.requests().is_empty(),
        "forwarded: {:?}",
        String::from_utf8_lossy(raw)
    );
}

#[test]
fn smuggling_and_malformed_requests_are_refused() {
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  \r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad\x01: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: v\x00v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: v\rv\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
    ] {
        refused(raw, 400, "bad-request");
    }
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
        "unsupported",
    );
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n",
        413,
        "body-too-large",
    );
    let mut chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(b"65\r\n");
    chunked.extend_from_slice(&[b'x'; 101]);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    refused(&chunked, 413, "body-too-large");
}

#[test]
fn oversized_heads_get_431() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 70 * 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    refused(&raw, 431, "head-too-large");
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    refused(&many, 431, "head-too-large");
}

#[test]
fn slow_heads_get_408_and_idle_connections_close() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(
        up.addr,
        1,
        "    request_head_timeout: 300ms\n    idle_timeout: 500ms\n",
    );
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.1\r\nHo");
    let r = c.response(false);
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (408, Some("head-timeout"))
    );
    // An idle keep-alive connection is closed quietly.
    let mut c = Client::connect(p.edge());
    assert_eq!(c.get("/").status, 200);
    assert!(c.is_closed(Duration::from_secs(5)));
    assert!(up.requests().len() == 1);
}

#[test]
fn upstream_answers_are_held_to_the_same_rules() {
    let bad: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"garbage\r\n\r\n",
    ];
    for answer in bad {
        let answer = answer.to_vec();
        let up = Upstream::raw(move |mut s| {
            let mut r = BufReader::new(s.try_clone().unwrap());
            while let Ok(Some(_)) = read_request(&mut r) {
                let _ = s.write_all(&answer);
            }
        });
        let p = TestProxy::simple(up.addr, 1, "");
        let mut c = Client::connect(p.edge());
        let r = c.get("/");
        assert_eq!(
            (r.status, r.header("ringmesh-error")),
            (502, Some("upstream-protocol"))
        );
        let _ = c.get("/");
        assert_eq!(
            up.accepted(),
            2,
            "a connection that sent a malformed answer is not reused"
        );
    }
}

#[test]
fn body_cut_short_by_upstream_cuts_the_client_connection() {
    let up = Upstream::raw(|mut s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let _ = read_request(&mut r);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-ten!!");
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut got = Vec::new();
    let _ = c.stream().read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("only-ten!!"),
        "the client sees a short body, then the close: {text}"
    );
}

#[test]
fn a_dead_pooled_connection_fails_no_request_of_any_method() {
    // The upstream answers one request per connection, then closes without saying so: the
    // proxy pools a connection that is already dead. A PUT meets it and goes again on a fresh
    // connection; a POST, which must not go twice, is only sent on a connection seen alive.
    let up = Upstream::raw(|mut s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        if let Ok(Some(req)) = read_request(&mut r) {
            let _ = s.write_all(&Resp::new(200, req.body).to_bytes());
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(120));
        let method = if i % 2 == 0 { "PUT" } else { "POST" };
        c.send(
            format!("{method} /{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{i:02}")
                .as_bytes(),
        );
        let r = c.response(false);
        assert_eq!(
            (r.status, r.text()),
            (200, format!("{i:02}")),
            "request {i}"
        );
    }
    assert!(up.accepted() >= 10);
}

#[test]
fn upstream_down_and_no_endpoint() {
    let dead = free_port();
    let p = TestProxy::simple(dead, 1, "");
    let r = one_shot(p.edge(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (502, Some("connect-failed"))
    );
    let p = TestProxy::start(
        "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes: [ { match: { path_prefix: / }, cluster: empty } ]\nclusters: [ { name: empty } ]\n",
        1,
    );
    let mut c = Client::connect(p.edge());
    let r = c.get("/");
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (503, Some("no-endpoint"))
    );
    assert_eq!(c.get("/").status, 503, "the connection stays usable");
}

#[test]
fn route_timeout_gives_504() {
    let up = Upstream::raw(|s| {
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let p = TestProxy::start(
        &format!(
            "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes: [ {{ match: {{ path_prefix: / }}, cluster: up, timeout: 200ms }} ]\nclusters: [ {{ name: up, endpoints: [ {{ addr: {} }} ] }} ]\n",
            up.addr
        ),
        1,
    );
    let t = std::time::Instant::now();
    let r = one_shot(p.edge(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (504, Some("timeout"))
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn early_upstream_answer_stops_the_upload() {
    // The upstream refuses the request after its head, without reading the body.
    let up = Upstream::raw(|mut s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut r, &mut line).is_ok() && line != "\r\n" {
            line.clear();
        }
        let _ = s.write_all(
            b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
        );
        std::thread::sleep(Duration::from_millis(500));
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    c.send(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n");
    c.send(&[b'x'; 100_000]);
    let r = c.response(false);
    assert_eq!((r.status, r.text().as_str()), (413, "nope"));
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn client_closing_mid_body_leaves_the_proxy_healthy() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    for _ in 0..5 {
        let mut s = TcpStream::connect(p.edge()).unwrap();
        s.write_all(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\npartial")
            .unwrap();
        drop(s);
    }
    let r = one_shot(p.edge(), b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(
        up.requests().iter().all(|r| r.method != "PUT"),
        "a cut upload never completes upstream"
    );
}

#[test]
fn hot_connections_that_go_quiet_keep_working() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    for round in 0..3 {
        // Back-to-back requests make the connection hot (a read waits in advance)...
        for i in 0..5 {
            assert_eq!(
                c.get(&format!("/{round}/{i}")).header("x-path"),
                Some(format!("/{round}/{i}").as_str())
            );
        }
        // ...then quiet long enough to shed its buffer, then busy again.
        std::thread::sleep(Duration::from_millis(700));
    }
    // A request split across writes around the shed point is read whole.
    c.send(b"GET /split HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(400));
    c.send(b"Host: a\r\n\r\n");
    assert_eq!(c.response(false).header("x-path"), Some("/split"));
    // A head larger than the 1 KiB wait buffer.
    let big = "x".repeat(5000);
    c.send(format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let r = c.response(false);
    assert_eq!(r.header("x-echo-x-big").map(str::len), Some(5000));
}

#[test]
fn an_early_keep_alive_answer_lets_the_upload_finish_and_the_connection_live() {
    // Like nginx's `return 200`: answers as soon as the head is in, then reads and drops the body.
    let up = Upstream::raw(|mut s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut len = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                if std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly");
            let mut left = len;
            let mut buf = vec![0u8; 65536];
            while left > 0 {
                let n = r.read(&mut buf[..left.min(65536)]).unwrap_or(0);
                if n == 0 {
                    return;
                }
                left -= n;
            }
        }
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    for _ in 0..3 {
        c.send(b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n");
        let body = vec![b'b'; 300_000];
        let mut s = c.stream().try_clone().unwrap();
        let writer = std::thread::spawn(move || s.write_all(&body).unwrap());
        assert_eq!(c.response(false).text(), "early");
        writer.join().unwrap();
    }
    assert_eq!(
        c.get("/after").text(),
        "early",
        "the connection stays in sync"
    );
    assert_eq!(
        up.accepted(),
        1,
        "and so does the pooled upstream connection"
    );
}

#[test]
fn a_client_that_reads_nothing_of_a_large_answer_is_given_up_after_the_idle_timeout() {
    const SIZE: usize = 32 << 20;
    let up = Upstream::http(|_| Resp::new(200, vec![b'x'; SIZE]));
    let p = TestProxy::simple(up.addr, 1, "    idle_timeout: 1s\n");
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Past the idle timeout with the answer filling the socket buffers and nothing read.
    std::thread::sleep(Duration::from_secs(4));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (got, end) = read_until_closed(&mut s);
    assert!(
        matches!(end, Ok(()) | Err(std::io::ErrorKind::ConnectionReset)),
        "the proxy closed the connection: {end:?}"
    );
    assert!(got < SIZE, "the answer was cut short ({got} bytes)");
}

/// A hot connection keeps a read posted for its next request while an exchange goes on (see
/// perf/README.md). That read's idle clock starts with the request: an exchange longer than the
/// idle timeout must not cost the connection, and the idle timeout still closes it afterwards.
#[test]
fn a_hot_connection_outlives_an_exchange_longer_than_its_idle_timeout() {
    let up = Upstream::http(|r| {
        if r.path == "/slow" {
            std::thread::sleep(Duration::from_millis(1200));
        }
        Resp::new(200, "ok")
    });
    let p = TestProxy::simple(up.addr, 1, "    idle_timeout: 500ms\n");
    let mut c = Client::connect(p.edge());
    for i in 0..5 {
        assert_eq!(c.get(&format!("/{i}")).status, 200);
    }
    assert_eq!(c.get("/slow").status, 200);
    assert_eq!(c.get("/after").status, 200);
    assert!(c.is_closed(Duration::from_secs(5)));
    assert_eq!(up.requests().len(), 7);
}

/// A client that half-closes right after a request on a hot connection still gets the answer,
/// then the proxy closes: the read posted ahead sees the end of the stream before the answer
/// is written, and the answer goes out all the same.
#[test]
fn a_half_close_after_a_request_on_a_hot_connection_is_answered_then_closed() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    for i in 0..5 {
        assert_eq!(c.get(&format!("/{i}")).status, 200);
    }
    c.send(b"GET /last HTTP/1.1\r\nHost: a.test\r\n\r\n");
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let r = c.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert!(c.is_closed(Duration::from_secs(5)));
}
