//! The JSON API: one request at a time per connection, dispatched by method and path to the
//! handlers that read or change the state.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use monoio::net::TcpStream;
use serde_json::{Value, json};

use super::super::ca::sha256_hex;
use super::super::http::{self, Request, Response};
use super::super::model::Mesh;
use super::*;

pub(super) async fn serve(plane: Rc<Plane>, mut stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    plane.conns.borrow_mut().insert(fd);
    let _open = OpenConn(&plane, fd);
    let mut buf = Vec::new();
    loop {
        let req = match http::read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err((status, msg)) => {
                let _ = http::respond(&mut stream, Response::error(status, msg), true).await;
                return;
            }
        };
        // An idle connection keeps no buffer.
        if buf.is_empty() {
            buf = Vec::new();
        }
        let close = req.close;
        let resp = answer(&plane, req).await;
        if !http::respond(&mut stream, resp, close).await || close {
            return;
        }
    }
}

pub(super) async fn answer(plane: &Plane, req: Request) -> Response {
    let path = req.path.clone();
    if !path.starts_with('/') {
        return Response::error(400, "the request target must be a path");
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let Some(store) = &plane.store {
        if let Some(r) = replicated::answer(plane, store, &req, &segs).await {
            return r;
        }
    }
    match (req.method.as_str(), &segs[..]) {
        ("GET", ["ready"]) => Response::json(200, "{\"ready\":true}\n"),
        ("GET", ["metrics"]) => Response {
            ctype: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::json(200, metrics(&plane.st.borrow(), plane.store.as_ref()))
        },
        ("GET", ["v1", "config", ..]) => get_config(&plane.st.borrow(), config_pointer(&path)),
        ("PUT" | "DELETE", ["v1", "config", ..]) => {
            let r = edit_config(&mut plane.st.borrow_mut(), &req, config_pointer(&path));
            if r.status == 200 {
                plane.changed();
            }
            r
        }
        ("PUT", ["v1", "clusters", cluster, "endpoints", id]) => {
            let (r, changed) = register(&mut plane.st.borrow_mut(), cluster, id, &req.body);
            if changed {
                plane.changed();
            }
            r
        }
        ("DELETE", ["v1", "clusters", cluster, "endpoints", id]) => {
            let mut st = plane.st.borrow_mut();
            if !st.unregister(cluster, id) {
                return Response::error(404, "no such registration");
            }
            st.changed_clusters(&[cluster.to_string()]);
            let v = st.version;
            drop(st);
            plane.changed();
            Response::json(200, json!({ "version": v }).to_string() + "\n")
        }
        ("GET", ["v1", "clusters"]) => Response::json(200, clusters_json(&plane.st.borrow())),
        ("GET", ["v1", "nodes"]) => Response::json(200, nodes_json(&plane.st.borrow())),
        ("GET", ["v1", "watch", node]) => watch(plane, node, &req).await,
        ("POST", ["v1", "nodes", node, "certificate"]) => {
            certificate(&mut plane.st.borrow_mut(), node, &req)
        }
        ("GET", ["v1", "ca"]) => ca_json(&plane.st.borrow()),
        ("POST", ["v1", "ca", "rotate"]) => {
            let r = {
                let mut st = plane.st.borrow_mut();
                let td = st.mesh.trust_domain.clone();
                match st.ca.rotate(&td) {
                    Ok(()) => {
                        st.changed();
                        st.rotation_version = st.version;
                        tracing::info!("mesh CA rotation started");
                        Response::json(200, json!({ "version": st.version }).to_string() + "\n")
                    }
                    Err(e) => Response::error(409, &e),
                }
            };
            if r.status == 200 {
                plane.changed();
            }
            r
        }
        ("POST", ["v1", "nodes", node, "report"]) => {
            report(&mut plane.st.borrow_mut(), node, &req.body)
        }
        (
            _,
            ["ready" | "metrics"]
            | ["v1", "config", ..]
            | ["v1", "clusters", ..]
            | ["v1", "nodes", ..]
            | ["v1", "watch", ..]
            | ["v1", "ca", ..],
        ) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "not found"),
    }
}

/// The JSON pointer after `/v1/config` in a path.
pub(super) fn config_pointer(path: &str) -> &str {
    path.strip_prefix("/v1/config").unwrap_or_default()
}

/// `GET /v1/config[/pointer]`: the desired state (or a part), with its version.
pub(super) fn get_config(st: &State, pointer: &str) -> Response {
    let value = if pointer.is_empty() || pointer == "/" {
        Some(&st.mesh.doc)
    } else {
        st.mesh.doc.pointer(pointer)
    };
    match value {
        Some(v) => {
            let key = if pointer.is_empty() || pointer == "/" {
                "config"
            } else {
                "value"
            };
            let mut r = Response::json(
                200,
                format!("{{\"version\":{},\"{key}\":{v}}}\n", st.version),
            );
            r.etag = Some(st.version);
            r
        }
        None => Response::error(404, "no such field"),
    }
}

/// `PUT` or `DELETE /v1/config[/pointer]` with `If-Match: VERSION`: changes the desired state,
/// or refuses with every error and changes nothing.
pub(super) fn edit_config(st: &mut State, req: &Request, pointer: &str) -> Response {
    let Some(expected) = req.if_match.as_deref() else {
        return if_match_required();
    };
    if expected != st.version.to_string() && expected != "*" {
        return conflict(st);
    }
    let mut doc = st.mesh.doc.clone();
    if let Err(r) = apply_edit(&mut doc, req, pointer) {
        return r;
    }
    match Mesh::check(doc) {
        Ok(m) => {
            if m.bind != st.mesh.bind {
                tracing::warn!("bind changes take effect on restart");
            }
            st.mesh = m;
            st.changed();
            tracing::info!(
                version = st.version,
                "desired state changed through the API"
            );
            let mut r = Response::json(200, json!({ "version": st.version }).to_string() + "\n");
            r.etag = Some(st.version);
            r
        }
        Err(errs) => invalid(&errs),
    }
}

pub(super) fn if_match_required() -> Response {
    Response::error(
        428,
        "If-Match: the version this change was made against is required (GET /v1/config)",
    )
}

/// 409: the change was made against an older desired state.
pub(super) fn conflict(st: &State) -> Response {
    let mut r = Response::json(
        409,
        json!({
            "error": "the desired state changed since that version; read it again",
            "version": st.version,
        })
        .to_string()
            + "\n",
    );
    r.etag = Some(st.version);
    r
}

/// 422 with every error, by field.
pub(super) fn invalid(errs: &[impl ToString]) -> Response {
    Response::json(
        422,
        json!({ "errors": errs.iter().map(ToString::to_string).collect::<Vec<_>>() }).to_string()
            + "\n",
    )
}

/// Edits `doc` at a JSON pointer: PUT sets (a new key of a mapping, an item of a list, or `-`
/// or the length to append), DELETE removes.
pub fn apply_edit(doc: &mut Value, req: &Request, pointer: &str) -> Result<(), Response> {
    let value = if req.method == "PUT" {
        Some(
            serde_json::from_slice::<Value>(&req.body)
                .map_err(|e| Response::error(400, &format!("invalid JSON: {e}")))?,
        )
    } else {
        None
    };
    let pointer = pointer.trim_end_matches('/');
    if pointer.is_empty() {
        return match value {
            Some(v) => {
                *doc = v;
                Ok(())
            }
            None => Err(Response::error(405, "the desired state cannot be deleted")),
        };
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let key = last.replace("~1", "/").replace("~0", "~");
    let missing = || Response::error(404, "no such field");
    let parent = if parent.is_empty() {
        Some(doc)
    } else {
        doc.pointer_mut(parent)
    };
    match (parent.ok_or_else(missing)?, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(key, v);
        }
        (Value::Object(m), None) => {
            m.remove(&key).ok_or_else(missing)?;
        }
        (Value::Array(a), v) => {
            let len = a.len();
            let i = if key == "-" {
                len
            } else {
                key.parse().map_err(|_| missing())?
            };
            match v {
                Some(v) if i < len => a[i] = v,
                Some(v) if i == len => a.push(v),
                None if i < len => {
                    a.remove(i);
                }
                _ => return Err(missing()),
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

/// `PUT /v1/clusters/{cluster}/endpoints/{id}`: registers or heartbeats. Returns whether the
/// served state changed (a heartbeat only moves the deadline).
pub(super) fn register(st: &mut State, cluster: &str, id: &str, body: &[u8]) -> (Response, bool) {
    let reg = match checked_registration(st, cluster, id, body) {
        Ok(r) => r,
        Err(r) => return (r, false),
    };
    let ttl = reg.ttl;
    let regs = st.registrations.entry(cluster.to_string()).or_default();
    let changed = regs.get(id).is_none_or(|old| old.ep != reg.ep);
    regs.insert(id.to_string(), reg);
    if changed {
        st.changed_clusters(&[cluster.to_string()]);
    }
    (registered(cluster, id, ttl, st.version), changed)
}

/// A registration request checked: the cluster exists, the id fits, the body is one.
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
    if id.is_empty() || id.len() > 253 {
        return Err(Response::error(400, "id: expected 1 to 253 characters"));
    }
    serde_json::from_slice::<Value>(body)
        .map_err(|e| format!("invalid JSON: {e}"))
        .and_then(|v| registration(&v, Instant::now()))
        .map_err(|e| Response::error(400, &e))
}

/// The answer to a registration or heartbeat.
pub(super) fn registered(cluster: &str, id: &str, ttl: Duration, version: u64) -> Response {
    let ttl = crate::config::format_duration(ttl);
    Response::json(
        200,
        json!({ "cluster": cluster, "id": id, "ttl": ttl, "version": version }).to_string() + "\n",
    )
}

/// An open connection, known to the plane for as long as it lasts.
pub(super) struct OpenConn<'a>(&'a Plane, std::os::fd::RawFd);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.conns.borrow_mut().remove(&self.1);
    }
}

/// `POST /v1/nodes/{node}/certificate` with `Authorization: Bearer TOKEN`, body
/// `{"public_key": HEX}`: signs a certificate for the node's identity over the proxy's key.
pub(super) fn certificate(st: &mut State, node: &str, req: &Request) -> Response {
    let Some(spec) = st.mesh.nodes.get(node) else {
        return Response::error(404, &format!("no node named `{node}` in the mesh"));
    };
    let (Some(id), Some(expected)) = (&spec.identity, &spec.token_sha256) else {
        return Response::error(409, &format!("node `{node}` has no identity in the mesh"));
    };
    let token = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared as digests, so the comparison's time says nothing about the token.
    let given = sha256_hex(token.as_bytes());
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if token.is_empty() || !same {
        tracing::warn!(node, "certificate refused: bad bootstrap token");
        return Response::error(401, "the bootstrap token is not this node's");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Response::error(400, "invalid JSON");
    };
    let Some(public_key) = body["public_key"].as_str() else {
        return Response::error(400, "public_key: expected a P-256 public key in hex");
    };
    let (ns, sa) = id
        .rsplit_once("/sa/")
        .map(|(head, sa)| (head.rsplit('/').next().unwrap_or_default(), sa))
        .unwrap_or_default();
    let dns = crate::mesh::model::identity_dns_name(&st.mesh.trust_domain, ns, sa);
    let ttl = st.mesh.ca.cert_ttl;
    match st.ca.current.issue(public_key, id, &dns, ttl) {
        Ok((cert, expires)) => {
            st.ca.issued += 1;
            let (bundle_mark, issuer_mark) = st.ca.marks();
            Response::json(
                200,
                json!({
                    "identity": id,
                    "cert": cert,
                    "bundle": st.ca.bundle(),
                    "expires_unix": expires,
                    "marks": { "bundle": bundle_mark, "issuer": issuer_mark },
                })
                .to_string()
                    + "\n",
            )
        }
        Err(e) => Response::error(400, &e),
    }
}

/// `GET /v1/ca`: the trust bundle and the rotation's state.
pub(super) fn ca_json(st: &State) -> Response {
    let (bundle_mark, issuer_mark) = st.ca.marks();
    Response::json(
        200,
        json!({
            "bundle": st.ca.bundle(),
            "marks": { "bundle": bundle_mark, "issuer": issuer_mark },
            "issuer": st.ca.current.fingerprint,
            "rotating": st.ca.next.is_some(),
            "next": st.ca.next.as_ref().map(|(a, _)| &a.fingerprint),
            "previous": st.ca.previous.as_ref().map(|(a, until)| json!({ "fingerprint": a.fingerprint, "trusted_until_unix": until })),
            "issued": st.ca.issued,
            "cert_ttl": crate::config::format_duration(st.mesh.ca.cert_ttl),
        })
        .to_string()
            + "\n",
    )
}

/// `POST /v1/nodes/{node}/report` body `{"version": V, "error": null | "why"}`.
pub(super) fn report(st: &mut State, node: &str, body: &[u8]) -> Response {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Response::error(400, &format!("invalid JSON: {e}")),
    };
    let Some(version) = v["version"].as_u64() else {
        return Response::error(400, "version: expected a number");
    };
    let Some(n) = st.nodes.get_mut(node) else {
        return Response::error(404, &format!("no node named `{node}` in the mesh"));
    };
    let now = SystemTime::now();
    match v["error"].as_str() {
        Some(e) => {
            tracing::warn!(node, version, error = %e, "a proxy refused its snapshot");
            n.rejected = Some((version, e.chars().take(4096).collect(), now));
        }
        None => n.applied(version, now),
    }
    Response::json(200, "{}\n")
}

pub(super) fn nodes_json(st: &State) -> Vec<u8> {
    let now = SystemTime::now();
    let ago = |t: SystemTime| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64());
    let nodes: serde_json::Map<String, Value> = st
        .nodes
        .iter()
        .map(|(name, n)| {
            let v = json!({
                "version": n.version,
                "applied_version": n.applied.map(|(v, _)| v),
                "applied_at_unix_ms": n.applied.map(|(_, t)| unix_ms(t)),
                "in_sync": n.in_sync(),
                "last_rejection": n.rejected.as_ref().map(|(v, e, t)| json!({
                    "version": v, "error": e, "at_unix_ms": unix_ms(*t),
                })),
                "last_seen_seconds_ago": n.last_seen.map(ago),
            });
            (name.clone(), v)
        })
        .collect();
    (json!({ "version": st.version, "nodes": nodes }).to_string() + "\n").into_bytes()
}

pub(super) fn clusters_json(st: &State) -> Vec<u8> {
    let now = Instant::now();
    let mut out = serde_json::Map::new();
    for c in &st.mesh.clusters {
        let mut eps = Vec::new();
        for e in &c.statics {
            eps.push(json!({ "addr": e.get("addr"), "source": "static" }));
        }
        let mut dns = Vec::new();
        for d in &c.dns {
            let r = st.dns.get(&d.name);
            for a in r.map(|r| &r.addrs[..]).unwrap_or_default() {
                eps.push(json!({ "addr": a.to_string(), "source": "dns", "name": d.name }));
            }
            dns.push(json!({
                "name": d.name,
                "addrs": r.map(|r| r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "error": r.and_then(|r| r.error.clone()),
                "resolved_at_unix_ms": r.and_then(|r| r.at).map(unix_ms),
            }));
        }
        for (id, r) in st.registrations.get(&c.name).into_iter().flatten() {
            eps.push(json!({
                "addr": r.ep.addr.to_string(), "source": "registered", "id": id,
                "zone": r.ep.zone,
                "expires_in_ms": r.deadline.saturating_duration_since(now).as_millis() as u64,
            }));
        }
        out.insert(c.name.clone(), json!({ "endpoints": eps, "dns": dns }));
    }
    (json!({ "version": st.version, "clusters": out }).to_string() + "\n").into_bytes()
}
