//! What the leader replica does: move CA rotations on, write what DNS said, and write the
//! mesh file read at start.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::json;

use crate::mesh::ca::Ca;
use crate::mesh::model::Mesh;
use crate::mesh::server::{DnsError, Plane, State, unix_ms};

use super::*;

/// The leader's part of the tick: moves a CA rotation on, or starts the one to an operator's
/// CA the desired state names anew, through the store.
pub(in crate::mesh::server) fn advance_ca(st: &State, store: &Store) {
    let operator = st.mesh.ca.operator.as_ref();
    let adopt = operator.is_some_and(|op| {
        st.ca.next.is_none()
            && !st
                .ca
                .authorities()
                .take(2)
                .any(|a| a.fingerprint == op.fingerprint)
    });
    // Nothing to move on without a rotation (and restoring the CA to try costs signatures).
    let rotating = st.ca.next.is_some() || st.ca.previous.is_some() || adopt;
    if !rotating || !store.leader() || store.ca_pending.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut ca) = Ca::from_json(&st.ca.to_json(), &st.mesh.trust_domain) else {
        return;
    };
    let all = st.all_have(st.rotation_version);
    let moved = match ca.adopt(operator) {
        Ok(true) => true,
        Ok(false) => ca.advance(all, st.mesh.ca.rotation_grace, st.mesh.ca.cert_ttl),
        Err(e) => {
            tracing::error!(error = %e, "cannot rotate to the operator's CA");
            false
        }
    };
    if !moved {
        return;
    }
    store.ca_pending.store(true, Ordering::Relaxed);
    let value = json!({ "ca": ca.to_json() }).to_string();
    let (key, rev, pending) = (
        store.key("ca"),
        store.ca_rev.get(),
        store.ca_pending.clone(),
    );
    store.submit(move |e| {
        match e.put_if(&key, rev, value.as_bytes(), 0) {
            Ok((true, _)) => tracing::info!("mesh CA rotation moved on"),
            Ok((false, _)) => {}
            Err(err) => tracing::warn!(error = %err, "store: cannot move the CA rotation on"),
        }
        // Whatever the result: the next ticks see the outcome through the watch.
        pending.store(false, Ordering::Relaxed);
    });
}

/// A replica that has just come to lead writes the DNS answers it has (the leader before it
/// may have been gone for a while).
pub(in crate::mesh::server) fn took_lead(st: &State, store: &Store) {
    let leads = store.leader();
    if leads && !store.led_here.get() {
        let known: Vec<_> = store
            .resolved
            .borrow()
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (name, result) in known {
            resolved(st, store, &name, &result);
        }
    }
    store.led_here.set(leads);
}

/// The leader writes what DNS said when it differs from the store's.
pub(in crate::mesh::server) fn resolved(
    st: &State,
    store: &Store,
    name: &str,
    result: &Result<Vec<std::net::SocketAddr>, DnsError>,
) {
    // Every replica resolves and keeps its last answers, for when it comes to lead.
    store
        .resolved
        .borrow_mut()
        .insert(name.to_string(), result.clone());
    if !store.leader() {
        return;
    }
    let known = st.dns.get(name);
    let (addrs, failing) = match result {
        Ok(a) => (a.clone(), false),
        // A failure keeps the last addresses.
        Err(_) => (known.map(|r| r.addrs.clone()).unwrap_or_default(), true),
    };
    // Only news is written: the store has it until the next interval's answer.
    if known.is_some_and(|r| r.addrs == addrs && r.error.is_some() == failing) {
        return;
    }
    let value = json!({
        "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "error": result.as_ref().err().map(ToString::to_string),
        "at_ms": unix_ms(SystemTime::now()),
    })
    .to_string();
    let key = store.key(&format!("dns/{name}"));
    store.submit(move |e| {
        if let Err(err) = e.put(&key, value.as_bytes(), 0) {
            tracing::warn!(error = %err, "store: cannot write a DNS result");
        }
    });
}

/// A replica's mesh file changed while it runs: the file is the new desired state, for every
/// replica (as a file edit wins over the API without a store).
/// A write that fails is tried again at the next check of the file.
pub(in crate::mesh::server) async fn write_mesh(
    plane: std::rc::Rc<Plane>,
    mesh: Mesh,
    file_hash: u64,
) {
    let Some(store) = &plane.store else {
        return;
    };
    store.mesh_writing.set(true);
    let value = mesh_value(&mesh, file_hash);
    let key = store.key("mesh");
    let r = store.exec(move |e| e.put(&key, value.as_bytes(), 0)).await;
    store.mesh_writing.set(false);
    match r {
        Ok(_) => tracing::info!("mesh file written to the store"),
        Err(err) => {
            tracing::error!(error = %err, "store: cannot write the mesh file's state; will again");
            let mut st = plane.st.borrow_mut();
            st.file_hash = 0;
            st.file_stamp = None;
        }
    }
}
