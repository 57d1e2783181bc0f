//! Reaching an upstream endpoint: the protocol a cluster speaks, and opening a connection to
//! one of its endpoints (TCP, then TLS when the cluster has it), shared by the forwarding path
//! and the health checks.

use std::io;
use std::net::SocketAddr;

use monoio::net::TcpStream;

use crate::tls::ClientTls;
use crate::transport::Transport;

/// What a cluster's endpoints are spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 on pooled connections.
    #[default]
    Http1,
    /// HTTP/2: prior knowledge in cleartext, ALPN `h2` over TLS.
    Http2,
    /// Over TLS, what ALPN agrees on (h2 preferred); in cleartext, HTTP/1.1.
    Auto,
    /// HTTP/2 to another ringmesh, each request marked as having come in as HTTP/1.1.
    Mesh,
}

impl UpstreamProtocol {
    /// Whether a connection opened for this protocol speaks HTTP/2.
    pub(crate) fn speaks_h2(self, conn: &Transport) -> bool {
        match self {
            UpstreamProtocol::Http2 | UpstreamProtocol::Mesh => true,
            UpstreamProtocol::Auto => conn.is_h2(),
            UpstreamProtocol::Http1 => false,
        }
    }
}

/// Opens a connection to `addr`: TCP without Nagle's delay, then TLS with `tls`. `http1`: over
/// TLS, offer only `http/1.1` by ALPN (an upgrade to a cluster that otherwise speaks HTTP/2).
pub(crate) async fn dial(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    http1: bool,
) -> io::Result<Transport> {
    let s = TcpStream::connect_addr(addr).await?;
    let _ = s.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Transport::Plain(s));
    };
    let handshake = if http1 {
        tls.connect_http1(s).await
    } else {
        tls.connect(s).await
    };
    match handshake {
        (Some(s), _) => Ok(Transport::Tls(s)),
        (None, why) => Err(io::Error::other(why.name())),
    }
}
