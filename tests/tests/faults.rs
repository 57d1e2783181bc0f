//! Faults clients must not see, over real sockets: an endpoint that dies or resets under load,
//! one that freezes, a total outage that the retry budget still bounds, and a burst of clients
//! that must not stampede an endpoint.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringmesh_tests::*;

fn ep(addr: SocketAddr) -> String {
    format!("{{ addr: {addr} }}")
}

/// One listener `edge` to cluster `c` over `endpoints`, outlier ejection off (so that every
/// failure is one the retry rule must absorb), with `route` and `cluster` spliced in.
fn config(route: &str, cluster: &str, endpoints: &[String]) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ match: {{ path_prefix: / }}, cluster: c{route} }}
clusters:
  - {{ name: c, outlier: off{cluster}, endpoints: [ {} ] }}
",
        endpoints.join(", ")
    )
}

fn failed(counts: &HashMap<(u16, String), u64>) -> Vec<((u16, String), u64)> {
    counts
        .iter()
        .filter(|((s, _), _)| *s != 200)
        .map(|(k, n)| (k.clone(), *n))
        .collect()
}

fn total(counts: &HashMap<(u16, String), u64>) -> u64 {
    counts.values().sum()
}

/// Sixty clients keep three endpoints busy; one of them fails in `mode` for two seconds, with
/// about twenty requests on it at the instant it does, three times the cap the retry budget
/// puts on retries in flight (max(3, 20% of 60)).
fn one_endpoint_fails_under_load(mode: Mode) -> (HashMap<(u16, String), u64>, f64) {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let eps: Vec<String> = backends.iter().map(|b| ep(b.addr)).collect();
    let route = ", retry: { attempts: 2, on: [connect-failure, reset] }";
    let p = TestProxy::start(&config(route, "", &eps), 1);
    // Every request holds its endpoint for 20 ms: requests are in flight on all three.
    for b in &backends {
        b.delay(Duration::from_millis(20));
    }
    let load = Load::start(p.edge(), 60, "/");
    std::thread::sleep(Duration::from_millis(700));
    backends[2].set(mode);
    std::thread::sleep(Duration::from_secs(2));
    backends[2].set(Mode::Up);
    std::thread::sleep(Duration::from_millis(500));
    let counts = load.stop();
    let retries = p
        .metric("ringmesh_retries_total{route=\"0\",cluster=\"c\"}")
        .unwrap_or(0.0);
    (counts, retries)
}

#[test]
fn an_endpoint_that_dies_under_load_costs_no_request() {
    // Down: its open connections are shut and new ones refused.
    let (counts, retries) = one_endpoint_fails_under_load(Mode::Down);
    println!("{} requests, {retries} retries", total(&counts));
    assert!(total(&counts) > 1000, "{counts:?}");
    // It held requests when it died (10-101 retries seen): the test exercised the rule.
    assert!(retries > 4.0, "the dead endpoint held requests: {retries}");
    assert_eq!(
        failed(&counts),
        vec![],
        "a safe retry could have saved these"
    );
}

#[test]
fn an_endpoint_that_resets_every_request_costs_no_request() {
    let (counts, retries) = one_endpoint_fails_under_load(Mode::Reset);
    println!("{} requests, {retries} retries", total(&counts));
    assert!(retries > 4.0, "the endpoint held requests: {retries}");
    assert_eq!(failed(&counts), vec![]);
}

#[test]
fn a_frozen_endpoint_costs_one_per_try_timeout_and_no_request() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let eps: Vec<String> = backends.iter().map(|b| ep(b.addr)).collect();
    let route = ", timeout: 10s, retry: { attempts: 2, per_try_timeout: 300ms, on: [connect-failure, reset] }";
    let p = TestProxy::start(&config(route, "", &eps), 1);
    let load = Load::start(p.edge(), 30, "/");
    std::thread::sleep(Duration::from_millis(500));
    // Frozen: it takes requests and answers none for far longer than a try may last.
    backends[1].delay(Duration::from_secs(30));
    // Each request meets the frozen endpoint at most once more than it must: one cut try.
    let mut worst = Duration::ZERO;
    let mut c = Client::connect(p.edge());
    for _ in 0..30 {
        let t = Instant::now();
        let r = c.get("/");
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 200, "{:?}", r.header("ringmesh-error"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let counts = load.stop();
    println!(
        "{} requests, the slowest of 30 took {worst:?}",
        total(&counts)
    );
    assert_eq!(
        failed(&counts),
        vec![],
        "no request fails while two endpoints are healthy"
    );
    // A try on the frozen endpoint is cut at 300 ms and goes elsewhere (two such cuts at
    // most with two retries, were the balancer to pick it twice).
    assert!(worst < Duration::from_millis(1500), "{worst:?}");
    let cut = p
        .metric(&format!(
            "ringmesh_upstream_rq_total{{cluster=\"c\",endpoint=\"{}\",outcome=\"timeout\"}}",
            backends[1].addr
        ))
        .unwrap_or(0.0);
    assert!(
        cut >= 1.0,
        "the frozen endpoint's tries count as timeouts: {cut}"
    );
}

#[test]
fn a_total_outage_keeps_retries_within_the_budget() {
    // Every endpoint refuses connections: every try fails, every retry could go.
    let eps: Vec<String> = (0..3).map(|_| ep(free_port())).collect();
    let route = ", retry: { attempts: 2, on: [connect-failure, reset], budget: 20%, min_retries_per_second: 1 }";
    let p = TestProxy::start(&config(route, "", &eps), 1);
    let load = Load::start(p.edge(), 20, "/");
    std::thread::sleep(Duration::from_secs(2));
    let counts = load.stop();
    let requests = total(&counts);
    let retries = p
        .metric("ringmesh_retries_total{route=\"0\",cluster=\"c\"}")
        .unwrap_or(0.0);
    println!("total outage: {requests} requests, {retries} retries");
    assert!(requests > 200, "{requests}");
    assert!(
        counts.keys().all(|(s, _)| *s == 502),
        "every request fails as connect-failed: {counts:?}"
    );
    // 20% of first tries, plus the floor of 1/s over the 10 s window.
    assert!(
        retries <= 0.2 * requests as f64 + 10.0 + 1.0,
        "{retries} retries for {requests} requests"
    );
    assert!(
        retries >= 0.15 * requests as f64,
        "the budget was spent: {retries}"
    );
}

/// An upstream that serves at most `limit` connections at once and resets any beyond (as a
/// backend whose accept queue or connection limit is full drops them); each answer takes
/// `delay`. Returns it with the most connections it saw open at once.
fn limited_upstream(limit: usize, delay: Duration) -> (Upstream, Arc<AtomicUsize>) {
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (o, m) = (open.clone(), most.clone());
    let up = Upstream::raw(move |conn| {
        let now = o.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        if now <= limit {
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut conn = conn;
            while let Ok(Some(_)) = read_request(&mut reader) {
                std::thread::sleep(delay);
                if conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .is_err()
                {
                    break;
                }
            }
        }
        o.fetch_sub(1, Ordering::SeqCst);
    });
    (up, most)
}

#[test]
fn a_burst_of_clients_waits_for_connections_instead_of_stampeding_the_endpoint() {
    // 200 clients at once against an endpoint that takes 16 connections: with connects paced
    // and requests waiting in line for a connection, none is refused.
    let (up, most) = limited_upstream(16, Duration::from_millis(2));
    let limits = ", limits: { max_endpoint_connections: 16, max_endpoint_connecting: 4 }";
    let p = TestProxy::start(&config("", limits, &[ep(up.addr)]), 1);
    let edge = p.edge();
    let clients: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(edge);
                (0..5).map(|_| c.get("/").status).collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let bad = statuses.iter().filter(|s| **s != 200).count();
    println!(
        "{} requests, {bad} failed, at most {} upstream connections at once",
        statuses.len(),
        most.load(Ordering::SeqCst)
    );
    assert_eq!(statuses.len(), 1000);
    assert_eq!(bad, 0);
    assert!(
        most.load(Ordering::SeqCst) <= 16,
        "{}",
        most.load(Ordering::SeqCst)
    );
}

#[test]
fn a_request_waits_in_line_no_longer_than_the_connect_timeout() {
    // One connection allowed, held by a request the endpoint never answers: the next request
    // waits in line, and is answered connect-failed once the connect timeout has passed.
    let hold = Upstream::raw(|conn| {
        std::thread::sleep(Duration::from_secs(5));
        drop(conn);
    });
    let limits = ", connect_timeout: 300ms, limits: { max_endpoint_connections: 1 }";
    let p = TestProxy::start(&config(", timeout: 3s", limits, &[ep(hold.addr)]), 1);
    let edge = p.edge();
    let first = std::thread::spawn(move || Client::connect(edge).get("/").status);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = Client::connect(edge).get("/");
    let waited = t.elapsed();
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (502, Some("connect-failed"))
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(first.join().unwrap(), 504);
}
