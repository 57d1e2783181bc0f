//! Rewrites a route makes to what it sends upstream (`rewrite`): the path (its matched prefix
//! replaced, or a regular expression's substitution) and the authority (a literal, or the
//! endpoint's address). The query goes on as it came.
//!
//! Whatever a substitution produces is made a valid origin-form target: it starts with `/`, and
//! every byte that may not appear in one (controls, spaces, non-ASCII, `#`, and `?` inside the
//! path) is percent-encoded, so a rewrite can never split a request line or smuggle a field.

use regex::bytes::Regex;

pub use crate::pattern::compile;

/// How the path is rewritten.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// The route's matched `path_prefix` replaced by this.
    Prefix(Box<[u8]>),
    /// Every match of the expression replaced by the substitution (`$1`, `${name}`).
    Regex { re: Regex, substitution: Box<[u8]> },
}

impl PartialEq for PathRewrite {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathRewrite::Prefix(a), PathRewrite::Prefix(b)) => a == b,
            (
                PathRewrite::Regex { re, substitution },
                PathRewrite::Regex {
                    re: r2,
                    substitution: s2,
                },
            ) => re.as_str() == r2.as_str() && substitution == s2,
            _ => false,
        }
    }
}

impl Eq for PathRewrite {}

/// How the authority is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    /// This name (and port).
    Literal(Box<[u8]>),
    /// The address of the endpoint the request goes to.
    Endpoint,
}

/// A route's rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    pub host: Option<HostRewrite>,
}

impl Rewrite {
    /// Writes into `out` the target to send for `target` (path and query as they came), when
    /// the path is rewritten; `matched`: the length of the route's matched path prefix.
    pub fn target(&self, target: &[u8], matched: usize, out: &mut Vec<u8>) -> bool {
        let Some(p) = &self.path else {
            return false;
        };
        let (path, query) = match memchr::memchr(b'?', target) {
            Some(i) => (&target[..i], &target[i..]),
            None => (target, &b""[..]),
        };
        out.clear();
        match p {
            PathRewrite::Prefix(new) => {
                let mut joined = Vec::with_capacity(new.len() + path.len());
                replace_prefix(&mut joined, new, path, matched);
                push_path(out, &joined);
            }
            PathRewrite::Regex { re, substitution } => {
                let replaced = re.replace_all(path, &substitution[..]);
                push_path(out, &replaced);
            }
        }
        out.extend_from_slice(query);
        true
    }
}

/// Appends `path` with its first `matched` bytes replaced by `new`, one `/` between them:
/// `/old/` to `/new` sends `/old/x` as `/new/x`, and `/api` to `/` sends `/api/v1` as `/v1`.
/// Shared by prefix rewrites and prefix redirects.
pub fn replace_prefix(out: &mut Vec<u8>, new: &[u8], path: &[u8], matched: usize) {
    let rest = path.get(matched.min(path.len())..).unwrap_or_default();
    out.extend_from_slice(new);
    match (new.ends_with(b"/"), rest.starts_with(b"/")) {
        (true, true) => out.extend_from_slice(&rest[1..]),
        (false, false) if !rest.is_empty() => {
            out.push(b'/');
            out.extend_from_slice(rest);
        }
        _ => out.extend_from_slice(rest),
    }
}

/// Appends `path` as a valid origin-form path: a `/` first if it has none, and percent-encoded
/// wherever a byte may not appear as it is.
pub fn push_path(out: &mut Vec<u8>, path: &[u8]) {
    if !path.starts_with(b"/") {
        out.push(b'/');
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in path {
        let plain = (b'!'..=b'~').contains(&b) && b != b'#' && b != b'?';
        if plain {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Whether the path of `target` (before its query) has a `.` or `..` segment.
pub fn has_dot_segment(target: &[u8]) -> bool {
    let path = &target[..memchr::memchr(b'?', target).unwrap_or(target.len())];
    path.split(|&b| b == b'/').any(|s| s == b"." || s == b"..")
}

/// Whether `target` is a valid origin-form target as the rewrite writes them: `/` first,
/// visible ASCII, no `#` (the first `?` starts the query, which goes on as it came).
pub fn valid_target(target: &[u8]) -> bool {
    target.starts_with(b"/")
        && target
            .iter()
            .all(|&b| (b'!'..=b'~').contains(&b) && b != b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Rewrite {
        Rewrite {
            path: Some(PathRewrite::Prefix(p.as_bytes().into())),
            host: None,
        }
    }

    fn run(r: &Rewrite, target: &str, matched: usize) -> String {
        let mut out = Vec::new();
        assert!(r.target(target.as_bytes(), matched, &mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn prefixes_are_replaced_and_the_query_kept() {
        assert_eq!(run(&prefix("/new/"), "/old/a/b?x=1", 5), "/new/a/b?x=1");
        assert_eq!(run(&prefix("/new"), "/old/a", 5), "/new/a");
        assert_eq!(run(&prefix("/"), "/api/v1", 4), "/v1");
        assert_eq!(run(&prefix("/v2"), "/v1", 3), "/v2");
    }

    #[test]
    fn substitutions_use_groups_and_stay_valid_targets() {
        let r = Rewrite {
            path: Some(PathRewrite::Regex {
                re: compile("^/users/([0-9]+)/(.*)$").unwrap(),
                substitution: b"/u/$1?$2 #x".as_slice().into(),
            }),
            host: None,
        };
        let out = run(&r, "/users/42/profile?full=1", 0);
        assert_eq!(out, "/u/42%3Fprofile%20%23x?full=1");
        assert!(valid_target(out.as_bytes()));
        let r = Rewrite {
            path: Some(PathRewrite::Regex {
                re: compile("^/").unwrap(),
                substitution: b"".as_slice().into(),
            }),
            host: None,
        };
        assert_eq!(run(&r, "/x", 0), "/x", "a leading slash is always there");
    }

    #[test]
    fn dot_segments_made_by_a_rewrite_are_seen() {
        let out = run(&prefix("/public/static"), "/static../../secret", 7);
        assert_eq!(out, "/public/static/../../secret");
        assert!(has_dot_segment(out.as_bytes()));
        assert!(!has_dot_segment(b"/a/static../b?x=/../"));
        assert!(has_dot_segment(b"/a/."));
    }

    #[test]
    fn expressions_too_large_are_refused() {
        assert!(compile("(a|b)").is_ok());
        let big = format!("({}){{100}}", "[a-z]{1,100}");
        assert!(compile(&big).unwrap_err().contains("KiB"), "{big}");
        assert!(compile("(").is_err());
    }
}
