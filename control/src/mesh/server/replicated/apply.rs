//! Applying the store's changes, in revision order, to a replica's state; and writing what the
//! nodes report back to the store.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::mesh::ca::Ca;
use crate::mesh::etcd::Event;
use crate::mesh::model::Mesh;
use crate::mesh::server::{Plane, Resolved, Spent, State, registration, unix_ms};

use super::*;

/// Applies the store's changes to the state: the version becomes `epoch + revision`, and what
/// they touched is rendered again.
///
/// Changes are applied one revision at a time, so that replicas following the same stream
/// give a node the same version whatever batches the stream came in.
pub(in crate::mesh::server) fn apply(st: &mut State, store: &Store, batch: Batch) -> bool {
    if store.diverged.get() {
        return false;
    }
    match batch {
        Batch::Snapshot(rev, mut kvs) => {
            if rev < store.applied.get() {
                // Versions would be reused for other snapshots if this were followed.
                tracing::error!(
                    revision = rev,
                    applied = store.applied.get(),
                    "store: etcd went back in time (restored from a backup?); restart the replicas"
                );
                store.diverged.set(true);
                return false;
            }
            if rev == store.applied.get() {
                // Nothing changed while the watch was away.
                return false;
            }
            st.registrations.clear();
            st.dns.clear();
            // The leader key is in the snapshot if someone holds it.
            store.led.store(false, Ordering::Relaxed);
            if store.applied.get() == 0 {
                // Node versions so far came from the mesh file, not from the store.
                st.nodes.clear();
            }
            // The desired state first: the rest refers to its nodes and clusters.
            kvs.sort_by_key(|kv| kv.key != format!("{}mesh", store.prefix));
            let events = kvs.into_iter().map(Event::Put).collect();
            apply_at(st, store, rev, events, true)
        }
        Batch::Events(events) => {
            let mut group = Vec::new();
            let mut at = 0;
            let mut rendered = false;
            for e in events {
                let (Event::Put(kv) | Event::Delete(kv)) = &e;
                if kv.mod_revision != at && !group.is_empty() {
                    rendered |= apply_at(st, store, at, std::mem::take(&mut group), false);
                }
                at = kv.mod_revision;
                group.push(e);
            }
            if !group.is_empty() {
                rendered |= apply_at(st, store, at, group, false);
            }
            rendered
        }
    }
}

/// Applies the changes of one revision; returns whether nodes were rendered again.
pub(super) fn apply_at(
    st: &mut State,
    store: &Store,
    rev: i64,
    events: Vec<Event>,
    mut full: bool,
) -> bool {
    let mut clusters = BTreeSet::new();
    let mut reports = Vec::new();
    if rev <= store.applied.get() {
        return false;
    }
    for e in events {
        let (kv, put) = match e {
            Event::Put(kv) => (kv, true),
            Event::Delete(kv) => (kv, false),
        };
        let Some(rel) = kv.key.strip_prefix(&store.prefix) else {
            continue;
        };
        let value: Value = if put {
            serde_json::from_slice(&kv.value).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        match rel.split_once('/').unwrap_or((rel, "")) {
            ("mesh", "") if put => {
                store.mesh_rev.set(kv.mod_revision);
                let mine = store.checked.borrow_mut().take();
                let checked = match mine {
                    Some((text, m)) if text == kv.value => Ok(m),
                    _ => Mesh::check(value["mesh"].clone()),
                };
                match checked {
                    Ok(m) => {
                        st.mesh = m;
                        full = true;
                    }
                    Err(errs) => tracing::error!(
                        errors = ?errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "store: the desired state there is invalid; the state in force stays"
                    ),
                }
            }
            ("ca", "") if put => match Ca::from_json(&value["ca"], &st.mesh.trust_domain) {
                Ok(mut ca) => {
                    ca.issued = st.ca.issued;
                    st.ca = ca;
                    store.ca_rev.set(kv.mod_revision);
                    st.rotation_version = store.version(kv.mod_revision);
                    full = true;
                }
                Err(e) => tracing::error!(error = %e, "store: the mesh CA there is unusable"),
            },
            ("dns", name) => {
                if put {
                    let addrs = value["addrs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str()?.parse().ok())
                        .collect();
                    st.dns.insert(
                        name.to_string(),
                        Resolved {
                            addrs,
                            error: value["error"].as_str().map(str::to_string),
                            at: value["at_ms"]
                                .as_u64()
                                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                        },
                    );
                } else {
                    st.dns.remove(name);
                }
                clusters.extend(st.dns_users(name));
            }
            ("reg", rest) => {
                let Some((cluster, id)) = rest.split_once('/') else {
                    continue;
                };
                if put {
                    match registration(&value, Instant::now(), true) {
                        Ok(mut r) => {
                            r.lease = kv.lease;
                            st.registrations
                                .entry(cluster.to_string())
                                .or_default()
                                .insert(id.to_string(), r);
                        }
                        Err(e) => {
                            tracing::warn!(cluster, id, error = %e.join("; "), "store: unreadable registration")
                        }
                    }
                } else {
                    st.unregister(cluster, id);
                }
                clusters.insert(cluster.to_string());
            }
            ("spent", node) => match Spent::from_json(&value) {
                Some(mut s) if put => {
                    s.rev = kv.mod_revision;
                    st.spent.insert(node.to_string(), s);
                }
                _ => {
                    st.spent.remove(node);
                }
            },
            ("leader", "") => store.led.store(put, Ordering::Relaxed),
            _ => {}
        }
        if let ("node", name) = rel.split_once('/').unwrap_or((rel, "")) {
            reports.push((name.to_string(), value));
        }
    }
    store.applied.set(rev);
    st.version = store.version(rev);
    let rendered = full || !clusters.is_empty();
    if full {
        st.render();
    } else if rendered {
        st.render_clusters(&clusters.into_iter().collect::<Vec<_>>());
    }
    // After rendering: reports may be about nodes the render just made.
    for (name, value) in reports {
        node_report(st, &name, &value);
    }
    rendered
}

/// A node's report as stored: `{"applied": [V, MS], "rejected": [V, WHY, MS], "seen_ms": MS}`.
pub(super) fn node_report(st: &mut State, name: &str, v: &Value) {
    let Some(n) = st.nodes.get_mut(name) else {
        return;
    };
    let at = |ms: &Value| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.as_u64().unwrap_or(0));
    if let Some(version) = v["applied"][0].as_u64() {
        let t = at(&v["applied"][1]);
        if n.applied.is_none_or(|(_, old)| old <= t) {
            n.applied = Some((version, t));
            n.applied_hash = v["hash"].as_u64();
        }
    }
    if let (Some(version), Some(why)) = (v["rejected"][0].as_u64(), v["rejected"][1].as_str()) {
        let t = at(&v["rejected"][2]);
        if n.rejected.as_ref().is_none_or(|(_, _, old)| *old <= t) {
            n.rejected = Some((version, why.to_string(), t));
        }
    }
    if !v["seen_ms"].is_null() {
        let t = at(&v["seen_ms"]);
        if n.last_seen.is_none_or(|old| old < t) {
            n.last_seen = Some(t);
        }
    }
}

/// Writes a node's report to the store: when it changed (`force`), or now and then while its
/// proxy is watching, so that every replica knows it is alive.
pub(in crate::mesh::server) fn note_node(plane: &Plane, store: &Store, node: &str, force: bool) {
    let due = force
        || store
            .node_written
            .borrow()
            .get(node)
            .is_none_or(|t| t.elapsed() >= SEEN_WRITE);
    if !due {
        return;
    }
    let body = {
        let st = plane.st.borrow();
        let Some(n) = st.nodes.get(node) else {
            return;
        };
        json!({
            "applied": n.applied.map(|(v, t)| json!([v, unix_ms(t)])),
            "hash": n.applied_hash,
            "rejected": n.rejected.as_ref().map(|(v, e, t)| json!([v, e, unix_ms(*t)])),
            "seen_ms": n.last_seen.map(unix_ms),
        })
        .to_string()
    };
    store
        .node_written
        .borrow_mut()
        .insert(node.to_string(), Instant::now());
    let key = store.key(&format!("node/{node}"));
    let (failed, name) = (store.unwritten.0.clone(), node.to_string());
    let job: Job = Box::new(move |e| {
        if let Err(err) = e.put(&key, body.as_bytes(), 0) {
            tracing::debug!(error = %err, "store: cannot write a node's report; will again");
            let _ = failed.send(name);
        }
    });
    if store.reports.try_send(job).is_err() {
        let _ = store.unwritten.0.send(node.to_string());
    }
}

/// Writes again the reports that could not be written, once the store is back.
pub(in crate::mesh::server) fn rewrite_reports(plane: &Plane, store: &Store) {
    if !store.up()
        || store.unwritten.1.is_empty()
        || store.rewritten.get().elapsed() < REWRITE_EVERY
    {
        return;
    }
    store.rewritten.set(Instant::now());
    let nodes: BTreeSet<String> = store.unwritten.1.try_iter().collect();
    for node in nodes {
        note_node(plane, store, &node, true);
    }
}
