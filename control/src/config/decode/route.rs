//! Decoding a route: its match, its destination (a cluster or a split), its timeout and
//! retries.

use std::collections::BTreeMap;

use super::{Decoder, Fields, Node, required};

use crate::config::model::*;

pub(super) fn decode_route(
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
            "request_headers",
            "response_headers",
            "request_id",
            "redirect",
            "direct_response",
            "rewrite",
            "fault",
            "cors",
            "compression",
            "mirror",
        ],
    )?;
    use super::edits::*;
    let request_headers = f
        .get("request_headers")
        .and_then(|(n, p)| decode_header_edits(d, n, &p, true));
    let response_headers = f
        .get("response_headers")
        .and_then(|(n, p)| decode_header_edits(d, n, &p, false));
    let request_id = f
        .get("request_id")
        .and_then(|(n, p)| decode_request_id(d, n, &p));
    let prefix_of = |m: &Option<MatchConfig>| m.as_ref().and_then(|m| m.path_prefix.clone());
    let redirect = match f.get("redirect") {
        Some((n, p)) => {
            // Decoded after the match (its prefix is what a prefix redirect replaces).
            let m = f.get("match").and_then(|(mn, mp)| {
                let mut quiet = Decoder::default();
                decode_match(&mut quiet, mn, &mp)
            });
            decode_redirect(d, n, &p, prefix_of(&m).as_deref())
        }
        None => None,
    };
    let direct_response = f
        .get("direct_response")
        .and_then(|(n, p)| decode_direct_response(d, n, &p));
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
    let answers: Vec<String> = ["redirect", "direct_response"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .map(|k| f.path_of(k))
        .collect();
    match (&cluster, f.get("split"), &answers[..]) {
        (_, _, [first, second, ..]) => d.error(
            second,
            None,
            format!("a route has one of `cluster`, `split`, `redirect`, `direct_response` (`{first}` is set)"),
        ),
        (Some(_), _, [answer]) | (None, Some(_), [answer]) => d.error(
            answer,
            None,
            "a route that answers itself has no `cluster` or `split`",
        ),
        (None, None, [_]) => {}
        (Some(_), Some((n, p)), []) => d.error(
            &p,
            Some(n),
            "a route has either `cluster` or `split`, not both",
        ),
        (None, None, []) => d.error(
            &f.path_of("cluster"),
            None,
            "required: a route needs `cluster` or `split` (or answers itself: `redirect`, `direct_response`)",
        ),
        (None, Some((n, p)), []) if split.iter().map(|t| u64::from(t.weight)).sum::<u64>() == 0 => d
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
    let rewrite = f.get("rewrite").and_then(|(n, p)| {
        if !answers.is_empty() {
            d.error(
                &p,
                Some(n),
                "a route that answers itself sends nothing to rewrite",
            );
            return None;
        }
        let prefix = matcher.as_ref().and_then(|m| m.path_prefix.as_deref());
        decode_rewrite(d, n, &p, prefix)
    });
    let fault = f.get("fault").and_then(|(n, p)| {
        if !answers.is_empty() {
            d.error(
                &p,
                Some(n),
                "a route that answers itself has no upstream to fault",
            );
            return None;
        }
        decode_fault(d, n, &p)
    });
    let cors = f.get("cors").and_then(|(n, p)| decode_cors(d, n, &p));
    // Answers the route makes itself are neither compressed nor mirrored.
    let forwarded = |d: &mut Decoder, key: &str, why: &str| {
        let (n, p) = f.get(key)?;
        if !answers.is_empty() {
            d.error(&p, Some(n), why);
            return None;
        }
        Some((n, p))
    };
    let compression = forwarded(
        d,
        "compression",
        "a route that answers itself compresses nothing",
    )
    .and_then(|(n, p)| super::answers::decode_compression(d, n, &p));
    let mirror = forwarded(
        d,
        "mirror",
        "a route that answers itself has no request to copy",
    )
    .and_then(|(n, p)| super::answers::decode_mirror(d, n, &p));
    Some(RouteConfig {
        cors,
        compression,
        mirror,
        fault,
        rewrite,
        rate_limit,
        name: name.unwrap_or_else(|| index.to_string()),
        matcher: matcher.unwrap_or_default(),
        cluster,
        split,
        timeout,
        retry,
        request_headers,
        response_headers,
        request_id,
        redirect,
        direct_response,
    })
}

/// Retry conditions when `on` is not given.
pub const DEFAULT_RETRY_ON: &[&str] = &["connect-failure", "reset", "503"];

pub(super) fn decode_retry(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<RetryConfig> {
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

pub(super) fn decode_match(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<MatchConfig> {
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
            "query",
            "path_regex",
            "service",
        ],
    )?;
    Some(decode_match_fields(d, &f))
}

/// The request conditions among `f`'s fields.
pub(super) fn decode_match_fields(d: &mut Decoder, f: &Fields<'_, '_>) -> MatchConfig {
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
        (m.headers, m.header_rules) = decode_header_conditions(d, n, &p);
    }
    if let Some((n, p)) = f.get("query") {
        for (name, value, p) in super::free_mapping(d, n, &p) {
            if name.is_empty()
                || name.len() > 256
                || !name
                    .bytes()
                    .all(|b| (b'!'..=b'~').contains(&b) && b != b'&' && b != b'=')
            {
                d.error(&p, None, format!("`{name}` is not a query parameter name"));
                continue;
            }
            if let Some(c) = decode_condition(d, value, &p, true) {
                m.query.insert(name, c);
            }
        }
    }
    if let Some((n, p)) = f.get("path_regex") {
        if let Some(re) = d.string(n, &p) {
            match ringmesh_core::pattern::compile_whole(&re) {
                Ok(_) => m.path_regex = Some(re),
                Err(why) => d.error(&p, Some(n), why),
            }
            if m.path.is_some() {
                d.error(&p, Some(n), "use either `path` or `path_regex`, not both");
            }
        }
    }
    if let Some((n, p)) = f.get("service") {
        m.service = d.string(n, &p);
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

/// `headers: { NAME: VALUE }` (exact), or `{ NAME: { exact | regex | present | absent } }`:
/// the exact values, and the other conditions.
pub(super) fn decode_header_conditions(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, CondConfig>) {
    let (mut exact, mut rules) = (BTreeMap::new(), BTreeMap::new());
    for (name, value, p) in super::free_mapping(d, node, path) {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            d.error(&p, None, format!("`{name}` is not a header name"));
            continue;
        }
        let name = name.to_ascii_lowercase();
        match decode_condition(d, value, &p, false) {
            Some(CondConfig::Exact(v)) => {
                exact.insert(name, v);
            }
            Some(c) => {
                rules.insert(name, c);
            }
            None => {}
        }
    }
    (exact, rules)
}

/// A value (exact), or `{ exact: V }`, `{ regex: RE }` (matching the whole value),
/// `{ present: true }`, `{ absent: true }`.
fn decode_condition(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    _query: bool,
) -> Option<CondConfig> {
    if node.is_scalar() {
        return d.text(node, path).map(CondConfig::Exact);
    }
    let f = d.mapping(node, path, &["exact", "regex", "present", "absent"])?;
    let given: Vec<&str> = ["exact", "regex", "present", "absent"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            path,
            Some(node),
            "expected one of `exact`, `regex`, `present: true`, `absent: true`",
        );
        return None;
    }
    let (n, p) = f.get(given[0])?;
    match given[0] {
        "exact" => d.text(n, &p).map(CondConfig::Exact),
        "regex" => {
            let re = d.string(n, &p)?;
            if let Err(why) = ringmesh_core::pattern::compile_whole(&re) {
                d.error(&p, Some(n), why);
                return None;
            }
            Some(CondConfig::Regex(re))
        }
        key => {
            if d.boolean(n, &p)? {
                Some(if key == "present" {
                    CondConfig::Present(true)
                } else {
                    CondConfig::Absent(true)
                })
            } else {
                d.error(
                    &p,
                    Some(n),
                    format!("write `{key}: true`, or leave the condition out"),
                );
                None
            }
        }
    }
}

/// `{ rps: N, burst: M }` (a route's or a listener's); the burst defaults to one second's worth.
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
