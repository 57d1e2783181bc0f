//! Zone-aware routing, with Envoy's arithmetic: a sidecar prefers endpoints in its own zone and
//! sends to other zones only as far as its zone is short of capacity.
//!
//! Compare, per zone, the *upstream* share (the zone's healthy endpoints over all healthy
//! endpoints) with the *caller* share (the zone's callers over all callers). When the local
//! zone's upstream share is at least its caller share, every request stays in the zone.
//! Otherwise the local zone keeps `upstream / caller` of the requests and the rest (the
//! *residual*) goes to the zones that have more upstream share than caller share, in proportion
//! to that surplus. Zone routing is off when the cluster has fewer healthy endpoints than a
//! minimum (small clusters would skew), when the local zone has no healthy endpoint, or when
//! nobody is known to call. Shares are kept in basis points (1/10,000), as Envoy keeps them.
//!
//! Pure code: the caller counts healthy endpoints and callers per zone.

/// Basis points: shares are integers out of this.
pub const BASIS: u64 = 10_000;

/// Default minimum of healthy endpoints for zone routing to apply (Envoy's `min_cluster_size`).
pub const MIN_CLUSTER_SIZE: usize = 6;

/// One zone's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneCount {
    /// Healthy endpoints of the upstream cluster in the zone.
    pub healthy: u64,
    /// Callers (instances of the calling service) in the zone.
    pub callers: u64,
}

/// How requests are split across zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneSplit {
    /// Zone routing does not apply: balance over the whole priority level.
    Off,
    /// Every request stays in the local zone.
    Local,
    /// `local` basis points of requests stay in the local zone; the others go to zone `i` with
    /// a weight of `residual[i]` (zero for the local zone and for zones without surplus).
    Residual {
        /// Basis points kept local.
        local: u64,
        /// Surplus capacity per zone, in basis points.
        residual: Vec<u64>,
    },
}

impl ZoneSplit {
    /// The zone a request goes to, given two random numbers: `r1` in `0..BASIS` and `r2`
    /// uniform over `u64`. `None`: zone routing is off.
    pub fn zone(&self, local: usize, r1: u64, r2: u64) -> Option<usize> {
        match self {
            ZoneSplit::Off => None,
            ZoneSplit::Local => Some(local),
            ZoneSplit::Residual {
                local: keep,
                residual,
            } => {
                if r1 < *keep {
                    return Some(local);
                }
                let total: u64 = residual.iter().sum();
                if total == 0 {
                    return Some(local);
                }
                let mut at = r2 % total;
                for (i, r) in residual.iter().enumerate() {
                    if at < *r {
                        return Some(i);
                    }
                    at -= r;
                }
                Some(local)
            }
        }
    }
}

/// The split for a caller in zone `local`, given every zone's counts and the cluster's
/// minimum size.
pub fn split(zones: &[ZoneCount], local: usize, min_cluster_size: usize) -> ZoneSplit {
    let healthy: u64 = zones.iter().map(|z| z.healthy).sum();
    let callers: u64 = zones.iter().map(|z| z.callers).sum();
    let Some(here) = zones.get(local) else {
        return ZoneSplit::Off;
    };
    if healthy < min_cluster_size as u64 || healthy == 0 || callers == 0 || here.healthy == 0 {
        return ZoneSplit::Off;
    }
    let upstream = |z: &ZoneCount| z.healthy * BASIS / healthy;
    let calling = |z: &ZoneCount| z.callers * BASIS / callers;
    if upstream(here) >= calling(here) {
        return ZoneSplit::Local;
    }
    let residual = zones
        .iter()
        .enumerate()
        .map(|(i, z)| {
            if i == local {
                0
            } else {
                upstream(z).saturating_sub(calling(z))
            }
        })
        .collect();
    ZoneSplit::Residual {
        local: upstream(here) * BASIS / calling(here),
        residual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(counts: &[(u64, u64)]) -> Vec<ZoneCount> {
        counts
            .iter()
            .map(|&(healthy, callers)| ZoneCount { healthy, callers })
            .collect()
    }

    /// The table is worked out by hand from Envoy's documented algorithm
    /// (`regenerateLocalityRoutingStructures`): upstream and caller percentages in basis
    /// points; all local when upstream ≥ caller; else local = upstream * 10000 / caller, and
    /// residual capacity = upstream - caller where positive.
    #[test]
    fn the_split_follows_envoys_arithmetic() {
        let cases: &[(&[(u64, u64)], ZoneSplit)] = &[
            // Balanced: 3 endpoints and 1 caller in each of two zones.
            (&[(3, 1), (3, 1)], ZoneSplit::Local),
            // More capacity here than callers: all local.
            (&[(4, 1), (2, 1)], ZoneSplit::Local),
            // One of three local endpoints down: upstream 2/5 = 4000 bp against callers 5000:
            // keep 4000 * 10000 / 5000 = 8000 bp; the other zone has 6000 - 5000 = 1000 spare.
            (
                &[(2, 1), (3, 1)],
                ZoneSplit::Residual {
                    local: 8000,
                    residual: vec![0, 1000],
                },
            ),
            // Three zones, callers mostly here: upstream 1/7 = 1428, callers 2/4 = 5000: keep
            // 2856; zone 1 has 2857 - 2500 = 357 spare, zone 2 has 5714 - 2500 = 3214.
            (
                &[(1, 2), (2, 1), (4, 1)],
                ZoneSplit::Residual {
                    local: 2856,
                    residual: vec![0, 357, 3214],
                },
            ),
            // Too small a cluster (2 healthy, under the minimum of 5): off.
            (&[(2, 1), (3, 1)][..1], ZoneSplit::Off),
            // No healthy endpoint here: off (the level's balancing goes elsewhere).
            (&[(0, 1), (6, 1)], ZoneSplit::Off),
            // Nobody known to call: off.
            (&[(3, 0), (3, 0)], ZoneSplit::Off),
        ];
        for (counts, want) in cases {
            assert_eq!(&split(&zones(counts), 0, 5), want, "{counts:?}");
        }
        assert_eq!(split(&zones(&[(2, 1), (3, 1)]), 0, 6), ZoneSplit::Off);
        assert_eq!(split(&zones(&[(3, 1)]), 1, 1), ZoneSplit::Off);
    }

    #[test]
    fn picks_follow_the_split() {
        let s = split(&zones(&[(1, 2), (2, 1), (4, 1)]), 0, 1);
        let mut hits = [0u64; 3];
        let mut rng = crate::rng::Rng::new(5);
        for _ in 0..100_000 {
            let (r1, r2) = (rng.below(BASIS as u32) as u64, rng.below(u32::MAX) as u64);
            hits[s.zone(0, r1, r2).unwrap()] += 1;
        }
        // Local 28.56%, then 357 : 3214 (1 : 9) of the remaining 71.44%.
        let local = hits[0] * 10_000 / 100_000;
        assert!((2756..2956).contains(&local), "{hits:?}");
        let ratio = hits[2] as f64 / hits[1] as f64;
        assert!((8.0..10.0).contains(&ratio), "{hits:?}");
        assert_eq!(ZoneSplit::Local.zone(1, 9999, 3), Some(1));
        assert_eq!(ZoneSplit::Off.zone(0, 0, 0), None);
    }
}
