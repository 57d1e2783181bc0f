//! Compression of answers (route `compression`), with real decoders: curl `--compressed` on
//! HTTP/1.1 and HTTP/2 for each algorithm, Python's `brotli`, `zstandard` and `gzip` modules on
//! a body of several MiB (byte-identical after decoding), the proxy's memory while 48 MiB
//! stream through it coded, an answer that streams (its first part decodable before the
//! upstream sends the rest), and the answers that must go as they came.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ringmesh_tests::*;

/// Text that compresses as pages do; the same bytes for the same `n`.
fn page(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while v.len() < n {
        let x = i.wrapping_mul(2_654_435_761) % 10_007;
        v.extend_from_slice(
            format!("<tr><td>row {i}</td><td class=\"v\">{x}</td></tr>\n").as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

const BIG: usize = 4 << 20;
const HUGE: usize = 48 << 20;
const LEN: usize = 3 << 20;

fn write_chunked(conn: &mut TcpStream, body: &[u8], piece: usize) -> std::io::Result<()> {
    for part in body.chunks(piece) {
        write!(conn, "{:x}\r\n", part.len())?;
        conn.write_all(part)?;
        conn.write_all(b"\r\n")?;
    }
    conn.write_all(b"0\r\n\r\n")
}

/// The upstream: one kind of answer per path.
fn upstream() -> Upstream {
    Upstream::raw(|conn| {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut conn = conn;
        while let Ok(Some(req)) = read_request(&mut reader) {
            let head_only = req.method == "HEAD";
            let fixed = |conn: &mut TcpStream, fields: &str, body: &[u8]| {
                let head = format!(
                    "HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\n\r\n",
                    body.len()
                );
                conn.write_all(head.as_bytes())?;
                if head_only {
                    return Ok(());
                }
                conn.write_all(body)
            };
            let r = match req.path.as_str() {
                "/big" | "/huge" => {
                    let n = if req.path == "/big" { BIG } else { HUGE };
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                                etag: \"v1\"\r\naccept-ranges: bytes\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    conn.write_all(head.as_bytes())
                        .and_then(|_| write_chunked(&mut conn, &page(n), 40_000))
                }
                "/len" => fixed(&mut conn, "content-type: application/json\r\n", &page(LEN)),
                "/small" => fixed(&mut conn, "content-type: text/html\r\n", &page(100)),
                "/empty/" => fixed(&mut conn, "content-type: text/html\r\n", b""),
                "/png" => fixed(&mut conn, "content-type: image/png\r\n", &page(5000)),
                "/encoded" => fixed(
                    &mut conn,
                    "content-type: text/html\r\ncontent-encoding: gzip\r\n",
                    &page(5000),
                ),
                "/notransform" => fixed(
                    &mut conn,
                    "content-type: text/html\r\ncache-control: public, no-transform\r\n",
                    &page(5000),
                ),
                "/vary" => fixed(
                    &mut conn,
                    "content-type: text/html\r\nvary: Accept-Encoding\r\netag: W/\"w\"\r\n",
                    &page(5000),
                ),
                "/close" => {
                    // Delimited by the close of the connection.
                    let head =
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&page(200_000));
                    return;
                }
                "/hold" => {
                    // A stream that sends its first event, holds the connection for 5 s, then
                    // ends.
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let _ = conn
                        .write_all(head.as_bytes())
                        .and_then(|_| conn.write_all(b"d\r\ndata: first\n\n\r\n"));
                    std::thread::sleep(Duration::from_secs(5));
                    let _ = conn.write_all(b"0\r\n\r\n");
                    return;
                }
                "/events" => {
                    // A stream of events: the first now, the last three seconds later.
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let first = b"data: first\n\n";
                    let r = conn
                        .write_all(head.as_bytes())
                        .and_then(|_| write!(conn, "{:x}\r\n", first.len()))
                        .and_then(|_| conn.write_all(first))
                        .and_then(|_| conn.write_all(b"\r\n"));
                    std::thread::sleep(Duration::from_secs(3));
                    r.and_then(|_| write_chunked(&mut conn, b"data: last\n\n", 100))
                }
                _ => conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            };
            if r.is_err() {
                return;
            }
        }
    })
}

fn config(up: SocketAddr) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: any-size, match: {{ path_prefix: /empty/ }}, cluster: up, compression: {{ min_size: 0 }} }}
      - name: pages
        match: {{ path_prefix: / }}
        cluster: up
        compression:
          algorithms: [zstd, br, gzip]
          min_size: 1KiB
          types: [text/*, application/json]
clusters:
  - name: up
    endpoints: [ {{ addr: {up} }} ]
"
    )
}

/// `curl ARGS URL` with the body to a file: (headers lowercase, body).
fn curl(args: &[&str], url: &str) -> (String, Vec<u8>) {
    let file = std::env::temp_dir().join(format!(
        "ringmesh-compress-{}-{}",
        std::process::id(),
        url.len() + args.len()
    ));
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "--max-time", "30", "-o"])
        .arg(&file)
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let body = std::fs::read(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    (
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase(),
        body,
    )
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[test]
fn curl_decodes_every_algorithm_on_both_protocols() {
    if tool(&["curl"]).is_none() {
        return;
    }
    let up = upstream();
    let p = TestProxy::start(&config(up.addr), 1);
    let expected = page(BIG);
    for (proto, flag) in [
        ("HTTP/1.1", "--http1.1"),
        ("HTTP/2", "--http2-prior-knowledge"),
    ] {
        for alg in ["gzip", "br", "zstd"] {
            let url = format!("http://{}/big", p.edge());
            let accept = format!("accept-encoding: {alg}");
            let (head, body) = curl(&[flag, "--compressed", "-H", &accept], &url);
            assert_eq!(
                field(&head, "content-encoding"),
                Some(alg),
                "{proto}: {head}"
            );
            assert_eq!(
                field(&head, "vary"),
                Some("accept-encoding"),
                "{proto}: {head}"
            );
            assert_eq!(field(&head, "etag"), Some("w/\"v1\""), "{proto}: {head}");
            assert_eq!(field(&head, "accept-ranges"), None, "{proto}: {head}");
            assert_eq!(field(&head, "content-length"), None, "{proto}: {head}");
            assert!(
                body == expected,
                "{proto} {alg}: {} bytes decoded",
                body.len()
            );
        }
        // A length-delimited answer loses its length when coded.
        let url = format!("http://{}/len", p.edge());
        let (head, body) = curl(&[flag, "--compressed", "-H", "accept-encoding: gzip"], &url);
        assert_eq!(field(&head, "content-encoding"), Some("gzip"), "{head}");
        assert_eq!(field(&head, "content-length"), None, "{head}");
        assert!(body == page(LEN), "{proto}: {} bytes", body.len());
    }
    let coded =
        p.metric("ringmesh_compressed_total{listener=\"edge\",route=\"pages\",algorithm=\"gzip\"}");
    assert_eq!(coded, Some(4.0));
    let bytes_in = p.metric(
        "ringmesh_compression_bytes_total{listener=\"edge\",route=\"pages\",direction=\"in\"}",
    );
    let bytes_out = p.metric(
        "ringmesh_compression_bytes_total{listener=\"edge\",route=\"pages\",direction=\"out\"}",
    );
    let (i, o) = (bytes_in.unwrap(), bytes_out.unwrap());
    assert_eq!(i, (6 * BIG + 2 * LEN) as f64);
    assert!(o < i / 4.0, "{o} of {i}");
}

/// `decode_answer.py ADDR PATH ACCEPT`: its JSON line.
fn python_fetch(addr: SocketAddr, path: &str, accept: &str) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/decode_answer.py");
    let out = Command::new("python3")
        .arg(script)
        .args([&addr.to_string(), path, accept])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "decode_answer.py: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn python_decoders_get_identical_bytes_and_memory_stays_bounded() {
    if tool(&["python3"]).is_none()
        || !Command::new("python3")
            .args(["-c", "import brotli, zstandard"])
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: python3 with brotli and zstandard (tests/run installs them)");
        return;
    }
    let up = upstream();
    let cfg = temp_config("compression-mem", &config(up.addr));
    let proxy = ProxyProcess::start(&cfg, &["--workers", "1"]);
    let edge: SocketAddr = {
        let c: serde_json::Value = serde_json::from_str(&proxy.admin("/config").text()).unwrap();
        c["bound"]["edge"].as_str().unwrap().parse().unwrap()
    };
    let big = sha256_hex(&page(BIG));
    for (accept, coding) in [
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.4", "gzip"),
        ("*;q=0.1, zstd;q=0", "br"),
    ] {
        let v = python_fetch(edge, "/big", accept);
        assert_eq!(v["coding"], coding, "{accept}: {v}");
        assert_eq!(v["decoded"], BIG, "{accept}: {v}");
        assert_eq!(v["sha256"], big.as_str(), "{accept}: {v}");
        assert!(v["coded"].as_u64().unwrap() < (BIG / 4) as u64, "{v}");
    }
    // Memory: 48 MiB streamed through coded, each algorithm in turn; resident memory grows by
    // less than a few MiB (the encoders' windows and buffers), not by the body.
    let _ = python_fetch(edge, "/big", "br");
    let before = proxy.rss_kib();
    let huge = sha256_hex(&page(HUGE));
    for accept in ["br", "zstd", "gzip"] {
        let v = python_fetch(edge, "/huge", accept);
        assert_eq!(
            (v["decoded"].as_u64(), v["sha256"].as_str()),
            (Some(HUGE as u64), Some(huge.as_str())),
            "{v}"
        );
    }
    let after = proxy.rss_kib();
    eprintln!("proxy RSS before {before} KiB, after 3 x 48 MiB coded {after} KiB");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn answers_that_must_not_be_coded_go_as_they_came() {
    let up = upstream();
    let p = TestProxy::start(&config(up.addr), 1);
    let get = |path: &str, accept: Option<&str>| {
        let mut c = Client::connect(p.edge());
        let accept = accept.map_or(String::new(), |a| format!("Accept-Encoding: {a}\r\n"));
        c.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n{accept}\r\n").as_bytes());
        c.response(false)
    };
    let all = Some("gzip, br, zstd");
    for path in ["/small", "/png", "/notransform"] {
        let r = get(path, all);
        assert_eq!(r.header("content-encoding"), None, "{path}: {r:?}");
        assert_eq!(r.header("vary"), None, "{path}: nothing varies");
        assert!(r.header("content-length").is_some(), "{path}");
    }
    let r = get("/encoded", all);
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "the upstream's own coding"
    );
    assert_eq!(r.body, page(5000), "passed through as it came");
    // A client that accepts no coding (or refuses them all) gets the answer as it is, told that
    // it varies.
    for accept in [
        None,
        Some("identity"),
        Some("gzip;q=0, *;q=0"),
        Some("deflate"),
    ] {
        let r = get("/len", accept);
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        assert_eq!(r.header("content-length"), Some(LEN.to_string().as_str()));
        assert_eq!(r.body.len(), LEN);
    }
    // A Vary that already names the field is not repeated; a weak ETag stays as it is.
    let r = get("/vary", all);
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    let varies: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("vary"))
        .collect();
    assert_eq!(varies.len(), 1, "{r:?}");
    assert_eq!(r.header("etag"), Some("W/\"w\""));
    // An empty answer has nothing to code, even where any size qualifies: it keeps its
    // length, and the connection goes on.
    let mut c = Client::connect(p.edge());
    c.send(b"GET /empty/ HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("content-encoding"), None, "{r:?}");
    assert_eq!(r.header("content-length"), Some("0"), "{r:?}");
    c.send(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.response(false).body, page(100));
    // HEAD: the fields a GET would get, no length, no body; the connection goes on.
    let mut c = Client::connect(p.edge());
    c.send(b"HEAD /len HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.response(true);
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    c.send(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.response(false).body, page(100));
}

/// Reads a chunked answer's head and its first chunk.
fn first_chunk(reader: &mut impl BufRead) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    (head, next_chunk(reader))
}

/// Reads one chunk of a chunked body.
fn next_chunk(reader: &mut impl BufRead) -> Vec<u8> {
    let mut size = String::new();
    reader.read_line(&mut size).expect("chunk size");
    let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
    let mut data = vec![0; n + 2];
    reader.read_exact(&mut data).expect("chunk");
    data.truncate(n);
    data
}

#[test]
fn streamed_answers_reach_the_client_as_they_come_and_http10_gets_them_to_the_close() {
    let up = upstream();
    let p = TestProxy::start(&config(up.addr), 1);
    // The upstream sends its first event, then waits three seconds: the client can decode the
    // first event before then (the encoder flushed it).
    let s = TcpStream::connect(p.edge()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(s);
    let (head, mut coded) = first_chunk(&mut reader);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut first = Vec::new();
    while first.is_empty() {
        // A flushed gzip stream: the decoder gives what there is, then reports the cut.
        let _ = flate2::read::GzDecoder::new(&coded[..]).read_to_end(&mut first);
        if first.is_empty() {
            coded.extend(next_chunk(&mut reader));
        }
    }
    let waited = started.elapsed();
    assert_eq!(first, b"data: first\n\n");
    assert!(
        waited < Duration::from_secs(2),
        "the first event waited {waited:?}"
    );

    // HTTP/1.0: no chunks; the coded body ends when the proxy closes.
    let mut c = Client::connect(p.edge());
    c.send(b"GET /close HTTP/1.0\r\nAccept-Encoding: br\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(r.header("transfer-encoding").is_none() && r.header("content-length").is_none());
    let mut body = Vec::new();
    brotli::Decompressor::new(&r.body[..], 4096)
        .read_to_end(&mut body)
        .unwrap();
    assert!(body == page(200_000));
}

#[test]
fn bad_compression_configs_are_refused_naming_the_field() {
    let up = SocketAddr::from(([127, 0, 0, 1], 9));
    let route = |extra: &str| {
        format!(
            "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: r, match: {{ path_prefix: / }}, {extra} }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: {up} }} ] }}
"
        )
    };
    for (extra, field, why) in [
        (
            "cluster: up, compression: { algorithms: [gzip, deflate] }",
            "compression.algorithms[1]",
            "not one of",
        ),
        (
            "cluster: up, compression: { algorithms: [gzip, gzip] }",
            "compression.algorithms[1]",
            "twice",
        ),
        (
            "cluster: up, compression: { algorithms: [] }",
            "compression.algorithms",
            "at least one",
        ),
        (
            "cluster: up, compression: { types: [\"text/html; charset=utf-8\"] }",
            "compression.types[0]",
            "media type",
        ),
        (
            "cluster: up, compression: { levels: { gzip: 0 } }",
            "compression.levels.gzip",
            "out of range",
        ),
        (
            "cluster: up, compression: { levels: { zstd: 10 } }",
            "compression.levels.zstd",
            "out of range",
        ),
        (
            "cluster: up, compression: { min_size: lots }",
            "compression.min_size",
            "not a size",
        ),
        (
            "cluster: up, compression: { gzip: true }",
            "compression.gzip",
            "",
        ),
        (
            "cluster: up, compression: { levels: { br: 10 } }",
            "compression.levels.br",
            "out of range",
        ),
        (
            "cluster: up, compression: {}, response_headers: { remove: [vary] }",
            "response_headers",
            "`vary` is the compression's",
        ),
        (
            "cluster: up, compression: {}, response_headers: { set: { ETag: x } }",
            "response_headers",
            "is the compression's",
        ),
        (
            "direct_response: { status: 200, body: ok }, compression: {}",
            "compression",
            "answers itself",
        ),
    ] {
        let e = config_errors(&route(extra));
        assert!(
            e.contains(&format!("listeners[0].routes[0].{field}")) && e.contains(why),
            "{extra}: {e}"
        );
    }
    // A cluster the route sends to may not edit them either.
    let e = config_errors(&route("cluster: up, compression: {}").replace(
        "endpoints: [ { addr: 127.0.0.1:9 } ] }",
        "endpoints: [ { addr: 127.0.0.1:9 } ], response_headers: { add: { content-encoding: gzip } } }",
    ));
    assert!(
        e.contains("listeners[0].routes[0].compression")
            && e.contains("cluster `up` edits `content-encoding`"),
        "{e}"
    );
    // And the defaults are what the documentation says.
    let c =
        ringmesh_control::config::Config::parse(&route("cluster: up, compression: {}")).unwrap();
    let cc = c.listeners[0].routes[0].compression.as_ref().unwrap();
    assert_eq!(cc.algorithms, ["zstd", "br", "gzip"]);
    assert_eq!(
        (cc.min_size, cc.levels.gzip, cc.levels.br, cc.levels.zstd),
        (1024, 2, 4, 3)
    );
}

#[test]
fn slow_readers_cannot_make_a_worker_hold_more_than_its_bound_of_encoders() {
    // As many coded streams as a worker codes at once, each held open by its upstream for 5 s
    // (a client that reads slowly holds one the same way): the next qualifying answer goes
    // uncoded, with `Vary`, counted as busy; once they end, answers are coded again.
    const BOUND: usize = 256;
    let up = upstream();
    let p = TestProxy::start(&config(up.addr), 1);
    let mut held = Vec::new();
    for _ in 0..BOUND {
        let mut c = Client::connect(p.edge());
        c.send(b"GET /hold HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
        let mut reader = BufReader::new(c.stream().try_clone().unwrap());
        let (head, _) = first_chunk(&mut reader);
        assert!(head.contains("content-encoding: gzip"), "{head}");
        held.push(c);
    }
    let get = || {
        let mut c = Client::connect(p.edge());
        c.send(b"GET /len HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
        c.response(false)
    };
    let r = get();
    assert_eq!(
        r.header("content-encoding"),
        None,
        "past the bound: uncoded"
    );
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.body.len(), LEN);
    let busy = "ringmesh_compressed_total{listener=\"edge\",route=\"pages\",algorithm=\"busy\"}";
    assert_eq!(p.metric(busy), Some(1.0));
    assert!(
        eventually(Duration::from_secs(15), || get().header("content-encoding")
            == Some("gzip")),
        "the encoders are given back when their streams end"
    );
    drop(held);
}
