//! Sidecars fed by a control plane: the mesh file assigns each node its sidecar (ports, mTLS
//! modes, opaque ports), the mesh CA issues the identities, and two unmodified pods in network
//! namespaces the test creates talk over mTLS without a certificate file anywhere: B's
//! application sees A's identity, a capture on B's links sees none of A's bytes in clear, a
//! server that speaks first works through both sidecars, and a third namespace without a
//! sidecar is refused on a strict port and served on a permissive one. Needs root, `ip`, `nft`,
//! `setpriv`, `python3`, `curl` and `tcpdump`.

use std::process::Stdio;
use std::time::Duration;

use ringmesh_tests::mesh::{admin_section, node, token_of};
use ringmesh_tests::netns::{PROXY_UID, Pods};
use ringmesh_tests::{binary, eventually, temp_config, tool};

/// Pod B (10.77.0.2 towards A, 10.77.1.2 towards C), which also runs the control plane; pod A
/// (10.77.0.1); C (10.77.1.1), a host without a sidecar.
const B: usize = 0;
const A: usize = 1;
const C: usize = 2;
const CONTROL: &str = "10.77.0.2:17000";

#[test]
fn sidecars_fed_by_a_control_plane_talk_over_mtls() {
    two_sidecars_fed_by_a_control_plane(false);
}

/// The same with `ringmesh init --accelerate` in both pods: everything holds, and both
/// sidecars find their local hops shortcut.
#[test]
fn sidecars_fed_by_a_control_plane_talk_over_mtls_with_the_kernel_shortcut() {
    if tool(&["nsenter"]).is_none() || tool(&["bpftool"]).is_none() {
        return;
    }
    two_sidecars_fed_by_a_control_plane(true);
}

fn two_sidecars_fed_by_a_control_plane(accelerate: bool) {
    if tool(&["tcpdump"]).is_none() {
        return;
    }
    let tag = if accelerate { "cx" } else { "cp" };
    let Some(mut pods) = Pods::new(tag, 3) else {
        return;
    };
    // B's rules leave the control plane's port alone: A's sidecar reaches it.
    let b_init = [
        "--proxy-uid",
        PROXY_UID,
        "--inbound-port",
        "15006",
        "--skip-inbound-ports",
        "17000",
    ];
    let a_init = ["--proxy-uid", PROXY_UID];
    // Accelerated, each pod gets its cgroup (and its rules) before anything starts in it.
    if accelerate
        && (pods.accelerate(B, &b_init).is_none() || pods.accelerate(A, &a_init).is_none())
    {
        return;
    }
    let mesh = format!(
        "{}clusters:
  - name: b
    protocol: mesh
    tls: {{ mesh: spiffe://mesh.local/ns/default/sa/b }}
    addresses: [ 10.96.0.10:80 ]
    endpoints: [ {{ addr: \"10.77.0.2:8080\" }} ]
  - name: b-smtp
    tls: {{ mesh: spiffe://mesh.local/ns/default/sa/b }}
    endpoints: [ {{ addr: \"10.77.0.2:2525\" }} ]
nodes:
{}{}",
        admin_section(),
        node("a", "    sidecar: { opaque_ports: [ 2525 ] }\n"),
        node(
            "b",
            "    sidecar: { inbound: [ { port: 8080 }, { port: 8081, mtls: permissive }, { port: 2525, opaque: true } ] }\n"
        ),
    );
    let mesh_file = temp_config(&format!("{}-mesh", pods.ns[B]), &mesh);
    let dir = mesh_file.parent().expect("dir").to_path_buf();
    let log = dir.join("control.log");
    let state = dir.join("state.json");
    let bin = binary();
    let command = format!(
        "exec {} control --config {} --bind {CONTROL} --state {} > {} 2>&1",
        bin.display(),
        mesh_file.display(),
        state.display(),
        log.display()
    );
    pods.spawn(B, &["sh", "-c", &command], Stdio::null());
    // The CA's pin, as the control plane logs it for proxies to use.
    let mut pin = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pin=sha256:"))
                .map(str::to_string);
            found.map(|p| pin = p).is_some()
        }),
        "the control plane did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    pods.start_apps(B, &["http:8080", "http:8081", "banner:2525"]);
    for (i, name) in [(B, "b"), (A, "a")] {
        let token = format!("RINGMESH_TOKEN={}", token_of(name));
        let control = format!("https://{CONTROL}");
        let args = [
            "--control",
            &control,
            "--node",
            name,
            "--control-ca-sha256",
            &pin,
        ];
        pods.start_proxy(i, &[&token], &args, 9901);
    }
    if !accelerate {
        pods.init(B, &b_init);
        pods.init(A, &a_init);
    }

    let pcap = dir.join("link.pcap");
    pods.capture(B, &pcap);

    // A calls B's address, and the service's virtual address: both reach B's application with
    // A's identity, which the mesh CA issued.
    let a_id = "spiffe://mesh.local/ns/default/sa/a";
    for url in [
        "http://10.77.0.2:8080/secret-marker-3e1d",
        "http://10.96.0.10/",
    ] {
        let answer = pods.get(A, &[url]);
        assert!(answer.contains(&format!("id={a_id}")), "{url}: {answer}");
    }
    // A server that speaks first, through both sidecars (opaque on both sides, inside mTLS).
    assert_eq!(
        pods.banner_exchange(A, "10.77.0.2", 2525),
        "220 banner 2525 | hello"
    );
    // C has no sidecar: refused on the strict port, served without an identity on the
    // permissive one.
    assert!(!pods.curl(C, &["http://10.77.1.2:8080/"]).status.success());
    assert_eq!(
        pods.get(C, &["http://10.77.1.2:8081/clear-marker-5b7a"])
            .trim(),
        "port=8081 xff=10.77.1.1 id=-"
    );
    // The capture saw C's cleartext request (it captures what crosses) and none of A's bytes.
    let seen = |marker: &[u8]| {
        let bytes = std::fs::read(&pcap).unwrap_or_default();
        bytes.windows(marker.len()).any(|w| w == marker)
    };
    assert!(
        eventually(Duration::from_secs(5), || seen(b"clear-marker-5b7a")),
        "the capture saw nothing"
    );
    assert!(!seen(b"secret-marker-3e1d"), "A's request crossed in clear");
    assert!(!seen(b"220 banner"), "the opaque stream crossed in clear");
    let inbound = |client: &str| {
        pods.metric(
            B,
            9901,
            &format!(
                "ringmesh_inbound_connections_total{{listener=\"inbound\",client=\"{client}\"}}"
            ),
        )
    };
    // One pooled HTTP/2 connection from A's sidecar, and the opaque one.
    assert_eq!(inbound("mesh"), 2.0);
    assert_eq!(inbound("refused-plaintext"), 1.0);
    assert_eq!(inbound("plaintext"), 1.0);
    let shortcut = format!("\nringmesh_accelerated {}\n", u8::from(accelerate));
    for i in [A, B] {
        let text = pods.get(i, &["http://127.0.0.1:9901/metrics"]);
        assert!(text.contains(&shortcut), "{}: {shortcut}", pods.ns[i]);
    }
}
