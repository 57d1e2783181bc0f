//! What a forwarded request carries to the next hop, whichever protocol that hop speaks: the
//! client's fields the proxy keeps, and the fields it adds (forwarding, deadline, trace context,
//! the client's identity). The HTTP/1.1 writer and the HTTP/2 encoder both walk these two
//! lists, so a request says the same upstream over either protocol.

use std::time::Duration;

use super::{Header, RequestHead};

/// What the proxy adds to a request it forwards.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address, appended to X-Forwarded-For.
    pub client_ip: &'a [u8],
    /// The scheme the client used, for X-Forwarded-Proto.
    pub proto: &'a [u8],
    /// Host to send when the client sent none (HTTP/1.0).
    pub fallback_host: &'a [u8],
    /// Time left for the answer, passed on to the next hop.
    pub deadline: Option<Duration>,
    /// The trace context for the next hop.
    pub trace: Option<&'a crate::trace::Trace>,
    /// The client's verified identity (mTLS), sent as `ringmesh-client-identity`.
    pub identity: Option<&'a str>,
    /// The route's and cluster's field edits and the request id, if any.
    pub edits: Option<&'a super::edit::RequestEdits<'a>>,
    /// The target (path and query) and authority to send instead of the request's, when the
    /// route rewrites them.
    pub target: Option<&'a [u8]>,
    pub authority: Option<&'a [u8]>,
}

impl RequestHead {
    /// The client's fields that go on as they came: not hop-by-hop, not regenerated, not
    /// X-Forwarded-For, which goes as one field of the proxy's ([`added_fields`]), and not
    /// one that an edit sets or removes.
    #[inline]
    pub fn kept_fields<'h>(
        &'h self,
        buf: &'h [u8],
        fwd: &'h Forwarded<'h>,
    ) -> impl Iterator<Item = &'h Header> + 'h {
        self.headers.iter().filter(move |h| {
            let name = h.name.get(buf);
            !(h.drop
                || self.has_xff && is_xff(name)
                || fwd.edits.is_some_and(|e| e.drops(name))
                || fwd.authority.is_some() && name.eq_ignore_ascii_case(b"host"))
        })
    }

    /// The authority the next hop is told: the request's own, else `fallback` (an HTTP/1.0
    /// request may have none).
    #[inline]
    pub fn authority_or<'a>(&self, buf: &'a [u8], fallback: &'a [u8]) -> &'a [u8] {
        self.authority.map_or(fallback, |a| a.get(buf))
    }

    /// The authority and target the next hop is told: a route's rewrites, else the request's.
    #[inline]
    pub fn sent_authority<'a>(&self, buf: &'a [u8], fwd: &Forwarded<'a>) -> &'a [u8] {
        fwd.authority
            .unwrap_or_else(|| self.authority_or(buf, fwd.fallback_host))
    }

    #[inline]
    pub fn sent_target<'a>(&self, buf: &'a [u8], fwd: &Forwarded<'a>) -> &'a [u8] {
        fwd.target.unwrap_or_else(|| self.path_or_root(buf))
    }

    /// The path the next hop is told: a request without one (`http://a`) asks for `/`.
    #[inline]
    pub fn path_or_root<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match self.path.get(buf) {
            b"" => b"/",
            p => p,
        }
    }
}

/// Calls `field` with the name of each field the proxy adds to a forwarded request, in order,
/// and a writer of its value: one X-Forwarded-For (what the client sent, then the client),
/// X-Forwarded-Proto, the deadline left (and gRPC's form of it for a gRPC call), the trace
/// context, the client's verified identity, then what the route's and cluster's edits set and
/// add, and the request id.
pub fn added_fields(
    req: &RequestHead,
    buf: &[u8],
    fwd: &Forwarded<'_>,
    mut field: impl FnMut(&[u8], &dyn Fn(&mut Vec<u8>)),
) {
    field(b"x-forwarded-for", &|out| {
        if req.has_xff {
            let sent = req
                .headers
                .iter()
                .filter(|h| !h.drop && is_xff(h.name.get(buf)));
            for h in sent {
                out.extend_from_slice(h.value.get(buf));
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(fwd.client_ip);
    });
    field(b"x-forwarded-proto", &|out| {
        out.extend_from_slice(fwd.proto)
    });
    if let Some(left) = fwd.deadline {
        field(b"ringmesh-deadline-ms", &|out| {
            crate::digits::push_u64(out, left.as_millis() as u64)
        });
        if req.grpc {
            field(b"grpc-timeout", &|out| {
                super::deadline::write_grpc_timeout(out, left)
            });
        }
    }
    if let Some(t) = fwd.trace {
        t.fields(&mut field);
    }
    if let Some(id) = fwd.identity {
        field(b"ringmesh-client-identity", &|out| {
            out.extend_from_slice(id.as_bytes())
        });
    }
    if let Some(e) = fwd.edits {
        e.fields(&mut field);
    }
}

#[inline]
fn is_xff(name: &[u8]) -> bool {
    name.len() == 15 && name.eq_ignore_ascii_case(b"x-forwarded-for")
}
