//! A sidecar's inbound listener: connections from other pods to the workload's ports,
//! redirected here by `ringmesh init --inbound-port`, each served for the port it was going to.
//!
//! ```text
//! accept ─ original destination ─ the workload's port? ─┬─ TLS (first byte 0x16): mesh mTLS taken off,
//!                                                       │    the caller's identity known ─┬─ HTTP: the proxy's path
//!                                                       │                                 └─ opaque port: TCP to the app
//!                                                       ├─ cleartext, permissive port: HTTP (or TCP), no identity
//!                                                       └─ cleartext, strict port: closed
//! ```
//!
//! The first byte is peeked at, not taken, so the TLS handshake or the HTTP parser reads the
//! connection from its start.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::error::ErrorKind;
use crate::metrics::{Handshake, InboundConn};
use crate::redirect;
use crate::transport::Transport;
use crate::worker::state::Worker;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves one connection taken by the inbound listener `name`, bound at `bind`.
pub(crate) async fn serve(
    w: Rc<Worker>,
    name: Arc<str>,
    bind: SocketAddr,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let view = w.view();
    let Some((li, http)) = redirect::http_listener(&view, &name) else {
        return;
    };
    let (Some(inbound), Some(tls)) = (http.inbound.clone(), view.listeners[li].tls.clone()) else {
        return;
    };
    let handshake_timeout = http.limits.request_head_timeout;
    let stats = view.listeners[li].stats.clone();
    let dst = match redirect::original_dst(&stream) {
        Ok(dst) if !redirect::loops_back(dst, bind) => dst,
        _ => {
            stats.inbound(InboundConn::NotRedirected);
            return;
        }
    };
    let Some(port) = inbound.ports.get(&dst.port()).copied() else {
        stats.inbound(InboundConn::UndeclaredPort);
        tracing::debug!(listener = &*name, client = %peer, destination = %dst, "not a port of the workload: refused");
        return;
    };
    drop(view);
    let Some(first) = first_byte(&stream, handshake_timeout).await else {
        return;
    };
    let mesh = first == TLS_HANDSHAKE;
    if !mesh && !port.permissive {
        stats.inbound(InboundConn::RefusedPlaintext);
        tracing::debug!(listener = &*name, client = %peer, port = dst.port(), "cleartext on a strict port: refused");
        return;
    }
    stats.inbound(if mesh {
        InboundConn::Mesh
    } else {
        InboundConn::Plaintext
    });
    if !port.opaque {
        let accepted = crate::proxy::Accepted {
            stream,
            peer,
            destination: Some(dst),
            plaintext: !mesh,
        };
        crate::proxy::serve(w, name, Box::new(accepted)).await;
        return;
    }
    // An opaque port: TLS taken off (the caller's identity checked against the connection
    // policies), then bytes copied to the application as they come.
    let _guard = w.connection(stats.clone());
    let client = if mesh {
        let accept = crate::tls::accept(stream, tls);
        let (s, result) = monoio::select! {
            r = accept => r,
            _ = monoio::time::sleep(handshake_timeout) => (None, Handshake::Timeout),
        };
        stats.handshake(result);
        match s {
            Some(s) => Transport::Tls(s),
            None => return,
        }
    } else {
        Transport::Plain(stream)
    };
    let view = w.view();
    let Some(li) = view.listener_index(&name) else {
        return;
    };
    let identity = client.tls().and_then(|t| t.identity()).map(str::to_owned);
    let who = crate::policy::Caller {
        identity: identity.as_deref(),
        source: peer.ip(),
        port: dst.port(),
        egress: false,
    };
    if !crate::tcp::admit_connection(&w, &view, li, &who) {
        return;
    }
    // The port's cluster in the view now in force (the handshake may have spanned a reload).
    let Some(ci) = port_cluster(&view, &name, dst.port()) else {
        stats.local_reply(ErrorKind::NoRoute);
        return;
    };
    let via = crate::tcp::Via {
        idle_timeout: inbound.tcp_idle_timeout,
        tls: false,
    };
    crate::tcp::to_cluster(&w, view, ci, client, None, via, &stats).await;
}

/// The cluster of the workload's `port` on listener `name` of `view`.
fn port_cluster(view: &crate::worker::view::View, name: &Arc<str>, port: u16) -> Option<usize> {
    let (_, http) = redirect::http_listener(view, name)?;
    Some(http.inbound.as_ref()?.ports.get(&port)?.cluster)
}

/// The connection's first byte, peeked at (left in the socket). `None`: closed, failed, or
/// nothing within `timeout`.
async fn first_byte(stream: &TcpStream, timeout: std::time::Duration) -> Option<u8> {
    let mut byte = [0u8; 1];
    match redirect::peek(stream, &mut byte, Instant::now() + timeout).await {
        redirect::Peeked::Bytes(_) => Some(byte[0]),
        redirect::Peeked::Closed | redirect::Peeked::TimedOut => None,
    }
}
