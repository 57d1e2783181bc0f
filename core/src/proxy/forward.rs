//! One request to one endpoint: take a pooled connection or connect, send the request, relay the
//! answer, pool the connection again when it can carry another request.
//!
//! A request whose body is already buffered (no body, or a small one) is sent in one write and
//! can be sent again: if a pooled connection turns out to have been closed by the upstream
//! before any byte of the answer came back, the request goes again on a fresh connection,
//! whatever its method (the upstream never saw it). A request with a streaming body is sent
//! full duplex ([`body::duplex`]) and only on a connection that is known to be alive.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use super::body::{self, ClientSide, DuplexEnd, PumpError, RelayError, Relayed, Until};
use super::{Client, client_keeps_alive};
use crate::buf::BUF_SIZE;
use crate::endpoint::Endpoint;
use crate::error::ErrorKind;
use crate::http1::encode::{self, Forwarded};
use crate::http1::{ChunkedDecoder, Framing, Method, RequestHead, ResponseHead, Version};
use crate::metrics::Outcome;
use crate::snapshot::{Cluster, HttpLimits};
use crate::worker::Worker;

/// A request on its way to an endpoint.
pub(super) struct Exchange<'a> {
    pub worker: &'a Rc<Worker>,
    pub req: &'a RequestHead,
    pub ep: &'a Rc<Endpoint>,
    pub cluster: &'a Cluster,
    pub limits: &'a HttpLimits,
    /// Route timeout: until the response head, counted from the end of the request.
    pub timeout: Duration,
    pub started: Instant,
}

/// A request answered by the upstream.
pub(super) struct Done {
    pub status: u16,
    pub client_keep_alive: bool,
}

/// A request that failed.
#[derive(Debug)]
pub(super) struct Fail {
    pub kind: ErrorKind,
    /// The status already sent to the client, if the answer had begun.
    pub status_sent: Option<u16>,
    /// The request body was read in full from the client.
    pub body_consumed: bool,
}

impl Fail {
    fn before(kind: ErrorKind, body_consumed: bool) -> Fail {
        Fail {
            kind,
            status_sent: None,
            body_consumed,
        }
    }
}

impl Exchange<'_> {
    /// Sends the request and relays the answer.
    pub async fn run(&self, c: &mut Client, resp: &mut ResponseHead) -> Result<Done, Fail> {
        let _in_flight = self.ep.begin();
        let result = match self.buffered_body(c).await {
            Ok(Some(len)) => self.send_whole(c, resp, len).await,
            // Boxed: the streaming path's state is large and rare; the common path stays small,
            // and so does the future moved into place for every request.
            Ok(None) => Box::pin(self.send_streaming(c, resp)).await,
            Err(f) => Err(f),
        };
        if let Some(outcome) = outcome_of(&result) {
            self.ep.record(outcome);
        }
        result
    }

    /// The length of the body when all of it is in the client buffer, reading a little more
    /// when a small body has not fully arrived yet. `None`: the body streams.
    async fn buffered_body(&self, c: &mut Client) -> Result<Option<usize>, Fail> {
        let head_len = self.req.head_len;
        match self.req.framing {
            Framing::None | Framing::Close => Ok(Some(0)),
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                match d.feed(&c.data()[head_len..], |_| {}) {
                    Ok(p) if p.done => {
                        if self
                            .limits
                            .max_request_body
                            .is_some_and(|m| d.data_len() > m)
                        {
                            return Err(Fail::before(ErrorKind::BodyTooLarge, false));
                        }
                        Ok(Some(p.consumed))
                    }
                    Ok(_) => Ok(None),
                    Err(_) => Err(Fail::before(ErrorKind::BadRequest, false)),
                }
            }
            Framing::Length(n) => {
                let need = head_len as u64 + n;
                if (c.data().len() as u64) >= need {
                    return Ok(Some(n as usize));
                }
                // A small body still on its way: wait for it so the request can be replayed.
                // A client waiting for 100-continue sends nothing yet.
                if self.req.expect_continue || need > BUF_SIZE as u64 {
                    return Ok(None);
                }
                c.make_room(self.worker, need as usize);
                Box::pin(self.fill(c, need as usize)).await?;
                Ok(Some(n as usize))
            }
        }
    }

    /// Reads until `c.data()` holds `need` bytes (which fit the buffer).
    async fn fill(&self, c: &mut Client, need: usize) -> Result<(), Fail> {
        let deadline = Instant::now() + self.limits.request_head_timeout;
        while c.data().len() < need {
            let (Some(stream), Some(buf)) = (c.stream.as_mut(), c.buf.take()) else {
                return Err(Fail::before(ErrorKind::ClientClosed, false));
            };
            let len = buf.len();
            let read = monoio::io::AsyncReadRent::read(
                stream,
                monoio::buf::IoBufMut::slice_mut(buf, len..),
            );
            let (res, slice) = monoio::select! {
                r = read => r,
                _ = crate::sleep_until(deadline) => {
                    return Err(Fail::before(ErrorKind::HeadTimeout, false));
                }
            };
            c.buf = Some(slice.into_inner());
            match res {
                Ok(n) if n > 0 => {}
                _ => return Err(Fail::before(ErrorKind::ClientClosed, false)),
            }
        }
        Ok(())
    }

    fn forwarded<'b>(&'b self, c: &'b Client) -> Forwarded<'b> {
        Forwarded {
            client_ip: c.ip(),
            proto: b"http",
            fallback_host: &self.ep.host,
        }
    }

    fn client_side(&self) -> ClientSide {
        ClientSide {
            version: self.req.version,
            keep_alive: client_keeps_alive(self.worker, self.req),
            head_request: self.req.method == Method::Head,
            body_idle: self.limits.idle_timeout,
        }
    }

    /// A pooled connection (unless `fresh`), else a new one.
    async fn connection(
        &self,
        fresh: bool,
        deadline: Instant,
    ) -> Result<(TcpStream, bool), ErrorKind> {
        if !fresh {
            if let Some(s) = self
                .ep
                .checkout(self.started, self.cluster.pool_idle_timeout)
            {
                return Ok((s, true));
            }
        }
        Box::pin(self.connect(deadline)).await.map(|s| (s, false))
    }

    /// A new connection within the connect timeout (and the request's deadline).
    async fn connect(&self, deadline: Instant) -> Result<TcpStream, ErrorKind> {
        let now = Instant::now();
        let budget = self
            .cluster
            .connect_timeout
            .min(deadline.saturating_duration_since(now));
        match monoio::time::timeout(budget, TcpStream::connect_addr(self.ep.addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(_)) => Err(ErrorKind::ConnectFailed),
            Err(_) if deadline <= Instant::now() => Err(ErrorKind::Timeout),
            Err(_) => Err(ErrorKind::ConnectFailed),
        }
    }

    /// The whole request is in the client buffer: one write, replayable.
    async fn send_whole(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
        body_len: usize,
    ) -> Result<Done, Fail> {
        let w = self.worker;
        let mut out = w.bufs.get();
        {
            let data = c.data();
            encode::request_head(&mut out, data, self.req, &self.forwarded(c));
            let body = self.req.head_len..self.req.head_len + body_len;
            out.extend_from_slice(&data[body]);
        }
        c.start += self.req.head_len + body_len;
        let deadline = self.started + self.timeout;
        let side = self.client_side();
        let mut fresh = false;
        loop {
            let (mut up, reused) = match self.connection(fresh, deadline).await {
                Ok(x) => x,
                Err(kind) => {
                    w.put_buf(out);
                    return Err(Fail::before(kind, true));
                }
            };
            let (sent, o) = up.write_all(out).await;
            out = o;
            if sent.is_err() {
                if reused {
                    fresh = true;
                    continue;
                }
                w.put_buf(out);
                return Err(Fail::before(ErrorKind::UpstreamReset, true));
            }
            let sent_at = Instant::now();
            let Some(client) = c.stream.as_mut() else {
                w.put_buf(out);
                return Err(Fail::before(ErrorKind::ClientClosed, true));
            };
            let started = Cell::new(false);
            let until = Until::after(self.started, self.timeout);
            let r = body::relay(w, &mut up, client, resp, side, until, &started).await;
            match r {
                Err(RelayError::Before {
                    retryable: true, ..
                }) if reused => {
                    fresh = true;
                    continue;
                }
                r => {
                    w.put_buf(out);
                    return self.finish(r, Some(up), true, sent_at, resp);
                }
            }
        }
    }

    /// The body streams: full duplex on a connection known to be alive.
    async fn send_streaming(&self, c: &mut Client, resp: &mut ResponseHead) -> Result<Done, Fail> {
        let w = self.worker;
        let mut out = w.bufs.get();
        encode::request_head(&mut out, c.data(), self.req, &self.forwarded(c));
        c.start += self.req.head_len;
        let far = Instant::now() + Duration::from_secs(3600);
        let mut fresh = false;
        let mut up = loop {
            let (mut up, reused) = match self.connection(fresh, far).await {
                Ok(x) => x,
                Err(kind) => {
                    w.put_buf(out);
                    return Err(Fail::before(kind, false));
                }
            };
            // The body cannot be replayed once read from the client, so a pooled connection
            // must be alive before anything is sent on it.
            if reused && crate::sys::idle_connection_is_dead(up.as_raw_fd()) {
                continue;
            }
            let (sent, o) = up.write_all(out).await;
            out = o;
            match sent {
                Ok(_) => break up,
                Err(_) if reused => fresh = true,
                Err(_) => {
                    w.put_buf(out);
                    return Err(Fail::before(ErrorKind::UpstreamReset, false));
                }
            }
        };
        w.put_buf(out);
        if self.req.expect_continue && self.req.version == Version::Http11 {
            let mut out = w.bufs.get();
            out.extend_from_slice(encode::CONTINUE);
            let (ok, out) = c.write(out).await;
            w.put_buf(out);
            if !ok {
                return Err(Fail::before(ErrorKind::ClientClosed, false));
            }
        }
        let sent_at = Instant::now();
        let Some(stream) = c.stream.take() else {
            return Err(Fail::before(ErrorKind::ClientClosed, false));
        };
        let (mut cr, mut cw) = stream.into_split();
        let (mut ur, mut uw) = up.into_split();
        let started = Cell::new(false);
        let end = {
            let pump = body::pump(
                w,
                &mut cr,
                &mut c.buf,
                &mut c.start,
                &mut uw,
                self.req.framing,
                self.limits.max_request_body,
                self.limits.idle_timeout,
            );
            let relay = body::relay(
                w,
                &mut ur,
                &mut cw,
                resp,
                self.client_side(),
                Until::Never,
                &started,
            );
            body::duplex(pump, relay, &started, self.timeout).await
        };
        c.stream = cr.reunite(cw).ok();
        up = match ur.reunite(uw) {
            Ok(up) => up,
            Err(_) => return Err(Fail::before(ErrorKind::UpstreamReset, false)),
        };
        let status_sent = started.get().then_some(resp.status);
        match end {
            DuplexEnd::Relayed { relay, pumped } => {
                let mut r = self.finish(relay, Some(up).filter(|_| pumped), pumped, sent_at, resp);
                if let Ok(done) = &mut r {
                    // The client's body was not read to its end: the connection cannot go on.
                    done.client_keep_alive &= pumped;
                }
                r
            }
            DuplexEnd::PumpFailed(e) => {
                let kind = match e {
                    PumpError::ClientClosed => ErrorKind::ClientClosed,
                    PumpError::BadChunk => ErrorKind::BadRequest,
                    PumpError::TooLarge => ErrorKind::BodyTooLarge,
                    PumpError::Stalled => ErrorKind::HeadTimeout,
                    PumpError::UpstreamGone => ErrorKind::UpstreamReset,
                };
                Err(Fail {
                    kind,
                    status_sent,
                    body_consumed: false,
                })
            }
            DuplexEnd::TimedOut => Err(Fail {
                kind: ErrorKind::Timeout,
                status_sent,
                body_consumed: true,
            }),
        }
    }

    /// Books the end of an exchange: latency sample, pooling, the result for the caller.
    fn finish(
        &self,
        r: Result<Relayed, RelayError>,
        up: Option<TcpStream>,
        body_consumed: bool,
        sent_at: Instant,
        resp: &ResponseHead,
    ) -> Result<Done, Fail> {
        match r {
            Ok(relayed) => {
                self.ep.observe(relayed.head_at, relayed.head_at - sent_at);
                if relayed.upstream_reusable {
                    if let Some(up) = up {
                        self.ep
                            .checkin(up, Instant::now(), self.cluster.pool_max_idle);
                    }
                }
                Ok(Done {
                    status: relayed.status,
                    client_keep_alive: relayed.client_keep_alive,
                })
            }
            Err(RelayError::Before { kind, .. }) => Err(Fail::before(kind, body_consumed)),
            Err(RelayError::After { kind }) => Err(Fail {
                kind,
                status_sent: Some(resp.status),
                body_consumed,
            }),
        }
    }
}

/// The endpoint outcome of an exchange; `None` when the client, not the upstream, ended it.
fn outcome_of(r: &Result<Done, Fail>) -> Option<Outcome> {
    match r {
        Ok(d) if d.status >= 500 => Some(Outcome::Status5xx),
        Ok(_) => Some(Outcome::Success),
        Err(f) => match f.kind {
            ErrorKind::ConnectFailed => Some(Outcome::ConnectFailed),
            ErrorKind::UpstreamReset => Some(Outcome::Reset),
            ErrorKind::UpstreamProtocol => Some(Outcome::ProtocolError),
            ErrorKind::Timeout => Some(Outcome::Timeout),
            _ if f.status_sent.is_some_and(|s| s >= 500) => Some(Outcome::Status5xx),
            _ if f.status_sent.is_some() => Some(Outcome::Success),
            _ => None,
        },
    }
}
