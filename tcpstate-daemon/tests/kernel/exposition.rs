//! The exposition as a whole: promtool accepts it, and it reports no recording failure.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use crate::client_closes_first;
use crate::support::{Daemon, Exposition};

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn metrics_pass_promtool_and_report_no_failures() {
    let port = 24008;
    let daemon = Daemon::watching(&[port]);
    client_closes_first(([127, 0, 0, 1], port).into(), Duration::ZERO);
    let body = daemon.scrape_text();
    for needle in [
        "tcpstate_transitions_total{",
        "tcpstate_state_duration_seconds_bucket{",
        "tcpstate_sockets{",
        "tcpstate_tracked_sockets ",
        "tcpstate_map_capacity{",
        "tcpstate_recording_failures_total{reason=\"event_lost\"}",
        "tcpstate_build_info{version=",
        "process_resident_memory_bytes ",
    ] {
        assert!(body.contains(needle), "missing {needle}");
    }
    let metrics = Exposition::parse(&body).expect("the exposition parses");
    assert_eq!(
        metrics.sum("tcpstate_recording_failures_total", &[]),
        0.0,
        "{body}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
