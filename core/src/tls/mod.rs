//! TLS with clients: certificates chosen by SNI, sessions resumed, handshakes counted.
//!
//! A listener's [`ServerTls`] is compiled with the config (certificates and keys loaded and
//! checked then, so that a bad file is a config error) and shared by the workers.
//!
//! A resumed session skips client authentication and brings back the client certificate it
//! was made with, so sessions are kept apart by *resumption domain*: one listener with one set
//! of client CAs (or none). Within a domain, ticket keys and the session-id cache (TLS 1.2
//! clients that take no ticket) are shared by every worker and kept across reloads: a session
//! made on one worker resumes on any other, and after a config change that keeps the CAs. The
//! session-id cache takes a lock per handshake that uses it (handshakes only, never a
//! request); a session never resumes on another listener, nor after the listener's client CAs
//! changed.

mod identity;
mod stream;

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use identity::{
    NODE_PREFIX, is_self_issued, mesh_node, not_after, spiffe_id, subject_public_key_info,
    valid_spiffe_id,
};
#[cfg(any(fuzzing, test))]
pub use stream::drive_server;
pub use stream::{TlsRead, TlsStream, TlsWrite, accept, connect};

/// Sessions remembered per resumption domain for resumption by session id (TLS 1.2 clients
/// without ticket support); tickets need no server memory.
const SESSIONS: usize = 16 * 1024;

/// One certificate of a listener: the chain and key files, and the names it serves.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub cert: String,
    pub key: String,
    /// Exact names and `*.suffix` wildcards; empty for the default certificate.
    pub sni: Vec<String>,
}

/// A listener's TLS settings, as compiled.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.config.alpn_protocols)
            .finish()
    }
}

/// What went wrong building a listener's TLS, and in which field (relative to `tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub field: String,
    pub message: String,
}

impl TlsError {
    fn new(field: impl Into<String>, message: impl ToString) -> TlsError {
        TlsError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Why certificates or a key could not be read from PEM. `what` names the file (or says
/// what the text was) in each message.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A `mem:` name nothing was stored under.
    #[error("`{0}` holds nothing yet")]
    Unset(String),
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {why}")]
    NotPem { what: String, why: String },
    #[error("{what} holds no certificate")]
    NoCertificate { what: String },
    #[error("a certificate in {what} is not a usable CA: {why}")]
    NotCa { what: String, why: String },
    #[error("cannot read a private key from {what}: {why}")]
    NoKey { what: String, why: String },
    #[error("unsupported private key in {what}: {why}")]
    UnsupportedKey { what: String, why: String },
    #[error("{key} does not match {cert}: {why}")]
    Mismatch {
        key: String,
        cert: String,
        why: String,
    },
}

/// How a PEM file is named in a message.
fn quoted(path: &str) -> String {
    format!("`{path}`")
}

/// The cryptography: rustls's ring provider, whose suites and groups are those of Mozilla's
/// "intermediate" profile (TLS 1.3 AES-GCM and ChaCha20; TLS 1.2 ECDHE with AES-GCM or
/// ChaCha20; X25519, P-256, P-384).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The ticket keys of a resumption domain, shared by all workers, rotated by rustls every 6
/// hours. Looked up when a config is compiled, never on the request path.
#[allow(clippy::disallowed_types)]
fn ticketer(domain: &[u8]) -> Option<Arc<dyn ProducesTickets>> {
    type Keys = std::collections::HashMap<Vec<u8>, Arc<dyn ProducesTickets>>;
    static T: OnceLock<std::sync::Mutex<Keys>> = OnceLock::new();
    let mut keys = T.get_or_init(Default::default).lock().ok()?;
    if let Some(t) = keys.get(domain) {
        return Some(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new().ok()?;
    keys.insert(domain.to_vec(), t.clone());
    Some(t)
}

/// The session-id cache of a resumption domain, shared by all workers. Looked up when a config
/// is compiled.
#[allow(clippy::disallowed_types)]
fn session_cache(domain: &[u8]) -> Option<Arc<ServerSessionMemoryCache>> {
    type Caches = std::collections::HashMap<Vec<u8>, Arc<ServerSessionMemoryCache>>;
    static C: OnceLock<std::sync::Mutex<Caches>> = OnceLock::new();
    let mut caches = C.get_or_init(Default::default).lock().ok()?;
    Some(
        caches
            .entry(domain.to_vec())
            .or_insert_with(|| ServerSessionMemoryCache::new(SESSIONS))
            .clone(),
    )
}

/// A resumption domain: the listener, and the client CAs it trusts (their PEM bytes).
fn domain(listener: &str, client_ca: Option<&[u8]>) -> Arc<[u8]> {
    let mut d = listener.as_bytes().to_vec();
    d.push(0);
    if let Some(ca) = client_ca {
        d.push(1);
        d.extend_from_slice(ca);
    }
    d.into()
}

impl ServerTls {
    /// Loads the certificates and builds the settings. `alpn` in preference order; with
    /// `client_ca`, clients must present a certificate issued by one of its CAs.
    pub fn build(
        listener: &str,
        certs: &[CertSpec],
        alpn: &[String],
        client_ca: Option<&str>,
    ) -> Result<ServerTls, TlsError> {
        let mut resolver = SniResolver::default();
        let mut first = None;
        for (i, c) in certs.iter().enumerate() {
            let key = Arc::new(
                load_certified_key(&c.cert, &c.key)
                    .map_err(|(which, m)| TlsError::new(format!("certs[{i}].{which}"), m))?,
            );
            first.get_or_insert_with(|| key.clone());
            if c.sni.is_empty() {
                if resolver.names.default.is_some() {
                    return Err(TlsError::new(
                        format!("certs[{i}].sni"),
                        "only one certificate may be the default (without `sni`)",
                    ));
                }
                resolver.names.default = Some(key);
                continue;
            }
            for name in &c.sni {
                if resolver.names.insert(name, key.clone()).is_err() {
                    return Err(TlsError::new(
                        format!("certs[{i}].sni"),
                        format!("`{name}` is served by an earlier certificate already"),
                    ));
                }
            }
        }
        // Without a default, a client naming no known host gets the first certificate.
        if resolver.names.default.is_none() {
            resolver.names.default = first;
        }
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::new("", e.to_string()))?;
        let ca_pem = client_ca
            .map(read_pem)
            .transpose()
            .map_err(|m| TlsError::new("client_ca", m))?;
        let domain = domain(listener, ca_pem.as_deref());
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = load_roots(path).map_err(|m| TlsError::new("client_ca", m))?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::new("client_ca", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        if let Some(t) = ticketer(&domain) {
            config.ticketer = t;
        }
        if let Some(c) = session_cache(&domain) {
            config.session_storage = c;
        }
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// The settings every worker uses.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

/// TLS to a cluster's endpoints: the CA their certificates must chain to, the name they must
/// carry (also sent as SNI), and the client certificate to present, if any (mTLS).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// The same, offering only `http/1.1`: for upgrades and CONNECT, which are HTTP/1.1 whatever
    /// the cluster speaks.
    http1: Arc<rustls::ClientConfig>,
    /// The same, offering no protocol: for opaque TCP carried over the mesh's mTLS (the
    /// receiving sidecar knows the port is opaque).
    opaque: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish()
    }
}

impl ClientTls {
    /// Loads the CA and the client certificate; errors name the field (relative to `tls`).
    /// `alpn`: the protocols offered, in preference order.
    pub fn build(
        sni: &str,
        ca: &str,
        cert_key: Option<(&str, &str)>,
        alpn: &[&[u8]],
    ) -> Result<ClientTls, TlsError> {
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| {
            TlsError::new("sni", format!("`{sni}` is not a DNS name or address: {e}"))
        })?;
        let roots = load_roots(ca).map_err(|m| TlsError::new("ca", m))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::new("", e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let ck =
                    load_certified_key(cert, key).map_err(|(which, m)| TlsError::new(which, m))?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(ck))))
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        let http1 = if alpn == [b"http/1.1".as_slice()] {
            config.clone()
        } else {
            let mut c = (*config).clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        };
        let mut opaque = (*config).clone();
        opaque.alpn_protocols = Vec::new();
        Ok(ClientTls {
            config,
            http1,
            opaque: Arc::new(opaque),
            name,
        })
    }

    /// The rustls configuration (for clients outside the data plane, such as the control
    /// plane's store client).
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Runs the handshake on a new connection to an endpoint.
    pub async fn connect(
        &self,
        tcp: monoio::net::TcpStream,
    ) -> (Option<TlsStream>, crate::metrics::Handshake) {
        connect(tcp, self.config.clone(), self.name.clone()).await
    }

    /// Runs the handshake offering only `http/1.1`, for a connection that must speak it.
    pub async fn connect_http1(
        &self,
        tcp: monoio::net::TcpStream,
    ) -> (Option<TlsStream>, crate::metrics::Handshake) {
        connect(tcp, self.http1.clone(), self.name.clone()).await
    }

    /// Runs the handshake offering no application protocol, for opaque TCP.
    pub async fn connect_opaque(
        &self,
        tcp: monoio::net::TcpStream,
    ) -> (Option<TlsStream>, crate::metrics::Handshake) {
        connect(tcp, self.opaque.clone(), self.name.clone()).await
    }
}

/// The one certificate presented to upstreams.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// PEM held in memory under names, for key material that should never sit on disk (a
/// proxy's mesh identity): a certificate, key or CA path `mem:NAME` is read from here. Read
/// when a config is compiled, never on the request path.
pub mod memory {
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock};

    /// The prefix of a path read from memory.
    pub const PREFIX: &str = "mem:";

    #[allow(clippy::disallowed_types)]
    fn store() -> &'static std::sync::RwLock<HashMap<String, Arc<[u8]>>> {
        static S: OnceLock<std::sync::RwLock<HashMap<String, Arc<[u8]>>>> = OnceLock::new();
        S.get_or_init(Default::default)
    }

    /// Holds `pem` under `name` (read as `mem:NAME`), replacing what was there.
    pub fn put(name: &str, pem: &[u8]) {
        if let Ok(mut s) = store().write() {
            s.insert(name.to_string(), pem.into());
        }
    }

    /// Forgets `name`.
    pub fn remove(name: &str) {
        if let Ok(mut s) = store().write() {
            s.remove(name);
        }
    }

    /// What is held under `name`.
    pub fn get(name: &str) -> Option<Arc<[u8]>> {
        store().read().ok()?.get(name).cloned()
    }
}

/// The bytes of a PEM file, or of `mem:NAME` ([`memory`]).
fn read_pem(path: &str) -> Result<Vec<u8>, PemError> {
    match path.strip_prefix(memory::PREFIX) {
        Some(name) => memory::get(name)
            .map(|b| b.to_vec())
            .ok_or_else(|| PemError::Unset(path.to_string())),
        None => std::fs::read(path).map_err(|source| PemError::Read {
            path: path.to_string(),
            source,
        }),
    }
}

/// The CA certificates in a PEM file, as trust anchors.
pub fn load_roots(path: &str) -> Result<Arc<RootCertStore>, PemError> {
    Ok(Arc::new(roots_in(&read_pem(path)?, &quoted(path))?))
}

/// The certificates in PEM text, as trust anchors.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, PemError> {
    roots_in(pem, "the text")
}

/// The certificates in `pem` (`what`, for messages), as trust anchors.
fn roots_in(pem: &[u8], what: &str) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| PemError::NotPem {
            what: what.to_string(),
            why: e.to_string(),
        })?;
        roots.add(c).map_err(|e| PemError::NotCa {
            what: what.to_string(),
            why: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(roots)
}

/// A certificate chain and its key, from PEM text (kept in memory: nothing on disk).
pub fn certified_key_from_pem(chain: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, PemError> {
    let names = ("the certificate", "the key");
    certified_key(chain, key, names).map(Arc::new)
}

/// A chain and its key from PEM text; `names` say what each was, for messages.
fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    (cert, key): (&str, &str),
) -> Result<CertifiedKey, PemError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PemError::NotPem {
            what: cert.to_string(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate {
            what: cert.to_string(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| PemError::NoKey {
        what: key.to_string(),
        why: e.to_string(),
    })?;
    let signing =
        provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| PemError::UnsupportedKey {
                what: key.to_string(),
                why: e.to_string(),
            })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| PemError::Mismatch {
        key: key.to_string(),
        cert: cert.to_string(),
        why: e.to_string(),
    })?;
    Ok(ck)
}

/// Reads a PEM chain and key; the error names the field at fault (`cert` or `key`).
fn load_certified_key(cert: &str, key: &str) -> Result<CertifiedKey, (&'static str, PemError)> {
    let cert_pem = read_pem(cert).map_err(|e| ("cert", e))?;
    let key_pem = read_pem(key).map_err(|e| ("key", e))?;
    certified_key(&cert_pem, &key_pem, (&quoted(cert), &quoted(key))).map_err(|e| {
        let field = match e {
            PemError::NotPem { .. } | PemError::NoCertificate { .. } => "cert",
            _ => "key",
        };
        (field, e)
    })
}

/// Certificates by SNI: exact names first, then the longest matching `*.suffix` (a wildcard
/// covers one label, as in RFC 6125), then the default.
#[derive(Debug, Default)]
struct SniResolver {
    names: crate::sni::NameMap<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.names
            .get(hello.server_name().map(str::as_bytes))
            .cloned()
    }
}
