//! The mesh file (SPEC.md section 7) as desired state: checked as strictly as a proxy's config
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
    /// `policies` and `default_policy` as JSON text, sent to every node.
    pub policies: String,
    /// `allow` or `deny`.
    pub default_policy: String,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeSpec>,
    /// The mesh CA's settings.
    pub ca: CaSpec,
    /// The API's administrators and names.
    pub api: ApiSpec,
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
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
        let policies = root
            .get("policies")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        let nodes = check_nodes(root, &clusters, &td, &mut errors);
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
            policies: policies.to_string(),
            default_policy,
            nodes,
            ca,
            api,
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

/// Clusters: `endpoints` entries are either `{ addr, ... }`, checked by the proxy's decoder, or
/// `{ dns: "host:port", ... }`, resolved later. The rest of each cluster is the proxy's.
fn check_clusters(
    root: &Map<String, Value>,
    trust_domain: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<ClusterSpec> {
    let list = match root.get("clusters") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(l)) => l,
        Some(_) => {
            errors.push(error("clusters", "expected a list"));
            return Vec::new();
        }
    };
    let mut specs = Vec::with_capacity(list.len());
    // What the proxy's decoder checks: every cluster with only its address endpoints, and the
    // original index of each, to name the right entry in its errors.
    let mut checked = Vec::with_capacity(list.len());
    let mut index_of: Vec<Vec<usize>> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let path = format!("clusters[{i}]");
        let Some(obj) = c.as_object() else {
            errors.push(error(path, "expected a mapping"));
            continue;
        };
        let mut base = obj.clone();
        let endpoints = base.remove("endpoints");
        // Who may register into it: the control plane's business, not the proxies'.
        let servers = match base.remove("servers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .enumerate()
                .filter_map(|(j, id)| match id.as_str() {
                    Some(s) if ringmesh_core::tls::valid_spiffe_id(s) => Some(s.to_string()),
                    _ => {
                        errors.push(error(
                            format!("{path}.servers[{j}]"),
                            "expected a SPIFFE ID such as spiffe://mesh.local/ns/default/sa/web",
                        ));
                        None
                    }
                })
                .collect(),
            Some(_) => {
                errors.push(error(
                    format!("{path}.servers"),
                    "expected a list of SPIFFE IDs: the identities that may register instances",
                ));
                Vec::new()
            }
        };
        if let Some(tls) = base.get_mut("tls") {
            expand_cluster_tls(tls, trust_domain, &format!("{path}.tls"), errors);
        }
        let mut statics = Vec::new();
        let mut dns = Vec::new();
        let mut indices = Vec::new();
        match endpoints {
            None | Some(Value::Null) => {}
            Some(Value::Array(eps)) => {
                for (j, e) in eps.into_iter().enumerate() {
                    match e.as_object().and_then(|o| o.get("dns")) {
                        Some(name) => {
                            let p = format!("{path}.endpoints[{j}]");
                            if let Some(d) = check_dns(&e, name, &p, errors) {
                                dns.push(d);
                            }
                        }
                        None => {
                            statics.push(e);
                            indices.push(j);
                        }
                    }
                }
            }
            Some(other) => statics.push(other),
        }
        let mut full = base.clone();
        full.insert("endpoints".into(), Value::Array(statics.clone()));
        checked.push(Value::Object(full));
        index_of.push(indices);
        specs.push(ClusterSpec {
            name: obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            base,
            statics,
            dns,
            servers,
        });
    }
    let mut probe = Map::new();
    probe.insert("listeners".into(), Value::Array(vec![]));
    probe.insert("clusters".into(), Value::Array(checked));
    for k in ["policies", "default_policy"] {
        if let Some(v) = root.get(k) {
            probe.insert(k.into(), v.clone());
        }
    }
    if let Err(errs) = Config::parse(&Value::Object(probe).to_string()) {
        for mut e in errs {
            e.line = None;
            e.path = renumber_endpoint(&e.path, &index_of);
            errors.push(e);
        }
    }
    specs
}

/// `clusters[i].endpoints[k]...` with `k` counted among address entries, counted among all.
fn renumber_endpoint(path: &str, index_of: &[Vec<usize>]) -> String {
    let parse = || -> Option<String> {
        let rest = path.strip_prefix("clusters[")?;
        let (i, rest) = rest.split_once(']')?;
        let rest = rest.strip_prefix(".endpoints[")?;
        let (k, rest) = rest.split_once(']')?;
        let i: usize = i.parse().ok()?;
        let k: usize = k.parse().ok()?;
        let j = *index_of.get(i)?.get(k)?;
        Some(format!("clusters[{i}].endpoints[{j}]{rest}"))
    };
    parse().unwrap_or_else(|| path.to_string())
}

fn check_dns(
    entry: &Value,
    name: &Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<DnsSource> {
    let mut template = entry.as_object()?.clone();
    template.remove("dns");
    for k in template.keys() {
        if !["zone", "priority", "weight"].contains(&k.as_str()) {
            errors.push(error(
                format!("{path}.{k}"),
                format!("unknown field `{k}`; expected one of: dns, zone, priority, weight"),
            ));
        }
    }
    let ok = name.as_str().and_then(|s| {
        let (host, port) = s.rsplit_once(':')?;
        (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).then(|| s.to_string())
    });
    match ok {
        Some(name) => Some(DnsSource { name, template }),
        None => {
            errors.push(error(
                format!("{path}.dns"),
                "expected a name and port such as web.internal:8080",
            ));
            None
        }
    }
}

/// Nodes: each is checked as a proxy config of its listeners and the mesh's clusters.
fn check_nodes(
    root: &Map<String, Value>,
    clusters: &[ClusterSpec],
    trust_domain: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, NodeSpec> {
    let mut out = BTreeMap::new();
    let nodes = match root.get("nodes") {
        Some(Value::Object(n)) => n,
        None | Some(Value::Null) => {
            errors.push(error(
                "nodes",
                "required: what each proxy serves, by node name",
            ));
            return out;
        }
        Some(_) => {
            errors.push(error("nodes", "expected a mapping of node names"));
            return out;
        }
    };
    // Clusters without endpoints: enough for the checks across fields (names referred to).
    let bare: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let mut b = c.base.clone();
            b.insert("endpoints".into(), Value::Array(vec![]));
            Value::Object(b)
        })
        .collect();
    let bare = Value::Array(bare).to_string();
    for (name, node) in nodes {
        let path = format!("nodes.{name}");
        if name.is_empty() || name.len() > 253 || name.bytes().any(|b| b.is_ascii_control()) {
            errors.push(error(
                path.clone(),
                "node names must be 1 to 253 printable characters",
            ));
        }
        let Some(obj) = node.as_object() else {
            errors.push(error(path, "expected a mapping"));
            continue;
        };
        const NODE_FIELDS: &[&str] = &["listeners", "identity", "token_sha256", "token_expires"];
        for k in obj.keys().filter(|k| !NODE_FIELDS.contains(&k.as_str())) {
            errors.push(error(
                format!("{path}.{k}"),
                format!(
                    "unknown field `{k}`; expected one of: {}",
                    NODE_FIELDS.join(", ")
                ),
            ));
        }
        let identity = match obj.get("identity") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let id = v.as_object().and_then(|m| {
                    let ns = m.get("ns")?.as_str()?;
                    let sa = m.get("sa")?.as_str()?;
                    (m.len() == 2 && dns_label(ns) && dns_label(sa))
                        .then(|| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
                });
                if id.is_none() {
                    errors.push(error(
                        format!("{path}.identity"),
                        "expected { ns, sa }: lowercase letters, digits and -, 1 to 63 each",
                    ));
                }
                id
            }
        };
        let token_sha256 = match obj.get("token_sha256") {
            None | Some(Value::Null) => None,
            Some(Value::String(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(_) => {
                errors.push(error(
                    format!("{path}.token_sha256"),
                    "expected the SHA-256 of the node's bootstrap token, as 64 hex digits",
                ));
                None
            }
        };
        let token_expires = match obj.get("token_expires") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                {
                    Ok(t) => Some(t.unix_timestamp()),
                    Err(_) => {
                        errors.push(error(
                            format!("{path}.token_expires"),
                            "expected a time such as 2026-12-31T00:00:00Z (RFC 3339)",
                        ));
                        None
                    }
                }
            }
            Some(_) => {
                errors.push(error(
                    format!("{path}.token_expires"),
                    "expected a time such as 2026-12-31T00:00:00Z (RFC 3339)",
                ));
                None
            }
        };
        if token_expires.is_some() && token_sha256.is_none() {
            errors.push(error(
                format!("{path}.token_expires"),
                "applies to the node's token_sha256",
            ));
        }
        if identity.is_some() != token_sha256.is_some() {
            errors.push(error(
                path.clone(),
                "`identity` and `token_sha256` go together: a node proves its identity with its token",
            ));
        }
        let mut listeners = obj.get("listeners").cloned().unwrap_or(Value::Null);
        for (i, l) in listeners.as_array().into_iter().flatten().enumerate() {
            // A proxy (root, often) must not be told to write files the control plane names.
            let log = l.get("access_log");
            let target = log.and_then(|a| a.as_str().or_else(|| a.get("path")?.as_str()));
            if log.is_some() && target != Some("stdout") {
                errors.push(error(
                    format!("{path}.listeners[{i}].access_log"),
                    "a node's access log goes to stdout: the control plane does not name files on proxy hosts",
                ));
            }
        }
        for (i, l) in listeners.as_array_mut().into_iter().flatten().enumerate() {
            if let Some(tls) = l.get_mut("tls") {
                let p = format!("{path}.listeners[{i}].tls");
                if expand_listener_tls(tls, &p, errors) && identity.is_none() {
                    errors.push(error(p, "`mesh` TLS needs the node's `identity`"));
                }
            }
        }
        let listeners_text = listeners.to_string();
        let probe = format!("{{\"listeners\":{listeners_text},\"clusters\":{bare}}}");
        if let Err(errs) = Config::parse(&probe) {
            for e in errs {
                // Errors in the clusters are the clusters' own, reported once above.
                if e.path.starts_with("clusters") {
                    continue;
                }
                errors.push(ConfigError {
                    path: decode::join(&path, &e.path),
                    line: None,
                    message: e.message,
                });
            }
        }
        let mut named = BTreeSet::new();
        referenced(&listeners, &mut named);
        out.insert(
            name.clone(),
            NodeSpec {
                listeners: listeners_text,
                clusters: named,
                identity,
                token_sha256,
                token_expires,
            },
        );
    }
    out
}

/// A DNS label: what namespaces and service accounts are made of.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `ca: { cert_ttl, rotation_grace }`.
fn check_ca(root: &Map<String, Value>, errors: &mut Vec<ConfigError>) -> CaSpec {
    let mut ca = CaSpec {
        cert_ttl: Duration::from_secs(24 * 3600),
        rotation_grace: Duration::from_secs(300),
        operator: None,
    };
    let Some(v) = root.get("ca").filter(|v| !v.is_null()) else {
        return ca;
    };
    let Some(m) = v.as_object() else {
        errors.push(error("ca", "expected a mapping"));
        return ca;
    };
    let mut files = (None, None);
    for (k, v) in m {
        let d = v.as_str().and_then(parse_duration);
        match (k.as_str(), d) {
            ("cert", _) => files.0 = Some(v),
            ("key", _) => files.1 = Some(v),
            ("cert_ttl", Some(d))
                if d >= Duration::from_secs(2) && d <= Duration::from_secs(366 * 86400) =>
            {
                ca.cert_ttl = d;
            }
            ("cert_ttl", _) => errors.push(error(
                "ca.cert_ttl",
                "expected a duration from 2s to 366 days, such as 24h",
            )),
            ("rotation_grace", Some(d)) if !d.is_zero() => ca.rotation_grace = d,
            ("rotation_grace", _) => {
                errors.push(error("ca.rotation_grace", "expected a duration such as 5m"))
            }
            _ => errors.push(error(
                format!("ca.{k}"),
                format!(
                    "unknown field `{k}`; expected one of: cert_ttl, rotation_grace, cert, key"
                ),
            )),
        }
    }
    match files {
        (None, None) => {}
        (Some(cert), Some(key)) => ca.operator = operator_ca(cert, key, errors),
        (Some(_), None) => errors.push(error("ca.key", "required with ca.cert")),
        (None, Some(_)) => errors.push(error("ca.cert", "required with ca.key")),
    }
    ca
}

/// `ca: { cert: FILE, key: FILE }`: the operator's CA, read and checked now (an API change
/// that names unusable files is refused like any other invalid change).
fn operator_ca(cert: &Value, key: &Value, errors: &mut Vec<ConfigError>) -> Option<OperatorCa> {
    // A regular file, and a small one: not a device, a FIFO, or a file that never ends.
    let read = |v: &Value, field: &str, errors: &mut Vec<ConfigError>| match v.as_str() {
        Some(p) if !p.is_empty() => match std::fs::metadata(p) {
            Ok(m) if !m.is_file() || m.len() > 1 << 20 => {
                errors.push(error(
                    field,
                    format!("`{p}` is not a PEM file (a regular file up to 1 MiB)"),
                ));
                None
            }
            Ok(_) => match std::fs::read_to_string(p) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(error(field, format!("cannot read `{p}`: {e}")));
                    None
                }
            },
            Err(e) => {
                errors.push(error(field, format!("cannot read `{p}`: {e}")));
                None
            }
        },
        _ => {
            errors.push(error(field, "expected a file path"));
            None
        }
    };
    let (cert, key) = (read(cert, "ca.cert", errors)?, read(key, "ca.key", errors)?);
    match Authority::from_operator(&cert, &key) {
        Ok(a) => Some(OperatorCa {
            fingerprint: a.fingerprint,
            cert,
            key,
        }),
        Err(CaError::Operator { field, why }) => {
            errors.push(error(field, why));
            None
        }
        Err(e) => {
            errors.push(error("ca.cert", e.to_string()));
            None
        }
    }
}

/// The fields that name files on the control plane's host (`ca.cert`, `ca.key`): they come from
/// the mesh file only. A change through the API that sets or alters one is refused, so that
/// an API credential never makes the control plane read a file of its choosing.
pub fn api_may_not_name_files(old: &Value, new: &Value) -> Vec<ConfigError> {
    ["cert", "key"]
        .iter()
        .filter(|k| old.pointer(&format!("/ca/{k}")) != new.pointer(&format!("/ca/{k}")))
        .map(|k| {
            error(
                format!("ca.{k}"),
                "comes from the mesh file only: the API does not make the control plane read files",
            )
        })
        .collect()
}

/// `api: { names: [NAME], admins: [{ name, token_sha256 } | { name, identity }] }`.
fn check_api(root: &Map<String, Value>, errors: &mut Vec<ConfigError>) -> ApiSpec {
    let mut api = ApiSpec::default();
    let Some(v) = root.get("api").filter(|v| !v.is_null()) else {
        return api;
    };
    let Some(m) = v.as_object() else {
        errors.push(error("api", "expected a mapping"));
        return api;
    };
    for k in m
        .keys()
        .filter(|k| !["names", "admins"].contains(&k.as_str()))
    {
        errors.push(error(
            format!("api.{k}"),
            format!("unknown field `{k}`; expected one of: names, admins"),
        ));
    }
    for (i, n) in m
        .get("names")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match n.as_str() {
            Some(s) if crate::config::valid_dns_name(s) => api.names.push(s.to_ascii_lowercase()),
            _ => errors.push(error(
                format!("api.names[{i}]"),
                "expected a DNS name such as cp.mesh.internal",
            )),
        }
    }
    if m.get("names").is_some_and(|n| !n.is_array()) {
        errors.push(error("api.names", "expected a list of DNS names"));
    }
    let admins = match m.get("admins") {
        None | Some(Value::Null) => return api,
        Some(Value::Array(a)) => a,
        Some(_) => {
            errors.push(error("api.admins", "expected a list"));
            return api;
        }
    };
    let mut names = BTreeSet::new();
    for (i, a) in admins.iter().enumerate() {
        let path = format!("api.admins[{i}]");
        let Some(a) = a.as_object() else {
            errors.push(error(
                path,
                "expected { name, token_sha256 } or { name, identity }",
            ));
            continue;
        };
        for k in a
            .keys()
            .filter(|k| !["name", "token_sha256", "identity"].contains(&k.as_str()))
        {
            errors.push(error(
                format!("{path}.{k}"),
                format!("unknown field `{k}`; expected one of: name, token_sha256, identity"),
            ));
        }
        let name = match a.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n.len() <= 128 && !n.contains(char::is_control) => {
                if !names.insert(n.to_string()) {
                    errors.push(error(
                        format!("{path}.name"),
                        format!("`{n}` is named twice"),
                    ));
                }
                n.to_string()
            }
            _ => {
                errors.push(error(
                    format!("{path}.name"),
                    "required: 1 to 128 characters",
                ));
                String::new()
            }
        };
        let token_sha256 = match a.get("token_sha256") {
            None => None,
            Some(Value::String(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(_) => {
                errors.push(error(
                    format!("{path}.token_sha256"),
                    "expected the SHA-256 of the admin's token, as 64 hex digits",
                ));
                None
            }
        };
        let identity = match a.get("identity") {
            None => None,
            Some(Value::String(id)) if ringmesh_core::tls::valid_spiffe_id(id) => Some(id.clone()),
            Some(_) => {
                errors.push(error(
                    format!("{path}.identity"),
                    "expected a SPIFFE ID such as spiffe://mesh.local/ns/ops/sa/admin",
                ));
                None
            }
        };
        if a.contains_key("token_sha256") == a.contains_key("identity") {
            errors.push(error(path, "give exactly one of token_sha256 and identity"));
            continue;
        }
        api.admins.push(Admin {
            name,
            token_sha256,
            identity,
        });
    }
    api
}

/// A listener's `tls: mesh` (or `tls: { mesh: true, alpn: [...] }`): serve the node's issued
/// certificate and require clients to present one from the mesh CA. Returns whether it was.
fn expand_listener_tls(tls: &mut Value, path: &str, errors: &mut Vec<ConfigError>) -> bool {
    let alpn = match tls {
        Value::String(s) if s == "mesh" => None,
        Value::Object(m) if m.contains_key("mesh") => {
            if m.get("mesh") != Some(&Value::Bool(true)) {
                errors.push(error(format!("{path}.mesh"), "expected true"));
            }
            for k in m.keys().filter(|k| !["mesh", "alpn"].contains(&k.as_str())) {
                errors.push(error(
                    format!("{path}.{k}"),
                    format!("unknown field `{k}` with `mesh`; expected one of: mesh, alpn"),
                ));
            }
            m.get("alpn").cloned()
        }
        _ => return false,
    };
    let mut out = Map::new();
    out.insert(
        "certs".into(),
        serde_json::json!([{
            "cert": format!("{IDENTITY_DIR}/cert.pem"),
            "key": format!("{IDENTITY_DIR}/key.pem"),
        }]),
    );
    out.insert(
        "client_ca".into(),
        Value::String(format!("{IDENTITY_DIR}/bundle.pem")),
    );
    if let Some(a) = alpn {
        out.insert("alpn".into(), a);
    }
    *tls = Value::Object(out);
    true
}

/// A cluster's `tls: { mesh: "spiffe://TD/ns/NS/sa/SA" }`: mutual TLS with the node's issued
/// certificate, to endpoints that must present that identity.
fn expand_cluster_tls(
    tls: &mut Value,
    trust_domain: &str,
    path: &str,
    errors: &mut Vec<ConfigError>,
) {
    let Some(m) = tls.as_object() else {
        return;
    };
    let Some(id) = m.get("mesh") else {
        return;
    };
    for k in m.keys().filter(|k| *k != "mesh") {
        errors.push(error(
            format!("{path}.{k}"),
            format!("unknown field `{k}` with `mesh`: the mesh CA provides the rest"),
        ));
    }
    let sni = id.as_str().and_then(|id| {
        let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
        let rest = rest.strip_prefix("/ns/")?;
        let (ns, sa) = rest.split_once("/sa/")?;
        (dns_label(ns) && dns_label(sa)).then(|| identity_dns_name(trust_domain, ns, sa))
    });
    let Some(sni) = sni else {
        errors.push(error(
            format!("{path}.mesh"),
            format!("expected the endpoints' identity, such as spiffe://{trust_domain}/ns/default/sa/web"),
        ));
        return;
    };
    *tls = serde_json::json!({
        "sni": sni,
        "ca": format!("{IDENTITY_DIR}/bundle.pem"),
        "cert": format!("{IDENTITY_DIR}/cert.pem"),
        "key": format!("{IDENTITY_DIR}/key.pem"),
    });
}

/// The DNS name an issued certificate carries beside its SPIFFE ID, which TLS clients check as
/// the server's name: `SA.NS.TRUST_DOMAIN`.
pub fn identity_dns_name(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("{sa}.{ns}.{trust_domain}")
}

/// Every cluster a node's listeners name: the value of any `cluster` field (routes, splits, TCP
/// listeners, SNI routes).
fn referenced(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("cluster", Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    _ => referenced(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| referenced(v, out)),
        _ => {}
    }
}

/// An endpoint the registration API added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Its address.
    pub addr: SocketAddr,
    /// Its zone.
    pub zone: Option<String>,
    /// Its weight.
    pub weight: Option<u32>,
}

/// A cluster's JSON with its endpoints: the listed ones, then those DNS found, then the
/// registered ones; an address already present is not repeated.
pub fn render_cluster<'a>(
    spec: &ClusterSpec,
    dns: impl Fn(&str) -> Option<&'a [SocketAddr]>,
    registered: impl Iterator<Item = &'a Registered>,
) -> String {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut eps: Vec<Value> = Vec::with_capacity(spec.statics.len());
    for e in &spec.statics {
        if let Some(a) = e.get("addr").and_then(Value::as_str) {
            seen.insert(normalize(a));
        }
        eps.push(e.clone());
    }
    for d in &spec.dns {
        for a in dns(&d.name).unwrap_or_default() {
            if seen.insert(a.to_string()) {
                let mut e = d.template.clone();
                e.insert("addr".into(), Value::String(a.to_string()));
                eps.push(Value::Object(e));
            }
        }
    }
    for r in registered {
        if seen.insert(r.addr.to_string()) {
            let mut e = Map::new();
            e.insert("addr".into(), Value::String(r.addr.to_string()));
            if let Some(z) = &r.zone {
                e.insert("zone".into(), Value::String(z.clone()));
            }
            if let Some(w) = r.weight {
                e.insert("weight".into(), Value::from(w));
            }
            eps.push(Value::Object(e));
        }
    }
    let mut c = spec.base.clone();
    c.insert("endpoints".into(), Value::Array(eps));
    Value::Object(c).to_string()
}

fn normalize(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.to_string())
}

/// A node's config: its listeners, the clusters they name (pre-rendered), and the policies.
pub fn render_node(mesh: &Mesh, node: &NodeSpec, clusters: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(256 + node.listeners.len());
    out.push_str("{\"listeners\":");
    out.push_str(&node.listeners);
    out.push_str(",\"clusters\":[");
    let mut first = true;
    for name in &node.clusters {
        if let Some(c) = clusters.get(name) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(c);
        }
    }
    out.push_str("],\"policies\":");
    out.push_str(&mesh.policies);
    out.push_str(",\"default_policy\":");
    out.push_str(&Value::String(mesh.default_policy.clone()).to_string());
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "
trust_domain: example.org
clusters:
  - name: web
    endpoints:
      - { addr: 127.0.0.1:8081 }
      - { dns: localhost:8082, zone: dc1 }
  - name: api
    endpoints: []
nodes:
  edge-1:
    listeners:
      - name: edge
        bind: 127.0.0.1:0
        routes: [ { match: { path_prefix: / }, cluster: web } ]
";

    #[test]
    fn a_mesh_file_is_checked_and_rendered_per_node() {
        let m = Mesh::parse(MESH).expect("valid");
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(
            m.dns_names().into_iter().collect::<Vec<_>>(),
            ["localhost:8082"]
        );
        let node = &m.nodes["edge-1"];
        assert_eq!(node.clusters.iter().collect::<Vec<_>>(), ["web"]);
        let found: Vec<SocketAddr> = vec!["127.0.0.2:8082".parse().expect("addr")];
        let reg = Registered {
            addr: "127.0.0.3:9".parse().expect("addr"),
            zone: Some("dc2".into()),
            weight: None,
        };
        let web = render_cluster(
            m.cluster("web").expect("web"),
            |_| Some(&found[..]),
            [&reg].into_iter(),
        );
        let clusters = BTreeMap::from([("web".to_string(), web)]);
        let text = render_node(&m, node, &clusters);
        let c = Config::parse(&text).expect("the proxy accepts what a node is sent");
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].endpoints.len(), 3);
    }

    #[test]
    fn errors_name_the_field_in_the_mesh_file() {
        let bad = MESH
            .replace("cluster: web", "cluster: nope")
            .replace("{ addr: 127.0.0.1:8081 }", "{ addr: nowhere }")
            .replace("dns: localhost:8082", "dns: localhost");
        let errs = Mesh::parse(&format!("{bad}\nextra: 1\n")).expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"extra"), "{errs:?}");
        assert!(paths.contains(&"clusters[0].endpoints[0].addr"), "{errs:?}");
        assert!(paths.contains(&"clusters[0].endpoints[1].dns"), "{errs:?}");
        assert!(
            paths.contains(&"nodes.edge-1.listeners[0].routes[0].cluster"),
            "{errs:?}"
        );
    }
}
