//! Two pods, each an unmodified application with `ringmesh init` and a sidecar, in network
//! namespaces the test creates: pod A calls pod B's address and port directly; A's outbound
//! sidecar takes it over mTLS (HTTP/2 between the sidecars) to B, whose inbound sidecar takes
//! the TLS off and hands the request to B's application with A's SPIFFE identity. A third
//! namespace without a sidecar is refused on B's strict ports and served on its permissive
//! one. Needs root, `ip`, `nft`, `setpriv`, `python3`, `curl` and `tcpdump`.

use std::time::Duration;

use ringmesh_tests::netns::{PROXY_UID, Pods, two_pod_configs};
use ringmesh_tests::tls::Pki;
use ringmesh_tests::{eventually, tool};

/// Pod B (the server, 10.77.0.2 towards A, 10.77.1.2 towards C), pod A (the client,
/// 10.77.0.1), and C (10.77.1.1), a host with no sidecar.
const B: usize = 0;
const A: usize = 1;
const C: usize = 2;
const A_ADMIN: u16 = 9901;
const B_ADMIN: u16 = 9902;
const A_ID: &str = "spiffe://test.mesh/ns/default/sa/a";

fn inbound_count(pods: &Pods, client: &str) -> f64 {
    pods.metric(
        B,
        B_ADMIN,
        &format!("ringmesh_inbound_connections_total{{listener=\"inbound\",client=\"{client}\"}}"),
    )
}

#[test]
fn two_pods_talk_over_mtls_through_their_sidecars() {
    if tool(&["tcpdump"]).is_none() {
        return;
    }
    let Some(mut pods) = Pods::new("m", 3) else {
        return;
    };
    let pki = Pki::new("sidecar-mtls");
    pods.start_apps(B, &["http:8080", "http:8081", "http:9000", "banner:2525"]);
    let (b_config, a_config) = two_pod_configs(&pki, A_ID, B_ADMIN, A_ADMIN);
    pods.start_sidecar(B, &b_config, B_ADMIN);
    pods.init(B, &["--proxy-uid", PROXY_UID, "--inbound-port", "15006"]);
    pods.start_sidecar(A, &a_config, A_ADMIN);
    pods.init(A, &["--proxy-uid", PROXY_UID]);
    let pcap = pki.dir.join("link.pcap");
    pods.capture(B, &pcap);

    // A calls B's address and port, as it would without a mesh; B's application sees A's
    // identity, which only a verified client certificate can carry. Each sidecar appended
    // the address it took the request from: the application, then A's sidecar.
    let answer = pods.get(A, &["http://10.77.0.2:8080/secret-marker-7f3a"]);
    assert_eq!(
        answer.trim(),
        format!("port=8080 xff=10.77.0.1, 10.77.0.1 id={A_ID}")
    );
    assert_eq!(inbound_count(&pods, "mesh"), 1.0);

    // A server that speaks first, through both sidecars: opaque TCP over the mesh's mTLS.
    assert_eq!(
        pods.banner_exchange(A, "10.77.0.2", 2525),
        "220 banner 2525 | hello"
    );
    assert_eq!(inbound_count(&pods, "mesh"), 2.0);

    // C has no sidecar: refused on a strict port, served (with no identity) on a permissive
    // one, refused on a port B does not declare.
    assert!(!pods.curl(C, &["http://10.77.1.2:8080/"]).status.success());
    assert_eq!(inbound_count(&pods, "refused-plaintext"), 1.0);
    assert_eq!(
        pods.get(C, &["http://10.77.1.2:8081/clear-marker-91c2"])
            .trim(),
        "port=8081 xff=10.77.1.1 id=-"
    );
    assert_eq!(inbound_count(&pods, "plaintext"), 1.0);
    assert!(!pods.curl(C, &["http://10.77.1.2:9000/"]).status.success());
    assert_eq!(inbound_count(&pods, "undeclared-port"), 1.0);
    // Attacks from C, a host of the network without a mesh certificate: TLS without a client
    // certificate on a strict port fails the handshake; the inbound port itself, called
    // straight (not redirected), is closed before anything is read.
    assert!(
        !pods
            .curl(C, &["-k", "https://10.77.1.2:8080/"])
            .status
            .success()
    );
    assert!(!pods.curl(C, &["http://10.77.1.2:15006/"]).status.success());
    assert_eq!(inbound_count(&pods, "not-redirected"), 1.0);
    // A client that forges the identity field gets nothing for it.
    let forged = pods.get(
        C,
        &[
            "-H",
            &format!("ringmesh-client-identity: {A_ID}"),
            "http://10.77.1.2:8081/",
        ],
    );
    assert!(forged.contains("id=-"), "{forged}");

    // The capture on B's links saw the cleartext request from C (so it captures what crosses)
    // and none of A's: A's request crossed encrypted.
    let seen = |marker: &[u8]| {
        let bytes = std::fs::read(&pcap).unwrap_or_default();
        bytes.windows(marker.len()).any(|w| w == marker)
    };
    assert!(
        eventually(Duration::from_secs(5), || seen(b"clear-marker-91c2")),
        "the capture saw nothing"
    );
    assert!(!seen(b"secret-marker-7f3a"), "A's request crossed in clear");
    assert!(!seen(b"220 banner"), "the opaque stream crossed in clear");

    // A reload that makes the permissive port strict: C's connection, let in as cleartext,
    // gets its next request refused.
    let script = "import http.client, sys\n\
                  c = http.client.HTTPConnection('10.77.1.2', 8081, timeout=5)\n\
                  c.request('GET', '/'); r = c.getresponse(); r.read(); print(r.status, flush=True)\n\
                  sys.stdin.readline()\n\
                  c.request('GET', '/'); r = c.getresponse(); r.read(); print(r.status, flush=True)\n";
    let mut client = std::process::Command::new("ip")
        .args(["netns", "exec", &pods.ns[C], "python3", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client");
    let mut out = std::io::BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("first answer");
    assert_eq!(line.trim(), "200");
    let version = pods.metric(B, B_ADMIN, "ringmesh_config_version");
    let strict = b_config.replace("mtls: permissive", "mtls: strict");
    // The sidecar watches the file it was started on.
    ringmesh_tests::temp_config(&pods.ns[B], &strict);
    assert!(eventually(Duration::from_secs(5), || pods.metric(
        B,
        B_ADMIN,
        "ringmesh_config_version"
    ) > version));
    std::io::Write::write_all(client.stdin.as_mut().expect("stdin"), b"go\n").expect("go");
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).expect("second answer");
    assert_eq!(line.trim(), "403");
    let _ = client.wait();
}
