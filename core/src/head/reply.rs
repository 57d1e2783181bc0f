//! Answers the proxy makes itself (a refusal, a failure upstream), whichever protocol carries
//! them: the HTTP/1.1 writer and the HTTP/2 encoder write the same status, fields and body.

use crate::error::ErrorKind;

/// An answer of the proxy's own.
#[derive(Debug, Clone, Copy)]
pub struct LocalReply<'a> {
    /// Why.
    pub kind: ErrorKind,
    /// The request is a gRPC call: the status goes in gRPC's form (trailers-only, 200 with
    /// `grpc-status`), as gRPC clients read it from there, not from HTTP.
    pub grpc: bool,
    /// The request was HEAD: the answer has no body.
    pub head_request: bool,
    /// When the client may try again, in whole seconds (`retry-after`).
    pub retry_after: Option<u64>,
    /// The route's and cluster's answer edits (request id echoed, CORS), when the request had
    /// a route before it failed.
    pub edits: Option<&'a super::edit::ResponseEdits<'a>>,
}

/// Writes a reply's own fields (but those the edits set or remove: they are the edits'), then
/// the edits' fields. The `kept` fields are the reply's alone: never dropped nor written by an
/// edit (a gRPC answer's `content-type` and status, which its client reads it by).
fn edited(
    edits: Option<&super::edit::ResponseEdits<'_>>,
    kept: &[&[u8]],
    field: &mut super::edit::FieldSink<'_>,
    own: impl FnOnce(&mut super::edit::FieldSink<'_>),
) {
    let is_kept = |name: &[u8]| kept.iter().any(|k| k.eq_ignore_ascii_case(name));
    own(&mut |name: &[u8], value: &dyn Fn(&mut Vec<u8>)| {
        if is_kept(name) || !edits.is_some_and(|e| e.drops(name)) {
            field(name, value);
        }
    });
    if let Some(e) = edits {
        e.fields(&mut |name: &[u8], value: &dyn Fn(&mut Vec<u8>)| {
            if !is_kept(name) {
                field(name, value);
            }
        });
    }
}

/// The fields a gRPC answer the proxy makes keeps whatever a route's edits say.
const GRPC_KEPT: &[&[u8]] = &[b"content-type", b"grpc-status", b"grpc-message"];

/// An answer the proxy writes itself, whichever protocol carries it: its status, its fields,
/// its body.
pub trait OwnReply {
    /// The HTTP status.
    fn status(&self) -> u16;
    /// Calls `field` with each field's name and a writer of its value, in order.
    fn fields(&self, field: &mut super::edit::FieldSink<'_>);
    /// Writes the body (nothing for HEAD).
    fn write_body(&self, out: &mut Vec<u8>);
}

impl OwnReply for LocalReply<'_> {
    fn status(&self) -> u16 {
        if self.grpc { 200 } else { self.kind.status() }
    }

    fn fields(&self, field: &mut super::edit::FieldSink<'_>) {
        let kept = if self.grpc { GRPC_KEPT } else { &[] };
        edited(self.edits, kept, field, |f| self.own_fields(f));
    }

    /// The body: the error's name on a line; nothing for HEAD or gRPC.
    fn write_body(&self, out: &mut Vec<u8>) {
        self.write_own_body(out);
    }
}

impl LocalReply<'_> {
    fn own_fields(&self, field: &mut super::edit::FieldSink<'_>) {
        let name = self.kind.name().as_bytes();
        field(b"ringmesh-error", &|out| out.extend_from_slice(name));
        if self.grpc {
            field(b"content-type", &|out| {
                out.extend_from_slice(b"application/grpc")
            });
            field(b"grpc-status", &|out| {
                crate::digits::push_u64(out, u64::from(self.kind.grpc_status()))
            });
            field(b"grpc-message", &|out| out.extend_from_slice(name));
            field(b"content-length", &|out| out.push(b'0'));
            return;
        }
        if let Some(secs) = self.retry_after {
            field(b"retry-after", &|out| crate::digits::push_u64(out, secs));
        }
        field(b"content-type", &|out| out.extend_from_slice(b"text/plain"));
        field(b"content-length", &|out| {
            crate::digits::push_u64(out, self.body_len() as u64)
        });
    }

    fn write_own_body(&self, out: &mut Vec<u8>) {
        if !self.grpc && !self.head_request {
            out.extend_from_slice(self.kind.name().as_bytes());
            out.push(b'\n');
        }
    }
}

impl LocalReply<'_> {
    /// The body's length as the head declares it: the error's name on a line (none for gRPC).
    fn body_len(&self) -> usize {
        if self.grpc {
            0
        } else {
            self.kind.name().len() + 1
        }
    }
}

/// A route's own answer: a `direct_response`, or a redirect's (its `Location`, and a short
/// body naming it), with the route's and cluster's answer edits.
#[derive(Debug, Clone, Copy)]
pub struct DirectReply<'a> {
    pub status: u16,
    pub body: &'a [u8],
    pub location: Option<&'a [u8]>,
    pub head_request: bool,
    pub edits: Option<&'a super::edit::ResponseEdits<'a>>,
}

impl OwnReply for DirectReply<'_> {
    fn status(&self) -> u16 {
        self.status
    }

    fn fields(&self, field: &mut super::edit::FieldSink<'_>) {
        edited(self.edits, &[], field, |f| self.own_fields(f));
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        if !self.head_request && !matches!(self.status, 100..=199 | 204 | 304) {
            out.extend_from_slice(self.body);
        }
    }
}

impl DirectReply<'_> {
    fn own_fields(&self, field: &mut super::edit::FieldSink<'_>) {
        if let Some(l) = self.location {
            field(b"location", &|out| out.extend_from_slice(l));
        }
        if !self.body.is_empty() {
            field(b"content-type", &|out| {
                out.extend_from_slice(b"text/plain; charset=utf-8")
            });
        }
        // 1xx, 204 and 304 answers have no body, nor a length.
        if !matches!(self.status, 100..=199 | 204 | 304) {
            field(b"content-length", &|out| {
                crate::digits::push_u64(out, self.body.len() as u64)
            });
        }
    }
}

/// A route's injected abort (`fault.abort`): its status, or for a gRPC call a gRPC status (the
/// one configured, else the HTTP status mapped as gRPC's HTTP mapping says).
#[derive(Debug, Clone, Copy)]
pub struct FaultReply<'a> {
    pub status: u16,
    pub grpc_status: Option<u8>,
    pub grpc: bool,
    pub head_request: bool,
    pub edits: Option<&'a super::edit::ResponseEdits<'a>>,
}

impl FaultReply<'_> {
    fn grpc_code(&self) -> u8 {
        self.grpc_status.unwrap_or(match self.status {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502..=504 => 14,
            _ => 2,
        })
    }
}

const FAULT: &[u8] = b"fault-abort";

impl OwnReply for FaultReply<'_> {
    fn status(&self) -> u16 {
        if self.grpc { 200 } else { self.status }
    }

    fn fields(&self, field: &mut super::edit::FieldSink<'_>) {
        let kept = if self.grpc { GRPC_KEPT } else { &[] };
        edited(self.edits, kept, field, |f| self.own_fields(f));
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        if !self.grpc && !self.head_request {
            out.extend_from_slice(FAULT);
            out.push(b'\n');
        }
    }
}

impl FaultReply<'_> {
    fn own_fields(&self, field: &mut super::edit::FieldSink<'_>) {
        field(b"ringmesh-error", &|out| out.extend_from_slice(FAULT));
        if self.grpc {
            field(b"content-type", &|out| {
                out.extend_from_slice(b"application/grpc")
            });
            field(b"grpc-status", &|out| {
                crate::digits::push_u64(out, u64::from(self.grpc_code()))
            });
            field(b"grpc-message", &|out| out.extend_from_slice(FAULT));
            field(b"content-length", &|out| out.push(b'0'));
        } else {
            field(b"content-type", &|out| out.extend_from_slice(b"text/plain"));
            field(b"content-length", &|out| {
                crate::digits::push_u64(out, FAULT.len() as u64 + 1)
            });
        }
    }
}

/// The proxy's answer to a CORS preflight ([`crate::cors::Preflight`]).
impl OwnReply for crate::cors::Preflight<'_> {
    fn status(&self) -> u16 {
        204
    }

    fn fields(&self, field: &mut super::FieldSink<'_>) {
        field(b"vary", &|out| {
            out.extend_from_slice(crate::cors::VARY_PREFLIGHT)
        });
        if !self.allowed {
            return;
        }
        let c = self.cors;
        field(b"access-control-allow-origin", &|out| {
            out.extend_from_slice(c.allow_origin(self.origin))
        });
        field(b"access-control-allow-methods", &|out| {
            out.extend_from_slice(&c.methods)
        });
        if !c.headers.is_empty() {
            field(b"access-control-allow-headers", &|out| {
                out.extend_from_slice(&c.headers)
            });
        }
        if let Some(age) = c.max_age {
            field(b"access-control-max-age", &|out| {
                crate::digits::push_u64(out, u64::from(age))
            });
        }
        if c.credentials {
            field(b"access-control-allow-credentials", &|out| {
                out.extend_from_slice(b"true")
            });
        }
    }

    fn write_body(&self, _: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::head::edit::{HeaderEdits, ResponseEdits, Template};

    fn fields_of(r: &impl OwnReply) -> Vec<(String, String)> {
        let mut out = Vec::new();
        r.fields(&mut |name, value| {
            let mut v = Vec::new();
            value(&mut v);
            out.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        });
        out
    }

    #[test]
    fn a_routes_edits_go_on_the_proxys_error_answers_but_never_break_grpc_ones() {
        let edits = HeaderEdits {
            set: vec![(
                Box::from(&b"content-type"[..]),
                Template::parse("text/html").unwrap(),
            )],
            add: vec![(Box::from(&b"x-a"[..]), Template::parse("1").unwrap())],
            remove: vec![Box::from(&b"grpc-status"[..])],
        };
        let e = ResponseEdits {
            route: Some(&edits),
            ..Default::default()
        };
        let reply = |grpc| LocalReply {
            kind: ErrorKind::ConnectFailed,
            grpc,
            head_request: false,
            retry_after: None,
            edits: Some(&e),
        };
        let plain = fields_of(&reply(false));
        let types: Vec<_> = plain.iter().filter(|(n, _)| n == "content-type").collect();
        assert_eq!(types.len(), 1);
        assert_eq!(
            types[0].1, "text/html",
            "a plain answer's fields are the route's"
        );
        assert!(plain.iter().any(|(n, v)| n == "x-a" && v == "1"));

        let grpc = fields_of(&reply(true));
        let of = |n: &str| {
            grpc.iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(of("content-type"), ["application/grpc"]);
        assert_eq!(of("grpc-status"), ["14"]);
        assert_eq!(of("x-a"), ["1"], "the route's other edits still go");
    }
}
