//! CORS for a route (`cors`), as the Fetch standard defines it: the proxy answers preflights
//! itself, and adds the `Access-Control-*` fields to answers for an allowed origin. A
//! disallowed origin gets no CORS field at all (the browser then blocks the page's access), and
//! the upstream's own `Access-Control-*` fields are removed: the route's policy is the only one.

use crate::head::FieldSink;

/// Which origins a route allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// Any origin (`*`).
    Any,
    /// Exactly this origin (`https://a.example`, lowercase).
    Exact(Box<[u8]>),
    /// A scheme and a domain's subdomains (`https://*.example.com`): prefix `https://`, suffix
    /// `.example.com`.
    Subdomains {
        scheme: Box<[u8]>,
        suffix: Box<[u8]>,
    },
}

/// A route's CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: Vec<OriginRule>,
    /// `GET, POST` as written in `Access-Control-Allow-Methods`.
    pub methods: Box<[u8]>,
    /// `x-a, x-b`; empty: none beyond the CORS-safelisted ones.
    pub headers: Box<[u8]>,
    pub expose: Box<[u8]>,
    pub max_age: Option<u32>,
    pub credentials: bool,
}

/// Fields that say which request fields an answer varies by, on every CORS answer.
const VARY_ACTUAL: &[u8] = b"Origin";
pub const VARY_PREFLIGHT: &[u8] =
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

impl Cors {
    /// Whether `origin` (as the request's `Origin` field says it) is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        // `null` (sandboxed pages, files) is never allowed by a rule but an exact `null`.
        self.origins.iter().any(|r| match r {
            OriginRule::Any => origin != b"null",
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginRule::Subdomains { scheme, suffix } => {
                origin.len() > scheme.len() + suffix.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !origin[scheme.len()..origin.len() - suffix.len()]
                        .iter()
                        .any(|&b| b == b'/' || b == b'@')
            }
        })
    }

    /// Whether `method` may be asked for in a preflight.
    pub fn allows_method(&self, method: &[u8]) -> bool {
        // The CORS-safelisted methods are always allowed (Fetch standard).
        matches!(method, b"GET" | b"HEAD" | b"POST")
            || self
                .methods
                .split(|&b| b == b',')
                .any(|m| m.trim_ascii() == method || m.trim_ascii() == b"*")
    }

    /// What `Access-Control-Allow-Origin` says: `*` for any origin without credentials, else
    /// the origin itself (credentials may not go with `*`).
    pub fn allow_origin<'a>(&self, origin: &'a [u8]) -> &'a [u8] {
        let any = self.origins.contains(&OriginRule::Any);
        if any && !self.credentials {
            b"*"
        } else {
            origin
        }
    }

    /// The fields an answer to an actual request from an allowed `origin` gets.
    pub fn actual_fields(&self, origin: &[u8], field: &mut FieldSink<'_>) {
        field(b"access-control-allow-origin", &|out| {
            out.extend_from_slice(self.allow_origin(origin))
        });
        if self.credentials {
            field(b"access-control-allow-credentials", &|out| {
                out.extend_from_slice(b"true")
            });
        }
        if !self.expose.is_empty() {
            field(b"access-control-expose-headers", &|out| {
                out.extend_from_slice(&self.expose)
            });
        }
        field(b"vary", &|out| out.extend_from_slice(VARY_ACTUAL));
    }
}

/// Whether a field is one of those the route's CORS policy writes (the upstream's are dropped).
pub fn is_cors_field(name: &[u8]) -> bool {
    name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
}

/// The proxy's answer to a preflight: 204, with the policy's fields when the origin and the
/// method asked for are allowed, without any otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Preflight<'a> {
    pub cors: &'a Cors,
    pub origin: &'a [u8],
    /// `Access-Control-Request-Headers` (not echoed: the policy's list is what is allowed).
    pub request_headers: &'a [u8],
    pub allowed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: Vec<OriginRule>, credentials: bool) -> Cors {
        Cors {
            origins,
            methods: b"GET, PUT".as_slice().into(),
            headers: b"".as_slice().into(),
            expose: b"x-total".as_slice().into(),
            max_age: Some(600),
            credentials,
        }
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let c = cors(
            vec![
                OriginRule::Exact(b"https://app.example".as_slice().into()),
                OriginRule::Subdomains {
                    scheme: b"https://".as_slice().into(),
                    suffix: b".example.com".as_slice().into(),
                },
            ],
            false,
        );
        assert!(c.allows(b"https://app.example"));
        assert!(c.allows(b"https://a.b.example.com"));
        assert!(
            !c.allows(b"https://example.com"),
            "the apex is not a subdomain"
        );
        assert!(!c.allows(b"http://a.example.com"), "another scheme");
        assert!(!c.allows(b"https://evil.com/.example.com"));
        assert!(!c.allows(b"https://app.example.evil"));
        assert!(!c.allows(b"null"));
        assert!(c.allows_method(b"PUT") && c.allows_method(b"POST") && !c.allows_method(b"DELETE"));
    }

    #[test]
    fn any_origin_is_a_star_unless_credentials_go_with_it() {
        let mut seen = Vec::new();
        cors(vec![OriginRule::Any], false).actual_fields(b"https://x", &mut |n, v| {
            let mut out = Vec::new();
            v(&mut out);
            seen.push((n.to_vec(), out));
        });
        assert_eq!(
            seen[0],
            (b"access-control-allow-origin".to_vec(), b"*".to_vec())
        );
        seen.clear();
        cors(vec![OriginRule::Any], true).actual_fields(b"https://x", &mut |n, v| {
            let mut out = Vec::new();
            v(&mut out);
            seen.push((n.to_vec(), out));
        });
        assert_eq!(seen[0].1, b"https://x");
        assert!(seen.iter().any(|(n, v)| n == b"vary" && v == b"Origin"));
        assert!(is_cors_field(b"Access-Control-Allow-Origin") && !is_cors_field(b"vary"));
    }
}
