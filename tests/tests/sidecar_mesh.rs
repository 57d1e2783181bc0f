//! Sidecars fed by a control plane: the mesh file assigns each node its sidecar (ports, mTLS
//! mode, opaque ports), the mesh CA issues the identities, and two unmodified pods in network
//! namespaces the test creates talk over mTLS without a certificate file anywhere. Needs root,
//! `ip`, `nft`, `setpriv`, `python3` and `curl`.

use std::process::Stdio;
use std::time::Duration;

use ringmesh_tests::mesh::{admin_section, node, token_of};
use ringmesh_tests::netns::{PROXY_UID, Pods};
use ringmesh_tests::{binary, eventually, temp_config};

/// Pod B (10.77.0.2), which also runs the control plane, and pod A (10.77.0.1).
const B: usize = 0;
const A: usize = 1;
const CONTROL: &str = "10.77.0.2:17000";

#[test]
fn sidecars_fed_by_a_control_plane_talk_over_mtls() {
    let Some(mut pods) = Pods::new("cp", 2) else {
        return;
    };
    let mesh = format!(
        "{}clusters:
  - name: b
    protocol: mesh
    tls: {{ mesh: spiffe://mesh.local/ns/default/sa/b }}
    addresses: [ 10.96.0.10:80 ]
    endpoints: [ {{ addr: \"10.77.0.2:8080\" }} ]
nodes:
{}{}",
        admin_section(),
        node("a", "    sidecar: {}\n"),
        node("b", "    sidecar: { inbound: [ { port: 8080 } ] }\n"),
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
    pods.start_apps(B, &["http:8080"]);
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
    // B's rules leave the control plane's port alone: A's sidecar reaches it.
    pods.init(
        B,
        &[
            "--proxy-uid",
            PROXY_UID,
            "--inbound-port",
            "15006",
            "--skip-inbound-ports",
            "17000",
        ],
    );
    pods.init(A, &["--proxy-uid", PROXY_UID]);

    // A calls B's address, and the service's virtual address: both reach B's application with
    // A's identity, which the mesh CA issued.
    let a_id = "spiffe://mesh.local/ns/default/sa/a";
    for url in ["http://10.77.0.2:8080/", "http://10.96.0.10/"] {
        let answer = pods.get(A, &[url]);
        assert!(answer.contains(&format!("id={a_id}")), "{url}: {answer}");
    }
    assert_eq!(
        pods.metric(
            B,
            9901,
            "ringmesh_inbound_connections_total{listener=\"inbound\",client=\"mesh\"}"
        ),
        1.0
    );
}
