//! Sets up what building, running and testing need, installing what is missing and saying so.
//! What works on Debian 12 (see DEVELOPERS.md): Debian's rustc (with core's sources) linked as a
//! rustup toolchain for the eBPF target, and bpf-linker built against Debian's LLVM 22. Where a
//! rustup nightly with `rust-src` exists, the daemon's build script uses it instead.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::run_command;

/// Debian packages the build and the tests need.
const PACKAGES: &[&str] = &[
    // The eBPF toolchain: a rustc with core's sources, and LLVM 22 for bpf-linker.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Clippy for that rustc, which lints the eBPF crate (`cargo xtask lint`).
    "rust-web-clippy",
    // Tests: promtool (`promtool check metrics`), namespaces and packet filtering.
    "prometheus",
    "iproute2",
    "nftables",
    // Tests of the state-machine page (headless) and of the systemd unit (systemd-analyze).
    "chromium",
    "systemd",
    // Tests of workloads: a real container (runc) with a busybox root file system.
    "runc",
    "busybox-static",
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The name `tcpstate-daemon/build_ebpf.rs` looks for.
pub const DEBIAN_TOOLCHAIN: &str = "tcpstate-bpf";

pub fn ensure() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    ensure_ebpf_toolchain()?;
    ensure_bpf_linker()
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))?
                .to_owned();
            uids.split_whitespace()
                .nth(1)
                .map(|effective| effective == "0")
        })
        .unwrap_or(false)
}

fn missing_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|package| {
            let installed = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
                .unwrap_or(false);
            !installed
        })
        .collect()
}

fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing packages: {}. Install them (Debian/Ubuntu: `sudo apt-get update && sudo {install}`) \
             and run this again",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    run_command(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

pub fn rustup_has_core_sources(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            Path::new(String::from_utf8_lossy(&out.stdout).trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    if rustup_has_core_sources("nightly") || rustup_has_core_sources(DEBIAN_TOOLCHAIN) {
        return Ok(());
    }
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        bail!(
            "no Rust toolchain can build core for the BPF target: install a nightly with rust-src \
             (`rustup toolchain install nightly --component rust-src`) or Debian's rust-web-src"
        );
    }
    eprintln!(
        "xtask: linking Debian's rustc (with core's sources) as rustup toolchain {DEBIAN_TOOLCHAIN}"
    );
    run_command(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if works {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    );
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    run_command(
        Command::new("cargo")
            .env("PATH", path)
            // --locked: bpf-linker's own Cargo.lock, so a fresh machine builds what was tested,
            // not whatever its dependencies published since.
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("cannot build bpf-linker; it needs Debian's llvm-22-dev, libpolly-22-dev, libzstd-dev and zlib1g-dev")
}
