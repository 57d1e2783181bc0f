//! How a response body moves from the upstream's framing to the client's: passed through as
//! received, dechunked for HTTP/1.0, chunked from a close-delimited body, or compressed on the
//! way ([`super::coded`]). [`super::body::relay_body`] reads and writes; this decides what goes.

use crate::error::ErrorKind;
use crate::head::Framing;
use crate::http1::chunked::write_chunk_size;
use crate::http1::{ChunkedDecoder, ChunkedForward};

/// How a response body moves from upstream framing to client framing.
pub(super) enum BodyState<'a> {
    Empty,
    /// Same bytes both sides: this many left.
    Length(u64),
    /// Chunked both sides: validated, forwarded as received but for chunk extensions and
    /// trailer fields that may not cross.
    ChunkedPass(ChunkedForward),
    /// Chunked upstream, HTTP/1.0 client: data only.
    Dechunk(ChunkedDecoder),
    /// Close-delimited upstream, chunked to the client.
    CloseToChunked,
    /// Close-delimited both sides.
    CloseRaw,
    /// Compressed on the way.
    Coded(Box<super::coded::CodedBody<'a>>),
}

/// What one step did.
pub(super) struct Step {
    /// Bytes of the input that were part of the message.
    pub consumed: usize,
    /// Of those, how many the caller writes straight from the input (nothing was copied).
    pub direct: usize,
    /// The message is complete.
    pub done: bool,
}

impl BodyState<'_> {
    pub fn new(body: Framing, to_client: Framing) -> Self {
        match (body, to_client) {
            (Framing::None, _) => BodyState::Empty,
            (Framing::Length(n), _) => BodyState::Length(n),
            (Framing::Chunked, Framing::Chunked) => {
                BodyState::ChunkedPass(ChunkedForward::default())
            }
            (Framing::Chunked, _) => BodyState::Dechunk(ChunkedDecoder::new()),
            (Framing::Close, Framing::Chunked) => BodyState::CloseToChunked,
            (Framing::Close, _) => BodyState::CloseRaw,
        }
    }

    pub fn ends_at_close(&self) -> bool {
        match self {
            BodyState::CloseToChunked | BodyState::CloseRaw => true,
            BodyState::Coded(c) => c.ends_at_close(),
            _ => false,
        }
    }

    /// Writes the end of a close-delimited body.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ErrorKind> {
        match self {
            BodyState::CloseToChunked => out.extend_from_slice(b"0\r\n\r\n"),
            BodyState::Coded(c) => c.end(out)?,
            _ => {}
        }
        Ok(())
    }

    /// Takes the message bytes at the start of `data`. When `out` already holds bytes (the
    /// head), everything is copied after them; otherwise pass-through bytes are left for the
    /// caller to write directly.
    pub fn step(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Step, ErrorKind> {
        let copy = !out.is_empty();
        let pass = |n: usize, done: bool, out: &mut Vec<u8>| {
            if copy {
                out.extend_from_slice(&data[..n]);
                Step {
                    consumed: n,
                    direct: 0,
                    done,
                }
            } else {
                Step {
                    consumed: n,
                    direct: n,
                    done,
                }
            }
        };
        Ok(match self {
            BodyState::Empty => Step {
                consumed: 0,
                direct: 0,
                done: true,
            },
            BodyState::Length(left) => {
                let n = (data.len() as u64).min(*left) as usize;
                *left -= n as u64;
                pass(n, *left == 0, out)
            }
            BodyState::ChunkedPass(f) => {
                let p = f
                    .feed(data, out, copy)
                    .map_err(|_| ErrorKind::UpstreamProtocol)?;
                Step {
                    consumed: p.consumed,
                    direct: if p.direct { p.consumed } else { 0 },
                    done: p.done,
                }
            }
            BodyState::Dechunk(d) => {
                let p = d
                    .feed(data, |r| out.extend_from_slice(&data[r]))
                    .map_err(|_| ErrorKind::UpstreamProtocol)?;
                Step {
                    consumed: p.consumed,
                    direct: 0,
                    done: p.done,
                }
            }
            BodyState::CloseToChunked => {
                if !data.is_empty() {
                    write_chunk_size(out, data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                Step {
                    consumed: data.len(),
                    direct: 0,
                    done: false,
                }
            }
            BodyState::CloseRaw => {
                let mut s = pass(data.len(), false, out);
                s.done = false;
                s
            }
            BodyState::Coded(c) => {
                let p = c.step(data, out)?;
                Step {
                    consumed: p.consumed,
                    direct: 0,
                    done: p.done,
                }
            }
        })
    }
}
