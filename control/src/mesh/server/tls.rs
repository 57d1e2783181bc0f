//! The API's TLS. Its certificate is issued by the mesh CA for the API's names
//! (`api.names`, `localhost`) and addresses (the bound one, or every interface's when bound to
//! all), its key made and kept in memory; or it is the operator's (`--tls-cert`, `--tls-key`).
//! A mesh-issued one is renewed at half its life and at each step of a CA rotation (during
//! the overlap it comes from the retiring authority, which clients have trusted longest), an
//! operator's when its files change.
//!
//! Clients may present a certificate; one that does must chain to the mesh's trust bundle
//! (nodes, and admins named by identity), which is rebuilt whenever the bundle changes. Clients
//! without one (bootstrapping nodes, admins with a token) get through the handshake and are
//! judged by the API (`auth`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::State;
use crate::mesh::ca::CaError;
use ringmesh_core::tls::PemError;

/// Why the API's TLS could not be built.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiTlsError {
    /// The operator's certificate or key file (`flag` names which) cannot be read.
    #[error("{flag}: cannot read {}: {source}", .path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The mesh CA cannot issue the API's certificate.
    #[error("{0}")]
    Issue(#[from] CaError),
    /// The certificate and key do not make a usable pair.
    #[error("the API's certificate: {0}")]
    Certificate(PemError),
    /// The mesh trust bundle holds no usable CA.
    #[error("the mesh trust bundle: {0}")]
    Bundle(PemError),
    /// No verifier of client certificates can be built over the bundle.
    #[error("client verification: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
    /// rustls refused the server's TLS settings.
    #[error("{0}")]
    Config(rustls::Error),
}

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ApiTls {
    /// TLS with a certificate from the mesh CA (the default).
    #[default]
    Mesh,
    /// TLS with the operator's certificate and key (PEM files; the chain after the leaf).
    Files { cert: PathBuf, key: PathBuf },
    /// Cleartext (`--insecure-plaintext`): nobody's credentials can be checked but bearer
    /// tokens, which travel in the clear.
    Plaintext,
}

/// The TLS the API serves with now.
pub(super) struct Served {
    pub(super) config: Arc<ServerConfig>,
    /// Unix seconds after which the certificate is renewed (mesh-issued ones).
    renew_at: i64,
    /// The issuer and trust bundle it was built under.
    marks: (String, String),
    /// The operator's files, and when they last changed.
    files: Option<(PathBuf, PathBuf, Option<SystemTime>)>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The one certificate the API presents.
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl ResolvesServerCert for Single {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The names and addresses a mesh-issued API certificate carries.
fn subject_names(names: &[String], bound: SocketAddr) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = names.to_vec();
    let mut ips = Vec::new();
    let ip = bound.ip();
    if ip.is_unspecified() {
        ips = ringmesh_core::sys::local_addresses();
    } else {
        ips.push(ip);
    }
    if ip.is_loopback() || ip.is_unspecified() {
        dns.push("localhost".into());
        ips.push("127.0.0.1".parse().expect("an address"));
        ips.push("::1".parse().expect("an address"));
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

fn modified(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).ok()?.modified().ok()
}

/// Builds the API's TLS for the state's CA and the API's names; `None` without TLS.
pub(super) fn build(
    opts: &ApiTls,
    st: &State,
    bound: SocketAddr,
) -> Result<Option<Served>, ApiTlsError> {
    let (chain, key, renew_at, files) = match opts {
        ApiTls::Plaintext => return Ok(None),
        ApiTls::Files { cert, key } => {
            let read = |flag, path: &PathBuf| {
                std::fs::read(path).map_err(|source| ApiTlsError::Read {
                    flag,
                    path: path.clone(),
                    source,
                })
            };
            let c = read("--tls-cert", cert)?;
            let k = read("--tls-key", key)?;
            let stamp = modified(cert).max(modified(key));
            (c, k, i64::MAX, Some((cert.clone(), key.clone(), stamp)))
        }
        ApiTls::Mesh => {
            let (dns, ips) = subject_names(&st.mesh.api.names, bound);
            let ttl = st.mesh.ca.cert_ttl;
            // From the authority trusted longest: during a rotation's overlap the retiring
            // one, so that clients that trust only it (an admin's pinned CA) keep working
            // until it leaves the bundle.
            let issuer = st.ca.previous.as_ref().map_or(&st.ca.current, |(a, _)| a);
            let (chain, key, expires) = issuer.issue_server(&dns, &ips, ttl)?;
            let life = (expires - now_secs()).max(2);
            (
                chain.into_bytes(),
                key.into_bytes(),
                expires - life / 2,
                None,
            )
        }
    };
    let ck = ringmesh_core::tls::certified_key_from_pem(&chain, &key)
        .map_err(ApiTlsError::Certificate)?;
    let roots = ringmesh_core::tls::roots_from_pem(st.ca.bundle().as_bytes())
        .map_err(ApiTlsError::Bundle)?;
    let provider = ringmesh_core::tls::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(ApiTlsError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ApiTlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Single(ck)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Served {
        config: Arc::new(config),
        renew_at,
        marks: st.ca.marks(),
        files,
    }))
}

impl Served {
    /// Whether it must be built again: the certificate is half through its life, another
    /// authority issues or the bundle changed, or the operator's files changed.
    pub(super) fn due(&self, st: &State) -> bool {
        if now_secs() >= self.renew_at || st.ca.marks() != self.marks {
            return true;
        }
        self.files
            .as_ref()
            .is_some_and(|(c, k, stamp)| modified(c).max(modified(k)) != *stamp)
    }
}

/// How long a client may take over its TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_what_clients_dial() {
        let names = ["cp.example".to_string()];
        let (dns, ips) = subject_names(&names, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(dns, ["cp.example", "localhost"]);
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()));
        let (dns, ips) = subject_names(&names, "10.1.2.3:9900".parse().unwrap());
        assert_eq!(dns, ["cp.example"]);
        assert_eq!(ips, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let (_, ips) = subject_names(&[], "0.0.0.0:9900".parse().unwrap());
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()));
    }
}
