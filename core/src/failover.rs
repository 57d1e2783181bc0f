//! Failover between priority levels (datacenters), with Envoy's arithmetic.
//!
//! Endpoints carry a priority; 0 is preferred. A level's *health* is its healthy share times the
//! overprovisioning factor 1.4, capped at 100: a level keeps all its traffic until fewer than
//! 1/1.4 (about 71%) of its endpoints are healthy, then spills the rest to the next levels in
//! order. When the levels' health adds up to less than 100, the loads are scaled up to 100 in
//! proportion. When they add up to less than 100, a level under the panic threshold (50%
//! healthy) sends its share to all its endpoints, healthy or not; when the total falls under
//! the threshold, every level is in panic and load follows endpoint counts. Pure code: the caller counts healthy endpoints.

/// Overprovisioning factor, in percent.
pub const OVERPROVISIONING: u64 = 140;
/// Below this healthy percentage a level (or the whole cluster) is in panic.
pub const PANIC_PERCENT: u64 = 50;

/// The endpoints of one priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Endpoints that may take requests.
    pub healthy: usize,
    /// All endpoints.
    pub total: usize,
}

/// How traffic splits across levels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loads {
    /// Percent of requests per level; sums to 100 (or 0 with no endpoints at all).
    pub percent: Vec<u32>,
    /// Per level: route to all its endpoints, ignoring health.
    pub panic: Vec<bool>,
}

impl Loads {
    /// The level a request goes to, for `r` uniform in `0..100`.
    pub fn level(&self, r: u32) -> usize {
        let mut acc = 0;
        for (i, &p) in self.percent.iter().enumerate() {
            acc += p;
            if r < acc {
                return i;
            }
        }
        0
    }
}

fn health(l: &Level) -> u64 {
    if l.total == 0 {
        return 0;
    }
    (OVERPROVISIONING * l.healthy as u64 / l.total as u64).min(100)
}

/// Splits traffic across levels given their healthy counts.
pub fn distribute(levels: &[Level]) -> Loads {
    let n = levels.len();
    let mut loads = Loads {
        percent: vec![0; n],
        panic: vec![false; n],
    };
    let total_endpoints: usize = levels.iter().map(|l| l.total).sum();
    if total_endpoints == 0 {
        return loads;
    }
    let health: Vec<u64> = levels.iter().map(health).collect();
    let normalized: u64 = health.iter().sum::<u64>().min(100);
    if normalized < PANIC_PERCENT {
        // Total panic: load by endpoint count, every level uses all its endpoints.
        let mut remaining = 100u32;
        for (i, l) in levels.iter().enumerate() {
            let p = ((l.total as u64 * 100) / total_endpoints as u64) as u32;
            loads.percent[i] = p.min(remaining);
            remaining -= loads.percent[i];
            loads.panic[i] = true;
        }
        if let Some(first) = levels.iter().position(|l| l.total > 0) {
            loads.percent[first] += remaining;
        }
        return loads;
    }
    let mut remaining = 100u32;
    for (i, h) in health.iter().enumerate() {
        let p = ((h * 100) / normalized) as u32;
        loads.percent[i] = p.min(remaining);
        remaining -= loads.percent[i];
    }
    // Rounding leftovers go to the first level with health.
    if let Some(first) = health.iter().position(|&h| h > 0) {
        loads.percent[first] += remaining;
    }
    // While the levels together have enough health, their healthy endpoints carry it all;
    // short of that, a level under the threshold uses all its endpoints.
    if normalized < 100 {
        for (i, l) in levels.iter().enumerate() {
            loads.panic[i] =
                l.total > 0 && (l.healthy as u64 * 100) < PANIC_PERCENT * l.total as u64;
        }
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two(local_healthy: usize) -> Loads {
        distribute(&[
            Level {
                healthy: local_healthy,
                total: 10,
            },
            Level {
                healthy: 10,
                total: 10,
            },
        ])
    }

    /// The split for 10 local endpoints (priority 0) with a healthy remote datacenter of 10
    /// (priority 1) behind them.
    #[test]
    fn spill_table_for_ten_local_endpoints() {
        let table: Vec<(usize, [u32; 2])> = [10, 9, 8, 7, 5, 0]
            .iter()
            .map(|&k| (k, two(k).percent.try_into().unwrap()))
            .collect();
        assert_eq!(
            table,
            vec![
                (10, [100, 0]),
                (9, [100, 0]),
                (8, [100, 0]),
                (7, [98, 2]),
                (5, [70, 30]),
                (0, [0, 100]),
            ]
        );
        assert_eq!(
            two(5).panic,
            vec![false, false],
            "50% is not under the threshold"
        );
        assert_eq!(
            two(4).panic,
            vec![false, false],
            "the remote level has room: healthy endpoints carry it all"
        );
        let alone = distribute(&[Level {
            healthy: 4,
            total: 10,
        }]);
        assert_eq!(
            (alone.percent, alone.panic),
            (vec![100], vec![true]),
            "with nowhere to spill, under 50% the level spreads over all its endpoints"
        );
    }

    #[test]
    fn a_dead_datacenter_takes_nothing_and_total_panic_spreads_by_count() {
        let l = distribute(&[
            Level {
                healthy: 0,
                total: 10,
            },
            Level {
                healthy: 5,
                total: 5,
            },
        ]);
        assert_eq!(l.percent, vec![0, 100]);
        // One level, 3 of 10 healthy: total panic, all ten endpoints share the traffic.
        let l = distribute(&[Level {
            healthy: 3,
            total: 10,
        }]);
        assert_eq!(
            (l.percent.clone(), l.panic.clone()),
            (vec![100], vec![true])
        );
        // Everything down: spread by count over all levels.
        let l = distribute(&[
            Level {
                healthy: 0,
                total: 2,
            },
            Level {
                healthy: 0,
                total: 6,
            },
        ]);
        assert_eq!(l.percent, vec![25, 75]);
        assert!(l.panic.iter().all(|&p| p));
        assert_eq!(distribute(&[]).percent, Vec::<u32>::new());
    }

    #[test]
    fn three_levels_and_level_choice() {
        let l = distribute(&[
            Level {
                healthy: 3,
                total: 10,
            },
            Level {
                healthy: 2,
                total: 10,
            },
            Level {
                healthy: 10,
                total: 10,
            },
        ]);
        assert_eq!(l.percent, vec![42, 28, 30]);
        assert_eq!(l.percent.iter().sum::<u32>(), 100);
        assert_eq!(
            (
                l.level(0),
                l.level(41),
                l.level(42),
                l.level(69),
                l.level(70),
                l.level(99)
            ),
            (0, 0, 1, 1, 2, 2)
        );
    }
}
