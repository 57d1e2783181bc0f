//! Answers the proxy makes itself: refusals before an upstream is involved, and the local
//! replies that carry an error's status and name (`error::ErrorKind`), in HTTP/1.1 or HTTP/2,
//! in gRPC's form for a gRPC call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Client;
use super::forward;
use super::report::Seen;
use crate::access_log;
use crate::error::ErrorKind;
use crate::head::RequestHead;
use crate::head::edit::ResponseEdits;
use crate::head::reply::LocalReply;
use crate::http1::encode;
use crate::io::HeadsTo;
use crate::worker::state::Worker;
use crate::worker::view::ListenerView;

/// Answers a request with an error before any upstream is involved, counting it as unrouted.
pub(super) async fn refuse(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    listener: &str,
    lview: &ListenerView,
    kind: ErrorKind,
    started: Instant,
) -> bool {
    let series = (&*lview.unrouted, &*lview.unrouted_names);
    refuse_as(w, c, req, listener, lview, series, kind, started, None).await
}

/// Answers a request with an error before any upstream is involved, counting it in `series`
/// (a route's stats and log names). `retry_after`: when the client may try again.
#[allow(clippy::too_many_arguments)]
pub(super) async fn refuse_as(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    listener: &str,
    lview: &ListenerView,
    (stats, log_names): (&crate::metrics::RouteStats, &[u8]),
    kind: ErrorKind,
    started: Instant,
    retry_after: Option<Duration>,
) -> bool {
    let end = Instant::now();
    c.ended = end;
    stats.record(kind.status(), end - started);
    let log = lview.log.as_ref();
    let names = (listener, log_names);
    let seen = Seen::new(w, c.data(), req, names, log, None, None, started);
    let note = forward::Note::default();
    note.bytes_in.set(req.head_len as u64);
    let (keep, sent) = refuse_counted(w, c, req, lview, kind, retry_after).await;
    note.progress.bytes_out.set(sent);
    seen.report(w, c, kind.status(), Some(kind), end, Some(&note), None);
    keep
}

async fn refuse_counted(
    w: &Worker,
    c: &mut Client,
    req: &RequestHead,
    lview: &ListenerView,
    kind: ErrorKind,
    retry_after: Option<Duration>,
) -> (bool, u64) {
    lview.stats.local_reply(kind);
    let close = !c.skip_request(req) || kind.closes_connection() || !req.keep_alive;
    let head_request = req.method == crate::head::Method::Head;
    let (ok, sent) = local_reply_after(w, c, kind, head_request, close, retry_after, None).await;
    (ok && !close, sent)
}

/// Writes an answer the proxy makes itself. Returns whether it was written.
pub(crate) async fn local_reply(
    w: &Worker,
    c: &mut Client,
    kind: ErrorKind,
    head_request: bool,
    close: bool,
) -> (bool, u64) {
    local_reply_after(w, c, kind, head_request, close, None, None).await
}

/// [`local_reply`], saying when to retry (`Retry-After`, in whole seconds rounded up), with the
/// route's answer edits when the request had a route.
#[allow(clippy::too_many_arguments)]
pub(super) async fn local_reply_after(
    w: &Worker,
    c: &mut Client,
    kind: ErrorKind,
    head_request: bool,
    close: bool,
    retry_after: Option<Duration>,
    edits: Option<&ResponseEdits<'_>>,
) -> (bool, u64) {
    let reply = LocalReply {
        kind,
        grpc: c.grpc,
        head_request,
        retry_after: retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
        edits,
    };
    if let Some(h2) = c.stream.as_mut().and_then(HeadsTo::h2) {
        return match h2.send_local_reply(&reply).await {
            Ok(n) => (true, n),
            Err(_) => (false, 0),
        };
    }
    let mut out = w.bufs.get();
    encode::local_reply(&mut out, &reply, close || w.draining());
    let len = out.len() as u64;
    let (ok, out) = c.write(out).await;
    w.put_buf(out);
    (ok, if ok { len } else { 0 })
}

/// Answers a request whose head is refused (malformed, too large, too slow); the connection
/// ends with it.
pub(super) async fn refuse_head(w: &Worker, listener: &Arc<str>, c: &mut Client, kind: ErrorKind) {
    let started = Instant::now();
    let view = w.view();
    let lv = view.listener_index(listener).map(|li| &view.listeners[li]);
    if let Some(lv) = lv {
        lv.stats.local_reply(kind);
        lv.unrouted.record(kind.status(), Duration::ZERO);
    }
    // Nothing of the head is trusted: the line says only what went wrong.
    let blank = RequestHead::default();
    let log = lv.and_then(|lv| lv.log.as_ref());
    let fallback;
    let names: &[u8] = match lv {
        Some(lv) => &lv.unrouted_names,
        None => {
            fallback = access_log::names(listener, None, None);
            &fallback
        }
    };
    let seen = Seen::new(w, &[], &blank, (listener, names), log, None, None, started);
    let note = forward::Note::default();
    if kind != ErrorKind::ClientClosed {
        let (_, n) = local_reply(w, c, kind, false, true).await;
        note.progress.bytes_out.set(n);
    }
    seen.report(w, c, kind.status(), Some(kind), started, Some(&note), None);
}
