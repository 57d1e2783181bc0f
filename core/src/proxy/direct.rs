//! What a route does to a request besides sending it on: its request id, and the answers it
//! makes itself (`direct_response`, `redirect`).

use std::time::Instant;

use super::client::Client;
use super::forward;
use super::report::Seen;
use crate::head::RequestHead;
use crate::head::edit::{
    MAX_REQUEST_ID, RequestIdSpec, ResponseEdits, new_request_id, sane_request_id,
};
use crate::head::reply::{DirectReply, FaultReply, OwnReply};
use crate::http1::encode;
use crate::io::HeadsTo;
use crate::route::{Action, PathMatch, Route};
use crate::worker::state::Worker;
use crate::worker::view::RouteTarget;

/// What header edits say of the client, copied out of the connection: its IP, and its
/// identity when a route's edits may name it (the only allocation, and only then).
pub(super) struct Who {
    ip: [u8; 48],
    ip_len: usize,
    pub identity: Option<Box<str>>,
    /// The request's `Origin`, on a route with CORS.
    pub origin: Option<Box<[u8]>>,
}

impl Who {
    /// `cluster_edits`: the chosen cluster edits fields (its templates may name variables);
    /// `has_id`: the request has an id (edits may name it, or it is echoed). A route that
    /// does none of this copies nothing.
    pub fn of(
        c: &Client,
        req: &RequestHead,
        route: &Route,
        cluster_edits: bool,
        has_id: bool,
    ) -> Who {
        let edits =
            route.request_headers.is_some() || route.response_headers.is_some() || cluster_edits;
        let origin = route
            .cors
            .as_ref()
            .and_then(|_| field(c.data(), req, b"origin"))
            .map(Box::from);
        let mut who = Who {
            ip: [0; 48],
            ip_len: 0,
            identity: None,
            origin,
        };
        if !edits && !has_id {
            return who;
        }
        let ip = c.ip();
        who.ip_len = ip.len().min(48);
        who.ip[..who.ip_len].copy_from_slice(&ip[..who.ip_len]);
        // The identity (an allocation) only for edits that may name it.
        if edits {
            who.identity = c.identity().map(Box::from);
        }
        who
    }

    pub fn ip(&self) -> &[u8] {
        &self.ip[..self.ip_len]
    }
}

/// The first value of the field `name`.
fn field<'b>(buf: &'b [u8], req: &RequestHead, name: &[u8]) -> Option<&'b [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf))
}

/// A route's answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`), when
/// this request is one: the policy's fields if the origin and method are allowed, none
/// otherwise. `None`: not a preflight, or the route has no CORS policy.
pub(super) async fn preflight(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    lv: (&str, &crate::worker::view::ListenerView),
    (route, target): (&Route, &RouteTarget),
    request_id: Option<&[u8]>,
    started: Instant,
) -> Option<bool> {
    let cors = route.cors.as_deref()?;
    if req.method != crate::head::Method::Options {
        return None;
    }
    let buf = c.data();
    let method = field(buf, req, b"access-control-request-method")?.to_vec();
    // A preflight always carries its page's origin; without one it is an ordinary OPTIONS.
    let origin = field(buf, req, b"origin")?.to_vec();
    let asked = field(buf, req, b"access-control-request-headers")
        .unwrap_or_default()
        .to_vec();
    let allowed = !origin.is_empty() && cors.allows(&origin) && cors.allows_method(&method);
    let reply = crate::cors::Preflight {
        cors,
        origin: &origin,
        request_headers: &asked,
        allowed,
    };
    let own = Own {
        lv,
        route,
        target,
        request_id,
        started,
    };
    Some(send(w, c, req, &reply, &own).await)
}

/// A request's id, copied out of the client's buffer (which moves on while the request is
/// forwarded) or made here.
pub(super) struct RequestId<'a> {
    bytes: [u8; MAX_REQUEST_ID],
    len: usize,
    pub spec: &'a RequestIdSpec,
}

impl RequestId<'_> {
    pub fn value(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The field the upstream is sent.
    pub fn field(&self) -> (&[u8], &[u8]) {
        (&self.spec.header, self.value())
    }

    /// The field the answer carries back, when asked.
    pub fn echoed(&self) -> Option<(&[u8], &[u8])> {
        self.spec.echo.then(|| self.field())
    }
}

/// The request's id under `spec`: the client's when it is trusted and sane, else a new one.
pub(super) fn request_id<'a>(
    w: &Worker,
    spec: Option<&'a RequestIdSpec>,
    buf: &[u8],
    req: &RequestHead,
) -> Option<RequestId<'a>> {
    let spec = spec?;
    let mut id = RequestId {
        bytes: [0; MAX_REQUEST_ID],
        len: 0,
        spec,
    };
    let sent = spec
        .trust_client
        .then(|| {
            req.headers
                .iter()
                .find(|h| h.name.get(buf).eq_ignore_ascii_case(&spec.header))
                .map(|h| h.value.get(buf))
        })
        .flatten()
        .filter(|v| sane_request_id(v));
    match sent {
        Some(v) => {
            id.bytes[..v.len()].copy_from_slice(v);
            id.len = v.len();
        }
        None => {
            let mut uuid = [0u8; 36];
            w.with_rng(|r| new_request_id(r, &mut uuid));
            id.bytes[..36].copy_from_slice(&uuid);
            id.len = 36;
        }
    }
    Some(id)
}

/// Answers a request with the route's own answer, counted in the route's series. Returns
/// whether the connection stays open.
#[allow(clippy::too_many_arguments)]
pub(super) async fn answer(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    lv: (&str, &crate::worker::view::ListenerView),
    route: &Route,
    target: &RouteTarget,
    edits: Option<&ResponseEdits<'_>>,
    request_id: Option<&[u8]>,
    started: Instant,
) -> bool {
    let head_request = req.method == crate::head::Method::Head;
    let mut location = Vec::new();
    let (status, body): (u16, &[u8]) = match &route.action {
        Action::Direct(d) => (d.status, &d.body),
        Action::Redirect(r) => {
            let buf = c.data();
            let authority = req.authority.map_or(&b""[..], |a| a.get(buf));
            let matched = match &route.matcher.path {
                Some(PathMatch::Prefix(p)) => p.len(),
                _ => 0,
            };
            if authority.is_empty() && r.host.is_none() {
                // `https:///evil.com/x` would send browsers to evil.com: no host, no redirect.
                (400, &b"bad request: no host to redirect to\n"[..])
            } else {
                let scheme = if c.tls { "https" } else { "http" };
                r.location(
                    &mut location,
                    (scheme, authority, req.path_or_root(buf)),
                    matched,
                );
                (r.code, &b""[..])
            }
        }
        Action::Cluster(_) | Action::Split(_) => return false,
    };
    let reply = DirectReply {
        status,
        body,
        location: (!location.is_empty()).then_some(&location[..]),
        head_request,
        edits,
    };
    let own = Own {
        lv,
        route,
        target,
        request_id,
        started,
    };
    send(w, c, req, &reply, &own).await
}

/// A route's injected abort (`fault.abort`), answered and counted.
#[allow(clippy::too_many_arguments)]
pub(super) async fn abort(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    lv: (&str, &crate::worker::view::ListenerView),
    route: &Route,
    target: &RouteTarget,
    (status, grpc_status): (u16, Option<u8>),
    edits: Option<&ResponseEdits<'_>>,
    request_id: Option<&[u8]>,
    started: Instant,
) -> bool {
    let reply = FaultReply {
        status,
        grpc_status,
        grpc: c.grpc,
        head_request: req.method == crate::head::Method::Head,
        edits,
    };
    let own = Own {
        lv,
        route,
        target,
        request_id,
        started,
    };
    target.stats.count(crate::metrics::Count::FaultAbort, 1);
    send(w, c, req, &reply, &own).await
}

/// Where a route's own answer is counted and logged.
struct Own<'a> {
    lv: (&'a str, &'a crate::worker::view::ListenerView),
    route: &'a Route,
    target: &'a RouteTarget,
    request_id: Option<&'a [u8]>,
    started: Instant,
}

/// Writes an answer of the route's own, over either protocol, and reports it.
async fn send(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    reply: &impl OwnReply,
    own: &Own<'_>,
) -> bool {
    let (listener, lview) = own.lv;
    let log = lview.log.as_ref();
    let names = (listener, &*own.target.log_names);
    let mut seen = Seen::new(
        w,
        c.data(),
        req,
        names,
        log,
        Some(&own.route.name),
        None,
        own.started,
    );
    if let Some(id) = own.request_id {
        seen.request_id(id);
    }
    let note = forward::Note::default();
    note.bytes_in.set(req.head_len as u64);
    // The body, if any, is not wanted: consumed when it is all here, else the connection ends.
    let close = !c.skip_request(req) || !req.keep_alive || w.draining();
    let (ok, sent) = match c.stream.as_mut().and_then(HeadsTo::h2) {
        Some(h2) => match h2.send_local_reply(reply).await {
            Ok(n) => (true, n),
            Err(_) => (false, 0),
        },
        None => {
            let mut out = w.bufs.get();
            encode::local_reply(&mut out, reply, close);
            let len = out.len() as u64;
            let (ok, out) = c.write(out).await;
            w.put_buf(out);
            (ok, if ok { len } else { 0 })
        }
    };
    let end = Instant::now();
    c.ended = end;
    let status = reply.status();
    own.target.stats.record(status, end - own.started);
    note.progress.bytes_out.set(sent);
    seen.report(w, c, status, None, end, Some(&note), None);
    ok && !close
}
