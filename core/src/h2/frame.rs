//! HTTP/2 framing (RFC 9113 sections 4 and 6): frame types, flags and error codes, writing
//! frames, and the checks both sides make on what the peer sends. Bytes in, bytes out: no
//! state but what the caller passes.

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

/// An error code (RFC 9113 section 7): why a stream or the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code(pub u32);

impl Code {
    pub const NO_ERROR: Code = Code(0);
    pub const PROTOCOL_ERROR: Code = Code(1);
    pub const INTERNAL_ERROR: Code = Code(2);
    pub const FLOW_CONTROL_ERROR: Code = Code(3);
    pub const STREAM_CLOSED: Code = Code(5);
    pub const FRAME_SIZE_ERROR: Code = Code(6);
    pub const REFUSED_STREAM: Code = Code(7);
    pub const CANCEL: Code = Code(8);
    pub const COMPRESSION_ERROR: Code = Code(9);
    pub const ENHANCE_YOUR_CALM: Code = Code(11);
}

/// Appends a frame header.
pub(crate) fn frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

pub(crate) fn push_rst(out: &mut Vec<u8>, stream: u32, code: Code) {
    frame_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&code.0.to_be_bytes());
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
pub(crate) fn unpad(flags: u8, p: &[u8], priority: bool) -> Result<(&[u8], usize), Code> {
    let mut body = p;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or(Code::FRAME_SIZE_ERROR)?;
        pad = n as usize;
        if pad >= p.len() {
            return Err(Code::PROTOCOL_ERROR);
        }
        body = &rest[..rest.len() - pad];
    }
    if priority && flags & PRIORITY_FLAG != 0 {
        body = body.get(5..).ok_or(Code::FRAME_SIZE_ERROR)?;
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
pub(crate) fn push_goaway(out: &mut Vec<u8>, last: u32, code: Code) {
    frame_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
}

/// Answers a PING (RFC 9113 section 6.7); whether a frame was queued.
pub(crate) fn on_ping(flags: u8, id: u32, p: &[u8], out: &mut Vec<u8>) -> Result<bool, Code> {
    if id != 0 {
        return Err(Code::PROTOCOL_ERROR);
    }
    if p.len() != 8 {
        return Err(Code::FRAME_SIZE_ERROR);
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
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until said).
    pub max_streams: u32,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            window: 65_535,
            max_frame: MAX_FRAME,
            max_streams: u32::MAX,
        }
    }
}

/// Applies the peer's SETTINGS (RFC 9113 section 6.5) and queues the ACK. A new initial window
/// moves every open stream's by the difference (`move_windows`, section 6.9.2). `Ok(false)`:
/// the frame was an ACK.
pub(crate) fn on_settings(
    flags: u8,
    id: u32,
    p: &[u8],
    out: &mut Vec<u8>,
    peer: &mut PeerSettings,
    mut move_windows: impl FnMut(i64) -> Result<(), Code>,
) -> Result<bool, Code> {
    if id != 0 {
        return Err(Code::PROTOCOL_ERROR);
    }
    if flags & ACK != 0 {
        return if p.is_empty() {
            Ok(false)
        } else {
            Err(Code::FRAME_SIZE_ERROR)
        };
    }
    if p.len() % 6 != 0 {
        return Err(Code::FRAME_SIZE_ERROR);
    }
    for s in p.chunks_exact(6) {
        let v = be32(&s[2..]);
        match u16::from_be_bytes([s[0], s[1]]) {
            2 if v > 1 => return Err(Code::PROTOCOL_ERROR),
            4 => {
                if v > MAX_ID {
                    return Err(Code::FLOW_CONTROL_ERROR);
                }
                let delta = v as i64 - peer.window;
                peer.window = v as i64;
                move_windows(delta)?;
            }
            5 => {
                if !(MAX_FRAME as u32..=(1 << 24) - 1).contains(&v) {
                    return Err(Code::PROTOCOL_ERROR);
                }
                peer.max_frame = v as usize;
            }
            3 => peer.max_streams = v,
            _ => {}
        }
    }
    frame_head(out, 0, SETTINGS, ACK, 0);
    Ok(true)
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

/// The whole frame at the start of `buf`, if it has come: type, flags, stream, payload.
/// `Err`: a frame larger than we accept.
#[allow(clippy::type_complexity)]
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<(u8, u8, u32, &[u8])>, Code> {
    let Some(h) = buf.get(..9) else {
        return Ok(None);
    };
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    if len > MAX_FRAME {
        return Err(Code::FRAME_SIZE_ERROR);
    }
    let Some(p) = buf.get(9..9 + len) else {
        return Ok(None);
    };
    Ok(Some((h[3], h[4], be32(&h[5..9]) & MAX_ID, p)))
}
