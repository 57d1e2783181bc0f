//! Mirroring (route `mirror`): copies of a share of a route's requests reach a shadow cluster
//! (bodies up to the limit, the authority marked `-shadow`), the shadow's answers are
//! discarded and counted, and a shadow that answers after two seconds, never answers or is not
//! there changes nothing for the primary requests: all of them succeed, and their p99 under
//! load stays that of the same load without mirroring, in the same run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringmesh_tests::*;

fn config(primary: SocketAddr, shadow: SocketAddr, slow: SocketAddr, dead: SocketAddr) -> String {
    // Port 9 (discard): privileged, so no test listens there; a connect is refused. A port
    // that was free a moment ago could be taken by a parallel test's listener.
    let refused = "127.0.0.1:9";
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: all, match: {{ path_prefix: /all/ }}, cluster: primary, mirror: {{ cluster: shadow, max_body: 32KiB }} }}
      - {{ name: half, match: {{ path_prefix: /half/ }}, cluster: primary, mirror: {{ cluster: shadow, percent: 50 }} }}
      - {{ name: slow, match: {{ path_prefix: /slow/ }}, cluster: primary, timeout: 5s, mirror: {{ cluster: slow }} }}
      - {{ name: dead, match: {{ path_prefix: /dead/ }}, cluster: primary, timeout: 5s, mirror: {{ cluster: dead }} }}
      - {{ name: refused, match: {{ path_prefix: /refused/ }}, cluster: primary, mirror: {{ cluster: refused }} }}
      - {{ name: off, match: {{ path_prefix: / }}, cluster: primary }}
clusters:
  - {{ name: primary, endpoints: [ {{ addr: {primary} }} ], request_headers: {{ add: {{ x-api-key: production-secret }} }} }}
  - {{ name: shadow, endpoints: [ {{ addr: {shadow} }} ], request_headers: {{ add: {{ x-copy-of: \"${{cluster}}\" }} }} }}
  - {{ name: slow, endpoints: [ {{ addr: {slow} }} ] }}
  - {{ name: dead, endpoints: [ {{ addr: {dead} }} ] }}
  - {{ name: refused, endpoints: [ {{ addr: {refused} }} ] }}
"
    )
}

/// A shadow that takes connections and never answers on them.
fn black_hole() -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for c in l.incoming() {
            if s.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(c) = c {
                held.push(c);
            }
        }
    });
    (addr, stop)
}

struct Setup {
    proxy: TestProxy,
    shadow: Upstream,
    _primary: Upstream,
    _slow: Upstream,
    _dead: Arc<AtomicBool>,
}

fn setup() -> Setup {
    let primary = Upstream::http(|r| Resp::new(200, format!("primary {}", r.body.len())));
    let shadow = Upstream::http(|_| Resp::new(500, "shadow answers are discarded"));
    let slow = Upstream::http(|_| {
        std::thread::sleep(Duration::from_secs(2));
        Resp::new(200, "late")
    });
    let (dead, stop) = black_hole();
    let proxy = TestProxy::start(&config(primary.addr, shadow.addr, slow.addr, dead), 1);
    Setup {
        proxy,
        shadow,
        _primary: primary,
        _slow: slow,
        _dead: stop,
    }
}

fn mirrored(p: &TestProxy, route: &str, outcome: &str) -> f64 {
    p.metric(&format!(
        "ringmesh_mirrored_total{{listener=\"edge\",route=\"{route}\",outcome=\"{outcome}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn copies_reach_the_shadow_and_its_answers_are_discarded() {
    let s = setup();
    let p = &s.proxy;
    let mut c = Client::connect(p.edge());
    c.send(b"GET /all/a?x=1 HTTP/1.1\r\nHost: api.test:8080\r\nx-tag: one\r\n\r\n");
    let r = c.response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "primary 0"));
    c.send(b"POST /all/b HTTP/1.1\r\nHost: api.test\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(c.response(false).text(), "primary 11");
    // A body over `max_body` (32 KiB): the primary gets it, the shadow no copy.
    let big = vec![b'x'; 40_000];
    let mut req = format!(
        "POST /all/c HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    c.send(&req);
    assert_eq!(c.response(false).text(), "primary 40000");
    assert!(eventually(Duration::from_secs(5), || s
        .shadow
        .requests()
        .len()
        >= 2));
    std::thread::sleep(Duration::from_millis(200));
    let seen = s.shadow.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/all/a?x=1")
    );
    assert_eq!(seen[0].header("host"), Some("api.test-shadow:8080"));
    assert_eq!(seen[0].header("x-tag"), Some("one"));
    // The shadow cluster's own edits, never the primary's (its secrets stay with it).
    assert_eq!(seen[0].header("x-copy-of"), Some("shadow"));
    assert_eq!(seen[0].header("x-api-key"), None);
    assert!(seen[0].header("x-forwarded-for").is_some());
    assert_eq!(
        (seen[1].method.as_str(), &seen[1].body[..]),
        ("POST", &b"hello world"[..])
    );
    assert_eq!(seen[1].header("host"), Some("api.test-shadow"));
    assert!(eventually(Duration::from_secs(5), || mirrored(
        p, "all", "answered"
    ) == 2.0));
    assert_eq!(mirrored(p, "all", "skipped"), 1.0, "the large body");

    // A body that arrives slowly is waited for no longer than it would be without the copy
    // (plus a second): it streams to the primary, whole, and is not copied.
    let skipped = mirrored(p, "all", "skipped");
    // (Bodies of up to 16 KiB are waited for anyway.)
    c.send(b"POST /all/slow HTTP/1.1\r\nHost: api.test\r\nContent-Length: 20000\r\n\r\n");
    c.send(&[b'a'; 100]);
    std::thread::sleep(Duration::from_millis(2500));
    c.send(&[b'b'; 19_900]);
    assert_eq!(c.response(false).text(), "primary 20000");
    assert_eq!(mirrored(p, "all", "skipped"), skipped + 1.0);
    assert_eq!(s.shadow.requests().len(), 2, "no copy of the slow body");

    // From an HTTP/2 client: the copy is the same HTTP/1.1 request, its body included.
    let mut h2 = ringmesh_tests::h2::H2Client::connect(p.edge());
    let req = http::Request::post("http://api.test/all/h2")
        .header("x-tag", "two")
        .body(())
        .unwrap();
    let r = h2.request(req, b"from h2", None).expect("h2");
    assert_eq!((r.status, &r.body[..]), (200, &b"primary 7"[..]));
    assert!(eventually(Duration::from_secs(5), || s
        .shadow
        .requests()
        .len()
        == 3));
    let copy = &s.shadow.requests()[2];
    assert_eq!(
        (copy.path.as_str(), &copy.body[..]),
        ("/all/h2", &b"from h2"[..])
    );
    assert_eq!(copy.header("host"), Some("api.test-shadow"));
    assert_eq!(copy.header("x-tag"), Some("two"));

    // Half the requests of `/half/`, about.
    for i in 0..400 {
        c.send(format!("GET /half/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        assert_eq!(c.response(false).status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || {
        s.shadow
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/half/"))
            .count() as f64
            == mirrored(p, "half", "answered")
    }));
    let copied = mirrored(p, "half", "answered");
    assert!(
        (140.0..=260.0).contains(&copied),
        "{copied} of 400 copied at 50%"
    );

    // A shadow that is not there: counted as failed, the primary unharmed.
    c.send(b"GET /refused/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.response(false).text(), "primary 0");
    assert!(eventually(Duration::from_secs(5), || mirrored(
        p, "refused", "failed"
    ) == 1.0));
}

/// `clients` keep-alive clients sending GETs to `path` for `secs`: each request's latency in
/// microseconds, and the statuses that were not 200.
fn load(addr: SocketAddr, path: &str, clients: usize, secs: u64) -> (Vec<u64>, Vec<u16>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let path = format!("{path}{i}");
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let (mut lat, mut bad) = (Vec::new(), Vec::new());
                let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
                while Instant::now() < until {
                    let t = Instant::now();
                    c.send(req.as_bytes());
                    let r = c.response(false);
                    lat.push(t.elapsed().as_micros() as u64);
                    if r.status != 200 {
                        bad.push(r.status);
                    }
                }
                (lat, bad)
            })
        })
        .collect();
    let mut all = (Vec::new(), Vec::new());
    for t in threads {
        let (l, b) = t.join().unwrap();
        all.0.extend(l);
        all.1.extend(b);
    }
    all.0.sort_unstable();
    all
}

fn p99(sorted: &[u64]) -> u64 {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[test]
fn a_slow_or_dead_shadow_adds_nothing_to_the_primary() {
    let s = setup();
    let p = &s.proxy;
    let edge = p.edge();
    let mut figures = Vec::new();
    // Interleaved: off, slow, dead, off again; each 3 s of 8 clients.
    for path in ["/off/", "/slow/", "/dead/", "/off/"] {
        let (lat, bad) = load(edge, path, 8, 3);
        assert!(
            bad.is_empty(),
            "{path}: primary requests failed: {:?}",
            &bad[..bad.len().min(10)]
        );
        figures.push((path, lat.len(), lat[lat.len() / 2], p99(&lat)));
    }
    for (path, n, p50, p99) in &figures {
        eprintln!("{path:8} {n:6} requests  p50 {p50:6} us  p99 {p99:6} us");
    }
    let off = figures[0].3.max(figures[3].3);
    for (path, _, _, p99) in &figures[1..3] {
        // A copy that held the primary up would show as the shadow's two seconds (or the
        // route's five) in the p99.
        assert!(
            *p99 < off * 3 + 100_000,
            "{path}: p99 {p99} us against {off} us without mirroring"
        );
    }
    // Every copy is accounted for: the slow shadow's answered, the dead one's failed at the
    // route timeout or skipped once a worker held its most copies.
    let dead_drawn = figures[2].1 as f64;
    assert!(
        mirrored(p, "dead", "skipped") > 0.0,
        "copies piled up past the bound"
    );
    assert!(eventually(Duration::from_secs(10), || {
        mirrored(p, "dead", "failed") + mirrored(p, "dead", "skipped") == dead_drawn
    }));
    assert!(eventually(Duration::from_secs(10), || {
        mirrored(p, "slow", "answered") + mirrored(p, "slow", "skipped") == figures[1].1 as f64
    }));
}

#[test]
fn an_http2_body_that_stalls_is_timed_out_mirrored_or_not() {
    use ringmesh_tests::rawh2::{self, Conn, Outcome};
    let primary = Upstream::http(|r| Resp::new(200, format!("primary {}", r.body.len())));
    let shadow = Upstream::fixed("shadow");
    let cfg = format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    request_head_timeout: 1s
    idle_timeout: 2s
    routes:
      - {{ name: all, match: {{ path_prefix: /all/ }}, cluster: primary, mirror: {{ cluster: shadow, max_body: 1MiB }} }}
      - {{ name: off, match: {{ path_prefix: / }}, cluster: primary, retry: {{ attempts: 1 }} }}
clusters:
  - {{ name: primary, endpoints: [ {{ addr: {} }} ] }}
  - {{ name: shadow, endpoints: [ {{ addr: {} }} ] }}
",
        primary.addr, shadow.addr
    );
    let p = TestProxy::start(&cfg, 1);
    for (path, length) in [
        ("/all/x", Some("100")),
        ("/all/y", None),
        ("/off/z", Some("100")),
    ] {
        // Half a body (or, without a length, a part of one), then nothing: the proxy gives up
        // at its head timeout (a body it waits for) or its idle timeout (a body it streams);
        // the stream does not hang.
        let mut c = Conn::open(p.edge());
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"a.test"),
            (b":path", path.as_bytes()),
        ];
        if let Some(n) = length {
            fields.push((b"content-length", n.as_bytes()));
        }
        let block = rawh2::block(&fields);
        c.send(&rawh2::frame(rawh2::HEADERS, rawh2::END_HEADERS, 1, &block));
        c.send(&rawh2::frame(rawh2::DATA, 0, 1, &[b'x'; 50]));
        let started = Instant::now();
        let outcome = c.outcome(1);
        let waited = started.elapsed();
        eprintln!("{path}: {outcome:?} after {waited:?}");
        assert!(
            matches!(outcome, Outcome::Status(_) | Outcome::Reset(_)),
            "{path}: {outcome:?}"
        );
        assert!(
            waited < Duration::from_secs(8),
            "{path}: answered after {waited:?}"
        );
    }
}

#[test]
fn bad_mirror_configs_are_refused_naming_the_field() {
    let cfg = |mirror: &str, shadow: &str| {
        format!(
            "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: r, match: {{ path_prefix: / }}, cluster: up, mirror: {mirror} }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: 127.0.0.1:9 }} ] }}
  - {{ name: shadow, endpoints: [ {{ addr: 127.0.0.1:9 }} ]{shadow} }}
"
        )
    };
    for (mirror, shadow, field, why) in [
        (
            "{ cluster: nope }",
            "",
            "mirror.cluster",
            "no cluster named `nope`",
        ),
        ("{ percent: 10 }", "", "mirror.cluster", "required"),
        (
            "{ cluster: shadow, percent: 120 }",
            "",
            "mirror.percent",
            "0% to 100%",
        ),
        (
            "{ cluster: shadow, max_body: 1GiB }",
            "",
            "mirror.max_body",
            "at most 16MiB",
        ),
        ("{ cluster: shadow, timeout: 1s }", "", "mirror.timeout", ""),
        (
            "{ cluster: shadow }",
            ", protocol: http2",
            "mirror.cluster",
            "HTTP/1.1",
        ),
    ] {
        let errs = config_errors(&cfg(mirror, shadow));
        assert!(
            errs.contains(&format!("listeners[0].routes[0].{field}")) && errs.contains(why),
            "{mirror}: {errs}"
        );
    }
}
