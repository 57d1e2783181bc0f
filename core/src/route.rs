//! Routing: from a request's host, path, method and headers to a route, then (for a weighted
//! split) to one of its clusters.
//!
//! A [`RouteTable`] is compiled once per config. Routes are indexed by host (exact names in a
//! hash map, `*.suffix` names in another, host-less routes in a list); resolving looks only at
//! the candidates for the request's host and keeps the first match in configuration order. It
//! allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::retry::RetryPolicy;

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this name (lowercase, no port).
    Exact(Box<[u8]>),
    /// Any name ending in this suffix, which starts with a dot (`*.example.com` is stored as
    /// `.example.com`).
    Suffix(Box<[u8]>),
}

/// How a route matches the path (the query is not part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(Box<[u8]>),
    /// Any path starting with these bytes.
    Prefix(Box<[u8]>),
}

/// A header that must be present with exactly this value: (lowercase name, value).
pub type HeaderMatch = (Box<[u8]>, Box<[u8]>);

/// The conditions of a route; all present ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path condition.
    pub path: Option<PathMatch>,
    /// The path condition compares without regard to ASCII case.
    pub path_ignore_case: bool,
    /// Method, exactly (methods are case-sensitive).
    pub method: Option<Box<[u8]>>,
    /// Headers that must be present with exactly these values (names lowercase).
    pub headers: Vec<HeaderMatch>,
    /// On an outbound listener: the mesh service (cluster index) the application's connection
    /// was going to ([`crate::snapshot::Outbound`]).
    pub service: Option<usize>,
    /// The rarer conditions (path regex, header regex or absence, query): apart, so that a
    /// route without them pays one branch.
    pub more: Option<Arc<MoreMatch>>,
}

/// A condition on a field's or query parameter's values.
#[derive(Debug, Clone)]
pub enum Cond {
    /// Some value is exactly this.
    Exact(Box<[u8]>),
    /// Some value matches the whole expression.
    Regex(regex::bytes::Regex),
    /// Present, with any value.
    Present,
    /// Not present.
    Absent,
}

impl PartialEq for Cond {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cond::Exact(a), Cond::Exact(b)) => a == b,
            (Cond::Regex(a), Cond::Regex(b)) => a.as_str() == b.as_str(),
            (Cond::Present, Cond::Present) | (Cond::Absent, Cond::Absent) => true,
            _ => false,
        }
    }
}

impl Eq for Cond {}

impl Cond {
    /// Whether values that `any` walks (it says whether its predicate held for one) fit.
    fn holds(&self, any: impl Fn(&mut dyn FnMut(&[u8]) -> bool) -> bool) -> bool {
        match self {
            Cond::Exact(v) => any(&mut |x| x == &**v),
            Cond::Regex(re) => any(&mut |x| re.is_match(x)),
            Cond::Present => any(&mut |_| true),
            Cond::Absent => !any(&mut |_| true),
        }
    }
}

/// Conditions beyond host, path, method and exact headers; all must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MoreMatch {
    /// The (normalized) path, without the query, matches the whole expression.
    pub path_regex: Option<PathRegex>,
    /// Fields (names lowercase).
    pub headers: Vec<(Box<[u8]>, Cond)>,
    /// Query parameters, by name as sent; values compared as sent (not percent-decoded).
    pub query: Vec<(Box<[u8]>, Cond)>,
}

/// A compiled path expression, compared by its text.
#[derive(Debug, Clone)]
pub struct PathRegex(pub regex::bytes::Regex);

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for PathRegex {}

impl MoreMatch {
    fn matches(&self, req: &impl RequestView) -> bool {
        if let Some(re) = &self.path_regex {
            if !re.0.is_match(req.path()) {
                return false;
            }
        }
        let headers = self
            .headers
            .iter()
            .all(|(name, c)| c.holds(|f| req.any_header(name, f)));
        headers
            && self.query.iter().all(|(name, c)| {
                c.holds(|f| {
                    query_pairs(req.query())
                        .filter(|(n, _)| n == &&**name)
                        .any(|(_, v)| f(v))
                })
            })
    }
}

/// `name=value` pairs of a raw query (without its `?`); a pair without `=` has an empty value.
pub fn query_pairs(q: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    q.split(|&b| b == b'&').filter(|p| !p.is_empty()).map(|p| {
        match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &b""[..]),
        }
    })
}

/// Where a route sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// One cluster, by index into the snapshot's clusters.
    Cluster(usize),
    /// A weighted split over clusters.
    Split(Split),
    /// The route answers itself (`direct_response`).
    Direct(Arc<DirectResponse>),
    /// The route answers with a redirect (`redirect`).
    Redirect(Arc<Redirect>),
}

/// A fixed answer: a health endpoint, a maintenance page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Box<[u8]>,
}

/// A redirect: the request's URL with the parts given replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; else the request's.
    pub scheme: Option<Box<str>>,
    /// The host (and port); else the request's authority.
    pub host: Option<Box<[u8]>>,
    /// The whole path; else the request's, with `prefix` in place of the route's prefix.
    pub path: Option<Box<[u8]>>,
    /// Replaces the part of the path the route's `path_prefix` matched.
    pub prefix: Option<Box<[u8]>>,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
    /// Leave the query out.
    pub strip_query: bool,
}

impl Redirect {
    /// Writes the `Location`: scheme, authority, path and query. `matched`: the length of the
    /// path prefix the route matched (for `prefix`).
    pub fn location(
        &self,
        out: &mut Vec<u8>,
        (scheme, authority, target): (&str, &[u8], &[u8]),
        matched: usize,
    ) {
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(i) => (&target[..i], &target[i..]),
            None => (target, &b""[..]),
        };
        out.extend_from_slice(self.scheme.as_deref().unwrap_or(scheme).as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(self.host.as_deref().unwrap_or(authority));
        match (&self.path, &self.prefix) {
            (Some(p), _) => out.extend_from_slice(p),
            (None, Some(p)) => crate::rewrite::replace_prefix(out, p, path, matched),
            (None, None) => out.extend_from_slice(if path.is_empty() { b"/" } else { path }),
        }
        if !self.strip_query {
            out.extend_from_slice(query);
        }
    }
}

/// A weighted split over clusters, picked by smooth weighted round robin (as nginx balances
/// weighted upstreams): each worker's sequence interleaves the targets evenly and, over any
/// run of `total` requests, sends each target exactly its weight. A split therefore holds its
/// weights to within one request per worker, where a random pick would drift by a few percent
/// over a thousand requests. The running state lives in the worker ([`SplitState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// (cluster, weight).
    targets: Vec<(usize, u32)>,
    total: u32,
}

/// One worker's running state of a [`Split`].
#[derive(Debug, Clone, Default)]
pub struct SplitState(Box<[i64]>);

impl Split {
    /// A split from `(cluster, weight)` pairs; zero weights take no traffic. `None` when no
    /// weight is positive.
    pub fn new(weights: &[(usize, u32)]) -> Option<Split> {
        let mut total = 0u32;
        for &(_, w) in weights {
            total = total.checked_add(w)?;
        }
        (total > 0).then(|| Split {
            targets: weights.to_vec(),
            total,
        })
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Fresh running state.
    pub fn state(&self) -> SplitState {
        SplitState(vec![0; self.targets.len()].into())
    }

    /// The position of the next target: every target gains its weight, the one furthest ahead
    /// is picked and falls back by the total.
    #[inline]
    pub fn pick(&self, state: &mut SplitState) -> usize {
        if state.0.len() != self.targets.len() {
            *state = self.state();
        }
        let current = &mut state.0;
        let mut best = 0;
        for (i, &(_, w)) in self.targets.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= i64::from(self.total);
        best
    }

    /// The cluster of the target at `position`.
    #[inline]
    pub fn cluster(&self, position: usize) -> usize {
        self.targets[position].0
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the split has no target.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name, for metrics and logs.
    pub name: Arc<str>,
    /// Conditions.
    pub matcher: Match,
    /// Destination.
    pub action: Action,
    /// Time allowed from the start of the request to the upstream's response head, all tries.
    pub timeout: Option<Duration>,
    /// Retries, if any.
    pub retry: Option<RetryPolicy>,
    /// Each worker's share of the route's rate limit, if any.
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// Edits of the request's fields, and of the answer's.
    pub request_headers: Option<Arc<crate::head::edit::HeaderEdits>>,
    pub response_headers: Option<Arc<crate::head::edit::HeaderEdits>>,
    /// The route's request id setting, in place of the listener's.
    pub request_id: Option<crate::head::edit::RequestIdSpec>,
    /// What it rewrites in the request it sends upstream.
    pub rewrite: Option<Arc<crate::rewrite::Rewrite>>,
    /// Faults it injects, for chaos testing.
    pub fault: Option<Arc<Fault>>,
    /// Its CORS policy.
    pub cors: Option<Arc<crate::cors::Cors>>,
    /// How it compresses answers.
    pub compression: Option<Arc<crate::compress::Compression>>,
    /// Where it copies a share of its requests.
    pub mirror: Option<Arc<Mirror>>,
}

/// `mirror`: a share of a route's requests copied to a shadow cluster, whose answers are
/// discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The shadow cluster's index in the snapshot.
    pub cluster: usize,
    /// The share copied (a threshold on 32 random bits).
    pub share: u32,
    /// Requests with a larger body, or a body of unknown length, are not copied.
    pub max_body: u64,
}

/// `fault`: a delay and/or an abort for a share of a route's requests (or only of those that
/// carry `header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The delay, and the share of requests delayed (a threshold on 32 random bits).
    pub delay: Option<(Duration, u32)>,
    /// The abort's HTTP status, the gRPC status a gRPC call gets instead, and the share.
    pub abort: Option<(u16, Option<u8>, u32)>,
    /// Only requests with this field (lowercase) are eligible.
    pub header: Option<Box<[u8]>>,
}

/// A share from 0 to 1 as a threshold on 32 random bits (`u32::MAX`: every request).
pub fn share_threshold(share: f64) -> u32 {
    if share >= 1.0 {
        u32::MAX
    } else {
        (share.max(0.0) * f64::from(u32::MAX)) as u32
    }
}

impl Route {
    /// The clusters this route may send to, in target order.
    pub fn clusters(&self) -> impl Iterator<Item = usize> + '_ {
        let (single, split) = match &self.action {
            Action::Cluster(c) => (Some(*c), None),
            Action::Split(s) => (None, Some(s)),
            Action::Direct(_) | Action::Redirect(_) => (None, None),
        };
        single.into_iter().chain(
            split
                .into_iter()
                .flat_map(|s| s.targets.iter().map(|t| t.0)),
        )
    }
}

/// What routing looks at in a request.
pub trait RequestView {
    /// The host, without port (any case).
    fn host(&self) -> &[u8];
    /// The path, without query.
    fn path(&self) -> &[u8];
    /// The method token.
    fn method(&self) -> &[u8];
    /// Whether a header `name` (lowercase) has exactly `value`.
    fn has_header(&self, name: &[u8], value: &[u8]) -> bool;
    /// Whether `f` holds for some value of the field `name` (lowercase); none: false.
    fn any_header(&self, name: &[u8], f: &mut dyn FnMut(&[u8]) -> bool) -> bool;
    /// The raw query, without its `?` (empty when none).
    fn query(&self) -> &[u8] {
        b""
    }
    /// A CONNECT request: only a route that names the method takes it, so that no catch-all
    /// route opens tunnels by accident.
    fn is_connect(&self) -> bool {
        false
    }
    /// The mesh service the connection was redirected from, on an outbound listener.
    fn service(&self) -> Option<usize> {
        None
    }
}

/// Longest host name looked up in the indexes (DNS names are at most 253 bytes).
const MAX_HOST: usize = 256;

/// Buckets of more routes than this get a path index; smaller ones are scanned.
const INDEX_FROM: usize = 16;

/// The routes that share a host condition, in order, with an index by path when there are
/// many of them.
#[derive(Debug, Clone, Default)]
struct Bucket {
    all: Vec<u32>,
    index: Option<PathIndex>,
}

/// Route positions by path bytes.
type PathMap = FxHashMap<Box<[u8]>, Vec<u32>>;

/// Routes of one bucket by path: exact paths and prefixes (one map per prefix length) lead
/// straight to their routes; routes without a path condition are always candidates.
#[derive(Debug, Clone, Default)]
struct PathIndex {
    exact: PathMap,
    prefixes: Vec<(usize, PathMap)>,
    any_path: Vec<u32>,
}

impl Bucket {
    fn push(&mut self, i: u32) {
        self.all.push(i);
    }

    fn build_index(&mut self, routes: &[Route]) {
        if self.all.len() < INDEX_FROM {
            return;
        }
        let mut idx = PathIndex::default();
        for &i in &self.all {
            let m = &routes[i as usize].matcher;
            match &m.path {
                // Rare: scanned, not indexed by exact bytes.
                Some(_) if m.path_ignore_case => idx.any_path.push(i),
                Some(PathMatch::Exact(p)) => idx.exact.entry(p.clone()).or_default().push(i),
                Some(PathMatch::Prefix(p)) => {
                    let slot = match idx.prefixes.iter().position(|(len, _)| *len == p.len()) {
                        Some(s) => s,
                        None => {
                            idx.prefixes.push((p.len(), FxHashMap::default()));
                            idx.prefixes.len() - 1
                        }
                    };
                    idx.prefixes[slot].1.entry(p.clone()).or_default().push(i);
                }
                None => idx.any_path.push(i),
            }
        }
        self.index = Some(idx);
    }
}

/// The compiled routes of one listener.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: FxHashMap<Box<[u8]>, Bucket>,
    suffix: FxHashMap<Box<[u8]>, Bucket>,
    any_host: Bucket,
    longest_suffix: usize,
}

impl RouteTable {
    /// Compiles routes; their order is their priority.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut table = RouteTable {
            routes,
            ..RouteTable::default()
        };
        for (i, r) in table.routes.iter().enumerate() {
            let i = i as u32;
            match &r.matcher.host {
                Some(HostMatch::Exact(h)) => table.exact.entry(h.clone()).or_default().push(i),
                Some(HostMatch::Suffix(s)) => {
                    table.longest_suffix = table.longest_suffix.max(s.len());
                    table.suffix.entry(s.clone()).or_default().push(i)
                }
                None => table.any_host.push(i),
            }
        }
        let routes = &table.routes;
        for b in table.exact.values_mut().chain(table.suffix.values_mut()) {
            b.build_index(routes);
        }
        table.any_host.build_index(routes);
        table
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The index of the first route that matches, if any.
    pub fn resolve(&self, req: &impl RequestView) -> Option<usize> {
        let mut lower = [0u8; MAX_HOST];
        let host = req.host();
        let host = if host.len() <= MAX_HOST {
            let l = &mut lower[..host.len()];
            l.copy_from_slice(host);
            l.make_ascii_lowercase();
            Some(&*l)
        } else {
            None
        };
        let mut best = u32::MAX;
        if let Some(host) = host {
            if !self.exact.is_empty() {
                if let Some(b) = self.exact.get(host) {
                    self.search(b, req, &mut best);
                }
            }
            if !self.suffix.is_empty() {
                // Every suffix of the host that starts at a dot.
                for (i, _) in host.iter().enumerate().filter(|(_, b)| **b == b'.') {
                    let tail = &host[i..];
                    if tail.len() > self.longest_suffix || i == 0 {
                        continue;
                    }
                    if let Some(b) = self.suffix.get(tail) {
                        self.search(b, req, &mut best);
                    }
                }
            }
        }
        self.search(&self.any_host, req, &mut best);
        (best != u32::MAX).then_some(best as usize)
    }

    /// Lowers `best` to the first route of the bucket that matches.
    #[inline]
    fn search(&self, b: &Bucket, req: &impl RequestView, best: &mut u32) {
        let Some(idx) = &b.index else {
            self.scan(&b.all, req, best);
            return;
        };
        let path = req.path();
        if let Some(list) = idx.exact.get(path) {
            self.scan(list, req, best);
        }
        for (len, map) in &idx.prefixes {
            if path.len() >= *len {
                if let Some(list) = map.get(&path[..*len]) {
                    self.scan(list, req, best);
                }
            }
        }
        self.scan(&idx.any_path, req, best);
    }

    /// Lowers `best` to the first route in `list` (ascending) that matches the rest.
    #[inline]
    fn scan(&self, list: &[u32], req: &impl RequestView, best: &mut u32) {
        for &i in list {
            if i >= *best {
                return;
            }
            let m = &self.routes[i as usize].matcher;
            if matches_rest(m, req) && (m.method.is_some() || !req.is_connect()) {
                *best = i;
                return;
            }
        }
    }
}

/// Whether `req` meets every condition of `m` but the host (which a route table's index
/// checks, and a policy checks on its own).
#[inline]
pub fn matches_rest(m: &Match, req: &impl RequestView) -> bool {
    let path = req.path();
    let fits = match &m.path {
        Some(PathMatch::Prefix(p)) if m.path_ignore_case => {
            path.len() >= p.len() && path[..p.len()].eq_ignore_ascii_case(p)
        }
        Some(PathMatch::Exact(p)) if m.path_ignore_case => path.eq_ignore_ascii_case(p),
        Some(PathMatch::Prefix(p)) => path.starts_with(p),
        Some(PathMatch::Exact(p)) => path == &**p,
        None => true,
    };
    if !fits {
        return false;
    }
    if let Some(method) = &m.method {
        if req.method() != &**method {
            return false;
        }
    }
    if m.service.is_some() && req.service() != m.service {
        return false;
    }
    if !m.headers.iter().all(|(n, v)| req.has_header(n, v)) {
        return false;
    }
    m.more.as_ref().is_none_or(|more| more.matches(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req<'a> {
        host: &'a str,
        path: &'a str,
        method: &'a str,
        headers: &'a [(&'a str, &'a str)],
    }

    impl RequestView for Req<'_> {
        fn host(&self) -> &[u8] {
            self.host.as_bytes()
        }
        fn path(&self) -> &[u8] {
            self.path.as_bytes()
        }
        fn method(&self) -> &[u8] {
            self.method.as_bytes()
        }
        fn has_header(&self, name: &[u8], value: &[u8]) -> bool {
            self.headers
                .iter()
                .any(|(n, v)| n.as_bytes().eq_ignore_ascii_case(name) && v.as_bytes() == value)
        }
        fn any_header(&self, name: &[u8], f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.headers
                .iter()
                .any(|(n, v)| n.as_bytes().eq_ignore_ascii_case(name) && f(v.as_bytes()))
        }
    }

    fn route(name: &str, host: Option<&str>, path: Option<PathMatch>) -> Route {
        Route {
            name: name.into(),
            matcher: Match {
                host: host.map(|h| match h.strip_prefix('*') {
                    Some(s) => HostMatch::Suffix(s.as_bytes().into()),
                    None => HostMatch::Exact(h.as_bytes().into()),
                }),
                path,
                ..Match::default()
            },
            action: Action::Cluster(0),
            timeout: None,
            retry: None,
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

    fn prefix(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Prefix(p.as_bytes().into()))
    }

    fn get<'a>(host: &'a str, path: &'a str) -> Req<'a> {
        Req {
            host,
            path,
            method: "GET",
            headers: &[],
        }
    }

    #[test]
    fn first_match_wins_across_indexes() {
        let t = RouteTable::new(vec![
            route("api-exact", Some("api.example.com"), prefix("/v1/")),
            route("any-admin", None, prefix("/admin")),
            route("wild", Some("*.example.com"), prefix("/")),
            route("api-all", Some("api.example.com"), prefix("/")),
            route("fallback", None, prefix("/")),
        ]);
        let name = |r: Req<'_>| t.resolve(&r).map(|i| &*t.routes()[i].name);
        assert_eq!(name(get("api.example.com", "/v1/x")), Some("api-exact"));
        assert_eq!(name(get("API.Example.COM", "/v1/x")), Some("api-exact"));
        assert_eq!(name(get("api.example.com", "/admin")), Some("any-admin"));
        assert_eq!(name(get("api.example.com", "/v2")), Some("wild"));
        assert_eq!(name(get("x.y.example.com", "/")), Some("wild"));
        assert_eq!(name(get("example.com", "/")), Some("fallback"));
        assert_eq!(name(get("other", "/v1/")), Some("fallback"));
    }

    #[test]
    fn method_header_and_exact_path() {
        let mut r = route("m", None, Some(PathMatch::Exact(b"/x".as_slice().into())));
        r.matcher.method = Some(b"POST".as_slice().into());
        r.matcher.headers = vec![(b"x-canary".as_slice().into(), b"1".as_slice().into())];
        let t = RouteTable::new(vec![r]);
        let mut req = Req {
            host: "a",
            path: "/x",
            method: "POST",
            headers: &[("X-Canary", "1")],
        };
        assert_eq!(t.resolve(&req), Some(0));
        req.path = "/x/";
        assert_eq!(t.resolve(&req), None);
        req.path = "/x";
        req.method = "GET";
        assert_eq!(t.resolve(&req), None);
        req.method = "POST";
        req.headers = &[("x-canary", "2")];
        assert_eq!(t.resolve(&req), None);
    }

    #[test]
    fn indexed_buckets_keep_first_match_order() {
        // Many routes on one host: the path index must agree with a scan in config order.
        let mut routes = Vec::new();
        for i in 0..40 {
            routes.push(route(
                &format!("p{i}"),
                Some("h"),
                prefix(&format!("/v{i}/")),
            ));
        }
        routes.insert(5, route("broad", Some("h"), prefix("/v3")));
        routes.insert(
            0,
            route(
                "exact",
                Some("h"),
                Some(PathMatch::Exact(b"/v7/x".as_slice().into())),
            ),
        );
        let mut m = route("post-only", Some("h"), prefix("/v9/"));
        m.matcher.method = Some(b"POST".as_slice().into());
        routes.insert(1, m);
        routes.push(route("rest", Some("h"), None));
        let t = RouteTable::new(routes.clone());
        assert!(t.exact.get(b"h".as_slice()).unwrap().index.is_some());
        let linear = |r: &Req<'_>| {
            routes.iter().position(|rt| {
                let single = RouteTable::new(vec![rt.clone()]);
                single.resolve(r).is_some()
            })
        };
        for path in [
            "/v7/x", "/v7/y", "/v30/a", "/v3", "/v33/", "/v3/", "/v9/z", "/zzz", "/v39/", "/v",
        ] {
            for method in ["GET", "POST"] {
                let r = Req {
                    host: "h",
                    path,
                    method,
                    headers: &[],
                };
                assert_eq!(t.resolve(&r), linear(&r), "{method} {path}");
            }
        }
        let name = |path| t.resolve(&get("h", path)).map(|i| &*t.routes()[i].name);
        assert_eq!(
            name("/v33/"),
            Some("broad"),
            "an earlier shorter prefix wins"
        );
        assert_eq!(name("/v7/x"), Some("exact"));
        assert_eq!(name("/nothing"), Some("rest"));
    }

    #[test]
    fn no_match_is_none() {
        let t = RouteTable::new(vec![route("a", Some("a"), prefix("/"))]);
        assert_eq!(t.resolve(&get("b", "/")), None);
        let long = "a".repeat(300);
        assert_eq!(t.resolve(&get(&long, "/")), None);
    }

    #[test]
    fn split_follows_weights_exactly_and_interleaves() {
        let s = Split::new(&[(7, 10), (8, 0), (9, 90)]).unwrap();
        assert_eq!(s.total(), 100);
        let mut st = s.state();
        let mut hits = [0u32; 3];
        let mut run = 0;
        let mut longest = 0;
        for _ in 0..10_000 {
            let t = s.pick(&mut st);
            hits[t] += 1;
            run = if t == 2 { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        assert_eq!(hits, [1_000, 0, 9_000]);
        assert!(
            longest <= 10,
            "the small target is spread out: run of {longest}"
        );
        assert_eq!(s.cluster(2), 9);
        assert!(Split::new(&[(1, 0)]).is_none());
        // Any prefix stays within one request of its share per target.
        let s = Split::new(&[(0, 1), (1, 2), (2, 7)]).unwrap();
        let mut st = SplitState::default();
        let mut hits = [0i64; 3];
        for n in 1..=1_000i64 {
            hits[s.pick(&mut st)] += 1;
            for (t, w) in [(0, 1), (1, 2), (2, 7)] {
                assert!((hits[t] * 10 - n * w).abs() <= 10, "{n}: {hits:?}");
            }
        }
    }
}
