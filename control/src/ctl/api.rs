//! The control API as `ringmesh ctl` calls it: where, trusted how, with which token.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::mesh::client::{Client, Trust};

/// The settings, from flags and the environment.
#[derive(Debug, Default)]
pub(super) struct Settings {
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    pub ca_sha256: Option<String>,
}

impl Settings {
    /// What the environment says; flags override it.
    pub fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Settings {
            server: var("RINGMESH_SERVER"),
            token_file: var("RINGMESH_TOKEN_FILE").map(PathBuf::from),
            token: var("RINGMESH_TOKEN"),
            ca: var("RINGMESH_CA").map(PathBuf::from),
            ca_sha256: var("RINGMESH_CA_SHA256"),
        }
    }
}

/// A connection's worth of settings, checked: each call opens its own connection.
pub struct Api {
    client: Client,
    addr: String,
    authorization: String,
}

/// A call's answer.
pub(super) struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Api {
    /// Checks the settings (nothing is sent): a server, a way to verify it, a token.
    pub(super) fn new(s: &Settings) -> Result<Api, String> {
        let server = s
            .server
            .as_deref()
            .ok_or("no control plane: --server HOST:PORT or RINGMESH_SERVER")?;
        let addr = server
            .strip_prefix("https://")
            .unwrap_or(server)
            .trim_end_matches('/')
            .to_string();
        if addr.starts_with("http://") {
            return Err(
                "--server: the control API is served over TLS (https://), a token is never sent in the clear"
                    .into(),
            );
        }
        let trust = match (&s.ca, &s.ca_sha256) {
            (Some(_), Some(_)) => return Err("--ca and --ca-sha256: give one".into()),
            (Some(file), None) => Trust::ca_file(file).map_err(|e| e.to_string())?,
            (None, Some(pin)) => Trust::pin(pin).map_err(|e| e.to_string())?,
            (None, None) => {
                return Err(
                    "the control plane cannot be verified: --ca FILE or --ca-sha256 HEX (its CA key's pin, logged by `ringmesh control`)"
                        .into(),
                );
            }
        };
        let token = match (&s.token_file, &s.token) {
            (Some(file), _) => std::fs::read_to_string(file)
                .map_err(|e| format!("--token-file {}: {e}", file.display()))?,
            (None, Some(t)) => t.clone(),
            (None, None) => {
                return Err(
                    "no admin token: --token-file FILE, RINGMESH_TOKEN_FILE or RINGMESH_TOKEN"
                        .into(),
                );
            }
        };
        let token = token.trim();
        if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("the admin token is empty or has characters a header cannot carry".into());
        }
        Ok(Api {
            client: Client {
                trust,
                learned: None,
                identity: None,
            },
            addr,
            authorization: format!("authorization: Bearer {token}\r\n"),
        })
    }

    /// `METHOD PATH` with the token; `if_match`: the version the change is made against.
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<Answer, String> {
        let mut headers = self.authorization.clone();
        if let Some(v) = if_match {
            headers.push_str(&format!("if-match: \"{v}\"\r\n"));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, raw) = self
            .client
            .request(
                &self.addr,
                method,
                path,
                body.as_deref(),
                Duration::from_secs(10),
                &headers,
            )
            .map_err(|e| format!("{}: {e}", self.addr))?;
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).trim().to_string()))
        };
        Ok(Answer { status, body })
    }

    /// A GET that must answer 200; its JSON.
    pub(super) fn get(&self, path: &str) -> Result<Value, String> {
        let a = self.call("GET", path, None, None)?;
        if a.status != 200 {
            return Err(refusal(path, &a));
        }
        Ok(a.body)
    }

    /// `GET /ready`, without the token: whether the control plane answers at all.
    pub(super) fn ready(&self) -> Result<u16, String> {
        self.client
            .request(
                &self.addr,
                "GET",
                "/ready",
                None,
                Duration::from_secs(5),
                "",
            )
            .map(|(status, _)| status)
            .map_err(|e| format!("{}: {e}", self.addr))
    }

    /// Where the control plane is.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }
}

/// What a refused call says: the status, and the API's `kind` and `error` when it gave them.
pub(super) fn refusal(path: &str, a: &Answer) -> String {
    let kind = a.body["kind"].as_str().unwrap_or("");
    let error = a.body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| a.body.to_string());
    format!("{path}: {} {kind}: {error}", a.status)
}
