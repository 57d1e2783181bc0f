//! An HTTP/2 client for the tests: the h2 crate on a current-thread tokio runtime, over
//! cleartext (prior knowledge) or TLS (ALPN `h2`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use tokio::runtime::Runtime;

/// An answer read in full.
#[derive(Debug)]
pub struct H2Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl H2Response {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/2 connection.
pub struct H2Client {
    pub rt: Runtime,
    pub send: SendRequest<Bytes>,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

impl H2Client {
    /// Cleartext HTTP/2 with prior knowledge.
    pub fn connect(addr: SocketAddr) -> H2Client {
        let rt = runtime();
        let send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        });
        H2Client { rt, send }
    }

    /// HTTP/2 over TLS; `config` must offer `h2`.
    pub fn connect_tls(
        addr: SocketAddr,
        name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<H2Client> {
        let rt = runtime();
        let name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(std::io::Error::other)?;
        let send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let (send, conn) = h2::client::handshake(tls)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, std::io::Error>(send)
        })?;
        Ok(H2Client { rt, send })
    }

    /// Runs `f` on the client's runtime.
    pub fn run<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Sends a request with `body` (and `trailers`) and reads the answer in full.
    pub fn request(
        &mut self,
        req: Request<()>,
        body: &[u8],
        trailers: Option<HeaderMap>,
    ) -> Result<H2Response, h2::Error> {
        let send = self.send.clone();
        let body = Bytes::copy_from_slice(body);
        self.rt.block_on(exchange(send, req, body, trailers))
    }

    /// A GET for `path` with authority `a.test`.
    pub fn get(&mut self, path: &str) -> Result<H2Response, h2::Error> {
        let req = Request::get(format!("http://a.test{path}"))
            .body(())
            .expect("request");
        self.request(req, b"", None)
    }
}

/// One exchange on `send` (usable concurrently: `send` is cloned per request).
pub async fn exchange(
    send: SendRequest<Bytes>,
    req: Request<()>,
    body: Bytes,
    trailers: Option<HeaderMap>,
) -> Result<H2Response, h2::Error> {
    let mut send = send.ready().await?;
    let end = body.is_empty() && trailers.is_none();
    let (resp, mut stream) = send.send_request(req, end)?;
    if !end {
        // Sent as the peer's window allows.
        let mut rest = body;
        while !rest.is_empty() {
            stream.reserve_capacity(rest.len());
            let cap = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .expect("capacity")?;
            let chunk = rest.split_to(cap.min(rest.len()));
            let last = rest.is_empty() && trailers.is_none();
            stream.send_data(chunk, last)?;
        }
        if let Some(t) = trailers {
            stream.send_trailers(t)?;
        }
    }
    let resp = resp.await?;
    let (parts, mut recv) = resp.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    Ok(H2Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        trailers,
    })
}
