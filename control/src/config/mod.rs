//! The proxy's config file (SPEC.md section 3): the model, its decoding from YAML, and checks
//! across fields (names unique, clusters referred to exist).
//!
//! [`Config::parse`] returns every problem it finds, each naming its field path, so that
//! `ringmesh check` can print them all at once and a reload can log why it was refused.

pub mod decode;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use decode::{ConfigError, Decoder, Fields, Node};

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
const PLACEHOLDER_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
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
    /// TLS termination, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
    /// HTTP: how request paths are normalized before policies and routing.
    pub paths: PathsConfig,
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
    /// `path` and `path_prefix` compare without regard to ASCII case.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
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
    /// Endpoints.
    pub endpoints: Vec<EndpointConfig>,
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

/// Parts of SPEC.md section 3 that this version refuses rather than ignores, with why.
impl Config {
    /// Parses and checks a config; every problem is reported.
    pub fn parse(source: &str) -> Result<Config, Vec<ConfigError>> {
        let docs = decode::parse(source).map_err(|e| vec![e])?;
        if docs.len() > 1 {
            return Err(vec![ConfigError {
                path: String::new(),
                line: None,
                message: "expected one YAML document".into(),
            }]);
        }
        let Some(root) = decode::root(&docs) else {
            return Err(vec![ConfigError {
                path: String::new(),
                line: None,
                message: "the config is empty".into(),
            }]);
        };
        let mut d = Decoder::default();
        let config = decode_config(&mut d, root);
        if let Some(c) = &config {
            check(&mut d, c);
        }
        match config {
            Some(c) if d.errors.is_empty() => Ok(c),
            _ => Err(d.errors),
        }
    }

    /// The config as JSON, for the admin API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn decode_config(d: &mut Decoder, root: Node<'_, '_>) -> Option<Config> {
    let f = d.mapping(
        root,
        "",
        &[
            "admin",
            "workers",
            "listeners",
            "clusters",
            "default_policy",
            "policies",
        ],
    )?;
    let admin = match f.get("admin") {
        Some((n, p)) => d.socket_addr(n, &p),
        None => DEFAULT_ADMIN.parse().ok(),
    };
    let workers = f.get("workers").and_then(|(n, p)| {
        let w = d.integer(n, &p, 1024)?;
        if w == 0 {
            d.error(&p, Some(n), "must be at least 1");
            return None;
        }
        Some(w as usize)
    });
    let default_deny = f
        .get("default_policy")
        .is_some_and(|(n, p)| d.choice(n, &p, &["allow", "deny"]) == Some("deny"));
    let policies = match f.get("policies") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .enumerate()
            .filter_map(|(i, (n, p))| decode_policy(d, n, &p, i))
            .collect(),
        None => Vec::new(),
    };
    let listeners = match f.get("listeners") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| decode_listener(d, n, &p))
            .collect(),
        None => {
            d.error("listeners", None, "required: at least one listener");
            Vec::new()
        }
    };
    let clusters = match f.get("clusters") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| decode_cluster(d, n, &p))
            .collect(),
        None => Vec::new(),
    };
    Some(Config {
        admin: admin.unwrap_or(PLACEHOLDER_ADDR),
        workers,
        listeners,
        clusters,
        default_deny,
        policies,
    })
}

/// `{ name, action: allow|deny, audit, match: { identity, source, host, path, path_prefix,
/// method, headers } }`.
fn decode_policy(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    index: usize,
) -> Option<PolicyConfig> {
    let f = d.mapping(node, path, &["name", "action", "audit", "match"])?;
    let name = f.get("name").and_then(|(n, p)| d.string(n, &p));
    let deny = required(d, &f, "action").and_then(|(n, p)| d.choice(n, &p, &["allow", "deny"]))
        == Some("deny");
    let audit = f
        .get("audit")
        .and_then(|(n, p)| d.boolean(n, &p))
        .unwrap_or(false);
    if audit && !deny {
        if let Some((n, p)) = f.get("audit") {
            d.error(&p, Some(n), "audit applies to deny policies");
        }
    }
    let (mut identity, mut source) = (None, None);
    let request = match required(d, &f, "match") {
        Some((n, p)) => {
            let m = d.mapping(
                n,
                &p,
                &[
                    "identity",
                    "source",
                    "host",
                    "path",
                    "path_prefix",
                    "ignore_case",
                    "method",
                    "headers",
                ],
            )?;
            if let Some((n, p)) = m.get("identity") {
                identity = d.string(n, &p);
                if identity
                    .as_deref()
                    .is_some_and(|id| !ringmesh_core::tls::valid_spiffe_id(id))
                {
                    d.error(
                        &p,
                        Some(n),
                        "expected a SPIFFE ID such as spiffe://mesh.local/ns/default/sa/web",
                    );
                }
            }
            if let Some((n, p)) = m.get("source") {
                source = d.string(n, &p);
                if source
                    .as_deref()
                    .is_some_and(|s| ringmesh_core::policy::Cidr::parse(s).is_none())
                {
                    d.error(&p, Some(n), "expected an address range such as 10.0.0.0/8");
                }
            }
            decode_match_fields(d, &m)
        }
        None => return None,
    };
    Some(PolicyConfig {
        name: name.unwrap_or_else(|| format!("policies[{index}]")),
        deny,
        audit,
        identity,
        source,
        request,
    })
}

fn required<'a, 'y>(
    d: &mut Decoder,
    f: &Fields<'a, 'y>,
    name: &str,
) -> Option<(Node<'a, 'y>, String)> {
    let r = f.get(name);
    if r.is_none() {
        d.error(&f.path_of(name), None, "required");
    }
    r
}

fn decode_listener(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<ListenerConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "name",
            "bind",
            "protocol",
            "tls",
            "routes",
            "cluster",
            "sni",
            "max_request_head_bytes",
            "max_request_body_bytes",
            "request_head_timeout",
            "idle_timeout",
            "access_log",
            "paths",
        ],
    )?;
    let name = required(d, &f, "name").and_then(|(n, p)| d.string(n, &p));
    let bind = required(d, &f, "bind").and_then(|(n, p)| d.socket_addr(n, &p));
    // An unreadable protocol is reported; the rest is still checked as http.
    let protocol = match f
        .get("protocol")
        .map(|(n, p)| d.choice(n, &p, &["http", "tcp"]))
    {
        Some(Some("tcp")) => ListenerProtocol::Tcp,
        _ => ListenerProtocol::Http,
    };
    let tls = match (protocol, f.get("tls")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "TLS is terminated on http listeners only");
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => decode_tls(d, n, &p),
    };
    let routes = match (protocol, f.get("routes")) {
        (ListenerProtocol::Http, Some((n, p))) => d
            .list(n, &p)
            .into_iter()
            .enumerate()
            .filter_map(|(i, (n, p))| decode_route(d, n, &p, i))
            .collect(),
        (ListenerProtocol::Http, None) => {
            d.error(&f.path_of("routes"), None, "required for an http listener");
            Vec::new()
        }
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "a tcp listener has no routes; use `cluster`");
            Vec::new()
        }
        (ListenerProtocol::Tcp, None) => Vec::new(),
    };
    let sni = match (protocol, f.get("sni")) {
        (_, None) => Vec::new(),
        (ListenerProtocol::Http, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "only tcp listeners route by server name (an http listener picks its certificate with `tls.certs[].sni`)",
            );
            Vec::new()
        }
        (ListenerProtocol::Tcp, Some((n, p))) => decode_sni_routes(d, n, &p),
    };
    let cluster = match (protocol, f.get("cluster")) {
        (ListenerProtocol::Tcp, Some((n, p))) => d.string(n, &p),
        (ListenerProtocol::Tcp, None) if f.get("sni").is_some() => None,
        (ListenerProtocol::Tcp, None) => {
            d.error(
                &f.path_of("cluster"),
                None,
                "required for a tcp listener (or `sni`)",
            );
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "an http listener sends to clusters through `routes`",
            );
            None
        }
        (ListenerProtocol::Http, None) => None,
    };
    let max_head = match f.get("max_request_head_bytes") {
        Some((n, p)) => d.size(n, &p).filter(|v| {
            let ok = (1024..=16 << 20).contains(v);
            if !ok {
                d.error(&p, Some(n), "must be between 1KiB and 16MiB");
            }
            ok
        }),
        None => Some(64 * 1024),
    };
    let max_body = f
        .get("max_request_body_bytes")
        .and_then(|(n, p)| d.size(n, &p));
    let head_timeout = match f.get("request_head_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(Duration::from_secs(10)),
    };
    let default_idle = match protocol {
        ListenerProtocol::Http => Duration::from_secs(60),
        ListenerProtocol::Tcp => Duration::from_secs(3600),
    };
    let idle = match f.get("idle_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(default_idle),
    };
    let access_log = match (protocol, f.get("access_log")) {
        (_, None) => None,
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(
                &p,
                Some(n),
                "access logs are written for http listeners only",
            );
            None
        }
        (ListenerProtocol::Http, Some((n, p))) => decode_access_log(d, n, &p),
    };
    let paths = match (protocol, f.get("paths")) {
        (_, None) => PathsConfig::default(),
        (ListenerProtocol::Tcp, Some((n, p))) => {
            d.error(&p, Some(n), "paths are normalized on http listeners only");
            PathsConfig::default()
        }
        (ListenerProtocol::Http, Some((n, p))) => decode_paths(d, n, &p),
    };
    // Fields in error keep placeholders so that checks across fields still run; the config
    // as a whole is refused anyway.
    Some(ListenerConfig {
        paths,
        tls,
        access_log,
        name: name.unwrap_or_default(),
        bind: bind.unwrap_or(PLACEHOLDER_ADDR),
        protocol,
        routes,
        cluster,
        sni,
        max_request_head_bytes: max_head.unwrap_or(64 * 1024),
        max_request_body_bytes: max_body,
        request_head_timeout: head_timeout.unwrap_or_default(),
        idle_timeout: idle.unwrap_or_default(),
    })
}

/// `paths: { merge_slashes: true, escaped_slashes: reject, semicolons: reject }`.
fn decode_paths(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> PathsConfig {
    let mut out = PathsConfig::default();
    let Some(f) = d.mapping(
        node,
        path,
        &["merge_slashes", "escaped_slashes", "semicolons"],
    ) else {
        return out;
    };
    if let Some(v) = f.get("merge_slashes").and_then(|(n, p)| d.boolean(n, &p)) {
        out.merge_slashes = v;
    }
    if let Some((n, p)) = f.get("escaped_slashes") {
        out.escaped_slashes = match d.choice(n, &p, &["reject", "keep", "unescape"]) {
            Some("keep") => "keep",
            Some("unescape") => "unescape",
            _ => "reject",
        };
    }
    if let Some((n, p)) = f.get("semicolons") {
        out.semicolons = match d.choice(n, &p, &["reject", "keep"]) {
            Some("keep") => "keep",
            _ => "reject",
        };
    }
    out
}

/// `tls: { certs: [{ cert, key, sni }], alpn }`.
fn decode_tls(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<ListenerTlsConfig> {
    let f = d.mapping(node, path, &["certs", "alpn", "client_ca"])?;
    let client_ca = f.get("client_ca").and_then(|(n, p)| d.string(n, &p));
    let certs: Vec<_> = match required(d, &f, "certs") {
        Some((n, p)) => {
            let items = d.list(n, &p);
            if items.is_empty() {
                d.error(&p, Some(n), "at least one certificate is required");
            }
            items
                .into_iter()
                .filter_map(|(n, p)| {
                    let c = d.mapping(n, &p, &["cert", "key", "sni"])?;
                    let cert = required(d, &c, "cert").and_then(|(n, p)| d.string(n, &p));
                    let key = required(d, &c, "key").and_then(|(n, p)| d.string(n, &p));
                    let sni = match c.get("sni") {
                        Some((n, p)) => server_names(d, n, &p),
                        None => Vec::new(),
                    };
                    Some(CertConfig {
                        cert: cert?,
                        key: key?,
                        sni,
                    })
                })
                .collect()
        }
        None => Vec::new(),
    };
    let alpn = match f.get("alpn") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| d.choice(n, &p, &["h2", "http/1.1"]).map(str::to_string))
            .collect(),
        None => vec!["h2".to_string(), "http/1.1".to_string()],
    };
    Some(ListenerTlsConfig {
        certs,
        alpn,
        client_ca,
    })
}

/// A list of server names: exact DNS names or `*.` followed by one.
fn server_names(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Vec<String> {
    d.list(node, path)
        .into_iter()
        .filter_map(|(n, p)| {
            let s = d.string(n, &p)?;
            valid_sni(&s).then_some(s).or_else(|| {
                d.error(&p, Some(n), "expected a DNS name or `*.` followed by one");
                None
            })
        })
        .collect()
}

/// `sni: [ { names: [a.example, "*.b.example"], cluster: c } ]`; a name appears once.
fn decode_sni_routes(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Vec<SniRouteConfig> {
    let items = d.list(node, path);
    if items.is_empty() {
        d.error(path, Some(node), "at least one entry is required");
    }
    let mut seen = BTreeMap::new();
    items
        .into_iter()
        .filter_map(|(n, p)| {
            let f = d.mapping(n, &p, &["names", "cluster"])?;
            let names = match required(d, &f, "names") {
                Some((n, p)) => {
                    let names = server_names(d, n, &p);
                    if names.is_empty() {
                        d.error(&p, Some(n), "at least one name is required");
                    }
                    for name in &names {
                        if seen.insert(name.to_ascii_lowercase(), ()).is_some() {
                            d.error(
                                &p,
                                Some(n),
                                format!("`{name}` is routed by an earlier entry"),
                            );
                        }
                    }
                    names
                }
                None => Vec::new(),
            };
            let cluster = required(d, &f, "cluster").and_then(|(n, p)| d.string(n, &p))?;
            Some(SniRouteConfig { names, cluster })
        })
        .collect()
}

/// A DNS name (letters, digits, hyphens, dots), or `*.` and one.
fn valid_sni(s: &str) -> bool {
    valid_dns_name(s.strip_prefix("*.").unwrap_or(s))
}

/// A DNS name: dot-separated labels of letters, digits and hyphens, 1 to 63 each, 253 in all.
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `access_log: PATH` (every request), or `{ path: PATH, sample: 10% }`; PATH is `stdout` or a
/// file.
fn decode_access_log(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<AccessLogConfig> {
    if let Some(p) = node.as_str() {
        d.string(node, path);
        return valid_log_path(d, node, path, p).map(|p| AccessLogConfig {
            path: p,
            sample: 1.0,
        });
    }
    let f = d.mapping(node, path, &["path", "sample"])?;
    let target = required(d, &f, "path")
        .and_then(|(n, p)| d.string(n, &p).and_then(|s| valid_log_path(d, n, &p, &s)));
    let sample = match f.get("sample") {
        Some((n, p)) => d.fraction(n, &p),
        None => Some(1.0),
    };
    Some(AccessLogConfig {
        path: target?,
        sample: sample?,
    })
}

fn valid_log_path(d: &mut Decoder, node: Node<'_, '_>, path: &str, p: &str) -> Option<String> {
    if p.is_empty() {
        d.error(path, Some(node), "expected `stdout` or a file path");
        return None;
    }
    Some(p.to_string())
}

/// `{ rps: N, burst: M }`; the burst defaults to one second's worth.
fn decode_rate_limit(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<RateLimitConfig> {
    let f = d.mapping(node, path, &["rps", "burst"])?;
    let rps = required(d, &f, "rps").and_then(|(n, p)| {
        let v = d.integer(n, &p, 100_000_000)?;
        if v == 0 {
            d.error(&p, Some(n), "must be at least 1");
            return None;
        }
        Some(v as f64)
    });
    let burst = match f.get("burst") {
        Some((n, p)) => d.integer(n, &p, 100_000_000).map(|v| Some(v as f64)),
        None => Some(None),
    };
    let rps = rps?;
    Some(RateLimitConfig {
        rps,
        burst: burst?.unwrap_or(rps).max(1.0),
    })
}

fn decode_route(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    index: usize,
) -> Option<RouteConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "name",
            "match",
            "cluster",
            "split",
            "timeout",
            "retry",
            "rate_limit",
        ],
    )?;
    let rate_limit = f
        .get("rate_limit")
        .and_then(|(n, p)| decode_rate_limit(d, n, &p));
    let name = match f.get("name") {
        Some((n, p)) => d.string(n, &p),
        None => Some(index.to_string()),
    };
    let matcher = match f.get("match") {
        Some((n, p)) => decode_match(d, n, &p),
        None => {
            d.error(
                &f.path_of("match"),
                None,
                "required (use `match: { path_prefix: / }` to match everything)",
            );
            None
        }
    };
    let cluster = f.get("cluster").and_then(|(n, p)| d.string(n, &p));
    let split: Vec<SplitTarget> = match f.get("split") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| {
                let t = d.mapping(n, &p, &["cluster", "weight"])?;
                let cluster = required(d, &t, "cluster").and_then(|(n, p)| d.string(n, &p));
                let weight =
                    required(d, &t, "weight").and_then(|(n, p)| d.integer(n, &p, 1_000_000));
                Some(SplitTarget {
                    cluster: cluster?,
                    weight: weight? as u32,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    match (&cluster, f.get("split")) {
        (Some(_), Some((n, p))) => d.error(
            &p,
            Some(n),
            "a route has either `cluster` or `split`, not both",
        ),
        (None, None) => d.error(
            &f.path_of("cluster"),
            None,
            "required: a route needs `cluster` or `split`",
        ),
        (None, Some((n, p))) if split.iter().map(|t| u64::from(t.weight)).sum::<u64>() == 0 => d
            .error(
                &p,
                Some(n),
                "needs at least one target with a positive weight",
            ),
        _ => {}
    }
    let timeout = f
        .get("timeout")
        .and_then(|(n, p)| d.positive_duration(n, &p));
    let retry = f.get("retry").and_then(|(n, p)| decode_retry(d, n, &p));
    Some(RouteConfig {
        rate_limit,
        name: name.unwrap_or_else(|| index.to_string()),
        matcher: matcher.unwrap_or_default(),
        cluster,
        split,
        timeout,
        retry,
    })
}

/// Retry conditions when `on` is not given.
pub const DEFAULT_RETRY_ON: &[&str] = &["connect-failure", "reset", "503"];

fn decode_retry(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<RetryConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "attempts",
            "per_try_timeout",
            "on",
            "budget",
            "min_retries_per_second",
        ],
    )?;
    let attempts = match f.get("attempts") {
        Some((n, p)) => d.integer(n, &p, 10).map(|v| v as u32),
        None => Some(1),
    };
    let per_try_timeout = f
        .get("per_try_timeout")
        .and_then(|(n, p)| d.positive_duration(n, &p));
    let on = match f.get("on") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| {
                let v = d.text(n, &p)?;
                let ok = matches!(
                    v.as_str(),
                    "connect-failure" | "reset" | "5xx" | "unavailable"
                ) || v.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s));
                if !ok {
                    d.error(
                        &p,
                        Some(n),
                        format!(
                            "`{v}` is not connect-failure, reset, 5xx, unavailable or a status code"
                        ),
                    );
                }
                ok.then_some(v)
            })
            .collect(),
        None => DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
    };
    let budget = match f.get("budget") {
        Some((n, p)) => d.percent(n, &p),
        None => Some(20),
    };
    let floor = match f.get("min_retries_per_second") {
        Some((n, p)) => d.integer(n, &p, 1_000_000).map(|v| v as u32),
        None => Some(10),
    };
    Some(RetryConfig {
        attempts: attempts?,
        per_try_timeout,
        on,
        budget_percent: budget?,
        min_retries_per_second: floor?,
    })
}

fn decode_limits(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> LimitsConfig {
    let Some(f) = d.mapping(
        node,
        path,
        &["max_connections", "max_pending", "max_requests"],
    ) else {
        return LimitsConfig::default();
    };
    let mut limit = |name: &str| {
        let (n, p) = f.get(name)?;
        let v = d.integer(n, &p, u64::from(u32::MAX))?;
        if v == 0 {
            d.error(&p, Some(n), "must be at least 1");
            return None;
        }
        Some(v as u32)
    };
    LimitsConfig {
        max_connections: limit("max_connections"),
        max_pending: limit("max_pending"),
        max_requests: limit("max_requests"),
    }
}

fn decode_outlier(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<OutlierSettings> {
    if node.is_off() {
        return None;
    }
    let mut o = OutlierSettings::default();
    let f = d.mapping(
        node,
        path,
        &[
            "consecutive_failures",
            "base_ejection",
            "max_ejection",
            "max_ejected",
        ],
    )?;
    if let Some((n, p)) = f.get("consecutive_failures") {
        match d.integer(n, &p, 1000) {
            Some(0) => d.error(&p, Some(n), "must be at least 1 (use `outlier: off`)"),
            Some(v) => o.consecutive_failures = v as u32,
            None => {}
        }
    }
    if let Some(v) = f
        .get("base_ejection")
        .and_then(|(n, p)| d.positive_duration(n, &p))
    {
        o.base_ejection = v;
    }
    if let Some(v) = f
        .get("max_ejection")
        .and_then(|(n, p)| d.positive_duration(n, &p))
    {
        o.max_ejection = v;
    }
    if let Some(v) = f.get("max_ejected").and_then(|(n, p)| d.percent(n, &p)) {
        o.max_ejected_percent = v;
    }
    if o.max_ejection < o.base_ejection {
        d.error(
            &f.path_of("max_ejection"),
            None,
            "must not be shorter than base_ejection",
        );
    }
    Some(o)
}

fn decode_health_check(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<HealthCheckConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "path",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
        ],
    )?;
    let check_path = required(d, &f, "path").and_then(|(n, p)| {
        let s = d.string(n, &p)?;
        let ok = s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            d.error(&p, Some(n), "must start with / and contain no spaces");
        }
        ok.then_some(s)
    });
    let duration = |d: &mut Decoder, name: &str, default: Duration| match f.get(name) {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(default),
    };
    let interval = duration(d, "interval", Duration::from_secs(5));
    let timeout = duration(d, "timeout", Duration::from_secs(1));
    let threshold = |d: &mut Decoder, name: &str, default: u32| match f.get(name) {
        Some((n, p)) => match d.integer(n, &p, 100) {
            Some(0) => {
                d.error(&p, Some(n), "must be at least 1");
                None
            }
            v => v.map(|v| v as u32),
        },
        None => Some(default),
    };
    let healthy = threshold(d, "healthy_threshold", 2);
    let unhealthy = threshold(d, "unhealthy_threshold", 3);
    Some(HealthCheckConfig {
        path: check_path?,
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: healthy?,
        unhealthy_threshold: unhealthy?,
    })
}

fn decode_match(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<MatchConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "host",
            "path",
            "path_prefix",
            "ignore_case",
            "method",
            "headers",
        ],
    )?;
    Some(decode_match_fields(d, &f))
}

/// The request conditions among `f`'s fields.
fn decode_match_fields(d: &mut Decoder, f: &Fields<'_, '_>) -> MatchConfig {
    let mut m = MatchConfig::default();
    if let Some((n, p)) = f.get("host") {
        m.host = d.string(n, &p);
        if let Some(h) = &m.host {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = !name.is_empty()
                && !name.contains('*')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                d.error(
                    &p,
                    Some(n),
                    format!("`{h}` is not a host name or `*.suffix` (no port)"),
                );
            }
        }
    }
    for (field, slot) in [("path", &mut m.path), ("path_prefix", &mut m.path_prefix)] {
        if let Some((n, p)) = f.get(field) {
            *slot = d.string(n, &p);
            match slot.as_deref() {
                Some(s) if !s.starts_with('/') => d.error(&p, Some(n), "must start with /"),
                Some(s) => {
                    if let Some(normal) = normalized_condition(s).filter(|normal| normal != s) {
                        d.error(
                            &p,
                            Some(n),
                            format!(
                                "requests are matched after their paths are normalized, so `{s}` would never match; write `{normal}`"
                            ),
                        );
                    }
                }
                None => {}
            }
        }
    }
    if let Some((n, p)) = f.get("ignore_case") {
        m.ignore_case = d.boolean(n, &p).unwrap_or(false);
        if m.path.is_none() && m.path_prefix.is_none() {
            d.error(&p, Some(n), "applies to `path` or `path_prefix`");
        }
    }
    if let (Some(_), Some((n, p))) = (&m.path, f.get("path_prefix")) {
        d.error(&p, Some(n), "use either `path` or `path_prefix`, not both");
    }
    if let Some((n, p)) = f.get("method") {
        m.method = d.string(n, &p);
        if m.method
            .as_deref()
            .is_some_and(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()))
        {
            d.error(&p, Some(n), "must be an upper-case method such as GET");
        }
    }
    if let Some((n, p)) = f.get("headers") {
        m.headers = decode_headers(d, n, &p);
    }
    m
}

/// A path condition as a request's path would be after normalization (`;`, `%2F` and `%5C`
/// left as written: a listener may keep them); `None` when no request path could take that
/// form at all.
fn normalized_condition(s: &str) -> Option<String> {
    use ringmesh_core::path::{EscapedSlashes, PathRules, Semicolons, normalize};
    // Slashes are not merged here: a listener may be configured to keep them.
    let rules = PathRules {
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Keep,
        semicolons: Semicolons::Keep,
    };
    let mut b = s.as_bytes().to_vec();
    let n = normalize(&mut b, &rules).ok()?;
    b.truncate(n);
    String::from_utf8(b).ok()
}

fn decode_headers(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value, p) in decode::free_mapping(d, node, path) {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            d.error(&p, None, format!("`{name}` is not a header name"));
            continue;
        }
        if let Some(v) = d.text(value, &p) {
            out.insert(name.to_ascii_lowercase(), v);
        }
    }
    out
}

fn decode_cluster(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<ClusterConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "name",
            "lb",
            "connect_timeout",
            "pool_idle_timeout",
            "tls",
            "protocol",
            "limits",
            "outlier",
            "health_check",
            "endpoints",
        ],
    )?;
    let tls = f.get("tls").and_then(|(n, p)| decode_cluster_tls(d, n, &p));
    let protocol = match f
        .get("protocol")
        .and_then(|(n, p)| d.choice(n, &p, &["http1", "http2", "auto", "mesh"]))
    {
        Some("http2") => UpstreamProtocol::Http2,
        Some("auto") => UpstreamProtocol::Auto,
        Some("mesh") => UpstreamProtocol::Mesh,
        _ => UpstreamProtocol::Http1,
    };
    let name = required(d, &f, "name").and_then(|(n, p)| d.string(n, &p));
    let lb = match f.get("lb") {
        Some((n, p)) => d
            .choice(n, &p, &["p2c-ewma", "round-robin", "random"])
            .map(|v| match v {
                "round-robin" => LbPolicy::RoundRobin,
                "random" => LbPolicy::Random,
                _ => LbPolicy::P2cEwma,
            }),
        None => Some(LbPolicy::P2cEwma),
    };
    let connect_timeout = match f.get("connect_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(ringmesh_core::snapshot::defaults::CONNECT_TIMEOUT),
    };
    let pool_idle_timeout = match f.get("pool_idle_timeout") {
        Some((n, p)) => d.positive_duration(n, &p),
        None => Some(ringmesh_core::snapshot::defaults::POOL_IDLE_TIMEOUT),
    };
    let endpoints = match f.get("endpoints") {
        Some((n, p)) => d
            .list(n, &p)
            .into_iter()
            .filter_map(|(n, p)| decode_endpoint(d, n, &p))
            .collect(),
        None => Vec::new(),
    };
    let limits = f
        .get("limits")
        .map_or_else(LimitsConfig::default, |(n, p)| decode_limits(d, n, &p));
    let outlier = match f.get("outlier") {
        Some((n, p)) => decode_outlier(d, n, &p),
        None => Some(OutlierSettings::default()),
    };
    let health_check = f
        .get("health_check")
        .and_then(|(n, p)| decode_health_check(d, n, &p));
    Some(ClusterConfig {
        name: name.unwrap_or_default(),
        lb: lb.unwrap_or(LbPolicy::P2cEwma),
        connect_timeout: connect_timeout.unwrap_or_default(),
        pool_idle_timeout: pool_idle_timeout.unwrap_or_default(),
        limits,
        outlier,
        health_check,
        endpoints,
        tls,
        protocol,
    })
}

/// `tls: { sni, ca, cert, key }` on a cluster; `cert` and `key` go together.
fn decode_cluster_tls(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<ClusterTlsConfig> {
    let f = d.mapping(node, path, &["sni", "ca", "cert", "key"])?;
    let sni = required(d, &f, "sni").and_then(|(n, p)| d.string(n, &p));
    let ca = required(d, &f, "ca").and_then(|(n, p)| d.string(n, &p));
    let cert = f.get("cert").and_then(|(n, p)| d.string(n, &p));
    let key = f.get("key").and_then(|(n, p)| d.string(n, &p));
    match (&cert, &key, f.get("cert"), f.get("key")) {
        (Some(_), None, _, None) => d.error(&f.path_of("key"), None, "required with `cert`"),
        (None, Some(_), None, _) => d.error(&f.path_of("cert"), None, "required with `key`"),
        _ => {}
    }
    Some(ClusterTlsConfig {
        sni: sni?,
        ca: ca?,
        cert,
        key,
    })
}

fn decode_endpoint(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<EndpointConfig> {
    let f = d.mapping(node, path, &["addr", "zone", "priority", "weight"])?;
    let addr = required(d, &f, "addr").and_then(|(n, p)| {
        let a = d.socket_addr(n, &p)?;
        // 0.0.0.0 and :: reach this host itself; a port 0 reaches nothing.
        let ip = a.ip();
        if a.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
            d.error(
                &p,
                Some(n),
                format!(
                    "`{a}` is no endpoint address (an unspecified or multicast address, or port 0)"
                ),
            );
            return None;
        }
        Some(a)
    });
    let zone = f.get("zone").and_then(|(n, p)| {
        let z = d.string(n, &p)?;
        if z.is_empty() || z.len() > 128 || z.contains(char::is_control) {
            d.error(&p, Some(n), "a zone is 1 to 128 printable characters");
            return None;
        }
        Some(z)
    });
    let priority = match f.get("priority") {
        Some((n, p)) => d.integer(n, &p, 1000).map(|v| v as u32),
        None => Some(0),
    };
    let weight = match f.get("weight") {
        Some((n, p)) => d.integer(n, &p, 10_000).filter(|&w| {
            if w == 0 {
                d.error(&p, Some(n), "must be at least 1");
            }
            w > 0
        }),
        None => Some(1),
    };
    Some(EndpointConfig {
        addr: addr.unwrap_or(PLACEHOLDER_ADDR),
        zone,
        priority: priority.unwrap_or_default(),
        weight: weight.unwrap_or(1) as u32,
    })
}

/// Checks one endpoint (`{ addr, zone, priority, weight }`) exactly as a cluster's endpoints
/// are checked; error paths are relative to the endpoint. The control plane checks
/// registrations with it, so that it takes none a proxy would refuse.
pub fn check_endpoint(v: &serde_json::Value) -> Result<EndpointConfig, Vec<ConfigError>> {
    let probe = serde_json::json!({
        "listeners": [],
        "clusters": [ { "name": "probe", "endpoints": [ v ] } ],
    });
    match Config::parse(&probe.to_string()) {
        Ok(c) => c
            .clusters
            .into_iter()
            .next()
            .and_then(|c| c.endpoints.into_iter().next())
            .ok_or_else(|| {
                vec![decode::ConfigError {
                    path: String::new(),
                    line: None,
                    message: "expected an endpoint".into(),
                }]
            }),
        Err(errs) => Err(errs
            .into_iter()
            .map(|mut e| {
                e.path = e
                    .path
                    .strip_prefix("clusters[0].endpoints[0]")
                    .map(|p| p.trim_start_matches('.').to_string())
                    .unwrap_or(e.path);
                e.line = None;
                e
            })
            .collect()),
    }
}

/// Checks that need the whole config.
fn check(d: &mut Decoder, c: &Config) {
    let mut names = BTreeMap::new();
    for (i, cl) in c.clusters.iter().enumerate() {
        if !cl.name.is_empty() && names.insert(cl.name.as_str(), i).is_some() {
            d.error(
                &format!("clusters[{i}].name"),
                None,
                format!("duplicate cluster name `{}`", cl.name),
            );
        }
        let mut seen = BTreeMap::new();
        for (j, e) in cl.endpoints.iter().enumerate() {
            if seen.insert(e.addr, j).is_some() {
                d.error(
                    &format!("clusters[{i}].endpoints[{j}].addr"),
                    None,
                    format!("duplicate endpoint {}", e.addr),
                );
            }
        }
    }
    let mut listener_names = BTreeMap::new();
    let mut binds = BTreeMap::new();
    for (i, l) in c.listeners.iter().enumerate() {
        if !l.name.is_empty() && listener_names.insert(l.name.as_str(), i).is_some() {
            d.error(
                &format!("listeners[{i}].name"),
                None,
                format!("duplicate listener name `{}`", l.name),
            );
        }
        if l.bind.port() != 0 && binds.insert(l.bind, i).is_some() {
            d.error(
                &format!("listeners[{i}].bind"),
                None,
                format!("{} is used by another listener", l.bind),
            );
        }
        if let Some(cl) = &l.cluster {
            if !names.contains_key(cl.as_str()) {
                d.error(
                    &format!("listeners[{i}].cluster"),
                    None,
                    format!("no cluster named `{cl}`"),
                );
            }
        }
        for (j, r) in l.sni.iter().enumerate() {
            if !names.contains_key(r.cluster.as_str()) {
                d.error(
                    &format!("listeners[{i}].sni[{j}].cluster"),
                    None,
                    format!("no cluster named `{}`", r.cluster),
                );
            }
        }
        let mut route_names = BTreeMap::new();
        for (j, r) in l.routes.iter().enumerate() {
            if route_names.insert(r.name.as_str(), j).is_some() {
                d.error(
                    &format!("listeners[{i}].routes[{j}].name"),
                    None,
                    format!("duplicate route name `{}`", r.name),
                );
            }
            if let Some(cl) = &r.cluster {
                if !names.contains_key(cl.as_str()) {
                    d.error(
                        &format!("listeners[{i}].routes[{j}].cluster"),
                        None,
                        format!("no cluster named `{cl}`"),
                    );
                }
            }
            for (k, t) in r.split.iter().enumerate() {
                if !names.contains_key(t.cluster.as_str()) {
                    d.error(
                        &format!("listeners[{i}].routes[{j}].split[{k}].cluster"),
                        None,
                        format!("no cluster named `{}`", t.cluster),
                    );
                }
            }
        }
    }
    if c.admin.port() != 0 && c.listeners.iter().any(|l| l.bind == c.admin) {
        d.error(
            "admin",
            None,
            format!("{} is also a listener's address", c.admin),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        Config::parse(src)
            .expect_err("must be invalid")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(c.admin.to_string(), "127.0.0.1:9901");
        assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.clusters[0].endpoints[0].addr.to_string(),
            "127.0.0.1:8081"
        );
        assert_eq!(c.listeners[0].routes[0].name, "0");
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
admin: 127.0.0.1:9901
workers: 2
listeners:
  - name: edge
    bind: 127.0.0.1:8080
    protocol: http
    max_request_body_bytes: 10MiB
    routes:
      - match: { host: api.example, path_prefix: /v1/, method: GET, headers: { x-canary: "1" } }
        split:
          - { cluster: api-v2, weight: 10 }
          - { cluster: api-v1, weight: 90 }
        timeout: 5s
      - match: { path_prefix: / }
        cluster: api-v1
  - name: db
    bind: 127.0.0.1:15432
    protocol: tcp
    cluster: api-v1
clusters:
  - name: api-v1
    lb: round-robin
    connect_timeout: 250ms
    endpoints:
      - { addr: 127.0.0.1:8081, zone: dc1 }
      - { addr: 127.0.0.1:9081, zone: dc2, priority: 1, weight: 3 }
  - name: api-v2
    endpoints: []
"#,
        )
        .unwrap();
        assert_eq!(c.workers, Some(2));
        let r = &c.listeners[0].routes[0];
        assert_eq!(r.split.len(), 2);
        assert_eq!(r.timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            r.matcher.headers.get("x-canary").map(String::as_str),
            Some("1")
        );
        assert_eq!(c.listeners[0].max_request_body_bytes, Some(10 << 20));
        assert_eq!(c.listeners[1].protocol, ListenerProtocol::Tcp);
        assert_eq!(c.clusters[0].lb, LbPolicy::RoundRobin);
        let json = c.to_json();
        assert_eq!(json["listeners"][0]["routes"][0]["timeout"], "5s");
        assert_eq!(json["clusters"][0]["connect_timeout"], "250ms");
    }

    #[test]
    fn every_error_names_its_field() {
        let e = errors(
            r#"
admin: nowhere
listners: []
listeners:
  - name: a
    bind: 127.0.0.1:80
    routes:
      - match: { path_prefix: v1, hots: x }
        cluster: missing
        timeout: 5
      - match: { path: /x }
        split: [ { cluster: web, weight: 0 } ]
  - name: a
    bind: 127.0.0.1:80
    routes: []
clusters:
  - name: web
    lb: fastest
    endpoints:
      - { addr: "1.2.3.4" }
      - { addr: 127.0.0.1:1, weight: 0 }
"#,
        );
        let joined = e.join("\n");
        for want in [
            "admin: `nowhere` is not an address",
            "listners: unknown field `listners` (did you mean `listeners`?)",
            "listeners[0].routes[0].match.path_prefix: must start with /",
            "listeners[0].routes[0].match.hots: unknown field",
            "listeners[0].routes[0].timeout: expected a string, got an integer",
            "listeners[0].routes[1].split: needs at least one target with a positive weight",
            "clusters[0].lb: `fastest` is not one of",
            "clusters[0].endpoints[0].addr: `1.2.3.4` is not an address",
            "clusters[0].endpoints[1].weight: must be at least 1",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        assert!(e.iter().all(|l| l.contains("(line ")), "{joined}");
    }

    #[test]
    fn cross_field_errors() {
        let e = errors(
            r#"
listeners:
  - { name: a, bind: 127.0.0.1:80, routes: [ { match: { path: /x }, cluster: missing } ] }
  - { name: a, bind: 127.0.0.1:80, protocol: tcp, cluster: nope }
clusters:
  - { name: web }
  - { name: web }
"#,
        )
        .join("\n");
        for want in [
            "listeners[0].routes[0].cluster: no cluster named `missing`",
            "listeners[1].name: duplicate listener name `a`",
            "listeners[1].bind: 127.0.0.1:80 is used by another listener",
            "listeners[1].cluster: no cluster named `nope`",
            "clusters[1].name: duplicate cluster name `web`",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn sni_routes_are_checked() {
        let e = errors(
            r#"
listeners:
  - name: t
    bind: 127.0.0.1:1
    protocol: tcp
    sni:
      - { names: [a.example, "*.b.example"], cluster: c }
      - { names: [A.example, "x..y"], cluster: missing }
      - { names: [], cluster: c }
  - { name: h, bind: 127.0.0.1:2, sni: [ { names: [a], cluster: c } ], routes: [ { match: { path: / }, cluster: c } ] }
  - { name: n, bind: 127.0.0.1:3, protocol: tcp }
clusters: [ { name: c } ]
"#,
        )
        .join("
");
        for want in [
            "listeners[0].sni[1].names: `A.example` is routed by an earlier entry",
            "listeners[0].sni[1].names[1]: expected a DNS name",
            "listeners[0].sni[1].cluster: no cluster named `missing`",
            "listeners[0].sni[2].names: at least one name is required",
            "listeners[1].sni: only tcp listeners route by server name",
            "listeners[2].cluster: required for a tcp listener (or `sni`)",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn tls_settings_are_checked() {
        let e = errors(
            "listeners:\n  - { name: a, bind: 127.0.0.1:1, tls: { certs: [] }, routes: [ { match: { path: / }, cluster: c } ] }\nclusters: [ { name: c, tls: { cert: c.pem } } ]\n",
        )
        .join("\n");
        for want in [
            "listeners[0].tls.certs: at least one certificate",
            "clusters[0].tls.sni: required",
            "clusters[0].tls.ca: required",
            "clusters[0].tls.key: required with `cert`",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
    }

    #[test]
    fn resilience_settings_parse_with_defaults() {
        let c = Config::parse(
            r#"
listeners:
  - name: a
    bind: 127.0.0.1:1
    routes:
      - match: { path_prefix: / }
        cluster: web
        retry: { attempts: 2, per_try_timeout: 1s, on: [connect-failure, reset, 503], budget: 20% }
      - match: { path_prefix: /b }
        cluster: web
        retry: {}
clusters:
  - name: web
    limits: { max_connections: 1024, max_pending: 10, max_requests: 4096 }
    outlier: { consecutive_failures: 3, base_ejection: 5s, max_ejected: 30% }
    health_check: { path: /healthz, interval: 2s, timeout: 1s }
  - name: plain
    outlier: off
"#,
        )
        .unwrap();
        let r = c.listeners[0].routes[0].retry.as_ref().unwrap();
        assert_eq!(r.attempts, 2);
        assert_eq!(r.per_try_timeout, Some(Duration::from_secs(1)));
        assert_eq!(r.on, ["connect-failure", "reset", "503"]);
        assert_eq!((r.budget_percent, r.min_retries_per_second), (20, 10));
        let d = c.listeners[0].routes[1].retry.as_ref().unwrap();
        assert_eq!((d.attempts, d.on.len()), (1, DEFAULT_RETRY_ON.len()));
        let web = &c.clusters[0];
        assert_eq!(web.limits.max_pending, Some(10));
        let o = web.outlier.as_ref().unwrap();
        assert_eq!((o.consecutive_failures, o.max_ejected_percent), (3, 30));
        assert_eq!(o.max_ejection, Duration::from_secs(300));
        let h = web.health_check.as_ref().unwrap();
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
        assert_eq!(c.clusters[1].outlier, None);
        assert_eq!(c.clusters[1].limits, LimitsConfig::default());
        // Outlier ejection is on unless switched off.
        let json = c.to_json();
        assert_eq!(json["clusters"][0]["outlier"]["base_ejection"], "5s");
    }

    #[test]
    fn resilience_errors_name_their_field() {
        let e = errors(
            r#"
listeners:
  - name: a
    bind: 127.0.0.1:1
    routes:
      - match: { path_prefix: / }
        cluster: web
        retry: { attempts: 20, on: [sometimes, 5xx, 700], budget: 120%, per_try_timeout: 0s }
clusters:
  - name: web
    limits: { max_connections: 0, max_inflight: 3 }
    outlier: { consecutive_failures: 0, base_ejection: 10s, max_ejection: 1s }
    health_check: { interval: 1s, healthy_threshold: 0 }
"#,
        )
        .join("\n");
        for want in [
            "listeners[0].routes[0].retry.attempts: 20 is out of range",
            "listeners[0].routes[0].retry.on[0]: `sometimes` is not connect-failure",
            "listeners[0].routes[0].retry.on[2]: `700` is not",
            "listeners[0].routes[0].retry.budget: expected a percentage",
            "listeners[0].routes[0].retry.per_try_timeout: must be greater than zero",
            "clusters[0].limits.max_connections: must be at least 1",
            "clusters[0].limits.max_inflight: unknown field",
            "clusters[0].outlier.consecutive_failures: must be at least 1",
            "clusters[0].outlier.max_ejection: must not be shorter than base_ejection",
            "clusters[0].health_check.path: required",
            "clusters[0].health_check.healthy_threshold: must be at least 1",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = errors("listeners:\n  - name: [\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("invalid YAML"), "{e:?}");
        assert!(e[0].contains("line"), "{e:?}");
        assert!(errors("").iter().any(|l| l.contains("empty")));
        let dup = errors("admin: 127.0.0.1:1\nadmin: 127.0.0.1:2\nlisteners: []\n");
        assert!(dup[0].contains("invalid YAML"), "{dup:?}");
    }
}
