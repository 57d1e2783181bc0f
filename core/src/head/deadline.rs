//! The fields that carry a caller's deadline: `ringmesh-deadline-ms` (milliseconds left, from
//! one ringmesh to the next) and gRPC's `grpc-timeout`. The proxy reads them into a request's
//! deadline and writes what is left of it to the next hop.

use std::time::Duration;

/// Parses a `ringmesh-deadline-ms` value: decimal milliseconds.
pub(crate) fn parse_deadline_ms(v: &[u8]) -> Option<Duration> {
    let ms = std::str::from_utf8(v).ok()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ms))
}

/// Parses a `grpc-timeout` value (RFC-less gRPC wire format: up to 8 digits and a unit).
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes a `grpc-timeout` value for `d` (milliseconds, or seconds past 8 digits of them).
pub fn write_grpc_timeout(out: &mut Vec<u8>, d: Duration) {
    let ms = d.as_millis().max(1) as u64;
    if ms < 100_000_000 {
        crate::digits::push_u64(out, ms);
        out.push(b'm');
    } else {
        crate::digits::push_u64(out, (d.as_secs()).min(99_999_999));
        out.push(b'S');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout(b"250000u"),
            Some(Duration::from_millis(250))
        );
        for bad in [&b""[..], b"m", b"5", b"5x", b"123456789m", b"-5m"] {
            assert_eq!(parse_grpc_timeout(bad), None);
        }
        let mut out = Vec::new();
        write_grpc_timeout(&mut out, Duration::from_millis(1234));
        assert_eq!(out, b"1234m");
    }
}
