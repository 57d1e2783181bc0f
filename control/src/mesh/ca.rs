//! The mesh CA: an authority that issues each proxy a short-lived certificate for its SPIFFE
//! identity and its node, signed over a public key the proxy generated (its private key never
//! leaves it), and the control plane's own API certificate. The authority is either made here
//! (self-signed ECDSA P-256) or the operator's (`ca: { cert, key }`: a root or an intermediate
//! of their PKI, whose certificates then chain to it).
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

/// Why the CA could not make, take in, restore or use an authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen could not make a key, read one, or sign a certificate.
    #[error("{0}")]
    Crypto(#[from] rcgen::Error),
    /// A validity bound is out of the range of dates a certificate can carry.
    #[error("{0}")]
    Time(#[from] time::error::ComponentRange),
    /// The operator's CA is unusable; `field` (`ca.cert` or `ca.key`) names the file at fault.
    #[error("{field}: {why}")]
    Operator { field: &'static str, why: String },
    /// A name to certify is not a valid DNS name or URI.
    #[error("{name}: {source}")]
    Name { name: String, source: rcgen::Error },
    /// A proxy's public key is not an uncompressed P-256 point in hex.
    #[error("public_key: expected an uncompressed P-256 point (65 bytes) in hex")]
    PublicKey,
    /// A rotation was asked for while one is in progress.
    #[error("a rotation is in progress")]
    RotationInProgress,
    /// The authority's certificate (as saved, or as made here) is not PEM.
    #[error("the CA certificate is not valid PEM: {0}")]
    Pem(rustls_pki_types::pem::Error),
    /// The authority's certificate cannot be rebuilt into an issuer.
    #[error("the CA certificate cannot sign: {0}")]
    CannotSign(rcgen::Error),
    /// The authority's certificate has no subjectPublicKeyInfo that can be read.
    #[error("the CA certificate has no readable key")]
    NoPublicKey,
    /// A saved authority (state file, store) lacks this field.
    #[error("no {0}")]
    Stored(&'static str),
}

impl CaError {
    /// A problem with the operator's `field` (`ca.cert` or `ca.key`).
    fn operator(field: &'static str, why: impl ToString) -> CaError {
        CaError::Operator {
            field,
            why: why.to_string(),
        }
    }

    /// `name` cannot be certified (for `map_err`).
    fn name(name: &str) -> impl FnOnce(rcgen::Error) -> CaError + '_ {
        move |source| CaError::Name {
            name: name.to_string(),
            source,
        }
    }
}

/// An operator's CA as the mesh file names it.
#[derive(Clone, PartialEq)]
pub struct OperatorCa {
    /// SHA-256 (hex) of its certificate: what tells a new operator CA from the one in use.
    pub fingerprint: String,
    /// The certificate file's text (the CA first, then its chain).
    pub cert: String,
    /// The key file's text.
    pub key: String,
}

impl std::fmt::Debug for OperatorCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorCa")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// How long an authority is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);

/// One signing authority.
pub struct Authority {
    key: KeyPair,
    /// The certificate as distributed in the bundle.
    pub cert_pem: String,
    /// An operator's intermediate: the certificates after it in its file (up to the root).
    pub chain_pem: String,
    /// What follows a leaf it issues: for an intermediate, itself and its chain, so that
    /// clients that trust only the operator's root can verify the leaf; for a root, nothing.
    leaf_chain: String,
    /// Rebuilt from the certificate (name, key identifier), to sign with.
    issuer: rcgen::Certificate,
    /// When it was made or taken in (seconds), which also names it.
    pub created: i64,
    /// SHA-256 of the certificate, hex: what the bundle and the snapshots name it by.
    pub fingerprint: String,
    /// SHA-256 of its subjectPublicKeyInfo, hex: what a proxy pins with `--control-ca-sha256`.
    pub spki_sha256: String,
    /// The operator's, from `ca.cert` and `ca.key`.
    pub operator: bool,
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

fn ca_params(trust_domain: &str, created: i64) -> Result<CertificateParams, CaError> {
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
    p.not_before = time::OffsetDateTime::from_unix_timestamp(created - 3600)?;
    p.not_after =
        time::OffsetDateTime::from_unix_timestamp(created + CA_LIFETIME.as_secs() as i64)?;
    Ok(p)
}

impl Authority {
    /// A new authority for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Authority, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let created = now_secs();
        let cert = ca_params(trust_domain, created)?.self_signed(&key)?;
        Authority::with(key, cert.pem(), String::new(), created, false)
    }

    /// The operator's authority: `cert` holds its certificate first, then (for an
    /// intermediate) the rest of its chain; `key` its private key (PKCS#8 PEM). Refused when
    /// the certificate is no CA, has expired, or does not match the key.
    pub fn from_operator(cert: &str, key: &str) -> Result<Authority, CaError> {
        let blocks: Vec<Vec<u8>> = pem_blocks(cert)?;
        let Some(first) = blocks.first() else {
            return Err(CaError::operator("ca.cert", "no certificate"));
        };
        let params = CertificateParams::from_ca_cert_der(&first.clone().into()).map_err(|e| {
            CaError::operator(
                "ca.cert",
                format!("not a certificate rcgen can sign with: {e}"),
            )
        })?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(CaError::operator(
                "ca.cert",
                "the certificate is not a CA (basicConstraints cA)",
            ));
        }
        let now = now_secs();
        if params.not_after.unix_timestamp() <= now {
            return Err(CaError::operator("ca.cert", "the certificate has expired"));
        }
        let key = KeyPair::from_pem(key).map_err(|e| {
            CaError::operator(
                "ca.key",
                format!("not a PKCS#8 private key rcgen can sign with: {e}"),
            )
        })?;
        let spki = ringmesh_core::tls::subject_public_key_info(first)
            .ok_or_else(|| CaError::operator("ca.cert", "unreadable subjectPublicKeyInfo"))?;
        if spki != key.public_key_der().as_slice() {
            return Err(CaError::operator(
                "ca.key",
                "the key does not match ca.cert",
            ));
        }
        let chain: String = blocks[1..].iter().map(|b| der_to_pem(b)).collect();
        Authority::with(key, der_to_pem(first), chain, now, true)
    }

    fn with(
        key: KeyPair,
        cert_pem: String,
        chain_pem: String,
        created: i64,
        operator: bool,
    ) -> Result<Authority, CaError> {
        let der = rustls_pki_der(&cert_pem)?;
        // Rebuilt from the certificate itself (its name and key identifier), so that what it
        // signs names it as the issuer exactly.
        let issuer = CertificateParams::from_ca_cert_der(&der.clone().into())
            .map_err(CaError::CannotSign)?
            .self_signed(&key)?;
        let spki = ringmesh_core::tls::subject_public_key_info(&der).ok_or(CaError::NoPublicKey)?;
        let leaf_chain = if ringmesh_core::tls::is_self_issued(&der) {
            String::new()
        } else {
            format!("{cert_pem}{chain_pem}")
        };
        Ok(Authority {
            leaf_chain,
            fingerprint: sha256_hex(&der),
            spki_sha256: sha256_hex(spki),
            cert_pem,
            chain_pem,
            issuer,
            key,
            created,
            operator,
        })
    }

    /// An authority saved by [`Authority::to_json`].
    pub fn from_json(v: &Value, _trust_domain: &str) -> Result<Authority, CaError> {
        let key_pem = v["key"].as_str().ok_or(CaError::Stored("key"))?;
        let cert_pem = v["cert"].as_str().ok_or(CaError::Stored("cert"))?;
        let created = v["created"].as_i64().ok_or(CaError::Stored("created"))?;
        let key = KeyPair::from_pem(key_pem)?;
        let chain = v["chain"].as_str().unwrap_or_default().to_string();
        let operator = v["operator"].as_bool().unwrap_or(false);
        Authority::with(key, cert_pem.to_string(), chain, created, operator)
    }

    /// The authority with its private key, for the state file.
    pub fn to_json(&self) -> Value {
        json!({
            "key": self.key.serialize_pem(), "cert": self.cert_pem, "created": self.created,
            "chain": self.chain_pem, "operator": self.operator,
        })
    }

    /// A certificate for the control plane's API, for `names` and `ips`, over a key made here
    /// and kept in memory. Returns the chain (the leaf, this authority, its chain: a proxy that
    /// pins this authority's key finds it there) and the key, PEM, and the expiry (seconds).
    pub fn issue_server(
        &self,
        names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(String, String, i64), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = now_secs();
        let expires = now + ttl.as_secs() as i64;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh");
        dn.push(DnType::CommonName, "ringmesh control plane");
        p.distinguished_name = dn;
        let mut sans = Vec::new();
        for n in names {
            sans.push(SanType::DnsName(
                n.as_str().try_into().map_err(CaError::name(n))?,
            ));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now - 60)?;
        p.not_after = time::OffsetDateTime::from_unix_timestamp(expires)?;
        let cert = p.signed_by(&key, &self.issuer, &self.key)?;
        let chain = format!("{}{}{}", cert.pem(), self.cert_pem, self.chain_pem);
        Ok((chain, key.serialize_pem(), expires))
    }

    /// Signs a certificate for node `node` with identity `spiffe_id` (and `dns_name`, which TLS
    /// clients check) over the proxy's P-256 public key (uncompressed point, hex), valid for
    /// `ttl`. Returns the PEM (with an operator intermediate's chain after it) and its expiry
    /// (seconds).
    pub fn issue(
        &self,
        public_key_hex: &str,
        spiffe_id: &str,
        dns_name: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<(String, i64), CaError> {
        let raw = public_key_bytes(public_key_hex)?;
        let now = now_secs();
        let expires = now + ttl.as_secs() as i64;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        dn.push(
            DnType::OrganizationalUnitName,
            format!("{}{node}", ringmesh_core::tls::NODE_PREFIX),
        );
        p.distinguished_name = dn;
        p.subject_alt_names = vec![
            SanType::URI(spiffe_id.try_into().map_err(CaError::name(spiffe_id))?),
            SanType::DnsName(dns_name.try_into().map_err(CaError::name(dns_name))?),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A minute of allowance for clocks that run behind.
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now - 60)?;
        p.not_after = time::OffsetDateTime::from_unix_timestamp(expires)?;
        let cert = p.signed_by(&RawP256(raw), &self.issuer, &self.key)?;
        Ok((cert.pem() + &self.leaf_chain, expires))
    }
}

/// A proxy's public key, decoded: an uncompressed P-256 point (65 bytes, hex-encoded).
pub fn public_key_bytes(hex: &str) -> Result<Vec<u8>, CaError> {
    unhex(hex)
        .filter(|k| k.len() == 65 && k[0] == 4)
        .ok_or(CaError::PublicKey)
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

/// The DER of each certificate in PEM text.
fn pem_blocks(pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::operator("ca.cert", format!("not valid PEM: {e}")))
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn rustls_pki_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(CaError::Pem)
}

/// A new key pair for a proxy: the PKCS#8 PEM it keeps and the public key (hex) it sends.
pub fn new_key() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
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
    pub fn generate(trust_domain: &str) -> Result<Ca, CaError> {
        Ok(Ca::with(Authority::generate(trust_domain)?))
    }

    /// A CA whose authority is `current` (the operator's, say).
    pub fn with(current: Authority) -> Ca {
        Ca {
            current,
            next: None,
            previous: None,
            issued: 0,
        }
    }

    /// When the mesh file names an operator's CA that is neither issuing nor about to: starts
    /// the rotation to it (overlapping as any rotation does). Returns whether it did.
    pub fn adopt(&mut self, operator: Option<&OperatorCa>) -> Result<bool, CaError> {
        let Some(op) = operator else {
            return Ok(false);
        };
        if self
            .authorities()
            .take(2)
            .any(|a| a.fingerprint == op.fingerprint)
        {
            return Ok(false);
        }
        if self.next.is_some() {
            // One rotation at a time: this one starts when the one in progress is done.
            return Ok(false);
        }
        self.rotate_to(Authority::from_operator(&op.cert, &op.key)?)?;
        Ok(true)
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
    pub fn from_json(v: &Value, trust_domain: &str) -> Result<Ca, CaError> {
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
    pub fn rotate(&mut self, trust_domain: &str) -> Result<(), CaError> {
        self.rotate_to(Authority::generate(trust_domain)?)
    }

    /// Starts a rotation to `next` (an operator's new CA, say), as [`Ca::rotate`] does.
    pub fn rotate_to(&mut self, next: Authority) -> Result<(), CaError> {
        if self.next.is_some() {
            return Err(CaError::RotationInProgress);
        }
        self.next = Some((next, now_secs()));
        Ok(())
    }

    /// Every authority it knows (current, next, previous).
    pub fn authorities(&self) -> impl Iterator<Item = &Authority> {
        std::iter::once(&self.current)
            .chain(self.next.iter().map(|(a, _)| a))
            .chain(self.previous.iter().map(|(a, _)| a))
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
                "web-1",
                Duration::from_secs(60),
            )
            .expect("issued");
        let der = rustls_pki_der(&pem).expect("pem");
        assert_eq!(ringmesh_core::tls::spiffe_id(&der).as_deref(), Some(id));
        assert_eq!(
            ringmesh_core::tls::mesh_node(&der).as_deref(),
            Some("web-1")
        );
        let expires = ringmesh_core::tls::not_after(&der).expect("notAfter");
        assert!((expires - now_secs() - 60).abs() <= 2, "{expires}");
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
                    "web-1",
                    Duration::from_secs(60)
                )
                .is_ok()
        );
        assert!(
            ca.current
                .issue("04ab", id, "x", "web-1", Duration::from_secs(60))
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
