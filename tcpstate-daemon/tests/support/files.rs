//! The repository's files the operations tests read, and scratch directories.

use std::path::{Path, PathBuf};

/// The repository's `deploy/` directory.
pub fn deploy_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The project's rule files (deploy/prometheus/*.rules.yml), sorted.
pub fn rule_files() -> Vec<PathBuf> {
    let directory = deploy_directory().join("prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("deploy/prometheus")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no rule files in {}",
        directory.display()
    );
    files
}

/// The Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    deploy_directory().join("grafana/tcpstate.json")
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
