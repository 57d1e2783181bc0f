//! Whether this proxy's own local connections are shortcut by the kernel.
//!
//! The proxy cannot see the programs (they are pinned where only root can look), and a
//! status file could lie. So it asks the kernel the one way that cannot: it opens one
//! loopback connection to itself, as the sidecar's inbound hop does, sends one byte from the
//! accepting end, and reads TCP's count of bytes sent. A shortcut byte never reaches TCP.
//! It runs when a config with a sidecar listener is applied and again when the metrics are
//! read, at most every [`REPROBE`] (a few microseconds and three descriptors each time), never
//! per connection; so `ringmesh init --accelerate` run after the proxy started, or `--remove`,
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
        Ok(0) => Shortcut::Active,
        Ok(_) => Shortcut::Inactive(
            "a loopback connection of this proxy went through TCP: no `ringmesh init --accelerate` on this \
             process's cgroup, or this proxy runs as another user than its --proxy-uid"
                .into(),
        ),
        Err(e) => Shortcut::Inactive(format!("the probe connection failed: {e}")),
    }
}

/// Bytes TCP sent for one byte written by the accepting end of a loopback connection.
fn sent_over_tcp() -> std::io::Result<u64> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    server.write_all(b"?")?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte)?;
    ringmesh_core::sys::tcp_bytes_sent(server.as_raw_fd())
}

/// The probe's last answer, shared by the control thread (which says when a sidecar listener
/// is configured) and the admin API (which reports it). Lock-free: a race costs one extra
/// probe at most.
#[derive(Debug, Default)]
pub struct Tracker {
    sidecar: AtomicBool,
    /// 0: not probed; 1: active; 2: inactive.
    state: AtomicU8,
    /// When it was last probed, in ms since `epoch`.
    at_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Tracker {
    /// Whether the config in force has a sidecar listener; probes at once if it has.
    pub fn set_sidecar(&self, sidecar: bool) {
        self.sidecar.store(sidecar, Ordering::Relaxed);
        if sidecar {
            self.reprobe();
        }
    }

    /// Whether local hops are shortcut (`None`: not a sidecar), probing again if the last
    /// answer is older than [`REPROBE`].
    pub fn accelerated(&self) -> Option<bool> {
        if !self.sidecar.load(Ordering::Relaxed) {
            return None;
        }
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = epoch.elapsed().as_millis() as u64;
        let at = self.at_ms.load(Ordering::Relaxed);
        if self.state.load(Ordering::Relaxed) == 0
            || now.saturating_sub(at) >= REPROBE.as_millis() as u64
        {
            self.reprobe();
        }
        Some(self.state.load(Ordering::Relaxed) == 1)
    }

    fn reprobe(&self) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let found = probe();
        let state = if found == Shortcut::Active { 1 } else { 2 };
        self.at_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
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
