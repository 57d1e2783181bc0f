//! The bodies of the fuzz targets in `fuzz/` (built by cargo-fuzz with `--cfg fuzzing`), also
//! replayed over the kept corpus by this crate's tests. Each takes arbitrary bytes, runs a
//! parser on them, and checks the invariants the proxy relies on; any panic is a finding.

use crate::head::{Forwarded, Framing, RequestHead, ResponseHead, Version, host_of};
use crate::http1::MAX_HEADERS;
use crate::http1::chunked::ChunkedDecoder;
use crate::http1::encode;

/// Request heads: parse, then write the upstream head; spans stay in bounds and a head that
/// parses once parses again the same way from the proxy's own output.
pub fn request_head(data: &[u8]) {
    let mut req = RequestHead::default();
    let max = 4096;
    let Ok(Some(n)) = req.parse(data, max) else {
        return;
    };
    assert!(n <= data.len().min(max));
    assert_eq!(n, req.head_len);
    for h in &req.headers {
        assert!(h.name.end as usize <= n && h.value.end as usize <= n);
    }
    if let Some(a) = req.authority {
        let _ = host_of(a.get(data));
    }
    // Accept-Encoding: whatever the fields say, the coding chosen is one they weigh above 0.
    let mut weights = crate::compress::accept::Weights::default();
    for h in &req.headers {
        if h.name.get(data).eq_ignore_ascii_case(b"accept-encoding") {
            weights.read(h.value.get(data));
        }
    }
    let all = crate::compress::Algorithm::ALL.map(|(_, a)| a);
    if let Some(a) = weights.choose(&all) {
        assert!(weights.of(a) > 0);
    }
    if req.method == crate::head::Method::Connect {
        // A CONNECT is answered by the proxy and tunneled, never forwarded as a head.
        assert!(req.path.is_empty() && req.authority.is_some() && req.upgrade.is_none());
        return;
    }
    let mut out = Vec::new();
    let trace = crate::trace::Trace::continue_or_start(
        req.traceparent.map(|s| s.get(data)),
        req.b3.map(|s| s.get(data)),
        &mut crate::rng::Rng::new(n as u64),
    );
    let fwd = Forwarded {
        client_ip: b"10.0.0.1",
        proto: b"http",
        fallback_host: b"up:80",
        deadline: None,
        trace: Some(&trace),
        identity: None,
        edits: None,
        target: None,
        authority: None,
    };
    encode::request_head(&mut out, data, &req, &fwd);
    // What the proxy sends must itself be a valid, unambiguous head with the same framing (the
    // proxy adds up to six fields, which may pass the parser's field count).
    if req.headers.len() + 6 > MAX_HEADERS {
        return;
    }
    let mut again = RequestHead::default();
    match again.parse(&out, usize::MAX) {
        Ok(Some(m)) => {
            assert_eq!(m, out.len());
            assert_eq!(again.framing, req.framing);
            assert_eq!(again.method, req.method);
            // The context written is one the next hop accepts, with the same trace.
            let tp = again.traceparent.map(|s| s.get(&out));
            let next = tp.and_then(crate::trace::parse_traceparent);
            assert_eq!(next.map(|t| t.trace_id), Some(trace.trace_id));
            if let Some(b3) = again.b3 {
                assert!(crate::trace::parse_b3(b3.get(&out)).is_some());
            }
        }
        other => panic!(
            "the proxy wrote a head it refuses: {other:?}: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// The rewrite engine: whatever the path, a prefix rewrite and regex substitutions (groups,
/// empty matches, and substitutions that write `?`, `#`, spaces and line breaks) always give a
/// valid origin-form target, which the proxy's own parser takes.
fn rewrites(data: &[u8]) {
    use crate::rewrite::{PathRewrite, Rewrite, compile, valid_target};
    use std::sync::OnceLock;
    static RULES: OnceLock<Vec<Rewrite>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let re = |re: &str, sub: &str| Rewrite {
            path: Some(PathRewrite::Regex {
                re: compile(re).unwrap_or_else(|e| panic!("{re}: {e}")),
                substitution: sub.as_bytes().into(),
            }),
            host: None,
        };
        vec![
            Rewrite {
                path: Some(PathRewrite::Prefix(b"/new/".as_slice().into())),
                host: None,
            },
            re("^/([a-z]+)/(.*)$", "/$2/$1"),
            re("", "x"),
            re("/", "? #\r\n"),
            re("(?-u:.)", "$0$0"),
        ]
    });
    let Some((&matched, target)) = data.split_first() else {
        return;
    };
    // What a parser would hand the rewrite: a target of visible ASCII.
    if target.is_empty()
        || !target
            .iter()
            .all(|b| (b'!'..=b'~').contains(b) && *b != b'#')
    {
        return;
    }
    let mut out = Vec::new();
    for r in rules {
        if !r.target(target, usize::from(matched), &mut out) {
            continue;
        }
        assert!(
            valid_target(&out),
            "a rewrite wrote {:?}",
            String::from_utf8_lossy(&out)
        );
        let mut head = b"GET ".to_vec();
        head.extend_from_slice(&out);
        head.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut req = RequestHead::default();
        assert!(
            matches!(req.parse(&head, 1 << 20), Ok(Some(_))),
            "the proxy refuses what a rewrite wrote: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// Request paths: the first byte picks the listener's rules, the rest is a request target.
/// Normalizing twice changes nothing more than normalizing once, and the path the proxy sends
/// upstream is exactly the one its policies and routes matched: normalizing it again (as the
/// next hop would) finds nothing to change.
pub fn path(data: &[u8]) {
    rewrites(data);
    use crate::path::{EscapedSlashes, PathRules, Semicolons, normalize};
    let Some((&pick, target)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        merge_slashes: pick & 1 == 0,
        escaped_slashes: match (pick >> 1) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Unescape,
        },
        semicolons: if pick & 0x10 == 0 {
            Semicolons::Reject
        } else {
            Semicolons::Keep
        },
    };
    let mut once = target.to_vec();
    if let Ok(n) = normalize(&mut once, &rules) {
        assert!(n <= target.len());
        once.truncate(n);
        let mut twice = once.clone();
        let m = normalize(&mut twice, &rules).expect("a normalized path is valid");
        assert_eq!(&twice[..m], &once[..], "normalizing again changed it");
    }
    let mut head = b"GET ".to_vec();
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut req = RequestHead::default();
    let Ok(Some(_)) = req.parse(&head, 1 << 16) else {
        return;
    };
    if req.normalize_path(&mut head, &rules).is_err() {
        return;
    }
    let matched = req.route_path.get(&head).to_vec();
    let mut out = Vec::new();
    let fwd = Forwarded {
        client_ip: b"10.0.0.1",
        proto: b"http",
        fallback_host: b"up:80",
        deadline: None,
        trace: None,
        identity: None,
        edits: None,
        target: None,
        authority: None,
    };
    encode::request_head(&mut out, &head, &req, &fwd);
    let mut sent = RequestHead::default();
    let Ok(Some(_)) = sent.parse(&out, usize::MAX) else {
        panic!(
            "the proxy wrote a head it refuses: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    let sent_path = sent.route_path.get(&out).to_vec();
    let want = if matched.is_empty() {
        &b"/"[..]
    } else {
        &matched[..]
    };
    assert_eq!(
        sent_path, want,
        "the upstream gets another path than the policy matched"
    );
    let mut again = sent_path.clone();
    let n = normalize(&mut again, &rules).expect("the sent path is valid");
    assert_eq!(
        &again[..n],
        &sent_path[..],
        "the sent path is not in normal form"
    );
}

/// Response heads: parse, decide framings for both kinds of client, write the client head.
pub fn response_head(data: &[u8]) {
    let mut resp = ResponseHead::default();
    let Ok(Some(n)) = resp.parse(data, 4096) else {
        return;
    };
    assert!(n <= data.len());
    for head_request in [false, true] {
        let body = resp.body_framing(head_request);
        if head_request {
            assert_eq!(body, Framing::None);
        }
        for (version, keep_alive) in [(Version::Http11, true), (Version::Http10, false)] {
            let cf = encode::client_framing(body, &resp, version, keep_alive);
            if version == Version::Http10 {
                assert_ne!(
                    cf.framing,
                    Framing::Chunked,
                    "HTTP/1.0 clients never get chunked"
                );
            }
            let mut out = Vec::new();
            encode::response_head(&mut out, data, &resp, cf, None);
            if resp.headers.len() + 2 > MAX_HEADERS {
                continue;
            }
            let mut again = ResponseHead::default();
            assert!(
                matches!(again.parse(&out, usize::MAX), Ok(Some(_))),
                "the proxy wrote a head it refuses: {:?}",
                String::from_utf8_lossy(&out)
            );
            coded_head(data, &resp, body, version, keep_alive);
        }
    }
}

/// A response head as sent when the route compresses: it parses again, and a coded one says
/// its coding once and declares no length.
fn coded_head(data: &[u8], resp: &ResponseHead, body: Framing, version: Version, keep: bool) {
    use crate::compress::{Algorithm, Coding, Compression, Levels};
    let spec = Compression {
        algorithms: vec![Algorithm::Gzip],
        levels: Levels::default(),
        min_size: 0,
        types: vec![Box::from(&b"text/*"[..])],
    };
    let Some(j) = spec.judge(resp, data, Some(Algorithm::Gzip)) else {
        return;
    };
    let edits = crate::head::edit::ResponseEdits {
        coding: Some(Coding::of(&j, data)),
        ..Default::default()
    };
    let cf = encode::coded_framing(body, version, keep);
    let mut out = Vec::new();
    encode::response_head(&mut out, data, resp, cf, Some(&edits));
    if resp.headers.len() + 5 > MAX_HEADERS {
        return;
    }
    let mut again = ResponseHead::default();
    let Ok(Some(_)) = again.parse(&out, usize::MAX) else {
        panic!(
            "the proxy wrote a coded head it refuses: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    let count = |name: &[u8]| {
        again
            .headers
            .iter()
            .filter(|h| h.name.get(&out).eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count(b"content-encoding"), 1);
    assert_eq!(count(b"content-length"), 0);
    assert_eq!(count(b"accept-ranges"), 0);
}

/// Chunked bodies: the result does not depend on how the bytes are split across reads.
pub fn chunked(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let whole = decode(data, data.len().max(1));
    let step = usize::from(split % 17) + 1;
    let pieces = decode(data, step);
    assert_eq!(whole, pieces, "split every {step} bytes");
}

type Decoded = (Result<(usize, bool), ()>, Vec<u8>);

fn decode(data: &[u8], step: usize) -> Decoded {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + step).min(data.len());
        let piece = &data[pos..end];
        match d.feed(piece, |r| {
            assert!(r.end <= piece.len());
            out.extend_from_slice(&piece[r]);
        }) {
            Ok(p) => {
                assert!(p.consumed <= piece.len());
                pos += p.consumed;
                if p.done {
                    assert_eq!(d.data_len(), out.len() as u64);
                    return (Ok((pos, true)), out);
                }
                assert_eq!(
                    p.consumed,
                    piece.len(),
                    "an unfinished body consumes all it is fed"
                );
            }
            Err(_) => return (Err(()), out_prefix(out)),
        }
    }
    (Ok((pos, false)), out)
}

/// Data handed out before an error depends on where reads split; only the error counts.
fn out_prefix(_: Vec<u8>) -> Vec<u8> {
    Vec::new()
}

/// Certificates: finding the SPIFFE ID never panics, and what it finds is a valid ID.
pub fn certificate(data: &[u8]) {
    if let Some(id) = crate::tls::spiffe_id(data) {
        assert!(crate::tls::valid_spiffe_id(&id), "{id}");
    }
}

/// The first bytes of a TCP connection routed by SNI: reading the ClientHello never panics, a
/// name found is a plain DNS name, and no prefix of a hello that parses is refused (the
/// parser may ask for more, never give up early).
pub fn client_hello(data: &[u8]) {
    use crate::sni::{Hello, server_name};
    let mut scratch = Vec::new();
    let whole = server_name(data, &mut scratch);
    if let Hello::Tls(Some(name)) = whole {
        assert!(
            name.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        );
    }
    if matches!(whole, Hello::Tls(_)) {
        for cut in [data.len() / 2, data.len().saturating_sub(1)] {
            let mut scratch = Vec::new();
            let r = server_name(&data[..cut], &mut scratch);
            assert!(
                matches!(r, Hello::Incomplete | Hello::Tls(_)),
                "a prefix of a hello was refused: {r:?}"
            );
        }
    }
}

/// HTTP/2 from a client, as raw bytes cut into reads at the positions the first bytes choose:
/// the server side (h2 with the proxy's settings, and the translation of each stream's head
/// into HTTP/1.1) never panics, whatever arrives.
pub fn h2_server(data: &[u8]) {
    let (cuts, input) = data.split_at(data.len().min(4));
    let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * 4).collect();
    crate::h2::fuzzing::server(input, &cuts);
}

/// HTTP/2 from an upstream, as raw bytes after a first byte that chooses how many requests are
/// open: the client side's frame handling never panics and keeps its windows bounded.
pub fn h2_client(data: &[u8]) {
    let (streams, input) = data.split_first().unwrap_or((&0, &[]));
    crate::h2::fuzzing::client(input, *streams % 9);
}

/// TLS from a client, as raw bytes cut into reads at the positions the first bytes choose:
/// the server side of the TLS adapter never panics, whatever arrives.
pub fn tls_server(data: &[u8]) {
    let (cuts, input) = data.split_at(data.len().min(4));
    let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * 8).collect();
    crate::tls::drive_server(fuzz_tls_config(), input, &cuts, b"HTTP/1.1 200 OK\r\n\r\n");
}

/// A server config with a self-signed certificate made once per process, held in memory.
fn fuzz_tls_config() -> std::sync::Arc<rustls::ServerConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ServerConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let made = rcgen::generate_simple_self_signed(vec!["fuzz.example".to_string()])
                .expect("a self-signed certificate");
            crate::tls::memory::put("fuzz-server-cert", made.cert.pem().as_bytes());
            crate::tls::memory::put("fuzz-server-key", made.key_pair.serialize_pem().as_bytes());
            let spec = crate::tls::CertSpec {
                cert: "mem:fuzz-server-cert".to_string(),
                key: "mem:fuzz-server-key".to_string(),
                sni: Vec::new(),
            };
            crate::tls::ServerTls::build("fuzz", &[spec], &["http/1.1".to_string()], None)
                .expect("fuzz TLS config")
                .config()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    //! Every input kept in `fuzz/corpus/` (seeds and past findings) replayed through the
    //! targets, so that a normal test run catches a regression the fuzzer once found.

    use std::path::Path;

    /// Runs `f` on every file of the target's corpus; a panic names the file.
    pub(crate) fn replay(target: &str, f: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| f(&data));
            assert!(result.is_ok(), "{} fails on {}", target, path.display());
            n += 1;
        }
        assert!(n > 0, "no corpus for {target}");
    }

    #[test]
    fn request_head_corpus() {
        replay("request_head", super::request_head);
    }

    #[test]
    fn path_corpus() {
        replay("path", super::path);
    }

    #[test]
    fn response_head_corpus() {
        replay("response_head", super::response_head);
    }

    #[test]
    fn chunked_corpus() {
        replay("chunked", super::chunked);
    }

    #[test]
    fn certificate_corpus() {
        replay("certificate", super::certificate);
    }

    #[test]
    fn client_hello_corpus() {
        replay("client_hello", super::client_hello);
    }

    #[test]
    fn h2_server_corpus() {
        replay("h2_server", super::h2_server);
    }

    #[test]
    fn h2_client_corpus() {
        replay("h2_client", super::h2_client);
    }

    #[test]
    fn tls_server_corpus() {
        replay("tls_server", super::tls_server);
    }
}
