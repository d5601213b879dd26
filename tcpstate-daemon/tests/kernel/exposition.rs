//! The exposition as a whole: promtool accepts it, it reports no recording failure, and for the
//! same traffic it shows the same families, series and counts as the checked-in fixture
//! (node_exporter's habit).

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::{
    Daemon, Exposition, Netns, eventually, expect, rerun_once_after_unrecorded_events,
    until_transitions,
};
use crate::{WAIT, abort, client_closes_first, closed_then_aborted};

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

    promtool_check_metrics(&body);
}

/// `promtool check metrics` accepts `exposition`.
fn promtool_check_metrics(exposition: &str) {
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
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The port of the golden test's traffic.
const GOLDEN_PORT: u16 = 24014;

/// The checked-in exposition of [`exposition_matches_the_golden_fixture`].
fn golden_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/kernel/golden.prom"
    ))
}

/// A fresh daemon in a namespace of the test's own sees known traffic on [`GOLDEN_PORT`]: a
/// connection closed by its client, one aborted (RST), and a refused connect. Its `/metrics`,
/// less what depends on the host or the clock ([`golden`]), must equal tests/kernel/golden.prom:
/// the same families in the same order with the same help and type, the same series with the
/// same labels, the same counts. `promtool check metrics` lints it too.
/// `TCPSTATE_UPDATE_GOLDEN=1` rewrites the fixture (for a change of the exposition that is meant).
#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn exposition_matches_the_golden_fixture() {
    rerun_once_after_unrecorded_events(|| {
        let netns = Netns::new(GOLDEN_PORT);
        let args = [format!("--port={GOLDEN_PORT}")];
        let daemon = Daemon::start_in(&netns, 24099, &args.each_ref().map(String::as_str));
        let before = daemon.scrape();
        let listen = SocketAddr::from(([127, 0, 0, 1], GOLDEN_PORT));
        netns.run(|| {
            client_closes_first(listen, Duration::ZERO);
            abort(listen);
            let refused = TcpStream::connect(listen).expect_err("nothing listens");
            assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        });
        let mut want = closed_then_aborted();
        want.extend([
            ("client", "CLOSE", "SYN_SENT", 1),
            ("client", "SYN_SENT", "CLOSE", 1),
        ]);
        until_transitions(&daemon, &before, GOLDEN_PORT, &expect(&want), WAIT);
        // The poll's series come with the first poll, which may still run on a busy host.
        let polled = || {
            daemon
                .scrape()
                .sum_if_any("tcpstate_poll_duration_seconds", &[])
                .is_some()
        };
        assert!(eventually(WAIT, polled), "a first sock_diag poll");

        let exposed = golden(&daemon.scrape_text());
        promtool_check_metrics(&exposed);
        if std::env::var_os("TCPSTATE_UPDATE_GOLDEN").is_some_and(|value| value == "1") {
            std::fs::write(golden_path(), &exposed).unwrap();
            eprintln!("wrote {}", golden_path().display());
        }
        let fixture = std::fs::read_to_string(golden_path()).unwrap_or_default();
        let differing = diff(&fixture, &exposed);
        assert!(
            differing.is_empty(),
            "/metrics differs from tests/kernel/golden.prom (- fixture, + now; \
             TCPSTATE_UPDATE_GOLDEN=1 rewrites it if the change is meant):\n{}",
            differing.join("\n")
        );
    });
}

/// The families whose TIME_WAIT series follow the polls (and the host's timewait table): there
/// or not at the last scrape depending on when a poll ran.
const FOLLOWING_THE_POLLS: [&str; 3] = [
    "tcpstate_sockets",
    "tcpstate_socket_age_max_seconds",
    "tcpstate_sockets_older_than",
];

/// What of an exposition the same traffic must reproduce: the families that have series of
/// [`GOLDEN_PORT`] or none with a port label, with their help and type lines; in them the series
/// of that port, with their values but for what the clock decides (`_sum`, `_bucket`), and the
/// series without a port label, values masked. Left out: the series of other ports (the host's
/// own traffic) and the port's TIME_WAIT gauge and ages ([`FOLLOWING_THE_POLLS`]). Masked
/// values read 0, so the result is still an exposition promtool can lint.
fn golden(exposition: &str) -> String {
    let port = GOLDEN_PORT.to_string();
    let mut out = String::new();
    let (mut family, mut comments, mut samples) = (String::new(), String::new(), String::new());
    let flush = |out: &mut String, comments: &mut String, samples: &mut String| {
        if !samples.is_empty() {
            out.push_str(comments);
            out.push_str(samples);
        }
        comments.clear();
        samples.clear();
    };
    for line in exposition.lines() {
        if line.starts_with('#') {
            // `# HELP name ...`, `# TYPE name ...`: a new family when the name changes.
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            if name != family {
                flush(&mut out, &mut comments, &mut samples);
                name.clone_into(&mut family);
            }
            comments.push_str(line);
            comments.push('\n');
            continue;
        }
        let sample = Exposition::parse(line).expect("the exposition parses");
        let (series, value) = sample.samples().next().expect("a sample");
        if series.name == "tcpstate_build_info" {
            // The build's revision, compiler and target change with every commit and machine.
            samples.push_str(&format!(
                "{}{{version=\"{}\",revision=\"REVISION\",rustc_version=\"RUSTC_VERSION\",target=\"TARGET\"}} 0\n",
                series.name,
                series.label("version").unwrap_or_default()
            ));
            continue;
        }
        let value = match series.label("port") {
            None => 0.0,
            Some(label) if label != port => continue,
            Some(_)
                if FOLLOWING_THE_POLLS.contains(&series.name.as_str())
                    && series.label("state") == Some("TIME_WAIT") =>
            {
                continue;
            }
            Some(_) if series.name.ends_with("_sum") || series.name.ends_with("_bucket") => 0.0,
            Some(_) => value,
        };
        samples.push_str(&format!("{series} {value}\n"));
    }
    flush(&mut out, &mut comments, &mut samples);
    out
}

/// The lines of `want` and `got` that differ, marked `-` and `+`, in order.
fn diff(want: &str, got: &str) -> Vec<String> {
    let (want_lines, got_lines): (BTreeSet<&str>, BTreeSet<&str>) =
        (want.lines().collect(), got.lines().collect());
    let mut out: Vec<String> = want
        .lines()
        .filter(|line| !got_lines.contains(line))
        .map(|line| format!("- {line}"))
        .collect();
    out.extend(
        got.lines()
            .filter(|line| !want_lines.contains(line))
            .map(|line| format!("+ {line}")),
    );
    if out.is_empty() && want != got {
        out.push("(the same lines in another order)".to_owned());
    }
    out
}
