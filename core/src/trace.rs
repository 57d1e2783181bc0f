//! Trace context propagation: W3C `traceparent` and B3's single `b3` header.
//!
//! Each hop through the proxy is a span: the trace id that came in goes on, the span id that came
//! in becomes the parent, and the proxy's own span id replaces it. A request with no valid
//! context starts a trace. `tracestate` and B3's multi-header form pass through untouched.
//! Parsing is strict (lowercase hex, exact lengths, no all-zero ids): a malformed context is
//! treated as absent, as the W3C recommendation says, rather than passed on half-understood.

use crate::rng::Rng;

/// The trace context of one request as it leaves the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// The trace id: 16 bytes (a 64-bit B3 id sits in the low 8, high 8 zero).
    pub trace_id: [u8; 16],
    /// The proxy's span for this hop.
    pub span_id: [u8; 8],
    /// The span that called the proxy, if one came in.
    pub parent_id: Option<[u8; 8]>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    /// How to write `b3` upstream, when one came in.
    pub b3: B3Out,
}

/// What the proxy writes in `b3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Out {
    /// None came in: none goes out.
    None,
    /// A context came in: written with this hop's span. `wide`: a 128-bit trace id.
    Context { wide: bool, sampling: Option<u8> },
    /// Only a sampling decision came in (`0`, `1` or `d`): passed on as it was.
    SamplingOnly(u8),
}

/// A parsed `traceparent`: trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// A parsed `b3` single header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    Context {
        trace_id: [u8; 16],
        wide: bool,
        span_id: [u8; 8],
        sampling: Option<u8>,
    },
    SamplingOnly(u8),
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const UNHEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Decodes lowercase hex into `out` (exactly `2 * out.len()` characters). Without a branch
/// per digit: ids are random, so their digits would mispredict one branch in two.
fn unhex(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (UNHEX[usize::from(pair[0])], UNHEX[usize::from(pair[1])]);
        // A digit's value is below 16; a non-digit's 0xff sets the high bits.
        bad |= hi | lo;
        *o = hi << 4 | (lo & 15);
    }
    (bad < 16).then_some(())
}

/// Parses a `traceparent` value (W3C Trace Context level 1): `00-<32 hex>-<16 hex>-<2 hex>`.
/// A later version is read by its first four fields, as the recommendation asks; version `ff`
/// and all-zero ids are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    let v = v.trim_ascii();
    if v.len() < 55 {
        return None;
    }
    let mut version = [0u8];
    unhex(&v[0..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != 55 => return None,
        0 => {}
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8];
    unhex(&v[3..35], &mut trace_id)?;
    unhex(&v[36..52], &mut parent_id)?;
    unhex(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

/// Parses a `b3` single header: `{TraceId}-{SpanId}[-{Sampling}[-{ParentSpanId}]]`, or a
/// sampling decision alone (`0`, `1`, `d`).
pub fn parse_b3(v: &[u8]) -> Option<B3> {
    let v = v.trim_ascii();
    if let [s @ (b'0' | b'1' | b'd')] = v {
        return Some(B3::SamplingOnly(*s));
    }
    let mut parts = v.split(|&b| b == b'-');
    let t = parts.next()?;
    let s = parts.next()?;
    let sampling = match parts.next() {
        None => None,
        Some([x @ (b'0' | b'1' | b'd')]) => Some(*x),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        let mut p = [0u8; 8];
        unhex(parent, &mut p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let wide = match t.len() {
        32 => {
            unhex(t, &mut trace_id)?;
            true
        }
        16 => {
            unhex(t, &mut trace_id[8..])?;
            false
        }
        _ => return None,
    };
    let mut span_id = [0u8; 8];
    unhex(s, &mut span_id)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(B3::Context {
        trace_id,
        wide,
        span_id,
        sampling,
    })
}

/// A random id that is not all zero.
fn random_id<const N: usize>(rng: &mut Rng) -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for chunk in id.chunks_mut(8) {
            let r = rng.next_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

impl Trace {
    /// The context for this hop, from the request's `traceparent` and `b3` values (either may
    /// be absent or malformed). `traceparent` wins when both are valid.
    pub fn continue_or_start(
        traceparent: Option<&[u8]>,
        b3: Option<&[u8]>,
        rng: &mut Rng,
    ) -> Trace {
        let span_id = random_id::<8>(rng);
        let b3 = b3.and_then(parse_b3);
        let b3_out = match b3 {
            None => B3Out::None,
            Some(B3::SamplingOnly(s)) => B3Out::SamplingOnly(s),
            Some(B3::Context { wide, sampling, .. }) => B3Out::Context { wide, sampling },
        };
        if let Some(tp) = traceparent.and_then(parse_traceparent) {
            // b3 goes on with traceparent's trace id, wide when that id needs 128 bits.
            let b3 = match b3_out {
                B3Out::Context { wide, sampling } => B3Out::Context {
                    wide: wide || tp.trace_id[..8] != [0; 8],
                    sampling,
                },
                other => other,
            };
            return Trace {
                trace_id: tp.trace_id,
                span_id,
                parent_id: Some(tp.parent_id),
                flags: tp.flags,
                b3,
            };
        }
        match b3 {
            Some(B3::Context {
                trace_id,
                span_id: parent,
                sampling,
                ..
            }) => Trace {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags: u8::from(sampling != Some(b'0')),
                b3: b3_out,
            },
            _ => Trace {
                trace_id: random_id::<16>(rng),
                span_id,
                parent_id: None,
                flags: match b3 {
                    Some(B3::SamplingOnly(b'0')) => 0,
                    _ => 1,
                },
                b3: b3_out,
            },
        }
    }

    /// Writes the headers that carry the context upstream, each ending in CRLF.
    pub fn write_headers(&self, out: &mut Vec<u8>) {
        self.fields(|name, value| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            value(out);
            out.extend_from_slice(b"\r\n");
        });
    }

    /// Calls `field` with the name of each field that carries the context upstream and a
    /// writer of its value (`traceparent`, then `b3` when the caller spoke B3).
    pub fn fields(&self, mut field: impl FnMut(&'static [u8], &dyn Fn(&mut Vec<u8>))) {
        field(b"traceparent", &|out| self.write_traceparent(out));
        if !matches!(self.b3, B3Out::None) {
            field(b"b3", &|out| self.write_b3(out));
        }
    }

    /// The `traceparent` value: version 00, trace id, this hop's span id, flags.
    fn write_traceparent(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"00-");
        push_hex(out, &self.trace_id);
        out.push(b'-');
        push_hex(out, &self.span_id);
        out.push(b'-');
        push_hex(out, &[self.flags]);
    }

    /// The `b3` value, in the form the caller used (sampling only, or a context with the trace
    /// id as wide as it came).
    fn write_b3(&self, out: &mut Vec<u8>) {
        match self.b3 {
            B3Out::None => {}
            B3Out::SamplingOnly(s) => out.push(s),
            B3Out::Context { wide, sampling } => {
                push_hex(
                    out,
                    if wide {
                        &self.trace_id
                    } else {
                        &self.trace_id[8..]
                    },
                );
                out.push(b'-');
                push_hex(out, &self.span_id);
                if let Some(s) = sampling {
                    out.push(b'-');
                    out.push(s);
                    if let Some(p) = &self.parent_id {
                        out.push(b'-');
                        push_hex(out, p);
                    }
                }
            }
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for (i, b) in self.trace_id.iter().enumerate() {
            s[2 * i] = HEX[usize::from(b >> 4)];
            s[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn header(t: &Trace) -> String {
        let mut out = Vec::new();
        t.write_headers(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn traceparent_parses_strictly() {
        let tp = parse_traceparent(TP).unwrap();
        assert_eq!(tp.flags, 1);
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        let bad: &[&[u8]] = &[
            b"",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with more
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", // misplaced dash
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            b"00-4bf92f3577b34da6a3ce929d0e0e473\xff-00f067aa0ba902b7-01", // not ASCII
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b:-01",    // past '9'
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b), None, "{}", String::from_utf8_lossy(b));
        }
        // A later version is read by its first four fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab")
                .is_some()
        );
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01ab")
                .is_none()
        );
    }

    #[test]
    fn a_hop_keeps_the_trace_and_makes_a_new_span() {
        let mut rng = Rng::new(1);
        let t = Trace::continue_or_start(Some(TP), None, &mut rng);
        let h = header(&t);
        assert!(
            h.starts_with("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{h}"
        );
        assert!(h.ends_with("-01\r\n"));
        assert!(
            !h.contains("00f067aa0ba902b7"),
            "the span id is the proxy's own: {h}"
        );
        assert_eq!(
            t.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(&t.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        // Unsampled stays unsampled.
        let t = Trace::continue_or_start(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            None,
            &mut rng,
        );
        assert!(header(&t).ends_with("-00\r\n"));
    }

    #[test]
    fn no_or_bad_context_starts_a_trace() {
        let mut rng = Rng::new(2);
        let a = Trace::continue_or_start(None, None, &mut rng);
        let b = Trace::continue_or_start(Some(b"garbage"), Some(b"nonsense"), &mut rng);
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.parent_id, None);
        assert_eq!(a.flags, 1);
        assert_eq!(b.b3, B3Out::None);
        let h = header(&a);
        assert_eq!(h.len(), "traceparent: ".len() + 55 + 2);
        assert!(parse_traceparent(&h.as_bytes()["traceparent: ".len()..h.len() - 2]).is_some());
    }

    #[test]
    fn b3_is_continued_and_also_written_as_traceparent() {
        let mut rng = Rng::new(3);
        let t = Trace::continue_or_start(
            None,
            Some(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
            &mut rng,
        );
        let h = header(&t);
        assert!(
            h.contains("traceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-"),
            "{h}"
        );
        assert!(h.contains("b3: 80f198ee56343ba864fe8b2a57d3eff7-"), "{h}");
        assert!(
            h.ends_with("-1-e457b5a2e4d86bd1\r\n"),
            "old span is the parent: {h}"
        );
        // A 64-bit id stays 64 bits in b3 and is padded in traceparent.
        let t =
            Trace::continue_or_start(None, Some(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1"), &mut rng);
        let h = header(&t);
        assert!(
            h.contains("traceparent: 00-000000000000000064fe8b2a57d3eff7-"),
            "{h}"
        );
        assert!(h.contains("b3: 64fe8b2a57d3eff7-"), "{h}");
        // Sampling alone passes through; "0" means unsampled.
        let t = Trace::continue_or_start(None, Some(b"0"), &mut rng);
        let h = header(&t);
        assert!(
            h.contains("\r\nb3: 0\r\n") && h.contains("-00\r\nb3"),
            "{h}"
        );
        for bad in [
            &b"64fe8b2a57d3eff7"[..],
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            b"x-y",
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-1",
        ] {
            assert_eq!(parse_b3(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let mut rng = Rng::new(4);
        let t = Trace::continue_or_start(
            Some(TP),
            Some(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            &mut rng,
        );
        assert_eq!(&t.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(header(&t).contains("b3: 4bf92f3577b34da6a3ce929d0e0e4736-"));
    }
}
