//! The access log's writer and line format.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use super::line::*;
use super::*;

fn entry() -> Entry<'static> {
    let names: &'static [u8] = Box::leak(names("edge", Some("api"), Some("be")));
    Entry {
        time: UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
        names,
        endpoint: Some("127.0.0.1:8081".parse().unwrap()),
        method: b"GET",
        authority: Some(b"a.example"),
        path: b"/p?\"q\"\\\x01\xff",
        status: 200,
        bytes_in: 78,
        bytes_out: 1234,
        duration: Duration::from_micros(1_234_567),
        upstream: Some(Duration::from_micros(999)),
        retries: 1,
        error: None,
        trace_id: Some(b"4bf92f3577b34da6a3ce929d0e0e4736"),
        request_id: Some(b"r-1"),
        upstream_path: None,
        client_identity: None,
        client: "127.0.0.1:50000".parse().unwrap(),
    }
}

#[test]
fn a_line_is_json_with_every_field() {
    let mut out = Vec::new();
    write_entry(&mut out, &entry(), &mut Stamp::default());
    let line = String::from_utf8(out).unwrap();
    assert!(line.ends_with("}\n"));
    assert!(
        line.starts_with("{\"time\":\"2025-11-24T16:00:00.123Z\",\"listener\":\"edge\""),
        "{line}"
    );
    for part in [
        "\"route\":\"api\"",
        "\"cluster\":\"be\"",
        "\"endpoint\":\"127.0.0.1:8081\"",
        "\"path\":\"/p?\\\"q\\\"\\\\\\u0001\u{fffd}\"",
        "\"duration_ms\":1234.567",
        "\"upstream_ms\":0.999",
        "\"retries\":1",
        "\"error\":null",
        "\"client_identity\":null",
        "\"request_id\":\"r-1\"",
        "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"",
        "\"client\":\"127.0.0.1:50000\"}",
        "\"authority\":\"a.example\"",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
}

#[test]
fn addresses_are_written_like_display() {
    for a in [
        "10.200.3.4:65535",
        "0.0.0.0:0",
        "255.255.255.255:10000",
        "1.22.100.9:9999",
        "99.100.10.255:100",
        "9.0.199.20:10",
        "[::1]:8080",
        "[::ffff:1.2.3.4]:443",
        "[2001:db8::7]:1",
    ] {
        let a: SocketAddr = a.parse().unwrap();
        let mut out = Vec::new();
        push_addr(&mut out, a);
        assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
    }
}

#[test]
fn every_octet_and_port_width_is_written_like_display() {
    for o in 0..=255u8 {
        for port in [0, 7, 42, 443, 8080, 65535] {
            let a = SocketAddr::from(([o, 255 - o, o / 3, 10], port));
            let mut out = b"x".to_vec();
            push_addr(&mut out, a);
            assert_eq!(out, format!("x{a}").into_bytes());
        }
    }
}

#[test]
fn each_byte_alone_is_escaped_as_json_wants() {
    for b in 0..=255u8 {
        let mut out = Vec::new();
        push_str(&mut out, &[b]);
        let want = match b {
            b'"' => "\\\"".to_string(),
            b'\\' => "\\\\".to_string(),
            0..0x20 | 0x7f => format!("\\u{:04x}", b),
            0x20..0x7f => char::from(b).to_string(),
            // Alone, no byte above 0x7f is UTF-8.
            _ => "\u{fffd}".to_string(),
        };
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("\"{want}\""),
            "byte {b:#x}"
        );
    }
}

#[test]
fn civil_dates() {
    assert_eq!(&civil(0), b"1970-01-01T00:00:00");
    assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
    assert_eq!(&civil(4_102_444_799), b"2099-12-31T23:59:59");
}

/// Bytes of `path` in the page cache, from util-linux's `fincore`.
fn resident(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a byte count")
}

/// A directory on disk for the test `name`, or `None` (with a note) on tmpfs, which keeps
/// every page in memory by design.
fn disk_dir(name: &str) -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(format!("access-log-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&dir)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&fs.stdout).trim() == "tmpfs" {
        eprintln!("skipped: {} is on tmpfs", dir.display());
        std::fs::remove_dir_all(&dir).unwrap();
        return None;
    }
    Some(dir)
}

/// Hands `o` batches of numbered lines, about `bytes` of them, as workers would; returns
/// what was handed over.
fn feed(o: &mut Open, path: &std::path::Path, bytes: usize) -> Vec<u8> {
    let mut all = Vec::new();
    let mut batch = Vec::new();
    let mut n = 0u64;
    while all.len() < bytes {
        batch.clear();
        let mut lines = 0;
        while batch.len() < FLUSH_AT && all.len() + batch.len() < bytes {
            // Lines of uneven length, so that batches end anywhere in a block.
            batch.extend_from_slice(
                format!(
                    "{{\"n\":{n},\"pad\":\"{}\"}}\n",
                    "x".repeat(n as usize % 300)
                )
                .as_bytes(),
            );
            n += 1;
            lines += 1;
        }
        o.take(path, &batch, lines);
        all.extend_from_slice(&batch);
    }
    all
}

#[test]
fn a_growing_log_through_the_page_cache_keeps_only_its_newest_part_cached() {
    let Some(dir) = disk_dir("cache") else {
        return;
    };
    let path = dir.join("access.log");
    let mut o = Open::new(Arc::new(Target::File(path.clone())), false);
    feed(&mut o, &path, (KEPT + 4 * WRITE_BEHIND) as usize);
    // Everything on disk now, so the next writeback step can drop all but the newest part.
    File::open(&path).unwrap().sync_data().unwrap();
    feed(&mut o, &path, (WRITE_BEHIND as usize) + FLUSH_AT);
    o.drain(true);
    let len = std::fs::metadata(&path).unwrap().len();
    let cached = resident(&path);
    assert!(len > KEPT + 5 * WRITE_BEHIND, "{len}");
    assert!(
        cached <= KEPT + 2 * WRITE_BEHIND + 2 * FLUSH_AT as u64,
        "{cached} of {len} bytes still cached"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_busy_log_is_written_around_the_page_cache_and_whole() {
    let Some(dir) = disk_dir("direct") else {
        return;
    };
    let path = dir.join("access.log");
    let mut o = Open::new(Arc::new(Target::File(path.clone())), true);
    // A few lines written at once leave the file ending inside a block.
    let mut expected = feed(&mut o, &path, 1000);
    o.drain(true);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    expected.extend(feed(&mut o, &path, 3 * DIRECT_AT + 12_345));
    let before_tail = std::fs::metadata(&path).unwrap().len();
    assert!(
        before_tail >= 3 * DIRECT_AT as u64,
        "whole blocks go as soon as a MiB is staged: {before_tail}"
    );
    assert!(o.direct, "this file system takes direct writes");
    o.drain(true);
    // Before reading the file back, which caches it.
    let cached = resident(&path);
    assert!(cached <= 4 * ALIGN as u64, "{cached} bytes cached");
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_log_another_process_appends_to_goes_through_the_page_cache() {
    let Some(dir) = disk_dir("shared") else {
        return;
    };
    let path = dir.join("access.log");
    let mut o = Open::new(Arc::new(Target::File(path.clone())), true);
    let mut expected = feed(&mut o, &path, 1000);
    o.drain(true);
    let other = b"{\"from\":\"another process\"}\n";
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(other)
        .unwrap();
    expected.extend_from_slice(other);
    expected.extend(feed(&mut o, &path, 2 * DIRECT_AT));
    o.drain(true);
    assert!(!o.direct);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn staged_lines_reach_the_file_without_a_sync() {
    let dir = std::env::temp_dir().join(format!("ringmesh-al-linger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let sink = Sink::new(Target::File(path.clone()));
    sink.log(&entry());
    sink.flush();
    // No deadline is asserted: the line must come, after LINGER, with nothing else sent.
    let mut waited = Duration::ZERO;
    while std::fs::read(&path).map_or(0, |b| b.len()) == 0 {
        assert!(
            waited < Duration::from_secs(30),
            "the staged line never came"
        );
        std::thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn batches_go_to_the_file_and_reopen_follows_rotation() {
    let dir = std::env::temp_dir().join(format!("ringmesh-al-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let sink = Sink::new(Target::File(path.clone()));
    let written = lines_written();
    sink.log(&entry());
    assert!(sync(Duration::from_secs(5)));
    assert!(!path.exists(), "nothing is written before a flush");
    sink.flush();
    assert!(sync(Duration::from_secs(5)));
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    std::fs::rename(&path, dir.join("access.log.1")).unwrap();
    sink.log(&entry());
    reopen_all();
    sink.flush();
    assert!(sync(Duration::from_secs(5)));
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    assert!(lines_written() >= written + 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
