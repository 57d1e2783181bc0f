//! The stages that decide without I/O, over a view built from a snapshot as a worker builds
//! it: no socket, no runtime.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::policy::{self, Policies, Policy};
use crate::ratelimit::RateLimit;
use crate::route::{HostMatch, Match, PathMatch, RouteTable, Split};
use crate::snapshot::{Cluster, HttpLimits, Snapshot};
use crate::worker::Runner;

fn a_route(name: &str, path: &str, action: Action) -> Route {
    Route {
        name: Arc::from(name),
        matcher: Match {
            path: Some(PathMatch::Prefix(path.as_bytes().into())),
            ..Match::default()
        },
        action,
        timeout: None,
        retry: None,
        rate_limit: None,
        request_headers: None,
        response_headers: None,
        request_id: None,
        rewrite: None,
        fault: None,
        cors: None,
        compression: None,
        mirror: None,
    }
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: Arc::from(name),
        lb: Default::default(),
        connect_timeout: Duration::from_secs(1),
        pool_idle_timeout: Duration::from_secs(30),
        pool_max_idle: 8,
        limits: Default::default(),
        outlier: None,
        health_check: None,
        zones: None,
        request_headers: None,
        response_headers: None,
        tls: None,
        protocol: Default::default(),
        endpoints: Vec::new(),
    }
}

fn policy(name: &str, path: &str, audit: bool) -> Policy {
    Policy {
        name: Arc::from(name),
        action: policy::Action::Deny,
        audit,
        identity: None,
        source: None,
        request: Match {
            path: Some(PathMatch::Prefix(path.as_bytes().into())),
            ..Match::default()
        },
        http: true,
        scoped: false,
        ports: None,
    }
}

/// A listener with a body limit of 10 bytes; routes `/limited` (one request a second),
/// `/split` (3:1 over two clusters), `/` for `a.test` only; policies denying `/admin` and
/// auditing `/audited`.
fn snapshot() -> Snapshot {
    let mut limited = a_route("limited", "/limited", Action::Cluster(0));
    limited.rate_limit = Some(RateLimit {
        rps: 1.0,
        burst: 1.0,
    });
    let split = Split::new(&[(0, 3), (1, 1)]).unwrap();
    let mut host_only = a_route("a", "/", Action::Cluster(1));
    host_only.matcher.host = Some(HostMatch::Exact(b"a.test".as_slice().into()));
    let routes = RouteTable::new(vec![
        limited,
        a_route("split", "/split", Action::Split(split)),
        host_only,
    ]);
    let http = HttpListener {
        routes,
        limits: HttpLimits {
            max_request_body: Some(10),
            ..HttpLimits::default()
        },
        access_log: None,
        tls: None,
        outbound: None,
        inbound: None,
        request_id: None,
    };
    Snapshot {
        version: 1,
        listeners: vec![snapshot::Listener {
            name: Arc::from("edge"),
            bind: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::Http(Box::new(http)),
        }],
        clusters: vec![cluster("one"), cluster("two")],
        spans: None,
        policies: Policies {
            list: vec![
                policy("no-admin", "/admin", false),
                policy("watch", "/audited", true),
            ],
            default_deny: false,
        },
    }
}

/// A request head parsed from `raw`, kept with its bytes.
struct Req {
    raw: Vec<u8>,
    head: RequestHead,
}

fn req(raw: &str) -> Req {
    let raw = raw.as_bytes().to_vec();
    let mut head = RequestHead::default();
    head.parse(&raw, raw.len()).unwrap().unwrap();
    Req { raw, head }
}

const CLIENT: Caller<'static> = Caller {
    identity: None,
    source: IpAddr::V4(Ipv4Addr::LOCALHOST),
    port: 80,
    egress: false,
};

#[test]
fn admission_refuses_a_body_past_the_limit_and_what_a_policy_denies() {
    let runner = Runner::standalone(0);
    let w = runner.worker();
    let view = w.build_view(Arc::new(snapshot()));
    let l = Listener::of(&view, 0).unwrap();
    let policies = &view.snapshot.policies;
    let admit = |r: &Req| {
        let input = RouteInput::new(&r.raw, &r.head);
        admit(w, &l, policies, &input, &CLIENT, Instant::now())
    };
    let big = req("POST /split HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\n");
    assert_eq!(admit(&big), Err(ErrorKind::BodyTooLarge));
    let small = req("POST /split HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(admit(&small), Ok(()));
    // A chunked body's size is not known here: it is held to the limit as it streams.
    let chunked = req("POST /split HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(admit(&chunked), Ok(()));
    assert_eq!(
        admit(&req("GET /admin/x HTTP/1.1\r\nHost: a.test\r\n\r\n")),
        Err(ErrorKind::Denied)
    );
    // An audit policy lets the request through.
    assert_eq!(
        admit(&req("GET /audited HTTP/1.1\r\nHost: a.test\r\n\r\n")),
        Ok(())
    );
}

#[test]
fn routing_picks_the_route_its_split_and_holds_its_rate_limit() {
    let runner = Runner::standalone(0);
    let view = runner.worker().build_view(Arc::new(snapshot()));
    let l = Listener::of(&view, 0).unwrap();
    let now = Instant::now();
    let route_of = |r: &Req| -> Result<(String, usize), &'static str> {
        match route(&l, &RouteInput::new(&r.raw, &r.head), now) {
            Ok(r) => Ok((r.route.name.to_string(), r.cluster.unwrap_or(usize::MAX))),
            Err(Unrouted::NoRoute) => Err("no route"),
            Err(Unrouted::Limited { .. }) => Err("limited"),
        }
    };
    assert_eq!(
        route_of(&req("GET /other HTTP/1.1\r\nHost: b.test\r\n\r\n")),
        Err("no route")
    );
    // The host matches without its port or a trailing dot.
    assert_eq!(
        route_of(&req("GET /other HTTP/1.1\r\nHost: a.test.:8080\r\n\r\n")),
        Ok(("a".into(), 1))
    );
    // An absolute-form target without a path is routed as `/`.
    assert_eq!(
        route_of(&req("GET http://a.test HTTP/1.1\r\nHost: x\r\n\r\n")),
        Ok(("a".into(), 1))
    );
    // Every four requests: three to the first cluster, one to the second.
    let split = req("GET /split HTTP/1.1\r\nHost: b.test\r\n\r\n");
    let picks: Vec<usize> = (0..8).map(|_| route_of(&split).unwrap().1).collect();
    assert_eq!(picks.iter().filter(|&&c| c == 0).count(), 6, "{picks:?}");
    assert_eq!(picks.iter().filter(|&&c| c == 1).count(), 2, "{picks:?}");
    // One request a second: the second at once waits.
    let limited = req("GET /limited HTTP/1.1\r\nHost: b.test\r\n\r\n");
    assert_eq!(route_of(&limited), Ok(("limited".into(), 0)));
    match route(&l, &RouteInput::new(&limited.raw, &limited.head), now) {
        Err(Unrouted::Limited { wait, .. }) => {
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(1),
                "{wait:?}"
            )
        }
        _ => panic!("the rate limit let a second request through"),
    }
}
