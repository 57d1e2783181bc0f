//! Span export over OTLP/HTTP, received by a collector that decodes the protobuf with the
//! official `opentelemetry-proto` package (tests/python/otlp_collector.py): a trace through two
//! proxies and an application keeps its parent/child links, spans carry OpenTelemetry's HTTP
//! attributes, sampling follows the caller or the configured rate, and a collector that is
//! down or slow fails no request and costs bounded memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringmesh_tests::*;
use serde_json::Value;

fn have_otlp_proto() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ])
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || missing_tool("python3 with opentelemetry-proto")
}

/// A running test collector and the lines it printed.
struct Collector {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<Value>,
}

impl Collector {
    fn start(args: &[&str]) -> Collector {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/otlp_collector.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the collector");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(20)).expect("port");
        let port = first["port"].as_u64().expect("port line") as u16;
        Collector {
            child,
            port,
            lines: rx,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Spans received until `done` says enough, or `wait` passes. A post the package could
    /// not decode fails the test.
    fn spans_until(&self, wait: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut spans = Vec::new();
        while !done(&spans) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    assert!(
                        v.get("invalid").is_none(),
                        "collector could not decode: {v}"
                    );
                    if v.get("span_id").is_some() {
                        spans.push(v);
                    }
                }
                Err(_) => break,
            }
        }
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracing(url: &str, service: &str, sample: &str) -> String {
    format!("tracing: {{ otlp: \"{url}\", sample: {sample}, service_name: {service} }}\n")
}

fn hop(to: SocketAddr, route: &str, cluster: &str, extra: &str) -> String {
    format!(
        "admin: 127.0.0.1:0
{extra}listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: {route}, match: {{ path_prefix: / }}, cluster: {cluster} }}
clusters:
  - name: {cluster}
    endpoints: [ {{ addr: {to} }} ]
"
    )
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> Response {
    one_shot(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: shop.example:8080\r\n{extra}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[test]
fn a_trace_through_two_proxies_and_an_application_keeps_its_links() {
    if !have_otlp_proto() {
        return;
    }
    let collector = Collector::start(&[]);
    let app = Upstream::fixed("ok");
    let back = TestProxy::start(
        &hop(
            app.addr,
            "orders",
            "app",
            &tracing(&collector.url(), "back", "100%"),
        ),
        1,
    );
    let edge = TestProxy::start(
        &hop(
            back.edge(),
            "api",
            "back",
            &tracing(&collector.url(), "edge", "100%"),
        ),
        2,
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let root = "00f067aa0ba902b7";
    let r = get(
        edge.edge(),
        "/api/items?token=secret",
        &format!("traceparent: 00-{trace}-{root}-01\r\n"),
    );
    assert_eq!(r.status, 200);

    let spans = collector.spans_until(Duration::from_secs(10), |s| {
        s.iter().filter(|x| x["trace_id"] == trace).count() >= 2
    });
    let of = |service: &str| {
        spans
            .iter()
            .find(|s| s["trace_id"] == trace && s["resource"]["service.name"] == service)
            .unwrap_or_else(|| panic!("no span from {service}: {spans:?}"))
    };
    let (e, b) = (of("edge"), of("back"));
    // The links: caller -> edge -> back -> application.
    assert_eq!(e["parent_span_id"], root, "{e}");
    assert_eq!(b["parent_span_id"], e["span_id"], "{b}");
    let seen = app.requests();
    let tp = seen[0]
        .header("traceparent")
        .expect("traceparent reached the app");
    assert_eq!(
        tp,
        format!("00-{trace}-{}-01", b["span_id"].as_str().unwrap()),
        "the application's parent is the last proxy's span"
    );
    // OpenTelemetry's HTTP attributes, the query left out.
    for (s, route, cluster) in [(e, "api", "back"), (b, "orders", "app")] {
        assert_eq!(s["kind"], 2, "SERVER");
        assert_eq!(s["name"], format!("GET {route}"));
        assert_eq!(s["scope"], "ringmesh");
        assert_eq!(attr(s, "http.request.method"), "GET");
        assert_eq!(attr(s, "url.path"), "/api/items");
        assert_eq!(attr(s, "url.scheme"), "http");
        assert_eq!(attr(s, "server.address"), "shop.example");
        assert_eq!(attr(s, "server.port"), 8080);
        assert_eq!(attr(s, "http.route"), route);
        assert_eq!(attr(s, "http.response.status_code"), 200);
        assert_eq!(attr(s, "client.address"), "127.0.0.1");
        assert_eq!(attr(s, "ringmesh.listener"), "edge");
        assert_eq!(attr(s, "ringmesh.cluster"), cluster);
        assert_eq!(s["status"], 0, "UNSET for a 200");
        assert_eq!(s["flags"].as_u64().unwrap() & 0xff, 1, "sampled");
        let (start, end) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
        assert!(start > 0 && end >= start, "{s}");
        assert!(
            !s.to_string().contains("secret"),
            "the query is not exported: {s}"
        );
    }
    assert_eq!(
        attr(e, "ringmesh.upstream.address"),
        back.edge().to_string().as_str()
    );
    assert_eq!(
        attr(b, "ringmesh.upstream.address"),
        app.addr.to_string().as_str()
    );
    // The edge's span contains the back's (each worker maps its monotonic clock to wall time
    // on its own: within a millisecond).
    let at = |s: &Value, k: &str| s[k].as_u64().unwrap() as i128;
    let slack = 1_000_000;
    assert!(
        at(e, "start") <= at(b, "start") + slack && at(b, "end") <= at(e, "end") + slack,
        "{e} {b}"
    );
    assert!(eventually(Duration::from_secs(5), || {
        edge.metric("ringmesh_spans_total{result=\"exported\"}") >= Some(1.0)
    }));
}

#[test]
fn failures_are_error_spans_and_sampling_follows_the_caller_or_the_rate() {
    if !have_otlp_proto() {
        return;
    }
    let collector = Collector::start(&[]);
    let up = Upstream::http(|r| {
        if r.path.starts_with("/fail") {
            Resp::new(503, "down")
        } else {
            Resp::new(200, "ok")
        }
    });
    // New traces are never sampled here: only the callers' decisions count.
    let p = TestProxy::start(
        &hop(
            up.addr,
            "all",
            "up",
            &tracing(&collector.url(), "edge", "0%"),
        ),
        1,
    );
    let sampled = "00-11111111111111111111111111111111-2222222222222222-01";
    let unsampled = "00-33333333333333333333333333333333-4444444444444444-00";
    assert_eq!(
        get(p.edge(), "/fail", &format!("traceparent: {sampled}\r\n")).status,
        503
    );
    assert_eq!(
        get(p.edge(), "/", &format!("traceparent: {unsampled}\r\n")).status,
        200
    );
    assert_eq!(get(p.edge(), "/new", "").status, 200);
    // A new trace not sampled says so downstream.
    let new = up
        .requests()
        .into_iter()
        .find(|r| r.path == "/new")
        .unwrap();
    assert!(
        new.header("traceparent").unwrap().ends_with("-00"),
        "{new:?}"
    );
    assert!(eventually(Duration::from_secs(5), || {
        p.metric("ringmesh_spans_total{result=\"exported\"}") >= Some(1.0)
    }));
    std::thread::sleep(Duration::from_millis(600));
    let spans = collector.spans_until(Duration::from_secs(1), |_| false);
    assert_eq!(spans.len(), 1, "only the caller-sampled request: {spans:?}");
    let s = &spans[0];
    assert_eq!(s["trace_id"], "11111111111111111111111111111111");
    assert_eq!(attr(s, "http.response.status_code"), 503);
    assert_eq!(s["status"], 2, "a 5xx is an error span");

    // At 100%, a request with no context is exported too, as a root span.
    let p2 = TestProxy::start(
        &hop(
            up.addr,
            "all",
            "up",
            &tracing(&collector.url(), "edge", "100%"),
        ),
        1,
    );
    assert_eq!(get(p2.edge(), "/root", "").status, 200);
    let spans = collector.spans_until(Duration::from_secs(10), |s| !s.is_empty());
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["parent_span_id"], "");
    assert_eq!(
        spans[0]["flags"].as_u64().unwrap() & 0x300,
        0x100,
        "no remote parent"
    );
}

#[test]
fn a_config_with_a_bad_collector_url_is_refused_naming_the_field() {
    for (url, why) in [
        ("https://c:4318", "http://"),
        ("http://c:0/", "port"),
        ("http://u@c/", "user info"),
    ] {
        let cfg = hop(
            "127.0.0.1:9".parse().unwrap(),
            "r",
            "c",
            &tracing(url, "s", "100%"),
        );
        let e = ringmesh_control::config::Config::parse(&cfg)
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"))
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        assert!(e.contains("tracing.otlp") && e.contains(why), "{url}: {e}");
    }
}

/// Requests through a proxy whose collector is `url`; each must succeed.
fn load(addr: SocketAddr, n: usize) {
    let mut c = Client::connect(addr);
    for i in 0..n {
        c.send(format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        let r = c.response(false);
        assert_eq!(r.status, 200, "request {i}");
    }
}

#[test]
fn a_collector_down_or_slow_fails_no_request_and_memory_stays_bounded() {
    if !have_otlp_proto() {
        return;
    }
    let up = Upstream::fixed("ok");
    let slow = Collector::start(&["--delay", "3"]);
    let down = format!("http://{}/v1/traces", free_port());
    for (what, url) in [("down", down), ("slow", slow.url())] {
        let cfg = temp_config(
            &format!("spans-{what}.yaml"),
            &hop(up.addr, "all", "up", &tracing(&url, "edge", "100%")),
        );
        let p = ProxyProcess::start(&cfg, &["--workers", "1"]);
        let edge: SocketAddr = {
            let c: Value = serde_json::from_str(&p.admin("/config").text()).unwrap();
            c["bound"]["edge"].as_str().unwrap().parse().unwrap()
        };
        load(edge, 5_000);
        let before = p.rss_kib();
        load(edge, 40_000);
        let after = p.rss_kib();
        let metrics = p.admin("/metrics").text();
        let lost = metric_value(&metrics, "ringmesh_spans_total{result=\"dropped\"}").unwrap()
            + metric_value(&metrics, "ringmesh_spans_total{result=\"failed\"}").unwrap();
        eprintln!(
            "collector {what}: RSS {before} KiB -> {after} KiB after 40,000 more requests; {lost} spans not exported"
        );
        assert!(lost > 0.0, "{what}: spans were lost and counted");
        // The queue holds at most 32 batches of 64 KiB: memory does not follow the spans lost.
        assert!(
            after < before + 16 * 1024,
            "{what}: RSS grew from {before} to {after} KiB"
        );
    }
}
