//! The proxy's client of the control plane's API: one blocking HTTP/1.1 exchange per
//! connection, over TLS unless both sides run `--insecure-plaintext`.
//!
//! The control plane's certificate is verified against what the operator gave the proxy, so
//! that it trusts nobody on first contact (as kubeadm's discovery does):
//! - `--control-ca FILE`: the CA(s) its certificate must chain to; or
//! - `--control-ca-sha256 HEX`: the SHA-256 of a CA's subjectPublicKeyInfo. The control plane
//!   sends its CA after its certificate; the chain must verify with the CA whose key matches
//!   as its anchor.
//!
//! and, besides, against the mesh's trust bundle the proxy got from the control plane itself
//! over such a verified connection, so that a CA rotation does not cut it off. Once it holds a
//! certificate from the mesh CA, the proxy presents it (mTLS): that is how it proves its node.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::ca::sha256_hex;
use crate::http::Unanswered;
use ringmesh_core::tls::PemError;

/// Why the control plane's trust could not be set up, or an exchange with it failed. Messages
/// about an exchange start with the address dialled.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--control-ca-sha256` is not 64 hex digits.
    #[error(
        "--control-ca-sha256: `{given}` is not a SHA-256 (64 hex digits, optionally after sha256:)"
    )]
    Pin { given: String },
    /// The `--control-ca` file cannot be read.
    #[error("--control-ca: cannot read {}: {source}", .path.display())]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The `--control-ca` file holds no usable CA certificate.
    #[error("--control-ca: {}: {source}", .path.display())]
    CaPem {
        path: std::path::PathBuf,
        source: PemError,
    },
    /// The configured CA certificates are no longer usable as trust anchors.
    #[error("--control-ca: {0}")]
    Roots(PemError),
    /// No verifier can be built over the trust anchors.
    #[error("{0}")]
    Verifier(#[from] VerifierBuilderError),
    /// rustls refused the client's TLS settings.
    #[error("{0}")]
    Config(rustls::Error),
    /// The address does not resolve.
    #[error("{addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    /// The address resolves to nothing.
    #[error("{addr}: no address")]
    NoAddress { addr: String },
    /// The connection cannot be made or set up.
    #[error("{addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The host of the address is neither an IP address nor a DNS name.
    #[error("{addr}: `{host}` is not a server name: {source}")]
    ServerName {
        addr: String,
        host: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS session cannot be started.
    #[error("{addr}: {source}")]
    Tls { addr: String, source: rustls::Error },
    /// The request cannot be sent.
    #[error("{addr}: {source}")]
    Send {
        addr: String,
        source: std::io::Error,
    },
    /// No (whole, well-formed) answer came.
    #[error("{addr}: {source}")]
    Unanswered { addr: String, source: Unanswered },
}

/// How the control plane's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The CA certificates in PEM (from `--control-ca FILE`).
    Ca(Vec<u8>),
    /// The SHA-256 (hex, lowercase) of a CA's subjectPublicKeyInfo.
    Pin(String),
    /// No TLS (`--insecure-plaintext`).
    Plaintext,
}

impl Trust {
    /// `--control-ca-sha256`: 64 hex digits, optionally after `sha256:`.
    pub fn pin(hex: &str) -> Result<Trust, ClientError> {
        let h = hex.trim().strip_prefix("sha256:").unwrap_or(hex.trim());
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Pin {
                given: hex.to_string(),
            });
        }
        Ok(Trust::Pin(h.to_ascii_lowercase()))
    }

    /// `--control-ca FILE`, checked now.
    pub fn ca_file(path: &std::path::Path) -> Result<Trust, ClientError> {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.to_path_buf(),
            source,
        })?;
        ringmesh_core::tls::roots_from_pem(&pem).map_err(|source| ClientError::CaPem {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Trust::Ca(pem))
    }
}

/// The client's view of the control plane: how it is trusted, the bundle learned from it,
/// and the node's certificate.
#[derive(Clone)]
pub struct Client {
    pub trust: Trust,
    /// The mesh trust bundle, PEM, as the control plane last gave it.
    pub learned: Option<Vec<u8>>,
    /// The node's certificate and key, once it has one.
    pub identity: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("trust", &self.trust)
            .field("learned", &self.learned.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// Verifies the control plane's certificate: against the learned bundle, and the configured
/// CA or the pinned CA key.
#[derive(Debug)]
struct Verify {
    /// The configured CAs and the learned bundle, as one verifier (`None`: neither yet).
    roots: Option<Arc<WebPkiServerVerifier>>,
    /// The pinned CA key's digest.
    pin: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // A node's certificate (it chains to the same CA) is never the control plane's, even
        // for a name a proxy might dial.
        if ringmesh_core::tls::mesh_node(end_entity).is_some() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        let mut last = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        if let Some(v) = &self.roots {
            match v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        let Some(pin) = &self.pin else {
            return Err(last);
        };
        // The certificate the server sent whose key is the pinned one is the anchor.
        let anchor = intermediates.iter().find(|c| {
            ringmesh_core::tls::subject_public_key_info(c)
                .is_some_and(|spki| sha256_hex(spki) == *pin)
        });
        let Some(anchor) = anchor else {
            return Err(last);
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone())?;
        let v = webpki(roots, &self.provider).map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The node's certificate, presented to the control plane.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A connection to the control plane, kept open by a caller that sends several requests on it
/// (a simulated proxy in the scale harness).
pub struct Stream(Conn);

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A connection, in plaintext or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl std::io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Largest answer read (a snapshot).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

impl Client {
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        let provider = ringmesh_core::tls::provider();
        let mut roots = RootCertStore::empty();
        if let Some(Ok(r)) = self
            .learned
            .as_deref()
            .map(ringmesh_core::tls::roots_from_pem)
        {
            roots.roots.extend(r.roots);
        }
        let pin = match &self.trust {
            Trust::Ca(pem) => {
                let r = ringmesh_core::tls::roots_from_pem(pem).map_err(ClientError::Roots)?;
                roots.roots.extend(r.roots);
                None
            }
            Trust::Pin(p) => Some(p.clone()),
            Trust::Plaintext => None,
        };
        let verify = Verify {
            roots: (!roots.is_empty())
                .then(|| webpki(roots, &provider))
                .transpose()?,
            pin,
            provider: provider.clone(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(ClientError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify));
        let mut config = match &self.identity {
            Some(ck) => builder.with_client_cert_resolver(Arc::new(Presents(ck.clone()))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn connect(&self, addr: &str, timeout: Duration) -> Result<Conn, ClientError> {
        let target: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: addr.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| ClientError::NoAddress {
                addr: addr.to_string(),
            })?;
        let connect = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(connect)?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(timeout)).map_err(connect)?;
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(connect)?;
        if self.trust == Trust::Plaintext {
            return Ok(Conn::Plain(s));
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|source| {
                ClientError::ServerName {
                    addr: addr.to_string(),
                    host: host.to_string(),
                    source,
                }
            })?,
        };
        let conn = rustls::ClientConnection::new(self.tls_config()?, name).map_err(|source| {
            ClientError::Tls {
                addr: addr.to_string(),
                source,
            }
        })?;
        Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, s))))
    }

    /// A new connection, for several requests; reads wait up to `timeout`.
    pub fn open(&self, addr: &str, timeout: Duration) -> Result<Stream, ClientError> {
        self.connect(addr, timeout).map(Stream)
    }

    /// Sends `raw` (a whole request, as written) on a new connection and reads the answer.
    pub fn exchange(
        &self,
        addr: &str,
        raw: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut s = self.connect(addr, timeout)?;
        let send = |source| ClientError::Send {
            addr: addr.to_string(),
            source,
        };
        s.write_all(raw).map_err(send)?;
        s.flush().map_err(send)?;
        let (status, body, _) = crate::http::read_answer(&mut s, MAX_ANSWER).map_err(|source| {
            ClientError::Unanswered {
                addr: addr.to_string(),
                source,
            }
        })?;
        Ok((status, body))
    }

    /// One exchange on a new connection; returns the status and the body. `headers`: extra
    /// header lines, each ending in CRLF.
    pub fn request(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
        headers: &str,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let body = body.unwrap_or_default();
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n{headers}",
            body.len()
        )
        .into_bytes();
        if matches!(method, "PUT" | "POST") {
            out.extend_from_slice(b"content-type: application/json\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        // The answer is complete before the server's close arrives.
        self.exchange(addr, &out, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_certificate_never_passes_for_the_control_planes() {
        use rustls::pki_types::pem::PemObject;
        let ca = super::super::ca::Ca::generate("mesh.local").expect("ca");
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|c| c.expect("pem"))
                .collect::<Vec<_>>()
        };
        let provider = ringmesh_core::tls::provider();
        let roots = ringmesh_core::tls::roots_from_pem(ca.bundle().as_bytes()).expect("roots");
        let verify = Verify {
            roots: Some(webpki(roots, &provider).expect("verifier")),
            pin: Some(ca.current.spki_sha256.clone()),
            provider,
        };
        let name = ServerName::try_from("cp.mesh.local").expect("name");
        let now = UnixTime::now();
        // The control plane's own certificate for that name verifies...
        let (api, _, _) = ca
            .current
            .issue_server(&["cp.mesh.local".into()], &[], Duration::from_secs(60))
            .expect("issued");
        let api = der(&api);
        assert!(
            verify
                .verify_server_cert(&api[0], &api[1..], &name, &[], now)
                .is_ok()
        );
        // ...a node's, for the same name and from the same CA, does not.
        let (_, public) = super::super::ca::new_key().expect("key");
        let (node, _) = ca
            .current
            .issue(
                &public,
                "spiffe://mesh.local/ns/default/sa/cp",
                "cp.mesh.local",
                "cp",
                Duration::from_secs(60),
            )
            .expect("issued");
        let node = der(&node);
        assert!(
            verify
                .verify_server_cert(&node[0], &[], &name, &[], now)
                .is_err()
        );
    }

    #[test]
    fn pins_are_sha256_hex_with_or_without_a_prefix() {
        let h = "ab".repeat(32);
        assert_eq!(Trust::pin(&h).ok(), Some(Trust::Pin(h.clone())));
        assert_eq!(
            Trust::pin(&format!("sha256:{}", h.to_uppercase())).ok(),
            Some(Trust::Pin(h))
        );
        assert!(matches!(Trust::pin("abcd"), Err(ClientError::Pin { given }) if given == "abcd"));
        assert!(Trust::pin(&"zz".repeat(32)).is_err());
    }
}
