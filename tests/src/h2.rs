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

/// What an HTTP/2 upstream received.
#[derive(Debug, Clone)]
pub struct H2Seen {
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// Which connection (0, 1, ...) it came on.
    pub conn: usize,
}

/// What an HTTP/2 upstream answers: status, fields, body, trailers.
pub struct H2Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(&'static str, String)>,
}

impl H2Answer {
    pub fn ok(body: impl Into<Vec<u8>>) -> H2Answer {
        H2Answer {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            trailers: Vec::new(),
        }
    }
}

impl From<H2Answer> for H2Action {
    fn from(a: H2Answer) -> H2Action {
        H2Action::Answer(a)
    }
}

/// What the upstream does with a stream.
pub enum H2Action {
    Answer(H2Answer),
    /// Reset the stream with this reason (REFUSED_STREAM: not processed).
    Reset(h2::Reason),
}

/// A cleartext HTTP/2 upstream (prior knowledge) on its own thread; `f` decides per request,
/// given the request and its index over all connections. With `goaway_after`, each connection
/// is shut down gracefully (GOAWAY) after that many streams.
pub struct H2Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<H2Seen>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Upstream {
    pub fn start(
        goaway_after: Option<usize>,
        f: impl Fn(&H2Seen, usize) -> H2Action + Send + Sync + 'static,
    ) -> H2Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<std::sync::Mutex<Vec<H2Seen>>> = Arc::default();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let f = Arc::new(f);
        let (seen2, conns2) = (seen.clone(), connections.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let conn_no = conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (f, seen) = (f.clone(), seen2.clone());
                    tokio::spawn(serve_h2(tcp, conn_no, goaway_after, f, seen));
                }
            });
        });
        H2Upstream {
            addr,
            seen,
            connections,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<H2Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

type Decide = Arc<dyn Fn(&H2Seen, usize) -> H2Action + Send + Sync>;

async fn serve_h2(
    tcp: tokio::net::TcpStream,
    conn_no: usize,
    goaway_after: Option<usize>,
    f: Decide,
    seen: Arc<std::sync::Mutex<Vec<H2Seen>>>,
) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    let mut served = 0;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        served += 1;
        if goaway_after.is_some_and(|n| served >= n) {
            conn.graceful_shutdown();
        }
        let (f, seen) = (f.clone(), seen.clone());
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut data = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let trailers = body.trailers().await.ok().flatten();
            let s = H2Seen {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                authority: parts.uri.authority().map(|a| a.to_string()),
                headers: parts.headers,
                body: data,
                trailers,
                conn: conn_no,
            };
            let index = {
                let mut v = seen.lock().expect("lock");
                v.push(s.clone());
                v.len() - 1
            };
            match f(&s, index) {
                H2Action::Reset(r) => respond.send_reset(r),
                H2Action::Answer(a) => {
                    let mut r = http::Response::builder().status(a.status);
                    for (n, v) in &a.headers {
                        r = r.header(*n, v.as_str());
                    }
                    let r = r.body(()).expect("response");
                    let end = a.body.is_empty() && a.trailers.is_empty();
                    let Ok(mut stream) = respond.send_response(r, end) else {
                        return;
                    };
                    if !a.body.is_empty() {
                        let _ = stream.send_data(Bytes::from(a.body), a.trailers.is_empty());
                    }
                    if !a.trailers.is_empty() {
                        let mut t = HeaderMap::new();
                        for (n, v) in &a.trailers {
                            t.insert(*n, v.parse().expect("value"));
                        }
                        let _ = stream.send_trailers(t);
                    }
                }
            }
        });
    }
}
