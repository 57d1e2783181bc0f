//! HPACK (RFC 7541) for both sides: a decoder with its dynamic table and Huffman code; and the
//! literal forms heads are written in. What we send is never indexed and never Huffman-coded:
//! that keeps the encoder stateless (the peer's table size does not matter to it) and its work
//! a copy, at the price of a few bytes on the wire.

use std::collections::VecDeque;
use std::ops::Range;

use super::frame::Code;

/// A header block that breaks HPACK's rules: a COMPRESSION_ERROR for the whole connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// What a header block may decode to at most, as RFC 7541 counts a field list (name, value and
/// 32 bytes a field): a few bytes of references to large table entries would otherwise expand
/// to hundreds of megabytes. Past it, the block is an abuse, not just too large an answer or
/// request: the connection ends.
pub(crate) const MAX_LIST: usize = 512 * 1024;

/// RFC 7541 Appendix A.
static STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Static table indexes the request encoder uses.
pub(crate) const AUTHORITY: usize = 1;
pub(crate) const METHOD: usize = 2;
pub(crate) const METHOD_GET: usize = 2;
pub(crate) const METHOD_POST: usize = 3;
pub(crate) const PATH: usize = 4;
pub(crate) const PATH_ROOT: usize = 4;
pub(crate) const SCHEME_HTTP: usize = 6;
pub(crate) const SCHEME_HTTPS: usize = 7;
pub(crate) const CONTENT_LENGTH: usize = 28;
/// `:status`; the next six are 204, 206, 304, 400, 404 and 500.
pub(crate) const STATUS: usize = 8;

/// Where a decoded string is: in the block itself, or Huffman-decoded into the scratch buffer.
#[derive(Clone)]
enum Str {
    Block(Range<usize>),
    Scratch(Range<usize>),
}

/// A field's name: a table entry's, or a string.
enum Name {
    Static(&'static [u8]),
    Dynamic(usize),
    Str(Str),
}

struct Entry {
    name: Box<[u8]>,
    value: Box<[u8]>,
}

impl Entry {
    /// RFC 7541 section 4.1.
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// The decoder of one connection's header blocks.
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    /// The table's size now, as the encoder last set it.
    max: usize,
    /// What the encoder may set it to: our SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
    scratch: Vec<u8>,
    /// The last block decoded past `list_limit` ([`MAX_LIST`] unless set higher).
    overflowed: bool,
    pub(crate) list_limit: usize,
}

impl Decoder {
    pub(crate) fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
            scratch: Vec::new(),
            overflowed: false,
            list_limit: MAX_LIST,
        }
    }

    /// The connection error for the block that failed to decode: too large a list is an
    /// abuse, anything else a compression error.
    pub(crate) fn error_code(&self) -> Code {
        if self.overflowed {
            Code::ENHANCE_YOUR_CALM
        } else {
            Code::COMPRESSION_ERROR
        }
    }

    /// Decodes a whole header block, handing each field to `field` in order. Every block must
    /// be decoded, even one for a stream already gone, or the table goes out of step.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Malformed> {
        let mut at = 0;
        let mut fields = false;
        let mut list = 0usize;
        self.scratch.clear();
        self.overflowed = false;
        while let Some(&b) = block.get(at) {
            if b & 0x80 != 0 {
                let i = int(block, &mut at, 7)?;
                let (n, v) = self.get(i)?;
                list += n.len() + v.len() + 32;
                if list > self.list_limit {
                    self.overflowed = true;
                    return Err(Malformed);
                }
                field(n, v);
            } else if b & 0xe0 == 0x20 {
                // A size update may only open a block (RFC 7541 section 4.2).
                let size = int(block, &mut at, 5)?;
                if fields || size > self.limit {
                    return Err(Malformed);
                }
                self.max = size;
                self.evict(0);
                continue;
            } else {
                let indexing = b & 0xc0 == 0x40;
                let i = int(block, &mut at, if indexing { 6 } else { 4 })?;
                let name = match i {
                    0 => Name::Str(self.string(block, &mut at)?),
                    i if i <= STATIC.len() => Name::Static(STATIC[i - 1].0),
                    i => {
                        let d = i - STATIC.len() - 1;
                        if d >= self.table.len() {
                            return Err(Malformed);
                        }
                        Name::Dynamic(d)
                    }
                };
                let value = self.string(block, &mut at)?;
                let v = self.str(block, &value);
                let n: &[u8] = match &name {
                    Name::Static(n) => n,
                    Name::Dynamic(d) => &self.table[*d].name,
                    Name::Str(s) => self.str(block, s),
                };
                list += n.len() + v.len() + 32;
                if list > self.list_limit {
                    self.overflowed = true;
                    return Err(Malformed);
                }
                field(n, v);
                if indexing {
                    let entry = Entry {
                        name: n.into(),
                        value: v.into(),
                    };
                    self.insert(entry);
                }
            }
            fields = true;
        }
        Ok(())
    }

    fn str<'a>(&'a self, block: &'a [u8], s: &Str) -> &'a [u8] {
        match s {
            Str::Block(r) => &block[r.clone()],
            Str::Scratch(r) => &self.scratch[r.clone()],
        }
    }

    /// A string literal (RFC 7541 section 5.2).
    fn string(&mut self, block: &[u8], at: &mut usize) -> Result<Str, Malformed> {
        let huffman = block.get(*at).ok_or(Malformed)? & 0x80 != 0;
        let len = int(block, at, 7)?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= block.len())
            .ok_or(Malformed)?;
        let raw = *at..end;
        *at = end;
        if !huffman {
            return Ok(Str::Block(raw));
        }
        let start = self.scratch.len();
        huffman_decode(&block[raw], &mut self.scratch)?;
        Ok(Str::Scratch(start..self.scratch.len()))
    }

    fn get(&self, i: usize) -> Result<(&[u8], &[u8]), Malformed> {
        match i {
            0 => Err(Malformed),
            i if i <= STATIC.len() => Ok(STATIC[i - 1]),
            i => self
                .table
                .get(i - STATIC.len() - 1)
                .map(|e| (&e.name[..], &e.value[..]))
                .ok_or(Malformed),
        }
    }

    fn insert(&mut self, e: Entry) {
        let size = e.size();
        if size > self.max {
            // An entry larger than the table empties it (RFC 7541 section 4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(e);
    }

    /// Evicts until `room` more fits.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some(e) = self.table.pop_back() else {
                break;
            };
            self.size -= e.size();
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 section 5.1); at most 2^28, which is more than
/// any length or index a block can hold.
fn int(block: &[u8], at: &mut usize, n: u8) -> Result<usize, Malformed> {
    let mask = (1u16 << n) as usize - 1;
    let first = *block.get(*at).ok_or(Malformed)? as usize & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut v = mask;
    let mut shift = 0;
    loop {
        let b = *block.get(*at).ok_or(Malformed)?;
        *at += 1;
        if shift > 21 {
            return Err(Malformed);
        }
        v += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// Decodes a Huffman-coded string onto `out`. The code is canonical, so a code's length is the
/// first length whose codes, left-aligned, end above the next 30 bits.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    const MASK30: u64 = (1 << 30) - 1;
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut bytes = src.iter();
    loop {
        while bits < 30 {
            let Some(&b) = bytes.next() else { break };
            acc = (acc << 8) | b as u64;
            bits += 8;
        }
        if bits == 0 {
            return Ok(());
        }
        // The next 30 bits; at the end, padded with ones (the padding is EOS's prefix).
        let v = if bits >= 30 {
            (acc >> (bits - 30)) & MASK30
        } else {
            ((acc << (30 - bits)) & MASK30) | ((1 << (30 - bits)) - 1)
        } as u32;
        let mut len = 5;
        while v >= LIMIT[len] {
            len += 1;
        }
        let rest = (1u64 << bits) - 1;
        if len as u32 > bits {
            // Padding: fewer than 8 bits, all ones (RFC 7541 section 5.2).
            return if bits < 8 && acc & rest == rest {
                Ok(())
            } else {
                Err(Malformed)
            };
        }
        let sym = SYMBOLS[OFFSET[len] as usize + ((v >> (30 - len)) - FIRST[len]) as usize];
        if sym > 255 {
            return Err(Malformed);
        }
        out.push(sym as u8);
        bits -= len as u32;
        acc &= (1u64 << bits) - 1;
    }
}

/// Writes an integer with an `n`-bit prefix, `first` holding the representation's flag bits.
pub(crate) fn put_int(out: &mut Vec<u8>, first: u8, n: u8, v: usize) {
    let mask = (1u16 << n) as usize - 1;
    if v < mask {
        out.push(first | v as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut v = v - mask;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field from the static table, name and value.
pub(crate) fn put_indexed(out: &mut Vec<u8>, i: usize) {
    put_int(out, 0x80, 7, i);
}

/// A field not indexed, its name from the static table.
pub(crate) fn put_named(out: &mut Vec<u8>, i: usize, value: &[u8]) {
    put_int(out, 0, 4, i);
    put_string(out, value);
}

/// A field not indexed, its name from the static table, its value a number (written in place:
/// 20 digits at most, so the length prefix is one byte).
pub(crate) fn put_named_u64(out: &mut Vec<u8>, i: usize, value: u64) {
    put_int(out, 0, 4, i);
    let at = out.len();
    out.push(0);
    crate::digits::push_u64(out, value);
    out[at] = (out.len() - at - 1) as u8;
}

/// A field not indexed, its name written out (lowercased: HTTP/2 field names are).
pub(crate) fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    put_int(out, 0, 7, name.len());
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    put_string(out, value);
}

/// A field not indexed, its name written out (lowercased), its value written by `value`: the
/// length prefix goes in front once the value's length is known.
pub(crate) fn put_literal_with(out: &mut Vec<u8>, name: &[u8], value: &dyn Fn(&mut Vec<u8>)) {
    out.push(0);
    put_int(out, 0, 7, name.len());
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    let at = out.len();
    out.push(0);
    value(out);
    let len = out.len() - at - 1;
    if len < 0x7f {
        out[at] = len as u8;
        return;
    }
    // A long value: its prefix takes more than the byte set aside, and the value moves up.
    let mut prefix = Vec::with_capacity(5);
    put_int(&mut prefix, 0, 7, len);
    let extra = prefix.len() - 1;
    out.extend_from_slice(&prefix[1..]);
    out.copy_within(at + 1..at + 1 + len, at + 1 + extra);
    out[at..at + prefix.len()].copy_from_slice(&prefix);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

// RFC 7541 Appendix B, as a canonical code: symbols in code order, and per code length the
// first code, the index of its first symbol, and (left-aligned to 30 bits) the end of its codes.
const SYMBOLS: [u16; 257] = [
    48, 49, 50, 97, 99, 101, 105, 111, 115, 116, 32, 37, 45, 46, 47, 51, 52, 53, 54, 55, 56, 57,
    61, 65, 95, 98, 100, 102, 103, 104, 108, 109, 110, 112, 114, 117, 58, 66, 67, 68, 69, 70, 71,
    72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 89, 106, 107, 113, 118, 119,
    120, 121, 122, 38, 42, 44, 59, 88, 90, 33, 34, 40, 41, 63, 39, 43, 124, 35, 62, 0, 36, 64, 91,
    93, 126, 94, 125, 60, 96, 123, 92, 195, 208, 128, 130, 131, 162, 184, 194, 224, 226, 153, 161,
    167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230, 129, 132, 133, 134, 136, 146, 154, 156,
    160, 163, 164, 169, 170, 173, 178, 181, 185, 186, 187, 189, 190, 196, 198, 228, 232, 233, 1,
    135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165, 166, 168, 174,
    175, 180, 182, 183, 188, 191, 197, 231, 239, 9, 142, 144, 145, 148, 159, 171, 206, 215, 225,
    236, 237, 199, 207, 234, 235, 192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242,
    243, 255, 203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252,
    253, 254, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28,
    29, 30, 31, 127, 220, 249, 10, 13, 22, 256,
];
const FIRST: [u32; 31] = [
    0, 0, 0, 0, 0, 0, 20, 92, 248, 0, 1016, 2042, 4090, 8184, 16380, 32764, 0, 0, 0, 524272,
    1048550, 2097116, 4194258, 8388568, 16777194, 33554412, 67108832, 134217694, 268435426, 0,
    1073741820,
];
const OFFSET: [u16; 31] = [
    0, 0, 0, 0, 0, 0, 10, 36, 68, 0, 74, 79, 82, 84, 90, 92, 0, 0, 0, 95, 98, 106, 119, 145, 174,
    186, 190, 205, 224, 0, 253,
];
const LIMIT: [u32; 31] = [
    0, 0, 0, 0, 0, 335544320, 771751936, 1040187392, 1065353216, 1065353216, 1070596096,
    1072168960, 1072693248, 1073479680, 1073610752, 1073709056, 1073709056, 1073709056, 1073709056,
    1073715200, 1073723392, 1073730048, 1073736704, 1073740416, 1073741184, 1073741312, 1073741552,
    1073741704, 1073741820, 1073741820, 1073741824,
];
#[cfg(test)]
const CODES: [u32; 257] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
];
#[cfg(test)]
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Huffman-codes `s` with the RFC's table (tests only: requests are never coded).
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in s {
            acc = (acc << LENGTHS[b as usize]) | CODES[b as usize] as u64;
            bits += LENGTHS[b as usize] as u32;
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
        let mut fields = Vec::new();
        d.decode(block, |n, v| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(fields)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn every_byte_value_goes_through_the_huffman_code_and_back() {
        let mut all: Vec<u8> = (0..=255).collect();
        all.extend((0..=255u8).rev());
        for len in [0, 1, 2, 3, 7, 8, 100, all.len()] {
            for start in [0, 13, 200] {
                let s: Vec<u8> = all.iter().cycle().skip(start).take(len).copied().collect();
                let mut out = Vec::new();
                huffman_decode(&huffman_encode(&s), &mut out).unwrap();
                assert_eq!(out, s, "len {len} from {start}");
            }
        }
    }

    #[test]
    fn huffman_padding_must_be_short_and_all_ones() {
        // "a" is 00011 (5 bits): three bits of padding.
        let mut out = Vec::new();
        assert_eq!(huffman_decode(&[0b0001_1111], &mut out), Ok(()));
        assert_eq!(out, b"a");
        // Padding with a zero bit.
        assert_eq!(
            huffman_decode(&[0b0001_1110], &mut Vec::new()),
            Err(Malformed)
        );
        // A whole byte of padding.
        assert_eq!(
            huffman_decode(&[0b0001_1111, 0xff], &mut Vec::new()),
            Err(Malformed)
        );
        // EOS itself (30 ones) inside the string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xfc], &mut Vec::new()),
            Err(Malformed)
        );
    }

    /// RFC 7541 C.4: requests with Huffman-coded strings, one table across the three.
    #[test]
    fn the_rfc_request_examples_decode() {
        let mut d = Decoder::new(4096);
        let first = decode_all(&mut d, &unhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")).unwrap();
        assert_eq!(
            first,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let second = decode_all(&mut d, &unhex("828684be5886a8eb10649cbf")).unwrap();
        assert_eq!(
            second,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        let third = decode_all(
            &mut d,
            &unhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
        )
        .unwrap();
        assert_eq!(
            third,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164, "the table's size after C.4.3");
    }

    #[test]
    fn the_table_evicts_oldest_first_and_obeys_size_updates() {
        let mut d = Decoder::new(100);
        // Literal with incremental indexing, new name: entries of 32 + 2 bytes.
        let add = |n: &str, v: &str| {
            let mut b = vec![0x40, n.len() as u8];
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
            b
        };
        decode_all(&mut d, &add("a", "1")).unwrap();
        decode_all(&mut d, &add("b", "2")).unwrap();
        // Newest is 62.
        assert_eq!(decode_all(&mut d, &[0xbe]).unwrap(), pairs(&[("b", "2")]));
        assert_eq!(decode_all(&mut d, &[0xbf]).unwrap(), pairs(&[("a", "1")]));
        // A third entry does not fit with both: the oldest goes.
        decode_all(&mut d, &add("c", "3")).unwrap();
        assert_eq!(decode_all(&mut d, &[0xbf]).unwrap(), pairs(&[("b", "2")]));
        assert_eq!(decode_all(&mut d, &[0xc0]), Err(Malformed));
        // A size update to 40 keeps only the newest.
        assert_eq!(
            decode_all(&mut d, &[0x3f, 0x09, 0xbe]).unwrap(),
            pairs(&[("c", "3")])
        );
        assert_eq!(decode_all(&mut d, &[0xbf]), Err(Malformed));
        // Above the limit we set, or after a field: refused.
        assert_eq!(decode_all(&mut d, &[0x3f, 0x46]), Err(Malformed));
        assert_eq!(decode_all(&mut d, &[0x82, 0x20]), Err(Malformed));
    }

    #[test]
    fn broken_blocks_are_refused_not_misread() {
        let mut d = Decoder::new(4096);
        for block in [
            &[0x80][..],                                 // index 0
            &[0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], // an integer past 2^28
            &[0xbe],                                     // an empty dynamic table
            &[0x00, 0x05, b'a'],                         // a name longer than the block
            &[0x0f],                                     // an integer cut short
            &[0x04],                                     // a literal without its value
        ] {
            assert_eq!(decode_all(&mut d, block), Err(Malformed), "{block:?}");
        }
    }

    #[test]
    fn what_the_encoder_writes_decodes_to_the_same_fields() {
        let mut b = Vec::new();
        put_indexed(&mut b, METHOD_POST);
        put_indexed(&mut b, SCHEME_HTTPS);
        put_named(&mut b, AUTHORITY, b"example.com");
        put_named(&mut b, PATH, &[b'x'; 300]);
        put_literal(&mut b, b"X-Long-Name", &[b'v'; 127]);
        put_named_u64(&mut b, CONTENT_LENGTH, 12);
        put_named_u64(&mut b, CONTENT_LENGTH, u64::MAX);
        let fields = decode_all(&mut Decoder::new(4096), &b).unwrap();
        let long = "x".repeat(300);
        let v = "v".repeat(127);
        assert_eq!(
            fields,
            pairs(&[
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "example.com"),
                (":path", &long),
                ("x-long-name", &v),
                ("content-length", "12"),
                ("content-length", "18446744073709551615")
            ])
        );
        let _ = (METHOD, METHOD_GET, PATH_ROOT, SCHEME_HTTP);
    }
}
