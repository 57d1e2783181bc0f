//! The mesh file's checks and rendering.

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
