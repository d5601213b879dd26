//! What the bpftrace peer needs on this host: bpftrace itself, installed with apt when it is
//! missing (the peer is optional: without it the benchmark runs the other configurations), and
//! tracefs, mounted when it is not (bpftrace reads the tracepoint's format there).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::bail;

/// Where tracefs belongs; debugfs, where mounted, shows it again under `debug/tracing`.
const TRACEFS: &str = "/sys/kernel/tracing";
/// What bpftrace reads for the peer's probe: without it, it exits 1 before attaching
/// ("tracepoint not found").
const HOOK_FORMAT: &str = "events/sock/inet_sock_set_state/format";

/// bpftrace's path, installing it first where it is missing and apt can (`None`, with a
/// warning, where neither works), with tracefs mounted for it.
pub fn peer() -> anyhow::Result<Option<PathBuf>> {
    if find().is_none()
        && let Err(error) = install()
    {
        eprintln!("bench: warning: no bpftrace peer: {error:#}");
        return Ok(None);
    }
    let Some(bpftrace) = find() else {
        return Ok(None);
    };
    ensure_tracefs()?;
    Ok(Some(bpftrace))
}

/// Mounts tracefs where the tracepoint's format is nowhere to be read (a fresh machine), saying
/// so; fails with the command to run where the mount fails.
fn ensure_tracefs() -> anyhow::Result<()> {
    let debugfs_tracing = Path::new("/sys/kernel/debug/tracing");
    if [Path::new(TRACEFS), debugfs_tracing]
        .iter()
        .any(|tracing| tracing.join(HOOK_FORMAT).is_file())
    {
        return Ok(());
    }
    let mounted = Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .is_ok_and(|status| status.success());
    if !mounted || !Path::new(TRACEFS).join(HOOK_FORMAT).is_file() {
        bail!(
            "bpftrace needs tracefs, which is not mounted here, and mounting it failed: run \
             `sudo mount -t tracefs nodev {TRACEFS}` (or pass --no-bpftrace)"
        );
    }
    eprintln!("bench: mounted tracefs on {TRACEFS} (bpftrace reads the tracepoint's format there)");
    Ok(())
}

/// `apt-get install bpftrace`, saying so.
fn install() -> anyhow::Result<()> {
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("bpftrace is not installed: install it, or pass --no-bpftrace");
    }
    eprintln!("bench: installing bpftrace (the peer) with apt-get");
    for args in [
        &["update", "-q"][..],
        &["install", "-y", "-q", "--no-install-recommends", "bpftrace"],
    ] {
        let status = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .status()?;
        if !status.success() {
            bail!("`apt-get {}` failed with {status}", args.join(" "));
        }
    }
    Ok(())
}

/// bpftrace's path, when installed.
fn find() -> Option<PathBuf> {
    [
        "/usr/bin/bpftrace",
        "/usr/local/bin/bpftrace",
        "/usr/sbin/bpftrace",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
    .or_else(|| {
        let output = Command::new("sh")
            .args(["-c", "command -v bpftrace"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let path = String::from_utf8(output.stdout).ok()?;
        let path = PathBuf::from(path.trim());
        path.exists().then_some(path)
    })
}
