//! The `ringmesh` binary: commands, signals, threads and sockets, and memory under load.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ringmesh_tests::*;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmesh-proc-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("config.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn bound(p: &ProxyProcess, listener: &str) -> std::net::SocketAddr {
    let v: serde_json::Value = serde_json::from_slice(&p.admin("/config").body).unwrap();
    v["bound"][listener].as_str().unwrap().parse().unwrap()
}

#[test]
fn check_prints_every_error_with_its_path() {
    let bad = write_config(
        "check-bad",
        "listeners:\n  - name: a\n    bind: 127.0.0.1:99999\n    routes: [ { match: { path_prefix: / }, cluster: nope, timout: 5s } ]\nclusters: [ { name: c, lb: fast } ]\n",
    );
    let out = Command::new(binary())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "listeners[0].bind: `127.0.0.1:99999` is not an address",
        "listeners[0].routes[0].timout: unknown field `timout` (did you mean `timeout`?)",
        "listeners[0].routes[0].cluster: no cluster named `nope`",
        "clusters[0].lb: `fast` is not one of",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let good = write_config(
        "check-good",
        &simple_config("127.0.0.1:1".parse().unwrap(), ""),
    );
    let out = Command::new(binary())
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(binary()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(binary()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ringmesh check FILE"));
    let missing = Command::new(binary())
        .args(["proxy", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let up = Upstream::http(|_| {
        std::thread::sleep(Duration::from_millis(700));
        Resp::new(200, "done")
    });
    let cfg = write_config("drain", &simple_config(up.addr, ""));
    let mut p = ProxyProcess::start(&cfg, &["--workers", "2", "--drain-timeout", "5s"]);
    let edge = bound(&p, "edge");
    let mut c = Client::connect(edge);
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    p.signal(15);
    let r = c.response(false);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "done"),
        "the request in flight completes"
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_reloads() {
    let a = Upstream::fixed("a");
    let b = Upstream::fixed("b");
    let cfg = write_config("hup", &simple_config(a.addr, ""));
    let p = ProxyProcess::start(&cfg, &["--workers", "1"]);
    let edge = bound(&p, "edge");
    assert_eq!(Client::connect(edge).get("/").text(), "a");
    std::fs::write(&cfg, simple_config(b.addr, "")).unwrap();
    p.signal(1);
    assert!(eventually(Duration::from_secs(5), || Client::connect(edge)
        .get("/")
        .text()
        == "b"));
}

/// Threads named ringmesh-w*, each pinned to one CPU, each with its own listening socket.
#[test]
fn one_pinned_worker_per_core_with_its_own_socket() {
    let up = Upstream::fixed("ok");
    let cfg = write_config("workers", &simple_config(up.addr, ""));
    let p = ProxyProcess::start(&cfg, &["--workers", "2"]);
    let pid = p.child.id();
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        if comm.starts_with("ringmesh-w") {
            workers += 1;
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim();
            assert!(
                !cpus.contains([',', '-']),
                "worker pinned to one CPU, got {cpus}"
            );
        }
    }
    assert_eq!(workers, 2);
    let port = bound(&p, "edge").port();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok()?;
            (local_port == port && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    let mut ours = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let link = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        let link = link.to_string_lossy();
        if inodes.iter().any(|i| link == format!("socket:[{i}]")) {
            ours += 1;
        }
    }
    assert_eq!(ours, 2, "one SO_REUSEPORT listening socket per worker");
}

#[test]
fn idle_keep_alive_connections_hold_no_buffer() {
    let _ = ringmesh_core::sys::raise_fd_limit();
    let up = Upstream::fixed("ok");
    let cfg = write_config("idle", &simple_config(up.addr, ""));
    let p = ProxyProcess::start(&cfg, &["--workers", "1"]);
    let edge = bound(&p, "edge");
    // Warm up pools and allocator with a first batch, then measure a second one.
    let mut conns = Vec::new();
    let open = |n: usize, conns: &mut Vec<TcpStream>| {
        for _ in 0..n {
            let mut s = TcpStream::connect(edge).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let mut buf = [0u8; 256];
            let mut got = 0;
            while !String::from_utf8_lossy(&buf[..got]).ends_with("ok") {
                got += s.read(&mut buf[got..]).unwrap();
            }
            conns.push(s);
        }
    };
    open(200, &mut conns);
    std::thread::sleep(Duration::from_millis(1500));
    let before = p.rss_kib();
    open(2000, &mut conns);
    // Quiet connections give back their wait buffer after a second.
    std::thread::sleep(Duration::from_millis(1500));
    let after = p.rss_kib();
    let per_conn = (after.saturating_sub(before)) * 1024 / 2000;
    eprintln!("{per_conn} bytes of RSS per idle connection");
    // A 16 KiB read buffer held while idle would show as more than 16,000 bytes per connection;
    // the rest is the connection's future (larger in debug builds) and the kernel's share.
    assert!(
        per_conn < 3072,
        "{per_conn} bytes of RSS per idle connection"
    );
    assert_eq!(p.admin("/ready").status, 200);
    drop(conns);
}

/// 1 GiB each way with the proxy's RSS growing by less than 64 MiB.
#[test]
fn gigabyte_bodies_stream_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let up = Upstream::raw(|mut s| {
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        while let Ok(Some(req)) = read_request_streaming(&mut r) {
            if req == "download" {
                let _ = s.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
                );
                let chunk = vec![b'd'; 1 << 20];
                for _ in 0..1024 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
            } else {
                let _ = s.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", req.len()).as_bytes(),
                );
                let _ = s.write_all(req.as_bytes());
            }
        }
    });
    let cfg = write_config("gib", &simple_config(up.addr, ""));
    let p = ProxyProcess::start(&cfg, &["--workers", "1"]);
    let edge = bound(&p, "edge");
    let base = p.rss_kib();
    let mut peak = base;

    let mut c = TcpStream::connect(edge).unwrap();
    c.write_all(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut buf[..1]).unwrap();
        assert!(n > 0);
        head.push(buf[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains(&format!("content-length: {GIB}")));
    let mut got = 0u64;
    while got < GIB {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "download cut at {got}");
        got += n as u64;
        if got % (64 << 20) < n as u64 {
            peak = peak.max(p.rss_kib());
        }
    }

    c.write_all(
        format!("PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'u'; 1 << 20];
    for i in 0..1024 {
        c.write_all(&chunk).unwrap();
        if i % 64 == 0 {
            peak = peak.max(p.rss_kib());
        }
    }
    let mut resp = Vec::new();
    while !String::from_utf8_lossy(&resp).ends_with("uploaded 1073741824") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        resp.extend_from_slice(&buf[..n]);
    }
    peak = peak.max(p.rss_kib());
    let growth_mib = (peak - base) / 1024;
    eprintln!("1 GiB down and 1 GiB up: RSS {base} KiB at start, peak {peak} KiB");
    assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB");
}

/// Reads a request head and streams its body away; returns "download" for a GET, or
/// "uploaded N" after consuming a body of N bytes.
fn read_request_streaming(r: &mut impl std::io::BufRead) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let get = line.starts_with("GET");
    let mut len = 0u64;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    if get {
        return Ok(Some("download".into()));
    }
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = r.read(&mut buf[..left.min(1 << 20) as usize])?;
        if n == 0 {
            return Ok(None);
        }
        left -= n as u64;
    }
    Ok(Some(format!("uploaded {len}")))
}

#[test]
fn the_control_command_serves_its_api_and_refuses_a_bad_mesh_file_by_field() {
    let bad = write_config(
        "mesh-bad",
        "clusters: []\nnodes:\n  n1:\n    listeners: [ { name: e, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: nope } ] } ]\n",
    );
    let out = Command::new(binary())
        .args(["control", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nodes.n1.listeners[0].routes[0].cluster"),
        "{err}"
    );

    // Reachable from other hosts without TLS, or without an admin: it does not start.
    for (args, missing) in [
        (&["--bind", "0.0.0.0:0", "--insecure-plaintext"][..], "TLS"),
        (&["--bind", "0.0.0.0:0"][..], "an admin"),
    ] {
        let open = write_config("mesh-open", "clusters: []\nnodes: {}\nstate_file: off\n");
        let out = Command::new(binary())
            .args(["control", "--config"])
            .arg(&open)
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("reachable from other hosts") && err.contains(missing),
            "{err}"
        );
    }

    let good = write_config(
        "mesh-good",
        &format!(
            "{}clusters: []\nnodes: {{}}\nstate_file: off\n",
            ringmesh_tests::mesh::admin_section()
        ),
    );
    let bind = free_port();
    let mut child = Command::new(binary())
        .args(["control", "--config"])
        .arg(&good)
        .args(["--bind", &bind.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // The log says how proxies can pin the CA.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let pin = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let at = l.find("pin=sha256:")? + "pin=sha256:".len();
            Some(l[at..at + 64].to_string())
        })
        .expect("the pin is logged");
    // The rest of the log is read, so that writing it never fails.
    std::thread::spawn(move || lines.for_each(drop));
    let at = ringmesh_tests::mesh::At {
        addr: bind,
        pin,
        learned: None,
    };
    let nodes = at.get("/v1/nodes");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(nodes["nodes"], serde_json::json!({}), "{nodes}");
}

#[test]
fn a_log_reader_that_goes_away_does_not_stop_the_process() {
    let mesh = write_config(
        "mesh-log-pipe",
        &format!(
            "{}clusters: []\nnodes: {{}}\nstate_file: off\n",
            ringmesh_tests::mesh::admin_section()
        ),
    );
    let bind = free_port();
    let mut child = Command::new(binary())
        .args(["control", "--config"])
        .arg(&mesh)
        .args(["--bind", &bind.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let stderr = child.stderr.take().expect("stderr");
    let pin = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find_map(|l| {
            let at = l.find("pin=sha256:")? + "pin=sha256:".len();
            Some(l[at..at + 64].to_string())
        })
        .expect("the pin is logged");
    // The reader is gone (dropped with its pipe): every line logged from now fails to write.
    let at = ringmesh_tests::mesh::At {
        addr: bind,
        pin,
        learned: None,
    };
    let anonymous = ringmesh_tests::mesh::Who::anonymous(&at.pin);
    for _ in 0..20 {
        // Each refusal logs a line.
        assert_eq!(
            at.call_as(&anonymous, "GET", "/v1/config", None, None).0,
            401
        );
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the process ended"
    );
    assert_eq!(at.get("/v1/nodes")["nodes"], serde_json::json!({}));
    let _ = child.kill();
    let _ = child.wait();
}
