//! Requests are checked the way the upstream reads them: every path is normalized (RFC 3986
//! section 6, slashes merged) before policies and routing, and the normalized path is what the
//! upstream gets; what cannot be normalized safely is refused. One table of vectors, run over
//! HTTP/1.1 and over HTTP/2 (`:path` and `:authority` written by hand, so that nothing is
//! cleaned up on the way).

use std::net::SocketAddr;

use ringmesh_tests::rawh2::{self, Outcome};
use ringmesh_tests::*;

/// A proxy that denies `/admin...`, `/secret...` (any case) and the host `admin.example`, in
/// front of an upstream that answers with the target it received.
fn guarded(extra: &str) -> (TestProxy, Upstream) {
    let up = Upstream::http(|req| Resp::new(200, req.path.clone()));
    let config = format!(
        "admin: 127.0.0.1:0
policies:
  - {{ name: no-admin, action: deny, match: {{ path_prefix: /admin }} }}
  - {{ name: no-secret, action: deny, match: {{ path_prefix: /secret, ignore_case: true }} }}
  - {{ name: no-admin-host, action: deny, match: {{ host: admin.example }} }}
listeners:
  - name: edge
    bind: 127.0.0.1:0
{extra}    routes: [ {{ match: {{ path_prefix: / }}, cluster: up }} ]
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
        up.addr
    );
    (TestProxy::start(&config, 1), up)
}

/// What a request should get: denied, refused as a path, or served with this upstream target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Denied,
    BadPath,
    Served(&'static str),
}

const PATHS: &[(&str, Want)] = &[
    ("/admin", Want::Denied),
    ("/admin/users", Want::Denied),
    ("/./admin", Want::Denied),
    ("//admin", Want::Denied),
    ("///admin//x", Want::Denied),
    ("/x/../admin", Want::Denied),
    ("/x/y/../../admin", Want::Denied),
    ("/../admin", Want::Denied),
    ("/%61dmin", Want::Denied),
    ("/%2e/admin", Want::Denied),
    ("/%2E%2E/admin", Want::Denied),
    ("/.%2e/admin", Want::Denied),
    ("/SECRET/key", Want::Denied),
    ("/sEcReT", Want::Denied),
    ("/;/admin", Want::BadPath),
    ("/admin%3bx", Want::BadPath),
    ("/..;/admin", Want::BadPath),
    ("/admin;x", Want::BadPath),
    ("/%2fadmin", Want::BadPath),
    ("/x%2F..%2Fadmin", Want::BadPath),
    ("/%5cadmin", Want::BadPath),
    ("/\\admin", Want::BadPath),
    ("/x#/../admin", Want::BadPath),
    ("/%zz", Want::BadPath),
    // Paths are case-sensitive unless the condition says otherwise.
    ("/ADMIN", Want::Served("/ADMIN")),
    ("/administrator/../public", Want::Served("/public")),
    ("/public/./a/../b?q=/../admin#", Want::BadPath),
    (
        "/public/./a/../b?q=/../admin",
        Want::Served("/public/b?q=/../admin"),
    ),
    ("/%7euser/%41?x=%2F", Want::Served("/~user/A?x=%2F")),
    ("/caf%c3%a9", Want::Served("/caf%C3%A9")),
    ("/a//b/", Want::Served("/a/b/")),
];

const HOSTS: &[(&str, bool)] = &[
    ("admin.example", true),
    ("admin.example.", true),
    ("admin.example.:80", true),
    ("ADMIN.Example:8080", true),
    ("admin.example.com", false),
    ("xadmin.example", false),
];

fn check_http1(edge: SocketAddr, host: &str, target: &str) -> (u16, Option<String>, String) {
    let r = one_shot(
        edge,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    (
        r.status,
        r.header("ringmesh-error").map(str::to_string),
        r.text(),
    )
}

fn expect(want: Want, status: u16, error: Option<&str>, body: &str, what: &str) {
    match want {
        Want::Denied => assert_eq!((status, error), (403, Some("denied")), "{what}"),
        Want::BadPath => assert_eq!((status, error), (400, Some("bad-path")), "{what}"),
        Want::Served(p) => assert_eq!((status, body), (200, p), "{what}"),
    }
}

#[test]
fn every_path_trick_is_normalized_or_refused_over_http1() {
    let (p, up) = guarded("");
    for (target, want) in PATHS {
        let (status, error, body) = check_http1(p.edge(), "a.example", target);
        expect(
            *want,
            status,
            error.as_deref(),
            &body,
            &format!("HTTP/1.1 {target}"),
        );
    }
    // Absolute form: the path inside it is normalized too, and its host is the one matched.
    for (target, want) in [
        ("http://a//admin", Want::Denied),
        ("http://a/x/../admin", Want::Denied),
        ("http://admin.example./x", Want::Denied),
        ("http://a/public/../ok", Want::Served("/ok")),
        // No path is `/`: matched, and served, as `/`.
        ("http://a", Want::Served("/")),
    ] {
        let (status, error, body) = check_http1(p.edge(), "b", target);
        expect(
            want,
            status,
            error.as_deref(),
            &body,
            &format!("HTTP/1.1 {target}"),
        );
    }
    for (host, denied) in HOSTS {
        let (status, _, _) = check_http1(p.edge(), host, "/x");
        assert_eq!(status == 403, *denied, "host {host}: {status}");
    }
    // Only what the policies allowed reached the upstream, each in its normalized form.
    let served: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert!(
        served.iter().all(|p| !p.starts_with("/admin")),
        "{served:?}"
    );
}

#[test]
fn every_path_trick_is_normalized_or_refused_over_http2() {
    let (p, up) = guarded("");
    let mut c = rawh2::Conn::open(p.edge());
    let mut id = 1;
    for (target, want) in PATHS {
        assert!(c.send(&rawh2::frame(
            rawh2::HEADERS,
            rawh2::END_STREAM | rawh2::END_HEADERS,
            id,
            &rawh2::get(b"a.example", target.as_bytes()),
        )));
        let outcome = c.outcome(id);
        match want {
            Want::Served(_) => assert_eq!(outcome, Outcome::Status(200), "HTTP/2 {target}"),
            Want::Denied => assert_eq!(outcome, Outcome::Status(403), "HTTP/2 {target}"),
            Want::BadPath => assert_eq!(outcome, Outcome::Status(400), "HTTP/2 {target}"),
        }
        id += 2;
    }
    for (host, denied) in HOSTS {
        assert!(c.send(&rawh2::frame(
            rawh2::HEADERS,
            rawh2::END_STREAM | rawh2::END_HEADERS,
            id,
            &rawh2::get(host.as_bytes(), b"/x"),
        )));
        let outcome = c.outcome(id);
        let want = if *denied { 403 } else { 200 };
        assert_eq!(outcome, Outcome::Status(want), "HTTP/2 host {host}");
        id += 2;
    }
    // The upstream got exactly the normalized targets of the served vectors, in order.
    let served: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    let expected: Vec<&str> = PATHS
        .iter()
        .filter_map(|(_, w)| match w {
            Want::Served(p) => Some(*p),
            _ => None,
        })
        .chain(HOSTS.iter().filter(|(_, d)| !d).map(|_| "/x"))
        .collect();
    assert_eq!(served, expected);
}

#[test]
fn a_listener_may_keep_encoded_slashes_semicolons_and_repeated_slashes() {
    let (p, _up) =
        guarded("    paths: { merge_slashes: false, escaped_slashes: keep, semicolons: keep }\n");
    for (target, want) in [
        ("/a%2fb", Want::Served("/a%2Fb")),
        ("//x//y", Want::Served("//x//y")),
        ("/a;jsessionid=1/b", Want::Served("/a;jsessionid=1/b")),
        // Segments that mean something else before their `;` stay refused.
        ("/..;/admin", Want::BadPath),
        ("/;/admin", Want::BadPath),
        // Dot segments are still removed.
        ("/x/../admin", Want::Denied),
        ("/\\admin", Want::BadPath),
    ] {
        let (status, error, body) = check_http1(p.edge(), "a.example", target);
        expect(want, status, error.as_deref(), &body, target);
    }
    let (p, _up) = guarded("    paths: { escaped_slashes: unescape }\n");
    for (target, want) in [
        ("/x%2F..%2Fadmin", Want::Denied),
        ("/a%2fb", Want::Served("/a/b")),
        ("/a\\b", Want::Served("/a/b")),
    ] {
        let (status, error, body) = check_http1(p.edge(), "a.example", target);
        expect(want, status, error.as_deref(), &body, target);
    }
}

#[test]
fn a_condition_that_no_normalized_path_can_meet_is_a_config_error() {
    let errors = ringmesh_control::config::Config::parse(
        "listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes: [ { match: { path_prefix: /a/../b }, cluster: up } ]
clusters: [ { name: up, endpoints: [ { addr: 127.0.0.1:1 } ] } ]
",
    )
    .expect_err("refused");
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("listeners[0].routes[0].match.path_prefix") && text.contains("`/b`"),
        "{text}"
    );
}

#[test]
fn an_absolute_form_target_without_a_path_is_matched_as_the_slash_it_is_sent_as() {
    let up = Upstream::http(|req| Resp::new(200, req.path.clone()));
    let p = TestProxy::start(
        &format!(
            "admin: 127.0.0.1:0
policies:
  - {{ name: no-root, action: deny, match: {{ path: / }} }}
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes: [ {{ match: {{ path: /elsewhere }}, cluster: up }} ]
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
            up.addr
        ),
        1,
    );
    let (status, error, _) = check_http1(p.edge(), "b", "http://a");
    assert_eq!((status, error.as_deref()), (403, Some("denied")));
    assert_eq!(up.accepted(), 0);
}
