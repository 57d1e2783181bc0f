//! The proxy's config as it is after decoding: what each field holds, with its defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// The config used when none is given: one HTTP listener on 127.0.0.1:8080 sending everything
/// to 127.0.0.1:8081, admin on 127.0.0.1:9901.
pub const EMBEDDED_DEFAULT: &str = "\
admin: 127.0.0.1:9901
listeners:
  - name: default
    bind: 127.0.0.1:8080
    protocol: http
    routes:
      - match: { path_prefix: / }
        cluster: default
clusters:
  - name: default
    endpoints:
      - { addr: 127.0.0.1:8081 }
";

/// Stands in for an address that failed to decode (never served: the config is refused).
pub(crate) const PLACEHOLDER_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// A whole proxy config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Admin API address.
    pub admin: SocketAddr,
    /// Worker threads; `None`: one per core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream clusters.
    pub clusters: Vec<ClusterConfig>,
    /// Deny what no policy allows (default: allow).
    pub default_deny: bool,
    /// Access policies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
    /// This node's zone, and zone-aware routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneConfig>,
    /// Span export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

/// `tracing: { otlp: http://HOST:PORT/v1/traces, sample: 10%, service_name: edge }`: spans
/// exported to an OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces endpoint.
    pub otlp: String,
    /// Share of new traces sampled, 0 to 1.
    pub sample: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// `zone: { name, callers, min_cluster_size }`: this node's zone, and the cluster listing the
/// instances of its own service (whose zones say where requests come from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneConfig {
    /// This node's zone.
    pub name: String,
    /// The cluster of this node's own service; without it, zone-aware routing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callers: Option<String>,
    /// Under this many healthy endpoints in a cluster's preferred level, no zone routing.
    pub min_cluster_size: usize,
}

/// TLS from the proxy to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterTlsConfig {
    /// The name the endpoints' certificates must carry, sent as SNI.
    pub sni: String,
    /// CA certificates (PEM) the endpoints' certificates must chain to.
    pub ca: String,
    /// Client certificate chain (PEM) to present (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One access policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// Name, for metrics and logs; defaults to `policies[i]`.
    pub name: String,
    /// `allow` or `deny`.
    pub deny: bool,
    /// Count and log what it would deny, without denying.
    pub audit: bool,
    /// Exactly this SPIFFE ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Source address range (CIDR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Request conditions, as for routes.
    pub request: MatchConfig,
    /// Scoped to this workload (`applies_to`), and to these of its ports (empty: all);
    /// `None`: a mesh-wide policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applies_to: Option<Vec<u16>>,
}

/// A route's rate limit, for the whole proxy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimitConfig {
    /// Requests per second.
    pub rps: f64,
    /// Requests allowed at once above the rate.
    pub burst: f64,
}

/// Listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1.
    Http,
    /// Raw TCP.
    Tcp,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Address to bind; port 0 picks a free port once.
    pub bind: SocketAddr,
    /// Protocol.
    pub protocol: ListenerProtocol,
    /// HTTP routes, first match wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// TCP: the cluster (with `sni`: the one for connections no entry takes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// TCP: clusters by the TLS server name each connection starts with (TLS passes through).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniRouteConfig>,
    /// Largest request head.
    pub max_request_head_bytes: u64,
    /// Largest request body, if limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Time for a client to send a request head.
    #[serde(serialize_with = "ser_duration")]
    pub request_head_timeout: Duration,
    /// Idle keep-alive (HTTP) or no-traffic (TCP) timeout.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// HTTP: the access log, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// Request ids for the listener's routes (a route may say otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestIdConfig>,
    /// TLS termination, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
    /// HTTP: how request paths are normalized before policies and routing.
    pub paths: PathsConfig,
    /// A sidecar's outbound listener, taking what `ringmesh init` redirects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundConfig>,
    /// A sidecar's inbound listener, taking what `ringmesh init --inbound-port` redirects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundConfig>,
}

/// `inbound: { mtls: strict, ports: [ { port, cluster, mtls, opaque } ], tcp_idle_timeout }`
/// on an http listener with `tls.client_ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundConfig {
    /// The workload's ports.
    pub ports: Vec<InboundPortConfig>,
    /// Opaque connections close after this long without traffic.
    #[serde(serialize_with = "ser_duration")]
    pub tcp_idle_timeout: Duration,
}

/// One port of the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundPortConfig {
    /// The port applications of other pods call.
    pub port: u16,
    /// The cluster that reaches the application on it (usually `127.0.0.1:PORT`).
    pub cluster: String,
    /// Clients outside the mesh (no TLS) are served too (`mtls: permissive`).
    pub permissive: bool,
    /// Opaque TCP after TLS: no HTTP (a protocol whose server speaks first).
    pub opaque: bool,
}

/// `outbound: { detect_timeout, opaque_ports, unknown_destinations, connect_timeout,
/// tcp_idle_timeout }` on an http listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundConfig {
    /// Time to wait for an application's first bytes before taking its connection as opaque.
    #[serde(serialize_with = "ser_duration")]
    pub detect_timeout: Duration,
    /// Destination ports whose traffic is opaque TCP (no detection).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// Destinations outside the mesh: passed through (true) or refused.
    pub passthrough: bool,
    /// Time to connect to a passed-through destination.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Opaque and passed-through connections close after this long without traffic.
    #[serde(serialize_with = "ser_duration")]
    pub tcp_idle_timeout: Duration,
}

/// `paths: { merge_slashes, escaped_slashes, semicolons }` of an HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathsConfig {
    /// Merge runs of `/` (default true).
    pub merge_slashes: bool,
    /// `reject` (default), `keep` or `unescape` for `%2F` and `%5C`.
    pub escaped_slashes: &'static str,
    /// `reject` (default) or `keep` for `;`.
    pub semicolons: &'static str,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            merge_slashes: true,
            escaped_slashes: "reject",
            semicolons: "reject",
        }
    }
}

impl PathsConfig {
    /// The rules the data plane applies.
    pub fn rules(&self) -> ringmesh_core::path::PathRules {
        use ringmesh_core::path::{EscapedSlashes, PathRules, Semicolons};
        PathRules {
            merge_slashes: self.merge_slashes,
            escaped_slashes: match self.escaped_slashes {
                "keep" => EscapedSlashes::Keep,
                "unescape" => EscapedSlashes::Unescape,
                _ => EscapedSlashes::Reject,
            },
            semicolons: match self.semicolons {
                "keep" => Semicolons::Keep,
                _ => Semicolons::Reject,
            },
        }
    }
}

/// TLS on a listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerTlsConfig {
    /// Certificates; the one without `sni` (or else the first) is the default.
    pub certs: Vec<CertConfig>,
    /// ALPN protocols in preference order.
    pub alpn: Vec<String>,
    /// CA certificates (PEM) that client certificates must chain to; clients must present one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// Connections naming one of `names` in their ClientHello go to `cluster`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SniRouteConfig {
    /// Exact names and `*.suffix` wildcards.
    pub names: Vec<String>,
    /// The cluster.
    pub cluster: String,
}

/// One certificate chain and key, and the names it serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertConfig {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
    /// Exact names and `*.suffix` wildcards.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<String>,
}

/// A listener's access log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    /// `stdout`, or a file path.
    pub path: String,
    /// Fraction of requests logged, 0 to 1.
    pub sample: f64,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    /// Name, for metrics; defaults to the route's position.
    pub name: String,
    /// Conditions.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// Destination: one cluster...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// ...or a weighted split.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitTarget>,
    /// Time allowed until the response head, counted from the end of the request.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// Rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Edits of the request's fields, and of the answer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeadersConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeadersConfig>,
    /// Request ids, in place of the listener's setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestIdConfig>,
    /// The route answers with a redirect...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectConfig>,
    /// ...or with a fixed answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseConfig>,
    /// What is rewritten in the request sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteConfig>,
    /// Faults injected, for chaos testing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    /// CORS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// Compression of answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionConfig>,
    /// Copies of requests to a shadow cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
}

/// `compression: { algorithms, min_size, types, levels }`, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompressionConfig {
    /// `zstd`, `br`, `gzip`, the route's preference first.
    pub algorithms: Vec<String>,
    pub min_size: u64,
    /// Media types, lowercase: `type/subtype` or `type/*`.
    pub types: Vec<String>,
    pub levels: LevelsConfig,
}

/// `levels: { gzip, br, zstd }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LevelsConfig {
    pub gzip: u32,
    pub br: u32,
    pub zstd: i32,
}

/// `mirror: { cluster, percent, max_body }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MirrorConfig {
    pub cluster: String,
    /// The share of requests copied, 0 to 1 (`percent` / 100).
    pub share: f64,
    /// Requests with a larger body are not copied.
    pub max_body: u64,
}

/// `cors: { allow_origins, allow_methods, allow_headers, expose_headers, max_age,
/// allow_credentials }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    pub allow_credentials: bool,
}

/// `fault: { delay: { fixed: 100ms, percent: 10 }, abort: { status: 503, grpc_status: 14,
/// percent: 5 }, header: x-fault }`; shares from 0 to 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<(String, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<(u16, Option<u8>, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The delay, decoded.
    #[serde(skip)]
    pub delay_for: Duration,
}

/// `rewrite: { prefix: /new }` or `{ regex: RE, substitution: S }`, and `host: NAME` or
/// `host_from_endpoint: true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RewriteConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substitution: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub host_from_endpoint: bool,
}

/// `request_headers` / `response_headers`: `{ add: {NAME: VALUE}, set: {NAME: VALUE},
/// remove: [NAME] }`; names lowercase, values may name `${variables}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeadersConfig {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `request_id: { header: x-request-id, trust_client: false, echo: false }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestIdConfig {
    pub header: String,
    pub trust_client: bool,
    pub echo: bool,
}

/// `redirect: { scheme, host, path, prefix, code: 301, strip_query: false }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedirectConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub code: u16,
    pub strip_query: bool,
}

/// `direct_response: { status: 200, body: "ok" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectResponseConfig {
    pub status: u16,
    pub body: String,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    /// Retries after the first try.
    pub attempts: u32,
    /// Time for each try, to the response head.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Conditions: `connect-failure`, `reset`, `5xx`, or status codes.
    pub on: Vec<String>,
    /// Retries allowed as a percentage of requests.
    pub budget_percent: u32,
    /// Retries per second always allowed (per worker).
    pub min_retries_per_second: u32,
}

/// Circuit-breaker limits of a cluster; `None`: unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitsConfig {
    /// Open connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// HTTP/1.1 connections open to one endpoint (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_endpoint_connections: Option<u32>,
    /// Connects in flight to one endpoint (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_endpoint_connecting: Option<u32>,
}

/// Outlier ejection settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierSettings {
    /// Consecutive failures that eject.
    pub consecutive_failures: u32,
    /// First ejection, doubled with each further one.
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(serialize_with = "ser_duration")]
    pub max_ejection: Duration,
    /// Most of the cluster ejected at once, in percent.
    pub max_ejected_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        let d = ringmesh_core::outlier::OutlierConfig::default();
        OutlierSettings {
            consecutive_failures: d.consecutive_failures,
            base_ejection: d.base_ejection,
            max_ejection: d.max_ejection,
            max_ejected_percent: d.max_ejected_percent,
        }
    }
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    /// Path to GET.
    pub path: String,
    /// Time between checks.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Time for an answer.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Consecutive passes that make an endpoint healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures that make it unhealthy.
    pub unhealthy_threshold: u32,
}

/// Route conditions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MatchConfig {
    /// `name` or `*.suffix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exact path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers with exact values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers by other conditions: `{ regex }`, `{ present: true }`, `{ absent: true }`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub header_rules: BTreeMap<String, CondConfig>,
    /// Query parameters: `{ exact }`, `{ regex }`, `{ present: true }`, `{ absent: true }`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, CondConfig>,
    /// The path, without the query, matches this expression whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// `path` and `path_prefix` compare without regard to ASCII case.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
    /// On an outbound listener: the mesh service (cluster name) the application called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A condition on a field's or query parameter's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CondConfig {
    Exact(String),
    Regex(String),
    Present(bool),
    Absent(bool),
}

/// One target of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitTarget {
    /// Cluster name.
    pub cluster: String,
    /// Relative weight.
    pub weight: u32,
}

/// Balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    /// P2C over peak-EWMA.
    P2cEwma,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
}

/// One upstream cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    /// Unique name.
    pub name: String,
    /// Balancing policy.
    pub lb: LbPolicy,
    /// Connect timeout.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
    /// Circuit breakers.
    pub limits: LimitsConfig,
    /// Outlier ejection; `None`: off.
    pub outlier: Option<OutlierSettings>,
    /// Active health checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// TLS to the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsConfig>,
    /// The protocol spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// The addresses applications call this service at (a virtual IP and port), which a
    /// sidecar's outbound listener balances over the endpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// Endpoints.
    pub endpoints: Vec<EndpointConfig>,
    /// Edits of the fields of requests to this cluster, and of its answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeadersConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeadersConfig>,
}

/// What a cluster's endpoints are spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, pooled connections.
    Http1,
    /// HTTP/2 (prior knowledge in cleartext, ALPN `h2` over TLS), multiplexed.
    Http2,
    /// Over TLS: what ALPN agrees on (h2 preferred); in cleartext: HTTP/1.1.
    Auto,
    /// Another ringmesh: HTTP/2, with each request marked as having come in as HTTP/1.1.
    Mesh,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointConfig {
    /// Address.
    pub addr: SocketAddr,
    /// Zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Failover priority, 0 preferred.
    pub priority: u32,
    /// Relative weight.
    pub weight: u32,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Formats a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
