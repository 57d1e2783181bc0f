//! Registrations: `PUT /v1/clusters/{cluster}/endpoints/{id}` registers an instance or
//! heartbeats it, `DELETE` removes it. An admin may do either for any instance; a node only
//! into clusters that list its identity among their `servers` (the API's `auth` checked that),
//! only for instances it registered itself, only at its own address (the one it calls from:
//! a node cannot send other proxies' traffic to their own loopback or to a metadata service),
//! and [`MAX_PER_NODE`] at most. A registration is checked by the proxy's own endpoint
//! validator, so none that is taken can make a proxy refuse its snapshot.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::auth::{Caller, Refusal};
use super::*;
use crate::http::Response;

/// The node a caller registers as (`None`: an admin).
pub(super) fn owner_of(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Node(n) => Some(n.clone()),
        _ => None,
    }
}

/// Instances one node may have registered at once.
pub(super) const MAX_PER_NODE: usize = 1000;

/// What a node may register, beyond the cluster's `servers`: its own address, within its
/// quota. An admin may register anything.
pub(super) fn may_register(
    st: &State,
    reg: &Registration,
    cluster: &str,
    id: &str,
    caller: &Caller,
    peer: std::net::IpAddr,
) -> Result<(), Response> {
    let Caller::Node(node) = caller else {
        return Ok(());
    };
    let canonical = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    if canonical(reg.ep.addr.ip()) != canonical(peer) {
        return Err(Refusal::new(
            403,
            "not-own-address",
            format!(
                "a node registers instances at its own address ({peer}), not at {}",
                reg.ep.addr.ip()
            ),
        )
        .response());
    }
    let exists = st
        .registrations
        .get(cluster)
        .is_some_and(|m| m.contains_key(id));
    let held = st
        .registrations
        .values()
        .flat_map(|m| m.values())
        .filter(|r| r.owner.as_deref() == Some(node.as_str()))
        .count();
    if !exists && held >= MAX_PER_NODE {
        return Err(Refusal::new(
            403,
            "quota",
            format!("node `{node}` holds {MAX_PER_NODE} registrations, the most a node may"),
        )
        .response());
    }
    Ok(())
}

/// Refused when a node touches an instance it did not register (an admin may touch any).
pub(super) fn may_touch(existing: Option<&Registration>, caller: &Caller) -> Result<(), Response> {
    match (existing, caller) {
        (Some(r), Caller::Node(n)) if r.owner.as_deref() != Some(n.as_str()) => Err(Refusal::new(
            403,
            "not-the-owner",
            "this instance was registered by another node or an admin",
        )
        .response()),
        _ => Ok(()),
    }
}

/// `PUT /v1/clusters/{cluster}/endpoints/{id}`: registers or heartbeats. Returns whether the
/// served state changed (a heartbeat only moves the deadline).
pub(super) fn register(
    st: &mut State,
    cluster: &str,
    id: &str,
    body: &[u8],
    (caller, peer): (&Caller, std::net::IpAddr),
) -> (Response, bool) {
    let mut reg = match checked_registration(st, cluster, id, body) {
        Ok(r) => r,
        Err(r) => return (r, false),
    };
    if let Err(r) = may_register(st, &reg, cluster, id, caller, peer) {
        return (r, false);
    }
    let existing = st.registrations.get(cluster).and_then(|m| m.get(id));
    if let Err(r) = may_touch(existing, caller) {
        return (r, false);
    }
    // An admin's heartbeat keeps the instance its node's.
    reg.owner = owner_of(caller).or_else(|| existing.and_then(|e| e.owner.clone()));
    let ttl = reg.ttl;
    let regs = st.registrations.entry(cluster.to_string()).or_default();
    let changed = regs.get(id).is_none_or(|old| old.ep != reg.ep);
    regs.insert(id.to_string(), reg);
    st.dirty = true;
    if changed {
        st.changed_clusters(&[cluster.to_string()]);
    }
    (registered(cluster, id, ttl, st.version), changed)
}

/// `DELETE /v1/clusters/{cluster}/endpoints/{id}`. Returns whether one was removed.
pub(super) fn deregister(
    st: &mut State,
    cluster: &str,
    id: &str,
    caller: &Caller,
) -> (Response, bool) {
    let existing = st.registrations.get(cluster).and_then(|m| m.get(id));
    if existing.is_none() {
        return (Response::error(404, "no such registration"), false);
    }
    if let Err(r) = may_touch(existing, caller) {
        return (r, false);
    }
    st.unregister(cluster, id);
    st.changed_clusters(&[cluster.to_string()]);
    (
        Response::json(200, json!({ "version": st.version }).to_string() + "\n"),
        true,
    )
}

/// The longest instance id.
const MAX_ID: usize = 253;

/// A registration request checked: the cluster exists, the id fits, the body is one (422 with
/// every error, each naming its field).
pub(super) fn checked_registration(
    st: &State,
    cluster: &str,
    id: &str,
    body: &[u8],
) -> Result<Registration, Response> {
    if st.mesh.cluster(cluster).is_none() {
        return Err(Response::error(
            404,
            &format!("no cluster named `{cluster}`"),
        ));
    }
    if id.is_empty() || id.len() > MAX_ID || id.contains(char::is_control) {
        return Err(invalid(&["id: expected 1 to 253 printable characters"]));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Response::error(400, &format!("invalid JSON: {e}")))?;
    registration(&v, Instant::now(), false).map_err(|errs| invalid(&errs))
}

/// The answer to a registration or heartbeat.
pub(super) fn registered(cluster: &str, id: &str, ttl: Duration, version: u64) -> Response {
    let ttl = crate::config::format_duration(ttl);
    Response::json(
        200,
        json!({ "cluster": cluster, "id": id, "ttl": ttl, "version": version }).to_string() + "\n",
    )
}
