//! One HTTP/2 stream as the HTTP/1.1 proxy path sees a client connection: reads give the
//! request body (chunk-coded when the client gave no length, trailers included), writes take
//! the HTTP/1.1 answer the proxy makes and send it as HEADERS, DATA and trailers under the
//! stream's flow control.

use std::cell::{RefCell, RefMut};
use std::future::poll_fn;
use std::io;
use std::ops::DerefMut;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use monoio::BufResult;
use monoio::buf::{IoBufMut, IoVecBufMut};

use crate::http1::chunked::write_chunk_size;
use crate::http1::encode::push_u64;
use crate::http1::{ChunkedDecoder, Framing, ResponseHead};
use crate::rawbuf;

/// The cancelable reads the connection enums ask of a stream half that reads with `read` and
/// `readv`: an HTTP/2 stream is never waited on with a read to cancel (it is never idle between
/// requests, nor tunneled), so they are plain reads.
macro_rules! read_glue {
    ($t:ty) => {
        impl $t {
            pub(crate) async fn cancelable_read<T: monoio::buf::IoBufMut>(
                &mut self,
                buf: T,
                _c: monoio::io::CancelHandle,
            ) -> monoio::BufResult<usize, T> {
                self.read(buf).await
            }

            pub(crate) async fn cancelable_readv<T: monoio::buf::IoVecBufMut>(
                &mut self,
                buf: T,
                _c: monoio::io::CancelHandle,
            ) -> monoio::BufResult<usize, T> {
                self.readv(buf).await
            }
        }
    };
}

/// The writes the connection enums ask of a stream half that takes the bytes written with
/// `take` (all of them, or an error).
macro_rules! write_glue {
    ($t:ty) => {
        impl $t {
            pub(crate) async fn write<T: monoio::buf::IoBuf>(
                &mut self,
                buf: T,
            ) -> monoio::BufResult<usize, T> {
                let r = self.take(crate::rawbuf::bytes(&buf)).await;
                (r.map(|_| monoio::buf::IoBuf::bytes_init(&buf)), buf)
            }

            pub(crate) async fn writev<T: monoio::buf::IoVecBuf>(
                &mut self,
                buf: T,
            ) -> monoio::BufResult<usize, T> {
                let mut total = 0;
                for i in 0..monoio::buf::IoVecBuf::read_iovec_len(&buf) {
                    let part = crate::rawbuf::iovec(&buf, i);
                    if let Err(e) = self.take(part).await {
                        return (Err(e), buf);
                    }
                    total += part.len();
                }
                (Ok(total), buf)
            }

            pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use {read_glue, write_glue};

/// Longest answer head the proxy writes (it wrote it itself: a bound, not a limit in use).
const MAX_HEAD: usize = 256 * 1024;

/// The request side: the body as HTTP/1.1 bytes.
pub(crate) struct H2Recv {
    body: RecvStream,
    /// The body is presented chunk-coded (the client sent no content-length).
    chunked: bool,
    /// Framing bytes to hand out before `data` (a chunk-size line, CRLFs, the last chunk).
    framing: Vec<u8>,
    framing_at: usize,
    /// Body bytes received and not yet handed out.
    data: Bytes,
    /// CRLF after `data` is owed (chunked).
    crlf_owed: bool,
    done: bool,
    /// A failure met while handing out bytes without waiting, reported by the next read.
    failed: Option<io::Error>,
    /// The connection's verified client identity (mTLS).
    pub identity: Option<Rc<str>>,
}

/// The answer side, shared with the stream's task (which watches for the client's reset).
pub(crate) type Respond = Rc<RefCell<SendState>>;

/// The stream's sending state.
pub(crate) struct SendState {
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    /// The answer was sent in full (END_STREAM).
    pub finished: bool,
}

impl SendState {
    pub(crate) fn new(respond: SendResponse<Bytes>) -> Respond {
        Rc::new(RefCell::new(SendState {
            respond,
            send: None,
            finished: false,
        }))
    }

    /// Resolves when the client resets the stream.
    pub(crate) fn poll_reset(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Reason, h2::Error>> {
        match &mut self.send {
            Some(s) => s.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        }
    }

    /// Sends a whole answer without a body.
    pub(crate) fn send_response(&mut self, r: Response<()>) -> Result<(), h2::Error> {
        self.respond.send_response(r, true)?;
        self.finished = true;
        Ok(())
    }

    /// Ends an answer that cannot be completed: the client sees the stream reset.
    pub(crate) fn abort(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        match &mut self.send {
            Some(s) => s.send_reset(Reason::INTERNAL_ERROR),
            None => self.respond.send_reset(Reason::INTERNAL_ERROR),
        }
    }
}

/// How the answer's body is being turned into DATA.
enum BodyOut {
    /// Still reading the head.
    Head,
    Length(u64),
    Chunked(ChunkedOut),
    /// Until the proxy shuts the stream down.
    UntilEnd,
    Done,
}

/// The answer side: HTTP/1.1 bytes in, HTTP/2 frames out.
pub(crate) struct H2Send {
    state: Respond,
    head: Vec<u8>,
    body: BodyOut,
    /// The request was HEAD: the answer has no body whatever its fields say.
    head_request: bool,
}

/// A stream whole.
pub(crate) struct H2Stream {
    pub recv: H2Recv,
    pub send: H2Send,
}

impl H2Recv {
    /// A body (a client's request's, or an upstream's answer's) as HTTP/1.1 bytes, chunk-coded
    /// when `chunked`.
    pub(crate) fn new(body: RecvStream, chunked: bool) -> H2Recv {
        H2Recv {
            done: body.is_end_stream() && !chunked,
            body,
            chunked,
            framing: Vec::new(),
            framing_at: 0,
            data: Bytes::new(),
            crlf_owed: false,
            failed: None,
            identity: None,
        }
    }
}

impl H2Stream {
    pub(crate) fn new(
        body: RecvStream,
        chunked: bool,
        state: Respond,
        head_request: bool,
        identity: Option<Rc<str>>,
    ) -> H2Stream {
        let mut recv = H2Recv::new(body, chunked);
        recv.identity = identity;
        H2Stream {
            recv,
            send: H2Send {
                state,
                head: Vec::new(),
                body: BodyOut::Head,
                head_request,
            },
        }
    }
}

pub(crate) fn h2_error(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

impl H2Recv {
    /// Whether there are bytes to hand out (false: the body has ended), once there are.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        loop {
            if self.framing_at < self.framing.len() || !self.data.is_empty() {
                return Poll::Ready(Ok(true));
            }
            self.framing.clear();
            self.framing_at = 0;
            if self.crlf_owed {
                self.crlf_owed = false;
                self.framing.extend_from_slice(b"\r\n");
                continue;
            }
            if self.done {
                return Poll::Ready(Ok(false));
            }
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(data)) => {
                    if self.chunked {
                        write_chunk_size(&mut self.framing, data.len());
                        self.crlf_owed = true;
                    }
                    self.data = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => {
                    // The end of DATA is seen again when polled again, so the trailers may
                    // be waited for.
                    if self.chunked {
                        let trailers = ready!(self.body.poll_trailers(cx)).map_err(h2_error)?;
                        self.framing.extend_from_slice(b"0\r\n");
                        for (name, value) in trailers.iter().flatten() {
                            self.framing.extend_from_slice(name.as_str().as_bytes());
                            self.framing.extend_from_slice(b": ");
                            self.framing.extend_from_slice(value.as_bytes());
                            self.framing.extend_from_slice(b"\r\n");
                        }
                        self.framing.extend_from_slice(b"\r\n");
                    }
                    self.done = true;
                }
            }
        }
    }

    /// Waits until there are bytes to hand out; false at the end of the body.
    async fn ready(&mut self) -> io::Result<bool> {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Copies into `buf`, after its first `at` bytes, what can be handed out without waiting;
    /// how much. A failure is kept for the next read: these bytes go first.
    pub(crate) fn fill_now<T: IoBufMut>(&mut self, buf: &mut T, mut at: usize) -> usize {
        let start = at;
        // Nothing waits on this poll: the next read polls again with its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        while at < buf.bytes_total() {
            match self.poll_ready(&mut cx) {
                Poll::Ready(Ok(true)) => {
                    let n = rawbuf::fill_at(buf, at, self.next_bytes());
                    self.consume(n);
                    at += n;
                }
                Poll::Ready(Err(e)) => {
                    self.failed = Some(e);
                    break;
                }
                Poll::Ready(Ok(false)) | Poll::Pending => break,
            }
        }
        at - start
    }

    /// The bytes to hand out next.
    fn next_bytes(&self) -> &[u8] {
        if self.framing_at < self.framing.len() {
            &self.framing[self.framing_at..]
        } else {
            &self.data
        }
    }

    /// `n` bytes of [`next_bytes`](Self::next_bytes) were handed out.
    fn consume(&mut self, n: usize) {
        if self.framing_at < self.framing.len() {
            self.framing_at += n;
        } else {
            let _ = self.data.split_to(n);
            // Consumed: the client may send as much again.
            let _ = self.body.flow_control().release_capacity(n);
        }
    }
}

impl H2Send {
    /// Takes bytes of the HTTP/1.1 answer; all of them are consumed.
    async fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !matches!(self.body, BodyOut::Head) {
            return self.body_bytes(bytes).await;
        }
        // The forwarding path writes a head whole: it is parsed where it is, and kept only
        // when it comes in parts.
        let mut kept = std::mem::take(&mut self.head);
        if !kept.is_empty() {
            if kept.len() + bytes.len() > MAX_HEAD {
                return Err(io::ErrorKind::InvalidData.into());
            }
            kept.extend_from_slice(bytes);
        }
        let data: &[u8] = if kept.is_empty() { bytes } else { &kept };
        let (done, at) = self.send_head(data)?;
        if done {
            return self.body_bytes(&data[at..]).await;
        }
        // Interim answers before `at` are sent; the rest waits for more.
        if kept.is_empty() {
            kept.extend_from_slice(&bytes[at..]);
        } else {
            kept.drain(..at);
        }
        self.head = kept;
        Ok(())
    }

    /// Sends the heads in `data` (interim answers go as such, the final one ends the heads);
    /// whether the final head was sent, and where the bytes not yet sent start (the body's,
    /// or an incomplete head's).
    fn send_head(&mut self, data: &[u8]) -> io::Result<(bool, usize)> {
        let mut at = 0;
        loop {
            let head = &data[at..];
            let mut resp = ResponseHead::default();
            let n = match resp.parse(head, MAX_HEAD) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok((false, at)),
                Err(_) => return Err(io::ErrorKind::InvalidData.into()),
            };
            let mut st = self.state.borrow_mut();
            if resp.is_interim() {
                // 100 Continue and 103 Early Hints are informational in HTTP/2 too.
                if resp.status != 101 {
                    let r = response(&resp, &head[..n], None)?;
                    let _ = st.respond.send_informational(r);
                }
                at += n;
                continue;
            }
            let framing = resp.body_framing(self.head_request);
            self.body = match framing {
                Framing::None => BodyOut::Done,
                Framing::Length(len) => BodyOut::Length(len),
                Framing::Chunked => BodyOut::Chunked(ChunkedOut::default()),
                Framing::Close => BodyOut::UntilEnd,
            };
            let length = match framing {
                Framing::Length(len) => Some(len),
                _ if self.head_request => resp.content_length,
                _ => None,
            };
            let r = response(&resp, &head[..n], length)?;
            let end = matches!(self.body, BodyOut::Done);
            let send = st.respond.send_response(r, end).map_err(h2_error)?;
            st.send = Some(send);
            st.finished = end;
            return Ok((true, at + n));
        }
    }

    /// Body bytes of the HTTP/1.1 answer, as framed by the proxy.
    async fn body_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.body {
            BodyOut::Head | BodyOut::Done => {
                // Nothing may follow a complete answer.
                if bytes.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::InvalidData.into())
                }
            }
            BodyOut::Length(left) => {
                if bytes.len() as u64 > *left {
                    return Err(io::ErrorKind::InvalidData.into());
                }
                *left -= bytes.len() as u64;
                let end = *left == 0;
                if end {
                    self.body = BodyOut::Done;
                }
                send_data(&self.state, bytes, end).await
            }
            BodyOut::UntilEnd => send_data(&self.state, bytes, false).await,
            BodyOut::Chunked(out) => {
                let state = &self.state;
                let sending = || RefMut::filter_map(state.borrow_mut(), |s| s.send.as_mut()).ok();
                if out.send(sending, bytes).await? {
                    self.body = BodyOut::Done;
                    state.borrow_mut().finished = true;
                }
                Ok(())
            }
        }
    }

    /// The proxy is done with the answer: one not sent in full is reset.
    fn end(&mut self) {
        let mut st = self.state.borrow_mut();
        if st.finished {
            return;
        }
        if let BodyOut::UntilEnd = self.body {
            if let Some(s) = st.send.as_mut() {
                if s.send_data(Bytes::new(), true).is_ok() {
                    st.finished = true;
                    return;
                }
            }
        }
        st.abort();
    }
}

impl Drop for H2Send {
    fn drop(&mut self) {
        self.end();
    }
}

/// One copy of an HTTP/1.1 head, `length` written after it: the HTTP/2 field values built
/// from the head share it rather than each being copied on its own. Returns the copy and
/// `length` as a field value.
pub(crate) fn share_head(head: &[u8], length: Option<u64>) -> (Bytes, Option<HeaderValue>) {
    let mut copy = Vec::with_capacity(head.len() + 20);
    copy.extend_from_slice(head);
    if let Some(n) = length {
        push_u64(&mut copy, n);
    }
    let copy = Bytes::from(copy);
    let value = length.map(|n| {
        HeaderValue::from_maybe_shared(copy.slice(head.len()..))
            .unwrap_or_else(|_| HeaderValue::from(n))
    });
    (copy, value)
}

/// The HTTP/2 answer for an HTTP/1.1 head (its fields but connection-specific ones), with
/// `length` as its content-length.
fn response(resp: &ResponseHead, head: &[u8], length: Option<u64>) -> io::Result<Response<()>> {
    let status = StatusCode::from_u16(resp.status).map_err(|_| io::ErrorKind::InvalidData)?;
    let (shared, length) = share_head(head, length);
    let mut r = Response::new(());
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.reserve(resp.headers.len() + 1);
    for h in &resp.headers {
        if h.drop {
            continue;
        }
        let name = h.name.get(head);
        if is_connection_specific(name) {
            continue;
        }
        let value = shared.slice(h.value.start as usize..h.value.end as usize);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(value),
        ) else {
            return Err(io::ErrorKind::InvalidData.into());
        };
        headers.append(name, value);
    }
    if let Some(length) = length {
        headers.insert(http::header::CONTENT_LENGTH, length);
    }
    Ok(r)
}

/// Fields HTTP/2 forbids (RFC 9113 section 8.2.2).
pub(crate) fn is_connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

/// Sends `data` as the stream's flow control allows.
async fn send_data(state: &Respond, data: &[u8], end: bool) -> io::Result<()> {
    let sent = send_flow(
        || RefMut::filter_map(state.borrow_mut(), |s| s.send.as_mut()).ok(),
        data,
        end,
    )
    .await;
    if sent.is_ok() && end {
        state.borrow_mut().finished = true;
    }
    sent
}

/// Sends `data` on the stream `get` gives, as its flow control allows; `end`: END_STREAM with
/// the last byte (or alone when `data` is empty). The stream is borrowed only while polled.
pub(crate) async fn send_flow<S: DerefMut<Target = SendStream<Bytes>>>(
    mut get: impl FnMut() -> Option<S>,
    data: &[u8],
    end: bool,
) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let cap = poll_fn(|cx| {
            let Some(mut s) = get() else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            };
            s.reserve_capacity(rest.len());
            match s.poll_capacity(cx) {
                Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(n)),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Err(h2_error(e))),
                Poll::Ready(None) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        if cap == 0 {
            continue;
        }
        let n = cap.min(rest.len());
        let last = end && n == rest.len();
        let mut s = get().ok_or(io::ErrorKind::BrokenPipe)?;
        s.send_data(Bytes::copy_from_slice(&rest[..n]), last)
            .map_err(h2_error)?;
        rest = &rest[n..];
    }
    if end && data.is_empty() {
        let mut s = get().ok_or(io::ErrorKind::BrokenPipe)?;
        s.send_data(Bytes::new(), true).map_err(h2_error)?;
    }
    Ok(())
}

/// A chunk-coded HTTP/1.1 body going out as DATA frames, and its trailer section as a
/// trailing HEADERS frame: an answer to a client, or a request to an upstream.
#[derive(Default)]
pub(crate) struct ChunkedOut {
    decoder: ChunkedDecoder,
    /// The trailer section, once the body has ended.
    pub trailers: Vec<u8>,
    /// The data ranges of the bytes last decoded.
    pub ranges: Vec<std::ops::Range<usize>>,
}

impl ChunkedOut {
    /// Takes the chunk framing off `bytes`: their data is at [`ranges`](Self::ranges). True
    /// once the body has ended (its trailer section is then in [`trailers`](Self::trailers)).
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> io::Result<bool> {
        self.ranges.clear();
        let (ranges, trailers) = (&mut self.ranges, &mut self.trailers);
        let progress = self
            .decoder
            .feed_with_trailers(bytes, |r| ranges.push(r), |b| trailers.push(b))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        if !progress.done && progress.consumed < bytes.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok(progress.done)
    }

    /// Sends the chunk data in `bytes` on the stream `get` gives, and at the end of the body
    /// the trailers (or an empty END_STREAM). True once the body has ended.
    pub(crate) async fn send<S: DerefMut<Target = SendStream<Bytes>>>(
        &mut self,
        mut get: impl FnMut() -> Option<S>,
        bytes: &[u8],
    ) -> io::Result<bool> {
        let done = self.decode(bytes)?;
        for r in &self.ranges {
            send_flow(&mut get, &bytes[r.clone()], false).await?;
        }
        if !done {
            return Ok(false);
        }
        let map = trailer_map(&self.trailers);
        if map.is_empty() {
            send_flow(get, &[], true).await?;
        } else {
            let mut s = get().ok_or(io::ErrorKind::BrokenPipe)?;
            s.send_trailers(map).map_err(h2_error)?;
        }
        Ok(true)
    }
}

/// The fields of an HTTP/1.1 trailer section (`name: value\r\n` lines), but connection-specific
/// ones.
pub(crate) fn trailer_fields(fields: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    fields.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        let value = crate::http1::trim_ows(&line[colon + 1..]);
        (!is_connection_specific(name)).then_some((name, value))
    })
}

/// [`trailer_fields`] as a field map.
pub(crate) fn trailer_map(fields: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in trailer_fields(fields) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

impl H2Recv {
    pub(crate) async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        match self.ready().await {
            Ok(true) => {
                let n = rawbuf::fill(&mut buf, self.next_bytes());
                self.consume(n);
                // What else has come (the rest of a body in several DATA frames, the last
                // chunk) goes in the same read, and on in the same write.
                let more = self.fill_now(&mut buf, n);
                (Ok(n + more), buf)
            }
            Ok(false) => (Ok(0), buf),
            Err(e) => (Err(e), buf),
        }
    }

    pub(crate) async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let Some((ptr, len)) = rawbuf::first_room(&mut buf) else {
            return (Ok(0), buf);
        };
        match self.ready().await {
            Ok(true) => {
                let src = self.next_bytes();
                let n = src.len().min(len);
                rawbuf::copy_to(src, ptr, n);
                rawbuf::set_init_vec(&mut buf, n);
                self.consume(n);
                (Ok(n), buf)
            }
            Ok(false) => (Ok(0), buf),
            Err(e) => (Err(e), buf),
        }
    }
}

read_glue!(H2Recv);

write_glue!(H2Send);

impl H2Send {
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.end();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{block_on, serve_one};
    use super::*;
    use crate::io::Io;

    /// Serves one HTTP/2 stream whose HTTP/1.1 answer is written in `parts`, and returns
    /// what an HTTP/2 client got: the status, the fields, the body.
    fn answer(parts: &'static [&'static [u8]]) -> (u16, http::HeaderMap, Vec<u8>) {
        block_on(async move {
            let addr = serve_one(move |req, respond| async move {
                let s = H2Stream::new(req.into_body(), false, SendState::new(respond), false, None);
                let mut send = s.send;
                for p in parts {
                    let (r, _) = send.write(p.to_vec()).await;
                    r.unwrap();
                }
            });
            let s = monoio::net::TcpStream::connect(addr).await.unwrap();
            let io = super::super::io::PollIo::new(Io::Plain(s), Vec::new());
            let (mut client, conn) = h2::client::handshake(io).await.unwrap();
            monoio::spawn(async move {
                let _ = conn.await;
            });
            let req = http::Request::get("http://a/").body(()).unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            let (head, mut body) = resp.await.unwrap().into_parts();
            let mut got = Vec::new();
            while let Some(data) = poll_fn(|cx| body.poll_data(cx)).await {
                let data = data.unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                got.extend_from_slice(&data);
            }
            (head.status.as_u16(), head.headers, got)
        })
    }

    #[test]
    fn an_answer_head_in_parts_is_sent_once_whole() {
        let (status, fields, body) = answer(&[
            b"HTTP/1.1 201 Created\r\nx-a: 1\r\n",
            b"content-length: 2\r\n\r\nok",
        ]);
        assert_eq!(status, 201);
        assert_eq!(fields["x-a"], "1");
        assert_eq!(fields["content-length"], "2");
        assert_eq!(body, b"ok");
    }

    #[test]
    fn interim_answers_and_the_final_one_in_one_write_are_all_taken() {
        let (status, fields, body) = answer(&[
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-b: 2\r\ncontent-length: 5\r\n\r\nhel",
            b"lo",
        ]);
        assert_eq!(status, 200);
        assert_eq!(fields["x-b"], "2");
        assert_eq!(fields["content-length"], "5");
        assert!(
            !fields.contains_key("link"),
            "the interim answer's fields stay its own"
        );
        assert_eq!(body, b"hello");
    }
}
