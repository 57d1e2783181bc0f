//! gRPC through ringmesh with a real gRPC client and server (Python's grpcio, run by
//! tests/grpc/grpc_check.py): unary and streaming calls, statuses and trailers passed through,
//! the caller's deadline honoured and passed on, retries on UNAVAILABLE, and the proxy's own
//! answers in gRPC's form. grpcio is required (`bash tests/run` installs it), unless
//! `RINGMESH_SKIP_MISSING_TOOLS=1` says to skip what cannot run here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringmesh_tests::*;
use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/grpc_check.py")
}

fn have_grpcio() -> bool {
    // Run from an empty directory: a folder named like the module beside the tests would
    // otherwise be imported as one, and grpcio look installed when it is not.
    let ok = Command::new("python3")
        .args(["-c", "import grpc; grpc.insecure_channel"])
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || missing_tool("python3 with grpcio")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_server() -> (Server, u16) {
    let port_file = std::env::temp_dir().join(format!("ringmesh-grpc-{}", std::process::id()));
    let _ = std::fs::remove_file(&port_file);
    let child = Command::new("python3")
        .current_dir(std::env::temp_dir())
        .arg(script())
        .arg("server")
        .arg(&port_file)
        .spawn()
        .expect("python3");
    let server = Server(child);
    let mut port = None;
    assert!(eventually(Duration::from_secs(20), || {
        port = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        port.is_some()
    }));
    let _ = std::fs::remove_file(&port_file);
    (server, port.unwrap_or_default())
}

#[test]
fn grpc_calls_go_through_with_statuses_deadlines_and_retries() {
    if !have_grpcio() {
        return;
    }
    let (_server, port) = grpc_server();
    let p = TestProxy::start(
        &format!(
            "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - match: {{ path: /ringmesh.test.Echo/Slow }}
        cluster: grpc
        timeout: 300ms
      - match: {{ path_prefix: /ringmesh.test.Echo/ }}
        cluster: grpc
        retry: {{ attempts: 2, on: [unavailable], budget: 100% }}
clusters:
  - {{ name: grpc, protocol: http2, endpoints: [ {{ addr: 127.0.0.1:{port} }} ] }}
"
        ),
        1,
    );
    let out = Command::new("python3")
        .current_dir(std::env::temp_dir())
        .arg(script())
        .arg("client")
        .arg(p.edge().to_string())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let get = |name: &str| -> &Value {
        results
            .iter()
            .find(|r| r["call"] == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    assert_eq!(get("Unary")["value"], "echo:hello");
    assert_eq!(
        get("Stream")["value"],
        serde_json::json!(["part-0", "part-1", "part-2", "part-3", "part-4"])
    );
    assert_eq!(get("Collect")["value"], "a+b+c");
    // A status and its message come back as the server set them (trailers).
    assert_eq!(get("Fail")["code"], "NOT_FOUND");
    assert_eq!(get("Fail")["details"], "missing thing");
    // The caller's 5 s deadline reached the server (grpc-timeout rewritten from what was
    // left; gRPC's server counts a few ms of slack on top).
    let left: f64 = get("Remaining")["value"].as_str().unwrap().parse().unwrap();
    assert!(left > 3.0 && left <= 5.1, "{left}");
    // The route's 300 ms timeout cut the 2 s call: the proxy's answer is a gRPC status.
    assert_eq!(get("Slow")["code"], "DEADLINE_EXCEEDED");
    assert_eq!(get("Slow")["details"], "timeout");
    // Every other Flaky call is UNAVAILABLE: retried, all four succeed.
    assert_eq!(get("Flaky")["code"], "OK");
    // No route: the proxy answers UNIMPLEMENTED.
    assert_eq!(get("Missing")["code"], "UNIMPLEMENTED");
    let counts: Value = serde_json::from_str(get("Counts")["value"].as_str().unwrap()).unwrap();
    assert_eq!(counts["Flaky"], 8, "4 calls, each tried twice");
    assert_eq!(
        counts["Slow"], 1,
        "a call cut by its deadline is not retried"
    );
}
