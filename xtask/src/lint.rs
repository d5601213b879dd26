//! `cargo xtask lint`: clippy over every crate, the eBPF ones included (tcpstated's programs,
//! `tcpstate-ebpf`, and the benchmark's, `tcpstate-bench-ebpf`). They build only for
//! `bpfel-unknown-none` with `-Z build-std=core` (see `tcpstate-daemon/build_ebpf.rs`), so a
//! plain `cargo clippy` leaves them out: they are linted here with the toolchain that builds them.

use std::process::Command;

use crate::{cargo, run_command, setup};

/// The same choice as `tcpstate-daemon/build_ebpf.rs`: `TCPSTATE_EBPF_TOOLCHAIN`, else a nightly
/// with `rust-src`, else Debian's rustc linked by `cargo xtask setup`.
fn ebpf_toolchain() -> String {
    std::env::var("TCPSTATE_EBPF_TOOLCHAIN").unwrap_or_else(|_| {
        if setup::rustup_has_core_sources("nightly") {
            "nightly".into()
        } else {
            setup::DEBIAN_TOOLCHAIN.into()
        }
    })
}

pub fn run() -> anyhow::Result<()> {
    run_command(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let toolchain = ebpf_toolchain();
    let mut ebpf = Command::new("rustup");
    ebpf.args([
        "run",
        &toolchain,
        "cargo",
        "clippy",
        "--package",
        "tcpstate-ebpf",
        "--package",
        "tcpstate-bench-ebpf",
    ])
    .args([
        "--lib",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
    ])
    .args(["-Z", "build-std=core"])
    // Apart from the host build's: other flags would invalidate its cache.
    .args(["--target-dir", "target/ebpf-lint"])
    .args(["--", "-D", "warnings"])
    // What aya-build gives the crate (`aya-ebpf` needs the architecture's cfg).
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    )
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if toolchain != "nightly" {
        // A stable rustc builds `core` for the BPF target only with unstable flags enabled.
        ebpf.env("RUSTC_BOOTSTRAP", "1");
    }
    run_command(&mut ebpf)
}
