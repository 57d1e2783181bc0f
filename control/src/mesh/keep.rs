//! Where a proxy keeps the identity the mesh CA issued it: its private key, its certificate
//! and the mesh's trust bundle.
//!
//! By default in memory only: the proxy's listeners and clusters read them as `mem:` paths
//! (`ringmesh_core::tls::memory`), so no other user of the host can read the key or swap the
//! bundle, and nothing is left behind. With `--identity-dir DIR` they are also written to DIR,
//! so that a restarted proxy renews with the certificate it still holds (its bootstrap token is
//! spent). DIR is created with mode 0700; an existing one must be a real directory owned by the
//! proxy's user and writable by nobody else, and so must be every directory above it, unless
//! sticky (as `/tmp` is; as OpenSSH checks `authorized_keys`). A path through a symbolic link
//! another user owns is refused; the path is resolved once, and everything is done on the
//! resolved path, every component of which only root or the proxy's user can change. Each file
//! is written to a new file, then renamed over the old one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The identity's files.
pub const KEY: &str = "key.pem";
pub const CERT: &str = "cert.pem";
pub const BUNDLE: &str = "bundle.pem";

/// Why the identity directory was refused, or its files could not be written. Each message
/// names the path (and, for the directory, the flag `--identity-dir`).
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// The directory is missing and cannot be created.
    #[error("--identity-dir {}: cannot create it: {source}", .dir.display())]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The directory (or its path) cannot be examined or resolved.
    #[error("--identity-dir {}: {source}", .dir.display())]
    Inspect {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The path goes through a symbolic link that another user owns.
    #[error(
        "--identity-dir {}: {} is a symbolic link owned by user {owner}: refused",
        .dir.display(),
        .link.display()
    )]
    ForeignLink {
        dir: PathBuf,
        link: PathBuf,
        owner: u32,
    },
    /// The path is not a directory (a symbolic link to one included).
    #[error(
        "--identity-dir {}: not a directory (a symbolic link is refused too)",
        .dir.display()
    )]
    NotADirectory { dir: PathBuf },
    /// Another user owns the directory.
    #[error(
        "--identity-dir {}: owned by user {owner}, not by this proxy's user ({me}): refused",
        .dir.display()
    )]
    Owner { dir: PathBuf, owner: u32, me: u32 },
    /// Its group or others may write to the directory.
    #[error(
        "--identity-dir {}: writable by its group or others (mode {mode:o}): refused; use mode 0700",
        .dir.display()
    )]
    Writable { dir: PathBuf, mode: u32 },
    /// A directory above it is another user's, or writable by others and not sticky.
    #[error(
        "--identity-dir {}: {} could be changed by another user (owner {owner}, mode {mode:o}): refused",
        .dir.display(),
        .parent.display()
    )]
    Replaceable {
        dir: PathBuf,
        parent: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// A directory above it, or a file in it, cannot be examined or written.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the identity is kept.
#[derive(Debug, Clone)]
pub enum Keep {
    /// In memory, under this name (`mem:NAME/key.pem`...).
    Memory(String),
    /// In memory and in this directory.
    Dir(String, PathBuf),
}

impl Keep {
    /// For `node`: in memory, and in `dir` when given (checked, or created, now).
    pub fn new(node: &str, dir: Option<PathBuf>) -> Result<Keep, KeepError> {
        let name = format!("identity/{}", crate::http::percent_encode(node));
        match dir {
            None => Ok(Keep::Memory(name)),
            Some(d) => Ok(Keep::Dir(name, prepare(&d)?)),
        }
    }

    /// What `${identity}` stands for in the node's config: where its files are read from.
    pub fn location(&self) -> String {
        match self {
            Keep::Memory(name) | Keep::Dir(name, _) => {
                format!("{}{name}", ringmesh_core::tls::memory::PREFIX)
            }
        }
    }

    /// Holds a new identity (in memory, and in the directory).
    pub fn store(&self, key: &str, cert: &str, bundle: &str) -> Result<(), KeepError> {
        let (Keep::Memory(name) | Keep::Dir(name, _)) = self;
        if let Keep::Dir(_, dir) = self {
            // Checked again: the directory must not have changed hands since.
            check(dir)?;
            for (file, data, mode) in [
                (KEY, key, 0o600),
                (CERT, cert, 0o644),
                (BUNDLE, bundle, 0o644),
            ] {
                write_replacing(&dir.join(file), data.as_bytes(), mode)?;
            }
        }
        use ringmesh_core::tls::memory;
        memory::put(&format!("{name}/{KEY}"), key.as_bytes());
        memory::put(&format!("{name}/{CERT}"), cert.as_bytes());
        memory::put(&format!("{name}/{BUNDLE}"), bundle.as_bytes());
        Ok(())
    }

    /// The identity a previous run left in the directory, if any: key, certificate, bundle.
    pub fn load(&self) -> Option<(String, String, String)> {
        let Keep::Dir(_, dir) = self else {
            return None;
        };
        check(dir).ok()?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Some((read(KEY)?, read(CERT)?, read(BUNDLE)?))
    }
}

/// Creates `dir` (mode 0700) if it is missing, checks it, and returns it resolved.
fn prepare(dir: &Path) -> Result<PathBuf, KeepError> {
    no_foreign_links(dir)?;
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| KeepError::Create {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        Err(source) => return Err(inspect(dir, source)),
    }
    let resolved = std::fs::canonicalize(dir).map_err(|e| inspect(dir, e))?;
    check(&resolved)?;
    Ok(resolved)
}

/// Refuses a path that goes through a symbolic link owned by another user than the proxy's
/// and root's: whoever owns a link can point it elsewhere at any time.
fn no_foreign_links(dir: &Path) -> Result<(), KeepError> {
    let me = ringmesh_core::sys::euid();
    let full = std::path::absolute(dir).map_err(|e| inspect(dir, e))?;
    let mut at = PathBuf::new();
    for part in full.components() {
        at.push(part);
        let Ok(m) = std::fs::symlink_metadata(&at) else {
            // What does not exist yet is created by the proxy.
            break;
        };
        if m.file_type().is_symlink() && m.uid() != me && m.uid() != 0 {
            return Err(KeepError::ForeignLink {
                dir: dir.to_path_buf(),
                link: at,
                owner: m.uid(),
            });
        }
    }
    Ok(())
}

/// Refuses a directory another user could have written to, or could replace.
pub fn check(dir: &Path) -> Result<(), KeepError> {
    let me = ringmesh_core::sys::euid();
    let m = std::fs::symlink_metadata(dir).map_err(|e| inspect(dir, e))?;
    if !m.file_type().is_dir() {
        return Err(KeepError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    if m.uid() != me {
        return Err(KeepError::Owner {
            dir: dir.to_path_buf(),
            owner: m.uid(),
            me,
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(KeepError::Writable {
            dir: dir.to_path_buf(),
            mode: m.mode() & 0o7777,
        });
    }
    // Whoever may write to a directory above it may put another directory in its place.
    for parent in dir.ancestors().skip(1) {
        let pm = std::fs::metadata(parent).map_err(|source| KeepError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let sticky = pm.mode() & 0o1000 != 0;
        let others_write = pm.mode() & 0o022 != 0;
        if (pm.uid() != me && pm.uid() != 0) || (others_write && !sticky) {
            return Err(KeepError::Replaceable {
                dir: dir.to_path_buf(),
                parent: parent.to_path_buf(),
                owner: pm.uid(),
                mode: pm.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// `dir` cannot be examined or resolved.
fn inspect(dir: &Path, source: std::io::Error) -> KeepError {
    KeepError::Inspect {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` with `mode`, by a new file renamed over it.
fn write_replacing(path: &Path, data: &[u8], mode: u32) -> Result<(), KeepError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| KeepError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringmesh-keep-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_directory_is_made_private_and_one_others_could_touch_is_refused() {
        let fresh = scratch("fresh");
        let keep = Keep::new("edge-1", Some(fresh.clone())).expect("created");
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        keep.store("K", "C", "B").expect("stored");
        let key_mode = std::fs::metadata(fresh.join(KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(keep.load(), Some(("K".into(), "C".into(), "B".into())));
        assert_eq!(
            ringmesh_core::tls::memory::get("identity/edge-1/key.pem").as_deref(),
            Some(&b"K"[..])
        );

        let open = scratch("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&open).expect_err("refused");
        assert!(matches!(e, KeepError::Writable { mode: 0o777, .. }), "{e}");
        let e = Keep::new("n", Some(open.clone())).expect_err("refused");
        assert!(matches!(e, KeepError::Writable { .. }), "{e}");

        // Below a directory others may write to (not sticky): refused.
        let inner = open.join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = Keep::new("n", Some(inner.clone())).expect_err("refused");
        assert!(matches!(e, KeepError::Replaceable { .. }), "{e}");
        assert!(matches!(
            prepare(&inner),
            Err(KeepError::Replaceable { .. })
        ));

        // A symbolic link to a good directory is refused.
        let link = scratch("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        // A link of the proxy's own user is followed; what is kept is the resolved directory.
        let keep = Keep::new("n", Some(link.clone())).expect("the user's own link");
        assert!(matches!(&keep, Keep::Dir(_, d) if *d == std::fs::canonicalize(&fresh).unwrap()));

        for d in [fresh, open, link] {
            let _ = std::fs::remove_dir_all(&d);
            let _ = std::fs::remove_file(&d);
        }
    }
}
