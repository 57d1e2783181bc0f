//! A drop-in sidecar, in network namespaces the test creates: `ringmesh init` redirects an
//! unmodified application's TCP to its sidecar, which sends each connection where the
//! application asked: mesh services balanced request by request, a server that speaks first
//! as opaque TCP, anything else passed through (or refused). Needs root, `ip`, `nft`,
//! `setpriv`, `python3` and `curl` (`bash tests/run` installs them).

use ringmesh_tests::netns::{PROXY_UID, Pods};

/// In the outbound tests: namespace 0 is the rest of the network (10.77.0.2, fd77::2), with the
/// services' endpoints and a host outside the mesh; namespace 1 the pod (10.77.0.1, fd77::1),
/// with the application and its sidecar.
const NET: usize = 0;
const POD: usize = 1;
const ADMIN: u16 = 9901;

/// The pod's sidecar's count of outbound connections of `listener` that went to `destination`.
fn redirected(pods: &Pods, listener: &str, destination: &str) -> f64 {
    pods.metric(
        POD,
        ADMIN,
        &format!(
            "ringmesh_outbound_connections_total{{listener=\"{listener}\",destination=\"{destination}\"}}"
        ),
    )
}

const SIDECAR: &str = r#"
admin: 127.0.0.1:9901
listeners:
  - name: outbound
    bind: 127.0.0.1:15001
    outbound: { detect_timeout: 200ms, opaque_ports: [2526] }
    routes: []
  - name: outbound6
    bind: "[::1]:15001"
    outbound: { unknown_destinations: refuse }
    routes: []
clusters:
  - name: back
    addresses: [10.77.0.100:80]
    endpoints: [ { addr: "10.77.0.2:8080" }, { addr: "10.77.0.2:8081" } ]
  - name: back6
    endpoints: [ { addr: "[fd77::2]:8080" } ]
  - name: smtp
    endpoints: [ { addr: "10.77.0.2:2525" } ]
  - name: smtp-opaque
    endpoints: [ { addr: "10.77.0.2:2526" } ]
"#;

#[test]
fn an_unmodified_application_goes_through_its_sidecar() {
    let Some(mut pods) = Pods::new("o", 2) else {
        return;
    };
    pods.start_apps(
        NET,
        &[
            "http:8080",
            "http:8081",
            "http:9000",
            "banner:2525",
            "banner:2526",
        ],
    );
    pods.start_sidecar(POD, SIDECAR, ADMIN);
    pods.init(POD, &["--proxy-uid", PROXY_UID]);

    // A service's address, which nothing listens on: balanced request by request over its
    // endpoints, on one client connection. The proxy's X-Forwarded-For shows it parsed each.
    let vip = ["http://10.77.0.100/"; 20];
    let answers = pods.get(POD, &vip);
    assert_eq!(answers.lines().count(), 20, "{answers}");
    for port in ["port=8080", "port=8081"] {
        assert!(
            answers.contains(port),
            "not balanced over both endpoints: {answers}"
        );
    }
    assert!(
        answers.lines().all(|l| l.contains("xff=10.77.0.1")),
        "{answers}"
    );
    assert_eq!(redirected(&pods, "outbound", "mesh-http"), 1.0);

    // HTTP/2 with prior knowledge (its preface starts like a request line) is served too. One
    // request per connection: curl 7.88 fails a second request on a reused cleartext HTTP/2
    // connection whoever the server is (nginx too).
    for _ in 0..2 {
        let h2 = pods.exec(
            POD,
            &[
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "5",
                "--http2-prior-knowledge",
                "http://10.77.0.100/",
            ],
        );
        let (out, err) = (
            String::from_utf8_lossy(&h2.stdout),
            String::from_utf8_lossy(&h2.stderr),
        );
        assert!(out.contains("xff=10.77.0.1"), "{out} {err}");
    }
    assert_eq!(redirected(&pods, "outbound", "mesh-http"), 3.0);

    // The application cannot go around the proxy: calling an endpoint directly is
    // intercepted too, and balanced like the service's address.
    let direct = pods.get(POD, &["http://10.77.0.2:8080/"; 20]);
    assert!(direct.contains("port=8081"), "{direct}");
    assert!(
        direct.lines().all(|l| l.contains("xff=10.77.0.1")),
        "{direct}"
    );

    // Outside the mesh: passed through untouched (the server sees no X-Forwarded-For).
    let before = redirected(&pods, "outbound", "passthrough");
    assert_eq!(
        pods.get(POD, &["http://10.77.0.2:9000/"]).trim(),
        "port=9000 xff=- id=-"
    );
    assert_eq!(redirected(&pods, "outbound", "passthrough"), before + 1.0);

    // Loopback traffic is left alone: the admin API above was reached without a redirect.
    assert_eq!(redirected(&pods, "outbound", "passthrough"), before + 1.0);
    assert_eq!(redirected(&pods, "outbound", "not-redirected"), 0.0);

    // A server that speaks first: the client sends nothing, so after the detection wait the
    // connection is opaque TCP, balanced over the service; a port declared opaque skips it.
    assert_eq!(
        pods.banner_exchange(POD, "10.77.0.2", 2525),
        "220 banner 2525 | hello"
    );
    assert_eq!(
        pods.banner_exchange(POD, "10.77.0.2", 2526),
        "220 banner 2526 | hello"
    );
    assert_eq!(redirected(&pods, "outbound", "mesh-opaque"), 2.0);

    // IPv6: a service is served; outside the mesh is refused on this listener.
    let six = pods.get(POD, &["http://[fd77::2]:8080/"]);
    assert!(six.contains("port=8080") && !six.contains("xff=-"), "{six}");
    assert!(!pods.curl(POD, &["http://[fd77::2]:9000/"]).status.success());
    assert_eq!(redirected(&pods, "outbound6", "refused"), 1.0);

    // Installing again changes nothing; removing leaves nothing behind, and the service's
    // address is no longer reachable (only the sidecar made it so).
    pods.init(POD, &["--proxy-uid", PROXY_UID]);
    let rules = pods.exec(POD, &["nft", "list", "table", "inet", "ringmesh"]);
    assert_eq!(
        String::from_utf8_lossy(&rules.stdout)
            .matches("redirect to :15001")
            .count(),
        1
    );
    pods.init(POD, &["--remove"]);
    assert!(
        !pods
            .exec(POD, &["nft", "list", "table", "inet", "ringmesh"])
            .status
            .success()
    );
    assert_eq!(pods.exec(POD, &["nft", "list", "ruleset"]).stdout, b"");
    assert!(!pods.curl(POD, &["http://10.77.0.100/"]).status.success());
    assert_eq!(
        pods.get(POD, &["http://10.77.0.2:8080/"]).trim(),
        "port=8080 xff=- id=-"
    );
}

#[test]
fn a_connection_made_straight_to_the_outbound_port_is_closed() {
    let Some(mut pods) = Pods::new("d", 2) else {
        return;
    };
    pods.start_sidecar(POD, SIDECAR, ADMIN);
    // Not redirected: there is no original destination, and sending it anywhere would loop.
    assert!(
        !pods
            .curl(POD, &["http://127.0.0.1:15001/"])
            .status
            .success()
    );
    assert_eq!(redirected(&pods, "outbound", "not-redirected"), 1.0);
}
