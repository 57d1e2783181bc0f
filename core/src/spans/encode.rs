//! OTLP's protobuf, written by hand: the few messages a span export needs
//! (`opentelemetry/proto/collector/trace/v1`, `trace/v1`, `common/v1`, `resource/v1`).
//!
//! A worker appends each span to its batch as it would appear inside `ScopeSpans` (field 2,
//! length-delimited), so the exporter thread wraps a batch without re-encoding it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::trace::Trace;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request the proxy received (a listener's hop).
    Server = 2,
    /// A request the proxy made for a local application (a sidecar's outbound hop).
    Client = 3,
}

/// What a span says about one request; borrowed from the request's report.
#[derive(Debug)]
pub struct SpanData<'a> {
    pub trace: &'a Trace,
    pub kind: Kind,
    pub end: SystemTime,
    pub duration: Duration,
    pub method: &'a [u8],
    /// The request target's path, without the query (which may carry secrets).
    pub path: &'a [u8],
    pub authority: Option<&'a [u8]>,
    pub scheme: &'static str,
    pub listener: &'a str,
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub status: u16,
    /// The `ringmesh-error` kind when the proxy failed the request.
    pub error: Option<&'static str>,
    pub peer: SocketAddr,
    /// The peer's IP as text (the client connection keeps it formatted).
    pub peer_ip: &'a [u8],
    pub upstream: Option<SocketAddr>,
    pub identity: Option<&'a [u8]>,
    pub retries: u32,
}

/// Longest path, authority or identity written into a span: a span stays far below the batch
/// size whatever a client sent.
pub const MAX_FIELD: usize = 1024;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes field `field` as a length-delimited message that `body` writes after it: the body
/// goes first, then its header is rotated in front of it (a few hundred bytes moved).
pub fn nested(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    body(out);
    let len = out.len() - start;
    // A header is at most 15 bytes; built in a small array to spare an allocation.
    let mut head = [0u8; 16];
    let n = {
        let mut w = HeadWriter {
            buf: &mut head,
            len: 0,
        };
        w.tag_len(field, len as u64);
        w.len
    };
    out.extend_from_slice(&head[..n]);
    out[start..].rotate_right(n);
}

struct HeadWriter<'a> {
    buf: &'a mut [u8; 16],
    len: usize,
}

impl HeadWriter<'_> {
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }

    fn tag_len(&mut self, field: u32, len: u64) {
        self.varint(u64::from(field << 3 | u32::from(LEN)));
        self.varint(len);
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// `KeyValue { key, value: AnyValue { string_value } }`, as field `field`: lengths computed
/// ahead, so nothing is moved.
fn string_attr(out: &mut Vec<u8>, field: u32, key: &str, value: &[u8]) {
    let any = 1 + varint_len(value.len() as u64) + value.len();
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    tag(out, field, LEN);
    varint(out, kv as u64);
    bytes(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any as u64);
    bytes(out, 1, value);
}

/// `KeyValue { key, value: AnyValue { int_value } }`, as field `field`.
fn int_attr(out: &mut Vec<u8>, field: u32, key: &str, value: i64) {
    let any = 1 + varint_len(value as u64);
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    tag(out, field, LEN);
    varint(out, kv as u64);
    bytes(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any as u64);
    tag(out, 3, VARINT);
    varint(out, value as u64);
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

/// `b` as protobuf `string` content: valid UTF-8 (bytes that are not become U+FFFD, a copy
/// made only then), cut at [`MAX_FIELD`] on a character's boundary. A client's raw bytes in a
/// path must not make a strict decoder refuse the whole batch.
fn text(b: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let fixed = match std::str::from_utf8(b) {
        Ok(_) => std::borrow::Cow::Borrowed(b),
        Err(_) => std::borrow::Cow::Owned(String::from_utf8_lossy(b).into_owned().into_bytes()),
    };
    if fixed.len() <= MAX_FIELD {
        return fixed;
    }
    // UTF-8 continuation bytes are 0b10xxxxxx: back up to a character's first byte.
    let mut end = MAX_FIELD;
    while end > 0 && fixed[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    match fixed {
        std::borrow::Cow::Borrowed(b) => std::borrow::Cow::Borrowed(&b[..end]),
        std::borrow::Cow::Owned(mut v) => {
            v.truncate(end);
            std::borrow::Cow::Owned(v)
        }
    }
}

/// The host of an authority (`[v6]:port`, `host:port`, `host`) and its port, if one is given.
fn split_authority(a: &[u8]) -> (&[u8], Option<u16>) {
    let colon = match a.first() {
        Some(b'[') => a.iter().position(|&b| b == b']').map(|i| i + 1),
        _ => a.iter().rposition(|&b| b == b':'),
    };
    match colon {
        Some(i) if a.get(i) == Some(&b':') => {
            let port = std::str::from_utf8(&a[i + 1..])
                .ok()
                .and_then(|p| p.parse().ok());
            (&a[..i], port)
        }
        _ => (a, None),
    }
}

/// Appends one span as `ScopeSpans.spans` (field 2). Attributes follow OpenTelemetry's HTTP
/// semantic conventions; the proxy's own (listener, cluster, upstream, identity) are named
/// `ringmesh.*`.
pub fn span(out: &mut Vec<u8>, s: &SpanData<'_>) {
    nested(out, 2, |out| {
        bytes(out, 1, &s.trace.trace_id);
        bytes(out, 2, &s.trace.span_id);
        if let Some(p) = &s.trace.parent_id {
            bytes(out, 4, p);
        }
        // Name: `{method} {http.route}`, or the method alone.
        tag(out, 5, LEN);
        let route = s.route.map(str::as_bytes).unwrap_or_default();
        let method = text(s.method);
        let method = &method[..];
        let name_len = method.len() + if route.is_empty() { 0 } else { 1 + route.len() };
        varint(out, name_len as u64);
        out.extend_from_slice(method);
        if !route.is_empty() {
            out.push(b' ');
            out.extend_from_slice(route);
        }
        tag(out, 6, VARINT);
        varint(out, s.kind as u64);
        let end = nanos(s.end);
        let start = end.saturating_sub(s.duration.as_nanos().min(u128::from(u64::MAX)) as u64);
        tag(out, 7, FIXED64);
        out.extend_from_slice(&start.to_le_bytes());
        tag(out, 8, FIXED64);
        out.extend_from_slice(&end.to_le_bytes());
        string_attr(out, 9, "http.request.method", method);
        string_attr(out, 9, "url.path", &text(s.path));
        string_attr(out, 9, "url.scheme", s.scheme.as_bytes());
        if let Some(a) = s.authority {
            let a = text(a);
            let (host, port) = split_authority(&a);
            string_attr(out, 9, "server.address", host);
            if let Some(p) = port {
                int_attr(out, 9, "server.port", i64::from(p));
            }
        }
        if let Some(r) = s.route {
            string_attr(out, 9, "http.route", r.as_bytes());
        }
        int_attr(out, 9, "http.response.status_code", i64::from(s.status));
        string_attr(out, 9, "client.address", s.peer_ip);
        string_attr(out, 9, "network.peer.address", s.peer_ip);
        int_attr(out, 9, "network.peer.port", i64::from(s.peer.port()));
        string_attr(out, 9, "ringmesh.listener", s.listener.as_bytes());
        if let Some(c) = s.cluster {
            string_attr(out, 9, "ringmesh.cluster", c.as_bytes());
        }
        if let Some(u) = s.upstream {
            let mut buf = [0u8; 64];
            string_attr(out, 9, "ringmesh.upstream.address", write_addr(&mut buf, u));
        }
        if let Some(id) = s.identity {
            string_attr(out, 9, "ringmesh.client.identity", &text(id));
        }
        if s.retries > 0 {
            int_attr(out, 9, "ringmesh.retries", i64::from(s.retries));
        }
        if let Some(e) = s.error {
            string_attr(out, 9, "error.type", e.as_bytes());
        }
        // A server span is an error for a 5xx (a 4xx is the client's), or when the proxy failed
        // the request.
        if s.status >= 500 || s.error.is_some() {
            nested(out, 15, |out| {
                tag(out, 3, VARINT);
                varint(out, 2);
            });
        }
        // Flags: the W3C trace flags, and whether the parent is known and remote.
        let remote = if s.trace.parent_id.is_some() {
            0x300
        } else {
            0x100
        };
        tag(out, 16, FIXED32);
        out.extend_from_slice(&(u32::from(s.trace.flags) | remote).to_le_bytes());
    });
}

/// Writes `v` in decimal at `buf[*n..]`.
fn push_dec(buf: &mut [u8; 64], n: &mut usize, mut v: u32) {
    let mut d = [0u8; 10];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = d.len() - i;
    buf[*n..*n + len].copy_from_slice(&d[i..]);
    *n += len;
}

/// An address as text, without an allocation; IPv4 without the formatting machinery (the
/// common case, on every span).
fn write_addr(buf: &mut [u8; 64], a: SocketAddr) -> &[u8] {
    let len = match a {
        SocketAddr::V4(v4) => {
            let mut n = 0;
            for (k, o) in v4.ip().octets().into_iter().enumerate() {
                push_dec(buf, &mut n, u32::from(o));
                buf[n] = if k < 3 { b'.' } else { b':' };
                n += 1;
            }
            push_dec(buf, &mut n, u32::from(v4.port()));
            n
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            let mut w = &mut buf[..];
            let _ = write!(w, "{a}");
            64 - w.len()
        }
    };
    &buf[..len]
}

/// `ExportTraceServiceRequest { resource_spans: [ { resource: { attributes }, scope_spans: [ {
/// scope: { name, version }, spans } ] } ] }` around `spans` (entries written by [`span`]).
pub fn request(out: &mut Vec<u8>, service: &str, instance: &str, spans: &[&[u8]]) {
    nested(out, 1, |out| {
        nested(out, 1, |out| {
            string_attr(out, 1, "service.name", service.as_bytes());
            if !instance.is_empty() {
                string_attr(out, 1, "service.instance.id", instance.as_bytes());
            }
        });
        nested(out, 2, |out| {
            nested(out, 1, |out| {
                bytes(out, 1, b"ringmesh");
                bytes(out, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                out.extend_from_slice(s);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf reader for the tests: (field, wire type, payload) of each field.
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let x = b[0];
                *b = &b[1..];
                v |= u64::from(x & 0x7f) << shift;
                shift += 7;
                if x < 0x80 {
                    return v;
                }
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let t = varint(&mut b);
            let (field, wire) = ((t >> 3) as u32, (t & 7) as u8);
            let payload = match wire {
                VARINT => varint(&mut b).to_le_bytes().to_vec(),
                FIXED64 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                FIXED32 => {
                    let p = b[..4].to_vec();
                    b = &b[4..];
                    p
                }
                LEN => {
                    let n = varint(&mut b) as usize;
                    let p = b[..n].to_vec();
                    b = &b[n..];
                    p
                }
                _ => panic!("wire type {wire}"),
            };
            out.push((field, wire, payload));
        }
        out
    }

    #[test]
    fn nested_lengths_take_as_many_bytes_as_needed() {
        for n in [0usize, 1, 127, 128, 300, 20_000] {
            let mut out = vec![9u8];
            nested(&mut out, 2, |o| o.extend(std::iter::repeat_n(7u8, n)));
            let f = fields(&out[1..]);
            assert_eq!(f.len(), 1);
            assert_eq!((f[0].0, f[0].1, f[0].2.len()), (2, LEN, n));
        }
    }

    #[test]
    fn a_span_carries_ids_times_and_attributes() {
        let trace = Trace {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            flags: 1,
            b3: crate::trace::B3Out::None,
        };
        let end = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = SpanData {
            trace: &trace,
            kind: Kind::Server,
            end,
            duration: Duration::from_millis(5),
            method: b"GET",
            path: b"/api/x",
            authority: Some(b"[::1]:8080"),
            scheme: "http",
            listener: "edge",
            route: Some("api"),
            cluster: Some("back"),
            status: 503,
            error: Some("no-endpoint"),
            peer: "127.0.0.1:4000".parse().unwrap(),
            peer_ip: b"127.0.0.1",
            upstream: None,
            identity: None,
            retries: 2,
        };
        let mut out = Vec::new();
        span(&mut out, &s);
        let top = fields(&out);
        assert_eq!(top.len(), 1);
        let f = fields(&top[0].2);
        let get = |n: u32| f.iter().find(|x| x.0 == n).map(|x| x.2.clone());
        assert_eq!(get(1).unwrap(), vec![1; 16]);
        assert_eq!(get(2).unwrap(), vec![2; 8]);
        assert_eq!(get(4).unwrap(), vec![3; 8]);
        assert_eq!(get(5).unwrap(), b"GET api");
        let start = u64::from_le_bytes(get(7).unwrap().try_into().unwrap());
        let stop = u64::from_le_bytes(get(8).unwrap().try_into().unwrap());
        assert_eq!(stop - start, 5_000_000);
        let attrs: Vec<(String, Vec<u8>)> = f
            .iter()
            .filter(|x| x.0 == 9)
            .map(|x| {
                let kv = fields(&x.2);
                let value = fields(&kv[1].2);
                (
                    String::from_utf8(kv[0].2.clone()).unwrap(),
                    value[0].2.clone(),
                )
            })
            .collect();
        let attr = |k: &str| attrs.iter().find(|a| a.0 == k).map(|a| a.1.clone());
        assert_eq!(attr("server.address").unwrap(), b"[::1]");
        assert_eq!(attr("server.port").unwrap()[..2], 8080u16.to_le_bytes());
        assert_eq!(attr("client.address").unwrap(), b"127.0.0.1");
        assert_eq!(attr("error.type").unwrap(), b"no-endpoint");
        assert!(get(15).is_some(), "a 503 is an error");
        assert_eq!(get(16).unwrap(), 0x301u32.to_le_bytes());
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:4000",
            "255.255.255.255:65535",
            "[::1]:80",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(write_addr(&mut buf, a), a.to_string().as_bytes());
        }
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn text_fields_are_utf8_whatever_the_client_sent() {
        assert_eq!(&*text(b"/ok"), b"/ok");
        assert_eq!(&*text(b"/a\xffb"), "/a\u{fffd}b".as_bytes());
        let long = "\u{e9}".repeat(MAX_FIELD);
        let cut = text(long.as_bytes());
        assert!(cut.len() <= MAX_FIELD && std::str::from_utf8(&cut).is_ok());
        let mut bad = vec![b'x'; MAX_FIELD + 10];
        bad[3] = 0xc3;
        let cut = text(&bad);
        assert!(cut.len() <= MAX_FIELD && std::str::from_utf8(&cut).is_ok());
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(
            split_authority(b"a.example:80"),
            (&b"a.example"[..], Some(80))
        );
        assert_eq!(split_authority(b"a.example"), (&b"a.example"[..], None));
        assert_eq!(split_authority(b"[::1]"), (&b"[::1]"[..], None));
        assert_eq!(split_authority(b"[::1]:9"), (&b"[::1]"[..], Some(9)));
        assert_eq!(split_authority(b"h:bad"), (&b"h"[..], None));
    }
}
