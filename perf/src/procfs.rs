//! CPU time and memory of a process and its descendants, from /proc.

use std::collections::HashMap;

/// Clock ticks per second of /proc/*/stat times.
fn ticks_per_sec() -> f64 {
    // CLK_TCK is 100 on every Linux configuration in use.
    100.0
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after it.
    let end = s.rfind(')')?;
    Some(
        s[end + 2..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// The process and all its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                if let Some(pp) = f.get(1).and_then(|p| p.parse().ok()) {
                    parent.insert(pid, pp);
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// User plus system CPU seconds of a process (all its threads).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    // Fields after the name: state(0) ppid(1) ... utime(11) stime(12).
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks_per_sec()
}

/// User and kernel CPU time of this process (all its threads).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// In user space.
    pub user: std::time::Duration,
    /// In the kernel, on its behalf.
    pub system: std::time::Duration,
}

/// [`CpuTimes`] of this process, at clock-tick resolution (10 ms): for runs of seconds.
pub fn own_cpu() -> CpuTimes {
    let Some(f) = stat_fields(std::process::id()) else {
        return CpuTimes::default();
    };
    let field = |i: usize| {
        let ticks: f64 = f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        std::time::Duration::from_secs_f64(ticks / ticks_per_sec())
    };
    CpuTimes {
        user: field(11),
        system: field(12),
    }
}

/// CPU seconds of this process's children that have exited and been waited for (and, through
/// them, of their own waited-for descendants): `cutime` + `cstime` of /proc/self/stat.
pub fn reaped_children_cpu_seconds() -> f64 {
    let Some(f) = stat_fields(std::process::id()) else {
        return 0.0;
    };
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(13) + t(14)) / ticks_per_sec()
}

/// CPU seconds of a whole tree.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    tree(root).into_iter().map(cpu_seconds).sum()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a whole tree in KiB.
pub fn tree_rss_kib(root: u32) -> u64 {
    tree(root).into_iter().map(rss_kib).sum()
}

/// CPU model, cores and kernel, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}
