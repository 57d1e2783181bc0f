//! An answer compressed on its way to the client: the upstream's framing undone, the data
//! coded, the output framed for the client (chunked, or raw until the close for HTTP/1.0).
//!
//! Work per step is bounded: at most [`STEP_INPUT`] bytes are coded before the output goes to
//! the client, and writing it yields to the worker's other connections, so a large answer
//! cannot hold the worker for longer than one step's coding (tens to hundreds of microseconds
//! at the default levels; see perf/compression-stall.sh).

use crate::compress::encoder::Encoder;
use crate::compress::{Algorithm, Compression};
use crate::error::ErrorKind;
use crate::head::{Framing, ResponseHead};
use crate::http1::ChunkedDecoder;
use crate::http1::chunked::write_chunk_size;
use crate::metrics::{Count, RouteStats};
use crate::worker::state::Worker;

/// Most bytes of the answer coded in one step.
pub(super) const STEP_INPUT: usize = 16 * 1024;

/// Most answers a worker codes at once: each holds an encoder (about 0.3 MiB for gzip, around
/// 1 MiB for brotli or zstd at their default levels, a few MiB at the highest allowed), so slow
/// readers cannot make a worker hold more than this many; past it, answers go uncoded (counted
/// as `busy`).
pub(crate) const MAX_CODED_STREAMS: usize = 256;

/// A request's side of compression on a route that has it: the algorithm its
/// `Accept-Encoding` allows, or none (the answer may still need `Vary`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Offer<'a> {
    pub spec: &'a Compression,
    pub chosen: Option<Algorithm>,
    pub stats: &'a RouteStats,
}

impl<'a> Offer<'a> {
    /// The offer for a request whose head is in `buf`, on a route with `spec`.
    pub fn of(
        spec: &'a Compression,
        req: &crate::head::RequestHead,
        buf: &[u8],
        stats: &'a RouteStats,
    ) -> Offer<'a> {
        let mut weights = crate::compress::accept::Weights::default();
        for h in &req.headers {
            if h.name.get(buf).eq_ignore_ascii_case(b"accept-encoding") {
                weights.read(h.value.get(buf));
            }
        }
        Offer {
            spec,
            chosen: weights.choose(&spec.algorithms),
            stats,
        }
    }
}

/// An encoder that fails mid-answer (it refuses only what it cannot hold: no memory) cuts the
/// answer as a broken upstream body would; the client sees the connection end early.
const CODING_FAILED: ErrorKind = ErrorKind::UpstreamProtocol;

/// How the upstream delimits the body.
enum Decode {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

/// One coded answer in flight.
pub(super) struct CodedBody<'a> {
    decode: Decode,
    enc: Encoder,
    /// The client takes chunks (HTTP/1.1, and HTTP/2 whose sink reads them); else raw bytes.
    chunked: bool,
    worker: &'a Worker,
    stats: &'a RouteStats,
}

impl Drop for CodedBody<'_> {
    fn drop(&mut self) {
        let n = self.worker.coded_streams.get();
        self.worker.coded_streams.set(n.saturating_sub(1));
    }
}

/// What the caller of [`CodedBody::step`] learns.
pub(super) struct Coded {
    /// Bytes of the input that were part of the message.
    pub consumed: usize,
    pub done: bool,
}

/// The coding an answer gets, if any: judged by the route's policy, and only while the worker
/// has room for another encoder. `None` when the answer goes as it came (and then, when it
/// qualified, only `Vary` is added: see [`crate::compress::Coding`]).
pub(super) fn judge(
    w: &Worker,
    offer: &Offer<'_>,
    resp: &ResponseHead,
    buf: &[u8],
) -> Option<crate::compress::Judged> {
    let mut j = offer.spec.judge(resp, buf, offer.chosen)?;
    if j.coding.is_some() && w.coded_streams.get() >= MAX_CODED_STREAMS {
        offer.stats.count(Count::CodingBusy, 1);
        j.coding = None;
    }
    Some(j)
}

impl<'a> CodedBody<'a> {
    /// Starts coding a body framed as `body` from the upstream. `chunked`: frame the output
    /// in chunks. `Err`: the encoder could not be made (the answer is then sent uncoded).
    pub fn new(
        w: &'a Worker,
        offer: &Offer<'a>,
        a: Algorithm,
        body: Framing,
        chunked: bool,
    ) -> std::io::Result<CodedBody<'a>> {
        let (decode, size) = match body {
            Framing::Length(n) => (Decode::Length(n), Some(n)),
            Framing::Chunked => (Decode::Chunked(ChunkedDecoder::new()), None),
            Framing::Close | Framing::None => (Decode::Close, None),
        };
        let enc = Encoder::new(a, &offer.spec.levels, size)?;
        offer.stats.count(
            match a {
                Algorithm::Zstd => Count::Zstd,
                Algorithm::Brotli => Count::Brotli,
                Algorithm::Gzip => Count::Gzip,
            },
            1,
        );
        w.coded_streams.set(w.coded_streams.get() + 1);
        Ok(CodedBody {
            decode,
            enc,
            chunked,
            worker: w,
            stats: offer.stats,
        })
    }

    /// Whether the body ends when the upstream closes.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.decode, Decode::Close)
    }

    /// Takes up to [`STEP_INPUT`] bytes of the message from `input` and appends their coding
    /// to `out` (after whatever it holds), with the end of the coded stream when the message
    /// ends.
    pub fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Coded, ErrorKind> {
        let input = &input[..input.len().min(STEP_INPUT)];
        let enc = &mut self.enc;
        let mut coded_in = 0usize;
        let mut failed = false;
        let mut code = |data: &[u8]| {
            coded_in += data.len();
            failed |= !data.is_empty() && enc.write(data).is_err();
        };
        let (consumed, done) = match &mut self.decode {
            Decode::Length(left) => {
                let n = (input.len() as u64).min(*left) as usize;
                *left -= n as u64;
                code(&input[..n]);
                (n, *left == 0)
            }
            Decode::Chunked(d) => {
                let p = d
                    .feed(input, |r| code(&input[r]))
                    .map_err(|_| ErrorKind::UpstreamProtocol)?;
                (p.consumed, p.done)
            }
            Decode::Close => {
                code(input);
                (input.len(), false)
            }
        };
        if failed {
            return Err(CODING_FAILED);
        }
        self.stats.count(Count::CodedIn, coded_in as u64);
        if done {
            self.end(out)?;
        } else if coded_in > 0 {
            // Flushed at every step that brought data: what the upstream sent so far reaches
            // the client.
            self.enc.flush().map_err(|_| CODING_FAILED)?;
            self.emit(out);
        }
        Ok(Coded { consumed, done })
    }

    /// Ends the coded stream (the upstream closed a close-delimited body, or the message
    /// ended): its last bytes, and the last chunk.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<(), ErrorKind> {
        self.enc.finish().map_err(|_| CODING_FAILED)?;
        self.emit(out);
        if self.chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Ok(())
    }

    /// Moves the encoder's output to `out`, framed.
    fn emit(&mut self, out: &mut Vec<u8>) {
        let coded = self.enc.output();
        if coded.is_empty() {
            return;
        }
        self.stats.count(Count::CodedOut, coded.len() as u64);
        if self.chunked {
            write_chunk_size(out, coded.len());
            out.extend_from_slice(coded);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(coded);
        }
        coded.clear();
    }
}
