//! Long-poll watches: a proxy waits on `GET /v1/watch/{node}` until its node's snapshot
//! changes. One generation counter wakes them; each waiting watch holds a slot that goes when it
//! ends, however it ends.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use super::*;
use crate::http::{Request, Response};

/// Wakes the watchers when the state changes. Each waiting watch holds a slot, removed when it
/// ends however it ends, so the set stays as large as the watches in progress.
#[derive(Default)]
pub(super) struct Signal {
    pub(super) generation: Cell<u64>,
    pub(super) next_key: Cell<u64>,
    pub(super) waiting: RefCell<HashMap<u64, Waker>>,
}

impl Signal {
    pub(super) fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, w) in waiting {
            w.wake();
        }
    }

    pub(super) fn wait(&self) -> Changed<'_> {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        Changed {
            signal: self,
            generation: self.generation.get(),
            key,
        }
    }
}

pub(super) struct Changed<'a> {
    pub(super) signal: &'a Signal,
    pub(super) generation: u64,
    pub(super) key: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.signal
            .waiting
            .borrow_mut()
            .insert(self.key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.signal.waiting.borrow_mut().remove(&self.key);
    }
}

/// `GET /v1/watch/{node}?version=V&applied=A&wait=30s`: the node's snapshot as soon as its
/// version differs from `V` (at once without `V`), or 304 after `wait`.
pub(super) async fn watch(plane: &Plane, node: &str, req: &Request) -> Response {
    let seen: Option<u64> = req.param("version").and_then(|v| v.parse().ok());
    let applied: Option<u64> = req.param("applied").and_then(|v| v.parse().ok());
    let wait = match req.param("wait") {
        None => WAIT_DEFAULT,
        Some(w) => match crate::config::decode::parse_duration(w) {
            Some(d) if d <= WAIT_MAX => d,
            _ => return Response::error(400, "wait: expected a duration up to 5m, such as 30s"),
        },
    };
    let deadline = monoio::time::sleep(wait);
    let mut deadline = std::pin::pin!(deadline);
    let _watching = Watching::new(plane);
    loop {
        if plane.stopping.get() {
            return Response::error(503, "the control plane is stopping");
        }
        let changed = plane.signal.wait();
        {
            let mut st = plane.st.borrow_mut();
            let Some(n) = st.nodes.get_mut(node) else {
                return Response::error(404, &format!("no node named `{node}` in the mesh"));
            };
            n.last_seen = Some(SystemTime::now());
            let mut news = false;
            if let Some(a) = applied.filter(|a| n.applied.is_none_or(|(v, _)| v != *a)) {
                n.applied(a, SystemTime::now());
                news = true;
            }
            let answer = (seen != Some(n.version)).then(|| {
                let mut r = Response::json(200, n.body.as_bytes());
                r.etag = Some(n.version);
                r
            });
            drop(st);
            if let Some(store) = &plane.store {
                replicated::note_node(plane, store, node, news);
            }
            if let Some(r) = answer {
                return r;
            }
        }
        monoio::select! {
            _ = changed => {}
            _ = &mut deadline => return Response {
                status: 304,
                ctype: "application/json",
                body: Vec::new(),
                etag: seen,
                error_kind: None,
                headers: &[],
            },
        }
    }
}

/// Counts a watch in progress for as long as it lasts.
pub(super) struct Watching<'a>(&'a Plane);

impl<'a> Watching<'a> {
    pub(super) fn new(plane: &'a Plane) -> Self {
        plane.st.borrow_mut().watchers += 1;
        Watching(plane)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        // No borrow of the state is held across an await, so none is held here.
        self.0.st.borrow_mut().watchers -= 1;
    }
}
