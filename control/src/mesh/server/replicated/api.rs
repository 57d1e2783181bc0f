//! The API's writes on a replica: to etcd first, answered once the replica's own watch has
//! seen them.

use std::time::Instant;

use serde_json::json;

use crate::http::{Request, Response};
use crate::mesh::ca::Ca;
use crate::mesh::etcd::EtcdError;
use crate::mesh::model::Mesh;
use crate::mesh::server::auth::Caller;
use crate::mesh::server::{
    Plane, apply_edit, checked_registration, conflict, identity, if_match_required, invalid,
    may_touch, owner_of, registered,
};

use super::*;

/// Waits until this replica's state includes revision `rev` (or [`SEEN_WAIT`] passed).
pub(super) async fn seen(plane: &Plane, store: &Store, rev: i64) {
    let deadline = monoio::time::sleep(SEEN_WAIT);
    let mut deadline = std::pin::pin!(deadline);
    while store.applied.get() < rev && !plane.stopping.get() {
        let changed = plane.progress.wait();
        monoio::select! {
            _ = changed => {}
            _ = &mut deadline => {
                tracing::warn!(revision = rev, "store: a write was not seen back in time");
                return;
            }
        }
    }
}

pub(super) fn unavailable(e: &EtcdError) -> Response {
    Response::error(503, &format!("the store is unavailable: {e}"))
}

/// The answer to a write made at `rev`: its version is the one that carries it, which is also
/// the version of every snapshot it changed (later changes may have moved the state on).
pub(super) fn versioned(store: &Store, rev: i64) -> Response {
    let version = store.version(rev);
    let mut r = Response::json(200, json!({ "version": version }).to_string() + "\n");
    r.etag = Some(version);
    r
}

/// The API's writes with a store. `None` for what is served as without one.
pub(in crate::mesh::server) async fn answer(
    plane: &Plane,
    store: &Store,
    req: &Request,
    segs: &[&str],
    (caller, peer): (&Caller, std::net::IpAddr),
) -> Option<Response> {
    Some(match (req.method.as_str(), segs) {
        ("PUT" | "DELETE", ["v1", "config", ..]) => {
            edit_config(
                plane,
                store,
                req,
                crate::mesh::server::config_pointer(&req.path),
            )
            .await
        }
        ("PUT", ["v1", "clusters", cluster, "endpoints", id]) => {
            register(plane, store, cluster, id, &req.body, (caller, peer)).await
        }
        ("POST", ["v1", "nodes", node, "certificate"]) => {
            certificate(plane, store, node, req, caller).await
        }
        ("DELETE", ["v1", "clusters", cluster, "endpoints", id]) => {
            let lease = {
                let st = plane.st.borrow();
                let existing = st.registrations.get(*cluster).and_then(|m| m.get(*id));
                if let Err(r) = may_touch(existing, caller) {
                    return Some(r);
                }
                existing.map_or(0, |r| r.lease)
            };
            let key = store.key(&format!("reg/{cluster}/{id}"));
            match store
                .exec(move |e| {
                    let r = e.delete(&key)?;
                    if lease != 0 {
                        e.revoke(lease)?;
                    }
                    Ok(r)
                })
                .await
            {
                Ok((_, false)) => Response::error(404, "no such registration"),
                Ok((rev, true)) => {
                    seen(plane, store, rev).await;
                    versioned(store, rev)
                }
                Err(e) => unavailable(&e),
            }
        }
        ("POST", ["v1", "ca", "rotate"]) => {
            let (value, rev) = {
                let st = plane.st.borrow();
                let mut ca = match Ca::from_json(&st.ca.to_json(), &st.mesh.trust_domain) {
                    Ok(ca) => ca,
                    Err(e) => return Some(Response::error(500, &e.to_string())),
                };
                if let Err(e) = ca.rotate(&st.mesh.trust_domain) {
                    return Some(Response::error(409, &e.to_string()));
                }
                (
                    json!({ "ca": ca.to_json() }).to_string(),
                    store.ca_rev.get(),
                )
            };
            let key = store.key("ca");
            match store
                .exec(move |e| e.put_if(&key, rev, value.as_bytes(), 0))
                .await
            {
                Ok((true, rev)) => {
                    seen(plane, store, rev).await;
                    tracing::info!("mesh CA rotation started");
                    versioned(store, rev)
                }
                Ok((false, _)) => Response::error(409, "the mesh CA changed meanwhile; try again"),
                Err(e) => unavailable(&e),
            }
        }
        ("POST", ["v1", "nodes", node, "report"]) => {
            let r = crate::mesh::server::report(&mut plane.st.borrow_mut(), node, &req.body);
            if r.status == 200 {
                note_node(plane, store, node, true);
            }
            r
        }
        _ => return None,
    })
}

/// `PUT`/`DELETE /v1/config[/pointer]`: checked here against the desired state this replica
/// has, written only if the store's is still that one.
pub(super) async fn edit_config(
    plane: &Plane,
    store: &Store,
    req: &Request,
    pointer: &str,
) -> Response {
    let (value, mesh_rev) = {
        let st = plane.st.borrow();
        let Some(expected) = req.if_match.as_deref() else {
            return if_match_required();
        };
        let mesh_rev = store.mesh_rev.get();
        // Any version read since the desired state last changed is good.
        let current = store.version(mesh_rev);
        if expected != "*" && expected.parse::<u64>().ok().is_none_or(|v| v < current) {
            return conflict(&st);
        }
        let mut doc = st.mesh.doc.clone();
        if let Err(r) = apply_edit(&mut doc, req, pointer) {
            return r;
        }
        let files = crate::mesh::model::api_may_not_name_files(&st.mesh.doc, &doc);
        if !files.is_empty() {
            return invalid(&files);
        }
        match Mesh::check(doc) {
            Ok(m) => {
                let text = mesh_value(&m, st.file_hash);
                *store.checked.borrow_mut() = Some((text.clone().into_bytes(), m));
                (text, mesh_rev)
            }
            Err(errs) => return invalid(&errs),
        }
    };
    let key = store.key("mesh");
    match store
        .exec(move |e| e.put_if(&key, mesh_rev, value.as_bytes(), 0))
        .await
    {
        Ok((true, rev)) => {
            seen(plane, store, rev).await;
            tracing::info!(
                version = store.version(rev),
                "desired state changed through the API"
            );
            versioned(store, rev)
        }
        // Another replica changed it first (at `rev`); this one may not have seen that yet.
        Ok((false, rev)) => {
            seen(plane, store, rev).await;
            conflict(&plane.st.borrow())
        }
        Err(e) => unavailable(&e),
    }
}

/// `PUT /v1/clusters/{cluster}/endpoints/{id}`: a heartbeat renews the lease; a new or changed
/// registration is written under a new lease of its TTL.
pub(super) async fn register(
    plane: &Plane,
    store: &Store,
    cluster: &str,
    id: &str,
    body: &[u8],
    (caller, peer): (&Caller, std::net::IpAddr),
) -> Response {
    let (value, ttl, old_lease, heartbeat) = {
        let st = plane.st.borrow();
        let mut reg = match checked_registration(&st, cluster, id, body) {
            Ok(r) => r,
            Err(r) => return r,
        };
        if let Err(r) = crate::mesh::server::may_register(&st, &reg, cluster, id, caller, peer) {
            return r;
        }
        let old = st.registrations.get(cluster).and_then(|m| m.get(id));
        if let Err(r) = may_touch(old, caller) {
            return r;
        }
        reg.owner = owner_of(caller).or_else(|| old.and_then(|o| o.owner.clone()));
        let old_lease = old.map_or(0, |o| o.lease);
        let heartbeat = old.is_some_and(|o| {
            o.ep == reg.ep && o.ttl == reg.ttl && o.owner == reg.owner && o.lease != 0
        });
        (reg.to_json().to_string(), reg.ttl, old_lease, heartbeat)
    };
    let key = store.key(&format!("reg/{cluster}/{id}"));
    let ttl_secs = ttl.as_secs_f64().ceil() as i64;
    let r = store
        .exec(move |e| {
            if heartbeat && e.keepalive(old_lease)? > 0 {
                return Ok(None);
            }
            let lease = e.grant(ttl_secs)?;
            let rev = e.put(&key, value.as_bytes(), lease)?;
            if old_lease != 0 {
                let _ = e.revoke(old_lease);
            }
            Ok(Some(rev))
        })
        .await;
    let rev = match r {
        Ok(rev) => rev,
        Err(e) => return unavailable(&e),
    };
    let version = match rev {
        Some(rev) => {
            seen(plane, store, rev).await;
            store.version(rev)
        }
        None => {
            let mut st = plane.st.borrow_mut();
            if let Some(r) = st
                .registrations
                .get_mut(cluster)
                .and_then(|m| m.get_mut(id))
            {
                r.deadline = Instant::now() + r.ttl;
            }
            st.version
        }
    };
    registered(cluster, id, ttl, version)
}

/// `POST /v1/nodes/{node}/certificate` with a store: a bootstrap token is spent in the store
/// first, by a transaction on the node's `spent` record as this replica saw it, so that two
/// replicas given the same token at once issue one certificate between them.
pub(super) async fn certificate(
    plane: &Plane,
    store: &Store,
    node: &str,
    req: &Request,
    caller: &Caller,
) -> Response {
    // A lost race means another replica wrote the record: decide again on what it wrote.
    for _ in 0..3 {
        let decision = identity::decide(&plane.st.borrow(), node, req, caller);
        let (public_key, spend) = match decision {
            identity::Decision::Refuse(r) => return r,
            identity::Decision::Issue { public_key, spend } => (public_key, spend),
        };
        let Some(s) = spend else {
            return identity::issue(&mut plane.st.borrow_mut(), node, &public_key);
        };
        let seen_rev = plane.st.borrow().spent.get(node).map_or(0, |s| s.rev);
        let key = store.key(&format!("spent/{node}"));
        let value = s.to_json().to_string();
        match store
            .exec(move |e| e.put_if(&key, seen_rev, value.as_bytes(), 0))
            .await
        {
            Ok((true, rev)) => {
                seen(plane, store, rev).await;
                return identity::issue(&mut plane.st.borrow_mut(), node, &public_key);
            }
            Ok((false, rev)) => seen(plane, store, rev).await,
            Err(e) => return unavailable(&e),
        }
    }
    Response::error(503, "the node's token record keeps changing; try again")
}
