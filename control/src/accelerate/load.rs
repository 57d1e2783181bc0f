//! Attaching the shortcut's programs to a workload's cgroup, and taking them away.
//!
//! Everything of one workload is pinned in `/sys/fs/bpf/ringmesh/cgroup-ID/` (ID: the cgroup's
//! inode number, which is the kernel's cgroup id), a directory only root can open: the three
//! maps, and the links that hold the cgroup programs attached. The `sk_msg` program is attached
//! to the pinned sockhash and lives as long as it does. Removing the directory's pins detaches
//! everything: the links go, the maps lose their last user reference and release the program
//! attached to them. Every directory is checked to be root's alone before it is used, and only
//! the known pins are ever removed.

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use aya::maps::{MapData, SockHash};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};

const CONNECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/connect.o"));
const SOCKOPS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sockops.o"));
const MSG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/msg.o"));

/// The maps the three objects share (control/bpf/shortcut.h).
const MAPS: [&str; 3] = ["ringmesh_ends", "ringmesh_waiting", "ringmesh_state"];

/// Where every workload's pins live.
pub const PIN_ROOT: &str = "/sys/fs/bpf/ringmesh";

/// Cgroup programs are attached as BPF links, which take no flags (the kernel answers EINVAL
/// to any) and always coexist with other links on the same cgroup, so another agent's
/// programs (a CNI's, say) keep working beside ours.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Where the BPF filesystem is expected.
const BPF_FS: &str = "/sys/fs/bpf";

/// A workload's cgroup (v2), whose sockets the programs act on.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The cgroup's directory.
    pub cgroup: PathBuf,
    /// Its inode number: the kernel's cgroup id.
    pub id: u64,
}

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The programs were attached.
    Attached,
    /// They already were (`init` run again): left as they are, so open shortcut connections
    /// keep their pairing.
    AlreadyAttached,
}

impl Workload {
    /// The workload whose cgroup is `path` (a cgroup v2 directory). The root cgroup is
    /// refused: it holds every process of the host, and the shortcut is for one workload's
    /// connections only.
    pub fn find(path: &Path) -> Result<Workload, String> {
        let root = cgroup2_root()?;
        let cgroup = path.to_path_buf();
        let cgroup = cgroup
            .canonicalize()
            .map_err(|e| format!("--cgroup {}: {e}", cgroup.display()))?;
        if !cgroup.starts_with(&root) || !cgroup.join("cgroup.procs").exists() {
            return Err(format!(
                "--cgroup {}: not a cgroup v2 directory (the v2 hierarchy is at {})",
                cgroup.display(),
                root.display()
            ));
        }
        if cgroup == root {
            return Err(format!(
                "--cgroup {}: that is the root cgroup, every process of the host; name the workload's own cgroup",
                cgroup.display()
            ));
        }
        let id = fs::metadata(&cgroup)
            .map_err(|e| format!("--cgroup {}: {e}", cgroup.display()))?
            .ino();
        Ok(Workload { cgroup, id })
    }

    /// The directory of this workload's pins.
    pub fn pins(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(format!("cgroup-{}", self.id))
    }
}

/// Where the cgroup v2 hierarchy is mounted, or why there is none to attach to.
fn cgroup2_root() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    cgroup2_mount(&mountinfo).ok_or_else(|| {
        "no cgroup v2 hierarchy is mounted in this mount namespace (cgroup v1 only, or \
         `ip netns exec`, which remounts /sys: use `nsenter --net=`): the shortcut's \
         programs attach to a v2 cgroup"
            .to_string()
    })
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mounts(mountinfo)
        .find(|(_, fstype)| *fstype == "cgroup2")
        .map(|(point, _)| PathBuf::from(point))
}

/// (mount point, filesystem type) of each line of `/proc/self/mountinfo`.
fn mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        let fstype = right.split(' ').next()?;
        Some((point, fstype))
    })
}

/// Whether this binary carries the programs (it was built with clang and libbpf-dev).
pub fn built() -> bool {
    !CONNECT.is_empty() && !SOCKOPS.is_empty() && !MSG.is_empty()
}

/// The pins of a workload, all in its directory: the maps, and the links of the cgroup
/// programs. Nothing else is ever created or removed there.
const LINKS: [&str; 3] = ["connect4", "connect6", "sockops"];

/// Attaches the shortcut to `workload`'s sockets; `proxy_uid` is the user the sidecar runs
/// as. On any error nothing of this run is left behind.
pub fn install(workload: &Workload, proxy_uid: u32) -> Result<Installed, String> {
    if !built() {
        return Err(
            "this ringmesh was built without clang or libbpf-dev, so it carries no BPF programs"
                .into(),
        );
    }
    // One `init` at a time on this host from here: two mounting the BPF filesystem at once
    // would stack two, each pinning in its own.
    let _turn = take_turn()?;
    ensure_bpf_fs()?;
    private_dir(Path::new(PIN_ROOT))?;
    let dir = workload.pins();
    // Created exclusively: of two `init` runs for one workload, one attaches, and the other
    // finds the directory and never touches what the first is building.
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_private(&dir)?;
            return if pins(&dir).all(|p| p.exists()) {
                Ok(Installed::AlreadyAttached)
            } else {
                Err(format!(
                    "{} holds part of a shortcut: another `init` is attaching it, or one was interrupted (`init --remove --cgroup` clears it)",
                    dir.display()
                ))
            };
        }
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    match attach(workload, &dir, proxy_uid) {
        Ok(()) => Ok(Installed::Attached),
        Err(e) => {
            let _ = unpin(&dir);
            Err(e)
        }
    }
}

/// Detaches and unpins everything of `workload`'s; whether there was anything.
pub fn remove(workload: &Workload) -> Result<bool, String> {
    let _turn = take_turn()?;
    let dir = workload.pins();
    if fs::symlink_metadata(&dir).is_err() {
        return Ok(false);
    }
    unpin(&dir)?;
    Ok(true)
}

/// Where `init` runs take turns (a root-owned file; the lock goes with the descriptor).
const LOCK: &str = "/run/ringmesh-accelerate.lock";

fn take_turn() -> Result<fs::File, String> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(ringmesh_core::sys::O_NOFOLLOW)
        .open(LOCK)
        .map_err(|e| format!("cannot open {LOCK}: {e}"))?;
    ringmesh_core::sys::lock_exclusive(file.as_raw_fd())
        .map_err(|e| format!("cannot lock {LOCK}: {e}"))?;
    Ok(file)
}

/// Every pin a workload directory may hold.
fn pins(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    MAPS.iter().chain(LINKS.iter()).map(|name| dir.join(name))
}

/// Removes the known pins of `dir`, then `dir`. Only regular pins are removed, never what a
/// symbolic link points to, and `dir` must be root's alone.
fn unpin(dir: &Path) -> Result<(), String> {
    check_private(dir)?;
    for pin in pins(dir) {
        match fs::symlink_metadata(&pin) {
            Ok(meta) if meta.file_type().is_file() => {
                fs::remove_file(&pin).map_err(|e| format!("cannot unpin {}: {e}", pin.display()))?
            }
            Ok(_) => return Err(format!("{} is not a pin: left alone", pin.display())),
            Err(_) => {}
        }
    }
    fs::remove_dir(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))
}

/// Creates `dir` (mode 0700) if it is missing, then [`check_private`]s it.
fn private_dir(dir: &Path) -> Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check_private(dir)
}

/// Refuses a directory another user could have placed or could write to: a symbolic link,
/// not root's, or open to group or others. (A BPF filesystem someone else mounted is often
/// world-writable: without this, a local user could plant the directory, or a link in it,
/// and have root attach to, or delete, what they chose.)
fn check_private(dir: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a directory of root's alone (a link, another owner, or open to others): refusing to use it",
            dir.display()
        ));
    }
    Ok(())
}

/// Mounts the BPF filesystem at /sys/fs/bpf, root's alone, when nothing is mounted there (as
/// Cilium does).
fn ensure_bpf_fs() -> Result<(), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    if mounts(&mountinfo).any(|(point, fstype)| point == BPF_FS && fstype == "bpf") {
        return Ok(());
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "-o", "mode=0700", "bpf", BPF_FS])
        .output()
        .map_err(|e| format!("no BPF filesystem at {BPF_FS}, and `mount` cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no BPF filesystem at {BPF_FS}, and mounting one failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A loader that pins (or reuses) the shared maps in `dir`.
fn loader(dir: &Path) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for map in MAPS {
        loader.map_pin_path(map, dir.join(map));
    }
    loader
}

fn attach(workload: &Workload, dir: &Path, proxy_uid: u32) -> Result<(), String> {
    let cgroup = fs::File::open(&workload.cgroup)
        .map_err(|e| format!("cannot open {}: {e}", workload.cgroup.display()))?;

    let mut connect = loader(dir)
        .override_global("proxy_uid", &proxy_uid, true)
        .load(CONNECT)
        .map_err(|e| why("loading connect.c", e))?;
    for (program, pin) in [
        ("ringmesh_connect4", "connect4"),
        ("ringmesh_connect6", "connect6"),
    ] {
        let p: &mut CgroupSockAddr = program_mut(&mut connect, program)?;
        p.load().map_err(|e| why(program, e))?;
        let id = p.attach(&cgroup, LINK_MODE).map_err(|e| why(program, e))?;
        let link: FdLink = p
            .take_link(id)
            .map_err(|e| why(program, e))?
            .try_into()
            .map_err(|e| why(program, e))?;
        link.pin(dir.join(pin)).map_err(|e| why(program, e))?;
    }

    let mut sockops = loader(dir)
        .load(SOCKOPS)
        .map_err(|e| why("loading sockops.c", e))?;
    let p: &mut SockOps = program_mut(&mut sockops, "ringmesh_sockops")?;
    p.load().map_err(|e| why("sockops", e))?;
    let id = p
        .attach(&cgroup, LINK_MODE)
        .map_err(|e| why("sockops", e))?;
    let link: FdLink = p
        .take_link(id)
        .map_err(|e| why("sockops", e))?
        .try_into()
        .map_err(|e| why("sockops", e))?;
    link.pin(dir.join("sockops"))
        .map_err(|e| why("sockops", e))?;

    let mut msg = loader(dir).load(MSG).map_err(|e| why("loading msg.c", e))?;
    let ends = msg
        .take_map("ringmesh_ends")
        .ok_or("msg.c has no map ringmesh_ends")?;
    let ends: SockHash<MapData, [u8; 40]> =
        SockHash::try_from(ends).map_err(|e| why("ringmesh_ends", e))?;
    let ends_fd = ends.fd().try_clone().map_err(|e| why("ringmesh_ends", e))?;
    let p: &mut SkMsg = program_mut(&mut msg, "ringmesh_msg")?;
    p.load().map_err(|e| why("sk_msg", e))?;
    let id = p.attach(&ends_fd).map_err(|e| why("sk_msg", e))?;
    let link = p.take_link(id).map_err(|e| why("sk_msg", e))?;
    // The attachment now belongs to the pinned sockhash: dropping the link would detach it,
    // and it ends when `--remove` unpins the map.
    let _kept = std::mem::ManuallyDrop::new(link);
    Ok(())
}

/// `what: error: its cause: ...`, as aya's errors keep the errno in their sources.
fn why(what: &str, e: impl std::error::Error) -> String {
    let mut s = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    <&'a mut P as TryFrom<&'a mut aya::programs::Program>>::Error: std::fmt::Display,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the BPF object has no program {name}"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_read_for_cgroup2_and_bpf() {
        let info = "25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw\n\
                    30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n\
                    40 1 0:40 / /sys/fs/bpf rw - bpf bpf rw\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(mounts(info).any(|m| m == ("/sys/fs/bpf", "bpf")));
        assert_eq!(
            cgroup2_mount("40 1 0:40 / /sys/fs/bpf rw - bpf bpf rw\n"),
            None
        );
    }
}
