//! The mesh CA: a self-signed ECDSA P-256 authority that issues each proxy a short-lived
//! certificate for its SPIFFE identity, signed over a public key the proxy generated (its private
//! key never leaves it).
//!
//! Rotation keeps every connection working: a new authority is first only *trusted* (added to
//! the bundle every proxy receives); once every proxy applied that bundle (or the grace period
//! passed) it starts issuing, and the old one stays in the bundle until the certificates it
//! issued have expired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SignatureAlgorithm,
};
use serde_json::{Value, json};

/// How long an authority is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);

/// One signing authority.
pub struct Authority {
    key: KeyPair,
    /// The certificate as distributed in the bundle.
    pub cert_pem: String,
    /// Rebuilt from the same name, key and validity, to sign with.
    issuer: rcgen::Certificate,
    /// When it was made (seconds), which also names it.
    pub created: i64,
    /// SHA-256 of the certificate, hex: what the bundle and the snapshots name it by.
    pub fingerprint: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 1024 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn ca_params(trust_domain: &str, created: i64) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ringmesh");
    dn.push(
        DnType::CommonName,
        format!("ringmesh mesh CA {trust_domain} {created}"),
    );
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before =
        time::OffsetDateTime::from_unix_timestamp(created - 3600).map_err(|e| e.to_string())?;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(created + CA_LIFETIME.as_secs() as i64)
        .map_err(|e| e.to_string())?;
    Ok(p)
}

impl Authority {
    /// A new authority for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Authority, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let created = now_secs();
        let cert = ca_params(trust_domain, created)?
            .self_signed(&key)
            .map_err(|e| e.to_string())?;
        Ok(Authority {
            cert_pem: cert.pem(),
            fingerprint: sha256_hex(cert.der()),
            issuer: cert,
            key,
            created,
        })
    }

    /// An authority saved by [`Authority::to_json`].
    pub fn from_json(v: &Value, trust_domain: &str) -> Result<Authority, String> {
        let key_pem = v["key"].as_str().ok_or("no key")?;
        let cert_pem = v["cert"].as_str().ok_or("no cert")?;
        let created = v["created"].as_i64().ok_or("no created")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
        // Same name, key and validity: leaves it signs chain to the saved certificate.
        let issuer = ca_params(trust_domain, created)?
            .self_signed(&key)
            .map_err(|e| e.to_string())?;
        let der = rustls_pki_der(cert_pem)?;
        Ok(Authority {
            fingerprint: sha256_hex(&der),
            cert_pem: cert_pem.to_string(),
            issuer,
            key,
            created,
        })
    }

    /// The authority with its private key, for the state file.
    pub fn to_json(&self) -> Value {
        json!({ "key": self.key.serialize_pem(), "cert": self.cert_pem, "created": self.created })
    }

    /// Signs a certificate for `spiffe_id` (and `dns_name`, which TLS clients check) over the
    /// proxy's P-256 public key (uncompressed point, hex), valid for `ttl`. Returns the PEM and
    /// its expiry (seconds).
    pub fn issue(
        &self,
        public_key_hex: &str,
        spiffe_id: &str,
        dns_name: &str,
        ttl: Duration,
    ) -> Result<(String, i64), String> {
        let raw = unhex(public_key_hex)
            .filter(|k| k.len() == 65 && k[0] == 4)
            .ok_or("public_key: expected an uncompressed P-256 point (65 bytes) in hex")?;
        let now = now_secs();
        let expires = now + ttl.as_secs() as i64;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![
            SanType::URI(spiffe_id.try_into().map_err(|e| format!("{e}"))?),
            SanType::DnsName(dns_name.try_into().map_err(|e| format!("{e}"))?),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A minute of allowance for clocks that run behind.
        p.not_before =
            time::OffsetDateTime::from_unix_timestamp(now - 60).map_err(|e| e.to_string())?;
        p.not_after =
            time::OffsetDateTime::from_unix_timestamp(expires).map_err(|e| e.to_string())?;
        let cert = p
            .signed_by(&RawP256(raw), &self.issuer, &self.key)
            .map_err(|e| e.to_string())?;
        Ok((cert.pem(), expires))
    }
}

/// A proxy's public key as it sent it.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn rustls_pki_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("the CA certificate is not valid PEM: {e}"))
}

/// A new key pair for a proxy: the PKCS#8 PEM it keeps and the public key (hex) it sends.
pub fn new_key() -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), hex(key.public_key_raw())))
}

/// The CA's state: who issues, who is trusted.
#[derive(Debug)]
pub struct Ca {
    /// Issues certificates.
    pub current: Authority,
    /// Trusted but not yet issuing (a rotation in progress), since when (seconds).
    pub next: Option<(Authority, i64)>,
    /// No longer issuing, trusted until (seconds).
    pub previous: Option<(Authority, i64)>,
    /// Certificates issued since start.
    pub issued: u64,
}

impl Ca {
    /// A CA with a new authority.
    pub fn generate(trust_domain: &str) -> Result<Ca, String> {
        Ok(Ca {
            current: Authority::generate(trust_domain)?,
            next: None,
            previous: None,
            issued: 0,
        })
    }

    /// Every trusted authority, PEM, current first.
    pub fn bundle(&self) -> String {
        let mut b = self.current.cert_pem.clone();
        for (a, _) in self.next.iter().chain(&self.previous) {
            b.push_str(&a.cert_pem);
        }
        b
    }

    /// What a proxy's snapshot names: the trust bundle and the issuer. A proxy fetches a new
    /// certificate when either changes.
    pub fn marks(&self) -> (String, String) {
        (
            sha256_hex(self.bundle().as_bytes()),
            self.current.fingerprint.clone(),
        )
    }

    /// For the state file.
    pub fn to_json(&self) -> Value {
        json!({
            "current": self.current.to_json(),
            "next": self.next.as_ref().map(|(a, t)| json!({ "authority": a.to_json(), "since": t })),
            "previous": self.previous.as_ref().map(|(a, t)| json!({ "authority": a.to_json(), "until": t })),
        })
    }

    /// From the state file.
    pub fn from_json(v: &Value, trust_domain: &str) -> Result<Ca, String> {
        let current = Authority::from_json(&v["current"], trust_domain)?;
        let next = match v.get("next").filter(|n| !n.is_null()) {
            Some(n) => Some((
                Authority::from_json(&n["authority"], trust_domain)?,
                n["since"].as_i64().unwrap_or_else(now_secs),
            )),
            None => None,
        };
        let previous = match v.get("previous").filter(|n| !n.is_null()) {
            Some(n) => Some((
                Authority::from_json(&n["authority"], trust_domain)?,
                n["until"].as_i64().unwrap_or(0),
            )),
            None => None,
        };
        Ok(Ca {
            current,
            next,
            previous,
            issued: 0,
        })
    }

    /// Starts a rotation: a new authority, trusted from now, issuing later.
    pub fn rotate(&mut self, trust_domain: &str) -> Result<(), String> {
        if self.next.is_some() {
            return Err("a rotation is in progress".into());
        }
        self.next = Some((Authority::generate(trust_domain)?, now_secs()));
        Ok(())
    }

    /// Moves a rotation on: the new authority issues once `all_have_bundle` or the grace period
    /// passed; the old one leaves the bundle once its certificates expired. Returns whether
    /// anything changed.
    pub fn advance(&mut self, all_have_bundle: bool, grace: Duration, cert_ttl: Duration) -> bool {
        let now = now_secs();
        let mut changed = false;
        if let Some((_, since)) = &self.next {
            if all_have_bundle || now - since >= grace.as_secs() as i64 {
                if let Some((next, _)) = self.next.take() {
                    let old = std::mem::replace(&mut self.current, next);
                    // Its last certificate expires at most one lifetime from now; a tenth more
                    // (1 s to 1 min) for clocks and renewals in flight.
                    let margin = (cert_ttl.as_secs() / 10).clamp(1, 60);
                    self.previous = Some((old, now + (cert_ttl.as_secs() + margin) as i64));
                    changed = true;
                }
            }
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            self.previous = None;
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_identity_and_survive_a_restart_of_the_ca() {
        let ca = Ca::generate("mesh.local").expect("ca");
        let (_, public) = new_key().expect("key");
        let id = "spiffe://mesh.local/ns/default/sa/web";
        let (pem, _) = ca
            .current
            .issue(
                &public,
                id,
                "web.default.mesh.local",
                Duration::from_secs(60),
            )
            .expect("issued");
        let der = rustls_pki_der(&pem).expect("pem");
        assert_eq!(ringmesh_core::tls::spiffe_id(&der).as_deref(), Some(id));
        // Saved and loaded: the same fingerprint and a working issuer.
        let again = Ca::from_json(&ca.to_json(), "mesh.local").expect("restored");
        assert_eq!(again.current.fingerprint, ca.current.fingerprint);
        assert!(
            again
                .current
                .issue(
                    &public,
                    id,
                    "web.default.mesh.local",
                    Duration::from_secs(60)
                )
                .is_ok()
        );
        assert!(
            ca.current
                .issue("04ab", id, "x", Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn a_rotation_trusts_first_then_issues_then_retires() {
        let mut ca = Ca::generate("mesh.local").expect("ca");
        let first = ca.current.fingerprint.clone();
        let (bundle0, issuer0) = ca.marks();
        ca.rotate("mesh.local").expect("rotate");
        assert!(ca.rotate("mesh.local").is_err());
        let (bundle1, issuer1) = ca.marks();
        assert_ne!(bundle0, bundle1);
        assert_eq!(issuer0, issuer1, "the new authority does not issue yet");
        assert!(!ca.advance(false, Duration::from_secs(60), Duration::from_secs(10)));
        assert!(ca.advance(true, Duration::from_secs(60), Duration::from_secs(10)));
        assert_ne!(ca.current.fingerprint, first);
        assert!(ca.bundle().matches("BEGIN CERTIFICATE").count() == 2);
        if let Some((_, until)) = &mut ca.previous {
            *until = 0;
        }
        assert!(ca.advance(false, Duration::from_secs(60), Duration::from_secs(10)));
        assert!(ca.bundle().matches("BEGIN CERTIFICATE").count() == 1);
    }
}
