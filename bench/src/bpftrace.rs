//! What the bpftrace peer needs on this host: bpftrace itself, installed with apt when it is
//! missing (the peer is optional: without it the benchmark runs the other configurations).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::bail;

/// bpftrace's path, installing it first where it is missing and apt can; `None` (with a
/// warning) where neither works.
pub fn peer() -> anyhow::Result<Option<PathBuf>> {
    if find().is_none()
        && let Err(error) = install()
    {
        eprintln!("bench: warning: no bpftrace peer: {error:#}");
        return Ok(None);
    }
    Ok(find())
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
