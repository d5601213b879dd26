//! Builds the eBPF object (`tcpstate-ebpf`, target bpfel-unknown-none) with aya-build, into
//! OUT_DIR, from where `src/bpf/loader.rs` embeds it: the daemon binary is all a host needs, and it
//! can never ship a stale object.

use std::{env, path::Path, process::Command};

/// Toolchain override, e.g. `nightly` or `tcpstate-bpf`.
const TOOLCHAIN_ENV: &str = "TCPSTATE_EBPF_TOOLCHAIN";
/// What `cargo xtask setup` links to Debian's rustc (which ships core's sources).
const DEBIAN_TOOLCHAIN: &str = "tcpstate-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    build_info();
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
    let ebpf_dir = Path::new(&manifest_dir).join("../tcpstate-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tcpstate-ebpf",
            root_dir: ebpf_dir,
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

/// What `--version` and `tcpstate_build_info` say about the build: the git revision, rustc's
/// version and the target, as `TCPSTATE_REVISION`, `TCPSTATE_RUSTC_VERSION`, `TCPSTATE_TARGET`
/// ("unknown" where they cannot be found, e.g. a source tarball without git).
fn build_info() {
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let revision = output("git", &["rev-parse", "HEAD"]);
    // A new commit or checkout changes HEAD or the branch it names.
    for path in ["HEAD", "refs/heads"] {
        if let Some(git_path) = output("git", &["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={git_path}");
        }
    }
    if let Some(packed) = output("git", &["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={packed}/packed-refs");
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // `rustc 1.96.0 (hash date)`: the version number.
    let rustc_version = output(&rustc, &["--version"])
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_owned));
    let target = env::var("TARGET").ok();
    for (name, value) in [
        ("TCPSTATE_REVISION", revision),
        ("TCPSTATE_RUSTC_VERSION", rustc_version),
        ("TCPSTATE_TARGET", target),
    ] {
        let value = value.unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={name}={value}");
    }
}
