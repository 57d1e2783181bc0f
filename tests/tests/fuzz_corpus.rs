//! Replays every input kept in `fuzz/corpus/` (seeds and past findings) through the fuzz
//! targets' bodies, so that a normal test run catches a regression the fuzzer once found.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| f(&data));
        assert!(result.is_ok(), "{} fails on {}", target, path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn request_head_corpus() {
    replay("request_head", ringmesh_tests::fuzz::request_head);
}

#[test]
fn path_corpus() {
    replay("path", ringmesh_tests::fuzz::path);
}

#[test]
fn response_head_corpus() {
    replay("response_head", ringmesh_tests::fuzz::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", ringmesh_tests::fuzz::chunked);
}

#[test]
fn config_corpus() {
    replay("config", ringmesh_tests::fuzz::config);
}

#[test]
fn certificate_corpus() {
    replay("certificate", ringmesh_tests::fuzz::certificate);
}

#[test]
fn client_hello_corpus() {
    replay("client_hello", ringmesh_tests::fuzz::client_hello);
}

#[test]
fn h2_server_corpus() {
    replay("h2_server", ringmesh_tests::fuzz::h2_server);
}

#[test]
fn tls_server_corpus() {
    replay("tls_server", ringmesh_tests::fuzz::tls_server);
}

/// Writes seeds for the TLS targets: certificates with and without a SPIFFE ID, and a real
/// ClientHello for each TLS version (`cargo test -p ringmesh-tests --test fuzz_corpus -- --ignored`).
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

#[test]
fn control_api_corpus() {
    replay("control_api", ringmesh_tests::fuzz::control_api);
}
