//! The control plane's state: the desired state in force, registrations, what DNS found, each
//! node's rendered snapshot and what its proxy reported, and the mesh CA. Only the runtime's
//! thread touches it; changes render what they touch again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::super::ca::{Ca, CaError};
use super::super::model::{Mesh, Registered, render_cluster, render_node};
use super::*;

/// A registered instance.
#[derive(Debug, Clone)]
pub(super) struct Registration {
    pub(super) ep: Registered,
    pub(super) ttl: Duration,
    pub(super) deadline: Instant,
    /// Its etcd lease, with a store (0 without).
    pub(super) lease: i64,
    /// The node that registered it (`None`: an admin did); only it (or an admin) may
    /// heartbeat or remove it.
    pub(super) owner: Option<String>,
}

impl Registration {
    /// As kept: `{"addr", "zone", "weight", "ttl", "owner"}`.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "addr": self.ep.addr.to_string(), "zone": self.ep.zone, "weight": self.ep.weight,
            "ttl": crate::config::format_duration(self.ttl), "owner": self.owner,
        })
    }
}

/// A bootstrap token that got its node a certificate: it is good for nothing more, but the
/// same request again (the same public key, whose answer was lost) is answered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spent {
    /// SHA-256 (hex) of the token.
    pub(super) token_sha256: String,
    /// SHA-256 (hex) of the public key it certified.
    pub(super) public_key_sha256: String,
    /// When (unix seconds).
    pub(super) at: i64,
    /// Its key's revision in the store (0 without one): a replica spends a token only if the
    /// record is still the one it saw.
    pub(super) rev: i64,
}

impl Spent {
    pub(super) fn to_json(&self) -> Value {
        json!({ "token_sha256": self.token_sha256, "public_key_sha256": self.public_key_sha256, "at": self.at })
    }

    pub(super) fn from_json(v: &Value) -> Option<Spent> {
        Some(Spent {
            token_sha256: v["token_sha256"].as_str()?.to_string(),
            public_key_sha256: v["public_key_sha256"].as_str()?.to_string(),
            at: v["at"].as_i64().unwrap_or(0),
            rev: 0,
        })
    }
}

/// What DNS last said about a name.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) error: Option<String>,
    pub(super) at: Option<SystemTime>,
}

/// A node as served and as reported by its proxy.
#[derive(Debug)]
pub(super) struct NodeState {
    /// Version of its config: the mesh version when it last changed.
    pub(super) version: u64,
    /// Fingerprint of its config.
    pub(super) hash: u64,
    /// The watch answer: `{"version":..,"node":..,"config":..}`.
    pub(super) body: std::sync::Arc<str>,
    pub(super) applied: Option<(u64, SystemTime)>,
    /// The fingerprint of the config applied, when known: replicas may number the same
    /// config differently (one that started from the store's snapshot).
    pub(super) applied_hash: Option<u64>,
    pub(super) rejected: Option<(u64, String, SystemTime)>,
    pub(super) last_seen: Option<SystemTime>,
    /// When the last certificate this control plane issued to the node expires (Unix
    /// seconds); `None` before it issued one (or when another replica did).
    pub(super) cert_expires_unix: Option<i64>,
}

impl NodeState {
    /// The proxy applied this version (`now`).
    pub(super) fn applied(&mut self, version: u64, now: SystemTime) {
        self.applied = Some((version, now));
        self.applied_hash = (version == self.version).then_some(self.hash);
    }

    /// Whether the proxy runs the node's current config.
    pub(super) fn in_sync(&self) -> bool {
        self.applied.is_some_and(|(v, _)| v == self.version) || self.applied_hash == Some(self.hash)
    }
}

/// The control plane's state. Only the runtime's thread touches it.
pub(super) struct State {
    pub(super) mesh: Mesh,
    pub(super) version: u64,
    pub(super) source: MeshSource,
    pub(super) file_hash: u64,
    pub(super) file_stamp: Option<(SystemTime, u64)>,
    pub(super) file_error: Option<String>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) registrations: BTreeMap<String, BTreeMap<String, Registration>>,
    pub(super) dns: BTreeMap<String, Resolved>,
    pub(super) nodes: BTreeMap<String, NodeState>,
    /// Each cluster's rendered JSON (clusters some node uses).
    pub(super) cluster_text: BTreeMap<String, String>,
    /// The nodes that use each cluster.
    pub(super) users: BTreeMap<String, Vec<String>>,
    pub(super) watchers: usize,
    /// The state file needs writing.
    pub(super) dirty: bool,
    /// The mesh CA.
    pub(super) ca: Ca,
    /// The version that started the CA rotation in progress.
    pub(super) rotation_version: u64,
    /// Bootstrap tokens spent, by node.
    pub(super) spent: BTreeMap<String, Spent>,
}

impl State {
    pub(super) fn new(
        mesh: Mesh,
        text: &str,
        source: MeshSource,
        state_file: Option<PathBuf>,
    ) -> Result<State, CaError> {
        // The operator's CA when the mesh file names one, else one made here.
        let ca = match &mesh.ca.operator {
            Some(op) => Ca::with(super::super::ca::Authority::from_operator(
                &op.cert, &op.key,
            )?),
            None => Ca::generate(&mesh.trust_domain)?,
        };
        // Versions start from the clock (milliseconds), so that they keep growing across
        // restarts even without a state file: a proxy never sees an old number for a new config.
        let mut st = State {
            mesh,
            version: unix_ms(SystemTime::now()).max(1),
            file_hash: fingerprint(text),
            file_stamp: None,
            file_error: None,
            state_file,
            registrations: BTreeMap::new(),
            dns: BTreeMap::new(),
            nodes: BTreeMap::new(),
            cluster_text: BTreeMap::new(),
            users: BTreeMap::new(),
            watchers: 0,
            dirty: true,
            source,
            ca,
            rotation_version: 0,
            spent: BTreeMap::new(),
        };
        st.file_stamp = st.stamp();
        st.render();
        Ok(st)
    }

    pub(super) fn stamp(&self) -> Option<(SystemTime, u64)> {
        let MeshSource::File(p) = &self.source else {
            return None;
        };
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Takes the desired state and registrations from the state file when it was written for
    /// this same mesh file; registrations get a full TTL from now.
    pub(super) fn restore(&mut self, path: &PathBuf) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let Ok(saved) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!(path = %path.display(), "state file unreadable; starting from the mesh file");
            return;
        };
        match Ca::from_json(&saved["ca"], &self.mesh.trust_domain) {
            Ok(ca) => self.ca = ca,
            Err(e) => tracing::warn!(error = %e, "state file has no usable CA; a new one was made"),
        }
        for (node, s) in saved["spent"].as_object().into_iter().flatten() {
            if let Some(s) = Spent::from_json(s) {
                self.spent.insert(node.clone(), s);
            }
        }
        let version = saved["version"].as_u64().unwrap_or(0);
        self.version = self.version.max(version + 1);
        if saved["file_hash"].as_u64() == Some(self.file_hash) {
            match Mesh::check(saved["mesh"].clone()) {
                Ok(m) => self.mesh = m,
                Err(errs) => tracing::warn!(
                    errors = errs.len(),
                    "state file's desired state is invalid; using the mesh file"
                ),
            }
        }
        let now = Instant::now();
        for r in saved["registrations"].as_array().into_iter().flatten() {
            let (Some(cluster), Some(id)) = (r["cluster"].as_str(), r["id"].as_str()) else {
                continue;
            };
            let Ok(reg) = registration(r, now, true) else {
                continue;
            };
            self.registrations
                .entry(cluster.to_string())
                .or_default()
                .insert(id.to_string(), reg);
        }
        self.nodes.clear();
        self.render();
        tracing::info!(
            version = self.version,
            registrations = self
                .registrations
                .values()
                .map(BTreeMap::len)
                .sum::<usize>(),
            "state restored"
        );
    }

    /// The state file's contents.
    pub(super) fn saved(&self) -> Vec<u8> {
        let regs: Vec<Value> = self
            .registrations
            .iter()
            .flat_map(|(c, m)| {
                m.iter().map(move |(id, r)| {
                    let mut v = r.to_json();
                    v["cluster"] = json!(c);
                    v["id"] = json!(id);
                    v
                })
            })
            .collect();
        json!({
            "version": self.version,
            "file_hash": self.file_hash,
            "mesh": self.mesh.doc,
            "registrations": regs,
            "ca": self.ca.to_json(),
            "spent": self.spent.iter().map(|(n, s)| (n.clone(), s.to_json())).collect::<serde_json::Map<_, _>>(),
        })
        .to_string()
        .into_bytes()
    }

    /// Something changed: a new version, every node rendered again.
    pub(super) fn changed(&mut self) {
        self.version += 1;
        self.dirty = true;
        self.render();
    }

    /// Renders every node's config; a node whose config differs gets the current version.
    pub(super) fn render(&mut self) {
        self.users.clear();
        for (node, spec) in &self.mesh.nodes {
            for c in &spec.clusters {
                self.users.entry(c.clone()).or_default().push(node.clone());
            }
        }
        self.cluster_text.clear();
        let names: Vec<String> = self.users.keys().cloned().collect();
        for name in &names {
            self.render_cluster(name);
        }
        self.nodes
            .retain(|name, _| self.mesh.nodes.contains_key(name));
        let all: Vec<String> = self.mesh.nodes.keys().cloned().collect();
        self.render_nodes(&all);
    }

    /// After a change to these clusters' endpoints: renders them and the nodes that use them.
    pub(super) fn changed_clusters(&mut self, clusters: &[String]) {
        self.version += 1;
        self.dirty = true;
        self.render_clusters(clusters);
    }

    /// Renders these clusters and the nodes that use them.
    pub(super) fn render_clusters(&mut self, clusters: &[String]) {
        let mut nodes = Vec::new();
        for c in clusters {
            if self.users.contains_key(c) {
                self.render_cluster(c);
                nodes.extend(self.users[c].iter().cloned());
            }
        }
        nodes.sort();
        nodes.dedup();
        self.render_nodes(&nodes);
    }

    pub(super) fn render_cluster(&mut self, name: &str) {
        let Some(spec) = self.mesh.cluster(name) else {
            return;
        };
        let empty = BTreeMap::new();
        let regs = self.registrations.get(name).unwrap_or(&empty);
        let text = render_cluster(
            spec,
            |n| self.dns.get(n).map(|r| &r.addrs[..]),
            regs.values().map(|r| &r.ep),
        );
        self.cluster_text.insert(name.to_string(), text);
    }

    pub(super) fn render_nodes(&mut self, names: &[String]) {
        let version = self.version;
        let (bundle, issuer) = self.ca.marks();
        for name in names {
            let Some(spec) = self.mesh.nodes.get(name) else {
                continue;
            };
            let config = render_node(&self.mesh, name, spec, &self.cluster_text);
            // A node with an identity is told the CA's marks: a change makes it fetch a new
            // certificate and trust bundle.
            let marks = match &spec.identity {
                Some(id) => format!(
                    ",\"identity\":{{\"id\":{},\"bundle\":\"{bundle}\",\"issuer\":\"{issuer}\"}}",
                    Value::String(id.clone())
                ),
                None => String::new(),
            };
            let hash = fingerprint(&config) ^ fingerprint(&marks).rotate_left(1);
            let body = || -> std::sync::Arc<str> {
                std::sync::Arc::from(format!(
                    "{{\"version\":{version},\"node\":{}{marks},\"config\":{config}}}\n",
                    Value::String(name.clone())
                ))
            };
            match self.nodes.get_mut(name) {
                Some(n) if n.hash == hash => {}
                Some(n) => {
                    n.version = version;
                    n.body = body();
                    n.hash = hash;
                }
                None => {
                    let b = body();
                    self.nodes.insert(
                        name.clone(),
                        NodeState {
                            version,
                            hash,
                            body: b,
                            applied: None,
                            applied_hash: None,
                            rejected: None,
                            last_seen: None,
                            cert_expires_unix: None,
                        },
                    );
                }
            }
        }
    }
}

impl State {
    /// The clusters that take endpoints from DNS name `name`.
    pub(super) fn dns_users(&self, name: &str) -> Vec<String> {
        self.mesh
            .clusters
            .iter()
            .filter(|c| c.dns.iter().any(|d| d.name == name))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Removes a registration; returns whether there was one.
    pub(super) fn unregister(&mut self, cluster: &str, id: &str) -> bool {
        let Some(m) = self.registrations.get_mut(cluster) else {
            return false;
        };
        let removed = m.remove(id).is_some();
        if m.is_empty() {
            self.registrations.remove(cluster);
        }
        removed
    }

    /// Whether every node with an identity whose proxy was seen lately applied `version` or later.
    pub(super) fn all_have(&self, version: u64) -> bool {
        let recent = SystemTime::now() - Duration::from_secs(120);
        self.mesh
            .nodes
            .iter()
            .filter(|(_, spec)| spec.identity.is_some())
            .filter_map(|(name, _)| self.nodes.get(name))
            .filter(|n| n.last_seen.is_some_and(|t| t >= recent))
            .all(|n| n.applied.is_some_and(|(v, _)| v >= version))
    }
}

/// Parses a registration body (`{"addr", "zone", "weight", "ttl"}`).
pub fn parse_registration(body: &[u8]) -> Result<(Registered, Duration), Vec<String>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| vec![format!("invalid JSON: {e}")])?;
    let reg = registration(&v, Instant::now(), false)?;
    Ok((reg.ep, reg.ttl))
}

/// A registration from its JSON: `{"addr", "zone", "weight", "ttl"}` as the API takes it.
/// The endpoint is checked by the proxy's own validator
/// ([`crate::config::check_endpoint`]), so that no registration taken here can make a proxy
/// refuse its snapshot; the TTL by the control plane's bounds. Every error names its field.
/// `stored`: from the state file or the store, which also keep `owner`, `cluster` and `id`.
pub(super) fn registration(
    v: &Value,
    now: Instant,
    stored: bool,
) -> Result<Registration, Vec<String>> {
    let obj = v
        .as_object()
        .ok_or_else(|| vec!["expected an object".to_string()])?;
    let mut errors = Vec::new();
    let kept: &[&str] = if stored {
        &["addr", "zone", "weight", "ttl", "owner", "cluster", "id"]
    } else {
        &["addr", "zone", "weight", "ttl"]
    };
    for k in obj.keys().filter(|k| !kept.contains(&k.as_str())) {
        errors.push(format!(
            "{k}: unknown field; expected one of: addr, zone, weight, ttl"
        ));
    }
    let mut endpoint = serde_json::Map::new();
    for k in ["addr", "zone", "weight"] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            endpoint.insert(k.into(), v.clone());
        }
    }
    if !endpoint.contains_key("addr") {
        errors.push("addr: required, an address such as 127.0.0.1:9000".into());
    }
    let checked = crate::config::check_endpoint(&Value::Object(endpoint.clone()));
    let ep = match checked {
        Ok(e) => Some(e),
        Err(errs) => {
            if endpoint.contains_key("addr") {
                errors.extend(errs.iter().map(ToString::to_string));
            }
            None
        }
    };
    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => Some(TTL_DEFAULT),
        Some(Value::String(s)) => {
            crate::config::decode::parse_duration(s).filter(|d| (TTL_MIN..=TTL_MAX).contains(d))
        }
        _ => None,
    };
    if ttl.is_none() {
        errors.push("ttl: expected a duration from 1s to 1h, such as 10s".into());
    }
    let owner = obj.get("owner").and_then(Value::as_str).map(str::to_string);
    match (ep, ttl) {
        (Some(ep), Some(ttl)) if errors.is_empty() => Ok(Registration {
            ep: Registered {
                addr: ep.addr,
                zone: ep.zone,
                weight: endpoint.contains_key("weight").then_some(ep.weight),
            },
            ttl,
            deadline: now + ttl,
            lease: 0,
            owner: if stored { owner } else { None },
        }),
        _ => Err(errors),
    }
}
