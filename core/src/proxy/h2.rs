//! HTTP/2 streams from clients, each served as one request by the path HTTP/1.1 requests take:
//! the head comes parsed (decoded straight from its header block), so the path starts at
//! admission, with the path normalized as an HTTP/1.1 request's is.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::client::Client;
use super::pipeline::exchange;
use super::pipeline::listener_of;
use super::reply::refuse_head;
use crate::buf::BufPool;
use crate::h2::drive::server::{H2Stream, Heads, Request, Service};
use crate::io::Io;
use crate::worker::state::Worker;

/// Serves the streams of one client connection.
pub(super) struct StreamService {
    pub w: Rc<Worker>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// The connection is TLS (X-Forwarded-Proto: https).
    pub tls: bool,
    /// On an outbound listener: where the application's connection was going.
    pub destination: Option<SocketAddr>,
}

impl Service for StreamService {
    async fn serve(&self, stream: H2Stream, req: Request) {
        let w = &self.w;
        let Request {
            mut heads,
            buf,
            refused,
        } = req;
        let mut c = Client::for_stream(Io::H2(Box::new(stream)), self.peer, self.tls, buf);
        c.destination = self.destination;
        let view = w.view();
        if let Some((li, limits)) = listener_of(&view, &self.listener) {
            let (req, resp) = &mut heads;
            // Policies, routes and the upstream all see the normalized path.
            let normalized = match c.buf.as_mut() {
                Some(buf) => req.normalize_path(buf, &limits.paths),
                None => Ok(()),
            };
            match refused.map_or(normalized, Err) {
                Err(kind) => refuse_head(w, &self.listener, &mut c, kind).await,
                Ok(()) => {
                    c.served = 1;
                    c.grpc = req.grpc;
                    exchange(w, &view, li, &mut c, req, resp).await;
                }
            }
        }
        c.release(w);
        w.put_heads(heads);
    }

    fn bufs(&self) -> &BufPool {
        &self.w.bufs
    }

    fn heads(&self) -> Heads {
        self.w.take_heads()
    }

    fn put_heads(&self, heads: Heads) {
        self.w.put_heads(heads);
    }

    fn draining(&self) -> bool {
        self.w.draining()
    }
}
