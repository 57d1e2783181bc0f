//! The comparison driver counts every process a target runs. A target here is a shell that
//! starts busy children one after another, each exiting before the next begins: summing the
//! live process tree from /proc (what the driver did before) sees almost none of that work,
//! while the target's cgroup must count all of it. The reference is what the kernel charges to
//! this test process once the target has been waited for (`cutime` + `cstime`). This file is
//! its own test binary, so no other test's children are reaped into that reference.

use std::time::Duration;

use ringmesh_perf::compare::{Meter, Target};
use ringmesh_perf::procfs;

/// Six children in turn, each busy for roughly 0.1 to 0.3 s of CPU on this machine.
const BUSY_CHILDREN: &str = "sh -c 'for n in 1 2 3 4 5 6; do sh -c \"i=0; while [ \\$i -lt 120000 ]; do i=\\$((i+1)); done\"; done'";

#[test]
fn every_process_of_a_target_is_counted() {
    if ringmesh_perf::cgroup::Group::new("probe").is_err() && skip_without_cgroups() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ringmesh-cpu-accounting-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reaped_before = procfs::reaped_children_cpu_seconds();
    let mut t = Target::run("busy-children", 0, BUSY_CHILDREN, &dir).unwrap();
    assert!(t.counted_by_cgroup(), "the target is not in a cgroup");
    let meter = t.meter();
    let group_before = meter.cpu_seconds();
    // What the driver used to read: the live tree, sampled while the target runs.
    let tree = Meter::Tree(t.pid());
    let mut tree_seen = 0.0f64;
    let tree_start = tree.cpu_seconds();
    loop {
        if let Ok(Some(_)) = t.try_wait() {
            break;
        }
        tree_seen = tree_seen.max(tree.cpu_seconds() - tree_start);
        std::thread::sleep(Duration::from_millis(5));
    }
    let counted = meter.cpu_seconds() - group_before;
    let truth = procfs::reaped_children_cpu_seconds() - reaped_before;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("reaped {truth:.3} s, cgroup {counted:.3} s, live tree at most {tree_seen:.3} s");
    assert!(
        truth > 0.3,
        "the children did too little work to measure: {truth:.3} s"
    );
    // /proc ticks are 10 ms: allow two per child and the shell, and 5 %.
    let slack = 0.05 * truth + 0.14;
    assert!(
        (counted - truth).abs() <= slack,
        "the cgroup counted {counted:.3} s of {truth:.3} s"
    );
    // The live tree misses what exited between its readings: the reason for the cgroup.
    assert!(
        tree_seen < 0.5 * truth,
        "the live tree saw {tree_seen:.3} s of {truth:.3} s: this test no longer shows the gap"
    );
}

/// Without a writable cgroup hierarchy the driver falls back to /proc; the test fails unless
/// told to skip (as every test whose tool is missing: see tests/run).
fn skip_without_cgroups() -> bool {
    if std::env::var_os("RINGMESH_SKIP_MISSING_TOOLS").is_some() {
        eprintln!("skipped: no writable cgroup hierarchy");
        return true;
    }
    panic!("no writable cgroup hierarchy (set RINGMESH_SKIP_MISSING_TOOLS=1 to skip)");
}
