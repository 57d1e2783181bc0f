//! HTTP/2 (RFC 9113), both sides, written for the translation the proxy makes: from clients,
//! over TLS when ALPN agrees on `h2` and in cleartext when a connection on an `http` listener
//! starts with the preface (prior knowledge); to upstreams of clusters that speak it.
//!
//! ```text
//! frame.rs, hpack.rs   bytes ⇄ frames, header blocks ⇄ fields
//! block.rs             a received header block, decoded and checked (RFC 9113 section 8)
//! conn/                one connection's protocol state, either side: no I/O, clock or waker
//! server.rs            client's request ⇄ RequestHead; answers → header blocks
//! client.rs            RequestHead → header block; upstream's answer → ResponseHead
//! body.rs              DATA and trailers ⇄ the HTTP/1.1-framed bodies the proxy moves
//! drive/               the async tasks around a connection: reading, writing, timers
//! ```
//!
//! A stream from a client is served by the same path as an HTTP/1.1 request
//! ([`crate::proxy`]): its head is decoded straight into the protocol-neutral head the path
//! reads, and the answer's head is encoded straight from the head the path holds. Routing,
//! policies, rate limits, retries, deadlines, metrics, access logs and tap therefore hold for
//! HTTP/2 as they do for HTTP/1.1. The abuse bounds are the connection's ([`conn`]).

pub(crate) mod block;
pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod conn;
pub(crate) mod drive;
pub(crate) mod frame;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub(crate) mod hpack;
#[cfg(test)]
pub(crate) mod poll_io;
pub(crate) mod server;

pub use conn::{MAX_LOCAL_RESETS, RESET_BURST, RESETS_PER_SECOND};
pub use drive::server::MAX_STREAMS;

/// The client connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `data` could be the start of the preface.
pub(crate) fn may_be_preface(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    data[..n] == PREFACE[..n]
}

/// HTTP/2 over loopback for unit tests, with the h2 crate as the peer.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::{Future, poll_fn};
    use std::net::SocketAddr;

    use bytes::Bytes;
    use h2::RecvStream;
    use h2::server::SendResponse;

    use crate::transport::Transport;

    pub(crate) use crate::testing::block_on;

    /// Listens on loopback, hands the first stream of the first HTTP/2 connection to
    /// `serve`, then drives that connection until it closes; where it listens.
    pub(crate) fn serve_one<F, Fut>(serve: F) -> SocketAddr
    where
        F: FnOnce(http::Request<RecvStream>, SendResponse<Bytes>) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        monoio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let io = super::poll_io::PollIo::new(Transport::Plain(s), Vec::new());
            let mut conn = h2::server::handshake(io).await.unwrap();
            let (req, respond) = conn.accept().await.unwrap().unwrap();
            serve(req, respond).await;
            let _ = poll_fn(|cx| conn.poll_closed(cx)).await;
        });
        addr
    }
}
