//! The kernel shortcut (`ringmesh init --accelerate`): two pods, each in a cgroup of its own
//! with the shortcut attached, talk through their sidecars as in tests/tests/sidecar_mtls.rs,
//! and every kind of traffic arrives exactly as without it: large bodies both ways,
//! pipelining, HTTP/2, half-close, a reset. A capture on each pod's loopback shows the local
//! hops carried no payload (the capture does see a loopback request that is not shortcut).
//! `--remove` leaves no program and no map behind; where the programs cannot be attached,
//! `init` says why and the sidecar works and says it runs without. Needs root, `ip`, `nft`,
//! `nsenter`, `setpriv`, `python3`, `curl`, `tcpdump`, `bpftool` and a cgroup v2 hierarchy.

use std::os::unix::fs::DirBuilderExt as _;
use std::time::Duration;

use ringmesh_tests::netns::{PROXY_UID, Pods, cgroup2_root, two_pod_configs};
use ringmesh_tests::tls::Pki;
use ringmesh_tests::{eventually, tool};

const B: usize = 0;
const A: usize = 1;
const A_ADMIN: u16 = 9901;
const B_ADMIN: u16 = 9902;
const A_ID: &str = "spiffe://test.mesh/ns/default/sa/a";

/// The bytes tests/netns/apps.py answers for `GET /bytes/N`.
fn pattern(n: usize) -> Vec<u8> {
    let block: Vec<u8> = (0u32..16384).flat_map(u32::to_be_bytes).collect();
    block.iter().copied().cycle().take(n).collect()
}

/// The metrics text of the sidecar of pod `i`.
fn metrics(pods: &Pods, i: usize, admin: u16) -> String {
    pods.get(i, &[&format!("http://127.0.0.1:{admin}/metrics")])
}

/// Runs a Python script in pod `i`; returns what it printed.
fn python(pods: &Pods, i: usize, script: &str) -> String {
    let out = pods.exec(i, &["python3", "-c", script]);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `bpftool -j KIND show`: the (id, name) of each program or map named `ringmesh_*`.
fn ours(kind: &str) -> Vec<(u64, String)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", kind, "show"])
        .output()
        .expect("bpftool");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let name = o["name"].as_str()?;
            name.starts_with("ringmesh_")
                .then(|| (o["id"].as_u64().unwrap_or(0), name.to_string()))
        })
        .collect()
}

#[test]
fn accelerated_pods_carry_every_kind_of_traffic_as_before() {
    if tool(&["tcpdump"]).is_none() || tool(&["bpftool"]).is_none() || tool(&["nsenter"]).is_none()
    {
        return;
    }
    let Some(mut pods) = Pods::new("x", 2) else {
        return;
    };
    let before_programs = ours("prog");
    let before_maps = ours("map");
    if pods
        .accelerate(B, &["--proxy-uid", PROXY_UID, "--inbound-port", "15006"])
        .is_none()
        || pods.accelerate(A, &["--proxy-uid", PROXY_UID]).is_none()
    {
        return;
    }
    let pki = Pki::new("sidecar-accelerated");
    pods.start_apps(B, &["http:8080", "http:8081", "banner:2525"]);
    let (b_config, a_config) = two_pod_configs(&pki, A_ID, B_ADMIN, A_ADMIN);
    pods.start_sidecar(B, &b_config, B_ADMIN);
    pods.start_sidecar(A, &a_config, A_ADMIN);
    for (i, admin) in [(A, A_ADMIN), (B, B_ADMIN)] {
        let text = metrics(&pods, i, admin);
        assert!(
            text.contains("\nringmesh_accelerated 1\n"),
            "the sidecar of {} does not find its connections shortcut",
            pods.ns[i]
        );
        // ... while its own sends and receives go through io_uring.
        assert!(text.contains("\nringmesh_io_uring 1\n"), "{text}");
    }
    // The pins are root's alone: the directories 0700, the pins 0600.
    let mut pin_dirs = Vec::new();
    for i in [A, B] {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(pods.cgroups[i].as_ref().expect("cgroup"))
            .expect("cgroup")
            .ino();
        let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/ringmesh/cgroup-{id}"));
        for d in [dir.parent().expect("root"), dir.as_path()] {
            let meta = std::fs::metadata(d).expect("pin directory");
            assert_eq!(meta.mode() & 0o777, 0o700, "{}", d.display());
            assert_eq!(meta.uid(), 0);
        }
        for pin in std::fs::read_dir(&dir).expect("pins").flatten() {
            let mode = pin.metadata().expect("pin").mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{}", pin.path().display());
        }
        pin_dirs.push(dir);
    }
    let lo_a = pki.dir.join("lo-a.pcap");
    let lo_b = pki.dir.join("lo-b.pcap");
    pods.capture_on(A, "lo", "tcp", &lo_a);
    pods.capture_on(B, "lo", "tcp", &lo_b);

    // A plain request, with the caller's identity checked by B's sidecar.
    assert_eq!(
        pods.get(A, &["http://10.77.0.2:8080/hop-marker-5e1d"])
            .trim(),
        format!("port=8080 xff=10.77.0.1, 10.77.0.1 id={A_ID}")
    );
    // Over IPv6 (the application's socket and the sidecar's are IPv6; the pairing goes
    // through connect6): B's address that A's sidecar does not know as a mesh service is
    // passed through, to B's permissive port.
    assert!(
        pods.get(A, &["-g", "http://[fd77::2]:8081/v6-hop-marker-3c9a"])
            .starts_with("port=8081"),
    );
    // 32 MiB down and 32 MiB up: far beyond every socket buffer, so the shortcut's
    // backpressure is crossed many times; the bytes arrive whole and in order.
    let size = 32 << 20;
    let down = pki.dir.join("down.bin");
    let down_s = down.to_str().expect("path");
    pods.get(
        A,
        &["-o", down_s, &format!("http://10.77.0.2:8080/bytes/{size}")],
    );
    let body = std::fs::read(&down).expect("downloaded");
    assert!(body == pattern(size), "the download arrived changed");
    let sum = std::process::Command::new("sha256sum")
        .arg(&down)
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let up = pods.get(
        A,
        &[
            "--data-binary",
            &format!("@{down_s}"),
            "http://10.77.0.2:8080/upload",
        ],
    );
    assert_eq!(up.trim(), format!("sha256={sum} len={size}"));
    // Pipelining: three requests in one write, three answers in order.
    let pipelined = python(
        &pods,
        A,
        "import socket\n\
         s = socket.create_connection(('10.77.0.2', 8080), timeout=5)\n\
         s.sendall(b''.join(b'GET /p%d HTTP/1.1\\r\\nhost: b\\r\\n\\r\\n' % i for i in range(3)))\n\
         got = b''\n\
         while got.count(b'port=8080') < 3:\n    \
             chunk = s.recv(65536)\n    \
             if not chunk: break\n    \
             got += chunk\n\
         print(got.count(b'HTTP/1.1 200'))\n",
    );
    assert_eq!(pipelined, "3");
    // HTTP/2 with prior knowledge, from the application.
    assert!(
        pods.get(A, &["--http2-prior-knowledge", "http://10.77.0.2:8080/h2"])
            .starts_with("port=8080"),
    );
    // Half-close through an opaque stream: the server's banner, our line echoed, then the
    // end of the stream once we stopped sending.
    let half = python(
        &pods,
        A,
        "import socket\n\
         s = socket.create_connection(('10.77.0.2', 2525), timeout=5)\n\
         f = s.makefile('rb')\n\
         first = f.readline()\n\
         s.sendall(b'hello\\n'); s.shutdown(socket.SHUT_WR)\n\
         rest = f.read()\n\
         print(first.decode().strip(), '|', rest.decode().strip(), '| eof')\n",
    );
    assert_eq!(half, "220 banner 2525 | hello | eof");
    // A reset in the middle of a request: the sidecar lets go of the connection, and the
    // next request is served.
    python(
        &pods,
        A,
        "import socket, struct\n\
         s = socket.create_connection(('10.77.0.2', 8080), timeout=5)\n\
         s.sendall(b'GET /half HTTP/1.1\\r\\nhost: b\\r\\n')\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         s.close()\n",
    );
    assert!(eventually(Duration::from_secs(5), || pods.metric(
        A,
        A_ADMIN,
        "ringmesh_connections_active{listener=\"outbound\"}"
    ) == 0.0));
    assert!(
        pods.get(A, &["http://10.77.0.2:8080/after-reset"])
            .starts_with("port=8080")
    );

    // A loopback request that is not shortcut (root calling the admin port) shows the
    // captures see payload; no payload of the shortcut hops was on either loopback.
    pods.get(
        A,
        &[&format!("http://127.0.0.1:{A_ADMIN}/ready?lo-marker-a")],
    );
    pods.get(
        B,
        &[&format!("http://127.0.0.1:{B_ADMIN}/ready?lo-marker-b")],
    );
    let seen = |file: &std::path::Path, marker: &[u8]| {
        let bytes = std::fs::read(file).unwrap_or_default();
        bytes.windows(marker.len()).any(|w| w == marker)
    };
    assert!(
        eventually(Duration::from_secs(5), || seen(&lo_a, b"lo-marker-a")
            && seen(&lo_b, b"lo-marker-b")),
        "the loopback captures saw nothing"
    );
    for (file, pod) in [(&lo_a, "A"), (&lo_b, "B")] {
        assert!(
            !seen(file, b"hop-marker-5e1d"),
            "the request crossed pod {pod}'s loopback through TCP"
        );
        assert!(
            !seen(file, b"v6-hop-marker-3c9a"),
            "the IPv6 request crossed pod {pod}'s loopback through TCP"
        );
        assert!(
            !seen(file, b"220 banner"),
            "the opaque stream crossed pod {pod}'s loopback through TCP"
        );
    }

    // `--remove` detaches: new connections go through TCP again (the capture sees them),
    // while connections already shortcut (a sidecar's pooled one to its application) keep
    // working, nothing of theirs lost. Their programs and maps go when the last one closes:
    // once the pods stop, no program or map of ours is left.
    let programs = ours("prog");
    let maps = ours("map");
    assert!(programs.len() >= before_programs.len() + 8, "{programs:?}");
    for i in [A, B] {
        let cgroup = pods.cgroups[i].clone().expect("cgroup");
        let out = pods
            .nsenter(i)
            .args(["init", "--remove", "--cgroup"])
            .arg(&cgroup)
            .output()
            .expect("init --remove");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("kernel shortcut removed"));
    }
    // `--remove` took the rules too; put them back without the shortcut.
    pods.init(B, &["--proxy-uid", PROXY_UID, "--inbound-port", "15006"]);
    pods.init(A, &["--proxy-uid", PROXY_UID]);
    assert_eq!(
        pods.get(A, &["http://10.77.0.2:8080/after-remove-marker"])
            .trim(),
        format!("port=8080 xff=10.77.0.1, 10.77.0.1 id={A_ID}")
    );
    assert!(
        eventually(Duration::from_secs(5), || seen(
            &lo_a,
            b"after-remove-marker"
        )),
        "a connection made after --remove was still shortcut"
    );
    // The sidecars find out on their own, within the probe's period.
    for (i, admin) in [(A, A_ADMIN), (B, B_ADMIN)] {
        assert!(
            eventually(Duration::from_secs(15), || metrics(&pods, i, admin)
                .contains("\nringmesh_accelerated 0\n")),
            "the sidecar of {} still reports the shortcut",
            pods.ns[i]
        );
    }
    pods.stop_all();
    assert!(
        eventually(Duration::from_secs(10), || {
            let now_p = ours("prog");
            let now_m = ours("map");
            programs
                .iter()
                .filter(|p| !before_programs.contains(p))
                .all(|p| !now_p.contains(p))
                && maps
                    .iter()
                    .filter(|m| !before_maps.contains(m))
                    .all(|m| !now_m.contains(m))
        }),
        "programs or maps left after --remove: {:?} {:?}",
        ours("prog"),
        ours("map")
    );
    for dir in &pin_dirs {
        assert!(!dir.exists(), "{} left after --remove", dir.display());
    }
}

#[test]
fn where_the_shortcut_cannot_be_attached_the_sidecar_works_and_says_so() {
    if tool(&["nsenter"]).is_none() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        ringmesh_tests::missing_tool("a cgroup v2 hierarchy");
        return;
    };
    let Some(mut pods) = Pods::new("y", 2) else {
        return;
    };
    // The root cgroup holds every process of the host: refused, the rules installed anyway.
    let out = pods
        .nsenter(1)
        .args(["init", "--proxy-uid", PROXY_UID, "--accelerate", "--cgroup"])
        .arg(&root)
        .output()
        .expect("init");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("root cgroup") && said.contains("works without it"),
        "{said}"
    );
    let rules = pods.exec(1, &["nft", "list", "table", "inet", "ringmesh"]);
    assert!(rules.status.success());
    // Under `ip netns exec` no cgroup v2 hierarchy is mounted: `init` says what to do.
    let bin = ringmesh_tests::binary();
    let out = pods.exec(
        1,
        &[
            bin.to_str().expect("path"),
            "init",
            "--proxy-uid",
            PROXY_UID,
            "--accelerate",
            "--cgroup",
            root.to_str().expect("path"),
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("nsenter --net="), "{said}");
    // The cgroup is named, never guessed: without it `init` refuses and changes nothing.
    pods.exec(1, &["nft", "delete", "table", "inet", "ringmesh"]);
    let out = pods
        .nsenter(1)
        .args(["init", "--proxy-uid", PROXY_UID, "--accelerate"])
        .output()
        .expect("init");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cgroup"));
    assert!(
        !pods
            .exec(1, &["nft", "list", "table", "inet", "ringmesh"])
            .status
            .success()
    );
    // An attack: a local user who could write to the BPF filesystem plants the workload's pin
    // directory as a link to files of their choice. `init` refuses to attach through it or to
    // remove what it points to.
    let victim = root
        .join("ringmesh-tests")
        .join(format!("{}-planted", pods.ns[1]));
    std::fs::create_dir_all(&victim).expect("cgroup");
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&victim).expect("cgroup"));
    let target = std::env::temp_dir().join(format!("ringmesh-planted-{id}"));
    std::fs::create_dir_all(&target).expect("target");
    std::fs::write(target.join("sockops"), b"precious").expect("file");
    // As `init` would, taking its turn: the BPF filesystem, root's alone, if none is mounted.
    let out = std::process::Command::new("flock")
        .args([
            "/run/ringmesh-accelerate.lock",
            "sh",
            "-c",
            "grep -q ' /sys/fs/bpf .* - bpf ' /proc/self/mountinfo || mount -t bpf -o mode=0700 bpf /sys/fs/bpf",
        ])
        .output()
        .expect("flock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_root = std::path::Path::new("/sys/fs/bpf/ringmesh");
    if !pin_root.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(pin_root)
            .expect("pin root");
    }
    let planted = pin_root.join(format!("cgroup-{id}"));
    std::os::unix::fs::symlink(&target, &planted).expect("plant");
    for args in [&["--accelerate"][..], &["--remove"][..]] {
        let out = pods
            .nsenter(1)
            .args(["init", "--proxy-uid", PROXY_UID])
            .args(args)
            .arg("--cgroup")
            .arg(&victim)
            .output()
            .expect("init");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("refusing"), "{args:?}: {said}");
    }
    assert_eq!(
        std::fs::read(target.join("sockops")).expect("file"),
        b"precious"
    );
    let _ = std::fs::remove_file(&planted);
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_dir(&victim);
    // The sidecar serves without the shortcut and says so in `ringmesh_accelerated`.
    pods.start_apps(0, &["http:8080"]);
    pods.start_sidecar(
        1,
        &format!(
            "admin: 127.0.0.1:{A_ADMIN}\n\
             listeners:\n  - {{ name: outbound, bind: 127.0.0.1:15001, outbound: {{}}, routes: [] }}\n\
             clusters: []\n"
        ),
        A_ADMIN,
    );
    assert!(
        pods.get(1, &["http://10.77.0.2:8080/"])
            .starts_with("port=8080")
    );
    assert!(metrics(&pods, 1, A_ADMIN).contains("\nringmesh_accelerated 0\n"));
    assert!(
        !std::path::Path::new("/sys/fs/bpf/ringmesh")
            .read_dir()
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e
                .file_name()
                .to_string_lossy()
                .ends_with(&format!(
                    "-{}",
                    root.metadata()
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                        .unwrap_or(0)
                ))))),
        "something was pinned for the root cgroup"
    );
}

#[test]
fn init_run_again_or_twice_at_once_attaches_once() {
    if tool(&["nsenter"]).is_none() || tool(&["bpftool"]).is_none() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        ringmesh_tests::missing_tool("a cgroup v2 hierarchy");
        return;
    };
    let Some(pods) = Pods::new("z", 1) else {
        return;
    };
    let cgroup = root
        .join("ringmesh-tests")
        .join(format!("{}-twice", pods.ns[0]));
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    let attached = || {
        let out = std::process::Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&cgroup)
            .output()
            .expect("bpftool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("ringmesh_"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let init = || {
        pods.nsenter(0)
            .args(["init", "--proxy-uid", PROXY_UID, "--accelerate", "--cgroup"])
            .arg(&cgroup)
            .spawn()
            .expect("init")
    };
    // Two at once: one attaches; the other finds it attached, or being attached, and stops
    // without undoing it.
    let (a, b) = (init(), init());
    let (a, b) = (
        a.wait_with_output().expect("init"),
        b.wait_with_output().expect("init"),
    );
    assert!(a.status.success() && b.status.success());
    let programs = attached();
    assert_eq!(programs.len(), 3, "{programs:?}");
    // Again, later: left as it is (the same programs, so open connections keep their pairing).
    let again = pods
        .nsenter(0)
        .args(["init", "--proxy-uid", PROXY_UID, "--accelerate", "--cgroup"])
        .arg(&cgroup)
        .output()
        .expect("init");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already attached"));
    assert_eq!(attached(), programs);
    let removed = pods
        .nsenter(0)
        .args(["init", "--remove", "--cgroup"])
        .arg(&cgroup)
        .output()
        .expect("init --remove");
    assert!(removed.status.success());
    assert!(attached().is_empty());
    let _ = std::fs::remove_dir(&cgroup);
}
