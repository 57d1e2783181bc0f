//! The API's decisions on a state without sockets: registrations (who may register what, where,
//! how many), edits of the desired state (versions, JSON pointers, every error at once, nothing
//! changed on refusal), and what a change renders into the nodes' snapshots.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::super::model::Mesh;
use super::auth::Caller;
use super::desired::{edit_config, get_config};
use super::registry::{MAX_PER_NODE, deregister, register};
use super::*;
use crate::http::{Request, Response};

const MESH: &str = r#"
trust_domain: mesh.local
state_file: off
clusters:
  - name: back
    servers: [ "spiffe://mesh.local/ns/default/sa/back" ]
    endpoints: []
  - name: web
    endpoints: [ { addr: 127.0.0.1:8081 } ]
nodes:
  back-1:
    identity: { ns: default, sa: back }
    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    listeners:
      - { name: in, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: web } ] }
  front-1:
    identity: { ns: default, sa: front }
    token_sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
    listeners:
      - { name: out, bind: 127.0.0.1:0, routes: [ { match: { path_prefix: / }, cluster: back } ] }
"#;

fn state() -> State {
    let mesh = Mesh::parse(MESH).expect("the test mesh is valid");
    State::new(mesh, MESH, MeshSource::Text(MESH.into()), None).expect("a state")
}

fn node(name: &str) -> Caller {
    Caller::Node(name.into())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn body(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn reg(addr: &str) -> Vec<u8> {
    json!({ "addr": addr, "ttl": "30s" })
        .to_string()
        .into_bytes()
}

/// What node `name` is served, as JSON.
fn served(st: &State, name: &str) -> Value {
    serde_json::from_str(&st.nodes[name].body).unwrap()
}

#[test]
fn a_node_registers_itself_and_the_clients_of_the_cluster_see_it() {
    let mut st = state();
    let before = st.version;
    let (r, changed) = register(
        &mut st,
        "back",
        "b1",
        &reg("10.1.2.3:8080"),
        (&node("back-1"), ip("10.1.2.3")),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(changed);
    assert!(st.version > before);
    assert_eq!(body(&r)["ttl"], "30s");
    // front-1 routes to `back`: its snapshot now holds the instance; back-1's does not.
    assert!(served(&st, "front-1").to_string().contains("10.1.2.3:8080"));
    assert!(!served(&st, "back-1").to_string().contains("10.1.2.3:8080"));
    // A heartbeat changes nothing served.
    let version = st.version;
    let (r, changed) = register(
        &mut st,
        "back",
        "b1",
        &reg("10.1.2.3:8080"),
        (&node("back-1"), ip("10.1.2.3")),
    );
    assert_eq!(r.status, 200);
    assert!(!changed);
    assert_eq!(st.version, version);
}

#[test]
fn a_node_registers_only_at_the_address_it_calls_from() {
    let mut st = state();
    // Another proxy's loopback, or a metadata service: refused, nothing kept.
    for addr in ["127.0.0.1:8080", "169.254.169.254:80", "10.1.2.4:8080"] {
        let (r, changed) = register(
            &mut st,
            "back",
            "b1",
            &reg(addr),
            (&node("back-1"), ip("10.1.2.3")),
        );
        assert_eq!(r.status, 403, "{addr}");
        assert_eq!(r.error_kind, Some("not-own-address"));
        assert!(!changed);
    }
    assert!(st.registrations.get("back").is_none_or(|m| m.is_empty()));
    // An IPv4 peer seen as IPv4-mapped IPv6 is the same address.
    let (r, _) = register(
        &mut st,
        "back",
        "b1",
        &reg("10.1.2.3:8080"),
        (&node("back-1"), ip("::ffff:10.1.2.3")),
    );
    assert_eq!(r.status, 200);
    // An admin registers anything, anywhere.
    let (r, _) = register(
        &mut st,
        "back",
        "b2",
        &reg("10.9.9.9:80"),
        (&Caller::Admin("alice".into()), ip("127.0.0.1")),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn only_the_node_that_registered_an_instance_touches_it() {
    let mut st = state();
    let (r, _) = register(
        &mut st,
        "back",
        "b1",
        &reg("10.1.2.3:8080"),
        (&node("back-1"), ip("10.1.2.3")),
    );
    assert_eq!(r.status, 200);
    // Another node may not move it to itself nor remove it.
    let (r, _) = register(
        &mut st,
        "back",
        "b1",
        &reg("10.7.7.7:8080"),
        (&node("front-1"), ip("10.7.7.7")),
    );
    assert_eq!((r.status, r.error_kind), (403, Some("not-the-owner")));
    let (r, removed) = deregister(&mut st, "back", "b1", &node("front-1"));
    assert_eq!(
        (r.status, r.error_kind, removed),
        (403, Some("not-the-owner"), false)
    );
    assert_eq!(
        st.registrations["back"]["b1"].ep.addr.to_string(),
        "10.1.2.3:8080"
    );
    // An admin's heartbeat keeps it the node's; the node removes it.
    let (r, _) = register(
        &mut st,
        "back",
        "b1",
        &reg("10.1.2.3:8080"),
        (&Caller::Admin("alice".into()), ip("127.0.0.1")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        st.registrations["back"]["b1"].owner.as_deref(),
        Some("back-1")
    );
    let (r, removed) = deregister(&mut st, "back", "b1", &node("back-1"));
    assert_eq!((r.status, removed), (200, true));
    assert!(!served(&st, "front-1").to_string().contains("10.1.2.3"));
    let (r, _) = deregister(&mut st, "back", "b1", &node("back-1"));
    assert_eq!(r.status, 404);
}

#[test]
fn a_node_holds_a_bounded_number_of_registrations() {
    let mut st = state();
    for i in 0..MAX_PER_NODE {
        let (r, _) = register(
            &mut st,
            "back",
            &format!("i{i}"),
            &reg(&format!("10.1.2.3:{}", 1000 + i)),
            (&node("back-1"), ip("10.1.2.3")),
        );
        assert_eq!(r.status, 200, "registration {i}");
    }
    let (r, _) = register(
        &mut st,
        "back",
        "one-more",
        &reg("10.1.2.3:9999"),
        (&node("back-1"), ip("10.1.2.3")),
    );
    assert_eq!((r.status, r.error_kind), (403, Some("quota")));
    // Heartbeats of what it holds still pass.
    let (r, _) = register(
        &mut st,
        "back",
        "i0",
        &reg("10.1.2.3:1000"),
        (&node("back-1"), ip("10.1.2.3")),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_bad_registration_is_refused_with_its_reason_and_nothing_kept() {
    let mut st = state();
    let admin = Caller::Admin("alice".into());
    let cases: &[(&str, &str, &[u8], u16)] = &[
        ("nope", "a", b"{\"addr\":\"10.0.0.1:80\"}", 404),
        ("back", "", b"{\"addr\":\"10.0.0.1:80\"}", 422),
        ("back", "a\nb", b"{\"addr\":\"10.0.0.1:80\"}", 422),
        ("back", "a", b"{not json", 400),
        ("back", "a", b"{\"addr\":\"not an address\"}", 422),
        ("back", "a", b"{\"addr\":\"10.0.0.1:80\",\"bogus\":1}", 422),
        ("back", "a", b"{\"addr\":\"10.0.0.1:0\"}", 422),
    ];
    let version = st.version;
    for (cluster, id, b, status) in cases {
        let (r, changed) = register(&mut st, cluster, id, b, (&admin, ip("127.0.0.1")));
        assert_eq!(
            r.status,
            *status,
            "{cluster}/{id:?} {}: {}",
            String::from_utf8_lossy(b),
            String::from_utf8_lossy(&r.body)
        );
        assert!(!changed);
    }
    assert_eq!(st.version, version);
    assert!(st.registrations.values().all(|m| m.is_empty()));
}

fn edit(method: &str, if_match: Option<&str>, b: &str) -> Request {
    Request {
        method: method.into(),
        if_match: if_match.map(Into::into),
        body: b.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[test]
fn an_edit_needs_the_version_it_was_made_against() {
    let mut st = state();
    let v = st.version.to_string();
    let r = edit_config(&mut st, &edit("PUT", None, "\"deny\""), "/default_policy");
    assert_eq!(r.status, 428);
    let r = edit_config(
        &mut st,
        &edit("PUT", Some("1"), "\"deny\""),
        "/default_policy",
    );
    assert_eq!(r.status, 409);
    assert_eq!(body(&r)["version"], st.version);
    let r = edit_config(
        &mut st,
        &edit("PUT", Some(&v), "\"deny\""),
        "/default_policy",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.etag, Some(st.version));
    assert!(served(&st, "front-1").to_string().contains("deny"));
    // The same version again is now stale.
    let r = edit_config(
        &mut st,
        &edit("PUT", Some(&v), "\"allow\""),
        "/default_policy",
    );
    assert_eq!(r.status, 409);
    let got = get_config(&st, "/default_policy");
    assert_eq!(body(&got)["value"], "deny");
}

#[test]
fn a_refused_edit_names_every_error_and_changes_nothing() {
    let mut st = state();
    let before = st.mesh.doc.clone();
    let version = st.version;
    let v = version.to_string();
    // A route to a cluster that does not exist, and a listener without a name.
    let listeners = r#"[ { "bind": "127.0.0.1:0", "routes": [ { "match": { "path_prefix": "/" }, "cluster": "ghost" } ] } ]"#;
    let r = edit_config(
        &mut st,
        &edit("PUT", Some(&v), listeners),
        "/nodes/front-1/listeners",
    );
    assert_eq!(r.status, 422);
    let errors = body(&r)["errors"].to_string();
    assert!(errors.contains("ghost"), "{errors}");
    assert!(errors.contains("name"), "{errors}");
    assert_eq!(st.mesh.doc, before);
    assert_eq!(st.version, version);
    // The API never makes a proxy write a file.
    let log = r#"{ "name": "out", "bind": "127.0.0.1:0", "access_log": { "path": "/etc/cron.d/x" }, "routes": [ { "match": { "path_prefix": "/" }, "cluster": "back" } ] }"#;
    let r = edit_config(
        &mut st,
        &edit("PUT", Some(&v), log),
        "/nodes/front-1/listeners/0",
    );
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(st.mesh.doc, before);
    // Nor can the desired state be deleted whole, nor a missing field.
    let r = edit_config(&mut st, &edit("DELETE", Some(&v), ""), "");
    assert_eq!(r.status, 405);
    let r = edit_config(&mut st, &edit("DELETE", Some(&v), ""), "/nodes/nobody");
    assert_eq!(r.status, 404);
    assert_eq!(st.mesh.doc, before);
}

#[test]
fn json_pointers_set_append_and_remove() {
    let mut doc = json!({ "a": { "b/c": 1, "l": [1, 2] } });
    let put = |b: &str| edit("PUT", Some("*"), b);
    let del = || edit("DELETE", Some("*"), "");
    apply_edit(&mut doc, &put("2"), "/a/b~1c").unwrap();
    apply_edit(&mut doc, &put("3"), "/a/l/-").unwrap();
    apply_edit(&mut doc, &put("4"), "/a/l/3").unwrap();
    apply_edit(&mut doc, &put("0"), "/a/l/0").unwrap();
    apply_edit(&mut doc, &del(), "/a/l/1").unwrap();
    assert_eq!(doc, json!({ "a": { "b/c": 2, "l": [0, 3, 4] } }));
    for (req, pointer, status) in [
        (put("1"), "/a/l/9", 404),
        (put("1"), "/a/l/x", 404),
        (put("1"), "/nope/x", 404),
        (put("{"), "/a", 400),
        (del(), "/a/missing", 404),
        (del(), "/a/l/3", 404),
    ] {
        let before = doc.clone();
        let r = apply_edit(&mut doc, &req, pointer).unwrap_err();
        assert_eq!(r.status, status, "{pointer}");
        assert_eq!(
            doc, before,
            "{pointer}: a refused edit changed the document"
        );
    }
}
