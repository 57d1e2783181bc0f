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
pub(crate) fn valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\t')
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
