//! Access logs, trace propagation and live tap, over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringmesh_tests::*;
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmesh-obs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The JSON lines of a log file (each must parse).
fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn wait_lines(p: &Path, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(5), || lines(p).len() >= n);
    lines(p)
}

#[test]
fn the_access_log_has_a_line_per_request_with_its_fields() {
    let up = Upstream::fixed("hello");
    let dir = temp_dir("fields");
    let log = dir.join("access.log");
    let extra = format!("    access_log: {}", log.display());
    let p = TestProxy::start(&two_routes(up.addr, &extra), 2);
    let answer_len = raw_answer_len(
        p.edge(),
        b"GET /api/users?id=7 HTTP/1.1\r\nHost: api.example\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    );
    let mut c = Client::connect(p.edge());
    c.send(b"POST /web/form HTTP/1.1\r\nHost: web.example\r\nContent-Length: 5\r\n\r\nabcde");
    assert_eq!(c.response(false).status, 200);
    c.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response(false).status, 404);
    // Malformed: logged with its error, nothing of the head trusted.
    one_shot(
        p.edge(),
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );

    let got = wait_lines(&log, 4);
    assert_eq!(got.len(), 4, "{got:#?}");
    let find = |path: &str| {
        got.iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {got:#?}"))
            .clone()
    };
    let a = find("/api/users?id=7");
    assert_eq!(a["listener"], "edge");
    assert_eq!(a["route"], "api");
    assert_eq!(a["cluster"], "up");
    assert_eq!(a["endpoint"], up.addr.to_string());
    assert_eq!(a["method"], "GET");
    assert_eq!(a["authority"], "api.example");
    assert_eq!(a["status"], 200);
    assert_eq!(a["bytes_out"].as_u64().unwrap() as usize, answer_len);
    assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(a["retries"], 0);
    assert_eq!(a["error"], Value::Null);
    assert!(a["duration_ms"].as_f64().unwrap() >= a["upstream_ms"].as_f64().unwrap());
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    assert!(a["client"].as_str().unwrap().starts_with("127.0.0.1:"));

    let w = find("/web/form");
    assert_eq!(w["method"], "POST");
    assert_eq!(w["route"], "web");
    let head_len =
        "POST /web/form HTTP/1.1\r\nHost: web.example\r\nContent-Length: 5\r\n\r\n".len();
    assert_eq!(w["bytes_in"].as_u64().unwrap() as usize, head_len + 5);
    assert_eq!(
        w["trace_id"].as_str().unwrap().len(),
        32,
        "a trace was started"
    );
    assert_ne!(w["trace_id"], a["trace_id"]);

    let n = find("/nowhere");
    assert_eq!(n["status"], 404);
    assert_eq!(n["route"], Value::Null);
    assert_eq!(n["error"], "no-route");

    let bad = got
        .iter()
        .find(|l| l["status"] == 400)
        .expect("the 400 is logged");
    assert_eq!(bad["path"], "");
    assert_eq!(bad["error"], "bad-request");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends `req` on a new connection and returns the length of the whole answer (head and a
/// Content-Length body) as the client reads it.
fn raw_answer_len(addr: std::net::SocketAddr, req: &[u8]) -> usize {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(req).unwrap();
    let mut r = BufReader::new(s);
    let mut len = 0;
    let mut body = 0;
    loop {
        let mut l = String::new();
        len += r.read_line(&mut l).unwrap();
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            body = v.trim().parse().unwrap();
        }
        if l == "\r\n" {
            break;
        }
    }
    let mut b = vec![0; body];
    r.read_exact(&mut b).unwrap();
    len + body
}

#[test]
fn sampling_logs_about_the_given_share() {
    let up = Upstream::fixed("ok");
    let dir = temp_dir("sample");
    let log = dir.join("access.log");
    let extra = format!("    access_log: {{ path: {}, sample: 10% }}", log.display());
    let p = TestProxy::start(&two_routes(up.addr, &extra), 2);
    let mut c = Client::connect(p.edge());
    for _ in 0..3000 {
        assert_eq!(c.get("/api/x").status, 200);
    }
    std::thread::sleep(Duration::from_millis(600));
    let n = lines(&log).len();
    // 10% of 3,000 is 300; binomial standard deviation about 16.
    assert!(
        (200..=400).contains(&n),
        "{n} lines for 3000 requests at 10%"
    );
    // The counter is the process's (other tests here log too).
    let written = p.metric("ringmesh_access_log_lines_total{result=\"written\"}");
    assert!(written.is_some_and(|w| w >= n as f64), "{written:?} < {n}");
    assert_eq!(
        p.metric("ringmesh_access_log_lines_total{result=\"lost\"}"),
        Some(0.0)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigusr1_reopens_the_log_after_rotation() {
    let up = Upstream::fixed("ok");
    let dir = temp_dir("rotate");
    let log = dir.join("access.log");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        two_routes(up.addr, &format!("    access_log: {}", log.display())),
    )
    .unwrap();
    let p = ProxyProcess::start(&config, &["--workers", "2"]);
    let v: Value = serde_json::from_slice(&p.admin("/config").body).unwrap();
    let edge: std::net::SocketAddr = v["bound"]["edge"].as_str().unwrap().parse().unwrap();
    let mut c = Client::connect(edge);
    for _ in 0..10 {
        assert_eq!(c.get("/api/before").status, 200);
    }
    assert_eq!(wait_lines(&log, 10).len(), 10);
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal(10); // SIGUSR1
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..7 {
        assert_eq!(c.get("/api/after").status, 200);
    }
    let after = wait_lines(&log, 7);
    assert_eq!(after.len(), 7, "the new file has the new lines");
    assert!(after.iter().all(|l| l["path"] == "/api/after"));
    assert_eq!(
        lines(&rotated).len(),
        10,
        "the rotated file keeps the old ones"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_log_path_is_a_config_error_naming_the_field() {
    let out = std::process::Command::new(binary())
        .arg("check")
        .arg({
            let dir = temp_dir("badpath");
            let p = dir.join("c.yaml");
            std::fs::write(
                &p,
                two_routes(
                    "127.0.0.1:1".parse().unwrap(),
                    "    access_log: { path: stdout, sample: 150% }",
                ),
            )
            .unwrap();
            p
        })
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("listeners[0].access_log.sample"), "{err}");
    // A file that cannot be opened is refused when the config is applied.
    let proxy = ringmesh_control::Proxy::start(ProxyOptions {
        source: ConfigSource::Text(two_routes(
            "127.0.0.1:1".parse().unwrap(),
            "    access_log: /nonexistent-dir/x/access.log",
        )),
        workers: Some(1),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..ProxyOptions::default()
    });
    let Err(e) = proxy else {
        panic!("a log file that cannot be opened is refused")
    };
    let e = e.to_string();
    assert!(e.contains("listeners[0].access_log.path"), "{e}");
}

#[test]
fn trace_context_is_continued_or_started_with_a_new_span_per_hop() {
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 1, "");
    let mut c = Client::connect(p.edge());
    let span = "00f067aa0ba902b7";
    c.send(
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01\r\n\
             tracestate: congo=t61rcWkgMzE\r\nb3: 4bf92f3577b34da6a3ce929d0e0e4736-{span}-1\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = c.response(false);
    let tp = r.header("x-echo-traceparent").unwrap().to_string();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-01"));
    let new_span = &tp[36..52];
    assert_ne!(new_span, span, "a new span for this hop");
    assert_eq!(r.header("x-echo-tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(
        r.header("x-echo-b3").unwrap(),
        format!("4bf92f3577b34da6a3ce929d0e0e4736-{new_span}-1-{span}")
    );
    // The upstream saw exactly one of each.
    let req = up.requests().pop().unwrap();
    let count = |n: &str| {
        req.headers
            .iter()
            .filter(|(h, _)| h.eq_ignore_ascii_case(n))
            .count()
    };
    assert_eq!((count("traceparent"), count("b3")), (1, 1));

    // None in: a trace starts, sampled, with a valid id.
    let r = c.get("/");
    let tp = r.header("x-echo-traceparent").unwrap();
    assert_eq!(tp.len(), 55);
    assert!(tp.starts_with("00-") && tp.ends_with("-01"));
    assert!(
        tp[3..35]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(
        r.header("x-echo-b3"),
        None,
        "b3 is only written when it came in"
    );

    // Malformed in: replaced by a new trace.
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-zz-yy-01\r\n\r\n");
    let r = c.response(false);
    let tp = r.header("x-echo-traceparent").unwrap();
    assert_eq!(tp.len(), 55);
    assert!(!tp.contains("zz"));
}

/// Reads a chunked tap stream to its end: the JSON lines.
fn read_tap(s: impl Read) -> Vec<Value> {
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        head.push_str(&l);
        if l == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"));
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tap_streams_exactly_the_matching_requests() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::start(&two_routes(up.addr, ""), 2);
    let admin = p.proxy.admin_addr();
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(format!("GET /tap?route=web&n=5 HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The tap is in force once the head is back.
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let edge = p.edge();
    let load = std::thread::spawn(move || {
        let mut c = Client::connect(edge);
        for i in 0..20 {
            assert_eq!(c.get(&format!("/api/{i}")).status, 200);
            assert_eq!(c.get(&format!("/web/{i}")).status, 200);
        }
    });
    // What was read first goes back in front of the rest of the stream.
    let events = read_tap(std::io::Cursor::new(first).chain(s));
    load.join().unwrap();
    assert_eq!(events.len(), 5, "{events:#?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["route"], "web");
        assert_eq!(e["path"], format!("/web/{i}"));
        assert_eq!(e["status"], 200);
    }
    // A tap that ended leaves nothing behind: requests go on, untapped.
    assert_eq!(Client::connect(edge).get("/web/x").status, 200);
}

#[test]
fn tap_refuses_unknown_parameters() {
    let up = Upstream::fixed("ok");
    let p = TestProxy::simple(up.addr, 1, "");
    let r = p.admin("/tap?rout=web");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("rout"));
    assert_eq!(p.admin("/tap?n=0").status, 400);
}
