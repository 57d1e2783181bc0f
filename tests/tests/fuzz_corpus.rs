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
