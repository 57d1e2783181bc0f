//! Request paths as the upstream will read them: RFC 3986 section 6 normalization, done once,
//! before policies and routing, in place in the receive buffer.
//!
//! A policy that denies `/admin` is only as good as its agreement with the upstream on what a
//! path *is*. Servers read `/%61dmin`, `/./admin`, `//admin` and `/x/../admin` as `/admin`, so
//! the proxy rewrites every path to that one form and forwards the rewritten path: the policy,
//! the route and the upstream all see the same bytes. What cannot be put in one form safely is
//! refused (400, `ringmesh-error: bad-path`):
//!
//! - `%2F` and `%5C` (an encoded `/` or `\`): some servers decode them into separators, some
//!   do not; by default refused (as Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST`),
//!   or kept, or decoded into separators, by configuration;
//! - a raw `\`, which Windows servers and some frameworks read as `/`;
//! - `#`: a fragment is never part of a request target (RFC 9110 section 7.1);
//! - `;` (and `%3B`): Tomcat and Spring drop `;params` from segments, so `/..;/admin` and
//!   `/;/admin` reach `/admin` there; by default refused (as Spring Security's firewall does).
//!   When kept, a segment that is empty, `.` or `..` before its `;` is still refused;
//! - a `%` not followed by two hex digits.
//!
//! The steps: percent-encodings of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded,
//! the others have their hex digits upper-cased, dot segments are removed (RFC 3986 section
//! 5.2.4) after decoding (so `%2e%2e` counts as `..`), and runs of `/` are merged unless
//! configured not to be. The result is never longer than the input, which is why it can be
//! written over it; normalizing it again changes nothing (fuzzed). The query is not touched.

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (the default).
    #[default]
    Reject,
    /// Forward them encoded: they do not separate segments here.
    Keep,
    /// Decode them into `/` (and a raw `\` too), then normalize.
    Unescape,
}

/// What to do with `;` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semicolons {
    /// Refuse the request (the default).
    #[default]
    Reject,
    /// Forward them, except in a segment that is empty, `.` or `..` before its `;`.
    Keep,
}

/// A listener's path rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Merge runs of `/` into one (default true).
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub semicolons: Semicolons,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            semicolons: Semicolons::Reject,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("an encoded slash or backslash (%2F, %5C) in the path")]
    EscapedSlash,
    #[error("a backslash in the path")]
    Backslash,
    #[error("a fragment (#) in the request target")]
    Fragment,
    #[error("a `%` not followed by two hex digits")]
    BadEscape,
    #[error("a `;` in the path")]
    Semicolon,
    #[error("the path does not start with /")]
    NotAbsolute,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `path` may need rewriting: anything other than plain segment bytes, or a `.`
/// (which may start a dot segment). Most paths have none of these, and are left alone after
/// one scan.
#[inline]
fn needs_work(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if matches!(b, b'%' | b'\\' | b'#' | b';') || (b == b'/' && prev == b'/') {
            return true;
        }
        if b == b'.' && prev == b'/' {
            return true;
        }
        prev = b;
    }
    false
}

/// Normalizes the path `buf` (no query) in place; returns its new length. An empty path and
/// `*` are left as they are; any other path must start with `/`.
pub fn normalize(buf: &mut [u8], rules: &PathRules) -> Result<usize, PathError> {
    if buf.is_empty() || buf == b"*" {
        return Ok(buf.len());
    }
    if buf[0] != b'/' {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(buf) {
        return Ok(buf.len());
    }
    let len = buf.len();
    // The output is `buf[..w]`, read from `buf[r..]`; `w <= r` always holds, as every step
    // writes at most the bytes it reads. The segment being written starts at `seg`, just after
    // its `/`; `semicolon` is where its first `;` is, if any.
    let (mut r, mut w, mut seg) = (1usize, 1usize, 1usize);
    let mut semicolon: Option<usize> = None;
    loop {
        let at_end = r == len;
        if !at_end {
            let b = buf[r];
            let literal = match b {
                b'%' => {
                    let (Some(h), Some(l)) = (
                        buf.get(r + 1).copied().and_then(hex),
                        buf.get(r + 2).copied().and_then(hex),
                    ) else {
                        return Err(PathError::BadEscape);
                    };
                    let v = h << 4 | l;
                    r += 3;
                    let slash = v == b'/' || v == b'\\';
                    // Stacks that decode before they strip `;params` read `%3B` as `;`.
                    if v == b';' && rules.semicolons == Semicolons::Reject {
                        return Err(PathError::Semicolon);
                    }
                    if unreserved(v) {
                        buf[w] = v;
                        w += 1;
                        continue;
                    }
                    match (slash, rules.escaped_slashes) {
                        (true, EscapedSlashes::Reject) => return Err(PathError::EscapedSlash),
                        (true, EscapedSlashes::Unescape) => false,
                        _ => {
                            let enc = [b'%', UPPER_HEX[usize::from(h)], UPPER_HEX[usize::from(l)]];
                            buf[w..w + 3].copy_from_slice(&enc);
                            w += 3;
                            continue;
                        }
                    }
                }
                b'\\' if rules.escaped_slashes == EscapedSlashes::Unescape => {
                    r += 1;
                    false
                }
                b'\\' => return Err(PathError::Backslash),
                b'#' => return Err(PathError::Fragment),
                b';' if rules.semicolons == Semicolons::Reject => {
                    return Err(PathError::Semicolon);
                }
                b'/' => {
                    r += 1;
                    false
                }
                _ => true,
            };
            if literal {
                if b == b';' {
                    semicolon.get_or_insert(w);
                }
                buf[w] = b;
                w += 1;
                r += 1;
                continue;
            }
        }
        // A segment ended, at a separator or at the end: `buf[seg..w]`.
        if let Some(at) = semicolon.take() {
            if matches!(&buf[seg..at], b"" | b"." | b"..") {
                return Err(PathError::Semicolon);
            }
        }
        match &buf[seg..w] {
            // Removed; the output still ends with the `/` before it.
            b"." => w = seg,
            b".." => {
                // Removed with the segment before it, never past the root.
                w = seg;
                if seg > 1 {
                    w = buf[..seg - 1].iter().rposition(|&b| b == b'/').unwrap_or(0) + 1;
                }
            }
            b"" if rules.merge_slashes || at_end => {}
            _ if at_end => {}
            _ => {
                buf[w] = b'/';
                w += 1;
            }
        }
        if at_end {
            return Ok(w);
        }
        seg = w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_with(path: &str, rules: PathRules) -> Result<String, PathError> {
        let mut b = path.as_bytes().to_vec();
        let n = normalize(&mut b, &rules)?;
        Ok(String::from_utf8(b[..n].to_vec()).expect("ascii"))
    }

    fn norm(path: &str) -> Result<String, PathError> {
        norm_with(path, PathRules::default())
    }

    #[test]
    fn attacks_on_an_admin_prefix_all_become_admin_or_are_refused() {
        for (input, want) in [
            ("/admin", Ok("/admin")),
            ("/./admin", Ok("/admin")),
            ("//admin", Ok("/admin")),
            ("/x/../admin", Ok("/admin")),
            ("/%61dmin", Ok("/admin")),
            ("/%2e/admin", Ok("/admin")),
            ("/%2E%2E/admin", Ok("/admin")),
            ("/a/b/%2e%2e/../admin", Ok("/admin")),
            ("/../../admin", Ok("/admin")),
            ("///admin//x", Ok("/admin/x")),
            ("/;/admin", Err(PathError::Semicolon)),
            ("/admin%3bx", Err(PathError::Semicolon)),
            ("/%3B/admin", Err(PathError::Semicolon)),
            ("/..;/admin", Err(PathError::Semicolon)),
            ("/%2fadmin", Err(PathError::EscapedSlash)),
            ("/x%2F..%2Fadmin", Err(PathError::EscapedSlash)),
            ("/%5cadmin", Err(PathError::EscapedSlash)),
            ("/\\admin", Err(PathError::Backslash)),
            ("/admin#x", Err(PathError::Fragment)),
            ("/%zzadmin", Err(PathError::BadEscape)),
            ("/admin%4", Err(PathError::BadEscape)),
            ("/admin%", Err(PathError::BadEscape)),
        ] {
            assert_eq!(norm(input).as_deref(), want.as_deref(), "{input}");
        }
    }

    #[test]
    fn rfc_3986_examples_and_edges() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/%7euser/%41%42", "/~user/AB"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/%25", "/%25"),
            ("/%2525", "/%2525"),
            ("/a+b", "/a+b"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
        assert_eq!(norm("").as_deref(), Ok(""));
        assert_eq!(norm("*").as_deref(), Ok("*"));
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn the_configurable_rules() {
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            semicolons: Semicolons::Keep,
            merge_slashes: false,
        };
        assert_eq!(norm_with("/a%2fb/%5c", keep).as_deref(), Ok("/a%2Fb/%5C"));
        assert_eq!(norm_with("//a//b", keep).as_deref(), Ok("//a//b"));
        assert_eq!(norm_with("/a//..", keep).as_deref(), Ok("/a/"));
        assert_eq!(
            norm_with("/a;jsessionid=1/b", keep).as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        for bad in ["/;/admin", "/..;/admin", "/.;x/a", "/a/;"] {
            assert_eq!(norm_with(bad, keep), Err(PathError::Semicolon), "{bad}");
        }
        assert_eq!(norm_with("/a\\b", keep), Err(PathError::Backslash));
        let unescape = PathRules {
            escaped_slashes: EscapedSlashes::Unescape,
            ..PathRules::default()
        };
        assert_eq!(
            norm_with("/x%2F..%2Fadmin", unescape).as_deref(),
            Ok("/admin")
        );
        assert_eq!(
            norm_with("/a\\..\\admin", unescape).as_deref(),
            Ok("/admin")
        );
        assert_eq!(norm_with("/a%5c%5cb", unescape).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        let rules = [
            PathRules::default(),
            PathRules {
                escaped_slashes: EscapedSlashes::Keep,
                semicolons: Semicolons::Keep,
                merge_slashes: false,
            },
            PathRules {
                escaped_slashes: EscapedSlashes::Unescape,
                semicolons: Semicolons::Keep,
                merge_slashes: true,
            },
        ];
        let mut rng = crate::rng::Rng::new(7);
        let alphabet: &[u8] = b"/./%2e%2E%2f%5cab;\\~%41";
        for _ in 0..20_000 {
            let n = 1 + rng.below(24) as usize;
            let mut p = vec![b'/'];
            for _ in 0..n {
                p.push(alphabet[rng.below(alphabet.len() as u32) as usize]);
            }
            for r in &rules {
                let mut once = p.clone();
                let Ok(len) = normalize(&mut once, r) else {
                    continue;
                };
                once.truncate(len);
                let mut twice = once.clone();
                let len2 = normalize(&mut twice, r).expect("a normalized path is valid");
                assert_eq!(
                    &twice[..len2],
                    &once[..],
                    "{:?} -> {:?}",
                    String::from_utf8_lossy(&p),
                    String::from_utf8_lossy(&once)
                );
                assert!(once.starts_with(b"/"));
            }
        }
    }
}
