//! Request heads: what the proxy knows of a request before its body, and the rules for the
//! fields that say more than framing (deadline, gRPC, trace context, forwarding), which both
//! protocols' decoders apply through [`RequestHead::note_field`].

use std::time::Duration;

use super::{Framing, Header, Known, Span, Version};
use crate::error::ErrorKind;

/// Request method; the ones the proxy reasons about, and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// CONNECT
    Connect,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    /// The method a token names.
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Idempotent methods (RFC 9110 section 9.2.2).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// A request head, whichever protocol it came in: offsets into the buffer that holds its bytes.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The method token.
    pub method_span: Span,
    /// The path and query to send upstream (origin-form); empty for an absolute-form target
    /// with no path, which is sent as `/`.
    pub path: Span,
    /// The path without its query, for routing.
    pub route_path: Span,
    /// The protocol version.
    pub version: Version,
    /// The authority: from an absolute-form target, else from Host.
    pub authority: Option<Span>,
    /// The target was in absolute form: Host is replaced by its authority.
    pub absolute_form: bool,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The protocols of an upgrade the client asked for and that is passed on (`Upgrade` with
    /// `Connection: upgrade`, HTTP/1.1, no body, not h2c). Any other `Upgrade` is dropped.
    pub upgrade: Option<Span>,
    /// Length of the head, including its final empty line.
    pub head_len: usize,
    /// The header fields, in order, with hop-by-hop ones marked `drop`.
    pub headers: Vec<Header>,
    /// The client sent X-Forwarded-For: its fields are merged, with the client appended.
    pub has_xff: bool,
    /// The time the caller gives this request (`ringmesh-deadline-ms`, or `grpc-timeout` for
    /// gRPC), if any.
    pub deadline: Option<std::time::Duration>,
    /// A gRPC request (`content-type: application/grpc...`).
    pub grpc: bool,
    /// The `traceparent` value, if exactly one came (two make the context invalid).
    pub traceparent: Option<Span>,
    /// The `b3` value, if exactly one came.
    pub b3: Option<Span>,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            method: Method::Get,
            method_span: Span::default(),
            path: Span::default(),
            route_path: Span::default(),
            version: Version::Http11,
            authority: None,
            absolute_form: false,
            framing: Framing::None,
            keep_alive: true,
            expect_continue: false,
            upgrade: None,
            head_len: 0,
            headers: Vec::with_capacity(16),
            has_xff: false,
            deadline: None,
            grpc: false,
            traceparent: None,
            b3: None,
        }
    }
}

/// What the fields seen so far say that only the whole list settles: how many trace contexts
/// came (two of a kind make the context invalid), and the gRPC timeout (which counts only for
/// a gRPC request, known once `content-type` has come).
#[derive(Debug, Default)]
pub(crate) struct FieldNotes {
    traceparents: u8,
    b3s: u8,
    grpc_timeout: Option<Duration>,
}

impl RequestHead {
    /// Clears what the fields of the previous request set.
    pub(crate) fn clear_fields(&mut self) {
        self.expect_continue = false;
        self.upgrade = None;
        self.has_xff = false;
        self.deadline = None;
        self.grpc = false;
        self.traceparent = None;
        self.b3 = None;
        self.headers.clear();
    }

    /// Notes what a field other than a framing one says about the request, and returns whether
    /// it is dropped (hop-by-hop, or one the proxy writes itself). Both protocols' decoders call
    /// it for every such field, so that the rules are the same whichever way a request came.
    pub(crate) fn note_field(
        &mut self,
        known: Known,
        header: Header,
        value: &[u8],
        notes: &mut FieldNotes,
    ) -> bool {
        match known {
            // The proxy sets the client's identity and the scheme itself: whatever a client
            // sends as either is never passed on.
            Known::KeepAlive
            | Known::ProxyConnection
            | Known::Te
            | Known::XForwardedProto
            | Known::ClientIdentity => true,
            Known::Expect => {
                let continues = value.eq_ignore_ascii_case(b"100-continue");
                self.expect_continue |= continues;
                continues
            }
            Known::XForwardedFor => {
                self.has_xff = true;
                false
            }
            Known::Deadline => {
                // The proxy writes its own, from what is left of this one.
                if let Some(d) = super::deadline::parse_deadline_ms(value) {
                    self.deadline = Some(self.deadline.map_or(d, |p| p.min(d)));
                }
                true
            }
            Known::GrpcTimeout => {
                notes.grpc_timeout = super::deadline::parse_grpc_timeout(value);
                false
            }
            Known::ContentType => {
                self.grpc |=
                    value.len() >= 16 && value[..16].eq_ignore_ascii_case(b"application/grpc");
                false
            }
            // The proxy writes its own, with its span (crate::trace).
            Known::TraceParent => {
                notes.traceparents = notes.traceparents.saturating_add(1);
                self.traceparent = Some(header.value);
                true
            }
            Known::B3 => {
                notes.b3s = notes.b3s.saturating_add(1);
                self.b3 = Some(header.value);
                true
            }
            _ => false,
        }
    }

    /// Settles what the whole field list says: a trace context sent twice is no context, and a
    /// gRPC request's `grpc-timeout` is a deadline (rewritten from what is left of it).
    pub(crate) fn finish_fields(&mut self, buf: &[u8], notes: FieldNotes) {
        if notes.traceparents > 1 {
            self.traceparent = None;
        }
        if notes.b3s > 1 {
            self.b3 = None;
        }
        if self.grpc {
            if let Some(g) = notes.grpc_timeout {
                self.deadline = Some(self.deadline.map_or(g, |d| d.min(g)));
            }
            for h in self.headers.iter_mut() {
                if super::classify(h.name.get(buf)) == Known::GrpcTimeout {
                    h.drop = true;
                }
            }
        }
    }

    /// Rewrites the path, in place in `buf` (the buffer the head was parsed from), to the one
    /// form the upstream will read the same way ([`crate::path`]); the query is kept as it is
    /// and moves up behind a path that got shorter. A fragment anywhere in the target is
    /// refused too.
    pub fn normalize_path(
        &mut self,
        buf: &mut [u8],
        rules: &crate::path::PathRules,
    ) -> Result<(), ErrorKind> {
        if self.method == Method::Connect {
            return Ok(());
        }
        let (route, whole) = (self.route_path, self.path);
        if whole.get(buf).contains(&b'#') {
            return Err(ErrorKind::BadPath);
        }
        let range = route.start as usize..route.end as usize;
        let n = crate::path::normalize(&mut buf[range], rules).map_err(|_| ErrorKind::BadPath)?;
        let shrunk = route.len() - n;
        if shrunk > 0 {
            buf.copy_within(
                route.end as usize..whole.end as usize,
                route.start as usize + n,
            );
            self.route_path.end -= shrunk as u32;
            self.path.end -= shrunk as u32;
        }
        Ok(())
    }

    /// The value of the first header named `name` (case-insensitive), if any.
    pub fn header<'a>(&self, buf: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.get(buf))
    }

    /// Whether the body length is known to be zero.
    pub fn has_body(&self) -> bool {
        !matches!(self.framing, Framing::None)
    }
}
