//! From a checked [`Config`] to the immutable [`Snapshot`] workers serve from: names become
//! indexes, matches become a [`RouteTable`], defaults are filled in, limits are divided among
//! the workers, and health-checked endpoints get their shared health cell.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ringmesh_core::access_log::{self, AccessLogSpec};
use ringmesh_core::balance::Lb;
use ringmesh_core::health::{HealthCell, HealthConfig, Target};
use ringmesh_core::outlier::OutlierConfig;
use ringmesh_core::policy::{Action as PolicyAction, Cidr, Policies, Policy};
use ringmesh_core::ratelimit::RateLimit;
use ringmesh_core::retry::{RetryOn, RetryPolicy};
use ringmesh_core::route::{Action, HostMatch, Match, PathMatch, Route, RouteTable, Split};
use ringmesh_core::snapshot::{
    Cluster, ClusterLimits, EndpointSpec, HttpLimits, HttpListener, Listener, Protocol, Snapshot,
    TcpRoute, defaults,
};
use ringmesh_core::tls::{CertSpec, ClientTls, ServerTls, TlsError};

use ringmesh_core::sni::NameMap;

use ringmesh_core::snapshot::UpstreamProtocol as Protocol1;

use crate::config::{
    ClusterConfig, Config, HeadersConfig, LbPolicy, ListenerConfig, ListenerProtocol,
    RequestIdConfig, RetryConfig, RewriteConfig, RouteConfig, UpstreamProtocol,
};
use ringmesh_core::head::edit::{HeaderEdits, RequestIdSpec, Template};
use ringmesh_core::rewrite::{HostRewrite, PathRewrite, Rewrite};
use ringmesh_core::route::{Cond, DirectResponse, MoreMatch, PathRegex, Redirect, share_threshold};

/// Why a checked config does not compile. Messages name the field where there is one.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A cluster's TLS (CA, client certificate) cannot be built.
    #[error("clusters[{cluster}].tls.{}: {}", .tls.field, .tls.message)]
    ClusterTls { cluster: usize, tls: TlsError },
    /// A listener's TLS (certificates, client CA) cannot be built.
    #[error("{}: {}", listener_tls_field(*.listener, &.tls.field), .tls.message)]
    ListenerTls { listener: usize, tls: TlsError },
    /// A listener's access log file cannot be opened for writing.
    #[error("listeners[{listener}].access_log.path: cannot open `{path}`: {source}")]
    AccessLog {
        listener: usize,
        path: String,
        source: std::io::Error,
    },
    /// A route or listener names a cluster that does not exist.
    #[error("no cluster named `{0}`")]
    NoCluster(String),
    /// A TCP listener has neither `cluster` nor `sni`.
    #[error("a tcp listener needs `cluster` or `sni`")]
    TcpWithoutCluster,
    /// A TCP listener routes one server name to two clusters.
    #[error("`{0}` is routed twice")]
    RoutedTwice(String),
    /// A split's weights add up to nothing.
    #[error("a split needs a positive weight")]
    SplitWeight,
    /// A header edit's value does not read (checked when decoded; here for configs built in
    /// code).
    #[error("{0}")]
    HeaderValue(String),
    /// The span collector's URL is not one (checked when decoded; here for configs built in
    /// code).
    #[error("tracing.otlp: {0}")]
    Tracing(&'static str),
}

/// The field of a listener's TLS problem: `listeners[i].tls`, then the field within, if any.
fn listener_tls_field(listener: usize, field: &str) -> String {
    if field.is_empty() {
        format!("listeners[{listener}].tls")
    } else {
        format!("listeners[{listener}].tls.{field}")
    }
}

/// Compiles `config` as version `version` for one worker, with fresh health state. See
/// [`Compiler::compile`].
pub fn compile(
    config: &Config,
    version: u64,
    binds: &[SocketAddr],
) -> Result<Snapshot, CompileError> {
    Compiler::new(1).compile(config, version, binds)
}

/// What compiling needs beyond the config: the worker count (limits are per worker), and the
/// health cells of checked endpoints, kept across versions so a reload does not forget which
/// endpoints are down.
#[derive(Debug)]
pub struct Compiler {
    workers: u32,
    cells: HashMap<(Arc<str>, SocketAddr), Arc<HealthCell>>,
}

impl Compiler {
    /// A compiler for `workers` workers.
    pub fn new(workers: usize) -> Compiler {
        Compiler {
            workers: workers.clamp(1, u32::MAX as usize) as u32,
            cells: HashMap::new(),
        }
    }

    /// Compiles `config` as version `version`. `binds[i]` is where listener `i` is bound (port
    /// 0 already resolved). The config must have passed [`Config::parse`]; a dangling cluster
    /// name is reported rather than trusted.
    pub fn compile(
        &mut self,
        config: &Config,
        version: u64,
        binds: &[SocketAddr],
    ) -> Result<Snapshot, CompileError> {
        let zones = crate::compile_sidecar::zone_aware(config);
        let clusters = config
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut cluster = self.cluster(c, i)?;
                cluster.zones = zones.clone();
                Ok(cluster)
            })
            .collect::<Result<_, CompileError>>()?;
        build(config, version, binds, clusters, self.workers as usize)
    }

    /// Forgets the health of endpoints that `applied` (the snapshot now in force) no longer
    /// checks, and returns the ones it does.
    pub fn applied(&mut self, applied: &Snapshot) -> Vec<Target> {
        let targets = health_targets(applied);
        self.cells = targets
            .iter()
            .map(|t| ((t.cluster.clone(), t.addr), t.cell.clone()))
            .collect();
        targets
    }

    fn cluster(&mut self, c: &ClusterConfig, i: usize) -> Result<Cluster, CompileError> {
        let tls = c
            .tls
            .as_ref()
            .map(|t| {
                let pair = t.cert.as_deref().zip(t.key.as_deref());
                let alpn: &[&[u8]] = match c.protocol {
                    UpstreamProtocol::Http1 => &[b"http/1.1"],
                    UpstreamProtocol::Http2 | UpstreamProtocol::Mesh => &[b"h2"],
                    UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
                };
                ClientTls::build(&t.sni, &t.ca, pair, alpn)
                    .map_err(|tls| CompileError::ClusterTls { cluster: i, tls })
            })
            .transpose()?;
        let name: Arc<str> = Arc::from(c.name.as_str());
        // A limit is enforced by each worker on its own share, rounded up.
        let share = |v: Option<u32>| v.map_or(u32::MAX, |v| v.div_ceil(self.workers));
        let health_check = c.health_check.as_ref().map(|h| HealthConfig {
            path: h.path.clone(),
            interval: h.interval,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        });
        Ok(Cluster {
            request_headers: header_edits(c.request_headers.as_ref())?,
            response_headers: header_edits(c.response_headers.as_ref())?,
            tls,
            protocol: match c.protocol {
                UpstreamProtocol::Http1 => Protocol1::Http1,
                UpstreamProtocol::Http2 => Protocol1::Http2,
                UpstreamProtocol::Auto => Protocol1::Auto,
                UpstreamProtocol::Mesh => Protocol1::Mesh,
            },
            name: name.clone(),
            lb: match c.lb {
                LbPolicy::P2cEwma => Lb::P2cEwma,
                LbPolicy::RoundRobin => Lb::RoundRobin,
                LbPolicy::Random => Lb::Random,
            },
            connect_timeout: c.connect_timeout,
            pool_idle_timeout: c.pool_idle_timeout,
            pool_max_idle: defaults::POOL_MAX_IDLE,
            limits: ClusterLimits {
                max_connections: share(c.limits.max_connections),
                max_pending: share(c.limits.max_pending),
                max_requests: share(c.limits.max_requests),
                endpoint: ringmesh_core::pacing::PaceLimits {
                    max_open: share(
                        c.limits
                            .max_endpoint_connections
                            .or(Some(defaults::ENDPOINT_CONNECTIONS)),
                    ),
                    max_connecting: share(
                        c.limits
                            .max_endpoint_connecting
                            .or(Some(defaults::ENDPOINT_CONNECTING)),
                    ),
                },
            },
            outlier: c.outlier.as_ref().map(|o| OutlierConfig {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection,
                max_ejection: o.max_ejection,
                max_ejected_percent: o.max_ejected_percent,
            }),
            endpoints: c
                .endpoints
                .iter()
                .map(|e| EndpointSpec {
                    addr: e.addr,
                    zone: e.zone.as_deref().map(Arc::from),
                    priority: e.priority,
                    weight: e.weight.max(1),
                    health: health_check.as_ref().map(|_| {
                        self.cells
                            .entry((name.clone(), e.addr))
                            .or_default()
                            .clone()
                    }),
                })
                .collect(),
            health_check,
            zones: None,
        })
    }
}

/// The endpoints a snapshot has health-checked.
pub fn health_targets(s: &Snapshot) -> Vec<Target> {
    s.clusters
        .iter()
        .filter_map(|c| Some((c, c.health_check.as_ref()?)))
        .flat_map(|(c, h)| {
            c.endpoints.iter().filter_map(move |e| {
                Some(Target {
                    cluster: c.name.clone(),
                    addr: e.addr,
                    cell: e.health.clone()?,
                    config: h.clone(),
                    tls: c.tls.clone(),
                    protocol: c.protocol,
                })
            })
        })
        .collect()
}

fn build(
    config: &Config,
    version: u64,
    binds: &[SocketAddr],
    clusters: Vec<Cluster>,
    workers: usize,
) -> Result<Snapshot, CompileError> {
    let index = |name: &str| {
        clusters
            .iter()
            .position(|c| &*c.name == name)
            .ok_or_else(|| CompileError::NoCluster(name.to_string()))
    };
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (i, l) in config.listeners.iter().enumerate() {
        let bind = *binds.get(i).unwrap_or(&l.bind);
        let protocol = match l.protocol {
            ListenerProtocol::Tcp => Protocol::Tcp {
                route: tcp_route(l, &index)?,
                idle_timeout: l.idle_timeout,
                hello_timeout: l.request_head_timeout,
            },
            ListenerProtocol::Http => {
                let mut routes = l
                    .routes
                    .iter()
                    .map(|r| route(r, &index, workers))
                    .collect::<Result<Vec<_>, _>>()?;
                let outbound = l.outbound.as_ref().map(|o| {
                    let retry = retry_policy(&crate::compile_sidecar::service_retry());
                    crate::compile_sidecar::outbound(o, config, &clusters, &mut routes, retry)
                });
                let inbound = l
                    .inbound
                    .as_ref()
                    .map(|b| crate::compile_sidecar::inbound(b, &index, &clusters, &mut routes))
                    .transpose()?;
                Protocol::Http(Box::new(HttpListener {
                    routes: RouteTable::new(routes),
                    limits: HttpLimits {
                        max_request_head: l.max_request_head_bytes as usize,
                        max_request_body: l.max_request_body_bytes,
                        request_head_timeout: l.request_head_timeout,
                        idle_timeout: l.idle_timeout,
                        paths: l.paths.rules(),
                    },
                    access_log: l.access_log.as_ref().map(|a| log_spec(a, i)).transpose()?,
                    request_id: l.request_id.as_ref().map(request_id_spec),
                    tls: l
                        .tls
                        .as_ref()
                        .map(|t| server_tls(t, &l.name, i))
                        .transpose()?,
                    outbound,
                    inbound,
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
        policies: policies(config),
        spans: config.tracing.as_ref().map(span_export).transpose()?,
    })
}

/// The span export of `tracing`; the node's host name is each span's `service.instance.id`.
fn span_export(
    t: &crate::config::TracingConfig,
) -> Result<Arc<ringmesh_core::spans::ExportSpec>, CompileError> {
    let endpoint = ringmesh_core::spans::Endpoint::parse(&t.otlp).map_err(CompileError::Tracing)?;
    let instance = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Ok(Arc::new(ringmesh_core::spans::ExportSpec {
        endpoint,
        sample: t.sample,
        service: t.service_name.clone(),
        instance,
    }))
}

/// Loads a listener's certificates; an error names the field (`listeners[0].tls.certs[1].key`).
fn server_tls(
    t: &crate::config::ListenerTlsConfig,
    name: &str,
    i: usize,
) -> Result<ServerTls, CompileError> {
    let certs: Vec<CertSpec> = t
        .certs
        .iter()
        .map(|c| CertSpec {
            cert: c.cert.clone(),
            key: c.key.clone(),
            sni: c.sni.clone(),
        })
        .collect();
    ServerTls::build(name, &certs, &t.alpn, t.client_ca.as_deref())
        .map_err(|tls| CompileError::ListenerTls { listener: i, tls })
}

/// Listener `i`'s access log destination, checked writable now so that a bad path is a
/// config error.
fn log_spec(a: &crate::config::AccessLogConfig, i: usize) -> Result<AccessLogSpec, CompileError> {
    let target = if a.path == "stdout" {
        access_log::Target::Stdout
    } else {
        let path = std::path::PathBuf::from(&a.path);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| CompileError::AccessLog {
                listener: i,
                path: a.path.clone(),
                source,
            })?;
        access_log::Target::File(path)
    };
    Ok(AccessLogSpec {
        target,
        sample: a.sample,
    })
}

/// A TCP listener's destination: its cluster, or clusters by server name.
fn tcp_route(
    l: &ListenerConfig,
    index: &impl Fn(&str) -> Result<usize, CompileError>,
) -> Result<TcpRoute, CompileError> {
    let fallback = l.cluster.as_deref().map(index).transpose()?;
    if l.sni.is_empty() {
        return fallback
            .map(TcpRoute::Cluster)
            .ok_or(CompileError::TcpWithoutCluster);
    }
    let mut names = NameMap::default();
    names.default = fallback;
    for r in &l.sni {
        let ci = index(&r.cluster)?;
        for n in &r.names {
            if names.insert(n, ci).is_err() {
                return Err(CompileError::RoutedTwice(n.clone()));
            }
        }
    }
    Ok(TcpRoute::Sni(Box::new(names)))
}

fn route(
    r: &RouteConfig,
    index: &impl Fn(&str) -> Result<usize, CompileError>,
    workers: usize,
) -> Result<Route, CompileError> {
    let mut matcher = request_match(&r.matcher);
    matcher.service = r.matcher.service.as_deref().map(index).transpose()?;
    Ok(Route {
        name: Arc::from(r.name.as_str()),
        matcher,
        action: match (&r.cluster, &r.redirect, &r.direct_response) {
            (_, Some(rd), _) => Action::Redirect(Arc::new(Redirect {
                scheme: rd.scheme.as_deref().map(Box::from),
                host: rd.host.as_deref().map(|h| Box::from(h.as_bytes())),
                path: rd.path.as_deref().map(|p| Box::from(p.as_bytes())),
                prefix: rd.prefix.as_deref().map(|p| Box::from(p.as_bytes())),
                code: rd.code,
                strip_query: rd.strip_query,
            })),
            (_, _, Some(dr)) => Action::Direct(Arc::new(DirectResponse {
                status: dr.status,
                body: Box::from(dr.body.as_bytes()),
            })),
            (Some(c), _, _) => Action::Cluster(index(c)?),
            (None, _, _) => {
                let targets = r
                    .split
                    .iter()
                    .map(|t| Ok((index(&t.cluster)?, t.weight)))
                    .collect::<Result<Vec<_>, CompileError>>()?;
                Action::Split(Split::new(&targets).ok_or(CompileError::SplitWeight)?)
            }
        },
        timeout: r.timeout,
        retry: r.retry.as_ref().map(retry_policy),
        request_headers: header_edits(r.request_headers.as_ref())?,
        response_headers: header_edits(r.response_headers.as_ref())?,
        request_id: r.request_id.as_ref().map(request_id_spec),
        rewrite: r.rewrite.as_ref().map(rewrite).transpose()?,
        cors: r.cors.as_ref().map(cors),
        compression: r.compression.as_ref().map(compression),
        mirror: match &r.mirror {
            Some(m) => Some(Arc::new(ringmesh_core::route::Mirror {
                cluster: index(&m.cluster)?,
                share: share_threshold(m.share),
                max_body: m.max_body,
            })),
            None => None,
        },
        fault: r.fault.as_ref().map(|f| {
            Arc::new(ringmesh_core::route::Fault {
                delay: f
                    .delay
                    .as_ref()
                    .map(|(_, share)| (f.delay_for, share_threshold(*share))),
                abort: f
                    .abort
                    .map(|(status, grpc, share)| (status, grpc, share_threshold(share))),
                header: f.header.as_deref().map(|h| Box::from(h.as_bytes())),
            })
        }),
        rate_limit: r.rate_limit.map(|l| {
            RateLimit {
                rps: l.rps,
                burst: l.burst,
            }
            .share(workers)
        }),
    })
}

/// A route's or cluster's header edits, compiled.
fn header_edits(h: Option<&HeadersConfig>) -> Result<Option<Arc<HeaderEdits>>, CompileError> {
    let Some(h) = h else {
        return Ok(None);
    };
    let template = |v: &String| Template::parse(v).map_err(CompileError::HeaderValue);
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| Ok((Box::from(k.as_bytes()), template(v)?)))
            .collect::<Result<Vec<_>, CompileError>>()
    };
    Ok(Some(Arc::new(HeaderEdits {
        add: pairs(&h.add)?,
        set: pairs(&h.set)?,
        remove: h.remove.iter().map(|n| Box::from(n.as_bytes())).collect(),
    })))
}

/// A route's CORS policy.
fn compression(c: &crate::config::CompressionConfig) -> Arc<ringmesh_core::compress::Compression> {
    use ringmesh_core::compress::{Algorithm, Compression, Levels};
    Arc::new(Compression {
        // Decoding accepted only these names.
        algorithms: c
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_token(a.as_bytes()))
            .collect(),
        levels: Levels {
            gzip: c.levels.gzip,
            brotli: c.levels.br,
            zstd: c.levels.zstd,
        },
        min_size: c.min_size,
        types: c.types.iter().map(|t| Box::from(t.as_bytes())).collect(),
    })
}

fn cors(c: &crate::config::CorsConfig) -> Arc<ringmesh_core::cors::Cors> {
    use ringmesh_core::cors::OriginRule;
    let lower = |s: &str| Box::from(s.to_ascii_lowercase().as_bytes());
    let origins = c
        .allow_origins
        .iter()
        .map(|o| match o.split_once("://*") {
            _ if o == "*" => OriginRule::Any,
            Some((scheme, suffix)) => OriginRule::Subdomains {
                scheme: lower(&format!("{scheme}://")),
                suffix: lower(suffix),
            },
            None => OriginRule::Exact(lower(o)),
        })
        .collect();
    let joined = |v: &[String]| Box::from(v.join(", ").as_bytes());
    Arc::new(ringmesh_core::cors::Cors {
        origins,
        methods: joined(&c.allow_methods),
        headers: joined(&c.allow_headers),
        expose: joined(&c.expose_headers),
        max_age: c.max_age,
        credentials: c.allow_credentials,
    })
}

/// A route's rewrite, compiled (its expression once, for every request).
fn rewrite(r: &RewriteConfig) -> Result<Arc<Rewrite>, CompileError> {
    let path = match (&r.prefix, &r.regex) {
        (Some(p), _) => Some(PathRewrite::Prefix(Box::from(p.as_bytes()))),
        (None, Some(re)) => Some(PathRewrite::Regex {
            re: ringmesh_core::rewrite::compile(re).map_err(CompileError::HeaderValue)?,
            substitution: Box::from(r.substitution.as_deref().unwrap_or_default().as_bytes()),
        }),
        (None, None) => None,
    };
    let host = match (&r.host, r.host_from_endpoint) {
        (Some(h), _) => Some(HostRewrite::Literal(Box::from(h.as_bytes()))),
        (None, true) => Some(HostRewrite::Endpoint),
        (None, false) => None,
    };
    Ok(Arc::new(Rewrite { path, host }))
}

fn request_id_spec(r: &RequestIdConfig) -> RequestIdSpec {
    RequestIdSpec {
        header: Box::from(r.header.as_bytes()),
        trust_client: r.trust_client,
        echo: r.echo,
    }
}

/// Access policies, in order.
fn policies(config: &Config) -> Policies {
    Policies {
        default_deny: config.default_deny,
        list: config
            .policies
            .iter()
            .map(|p| Policy {
                name: Arc::from(p.name.as_str()),
                action: if p.deny {
                    PolicyAction::Deny
                } else {
                    PolicyAction::Allow
                },
                audit: p.audit,
                identity: p.identity.as_deref().map(Box::from),
                source: p.source.as_deref().and_then(Cidr::parse),
                request: request_match(&p.request),
                http: p.request != crate::config::MatchConfig::default(),
                scoped: p.applies_to.is_some(),
                ports: p
                    .applies_to
                    .as_ref()
                    .filter(|ports| !ports.is_empty())
                    .map(|ports| ports.as_slice().into()),
            })
            .collect(),
    }
}

/// Request conditions, compiled.
fn request_match(m: &crate::config::MatchConfig) -> Match {
    Match {
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
        path_ignore_case: m.ignore_case,
        method: m.method.as_deref().map(|s| s.as_bytes().into()),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes().into(), v.as_bytes().into()))
            .collect(),
        service: None,
        more: more_match(m),
    }
}

/// The rarer conditions, compiled (each expression once); `None` when there are none.
fn more_match(m: &crate::config::MatchConfig) -> Option<Arc<MoreMatch>> {
    if m.path_regex.is_none() && m.header_rules.is_empty() && m.query.is_empty() {
        return None;
    }
    // Checked when decoded; one that does not compile here is never taken to match.
    let whole = |re: &str| {
        ringmesh_core::pattern::compile_whole(re)
            .unwrap_or_else(|_| ringmesh_core::pattern::never())
    };
    let cond = |c: &crate::config::CondConfig| match c {
        crate::config::CondConfig::Exact(v) => Cond::Exact(v.as_bytes().into()),
        crate::config::CondConfig::Regex(re) => Cond::Regex(whole(re)),
        crate::config::CondConfig::Present(_) => Cond::Present,
        crate::config::CondConfig::Absent(_) => Cond::Absent,
    };
    let conds = |map: &std::collections::BTreeMap<String, crate::config::CondConfig>| {
        map.iter()
            .map(|(k, c)| (Box::from(k.as_bytes()), cond(c)))
            .collect()
    };
    Some(Arc::new(MoreMatch {
        path_regex: m.path_regex.as_deref().map(whole).map(PathRegex),
        headers: conds(&m.header_rules),
        query: conds(&m.query),
    }))
}

fn retry_policy(r: &RetryConfig) -> RetryPolicy {
    let mut on = RetryOn::default();
    for c in &r.on {
        match c.as_str() {
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "5xx" => on.status_5xx = true,
            "unavailable" => on.grpc_unavailable = true,
            code => on.statuses.extend(code.parse::<u16>().ok()),
        }
    }
    RetryPolicy {
        attempts: r.attempts,
        per_try_timeout: r.per_try_timeout,
        on,
        budget_ratio: f64::from(r.budget_percent) / 100.0,
        min_per_second: r.min_retries_per_second,
    }
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
