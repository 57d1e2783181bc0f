//! HTTP/2 framing (RFC 9113 section 4 and 6): frame types, flags and error codes, writing
//! frames, and the checks both sides make on what the peer sends.

/// The frame payload we accept (SETTINGS_MAX_FRAME_SIZE left at its default).
pub(crate) const MAX_FRAME: usize = 16_384;
/// Stream ids end at 2^31 - 1.
pub(crate) const MAX_ID: u32 = (1 << 31) - 1;

pub(crate) const DATA: u8 = 0;
pub(crate) const HEADERS: u8 = 1;
pub(crate) const PRIORITY: u8 = 2;
pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const PUSH_PROMISE: u8 = 5;
pub(crate) const PING: u8 = 6;
pub(crate) const GOAWAY: u8 = 7;
pub(crate) const WINDOW_UPDATE: u8 = 8;
pub(crate) const CONTINUATION: u8 = 9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 section 7).
pub(crate) mod code {
    pub const NO_ERROR: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
    pub const FLOW_CONTROL_ERROR: u32 = 3;
    pub const STREAM_CLOSED: u32 = 5;
    pub const FRAME_SIZE_ERROR: u32 = 6;
    pub const REFUSED_STREAM: u32 = 7;
    pub const CANCEL: u32 = 8;
    pub const COMPRESSION_ERROR: u32 = 9;
    pub const ENHANCE_YOUR_CALM: u32 = 11;
}

/// Appends a frame header.
pub(crate) fn frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

pub(crate) fn push_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    frame_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&code.to_be_bytes());
}

pub(crate) fn push_window_update(out: &mut Vec<u8>, stream: u32, n: u32) {
    frame_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&n.to_be_bytes());
}

/// Appends a header block as HEADERS and, past the peer's frame size, CONTINUATION frames.
pub(crate) fn push_block(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    block: &[u8],
    max: usize,
) {
    let (first, mut rest) = block.split_at(block.len().min(max));
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_head(out, first.len(), HEADERS, flags, stream);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (c, r) = rest.split_at(rest.len().min(max));
        rest = r;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_head(out, c.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(c);
    }
}

pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The payload without its padding (and, for HEADERS, its priority fields).
pub(crate) fn unpad(flags: u8, p: &[u8], priority: bool) -> Result<(&[u8], usize), u32> {
    let mut body = p;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or(code::FRAME_SIZE_ERROR)?;
        pad = n as usize;
        if pad >= p.len() {
            return Err(code::PROTOCOL_ERROR);
        }
        body = &rest[..rest.len() - pad];
    }
    if priority && flags & PRIORITY_FLAG != 0 {
        body = body.get(5..).ok_or(code::FRAME_SIZE_ERROR)?;
    }
    Ok((body, pad))
}

/// A field name as HTTP/2 allows it: a token, lowercase.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// A field value as HTTP/1.1 can carry it: visible characters, spaces, tabs, and bytes past
/// ASCII; nothing that could end a line (RFC 9113 section 8.2.1, RFC 9110 section 5.5).
/// A field value as RFC 9113 section 8.2.1 allows it: no NUL, CR or LF (nor other controls
/// but HTAB), and no whitespace at either end (a peer that sends it is malformed, not trimmed).
pub(crate) fn valid_value(v: &[u8]) -> bool {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    v.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\t')
        && !v.first().is_some_and(ws)
        && !v.last().is_some_and(ws)
}

pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + (b - b'0') as u64)
    })
}

/// Appends a GOAWAY frame.
pub(crate) fn push_goaway(out: &mut Vec<u8>, last: u32, code: u32) {
    frame_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
}

/// Answers a PING (RFC 9113 section 6.7); whether a frame was queued.
pub(crate) fn on_ping(flags: u8, id: u32, p: &[u8], out: &mut Vec<u8>) -> Result<bool, u32> {
    if id != 0 {
        return Err(code::PROTOCOL_ERROR);
    }
    if p.len() != 8 {
        return Err(code::FRAME_SIZE_ERROR);
    }
    if flags & ACK != 0 {
        return Ok(false);
    }
    frame_head(out, 8, PING, ACK, 0);
    out.extend_from_slice(p);
    Ok(true)
}

/// What the sending side follows of the peer's SETTINGS.
pub(crate) struct PeerSettings {
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub window: i64,
    pub max_frame: usize,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            window: 65_535,
            max_frame: MAX_FRAME,
        }
    }
}

/// Applies the peer's SETTINGS (RFC 9113 section 6.5) and queues the ACK. A new initial window
/// moves every open stream's by the difference (`move_windows`, section 6.9.2); `other` sees
/// the settings this does not handle. `Ok(false)`: the frame was an ACK.
pub(crate) fn on_settings(
    flags: u8,
    id: u32,
    p: &[u8],
    out: &mut Vec<u8>,
    peer: &mut PeerSettings,
    mut move_windows: impl FnMut(i64) -> Result<(), u32>,
    mut other: impl FnMut(u16, u32) -> Result<(), u32>,
) -> Result<bool, u32> {
    if id != 0 {
        return Err(code::PROTOCOL_ERROR);
    }
    if flags & ACK != 0 {
        return if p.is_empty() {
            Ok(false)
        } else {
            Err(code::FRAME_SIZE_ERROR)
        };
    }
    if p.len() % 6 != 0 {
        return Err(code::FRAME_SIZE_ERROR);
    }
    for s in p.chunks_exact(6) {
        let v = be32(&s[2..]);
        match u16::from_be_bytes([s[0], s[1]]) {
            2 if v > 1 => return Err(code::PROTOCOL_ERROR),
            4 => {
                if v > MAX_ID {
                    return Err(code::FLOW_CONTROL_ERROR);
                }
                let delta = v as i64 - peer.window;
                peer.window = v as i64;
                move_windows(delta)?;
            }
            5 => {
                if !(MAX_FRAME as u32..=(1 << 24) - 1).contains(&v) {
                    return Err(code::PROTOCOL_ERROR);
                }
                peer.max_frame = v as usize;
            }
            k => other(k, v)?,
        }
    }
    frame_head(out, 0, SETTINGS, ACK, 0);
    Ok(true)
}

/// Moves a stream's send window by `delta` (a new initial window, or a WINDOW_UPDATE), waking
/// its writer when it grows. `Err`: past 2^31 - 1, a FLOW_CONTROL_ERROR.
pub(crate) fn move_window(
    window: &mut i64,
    writer: &mut Option<std::task::Waker>,
    delta: i64,
) -> Result<(), u32> {
    *window += delta;
    if *window > MAX_ID as i64 {
        return Err(code::FLOW_CONTROL_ERROR);
    }
    if delta > 0 {
        if let Some(w) = writer.take() {
            w.wake();
        }
    }
    Ok(())
}

/// Credits `n` bytes of read DATA back to the peer on `id` (0: the connection), once half of
/// the window `size` is owed; whether a WINDOW_UPDATE was queued.
pub(crate) fn credit(
    out: &mut Vec<u8>,
    id: u32,
    owed: &mut u32,
    window: &mut i64,
    n: u32,
    size: u32,
) -> bool {
    *owed += n;
    if *owed < size / 2 {
        return false;
    }
    let c = std::mem::take(owed);
    *window += c as i64;
    push_window_update(out, id, c);
    true
}

/// What sending DATA on a stream touches: the connection's output and window, and the
/// stream's window, and where a sender waits.
pub(crate) struct Sending<'a> {
    pub out: &'a mut Vec<u8>,
    pub conn_window: &'a mut i64,
    pub max_frame: usize,
    pub window: &'a mut i64,
    pub sent_end: &'a mut bool,
    /// The stream's sender, woken by the stream's WINDOW_UPDATE.
    pub writer: &'a mut Option<std::task::Waker>,
    /// Senders waiting for the connection's window or room in the output.
    pub blocked: &'a mut Vec<std::task::Waker>,
    /// The connection's writing task.
    pub flush: &'a mut Option<std::task::Waker>,
}

/// Output queued past which DATA waits for the writer.
pub(crate) const OUT_LIMIT: usize = 256 * 1024;

/// Sends `data` on stream `id` as the windows allow; `end`: END_STREAM with the last byte (or
/// alone when `data` is empty). `sending` hands the stream's side of the connection to the step
/// it is given, or says why nothing more can be sent (the connection or the stream failed).
pub(crate) async fn send_data(
    mut sending: impl FnMut(
        &mut dyn FnMut(Sending<'_>) -> std::task::Poll<()>,
    ) -> std::io::Result<std::task::Poll<()>>,
    id: u32,
    data: &[u8],
    end: bool,
) -> std::io::Result<()> {
    use std::task::Poll;
    let mut rest = data;
    std::future::poll_fn(|cx| {
        let mut step = |s: Sending<'_>| loop {
            if rest.is_empty() {
                if end {
                    frame_head(s.out, 0, DATA, END_STREAM, id);
                    *s.sent_end = true;
                    wake_one(s.flush);
                }
                return Poll::Ready(());
            }
            let window = (*s.window).min(*s.conn_window).max(0) as usize;
            let n = rest.len().min(window).min(s.max_frame);
            if n == 0 || s.out.len() >= OUT_LIMIT {
                if *s.window <= 0 {
                    *s.writer = Some(cx.waker().clone());
                } else if !s.blocked.iter().any(|w| w.will_wake(cx.waker())) {
                    s.blocked.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let last = end && n == rest.len();
            frame_head(s.out, n, DATA, if last { END_STREAM } else { 0 }, id);
            s.out.extend_from_slice(&rest[..n]);
            *s.window -= n as i64;
            *s.conn_window -= n as i64;
            *s.sent_end = last;
            wake_one(s.flush);
            rest = &rest[n..];
            if rest.is_empty() {
                return Poll::Ready(());
            }
        };
        match sending(&mut step) {
            Err(e) => Poll::Ready(Err(e)),
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
        }
    })
    .await
}

fn wake_one(w: &mut Option<std::task::Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// A connection as its writing task sees it.
pub(crate) trait Outbox {
    /// Swaps what is queued into `buf` (true), says the connection is done (false), or waits.
    fn poll_out(&self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>)
    -> std::task::Poll<bool>;
    /// A write of what was swapped out starts.
    fn writing(&self) {}
    /// The write ended, `ok` or not.
    fn wrote(&self, ok: bool);
    /// The writing is over: what is left fails, and the reader's read is to be cancelled.
    fn finish(&self) -> Option<monoio::io::Canceller>;
}

/// Writes what is queued until the connection ends, then closes it: what the streams and the
/// reader queued since the last write goes in one write.
pub(crate) async fn write_loop(conn: &impl Outbox, mut w: crate::io::IoWrite) {
    use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if !std::future::poll_fn(|cx| conn.poll_out(cx, &mut buf)).await {
            break;
        }
        conn.writing();
        let (r, b) = w.write_all(buf).await;
        buf = b;
        buf.clear();
        conn.wrote(r.is_ok());
        if r.is_err() {
            break;
        }
    }
    let canceller = conn.finish();
    let _ = w.shutdown().await;
    // The reader's read would otherwise wait for the peer to close.
    if let Some(c) = canceller {
        c.cancel();
    }
}

/// The whole frame at the start of `buf`, if it has come: type, flags, stream, payload.
/// `Err`: a frame larger than we accept.
#[allow(clippy::type_complexity)]
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<(u8, u8, u32, &[u8])>, u32> {
    let Some(h) = buf.get(..9) else {
        return Ok(None);
    };
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    if len > MAX_FRAME {
        return Err(code::FRAME_SIZE_ERROR);
    }
    let Some(p) = buf.get(9..9 + len) else {
        return Ok(None);
    };
    Ok(Some((h[3], h[4], be32(&h[5..9]) & MAX_ID, p)))
}

/// Hands out the unread part of a stream's inbox into `buf`: how many bytes, and the DATA
/// bytes to credit back (once the inbox has been read whole, it starts again empty).
pub(crate) fn take_inbox<T: monoio::buf::IoBufMut>(
    inbox: &mut Vec<u8>,
    taken: &mut usize,
    unread: &mut u32,
    buf: &mut T,
) -> (usize, u32) {
    let n = crate::rawbuf::fill(buf, &inbox[*taken..]);
    *taken += n;
    if *taken < inbox.len() {
        return (n, 0);
    }
    inbox.clear();
    *taken = 0;
    (n, std::mem::take(unread))
}
