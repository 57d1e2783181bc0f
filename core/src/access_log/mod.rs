//! Access logs: one JSON line per request, written in batches.
//!
//! Each worker formats lines into its own buffer per destination and hands the buffer over when
//! it passes [`FLUSH_AT`] bytes or at the worker's next sweeper tick (200 ms), whichever comes
//! first: no system call per request. One writer thread per process does the writes, so a
//! disk that falls behind or a stdout that stops draining never stalls a worker: past [`QUEUE`]
//! batches waiting, a worker drops its batch and counts its lines as lost. Files on disk are
//! written a MiB at a time around the page cache (see [`Open`]). [`reopen_all`] (SIGUSR1) makes
//! the writer reopen its files before its next write, for log rotation.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod line;
pub use line::{Entry, names, push_str, write_entry};

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
/// writer's CPU time per line in `perf/feature-cost.sh`), and fills the CPU's caches with
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
    /// Lines not handed over yet.
    batch: crate::batch::Batch,
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
            batch: Default::default(),
            stamp: RefCell::new(Stamp::default()),
        }
    }

    /// Appends one line; writes the batch when it is big enough.
    pub fn log(&self, e: &Entry<'_>) {
        let full = self.batch.push(FLUSH_AT, |buf| {
            write_entry(buf, e, &mut self.stamp.borrow_mut())
        });
        if full {
            self.flush();
        }
    }

    /// Hands what is buffered to the writer thread.
    pub fn flush(&self) {
        let Some((data, lines)) = self.batch.take() else {
            return;
        };
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

#[cfg(test)]
mod tests;
