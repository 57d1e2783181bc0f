//! Live taps through the control plane (`ringmesh ctl tap`): an admin asks for one node's tap,
//! the node's proxy picks the request up on its own long-poll, taps itself and posts the events
//! back, and the admin reads them here. The proxy's admin port is never reached from outside:
//! the node calls out, over its mTLS identity, as it does for its snapshots.
//!
//! ```text
//! admin:  POST /v1/nodes/{node}/taps {listener, route, cluster, n}  -> 201 {"id"}
//!         GET  /v1/taps/{id}?wait=10s  -> {"events": [...], "picked_up", "done", "dropped"}
//!         DELETE /v1/taps/{id}
//! node:   GET  /v1/nodes/{node}/taps?wait=25s   -> {"taps": [{id, listener, route, cluster, n}]}
//!         POST /v1/nodes/{node}/taps/{id}  (JSON lines; ?done=1 at the end) -> 200, or 410 gone
//! ```
//!
//! Everything is bounded: taps in all and per node, events held per tap (past that, the
//! oldest wait and new ones are counted as dropped), and a tap its admin stopped reading for
//! [`ABANDONED`] is removed, which the node learns at its next post (410).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::watch::Signal;
use crate::http::{Request, Response};

/// Taps at once, in all and per node.
const MAX_TAPS: usize = 64;
const MAX_PER_NODE: usize = 8;

/// Events held for a reader that has not taken them, per tap, and their bytes per tap and
/// over all taps.
const HELD: usize = 10_000;
const HELD_BYTES: usize = 4 << 20;
const ALL_HELD_BYTES: usize = 64 << 20;

/// A tap handed to its node and not fed within this long is offered again (the answer was
/// lost, or the proxy could not take it then).
const REOFFER: Duration = Duration::from_secs(5);

/// A tap whose admin has not read it for this long is removed.
pub(super) const ABANDONED: Duration = Duration::from_secs(15);

/// Events a tap may ask for, and its default (as the proxy's own `/tap`).
use ringmesh_core::tap::{DEFAULT_EVENTS as N_DEFAULT, MAX_EVENTS as N_MAX};

/// Longest filter value.
const MAX_FILTER: usize = 256;

#[derive(Debug)]
struct Tap {
    node: String,
    filter: [Option<String>; 3],
    n: u64,
    /// When the node was handed the tap, and whether it has posted for it since.
    offered: Option<Instant>,
    picked_up: bool,
    done: bool,
    /// Events as the node sent them (each checked to be a JSON object), and their bytes.
    events: VecDeque<Vec<u8>>,
    held: usize,
    dropped: u64,
    read_at: Instant,
}

/// The taps in progress.
#[derive(Debug, Default)]
pub(super) struct Taps {
    taps: BTreeMap<String, Tap>,
}

fn filters(v: &Value) -> Result<[Option<String>; 3], String> {
    let mut out: [Option<String>; 3] = Default::default();
    for (i, k) in ["listener", "route", "cluster"].into_iter().enumerate() {
        match v.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_FILTER => {
                out[i] = Some(s.clone());
            }
            Some(_) => return Err(format!("{k}: expected a name of 1 to {MAX_FILTER} bytes")),
        }
    }
    Ok(out)
}

impl Taps {
    fn sweep(&mut self, now: Instant) {
        self.taps
            .retain(|_, t| now.saturating_duration_since(t.read_at) < ABANDONED);
    }

    /// `POST /v1/nodes/{node}/taps`.
    pub(super) fn start(&mut self, node: &str, body: &[u8], id: String) -> Response {
        self.sweep(Instant::now());
        let v: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return Response::error(400, &format!("invalid JSON: {e}")),
            }
        };
        let filter = match filters(&v) {
            Ok(f) => f,
            Err(e) => return Response::error(400, &e),
        };
        let n = match v.get("n") {
            None | Some(Value::Null) => N_DEFAULT,
            Some(n) => match n.as_u64() {
                Some(n) if (1..=N_MAX).contains(&n) => n,
                _ => return Response::error(400, &format!("n: expected 1 to {N_MAX}")),
            },
        };
        let per_node = self.taps.values().filter(|t| t.node == node).count();
        if self.taps.len() >= MAX_TAPS || per_node >= MAX_PER_NODE {
            return Response::error(
                429,
                &format!("too many taps in progress ({MAX_TAPS} in all, {MAX_PER_NODE} per node)"),
            );
        }
        self.taps.insert(
            id.clone(),
            Tap {
                node: node.to_string(),
                filter,
                n,
                offered: None,
                picked_up: false,
                done: false,
                events: VecDeque::new(),
                held: 0,
                dropped: 0,
                read_at: Instant::now(),
            },
        );
        Response::json(201, json!({ "id": id }).to_string() + "\n")
    }

    /// The taps asked of `node` that it has not taken up (not offered yet, or offered and not
    /// fed for [`REOFFER`]), now offered.
    pub(super) fn pick_up(&mut self, node: &str) -> Vec<Value> {
        let now = Instant::now();
        self.sweep(now);
        self.taps
            .iter_mut()
            .filter(|(_, t)| {
                t.node == node
                    && !t.picked_up
                    && t.offered
                        .is_none_or(|at| now.saturating_duration_since(at) >= REOFFER)
            })
            .map(|(id, t)| {
                t.offered = Some(now);
                json!({
                    "id": id, "listener": t.filter[0], "route": t.filter[1],
                    "cluster": t.filter[2], "n": t.n,
                })
            })
            .collect()
    }

    /// `POST /v1/nodes/{node}/taps/{id}`: events from the node, one JSON object per line.
    pub(super) fn events(&mut self, node: &str, id: &str, req: &Request) -> Response {
        let all_held: usize = self.taps.values().map(|t| t.held).sum();
        let Some(t) = self.taps.get_mut(id).filter(|t| t.node == node) else {
            return Response::error(410, "no such tap: its reader is gone");
        };
        let lines: Vec<&[u8]> = req
            .body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        // The whole post is checked before any of it is kept.
        if !lines
            .iter()
            .all(|l| serde_json::from_slice::<Value>(l).is_ok_and(|v| v.is_object()))
        {
            return Response::error(400, "expected one JSON object per line");
        }
        t.picked_up = true;
        let mut room = ALL_HELD_BYTES.saturating_sub(all_held);
        for line in lines {
            if t.events.len() >= HELD || t.held + line.len() > HELD_BYTES || line.len() > room {
                t.dropped += 1;
                continue;
            }
            t.held += line.len();
            room -= line.len();
            t.events.push_back(line.to_vec());
        }
        if let Some(d) = req.param("dropped").and_then(|d| d.parse::<u64>().ok()) {
            t.dropped = t.dropped.saturating_add(d);
        }
        if req.param("done") == Some("1") {
            t.done = true;
        }
        Response::json(200, "{}\n")
    }

    /// What an admin's read takes now: `None` while there is nothing new (it waits).
    fn take(&mut self, id: &str, waited: bool) -> Option<Response> {
        let Some(t) = self.taps.get_mut(id) else {
            return Some(Response::error(404, "no such tap (ended, or abandoned)"));
        };
        t.read_at = Instant::now();
        if t.events.is_empty() && !t.done && !waited {
            return None;
        }
        // Each event is a JSON object already checked: the answer is written around them.
        let mut body = Vec::with_capacity(t.held + t.events.len() + 128);
        body.extend_from_slice(b"{\"events\":[");
        for (i, e) in t.events.drain(..).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e);
        }
        t.held = 0;
        body.extend_from_slice(
            format!(
                "],\"picked_up\":{},\"done\":{},\"dropped\":{}}}\n",
                t.picked_up, t.done, t.dropped
            )
            .as_bytes(),
        );
        if t.done {
            self.taps.remove(id);
        }
        Some(Response::json(200, body))
    }

    /// `DELETE /v1/taps/{id}`.
    pub(super) fn stop(&mut self, id: &str) -> Response {
        match self.taps.remove(id) {
            Some(_) => Response::json(200, "{}\n"),
            None => Response::error(404, "no such tap"),
        }
    }
}

/// Reads `?wait=` (a duration up to `max`, `default` when absent).
pub(super) fn wait_param(
    req: &Request,
    default: Duration,
    max: Duration,
) -> Result<Duration, Response> {
    match req.param("wait") {
        None => Ok(default),
        Some(w) => match crate::config::decode::parse_duration(w) {
            Some(d) if d <= max => Ok(d),
            _ => Err(Response::error(
                400,
                &format!(
                    "wait: expected a duration up to {}s, such as 10s",
                    max.as_secs()
                ),
            )),
        },
    }
}

/// Waits until `ready` has an answer: asked at once, whenever `signal` moves, every `tick`, and
/// a last time (`true`: it must answer then) when `wait` is over.
async fn until(
    signal: &Signal,
    wait: Duration,
    tick: Duration,
    mut ready: impl FnMut(bool) -> Option<Response>,
) -> Response {
    let deadline = monoio::time::sleep(wait);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        let changed = signal.wait();
        if let Some(r) = ready(false) {
            return r;
        }
        monoio::select! {
            _ = changed => {}
            _ = monoio::time::sleep(tick) => {}
            _ = &mut deadline => break,
        }
    }
    ready(true).unwrap_or_else(|| Response::error(404, "gone"))
}

/// `GET /v1/taps/{id}?wait=10s`: the events so far, waiting up to `wait` for the first.
pub(super) async fn read(
    taps: &std::cell::RefCell<Taps>,
    signal: &Signal,
    stopping: &std::cell::Cell<bool>,
    id: &str,
    req: &Request,
) -> Response {
    // Shorter than a tap's abandonment: a reader waiting keeps its tap.
    let wait = match wait_param(req, Duration::from_secs(10), Duration::from_secs(10)) {
        Ok(w) => w,
        Err(r) => return r,
    };
    until(signal, wait, wait, |last| {
        taps.borrow_mut().take(id, last || stopping.get())
    })
    .await
}

/// `GET /v1/nodes/{node}/taps?wait=25s`: the taps asked of `node`, as soon as there is one;
/// looked at again every [`REOFFER`], for a tap offered and never fed is offered again.
pub(super) async fn poll(
    taps: &std::cell::RefCell<Taps>,
    signal: &Signal,
    stopping: &std::cell::Cell<bool>,
    node: &str,
    req: &Request,
) -> Response {
    let wait = match wait_param(req, Duration::from_secs(25), Duration::from_secs(60)) {
        Ok(w) => w,
        Err(r) => return r,
    };
    until(signal, wait, REOFFER, |last| {
        let found = taps.borrow_mut().pick_up(node);
        (!found.is_empty() || stopping.get() || last)
            .then(|| Response::json(200, json!({ "taps": found }).to_string() + "\n"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str, query: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            path: "/".into(),
            segments: vec![],
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            if_match: None,
            authorization: None,
            host: None,
            origin: false,
            content_type: None,
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    #[test]
    fn a_tap_goes_to_its_node_only_and_ends_when_done() {
        let mut t = Taps::default();
        assert_eq!(
            t.start("a", br#"{"route":"api","n":2}"#, "x".into()).status,
            201
        );
        assert!(t.pick_up("b").is_empty());
        let got = t.pick_up("a");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["route"], "api");
        assert!(t.pick_up("a").is_empty(), "picked up once");
        // Another node cannot post into it.
        assert_eq!(t.events("b", "x", &post("{}\n", &[])).status, 410);
        assert_eq!(
            t.events("a", "x", &post("{\"s\":1}\n{\"s\":2}\n", &[("done", "1")]))
                .status,
            200
        );
        // Fed: picked up.
        assert!(t.pick_up("a").is_empty());
        let r = t.take("x", false).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["events"], serde_json::json!([{"s": 1}, {"s": 2}]));
        assert_eq!(v["picked_up"], true);
        assert_eq!(v["done"], true);
        assert_eq!(t.take("x", false).unwrap().status, 404, "removed once read");
    }

    #[test]
    fn bad_requests_and_too_many_taps_are_refused() {
        let mut t = Taps::default();
        assert_eq!(t.start("a", b"{\"n\":0}", "1".into()).status, 400);
        assert_eq!(t.start("a", b"{\"route\":5}", "1".into()).status, 400);
        assert_eq!(t.start("a", b"nope", "1".into()).status, 400);
        for i in 0..MAX_PER_NODE {
            assert_eq!(t.start("a", b"", format!("t{i}")).status, 201);
        }
        assert_eq!(t.start("a", b"", "more".into()).status, 429);
        assert_eq!(t.start("b", b"", "other".into()).status, 201);
        assert_eq!(t.events("a", "t0", &post("not json\n", &[])).status, 400);
        assert_eq!(t.events("a", "t0", &post("[1]\n", &[])).status, 400);
    }

    #[test]
    fn a_tap_offered_and_never_fed_is_offered_again() {
        let mut t = Taps::default();
        t.start("a", b"", "x".into());
        assert_eq!(t.pick_up("a").len(), 1);
        assert!(t.pick_up("a").is_empty());
        if let Some(tap) = t.taps.get_mut("x") {
            tap.offered = Instant::now().checked_sub(REOFFER);
        }
        assert_eq!(t.pick_up("a").len(), 1, "offered again");
    }

    #[test]
    fn events_past_the_bound_are_counted_as_dropped() {
        let mut t = Taps::default();
        t.start("a", b"", "x".into());
        let lines = "{}\n".repeat(HELD + 5);
        t.events("a", "x", &post(&lines, &[("dropped", "3")]));
        let r = t.take("x", false).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), HELD);
        assert_eq!(v["dropped"], 8);
    }
}
