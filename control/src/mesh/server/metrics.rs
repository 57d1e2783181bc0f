//! The control plane's own metrics, in Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::*;

pub(super) fn metrics(st: &State, store: Option<&replicated::Store>) -> Vec<u8> {
    let mut o = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, series: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in series {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    gauge(
        "ringmesh_control_version",
        "Version of the desired state.",
        &[(String::new(), st.version as f64)],
    );
    gauge(
        "ringmesh_control_watchers",
        "Watches in progress.",
        &[(String::new(), st.watchers as f64)],
    );
    let stale = st.nodes.values().filter(|n| !n.in_sync()).count();
    gauge(
        "ringmesh_control_nodes",
        "Nodes of the mesh, by whether their proxy applied their current snapshot.",
        &[
            (
                "{state=\"in_sync\"}".into(),
                (st.nodes.len() - stale) as f64,
            ),
            ("{state=\"behind\"}".into(), stale as f64),
        ],
    );
    let statics: usize = st.mesh.clusters.iter().map(|c| c.statics.len()).sum();
    let dns: usize = st.dns.values().map(|r| r.addrs.len()).sum();
    let regs: usize = st.registrations.values().map(BTreeMap::len).sum();
    gauge(
        "ringmesh_control_endpoints",
        "Endpoints known, by source.",
        &[
            ("{source=\"static\"}".into(), statics as f64),
            ("{source=\"dns\"}".into(), dns as f64),
            ("{source=\"registered\"}".into(), regs as f64),
        ],
    );
    let up: Vec<(String, f64)> = st
        .dns
        .iter()
        .map(|(name, r)| {
            (
                format!(
                    "{{source=\"dns\",name=\"{}\"}}",
                    name.replace(['"', '\\', '\n'], "_")
                ),
                if r.error.is_none() { 1.0 } else { 0.0 },
            )
        })
        .chain(std::iter::once((
            "{source=\"file\",name=\"mesh\"}".to_string(),
            if st.file_error.is_none() { 1.0 } else { 0.0 },
        )))
        .chain(store.map(|s| {
            (
                "{source=\"etcd\",name=\"store\"}".to_string(),
                if s.up() { 1.0 } else { 0.0 },
            )
        }))
        .collect();
    gauge(
        "ringmesh_control_source_up",
        "1 when a discovery source's last attempt worked, 0 when it failed (its last good result is kept).",
        &up,
    );
    if let Some(s) = store {
        gauge(
            "ringmesh_control_leader",
            "1 on the replica that resolves DNS and moves CA rotations on for the others.",
            &[(String::new(), if s.leader() { 1.0 } else { 0.0 })],
        );
    }
    o.into_bytes()
}
