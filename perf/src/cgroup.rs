//! CPU time of everything a target runs, from a cgroup of its own.
//!
//! Summing `/proc/PID/stat` over a process tree misses whatever exited between two readings
//! (a worker an nginx master replaced, a short-lived helper) and whatever left the tree (a
//! worker reparented to init when its master was killed and started again). A cgroup counts
//! every task that ever ran in it, and a process's children are born in it: the group's usage
//! is the target's whole cost, across restarts.
//!
//! The group lives in the first writable hierarchy of: cgroup v2 mounted at `/sys/fs/cgroup`,
//! the v2 hierarchy of a hybrid layout (`/sys/fs/cgroup/unified`), or v1's `cpuacct`. cgroup v2
//! reports `usage_usec` in `cpu.stat` even where the `cpu` controller is not enabled, so no
//! controller needs delegating.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a hierarchy reports CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `cpu.stat`: `usage_usec`.
    V2,
    /// `cpuacct.usage`: nanoseconds.
    V1,
}

/// A cgroup made for one target; removed (its processes killed) when dropped.
#[derive(Debug)]
pub struct Group {
    dir: PathBuf,
    kind: Kind,
}

/// Where groups can be made, best first.
const ROOTS: [(&str, Kind); 3] = [
    ("/sys/fs/cgroup", Kind::V2),
    ("/sys/fs/cgroup/unified", Kind::V2),
    ("/sys/fs/cgroup/cpuacct", Kind::V1),
];

impl Group {
    /// A new, empty group `name` (under a parent for this process), or why none can be made.
    pub fn new(name: &str) -> Result<Group, String> {
        let mut why = Vec::new();
        for (root, kind) in ROOTS {
            let root = Path::new(root);
            let probe = match kind {
                Kind::V2 => root.join("cgroup.controllers"),
                Kind::V1 => root.join("cpuacct.usage"),
            };
            if !probe.exists() {
                continue;
            }
            let dir = root
                .join(format!("ringmesh-perf-{}", std::process::id()))
                .join(name);
            // A group left by an earlier run of the same name is reused only when empty.
            if let Err(e) = std::fs::create_dir_all(&dir) {
                why.push(format!("{}: {e}", dir.display()));
                continue;
            }
            let g = Group { dir, kind };
            match g.read_usage() {
                Ok(_) => return Ok(g),
                Err(e) => why.push(format!("{}: {e}", g.dir.display())),
            }
        }
        if why.is_empty() {
            why.push("no cgroup hierarchy is mounted".into());
        }
        Err(why.join("; "))
    }

    /// A shell command that moves the shell running it into the group (so that what it
    /// `exec`s, and every process that forks from that, is counted).
    pub fn enter_command(&self) -> String {
        format!("echo $$ > {}", self.dir.join("cgroup.procs").display())
    }

    /// Moves process `pid` into the group (its later children are born there).
    pub fn add(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// The processes in the group now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// CPU seconds (user and system) spent by every task that ever ran in the group.
    pub fn cpu_seconds(&self) -> f64 {
        self.read_usage().unwrap_or(0.0)
    }

    fn read_usage(&self) -> io::Result<f64> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        match self.kind {
            Kind::V2 => {
                let s = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
                let usec: u64 = s
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| bad("cpu.stat has no usage_usec"))?;
                Ok(usec as f64 / 1e6)
            }
            Kind::V1 => {
                let s = std::fs::read_to_string(self.dir.join("cpuacct.usage"))?;
                let ns: u64 = s.trim().parse().map_err(|_| bad("cpuacct.usage"))?;
                Ok(ns as f64 / 1e9)
            }
        }
    }

    /// Kills every process in the group and waits (briefly) until it is empty.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir(&self.dir);
        // The per-run parent goes once its last group has.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
