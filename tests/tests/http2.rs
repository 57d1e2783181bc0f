//! HTTP/2 from clients: cleartext by prior knowledge and TLS by ALPN, streams multiplexed onto
//! HTTP/1.1 upstreams, bodies both ways under flow control, trailers, the proxy's own answers,
//! and the abuse patterns that must end with GOAWAY while other clients are served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use ringmesh_tests::h2::{H2Client, exchange};
use ringmesh_tests::*;

#[test]
fn streams_are_multiplexed_onto_http1_upstreams() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let r = c.get("/one?x=1").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-path"), Some("/one?x=1"));
    assert_eq!(r.header("x-echo-host"), Some("a.test"));
    assert_eq!(r.header("x-echo-x-forwarded-proto"), Some("http"));
    // 100 requests at once on the one connection.
    let send = c.send.clone();
    let results = c.run(async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            let req = Request::get(format!("http://a.test/r/{i}"))
                .body(())
                .unwrap();
            set.spawn(exchange(send.clone(), req, Bytes::new(), None));
        }
        let mut paths = Vec::new();
        while let Some(r) = set.join_next().await {
            let r = r.unwrap().unwrap();
            assert_eq!(r.status, 200);
            paths.push(r.header("x-path").unwrap().to_string());
        }
        paths
    });
    let mut want: Vec<String> = (0..100).map(|i| format!("/r/{i}")).collect();
    let mut got = results;
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let seen = up.requests();
    assert_eq!(seen.len(), 101);
    assert!(seen.iter().all(|r| r.version == 1), "HTTP/1.1 upstream");
    // Cookies split across fields come together, as RFC 9113 says.
    let req = Request::get("http://a.test/c")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let r = c.request(req, b"", None).unwrap();
    assert_eq!(r.header("x-echo-cookie"), Some("a=1; b=2"));
    let ev = |e: &str| {
        p.metric(&format!(
            "ringmesh_http2_events_total{{listener=\"edge\",event=\"{e}\"}}"
        ))
    };
    assert_eq!(ev("connection"), Some(1.0));
    assert_eq!(ev("stream"), Some(102.0));
    assert_eq!(ev("client_reset").unwrap_or(0.0), 0.0);
}

#[test]
fn large_bodies_stream_both_ways_under_flow_control() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    // Without a length: chunked to the upstream.
    let req = Request::post("http://a.test/up").body(()).unwrap();
    let r = c.request(req, &data, None).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == data, "{} bytes back", r.body.len());
    // With one.
    let req = Request::put("http://a.test/up")
        .header("content-length", data.len().to_string())
        .body(())
        .unwrap();
    let r = c.request(req, &data, None).unwrap();
    assert!(r.body == data);
    let seen = up.requests();
    assert!(seen[0].chunked && !seen[1].chunked);
    assert_eq!(seen[1].header("content-length"), Some("5000000"));
}

#[test]
fn trailers_pass_both_ways() {
    let up = Upstream::http(|req| {
        let got = req
            .trailers
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Resp {
            status: 200,
            headers: vec![("content-type".into(), "application/grpc".into())],
            body: Body::Chunked(
                vec![b"answer".to_vec()],
                vec![("grpc-status".into(), "0".into()), ("x-seen".into(), got)],
            ),
        }
    });
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_static("abc"));
    let req = Request::post("http://a.test/svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let r = c.request(req, b"question", Some(t)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"answer");
    let trailers = r.trailers.expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-seen").unwrap(), "x-checksum=abc");
    assert_eq!(up.requests()[0].body, b"question");
}

#[test]
fn the_proxys_own_answers_and_failures_reach_http2_clients() {
    let p = TestProxy::start(
        &format!(
            "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /dead }}
        cluster: dead
clusters:
  - {{ name: dead, endpoints: [ {{ addr: {} }} ] }}
",
            free_port()
        ),
        1,
    );
    let mut c = H2Client::connect(p.edge());
    let r = c.get("/nothing").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("ringmesh-error"), Some("no-route"));
    assert!(r.header("connection").is_none());
    let r = c.get("/dead").unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("ringmesh-error"), Some("connect-failed"));
    // The connection goes on after errors.
    assert_eq!(c.get("/nothing").unwrap().status, 404);
}

#[test]
fn an_answer_cut_by_the_upstream_resets_the_stream_not_the_connection() {
    let up = Upstream::raw(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
    });
    let ok = Upstream::fixed("fine");
    let p = TestProxy::start(
        &format!(
            "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /cut }}
        cluster: cut
      - match: {{ path_prefix: / }}
        cluster: ok
clusters:
  - {{ name: cut, endpoints: [ {{ addr: {} }} ] }}
  - {{ name: ok, endpoints: [ {{ addr: {} }} ] }}
",
            up.addr, ok.addr
        ),
        1,
    );
    let mut c = H2Client::connect(p.edge());
    let err = c
        .get("/cut")
        .expect_err("the client must see the answer incomplete");
    assert!(err.is_reset(), "{err:?}");
    assert_eq!(c.get("/").unwrap().body, b"fine");
}

#[test]
fn tls_clients_get_http2_by_alpn() {
    use ringmesh_tests::tls::Pki;
    let up = Upstream::echo();
    let pki = Pki::new("h2tls");
    let leaf = pki.leaf("a", &["a.example"], false);
    let p = TestProxy::simple(up.addr, 1, &leaf.listener_tls());
    let mut c = H2Client::connect_tls(p.edge(), "a.example", pki.client_config(&["h2"])).unwrap();
    let r = c.get("/secure").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-forwarded-proto"), Some("https"));
    let data = vec![7u8; 1_000_000];
    let req = Request::post("http://a.test/up").body(()).unwrap();
    assert!(c.request(req, &data, None).unwrap().body == data);
}

/// A raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// HPACK for GET http://a.test/ (static table entries, a literal authority).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 6];
    b.extend_from_slice(b"a.test");
    b
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
fn goaway(s: &mut TcpStream) -> Option<u32> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).ok()?;
        if head[3] == GOAWAY {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
}

fn raw_h2(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s
}

/// An upstream that answers after a pause, so that streams are still open when reset.
fn slow_upstream() -> Upstream {
    Upstream::http(|_| {
        std::thread::sleep(Duration::from_millis(300));
        Resp::new(200, "slow")
    })
}

#[test]
fn rapid_reset_ends_with_goaway_and_others_are_served() {
    let up = slow_upstream();
    let p = TestProxy::simple(up.addr, 1, "");
    abuse_ends_in_goaway(&p, 5000, |id| {
        let mut out = frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block());
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        out
    });
    // The abuser cost few upstream requests.
    assert!(
        up.requests().len() < 400,
        "{} upstream requests",
        up.requests().len()
    );
}

/// Sends `frames(id)` for `streams` streams on one connection (until the proxy stops reading),
/// and checks that the abuser got GOAWAY ENHANCE_YOUR_CALM, that it was counted, and that
/// another client is served meanwhile.
fn abuse_ends_in_goaway(p: &TestProxy, streams: u32, frames: fn(u32) -> Vec<u8>) {
    let mut s = raw_h2(p.edge());
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..streams {
                if s.write_all(&frames(2 * i + 1)).is_err() {
                    break;
                }
            }
        })
    };
    assert_eq!(goaway(&mut s), Some(ENHANCE_YOUR_CALM));
    writer.join().unwrap();
    let mut other = H2Client::connect(p.edge());
    assert_eq!(other.get("/").unwrap().status, 200);
    let abuse = "ringmesh_http2_events_total{listener=\"edge\",event=\"abuse\"}";
    assert!(eventually(Duration::from_secs(5), || p.metric(abuse) == Some(1.0)));
}

#[test]
fn streams_the_proxy_must_reset_for_protocol_errors_end_with_goaway() {
    // "MadeYouReset": a request ending at once while its content-length says 5 bytes is a
    // stream error (RFC 9113 section 8.1.1) that makes the server reset the stream; the client
    // pays nothing for each.
    let up = slow_upstream();
    let p = TestProxy::simple(up.addr, 1, "");
    abuse_ends_in_goaway(&p, 2000, |id| {
        let mut block = get_block();
        block.extend_from_slice(&[0x0f, 0x0d, 1, b'5']); // content-length: 5
        frame(HEADERS, END_STREAM | END_HEADERS, id, &block)
    });
}

#[test]
fn a_continuation_flood_is_cut_off() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, 1, "");
    let mut s = raw_h2(p.edge());
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames of
    // literal fields, far past the listener's 64 KiB head limit.
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            if s.write_all(&frame(HEADERS, 0, 1, &get_block())).is_err() {
                return;
            }
            let mut field = vec![0x00, 3, b'x', b'-', b'a', 0x7f, 0x81, 0x7f];
            field.extend(std::iter::repeat_n(b'a', 0x7f + 0x7f + 1));
            let block: Vec<u8> = field.iter().copied().cycle().take(16_000).collect();
            for _ in 0..1000 {
                if s.write_all(&frame(CONTINUATION, 0, 1, &block)).is_err() {
                    return;
                }
            }
        })
    };
    let code = goaway(&mut s);
    writer.join().unwrap();
    // Cut off (GOAWAY with an error, or the connection closed) before 16 MB were taken in.
    assert_ne!(code, Some(0), "a flood is not a graceful end");
    let mut other = H2Client::connect(p.edge());
    assert_eq!(other.get("/").unwrap().status, 200);
    assert_eq!(up.requests().len(), 1);
}

/// Waits for a drain started on another thread, the client running meanwhile (it answers the
/// proxy's PING and sees the final GOAWAY); the drain must end before its deadline.
fn drain_ends_in_time(c: &mut H2Client, drained: std::thread::JoinHandle<bool>) {
    c.run(async {
        while !drained.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(
        drained.join().unwrap(),
        "drain finished before its deadline"
    );
}

/// A connection that never pauses for a second between streams still hears of a drain: the
/// GOAWAY does not wait for an idle moment, so the drain ends well before its deadline.
#[test]
fn drain_reaches_a_connection_that_never_pauses() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    assert_eq!(c.get("/first").unwrap().status, 200);
    let drained = std::thread::spawn(move || p.proxy.drain());
    // A request every 20 ms, for longer than the drain's deadline if nothing stops them.
    let mut told = false;
    for _ in 0..750 {
        if c.get("/busy").is_err() {
            told = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(told, "the busy connection was told to go away");
    drain_ends_in_time(&mut c, drained);
}

#[test]
fn drain_sends_goaway_and_lets_streams_in_flight_finish() {
    let up = slow_upstream();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let send = c.send.clone();
    let req = Request::get("http://a.test/slow").body(()).unwrap();
    let pending = c.rt.spawn(exchange(send, req, Bytes::new(), None));
    std::thread::sleep(Duration::from_millis(100));
    let drained = std::thread::spawn(move || p.proxy.drain());
    let r = c.run(pending).unwrap().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slow"[..]));
    drain_ends_in_time(&mut c, drained);
    assert!(c.get("/").is_err(), "the connection was told to go away");
}

/// An upstream that reads one request head, then writes `parts` with pauses between them and
/// closes.
fn scripted_upstream(parts: &'static [&'static [u8]]) -> Upstream {
    Upstream::raw(move |mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        for p in parts {
            if s.write_all(p).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    })
}

#[test]
fn interim_answers_and_heads_in_parts_reach_http2_clients_as_one_answer() {
    let up = scripted_upstream(&[
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nx-b: 2\r\n",
        b"content-length: 5\r\n\r\nhel",
        b"lo",
    ]);
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let r = c.get("/").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (201, &b"hello"[..]));
    assert_eq!(r.header("x-b"), Some("2"));
    assert_eq!(r.header("content-length"), Some("5"));
    assert_eq!(
        r.header("link"),
        None,
        "the interim answer's fields stay its own"
    );
}

#[test]
fn an_answer_ended_by_the_upstream_closing_ends_the_stream_whole() {
    let up = scripted_upstream(&[
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil ",
        b"the end",
    ]);
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    let r = c.get("/").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"until the end"[..]));
    assert_eq!(r.header("connection"), None);
}

#[test]
fn a_client_that_grants_no_window_is_given_up_after_the_idle_timeout() {
    let up = Upstream::http(|_| Resp::new(200, vec![b'x'; 1 << 20]));
    let p = TestProxy::simple(up.addr, 1, "    idle_timeout: 1s\n");
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE 0: no answer body may flow until a WINDOW_UPDATE, and none
    // comes. The client reads everything it is sent.
    s.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .unwrap();
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (_, end) = read_until_closed(&mut s);
    assert!(
        matches!(end, Ok(()) | Err(std::io::ErrorKind::ConnectionReset)),
        "the proxy closed the connection: {end:?}"
    );
    // Other clients are served as before.
    let mut other = H2Client::connect(p.edge());
    assert_eq!(other.get("/").unwrap().body.len(), 1 << 20);
}

#[test]
fn a_silent_handshake_and_an_idle_connection_are_closed_in_their_time() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(
        up.addr,
        1,
        "    request_head_timeout: 300ms\n    idle_timeout: 500ms\n",
    );
    // The preface, and never the SETTINGS that must follow it.
    let mut s = TcpStream::connect(p.edge()).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let closed = read_until_closed(&mut s).1.is_ok();
    assert!(closed, "the handshake was cut off");
    // A request, then nothing: GOAWAY without an error, then the end.
    let mut s = raw_h2(p.edge());
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .unwrap();
    assert_eq!(goaway(&mut s), Some(0));
    let closed = read_until_closed(&mut s).1.is_ok();
    assert!(closed, "the idle connection was closed");
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn a_connection_idle_for_a_while_lets_its_buffers_go_and_serves_on() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = H2Client::connect(p.edge());
    assert_eq!(c.get("/first").unwrap().status, 200);
    // Past two ticks of the connection's timer with nothing to do: its read goes on with a
    // small buffer, its write buffers are let go.
    std::thread::sleep(Duration::from_millis(2500));
    let data = vec![5u8; 300_000];
    let req = Request::post("http://a.test/after").body(()).unwrap();
    let r = c.request(req, &data, None).unwrap();
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    assert!(r.body == data);
    assert_eq!(c.get("/last").unwrap().header("x-path"), Some("/last"));
}
