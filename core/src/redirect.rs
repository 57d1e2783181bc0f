//! What the sidecar's listeners share about a connection `ringmesh init` redirected to them:
//! where it was going (read back from conntrack), whether sending it there would come back,
//! and the listener's settings in the view in force.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::snapshot::{HttpListener, Protocol};
use crate::worker::view::View;

/// Where a redirected connection was going. The connection's own family decides, not the
/// listener's: an IPv6 socket also takes IPv4 connections (as mapped addresses), whose
/// conntrack entry is IPv4.
pub(crate) fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let ipv6 = stream
        .local_addr()
        .is_ok_and(|a| matches!(a, SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none()));
    crate::sys::original_dst(stream.as_raw_fd(), ipv6).map(crate::sys::unmapped)
}

/// Whether sending to `dst` would reach this listener again.
pub(crate) fn loops_back(dst: SocketAddr, bind: SocketAddr) -> bool {
    dst.port() == bind.port()
        && (bind.ip().is_unspecified() || dst.ip() == bind.ip() || dst.ip().is_loopback())
}

/// What waiting for a connection's first bytes found.
pub(crate) enum Peeked {
    /// This many bytes, copied into the buffer and left in the socket.
    Bytes(usize),
    /// The client closed or failed before sending any.
    Closed,
    /// Nothing by the deadline.
    TimedOut,
}

/// Waits until the connection has bytes (or `deadline`), then copies what is there into `buf`
/// without taking it from the socket, so that whichever path takes the connection reads it
/// from its start.
pub(crate) async fn peek(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Peeked {
    loop {
        let readable = monoio::select! {
            r = stream.readable(false) => r.is_ok(),
            _ = crate::sleep_until(deadline) => return Peeked::TimedOut,
        };
        if !readable {
            return Peeked::Closed;
        }
        match crate::sys::peek(stream.as_raw_fd(), buf) {
            Ok(0) => return Peeked::Closed,
            Ok(n) => return Peeked::Bytes(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Peeked::Closed,
        }
    }
}

/// Listener `name` of `view`, when it serves HTTP: its index and settings.
pub(crate) fn http_listener<'v>(
    view: &'v View,
    name: &Arc<str>,
) -> Option<(usize, &'v HttpListener)> {
    let li = view.listener_index(name)?;
    match &view.snapshot.listeners[li].protocol {
        Protocol::Http(http) => Some((li, http)),
        Protocol::Tcp { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_on_the_listeners_own_port_is_refused() {
        let bind: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        assert!(loops_back("127.0.0.1:15001".parse().unwrap(), bind));
        assert!(loops_back("127.0.0.2:15001".parse().unwrap(), bind));
        assert!(!loops_back("10.0.0.1:15001".parse().unwrap(), bind));
        assert!(!loops_back("127.0.0.1:80".parse().unwrap(), bind));
        let any: SocketAddr = "0.0.0.0:15001".parse().unwrap();
        assert!(loops_back("10.0.0.1:15001".parse().unwrap(), any));
    }
}
