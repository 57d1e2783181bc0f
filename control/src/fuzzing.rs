//! The bodies of the control plane's fuzz targets in `fuzz/` (built by cargo-fuzz with
//! `--cfg fuzzing`), also replayed over the kept corpus by this crate's tests.

/// Config files: decoding never panics; a config that parses also compiles.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::Config::parse(text) {
        Ok(c) => {
            let binds: Vec<_> = c.listeners.iter().map(|l| l.bind).collect();
            crate::compile::compile(&c, 1, &binds).expect("a checked config compiles");
            let _ = c.to_json();
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
}

/// The control plane's API bodies and mesh files. The first byte picks: a registration body, a
/// mesh file, an edit (`pointer\nJSON`) of a valid mesh, the etcd watch stream, or what a node
/// sends (a stats report, tap events). Nothing panics, and whatever the control plane accepts
/// renders into node configs that the proxy accepts too.
pub fn control_api(data: &[u8]) {
    use crate::mesh::model::Mesh;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    const BASE: &str = "clusters:\n  - { name: web, endpoints: [ { addr: 127.0.0.1:8081 }, { dns: \"localhost:8082\" } ] }\n  - { name: api, endpoints: [] }\npolicies: [ { name: p, action: allow, match: { method: GET } } ]\nnodes:\n  edge-1:\n    listeners:\n      - { name: edge, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, split: [ { cluster: web, weight: 1 }, { cluster: api, weight: 1 } ] } ] }\n";
    let base = || {
        let Ok(base) = Mesh::parse(BASE) else {
            panic!("the base mesh is valid");
        };
        base
    };
    match pick % 5 {
        0 => {
            let _ = crate::mesh::server::parse_registration(rest);
        }
        3 => etcd_watch_stream(rest),
        4 => crate::mesh::server::node_input(&base(), rest),
        1 => {
            if let Ok(Ok(m)) = std::str::from_utf8(rest).map(Mesh::parse) {
                nodes_render(&m);
            }
        }
        _ => {
            let base = base();
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let Ok(pointer) = std::str::from_utf8(&rest[..split]) else {
                return;
            };
            let req = crate::http::Request {
                method: "PUT".into(),
                body: rest.get(split + 1..).unwrap_or_default().to_vec(),
                ..Default::default()
            };
            let mut doc = base.doc.clone();
            if crate::mesh::server::apply_edit(&mut doc, &req, pointer).is_ok() {
                if let Ok(m) = Mesh::check(doc) {
                    nodes_render(&m);
                }
            }
        }
    }
}

/// The etcd watch stream's decoder: the same answer whether the bytes come at once or in two
/// pieces.
fn etcd_watch_stream(data: &[u8]) {
    use crate::mesh::etcd::{EtcdError, Event, WatchStream};
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let summary = |r: Result<Vec<Vec<Event>>, EtcdError>| match r {
        Ok(batches) => Ok(batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|e| match e {
                        Event::Put(kv) => (true, kv.key.clone(), kv.mod_revision),
                        Event::Delete(kv) => (false, kv.key.clone(), kv.mod_revision),
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()),
        Err(_) => Err(()),
    };
    let whole = summary(WatchStream::default().feed(body));
    let at = usize::from(cut).min(body.len());
    let mut split = WatchStream::default();
    let pieces = match split.feed(&body[..at]) {
        Ok(mut first) => split.feed(&body[at..]).map(|rest| {
            first.extend(rest);
            first
        }),
        Err(e) => Err(e),
    };
    let pieces = summary(pieces);
    // An error ends the stream where it is found; before that, both saw the same batches.
    if whole.is_ok() && pieces.is_ok() {
        assert_eq!(
            whole, pieces,
            "the decoding depends on how the bytes arrive"
        );
    }
}

fn nodes_render(m: &crate::mesh::model::Mesh) {
    use crate::mesh::model::{render_node, render_static_clusters};
    let clusters = render_static_clusters(m);
    for (name, n) in &m.nodes {
        let text = render_node(m, name, n, &clusters);
        if let Err(errs) = crate::config::Config::parse(&text) {
            panic!("node {name}: accepted by the control plane, refused by the proxy: {errs:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every input kept in `fuzz/corpus/` replayed through the targets.

    use std::path::Path;

    fn replay(target: &str, f: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| f(&data));
            assert!(result.is_ok(), "{} fails on {}", target, path.display());
            n += 1;
        }
        assert!(n > 0, "no corpus for {target}");
    }

    #[test]
    fn config_corpus() {
        replay("config", super::config);
    }

    #[test]
    fn control_api_corpus() {
        replay("control_api", super::control_api);
    }
}
