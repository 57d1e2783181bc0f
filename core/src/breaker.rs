//! A cluster's circuit breakers and retry budget in one worker: counters that outlive config
//! versions (kept by cluster name across reloads), so that a config change resets no limit.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use crate::metrics::{ClusterReport, Limit};
use crate::retry::RetryBudget;

/// Per-worker state of a cluster that outlives config versions.
#[derive(Debug)]
pub struct ClusterState {
    /// Requests in flight (limit `max_requests`).
    pub active: Cell<u32>,
    /// Requests waiting for a new connection (limit `max_pending`).
    pub pending: Cell<u32>,
    /// Open upstream connections, pooled or busy (limit `max_connections`).
    pub connections: Cell<u32>,
    /// Retry budget.
    pub budget: RefCell<RetryBudget>,
    /// Requests refused per limit.
    overflow: [Cell<u64>; 3],
    /// Retries refused by the budget.
    pub budget_refused: Cell<u64>,
}

impl ClusterState {
    /// Fresh counters.
    pub fn new(now: Instant) -> ClusterState {
        ClusterState {
            active: Cell::new(0),
            pending: Cell::new(0),
            connections: Cell::new(0),
            budget: RefCell::new(RetryBudget::new(now)),
            overflow: Default::default(),
            budget_refused: Cell::new(0),
        }
    }

    /// Counts a request refused by a limit.
    pub fn overflowed(&self, limit: Limit) {
        let c = &self.overflow[limit as usize];
        c.set(c.get() + 1);
    }

    /// Counters for the scraper.
    pub fn report(&self, name: &std::sync::Arc<str>) -> ClusterReport {
        ClusterReport {
            name: name.clone(),
            active: self.active.get(),
            connections: self.connections.get(),
            overflow: self.overflow.each_ref().map(Cell::get),
            budget_refused: self.budget_refused.get(),
            zones: Vec::new(),
            zone_reports: 0,
        }
    }
}

/// Counts a request in flight in its cluster until dropped.
#[derive(Debug)]
pub struct Active(Rc<ClusterState>);

impl Active {
    /// Counts one request.
    pub fn new(state: &Rc<ClusterState>) -> Active {
        state.active.set(state.active.get() + 1);
        Active(state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let a = &self.0.active;
        a.set(a.get().saturating_sub(1));
    }
}

/// One connection counted against its cluster's limit.
pub(crate) struct ConnCount(Rc<ClusterState>);

impl ConnCount {
    /// Counts one more connection until dropped.
    pub(crate) fn new(cluster: Rc<ClusterState>) -> ConnCount {
        cluster.connections.set(cluster.connections.get() + 1);
        ConnCount(cluster)
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        let c = &self.0.connections;
        c.set(c.get().saturating_sub(1));
    }
}
