//! Pods for the sidecar tests: network namespaces the test creates, joined by veth pairs with
//! private addresses that exist only inside them, each running unmodified applications
//! (tests/netns/apps.py, curl) and, where asked, a ringmesh sidecar as its own user. Needs
//! root, `ip`, `nft`, `setpriv`, `python3` and `curl` (`bash tests/run` installs them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{binary, eventually, metric_value, missing_tool, temp_config, tool};

/// The user sidecars run as; its own connections are not redirected.
pub const PROXY_UID: &str = "1337";

/// Namespaces `<id>a`, `<id>b`, ... and what runs in them; all removed on drop.
pub struct Pods {
    /// Namespace names, by position.
    pub ns: Vec<String>,
    /// The cgroup (v2) each pod's processes run in, for pods made with [`Pods::accelerate`].
    pub cgroups: Vec<Option<PathBuf>>,
    children: Vec<Child>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop_all();
        for (i, cgroup) in self.cgroups.iter().enumerate() {
            if let Some(cgroup) = cgroup {
                let _ = self
                    .nsenter(i)
                    .args(["init", "--remove", "--cgroup"])
                    .arg(cgroup)
                    .output();
                let _ = std::fs::remove_dir(cgroup);
            }
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The sidecar configs of two pods joined as [`Pods::new`] joins namespaces 0 (B, the server)
/// and 1 (A, the client), mTLS between them with certificates of `pki` (A's with the identity
/// `a_id`): B's inbound listener on 15006 takes its ports 8080 (strict, cluster `app`), 8081
/// (permissive) and 2525 (opaque, a server that speaks first) to its applications on loopback;
/// A's outbound listener on port 15001 knows B's 8080 (HTTP/2 between the sidecars) and 2525.
/// Both listen on `[::]`, dual-stack, as the control plane's sidecars do. Returns (B's, A's), their admin APIs on `127.0.0.1:b_admin` and `:a_admin`.
pub fn two_pod_configs(
    pki: &crate::tls::Pki,
    a_id: &str,
    b_admin: u16,
    a_admin: u16,
) -> (String, String) {
    let b_cert = pki.leaf("b", &["b.mesh"], false);
    let a_cert = pki.client_leaf("a", a_id);
    let ca = pki.ca_file();
    let b_config = format!(
        r#"
admin: 127.0.0.1:{b_admin}
listeners:
  - name: inbound
    bind: "[::]:15006"
    tls: {{ certs: [ {{ cert: {}, key: {} }} ], client_ca: {} }}
    inbound:
      ports:
        - {{ port: 8080, cluster: app }}
        - {{ port: 8081, cluster: app-metrics, mtls: permissive }}
        - {{ port: 2525, cluster: smtp, opaque: true }}
    routes: []
clusters:
  - {{ name: app, endpoints: [ {{ addr: "127.0.0.1:8080" }} ] }}
  - {{ name: app-metrics, endpoints: [ {{ addr: "127.0.0.1:8081" }} ] }}
  - {{ name: smtp, endpoints: [ {{ addr: "127.0.0.1:2525" }} ] }}
"#,
        b_cert.cert.display(),
        b_cert.key.display(),
        ca.display()
    );
    let mesh_tls = format!(
        "{{ sni: b.mesh, ca: {}, cert: {}, key: {} }}",
        ca.display(),
        a_cert.cert.display(),
        a_cert.key.display()
    );
    let a_config = format!(
        r#"
admin: 127.0.0.1:{a_admin}
listeners:
  - name: outbound
    bind: "[::]:15001"
    outbound: {{ detect_timeout: 200ms }}
    routes: []
clusters:
  - {{ name: b, protocol: mesh, tls: {mesh_tls}, endpoints: [ {{ addr: "10.77.0.2:8080" }} ] }}
  - {{ name: b-smtp, tls: {mesh_tls}, endpoints: [ {{ addr: "10.77.0.2:2525" }} ] }}
"#
    );
    (b_config, a_config)
}

/// Where the cgroup v2 hierarchy is mounted, if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Runs `cmd`, failing the test when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Pods {
    /// `count` namespaces: namespace 0 (the hub) is joined to each namespace `i ≥ 1` by a veth
    /// pair on `10.77.{i-1}.0/24` and `fd77:{i-1}::/64`, the hub being host `.2` (`::2`) and
    /// namespace `i` host `.1` (`::1`) of that link, and its IPv4 default route. `None`: the test cannot run here and
    /// `RINGMESH_SKIP_MISSING_TOOLS=1` lets it skip.
    pub fn new(tag: &str, count: usize) -> Option<Pods> {
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
            ns: (0..count)
                .map(|i| format!("rm{id}{tag}{}", (b'a' + i as u8) as char))
                .collect(),
            cgroups: vec![None; count],
            children: Vec::new(),
        };
        for ns in &pods.ns {
            run(Command::new("ip").args(["netns", "add", ns]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        for link in 1..count {
            let dev = format!("veth{link}");
            run(Command::new("ip").args([
                "-n",
                &pods.ns[0],
                "link",
                "add",
                &dev,
                "type",
                "veth",
                "peer",
                "name",
                "veth0",
                "netns",
                &pods.ns[link],
            ]));
            for (ns, dev, v4, v6) in [
                (&pods.ns[0], dev.as_str(), pods.hub(link), pods.hub6(link)),
                (&pods.ns[link], "veth0", pods.spoke(link), pods.spoke6(link)),
            ] {
                run(Command::new("ip").args([
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v4}/24"),
                    "dev",
                    dev,
                ]));
                run(Command::new("ip").args([
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]));
                run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            }
            // As a pod's default route: addresses outside the link (a service's virtual
            // address) are reachable, to be redirected before they leave.
            let hub = pods.hub(link);
            run(Command::new("ip").args([
                "-n",
                &pods.ns[link],
                "route",
                "add",
                "default",
                "via",
                &hub,
            ]));
        }
        Some(pods)
    }

    /// Namespace 0's IPv4 address on its link to namespace `link`.
    pub fn hub(&self, link: usize) -> String {
        format!("10.77.{}.2", link - 1)
    }

    /// Namespace `link`'s IPv4 address.
    pub fn spoke(&self, link: usize) -> String {
        format!("10.77.{}.1", link - 1)
    }

    /// Namespace 0's IPv6 address on its link to namespace `link`.
    pub fn hub6(&self, link: usize) -> String {
        format!("fd77:{}::2", link - 1)
    }

    /// Namespace `link`'s IPv6 address.
    pub fn spoke6(&self, link: usize) -> String {
        format!("fd77:{}::1", link - 1)
    }

    /// Stops every process started in the pods (applications, sidecars, captures).
    pub fn stop_all(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Puts pod `i` in a cgroup of its own (every process started in it from now on joins
    /// it) and runs `ringmesh init ARGS --accelerate` for it. `None`: no cgroup v2 here.
    pub fn accelerate(&mut self, i: usize, args: &[&str]) -> Option<()> {
        let Some(root) = cgroup2_root() else {
            missing_tool("a cgroup v2 hierarchy");
            return None;
        };
        let cgroup = root.join("ringmesh-tests").join(&self.ns[i]);
        std::fs::create_dir_all(&cgroup).expect("create the pod's cgroup");
        self.cgroups[i] = Some(cgroup.clone());
        let out = self
            .nsenter(i)
            .arg("init")
            .args(args)
            .args(["--accelerate", "--cgroup"])
            .arg(&cgroup)
            .output()
            .expect("spawn");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("kernel shortcut attached"), "{said}");
        Some(())
    }

    /// `ringmesh ...` in namespace `i`'s network namespace only: `ip netns exec` would mount
    /// a /sys of its own, without the cgroup and BPF filesystems.
    pub fn nsenter(&self, i: usize) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns[i]))
            .arg("--")
            .arg(binary());
        cmd
    }

    /// `ip netns exec NS ARGS`, in the pod's cgroup when it has one.
    fn command(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = match &self.cgroups[i] {
            Some(cgroup) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0\" && exec \"$@\"")
                    .arg(cgroup.join("cgroup.procs"))
                    .arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        cmd.args(["netns", "exec", &self.ns[i]]).args(args);
        cmd
    }

    /// Runs `args` in namespace `i`, as root.
    pub fn exec(&self, i: usize, args: &[&str]) -> Output {
        self.command(i, args).output().expect("spawn")
    }

    /// Starts a long-running process in namespace `i`, killed with the pods.
    pub fn spawn(&mut self, i: usize, args: &[&str], stdout: Stdio) -> &mut Child {
        let child = self
            .command(i, args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        self.children.push(child);
        self.children.last_mut().expect("child")
    }

    /// Starts applications (tests/netns/apps.py) in namespace `i`; returns once they listen.
    pub fn start_apps(&mut self, i: usize, specs: &[&str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("netns/apps.py");
        let script = script.to_str().expect("path").to_string();
        let mut args = vec!["python3", script.as_str()];
        args.extend(specs);
        let child = self.spawn(i, &args, Stdio::piped());
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("apps ready");
        assert_eq!(line.trim(), "ready");
    }

    /// Starts a sidecar in namespace `i` as [`PROXY_UID`] on `config`, its admin API on
    /// `127.0.0.1:admin`; returns once it is ready.
    pub fn start_sidecar(&mut self, i: usize, config: &str, admin: u16) {
        let path = temp_config(&self.ns[i], config);
        let path = path.to_str().expect("path").to_string();
        self.start_proxy(i, &[], &["--config", &path], admin);
    }

    /// Starts `ringmesh proxy ARGS` (one worker) in namespace `i` as [`PROXY_UID`], with the
    /// environment variables `env` (`NAME=value`), its admin API on `127.0.0.1:admin`;
    /// returns once it is ready.
    pub fn start_proxy(&mut self, i: usize, env: &[&str], args: &[&str], admin: u16) {
        let bin = binary();
        let mut all = vec!["env"];
        all.extend(env);
        all.extend([
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            bin.to_str().expect("path"),
            "proxy",
            "--workers",
            "1",
            "--log-level",
            "warn",
        ]);
        all.extend(args);
        self.spawn(i, &all, Stdio::null());
        let ready = format!("http://127.0.0.1:{admin}/ready");
        assert!(
            eventually(Duration::from_secs(15), || self
                .curl(i, &[&ready])
                .status
                .success()),
            "the sidecar of {} did not become ready",
            self.ns[i]
        );
    }

    /// `ringmesh init` in namespace `i` with `args`.
    pub fn init(&self, i: usize, args: &[&str]) {
        let bin = binary();
        let mut all = vec![bin.to_str().expect("path"), "init"];
        all.extend(args);
        let out = self.exec(i, &all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `curl` in namespace `i`, each URL in turn on one connection where it can.
    pub fn curl(&self, i: usize, urls: &[&str]) -> Output {
        let mut args = vec!["curl", "-sS", "--fail", "--max-time", "5"];
        args.extend(urls);
        self.exec(i, &args)
    }

    /// The answer bodies of `urls`, fetched in namespace `i`.
    pub fn get(&self, i: usize, urls: &[&str]) -> String {
        let out = self.curl(i, urls);
        assert!(
            out.status.success(),
            "curl {urls:?} in {}: {}",
            self.ns[i],
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A series of the sidecar of namespace `i` (admin on `127.0.0.1:admin`); 0 when absent.
    pub fn metric(&self, i: usize, admin: u16, series: &str) -> f64 {
        let text = self.get(i, &[&format!("http://127.0.0.1:{admin}/metrics")]);
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// From namespace `i`: connects to `host:port`, reads the server's first line, sends
    /// `hello` and reads it back; returns `first | hello`.
    pub fn banner_exchange(&self, i: usize, host: &str, port: u16) -> String {
        let script = format!(
            "import socket\n\
             s = socket.create_connection(('{host}', {port}), timeout=5)\n\
             f = s.makefile('rb')\n\
             first = f.readline().decode().strip()\n\
             s.sendall(b'hello\\n')\n\
             print(first, '|', f.readline().decode().strip())\n"
        );
        let out = self.exec(i, &["python3", "-c", &script]);
        assert!(
            out.status.success(),
            "banner {host}:{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts `tcpdump` on every interface of namespace `i` but loopback (what crosses between
    /// pods), writing TCP packets (whole) to `file` as they come; returns once it captures.
    pub fn capture(&mut self, i: usize, file: &Path) {
        self.capture_on(i, "any", "tcp and not net 127.0.0.0/8", file);
    }

    /// Starts `tcpdump -i IFACE FILTER` in namespace `i`, writing whole packets to `file` as
    /// they come; returns once it captures.
    pub fn capture_on(&mut self, i: usize, iface: &str, filter: &str, file: &Path) {
        let file = file.to_str().expect("path").to_string();
        let child = self.spawn(
            i,
            &["tcpdump", "-i", iface, "-U", "-s", "0", "-w", &file, filter],
            Stdio::null(),
        );
        let mut line = String::new();
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        while err.read_line(&mut line).expect("tcpdump") > 0 && !line.contains("listening on") {
            line.clear();
        }
        assert!(line.contains("listening on"), "tcpdump did not start");
    }
}
