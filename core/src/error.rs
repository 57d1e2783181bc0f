//! One error shape for the data plane, and the one table that turns an error into the answer the
//! proxy makes itself (the `ringmesh-error` names of the contract).
//!
//! An [`Error`] says what went wrong ([`ErrorKind`]), on which side of the proxy
//! ([`Side`]), and whether the request may go again ([`Retry`]). `proxy` is the only caller
//! that turns one into an HTTP answer, through [`ErrorKind::status`] and [`ErrorKind::name`].

use std::fmt;

/// What went wrong. Each kind has exactly one status and one `ringmesh-error` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed or ambiguous request (smuggling attempts included).
    BadRequest,
    /// A transfer coding or method the proxy does not implement.
    Unsupported,
    /// Request head larger than the listener allows.
    HeadTooLarge,
    /// Request body larger than the listener allows.
    BodyTooLarge,
    /// The client took too long to send its head.
    HeadTimeout,
    /// No route matched the request.
    NoRoute,
    /// The cluster has no endpoint to send to.
    NoEndpoint,
    /// A circuit breaker refused the request.
    Overflow,
    /// The upstream could not be connected to.
    ConnectFailed,
    /// The upstream closed or reset the connection before answering.
    UpstreamReset,
    /// The upstream sent a malformed response.
    UpstreamProtocol,
    /// The request ran out of time before the upstream answered.
    Timeout,
    /// The client went away before it got its answer (no answer is sent).
    ClientClosed,
    /// An access policy denied the request.
    Denied,
    /// The route's rate limit was reached.
    RateLimited,
    /// A request path that cannot be put in one form the upstream reads the same way (an
    /// encoded slash, a backslash, a fragment, a `;`, a bad `%` escape).
    BadPath,
}

impl ErrorKind {
    /// Every kind, for exhaustive tables (metrics, docs).
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::BadRequest,
        ErrorKind::Unsupported,
        ErrorKind::HeadTooLarge,
        ErrorKind::BodyTooLarge,
        ErrorKind::HeadTimeout,
        ErrorKind::NoRoute,
        ErrorKind::NoEndpoint,
        ErrorKind::Overflow,
        ErrorKind::ConnectFailed,
        ErrorKind::UpstreamReset,
        ErrorKind::UpstreamProtocol,
        ErrorKind::Timeout,
        ErrorKind::ClientClosed,
        ErrorKind::Denied,
        ErrorKind::RateLimited,
        ErrorKind::BadPath,
    ];

    /// The status of the answer the proxy makes for this kind.
    /// `ClientClosed` has no answer; 499 is what it counts as in metrics.
    pub const fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest | ErrorKind::BadPath => 400,
            ErrorKind::Unsupported => 501,
            ErrorKind::HeadTooLarge => 431,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::HeadTimeout => 408,
            ErrorKind::NoRoute => 404,
            ErrorKind::NoEndpoint | ErrorKind::Overflow => 503,
            ErrorKind::ConnectFailed | ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => {
                502
            }
            ErrorKind::Timeout => 504,
            ErrorKind::ClientClosed => 499,
            ErrorKind::Denied => 403,
            ErrorKind::RateLimited => 429,
        }
    }

    /// The value of the `ringmesh-error` header for this kind.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::HeadTooLarge => "head-too-large",
            ErrorKind::BodyTooLarge => "body-too-large",
            ErrorKind::HeadTimeout => "head-timeout",
            ErrorKind::NoRoute => "no-route",
            ErrorKind::NoEndpoint => "no-endpoint",
            ErrorKind::Overflow => "overflow",
            ErrorKind::ConnectFailed => "connect-failed",
            ErrorKind::UpstreamReset => "upstream-reset",
            ErrorKind::UpstreamProtocol => "upstream-protocol",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ClientClosed => "client-closed",
            ErrorKind::Denied => "denied",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::BadPath => "bad-path",
        }
    }

    /// The gRPC status a gRPC client gets for it (the mapping gRPC gives HTTP statuses, and
    /// Envoy's for its own answers).
    pub const fn grpc_status(self) -> u8 {
        match self {
            ErrorKind::BadRequest | ErrorKind::HeadTooLarge => 13,
            ErrorKind::BadPath => 3,
            ErrorKind::Unsupported | ErrorKind::NoRoute => 12,
            ErrorKind::BodyTooLarge | ErrorKind::RateLimited => 8,
            ErrorKind::HeadTimeout | ErrorKind::Timeout => 4,
            ErrorKind::Denied => 7,
            ErrorKind::ClientClosed => 1,
            ErrorKind::NoEndpoint
            | ErrorKind::Overflow
            | ErrorKind::ConnectFailed
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocol => 14,
        }
    }

    /// Whether the client connection must be closed after the answer: after a framing error
    /// the proxy cannot know where the next request starts.
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::BadRequest
                | ErrorKind::BadPath
                | ErrorKind::Unsupported
                | ErrorKind::HeadTooLarge
                | ErrorKind::BodyTooLarge
                | ErrorKind::HeadTimeout
                | ErrorKind::ClientClosed
        )
    }

    /// Index into per-kind counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which side of the proxy the error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Downstream,
    /// The upstream endpoint.
    Upstream,
    /// The proxy itself (routing, limits).
    Internal,
}

/// What a failure says about sending the request again: facts, which the retry rule
/// ([`crate::retry::after_failure`]) turns into a decision with the route's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing: the cause is the client's or the proxy's, or the answer had begun.
    Never,
    /// The upstream could not be connected to: the request never left.
    NotConnected,
    /// The upstream said it did not process the request (HTTP/2 REFUSED_STREAM, or a stream
    /// past its GOAWAY).
    Refused,
    /// The request could not be written: the connection was already broken.
    NotWritten,
    /// The request went out and the connection closed or reset before a byte of an answer: on
    /// a pooled connection, most likely closed by the upstream before the request came.
    NothingBack,
    /// The request went out and the try failed after that (timed out, or cut or malformed
    /// part way through the answer's head): the upstream may have acted on it.
    Sent,
}

/// A data-plane error: what went wrong, on which side, and what it says about a retry. Every
/// failure of a request's stages reaches the pipeline as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} ({side:?}, retry: {retry:?})")]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Where it came from.
    pub side: Side,
    /// What it says about sending the request again.
    pub retry: Retry,
}

impl Error {
    /// An error caused by the client.
    pub const fn downstream(kind: ErrorKind) -> Self {
        Error {
            kind,
            side: Side::Downstream,
            retry: Retry::Never,
        }
    }

    /// An error caused by the upstream.
    pub const fn upstream(kind: ErrorKind, retry: Retry) -> Self {
        Error {
            kind,
            side: Side::Upstream,
            retry,
        }
    }

    /// An error the proxy decided on itself.
    pub const fn internal(kind: ErrorKind) -> Self {
        Error {
            kind,
            side: Side::Internal,
            retry: Retry::Never,
        }
    }

    /// The same error, for an answer that had begun: nothing goes again.
    pub const fn final_(self) -> Self {
        Error {
            retry: Retry::Never,
            ..self
        }
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::internal(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_name_and_an_error_status() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert!((400..600).contains(&k.status()), "{k}");
            assert_eq!(ErrorKind::ALL[k.index()], k);
        }
    }
}
