//! ringmesh's performance tools: a load generator ([`load`]), a test upstream ([`upstream`]),
//! and the driver that compares ringmesh with peer proxies side by side ([`compare`]). See
//! perf/README.md for the commands.

pub mod cgroup;
pub mod compare;
pub mod load;
pub mod procfs;
pub mod relay;
pub mod soak;
pub mod tls;
pub mod upstream;

/// Runs `fut` on a new monoio runtime (io_uring, or epoll where it is missing) on this thread,
/// pinned to `cpu` when given.
pub fn block_on<F: std::future::Future>(cpu: Option<usize>, fut: F) -> F::Output {
    if let Some(cpu) = cpu {
        let _ = monoio::utils::bind_to_cpu_set([cpu]);
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()
        .expect("a monoio runtime");
    rt.block_on(fut)
}

/// Parses `250ms`, `5s`, `1m`.
pub fn duration(s: &str) -> Option<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    Some(std::time::Duration::from_secs_f64(secs))
}

/// Parses `0,2-3` into CPU numbers.
pub fn cpus(s: &str) -> Vec<usize> {
    ringmesh_core::sys::parse_cpu_list(s)
}

/// Builds release binaries of the workspace this crate was built from: `bins` as
/// (package, binary) pairs. Whether cargo succeeded.
pub fn build_release(bins: &[(&str, &str)]) -> bool {
    let root = workspace();
    let mut cmd = std::process::Command::new("cargo");
    cmd.args(["build", "--release"]).current_dir(&root);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    cmd.status().is_ok_and(|s| s.success())
}

/// The workspace root (this crate sits one level below it).
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}
