//! HTTP/2 from clients (RFC 9113): over TLS when ALPN agrees on `h2`, and in cleartext when a
//! connection on an `http` listener starts with the HTTP/2 preface (prior knowledge).
//!
//! Both sides of the protocol are written here ([`server`], [`client`]), for the translation
//! the proxy makes: each stream from a client is served by the same path as an HTTP/1.1
//! request ([`crate::proxy`]). Its header block is decoded straight into an HTTP/1.1 head, its
//! body follows (chunk-coded when the client gave no length, trailers included), and the
//! HTTP/1.1 answer the proxy writes is encoded straight into HEADERS, DATA and trailers.
//! Routing, policies, rate limits, retries, deadlines, metrics, access logs and tap therefore
//! hold for HTTP/2 as they do for HTTP/1.1.
//!
//! Abuse is bounded per connection: at most [`MAX_STREAMS`] streams at once; the receive
//! windows bound what a client can make the proxy hold; a client that resets streams before
//! they are answered faster than [`RESETS_PER_SECOND`] (after a burst of [`RESET_BURST`]:
//! rapid reset, CVE-2023-44487), or makes the proxy reset more than [`MAX_LOCAL_RESETS`]
//! streams for its protocol errors ("MadeYouReset"), gets GOAWAY `ENHANCE_YOUR_CALM`; header
//! blocks (CONTINUATION frames included) are held to the listener's `max_request_head_bytes`
//! and a few frames, and a client that makes the proxy queue more than it reads loses the
//! connection.

pub(crate) mod client;
pub(crate) mod frame;
pub(crate) mod hpack;
#[cfg(test)]
pub(crate) mod io;
pub(crate) mod server;
pub(crate) mod stream;

pub use client::drive_client;
pub(crate) use server::serve;
pub use server::{MAX_LOCAL_RESETS, MAX_STREAMS, RESET_BURST, RESETS_PER_SECOND, drive_server};

/// The client connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `data` could be the start of the preface.
pub(crate) fn may_be_preface(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    data[..n] == PREFACE[..n]
}

/// HTTP/2 over loopback for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::{Future, poll_fn};
    use std::net::SocketAddr;

    use bytes::Bytes;
    use h2::RecvStream;
    use h2::server::SendResponse;

    use crate::io::Io;

    /// Runs `f` on a runtime of the kind a worker runs.
    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

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
            let mut conn = h2::server::handshake(super::io::PollIo::new(Io::Plain(s), Vec::new()))
                .await
                .unwrap();
            let (req, respond) = conn.accept().await.unwrap().unwrap();
            serve(req, respond).await;
            let _ = poll_fn(|cx| conn.poll_closed(cx)).await;
        });
        addr
    }
}
