//! Compiles the kernel shortcut's BPF programs (control/bpf/) with clang, for
//! `ringmesh init --accelerate`. Without clang or libbpf's headers the proxy still builds; its
//! `init --accelerate` then says the programs were not built, and the sidecar runs without
//! the shortcut.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [&str; 3] = ["connect", "sockops", "msg"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    // So that installing clang or libbpf-dev after a first build rebuilds the programs.
    println!("cargo:rerun-if-changed=/usr/include/bpf/bpf_helpers.h");
    println!("cargo:rerun-if-changed=/usr/bin/clang");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let missing = if Command::new(&clang).arg("--version").output().is_err() {
        Some(format!("`{clang}` was not found"))
    } else if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        Some("libbpf's headers (/usr/include/bpf, Debian's libbpf-dev) are missing".into())
    } else {
        None
    };
    for name in PROGRAMS {
        let object = out.join(format!("{name}.o"));
        if let Some(why) = &missing {
            // An empty object is how the loader learns the programs were not built.
            std::fs::write(&object, b"").expect("write to OUT_DIR");
            println!("cargo:warning=the eBPF shortcut is not built ({why})");
            continue;
        }
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            // <linux/types.h> wants <asm/types.h>, which Debian keeps per architecture.
            .arg(format!("-I/usr/include/{arch}-linux-gnu"))
            .arg("-c")
            .arg(format!("bpf/{name}.c"))
            .arg("-o")
            .arg(&object)
            .status()
            .expect("run clang");
        assert!(status.success(), "clang failed on bpf/{name}.c");
    }
}
