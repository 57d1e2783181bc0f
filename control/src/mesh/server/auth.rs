//! Who may call the control plane's API, and what each caller may do.
//!
//! Before anything is read for what it asks, a request must not come from a web page: its
//! `Host` must be one of the API's names or addresses (DNS rebinding), it must carry no
//! `Origin`, and a write's body must be declared JSON (a page's `text/plain` form post is not).
//!
//! Then the caller is one of:
//! - an **admin**: `Authorization: Bearer TOKEN` whose SHA-256 the mesh file lists in
//!   `api.admins`, or a client certificate chaining to the mesh CA whose SPIFFE ID it names
//!   there;
//! - a **node**: a proxy presenting the certificate the mesh CA issued it (mTLS), whose subject
//!   names the node and whose SPIFFE ID is that node's identity in the mesh file. It acts for
//!   that node only;
//! - a **bootstrapping node**: a bearer token that is no admin's, good only on the
//!   certificate call, where it is checked and spent;
//! - **anonymous**: nothing else may be done but `GET /ready`.
//!
//! Refusals are 401 (no credential, or a bad one) or 403 (a credential that does not allow
//! it), with a `ringmesh-error` kind; they are counted by route and reason and logged with the
//! caller's address, a few lines a second at most.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::super::ca::sha256_hex;
use super::super::model::Mesh;
use crate::http::{Request, Response};

/// What a request asks for, as the permission table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route<'a> {
    Ready,
    Metrics,
    ConfigRead,
    ConfigWrite,
    Register {
        cluster: &'a str,
    },
    Deregister,
    Clusters,
    Nodes,
    Watch {
        node: &'a str,
    },
    Report {
        node: &'a str,
    },
    Certificate {
        node: &'a str,
    },
    Ca,
    CaRotate,
    /// The mesh page's files: static, no data (that comes from the API, with a token).
    Page,
    /// The mesh-wide view: golden signals per cluster.
    Stats,
    /// A node's report of its traffic and endpoints.
    NodeStats {
        node: &'a str,
    },
    /// An admin starts, reads or stops a tap through the control plane.
    TapStart {
        node: &'a str,
    },
    TapRead,
    TapStop,
    /// A node waits for taps asked of it, and posts their events.
    TapPoll {
        node: &'a str,
    },
    TapEvents {
        node: &'a str,
    },
    /// A known path with another method.
    WrongMethod,
    Unknown,
}

impl<'a> Route<'a> {
    /// The route of `method` on the path `segments`.
    pub(super) fn of(method: &str, segments: &'a [String]) -> Route<'a> {
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method, &s[..]) {
            ("GET" | "HEAD", ["ready"]) => Route::Ready,
            ("GET", ["metrics"]) => Route::Metrics,
            ("GET", ["v1", "config", ..]) => Route::ConfigRead,
            ("PUT" | "DELETE", ["v1", "config", ..]) => Route::ConfigWrite,
            ("PUT", ["v1", "clusters", _, "endpoints", _]) => Route::Register {
                cluster: &segments[2],
            },
            ("DELETE", ["v1", "clusters", _, "endpoints", _]) => Route::Deregister,
            ("GET", ["v1", "clusters"]) => Route::Clusters,
            ("GET", ["v1", "nodes"]) => Route::Nodes,
            ("GET", ["v1", "watch", _]) => Route::Watch { node: &segments[2] },
            ("POST", ["v1", "nodes", _, "report"]) => Route::Report { node: &segments[2] },
            ("POST", ["v1", "nodes", _, "certificate"]) => {
                Route::Certificate { node: &segments[2] }
            }
            ("GET", ["v1", "ca"]) => Route::Ca,
            ("POST", ["v1", "ca", "rotate"]) => Route::CaRotate,
            ("GET" | "HEAD", [""] | ["mesh.js"] | ["mesh.css"]) => Route::Page,
            ("GET", ["v1", "stats"]) => Route::Stats,
            ("POST", ["v1", "nodes", _, "stats"]) => Route::NodeStats { node: &segments[2] },
            ("POST", ["v1", "nodes", _, "taps"]) => Route::TapStart { node: &segments[2] },
            ("GET", ["v1", "nodes", _, "taps"]) => Route::TapPoll { node: &segments[2] },
            ("POST", ["v1", "nodes", _, "taps", _]) => Route::TapEvents { node: &segments[2] },
            ("GET", ["v1", "taps", _]) => Route::TapRead,
            ("DELETE", ["v1", "taps", _]) => Route::TapStop,
            (
                _,
                [""]
                | ["mesh.js" | "mesh.css"]
                | ["v1", "stats" | "taps", ..]
                | ["ready" | "metrics"]
                | ["v1", "config", ..]
                | ["v1", "clusters", ..]
                | ["v1", "nodes", ..]
                | ["v1", "watch", ..]
                | ["v1", "ca", ..],
            ) => Route::WrongMethod,
            _ => Route::Unknown,
        }
    }

    /// The route as metrics and logs name it (a bounded set).
    pub(super) fn label(&self) -> &'static str {
        match self {
            Route::Ready => "GET /ready",
            Route::Metrics => "GET /metrics",
            Route::ConfigRead => "GET /v1/config",
            Route::ConfigWrite => "PUT /v1/config",
            Route::Register { .. } => "PUT /v1/clusters/{cluster}/endpoints/{id}",
            Route::Deregister => "DELETE /v1/clusters/{cluster}/endpoints/{id}",
            Route::Clusters => "GET /v1/clusters",
            Route::Nodes => "GET /v1/nodes",
            Route::Watch { .. } => "GET /v1/watch/{node}",
            Route::Report { .. } => "POST /v1/nodes/{node}/report",
            Route::Certificate { .. } => "POST /v1/nodes/{node}/certificate",
            Route::Ca => "GET /v1/ca",
            Route::CaRotate => "POST /v1/ca/rotate",
            Route::Page => "GET /",
            Route::Stats => "GET /v1/stats",
            Route::NodeStats { .. } => "POST /v1/nodes/{node}/stats",
            Route::TapStart { .. } => "POST /v1/nodes/{node}/taps",
            Route::TapRead => "GET /v1/taps/{id}",
            Route::TapStop => "DELETE /v1/taps/{id}",
            Route::TapPoll { .. } => "GET /v1/nodes/{node}/taps",
            Route::TapEvents { .. } => "POST /v1/nodes/{node}/taps/{id}",
            Route::WrongMethod | Route::Unknown => "other",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Caller {
    Admin(String),
    Node(String),
    /// A bearer token that is no admin's: a node's bootstrap token, perhaps (checked where the
    /// certificate is issued).
    Bootstrap(String),
    Anonymous,
}

/// A refused request: its status, its `ringmesh-error` kind, and what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl Refusal {
    pub(super) fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind,
            message: message.into(),
        }
    }

    /// `{"error": MESSAGE, "kind": KIND}`, with `ringmesh-error: KIND`.
    pub(super) fn response(&self) -> Response {
        let body = serde_json::json!({ "error": self.message, "kind": self.kind });
        let mut r = Response::json(self.status, body.to_string() + "\n");
        r.error_kind = Some(self.kind);
        r
    }
}

/// What no browser may send: a foreign `Host`, an `Origin`, a write that is not JSON.
pub(super) fn guard(req: &Request, names: &[String], bound: SocketAddr) -> Result<(), Refusal> {
    let host = req.host.as_deref().map(str::as_bytes);
    if !crate::api_guard::host_allowed(host, names, bound) {
        return Err(Refusal::new(
            403,
            "host-not-allowed",
            "the Host is not one of this API's names (api.names) or addresses",
        ));
    }
    if req.origin {
        return Err(Refusal::new(
            403,
            "origin-refused",
            "requests from web pages (with an Origin) are refused",
        ));
    }
    let json = req
        .content_type
        .as_deref()
        .is_some_and(|t| t == "application/json" || t.starts_with("application/json;"));
    if matches!(req.method.as_str(), "PUT" | "POST") && !json {
        return Err(Refusal::new(
            415,
            "not-json",
            "a write's body must be declared Content-Type: application/json",
        ));
    }
    if req.method == "DELETE" && !req.body.is_empty() {
        return Err(Refusal::new(400, "bad-request", "a DELETE has no body"));
    }
    Ok(())
}

/// Digests compared in constant time: how long it takes says nothing of the token.
pub(super) fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who the caller is, from its bearer token or its client certificate (`cert`, verified by
/// the TLS handshake against the mesh's trust bundle).
pub(super) fn identify(
    req: &Request,
    cert: Option<&[u8]>,
    mesh: &Mesh,
    route: &Route<'_>,
) -> Result<Caller, Refusal> {
    if let Some(token) = req.bearer() {
        let digest = sha256_hex(token.as_bytes());
        let admin = mesh.api.admins.iter().find(|a| {
            a.token_sha256
                .as_deref()
                .is_some_and(|h| same_digest(h, &digest))
        });
        if let Some(a) = admin {
            return Ok(Caller::Admin(a.name.clone()));
        }
        if matches!(route, Route::Certificate { .. }) && !token.is_empty() {
            return Ok(Caller::Bootstrap(token.to_string()));
        }
        return Err(Refusal::new(
            401,
            "bad-token",
            "the bearer token is not an admin's",
        ));
    }
    let Some(der) = cert else {
        return Ok(Caller::Anonymous);
    };
    let id = ringmesh_core::tls::spiffe_id(der);
    let node = ringmesh_core::tls::mesh_node(der);
    // A node's certificate is a node's, whatever identity it carries.
    if let (Some(id), None) = (&id, &node) {
        if let Some(a) = mesh
            .api
            .admins
            .iter()
            .find(|a| a.identity.as_deref() == Some(id))
        {
            return Ok(Caller::Admin(a.name.clone()));
        }
    }
    match (node, id) {
        (Some(node), Some(id))
            if mesh
                .nodes
                .get(&node)
                .is_some_and(|n| n.identity.as_deref() == Some(id.as_str())) =>
        {
            Ok(Caller::Node(node))
        }
        _ => Err(Refusal::new(
            403,
            "unknown-certificate",
            "the client certificate is neither an admin's nor one of this mesh's nodes'",
        )),
    }
}

/// Whether `caller` may do `route`. Some checks need the state and are the handler's: a
/// bootstrap token, and whose registration a node deregisters.
pub(super) fn permit(
    route: &Route<'_>,
    caller: &Caller,
    mesh: &Mesh,
    plaintext: bool,
) -> Result<(), Refusal> {
    let unauthenticated = || {
        Refusal::new(
            401,
            "unauthenticated",
            "credentials are required: an admin's bearer token, or a node's certificate",
        )
    };
    let admin_only = || Refusal::new(403, "admin-only", "only an admin (api.admins) may do this");
    let own_node = |node: &str, n: &str| {
        if n == node {
            Ok(())
        } else {
            Err(Refusal::new(
                403,
                "other-node",
                format!("a node acts for itself only: this certificate is node `{n}`'s"),
            ))
        }
    };
    match (route, caller) {
        (Route::Ready | Route::Page | Route::WrongMethod | Route::Unknown, _) => Ok(()),
        (Route::Certificate { .. }, _) if plaintext => Err(Refusal::new(
            403,
            "tls-required",
            "certificates are issued over TLS only (the control plane runs --insecure-plaintext)",
        )),
        (
            Route::Watch { .. }
            | Route::Report { .. }
            | Route::NodeStats { .. }
            | Route::TapPoll { .. }
            | Route::TapEvents { .. },
            Caller::Anonymous,
        ) if plaintext => Ok(()),
        (
            Route::Watch { node }
            | Route::Report { node }
            | Route::NodeStats { node }
            | Route::TapPoll { node }
            | Route::TapEvents { node },
            Caller::Node(n),
        ) => own_node(node, n),
        (Route::Certificate { node }, Caller::Node(n)) => own_node(node, n),
        (Route::Certificate { .. }, Caller::Bootstrap(_)) => Ok(()),
        (
            Route::Watch { .. }
            | Route::Report { .. }
            | Route::Certificate { .. }
            | Route::NodeStats { .. }
            | Route::TapPoll { .. }
            | Route::TapEvents { .. },
            Caller::Admin(_),
        ) => Err(Refusal::new(
            403,
            "nodes-only",
            "only the node's own proxy watches, reports and gets certificates for it",
        )),
        (Route::Ca, Caller::Admin(_) | Caller::Node(_)) => Ok(()),
        (Route::Register { cluster }, Caller::Node(n)) => {
            let id = mesh.nodes.get(n).and_then(|s| s.identity.as_deref());
            let serves = mesh
                .cluster(cluster)
                .is_some_and(|c| id.is_some_and(|id| c.servers.iter().any(|s| s == id)));
            if serves {
                Ok(())
            } else {
                Err(Refusal::new(
                    403,
                    "not-a-server",
                    format!("node `{n}`'s identity is not among cluster `{cluster}`'s servers"),
                ))
            }
        }
        (Route::Deregister, Caller::Node(_)) => Ok(()),
        (_, Caller::Admin(_)) => Ok(()),
        (_, Caller::Node(_)) => Err(admin_only()),
        (_, Caller::Anonymous | Caller::Bootstrap(_)) => Err(unauthenticated()),
    }
}

/// Refusals: counted by route and reason, and logged, a few lines a second at most. Bad
/// tokens are also counted by address: one that keeps guessing is refused for a while before
/// its tokens are even looked at.
#[derive(Default)]
pub(super) struct Refusals {
    counts: RefCell<BTreeMap<(&'static str, &'static str), u64>>,
    /// Bad tokens by address: when the current window started, and how many.
    guesses: RefCell<std::collections::HashMap<std::net::IpAddr, (Instant, u32)>>,
    /// The second being logged, and the lines logged in it.
    window: Cell<Option<(Instant, u32)>>,
    /// Lines not logged since the last one that was.
    suppressed: Cell<u64>,
}

/// Log lines of refusals per second, at most.
const LOG_PER_SECOND: u32 = 5;
/// Bad tokens an address may send per window before its tokens are refused unseen.
const GUESSES: u32 = 20;
const GUESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered for that, at most (the oldest go first).
const GUESSERS: usize = 4096;

impl Refusals {
    /// Whether `peer` has sent too many bad tokens lately: its requests with a token are
    /// refused (429) without looking at it.
    pub(super) fn guessing(&self, peer: std::net::IpAddr) -> Option<Refusal> {
        let g = self.guesses.borrow();
        let (start, n) = *g.get(&peer)?;
        (n >= GUESSES && start.elapsed() < GUESS_WINDOW).then(|| {
            Refusal::new(
                429,
                "too-many-failures",
                "too many bad tokens from this address: wait a minute",
            )
        })
    }

    fn guessed(&self, peer: std::net::IpAddr) {
        let mut g = self.guesses.borrow_mut();
        let now = Instant::now();
        if g.len() >= GUESSERS && !g.contains_key(&peer) {
            g.retain(|_, (start, _)| now.duration_since(*start) < GUESS_WINDOW);
            if g.len() >= GUESSERS {
                let oldest = g.iter().min_by_key(|(_, (s, _))| *s).map(|(ip, _)| *ip);
                if let Some(ip) = oldest {
                    g.remove(&ip);
                }
            }
        }
        let e = g.entry(peer).or_insert((now, 0));
        if now.duration_since(e.0) >= GUESS_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }

    /// Counts and (rate permitting) logs a refusal of `route` from `peer`.
    pub(super) fn record(&self, route: &Route<'_>, r: &Refusal, peer: Option<SocketAddr>) {
        if let (Some(p), "bad-token") = (peer, r.kind) {
            self.guessed(p.ip());
        }
        *self
            .counts
            .borrow_mut()
            .entry((route.label(), r.kind))
            .or_default() += 1;
        let now = Instant::now();
        let (start, lines) = match self.window.get() {
            Some((start, n)) if now.duration_since(start).as_secs() < 1 => (start, n),
            _ => (now, 0),
        };
        if lines >= LOG_PER_SECOND {
            self.suppressed.set(self.suppressed.get() + 1);
            self.window.set(Some((start, lines)));
            return;
        }
        self.window.set(Some((start, lines + 1)));
        let suppressed = self.suppressed.replace(0);
        tracing::warn!(
            route = route.label(),
            status = r.status,
            reason = r.kind,
            client = %peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
            suppressed,
            "control API request refused"
        );
    }

    /// `ringmesh_control_api_refused_total{route,reason}`.
    pub(super) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP ringmesh_control_api_refused_total API requests refused, by route and reason.\n# TYPE ringmesh_control_api_refused_total counter"
        );
        for ((route, reason), n) in self.counts.borrow().iter() {
            let _ = writeln!(
                out,
                "ringmesh_control_api_refused_total{{route=\"{route}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> Mesh {
        Mesh::parse(&format!(
            "api:
  admins:
    - {{ name: alice, token_sha256: {} }}
    - {{ name: ci, identity: \"spiffe://mesh.local/ns/ops/sa/ci\" }}
clusters:
  - {{ name: back, servers: [ \"spiffe://mesh.local/ns/default/sa/back\" ], endpoints: [] }}
nodes:
  back:
    identity: {{ ns: default, sa: back }}
    token_sha256: {}
    listeners: []
  edge:
    identity: {{ ns: default, sa: edge }}
    token_sha256: {}
    listeners: []
",
            sha256_hex(b"alice-token"),
            sha256_hex(b"back-token"),
            sha256_hex(b"edge-token"),
        ))
        .expect("valid")
    }

    fn segs(path: &str) -> Vec<String> {
        path.trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_permission_table() {
        let m = mesh();
        let admin = Caller::Admin("alice".into());
        let back = Caller::Node("back".into());
        let edge = Caller::Node("edge".into());
        let boot = Caller::Bootstrap("t".into());
        let anon = Caller::Anonymous;
        let cases: &[(&str, &str, &Caller, Option<&str>)] = &[
            ("GET", "/ready", &anon, None),
            ("GET", "/metrics", &anon, Some("unauthenticated")),
            ("GET", "/metrics", &back, Some("admin-only")),
            ("GET", "/metrics", &admin, None),
            ("GET", "/v1/config", &back, Some("admin-only")),
            (
                "PUT",
                "/v1/config/nodes/rogue",
                &anon,
                Some("unauthenticated"),
            ),
            ("PUT", "/v1/config/nodes/rogue", &back, Some("admin-only")),
            ("PUT", "/v1/config", &admin, None),
            ("POST", "/v1/ca/rotate", &back, Some("admin-only")),
            ("POST", "/v1/ca/rotate", &boot, Some("unauthenticated")),
            ("GET", "/v1/ca", &back, None),
            ("GET", "/v1/ca", &anon, Some("unauthenticated")),
            ("GET", "/v1/watch/back", &back, None),
            ("GET", "/v1/watch/edge", &back, Some("other-node")),
            ("GET", "/v1/watch/back", &anon, Some("unauthenticated")),
            ("GET", "/v1/watch/back", &admin, Some("nodes-only")),
            ("POST", "/v1/nodes/back/report", &edge, Some("other-node")),
            ("POST", "/v1/nodes/back/report", &admin, Some("nodes-only")),
            ("POST", "/v1/nodes/back/certificate", &back, None),
            (
                "POST",
                "/v1/nodes/back/certificate",
                &edge,
                Some("other-node"),
            ),
            ("POST", "/v1/nodes/back/certificate", &boot, None),
            (
                "POST",
                "/v1/nodes/back/certificate",
                &anon,
                Some("unauthenticated"),
            ),
            ("PUT", "/v1/clusters/back/endpoints/b-1", &back, None),
            (
                "PUT",
                "/v1/clusters/back/endpoints/b-1",
                &edge,
                Some("not-a-server"),
            ),
            (
                "PUT",
                "/v1/clusters/nope/endpoints/b-1",
                &back,
                Some("not-a-server"),
            ),
            ("PUT", "/v1/clusters/back/endpoints/b-1", &admin, None),
            (
                "DELETE",
                "/v1/clusters/back/endpoints/b-1",
                &anon,
                Some("unauthenticated"),
            ),
            ("GET", "/v1/nodes", &edge, Some("admin-only")),
        ];
        for (method, path, caller, want) in cases {
            let s = segs(path);
            let route = Route::of(method, &s);
            let got = permit(&route, caller, &m, false).err().map(|r| r.kind);
            assert_eq!(got, *want, "{method} {path} as {caller:?}");
        }
        // Without TLS, watches and reports cannot be authenticated; certificates are refused.
        let s = segs("/v1/watch/back");
        assert!(permit(&Route::of("GET", &s), &anon, &m, true).is_ok());
        let s = segs("/v1/nodes/back/certificate");
        let r = permit(&Route::of("POST", &s), &boot, &m, true);
        assert_eq!(r.err().map(|r| r.kind), Some("tls-required"));
    }

    fn request(method: &str, host: &str, headers: &[(&str, &str)]) -> Request {
        let mut r = Request {
            method: method.into(),
            host: Some(host.into()),
            ..Request::default()
        };
        for (n, v) in headers {
            match *n {
                "authorization" => r.authorization = Some(v.to_string()),
                "origin" => r.origin = true,
                "content-type" => r.content_type = Some(v.to_string()),
                _ => {}
            }
        }
        r
    }

    #[test]
    fn browsers_cannot_drive_it() {
        let bound: SocketAddr = "127.0.0.1:9900".parse().unwrap();
        let names = ["cp.mesh.internal".to_string()];
        let kind = |r: Request| guard(&r, &names, bound).err().map(|r| r.kind);
        assert_eq!(kind(request("GET", "127.0.0.1:9900", &[])), None);
        assert_eq!(kind(request("GET", "cp.mesh.internal", &[])), None);
        assert_eq!(
            kind(request("GET", "evil.example:9900", &[])),
            Some("host-not-allowed")
        );
        assert_eq!(
            kind(request(
                "GET",
                "127.0.0.1",
                &[("origin", "http://evil.example")]
            )),
            Some("origin-refused")
        );
        for ctype in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut h = Vec::new();
            if let Some(c) = ctype {
                h.push(("content-type", c));
            }
            assert_eq!(
                kind(request("PUT", "127.0.0.1", &h)),
                Some("not-json"),
                "{ctype:?}"
            );
        }
        let json = [("content-type", "application/json; charset=utf-8")];
        assert_eq!(kind(request("POST", "127.0.0.1", &json)), None);
    }

    #[test]
    fn callers_are_told_apart_by_token_and_certificate() {
        let m = mesh();
        let s = segs("/v1/config");
        let config = Route::of("GET", &s);
        let s = segs("/v1/nodes/back/certificate");
        let cert = Route::of("POST", &s);
        let bearer = |t: &str| request("GET", "127.0.0.1", &[("authorization", t)]);
        assert_eq!(
            identify(&bearer("Bearer alice-token"), None, &m, &config),
            Ok(Caller::Admin("alice".into()))
        );
        assert_eq!(
            identify(&bearer("bearer alice-token"), None, &m, &config),
            Ok(Caller::Admin("alice".into()))
        );
        assert_eq!(
            identify(&bearer("Bearer back-token"), None, &m, &config).map_err(|r| r.kind),
            Err("bad-token")
        );
        assert_eq!(
            identify(&bearer("Bearer back-token"), None, &m, &cert),
            Ok(Caller::Bootstrap("back-token".into()))
        );
        assert_eq!(
            identify(&request("GET", "127.0.0.1", &[]), None, &m, &config),
            Ok(Caller::Anonymous)
        );
    }
}
