//! Answers the proxy makes itself (a refusal, a failure upstream), whichever protocol carries
//! them: the HTTP/1.1 writer and the HTTP/2 encoder write the same status, fields and body.

use crate::error::ErrorKind;

/// An answer of the proxy's own.
#[derive(Debug, Clone, Copy)]
pub struct LocalReply {
    /// Why.
    pub kind: ErrorKind,
    /// The request is a gRPC call: the status goes in gRPC's form (trailers-only, 200 with
    /// `grpc-status`), as gRPC clients read it from there, not from HTTP.
    pub grpc: bool,
    /// The request was HEAD: the answer has no body.
    pub head_request: bool,
    /// When the client may try again, in whole seconds (`retry-after`).
    pub retry_after: Option<u64>,
}

impl LocalReply {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        if self.grpc { 200 } else { self.kind.status() }
    }

    /// Calls `field` with each field's name and a writer of its value, in order.
    pub fn fields(&self, mut field: impl FnMut(&'static [u8], &dyn Fn(&mut Vec<u8>))) {
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

    /// The body's length as the head declares it: the error's name on a line (none for gRPC).
    fn body_len(&self) -> usize {
        if self.grpc {
            0
        } else {
            self.kind.name().len() + 1
        }
    }

    /// Writes the body: the error's name on a line; nothing for HEAD or gRPC.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        if !self.grpc && !self.head_request {
            out.extend_from_slice(self.kind.name().as_bytes());
            out.push(b'\n');
        }
    }
}
