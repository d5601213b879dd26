//! The operations kit in deploy/, checked without root: the Prometheus rules pass promtool and
//! their unit tests, every alert has a runbook and a test where it fires and one where it does
//! not, the Grafana dashboard parses and is well formed, the systemd unit verifies and is
//! hardened, the Kubernetes manifests keep to capabilities; one module per kind of file.
//! (tests/operations/ checks the same files against a real daemon and a real Prometheus, as
//! root.)

#[path = "../support/mod.rs"]
mod support;

mod grafana;
mod kubernetes;
mod prometheus_rules;
mod systemd;

use std::{path::Path, process::Command};

fn promtool(args: &[&str], directory: &Path) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(directory)
        .output()
        .expect(
            "promtool is installed (Debian package prometheus; `cargo xtask setup` installs it)",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn files_ending(directory: &Path, suffix: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{suffix} in {}", directory.display());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}
