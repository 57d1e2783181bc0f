//! `mirror`: a share of a route's requests copied to a shadow cluster, each copy on a task of
//! its own. The copy is taken from the buffered request (the head encoded as the primary's is,
//! with its authority marked `-shadow`, as Envoy marks it, so the shadow can tell), before the
//! primary goes. The shadow's answer is read to its end and discarded.
//!
//! Nothing the shadow does reaches the primary request: the copy never waits for anything the
//! primary needs, its slowness is bounded by the route timeout (then it is dropped), its death
//! is counted, and a worker holds at most [`MAX_IN_FLIGHT`] copies and [`MAX_HELD`] bytes for
//! them (bodies waiting to be copied included; past either, copies are skipped and counted) so
//! that a dead or slow shadow cannot pile up memory or connections. A body is waited for only
//! as long as it would be without the copy, or one second more (then it streams, uncopied).
//! Copies go over HTTP/1.1 (over the cluster's TLS, if any), on the shadow endpoints' pooled
//! connections when there are some.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use super::super::client::Client;
use super::Exchange;
use crate::endpoint::{Endpoint, UpConn};
use crate::head::{Framing, Method, ResponseHead};
use crate::http1::{ChunkedDecoder, encode};
use crate::io::Io;
use crate::metrics::{Count, RouteStats};
use crate::route::Mirror;
use crate::worker::state::Worker;
use crate::worker::view::View;

/// Most copies a worker has in flight.
pub(crate) const MAX_IN_FLIGHT: usize = 256;

/// Most bytes a worker holds for copies: bodies being buffered for one, and copies in flight.
pub(crate) const MAX_HELD: usize = 32 << 20;

/// A copy's place in the worker's bounds: one of the copies in flight, and bytes held for it.
/// Both are given back when it is dropped (the copy ended, or was never sent).
pub(in crate::proxy) struct Held {
    worker: Rc<Worker>,
    bytes: usize,
}

impl Held {
    /// Takes a place and `bytes`, if both bounds allow.
    fn take(w: &Rc<Worker>, bytes: usize) -> Option<Held> {
        let held = w.mirror_bytes.get();
        if held + bytes > MAX_HELD || w.mirrors.get() >= MAX_IN_FLIGHT {
            return None;
        }
        w.mirror_bytes.set(held + bytes);
        w.mirrors.set(w.mirrors.get() + 1);
        Some(Held {
            worker: w.clone(),
            bytes,
        })
    }

    /// Holds `bytes` instead (the copy's actual size, once made).
    fn resize(&mut self, bytes: usize) {
        let w = &self.worker;
        w.mirror_bytes
            .set(w.mirror_bytes.get().saturating_sub(self.bytes) + bytes);
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let w = &self.worker;
        w.mirror_bytes
            .set(w.mirror_bytes.get().saturating_sub(self.bytes));
        w.mirrors.set(w.mirrors.get().saturating_sub(1));
    }
}

/// A request drawn for a copy: its place in the worker's bounds, taken before its body is
/// buffered, and handed to the copy (or given back, counted as skipped, if none is sent).
pub(in crate::proxy) struct Drawn {
    /// Room for the copy's body (0: none to keep).
    body_room: usize,
    held: std::cell::Cell<Option<Held>>,
    stats: Rc<RouteStats>,
}

impl Drop for Drawn {
    fn drop(&mut self) {
        // Drawn, and neither sent nor counted (the request failed before its copy was made).
        if self.held.take().is_some() {
            self.stats.count(Count::MirrorSkipped, 1);
        }
    }
}

impl Drawn {
    /// Draws the request for a copy at the route's share, and takes its place: its head and as
    /// much of its body as the mirror copies. `None`: not copied (not drawn, or counted as
    /// skipped: a body too long to copy, an upgrade, or the worker's bounds reached).
    pub fn draw(
        w: &Rc<Worker>,
        spec: Option<&Mirror>,
        req: &crate::head::RequestHead,
        stats: &Rc<RouteStats>,
    ) -> Option<Drawn> {
        let spec = spec?;
        let hit = spec.share == u32::MAX || w.with_rng(|r| (r.next_u64() as u32) < spec.share);
        if !hit {
            return None;
        }
        let body_room = match req.framing {
            Framing::Length(n) if n <= spec.max_body => n as usize,
            Framing::Chunked => spec.max_body as usize,
            Framing::None | Framing::Close => 0,
            Framing::Length(_) => usize::MAX,
        };
        let held =
            (body_room != usize::MAX && req.upgrade.is_none() && req.method != Method::Connect)
                .then(|| Held::take(w, req.head_len + HEAD_ROOM + body_room))
                .flatten();
        match held {
            Some(h) => Some(Drawn {
                body_room,
                held: std::cell::Cell::new(Some(h)),
                stats: stats.clone(),
            }),
            None => {
                stats.count(Count::MirrorSkipped, 1);
                None
            }
        }
    }
}

/// What the proxy adds to a head it forwards, at most (its own fields, edits aside).
const HEAD_ROOM: usize = 1024;

/// A request drawn for a copy, and what the copy needs.
#[derive(Clone, Copy)]
pub(in crate::proxy) struct Shadow<'a> {
    pub spec: &'a Mirror,
    pub view: &'a Rc<View>,
    pub stats: &'a Rc<RouteStats>,
    /// The copy's edits: the route's, and the shadow cluster's (not the primary's).
    pub edits: Option<&'a crate::head::edit::RequestEdits<'a>>,
    drawn: &'a Drawn,
}

impl<'a> Shadow<'a> {
    pub fn new(
        drawn: &'a Drawn,
        spec: &'a Mirror,
        view: &'a Rc<View>,
        stats: &'a Rc<RouteStats>,
        edits: Option<&'a crate::head::edit::RequestEdits<'a>>,
    ) -> Shadow<'a> {
        Shadow {
            spec,
            view,
            stats,
            edits,
            drawn,
        }
    }

    /// Room for the body: it is buffered up to this for the copy.
    pub fn body_room(&self) -> usize {
        self.drawn.body_room
    }
}

impl Exchange<'_> {
    /// Sends a copy of the request (its head and `body_len` bytes of body in the client
    /// buffer) to the shadow, on its own task. `body_len: None`: the body streams, and is not
    /// copied.
    pub(super) fn mirror(&self, c: &Client, body_len: Option<usize>) {
        let Some(shadow) = self.mirror else { return };
        let w = self.worker;
        // The place taken at the draw: the copy's, or given back now.
        let Some(mut held) = shadow.drawn.held.take() else {
            return;
        };
        let skipped = || shadow.stats.count(Count::MirrorSkipped, 1);
        let Some(body_len) = body_len.filter(|&n| n as u64 <= shadow.spec.max_body) else {
            return skipped();
        };
        let ci = shadow.spec.cluster;
        let (Some(cv), Some(cluster)) = (
            shadow.view.clusters.get(ci),
            shadow.view.snapshot.clusters.get(ci),
        ) else {
            return skipped();
        };
        let now = Instant::now();
        let Some(ep) = cv.pick(w.draw(), cluster, now, None) else {
            shadow.stats.count(Count::MirrorFailed, 1);
            return;
        };
        let mut fwd = self.forwarded(c, &ep, Some(now + self.timeout), now);
        fwd.edits = shadow.edits;
        let buf = c.data();
        let authority = fwd
            .authority
            .or(self.req.authority.map(|a| a.get(buf)))
            .unwrap_or(&ep.host);
        let marked = shadow_authority(authority);
        fwd.authority = Some(&marked);
        let head_len = self.req.head_len;
        let mut copy = Vec::with_capacity(head_len + HEAD_ROOM + body_len);
        encode::request_head(&mut copy, buf, self.req, &fwd);
        copy.extend_from_slice(&buf[head_len..head_len + body_len]);
        // The copy holds its place while in flight, for its actual size.
        held.resize(copy.len());
        let job = Copy {
            worker: w.clone(),
            view: shadow.view.clone(),
            cluster: ci,
            ep,
            head_request: self.req.method == Method::Head,
            timeout: self.timeout,
        };
        let stats = shadow.stats.clone();
        monoio::spawn(async move {
            let answered = monoio::time::timeout(job.timeout, job.send(copy)).await;
            let outcome = match answered {
                Ok(Ok(())) => Count::MirrorAnswered,
                _ => Count::MirrorFailed,
            };
            stats.count(outcome, 1);
            drop(held);
        });
    }
}

/// `host-shadow`, or `host-shadow:port`.
fn shadow_authority(authority: &[u8]) -> Vec<u8> {
    // The port follows the last colon, unless that colon is inside an IPv6 literal.
    let port_at = authority
        .iter()
        .rposition(|&b| b == b':')
        .filter(|&i| !authority[i..].contains(&b']'));
    let (host, port) = authority.split_at(port_at.unwrap_or(authority.len()));
    let mut out = Vec::with_capacity(authority.len() + 7);
    out.extend_from_slice(host);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(port);
    out
}

/// One copy on its way.
struct Copy {
    worker: Rc<Worker>,
    view: Rc<View>,
    cluster: usize,
    ep: Rc<Endpoint>,
    head_request: bool,
    timeout: Duration,
}

/// The shadow's answer could not be had.
fn failed() -> std::io::Error {
    std::io::Error::other("no answer from the shadow")
}

impl Copy {
    /// Sends `copy` and reads the answer to its end, discarding it; the connection goes back
    /// to the pool when it can be reused.
    async fn send(&self, copy: Vec<u8>) -> std::io::Result<()> {
        let cluster = &self.view.snapshot.clusters[self.cluster];
        let mut conn = self.connection().await?;
        let (r, _) = conn.stream.write_all(copy).await;
        r?;
        let w = &self.worker;
        let mut buf = w.bufs.get();
        let r = self.discard_answer(&mut conn.stream, &mut buf).await;
        w.put_buf(buf);
        if r? {
            self.ep.checkin(conn, Instant::now(), cluster.pool_max_idle);
        }
        Ok(())
    }

    /// A pooled HTTP/1.1 connection seen alive, or a new one within the cluster's circuit
    /// breakers and the endpoint's pacing (counted as the primaries' are), and the connect
    /// timeout.
    async fn connection(&self) -> std::io::Result<UpConn> {
        let cv = &self.view.clusters[self.cluster];
        let cluster = &self.view.snapshot.clusters[self.cluster];
        while let Some(c) = self.ep.checkout(Instant::now(), cluster.pool_idle_timeout) {
            if !crate::sys::idle_connection_is_dead(c.stream.as_raw_fd()) {
                return Ok(c);
            }
        }
        let state = &cv.state;
        let limits = &cluster.limits;
        if state.connections.get() >= limits.max_connections
            || state.pending.get() >= limits.max_pending
        {
            return Err(failed());
        }
        let Some((open, connecting)) = self.ep.pacing.try_start(limits.endpoint, false) else {
            return Err(failed());
        };
        let pending = super::upstream::Pending::count(&state.pending);
        let dial = crate::dial::dial(self.ep.addr, cluster.tls.as_ref(), true);
        let t = monoio::time::timeout(cluster.connect_timeout, dial).await;
        drop(connecting);
        drop(pending);
        let t = t.map_err(|_| failed())??;
        Ok(UpConn::new(Io::Wire(t), state.clone(), Some(open)))
    }

    /// Reads the answer's head and body, keeping nothing. `Ok(true)`: the connection can be
    /// reused.
    async fn discard_answer(&self, up: &mut Io, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut resp = ResponseHead::default();
        let head_len = loop {
            if !buf.is_empty() {
                match resp.parse(buf, super::super::body::MAX_RESPONSE_HEAD) {
                    Ok(Some(n)) if resp.is_interim() => {
                        buf.drain(..n);
                        continue;
                    }
                    Ok(Some(n)) => break n,
                    Ok(None) => {}
                    Err(_) => return Err(failed()),
                }
            }
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity());
            }
            read_more(up, buf).await?;
        };
        buf.drain(..head_len);
        match resp.body_framing(self.head_request) {
            // Bytes after a bodiless answer: not a connection to reuse.
            Framing::None => Ok(resp.keep_alive && buf.is_empty()),
            Framing::Length(mut left) => loop {
                let n = (buf.len() as u64).min(left);
                left -= n;
                if left == 0 {
                    // More than the answer declared: the connection is not one to reuse.
                    return Ok(resp.keep_alive && n == buf.len() as u64);
                }
                buf.clear();
                read_more(up, buf).await?;
            },
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                loop {
                    let p = d.feed(buf, |_| {}).map_err(|_| failed())?;
                    if p.done {
                        return Ok(resp.keep_alive && p.consumed == buf.len());
                    }
                    buf.clear();
                    read_more(up, buf).await?;
                }
            }
            Framing::Close => {
                while read_more(up, buf).await.is_ok() {
                    buf.clear();
                }
                Ok(false)
            }
        }
    }
}

/// Reads more into `buf`; an end of stream is an error.
async fn read_more(up: &mut Io, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let b = std::mem::take(buf);
    let len = b.len();
    let (r, b) = up.read(b.slice_mut(len..)).await;
    *buf = b.into_inner();
    match r? {
        0 => Err(failed()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::shadow_authority;

    #[test]
    fn shadow_authorities_keep_their_port() {
        let s = |a: &str| String::from_utf8(shadow_authority(a.as_bytes())).unwrap();
        assert_eq!(s("api.example"), "api.example-shadow");
        assert_eq!(s("api.example:8080"), "api.example-shadow:8080");
        assert_eq!(s("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(s("[::1]"), "[::1]-shadow");
    }
}
