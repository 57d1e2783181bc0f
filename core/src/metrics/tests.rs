//! Merging workers' metrics, and the Prometheus text rendered from them.

use super::*;

#[test]
fn records_merges_and_renders() {
    let l: Arc<str> = "edge".into();
    let r: Arc<str> = "r0".into();
    let c: Arc<str> = "web".into();
    let a = WorkerMetrics::default();
    let b = WorkerMetrics::default();
    let sa = a.route(&l, &r, &c);
    sa.record(200, Duration::from_micros(300));
    sa.record(200, Duration::from_millis(2));
    sa.record(503, Duration::from_millis(20));
    b.route(&l, &r, &c).record(200, Duration::from_micros(50));
    a.listener(&l).local_reply(ErrorKind::NoRoute);
    let m = merge(&[a.report(0, vec![], vec![]), b.report(1, vec![], vec![])]);
    assert_eq!(m.routes.len(), 1);
    assert_eq!(m.routes[0].codes, vec![(200, 3), (503, 1)]);
    let mut out = String::new();
    render(&mut out, &m);
    assert!(out.contains(
        "ringmesh_requests_total{listener=\"edge\",route=\"r0\",cluster=\"web\",code=\"200\"} 3\n"
    ));
    assert!(out.contains("ringmesh_request_duration_seconds_bucket{listener=\"edge\",route=\"r0\",cluster=\"web\",le=\"0.0001\"} 1\n"), "{out}");
    assert!(out.contains("le=\"0.0005\"} 2\n"), "{out}");
    assert!(out.contains("le=\"0.0025\"} 3\n"), "{out}");
    assert!(out.contains("le=\"+Inf\"} 4\n"), "{out}");
    assert!(out.contains("ringmesh_request_duration_seconds_count{listener=\"edge\",route=\"r0\",cluster=\"web\"} 4\n"));
    assert!(out.contains("ringmesh_local_replies_total{listener=\"edge\",kind=\"no-route\"} 1\n"));
}

#[test]
fn unused_series_are_forgotten() {
    let m = WorkerMetrics::default();
    let n: Arc<str> = "x".into();
    let kept = m.route(&n, &n, &n);
    drop(m.route(&n, &"y".into(), &n));
    m.forget_unused();
    assert_eq!(m.report(0, vec![], vec![]).routes.len(), 1);
    drop(kept);
}

#[test]
fn labels_are_escaped() {
    let mut s = String::new();
    escape_label(&mut s, "a\"b\\c\nd");
    assert_eq!(s, "a\\\"b\\\\c\\nd");
}
