//! Decimal numbers written into byte buffers without formatting machinery: heads, HPACK blocks
//! and access log lines are full of small numbers (statuses, ports, lengths, milliseconds).

/// Two decimal digits for each of 0 to 99.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
      2021222324252627282930313233343536373839\
      4041424344454647484950515253545556575859\
      6061626364656667686970717273747576777879\
      8081828384858687888990919293949596979899";

/// Appends the decimal form of `n`. Numbers below 100,000 (statuses, ports, small sizes, most
/// of what a head or a log line holds) are written by constant-size stores, without a call.
#[inline]
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    let pair = |v: u64| {
        let d = v as usize * 2;
        [DIGIT_PAIRS[d], DIGIT_PAIRS[d + 1]]
    };
    match n {
        0..10 => out.push(b'0' + n as u8),
        10..100 => out.extend_from_slice(&pair(n)),
        100..1000 => {
            let [a, b] = pair(n % 100);
            out.extend_from_slice(&[b'0' + (n / 100) as u8, a, b]);
        }
        1000..10_000 => {
            let ([a, b], [c, d]) = (pair(n / 100), pair(n % 100));
            out.extend_from_slice(&[a, b, c, d]);
        }
        10_000..100_000 => {
            let ([b, c], [d, e]) = (pair(n / 100 % 100), pair(n % 100));
            out.extend_from_slice(&[b'0' + (n / 10_000) as u8, b, c, d, e]);
        }
        _ => push_u64_long(out, n),
    }
}

/// [`push_u64`] for 100,000 and up: two digits per division, written in place (no scratch
/// copy of variable length, which would cost a `memmove` call per number).
fn push_u64_long(out: &mut Vec<u8>, mut n: u64) {
    let len = n.ilog10() as usize + 1;
    let start = out.len();
    // A constant-size extend is a couple of stores; the excess is cut off at once.
    out.extend_from_slice(&[0u8; 20]);
    out.truncate(start + len);
    let digits = &mut out[start..];
    let mut i = len;
    while n >= 100 {
        let d = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if n >= 10 {
        let d = n as usize * 2;
        digits[..2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        digits[0] = b'0' + n as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_like_display() {
        let mut n = 1u64;
        let mut values: Vec<u64> = (0..200_000).chain([u64::MAX, u64::MAX - 1]).collect();
        while let Some(m) = n.checked_mul(10) {
            values.extend([n - 1, n, n + 1, m - 1]);
            n = m;
        }
        for v in values {
            let mut out = b"x".to_vec();
            push_u64(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
    }

    #[test]
    fn decimal_numbers() {
        for n in [0, 7, 10, 99, 100, 101, 999, 1000, 65_535, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 99, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
