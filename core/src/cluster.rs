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
use crate::breaker::ClusterState;
use crate::endpoint::{Endpoint, Member};
use crate::failover::{self, Level, Loads};
use crate::metrics::Outcome;
use crate::outlier;
use crate::rng::Rng;
use crate::snapshot::Cluster;
use crate::zone::{self, ZoneCount, ZoneSplit};
use std::sync::Arc;

/// What a worker's cluster views draw on when they choose: its random numbers, and the
/// generation of endpoint availability (moved whenever an endpoint's availability may have
/// changed, so that a view knows when to recompute its split across levels).
#[derive(Debug, Clone, Copy)]
pub struct Draw<'a> {
    pub rng: &'a RefCell<Rng>,
    pub availability: &'a Cell<u64>,
}

/// A cluster in one view: see the module docs.
pub struct ClusterView {
    /// Counters that outlive the view.
    pub state: Rc<ClusterState>,
    /// Endpoints, sorted by priority level.
    pub members: Vec<Member>,
    /// The members of each level, in priority order.
    levels: Vec<Range<usize>>,
    /// Balancer state per level, then per zone of the first level.
    balance: RefCell<Vec<BalanceState>>,
    /// The split across levels, and the availability generation it was computed at.
    loads: RefCell<(u64, Loads)>,
    /// Zone-aware routing in the first level, when the cluster has it.
    zones: Option<Zones>,
}

/// The first level's members by zone (sorted so that each zone's are contiguous), the callers
/// in each, and the split last computed.
struct Zones {
    /// (zone, its members in the first level, callers in it); zones with callers and no
    /// endpoints have an empty range.
    zones: Vec<(Arc<str>, Range<usize>, u64)>,
    /// This node's zone, by index into `zones`.
    local: usize,
    min_cluster_size: usize,
    split: RefCell<(u64, ZoneSplit)>,
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
        // By level; with zone-aware routing, by zone inside a level too, so that a zone's
        // members are contiguous (stable: otherwise in configured order).
        if c.zones.is_some() {
            members.sort_by(|a, b| (a.priority, &a.zone).cmp(&(b.priority, &b.zone)));
        } else {
            members.sort_by_key(|m| m.priority);
        }
        let mut levels: Vec<Range<usize>> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            match levels.last_mut() {
                Some(r) if members[r.start].priority == m.priority => r.end = i + 1,
                _ => levels.push(i..i + 1),
            }
        }
        let zones = c
            .zones
            .as_deref()
            .and_then(|z| Zones::new(z, &members, levels.first()?.clone()));
        let slots = levels.len() + zones.as_ref().map_or(0, |z| z.zones.len());
        ClusterView {
            state,
            balance: RefCell::new(vec![BalanceState::default(); slots]),
            members,
            levels,
            loads: RefCell::new((u64::MAX, Loads::default())),
            zones,
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
        d: Draw<'_>,
        cluster: &Cluster,
        now: Instant,
        avoid: Option<&Rc<Endpoint>>,
    ) -> Option<Rc<Endpoint>> {
        if self.members.is_empty() {
            return None;
        }
        let (level, panic) = if self.levels.len() == 1 {
            // One level: the split is trivial, only its panic state matters.
            let loads = self.loads(d.availability.get(), now);
            (0, loads.1.panic.first().copied().unwrap_or(false))
        } else {
            let loads = self.loads(d.availability.get(), now);
            let level = loads.1.level(d.rng.borrow_mut().below(100));
            (level, loads.1.panic.get(level).copied().unwrap_or(false))
        };
        if level == 0 && !panic {
            if let Some(ep) = self.pick_in_zone(d, cluster, now, avoid) {
                return Some(ep);
            }
        }
        if let Some(ep) = self.pick_in(d, cluster, now, level, avoid, panic) {
            return Some(ep);
        }
        // The split was computed before the last changes: any level with an available
        // endpoint, in priority order; then the retry's avoided endpoint; then panic.
        (0..self.levels.len())
            .filter(|&l| l != level)
            .find_map(|l| self.pick_in(d, cluster, now, l, avoid, false))
            .or_else(|| self.pick_in(d, cluster, now, level, None, false))
            .or_else(|| self.pick_in(d, cluster, now, level, avoid, true))
    }

    fn pick_in(
        &self,
        d: Draw<'_>,
        cluster: &Cluster,
        now: Instant,
        level: usize,
        avoid: Option<&Rc<Endpoint>>,
        panic: bool,
    ) -> Option<Rc<Endpoint>> {
        let range = self.levels.get(level)?.clone();
        self.pick_among(d, cluster, now, range, level, avoid, panic)
    }

    /// Zone-aware routing in the first level: a zone by the split (recomputed when
    /// availability changed), then an endpoint of that zone. `None`: off, or nothing available
    /// in the zone chosen (the caller balances over the whole level).
    fn pick_in_zone(
        &self,
        d: Draw<'_>,
        cluster: &Cluster,
        now: Instant,
        avoid: Option<&Rc<Endpoint>>,
    ) -> Option<Rc<Endpoint>> {
        let z = self.zones.as_ref()?;
        let zi = {
            let split = self.zone_split(z, d, now);
            let mut rng = d.rng.borrow_mut();
            let (r1, r2) = (rng.below(zone::BASIS as u32), rng.next_u64());
            split.1.zone(z.local, u64::from(r1), r2)?
        };
        let range = z.zones[zi].1.clone();
        let slot = self.levels.len() + zi;
        self.pick_among(d, cluster, now, range, slot, avoid, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn pick_among(
        &self,
        d: Draw<'_>,
        cluster: &Cluster,
        now: Instant,
        range: Range<usize>,
        slot: usize,
        avoid: Option<&Rc<Endpoint>>,
        panic: bool,
    ) -> Option<Rc<Endpoint>> {
        let members = &self.members[range];
        if members.is_empty() {
            return None;
        }
        let avoid = avoid.and_then(|a| members.iter().position(|m| Rc::ptr_eq(&m.ep, a)));
        let mut balance = self.balance.borrow_mut();
        let i = balance::pick(
            cluster.lb,
            members,
            &mut balance[slot],
            &mut d.rng.borrow_mut(),
            now,
            avoid,
            panic,
        )?;
        Some(members[i].ep.clone())
    }

    /// The zone split, recomputed when availability changed.
    fn zone_split<'z>(
        &self,
        z: &'z Zones,
        d: Draw<'_>,
        now: Instant,
    ) -> std::cell::Ref<'z, (u64, ZoneSplit)> {
        let generation = d.availability.get();
        if z.split.borrow().0 != generation {
            let split = z.compute(&self.members, now);
            *z.split.borrow_mut() = (generation, split);
        }
        z.split.borrow()
    }

    /// The share of requests each zone gets (in basis points), by zone name: the split this
    /// view routes by. Empty when the cluster has no zone-aware routing, or it is off.
    pub fn zone_shares(&self, d: Draw<'_>, now: Instant) -> Vec<(Arc<str>, u64)> {
        let Some(z) = &self.zones else {
            return Vec::new();
        };
        let shares = match &self.zone_split(z, d, now).1 {
            ZoneSplit::Off => return Vec::new(),
            ZoneSplit::Local => z
                .zones
                .iter()
                .enumerate()
                .map(|(i, _)| if i == z.local { zone::BASIS } else { 0 })
                .collect::<Vec<_>>(),
            ZoneSplit::Residual { local, residual } => {
                let total: u64 = residual.iter().sum();
                residual
                    .iter()
                    .enumerate()
                    .map(|(i, r)| match (i == z.local, total) {
                        (true, _) => *local,
                        (false, 0) => 0,
                        (false, t) => (zone::BASIS - local) * r / t,
                    })
                    .collect()
            }
        };
        z.zones
            .iter()
            .zip(shares)
            .map(|((name, _, _), share)| (name.clone(), share))
            .collect()
    }

    /// Books one request's outcome on its endpoint: counters, latency, outlier state. A change
    /// in the endpoint's availability moves the worker's availability generation.
    pub fn book(
        &self,
        d: Draw<'_>,
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
            d.rng.borrow_mut().unit()
        } else {
            0.0
        };
        if ep.record(outcome, now, rtt, outlier.map(|o| (o, may_eject, jitter)))
            != outlier::Change::None
        {
            d.availability.set(d.availability.get().wrapping_add(1));
        }
    }

    /// Whether one more endpoint of this cluster may be ejected (the `max_ejected` cap).
    pub fn may_eject(&self, max_percent: u32) -> bool {
        let ejected = self.members.iter().filter(|m| m.ep.is_ejected()).count();
        outlier::may_eject(ejected, self.members.len(), max_percent)
    }
}

impl Zones {
    /// The first level's zones (`first` is its range in `members`); `None` when the node's
    /// zone is unknown to both sides.
    fn new(
        z: &crate::snapshot::ZoneAware,
        members: &[Member],
        first: Range<usize>,
    ) -> Option<Zones> {
        let mut zones: Vec<(Arc<str>, Range<usize>, u64)> = Vec::new();
        // Endpoints without a zone make a zone of their own (named ""), as Envoy puts them in
        // an empty locality: they are counted and can be picked.
        let unzoned: Arc<str> = Arc::from("");
        for i in first {
            let name = members[i].zone.as_ref().unwrap_or(&unzoned);
            match zones.last_mut() {
                Some((n, r, _)) if n == name => r.end = i + 1,
                _ => zones.push((name.clone(), i..i + 1, 0)),
            }
        }
        for (name, n) in &z.callers {
            match zones.iter_mut().find(|(zn, _, _)| zn == name) {
                Some(entry) => entry.2 += n,
                None => zones.push((name.clone(), 0..0, *n)),
            }
        }
        let local = zones.iter().position(|(n, _, _)| *n == z.local)?;
        Some(Zones {
            zones,
            local,
            min_cluster_size: z.min_cluster_size,
            split: RefCell::new((u64::MAX, ZoneSplit::Off)),
        })
    }

    /// The split from the members available now.
    fn compute(&self, members: &[Member], now: Instant) -> ZoneSplit {
        let counts: Vec<ZoneCount> = self
            .zones
            .iter()
            .map(|(_, r, callers)| ZoneCount {
                healthy: members[r.clone()]
                    .iter()
                    .filter(|m| balance::Load::available(*m, now))
                    .count() as u64,
                callers: *callers,
            })
            .collect();
        zone::split(&counts, self.local, self.min_cluster_size)
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::endpoint::InFlight;
    use crate::health::HealthCell;
    use crate::outlier::OutlierConfig;
    use crate::rng::Rng;
    use crate::snapshot::{ClusterLimits, EndpointSpec};

    const S: u64 = 1000;

    /// How endpoint `i` behaves at simulated millisecond `t`: (latency ms, failure probability).
    fn behaviour(i: usize, t: u64) -> (u64, f64) {
        let outage = (25 * S..30 * S).contains(&t);
        match i {
            _ if i < 8 && outage => (2, 1.0),
            0 => (5, 0.0),
            // Slow for ten seconds.
            1 if (10 * S..20 * S).contains(&t) => (100, 0.0),
            1 => (4, 0.0),
            // Down for ten seconds, then back.
            2 if (5 * S..15 * S).contains(&t) => (1, 1.0),
            2 => (3, 0.0),
            // Flapping: two seconds down in every four.
            3 if (t / (2 * S)) % 2 == 1 => (1, 1.0),
            3 => (3, 0.0),
            // A fifth of its answers fail.
            4 => (3, 0.2),
            5..8 => (2 + i as u64, 0.0),
            // The second datacenter: further away.
            _ => (10, 0.0),
        }
    }

    /// A seeded simulation of 16 clients against a cluster of eight local endpoints and two in
    /// a second datacenter, whose endpoints slow down, fail, flap, recover, and (all local
    /// ones at once) go down. At every pick: no ejected endpoint is chosen, and no endpoint
    /// that failed its health checks; success stays high; the slow endpoint is avoided; once
    /// the outage is detected, no request fails.
    #[test]
    fn simulated_cluster_under_failures() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let cells: Vec<Arc<HealthCell>> = (0..10).map(|_| Arc::default()).collect();
        let cluster = Cluster {
            tls: None,
            protocol: Default::default(),
            name: Arc::from("sim"),
            lb: balance::Lb::P2cEwma,
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 8,
            limits: ClusterLimits::default(),
            outlier: Some(OutlierConfig {
                base_ejection: Duration::from_secs(2),
                max_ejection: Duration::from_secs(8),
                ..OutlierConfig::default()
            }),
            health_check: None,
            zones: None,
            request_headers: None,
            response_headers: None,
            endpoints: (0..10)
                .map(|i| EndpointSpec {
                    addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                    zone: None,
                    priority: u32::from(i >= 8),
                    weight: 1,
                    health: Some(cells[i].clone()),
                })
                .collect(),
        };
        let (seeded, availability) = (RefCell::new(Rng::new(7)), Cell::new(0));
        let d = Draw {
            rng: &seeded,
            availability: &availability,
        };
        let view = ClusterView::new(&cluster, Rc::new(ClusterState::new(t0)), |addr| {
            Rc::new(Endpoint::new(cluster.name.clone(), addr, t0))
        });
        let index = |ep: &Rc<Endpoint>| {
            view.members
                .iter()
                .position(|m| Rc::ptr_eq(&m.ep, ep))
                .unwrap()
        };
        let mut rng = Rng::new(11);
        let mut events: BinaryHeap<Reverse<(u64, usize)>> =
            (0..16).map(|c| Reverse((0, c))).collect();
        let mut inflight: Vec<Option<(usize, bool, InFlight)>> = (0..16).map(|_| None).collect();
        let (mut ok, mut failed) = (0u64, 0u64);
        let (mut failed_in_onset, mut failed_after_detection) = (0u64, 0u64);
        let mut slow_hits = [0u64; 2];
        let mut tick = 0;
        while let Some(Reverse((t, c))) = events.pop() {
            if t >= 40 * S {
                break;
            }
            // The sweeper's tick, and health checks that see the outage half a second in.
            while tick <= t {
                let down = (25 * S + 500..30 * S + 500).contains(&tick);
                for cell in &cells[..8] {
                    cell.set(!down);
                }
                availability.set(availability.get() + 1);
                tick += 200;
            }
            let now = at(t);
            if let Some((i, fail, guard)) = inflight[c].take() {
                let (latency, _) = behaviour(i, t);
                let outcome = if fail {
                    Outcome::Status5xx
                } else {
                    Outcome::Success
                };
                view.book(
                    d,
                    &cluster,
                    &view.members[i].ep,
                    outcome,
                    now,
                    Duration::from_millis(latency),
                );
                drop(guard);
                if fail {
                    failed += 1;
                    if (25 * S..26 * S).contains(&t) {
                        failed_in_onset += 1;
                    }
                    if (26 * S..30 * S).contains(&t) {
                        failed_after_detection += 1;
                    }
                } else {
                    ok += 1;
                }
            }
            let ep = view.pick(d, &cluster, now, None).expect("an endpoint");
            let i = index(&ep);
            assert!(
                ep.outlier_available(now),
                "t={t}ms: picked ejected endpoint {i}"
            );
            assert!(
                view.members[i].healthy(),
                "t={t}ms: picked unhealthy endpoint {i}"
            );
            if (12 * S..20 * S).contains(&t) && i < 2 {
                slow_hits[i] += 1;
            }
            let (latency, p) = behaviour(i, t);
            let fail = rng.unit() < p;
            let guard = ep.begin(now);
            inflight[c] = Some((i, fail, guard));
            events.push(Reverse((t + latency, c)));
        }
        let total = ok + failed;
        assert!(total > 50_000, "{total} requests");
        // Until health checks see the outage, requests to the local datacenter fail; outside
        // that second, failures are the few that detection costs.
        let success = 1.0 - (failed - failed_in_onset) as f64 / total as f64;
        assert!(
            success > 0.997,
            "success rate {success:.4} ({failed} of {total} failed)"
        );
        assert!(
            failed_in_onset < 2_000,
            "{failed_in_onset} failed before detection"
        );
        assert_eq!(
            failed_after_detection, 0,
            "failed once the outage was detected"
        );
        // While slow, endpoint 1 takes a fraction of what the healthy endpoint 0 takes (P2C
        // still prefers it to the failing endpoints it is paired with, which cost more).
        let [fast, slow] = slow_hits;
        assert!(
            slow * 4 < fast,
            "slow endpoint: {slow} requests, healthy one: {fast}"
        );
    }
}
