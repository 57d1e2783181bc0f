//! One request's stages, over the request and the view in force:
//!
//! ```text
//! admit   limits (body size), access policies          → refused: 413, 403
//! route   route table, split, the route's rate limit   → refused: 404, 429
//! forward tries against the route's cluster, retries    → forward::Exchange
//! report  route stats, access log, tap
//! ```
//!
//! `admit` and `route` decide without I/O and are tested here without sockets; [`exchange`]
//! runs the stages and answers the refusals.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Client;
use super::forward;
use super::reply::{local_reply_after, refuse, refuse_as};
use super::report::Seen;
use crate::error::ErrorKind;
use crate::head::edit::{RequestEdits, ResponseEdits, Vars};
use crate::head::{Framing, Method, RequestHead, ResponseHead, host_of};
use crate::policy::{Caller, Verdict};
use crate::route::{Action, RequestView, Route};
use crate::snapshot::{self, HttpLimits, HttpListener, Protocol, defaults};
use crate::trace::Trace;
use crate::worker::state::Worker;
use crate::worker::view::{ListenerView, RouteTarget, View};

/// The listener a request came to, in the view in force.
pub(super) struct Listener<'a> {
    pub spec: &'a snapshot::Listener,
    pub http: &'a HttpListener,
    pub view: &'a ListenerView,
}

impl<'a> Listener<'a> {
    /// Listener `li` of `view`, if it serves HTTP.
    pub fn of(view: &'a View, li: usize) -> Option<Listener<'a>> {
        let spec = &view.snapshot.listeners[li];
        let Protocol::Http(http) = &spec.protocol else {
            return None;
        };
        Some(Listener {
            spec,
            http,
            view: &view.listeners[li],
        })
    }
}

/// The parts of a request that policies and routing look at.
pub(super) struct RouteInput<'a> {
    buf: &'a [u8],
    req: &'a RequestHead,
    host: &'a [u8],
    service: Option<usize>,
}

impl<'a> RouteInput<'a> {
    pub fn new(buf: &'a [u8], req: &'a RequestHead) -> RouteInput<'a> {
        let host = req.authority.map_or(&b""[..], |a| host_of(a.get(buf)));
        RouteInput {
            buf,
            req,
            host,
            service: None,
        }
    }

    /// The same, for a request on a connection an outbound listener took for `service`.
    pub fn for_service(mut self, service: Option<usize>) -> RouteInput<'a> {
        self.service = service;
        self
    }
}

impl RequestView for RouteInput<'_> {
    fn host(&self) -> &[u8] {
        self.host
    }
    fn path(&self) -> &[u8] {
        // An absolute-form target without a path (`http://a`) goes upstream as `/`, so that is
        // what is matched too.
        match self.req.route_path.get(self.buf) {
            b"" if !self.is_connect() => b"/",
            p => p,
        }
    }
    fn method(&self) -> &[u8] {
        self.req.method_span.get(self.buf)
    }
    fn has_header(&self, name: &[u8], value: &[u8]) -> bool {
        self.req.headers.iter().any(|h| {
            h.name.get(self.buf).eq_ignore_ascii_case(name) && h.value.get(self.buf) == value
        })
    }
    fn any_header(&self, name: &[u8], f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.req
            .headers
            .iter()
            .any(|h| h.name.get(self.buf).eq_ignore_ascii_case(name) && f(h.value.get(self.buf)))
    }
    fn query(&self) -> &[u8] {
        let target = self.req.path.get(self.buf);
        match memchr::memchr(b'?', target) {
            Some(i) => &target[i + 1..],
            None => b"",
        }
    }
    fn is_connect(&self) -> bool {
        self.req.method == Method::Connect
    }
    fn service(&self) -> Option<usize> {
        self.service
    }
}

/// Admission: a body past the listener's limit, or a request the access policies deny.
/// Policies in audit mode count (and log, a few a second) what they would deny.
pub(super) fn admit(
    w: &Worker,
    l: &Listener<'_>,
    policies: &crate::policy::Policies,
    input: &RouteInput<'_>,
    who: &Caller<'_>,
    now: Instant,
) -> Result<(), ErrorKind> {
    if let (Some(max), Framing::Length(n)) = (l.http.limits.max_request_body, input.req.framing) {
        if n > max {
            return Err(ErrorKind::BodyTooLarge);
        }
    }
    if policies.is_empty() {
        return Ok(());
    }
    let name = &l.spec.name;
    let verdict = policies.check(who, Some(input), |i| {
        let policy = policies.name_of(Verdict::Deny(i));
        w.metrics.denied(name, policy, true);
        if w.audit_log_allowed(now) {
            let path = String::from_utf8_lossy(input.req.path.get(input.buf));
            tracing::info!(
                listener = &**name,
                policy,
                client = %who.source,
                identity = who.identity.unwrap_or("-"),
                path = %path,
                "audit: a policy would deny this request"
            );
        }
    });
    if verdict == Verdict::Allow {
        return Ok(());
    }
    w.metrics.denied(name, policies.name_of(verdict), false);
    Err(ErrorKind::Denied)
}

/// Where a routed request goes.
pub(super) struct Routed<'a> {
    pub route: &'a Route,
    /// The target's stats and log names.
    pub target: &'a RouteTarget,
    /// The cluster, by index into the snapshot's; none for a route that answers itself.
    pub cluster: Option<usize>,
}

/// Why routing refused a request.
pub(super) enum Unrouted<'a> {
    /// No route matches.
    NoRoute,
    /// The route's rate limit is reached: the client may try again after `wait`.
    Limited {
        target: &'a RouteTarget,
        wait: Duration,
    },
}

/// Routing: the first route that matches, its cluster (a split's next pick), and the route's
/// rate limit.
pub(super) fn route<'a>(
    l: &Listener<'a>,
    input: &RouteInput<'_>,
    now: Instant,
) -> Result<Routed<'a>, Unrouted<'a>> {
    let ri = l.http.routes.resolve(input).ok_or(Unrouted::NoRoute)?;
    let route = &l.http.routes.routes()[ri];
    let (position, cluster) = match &route.action {
        Action::Cluster(ci) => (0, Some(*ci)),
        Action::Split(s) => {
            let t = s.pick(&mut l.view.splits[ri].borrow_mut());
            (t, Some(s.cluster(t)))
        }
        Action::Direct(_) | Action::Redirect(_) => (0, None),
    };
    let target = &l.view.routes[ri][position];
    if let Some(bucket) = l.view.buckets.get(ri).and_then(Option::as_ref) {
        if let Err(wait) = bucket.borrow_mut().take(now) {
            return Err(Unrouted::Limited { target, wait });
        }
    }
    Ok(Routed {
        route,
        target,
        cluster,
    })
}

/// A cleartext connection on an inbound listener was let in because its port was permissive;
/// a reload may have made the port strict since, and then its next request is refused.
fn still_admitted_in_clear(l: &Listener<'_>, c: &Client) -> bool {
    match (&l.http.inbound, c.destination, c.tls) {
        (Some(inbound), Some(dst), false) => {
            inbound.ports.get(&dst.port()).is_some_and(|p| p.permissive)
        }
        _ => true,
    }
}

/// The service a request on a sidecar's listener goes to (outbound: the mesh service the
/// application called; inbound: the cluster of the workload's port): looked up in the view the
/// request runs under, so that a reload that renumbers clusters cannot misdirect it.
fn service_of(l: &Listener<'_>, destination: Option<std::net::SocketAddr>) -> Option<usize> {
    let dst = destination?;
    if let Some(outbound) = &l.http.outbound {
        return outbound.services.get(&dst).copied();
    }
    Some(l.http.inbound.as_ref()?.ports.get(&dst.port())?.cluster)
}

pub(super) fn listener_of(view: &View, name: &Arc<str>) -> Option<(usize, HttpLimits)> {
    let li = view.listener_index(name)?;
    match &view.snapshot.listeners[li].protocol {
        Protocol::Http(h) => Some((li, h.limits)),
        Protocol::Tcp { .. } => None,
    }
}

/// Handles one request whose head is at `c.data()`. Returns whether the connection stays open.
pub(super) async fn exchange(
    w: &Rc<Worker>,
    view: &Rc<View>,
    li: usize,
    c: &mut Client,
    req: &RequestHead,
    resp: &mut ResponseHead,
) -> bool {
    let started = Instant::now();
    let Some(l) = Listener::of(view, li) else {
        return false;
    };
    let name = &l.spec.name;
    if !still_admitted_in_clear(&l, c) {
        return refuse(w, c, req, name, l.view, ErrorKind::Denied, started).await;
    }
    let service = service_of(&l, c.destination);
    let admitted = {
        let input = RouteInput::new(c.data(), req).for_service(service);
        let who = Caller {
            identity: c.identity(),
            source: c.peer.ip(),
            port: c.destination.map_or(l.spec.bind.port(), |d| d.port()),
            egress: l.http.outbound.is_some(),
        };
        admit(w, &l, &view.snapshot.policies, &input, &who, started)
    };
    if let Err(kind) = admitted {
        return refuse(w, c, req, name, l.view, kind, started).await;
    }
    let input = RouteInput::new(c.data(), req).for_service(service);
    let routed = route(&l, &input, started);
    let Routed {
        route,
        target,
        cluster: ci,
    } = match routed {
        Ok(r) => r,
        Err(Unrouted::NoRoute) => {
            return refuse(w, c, req, name, l.view, ErrorKind::NoRoute, started).await;
        }
        Err(Unrouted::Limited { target, wait }) => {
            let series = (&*target.stats, &*target.log_names);
            let kind = ErrorKind::RateLimited;
            let retry_after = Some(wait);
            return refuse_as(w, c, req, name, l.view, series, kind, started, retry_after).await;
        }
    };
    let request_id = {
        let spec = route.request_id.as_ref().or(l.http.request_id.as_ref());
        super::direct::request_id(w, spec, c.data(), req)
    };
    // What the edits' variables say of the client, copied: the connection is lent on.
    let edits_of =
        |k: &snapshot::Cluster| k.request_headers.is_some() || k.response_headers.is_some();
    let shadow_cluster = route
        .mirror
        .as_deref()
        .and_then(|m| view.snapshot.clusters.get(m.cluster));
    let cluster_edits = ci.is_some_and(|ci| edits_of(&view.snapshot.clusters[ci]))
        || shadow_cluster.is_some_and(edits_of);
    let who = super::direct::Who::of(c, req, route, cluster_edits, request_id.is_some());
    let id = request_id.as_ref().map(super::direct::RequestId::value);
    let lv = (&**name, l.view);
    if let Some(keep) = super::direct::preflight(w, c, req, lv, (route, target), id, started).await
    {
        return keep;
    }
    let Some(ci) = ci else {
        let cluster = None;
        let edits = answer_edits(route, cluster, &who, &request_id);
        let lv = (&**name, l.view);
        let id = request_id.as_ref().map(super::direct::RequestId::value);
        let edits = edits.as_ref();
        return super::direct::answer(w, c, req, lv, route, target, edits, id, started).await;
    };
    // Faults the route injects: a delay, then perhaps an abort instead of forwarding. The
    // route's timeout counts from after a delay, as if the request had arrived then.
    let mut forward_from = started;
    if let Some(f) = route.fault.as_deref() {
        let eligible = f.header.as_deref().is_none_or(|name| {
            let buf = c.data();
            req.headers
                .iter()
                .any(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        });
        let hit = |share: u32| share == u32::MAX || w.with_rng(|r| (r.next_u64() as u32) < share);
        if eligible {
            if let Some((delay, share)) = f.delay {
                if hit(share) {
                    target.stats.count(crate::metrics::Count::FaultDelay, 1);
                    monoio::time::sleep(delay).await;
                    forward_from = Instant::now();
                }
            }
            if let Some((status, grpc_status, share)) = f.abort {
                if hit(share) {
                    let answer_edits = answer_edits(route, None, &who, &request_id);
                    let lv = (&**name, l.view);
                    let id = request_id.as_ref().map(super::direct::RequestId::value);
                    let (e, codes) = (answer_edits.as_ref(), (status, grpc_status));
                    return super::direct::abort(
                        w, c, req, lv, route, target, codes, e, id, started,
                    )
                    .await;
                }
            }
        }
    }
    let (trace, export) = {
        let buf = c.data();
        let tp = req.traceparent.map(|s| s.get(buf));
        let b3 = req.b3.map(|s| s.get(buf));
        w.with_rng(|r| {
            let mut t = Trace::continue_or_start(tp, b3, r);
            let export = w.spans.sample(&mut t, r);
            (t, export)
        })
    };
    let note = forward::Note::default();
    let cluster = &view.snapshot.clusters[ci];
    let stats = &target.stats;
    let edits = request_edits(route, cluster, &who, &request_id);
    let answer_edits = answer_edits(route, Some(cluster), &who, &request_id);
    // A copy for the shadow: room taken before the body is buffered; the route's edits and
    // the shadow cluster's.
    let drawn = forward::mirror::Drawn::draw(w, route.mirror.as_deref(), req, &target.stats);
    let shadow_edits = shadow_cluster
        .filter(|_| drawn.is_some())
        .and_then(|k| request_edits(route, k, &who, &request_id));
    let shadow = match (&drawn, route.mirror.as_deref()) {
        (Some(d), Some(spec)) => Some(forward::mirror::Shadow::new(
            d,
            spec,
            view,
            &target.stats,
            shadow_edits.as_ref(),
        )),
        _ => None,
    };
    // The target the route rewrites the request's to, if it does.
    let mut sent_target = Vec::new();
    let rewritten = route.rewrite.as_deref().is_some_and(|rw| {
        let matched = match &route.matcher.path {
            Some(crate::route::PathMatch::Prefix(p)) => p.len(),
            _ => 0,
        };
        rw.target(req.path_or_root(c.data()), matched, &mut sent_target)
    });
    // The request's path was normalized: a dot segment in the rewritten one came from the
    // rewrite (a prefix joined to `../`, a substitution), and would take the upstream out of
    // the directory the rewrite confines it to. Refused.
    if rewritten && crate::rewrite::has_dot_segment(&sent_target) {
        return refuse(w, c, req, name, l.view, ErrorKind::BadPath, started).await;
    }
    let exchange = forward::Exchange {
        worker: w,
        req,
        cluster,
        cv: &view.clusters[ci],
        retry: route.retry.as_ref(),
        stats,
        limits: &l.http.limits,
        timeout: route.timeout.unwrap_or(defaults::ROUTE_TIMEOUT),
        started: forward_from,
        trace: &trace,
        note: &note,
        edits: edits.as_ref(),
        answer_edits: answer_edits.as_ref(),
        target: rewritten.then_some(&sent_target[..]),
        host: route.rewrite.as_deref().and_then(|rw| rw.host.as_ref()),
        compress: route
            .compression
            .as_deref()
            .map(|spec| super::coded::Offer::of(spec, req, c.data(), stats)),
        mirror: shadow,
    };
    let names = (&**name, &*target.log_names);
    let names_seen = (Some(&*route.name), Some(&*cluster.name));
    let log = l.view.log.as_ref();
    let mut seen = Seen::new(
        w,
        c.data(),
        req,
        names,
        log,
        names_seen.0,
        names_seen.1,
        started,
    );
    if export {
        seen.export_span(w, c.data(), req);
    }
    if let Some(id) = &request_id {
        seen.request_id(id.value());
    }
    if rewritten {
        seen.upstream_path(&sent_target);
    }
    let result = exchange.run(c, resp).await;
    let end = Instant::now();
    c.ended = end;
    match result {
        Ok(done) => {
            stats.record(done.status, end - started);
            seen.report(w, c, done.status, None, end, Some(&note), Some(&trace));
            done.client_keep_alive
        }
        Err(fail) => {
            // The answer had begun: its status is the upstream's.
            let answered = note.progress.started.get();
            let status = if answered {
                resp.status
            } else {
                fail.kind.status()
            };
            stats.record(status, end - started);
            if !answered {
                l.view.stats.local_reply(fail.kind);
            }
            // The answer had begun (the connection is cut so the client sees it incomplete), or
            // the client is gone: nothing more to send.
            if answered || fail.kind == ErrorKind::ClientClosed {
                let (note, trace) = (Some(&note), Some(&trace));
                seen.report(w, c, status, Some(fail.kind), end, note, trace);
                return false;
            }
            let consumed = note.body_consumed.get();
            let close = !consumed || fail.kind.closes_connection() || !req.keep_alive;
            let head_request = req.method == Method::Head;
            // The route's answer edits go on its failures too (the request id, CORS fields: a
            // browser can read a 502 from an allowed origin).
            let edits = answer_edits.as_ref();
            let sent = local_reply_after(w, c, fail.kind, head_request, close, None, edits).await;
            note.progress
                .bytes_out
                .set(note.progress.bytes_out.get() + sent.1);
            let (note, trace) = (Some(&note), Some(&trace));
            seen.report(w, c, status, Some(fail.kind), end, note, trace);
            sent.0 && !close
        }
    }
}

/// What a forwarded request's fields are edited with, if anything: the route's edits, the
/// cluster's, and the request id.
fn request_edits<'a>(
    route: &'a Route,
    cluster: &'a snapshot::Cluster,
    who: &'a super::direct::Who,
    id: &'a Option<super::direct::RequestId<'a>>,
) -> Option<RequestEdits<'a>> {
    let (r, k) = (
        route.request_headers.as_deref(),
        cluster.request_headers.as_deref(),
    );
    if r.is_none() && k.is_none() && id.is_none() {
        return None;
    }
    Some(RequestEdits {
        route: r,
        cluster: k,
        vars: vars(route, Some(cluster), who, id),
        request_id: id.as_ref().map(super::direct::RequestId::field),
    })
}

/// What the answer's fields are edited with, if anything: the cluster's edits, the route's, and
/// the request id echoed.
fn answer_edits<'a>(
    route: &'a Route,
    cluster: Option<&'a snapshot::Cluster>,
    who: &'a super::direct::Who,
    id: &'a Option<super::direct::RequestId<'a>>,
) -> Option<ResponseEdits<'a>> {
    let (r, k) = (
        route.response_headers.as_deref(),
        cluster.and_then(|k| k.response_headers.as_deref()),
    );
    let echoed = id.as_ref().and_then(super::direct::RequestId::echoed);
    let cors = route.cors.as_deref().map(|cors| {
        let allowed = who.origin.as_deref().filter(|o| cors.allows(o));
        (cors, allowed)
    });
    if r.is_none() && k.is_none() && echoed.is_none() && cors.is_none() {
        return None;
    }
    Some(ResponseEdits {
        cluster: k,
        route: r,
        vars: vars(route, cluster, who, id),
        request_id: echoed,
        cors,
        coding: None,
    })
}

fn vars<'a>(
    route: &'a Route,
    cluster: Option<&'a snapshot::Cluster>,
    who: &'a super::direct::Who,
    id: &'a Option<super::direct::RequestId<'a>>,
) -> Vars<'a> {
    Vars {
        client_ip: who.ip(),
        identity: who.identity.as_deref(),
        request_id: id.as_ref().map(super::direct::RequestId::value),
        route: &route.name,
        cluster: cluster.map_or("", |k| &k.name),
        upstream: None,
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
