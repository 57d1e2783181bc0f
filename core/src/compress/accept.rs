//! `Accept-Encoding` (RFC 9110 section 12.5.3): which of a route's algorithms a client gets.
//!
//! Each element is a coding with an optional weight `q` (0 to 1, three decimals); `*` stands
//! for every coding not named; `q=0` refuses. The highest weight wins, and the route's order
//! breaks ties. A request without the field gets no coding (as nginx and Envoy do: a client
//! that says nothing may not decode one). An element that cannot be read is ignored, never the
//! whole field.

use super::Algorithm;

/// The weight of each algorithm in one or more `Accept-Encoding` values, in thousandths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weights {
    /// `zstd`, `br`, `gzip`: the weight named, if named.
    named: [Option<u16>; 3],
    /// `*`, if named.
    any: Option<u16>,
}

impl Weights {
    /// Reads one field value (a request may carry several fields; read each into the same).
    pub fn read(&mut self, value: &[u8]) {
        for element in value.split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for p in parts {
                let p = p.trim_ascii();
                if let Some(v) = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")) {
                    q = qvalue(v);
                }
            }
            let Some(q) = q else { continue };
            if coding == b"*" {
                self.any = Some(q);
            } else if let Some(a) = Algorithm::from_token(coding) {
                self.named[slot(a)] = Some(q);
            }
        }
    }

    /// The weight a coding gets: its own, or `*`'s, or none.
    pub fn of(&self, a: Algorithm) -> u16 {
        self.named[slot(a)].or(self.any).unwrap_or(0)
    }

    /// The algorithm of `preference` with the highest weight above zero (the earlier on a tie).
    pub fn choose(&self, preference: &[Algorithm]) -> Option<Algorithm> {
        let mut best: Option<(Algorithm, u16)> = None;
        for &a in preference {
            let q = self.of(a);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((a, q));
            }
        }
        best.map(|(a, _)| a)
    }
}

fn slot(a: Algorithm) -> usize {
    match a {
        Algorithm::Zstd => 0,
        Algorithm::Brotli => 1,
        Algorithm::Gzip => 2,
    }
}

/// A qvalue in thousandths: `0`, `0.5`, `1.000`; `None` when it is not one.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int[0] {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Algorithm::*;

    fn choose(values: &[&str], pref: &[Algorithm]) -> Option<Algorithm> {
        let mut w = Weights::default();
        for v in values {
            w.read(v.as_bytes());
        }
        w.choose(pref)
    }

    #[test]
    fn the_highest_weight_wins_and_the_route_breaks_ties() {
        let all = [Zstd, Brotli, Gzip];
        assert_eq!(choose(&["gzip, deflate, br, zstd"], &all), Some(Zstd));
        assert_eq!(
            choose(&["gzip, deflate, br, zstd"], &[Gzip, Brotli]),
            Some(Gzip)
        );
        assert_eq!(choose(&["gzip;q=1.0, br;q=0.9"], &all), Some(Gzip));
        assert_eq!(choose(&["gzip;q=0.5", "br;q=0.8"], &all), Some(Brotli));
        assert_eq!(choose(&["GZIP ; Q=0.001"], &all), Some(Gzip));
        assert_eq!(choose(&["x-gzip"], &all), Some(Gzip));
        assert_eq!(choose(&["*"], &[Brotli, Gzip]), Some(Brotli));
        assert_eq!(choose(&["*;q=0.5, br;q=0.1"], &[Brotli, Gzip]), Some(Gzip));
    }

    #[test]
    fn refusals_and_nonsense_give_nothing() {
        let all = [Zstd, Brotli, Gzip];
        assert_eq!(choose(&[], &all), None);
        assert_eq!(choose(&["identity"], &all), None);
        assert_eq!(choose(&["gzip;q=0"], &all), None);
        assert_eq!(choose(&["*;q=0"], &all), None);
        assert_eq!(choose(&["*, gzip;q=0, br;q=0, zstd;q=0.000"], &all), None);
        assert_eq!(choose(&["br;q=0"], &[Brotli]), None);
        // An unreadable weight drops its element only.
        assert_eq!(
            choose(&["br;q=2, gzip;q=0.0001, zstd;q=x, gzip"], &all),
            Some(Gzip)
        );
        assert_eq!(choose(&["br;q=1.5"], &all), None);
        assert_eq!(choose(&[",,;, ;q=1"], &all), None);
    }

    #[test]
    fn qvalues_read_as_the_grammar_says() {
        assert_eq!(qvalue(b"1"), Some(1000));
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"0.25"), Some(250));
        assert_eq!(qvalue(b"0"), Some(0));
        for bad in [&b"1.1"[..], b"2", b"0.1234", b"", b".5", b"00.5", b"0.-1"] {
            assert_eq!(qvalue(bad), None, "{:?}", std::str::from_utf8(bad));
        }
    }
}
