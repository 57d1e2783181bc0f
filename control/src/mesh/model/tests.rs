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
    let text = render_node(&m, "edge-1", node, &clusters);
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

/// "Only edge may call back": one allow scoped to back reaches back's config (scoped, without
/// the node list) and no other node's; mesh-wide policies reach every node.
#[test]
fn a_policy_scoped_to_nodes_reaches_those_nodes_only() {
    let mesh = "
trust_domain: example.org
clusters:
  - { name: web, endpoints: [ { addr: 127.0.0.1:8081 } ] }
nodes:
  edge:
    listeners: [ { name: e, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] } ]
  back:
    listeners: [ { name: b, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] } ]
policies:
  - { name: no-admin, action: deny, match: { path_prefix: /admin } }
  - name: only-edge
    action: allow
    applies_to: { nodes: [ back ], ports: [ 8080 ] }
    match: { identity: spiffe://example.org/node/edge }
";
    let m = Mesh::parse(mesh).expect("valid");
    let web = render_cluster(m.cluster("web").expect("web"), |_| None, std::iter::empty());
    let clusters = BTreeMap::from([("web".to_string(), web)]);
    let config = |name: &str| {
        let text = render_node(&m, name, &m.nodes[name], &clusters);
        Config::parse(&text).expect("the proxy accepts what a node is sent")
    };
    let back = config("back");
    assert_eq!(back.policies.len(), 2);
    assert_eq!(back.policies[1].name, "only-edge");
    assert_eq!(back.policies[1].applies_to, Some(vec![8080]));
    let edge = config("edge");
    assert_eq!(edge.policies.len(), 1);
    assert_eq!(edge.policies[0].name, "no-admin");

    let errs = Mesh::parse(&mesh.replace("nodes: [ back ]", "nodes: [ back, nobody ]"))
        .expect_err("unknown node");
    assert!(
        errs.iter()
            .any(|e| e.path == "policies[1].applies_to.nodes[1]" && e.message.contains("nobody")),
        "{errs:?}"
    );
}

/// A node's `sidecar` section renders the listeners and clusters a sidecar needs, which the
/// proxy's own decoder accepts; its errors name the field in the mesh file.
#[test]
fn a_sidecar_section_renders_a_sidecar() {
    let mesh = "
trust_domain: example.org
clusters:
  - { name: back, protocol: mesh, tls: { mesh: spiffe://example.org/ns/default/sa/back }, addresses: [ 10.96.0.10:80 ], endpoints: [ { addr: 10.0.0.2:8080, zone: dc1 } ] }
  - { name: db, endpoints: [ { addr: 10.0.0.9:5432 } ] }
nodes:
  back-1:
    identity: { ns: default, sa: back }
    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    sidecar:
      zone: dc1
      service: back
      inbound: [ { port: 8080 }, { port: 2525, opaque: true }, { port: 9090, mtls: permissive } ]
      opaque_ports: [ 5432 ]
      unknown_destinations: refuse
";
    let m = Mesh::parse(mesh).expect("valid");
    let clusters = render_static_clusters(&m);
    let text = render_node(&m, "back-1", &m.nodes["back-1"], &clusters);
    let c = Config::parse(&text).expect("the proxy accepts a rendered sidecar");
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["outbound", "inbound"]);
    let out = c.listeners[0].outbound.as_ref().expect("outbound");
    assert_eq!(
        (out.opaque_ports.as_slice(), out.passthrough),
        (&[5432][..], false)
    );
    let inbound = c.listeners[1].inbound.as_ref().expect("inbound");
    let ports: Vec<(u16, &str, bool, bool)> = inbound
        .ports
        .iter()
        .map(|p| (p.port, p.cluster.as_str(), p.permissive, p.opaque))
        .collect();
    assert_eq!(
        ports,
        [
            (8080, "inbound-8080", false, false),
            (2525, "inbound-2525", false, true),
            (9090, "inbound-9090", true, false)
        ]
    );
    assert!(
        c.listeners[1]
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some())
    );
    let cluster_names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        cluster_names,
        ["back", "db", "inbound-8080", "inbound-2525", "inbound-9090"]
    );
    let zone = c.zone.expect("zone");
    assert_eq!(
        (zone.name.as_str(), zone.callers.as_deref()),
        ("dc1", Some("back"))
    );

    let bad = mesh
        .replace("service: back", "service: nope")
        .replace("{ port: 2525, opaque: true }", "{ port: 0, opaque: yes }")
        .replace(
            "unknown_destinations: refuse",
            "unknown_destinations: drop\n      extra: 1",
        );
    let errs = Mesh::parse(&bad).expect_err("invalid");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "nodes.back-1.sidecar.service",
        "nodes.back-1.sidecar.inbound[1].port",
        "nodes.back-1.sidecar.unknown_destinations",
        "nodes.back-1.sidecar.extra",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:?}");
    }
    let anonymous = mesh
        .replace("    identity: { ns: default, sa: back }\n", "")
        .replace(
            "    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
            "",
        );
    let errs = Mesh::parse(&anonymous).expect_err("inbound needs an identity");
    assert!(
        errs.iter()
            .any(|e| e.path == "nodes.back-1.sidecar" && e.message.contains("identity")),
        "{errs:?}"
    );
    // The sidecar's ports and names are its own.
    let clash = mesh.replace("{ port: 9090, mtls: permissive }", "{ port: 15001 }")
        + "    listeners: [ { name: inbound, bind: 0.0.0.0:15006, routes: [] } ]\n";
    let errs = Mesh::parse(&clash).expect_err("clashes");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "nodes.back-1.sidecar.inbound[2].port",
        "nodes.back-1.listeners[0].name",
        "nodes.back-1.listeners[0].bind",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:?}");
    }
}

#[test]
fn tracing_reaches_every_node_named_after_it_and_is_checked_once() {
    let m = Mesh::parse(&format!(
        "{MESH}tracing: {{ otlp: \"http://127.0.0.1:4318\", sample: 5% }}\n"
    ))
    .expect("valid");
    let clusters = render_static_clusters(&m);
    let text = render_node(&m, "edge-1", &m.nodes["edge-1"], &clusters);
    let c = Config::parse(&text).expect("the proxy accepts it");
    let t = c.tracing.expect("tracing sent");
    assert_eq!(t.service_name, "edge-1");
    assert!((t.sample - 0.05).abs() < 1e-9);
    let errs = Mesh::parse(&format!("{MESH}tracing: {{ otlp: \"https://c\" }}\n"))
        .expect_err("an https collector is refused");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["tracing.otlp"], "{errs:?}");
}

#[test]
fn a_mirror_and_compression_in_the_mesh_file_reach_the_node() {
    let text = MESH.replace(
        "routes: [ { match: { path_prefix: / }, cluster: web } ]",
        "routes: [ { match: { path_prefix: / }, cluster: web, mirror: { cluster: api, percent: 5 },\n                   compression: { algorithms: [br, gzip] } } ]",
    );
    let m = Mesh::parse(&text).expect("valid");
    let node = &m.nodes["edge-1"];
    // The shadow cluster goes to the node with the primary.
    assert_eq!(node.clusters.iter().collect::<Vec<_>>(), ["api", "web"]);
    let bad = text.replace("cluster: api, percent: 5", "cluster: api, percent: 500");
    let errs = Mesh::parse(&bad).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("routes[0].mirror.percent")),
        "{errs:?}"
    );
}
