//! One access-log line: the entry's fields written straight into the batch, without a formatter.

use crate::digits::push_u64;
use crate::error::ErrorKind;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

/// Writes one JSON line for `e`.
pub fn write_entry(out: &mut Vec<u8>, e: &Entry<'_>, stamp: &mut Stamp) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, e.time, stamp);
    out.extend_from_slice(b"\",");
    out.extend_from_slice(e.names);
    out.extend_from_slice(b",\"endpoint\":");
    match e.endpoint {
        Some(a) => {
            out.push(b'"');
            push_addr(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    // A method is a token (checked by the parser): nothing to escape.
    out.extend_from_slice(b",\"method\":\"");
    out.extend_from_slice(e.method);
    out.push(b'"');
    out.extend_from_slice(b",\"authority\":");
    push_opt(out, e.authority);
    out.extend_from_slice(b",\"path\":");
    push_str(out, e.path);
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, e.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, e.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    push_ms(out, e.duration);
    out.extend_from_slice(b",\"upstream_ms\":");
    match e.upstream {
        Some(d) => push_ms(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"retries\":");
    push_u64(out, u64::from(e.retries));
    out.extend_from_slice(b",\"error\":");
    push_opt(out, e.error.map(|k| k.name().as_bytes()));
    out.extend_from_slice(b",\"trace_id\":");
    match e.trace_id {
        // Hex digits: nothing to escape.
        Some(t) => {
            out.push(b'"');
            out.extend_from_slice(t);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"request_id\":");
    push_opt(out, e.request_id);
    out.extend_from_slice(b",\"upstream_path\":");
    push_opt(out, e.upstream_path);
    out.extend_from_slice(b",\"client_identity\":");
    push_opt(out, e.client_identity);
    out.extend_from_slice(b",\"client\":\"");
    push_addr(out, e.client);
    out.extend_from_slice(b"\"}\n");
}

/// RFC 3339 UTC with milliseconds.
pub(super) fn push_time(out: &mut Vec<u8>, t: SystemTime, stamp: &mut Stamp) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    if stamp.second != secs {
        stamp.text = civil(secs);
        stamp.second = secs;
    }
    out.extend_from_slice(&stamp.text);
    out.push(b'.');
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (Howard Hinnant's civil_from_days).
pub(super) fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = [0u8; 19];
    let two = |s: &mut [u8], v: u64| {
        s[0] = b'0' + (v / 10 % 10) as u8;
        s[1] = b'0' + (v % 10) as u8;
    };
    let y = y.clamp(0, 9999) as u64;
    two(&mut s[0..2], y / 100);
    two(&mut s[2..4], y % 100);
    s[4] = b'-';
    two(&mut s[5..7], m as u64);
    s[7] = b'-';
    two(&mut s[8..10], d as u64);
    s[10] = b'T';
    two(&mut s[11..13], rem / 3600);
    s[13] = b':';
    two(&mut s[14..16], rem / 60 % 60);
    s[16] = b':';
    two(&mut s[17..19], rem % 60);
    s
}

/// What one log line says about one request.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub time: SystemTime,
    /// Listener, route and cluster, written once per route by [`names`].
    pub names: &'a [u8],
    pub endpoint: Option<SocketAddr>,
    pub method: &'a [u8],
    pub authority: Option<&'a [u8]>,
    pub path: &'a [u8],
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub retries: u32,
    pub error: Option<ErrorKind>,
    pub trace_id: Option<&'a [u8; 32]>,
    /// The request id (`request_id`), when the route has one.
    pub request_id: Option<&'a [u8]>,
    /// The target sent upstream, when a route rewrote it.
    pub upstream_path: Option<&'a [u8]>,
    pub client_identity: Option<&'a [u8]>,
    pub client: SocketAddr,
}

/// The JSON members naming a request's listener, route and cluster
/// (`"listener":"edge","route":"api","cluster":"web"`), written once per route rather than
/// escaped again for every line.
pub fn names(listener: &str, route: Option<&str>, cluster: Option<&str>) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"\"listener\":");
    push_str(&mut out, listener.as_bytes());
    out.extend_from_slice(b",\"route\":");
    push_opt(&mut out, route.map(str::as_bytes));
    out.extend_from_slice(b",\"cluster\":");
    push_opt(&mut out, cluster.map(str::as_bytes));
    out.into_boxed_slice()
}

/// Each octet's digits followed by a dot, padded to four bytes, and how many of them count.
pub(super) const OCTETS: [([u8; 4], usize); 256] = {
    let mut t = [([0u8; 4], 0usize); 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = match o {
            0..10 => ([b'0' + o, b'.', 0, 0], 2),
            10..100 => ([b'0' + o / 10, b'0' + o % 10, b'.', 0], 3),
            _ => ([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, b'.'], 4),
        };
        i += 1;
    }
    t
};

/// `ip:port`; IPv4 by table (the common case, several times faster than `Display`): each
/// octet is a constant-size copy, cut to length at the end.
pub(super) fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let SocketAddr::V4(v4) = a else {
        let _ = write!(out, "[{}]:{}", a.ip(), a.port());
        return;
    };
    // Room for "255.255.255.255." and the last constant-size copy, written in place: built
    // on the stack and copied whole, the small stores would stall the wide load.
    let start = out.len();
    out.extend_from_slice(&[0u8; 16]);
    let s = &mut out[start..];
    let mut n = 0;
    for o in v4.ip().octets() {
        let (digits, len) = OCTETS[usize::from(o)];
        s[n..n + 4].copy_from_slice(&digits);
        n += len;
    }
    s[n - 1] = b':';
    out.truncate(start + n);
    push_u64(out, u64::from(a.port()));
}

/// Milliseconds with three decimals (microsecond precision).
pub(super) fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

pub(super) fn push_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of bytes read from the network: quotes, backslashes and control characters
/// escaped; bytes that are not UTF-8 become U+FFFD, so every line is valid JSON.
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    // Most values are printable ASCII with nothing to escape: copied as they are.
    // A fold without early exit, so that the check runs on whole vectors.
    let special = s.iter().fold(0u8, |any, &b| {
        any | u8::from(b.wrapping_sub(0x20) >= 0x5f) | u8::from(b == b'"') | u8::from(b == b'\\')
    });
    if special == 0 {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(v) => (v, 0),
            Err(e) => {
                let (v, _) = rest.split_at(e.valid_up_to());
                // The first `valid_up_to` bytes are UTF-8 by definition.
                let v = std::str::from_utf8(v).unwrap_or("");
                (v, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        for &b in valid.as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0..=0x1f | 0x7f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                }
                _ => out.push(b),
            }
        }
        rest = &rest[valid.len()..];
        if bad > 0 {
            out.extend_from_slice("\u{fffd}".as_bytes());
            rest = &rest[bad..];
        }
    }
    out.push(b'"');
}
