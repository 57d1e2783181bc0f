//! Streaming encoders: data in, coded bytes out, flushed at every step so that what the
//! upstream sent so far reaches the client (an answer that streams, such as a feed of events,
//! is not held back until a buffer fills), and memory bounded whatever the answer's length.
//!
//! Memory per stream: gzip's window is 32 KiB (about 280 KiB of state in all); brotli's window
//! is capped at 2^18 bytes and zstd's at 2^19, where their defaults reach 4 and 2 MiB.

use std::io::{self, Write};

use super::{Algorithm, Levels};

/// Brotli's window, as a power of two.
const BROTLI_WINDOW_LOG: u32 = 18;
/// Zstd's window, as a power of two.
const ZSTD_WINDOW_LOG: u32 = 19;
/// Brotli's internal buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

/// One answer's encoder.
pub struct Encoder {
    inner: Option<Inner>,
    /// Coded bytes not yet taken, when the encoder had to give up its own buffer.
    done: Vec<u8>,
}

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder for `a` at the route's level. `size`: the answer's length, when declared
    /// (zstd sizes its tables to it).
    pub fn new(a: Algorithm, levels: &Levels, size: Option<u64>) -> io::Result<Encoder> {
        let out = Vec::new();
        let inner = match a {
            Algorithm::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(levels.gzip),
            )),
            Algorithm::Brotli => Inner::Brotli(Box::new(brotli::CompressorWriter::new(
                out,
                BROTLI_BUFFER,
                levels.brotli,
                BROTLI_WINDOW_LOG,
            ))),
            Algorithm::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, levels.zstd)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                if size.is_some() {
                    e.set_pledged_src_size(size)?;
                }
                Inner::Zstd(e)
            }
        };
        Ok(Encoder {
            inner: Some(inner),
            done: Vec::new(),
        })
    }

    /// Codes `data` (the output may hold it back until [`flush`](Self::flush)).
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(Inner::Gzip(e)) => e.write_all(data),
            Some(Inner::Brotli(e)) => e.write_all(data),
            Some(Inner::Zstd(e)) => e.write_all(data),
            None => Err(finished()),
        }
    }

    /// Flushes: everything written so far can be decoded from the output.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(Inner::Gzip(e)) => e.flush(),
            Some(Inner::Brotli(e)) => e.flush(),
            Some(Inner::Zstd(e)) => e.flush(),
            None => Err(finished()),
        }
    }

    /// [`write`](Self::write), then [`flush`](Self::flush).
    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data)?;
        self.flush()
    }

    /// Ends the coded stream (its trailer, checksums).
    pub fn finish(&mut self) -> io::Result<()> {
        match self.inner.take() {
            Some(Inner::Gzip(e)) => self.done = e.finish()?,
            Some(Inner::Brotli(e)) => self.done = e.into_inner(),
            Some(Inner::Zstd(e)) => self.done = e.finish()?,
            None => {}
        }
        Ok(())
    }

    /// The coded bytes produced since the last call; the caller empties it.
    pub fn output(&mut self) -> &mut Vec<u8> {
        match self.inner.as_mut() {
            Some(Inner::Gzip(e)) => e.get_mut(),
            Some(Inner::Brotli(e)) => e.get_mut(),
            Some(Inner::Zstd(e)) => e.get_mut(),
            None => &mut self.done,
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("coded stream already finished")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Text that compresses, as pages do.
    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(
                format!("<li id=\"item-{i}\">entry {}</li>\n", i * 7 % 13).as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn decode(a: Algorithm, coded: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match a {
            Algorithm::Gzip => {
                flate2::read::GzDecoder::new(coded)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Brotli => {
                brotli::Decompressor::new(coded, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Zstd => out = zstd::stream::decode_all(coded).unwrap(),
        }
        out
    }

    #[test]
    fn every_algorithm_round_trips_in_steps_and_each_step_is_decodable() {
        let body = text(300_000);
        for (_, a) in Algorithm::ALL {
            for size in [None, Some(body.len() as u64)] {
                let mut e = Encoder::new(a, &Levels::default(), size).unwrap();
                let mut coded = Vec::new();
                for part in body.chunks(16 * 1024) {
                    e.push(part).unwrap();
                    coded.append(e.output());
                }
                // Flushed: the first step alone decodes to the first part (gzip and brotli
                // decoders accept a stream cut at a flush).
                e.finish().unwrap();
                coded.append(e.output());
                assert!(coded.len() < body.len() / 4, "{a:?} compresses");
                assert_eq!(decode(a, &coded), body, "{a:?} {size:?}");
            }
        }
    }

    #[test]
    fn a_flushed_prefix_decodes_to_what_was_pushed() {
        let body = text(40_000);
        let mut e = Encoder::new(Algorithm::Gzip, &Levels::default(), None).unwrap();
        e.push(&body[..20_000]).unwrap();
        let prefix = e.output().clone();
        let mut out = Vec::new();
        // The stream is not ended: the decoder reads what there is, then reports the cut.
        let _ = flate2::read::GzDecoder::new(&prefix[..]).read_to_end(&mut out);
        assert_eq!(out, &body[..20_000]);
    }

    #[test]
    fn an_empty_answer_is_a_valid_coded_stream() {
        for (_, a) in Algorithm::ALL {
            let mut e = Encoder::new(a, &Levels::default(), Some(0)).unwrap();
            e.finish().unwrap();
            let coded = std::mem::take(e.output());
            assert!(!coded.is_empty());
            assert_eq!(decode(a, &coded), b"");
        }
    }
}
