//! The admin dashboard in a real browser, and `/metrics` read by real Prometheus tools.
//!
//! These need Debian's `chromium`, `prometheus` and `promtool` (`bash tests/run` installs
//! them). A missing one fails the test, unless `RINGMESH_SKIP_MISSING_TOOLS=1` asks to skip.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringmesh_tests::*;
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmesh-dash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits for a child with a deadline; kills it past the deadline.
fn wait_output(mut child: Child, limit: Duration) -> (bool, String, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), out, err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An upstream that fails `/web/fail` with 503 and answers everything else.
fn upstream() -> Upstream {
    Upstream::http(|r| {
        if r.path.starts_with("/web/fail") {
            Resp::new(503, "no")
        } else {
            Resp::new(200, "ok")
        }
    })
}

/// Known traffic on route `web`: 7 answers of 200 and 3 of 503.
fn web_traffic(edge: SocketAddr) {
    let mut c = Client::connect(edge);
    for i in 0..10 {
        let path = if i % 3 == 0 && i > 0 {
            "/web/fail"
        } else {
            "/web/ok"
        };
        c.get(path);
    }
}

/// `histogram_quantile` over the buckets of the series whose labels contain `select`.
fn quantile(metrics: &str, select: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in metrics.lines() {
        if !l.starts_with("ringmesh_request_duration_seconds_bucket{") || !l.contains(select) {
            continue;
        }
        let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += v,
            None => buckets.push((le, v)),
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let (mut prev_le, mut prev_n) = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= rank {
            if le == f64::INFINITY {
                return prev_le;
            }
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n).max(1e-12));
        }
        (prev_le, prev_n) = (le, n);
    }
    prev_le
}

/// The text of the cell `field` in the table row `row` of a dumped DOM.
fn cell(dom: &str, row: &str, field: &str) -> String {
    let start = dom
        .find(&format!("<tr data-key=\"{row}\">"))
        .unwrap_or_else(|| panic!("no row {row} in the page"));
    let tr = &dom[start..start + dom[start..].find("</tr>").unwrap()];
    let at = tr
        .find(&format!("data-key=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} in row {row}: {tr}"));
    let rest = &tr[at..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

/// An attribute of the element with id `id`.
/// The DOM of the proxy's page after `budget_ms` of its virtual time in headless Chromium
/// (a profile of its own under `profile`): (exited well, DOM, stderr).
fn dump_dom(
    chromium: &PathBuf,
    p: &TestProxy,
    profile: &str,
    budget_ms: u32,
) -> (bool, String, String) {
    let profile = temp_dir(profile);
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("http://{}/", p.proxy.admin_addr()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let out = wait_output(child, Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&profile);
    out
}

fn attr(dom: &str, id: &str, name: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let tag_start = dom[..start].rfind('<').unwrap();
    let tag = &dom[tag_start..start + dom[start..].find('>').unwrap()];
    let at = tag
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} on #{id}: {tag}"));
    let v = &tag[at + name.len() + 2..];
    v[..v.find('"').unwrap()].to_string()
}

#[test]
fn the_dashboard_draws_in_chromium_and_its_numbers_match_metrics() {
    let Some(chromium) = tool(&["chromium", "chromium-browser", "google-chrome"]) else {
        return;
    };
    let up = upstream();
    let p = TestProxy::start(&two_routes(up.addr, ""), 2);
    let edge = p.edge();
    web_traffic(edge);
    // Live traffic on `api` while the page runs, for its requests/s.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(edge);
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(c.get("/api/x").status, 200);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let (ok, dom, err) = dump_dom(&chromium, &p, "chromium", 5000);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(ok, "chromium failed: {err}");
    let metrics = p.admin("/metrics").text();

    // The page ran its refresh loop and filled its tables from the admin API.
    let body_refreshes = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("the page never refreshed: {dom}"));
    assert!(body_refreshes >= 3, "{body_refreshes} refreshes");

    // Route `web` ended before the page loaded: its numbers must equal /metrics exactly.
    let web = "listener=\"edge\",route=\"web\",cluster=\"up\"";
    let ok200 = metric_value(
        &metrics,
        &format!("ringmesh_requests_total{{{web},code=\"200\"}}"),
    );
    let failed = metric_value(
        &metrics,
        &format!("ringmesh_requests_total{{{web},code=\"503\"}}"),
    );
    assert_eq!((ok200, failed), (Some(7.0), Some(3.0)));
    assert_eq!(cell(&dom, "edge/web/up", "total"), "10");
    assert_eq!(cell(&dom, "edge/web/up", "success"), "70.00%");
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        // Same arithmetic as histogram_quantile; the page rounds to 3 decimals (JavaScript's
        // rounding of a tie may differ from Rust's by the last digit).
        let want = 1000.0 * quantile(&metrics, "route=\"web\"", q);
        let shown: f64 = cell(&dom, "edge/web/up", field).parse().unwrap();
        assert!(
            (shown - want).abs() <= 0.0011,
            "{field}: page {shown}, /metrics {want:.4}"
        );
    }
    // Route `api` was busy while the page watched: a rate above zero, a total no larger than
    // what /metrics counts afterwards.
    let api_rps: f64 = cell(&dom, "edge/api/up", "rps").parse().unwrap();
    assert!(api_rps > 0.0, "api req/s {api_rps}");
    let api_total: f64 = cell(&dom, "edge/api/up", "total").parse().unwrap();
    let api_after = metric_value(
        &metrics,
        "ringmesh_requests_total{listener=\"edge\",route=\"api\",cluster=\"up\",code=\"200\"}",
    )
    .unwrap();
    assert!(
        api_total > 0.0 && api_total <= api_after,
        "{api_total} vs {api_after}"
    );
    // The endpoint table comes from /clusters.
    assert_eq!(cell(&dom, &format!("up/{}", up.addr), "health"), "healthy");

    // The charts drew: points plotted for both routes, and ink on the canvas.
    for chart in [
        "rps-routes",
        "sr-routes",
        "p99-routes",
        "rps-clusters",
        "sr-clusters",
        "p99-clusters",
    ] {
        let points: u32 = attr(&dom, chart, "data-points").parse().unwrap();
        let ink: u32 = attr(&dom, chart, "data-ink").parse().unwrap();
        assert!(points >= 2, "{chart}: {points} points");
        assert!(ink > 1000, "{chart}: {ink} pixels drawn");
        // Axes in human units: no exponents, percentages end at 100, latency in ms or µs.
        let ticks = attr(&dom, chart, "data-ticks");
        let ticks: Vec<&str> = ticks.split('|').collect();
        assert_eq!(ticks.len(), 5, "{chart}: {ticks:?}");
        assert!(!ticks.iter().any(|t| t.contains('e')), "{chart}: {ticks:?}");
        match &chart[..2] {
            "sr" => assert_eq!(ticks[4], "100%", "{chart}: {ticks:?}"),
            "p9" => assert!(
                ticks[1..]
                    .iter()
                    .all(|t| t.ends_with(" ms") || t.ends_with(" µs")),
                "{chart}: {ticks:?}"
            ),
            _ => {}
        }
    }
    assert_eq!(attr(&dom, "rps-routes", "data-series"), "2");
    // Self-contained: nothing loaded from elsewhere.
    let page = p.admin("/").text();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="));
}

/// Before the first samples, a chart says it is waiting for data instead of drawing axes around
/// nothing (which labelled them 1.10e-9, 8.25e-10, ... and ran the success rate to 110%).
#[test]
fn an_empty_dashboard_says_it_is_waiting_for_data() {
    let Some(chromium) = tool(&["chromium", "chromium-browser", "google-chrome"]) else {
        return;
    };
    let up = upstream();
    let p = TestProxy::start(&two_routes(up.addr, ""), 1);
    let (ok, dom, err) = dump_dom(&chromium, &p, "chromium-empty", 3000);
    assert!(ok, "chromium failed: {err}");
    assert!(
        dom.contains("data-refreshes="),
        "the page never refreshed: {dom}"
    );
    for chart in [
        "rps-routes",
        "sr-routes",
        "p99-routes",
        "rps-clusters",
        "sr-clusters",
        "p99-clusters",
    ] {
        assert_eq!(attr(&dom, chart, "data-empty"), "true", "{chart}");
        assert_eq!(attr(&dom, chart, "data-ticks"), "", "{chart}");
    }
}

#[test]
fn promtool_accepts_the_metrics() {
    let Some(promtool) = tool(&["promtool"]) else {
        return;
    };
    let up = upstream();
    let p = TestProxy::start(&two_routes(up.addr, ""), 2);
    web_traffic(p.edge());
    // Unrouted answers and ejection state make the exposition cover every family.
    Client::connect(p.edge()).get("/nowhere");
    promtool_check(&promtool, &p.admin("/metrics").body);
}

/// `promtool check metrics` passes on `text`, with nothing to say.
fn promtool_check(promtool: &PathBuf, text: &[u8]) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text).unwrap();
    let (ok, out, err) = wait_output(child, Duration::from_secs(30));
    assert!(ok, "promtool: {out}{err}");
    assert!(
        out.trim().is_empty() && err.trim().is_empty(),
        "promtool lints: {out}{err}"
    );
}

#[test]
fn promtool_accepts_the_control_plane_metrics() {
    let Some(promtool) = tool(&["promtool"]) else {
        return;
    };
    // A static endpoint, a DNS name and a registration: every source has series.
    let mesh = "clusters:\n  - { name: web, endpoints: [ { addr: 127.0.0.1:9 }, { dns: \"localhost:9\" } ] }\nnodes:\n  edge-1:\n    listeners:\n      - { name: edge, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] }\n";
    let cp = ringmesh_tests::mesh::plane(mesh);
    let at = ringmesh_tests::mesh::At::of(&cp);
    let body = serde_json::json!({"addr": "127.0.0.1:10", "ttl": "1m"});
    let (status, _) = at.call("PUT", "/v1/clusters/web/endpoints/a", Some(&body), None);
    assert_eq!(status, 200);
    // A refusal, so that the refusal counter has a series too.
    let anonymous = ringmesh_tests::mesh::Who::anonymous(&at.pin);
    assert_eq!(
        at.call_as(&anonymous, "GET", "/v1/config", None, None).0,
        401
    );
    let mut text = at.text("/metrics");
    assert!(
        eventually(Duration::from_secs(10), || {
            text = at.text("/metrics");
            text.contains("source=\"dns\",name=\"localhost:9\"")
        }),
        "the DNS source never showed"
    );
    assert!(
        text.contains("ringmesh_control_api_refused_total{"),
        "{text}"
    );
    promtool_check(&promtool, text.as_bytes());
}

/// GET on Prometheus's HTTP API; the JSON answer.
fn prom_query(addr: SocketAddr, query: &str) -> Option<Value> {
    let mut q = String::new();
    for b in query.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    std::io::Write::write_all(
        &mut s,
        format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = &out[out.find("\r\n\r\n")? + 4..];
    // Prometheus may answer chunked: the JSON is between the first `{` and the last `}`.
    let body = &body[body.find('{')?..=body.rfind('}')?];
    serde_json::from_str(body).ok()
}

/// The single value of an instant query, as Prometheus prints it.
fn prom_value(addr: SocketAddr, query: &str) -> Option<String> {
    let v = prom_query(addr, query)?;
    let r = v["data"]["result"].as_array()?;
    (r.len() == 1).then(|| r[0]["value"][1].as_str().map(str::to_string))?
}

#[test]
fn prometheus_scrapes_the_metrics_and_answers_queries() {
    let Some(prometheus) = tool(&["prometheus"]) else {
        return;
    };
    let up = upstream();
    let p = TestProxy::start(&two_routes(up.addr, ""), 2);
    web_traffic(p.edge());
    let dir = temp_dir("prometheus");
    let listen = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: ringmesh\n    static_configs: [ {{ targets: [\"{}\"] }} ]\n",
            p.proxy.admin_addr()
        ),
    )
    .unwrap();
    let mut server = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let scraped = eventually(Duration::from_secs(60), || {
        prom_value(listen, "up{job=\"ringmesh\"}").as_deref() == Some("1")
            && prom_value(listen, "sum(ringmesh_requests_total{route=\"web\"})").is_some()
    });
    let results = (
        prom_value(listen, "sum(ringmesh_requests_total{route=\"web\"})"),
        prom_value(
            listen,
            "ringmesh_requests_total{route=\"web\",code=\"503\"}",
        ),
        prom_value(
            listen,
            "histogram_quantile(0.5, sum by (le) (ringmesh_request_duration_seconds_bucket{route=\"web\"}))",
        ),
        prom_value(listen, "ringmesh_workers"),
        prom_value(
            listen,
            "count(ringmesh_endpoint_ewma_seconds{cluster=\"up\"})",
        ),
    );
    // Every query of the Grafana dashboards, as Grafana sends it: Prometheus accepts each (a
    // syntax error is an error answer), and the request-rate panel has data.
    let mut refused = Vec::new();
    for dashboard in ["ringmesh-proxy.json", "ringmesh-control.json"] {
        for q in ringmesh_tests::grafana::queries(dashboard) {
            let Some(q) = ringmesh_tests::grafana::as_sent(&q) else {
                continue;
            };
            let answer = prom_query(listen, &q);
            if answer.as_ref().and_then(|a| a["status"].as_str()) != Some("success") {
                refused.push(format!("{q}: {answer:?}"));
            }
        }
    }
    let rate_query = ringmesh_tests::grafana::queries("ringmesh-proxy.json")
        .into_iter()
        .find(|q| q.starts_with("sum by (route) (rate(ringmesh_requests_total"))
        .and_then(|q| ringmesh_tests::grafana::as_sent(&q))
        .expect("the request-rate panel");
    // A rate needs two scrapes.
    let rate_has_data = eventually(Duration::from_secs(15), || {
        prom_query(listen, &rate_query).is_some_and(|r| {
            r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(scraped, "Prometheus never scraped the admin API");
    assert!(
        refused.is_empty(),
        "Prometheus refused dashboard queries: {refused:#?}"
    );
    assert!(rate_has_data, "the request-rate panel has no data");
    let (total, failed, median, workers, endpoints) = results;
    assert_eq!(total.as_deref(), Some("10"));
    assert_eq!(failed.as_deref(), Some("3"));
    let median: f64 = median.unwrap().parse().unwrap();
    assert!(median > 0.0 && median < 1.0, "median {median}");
    assert_eq!(workers.as_deref(), Some("2"));
    assert_eq!(endpoints.as_deref(), Some("1"));
}
