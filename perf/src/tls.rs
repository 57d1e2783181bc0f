//! Certificates for the TLS scenarios (a CA and an ECDSA P-256 leaf for `localhost`, written
//! where every proxy can load them) and the client settings that trust them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// The files of one certificate.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA, for clients.
    pub ca: PathBuf,
    /// Leaf certificate (PEM).
    pub cert: PathBuf,
    /// Leaf key (PEM).
    pub key: PathBuf,
    /// Leaf certificate and key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// Writes a CA and a `localhost` leaf to `dir`.
pub fn make_certs(dir: &Path) -> Result<CertFiles, String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringmesh perf CA");
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(e)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = params.signed_by(&key, &ca, &ca_key).map_err(e)?;
    let files = CertFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
        combined: dir.join("leaf-combined.pem"),
    };
    let w = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()));
    w(&files.ca, ca.pem())?;
    w(&files.cert, leaf.pem())?;
    w(&files.key, key.serialize_pem())?;
    w(
        &files.combined,
        format!("{}{}", leaf.pem(), key.serialize_pem()),
    )?;
    Ok(files)
}

/// Client settings trusting the CA in `ca`; `resume`: offer session resumption.
pub fn client_config(ca: &Path, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let roots =
        ringmesh_core::tls::load_roots(&ca.display().to_string()).map_err(|e| e.to_string())?;
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        c.resumption = Resumption::disabled();
    }
    Ok(Arc::new(c))
}

/// A blocking TLS connection that has made one request (for the idle scenario).
pub fn open_idle(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, tcp);
    s.write_all(b"GET / HTTP/1.1\r\nHost: perf\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.ends_with(b"ok") {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}
