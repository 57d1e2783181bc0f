//! Compression of answers (`compression` on a route): which coding a client gets
//! ([`accept`]), which answers qualify ([`Compression::judge`]), the fields that change with
//! the coding ([`Coding`]), and the streaming encoders ([`encoder`]).
//!
//! An answer is compressed when the client accepts one of the route's algorithms, its type is
//! one of the route's, it is not known to be smaller than `min_size`, it carries no
//! `Content-Encoding` and no `Cache-Control: no-transform`, and its status is one with a whole
//! representation (not 1xx, 204, 206 or 304). It then loses its `Content-Length` (the body is
//! chunked, or ends at the close for HTTP/1.0) and `Accept-Ranges`, its ETag turns weak, and it
//! gains `Content-Encoding`. Every answer that could have been compressed says
//! `Vary: Accept-Encoding`, compressed or not, so a cache keeps the two apart.

pub mod accept;
pub mod encoder;

use crate::head::{FieldSink, ResponseHead, Span};

/// A coding the proxy can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Zstd,
    Brotli,
    Gzip,
}

impl Algorithm {
    /// Every algorithm, with the name configs and `Accept-Encoding` use.
    pub const ALL: [(&'static str, Algorithm); 3] = [
        ("zstd", Algorithm::Zstd),
        ("br", Algorithm::Brotli),
        ("gzip", Algorithm::Gzip),
    ];

    /// Its content-coding token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
        }
    }

    /// The algorithm a token names (case-insensitive; `x-gzip` is gzip, RFC 9110 8.4.1.3).
    pub fn from_token(t: &[u8]) -> Option<Algorithm> {
        if t.eq_ignore_ascii_case(b"x-gzip") {
            return Some(Algorithm::Gzip);
        }
        Algorithm::ALL
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(t))
            .map(|(_, a)| *a)
    }
}

/// Compression levels, one per algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// 1 to 9.
    pub gzip: u32,
    /// 0 to 9 (10 and 11 are too slow to code as an answer streams).
    pub brotli: u32,
    /// 1 to 9.
    pub zstd: i32,
}

impl Default for Levels {
    /// Levels for answers compressed as they stream, on the worker that serves other
    /// connections: gzip 2, brotli 4, zstd 3 (zstd's own default). Gzip is zlib-rs's, whose
    /// level 1 is a quick strategy with output about 30% larger than zlib's level 1 on text;
    /// its level 2 is zlib's level-1 algorithm, with output about that of zlib's level 2.
    fn default() -> Self {
        Levels {
            gzip: 2,
            brotli: 4,
            zstd: 3,
        }
    }
}

/// A route's `compression`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// The algorithms, the route's preference first (it breaks ties between equal q-values).
    pub algorithms: Vec<Algorithm>,
    pub levels: Levels,
    /// Answers declared smaller than this are sent as they are.
    pub min_size: u64,
    /// Media types compressed, lowercase: `type/subtype`, or `type/*`.
    pub types: Vec<Box<[u8]>>,
}

/// The media types compressed when a route names none: text and the usual textual formats.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/xhtml+xml",
    "image/svg+xml",
];

/// `min_size` when a route names none.
pub const DEFAULT_MIN_SIZE: u64 = 1024;

/// How an answer that qualifies is sent: coded or not, and its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// The coding applied, if any.
    pub coding: Option<Algorithm>,
    /// A `Vary` of the answer already names `Accept-Encoding` (or is `*`).
    pub varies: bool,
    /// The answer's strong ETag (without `W/`), which goes out weak when coded.
    pub etag: Option<Span>,
}

impl Compression {
    /// Whether the answer in `buf` qualifies, given what the client accepts. `None`: it goes
    /// as it came, with no field added.
    pub fn judge(
        &self,
        resp: &ResponseHead,
        buf: &[u8],
        chosen: Option<Algorithm>,
    ) -> Option<Judged> {
        if matches!(resp.status, 100..=199 | 204 | 206 | 304) {
            return None;
        }
        if resp.content_length.is_some_and(|n| n < self.min_size) {
            return None;
        }
        let mut typed = false;
        let mut judged = Judged {
            coding: chosen,
            varies: false,
            etag: None,
        };
        for h in resp.headers.iter().filter(|h| !h.drop) {
            let name = h.name.get(buf);
            let value = h.value.get(buf);
            if name.eq_ignore_ascii_case(b"content-encoding") {
                return None;
            } else if name.eq_ignore_ascii_case(b"cache-control") {
                if list_has(value, b"no-transform") {
                    return None;
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                // gRPC's status travels in trailers, which a coded answer cannot carry.
                let grpc =
                    value.len() >= 16 && value[..16].eq_ignore_ascii_case(b"application/grpc");
                typed = !grpc && self.compresses_type(value);
            } else if name.eq_ignore_ascii_case(b"vary") {
                judged.varies |= list_has(value, b"accept-encoding") || list_has(value, b"*");
            } else if name.eq_ignore_ascii_case(b"etag") && value.first() == Some(&b'"') {
                judged.etag = Some(h.value);
            }
        }
        typed.then_some(judged)
    }

    /// Whether a `Content-Type` value is one of the route's types (parameters ignored).
    fn compresses_type(&self, value: &[u8]) -> bool {
        let media = value.split(|&b| b == b';').next().unwrap_or_default();
        let media = media.trim_ascii();
        let Some(slash) = media.iter().position(|&b| b == b'/') else {
            return false;
        };
        self.types.iter().any(|t| match t.strip_suffix(b"/*") {
            Some(kind) => media[..slash].eq_ignore_ascii_case(kind),
            None => media.eq_ignore_ascii_case(t),
        })
    }
}

/// Whether a comma-separated field value has `token` as one of its elements (parameters after
/// `=` ignored, case-insensitive).
fn list_has(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|e| {
        let e = e.split(|&b| b == b'=').next().unwrap_or_default();
        e.trim_ascii().eq_ignore_ascii_case(token)
    })
}

/// What the coding changes in an answer's fields.
#[derive(Debug, Clone, Copy)]
pub struct Coding<'a> {
    /// The coding applied, if any.
    pub coding: Option<Algorithm>,
    /// `Vary: Accept-Encoding` is added.
    pub vary: bool,
    /// The strong ETag, sent weak.
    pub etag: Option<&'a [u8]>,
}

impl<'a> Coding<'a> {
    /// The field changes for a judged answer whose head is in `buf`.
    pub fn of(j: &Judged, buf: &'a [u8]) -> Coding<'a> {
        Coding {
            coding: j.coding,
            vary: !j.varies,
            etag: j.coding.and(j.etag).map(|s| s.get(buf)),
        }
    }

    /// Whether a field the upstream sent is left out: a coded answer has no byte ranges, and
    /// its strong ETag is replaced by the weak one.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.coding.is_some()
            && (name.eq_ignore_ascii_case(b"accept-ranges")
                || self.etag.is_some() && name.eq_ignore_ascii_case(b"etag"))
    }

    /// The fields the coding writes.
    pub fn fields(&self, field: &mut FieldSink<'_>) {
        if let Some(a) = self.coding {
            field(b"content-encoding", &|out| {
                out.extend_from_slice(a.token().as_bytes())
            });
        }
        if self.vary {
            field(b"vary", &|out| out.extend_from_slice(b"Accept-Encoding"));
        }
        if let Some(tag) = self.etag {
            field(b"etag", &|out| {
                out.extend_from_slice(b"W/");
                out.extend_from_slice(tag);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Compression {
        Compression {
            algorithms: vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip],
            levels: Levels::default(),
            min_size: 100,
            types: vec![
                Box::from(&b"text/html"[..]),
                Box::from(&b"application/*"[..]),
            ],
        }
    }

    fn head(raw: &str) -> (ResponseHead, Vec<u8>) {
        let mut r = ResponseHead::default();
        let buf = raw.as_bytes().to_vec();
        r.parse(&buf, 1 << 16).unwrap().unwrap();
        (r, buf)
    }

    #[test]
    fn answers_qualify_by_type_size_status_and_fields() {
        let s = spec();
        let gz = Some(Algorithm::Gzip);
        let judge = |raw: &str| {
            let (r, b) = head(raw);
            s.judge(&r, &b, gz)
        };
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: text/HTML; charset=utf-8\r\ncontent-length: 500\r\n\r\n";
        assert_eq!(judge(ok).unwrap().coding, gz);
        let json = "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\r\n";
        assert!(judge(json).is_some(), "a wildcard type, unknown length");
        for no in [
            "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 500\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 99\r\n\r\n",
            "HTTP/1.1 206 Partial\r\ncontent-type: text/html\r\ncontent-length: 500\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-type: text/html\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncache-control: public, No-Transform\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-type: text/htmlx\r\n\r\n",
        ] {
            assert_eq!(judge(no), None, "{no}");
        }
    }

    #[test]
    fn coded_answers_get_weak_etags_vary_and_no_ranges() {
        let s = spec();
        let raw = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\netag: \"v1\"\r\naccept-ranges: bytes\r\n\r\n";
        let (r, b) = head(raw);
        let j = s.judge(&r, &b, Some(Algorithm::Brotli)).unwrap();
        let c = Coding::of(&j, &b);
        assert!(c.drops(b"ETag") && c.drops(b"accept-ranges") && !c.drops(b"vary"));
        let mut out = Vec::new();
        c.fields(&mut |name, value| {
            out.extend_from_slice(name);
            out.push(b'=');
            value(&mut out);
            out.push(b';');
        });
        assert_eq!(
            out,
            b"content-encoding=br;vary=Accept-Encoding;etag=W/\"v1\";"
        );

        // Not accepted: the answer goes as it is, but says it varies.
        let j = s.judge(&r, &b, None).unwrap();
        let c = Coding::of(&j, &b);
        assert!(!c.drops(b"etag") && !c.drops(b"accept-ranges"));
        let mut names = Vec::new();
        c.fields(&mut |name, _| names.push(name.to_vec()));
        assert_eq!(names, vec![b"vary".to_vec()]);

        // A weak ETag stays as it is; a Vary that names the field is not repeated.
        let raw = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\netag: W/\"v1\"\r\nvary: Origin, accept-encoding\r\n\r\n";
        let (r, b) = head(raw);
        let j = s.judge(&r, &b, Some(Algorithm::Gzip)).unwrap();
        let c = Coding::of(&j, &b);
        assert!(!c.drops(b"etag") && !c.vary);
    }
}
