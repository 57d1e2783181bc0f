//! What one worker serves from: a config snapshot paired with the worker's own state for it
//! (cluster views, listener stats, splits, access logs, rate-limit buckets). Built whole for each
//! config version and swapped in; a request holds the view it started with until it ends.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::Sink;
use crate::cluster::ClusterView;
use crate::metrics::{ListenerStats, RouteStats};
use crate::route::SplitState;
use crate::snapshot::Snapshot;

/// A snapshot paired with this worker's state for it.
pub(crate) struct View {
    pub snapshot: Arc<Snapshot>,
    /// Aligned with `snapshot.clusters`.
    pub clusters: Vec<ClusterView>,
    /// Aligned with `snapshot.listeners`.
    pub listeners: Vec<ListenerView>,
}

pub(crate) struct ListenerView {
    pub stats: Rc<ListenerStats>,
    /// Per route, per target (in `Route::clusters` order).
    pub routes: Vec<Vec<RouteTarget>>,
    /// Requests answered before a route was chosen.
    pub unrouted: Rc<RouteStats>,
    /// The access log's names of listener, route and cluster for requests answered before a
    /// route was chosen.
    pub unrouted_names: Box<[u8]>,
    /// Per route: the running state of its split (empty for a single cluster).
    pub splits: Vec<RefCell<SplitState>>,
    /// The access log and its sampling threshold (`None`: every request).
    pub log: Option<(Rc<Sink>, Option<u32>)>,
    /// TLS settings with this worker's session cache.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per route: this worker's rate-limit bucket, if the route is limited.
    pub buckets: Vec<Option<RefCell<crate::ratelimit::Bucket>>>,
}

/// One cluster a route sends to, as a worker sees it.
pub(crate) struct RouteTarget {
    pub stats: Rc<RouteStats>,
    /// The access log's names of listener, route and cluster ([`access_log::names`]).
    pub log_names: Box<[u8]>,
}

impl View {
    pub(super) fn empty() -> View {
        View {
            snapshot: Arc::new(Snapshot {
                version: 0,
                listeners: vec![],
                clusters: vec![],
                policies: Default::default(),
                spans: None,
            }),
            clusters: vec![],
            listeners: vec![],
        }
    }

    /// The position of the listener called `name`.
    #[inline]
    pub fn listener_index(&self, name: &Arc<str>) -> Option<usize> {
        self.snapshot
            .listeners
            .iter()
            .position(|l| Arc::ptr_eq(&l.name, name) || l.name == *name)
    }
}
