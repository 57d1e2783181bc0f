//! Compiling a sidecar's listeners: outbound, the addresses of the mesh's services; inbound,
//! the workload's ports; and for each service (or port's cluster) a route that the listener's
//! own routes leave to it.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use ringmesh_core::retry::RetryPolicy;
use ringmesh_core::route::{Action, Match, Route};
use ringmesh_core::snapshot::{Cluster, Inbound, InboundPort, Outbound, ZoneAware};

use crate::config::{Config, InboundConfig, OutboundConfig, RetryConfig};

/// The retries of a service's own route: a connect that fails is tried on another endpoint
/// (nothing was sent, so any request may go again).
pub(crate) fn service_retry() -> RetryConfig {
    RetryConfig {
        attempts: 2,
        per_try_timeout: None,
        on: vec!["connect-failure".into()],
        budget_percent: 20,
        min_retries_per_second: 10,
    }
}

/// The listener's [`Outbound`]; appends to `routes` one route per service, after the
/// configured ones (first match wins, so a configured route for a service takes precedence).
///
/// A service is reached at its cluster's `addresses`, and at its endpoints' own addresses
/// when no other cluster lists the same endpoint (an application that calls an endpoint it
/// already knows still gets balancing, retries and mTLS). An address claimed twice by
/// endpoints alone is not a service: the connection is passed through.
pub(crate) fn outbound(
    o: &OutboundConfig,
    config: &Config,
    clusters: &[Cluster],
    routes: &mut Vec<Route>,
    retry: RetryPolicy,
) -> Arc<Outbound> {
    let mut services = FxHashMap::default();
    let mut by_endpoint: FxHashMap<_, Option<usize>> = FxHashMap::default();
    for (ci, c) in clusters.iter().enumerate() {
        for e in &c.endpoints {
            by_endpoint
                .entry(e.addr)
                .and_modify(|owner| {
                    if *owner != Some(ci) {
                        *owner = None;
                    }
                })
                .or_insert(Some(ci));
        }
    }
    services.extend(by_endpoint.into_iter().filter_map(|(a, ci)| Some((a, ci?))));
    // Declared addresses win over endpoints' (checks keep them unique among clusters).
    for (ci, c) in config.clusters.iter().enumerate() {
        services.extend(c.addresses.iter().map(|a| (*a, ci)));
    }
    let mut served: Vec<usize> = services.values().copied().collect();
    served.sort_unstable();
    served.dedup();
    for ci in served {
        routes.push(service_route(clusters, ci, Some(retry.clone())));
    }
    Arc::new(Outbound {
        services,
        opaque_ports: o.opaque_ports.clone().into(),
        detect_timeout: o.detect_timeout,
        passthrough: o.passthrough,
        connect_timeout: o.connect_timeout,
        tcp_idle_timeout: o.tcp_idle_timeout,
    })
}

/// The listener's [`Inbound`]; appends to `routes` one route per port's cluster, after the
/// configured ones. No retries: a request that reached the application is not sent twice.
pub(crate) fn inbound<E>(
    b: &InboundConfig,
    index: &impl Fn(&str) -> Result<usize, E>,
    clusters: &[Cluster],
    routes: &mut Vec<Route>,
) -> Result<Arc<Inbound>, E> {
    let mut ports = FxHashMap::default();
    for p in &b.ports {
        let cluster = index(&p.cluster)?;
        ports.insert(
            p.port,
            InboundPort {
                cluster,
                permissive: p.permissive,
                opaque: p.opaque,
            },
        );
    }
    let mut served: Vec<usize> = ports.values().map(|p| p.cluster).collect();
    served.sort_unstable();
    served.dedup();
    for ci in served {
        routes.push(service_route(clusters, ci, None));
    }
    Ok(Arc::new(Inbound {
        ports,
        tcp_idle_timeout: b.tcp_idle_timeout,
    }))
}

/// The route that takes a service's requests when no configured route does.
fn service_route(clusters: &[Cluster], ci: usize, retry: Option<RetryPolicy>) -> Route {
    Route {
        name: Arc::from(format!("service:{}", clusters[ci].name)),
        matcher: Match {
            service: Some(ci),
            ..Match::default()
        },
        action: Action::Cluster(ci),
        timeout: None,
        retry,
        rate_limit: None,
        request_headers: None,
        response_headers: None,
        request_id: None,
        rewrite: None,
        fault: None,
        cors: None,
        compression: None,
        mirror: None,
    }
}

/// Zone-aware routing for every cluster, when the node has a zone and names the cluster of its
/// own service: its endpoints' zones say how many callers each zone has.
pub(crate) fn zone_aware(config: &Config) -> Option<Arc<ZoneAware>> {
    let z = config.zone.as_ref()?;
    let callers_cluster = z.callers.as_deref()?;
    let own = config.clusters.iter().find(|c| c.name == callers_cluster)?;
    let mut callers: Vec<(Arc<str>, u64)> = Vec::new();
    for e in &own.endpoints {
        let Some(zone) = &e.zone else { continue };
        match callers.iter_mut().find(|(n, _)| **n == **zone) {
            Some((_, count)) => *count += 1,
            None => callers.push((Arc::from(zone.as_str()), 1)),
        }
    }
    Some(Arc::new(ZoneAware {
        local: Arc::from(z.name.as_str()),
        callers,
        min_cluster_size: z.min_cluster_size,
    }))
}
