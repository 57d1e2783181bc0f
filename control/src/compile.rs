//! From a checked [`Config`] to the immutable [`Snapshot`] workers serve from: names become
//! indexes, matches become a [`RouteTable`], defaults are filled in.

use std::net::SocketAddr;
use std::sync::Arc;

use ringmesh_core::balance::Lb;
use ringmesh_core::route::{Action, HostMatch, Match, PathMatch, Route, RouteTable, Split};
use ringmesh_core::snapshot::{
    Cluster, EndpointSpec, HttpLimits, HttpListener, Listener, Protocol, Snapshot, defaults,
};

use crate::config::{Config, LbPolicy, ListenerProtocol, RouteConfig};

/// Compiles `config` as version `version`. `binds[i]` is where listener `i` is bound (port 0
/// already resolved). The config must have passed [`Config::parse`]; a dangling cluster name
/// is reported rather than trusted.
pub fn compile(config: &Config, version: u64, binds: &[SocketAddr]) -> Result<Snapshot, String> {
    let clusters: Vec<Cluster> = config
        .clusters
        .iter()
        .map(|c| Cluster {
            name: Arc::from(c.name.as_str()),
            lb: match c.lb {
                LbPolicy::P2cEwma => Lb::P2cEwma,
                LbPolicy::RoundRobin => Lb::RoundRobin,
                LbPolicy::Random => Lb::Random,
            },
            connect_timeout: c.connect_timeout,
            pool_idle_timeout: c.pool_idle_timeout,
            pool_max_idle: defaults::POOL_MAX_IDLE,
            endpoints: c
                .endpoints
                .iter()
                .map(|e| EndpointSpec {
                    addr: e.addr,
                    zone: e.zone.as_deref().map(Arc::from),
                    priority: e.priority,
                    weight: e.weight.max(1),
                })
                .collect(),
        })
        .collect();
    let index = |name: &str| {
        clusters
            .iter()
            .position(|c| &*c.name == name)
            .ok_or_else(|| format!("no cluster named `{name}`"))
    };
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (i, l) in config.listeners.iter().enumerate() {
        let bind = *binds.get(i).unwrap_or(&l.bind);
        let protocol = match l.protocol {
            ListenerProtocol::Tcp => Protocol::Tcp {
                cluster: index(l.cluster.as_deref().unwrap_or_default())?,
                idle_timeout: l.idle_timeout,
            },
            ListenerProtocol::Http => {
                let routes = l
                    .routes
                    .iter()
                    .map(|r| route(r, &index))
                    .collect::<Result<Vec<_>, _>>()?;
                Protocol::Http(Box::new(HttpListener {
                    routes: RouteTable::new(routes),
                    limits: HttpLimits {
                        max_request_head: l.max_request_head_bytes as usize,
                        max_request_body: l.max_request_body_bytes,
                        request_head_timeout: l.request_head_timeout,
                        idle_timeout: l.idle_timeout,
                    },
                }))
            }
        };
        listeners.push(Listener {
            name: Arc::from(l.name.as_str()),
            bind,
            protocol,
        });
    }
    Ok(Snapshot {
        version,
        listeners,
        clusters,
    })
}

fn route(r: &RouteConfig, index: &impl Fn(&str) -> Result<usize, String>) -> Result<Route, String> {
    let m = &r.matcher;
    let matcher = Match {
        host: m.host.as_deref().map(|h| match h.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase().into_bytes().into()),
            None => HostMatch::Exact(h.to_ascii_lowercase().into_bytes().into()),
        }),
        path: match (&m.path, &m.path_prefix) {
            (Some(p), _) => Some(PathMatch::Exact(p.as_bytes().into())),
            (None, Some(p)) if p == "/" => None,
            (None, Some(p)) => Some(PathMatch::Prefix(p.as_bytes().into())),
            (None, None) => None,
        },
        method: m.method.as_deref().map(|s| s.as_bytes().into()),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes().into(), v.as_bytes().into()))
            .collect(),
    };
    let action = match &r.cluster {
        Some(c) => Action::Cluster(index(c)?),
        None => {
            let targets = r
                .split
                .iter()
                .map(|t| Ok((index(&t.cluster)?, t.weight)))
                .collect::<Result<Vec<_>, String>>()?;
            Action::Split(Split::new(&targets).ok_or("a split needs a positive weight")?)
        }
    };
    Ok(Route {
        name: Arc::from(r.name.as_str()),
        matcher,
        action,
        timeout: r.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_names_to_indexes() {
        let c = Config::parse(
            "listeners:\n  - name: l\n    bind: 127.0.0.1:0\n    routes:\n      - { match: { host: '*.Example.com', path_prefix: /a }, split: [ { cluster: b, weight: 1 }, { cluster: a, weight: 3 } ] }\n      - { match: { path_prefix: / }, cluster: a }\nclusters: [ { name: a, endpoints: [ { addr: 127.0.0.1:1 } ] }, { name: b } ]\n",
        )
        .unwrap();
        let bind: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let s = compile(&c, 7, &[bind]).unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.listeners[0].bind, bind);
        let Protocol::Http(h) = &s.listeners[0].protocol else {
            panic!()
        };
        let r0 = &h.routes.routes()[0];
        assert_eq!(
            r0.matcher.host,
            Some(HostMatch::Suffix(b".example.com".as_slice().into()))
        );
        assert_eq!(r0.clusters().collect::<Vec<_>>(), vec![1, 0]);
        assert_eq!(
            h.routes.routes()[1].matcher.path,
            None,
            "prefix / matches everything"
        );
    }
}
