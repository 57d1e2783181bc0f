//! ringmesh data plane.
//!
//! A shared-nothing, thread-per-core proxy: one pinned [`worker`] per core, each with its own
//! io_uring runtime, listeners, connection pools, balancer state and metrics. Configuration
//! arrives as an immutable [`snapshot::Snapshot`] that each worker swaps in without locking.
//! See ARCHITECTURE.md for the threads and one request's path through these modules.

pub mod access_log;
pub mod balance;
pub mod batch;
pub mod breaker;
pub mod buf;
pub mod cluster;
pub mod compress;
pub mod cors;
mod dial;
pub mod digits;
pub mod endpoint;
pub mod error;
pub mod failover;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod h2;
pub mod head;
pub mod health;
pub mod http1;
pub mod idle;
mod inbound;
pub(crate) mod io;
mod listener;
pub mod metrics;
mod outbound;
pub mod outlier;
pub mod pacing;
pub mod path;
pub mod pattern;
pub mod policy;
mod proxy;
pub mod ratelimit;
mod rawbuf;
mod redirect;
pub mod retry;
pub mod rewrite;
pub mod rng;
pub mod route;
pub mod snapshot;
pub mod sni;
pub mod spans;
pub mod sys;
pub mod tap;
mod task;
mod tcp;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod trace;
mod transport;
pub mod trim;
pub mod worker;
pub mod zone;

pub use error::{Error, ErrorKind};

/// Sleeps until `deadline` (std time): monoio's own timer, without reading the clock here.
pub(crate) fn sleep_until(deadline: std::time::Instant) -> monoio::time::Sleep {
    monoio::time::sleep_until(monoio::time::Instant::from_std(deadline))
}
pub use snapshot::Snapshot;
