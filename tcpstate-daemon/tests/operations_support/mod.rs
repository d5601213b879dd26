//! What the operations tests share (tests/operations.rs needs root, tests/deploy.rs does not):
//! a JSON reader, the names a PromQL expression uses, a real Prometheus server, headless
//! Chromium. Kept apart from `support` (the kernel tests' helpers), which they build on.
#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod chromium;
pub mod json;
pub mod prometheus;
pub mod promql;

use std::path::{Path, PathBuf};

/// The repository's `deploy/` directory.
pub fn deploy_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A new empty directory under the system's temporary directory, unique to this process and
/// call; the caller removes it.
pub fn temporary_directory(purpose: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let directory = std::env::temp_dir().join(format!(
        "tcpstate-test-{purpose}-{}-{number}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("create a temporary directory");
    directory
}
