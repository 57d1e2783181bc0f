//! Decoding a route's actions on its traffic beyond edits: `compression` of answers, and
//! `mirror` (copies of requests to a shadow cluster).

use super::{Decoder, Node, required};

use crate::config::model::*;
use ringmesh_core::compress::{Algorithm, DEFAULT_MIN_SIZE, DEFAULT_TYPES, Levels};

/// `compression: { algorithms: [zstd, br, gzip], min_size: 1KiB, types: [text/html, text/*],
/// levels: { gzip: 2, br: 4, zstd: 3 } }`; every key optional.
pub(super) fn decode_compression(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<CompressionConfig> {
    let f = d.mapping(node, path, &["algorithms", "min_size", "types", "levels"])?;
    let mut ok = true;
    let algorithms = match f.get("algorithms") {
        Some((n, p)) => {
            let mut out: Vec<String> = Vec::new();
            let names: Vec<&str> = Algorithm::ALL.iter().map(|(n, _)| *n).collect();
            for (n, p) in d.list(n, &p) {
                match d.choice(n, &p, &names) {
                    Some(a) if out.iter().any(|o| o == a) => {
                        d.error(&p, Some(n), format!("`{a}` is listed twice"));
                        ok = false;
                    }
                    Some(a) => out.push(a.to_string()),
                    None => ok = false,
                }
            }
            if out.is_empty() && ok {
                d.error(&p, Some(n), "at least one algorithm (zstd, br, gzip)");
                return None;
            }
            out
        }
        None => Algorithm::ALL.iter().map(|(n, _)| n.to_string()).collect(),
    };
    let min_size = match f.get("min_size") {
        Some((n, p)) => d.size(n, &p)?,
        None => DEFAULT_MIN_SIZE,
    };
    let types = match f.get("types") {
        Some((n, p)) => {
            let mut out = Vec::new();
            for (n, p) in d.list(n, &p) {
                let Some(t) = d.string(n, &p) else {
                    ok = false;
                    continue;
                };
                if !valid_media_range(&t) {
                    d.error(
                        &p,
                        Some(n),
                        "expected a media type such as text/html, or text/* (no parameters)",
                    );
                    ok = false;
                }
                out.push(t.to_ascii_lowercase());
            }
            if out.is_empty() && ok {
                d.error(&p, Some(n), "at least one media type");
                return None;
            }
            out
        }
        None => DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
    };
    let defaults = Levels::default();
    let levels = match f.get("levels") {
        Some((n, p)) => {
            let m = d.mapping(n, &p, &["gzip", "br", "zstd"])?;
            let mut level = |key: &str, min: u64, max: u64, default: u64| match m.get(key) {
                Some((n, p)) => match d.integer(n, &p, max) {
                    Some(v) if v >= min => Some(v),
                    Some(v) => {
                        d.error(&p, Some(n), format!("{v} is out of range ({min} to {max})"));
                        None
                    }
                    None => None,
                },
                None => Some(default),
            };
            // Capped where one 16 KiB step stays near a millisecond and an encoder's tables a few
            // MiB: brotli's 10 and 11 code at well under 1 MB/s, zstd's upper levels take tens
            // of MiB.
            let gzip = level("gzip", 1, 9, u64::from(defaults.gzip));
            let br = level("br", 0, 9, u64::from(defaults.brotli));
            let zstd = level("zstd", 1, 9, defaults.zstd as u64);
            LevelsConfig {
                gzip: gzip? as u32,
                br: br? as u32,
                zstd: zstd? as i32,
            }
        }
        None => LevelsConfig {
            gzip: defaults.gzip,
            br: defaults.brotli,
            zstd: defaults.zstd,
        },
    };
    ok.then_some(CompressionConfig {
        algorithms,
        min_size,
        types,
        levels,
    })
}

/// `type/subtype` or `type/*`, tokens both.
fn valid_media_range(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((kind, "*")) => token(kind),
        Some((kind, sub)) => token(kind) && token(sub),
        None => false,
    }
}

/// The largest request body a mirror copies.
const MAX_MIRROR_BODY: u64 = 16 << 20;

/// `mirror: { cluster: shadow, percent: 10, max_body: 64KiB }`: `percent` defaults to 100,
/// `max_body` to 64 KiB (a request with a larger body, or one of unknown length, is not
/// copied).
pub(super) fn decode_mirror(
    d: &mut Decoder,
    node: Node<'_, '_>,
    path: &str,
) -> Option<MirrorConfig> {
    let f = d.mapping(node, path, &["cluster", "percent", "max_body"])?;
    let (n, p) = required(d, &f, "cluster")?;
    let cluster = d.string(n, &p)?;
    let share = match f.get("percent") {
        Some((n, p)) => d.fraction(n, &p)?,
        None => 1.0,
    };
    let max_body = match f.get("max_body") {
        Some((n, p)) => {
            let v = d.size(n, &p)?;
            if v > MAX_MIRROR_BODY {
                d.error(&p, Some(n), "at most 16MiB (a copy is held in memory)");
                return None;
            }
            v
        }
        None => 64 * 1024,
    };
    Some(MirrorConfig {
        cluster,
        share,
        max_body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges() {
        for ok in [
            "text/html",
            "text/*",
            "application/vnd.api+json",
            "image/svg+xml",
        ] {
            assert!(valid_media_range(ok), "{ok}");
        }
        for bad in [
            "text",
            "*/*",
            "text/html; charset=utf-8",
            "/html",
            "text/",
            "te xt/html",
        ] {
            assert!(!valid_media_range(bad), "{bad}");
        }
    }
}
