//! The client side against another make of HTTP/2 server (the h2 crate), over loopback.

use bytes::Bytes;

use super::*;
use crate::h2::testing::{block_on, serve_one};

async fn stream_to(addr: std::net::SocketAddr) -> H2Up {
    let s = monoio::net::TcpStream::connect(addr).await.unwrap();
    let slot = Conns::default().open(Transport::Plain(s), ());
    H2Up::new(slot, false, false)
}

/// Sends the request whose HTTP/1.1 head (and perhaps the start of its body) is `bytes`,
/// as the forwarding path does: the head as a head, the rest as body bytes.
async fn send_request(up: &mut H2Up, bytes: &[u8]) {
    let mut req = RequestHead::default();
    let n = req.parse(bytes, bytes.len()).unwrap().unwrap();
    let fwd = Forwarded {
        client_ip: b"10.0.0.9",
        proto: b"http",
        fallback_host: b"up:80",
        deadline: None,
        trace: None,
        identity: None,
        edits: None,
        target: None,
        authority: None,
    };
    up.write.send_head(&req, bytes, &fwd).unwrap();
    send(up, &bytes[n..]).await;
}

/// Writes body bytes of the request; all are taken.
async fn send(up: &mut H2Up, bytes: &[u8]) {
    let (r, _) = up.write.write(bytes.to_vec()).await;
    r.unwrap();
}

/// The answer's head, as an HTTP/1.1 client would get it, then what came of its body.
async fn head_bytes(up: &mut H2Up) -> Vec<u8> {
    let mut resp = ResponseHead::default();
    let mut buf = Vec::new();
    let n = up.read.read_head(&mut resp, &mut buf).await.unwrap();
    let body = resp.body_framing(false);
    let version = crate::head::Version::Http11;
    let cf = crate::http1::encode::client_framing(body, &resp, version, true);
    let mut out = Vec::new();
    crate::http1::encode::response_head(&mut out, &buf, &resp, cf, None);
    out.extend_from_slice(&buf[n..]);
    out
}

async fn head_text(up: &mut H2Up) -> String {
    String::from_utf8_lossy(&head_bytes(up).await).into_owned()
}

/// Reads the answer to its end, `size` bytes at a time at most.
async fn read_to_end(up: &mut H2Up, size: usize) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let (r, buf) = up.read.read(Vec::with_capacity(size)).await;
        match r.unwrap() {
            0 => return got,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn read_all(up: &mut H2Up) -> String {
    let head = head_text(up).await;
    head + &String::from_utf8_lossy(&read_to_end(up, 4096).await)
}

/// An answer whose body comes in DATA frames right behind its head reaches the forwarding
/// path in one read with the head, and so reaches the client in one write.
#[test]
fn a_small_answer_is_read_whole_with_its_head() {
    block_on(async {
        let addr = serve_one(|_req, mut respond| async move {
            let head = http::Response::builder()
                .header("content-length", "4")
                .body(())
                .unwrap();
            let mut body = respond.send_response(head, false).unwrap();
            body.send_data(Bytes::from_static(b"ab"), false).unwrap();
            body.send_data(Bytes::from_static(b"cd"), true).unwrap();
        });
        let mut up = stream_to(addr).await;
        send_request(&mut up, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let text = head_text(&mut up).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabcd"), "{text}");
        let (r, _) = up.read.read(Vec::with_capacity(4096)).await;
        assert_eq!(r.unwrap(), 0, "the answer ends after its body");
    });
}

/// The request as the server sees it: pseudo-fields from the HTTP/1.1 head, names
/// lowercased, Host as :authority, hop-by-hop fields gone; a chunked body as DATA and its
/// trailers as trailers; and the answer's trailers after a chunked body.
#[test]
fn a_chunked_request_with_trailers_goes_as_data_and_trailers() {
    block_on(async {
        let addr = serve_one(|req, mut respond| async move {
            let (parts, mut body) = req.into_parts();
            let mut got = Vec::new();
            while let Some(d) = body.data().await {
                let d = d.unwrap();
                body.flow_control().release_capacity(d.len()).unwrap();
                got.extend_from_slice(&d);
            }
            let trailers = body.trailers().await.unwrap().unwrap_or_default();
            let echo = format!(
                "{} {} {:?} x-a={:?} conn={:?} body={} trailer={:?}",
                parts.method,
                parts.uri,
                parts.headers.get("te"),
                parts.headers.get("x-a"),
                parts.headers.get("connection"),
                String::from_utf8_lossy(&got),
                trailers.get("x-sum"),
            );
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            send.send_data(Bytes::from(echo), false).unwrap();
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            send.send_trailers(t).unwrap();
        });
        let mut up = stream_to(addr).await;
        let head = b"PUT /p?q=1 HTTP/1.1\r\nHost: up.example\r\nX-A: 1\r\nConnection: x\r\n\
                     Transfer-Encoding: chunked\r\n\r\n";
        send_request(&mut up, head).await;
        send(&mut up, b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n").await;
        let text = read_all(&mut up).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.contains(
                "PUT http://up.example/p?q=1 Some(\"trailers\") x-a=Some(\"1\") conn=None \
                 body=abcde trailer=Some(\"5\")"
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{text}");
    });
}

/// A large answer comes through whole, past the initial windows, read in small pieces.
#[test]
fn a_large_answer_flows_past_the_windows() {
    const SIZE: usize = 3 * 1024 * 1024 + 7;
    block_on(async {
        let addr = serve_one(|_req, mut respond| async move {
            let head = http::Response::builder()
                .header("content-length", SIZE.to_string())
                .body(())
                .unwrap();
            let mut send = respond.send_response(head, false).unwrap();
            // Sent from a task of its own: the helper drives the connection once this
            // returns, and capacity comes only then.
            monoio::spawn(async move {
                let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
                send.reserve_capacity(SIZE);
                let mut rest = Bytes::from(data);
                while !rest.is_empty() {
                    let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    let chunk = rest.split_to(cap.min(rest.len()));
                    send.send_data(chunk, rest.is_empty()).unwrap();
                }
            });
        });
        let mut up = stream_to(addr).await;
        send_request(&mut up, b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let head = head_bytes(&mut up).await;
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut got = head[end..].to_vec();
        got.extend(read_to_end(&mut up, 1000).await);
        let body = &got[..];
        assert_eq!(body.len(), SIZE);
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    });
}

/// An answer the upstream resets halfway reads as what came and then an error, never as an
/// answer that ended: the client must not take a cut body for a whole one.
#[test]
fn an_answer_reset_halfway_ends_in_an_error() {
    block_on(async {
        // The reset goes only once the client has read the head: h2 drops what a stream
        // still has queued when it is reset.
        let got_head = Rc::new(Cell::new(false));
        let seen = got_head.clone();
        let addr = serve_one(|_req, mut respond| async move {
            let head = http::Response::builder()
                .header("content-length", "10")
                .body(())
                .unwrap();
            let mut send = respond.send_response(head, false).unwrap();
            send.send_data(Bytes::from_static(b"abc"), false).unwrap();
            monoio::spawn(async move {
                while !seen.get() {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                send.send_reset(h2::Reason::INTERNAL_ERROR);
            });
        });
        let mut up = stream_to(addr).await;
        send_request(&mut up, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut got = head_bytes(&mut up).await;
        got_head.set(got.ends_with(b"abc"));
        let err = loop {
            let (r, buf) = up.read.read(Vec::with_capacity(4096)).await;
            match r {
                Ok(0) => panic!("a cut answer read as whole: {got:?}"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
            got_head.set(got.ends_with(b"abc"));
        };
        assert!(got.ends_with(b"\r\n\r\nabc"), "{got:?}");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(
            !up.read.refused(),
            "a stream the upstream answered was processed"
        );
    });
}

/// A request body larger than every window the server grants goes out whole, the writer
/// waiting for WINDOW_UPDATEs.
#[test]
fn a_large_request_body_waits_for_the_windows() {
    const SIZE: usize = 2 * 1024 * 1024 + 3;
    block_on(async {
        let addr = serve_one(|req, mut respond| async move {
            monoio::spawn(async move {
                let mut body = req.into_body();
                let (mut n, mut sum) = (0usize, 0u64);
                while let Some(d) = body.data().await {
                    let d = d.unwrap();
                    body.flow_control().release_capacity(d.len()).unwrap();
                    n += d.len();
                    sum += d.iter().map(|&b| b as u64).sum::<u64>();
                }
                let head = http::Response::builder().body(()).unwrap();
                let mut send = respond.send_response(head, false).unwrap();
                send.send_data(Bytes::from(format!("{n} {sum}")), true)
                    .unwrap();
            });
        });
        let mut up = stream_to(addr).await;
        let head = format!("POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: {SIZE}\r\n\r\n");
        send_request(&mut up, head.as_bytes()).await;
        let body: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
        let want: u64 = body.iter().map(|&b| b as u64).sum();
        for part in body.chunks(100_000) {
            send(&mut up, part).await;
        }
        let text = read_all(&mut up).await;
        assert!(
            text.ends_with(&format!("\r\n{SIZE} {want}\r\n0\r\n\r\n")),
            "{text}"
        );
    });
}
