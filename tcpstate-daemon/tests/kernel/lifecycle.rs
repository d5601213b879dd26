//! The daemon as a program: its pages, its clean shutdown, its errors and exit codes, its
//! `--check`, and what it tells systemd.

use std::{
    cell::RefCell,
    net::TcpListener,
    os::unix::net::UnixDatagram,
    process::{Command, Output},
    time::Duration,
};

use crate::support::{Daemon, files::temporary_directory};

const TCPSTATED: &str = env!("CARGO_BIN_EXE_tcpstated");

fn run(args: &[&str]) -> Output {
    Command::new(TCPSTATED)
        .args(args)
        .output()
        .expect("run tcpstated")
}

/// tcpstated run as nobody with no capability at all.
fn run_unprivileged(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(TCPSTATED)
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs")
}

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
    let usage = run(&["--buckets", "1,0.5"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("strictly increasing"));
    let usage = run(&["--port", "70000"]);
    assert_eq!(usage.status.code(), Some(2));

    // Without privileges (nobody, no capabilities): says which capabilities are missing, with
    // its own status (LSB's "insufficient privilege").
    let unprivileged = run_unprivileged(&[]);
    assert_eq!(unprivileged.status.code(), Some(4));
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

#[test]
#[ignore = "needs root, unshare and setpriv: run with `cargo xtask test`"]
fn check_attaches_every_program_and_tells_an_unfit_kernel_from_a_missing_privilege() {
    let check = run(&["--check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("check passed"), "{stderr}");

    // A kernel without BTF (or a container without /sys): /sys/kernel/btf hidden by an empty
    // file system in a mount namespace of its own.
    let no_btf = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /sys/kernel/btf && exec "$0" --check"#)
        .arg(TCPSTATED)
        .output()
        .expect("unshare (util-linux) runs");
    let stderr = String::from_utf8_lossy(&no_btf.stderr);
    assert_eq!(no_btf.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");

    let unprivileged = run_unprivileged(&["--check"]);
    let stderr = String::from_utf8_lossy(&unprivileged.stderr);
    assert_eq!(unprivileged.status.code(), Some(4), "{stderr}");
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn tells_systemd_it_is_ready_once_serving_and_when_it_stops() {
    let directory = temporary_directory("notify");
    let path = directory.join("notify");
    let systemd = UnixDatagram::bind(&path).expect("bind the notify socket");
    let heard = RefCell::new(Vec::new());
    let listen = |wait: Duration| {
        systemd.set_read_timeout(Some(wait)).unwrap();
        let mut datagram = [0u8; 256];
        if let Ok(length) = systemd.recv(&mut datagram) {
            let state = String::from_utf8_lossy(&datagram[..length]).into_owned();
            heard.borrow_mut().push(state);
        }
    };
    let mut daemon = Daemon::start_with_until(
        &[],
        |command| {
            command.env("NOTIFY_SOCKET", &path);
        },
        |_| {
            listen(Duration::from_millis(20));
            !heard.borrow().is_empty()
        },
    );
    assert_eq!(*heard.borrow(), ["READY=1"]);
    let health = daemon.get("/healthz").expect("ready means serving");
    assert_eq!(health.status, 200, "{}", health.body);

    daemon.signal("TERM");
    listen(Duration::from_secs(5));
    assert_eq!(*heard.borrow(), ["READY=1", "STOPPING=1"]);
    let status = daemon.exit_within(Duration::from_secs(10));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    let _ = std::fs::remove_dir_all(directory);
}
