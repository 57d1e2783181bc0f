//! The proxy's HTTP path: client connections request by request, each request through the same
//! stages whichever protocol it came in.
//!
//! ```text
//! conn.rs      serve ─ read_head (HTTP/1.1) ──┐
//! h2.rs        a stream's head, decoded ──────┤
//! pipeline.rs  exchange: admit ─ route ─ forward ─ report
//! forward.rs     Exchange::run: pick an endpoint, tries and retries (retry.rs), relay
//! body.rs        the answer to the client, the request body to the upstream
//! reframe.rs       a body from the upstream's framing to the client's
//! coded.rs         an answer compressed on the way (route `compression`)
//! reply.rs     refusals and the proxy's own answers (error::ErrorKind → status, name)
//! direct.rs    a route's request id, and the answers a route makes itself (direct, redirect)
//! report.rs    route stats, access log, tap
//! client.rs    the client connection as the stages see it
//! ```

mod ahead;
mod body;
mod client;
mod coded;
mod conn;
mod direct;
mod forward;
mod h2;
mod pipeline;
mod reframe;
mod reply;
mod report;

pub(crate) use conn::{Accepted, serve};

use crate::head::{RequestHead, Version};
use crate::worker::state::Worker;

/// Whether the client connection can stay open after this exchange, as the client sees it.
fn client_keeps_alive(w: &Worker, req: &RequestHead) -> bool {
    req.keep_alive && !w.draining()
}

/// Whether a client of this version can take interim (1xx) answers.
fn takes_interim(v: Version) -> bool {
    v != Version::Http10
}
