//! The daemon as a program: its pages, its clean shutdown, its errors and exit codes.

use std::{net::TcpListener, process::Command};

use crate::support::Daemon;

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn landing_page_health_and_clean_shutdown() {
    let daemon = Daemon::start(&["--web.telemetry-path=/custom"]);
    let page = daemon.get("/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("href=\"/custom\""), "{}", page.body);
    let health = daemon.get("/healthz").unwrap();
    assert_eq!(
        (health.status, health.body.starts_with("ok")),
        (200, true),
        "{}",
        health.body
    );
    assert_eq!(daemon.get("/custom").unwrap().status, 200);
    assert_eq!(daemon.get("/metrics").unwrap().status, 404);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM ends tcpstated cleanly: {status}");
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn errors_say_what_to_do_and_exit_codes_tell_usage_from_runtime() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tcpstated"))
            .args(args)
            .output()
            .expect("run tcpstated")
    };
    let usage = run(&["--buckets", "1,0.5"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("strictly increasing"));
    let usage = run(&["--port", "70000"]);
    assert_eq!(usage.status.code(), Some(2));

    // Without privileges (nobody, no capabilities): says which capabilities are missing.
    let unprivileged = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_tcpstated"))
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(unprivileged.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unprivileged.stderr);
    assert!(
        stderr.contains("missing capability CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let in_use = run(&["--web.listen-address", &address]);
    assert_eq!(in_use.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&in_use.stderr);
    assert!(
        stderr.contains("already in use") && stderr.contains("--web.listen-address"),
        "{stderr}"
    );
}
