//! The counters of a route's actions (faults, compression, mirroring), by kind.

/// What a route's actions count beside its requests (faults, compression, mirroring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A fault delayed the request.
    FaultDelay,
    /// A fault aborted it.
    FaultAbort,
    /// An answer coded with zstd, brotli, gzip.
    Zstd,
    Brotli,
    Gzip,
    /// An answer that qualified went uncoded: the worker had its most coded streams.
    CodingBusy,
    /// Bytes into the encoders, and out of them.
    CodedIn,
    CodedOut,
    /// Copies to the shadow cluster: answered (any status), failed (no answer), not sent
    /// (the shadow's limit of copies in flight was reached).
    MirrorAnswered,
    MirrorFailed,
    MirrorSkipped,
}

impl Count {
    /// Number of counts.
    pub const N: usize = 11;
}
