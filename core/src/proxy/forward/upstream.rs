//! A connection to an endpoint for one try: a pooled one, a stream on one of the endpoint's
//! HTTP/2 connections, or a new one within the circuit breakers; and the request's head sent on
//! it as its protocol takes it.

use std::time::Instant;

use super::super::client::Client;
use super::Exchange;
use crate::breaker::ConnCount;
use crate::endpoint::{Endpoint, UpConn};
use crate::error::{Error, ErrorKind, Retry};
use crate::h2::drive::client::{H2Up, Slot};
use crate::head::Method;
use crate::http1::encode;
use crate::io::Io;
use crate::metrics::Limit;
use crate::snapshot::UpstreamProtocol;
use crate::transport::Transport;

/// A failure and when its try started (for the endpoint's latency).
pub(super) type Failed = (Error, Instant);

impl Exchange<'_> {
    /// A pooled connection (unless `fresh`), else a new one within the circuit breakers; and
    /// whether it was reused. For a cluster speaking HTTP/2, a stream on one of the endpoint's
    /// connections (a new connection when `fresh` or when they are all busy). A breaker that
    /// refuses is counted here.
    pub(super) async fn connection(
        &self,
        ep: &Endpoint,
        fresh: bool,
        deadline: Instant,
        must_be_alive: bool,
    ) -> Result<(UpConn, bool), Failed> {
        // Upgrades and CONNECT are HTTP/1.1 only: they go on an HTTP/1.1 connection whatever
        // the cluster speaks (another ringmesh takes both).
        let proto = if self.req.upgrade.is_some() || self.req.method == Method::Connect {
            UpstreamProtocol::Http1
        } else {
            self.cluster.protocol
        };
        let h2_only = matches!(proto, UpstreamProtocol::Http2 | UpstreamProtocol::Mesh);
        if !fresh && proto != UpstreamProtocol::Http1 {
            let slot = if h2_only {
                ep.h2.pick_or_wait().await
            } else {
                ep.h2.pick()
            };
            if let Some(slot) = slot {
                return Ok((self.h2_stream(slot), true));
            }
        }
        if !fresh && !h2_only {
            while let Some(s) = ep.checkout(self.started, self.cluster.pool_idle_timeout) {
                // A request that cannot be sent twice goes only on a connection seen alive: one
                // non-blocking peek, spent only on such requests.
                if must_be_alive && crate::sys::idle_connection_is_dead(s.stream.as_raw_fd()) {
                    continue;
                }
                return Ok((s, true));
            }
        }
        let state = &self.cv.state;
        let limits = &self.cluster.limits;
        let full = if state.connections.get() >= limits.max_connections {
            Some(Limit::Connections)
        } else if state.pending.get() >= limits.max_pending {
            Some(Limit::Pending)
        } else {
            None
        };
        if let Some(limit) = full {
            state.overflowed(limit);
            return Err((Error::internal(ErrorKind::Overflow), Instant::now()));
        }
        state.pending.set(state.pending.get() + 1);
        let opening = h2_only.then(|| ep.h2.opening());
        let r = Box::pin(self.connect(ep, deadline, proto == UpstreamProtocol::Http1)).await;
        let r = match r {
            Ok(io) if proto.speaks_h2(&io) => {
                let slot = ep.h2.open(io, ConnCount::new(state.clone()));
                Ok(self.h2_stream(slot))
            }
            Ok(io) => Ok(UpConn::new(Io::Wire(io), state.clone())),
            Err(e) => Err(e),
        };
        drop(opening);
        state.pending.set(state.pending.get().saturating_sub(1));
        r.map(|c| (c, false))
    }

    fn h2_stream(&self, slot: Slot) -> UpConn {
        let tls = self.cluster.tls.is_some();
        let mesh = self.cluster.protocol == UpstreamProtocol::Mesh;
        UpConn::stream(Io::H2Up(Box::new(H2Up::new(slot, tls, mesh))))
    }

    /// A new connection within the connect timeout (and the request's deadline). `http1`: over
    /// TLS, offer only `http/1.1` by ALPN (an upgrade to a cluster that otherwise speaks HTTP/2).
    async fn connect(
        &self,
        ep: &Endpoint,
        deadline: Instant,
        http1: bool,
    ) -> Result<Transport, Failed> {
        let now = Instant::now();
        let budget = self
            .cluster
            .connect_timeout
            .min(deadline.saturating_duration_since(now));
        let failed = |kind| (Error::upstream(kind, Retry::NotConnected), now);
        let open = crate::dial::dial(ep.addr, self.cluster.tls.as_ref(), http1);
        match monoio::time::timeout(budget, open).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(failed(ErrorKind::ConnectFailed)),
            Err(_) if deadline <= Instant::now() => Err(failed(ErrorKind::Timeout)),
            Err(_) => Err(failed(ErrorKind::ConnectFailed)),
        }
    }

    /// Sends the request's head to `up` as its protocol takes it, with what the proxy adds
    /// ([`crate::head::Forwarded`], with the deadline left after `now`): written into `out` for
    /// a byte stream, queued as HEADERS on an HTTP/2 stream (an error: the upstream refused the
    /// stream unsent).
    pub(super) fn send_head(
        &self,
        c: &Client,
        up: &mut Io,
        ep: &Endpoint,
        deadline: Option<Instant>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let fwd = self.forwarded(c, ep, deadline, now);
        match up.h2_up() {
            Some(h2) => h2
                .write
                .send_head(self.req, c.data(), &fwd)
                .map_err(|_| Error::upstream(ErrorKind::UpstreamReset, Retry::Refused)),
            None => {
                encode::request_head(out, c.data(), self.req, &fwd);
                Ok(())
            }
        }
    }
}
