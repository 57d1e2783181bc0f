//! A drop-in sidecar, in network namespaces the test creates: `ringmesh init` redirects an
//! unmodified application's TCP to its sidecar, which sends each connection where the
//! application asked: mesh services balanced request by request, a server that speaks first
//! as opaque TCP, anything else passed through (or refused). Needs root, `ip`, `nft`,
//! `setpriv`, `python3` and `curl` (`bash tests/run` installs them).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ringmesh_tests::{binary, eventually, metric_value, missing_tool, temp_config, tool};

/// The user the sidecar runs as; its own connections are not redirected.
const PROXY_UID: &str = "1337";

/// Two namespaces joined by a veth pair: `a` is the pod with the application and its sidecar,
/// `b` the rest of the network (the services' endpoints and a host outside the mesh).
struct Pods {
    a: String,
    b: String,
    children: Vec<Child>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Pods {
    /// `None`: the test cannot run here and `RINGMESH_SKIP_MISSING_TOOLS=1` lets it skip.
    fn new(tag: &str) -> Option<Pods> {
        for t in ["ip", "nft", "setpriv", "python3", "curl"] {
            tool(&[t])?;
        }
        if !Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
            && !missing_tool("root (network namespaces and nftables)")
        {
            return None;
        }
        let id = std::process::id();
        let pods = Pods {
            a: format!("rm{id}{tag}a"),
            b: format!("rm{id}{tag}b"),
            children: Vec::new(),
        };
        for ns in [&pods.a, &pods.b] {
            run(Command::new("ip").args(["netns", "add", ns]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        run(Command::new("ip").args([
            "-n", &pods.a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0",
            "netns", &pods.b,
        ]));
        for (ns, host) in [(&pods.a, 1), (&pods.b, 2)] {
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.77.0.{host}/24"),
                "dev",
                "veth0",
            ]));
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd77::{host}/64"),
                "dev",
                "veth0",
                "nodad",
            ]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "veth0", "up"]));
        }
        Some(pods)
    }

    /// Runs `args` in pod `a`, as root (the application's user).
    fn in_a(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.a])
            .args(args)
            .output()
            .expect("spawn")
    }

    /// Starts the applications of `b` (tests/netns/apps.py) and waits until they listen.
    fn start_apps(&mut self, specs: &[&str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("netns/apps.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.b, "python3"])
            .arg(script)
            .args(specs)
            .stdout(Stdio::piped())
            .spawn()
            .expect("apps");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("apps ready");
        assert_eq!(line.trim(), "ready");
        self.children.push(child);
    }

    /// Starts the sidecar of `a` as its own user, and waits until it is ready.
    fn start_sidecar(&mut self, config: &str) {
        let path = temp_config(&self.a, config);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.a, "setpriv"])
            .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
            .arg(binary())
            .args(["proxy", "--workers", "1", "--log-level", "warn", "--config"])
            .arg(path)
            .spawn()
            .expect("sidecar");
        self.children.push(child);
        assert!(
            eventually(Duration::from_secs(10), || {
                self.curl(&["http://127.0.0.1:9901/ready"]).status.success()
            }),
            "the sidecar did not become ready"
        );
    }

    /// `curl` from the application, each URL in turn on one connection where it can.
    fn curl(&self, urls: &[&str]) -> Output {
        let mut args = vec!["curl", "-sS", "--fail", "--max-time", "5"];
        args.extend(urls);
        self.in_a(&args)
    }

    /// The application's answer bodies, one per URL.
    fn get(&self, urls: &[&str]) -> String {
        let out = self.curl(urls);
        assert!(
            out.status.success(),
            "curl {urls:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sidecar's count of outbound connections of `listener` that went to `destination`.
    fn redirected(&self, listener: &str, destination: &str) -> f64 {
        let text = self.get(&["http://127.0.0.1:9901/metrics"]);
        let series = format!(
            "ringmesh_outbound_connections_total{{listener=\"{listener}\",destination=\"{destination}\"}}"
        );
        metric_value(&text, &series).unwrap_or(0.0)
    }
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

/// Reads the banner of `addr` from the application, sends a line and reads it back.
fn banner_exchange(pods: &Pods, host: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{host}', {port}), timeout=5)\n\
         f = s.makefile('rb')\n\
         first = f.readline().decode().strip()\n\
         s.sendall(b'hello\\n')\n\
         print(first, '|', f.readline().decode().strip())\n"
    );
    let out = pods.in_a(&["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "banner {host}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_unmodified_application_goes_through_its_sidecar() {
    let Some(mut pods) = Pods::new("o") else {
        return;
    };
    pods.start_apps(&[
        "http:8080",
        "http:8081",
        "http:9000",
        "banner:2525",
        "banner:2526",
    ]);
    pods.start_sidecar(SIDECAR);
    let init = pods.in_a(&[
        binary().to_str().expect("path"),
        "init",
        "--proxy-uid",
        PROXY_UID,
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    // A service's address, which nothing listens on: balanced request by request over its
    // endpoints, on one client connection. The proxy's X-Forwarded-For shows it parsed each.
    let vip = ["http://10.77.0.100/"; 20];
    let answers = pods.get(&vip);
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
    assert_eq!(pods.redirected("outbound", "mesh-http"), 1.0);

    // HTTP/2 with prior knowledge (its preface starts like a request line) is served too. One
    // request per connection: curl 7.88 fails a second request on a reused cleartext HTTP/2
    // connection whoever the server is (nginx too).
    for _ in 0..2 {
        let h2 = pods.in_a(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            "http://10.77.0.100/",
        ]);
        let (out, err) = (
            String::from_utf8_lossy(&h2.stdout),
            String::from_utf8_lossy(&h2.stderr),
        );
        assert!(out.contains("xff=10.77.0.1"), "{out} {err}");
    }
    assert_eq!(pods.redirected("outbound", "mesh-http"), 3.0);

    // The application cannot go around the proxy: calling an endpoint directly is
    // intercepted too, and balanced like the service's address.
    let direct = pods.get(&["http://10.77.0.2:8080/"; 20]);
    assert!(direct.contains("port=8081"), "{direct}");
    assert!(
        direct.lines().all(|l| l.contains("xff=10.77.0.1")),
        "{direct}"
    );

    // Outside the mesh: passed through untouched (the server sees no X-Forwarded-For).
    let before = pods.redirected("outbound", "passthrough");
    assert_eq!(
        pods.get(&["http://10.77.0.2:9000/"]).trim(),
        "port=9000 xff=- id=-"
    );
    assert_eq!(pods.redirected("outbound", "passthrough"), before + 1.0);

    // Loopback traffic is left alone: the admin API above was reached without a redirect.
    assert_eq!(pods.redirected("outbound", "passthrough"), before + 1.0);
    assert_eq!(pods.redirected("outbound", "not-redirected"), 0.0);

    // A server that speaks first: the client sends nothing, so after the detection wait the
    // connection is opaque TCP, balanced over the service; a port declared opaque skips it.
    assert_eq!(
        banner_exchange(&pods, "10.77.0.2", 2525),
        "220 banner 2525 | hello"
    );
    assert_eq!(
        banner_exchange(&pods, "10.77.0.2", 2526),
        "220 banner 2526 | hello"
    );
    assert_eq!(pods.redirected("outbound", "mesh-opaque"), 2.0);

    // IPv6: a service is served; outside the mesh is refused on this listener.
    let six = pods.get(&["http://[fd77::2]:8080/"]);
    assert!(six.contains("port=8080") && !six.contains("xff=-"), "{six}");
    assert!(!pods.curl(&["http://[fd77::2]:9000/"]).status.success());
    assert_eq!(pods.redirected("outbound6", "refused"), 1.0);

    // Installing again changes nothing; removing leaves nothing behind, and the service's
    // address is no longer reachable (only the sidecar made it so).
    let again = pods.in_a(&[
        binary().to_str().expect("path"),
        "init",
        "--proxy-uid",
        PROXY_UID,
    ]);
    assert!(again.status.success());
    let rules = pods.in_a(&["nft", "list", "table", "inet", "ringmesh"]);
    assert_eq!(
        String::from_utf8_lossy(&rules.stdout)
            .matches("redirect to :15001")
            .count(),
        1
    );
    let removed = pods.in_a(&[binary().to_str().expect("path"), "init", "--remove"]);
    assert!(removed.status.success());
    assert!(
        !pods
            .in_a(&["nft", "list", "table", "inet", "ringmesh"])
            .status
            .success()
    );
    assert_eq!(pods.in_a(&["nft", "list", "ruleset"]).stdout, b"");
    assert!(!pods.curl(&["http://10.77.0.100/"]).status.success());
    assert_eq!(
        pods.get(&["http://10.77.0.2:8080/"]).trim(),
        "port=8080 xff=- id=-"
    );
}

#[test]
fn a_connection_made_straight_to_the_outbound_port_is_closed() {
    let Some(mut pods) = Pods::new("d") else {
        return;
    };
    pods.start_sidecar(SIDECAR);
    // Not redirected: there is no original destination, and sending it anywhere would loop.
    assert!(!pods.curl(&["http://127.0.0.1:15001/"]).status.success());
    assert_eq!(pods.redirected("outbound", "not-redirected"), 1.0);
}
