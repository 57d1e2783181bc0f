//! Resilience over real sockets, with upstreams that slow down, fail, reset and die: P2C
//! balancing, failover between datacenters, outlier ejection, health checks, circuit breakers,
//! retries and their budget, per-try timeouts, deadlines across hops, and traffic shifting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringmesh_tests::*;

/// One listener `edge` routing everything to cluster `c`; `route` and `cluster` are extra
/// YAML (flow style) spliced into the route and the cluster.
fn config(route: &str, cluster: &str, endpoints: &[String]) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ match: {{ path_prefix: / }}, cluster: c{route} }}
clusters:
  - {{ name: c{cluster}, endpoints: [ {} ] }}
",
        endpoints.join(", ")
    )
}

/// A one-worker proxy over `backends` in round robin, outlier ejection off, with `route`
/// spliced into the route.
fn round_robin(route: &str, backends: &[&Backend]) -> TestProxy {
    let eps: Vec<String> = backends.iter().map(|b| ep(b)).collect();
    TestProxy::start(&config(route, ", lb: round-robin, outlier: off", &eps), 1)
}

fn ep(b: &Backend) -> String {
    format!("{{ addr: {} }}", b.addr)
}

fn series(name: &str, b: &Backend, extra: &str) -> String {
    format!("{name}{{cluster=\"c\",endpoint=\"{}\"{extra}}}", b.addr)
}

fn share(counts: &HashMap<(u16, String), u64>, body: &str) -> f64 {
    let total: u64 = counts.values().sum();
    count_of(counts, 200, body) as f64 / total.max(1) as f64
}

fn failures(counts: &HashMap<(u16, String), u64>) -> u64 {
    counts
        .iter()
        .filter(|((s, _), _)| *s != 200)
        .map(|(_, n)| n)
        .sum()
}

/// The /clusters entry of the endpoint at `addr`.
fn endpoint_state(p: &TestProxy, addr: SocketAddr) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&p.admin("/clusters").text()).unwrap();
    v["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap()
}

#[test]
fn p2c_ewma_avoids_a_slow_endpoint_and_gives_its_share_back_when_it_recovers() {
    let fast = Backend::start("fast");
    let slow = Backend::start("slow");
    slow.delay(Duration::from_millis(20));
    let p = TestProxy::start(&config("", ", lb: p2c-ewma", &[ep(&fast), ep(&slow)]), 2);
    let load = Load::start(p.edge(), 8, "/");
    std::thread::sleep(Duration::from_secs(1));
    load.take();
    std::thread::sleep(Duration::from_secs(3));
    let c = load.take();
    let slow_share = share(&c, "slow");
    println!("8 concurrent clients, one endpoint 20 ms slower: it took {slow_share:.4} of {c:?}");
    assert!(slow_share < 0.05, "{c:?}");
    assert_eq!(failures(&c), 0);

    slow.delay(Duration::ZERO);
    let recovered = Instant::now();
    let mut back = None;
    while recovered.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        let c = load.take();
        if share(&c, "slow") > 0.3 {
            back = Some(recovered.elapsed());
            break;
        }
    }
    println!("recovered endpoint back to over 30% after {back:?}");
    assert!(
        back.is_some(),
        "the recovered endpoint did not win its share back"
    );
    assert_eq!(failures(&load.stop()), 0);
}

#[test]
fn an_endpoint_that_fails_fast_loses_traffic_instead_of_winning_it() {
    let ok = Backend::start("ok");
    ok.delay(Duration::from_millis(5));
    let failing = Backend::start("failing");
    failing.set(Mode::Fail);
    let cluster = ", lb: p2c-ewma, outlier: off";
    let p = TestProxy::start(&config("", cluster, &[ep(&ok), ep(&failing)]), 1);
    let load = Load::start(p.edge(), 4, "/");
    std::thread::sleep(Duration::from_millis(500));
    load.take();
    std::thread::sleep(Duration::from_secs(2));
    let c = load.stop();
    let failed = count_of(&c, 503, "failing") as f64 / c.values().sum::<u64>() as f64;
    println!("an endpoint failing in microseconds next to one answering in 5 ms took {failed:.4}");
    assert!(failed < 0.05, "{c:?}");
}

#[test]
fn a_dead_datacenter_takes_no_request_once_detected_and_traffic_returns_with_it() {
    let a1 = Backend::start("dc1");
    let a2 = Backend::start("dc1");
    let b = Backend::start("dc2");
    let eps = [
        format!("{{ addr: {}, zone: dc1 }}", a1.addr),
        format!("{{ addr: {}, zone: dc1 }}", a2.addr),
        format!("{{ addr: {}, zone: dc2, priority: 1 }}", b.addr),
    ];
    let hc = ", health_check: { path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2 }, outlier: { base_ejection: 1s }";
    let p = TestProxy::start(&config("", hc, &eps), 2);
    let load = Load::start(p.edge(), 4, "/");
    std::thread::sleep(Duration::from_secs(1));
    let c = load.take();
    assert_eq!(share(&c, "dc1"), 1.0, "priority 0 takes everything: {c:?}");
    assert_eq!(b.hits(), 0);

    a1.set(Mode::Down);
    a2.set(Mode::Down);
    assert!(
        eventually(Duration::from_secs(5), || {
            [a1.addr, a2.addr]
                .iter()
                .all(|a| endpoint_state(&p, *a)["health"] == "unhealthy")
        }),
        "health checks mark dc1 down"
    );
    let refused = |p: &TestProxy| {
        [&a1, &a2]
            .iter()
            .map(|a| {
                p.metric(&series(
                    "ringmesh_upstream_rq_total",
                    a,
                    ",outcome=\"connect-failed\"",
                ))
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    std::thread::sleep(Duration::from_millis(200));
    load.take();
    let before = refused(&p);
    std::thread::sleep(Duration::from_secs(1));
    let c = load.take();
    println!("after detection: {c:?}");
    assert_eq!(failures(&c), 0, "{c:?}");
    assert_eq!(share(&c, "dc2"), 1.0, "{c:?}");
    assert_eq!(
        refused(&p),
        before,
        "no request went to the dead datacenter"
    );

    a1.set(Mode::Up);
    a2.set(Mode::Up);
    assert!(
        eventually(Duration::from_secs(5), || {
            load.take();
            std::thread::sleep(Duration::from_millis(300));
            share(&load.take(), "dc1") == 1.0
        }),
        "traffic returns to dc1"
    );
    assert_eq!(failures(&load.stop()), 0);
    assert_eq!(
        p.metric(&series("ringmesh_endpoint_healthy", &a1, "")),
        Some(1.0)
    );
    assert!(
        p.metric(&series(
            "ringmesh_health_checks_total",
            &a1,
            ",result=\"failed\""
        ))
        .unwrap()
            >= 2.0
    );
}

#[test]
fn consecutive_failures_eject_an_endpoint_until_a_probe_succeeds() {
    let x = Backend::start("x");
    let y = Backend::start("y");
    let z = Backend::start("z");
    z.set(Mode::Fail);
    let outlier = ", lb: round-robin, outlier: { consecutive_failures: 3, base_ejection: 1s, max_ejection: 10s }";
    let p = TestProxy::start(&config("", outlier, &[ep(&x), ep(&y), ep(&z)]), 1);
    let mut c = Client::connect(p.edge());
    let mut statuses = HashMap::<u16, u32>::new();
    for _ in 0..30 {
        *statuses.entry(c.get("/").status).or_default() += 1;
    }
    assert_eq!(z.hits(), 3, "ejected after its third failure in a row");
    assert_eq!(statuses.get(&503), Some(&3), "{statuses:?}");
    assert_eq!(
        p.metric(&series("ringmesh_endpoint_ejected", &z, "")),
        Some(1.0)
    );
    assert_eq!(
        p.metric(&series("ringmesh_outlier_ejections_total", &z, "")),
        Some(1.0)
    );
    let state = endpoint_state(&p, z.addr);
    assert_eq!(
        (state["ejected"].clone(), state["ejections"].clone()),
        (true.into(), 1.into())
    );

    // A failed probe sends it back out; a successful one brings it back.
    assert!(eventually(Duration::from_secs(3), || {
        c.get("/");
        z.hits() == 4
    }));
    assert_eq!(
        p.metric(&series("ringmesh_outlier_ejections_total", &z, "")),
        Some(2.0),
        "the probe failed"
    );
    z.set(Mode::Up);
    assert!(
        eventually(Duration::from_secs(5), || {
            c.get("/");
            p.metric(&series("ringmesh_endpoint_ejected", &z, "")) == Some(0.0)
        }),
        "a successful probe returns it"
    );
    let hits = z.hits();
    for _ in 0..30 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(z.hits() - hits, 10, "back in the rotation");

    // Never more than max_ejected (50% of 3: one endpoint) out at once.
    for b in [&x, &y, &z] {
        b.set(Mode::Fail);
    }
    for _ in 0..60 {
        c.get("/");
    }
    let ejected: f64 = [&x, &y, &z]
        .iter()
        .map(|b| {
            p.metric(&series("ringmesh_endpoint_ejected", b, ""))
                .unwrap()
        })
        .sum();
    assert!(ejected <= 1.0, "{ejected} ejected");
}

#[test]
fn health_checks_show_in_clusters_and_metrics_and_steer_traffic() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let hc = ", health_check: { path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 3 }";
    let p = TestProxy::start(&config("", hc, &[ep(&a), ep(&b)]), 2);
    assert!(eventually(Duration::from_secs(3), || a.checks() >= 3
        && b.checks() >= 3));
    // Checks run once per process, not once per worker: about ten a second per endpoint.
    let (start, n0) = (Instant::now(), a.checks());
    std::thread::sleep(Duration::from_secs(1));
    let rate = (a.checks() - n0) as f64 / start.elapsed().as_secs_f64();
    assert!((5.0..15.0).contains(&rate), "{rate} checks/s");

    b.set(Mode::Fail);
    assert!(eventually(Duration::from_secs(3), || endpoint_state(
        &p, b.addr
    )["health"]
        == "unhealthy"));
    let state = endpoint_state(&p, b.addr);
    assert!(
        state["health_checks"]["failed"].as_u64().unwrap() >= 2,
        "{state}"
    );
    assert_eq!(
        p.metric(&series("ringmesh_endpoint_healthy", &b, "")),
        Some(0.0)
    );
    let hits = b.hits();
    let mut c = Client::connect(p.edge());
    for _ in 0..50 {
        assert_eq!(c.get("/").text(), "a");
    }
    assert_eq!(b.hits(), hits, "an unhealthy endpoint takes no request");

    b.set(Mode::Up);
    assert!(eventually(Duration::from_secs(3), || endpoint_state(
        &p, b.addr
    )["health"]
        == "healthy"));
    assert!(
        eventually(Duration::from_secs(3), || c.get("/").text() == "b"),
        "traffic returns"
    );
    let passed = p
        .metric(&series(
            "ringmesh_health_checks_total",
            &b,
            ",result=\"passed\"",
        ))
        .unwrap();
    assert!(passed >= 3.0, "{passed}");
}

/// An upstream that holds every request until released.
fn gate() -> (Upstream, Arc<AtomicBool>) {
    let open = Arc::new(AtomicBool::new(false));
    let o = open.clone();
    let up = Upstream::http(move |_| {
        while !o.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Resp::new(200, "done")
    });
    (up, open)
}

#[test]
fn circuit_breakers_answer_503_overflow_at_once() {
    for (limit, label) in [
        ("max_requests: 2", "requests"),
        ("max_connections: 2", "connections"),
    ] {
        let (up, open) = gate();
        let cluster = format!(", limits: {{ {limit} }}");
        let eps = [format!("{{ addr: {} }}", up.addr)];
        let p = TestProxy::start(&config("", &cluster, &eps), 1);
        let edge = p.edge();
        let held: Vec<_> = (0..2)
            .map(|_| {
                let mut c = Client::connect(edge);
                c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                c
            })
            .collect();
        assert!(eventually(Duration::from_secs(2), || up.requests().len() == 2));
        // The upstream is holding both: these are answered without waiting for it, and the
        // client's connection stays open.
        let mut c = Client::connect(edge);
        for _ in 0..3 {
            let r = c.get("/");
            assert_eq!(r.status, 503, "{label}");
            assert_eq!(r.header("ringmesh-error"), Some("overflow"));
        }
        assert!(!open.load(Ordering::SeqCst));
        open.store(true, Ordering::SeqCst);
        for mut c in held {
            assert_eq!(c.response(false).status, 200);
        }
        let overflow = format!("ringmesh_overflow_total{{cluster=\"c\",limit=\"{label}\"}}");
        assert_eq!(p.metric(&overflow), Some(3.0), "{label}");
        // Below the limit again: requests go through, on the same connection.
        assert_eq!(c.get("/").status, 200);
        let state: serde_json::Value = serde_json::from_str(&p.admin("/clusters").text()).unwrap();
        assert_eq!(state["clusters"][0]["overflow"][label], 3, "{state}");
    }
}

/// A port nothing listens on.
fn refused_addr() -> SocketAddr {
    free_port()
}

#[test]
fn connect_failures_are_retried_on_another_endpoint_for_any_method() {
    let up = Backend::start("up");
    let dead = refused_addr();
    let eps = [ep(&up), format!("{{ addr: {dead} }}")];
    let route = ", retry: { attempts: 1, on: [connect-failure] }";
    let p = TestProxy::start(&config(route, ", lb: round-robin, outlier: off", &eps), 1);
    let mut c = Client::connect(p.edge());
    for i in 0..10 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        c.send(format!("{method} / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi").as_bytes());
        let r = c.response(false);
        assert_eq!((r.status, r.text().as_str()), (200, "up"), "{method}");
    }
    assert_eq!(up.hits(), 10);
    let retries = p
        .metric("ringmesh_retries_total{route=\"0\",cluster=\"c\"}")
        .unwrap();
    let refused = p
        .metric(&format!(
            "ringmesh_upstream_rq_total{{cluster=\"c\",endpoint=\"{dead}\",outcome=\"connect-failed\"}}"
        ))
        .unwrap();
    assert!(
        retries >= 5.0,
        "round robin met the dead endpoint: {retries}"
    );
    assert_eq!(retries, refused, "one retry per refused connection");
    assert!(up.requests().iter().all(|r| r.body == b"hi"));
}

#[test]
fn resets_and_5xx_are_retried_for_idempotent_requests_only() {
    let bad = Backend::start("bad");
    let good = Backend::start("good");
    let route = ", retry: { attempts: 2, on: [reset, 503] }";
    let p = round_robin(route, &[&bad, &good]);
    let mut c = Client::connect(p.edge());
    for mode in [Mode::Fail, Mode::Reset] {
        bad.set(mode);
        for _ in 0..4 {
            let r = c.get("/");
            assert_eq!((r.status, r.text().as_str()), (200, "good"), "{mode:?}");
        }
        // A POST may have been acted on: its failure is passed on, not repeated.
        let mut posted = 0;
        for _ in 0..4 {
            let before = bad.hits() + good.hits();
            let mut c = Client::connect(p.edge());
            c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx");
            let r = c.response(false);
            assert_eq!(
                bad.hits() + good.hits(),
                before + 1,
                "{mode:?}: one try only"
            );
            if r.status != 200 {
                posted += 1;
                let want = if mode == Mode::Fail { 503 } else { 502 };
                assert_eq!(r.status, want, "{mode:?}");
            }
        }
        assert_eq!(
            posted, 2,
            "{mode:?}: round robin sent half to the bad endpoint"
        );
    }
}

#[test]
fn bodies_up_to_64_kib_are_replayed_and_larger_ones_are_not_retried() {
    let bad = Backend::start("bad");
    bad.set(Mode::Fail);
    let good = Backend::start("good");
    let route = ", retry: { attempts: 1, on: [5xx] }";
    let p = round_robin(route, &[&bad, &good]);
    for (size, retried) in [(60 * 1024, true), (100 * 1024, false)] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let seen = (bad.requests().len(), good.requests().len());
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let mut c = Client::connect(p.edge());
            let mut req = format!("PUT /doc HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n")
                .into_bytes();
            req.extend_from_slice(&body);
            c.send(&req);
            statuses.push(c.response(false).status);
        }
        if retried {
            assert_eq!(statuses, [200, 200], "{size} bytes");
        } else {
            statuses.sort_unstable();
            assert_eq!(statuses, [200, 503], "{size} bytes: not retried");
        }
        let (bad_reqs, good_reqs) = (bad.requests(), good.requests());
        let tries: Vec<_> = bad_reqs[seen.0..]
            .iter()
            .chain(&good_reqs[seen.1..])
            .collect();
        assert_eq!(tries.len(), if retried { 4 } else { 2 }, "{size} bytes");
        for r in tries {
            assert!(r.body == body, "{size} bytes arrive whole on every try");
        }
    }
}

#[test]
fn the_retry_budget_bounds_retries_and_counts_refusals() {
    let bad = Backend::start("bad");
    bad.set(Mode::Fail);
    let route = ", retry: { attempts: 3, on: [503], budget: 10%, min_retries_per_second: 1 }";
    let p = TestProxy::start(&config(route, ", outlier: off", &[ep(&bad)]), 1);
    let mut c = Client::connect(p.edge());
    for _ in 0..200 {
        assert_eq!(c.get("/").status, 503);
    }
    let retries = p
        .metric("ringmesh_retries_total{route=\"0\",cluster=\"c\"}")
        .unwrap();
    let refused = p
        .metric("ringmesh_retry_budget_exhausted_total{cluster=\"c\"}")
        .unwrap();
    println!("200 failing requests: {retries} retries, {refused} refused by the budget");
    // 10% of 200 first tries, plus a floor of 1/s over the 10 s window.
    assert!(retries <= 30.0, "{retries}");
    assert!(retries >= 10.0, "{retries}");
    assert!(refused >= 150.0, "{refused}");
    assert_eq!(bad.hits() as f64, 200.0 + retries);
}

#[test]
fn a_try_that_takes_too_long_is_cut_and_retried() {
    let slow = Backend::start("slow");
    slow.delay(Duration::from_secs(2));
    let fast = Backend::start("fast");
    let route = ", timeout: 5s, retry: { attempts: 1, per_try_timeout: 200ms, on: [reset] }";
    let p = round_robin(route, &[&slow, &fast]);
    let mut c = Client::connect(p.edge());
    for _ in 0..4 {
        let r = c.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "fast"));
    }
    assert!(slow.hits() >= 2);
    assert_eq!(
        p.metric(&series(
            "ringmesh_upstream_rq_total",
            &slow,
            ",outcome=\"timeout\""
        )),
        Some(slow.hits() as f64),
        "every try of the slow endpoint was cut"
    );
}

#[test]
fn the_route_timeout_bounds_all_tries_together() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.delay(Duration::from_secs(1));
    b.delay(Duration::from_secs(1));
    let route = ", timeout: 300ms, retry: { attempts: 3, per_try_timeout: 200ms, on: [reset] }";
    let p = round_robin(route, &[&a, &b]);
    let mut c = Client::connect(p.edge());
    let r = c.get("/");
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (504, Some("timeout"))
    );
    // The first try is cut at 200 ms; the second gets the 100 ms left, not 200 ms; there is
    // no time for a third.
    assert_eq!(a.hits() + b.hits(), 2);
}

#[test]
fn the_remaining_time_is_forwarded_and_an_incoming_deadline_is_honoured() {
    let up = Backend::start("up");
    let route = ", timeout: 5s";
    let p = TestProxy::start(&config(route, "", &[ep(&up)]), 1);
    let mut c = Client::connect(p.edge());
    c.get("/");
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nringmesh-deadline-ms: 300\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
    c.send(b"POST /svc/M HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\ngrpc-timeout: 2S\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
    let reqs = up.requests();
    let deadline = |r: &Req| -> u64 { r.header("ringmesh-deadline-ms").unwrap().parse().unwrap() };
    assert!((4000..=5000).contains(&deadline(&reqs[0])), "{:?}", reqs[0]);
    assert!(
        deadline(&reqs[1]) <= 300,
        "the caller's shorter deadline wins: {:?}",
        reqs[1]
    );
    let one: Vec<_> = reqs[1]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("ringmesh-deadline-ms"))
        .collect();
    assert_eq!(one.len(), 1, "replaced, not added: {:?}", reqs[1]);
    assert!(deadline(&reqs[2]) <= 2000, "{:?}", reqs[2]);
    let grpc = reqs[2].header("grpc-timeout").unwrap();
    let ms: u64 = grpc.trim_end_matches('m').parse().unwrap();
    assert!(grpc.ends_with('m') && (1000..=2000).contains(&ms), "{grpc}");

    // Out of time: 504, and no try is started that cannot finish.
    up.delay(Duration::from_millis(500));
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nringmesh-deadline-ms: 100\r\n\r\n");
    let r = c.response(false);
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (504, Some("timeout"))
    );
}

#[test]
fn no_retry_starts_that_cannot_finish_within_the_deadline() {
    let up = Backend::start("up");
    up.delay(Duration::from_millis(150));
    let route = ", retry: { attempts: 2, on: [503] }";
    let p = TestProxy::start(&config(route, ", outlier: off", &[ep(&up)]), 1);
    let mut c = Client::connect(p.edge());
    // Tries take 150 ms.
    assert_eq!(c.get("/").status, 200);
    up.set(Mode::Fail);
    let hits = up.hits();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nringmesh-deadline-ms: 5000\r\n\r\n");
    assert_eq!(c.response(false).status, 503);
    assert_eq!(up.hits() - hits, 3, "with time enough, both retries go");
    let hits = up.hits();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nringmesh-deadline-ms: 250\r\n\r\n");
    let r = c.response(false);
    assert_eq!(
        up.hits() - hits,
        1,
        "a second try of 150 ms would not fit in the 100 ms left"
    );
    assert_eq!(r.status, 503, "the answer in hand is passed on");
}

fn split_config(a: &Backend, b: &Backend, wa: u32, wb: u32) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        split: [ {{ cluster: a, weight: {wa} }}, {{ cluster: b, weight: {wb} }} ]
clusters:
  - {{ name: a, endpoints: [ {} ] }}
  - {{ name: b, endpoints: [ {} ] }}
",
        ep(a),
        ep(b)
    )
}

#[test]
fn a_split_holds_within_one_percent_over_ten_thousand_requests() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = TestProxy::start(&split_config(&a, &b, 10, 90), 2);
    let counts: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = Client::connect(p.edge());
                    (0..2500).filter(|_| c.get("/").text() == "a").count() as u64
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let to_a: u64 = counts.iter().sum();
    println!("10,000 requests split 10/90: {to_a} to a");
    assert!((900..=1100).contains(&to_a), "{to_a}");
    assert_eq!(a.hits() + b.hits(), 10_000);
}

#[test]
fn a_reload_that_shifts_weights_fails_no_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let path = temp_config("shift", &split_config(&a, &b, 100, 0));
    let p = file_proxy(&path, 2);
    let load = Load::start(p.listener_addr("edge").unwrap(), 8, "/");
    std::thread::sleep(Duration::from_millis(500));
    let mut all: HashMap<(u16, String), u64> = HashMap::new();
    for (wa, wb) in [(75, 25), (50, 50), (25, 75), (0, 100)] {
        write_atomically(&path, &split_config(&a, &b, wa, wb));
        p.reload().expect("reload");
        load.take();
        std::thread::sleep(Duration::from_millis(500));
        let c = load.take();
        let got = share(&c, "a");
        let want = f64::from(wa) / 100.0;
        assert!(
            (got - want).abs() < 0.05,
            "{wa}/{wb}: a took {got:.3} of {c:?}"
        );
        for (k, n) in c {
            *all.entry(k).or_default() += n;
        }
    }
    for (k, n) in load.stop() {
        *all.entry(k).or_default() += n;
    }
    assert_eq!(failures(&all), 0, "{all:?}");
}
