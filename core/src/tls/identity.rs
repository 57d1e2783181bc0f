//! A peer's identity: the SPIFFE ID (`spiffe://trust-domain/path`) in the URI subject
//! alternative name of its certificate.
//!
//! rustls has verified the certificate by the time this runs; this only finds the name. The
//! walk reads DER just far enough to reach the extension, and gives up (no identity) on
//! anything it does not expect, so hostile input costs a bounded amount of work and nothing
//! else.

/// The SPIFFE ID in the certificate `der`, if there is exactly one.
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    let mut ids = uri_sans(der)?.filter(|u| u.starts_with(b"spiffe://"));
    let id = ids.next()?;
    // A SPIFFE certificate carries one ID; more would make the identity ambiguous.
    if ids.next().is_some() {
        return None;
    }
    let id = std::str::from_utf8(id).ok()?;
    valid_spiffe_id(id).then(|| id.to_string())
}

/// `spiffe://` then a trust domain of lowercase letters, digits, `.`, `-`, `_`, then a path
/// of segments of letters, digits, `.`, `-`, `_` (no empty, `.` or `..` segment).
pub fn valid_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = match rest.split_once('/') {
        Some((d, p)) => (d, Some(p)),
        None => (rest, None),
    };
    let domain_ok = !domain.is_empty()
        && domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    let path_ok = path.is_none_or(|path| {
        path.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        })
    });
    domain_ok && path_ok && id.len() <= 2048
}

/// One DER element: its tag and contents.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // Multi-byte tags do not occur where this looks.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value.
fn children(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = element(input)?;
        input = rest;
        Some((tag, value))
    })
}

/// What the mesh CA writes in a certificate's subject to say which node it was issued to:
/// `organizationalUnitName = ringmesh-node:NAME`. The SPIFFE ID (one URI SAN, as X.509-SVIDs
/// require) names the workload, which several nodes may share; this names the node.
pub const NODE_PREFIX: &str = "ringmesh-node:";

/// The node a mesh certificate was issued to (see [`NODE_PREFIX`]); `None` when the subject
/// names none, or more than one.
pub fn mesh_node(der: &[u8]) -> Option<String> {
    let mut units = subject_attributes(der)?
        .filter(|(oid, _)| *oid == ORGANIZATIONAL_UNIT)
        .filter_map(|(_, v)| std::str::from_utf8(v).ok()?.strip_prefix(NODE_PREFIX));
    let node = units.next()?;
    units.next().is_none().then(|| node.to_string())
}

/// The whole subjectPublicKeyInfo of certificate `der` (tag and length included): what a pin
/// of a CA's key is the SHA-256 of, as kubeadm's `--discovery-token-ca-cert-hash` is.
pub fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    // serial, signature, issuer, validity, subject, then the key.
    tbs_fields(der)?.nth(5)
}

/// When certificate `der` expires (its notAfter, unix seconds).
pub fn not_after(der: &[u8]) -> Option<i64> {
    let validity = tbs_fields(der)?.nth(3)?;
    let (tag, v, _) = element(validity)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, t) = children(v).nth(1)?;
    let digits = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, digits.len()) {
        // UTCTime: YYMMDDHHMMSS, years 1950 to 2049 (RFC 5280 section 4.1.2.5.1).
        (0x17, 12) => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        // GeneralizedTime: YYYYMMDDHHMMSS.
        (0x18, 14) => (digits.get(..4)?.parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, h, m, s) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Whether certificate `der` names itself as its issuer (a root).
pub fn is_self_issued(der: &[u8]) -> bool {
    let Some(mut f) = tbs_fields(der) else {
        return false;
    };
    let issuer = f.nth(2);
    let subject = f.nth(1);
    issuer.is_some() && issuer == subject
}

/// The TBSCertificate's fields after the optional version, each whole: serial, signature,
/// issuer, validity, subject, subjectPublicKeyInfo, then the optional rest.
fn tbs_fields(der: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    if let Some((0xa0, _, rest)) = element(tbs) {
        tbs = rest;
    }
    Some(std::iter::from_fn(move || {
        let (_, _, rest) = element(tbs)?;
        let whole = &tbs[..tbs.len() - rest.len()];
        tbs = rest;
        Some(whole)
    }))
}

/// The (type, value) pairs of certificate `der`'s subject, values as encoded (string types
/// only).
fn subject_attributes(der: &[u8]) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
    let subject = tbs_fields(der)?.nth(4)?;
    let (tag, rdns, _) = element(subject)?;
    if tag != SEQUENCE {
        return None;
    }
    Some(
        children(rdns)
            .filter(|(tag, _)| *tag == SET)
            .flat_map(|(_, set)| children(set))
            .filter_map(|(tag, atv)| {
                if tag != SEQUENCE {
                    return None;
                }
                let mut parts = children(atv);
                let (tag, oid) = parts.next()?;
                let (vtag, value) = parts.next()?;
                // UTF8String, PrintableString, IA5String.
                (tag == OID && matches!(vtag, 0x0c | 0x13 | 0x16)).then_some((oid, value))
            }),
    )
}

/// 2.5.4.11, organizationalUnitName.
const ORGANIZATIONAL_UNIT: &[u8] = &[0x55, 0x04, 0x0b];
const SET: u8 = 0x31;
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const EXTENSIONS: u8 = 0xa3;
const URI: u8 = 0x86;
/// 2.5.29.17, subjectAltName.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The URIs among the subject alternative names of certificate `der`.
fn uri_sans(der: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // Extensions are the [3] element at the end of the TBSCertificate.
    let (_, exts) = children(tbs).find(|(tag, _)| *tag == EXTENSIONS)?;
    let (tag, exts, _) = element(exts)?;
    if tag != SEQUENCE {
        return None;
    }
    let san = children(exts).find_map(|(tag, ext)| {
        if tag != SEQUENCE {
            return None;
        }
        let mut parts = children(ext);
        let (tag, oid) = parts.next()?;
        if tag != OID || oid != SUBJECT_ALT_NAME {
            return None;
        }
        // `critical` may come before the value.
        parts.find(|(tag, _)| *tag == OCTET_STRING).map(|(_, v)| v)
    })?;
    let (tag, names, _) = element(san)?;
    if tag != SEQUENCE {
        return None;
    }
    Some(
        children(names)
            .filter(|(tag, _)| *tag == URI)
            .map(|(_, v)| v),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_checked() {
        for ok in [
            "spiffe://mesh.local/ns/default/sa/web",
            "spiffe://example.org",
            "spiffe://a-b_c.d/x.y/z-1",
        ] {
            assert!(valid_spiffe_id(ok), "{ok}");
        }
        for bad in [
            "spiffe://",
            "spiffe://Mesh.local/x",
            "spiffe://mesh.local/",
            "spiffe://mesh.local//x",
            "spiffe://mesh.local/../x",
            "spiffe://mesh.local/a b",
            "http://mesh.local/x",
            "spiffe://mesh.local:8080/x",
        ] {
            assert!(!valid_spiffe_id(bad), "{bad}");
        }
    }

    #[test]
    fn truncated_or_odd_der_gives_nothing() {
        assert_eq!(mesh_node(&[]), None);
        assert_eq!(subject_public_key_info(&[0x30, 0x02, 0x30, 0x00]), None);
        assert_eq!(spiffe_id(&[]), None);
        assert_eq!(spiffe_id(&[0x30]), None);
        assert_eq!(spiffe_id(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(spiffe_id(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        assert_eq!(spiffe_id(&[0x1f, 0x00]), None);
    }
}
