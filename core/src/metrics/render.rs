//! The Prometheus text exposition of merged metrics.

use crate::error::ErrorKind;
use std::fmt::Write as _;
use std::sync::Arc;

use super::*;

/// One series per non-zero count of a listener, labelled `listener` and `label`.
pub(super) fn by_kind(
    out: &mut String,
    name: &str,
    listener: &str,
    label: &str,
    counts: &[(&str, u64)],
) {
    for &(kind, n) in counts.iter().filter(|(_, n)| *n > 0) {
        out.push_str(name);
        out.push_str("{listener=\"");
        escape_label(out, listener);
        let _ = writeln!(out, "\",{label}=\"{kind}\"}} {n}");
    }
}

/// Escapes a label value for the Prometheus text format.
pub fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

pub(super) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the data-plane metrics in the Prometheus text format.
pub fn render(out: &mut String, m: &Merged) {
    header(
        out,
        "ringmesh_requests_total",
        "counter",
        "Requests by listener, route, cluster and status code.",
    );
    for r in &m.routes {
        for (code, n) in &r.codes {
            out.push_str("ringmesh_requests_total{");
            route_labels(out, r);
            let _ = writeln!(out, ",code=\"{code}\"}} {n}");
        }
    }
    header(
        out,
        "ringmesh_request_duration_seconds",
        "histogram",
        "Time from the request head to the end of the response.",
    );
    for r in &m.routes {
        let Some(h) = &r.hist else { continue };
        let counts = super::bucket_counts(h);
        let mut cumulative = 0;
        for (le, n) in DURATION_BUCKETS.iter().zip(counts) {
            cumulative += n;
            out.push_str("ringmesh_request_duration_seconds_bucket{");
            route_labels(out, r);
            let _ = writeln!(out, ",le=\"{le}\"}} {cumulative}");
        }
        out.push_str("ringmesh_request_duration_seconds_bucket{");
        route_labels(out, r);
        let _ = writeln!(out, ",le=\"+Inf\"}} {}", h.len());
        out.push_str("ringmesh_request_duration_seconds_sum{");
        route_labels(out, r);
        let _ = writeln!(out, "}} {}", r.sum_us as f64 / 1e6);
        out.push_str("ringmesh_request_duration_seconds_count{");
        route_labels(out, r);
        let _ = writeln!(out, "}} {}", h.len());
    }
    family(
        out,
        "ringmesh_connections_active",
        "gauge",
        "Open client connections.",
        &m.listeners,
        listener_label,
        |x| x.active,
    );
    family(
        out,
        "ringmesh_connections_total",
        "counter",
        "Accepted client connections.",
        &m.listeners,
        listener_label,
        |x| x.accepted,
    );
    header(
        out,
        "ringmesh_local_replies_total",
        "counter",
        "Answers the proxy made itself, by the ringmesh-error kind.",
    );
    for l in &m.listeners {
        let counts = ErrorKind::ALL.map(|k| (k.name(), l.local[k.index()]));
        by_kind(
            out,
            "ringmesh_local_replies_total",
            &l.name,
            "kind",
            &counts,
        );
    }
    header(
        out,
        "ringmesh_policy_denials_total",
        "counter",
        "Requests and connections denied by access policies; mode=\"audit\": would have been.",
    );
    for ((listener, policy, audit), n) in &m.denials {
        out.push_str("ringmesh_policy_denials_total{listener=\"");
        escape_label(out, listener);
        out.push_str("\",policy=\"");
        escape_label(out, policy);
        let mode = if *audit { "audit" } else { "enforced" };
        let _ = writeln!(out, "\",mode=\"{mode}\"}} {n}");
    }
    listener_counts(
        out,
        m,
        ("ringmesh_tls_handshakes_total", "result"),
        "TLS handshakes with clients, by result.",
        |l| {
            Handshake::ALL
                .map(|h| (h.name(), l.tls[h as usize]))
                .to_vec()
        },
    );
    listener_counts(
        out,
        m,
        ("ringmesh_http2_events_total", "event"),
        "HTTP/2 connections, streams, client resets, and how connections ended.",
        |l| H2Event::ALL.map(|e| (e.name(), l.h2[e as usize])).to_vec(),
    );
    header(
        out,
        "ringmesh_inbound_connections_total",
        "counter",
        "Connections an inbound listener took from other pods, by how they were served.",
    );
    for l in m
        .listeners
        .iter()
        .filter(|l| l.inbound.iter().any(|n| *n > 0))
    {
        let counts = InboundConn::ALL.map(|r| (r.name(), l.inbound[r as usize]));
        by_kind(
            out,
            "ringmesh_inbound_connections_total",
            &l.name,
            "client",
            &counts,
        );
    }
    header(
        out,
        "ringmesh_outbound_connections_total",
        "counter",
        "Connections an outbound listener took from applications, by where they went.",
    );
    // Only outbound listeners have these: the others would print five zeros each.
    for l in m
        .listeners
        .iter()
        .filter(|l| l.redirected.iter().any(|n| *n > 0))
    {
        let counts = Redirected::ALL.map(|r| (r.name(), l.redirected[r as usize]));
        by_kind(
            out,
            "ringmesh_outbound_connections_total",
            &l.name,
            "destination",
            &counts,
        );
    }
    header(
        out,
        "ringmesh_upstream_rq_total",
        "counter",
        "Upstream requests by endpoint and outcome.",
    );
    for e in &m.endpoints {
        for o in Outcome::ALL {
            out.push_str("ringmesh_upstream_rq_total{");
            endpoint_labels(out, e);
            let _ = writeln!(
                out,
                ",outcome=\"{}\"}} {}",
                o.name(),
                e.outcomes[o as usize]
            );
        }
    }
    family(
        out,
        "ringmesh_endpoint_ewma_seconds",
        "gauge",
        "Peak-EWMA latency estimate, averaged over workers.",
        &m.endpoints,
        endpoint_labels,
        |x| x.ewma_seconds,
    );
    family(
        out,
        "ringmesh_endpoint_ejected",
        "gauge",
        "1 while the endpoint is ejected by outlier detection (in any worker: each decides alone).",
        &m.endpoints,
        endpoint_labels,
        |x| u8::from(x.ejected > 0),
    );
    family(
        out,
        "ringmesh_outlier_ejections_total",
        "counter",
        "Ejections by outlier detection, summed over workers.",
        &m.endpoints,
        endpoint_labels,
        |x| x.ejections,
    );
    family(
        out,
        "ringmesh_endpoint_healthy",
        "gauge",
        "1 while the endpoint passes its active health checks (or has none).",
        &m.endpoints,
        endpoint_labels,
        |x| u8::from(x.healthy),
    );
    header(
        out,
        "ringmesh_health_checks_total",
        "counter",
        "Active health checks by result.",
    );
    for e in &m.endpoints {
        let Some((passed, failed)) = e.checks else {
            continue;
        };
        for (result, n) in [("passed", passed), ("failed", failed)] {
            out.push_str("ringmesh_health_checks_total{");
            endpoint_labels(out, e);
            let _ = writeln!(out, ",result=\"{result}\"}} {n}");
        }
    }
    header(
        out,
        "ringmesh_retries_total",
        "counter",
        "Retries, by route and cluster.",
    );
    let mut retries: Vec<(&Arc<str>, &Arc<str>, u64)> = Vec::new();
    for r in &m.routes {
        match retries
            .iter_mut()
            .find(|(rt, c, _)| *rt == &r.route && *c == &r.cluster)
        {
            Some(e) => e.2 += r.retries,
            None => retries.push((&r.route, &r.cluster, r.retries)),
        }
    }
    for (route, cluster, n) in retries.into_iter().filter(|(r, _, _)| !r.is_empty()) {
        out.push_str("ringmesh_retries_total{route=\"");
        escape_label(out, route);
        out.push_str("\",cluster=\"");
        escape_label(out, cluster);
        let _ = writeln!(out, "\"}} {n}");
    }
    for (name, help, label, values) in ROUTE_COUNTS {
        route_counts(out, m, (name, label), help, values);
    }
    family(
        out,
        "ringmesh_retry_budget_exhausted_total",
        "counter",
        "Retries the budget refused, by cluster.",
        &m.clusters,
        cluster_label,
        |x| x.budget_refused,
    );
    header(
        out,
        "ringmesh_overflow_total",
        "counter",
        "Requests refused by a circuit breaker, by cluster and limit.",
    );
    for c in &m.clusters {
        for l in Limit::ALL {
            out.push_str("ringmesh_overflow_total{cluster=\"");
            escape_label(out, &c.name);
            let _ = writeln!(
                out,
                "\",limit=\"{}\"}} {}",
                l.name(),
                c.overflow[l as usize]
            );
        }
    }
    family(
        out,
        "ringmesh_cluster_requests_active",
        "gauge",
        "Requests in flight to the cluster.",
        &m.clusters,
        cluster_label,
        |x| x.active,
    );
    family(
        out,
        "ringmesh_cluster_connections",
        "gauge",
        "Open upstream connections of the cluster.",
        &m.clusters,
        cluster_label,
        |x| x.connections,
    );
    family(
        out,
        "ringmesh_endpoint_in_flight",
        "gauge",
        "Requests in flight to the endpoint.",
        &m.endpoints,
        endpoint_labels,
        |x| x.in_flight,
    );
    family(
        out,
        "ringmesh_upstream_pool_idle",
        "gauge",
        "Idle pooled connections to the endpoint.",
        &m.endpoints,
        endpoint_labels,
        |x| x.pooled,
    );
    family(
        out,
        "ringmesh_access_log_lines_total",
        "counter",
        "Access log lines written, and lines lost to write errors or to a writer too far behind.",
        &[
            ("written", crate::access_log::lines_written()),
            ("lost", crate::access_log::lines_lost()),
        ],
        |out, (r, _)| {
            let _ = write!(out, "result=\"{r}\"");
        },
        |(_, n)| *n,
    );
    family(
        out,
        "ringmesh_spans_total",
        "counter",
        "Spans accepted by the collector (exported), dropped by a worker with the export queue full, or lost to a failed post.",
        &crate::spans::counts(),
        |out, (r, _)| {
            let _ = write!(out, "result=\"{r}\"");
        },
        |(_, n)| *n,
    );
}

pub(super) fn route_labels(out: &mut String, r: &RouteReport) {
    out.push_str("listener=\"");
    escape_label(out, &r.listener);
    out.push_str("\",route=\"");
    escape_label(out, &r.route);
    out.push_str("\",cluster=\"");
    escape_label(out, &r.cluster);
    out.push('"');
}

/// A family with one series per item: `name{labels} value`.
pub(super) fn family<T, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    items: &[T],
    labels: fn(&mut String, &T),
    value: impl Fn(&T) -> V,
) {
    header(out, name, kind, help);
    for item in items {
        out.push_str(name);
        out.push('{');
        labels(out, item);
        let _ = writeln!(out, "}} {}", value(item));
    }
}

pub(super) fn listener_label(out: &mut String, l: &ListenerReport) {
    out.push_str("listener=\"");
    escape_label(out, &l.name);
    out.push('"');
}

pub(super) fn cluster_label(out: &mut String, c: &ClusterReport) {
    out.push_str("cluster=\"");
    escape_label(out, &c.name);
    out.push('"');
}

pub(super) fn endpoint_labels(out: &mut String, e: &EndpointReport) {
    out.push_str("cluster=\"");
    escape_label(out, &e.cluster);
    let _ = write!(out, "\",endpoint=\"{}\"", e.addr);
}

/// The route actions' counter families: name, help, the label that tells the series of one
/// route apart, and each label value's counter.
type RouteCountFamily = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, crate::metrics::Count)],
);

const ROUTE_COUNTS: &[RouteCountFamily] = {
    use crate::metrics::Count::*;
    &[
        (
            "ringmesh_faults_total",
            "Faults injected by routes (`fault`), by listener, route and kind (delay, abort).",
            "kind",
            &[("delay", FaultDelay), ("abort", FaultAbort)],
        ),
        (
            "ringmesh_compressed_total",
            "Answers compressed by routes (`compression`), by listener, route and algorithm; \
             `busy`: answers that qualified and went uncoded, the worker having its most coded \
             streams.",
            "algorithm",
            &[
                ("zstd", Zstd),
                ("br", Brotli),
                ("gzip", Gzip),
                ("busy", CodingBusy),
            ],
        ),
        (
            "ringmesh_compression_bytes_total",
            "Bytes of answers into the encoders (`in`) and out of them (`out`), by listener and route.",
            "direction",
            &[("in", CodedIn), ("out", CodedOut)],
        ),
        (
            "ringmesh_mirrored_total",
            "Requests drawn for a copy to a route's shadow cluster (`mirror`), by listener, \
             route and outcome: answered (any status), failed (no answer), skipped (not sent: a \
             body too long, slow or streaming, an upgrade, or the worker's bound on copies).",
            "outcome",
            &[
                ("answered", MirrorAnswered),
                ("failed", MirrorFailed),
                ("skipped", MirrorSkipped),
            ],
        ),
    ]
};

/// One family of route action counters; routes that never counted any have no series.
fn route_counts(
    out: &mut String,
    m: &Merged,
    (name, label): (&str, &str),
    help: &str,
    values: &[(&str, crate::metrics::Count)],
) {
    header(out, name, "counter", help);
    let mut rows: Vec<(&Arc<str>, &Arc<str>, Vec<u64>)> = Vec::new();
    for r in &m.routes {
        let n: Vec<u64> = values.iter().map(|(_, c)| r.counts[*c as usize]).collect();
        if n.iter().all(|&n| n == 0) {
            continue;
        }
        match rows
            .iter_mut()
            .find(|(l, rt, _)| *l == &r.listener && *rt == &r.route)
        {
            Some(e) => e.2.iter_mut().zip(&n).for_each(|(t, n)| *t += n),
            None => rows.push((&r.listener, &r.route, n)),
        }
    }
    for (listener, route, n) in rows {
        for ((value, _), n) in values.iter().zip(n) {
            out.push_str(name);
            out.push_str("{listener=\"");
            escape_label(out, listener);
            out.push_str("\",route=\"");
            escape_label(out, route);
            let _ = writeln!(out, "\",{label}=\"{value}\"}} {n}");
        }
    }
}
