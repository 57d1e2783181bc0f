//! Decoding what a route does besides choosing a cluster: header edits (routes and clusters),
//! request ids (listeners and routes), redirects and direct answers. Each rule is checked here
//! once, with the core's own validators, for the proxy's file and the control plane's mesh
//! file alike.

use ringmesh_core::head::edit::{Template, reserved, valid_name, valid_value};

use super::{Decoder, Node};

use crate::config::model::*;

/// `{ add: {NAME: VALUE}, set: {NAME: VALUE}, remove: [NAME] }`.
pub(super) fn decode_header_edits(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    request: bool,
) -> Option<HeadersConfig> {
    let f = d.mapping(node, path, &["add", "set", "remove"])?;
    let mut out = HeadersConfig::default();
    for (key, slot) in [("add", &mut out.add), ("set", &mut out.set)] {
        let Some((n, p)) = f.get(key) else {
            continue;
        };
        for (name, value, p) in super::free_mapping(d, n, &p) {
            if !field_name(d, &p, &name) {
                continue;
            }
            let Some(v) = d.text(value, &p) else {
                continue;
            };
            if !valid_value(&v) {
                d.error(
                    &p,
                    Some(value),
                    "a value is visible ASCII, spaces and tabs, up to 4 KiB, without surrounding spaces",
                );
                continue;
            }
            match Template::parse(&v) {
                Err(why) => {
                    d.error(&p, Some(value), why);
                    continue;
                }
                Ok(t) if request && t.uses(ringmesh_core::head::edit::Var::Upstream) => {
                    d.error(
                        &p,
                        Some(value),
                        "`${upstream}` is known on answers only (the endpoint that answered)",
                    );
                    continue;
                }
                Ok(_) => {}
            }
            slot.insert(name.to_ascii_lowercase(), v);
        }
    }
    if let Some((n, p)) = f.get("remove") {
        for (n, p) in d.list(n, &p) {
            if let Some(name) = d.string(n, &p) {
                if field_name(d, &p, &name) {
                    out.remove.push(name.to_ascii_lowercase());
                }
            }
        }
    }
    Some(out)
}

/// A field name an edit may use; an error naming the field otherwise.
fn field_name(d: &mut Decoder, path: &str, name: &str) -> bool {
    if !valid_name(name) {
        d.error(path, None, format!("`{name}` is not a field name"));
        return false;
    }
    if reserved(name) {
        d.error(
            path,
            None,
            format!(
                "`{name}` cannot be edited: hop-by-hop and framing fields, the authority, and the fields the proxy writes itself are the proxy's"
            ),
        );
        return false;
    }
    true
}

/// `request_id: { header: x-request-id, trust_client: false, echo: false }`, or `true` for
/// those defaults.
pub(super) fn decode_request_id(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<RequestIdConfig> {
    let default = RequestIdConfig {
        header: "x-request-id".into(),
        trust_client: false,
        echo: false,
    };
    if let Some(on) = node.as_bool() {
        return on.then_some(default);
    }
    let f = d.mapping(node, path, &["header", "trust_client", "echo"])?;
    let mut out = default;
    if let Some((n, p)) = f.get("header") {
        let name = d.string(n, &p)?;
        if !field_name(d, &p, &name) {
            return None;
        }
        out.header = name.to_ascii_lowercase();
    }
    if let Some((n, p)) = f.get("trust_client") {
        out.trust_client = d.boolean(n, &p)?;
    }
    if let Some((n, p)) = f.get("echo") {
        out.echo = d.boolean(n, &p)?;
    }
    Some(out)
}

/// `redirect: { scheme, host, path, prefix, code: 301, strip_query: false }`.
pub(super) fn decode_redirect(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    path_prefix: Option<&str>,
) -> Option<RedirectConfig> {
    let f = d.mapping(
        node,
        path,
        &["scheme", "host", "path", "prefix", "code", "strip_query"],
    )?;
    let mut ok = true;
    let scheme = match f.get("scheme") {
        Some((n, p)) => d.choice(n, &p, &["http", "https"]).map(str::to_string),
        None => None,
    };
    let host = f.get("host").and_then(|(n, p)| {
        let h = d.string(n, &p)?;
        if !valid_host(&h) {
            d.error(
                &p,
                Some(n),
                "expected a host name, with a port if one is needed",
            );
            ok = false;
        }
        Some(h)
    });
    let mut target = |key: &str| {
        f.get(key).and_then(|(n, p)| {
            let v = d.string(n, &p)?;
            if !valid_target_path(&v) {
                d.error(
                    &p,
                    Some(n),
                    "expected a path starting with `/`, of visible ASCII without `?` or `#`",
                );
                return None;
            }
            Some(v)
        })
    };
    let target_path = target("path");
    let prefix = target("prefix");
    if prefix.is_some() && path_prefix.is_none() {
        d.error(
            &f.path_of("prefix"),
            None,
            "a prefix redirect replaces the route's `match.path_prefix`, which this route has not",
        );
        ok = false;
    }
    if target_path.is_some() && prefix.is_some() {
        d.error(
            &f.path_of("prefix"),
            None,
            "a redirect has `path` or `prefix`, not both",
        );
        ok = false;
    }
    let code = match f.get("code") {
        Some((n, p)) => {
            let c = d.integer(n, &p, 999)?;
            if ![301, 302, 303, 307, 308].contains(&c) {
                d.error(&p, Some(n), "expected 301, 302, 303, 307 or 308");
                return None;
            }
            c as u16
        }
        None => 301,
    };
    let strip_query = match f.get("strip_query") {
        Some((n, p)) => d.boolean(n, &p)?,
        None => false,
    };
    ok.then_some(RedirectConfig {
        scheme,
        host,
        path: target_path,
        prefix,
        code,
        strip_query,
    })
}

/// A host (and port) a redirect or rewrite may name: what an authority may hold, nothing that
/// could end a field or a URL's authority.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b))
}

/// A path a redirect may send clients to: the same rules as a request's path.
fn valid_target_path(v: &str) -> bool {
    v.starts_with('/')
        && v.len() <= 4096
        && v.bytes()
            .all(|b| (b'!'..=b'~').contains(&b) && b != b'?' && b != b'#')
}

/// Largest body of a `direct_response`.
const MAX_DIRECT_BODY: usize = 64 * 1024;

/// `direct_response: { status: 200, body: "ok" }`.
pub(super) fn decode_direct_response(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<DirectResponseConfig> {
    let f = d.mapping(node, path, &["status", "body"])?;
    let status = super::required(d, &f, "status").and_then(|(n, p)| {
        let s = d.integer(n, &p, 999)?;
        if !(200..=599).contains(&s) {
            d.error(&p, Some(n), "expected a status from 200 to 599");
            return None;
        }
        Some(s as u16)
    });
    let body = match f.get("body") {
        Some((n, p)) => {
            let b = d.text(n, &p)?;
            if b.len() > MAX_DIRECT_BODY {
                d.error(&p, Some(n), "at most 64 KiB");
                return None;
            }
            if !b.is_empty() && matches!(status, Some(204 | 304)) {
                d.error(&p, Some(n), "a 204 or 304 answer has no body");
                return None;
            }
            b
        }
        None => String::new(),
    };
    Some(DirectResponseConfig {
        status: status?,
        body,
    })
}

/// `rewrite: { prefix | regex + substitution, host | host_from_endpoint }`. `path_prefix`: the
/// route's, which a prefix rewrite replaces.
pub(super) fn decode_rewrite(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
    path_prefix: Option<&str>,
) -> Option<RewriteConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "prefix",
            "regex",
            "substitution",
            "host",
            "host_from_endpoint",
        ],
    )?;
    let mut out = RewriteConfig::default();
    let mut ok = true;
    if let Some((n, p)) = f.get("prefix") {
        let v = d.string(n, &p)?;
        if !valid_target_path(&v) {
            d.error(
                &p,
                Some(n),
                "expected a path starting with `/`, of visible ASCII without `?` or `#`",
            );
            ok = false;
        } else if path_prefix.is_none() {
            d.error(&p, Some(n), "a prefix rewrite replaces the route's `match.path_prefix`, which this route has not");
            ok = false;
        }
        out.prefix = Some(v);
    }
    if let Some((n, p)) = f.get("regex") {
        let v = d.string(n, &p)?;
        if let Err(why) = ringmesh_core::rewrite::compile(&v) {
            d.error(&p, Some(n), why);
            ok = false;
        }
        out.regex = Some(v);
    }
    if let Some((n, p)) = f.get("substitution") {
        let v = d.string(n, &p)?;
        if v.len() > 4096 || v.chars().any(char::is_control) {
            d.error(&p, Some(n), "up to 4 KiB, without control characters");
            ok = false;
        }
        out.substitution = Some(v);
    }
    match (&out.prefix, &out.regex, &out.substitution) {
        (Some(_), Some(_), _) => {
            d.error(
                &f.path_of("regex"),
                None,
                "a rewrite has `prefix` or `regex`, not both",
            );
            ok = false;
        }
        (_, Some(_), None) => {
            d.error(&f.path_of("substitution"), None, "required with `regex`");
            ok = false;
        }
        (_, None, Some(_)) => {
            d.error(&f.path_of("substitution"), None, "goes with `regex`");
            ok = false;
        }
        _ => {}
    }
    if let Some((n, p)) = f.get("host") {
        let h = d.string(n, &p)?;
        if !valid_host(&h) {
            d.error(
                &p,
                Some(n),
                "expected a host name, with a port if one is needed",
            );
            ok = false;
        }
        out.host = Some(h);
    }
    if let Some((n, p)) = f.get("host_from_endpoint") {
        out.host_from_endpoint = d.boolean(n, &p)?;
        if out.host_from_endpoint && out.host.is_some() {
            d.error(
                &p,
                Some(n),
                "a rewrite has `host` or `host_from_endpoint`, not both",
            );
            ok = false;
        }
    }
    ok.then_some(out)
}

/// `fault: { delay: { fixed, percent }, abort: { status, grpc_status, percent }, header }`.
pub(super) fn decode_fault(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<FaultConfig> {
    let f = d.mapping(node, path, &["delay", "abort", "header"])?;
    let share = |d: &mut Decoder, m: &super::Fields<'_, '_>| match m.get("percent") {
        Some((n, p)) => d.fraction(n, &p),
        None => Some(1.0),
    };
    let mut delay_for = std::time::Duration::ZERO;
    let delay = match f.get("delay") {
        Some((n, p)) => {
            let m = d.mapping(n, &p, &["fixed", "percent"])?;
            let (fixed_node, fixed_path) = super::required(d, &m, "fixed")?;
            let fixed = d.positive_duration(fixed_node, &fixed_path)?;
            if fixed > std::time::Duration::from_secs(3600) {
                d.error(&fixed_path, Some(fixed_node), "at most 1h");
                return None;
            }
            delay_for = fixed;
            Some((crate::config::format_duration(fixed), share(d, &m)?))
        }
        None => None,
    };
    let abort = match f.get("abort") {
        Some((n, p)) => {
            let m = d.mapping(n, &p, &["status", "grpc_status", "percent"])?;
            let status = match m.get("status") {
                Some((n, p)) => {
                    let s = d.integer(n, &p, 999)?;
                    if !(200..=599).contains(&s) {
                        d.error(&p, Some(n), "expected a status from 200 to 599");
                        return None;
                    }
                    s as u16
                }
                None => 503,
            };
            let grpc_status = match m.get("grpc_status") {
                Some((n, p)) => {
                    let g = d.integer(n, &p, 16)?;
                    if g == 0 {
                        d.error(&p, Some(n), "an abort's gRPC status is 1 to 16 (0 is OK)");
                        return None;
                    }
                    Some(g as u8)
                }
                None => None,
            };
            Some((status, grpc_status, share(d, &m)?))
        }
        None => None,
    };
    if delay.is_none() && abort.is_none() {
        d.error(path, Some(node), "a fault needs `delay`, `abort` or both");
        return None;
    }
    let header = match f.get("header") {
        Some((n, p)) => {
            let h = d.string(n, &p)?;
            if !valid_name(&h) {
                d.error(&p, Some(n), format!("`{h}` is not a field name"));
                return None;
            }
            Some(h.to_ascii_lowercase())
        }
        None => None,
    };
    Some(FaultConfig {
        delay,
        abort,
        header,
        delay_for,
    })
}

/// `cors: { allow_origins: [https://app.example, "https://*.example.com"], allow_methods: [GET],
/// allow_headers: [x-a], expose_headers: [x-b], max_age: 10m, allow_credentials: false }`.
pub(super) fn decode_cors(d: &mut Decoder, node: Node<'_, '_>, path: &str) -> Option<CorsConfig> {
    let f = d.mapping(
        node,
        path,
        &[
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
        ],
    )?;
    let mut ok = true;
    let mut list = |d: &mut Decoder, key: &str, check: &dyn Fn(&str) -> Option<&'static str>| {
        let mut out = Vec::new();
        if let Some((n, p)) = f.get(key) {
            for (n, p) in d.list(n, &p) {
                let Some(v) = d.string(n, &p) else {
                    ok = false;
                    continue;
                };
                if let Some(why) = check(&v) {
                    d.error(&p, Some(n), why);
                    ok = false;
                }
                out.push(v);
            }
        }
        out
    };
    let allow_origins = list(d, "allow_origins", &|o| {
        (!valid_origin(o)).then_some(
            "expected `*`, an origin such as https://app.example, or https://*.example.com",
        )
    });
    let allow_methods = list(d, "allow_methods", &|m| {
        (m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) && m != "*")
            .then_some("expected an upper-case method such as PUT")
    });
    let name = |h: &str| (!valid_name(h)).then_some("expected a field name");
    let allow_headers = list(d, "allow_headers", &name);
    let expose_headers = list(d, "expose_headers", &name);
    if allow_origins.is_empty() && ok {
        d.error(
            &f.path_of("allow_origins"),
            None,
            "required: the origins allowed",
        );
        return None;
    }
    let max_age = match f.get("max_age") {
        Some((n, p)) => {
            let age = d.duration(n, &p)?;
            if age > std::time::Duration::from_secs(86_400) {
                d.error(&p, Some(n), "at most 24h (browsers cap it lower)");
                return None;
            }
            Some(age.as_secs() as u32)
        }
        None => None,
    };
    let allow_credentials = match f.get("allow_credentials") {
        Some((n, p)) => d.boolean(n, &p)?,
        None => false,
    };
    let star = |v: &[String]| v.iter().any(|x| x == "*");
    if allow_credentials && (star(&allow_methods) || star(&allow_headers) || star(&expose_headers))
    {
        d.error(
            &f.path_of("allow_credentials"),
            None,
            "with credentials, browsers take `*` in methods and headers literally: list them",
        );
        return None;
    }
    if allow_credentials && allow_origins.iter().any(|o| o == "*") {
        d.error(
            &f.path_of("allow_credentials"),
            None,
            "not with `*` in allow_origins: any site could read answers made with the user's cookies",
        );
        return None;
    }
    ok.then_some(CorsConfig {
        allow_origins,
        allow_methods: if allow_methods.is_empty() {
            vec!["GET".into(), "HEAD".into(), "POST".into()]
        } else {
            allow_methods
        },
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
    })
}

/// `*`, `scheme://host[:port]`, or `scheme://*.domain[:port]`.
fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some((scheme, host)) = o.split_once("://") else {
        return false;
    };
    let (host, pattern) = match host.strip_prefix("*.") {
        Some(h) => (h, true),
        None => (host, false),
    };
    // A pattern names a domain's subdomains, not a whole top-level domain's (`*.com`).
    if pattern && !host.split(':').next().unwrap_or_default().contains('.') {
        return false;
    }
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}
