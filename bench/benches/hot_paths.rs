//! Criterion benchmarks of the request path's pure parts and of config application.
//! Run: `cargo bench -p ringmesh-bench`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringmesh_bench::{REQUEST, big_config, cluster_view, loads, route_table};
use ringmesh_core::balance::{BalanceState, Lb, pick};
use ringmesh_core::head::{Forwarded, RequestHead, ResponseHead};
use ringmesh_core::http1::encode;
use ringmesh_core::rng::Rng;
use ringmesh_core::route::RequestView;

fn parse(c: &mut Criterion) {
    let mut head = RequestHead::default();
    c.bench_function("parse request head (600 B, 12 fields)", |b| {
        b.iter(|| head.parse(black_box(REQUEST), 64 * 1024))
    });
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\nDate: Wed, 25 Nov 2026 18:00:00 GMT\r\nServer: app\r\nCache-Control: no-store\r\n\r\n";
    let mut r = ResponseHead::default();
    c.bench_function("parse response head (6 fields)", |b| {
        b.iter(|| r.parse(black_box(resp), 64 * 1024))
    });
    head.parse(REQUEST, 64 * 1024).unwrap();
    let mut out = Vec::with_capacity(4096);
    let mut rng = ringmesh_core::rng::Rng::new(1);
    let trace = ringmesh_core::trace::Trace::continue_or_start(None, None, &mut rng);
    c.bench_function("start a trace (ids for a new trace)", |b| {
        b.iter(|| ringmesh_core::trace::Trace::continue_or_start(black_box(None), None, &mut rng))
    });
    // Ids differ from request to request: the same one every time would let the branch
    // predictor learn its digits.
    let parents: Vec<Vec<u8>> = (0..256u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let y = x.rotate_left(29) ^ 0xa076_1d64_78bd_642f;
            format!("00-{x:016x}{y:016x}-{:016x}-01", x ^ y).into_bytes()
        })
        .collect();
    let mut next = 0usize;
    c.bench_function("continue a trace (parse traceparent, new span)", |b| {
        b.iter(|| {
            next = (next + 1) & 255;
            let tp = &parents[next][..];
            ringmesh_core::trace::Trace::continue_or_start(black_box(Some(tp)), None, &mut rng)
        })
    });
    let fwd = Forwarded {
        client_ip: b"10.9.8.7",
        proto: b"http",
        fallback_host: b"10.0.0.1:80",
        deadline: None,
        trace: Some(&trace),
        identity: None,
        edits: None,
        target: None,
        authority: None,
    };
    c.bench_function("write upstream request head", |b| {
        b.iter(|| {
            out.clear();
            encode::request_head(&mut out, REQUEST, &head, &fwd);
            black_box(out.len())
        })
    });
}

struct Req<'a> {
    host: &'a [u8],
    path: &'a [u8],
}

impl RequestView for Req<'_> {
    fn host(&self) -> &[u8] {
        self.host
    }
    fn path(&self) -> &[u8] {
        self.path
    }
    fn method(&self) -> &[u8] {
        b"GET"
    }
    fn has_header(&self, _: &[u8], _: &[u8]) -> bool {
        false
    }
    fn any_header(&self, _: &[u8], _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        false
    }
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("resolve among 1,000 routes");
    let by_host = route_table(100, 10);
    let one_host = route_table(1, 1000);
    g.bench_function("100 hosts x 10 paths, last path of a host", |b| {
        let req = Req {
            host: b"svc73.prod.internal",
            path: b"/api/v9/items",
        };
        b.iter(|| by_host.resolve(black_box(&req)))
    });
    g.bench_function("1 host x 1000 paths, last path", |b| {
        let req = Req {
            host: b"svc0.prod.internal",
            path: b"/api/v999/items",
        };
        b.iter(|| one_host.resolve(black_box(&req)))
    });
    g.bench_function("no host matches: catch-all", |b| {
        let req = Req {
            host: b"unknown.example",
            path: b"/x",
        };
        b.iter(|| by_host.resolve(black_box(&req)))
    });
    g.finish();
}

fn balancing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick an endpoint");
    for n in [8usize, 64, 1024] {
        for weighted in [false, true] {
            let eps = loads(n, weighted);
            for lb in [Lb::P2cEwma, Lb::RoundRobin, Lb::Random] {
                if weighted && lb == Lb::P2cEwma {
                    continue; // weights only scale P2C's cost
                }
                let mut st = BalanceState::default();
                let mut rng = Rng::new(1);
                let now = Instant::now();
                let name = format!("{lb:?}{}", if weighted { " weighted" } else { "" });
                g.bench_with_input(BenchmarkId::new(name, n), &eps, |b, eps| {
                    b.iter(|| pick(lb, black_box(eps), &mut st, &mut rng, now, None, false))
                });
            }
        }
    }
    g.finish();
}

/// The whole pick as a request makes it: failover split across levels, availability (health,
/// outlier), the policy over real endpoint state.
fn cluster_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick in a cluster");
    let runner = ringmesh_core::worker::Runner::standalone(0);
    let w = runner.worker();
    for n in [8usize, 64, 1024] {
        for (lb, weighted, levels) in [
            (Lb::P2cEwma, false, 1),
            (Lb::P2cEwma, false, 2),
            (Lb::RoundRobin, true, 1),
            (Lb::Random, true, 1),
        ] {
            let (cluster, view) = cluster_view(n, levels, lb, weighted);
            let now = Instant::now();
            let name = format!(
                "{lb:?}{}{}",
                if weighted { " weighted" } else { "" },
                if levels > 1 { ", 2 levels" } else { "" }
            );
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| view.pick(w.draw(), black_box(&cluster), now, None))
            });
        }
    }
    g.finish();
}

fn config(c: &mut Criterion) {
    let yaml = big_config(10_000);
    let mut g = c.benchmark_group("10,000-endpoint config");
    g.sample_size(10);
    g.bench_function("parse and check YAML", |b| {
        b.iter(|| ringmesh_control::config::Config::parse(black_box(&yaml)).unwrap())
    });
    let parsed = ringmesh_control::config::Config::parse(&yaml).unwrap();
    let binds: Vec<_> = parsed.listeners.iter().map(|l| l.bind).collect();
    g.bench_function("compile to a snapshot", |b| {
        b.iter(|| ringmesh_control::compile::compile(black_box(&parsed), 1, &binds).unwrap())
    });
    // Applying keeps endpoint state by identity: the second apply reuses all 10,000.
    let snap = Arc::new(ringmesh_control::compile::compile(&parsed, 1, &binds).unwrap());
    let mut no_listeners = (*snap).clone();
    no_listeners.listeners.clear();
    let snap = Arc::new(no_listeners);
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = ringmesh_core::worker::Runner::standalone(0);
        w.apply(snap.clone()).unwrap();
        assert_eq!(w.worker().endpoint_count(), 10_000);
        g.bench_function("apply to a worker (endpoints kept)", |b| {
            b.iter(|| w.apply(black_box(snap.clone())).unwrap())
        });
    });
    g.finish();
}

fn access_log(c: &mut Criterion) {
    use ringmesh_core::access_log::{Entry, Stamp, names, write_entry};
    use std::time::{Duration, SystemTime};
    let names = names("edge", Some("api"), Some("web"));
    let entry = Entry {
        time: SystemTime::now(),
        names: &names,
        endpoint: Some("127.0.0.1:8081".parse().expect("address")),
        method: b"GET",
        authority: Some(b"api.example.com"),
        path: b"/v1/users/12345/orders?limit=20&cursor=abcdef",
        status: 200,
        bytes_in: 412,
        bytes_out: 1234,
        duration: Duration::from_micros(1_234),
        upstream: Some(Duration::from_micros(999)),
        retries: 0,
        error: None,
        trace_id: Some(b"4bf92f3577b34da6a3ce929d0e0e4736"),
        request_id: None,
        upstream_path: None,
        client_identity: None,
        client: "10.1.2.3:50000".parse().expect("address"),
    };
    let mut out = Vec::with_capacity(64 * 1024);
    let mut stamp = Stamp::default();
    c.bench_function("write an access log line", |b| {
        b.iter(|| {
            if out.len() > 60 * 1024 {
                out.clear();
            }
            write_entry(&mut out, black_box(&entry), &mut stamp);
        })
    });
}

criterion_group!(
    benches,
    parse,
    routing,
    balancing,
    cluster_pick,
    config,
    access_log
);
criterion_main!(benches);
