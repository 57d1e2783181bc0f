//! What a request and its answer keep through the proxy, asked over HTTP/1.1 and over HTTP/2
//! by the same test bodies: fields, the proxy's own fields, bodies of every size with a length
//! or streamed, trailers both ways, answers without a body, the proxy's own answers, deadlines.
//! Each body below runs once per protocol ([`both_protocols!`]).

use ringmesh_tests::proto::{Ask, Protocol};
use ringmesh_tests::*;

/// Runs each named test body (generic over the protocol) as one test per protocol.
macro_rules! both_protocols {
    ($($test:ident),* $(,)?) => {
        mod http1 {
            $(#[test] fn $test() { super::$test::<ringmesh_tests::proto::Http1>() })*
        }
        mod http2 {
            $(#[test] fn $test() { super::$test::<ringmesh_tests::proto::Http2>() })*
        }
    };
}

both_protocols!(
    fields_go_through_and_the_proxy_adds_its_own,
    answer_fields_go_through_but_hop_by_hop_ones,
    bodies_arrive_whole_with_a_length_or_streamed,
    trailers_pass_both_ways,
    answers_without_a_body_keep_their_length,
    the_proxys_own_answers,
    the_deadline_left_goes_to_the_next_hop,
);

fn fields_go_through_and_the_proxy_adds_its_own<P: Protocol>() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let ask = Ask::new("GET", "/a/b?c=d")
        .header("x-custom", "1")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-forwarded-proto", "https")
        .header("ringmesh-client-identity", "spiffe://forged")
        .header("accept", "*/*");
    let r = P::exchange(p.edge(), &ask);
    let name = P::NAME;
    assert_eq!(r.status, 200, "{name}");
    assert_eq!(r.header("x-path"), Some("/a/b?c=d"), "{name}");
    assert_eq!(r.header("x-echo-host"), Some("a.test"), "{name}");
    assert_eq!(r.header("x-echo-x-custom"), Some("1"), "{name}");
    assert_eq!(r.header("x-echo-accept"), Some("*/*"), "{name}");
    assert_eq!(
        r.header("x-echo-x-forwarded-for"),
        Some("10.1.1.1, 127.0.0.1"),
        "{name}"
    );
    assert_eq!(r.header("x-echo-x-forwarded-proto"), Some("http"), "{name}");
    assert_eq!(r.header("x-echo-ringmesh-client-identity"), None, "{name}");
    assert!(
        r.header("x-echo-traceparent").is_some(),
        "{name}: a trace context"
    );
    let seen = &up.requests()[0];
    assert_eq!(seen.version, 1, "{name}: the upstream speaks HTTP/1.1");
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count(),
        1,
        "{name}: one Host"
    );
}

fn answer_fields_go_through_but_hop_by_hop_ones<P: Protocol>() {
    let up = Upstream::http(|_| {
        Resp::new(200, "x")
            .header("Connection", "X-Secret")
            .header("X-Secret", "1")
            .header("Keep-Alive", "timeout=5")
            .header("X-Kept", "yes")
            .header("Set-Cookie", "a=1")
            .header("Set-Cookie", "b=2")
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let r = P::exchange(p.edge(), &Ask::new("GET", "/"));
    let name = P::NAME;
    assert_eq!(r.header("x-kept"), Some("yes"), "{name}");
    for hop in ["x-secret", "keep-alive", "connection"] {
        assert_eq!(r.header(hop), None, "{name}: {hop}");
    }
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        cookies,
        ["a=1", "b=2"],
        "{name}: each Set-Cookie kept apart"
    );
}

fn bodies_arrive_whole_with_a_length_or_streamed<P: Protocol>() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    for size in [1usize, 70_000, 1_500_000] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        for length in [true, false] {
            let ask = Ask::new("POST", "/up").body(body.clone(), length);
            let r = P::exchange(p.edge(), &ask);
            let name = P::NAME;
            assert_eq!(r.status, 200, "{name} {size} length={length}");
            assert!(
                r.body == body,
                "{name} {size} length={length}: the body changed"
            );
        }
    }
}

fn trailers_pass_both_ways<P: Protocol>() {
    let up = Upstream::http(|r| Resp {
        status: 200,
        headers: vec![],
        body: Body::Chunked(
            vec![r.body.clone()],
            vec![("x-sum".into(), r.body.len().to_string())],
        ),
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let ask = Ask::new("POST", "/t")
        .body("hello", false)
        .trailer("x-checksum", "abc")
        .trailer("host", "evil.example");
    let r = P::exchange(p.edge(), &ask);
    let name = P::NAME;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{name}");
    assert_eq!(
        r.trailers,
        vec![("x-sum".to_string(), "5".to_string())],
        "{name}"
    );
    let seen = &up.requests()[0];
    assert_eq!(
        seen.trailers,
        vec![("x-checksum".to_string(), "abc".to_string())],
        "{name}: a trailer may not carry Host"
    );
}

fn answers_without_a_body_keep_their_length<P: Protocol>() {
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
    let name = P::NAME;
    let r = P::exchange(p.edge(), &Ask::new("HEAD", "/"));
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (200, Some("12"), 0),
        "{name}"
    );
    let r = P::exchange(p.edge(), &Ask::new("GET", "/204"));
    assert_eq!((r.status, r.body.len()), (204, 0), "{name}");
    let r = P::exchange(p.edge(), &Ask::new("GET", "/304"));
    assert_eq!((r.status, r.header("etag")), (304, Some("\"x\"")), "{name}");
}

fn the_proxys_own_answers<P: Protocol>() {
    let name = P::NAME;
    let dead = free_port();
    let yaml = format!(
        "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n      - {{ match: {{ path_prefix: /down }}, cluster: down }}\n      - {{ match: {{ path_prefix: /empty }}, cluster: empty }}\nclusters:\n  - {{ name: down, endpoints: [ {{ addr: {dead} }} ] }}\n  - {{ name: empty }}\n"
    );
    let p = TestProxy::start(&yaml, 1);
    for (path, status, kind) in [
        ("/nothing", 404, "no-route"),
        ("/down", 502, "connect-failed"),
        ("/empty", 503, "no-endpoint"),
    ] {
        let r = P::exchange(p.edge(), &Ask::new("GET", path));
        assert_eq!(r.status, status, "{name} {path}");
        assert_eq!(r.header("ringmesh-error"), Some(kind), "{name} {path}");
        assert_eq!(r.text(), format!("{kind}\n"), "{name} {path}");
    }
    // A gRPC call gets the failure in gRPC's form.
    let grpc = Ask::new("POST", "/nothing").header("content-type", "application/grpc");
    let r = P::exchange(p.edge(), &grpc);
    assert_eq!(
        (r.status, r.header("grpc-status")),
        (200, Some("12")),
        "{name}"
    );
}

fn the_deadline_left_goes_to_the_next_hop<P: Protocol>() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let ask = Ask::new("GET", "/").header("ringmesh-deadline-ms", "5000");
    let r = P::exchange(p.edge(), &ask);
    let name = P::NAME;
    let left: u64 = r
        .header("x-echo-ringmesh-deadline-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no deadline passed on"));
    assert!(left <= 5000 && left > 4000, "{name}: {left} ms left");
}
