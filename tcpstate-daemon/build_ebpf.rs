//! Builds an eBPF crate with aya-build into OUT_DIR, with the toolchain chosen the same way for
//! every eBPF object of the workspace: `TCPSTATE_EBPF_TOOLCHAIN`, else a rustup nightly with
//! rust-src, else Debian's rustc linked by `cargo xtask setup`. The daemon's build script uses
//! it for tcpstate-ebpf; the benchmark's includes this file (`#[path]`) for its own object.

use std::{env, path::Path, process::Command};

/// Toolchain override, e.g. `nightly` or `tcpstate-bpf`.
const TOOLCHAIN_ENV: &str = "TCPSTATE_EBPF_TOOLCHAIN";
/// What `cargo xtask setup` links to Debian's rustc (which ships core's sources).
const DEBIAN_TOOLCHAIN: &str = "tcpstate-bpf";

/// Builds the eBPF package `package`, whose directory is `dir` relative to the building crate.
pub fn build(package: &str, dir: &str) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    let toolchain = env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| {
        if has_core_sources("nightly") {
            "nightly".into()
        } else {
            DEBIAN_TOOLCHAIN.into()
        }
    });
    if toolchain != "nightly" && env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // A stable rustc builds `core` for the BPF target only with unstable flags enabled.
        // SAFETY: the build script is single-threaded here; nothing reads the environment
        // concurrently.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = Path::new(&manifest_dir).join(dir);
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

/// Whether `rustup run <toolchain>` has the `rust-src` component `-Z build-std` needs.
fn has_core_sources(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .is_some_and(|sysroot| {
            Path::new(sysroot.trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
}
