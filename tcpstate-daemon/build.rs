//! Builds the eBPF object (`tcpstate-ebpf`, target bpfel-unknown-none) with aya-build, into
//! OUT_DIR, from where `src/bpf/loader.rs` embeds it: the daemon binary is all a host needs, and it
//! can never ship a stale object. The toolchain's choice is in `build_ebpf.rs`. Also records the
//! build's revision, rustc version and target for `--version` and `tcpstate_build_info`.

use std::{env, process::Command};

mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_info();
    build_ebpf::build("tcpstate-ebpf", "../tcpstate-ebpf")
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
