//! The API's door: each connection's TLS handshake (the client's certificate, if any, verified
//! against the mesh's trust bundle), then one request at a time, each guarded, its caller
//! identified and permitted (`auth`), before it is dispatched by route to the module that
//! reads or changes the state.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use serde_json::json;

use super::auth::{self, Caller, Refusal, Route};
use super::*;
use crate::http::{self, Request, Response};

/// The largest body a caller that is no admin may send (a registration, a report, a public key).
const SMALL_BODY: usize = 64 * 1024;

/// The largest stats report a node may send.
const NODE_STATS_BODY: usize = 2 << 20;
/// API connections open at once, at most (a fleet's watches and then some); past it a new one
/// is closed at once.
const MAX_CONNECTIONS: usize = 16 * 1024;

/// Serves one accepted connection: TLS first (unless the API runs in plaintext), then requests
/// in turn until it closes.
pub(super) async fn accepted(plane: Rc<Plane>, stream: TcpStream, peer: SocketAddr) {
    use std::os::fd::AsRawFd;
    if plane.conns.borrow().len() >= MAX_CONNECTIONS {
        plane.refusals.record(
            &Route::Unknown,
            &Refusal::new(
                503,
                "too-many-connections",
                "the API holds too many connections",
            ),
            Some(peer),
        );
        return;
    }
    let fd = stream.as_raw_fd();
    plane.conns.borrow_mut().insert(fd);
    let _open = OpenConn(&plane, fd);
    let config = plane.tls.borrow().as_ref().map(|s| s.config.clone());
    let Some(config) = config else {
        serve(&plane, stream, peer, None).await;
        return;
    };
    let handshake = monoio::select! {
        r = ringmesh_core::tls::accept(stream, config) => r.0,
        _ = monoio::time::sleep(tls::HANDSHAKE_TIMEOUT) => None,
    };
    let Some(tls) = handshake else {
        // A plaintext client, an untrusted certificate, a timeout: nothing more is read.
        plane.refusals.record(
            &Route::Unknown,
            &Refusal::new(400, "tls-handshake", "the TLS handshake failed"),
            Some(peer),
        );
        return;
    };
    let cert = tls.peer_certificate();
    serve(&plane, tls, peer, cert).await;
}

async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    plane: &Plane,
    mut stream: S,
    peer: SocketAddr,
    cert: Option<Vec<u8>>,
) {
    let mut buf = Vec::new();
    // Only an admin may send a large body (a whole desired state); anyone else a small one,
    // decided from the head before the body is read.
    let limit = |req: &Request| {
        let route = Route::of(&req.method, &req.segments);
        let st = plane.st.borrow();
        match auth::identify(req, cert.as_deref(), &st.mesh, &route) {
            Ok(Caller::Admin(_)) => http::MAX_BODY,
            // A node's report of a large mesh's endpoints.
            Ok(Caller::Node(_)) if matches!(route, Route::NodeStats { .. }) => NODE_STATS_BODY,
            _ => SMALL_BODY,
        }
    };
    loop {
        let req = match http::read_request(&mut stream, &mut buf, &limit).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err((status, msg)) => {
                let _ = http::respond(&mut stream, Response::error(status, msg), true, false).await;
                return;
            }
        };
        // An idle connection keeps no buffer.
        if buf.is_empty() {
            buf = Vec::new();
        }
        let (close, head_only) = (req.close, req.method == "HEAD");
        let resp = answer(plane, req, peer, cert.as_deref()).await;
        if !http::respond(&mut stream, resp, close, head_only).await || close {
            return;
        }
    }
}

/// Answers one request from `peer` (with its verified client certificate, if any).
pub(super) async fn answer(
    plane: &Plane,
    req: Request,
    peer: SocketAddr,
    cert: Option<&[u8]>,
) -> Response {
    if !req.path.starts_with('/') {
        return Response::error(400, "the request target must be a path");
    }
    let route = Route::of(&req.method, &req.segments);
    if req.bearer().is_some() {
        if let Some(r) = plane.refusals.guessing(peer.ip()) {
            plane.refusals.record(&route, &r, Some(peer));
            return r.response();
        }
    }
    let checked = {
        let st = plane.st.borrow();
        auth::guard(&req, &st.mesh.api.names, plane.bound)
            .and_then(|()| auth::identify(&req, cert, &st.mesh, &route))
            .and_then(|caller| {
                auth::permit(&route, &caller, &st.mesh, plane.plaintext).map(|()| caller)
            })
    };
    let caller = match checked {
        Ok(c) => c,
        Err(r) => {
            plane.refusals.record(&route, &r, Some(peer));
            return r.response();
        }
    };
    let resp = dispatch(plane, &req, &route, &caller, peer).await;
    // Refusals only the handlers could decide (a spent token, another's registration).
    if let (401 | 403, Some(kind)) = (resp.status, resp.error_kind) {
        plane
            .refusals
            .record(&route, &Refusal::new(resp.status, kind, ""), Some(peer));
    }
    resp
}

async fn dispatch(
    plane: &Plane,
    req: &Request,
    route: &Route<'_>,
    caller: &Caller,
    peer: SocketAddr,
) -> Response {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    if let Some(store) = &plane.store {
        if let Some(r) = replicated::answer(plane, store, req, &segs, (caller, peer.ip())).await {
            return r;
        }
    }
    if let Some(r) = super::ops::answer(plane, req, route, &segs).await {
        return r;
    }
    match (route, &segs[..]) {
        (Route::Ready, _) => Response::json(200, "{\"ready\":true}\n"),
        (Route::Metrics, _) => {
            let mut text = String::from_utf8(metrics(&plane.st.borrow(), plane.store.as_ref()))
                .unwrap_or_default();
            plane.refusals.render(&mut text);
            Response {
                ctype: "text/plain; version=0.0.4; charset=utf-8",
                ..Response::json(200, text.into_bytes())
            }
        }
        (Route::ConfigRead, _) => get_config(&plane.st.borrow(), config_pointer(&req.path)),
        (Route::ConfigWrite, _) => {
            let r = edit_config(&mut plane.st.borrow_mut(), req, config_pointer(&req.path));
            if r.status == 200 {
                plane.changed();
            }
            r
        }
        (Route::Register { .. }, [_, _, cluster, _, id]) => {
            let who = (caller, peer.ip());
            let (r, changed) = register(&mut plane.st.borrow_mut(), cluster, id, &req.body, who);
            if changed {
                plane.changed();
            }
            r
        }
        (Route::Deregister, [_, _, cluster, _, id]) => {
            let (r, removed) = deregister(&mut plane.st.borrow_mut(), cluster, id, caller);
            if removed {
                plane.changed();
            }
            r
        }
        (Route::Clusters, _) => Response::json(
            200,
            clusters_json(&plane.st.borrow(), &plane.observed.borrow()),
        ),
        (Route::Nodes, _) => Response::json(200, nodes_json(&plane.st.borrow())),
        (Route::Watch { node }, _) => watch(plane, node, req).await,
        (Route::Certificate { node }, _) => {
            identity::certificate(&mut plane.st.borrow_mut(), node, req, caller)
        }
        (Route::Ca, _) => ca_json(&plane.st.borrow()),
        (Route::CaRotate, _) => {
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
                    Err(e) => Response::error(409, &e.to_string()),
                }
            };
            if r.status == 200 {
                plane.changed();
            }
            r
        }
        (Route::Report { node }, _) => report(&mut plane.st.borrow_mut(), node, &req.body),
        (Route::WrongMethod, _) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "not found"),
    }
}

/// An open connection, known to the plane for as long as it lasts.
pub(super) struct OpenConn<'a>(&'a Plane, std::os::fd::RawFd);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.conns.borrow_mut().remove(&self.1);
    }
}
