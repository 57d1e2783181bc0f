//! Seeds for the TLS fuzz targets (`fuzz/corpus/certificate`, `fuzz/corpus/tls_server`), made
//! with the test PKI. The corpus itself is replayed by the core's unit tests (`core/src/fuzzing.rs`).

use std::path::Path;

/// Writes seeds for the TLS targets: certificates with and without a SPIFFE ID, and a real
/// ClientHello for each TLS version (`cargo test -p ringmesh-tests --test fuzz_seeds -- --ignored`).
#[test]
#[ignore = "writes the seed files into fuzz/corpus; run by hand when the TLS seeds change"]
fn write_tls_seeds() {
    use ringmesh_tests::tls::Pki;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let pki = Pki::new("seeds");
    let certs = root.join("certificate");
    std::fs::create_dir_all(&certs).unwrap();
    let id = pki.client_leaf("id", "spiffe://mesh.local/ns/default/sa/web");
    std::fs::write(certs.join("spiffe"), &id.der).unwrap();
    let plain = pki.leaf("plain", &["a.example"], false);
    std::fs::write(certs.join("dns-only"), &plain.der).unwrap();
    let tls = root.join("tls_server");
    std::fs::create_dir_all(&tls).unwrap();
    for (name, v) in [
        ("hello13", &rustls::version::TLS13),
        ("hello12", &rustls::version::TLS12),
    ] {
        let cfg = pki.client_config_for(&[v], &["http/1.1"]);
        let mut c = rustls::ClientConnection::new(cfg, "fuzz.example".try_into().unwrap()).unwrap();
        let mut hello = vec![0u8, 0, 0, 0];
        c.write_tls(&mut hello).unwrap();
        std::fs::write(tls.join(name), hello).unwrap();
    }
}
