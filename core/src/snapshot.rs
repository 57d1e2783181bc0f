//! The compiled, immutable configuration a worker serves from.
//!
//! The control side builds one [`Snapshot`] per config version and sends an `Arc` of it to every
//! worker; a worker pairs it with its own per-endpoint state in a `View` and swaps that in
//! between requests. A request keeps the view it started with until it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::Lb;
use crate::health::{HealthCell, HealthConfig};
use crate::outlier::OutlierConfig;
use crate::route::RouteTable;

/// One config version, compiled.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Version, increasing with every applied config.
    pub version: u64,
    /// Listeners, by position.
    pub listeners: Vec<Listener>,
    /// Clusters, by position; routes refer to them by index.
    pub clusters: Vec<Cluster>,
    /// Access policies, checked before routing.
    pub policies: crate::policy::Policies,
    /// Span export (`tracing`), when on.
    pub spans: Option<std::sync::Arc<crate::spans::ExportSpec>>,
}

impl Snapshot {
    /// The position of the cluster called `name`.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| &*c.name == name)
    }
}

/// A listener: where to accept, and what to do with connections.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Unique name, for metrics; a listener keeps its sockets across reloads by name.
    pub name: Arc<str>,
    /// Address to bind (a concrete port: the control side resolves port 0 once).
    pub bind: SocketAddr,
    /// Protocol and routing.
    pub protocol: Protocol,
}

/// What a listener speaks.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// HTTP/1.1 with routes.
    Http(Box<HttpListener>),
    /// Raw TCP to a cluster.
    Tcp {
        /// Where connections go.
        route: TcpRoute,
        /// Close a connection with no traffic either way for this long.
        idle_timeout: Duration,
        /// Time for a ClientHello to arrive, when routing by its server name.
        hello_timeout: Duration,
    },
}

/// Where a TCP listener sends its connections.
#[derive(Debug, Clone)]
pub enum TcpRoute {
    /// One cluster, by index.
    Cluster(usize),
    /// By the server name of the TLS ClientHello each connection starts with (TLS passes
    /// through untouched); the map's default takes the rest (none: they are closed).
    Sni(Box<crate::sni::NameMap<usize>>),
}

impl TcpRoute {
    /// The clusters it may send to, each once.
    pub fn clusters(&self) -> Vec<usize> {
        match self {
            TcpRoute::Cluster(ci) => vec![*ci],
            TcpRoute::Sni(m) => {
                let mut v: Vec<usize> = m.values().copied().collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }
}

/// An HTTP listener's routes and limits.
#[derive(Debug, Clone)]
pub struct HttpListener {
    /// Routes, first match wins.
    pub routes: RouteTable,
    /// Limits on what clients send.
    pub limits: HttpLimits,
    /// Access log, if any.
    pub access_log: Option<crate::access_log::AccessLogSpec>,
    /// TLS termination, if any.
    pub tls: Option<crate::tls::ServerTls>,
    /// Set on a sidecar's outbound listener: it takes the connections `ringmesh init`
    /// redirects, each to the destination the application asked for.
    pub outbound: Option<Arc<Outbound>>,
    /// Set on a sidecar's inbound listener: it takes the connections `ringmesh init`
    /// redirects from other pods, each to the workload's port it was going to.
    pub inbound: Option<Arc<Inbound>>,
    /// Request ids (`request_id`), unless a route says otherwise.
    pub request_id: Option<crate::head::edit::RequestIdSpec>,
}

/// What an inbound listener does with a redirected connection ([`crate::inbound`]).
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The workload's ports; a connection to another port is refused.
    pub ports: rustc_hash::FxHashMap<u16, InboundPort>,
    /// Close an opaque connection with no traffic either way for this long.
    pub tcp_idle_timeout: Duration,
}

/// One port of the workload, as its inbound listener serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundPort {
    /// The cluster that reaches the application on this port (by index).
    pub cluster: usize,
    /// Whether clients outside the mesh (no TLS) are served.
    pub permissive: bool,
    /// Opaque TCP (after TLS is taken off): no HTTP, nothing awaited from the client.
    pub opaque: bool,
}

/// What an outbound listener does with a redirected connection ([`crate::outbound`]).
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Mesh services by the addresses applications call them at (a cluster's `addresses`, and
    /// its endpoints' own): the cluster, by index. Requests to them are routed by the
    /// listener's routes, whose generated ones match on this service.
    pub services: rustc_hash::FxHashMap<SocketAddr, usize>,
    /// Destination ports whose traffic is opaque TCP: no detection, no wait.
    pub opaque_ports: Box<[u16]>,
    /// How long to wait for an application's first bytes before taking the connection as
    /// opaque TCP (a protocol whose server speaks first).
    pub detect_timeout: Duration,
    /// Connections to destinations outside the mesh are passed through (true) or refused.
    pub passthrough: bool,
    /// Time to connect to a passed-through destination.
    pub connect_timeout: Duration,
    /// Close an opaque or passed-through connection with no traffic either way for this long.
    pub tcp_idle_timeout: Duration,
}

impl Outbound {
    /// Whether traffic to `port` is declared opaque.
    pub fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }
}

/// Limits applied to clients of an HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head (431 past it).
    pub max_request_head: usize,
    /// Largest request body, if limited (413 past it).
    pub max_request_body: Option<u64>,
    /// Time allowed from the first byte of a request to the end of its head (408 past it).
    pub request_head_timeout: Duration,
    /// Time an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// How request paths are normalized before policies and routing.
    pub paths: crate::path::PathRules,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_request_head: 64 * 1024,
            max_request_body: None,
            request_head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            paths: crate::path::PathRules::default(),
        }
    }
}

/// An upstream cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Unique name.
    pub name: Arc<str>,
    /// Balancing policy.
    pub lb: Lb,
    /// Time allowed to connect to an endpoint.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per endpoint, per worker.
    pub pool_max_idle: usize,
    /// Circuit breakers, per worker.
    pub limits: ClusterLimits,
    /// Outlier ejection; `None`: off.
    pub outlier: Option<OutlierConfig>,
    /// Active health checks; `None`: off.
    pub health_check: Option<HealthConfig>,
    /// TLS to the endpoints, if any.
    pub tls: Option<crate::tls::ClientTls>,
    /// The protocol spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// Zone-aware routing, when this node has a zone and knows its callers.
    pub zones: Option<Arc<ZoneAware>>,
    /// Edits of the fields of requests to this cluster, and of its answers.
    pub request_headers: Option<Arc<crate::head::edit::HeaderEdits>>,
    pub response_headers: Option<Arc<crate::head::edit::HeaderEdits>>,
    /// Endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// What zone-aware routing ([`crate::zone`]) needs to know of the calling side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneAware {
    /// This node's zone.
    pub local: Arc<str>,
    /// How many instances of the calling service run in each zone.
    pub callers: Vec<(Arc<str>, u64)>,
    /// Under this many healthy endpoints (in the preferred priority level), zone routing is
    /// off.
    pub min_cluster_size: usize,
}

pub use crate::dial::UpstreamProtocol;

/// Circuit-breaker limits of a cluster, as each worker enforces them (the configured limit
/// divided among the workers, rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterLimits {
    /// Open upstream connections.
    pub max_connections: u32,
    /// Requests waiting for a new connection.
    pub max_pending: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// HTTP/1.1 connections open to one endpoint, and connects in flight to it
    /// ([`crate::pacing`]).
    pub endpoint: crate::pacing::PaceLimits,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            max_connections: u32::MAX,
            max_pending: u32::MAX,
            max_requests: u32::MAX,
            endpoint: crate::pacing::PaceLimits {
                max_open: defaults::ENDPOINT_CONNECTIONS,
                max_connecting: defaults::ENDPOINT_CONNECTING,
            },
        }
    }
}

/// One endpoint of a cluster.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Address.
    pub addr: SocketAddr,
    /// Zone (datacenter), if known.
    pub zone: Option<Arc<str>>,
    /// Failover priority; 0 is preferred.
    pub priority: u32,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Where its health checks publish, when the cluster has them.
    pub health: Option<Arc<HealthCell>>,
}

/// Defaults for cluster settings the config leaves out.
pub mod defaults {
    use std::time::Duration;

    /// Connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Connections open to one endpoint (all workers together).
    pub const ENDPOINT_CONNECTIONS: u32 = 1024;
    /// Connects in flight to one endpoint (all workers together).
    pub const ENDPOINT_CONNECTING: u32 = 64;
    /// Idle time after which a pooled upstream connection is closed.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// Idle pooled connections kept per endpoint per worker.
    pub const POOL_MAX_IDLE: usize = 256;
    /// Route timeout (to the response head).
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
    /// TCP listener idle timeout.
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
}
