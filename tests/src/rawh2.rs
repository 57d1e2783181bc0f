//! HTTP/2 by hand: frames and header blocks written byte by byte, so that a test can send what
//! no well-behaved client would (any `:path`, frames on closed streams) and read exactly what
//! came back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const ACK: u8 = 1;
pub const END_HEADERS: u8 = 4;

/// Error codes (RFC 9113 section 7).
pub const PROTOCOL_ERROR: u32 = 1;
pub const STREAM_CLOSED: u32 = 5;

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields, never indexed, never Huffman-coded (RFC 7541 section
/// 6.2.3); names and values up to 126 bytes.
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        b.push(0x10);
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    }
    b
}

/// A GET's header block for `authority` and `path`.
pub fn get(authority: &[u8], path: &[u8]) -> Vec<u8> {
    block(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", path),
    ])
}

/// A frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A cleartext HTTP/2 connection, preface and empty SETTINGS sent.
pub struct Conn {
    pub s: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        s.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
        Conn { s }
    }

    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).is_ok()
    }

    /// The next frame; `None` when the connection ended or went quiet for the timeout.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Frames until one on `stream` that is HEADERS, RST_STREAM or GOAWAY (the connection's).
    pub fn outcome(&mut self, stream: u32) -> Outcome {
        while let Some(f) = self.next_frame() {
            match f.kind {
                HEADERS if f.stream == stream => {
                    return Outcome::Status(status_of(&f.payload).unwrap_or(0));
                }
                RST_STREAM if f.stream == stream => return Outcome::Reset(code(&f.payload, 0)),
                GOAWAY => return Outcome::GoAway(code(&f.payload, 4)),
                _ => {}
            }
        }
        Outcome::Closed
    }
}

/// What became of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Reset(u32),
    GoAway(u32),
    Closed,
}

fn code(p: &[u8], at: usize) -> u32 {
    p.get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `:status` of an answer's header block as ringmesh encodes one: the static table's status
/// entries (indexed), or a literal with the `:status` name indexed.
pub fn status_of(block: &[u8]) -> Option<u16> {
    const INDEXED: [(u8, u16); 7] = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return INDEXED
            .iter()
            .find(|(i, _)| *i == first & 0x7f)
            .map(|(_, s)| *s);
    }
    // Literal with an indexed name (any of the three literal forms), the value a plain string.
    let len = usize::from(*block.get(1)? & 0x7f);
    std::str::from_utf8(block.get(2..2 + len)?)
        .ok()?
        .parse()
        .ok()
}
