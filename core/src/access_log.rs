//! Access logs: one JSON line per request, written in batches.
//!
//! Each worker formats lines into its own buffer per destination and hands the buffer over when
//! it passes [`FLUSH_AT`] bytes or at the worker's next sweeper tick (200 ms), whichever comes
//! first: no system call per request. One writer thread per process does the `write(2)`s, so a
//! disk that falls behind (the kernel throttles writers once dirty pages pile up) or a stdout
//! that stops draining never stalls a worker: past [`QUEUE`] batches waiting, a worker drops
//! its batch and counts its lines as lost. Files are opened with `O_APPEND` and a batch always
//! ends at a line's end, so lines never interleave. [`reopen_all`] (SIGUSR1) makes the writer
//! reopen its files before its next write, for log rotation.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::ErrorKind;
use crate::http1::encode::push_u64;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The process's standard output.
    Stdout,
    /// A file, created if missing, appended to.
    File(PathBuf),
}

/// A listener's access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    /// Destination.
    pub target: Target,
    /// Fraction of requests logged, 0 to 1.
    pub sample: f64,
}

impl AccessLogSpec {
    /// The sampling rate as a threshold on 32 random bits: a request is logged when its random
    /// number is below it. `None`: every request.
    pub fn threshold(&self) -> Option<u32> {
        if self.sample >= 1.0 {
            None
        } else {
            Some((self.sample.max(0.0) * f64::from(u32::MAX)) as u32)
        }
    }
}

/// A batch is written once it holds this much.
pub const FLUSH_AT: usize = 64 * 1024;

/// Bumped by [`reopen_all`]; a destination whose generation is older reopens at its next flush.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every worker to reopen its log files (after log rotation moved them).
pub fn reopen_all() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Batches waiting for the writer thread, over all workers (each at most [`FLUSH_AT`] bytes and
/// a line): past this, a worker drops its batch rather than wait.
pub const QUEUE: usize = 256;

static WRITTEN: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

/// Lines written so far, by the whole process.
pub fn lines_written() -> u64 {
    WRITTEN.load(Ordering::Relaxed)
}

/// Lines lost so far (write errors, or the writer too far behind).
pub fn lines_lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

enum Job {
    Batch {
        target: Arc<Target>,
        data: Vec<u8>,
        lines: u64,
    },
    Sync(flume::Sender<()>),
}

static WRITER: OnceLock<flume::Sender<Job>> = OnceLock::new();

/// The writer thread's queue, started on first use.
fn writer() -> &'static flume::Sender<Job> {
    WRITER.get_or_init(|| {
        let (tx, rx) = flume::bounded(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("ringmesh-log".into())
            .spawn(move || write_batches(rx));
        if let Err(e) = spawned {
            // The queue's receiver is gone with the closure: every batch counts as lost.
            tracing::error!(error = %e, "access log: cannot start the writer thread");
        }
        tx
    })
}

/// Writeback of a log file starts each time this much more has been written.
pub const WRITE_BEHIND: u64 = 1 << 20;

/// The newest part of a log file that stays cached, for readers tailing it.
pub const KEPT: u64 = 16 << 20;

/// A log file open in the writer thread.
struct Open {
    target: Arc<Target>,
    file: Option<File>,
    /// Where our writes end, and how far writeback has been started.
    end: u64,
    synced: u64,
}

impl Open {
    /// Writes a batch. Writeback is started every [`WRITE_BEHIND`] bytes and what is older than
    /// [`KEPT`] is dropped from the page cache once on disk (RocksDB's `bytes_per_sync`,
    /// PostgreSQL's `*_flush_after`): a busy log then neither fills memory with pages nobody
    /// reads again nor leaves gigabytes of dirty pages for one writeback storm. The writeback
    /// is charged to this thread rather than to the kernel's flusher threads later.
    fn write(&mut self, path: &std::path::Path, data: &[u8]) -> bool {
        if self.file.is_none() {
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => {
                    let len = f.metadata().map_or(0, |m| m.len());
                    (self.end, self.synced) = (len, len);
                    self.file = Some(f);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "access log: cannot open");
                    return false;
                }
            }
        }
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        if f.write_all(data).is_err() {
            // Opened again for the next batch.
            self.file = None;
            return false;
        }
        // Other processes appending to the same file move its end too: the offsets are ours,
        // which is close enough for advice.
        self.end += data.len() as u64;
        if self.end - self.synced >= WRITE_BEHIND {
            let fd = f.as_raw_fd();
            crate::sys::start_writeback(fd, self.synced, self.end - self.synced);
            self.synced = self.end;
            // From the file's start each time: pages still being written at the last call stay
            // cached until a later one finds them clean (the kernel skips absent pages quickly).
            let keep_from = self.synced.saturating_sub(KEPT);
            if keep_from > 0 {
                crate::sys::drop_cached(fd, 0, keep_from);
            }
        }
        true
    }
}

/// The writer thread: writes batches in the order they came, reopening files after
/// [`reopen_all`].
fn write_batches(rx: flume::Receiver<Job>) {
    let mut files: Vec<Open> = Vec::new();
    let mut generation = GENERATION.load(Ordering::Relaxed);
    while let Ok(job) = rx.recv() {
        let (target, data, lines) = match job {
            Job::Batch {
                target,
                data,
                lines,
            } => (target, data, lines),
            Job::Sync(reply) => {
                let _ = reply.send(());
                continue;
            }
        };
        let now = GENERATION.load(Ordering::Relaxed);
        if now != generation {
            generation = now;
            files.clear();
        }
        let ok = match &*target {
            Target::Stdout => std::io::stdout().lock().write_all(&data).is_ok(),
            Target::File(path) => {
                let i = match files.iter().position(|o| o.target == target) {
                    Some(i) => i,
                    None => {
                        files.push(Open {
                            target: target.clone(),
                            file: None,
                            end: 0,
                            synced: 0,
                        });
                        files.len() - 1
                    }
                };
                files[i].write(path, &data)
            }
        };
        let counter = if ok { &WRITTEN } else { &LOST };
        counter.fetch_add(lines, Ordering::Relaxed);
    }
}

/// Waits until every batch handed over before the call is written, or `limit` passes. For
/// shutdown and tests.
pub fn sync(limit: Duration) -> bool {
    let (tx, rx) = flume::bounded(1);
    writer().send_timeout(Job::Sync(tx), limit).is_ok() && rx.recv_timeout(limit).is_ok()
}

/// One worker's buffer for one destination.
#[derive(Debug)]
pub struct Sink {
    target: Arc<Target>,
    buf: RefCell<Vec<u8>>,
    /// Lines in `buf`.
    lines: Cell<u64>,
    stamp: RefCell<Stamp>,
}

/// The last time formatted, to the second, and its text: formatted once per second.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    second: u64,
    text: [u8; 19],
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp {
            second: u64::MAX,
            text: [0; 19],
        }
    }
}

impl Sink {
    /// A sink for `target`; the writer opens the file at the first batch.
    pub fn new(target: Target) -> Sink {
        Sink {
            target: Arc::new(target),
            buf: RefCell::new(Vec::new()),
            lines: Cell::new(0),
            stamp: RefCell::new(Stamp::default()),
        }
    }

    /// Appends one line; writes the batch when it is big enough.
    pub fn log(&self, e: &Entry<'_>) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            if buf.capacity() == 0 {
                buf.reserve(FLUSH_AT + 4096);
            }
            write_entry(&mut buf, e, &mut self.stamp.borrow_mut());
            self.lines.set(self.lines.get() + 1);
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Hands what is buffered to the writer thread.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let lines = self.lines.replace(0);
        let data = std::mem::take(&mut *buf);
        let job = Job::Batch {
            target: self.target.clone(),
            data,
            lines,
        };
        if writer().try_send(job).is_err() {
            LOST.fetch_add(lines, Ordering::Relaxed);
        }
    }
}

/// Writes one JSON line for `e`.
pub fn write_entry(out: &mut Vec<u8>, e: &Entry<'_>, stamp: &mut Stamp) {
    {
        out.extend_from_slice(b"{\"time\":\"");
        push_time(out, e.time, stamp);
        out.extend_from_slice(b"\",");
        out.extend_from_slice(e.names);
        out.extend_from_slice(b",\"endpoint\":");
        match e.endpoint {
            Some(a) => {
                out.push(b'"');
                push_addr(out, a);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        // A method is a token (checked by the parser): nothing to escape.
        out.extend_from_slice(b",\"method\":\"");
        out.extend_from_slice(e.method);
        out.push(b'"');
        out.extend_from_slice(b",\"authority\":");
        push_opt(out, e.authority);
        out.extend_from_slice(b",\"path\":");
        push_str(out, e.path);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(e.status));
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, e.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, e.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_ms(out, e.duration);
        out.extend_from_slice(b",\"upstream_ms\":");
        match e.upstream {
            Some(d) => push_ms(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"retries\":");
        push_u64(out, u64::from(e.retries));
        out.extend_from_slice(b",\"error\":");
        push_opt(out, e.error.map(|k| k.name().as_bytes()));
        out.extend_from_slice(b",\"trace_id\":");
        push_opt(out, e.trace_id.map(|t| &t[..]));
        out.extend_from_slice(b",\"client_identity\":");
        push_opt(out, e.client_identity);
        out.extend_from_slice(b",\"client\":\"");
        push_addr(out, e.client);
        out.extend_from_slice(b"\"}\n");
    }
}

/// RFC 3339 UTC with milliseconds.
fn push_time(out: &mut Vec<u8>, t: SystemTime, stamp: &mut Stamp) {
    {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if stamp.second != secs {
            stamp.text = civil(secs);
            stamp.second = secs;
        }
        out.extend_from_slice(&stamp.text);
        out.push(b'.');
        let ms = since.subsec_millis();
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (Howard Hinnant's civil_from_days).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = [0u8; 19];
    let two = |s: &mut [u8], v: u64| {
        s[0] = b'0' + (v / 10 % 10) as u8;
        s[1] = b'0' + (v % 10) as u8;
    };
    let y = y.clamp(0, 9999) as u64;
    two(&mut s[0..2], y / 100);
    two(&mut s[2..4], y % 100);
    s[4] = b'-';
    two(&mut s[5..7], m as u64);
    s[7] = b'-';
    two(&mut s[8..10], d as u64);
    s[10] = b'T';
    two(&mut s[11..13], rem / 3600);
    s[13] = b':';
    two(&mut s[14..16], rem / 60 % 60);
    s[16] = b':';
    two(&mut s[17..19], rem % 60);
    s
}

/// What one log line says about one request.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub time: SystemTime,
    /// Listener, route and cluster, written once per route by [`names`].
    pub names: &'a [u8],
    pub endpoint: Option<SocketAddr>,
    pub method: &'a [u8],
    pub authority: Option<&'a [u8]>,
    pub path: &'a [u8],
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub retries: u32,
    pub error: Option<ErrorKind>,
    pub trace_id: Option<&'a [u8; 32]>,
    pub client_identity: Option<&'a [u8]>,
    pub client: SocketAddr,
}

/// The JSON members naming a request's listener, route and cluster
/// (`"listener":"edge","route":"api","cluster":"web"`), written once per route rather than
/// escaped again for every line.
pub fn names(listener: &str, route: Option<&str>, cluster: Option<&str>) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"\"listener\":");
    push_str(&mut out, listener.as_bytes());
    out.extend_from_slice(b",\"route\":");
    push_opt(&mut out, route.map(str::as_bytes));
    out.extend_from_slice(b",\"cluster\":");
    push_opt(&mut out, cluster.map(str::as_bytes));
    out.into_boxed_slice()
}

/// `ip:port`; IPv4 by hand (the common case, several times faster than `Display`).
fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    push_u64(out, u64::from(a.port()));
}

/// Milliseconds with three decimals (microsecond precision).
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn push_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of bytes read from the network: quotes, backslashes and control characters
/// escaped; bytes that are not UTF-8 become U+FFFD, so every line is valid JSON.
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    // Most values are printable ASCII with nothing to escape: copied as they are.
    // A fold without early exit, so that the check runs on whole vectors.
    let plain = s.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(v) => (v, 0),
            Err(e) => {
                let (v, _) = rest.split_at(e.valid_up_to());
                // The first `valid_up_to` bytes are UTF-8 by definition.
                let v = std::str::from_utf8(v).unwrap_or("");
                (v, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        for &b in valid.as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0..=0x1f | 0x7f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                }
                _ => out.push(b),
            }
        }
        rest = &rest[valid.len()..];
        if bad > 0 {
            out.extend_from_slice("\u{fffd}".as_bytes());
            rest = &rest[bad..];
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
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
            "[::1]:8080",
            "[2001:db8::7]:1",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_addr(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
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

    #[test]
    fn a_growing_log_keeps_only_its_newest_part_cached() {
        // A disk-backed directory: tmpfs keeps every page in memory by design.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(format!("access-log-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fs = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&dir)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&fs.stdout).trim() == "tmpfs" {
            eprintln!(
                "skipped: {} is on tmpfs, whose pages cannot be dropped",
                dir.display()
            );
            return;
        }
        let path = dir.join("access.log");
        let sink = Sink::new(Target::File(path.clone()));
        let mut line = Vec::new();
        write_entry(&mut line, &entry(), &mut Stamp::default());
        let log = |bytes: u64| {
            for _ in 0..bytes.div_ceil(line.len() as u64) {
                sink.log(&entry());
            }
            sink.flush();
            assert!(sync(Duration::from_secs(10)));
        };
        log(KEPT + 4 * WRITE_BEHIND);
        // Everything on disk now, so the next writeback step can drop all but the newest part.
        File::open(&path).unwrap().sync_data().unwrap();
        log(WRITE_BEHIND + FLUSH_AT as u64);
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
}
