//! Certificates made for a test (a CA and leaves signed by it, in files the proxy loads) and a
//! blocking rustls client that shows what was negotiated.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use crate::{Response, read_response};

/// A private key for RSA leaves (ring cannot generate RSA keys).
const RSA_KEY: &str = include_str!("../fixtures/rsa2048.key");

/// A CA and the directory its leaves are written to.
pub struct Pki {
    /// Where the PEM files go.
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A leaf certificate written to files.
pub struct Leaf {
    /// PEM chain file.
    pub cert: PathBuf,
    /// PEM key file.
    pub key: PathBuf,
    /// The certificate, to compare with what a server presents.
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// A listener's `tls` block serving this certificate, to splice into a listener.
    pub fn listener_tls(&self) -> String {
        format!(
            "    tls:\n      certs: [ {{ cert: {}, key: {} }} ]\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Pki {
    /// A new CA for test `name`.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ringmesh-pki-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringmesh test CA {name}"));
        let ca = params.self_signed(&ca_key).expect("ca");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        Pki { dir, ca, ca_key }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf for `names` (DNS names), ECDSA P-256 or RSA 2048, written as `file`.pem/.key.
    pub fn leaf(&self, file: &str, names: &[&str], rsa: bool) -> Leaf {
        let key = if rsa {
            KeyPair::from_pem(RSA_KEY).expect("rsa key")
        } else {
            KeyPair::generate().expect("leaf key")
        };
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        self.sign(file, params, key)
    }

    /// Signs `params` for `key` with this CA and writes `file`.pem/.key.
    fn sign(&self, file: &str, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }

    /// A client certificate carrying the SPIFFE ID `id` (a URI name), written as
    /// `file`.pem/.key.
    pub fn client_leaf(&self, file: &str, id: &str) -> Leaf {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(id).expect("uri"),
        )];
        params.distinguished_name.push(DnType::CommonName, file);
        self.sign(file, params, key)
    }

    /// A client config trusting this CA and presenting `leaf` (mTLS).
    pub fn mtls_client_config(&self, leaf: &Leaf) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add root");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).expect("key");
        let c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf.der.clone()], key)
            .expect("client auth");
        Arc::new(c)
    }

    /// A client config trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        self.client_config_for(rustls::DEFAULT_VERSIONS, alpn)
    }

    /// A client config trusting this CA, speaking only `versions`, offering `alpn`.
    pub fn client_config_for(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&str],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add root");
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(c)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that accepts any certificate, to see which one a server presents for a
/// name the certificate does not cover.
pub fn accept_any_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    Arc::new(c)
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTP/1.1 client over TLS on one connection.
pub struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects to `addr` sending SNI `name` and completes the handshake.
    pub fn connect(
        addr: SocketAddr,
        name: &str,
        config: &Arc<ClientConfig>,
    ) -> io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        tcp.set_nodelay(true)?;
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(config.clone(), server_name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(stream),
        })
    }

    /// The rustls connection, for what was negotiated.
    pub fn conn(&self) -> &ClientConnection {
        &self.reader.get_ref().conn
    }

    /// The certificate the server presented.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.conn()
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// Sends a GET for `path` and reads the answer.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())?;
        read_response(&mut self.reader, false)
    }

    /// Reads the next response.
    pub fn response(&mut self) -> io::Result<Response> {
        read_response(&mut self.reader, false)
    }

    /// The buffered stream, for reading what follows a head (a tunnel's bytes).
    pub fn reader(&mut self) -> &mut BufReader<StreamOwned<ClientConnection, TcpStream>> {
        &mut self.reader
    }

    /// Sends close_notify: the TLS way to half-close.
    pub fn close_write(&mut self) -> io::Result<()> {
        let s = self.reader.get_mut();
        s.conn.send_close_notify();
        s.flush()
    }
}

/// An HTTPS upstream with certificate `leaf`; with `client_ca`, clients must present a
/// certificate from this CA. It answers every request with the client's SPIFFE ID (or
/// `anonymous`). Returns its address and the count of connections it accepted.
pub fn tls_upstream(
    pki: &Pki,
    leaf: &Leaf,
    client_ca: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).expect("key");
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if client_ca {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.der().clone()).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = Arc::new(
        builder
            .with_single_cert(vec![leaf.der.clone()], key)
            .expect("server cert"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            count.fetch_add(1, Ordering::Relaxed);
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut r = BufReader::new(StreamOwned::new(conn, tcp));
                while let Ok(Some(_req)) = crate::read_request(&mut r) {
                    let who = r
                        .get_ref()
                        .conn
                        .peer_certificates()
                        .and_then(|c| c.first().and_then(|c| ringmesh_core::tls::spiffe_id(c)))
                        .unwrap_or_else(|| "anonymous".to_string());
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{who}",
                        who.len()
                    );
                    if r.get_mut().write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    let _ = r.get_mut().flush();
                }
            });
        }
    });
    (addr, accepted)
}
