//! Inputs for the benchmarks in `benches/`: realistic request heads, route tables and endpoint
//! sets, built the same way for every run.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use ringmesh_core::route::{Action, HostMatch, Match, PathMatch, Route, RouteTable};

/// A typical service-to-service request head (about 600 bytes, 12 fields).
pub const REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&cursor=abc HTTP/1.1\r\n\
Host: orders.prod.svc.cluster.local\r\n\
User-Agent: orders-client/2.4.1\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
tracestate: rojo=00f067aa0ba902b7\r\n\
X-Request-Id: 7f8c3b2a-1d4e-4f5a-9b6c-2e1d0c9b8a7f\r\n\
X-Forwarded-For: 10.1.2.3\r\n\
Connection: keep-alive\r\n\
Cookie: session=abcdef0123456789; theme=dark\r\n\
Content-Length: 0\r\n\r\n";

/// A route table of `hosts` × `paths` routes (host exact, path prefix), plus a catch-all.
pub fn route_table(hosts: usize, paths: usize) -> RouteTable {
    let mut routes = Vec::with_capacity(hosts * paths + 1);
    for h in 0..hosts {
        for p in 0..paths {
            routes.push(Route {
                name: Arc::from(format!("r{h}-{p}")),
                matcher: Match {
                    host: Some(HostMatch::Exact(
                        format!("svc{h}.prod.internal").into_bytes().into(),
                    )),
                    path: Some(PathMatch::Prefix(format!("/api/v{p}/").into_bytes().into())),
                    ..Match::default()
                },
                action: Action::Cluster(h),
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
            });
        }
    }
    routes.push(Route {
        name: Arc::from("default"),
        matcher: Match::default(),
        action: Action::Cluster(0),
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
    });
    RouteTable::new(routes)
}

/// A proxy config with `n` endpoints spread over clusters of 100.
pub fn big_config(n: usize) -> String {
    let mut y = String::from("listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n");
    let clusters = n.div_ceil(100);
    for c in 0..clusters {
        let _ = writeln!(
            y,
            "      - {{ match: {{ host: svc{c}.internal }}, cluster: c{c} }}"
        );
    }
    y.push_str("clusters:\n");
    for c in 0..clusters {
        let _ = writeln!(y, "  - name: c{c}\n    endpoints:");
        for e in 0..100.min(n - c * 100) {
            let _ = writeln!(
                y,
                "      - {{ addr: 10.{}.{}.{}:8080, zone: z{} }}",
                c / 256,
                c % 256,
                e + 1,
                e % 3
            );
        }
    }
    y
}

/// Endpoint loads for balancer benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Weight.
    pub weight: u32,
    /// In flight.
    pub in_flight: u32,
    /// Latency, ns.
    pub latency: f64,
}

impl ringmesh_core::balance::Load for Load {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
    fn latency_ns(&self, _: Instant) -> f64 {
        self.latency
    }
    fn available(&self, _: Instant) -> bool {
        true
    }
}

/// `n` endpoints with varied loads; weights 1 to 3 when `weighted`, else all 1.
pub fn loads(n: usize, weighted: bool) -> Vec<Load> {
    (0..n)
        .map(|i| Load {
            weight: if weighted { 1 + (i % 3) as u32 } else { 1 },
            in_flight: (i % 7) as u32,
            latency: 1e6 + (i * 7919 % 10_000) as f64 * 1e3,
        })
        .collect()
}

/// A cluster of `n` endpoints as the proxy builds it (real endpoint state, a latency sample
/// each, health cells, outlier detection on), in `levels` priority levels, with `lb`.
pub fn cluster_view(
    n: usize,
    levels: usize,
    lb: ringmesh_core::balance::Lb,
    weighted: bool,
) -> (
    ringmesh_core::snapshot::Cluster,
    ringmesh_core::cluster::ClusterView,
) {
    use std::rc::Rc;
    use std::time::Duration;

    use ringmesh_core::breaker::ClusterState;
    use ringmesh_core::cluster::ClusterView;
    use ringmesh_core::endpoint::Endpoint;
    use ringmesh_core::snapshot::{Cluster, EndpointSpec};

    let now = Instant::now();
    let cluster = Cluster {
        tls: None,
        protocol: Default::default(),
        name: Arc::from("bench"),
        lb,
        connect_timeout: Duration::from_secs(1),
        pool_idle_timeout: Duration::from_secs(30),
        pool_max_idle: 256,
        limits: Default::default(),
        outlier: Some(Default::default()),
        health_check: None,
        zones: None,
        request_headers: None,
        response_headers: None,
        endpoints: (0..n)
            .map(|i| EndpointSpec {
                addr: std::net::SocketAddr::from((
                    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                    80,
                )),
                zone: None,
                priority: (i * levels / n) as u32,
                weight: if weighted { 1 + (i % 3) as u32 } else { 1 },
                health: Some(Arc::default()),
            })
            .collect(),
    };
    let view = ClusterView::new(&cluster, Rc::new(ClusterState::new(now)), |addr| {
        let ep = Rc::new(Endpoint::new(cluster.name.clone(), addr, now));
        ep.observe(
            now,
            Duration::from_micros(200 + u64::from(addr.ip().to_string().len() as u32) * 37),
        );
        ep
    });
    (cluster, view)
}
