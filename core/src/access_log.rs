//! Access logs: one JSON line per request, written in batches.
//!
//! Each worker formats lines into its own buffer per destination and hands the buffer over when
//! it passes [`FLUSH_AT`] bytes or at the worker's next sweeper tick (200 ms), whichever comes
//! first: no system call per request. One writer thread per process does the writes, so a
//! disk that falls behind or a stdout that stops draining never stalls a worker: past [`QUEUE`]
//! batches waiting, a worker drops its batch and counts its lines as lost. Files on disk are
//! written a MiB at a time around the page cache (see [`Open`]). [`reopen_all`] (SIGUSR1) makes
//! the writer reopen its files before its next write, for log rotation.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::digits::push_u64;
use crate::error::ErrorKind;

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
pub const FLUSH_AT: usize = 256 * 1024;

/// Bumped by [`reopen_all`]; a destination whose generation is older reopens at its next flush.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every worker to reopen its log files (after log rotation moved them).
pub fn reopen_all() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Batches waiting for the writer thread, over all workers (each at most [`FLUSH_AT`] bytes and
/// a line): past this, a worker drops its batch rather than wait.
pub const QUEUE: usize = 64;

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

/// A file's lines are written around the page cache (`O_DIRECT`) once this much is staged.
pub const DIRECT_AT: usize = 1 << 20;

/// Staged lines are written at most this long after they reached the writer thread.
pub const LINGER: Duration = Duration::from_millis(100);

const ALIGN: usize = crate::sys::DIRECT_ALIGN;

/// A log file open in the writer thread.
///
/// Lines are staged and written a MiB at a time with `O_DIRECT`: on a disk, a buffered write
/// costs the kernel a page-cache page, its dirtying, writeback and reclaim per 4 KiB (twice the
/// writer's CPU time per line in `perf/access-log-cost.sh`), and fills the CPU's caches with
/// pages that nobody reads again. Direct writes must start and end on block
/// boundaries, so the part of a block that the file ends in goes through the page cache: the
/// last partial block after [`LINGER`] (or on [`sync`], or before a reopen), and the rest of that
/// block at the next write. The file is still opened with `O_APPEND`, and if its size is not
/// where our writes left it (another process appends to it, or it was truncated), or the file
/// system refuses direct writes, the file is written through the page cache from then on.
struct Open {
    target: Arc<Target>,
    file: Option<File>,
    /// Where our writes end, and how far writeback has been started.
    end: u64,
    synced: u64,
    /// Whether big writes go around the page cache, and whether the descriptor is set so now.
    direct: bool,
    direct_on: bool,
    /// Lines not written yet, laid out as in the file: the first `skip` bytes stand for the
    /// start of the block the file ends in, already written, so that the buffer's blocks are
    /// the file's.
    staged: crate::sys::AlignedBuf,
    skip: usize,
    /// Lines staged, and when the oldest unwritten byte came.
    staged_lines: u64,
    since: Option<Instant>,
}

impl Open {
    fn new(target: Arc<Target>, direct: bool) -> Open {
        Open {
            target,
            file: None,
            end: 0,
            synced: 0,
            direct,
            direct_on: false,
            staged: Default::default(),
            skip: 0,
            staged_lines: 0,
            since: None,
        }
    }

    fn open(&mut self, path: &std::path::Path) -> bool {
        if self.file.is_some() {
            return true;
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                let meta = f.metadata().ok();
                let len = meta.as_ref().map_or(0, |m| m.len());
                // Pipes and devices (a FIFO read by a collector, /dev/stdout) take every batch
                // at once.
                self.direct &= meta.is_some_and(|m| m.file_type().is_file());
                (self.end, self.synced) = (len, len);
                self.direct_on = false;
                self.skip = (len % ALIGN as u64) as usize;
                self.staged.resize(self.skip);
                self.file = Some(f);
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "access log: cannot open");
                false
            }
        }
    }

    /// Takes a batch of whole lines; writes what is staged once there is enough.
    fn take(&mut self, path: &std::path::Path, data: &[u8], lines: u64) {
        if !self.open(path) {
            LOST.fetch_add(lines, Ordering::Relaxed);
            return;
        }
        if self.staged.len() == self.skip {
            self.since = Some(Instant::now());
        }
        self.staged.extend_from_slice(data);
        self.staged_lines += lines;
        if !self.direct || self.staged.len() - self.skip >= DIRECT_AT {
            self.drain(false);
        }
    }

    /// Whether staged lines have waited [`LINGER`] by `now`.
    fn due(&self, now: Instant) -> bool {
        self.since.is_some_and(|t| now >= t + LINGER)
    }

    /// Writes what is staged: whole blocks, or everything when `all`.
    fn drain(&mut self, all: bool) {
        let len = self.staged.len();
        let mut at = self.skip;
        let mut result = Ok(());
        let blocks_end = len / ALIGN * ALIGN;
        let block_end = at.next_multiple_of(ALIGN);
        if self.direct && blocks_end > block_end && self.alone() {
            result = self.put(&mut at, block_end, false);
            if result.is_ok() && self.put(&mut at, blocks_end, true).is_err() {
                // The file system takes no direct writes: the page cache from now on.
                self.direct = false;
            }
        }
        if result.is_ok() && (all || !self.direct) {
            result = self.put(&mut at, len, false);
        }
        // A line is written once its newline is.
        let left = self.staged.as_slice()[at..]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        WRITTEN.fetch_add(self.staged_lines - left, Ordering::Relaxed);
        self.staged_lines = left;
        if result.is_err() {
            // Opened again for the next batch; what is staged is lost.
            LOST.fetch_add(left, Ordering::Relaxed);
            self.file = None;
            self.staged.resize(0);
            (self.skip, self.staged_lines, self.since) = (0, 0, None);
            return;
        }
        let base = at / ALIGN * ALIGN;
        self.staged.discard_front(base);
        self.skip = at - base;
        if self.staged.len() == self.skip {
            self.since = None;
        }
        self.write_behind();
    }

    /// Whether the file still ends where our writes did; if not, it is written through the
    /// page cache from now on, where `O_APPEND` keeps everyone's lines whole.
    fn alone(&mut self) -> bool {
        let size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        if size == Some(self.end) {
            return true;
        }
        self.direct = false;
        if let Some(size) = size {
            self.end = size;
            self.synced = self.synced.min(size);
        }
        false
    }

    /// Writes `staged[*at..to]`, directly or through the page cache, moving `at` on.
    fn put(&mut self, at: &mut usize, to: usize, direct: bool) -> std::io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        if *at < to && direct != self.direct_on {
            crate::sys::set_direct(f.as_raw_fd(), direct)?;
            self.direct_on = direct;
        }
        while *at < to {
            match f.write(&self.staged.as_slice()[*at..to]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    *at += n;
                    self.end += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts writeback every [`WRITE_BEHIND`] bytes and drops what is older than [`KEPT`] from
    /// the page cache once on disk (RocksDB's `bytes_per_sync`, PostgreSQL's `*_flush_after`):
    /// what went through the page cache neither fills memory with pages nobody reads again nor
    /// waits as gigabytes of dirty pages for one writeback storm.
    fn write_behind(&mut self) {
        let Some(f) = self.file.as_ref() else {
            return;
        };
        if self.end - self.synced < WRITE_BEHIND {
            return;
        }
        let fd = f.as_raw_fd();
        crate::sys::start_writeback(fd, self.synced, self.end - self.synced);
        self.synced = self.end;
        // The last KEPT bytes before the cached part: a page still being written at one call
        // is dropped at one of the next ones.
        let keep_from = self.synced.saturating_sub(KEPT);
        let from = keep_from.saturating_sub(KEPT);
        if keep_from > from {
            crate::sys::drop_cached(fd, from, keep_from - from);
        }
    }
}

/// The writer thread: writes batches in the order they came, reopening files after
/// [`reopen_all`].
fn write_batches(rx: flume::Receiver<Job>) {
    // A batch handed over does not interrupt the worker that handed it.
    crate::sys::batch_scheduling();
    let mut files: Vec<Open> = Vec::new();
    let mut generation = GENERATION.load(Ordering::Relaxed);
    loop {
        let due = files.iter().filter_map(|o| o.since).min();
        let job = match due {
            None => match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
            Some(t) => match rx.recv_deadline(t + LINGER) {
                Ok(job) => Some(job),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            },
        };
        let now = Instant::now();
        for o in files.iter_mut().filter(|o| o.due(now)) {
            o.drain(true);
        }
        let (target, data, lines) = match job {
            None => continue,
            Some(Job::Batch {
                target,
                data,
                lines,
            }) => (target, data, lines),
            Some(Job::Sync(reply)) => {
                files.iter_mut().for_each(|o| o.drain(true));
                let _ = reply.send(());
                continue;
            }
        };
        let current = GENERATION.load(Ordering::Relaxed);
        if current != generation {
            generation = current;
            files.iter_mut().for_each(|o| o.drain(true));
            files.clear();
        }
        match &*target {
            Target::Stdout => {
                let ok = std::io::stdout().lock().write_all(&data).is_ok();
                let counter = if ok { &WRITTEN } else { &LOST };
                counter.fetch_add(lines, Ordering::Relaxed);
            }
            Target::File(path) => {
                let i = match files.iter().position(|o| o.target == target) {
                    Some(i) => i,
                    None => {
                        files.push(Open::new(target.clone(), true));
                        files.len() - 1
                    }
                };
                files[i].take(path, &data, lines);
            }
        }
    }
    files.iter_mut().for_each(|o| o.drain(true));
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
        match e.trace_id {
            // Hex digits: nothing to escape.
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
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

/// Each octet's digits followed by a dot, padded to four bytes, and how many of them count.
const OCTETS: [([u8; 4], usize); 256] = {
    let mut t = [([0u8; 4], 0usize); 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = match o {
            0..10 => ([b'0' + o, b'.', 0, 0], 2),
            10..100 => ([b'0' + o / 10, b'0' + o % 10, b'.', 0], 3),
            _ => ([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, b'.'], 4),
        };
        i += 1;
    }
    t
};

/// `ip:port`; IPv4 by table (the common case, several times faster than `Display`): each
/// octet is a constant-size copy, cut to length at the end.
fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let SocketAddr::V4(v4) = a else {
        let _ = write!(out, "[{}]:{}", a.ip(), a.port());
        return;
    };
    // Room for "255.255.255.255." and the last constant-size copy, written in place: built
    // on the stack and copied whole, the small stores would stall the wide load.
    let start = out.len();
    out.extend_from_slice(&[0u8; 16]);
    let s = &mut out[start..];
    let mut n = 0;
    for o in v4.ip().octets() {
        let (digits, len) = OCTETS[usize::from(o)];
        s[n..n + 4].copy_from_slice(&digits);
        n += len;
    }
    s[n - 1] = b':';
    out.truncate(start + n);
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
    let special = s.iter().fold(0u8, |any, &b| {
        any | u8::from(b.wrapping_sub(0x20) >= 0x5f) | u8::from(b == b'"') | u8::from(b == b'\\')
    });
    if special == 0 {
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
}
