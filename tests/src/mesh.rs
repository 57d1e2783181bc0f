//! The control plane as the tests drive it: over TLS (verified by the CA's pinned key), as an
//! admin with a bearer token, as a node with its certificate, or as a stranger; nodes with
//! identities and bootstrap tokens; proxies fed by it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringmesh_control::mesh::agent::ControlSource;
use ringmesh_control::mesh::ca::sha256_hex;
use ringmesh_control::mesh::client::{Client, ClientError, Trust};
use ringmesh_control::mesh::{ApiTls, ControlOptions, ControlPlane, MeshSource};
use ringmesh_control::{ConfigSource, Proxy, ProxyOptions};
use serde_json::Value;

/// The admin token every test mesh accepts (see [`admin_section`]).
pub const ADMIN_TOKEN: &str = "ringmesh-test-admin-token";

/// `api:` naming the test admin, by the SHA-256 of [`ADMIN_TOKEN`].
pub fn admin_section() -> String {
    format!(
        "api:\n  admins:\n    - {{ name: test-admin, token_sha256: {} }}\n",
        sha256_hex(ADMIN_TOKEN.as_bytes())
    )
}

/// The bootstrap token of test node `node`.
pub fn token_of(node: &str) -> String {
    format!("bootstrap-token-{node}")
}

/// A node of the mesh file, with identity `spiffe://mesh.local/ns/default/sa/NODE` and the
/// token [`token_of`]; `body` is its indented `listeners:`.
pub fn node(name: &str, body: &str) -> String {
    format!(
        "  {name}:\n    identity: {{ ns: default, sa: {name} }}\n    token_sha256: {}\n{body}",
        sha256_hex(token_of(name).as_bytes())
    )
}

/// The options of a control plane on a free loopback port, over TLS, from `yaml` (the test
/// admin added unless it has an `api`).
pub fn options(yaml: &str) -> ControlOptions {
    let text = if yaml.contains("\napi:") || yaml.starts_with("api:") {
        yaml.to_string()
    } else {
        format!("{}{yaml}", admin_section())
    };
    ControlOptions {
        source: MeshSource::Text(text),
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        state_file: None,
        store: None,
        tls: ApiTls::Mesh,
    }
}

/// A control plane from `yaml` (see [`options`]).
pub fn plane(yaml: &str) -> ControlPlane {
    ControlPlane::start(options(yaml)).expect("control plane starts")
}

/// Where a control plane is, the pin of its CA, and the trust bundle learned from it.
#[derive(Debug, Clone)]
pub struct At {
    pub addr: SocketAddr,
    pub pin: String,
    pub learned: Option<Vec<u8>>,
}

/// Who calls.
#[derive(Clone)]
pub struct Who {
    client: Client,
    bearer: Option<String>,
}

impl Who {
    /// The test admin.
    pub fn admin(pin: &str) -> Who {
        Who::bearer(pin, ADMIN_TOKEN)
    }

    /// Anyone with this bearer token.
    pub fn bearer(pin: &str, token: &str) -> Who {
        Who {
            client: Client {
                trust: Trust::Pin(pin.to_string()),
                learned: None,
                identity: None,
            },
            bearer: Some(token.to_string()),
        }
    }

    /// A caller with no credentials (but TLS).
    pub fn anonymous(pin: &str) -> Who {
        Who {
            client: Client {
                trust: Trust::Pin(pin.to_string()),
                learned: None,
                identity: None,
            },
            bearer: None,
        }
    }

    /// A caller presenting this certificate (mTLS).
    pub fn with_certificate(pin: &str, ck: Arc<rustls::sign::CertifiedKey>) -> Who {
        Who {
            client: Client {
                trust: Trust::Pin(pin.to_string()),
                learned: None,
                identity: Some(ck),
            },
            bearer: None,
        }
    }
}

const CALL_WAIT: Duration = Duration::from_secs(40);

impl At {
    pub fn of(cp: &ControlPlane) -> At {
        At {
            addr: cp.addr(),
            pin: cp.ca_pin().to_string(),
            learned: None,
        }
    }

    /// The same pin at another address (a replica, or where nothing listens).
    pub fn with_addr(&self, addr: SocketAddr) -> At {
        At {
            addr,
            ..self.clone()
        }
    }

    /// Trusts the mesh's trust bundle as the control plane gives it now (as a proxy does
    /// after each certificate), besides the pin: what an admin does before a CA rotation ends.
    pub fn learn(&mut self) {
        let bundle = self.get("/v1/ca")["bundle"]
            .as_str()
            .map(|b| b.as_bytes().to_vec());
        self.learned = bundle;
    }

    fn who(&self, mut who: Who) -> Who {
        who.client.learned = self.learned.clone();
        who
    }

    /// A call as the test admin: status and JSON body (`Null` when none).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> (u16, Value) {
        self.call_as(
            &self.who(Who::admin(&self.pin)),
            method,
            path,
            body,
            if_match,
        )
    }

    /// A call as `who`.
    pub fn call_as(
        &self,
        who: &Who,
        method: &str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> (u16, Value) {
        let mut headers = String::new();
        if let Some(t) = &who.bearer {
            headers.push_str(&format!("authorization: Bearer {t}\r\n"));
        }
        if let Some(v) = if_match {
            headers.push_str(&format!("if-match: \"{v}\"\r\n"));
        }
        let body = body.map(Value::to_string);
        let (status, out) = who
            .client
            .request(
                &self.addr.to_string(),
                method,
                path,
                body.as_deref().map(str::as_bytes),
                CALL_WAIT,
                &headers,
            )
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
    }

    /// A request written whole (head and body) by the test, sent over TLS as `who`.
    pub fn raw(&self, who: &Who, request: &str) -> Result<(u16, Value), ClientError> {
        who.client
            .exchange(&self.addr.to_string(), request.as_bytes(), CALL_WAIT)
            .map(|(s, b)| (s, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }

    /// `GET path` as admin; it must answer 200.
    pub fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// `GET path` as admin, as text (metrics).
    pub fn text(&self, path: &str) -> String {
        let headers = format!("authorization: Bearer {ADMIN_TOKEN}\r\n");
        let who = self.who(Who::admin(&self.pin));
        let (_, out) = who
            .client
            .request(
                &self.addr.to_string(),
                "GET",
                path,
                None,
                CALL_WAIT,
                &headers,
            )
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The source of a proxy for node `node`: the planes `at` (their pin), its bootstrap token.
pub fn source(at: &[At], node: &str, cache: Option<PathBuf>) -> ControlSource {
    let urls: Vec<String> = at.iter().map(|a| format!("https://{}", a.addr)).collect();
    let pin = at.first().map(|a| a.pin.clone()).unwrap_or_default();
    let mut s = ControlSource::parse(&urls.join(","), node, cache, Some(Trust::Pin(pin)), false)
        .expect("source");
    s.token = Some(token_of(node));
    s
}

/// A one-worker proxy fed by a control plane.
pub fn fed(source: ControlSource) -> Proxy {
    Proxy::start(ProxyOptions {
        source: ConfigSource::Control(source),
        workers: Some(1),
        admin: Some("127.0.0.1:0".parse().expect("addr")),
        drain_timeout: Duration::from_secs(2),
        ..ProxyOptions::default()
    })
    .expect("proxy starts")
}

/// A certificate of the mesh CA for `node`, got with its bootstrap token (spending it), and
/// its key: what a proxy holds after bootstrapping.
pub fn bootstrap(at: &At, node: &str) -> Result<Arc<rustls::sign::CertifiedKey>, (u16, Value)> {
    let (key, public) = ringmesh_control::mesh::ca::new_key().expect("key");
    let (status, v) = at.call_as(
        &Who::bearer(&at.pin, &token_of(node)),
        "POST",
        &format!("/v1/nodes/{node}/certificate"),
        Some(&serde_json::json!({ "public_key": public })),
        None,
    );
    if status != 200 {
        return Err((status, v));
    }
    let cert = v["cert"].as_str().expect("cert");
    Ok(
        ringmesh_core::tls::certified_key_from_pem(cert.as_bytes(), key.as_bytes())
            .expect("key pair"),
    )
}

/// `ringmesh ctl ARGS` with `env` (`NAME`, `value`) and nothing of the caller's environment.
pub fn ctl(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::binary())
        .arg("ctl")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("ringmesh ctl")
}

/// A command's stdout and stderr, as text.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
