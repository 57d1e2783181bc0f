//! What the access log and tap are told about a request: decided as it starts (sampled in, or
//! tapped), written as it ends.

use std::rc::Rc;
use std::time::Instant;

use super::client::Client;
use super::forward;
use crate::access_log::{self, Sink};
use crate::error::ErrorKind;
use crate::head::RequestHead;
use crate::spans;
use crate::trace::Trace;
use crate::worker::state::Worker;

/// What the access log and tap are told about a request.
pub(super) struct Seen<'a> {
    listener: &'a str,
    /// The access log's rendering of listener, route and cluster.
    names: &'a [u8],
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    started: Instant,
    /// Set when the request is logged (sampled in) or tapped, decided as it starts.
    watch: Option<Watch<'a>>,
}

/// A logged or tapped request: where its line goes, and the parts of its head the line quotes
/// (copied, as the client buffer moves on while the request is forwarded).
struct Watch<'a> {
    sink: Option<&'a Sink>,
    tapped: bool,
    /// A span goes to the exporter.
    span: bool,
    head: Vec<u8>,
    /// Where the request id and the rewritten target are in `head`, after method, authority
    /// and path.
    request_id: Option<(usize, usize)>,
    upstream_path: Option<(usize, usize)>,
    method: usize,
    authority: Option<usize>,
}

impl<'a> Seen<'a> {
    /// Decides whether the request starting now is logged or tapped. Costs a random number
    /// when the log samples, an atomic load for the tap check, and nothing else unless
    /// watched.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn new(
        w: &Worker,
        buf: &[u8],
        req: &RequestHead,
        (listener, names): (&'a str, &'a [u8]),
        log: Option<&'a (Rc<Sink>, Option<u32>)>,
        route: Option<&'a str>,
        cluster: Option<&'a str>,
        started: Instant,
    ) -> Seen<'a> {
        let sink = log
            .filter(|(_, threshold)| {
                threshold.is_none_or(|t| w.with_rng(|r| (r.next_u64() as u32) < t))
            })
            .map(|(s, _)| &**s);
        let mut tapped = false;
        w.with_taps(|_| tapped = true);
        let watch = (sink.is_some() || tapped).then(|| Watch::new(w, buf, req, sink, tapped));
        Seen {
            listener,
            names,
            route,
            cluster,
            started,
            watch,
        }
    }

    /// The request's id, for its line (copied when the request is watched).
    pub(super) fn request_id(&mut self, id: &[u8]) {
        if let Some(w) = &mut self.watch {
            w.request_id = Some(w.push(id));
        }
    }

    /// The target sent upstream, when a route rewrote it (copied when the request is watched).
    pub(super) fn upstream_path(&mut self, target: &[u8]) {
        if let Some(w) = &mut self.watch {
            w.upstream_path = Some(w.push(target));
        }
    }

    /// Sends a span for this request to the exporter when it ends.
    pub(super) fn export_span(&mut self, w: &Worker, buf: &[u8], req: &RequestHead) {
        self.watch
            .get_or_insert_with(|| Watch::new(w, buf, req, None, false))
            .span = true;
    }

    /// Logs, taps and exports a request that ended at `end`, if it is watched.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report(
        self,
        w: &Worker,
        c: &Client,
        status: u16,
        error: Option<ErrorKind>,
        end: Instant,
        note: Option<&forward::Note>,
        trace: Option<&Trace>,
    ) {
        let Some(watch) = self.watch else {
            return;
        };
        let h = &watch.head;
        let (authority, path_from) = match watch.authority {
            Some(a) => (Some(&h[watch.method..a]), a),
            None => (None, watch.method),
        };
        let path_to = [watch.request_id, watch.upstream_path]
            .into_iter()
            .flatten()
            .map(|(from, _)| from)
            .min()
            .unwrap_or(h.len());
        let request_id = watch.request_id.map(|(a, b)| &h[a..b]);
        let upstream_path = watch.upstream_path.map(|(a, b)| &h[a..b]);
        let trace_id = trace.map(Trace::trace_id_hex);
        let entry = access_log::Entry {
            time: w.wall_time(end),
            names: self.names,
            endpoint: note.and_then(|n| n.endpoint.get()),
            method: &h[..watch.method],
            authority,
            path: &h[path_from..path_to],
            status,
            bytes_in: note.map_or(0, |n| n.bytes_in.get()),
            bytes_out: note.map_or(0, |n| n.progress.bytes_out.get()),
            duration: end - self.started,
            upstream: note.and_then(|n| n.upstream.get()),
            retries: note.map_or(0, |n| n.retries.get()),
            error,
            trace_id: trace_id.as_ref(),
            request_id,
            upstream_path,
            client_identity: c.identity().map(str::as_bytes),
            client: c.peer,
        };
        if let Some(sink) = watch.sink {
            sink.log(&entry);
        }
        if let (true, Some(trace)) = (watch.span, trace) {
            let path = entry.path;
            let path = &path[..memchr::memchr(b'?', path).unwrap_or(path.len())];
            w.spans.record(&spans::SpanData {
                trace,
                kind: if c.destination.is_some() {
                    spans::Kind::Client
                } else {
                    spans::Kind::Server
                },
                end: entry.time,
                duration: entry.duration,
                method: entry.method,
                path,
                authority: entry.authority,
                scheme: if c.tls { "https" } else { "http" },
                listener: self.listener,
                route: self.route,
                cluster: self.cluster,
                status,
                error: error.map(ErrorKind::name),
                peer: c.peer,
                peer_ip: &c.ip[..c.ip_len],
                upstream: entry.endpoint,
                identity: entry.client_identity,
                retries: entry.retries,
            });
        }
        if watch.tapped {
            w.with_taps(|taps| {
                let mut line = Vec::new();
                for t in taps {
                    if t.filter.matches(self.listener, self.route, self.cluster) {
                        if line.is_empty() {
                            access_log::write_entry(&mut line, &entry, &mut Default::default());
                        }
                        t.offer(&line);
                    }
                }
            });
        }
        w.put_buf(watch.head);
    }
}

impl<'a> Watch<'a> {
    /// Appends `bytes` to the copied head; their range.
    fn push(&mut self, bytes: &[u8]) -> (usize, usize) {
        let from = self.head.len();
        self.head.extend_from_slice(bytes);
        (from, self.head.len())
    }

    /// Copies the parts of the head a line or span quotes.
    fn new(
        w: &Worker,
        buf: &[u8],
        req: &RequestHead,
        sink: Option<&'a Sink>,
        tapped: bool,
    ) -> Watch<'a> {
        let mut head = w.bufs.get();
        head.extend_from_slice(req.method_span.get(buf));
        let method = head.len();
        let authority = req.authority.map(|a| {
            head.extend_from_slice(a.get(buf));
            head.len()
        });
        head.extend_from_slice(req.path.get(buf));
        Watch {
            sink,
            tapped,
            span: false,
            request_id: None,
            upstream_path: None,
            head,
            method,
            authority,
        }
    }
}
