//! Server names: reading the SNI of a TLS ClientHello without terminating TLS (to route a TCP
//! connection by it, TLS passing through untouched), and looking names up among exact names and
//! one-label wildcards.

use rustc_hash::FxHashMap;

/// Largest ClientHello read to find its server name. Browsers' hellos with post-quantum key
/// shares are about 2 KB; anything past this is refused rather than buffered.
pub const MAX_HELLO: usize = 16 * 1024;

/// What the first bytes of a connection say about its server name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello<'a> {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello (or one past [`MAX_HELLO`], or malformed).
    NotTls,
    /// A ClientHello, with the host name it names, if any (as sent: any case).
    Tls(Option<&'a [u8]>),
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// Finds the server name in the ClientHello at the start of `buf`. The hello may span several
/// TLS records; its pieces are joined in `scratch` when it does.
pub fn server_name<'a>(buf: &'a [u8], scratch: &'a mut Vec<u8>) -> Hello<'a> {
    scratch.clear();
    let mut at = 0;
    // The hello's only fragment so far: most hellos fit one record and are read in place.
    let mut only: Option<&'a [u8]> = None;
    let body_len = loop {
        let rest = &buf[at..];
        let Some(header) = rest.get(..5) else {
            return if plausible(rest) {
                Hello::Incomplete
            } else {
                Hello::NotTls
            };
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 {
            return Hello::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Hello::Incomplete;
        };
        at += 5 + len;
        let message: &[u8] = if only.is_none() && scratch.is_empty() {
            only = Some(fragment);
            fragment
        } else {
            if let Some(first) = only.take() {
                scratch.extend_from_slice(first);
            }
            scratch.extend_from_slice(fragment);
            scratch
        };
        match hello_length(message) {
            Err(()) => return Hello::NotTls,
            Ok(None) => continue,
            Ok(Some(n)) => break n,
        }
    };
    let message: &'a [u8] = match only {
        Some(m) => m,
        None => scratch,
    };
    match client_hello_name(&message[4..4 + body_len]) {
        Some(name) => Hello::Tls(name),
        None => Hello::NotTls,
    }
}

/// The length of the ClientHello body once `message` holds all of it; `Ok(None)`: not yet;
/// `Err`: not a ClientHello, or too large.
fn hello_length(message: &[u8]) -> Result<Option<usize>, ()> {
    let Some(&[kind, a, b, c]) = message.get(..4) else {
        return Ok(None);
    };
    if kind != CLIENT_HELLO {
        return Err(());
    }
    let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if body_len + 4 > MAX_HELLO {
        return Err(());
    }
    Ok((message.len() >= body_len + 4).then_some(body_len))
}

/// Whether an incomplete record header could still be a handshake record.
fn plausible(start: &[u8]) -> bool {
    match start {
        [] => true,
        [t] => *t == HANDSHAKE,
        [t, v, ..] => *t == HANDSHAKE && *v == 3,
    }
}

/// A cursor over a ClientHello's fields; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A field prefixed by its length in `width` bytes.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len)
    }
}

/// The host name of a ClientHello body (RFC 8446 section 4.1.2, RFC 6066 section 3). `None`:
/// malformed; `Some(None)`: no server name.
fn client_hello_name(body: &[u8]) -> Option<Option<&[u8]>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.vec(1)?;
    if session_id.len() > 32 {
        return None;
    }
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all (very old clients)
    }
    let mut exts = Reader(r.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader(data);
        let mut names = Reader(list.vec(2)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec(2)?;
            if name_type == HOST_NAME {
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                return valid.then_some(Some(name));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Values by server name: exact names first, then `*.suffix` wildcards (one label, as RFC 6125
/// has it: `*.b.example` covers `x.b.example`, not `x.y.b.example` nor `b.example`), then the
/// default. Names are kept lowercase; lookups lowercase what they are given.
#[derive(Debug, Clone)]
pub struct NameMap<T> {
    exact: FxHashMap<Box<[u8]>, T>,
    wildcard: FxHashMap<Box<[u8]>, T>,
    /// For names that match nothing, and for no name.
    pub default: Option<T>,
}

impl<T> Default for NameMap<T> {
    fn default() -> Self {
        NameMap {
            exact: FxHashMap::default(),
            wildcard: FxHashMap::default(),
            default: None,
        }
    }
}

impl<T> NameMap<T> {
    /// Adds `name` (exact, or `*.suffix`); gives the value back if the name is taken.
    pub fn insert(&mut self, name: &str, value: T) -> Result<(), T> {
        let name = name.to_ascii_lowercase();
        let (map, key) = match name.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, name.as_str()),
        };
        match map.entry(key.as_bytes().into()) {
            std::collections::hash_map::Entry::Occupied(_) => Err(value),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(value);
                Ok(())
            }
        }
    }

    /// Every value, the default included.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.default.as_ref())
    }

    /// The value for `name` (any case), else the default.
    pub fn get(&self, name: Option<&[u8]>) -> Option<&T> {
        let mut lower = [0u8; 253];
        if let Some(given) = name.filter(|n| n.len() <= lower.len()) {
            let name = &mut lower[..given.len()];
            name.copy_from_slice(given);
            name.make_ascii_lowercase();
            if let Some(v) = self.exact.get(&*name) {
                return Some(v);
            }
            if let Some(dot) = name.iter().position(|&b| b == b'.') {
                if let Some(v) = self.wildcard.get(&name[dot + 1..]) {
                    return Some(v);
                }
            }
        }
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record naming `name` (or none), with an extension before SNI.
    pub(crate) fn hello(name: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        exts.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
        if let Some(n) = name {
            let n = n.as_bytes();
            let entry_len = 3 + n.len();
            exts.extend_from_slice(&SERVER_NAME.to_be_bytes());
            exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
            exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
            exts.push(HOST_NAME);
            exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
            exts.extend_from_slice(n);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        record(&msg)
    }

    fn record(fragment: &[u8]) -> Vec<u8> {
        let mut r = vec![HANDSHAKE, 3, 1];
        r.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        r.extend_from_slice(fragment);
        r
    }

    #[test]
    fn the_server_name_is_found_whole_or_in_pieces() {
        let mut s = Vec::new();
        let h = hello(Some("Db.Example"));
        assert_eq!(
            server_name(&h, &mut s),
            Hello::Tls(Some(&b"Db.Example"[..]))
        );
        for cut in 0..h.len() {
            assert_eq!(
                server_name(&h[..cut], &mut s),
                Hello::Incomplete,
                "cut {cut}"
            );
        }
        // The same message over three records.
        let msg = &h[5..];
        let mut split = record(&msg[..10]);
        split.extend(record(&msg[10..40]));
        split.extend(record(&msg[40..]));
        assert_eq!(
            server_name(&split, &mut s),
            Hello::Tls(Some(&b"Db.Example"[..]))
        );
        assert_eq!(server_name(&hello(None), &mut s), Hello::Tls(None));
    }

    #[test]
    fn other_protocols_and_malformed_hellos_are_not_tls() {
        let mut s = Vec::new();
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n", &mut s), Hello::NotTls);
        assert_eq!(server_name(b"SSH-2.0", &mut s), Hello::NotTls);
        assert_eq!(server_name(b"\x16\x03", &mut s), Hello::Incomplete);
        let mut h = hello(Some("a.example"));
        let last = h.len() - 1;
        h[last] = b'/';
        assert_eq!(server_name(&h, &mut s), Hello::NotTls, "bad name byte");
        // A hello that claims more than MAX_HELLO.
        let mut big = vec![HANDSHAKE, 3, 1, 0x40, 0x00, CLIENT_HELLO, 0x01, 0x00, 0x00];
        big.resize(5 + 0x4000, 0);
        assert_eq!(server_name(&big, &mut s), Hello::NotTls);
    }

    #[test]
    fn names_resolve_exact_then_wildcard_then_default() {
        let mut m = NameMap::default();
        m.insert("a.example", 1).unwrap();
        m.insert("*.b.example", 2).unwrap();
        assert_eq!(m.insert("A.example", 9), Err(9));
        assert_eq!(m.get(Some(b"A.EXAMPLE")), Some(&1));
        assert_eq!(m.get(Some(b"x.b.example")), Some(&2));
        assert_eq!(m.get(Some(b"x.y.b.example")), None);
        assert_eq!(m.get(Some(b"b.example")), None);
        m.default = Some(0);
        assert_eq!(m.get(None), Some(&0));
        assert_eq!(m.get(Some(b"other")), Some(&0));
    }
}
