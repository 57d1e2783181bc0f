//! A connection to an endpoint for one try: a pooled one, a stream on one of the endpoint's
//! HTTP/2 connections, or a new one within the circuit breakers; and the request's head sent on
//! it as its protocol takes it.

use std::time::Instant;

use super::super::client::Client;
use super::Exchange;
use crate::breaker::ConnCount;
use crate::endpoint::{Endpoint, UpConn};
use crate::error::{Error, ErrorKind, Retry, Side};
use crate::h2::drive::client::{H2Up, Slot};
use crate::head::Method;
use crate::http1::encode;
use crate::io::Io;
use crate::metrics::Limit;
use crate::pacing::{ConnectingSlot, OpenSlot, Waited};
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
        if h2_only {
            return self.open_h2(ep, deadline).await;
        }
        // HTTP/1.1 (or a first connection that may turn out HTTP/2): a pooled connection, else
        // a new one when the endpoint's pacing allows, else a place in its line.
        let pace = self.cluster.limits.endpoint;
        let waited_since = Instant::now();
        let wait_until = deadline.min(waited_since + self.cluster.connect_timeout);
        let mut woken = false;
        loop {
            if !fresh {
                while let Some(s) = ep.checkout(self.started, self.cluster.pool_idle_timeout) {
                    if must_be_alive && crate::sys::idle_connection_is_dead(s.stream.as_raw_fd()) {
                        continue;
                    }
                    if woken {
                        // Woken for a slot it does not need: the slot goes to the next in line.
                        ep.pacing.wake();
                    }
                    return Ok((s, true));
                }
            }
            if let Some(slots) = ep.pacing.try_start(pace, woken) {
                return self.open_http1(ep, deadline, proto, slots).await;
            }
            if fresh && ep.pacing.only_open_limit_reached(pace) {
                // A resend cannot take a pooled connection, but an idle one may hold the slot
                // it needs: closing it frees the slot.
                if let Some(idle) = ep.checkout(self.started, self.cluster.pool_idle_timeout) {
                    drop(idle);
                    if let Some(slots) = ep.pacing.try_start(pace, woken) {
                        return self.open_http1(ep, deadline, proto, slots).await;
                    }
                }
            }
            let state = &self.cv.state;
            if state.pending.get() >= self.cluster.limits.max_pending {
                state.overflowed(Limit::Pending);
                return Err((Error::internal(ErrorKind::Overflow), Instant::now()));
            }
            let pending = Pending::count(&state.pending);
            let waited = monoio::time::timeout(
                wait_until.saturating_duration_since(Instant::now()),
                ep.pacing.wait(),
            )
            .await;
            drop(pending);
            match waited {
                Ok(Waited::Handed(c)) if fresh => {
                    // A resend must go on a new connection: this one serves the next in line.
                    ep.checkin(c, Instant::now(), self.cluster.pool_max_idle);
                    woken = false;
                }
                Ok(Waited::Handed(c)) => {
                    // A request that cannot be sent twice goes only on a connection seen alive.
                    if must_be_alive && crate::sys::idle_connection_is_dead(c.stream.as_raw_fd()) {
                        drop(c);
                        woken = false;
                        continue;
                    }
                    return Ok((c, true));
                }
                Ok(Waited::Slot) => woken = true,
                Err(_) => {
                    // No connection within the connect timeout: as a connect that failed, the
                    // request never left (another endpoint may take it). The proxy's own line
                    // held it, not the endpoint: nothing is booked against the endpoint (its
                    // latency estimate, outlier detection).
                    let kind = if deadline <= Instant::now() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::ConnectFailed
                    };
                    let error = Error {
                        kind,
                        side: Side::Internal,
                        retry: Retry::NotConnected,
                    };
                    return Err((error, waited_since));
                }
            }
        }
    }

    /// A new connection for a cluster that speaks only HTTP/2 (its streams are multiplexed:
    /// no pacing line), within the circuit breakers.
    async fn open_h2(&self, ep: &Endpoint, deadline: Instant) -> Result<(UpConn, bool), Failed> {
        let state = &self.cv.state;
        self.within_breakers()?;
        let pending = Pending::count(&state.pending);
        let opening = ep.h2.opening();
        let r = Box::pin(self.connect(ep, deadline, false)).await;
        drop(opening);
        drop(pending);
        let io = r?;
        let slot = ep.h2.open(io, ConnCount::new(state.clone()));
        Ok((self.h2_stream(slot), false))
    }

    /// A new connection in the slots the endpoint's pacing gave, within the circuit breakers;
    /// an `auto` cluster's may turn out to speak HTTP/2.
    async fn open_http1(
        &self,
        ep: &Endpoint,
        deadline: Instant,
        proto: UpstreamProtocol,
        (open, connecting): (OpenSlot<UpConn>, ConnectingSlot<UpConn>),
    ) -> Result<(UpConn, bool), Failed> {
        let state = &self.cv.state;
        self.within_breakers()?;
        let pending = Pending::count(&state.pending);
        let r = Box::pin(self.connect(ep, deadline, proto == UpstreamProtocol::Http1)).await;
        drop(connecting);
        drop(pending);
        let io = r?;
        if proto.speaks_h2(&io) {
            // Counted as the endpoint's HTTP/2 connection from here on.
            drop(open);
            let slot = ep.h2.open(io, ConnCount::new(state.clone()));
            return Ok((self.h2_stream(slot), false));
        }
        Ok((UpConn::new(Io::Wire(io), state.clone(), Some(open)), false))
    }

    /// Refused (and counted) when the cluster's connection or pending limit is reached.
    fn within_breakers(&self) -> Result<(), Failed> {
        let state = &self.cv.state;
        let limits = &self.cluster.limits;
        let full = if state.connections.get() >= limits.max_connections {
            Some(Limit::Connections)
        } else if state.pending.get() >= limits.max_pending {
            Some(Limit::Pending)
        } else {
            None
        };
        match full {
            Some(limit) => {
                state.overflowed(limit);
                Err((Error::internal(ErrorKind::Overflow), Instant::now()))
            }
            None => Ok(()),
        }
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

/// One request counted in a cluster's `pending` while it waits or connects; uncounted when
/// dropped, also when the request is cancelled mid-wait (an HTTP/2 client's RST_STREAM), so
/// that the count cannot creep up to `max_pending` over time.
pub(super) struct Pending<'a>(&'a std::cell::Cell<u32>);

impl<'a> Pending<'a> {
    pub(super) fn count(pending: &'a std::cell::Cell<u32>) -> Self {
        pending.set(pending.get() + 1);
        Pending(pending)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
