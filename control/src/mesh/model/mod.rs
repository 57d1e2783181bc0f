//! The mesh file (docs/control.md) as desired state: checked as strictly as a proxy's config
//! (each node's part is checked by the proxy's own decoder), and rendered into the config each
//! node is served.
//!
//! The desired state is kept as JSON, the form the API reads and edits; [`Mesh::check`] turns a
//! document into a [`Mesh`] or into every error, each naming its field path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::ca::{Authority, CaError, OperatorCa};
use crate::config::Config;
use crate::config::decode::{self, ConfigError, parse_duration};

mod nodes;
mod render;
mod settings;
mod sidecar;
#[cfg(test)]
mod tests;

use nodes::{check_clusters, check_nodes};
pub use render::{Registered, render_cluster, render_node, render_static_clusters};
pub use settings::api_may_not_name_files;
use settings::{check_api, check_ca};

/// Top-level fields of a mesh file.
const FIELDS: &[&str] = &[
    "bind",
    "trust_domain",
    "state_file",
    "dns_interval",
    "clusters",
    "policies",
    "default_policy",
    "nodes",
    "ca",
    "api",
    "tracing",
];

/// Where a proxy keeps the identity the mesh CA issued it; the proxy puts its own directory in
/// place of this prefix.
pub const IDENTITY_DIR: &str = "${identity}";

/// Default API address.
pub const DEFAULT_BIND: &str = "127.0.0.1:9900";

/// An endpoint found by resolving a DNS name.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSource {
    /// `host:port`.
    pub name: String,
    /// The entry's other fields (zone, priority, weight), copied to every address found.
    pub template: Map<String, Value>,
}

/// A cluster of the desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// Its name.
    pub name: String,
    /// The cluster as given, without `endpoints`.
    pub base: Map<String, Value>,
    /// Endpoints listed by address.
    pub statics: Vec<Value>,
    /// Endpoints listed by DNS name.
    pub dns: Vec<DnsSource>,
    /// The identities whose nodes may register instances into it (`servers`).
    pub servers: Vec<String>,
}

/// What one proxy serves.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Its listeners, as JSON text (TLS shorthands expanded).
    pub listeners: String,
    /// The clusters its listeners name (only these are sent to it).
    pub clusters: BTreeSet<String>,
    /// Its SPIFFE ID, when the mesh CA issues it a certificate.
    pub identity: Option<String>,
    /// SHA-256 (hex) of the bootstrap token it proves itself with.
    pub token_sha256: Option<String>,
    /// When that token stops being good (unix seconds), if it expires.
    pub token_expires: Option<i64>,
    /// Clusters of this node only (its sidecar's `inbound-PORT`), as JSON text each.
    pub local_clusters: Vec<String>,
    /// The proxy's top-level `zone`, as JSON text (from its sidecar section).
    pub zone: Option<String>,
}

/// The mesh CA's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CaSpec {
    /// Lifetime of the certificates issued to proxies.
    pub cert_ttl: Duration,
    /// During a CA rotation, the longest the new CA is only trusted (not yet issuing) while
    /// proxies pick up the new trust bundle.
    pub rotation_grace: Duration,
    /// The operator's CA (`cert`, `key`), read and checked: its certificate's SHA-256, and
    /// the files' text. `None`: the control plane makes its own.
    pub operator: Option<OperatorCa>,
}

/// Who may call the control plane's API as an administrator, and the names it answers to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiSpec {
    /// Names the API is reached by: its certificate carries them, and a request whose `Host`
    /// is not one of them (nor the bound address) is refused.
    pub names: Vec<String>,
    /// Administrators.
    pub admins: Vec<Admin>,
}

/// One administrator: by bearer token (its SHA-256) or by client certificate identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub name: String,
    pub token_sha256: Option<String>,
    pub identity: Option<String>,
}

/// A checked mesh file.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The document as given (what the API reads and edits).
    pub doc: Value,
    /// API address.
    pub bind: SocketAddr,
    /// Trust domain of the identities the mesh issues.
    pub trust_domain: String,
    /// Where state is kept across restarts: `None` for the default, `Some(None)` for off.
    pub state_file: Option<Option<PathBuf>>,
    /// How often DNS names are resolved again.
    pub dns_interval: Duration,
    /// Clusters by name, in file order.
    pub clusters: Vec<ClusterSpec>,
    /// `policies`, each with the nodes it is scoped to (`applies_to.nodes`; `None`: every
    /// node) and its JSON text as nodes get it (without `nodes`).
    pub policies: Vec<(Option<Vec<String>>, String)>,
    /// `allow` or `deny`.
    pub default_policy: String,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeSpec>,
    /// The mesh CA's settings.
    pub ca: CaSpec,
    /// The API's administrators and names.
    pub api: ApiSpec,
    /// Span export, as every node gets it (checked by the proxy's decoder with the clusters);
    /// each node's `service_name` defaults to its name.
    pub tracing: Option<Map<String, Value>>,
}

/// The policies, each split into the nodes `applies_to.nodes` names (checked: each must be a
/// node of the mesh) and the policy as those nodes get it. The rest of each policy is the
/// proxy's, checked by its decoder with the clusters.
fn scoped_policies(
    root: &Map<String, Value>,
    nodes: &BTreeMap<String, NodeSpec>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(Option<Vec<String>>, String)> {
    let Some(Value::Array(list)) = root.get("policies") else {
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let (p, names) = without_nodes(p);
            let names = names.map(|v| {
                let path = format!("policies[{i}].applies_to.nodes");
                let names = match v {
                    Value::Array(names) if !names.is_empty() => names,
                    Value::Array(_) => {
                        errors.push(error(path, "an empty list sends the policy to no node"));
                        return Vec::new();
                    }
                    _ => {
                        errors.push(error(path, "expected a list of node names"));
                        return Vec::new();
                    }
                };
                names
                    .iter()
                    .enumerate()
                    .filter_map(|(j, n)| match n.as_str() {
                        Some(n) if nodes.contains_key(n) => Some(n.to_string()),
                        Some(n) => {
                            let msg = format!("no node named `{n}`");
                            errors.push(error(format!("{path}[{j}]"), msg));
                            None
                        }
                        None => {
                            errors.push(error(format!("{path}[{j}]"), "expected a node name"));
                            None
                        }
                    })
                    .collect()
            });
            (names, p.to_string())
        })
        .collect()
}

/// A policy without `applies_to.nodes` (which is the control plane's: a node gets the policy,
/// scoped to itself, or does not), and the nodes it named.
pub(super) fn without_nodes(p: &Value) -> (Value, Option<Value>) {
    let mut p = p.clone();
    let nodes = p
        .get_mut("applies_to")
        .and_then(Value::as_object_mut)
        .and_then(|a| a.remove("nodes"));
    (p, nodes)
}

pub(super) fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        line: None,
        message: message.into(),
    }
}

impl Mesh {
    /// Parses and checks a mesh file.
    pub fn parse(text: &str) -> Result<Mesh, Vec<ConfigError>> {
        let docs = decode::parse(text).map_err(|e| vec![e])?;
        if docs.len() > 1 {
            return Err(vec![error("", "expected one YAML document")]);
        }
        let Some(root) = decode::root(&docs) else {
            return Err(vec![error("", "the mesh file is empty")]);
        };
        Mesh::check(decode::to_json(root, "").map_err(|e| vec![e])?)
    }

    /// Checks a desired-state document; every problem is reported.
    pub fn check(doc: Value) -> Result<Mesh, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let Some(root) = doc.as_object() else {
            return Err(vec![error("", "expected a mapping")]);
        };
        for k in root.keys() {
            if !FIELDS.contains(&k.as_str()) {
                errors.push(error(
                    k.clone(),
                    format!(
                        "unknown field `{k}`; expected one of: {}",
                        FIELDS.join(", ")
                    ),
                ));
            }
        }
        let bind = match root.get("bind") {
            None | Some(Value::Null) => DEFAULT_BIND.parse().ok(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        if bind.is_none() {
            errors.push(error("bind", "expected an address such as 127.0.0.1:9900"));
        }
        let trust_domain = match root.get("trust_domain") {
            None | Some(Value::Null) => Some("mesh.local".to_string()),
            Some(Value::String(s))
                if !s.is_empty()
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)
                    }) =>
            {
                Some(s.clone())
            }
            _ => None,
        };
        if trust_domain.is_none() {
            errors.push(error(
                "trust_domain",
                "expected a trust domain such as mesh.local (lowercase letters, digits, - . _)",
            ));
        }
        let state_file = match root.get("state_file") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(false)) => Some(None),
            Some(Value::String(s)) if s == "off" => Some(None),
            Some(Value::String(s)) if !s.is_empty() => Some(Some(PathBuf::from(s))),
            Some(_) => {
                errors.push(error("state_file", "expected a path, or off"));
                None
            }
        };
        let dns_interval = match root.get("dns_interval") {
            None | Some(Value::Null) => Some(Duration::from_secs(5)),
            Some(Value::String(s)) => parse_duration(s).filter(|d| !d.is_zero()),
            _ => None,
        };
        if dns_interval.is_none() {
            errors.push(error("dns_interval", "expected a duration such as 5s"));
        }
        let td = trust_domain.clone().unwrap_or_default();
        let clusters = check_clusters(root, &td, &mut errors);
        let ca = check_ca(root, &mut errors);
        let api = check_api(root, &mut errors);
        let default_policy = match root.get("default_policy") {
            Some(Value::String(s)) => s.clone(),
            _ => "allow".into(),
        };
        let nodes = check_nodes(root, &clusters, &td, &mut errors);
        let policies = scoped_policies(root, &nodes, &mut errors);
        // The mesh CA issues node certificates only: an admin identity that is also a node's
        // would make that node, and whoever holds its bootstrap token, an admin.
        for (i, a) in api.admins.iter().enumerate() {
            let shared = a.identity.as_deref().and_then(|id| {
                nodes
                    .iter()
                    .find(|(_, n)| n.identity.as_deref() == Some(id))
                    .map(|(name, _)| name)
            });
            if let Some(node) = shared {
                errors.push(error(
                    format!("api.admins[{i}].identity"),
                    format!("node `{node}` has this identity: an admin's must be no node's"),
                ));
            }
        }
        if !errors.is_empty() {
            errors.dedup();
            return Err(errors);
        }
        Ok(Mesh {
            bind: bind.unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default")),
            trust_domain: trust_domain.unwrap_or_default(),
            state_file,
            dns_interval: dns_interval.unwrap_or(Duration::from_secs(5)),
            clusters,
            policies,
            default_policy,
            nodes,
            ca,
            api,
            tracing: root.get("tracing").and_then(Value::as_object).cloned(),
            doc,
        })
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Every DNS name to resolve.
    pub fn dns_names(&self) -> BTreeSet<String> {
        self.clusters
            .iter()
            .flat_map(|c| c.dns.iter().map(|d| d.name.clone()))
            .collect()
    }
}

/// The DNS name an issued certificate carries beside its SPIFFE ID, which TLS clients check as
/// the server's name: `SA.NS.TRUST_DOMAIN`.
pub fn identity_dns_name(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("{sa}.{ns}.{trust_domain}")
}
