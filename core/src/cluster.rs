//! A cluster as one worker runs it: its endpoints grouped by priority level, the traffic split
//! across levels (failover), balancing within a level, circuit-breaker counters and the retry
//! budget.
//!
//! [`ClusterState`] is kept across reloads by cluster name (counters and budget must not reset
//! with a config change); [`ClusterView`] is rebuilt with every view. The split across levels is
//! recomputed when availability may have changed: on an ejection or return in this worker, and
//! on every sweeper tick (health-check results and ended ejections).

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::balance::{self, BalanceState};
use crate::endpoint::{Endpoint, Member};
use crate::failover::{self, Level, Loads};
use crate::metrics::{ClusterReport, Limit, Outcome};
use crate::outlier;
use crate::retry::RetryBudget;
use crate::snapshot::Cluster;
use crate::worker::Worker;

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

/// A cluster in one view: see the module docs.
pub(crate) struct ClusterView {
    /// Counters that outlive the view.
    pub state: Rc<ClusterState>,
    /// Endpoints, sorted by priority level.
    pub members: Vec<Member>,
    /// The members of each level, in priority order.
    levels: Vec<Range<usize>>,
    /// Balancer state per level.
    balance: RefCell<Vec<BalanceState>>,
    /// The split across levels, and the availability generation it was computed at.
    loads: RefCell<(u64, Loads)>,
}

impl ClusterView {
    /// Builds the view of `c`, with `endpoint` giving the worker's state for an address.
    pub fn new(
        c: &Cluster,
        state: Rc<ClusterState>,
        mut endpoint: impl FnMut(std::net::SocketAddr) -> Rc<Endpoint>,
    ) -> ClusterView {
        let mut members: Vec<Member> = c
            .endpoints
            .iter()
            .map(|spec| Member {
                ep: endpoint(spec.addr),
                weight: spec.weight.max(1),
                priority: spec.priority,
                health: spec.health.clone(),
                zone: spec.zone.clone(),
            })
            .collect();
        members.sort_by_key(|m| m.priority);
        let mut levels: Vec<Range<usize>> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            match levels.last_mut() {
                Some(r) if members[r.start].priority == m.priority => r.end = i + 1,
                _ => levels.push(i..i + 1),
            }
        }
        ClusterView {
            state,
            balance: RefCell::new(vec![BalanceState::default(); levels.len()]),
            members,
            levels,
            loads: RefCell::new((u64::MAX, Loads::default())),
        }
    }

    /// The split across levels, recomputed when availability changed.
    fn loads(&self, generation: u64, now: Instant) -> std::cell::Ref<'_, (u64, Loads)> {
        if self.loads.borrow().0 != generation {
            let levels: Vec<Level> = self
                .levels
                .iter()
                .map(|r| Level {
                    healthy: self.members[r.clone()]
                        .iter()
                        .filter(|m| balance::Load::available(*m, now))
                        .count(),
                    total: r.len(),
                })
                .collect();
            *self.loads.borrow_mut() = (generation, failover::distribute(&levels));
        }
        self.loads.borrow()
    }

    /// Picks an endpoint: a priority level by the failover split, then one of its endpoints by
    /// the cluster's policy, avoiding `avoid` (the endpoint a retry leaves). `None` when no
    /// endpoint can take the request.
    pub fn pick(
        &self,
        w: &Worker,
        cluster: &Cluster,
        now: Instant,
        avoid: Option<&Rc<Endpoint>>,
    ) -> Option<Rc<Endpoint>> {
        if self.members.is_empty() {
            return None;
        }
        let (level, panic) = if self.levels.len() == 1 {
            // One level: the split is trivial, only its panic state matters.
            let loads = self.loads(w.availability(), now);
            (0, loads.1.panic.first().copied().unwrap_or(false))
        } else {
            let loads = self.loads(w.availability(), now);
            let level = loads.1.level(w.random_below(100));
            (level, loads.1.panic.get(level).copied().unwrap_or(false))
        };
        if let Some(ep) = self.pick_in(w, cluster, now, level, avoid, panic) {
            return Some(ep);
        }
        // The split was computed before the last changes: any level with an available
        // endpoint, in priority order; then the retry's avoided endpoint; then panic.
        (0..self.levels.len())
            .filter(|&l| l != level)
            .find_map(|l| self.pick_in(w, cluster, now, l, avoid, false))
            .or_else(|| self.pick_in(w, cluster, now, level, None, false))
            .or_else(|| self.pick_in(w, cluster, now, level, avoid, true))
    }

    fn pick_in(
        &self,
        w: &Worker,
        cluster: &Cluster,
        now: Instant,
        level: usize,
        avoid: Option<&Rc<Endpoint>>,
        panic: bool,
    ) -> Option<Rc<Endpoint>> {
        let range = self.levels.get(level)?.clone();
        let members = &self.members[range];
        let avoid = avoid.and_then(|a| members.iter().position(|m| Rc::ptr_eq(&m.ep, a)));
        let mut balance = self.balance.borrow_mut();
        let i = w.with_rng(|rng| {
            balance::pick(
                cluster.lb,
                members,
                &mut balance[level],
                rng,
                now,
                avoid,
                panic,
            )
        })?;
        Some(members[i].ep.clone())
    }

    /// Books one request's outcome on its endpoint: counters, latency, outlier state. A change
    /// in the endpoint's availability moves the worker's availability generation.
    pub fn book(
        &self,
        w: &Worker,
        cluster: &Cluster,
        ep: &Endpoint,
        outcome: Outcome,
        now: Instant,
        rtt: Duration,
    ) {
        let outlier = cluster.outlier.as_ref();
        let failed = !matches!(outcome, Outcome::Success);
        let may_eject = failed && outlier.is_some_and(|o| self.may_eject(o.max_ejected_percent));
        let jitter = if failed {
            w.with_rng(|r| r.unit())
        } else {
            0.0
        };
        if ep.record(outcome, now, rtt, outlier.map(|o| (o, may_eject, jitter)))
            != outlier::Change::None
        {
            w.availability_changed();
        }
    }

    /// Whether one more endpoint of this cluster may be ejected (the `max_ejected` cap).
    pub fn may_eject(&self, max_percent: u32) -> bool {
        let ejected = self.members.iter().filter(|m| m.ep.is_ejected()).count();
        outlier::may_eject(ejected, self.members.len(), max_percent)
    }
}
