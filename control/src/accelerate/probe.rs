//! Whether this proxy's own local connections are shortcut by the kernel.
//!
//! The proxy cannot see the programs (they are pinned where only root can look), and a
//! status file could lie. So it asks the kernel the one way that cannot: it opens one
//! loopback connection to itself, as the sidecar's inbound hop does, sends one byte each way,
//! and reads TCP's count of bytes sent at both ends. A shortcut byte never reaches TCP.
//! It runs when a config with a sidecar listener is applied and again, in the background,
//! when the metrics are read and the last answer is older than [`REPROBE`] (a few microseconds
//! and three descriptors each time), never per connection; so `ringmesh init --accelerate` run after the proxy started, or `--remove`,
//! shows within seconds. The log says it when the answer changes.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long an answer is trusted.
pub const REPROBE: Duration = Duration::from_secs(10);

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortcut {
    /// Local connections skip TCP/IP.
    Active,
    /// They do not, and why (as far as a proxy can tell).
    Inactive(String),
}

/// Runs the probe.
pub fn probe() -> Shortcut {
    match sent_over_tcp() {
        Ok((0, 0)) => Shortcut::Active,
        Ok((0, _)) | Ok((_, 0)) => Shortcut::Inactive(
            "a loopback connection of this proxy was shortcut one way only".into(),
        ),
        Ok(_) => Shortcut::Inactive(
            "a loopback connection of this proxy went through TCP: no `ringmesh init --accelerate` on this \
             process's cgroup, or this proxy runs as another user than its --proxy-uid"
                .into(),
        ),
        Err(e) => Shortcut::Inactive(format!("the probe connection failed: {e}")),
    }
}

/// Bytes TCP sent for one byte each way over a loopback connection to itself: (the accepting
/// end's, the connecting end's). Bounded in time: the accept waits at most a second, for the
/// probe's own connection only (another process of the namespace may connect to the port
/// first: it is dropped), and each read at most a second.
fn sent_over_tcp() -> std::io::Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let ours = client.local_addr()?;
    let mut server = loop {
        match listener.accept() {
            Ok((s, peer)) if peer == ours => break s,
            Ok(_stranger) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    };
    server.set_nonblocking(false)?;
    server.set_read_timeout(Some(Duration::from_secs(1)))?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut byte = [0u8; 1];
    // The accepting end first (its peer was paired before it), then the other way.
    server.write_all(b"?")?;
    client.read_exact(&mut byte)?;
    client.write_all(b"!")?;
    server.read_exact(&mut byte)?;
    Ok((
        ringmesh_core::sys::tcp_bytes_sent(server.as_raw_fd())?,
        ringmesh_core::sys::tcp_bytes_sent(client.as_raw_fd())?,
    ))
}

/// The probe's last answer, shared by the control thread (which says when a sidecar listener
/// is configured) and the admin API (which reports it). Lock-free; a stale answer is refreshed
/// on a thread of its own, so a scrape never waits for the probe.
#[derive(Debug, Default)]
pub struct Tracker {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sidecar: AtomicBool,
    /// 0: not probed; 1: active; 2: inactive.
    state: AtomicU8,
    /// When it was last probed, in ms since `epoch`.
    at_ms: AtomicU64,
    /// A probe is running.
    probing: AtomicBool,
    epoch: std::sync::OnceLock<Instant>,
}

impl Tracker {
    /// Whether the config in force has a sidecar listener; probes at once (on the calling
    /// thread, the control thread's) if it has.
    pub fn set_sidecar(&self, sidecar: bool) {
        self.inner.sidecar.store(sidecar, Ordering::Relaxed);
        if sidecar {
            self.inner.reprobe();
        }
    }

    /// Whether local hops are shortcut (`None`: not a sidecar), as last found; an answer
    /// older than [`REPROBE`] is refreshed in the background.
    pub fn accelerated(&self) -> Option<bool> {
        let inner = &self.inner;
        if !inner.sidecar.load(Ordering::Relaxed) {
            return None;
        }
        let stale = inner
            .now_ms()
            .saturating_sub(inner.at_ms.load(Ordering::Relaxed))
            >= REPROBE.as_millis() as u64;
        if stale && !inner.probing.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("ringmesh-shortcut-probe".into())
                .spawn(move || {
                    inner.reprobe();
                    inner.probing.store(false, Ordering::Release);
                });
            if spawned.is_err() {
                self.inner.probing.store(false, Ordering::Release);
            }
        }
        match inner.state.load(Ordering::Relaxed) {
            0 => None,
            state => Some(state == 1),
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    fn reprobe(&self) {
        let found = probe();
        let state = if found == Shortcut::Active { 1 } else { 2 };
        self.at_ms.store(self.now_ms(), Ordering::Relaxed);
        if self.state.swap(state, Ordering::Relaxed) != state {
            match found {
                Shortcut::Active => tracing::info!(
                    "kernel shortcut in force: local hops skip TCP/IP (eBPF sockmap)"
                ),
                Shortcut::Inactive(why) => {
                    tracing::info!(why = %why, "no kernel shortcut: local hops go through TCP/IP")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit tests run in no accelerated cgroup: the probe sees TCP and says why.
    #[test]
    fn without_the_programs_the_probe_sees_tcp() {
        match probe() {
            Shortcut::Inactive(why) => assert!(why.contains("--accelerate"), "{why}"),
            Shortcut::Active => panic!("shortcut outside any accelerated cgroup"),
        }
        let tracker = Tracker::default();
        assert_eq!(tracker.accelerated(), None);
        tracker.set_sidecar(true);
        assert_eq!(tracker.accelerated(), Some(false));
    }
}
