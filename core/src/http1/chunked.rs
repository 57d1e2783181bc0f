//! Streaming decoder of the chunked transfer coding (RFC 9112 section 7.1), strict.
//!
//! The decoder is fed whatever bytes arrived and reports, without copying, which ranges of them
//! are chunk data and how many belong to the message: the proxy either forwards the validated
//! bytes as they are (chunked on both sides) or only the data (to an HTTP/1.0 client). It holds a
//! few integers of state, so a body of any size streams through in bounded memory.

use std::ops::Range;

use crate::head::{is_field_vchar, is_tchar};

/// Longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_SIZE_LINE: u32 = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: u32 = 64 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk size that is missing, not hexadecimal, or too large.
    #[error("invalid chunk size")]
    Size,
    /// A malformed chunk extension, or a size line that is too long.
    #[error("invalid chunk extension")]
    Extension,
    /// Something other than CRLF where CRLF is required.
    #[error("missing CRLF in chunked body")]
    LineEnding,
    /// A malformed or oversized trailer section.
    #[error("invalid trailer section")]
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size (at least one).
    Size { digits: u8 },
    /// Whitespace after the size: only `;` may follow.
    SizeSpace,
    /// After a `;`: optional whitespace, then an extension's name.
    ExtBeforeName,
    /// Inside an extension's name (a token).
    ExtName,
    /// After a name: whitespace, `=`, `;` or CR.
    ExtAfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    ExtBeforeValue,
    /// Inside a token value.
    ExtToken,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtEscape,
    /// After a value: whitespace, `;` or CR.
    ExtAfterValue,
    /// Expecting the LF that ends a size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Expecting LF at the end of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final CRLF.
    FinalLf,
    /// The message is complete.
    Done,
}

/// What one call to [`ChunkedDecoder::feed`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the message (the rest is the next message).
    pub consumed: usize,
    /// The message ended within `consumed`.
    pub done: bool,
}

/// Incremental chunked-body decoder. See the module docs.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Remaining data bytes of the current chunk, or the size being read.
    size: u64,
    /// Bytes of the current size line, or of the trailer section.
    line: u32,
    /// Whether the current chunk is the last (size zero).
    last: bool,
    /// Data bytes seen in total.
    data_total: u64,
    /// Forwarding: the trailer section has fields, so all of it is skipped and rewritten.
    trailing: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub const fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            last: false,
            data_total: 0,
            trailing: false,
        }
    }

    /// Whether the whole body, trailers included, has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Total chunk-data bytes seen so far.
    pub fn data_len(&self) -> u64 {
        self.data_total
    }

    /// Feeds `input`; `on_data` receives each range of `input` that is chunk data.
    ///
    /// Stops at the end of the message: bytes past `consumed` are not part of it.
    pub fn feed(
        &mut self,
        input: &[u8],
        on_data: impl FnMut(Range<usize>),
    ) -> Result<Progress, ChunkError> {
        self.feed_with_trailers(input, on_data, |_| {})
    }

    /// [`feed`](Self::feed), also handing every byte of the trailer section (its field lines,
    /// each ending in CRLF, then the CR of the final CRLF) to `on_trailer`.
    pub fn feed_with_trailers(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                on_data(i..i + take);
                i += take;
                self.size -= take as u64;
                self.data_total += take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            if matches!(
                self.state,
                State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf
            ) {
                on_trailer(b);
            }
            self.step(b)?;
            if self.state == State::Done {
                return Ok(Progress {
                    consumed: i,
                    done: true,
                });
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// Feeds `input` for a body forwarded chunked as it came, and says what to leave out:
    /// `skip` receives each range of `input` that must not be forwarded (chunk extensions, and
    /// a trailer section once it has a field), and `on_trailer` every byte of that section,
    /// as for [`feed_with_trailers`](Self::feed_with_trailers). The forwarder writes the rest,
    /// and, at the end, the trailer fields that may cross followed by the final CRLF (see
    /// [`super::write_trailers`]). Without extensions or trailers nothing is skipped.
    pub fn feed_forward(
        &mut self,
        input: &[u8],
        mut skip: impl FnMut(std::ops::Range<usize>),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                i += take;
                self.size -= take as u64;
                self.data_total += take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            let before = self.state;
            if matches!(
                before,
                State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf
            ) {
                on_trailer(b);
            }
            self.step(b)?;
            let extension = matches!(
                before,
                State::SizeSpace
                    | State::ExtBeforeName
                    | State::ExtName
                    | State::ExtAfterName
                    | State::ExtBeforeValue
                    | State::ExtToken
                    | State::ExtQuoted
                    | State::ExtEscape
                    | State::ExtAfterValue
            ) || (matches!(before, State::Size { .. })
                && matches!(self.state, State::SizeSpace | State::ExtBeforeName));
            // A trailer section with fields is rewritten whole; an empty one (the final CRLF
            // right after the last chunk) passes as it is.
            self.trailing |= before == State::TrailerStart && b != b'\r';
            if (extension && b != b'\r') || self.trailing {
                skip(i..i + 1);
            }
            i += 1;
            if self.state == State::Done {
                return Ok(Progress {
                    consumed: i,
                    done: true,
                });
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { digits } => {
                self.line += 1;
                match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // 15 hex digits keep the size below 2^60: no overflow, and far beyond
                        // any real chunk.
                        if digits >= 15 {
                            return Err(ChunkError::Size);
                        }
                        let v = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(v);
                        State::Size { digits: digits + 1 }
                    }
                    _ if digits == 0 => return Err(ChunkError::Size),
                    b';' => State::ExtBeforeName,
                    b' ' | b'\t' => State::SizeSpace,
                    b'\r' => State::SizeLf,
                    _ => return Err(ChunkError::Size),
                }
            }
            State::SizeSpace => {
                self.line += 1;
                match b {
                    b' ' | b'\t' => State::SizeSpace,
                    b';' => State::ExtBeforeName,
                    _ => return Err(ChunkError::Extension),
                }
            }
            State::ExtBeforeName
            | State::ExtName
            | State::ExtAfterName
            | State::ExtBeforeValue
            | State::ExtToken
            | State::ExtQuoted
            | State::ExtEscape
            | State::ExtAfterValue => {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(ChunkError::Extension);
                }
                extension_step(self.state, b).ok_or(ChunkError::Extension)?
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::LineEnding);
                }
                self.line = 0;
                if self.size == 0 {
                    self.last = true;
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::LineEnding),
            },
            State::DataLf => match b {
                b'\n' => State::Size { digits: 0 },
                _ => return Err(ChunkError::LineEnding),
            },
            State::TrailerStart => {
                self.trailer_byte()?;
                match b {
                    b'\r' => State::FinalLf,
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err(ChunkError::Trailer),
                }
            }
            State::TrailerName => {
                self.trailer_byte()?;
                match b {
                    b':' => State::TrailerValue,
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err(ChunkError::Trailer),
                }
            }
            State::TrailerValue => {
                self.trailer_byte()?;
                match b {
                    b'\r' => State::TrailerLf,
                    _ if is_field_vchar(b) => State::TrailerValue,
                    _ => return Err(ChunkError::Trailer),
                }
            }
            State::TrailerLf => {
                self.trailer_byte()?;
                match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::Trailer),
                }
            }
            State::FinalLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkError::LineEnding),
            },
            State::Data | State::Done => unreachable_state(),
        };
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(ChunkError::Trailer);
        }
        Ok(())
    }
}

/// One byte of a chunk's extensions, by RFC 9112 section 7.1.1's grammar:
/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`, up to the CR that ends
/// the size line. `None`: the byte breaks the grammar (`2;` with no name, a quote left open).
fn extension_step(state: State, b: u8) -> Option<State> {
    let ws = b == b' ' || b == b'\t';
    Some(match (state, b) {
        (State::ExtBeforeName, _) if ws => State::ExtBeforeName,
        (State::ExtBeforeName, _) if is_tchar(b) => State::ExtName,
        (State::ExtName, _) if is_tchar(b) => State::ExtName,
        (State::ExtName | State::ExtAfterName, _) if ws => State::ExtAfterName,
        (State::ExtName | State::ExtAfterName | State::ExtAfterValue, b';') => State::ExtBeforeName,
        (State::ExtName | State::ExtAfterName | State::ExtAfterValue, b'\r') => State::SizeLf,
        (State::ExtName | State::ExtAfterName, b'=') => State::ExtBeforeValue,
        (State::ExtBeforeValue, _) if ws => State::ExtBeforeValue,
        (State::ExtBeforeValue, b'"') => State::ExtQuoted,
        (State::ExtBeforeValue | State::ExtToken, _) if is_tchar(b) => State::ExtToken,
        (State::ExtToken, b';') => State::ExtBeforeName,
        (State::ExtToken, b'\r') => State::SizeLf,
        (State::ExtToken | State::ExtAfterValue, _) if ws => State::ExtAfterValue,
        (State::ExtQuoted, b'"') => State::ExtAfterValue,
        (State::ExtQuoted, b'\\') => State::ExtEscape,
        // qdtext: HTAB, SP, and visible characters but `"` and `\`; quoted-pair: any of those.
        (State::ExtQuoted | State::ExtEscape, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
            State::ExtQuoted
        }
        _ => return None,
    })
}

/// `feed` handles `Data` itself and returns on `Done`; `step` never sees either.
#[cold]
fn unreachable_state() -> State {
    debug_assert!(false, "chunked decoder stepped in Data or Done");
    State::Done
}

/// A chunked body forwarded chunked: validated, its chunk extensions left out (they are for
/// the hop that received them), and its trailer section rewritten with only the fields a
/// trailer may carry ([`crate::head::allowed_in_trailer`]). A body with neither is forwarded straight
/// from the read buffer.
#[derive(Debug, Default)]
pub struct ChunkedForward {
    decoder: ChunkedDecoder,
    /// The trailer section as received, until the body ends.
    trailers: Vec<u8>,
    /// Ranges of the current input left out (merged).
    skips: Vec<Range<usize>>,
}

/// What one [`ChunkedForward::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStep {
    /// Bytes of the input that belong to the message.
    pub consumed: usize,
    /// The message ended.
    pub done: bool,
    /// `input[..consumed]` is forwarded as it is; otherwise what is forwarded was appended to
    /// `out`.
    pub direct: bool,
}

impl ChunkedForward {
    /// Total chunk-data bytes seen so far.
    pub fn data_len(&self) -> u64 {
        self.decoder.data_len()
    }

    /// Takes the message bytes at the start of `input`. With `copy` (or when something must
    /// be left out), what is forwarded is appended to `out`.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        copy: bool,
    ) -> Result<ChunkStep, ChunkError> {
        let (skips, trailers) = (&mut self.skips, &mut self.trailers);
        skips.clear();
        let p = self.decoder.feed_forward(
            input,
            |r| match skips.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => skips.push(r),
            },
            |b| trailers.push(b),
        )?;
        if skips.is_empty() && !copy {
            return Ok(ChunkStep {
                consumed: p.consumed,
                done: p.done,
                direct: true,
            });
        }
        let mut at = 0;
        for r in skips.iter() {
            out.extend_from_slice(&input[at..r.start]);
            at = r.end;
        }
        out.extend_from_slice(&input[at..p.consumed]);
        if p.done && self.decoder.trailing {
            super::write_trailers(&self.trailers, out);
            self.trailers = Vec::new();
        }
        Ok(ChunkStep {
            consumed: p.consumed,
            done: p.done,
            direct: false,
        })
    }
}

/// Writes the size line of a chunk of `len` bytes (`len` > 0) into `out`.
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = len;
    loop {
        i -= 1;
        tmp[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns data and consumed length.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let piece = &input[pos..end];
            let p = d.feed(piece, |r| data.extend_from_slice(&piece[r]))?;
            pos += p.consumed;
            if p.done {
                return Ok((data, pos, true));
            }
        }
        Ok((data, pos, d.is_done()))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1;q=\"x\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for step in 1..body.len() {
            let (data, consumed, done) = decode(body, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            assert!(done);
            assert_eq!(consumed, body.len() - b"GET /next".len());
        }
    }

    #[test]
    fn incomplete_is_not_done() {
        let (data, consumed, done) = decode(b"5\r\nhel", 100).unwrap();
        assert_eq!((data.as_slice(), consumed, done), (&b"hel"[..], 6, false));
    }

    #[test]
    fn refuses_malformed() {
        for (bad, err) in [
            (&b"\r\n"[..], ChunkError::Size),
            (b"g\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"ffffffffffffffff\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::Size),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::LineEnding),
            (b"5\r\nhelloX\r\n", ChunkError::LineEnding),
            (b"5 \r\nhello\r\n", ChunkError::Extension),
            (b"5;a\x00\r\n", ChunkError::Extension),
            (b"5;a\nhello", ChunkError::Extension),
            (b"5\rhello", ChunkError::LineEnding),
            (b"0\r\nX T: 1\r\n\r\n", ChunkError::Trailer),
            (b"0\r\n X: 1\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nX: 1\n\r\n", ChunkError::Trailer),
            (b"0\r\n\rX", ChunkError::LineEnding),
        ] {
            assert_eq!(
                decode(bad, 3).unwrap_err(),
                err,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(decode(&long, 100).unwrap_err(), ChunkError::Extension);
    }

    #[test]
    fn chunk_extensions_follow_the_grammar() {
        for good in [
            &b"1;a\r\nx\r\n0\r\n\r\n"[..],
            b"1 ; a = b ; c\r\nx\r\n0\r\n\r\n",
            b"1;a=\"q \\\"x\\\\\";b=t\r\nx\r\n0;last\r\n\r\n",
            b"1;a=\"\"\r\nx\r\n0\r\n\r\n",
        ] {
            for step in 1..good.len() {
                let r = decode(good, step);
                assert!(
                    matches!(r, Ok((_, _, true))),
                    "{:?} step {step}: {r:?}",
                    String::from_utf8_lossy(good)
                );
            }
        }
        for bad in [
            &b"2;\r\nab\r\n"[..],
            b"2; \r\nab\r\n",
            b"2;=v\r\nab\r\n",
            b"2;a=\r\nab\r\n",
            b"2;a=\"open\r\nab\r\n",
            b"2;a=b c\r\nab\r\n",
            b"2;a b\r\nab\r\n",
            b"2;a=\"x\"y\r\nab\r\n",
            b"2;a@b\r\nab\r\n",
            b"2;;a\r\nab\r\n",
        ] {
            assert_eq!(
                decode(bad, 2).unwrap_err(),
                ChunkError::Extension,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Forwards `input` in pieces of `step` bytes; returns what went out and how much of it
    /// went straight from the input.
    fn forward(input: &[u8], step: usize) -> (Vec<u8>, usize) {
        let mut f = ChunkedForward::default();
        let (mut sent, mut direct, mut pos) = (Vec::new(), 0, 0);
        while pos < input.len() {
            let piece = &input[pos..(pos + step).min(input.len())];
            let mut out = Vec::new();
            let p = f.feed(piece, &mut out, false).expect("valid");
            if p.direct {
                sent.extend_from_slice(&piece[..p.consumed]);
                direct += p.consumed;
            } else {
                sent.extend_from_slice(&out);
            }
            pos += p.consumed;
            if p.done {
                break;
            }
        }
        (sent, direct)
    }

    #[test]
    fn forwarding_leaves_out_extensions_and_trailers_that_may_not_cross() {
        let body = b"5;ext=\"v\"\r\nhello\r\n3 ; q\r\n!!!\r\n0;end\r\nX-Sum: 8\r\n\
            Content-Length: 9\r\nhost: evil\r\nAuthorization: x\r\nTransfer-Encoding: chunked\r\n\
            ringmesh-client-identity: spiffe://x/y\r\ngrpc-status: 0\r\n\r\n";
        for step in 1..=body.len() {
            let (sent, _) = forward(body, step);
            assert_eq!(
                String::from_utf8_lossy(&sent),
                "5\r\nhello\r\n3\r\n!!!\r\n0\r\nX-Sum: 8\r\ngrpc-status: 0\r\n\r\n",
                "step {step}"
            );
        }
        // Without extensions or trailers, everything goes straight from the input.
        let plain = b"5\r\nhello\r\n0\r\n\r\n";
        for step in 1..=plain.len() {
            assert_eq!(
                forward(plain, step),
                (plain.to_vec(), plain.len()),
                "{step}"
            );
        }
    }

    #[test]
    fn size_line_round_trip() {
        for n in [1usize, 9, 10, 15, 16, 255, 4096, 1 << 20] {
            let mut out = Vec::new();
            write_chunk_size(&mut out, n);
            out.extend(std::iter::repeat_n(b'x', n));
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            let (data, _, done) = decode(&out, 7).unwrap();
            assert!(done);
            assert_eq!(data.len(), n);
        }
    }
}
