//! The parts of the collection turned off (`--no-collector.NAME`): their families absent from
//! /metrics (not zeros) and from the collectors' own figures, their programs neither loaded nor
//! attached, everything else as usual. Two daemons see the same connections, each with two
//! parts off that the other leaves on: each is the other's control.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::support::{
    Daemon, Exposition, eventually, expect, rerun_once_after_unrecorded_events, until_transitions,
};
use crate::{WAIT, abort, client_closes_first, closed_then_aborted};

const PORT: u16 = 24041;

/// The families only each part exports.
const SOCKDIAG: [&str; 5] = [
    "tcpstate_listen_queue_length",
    "tcpstate_listen_queue_limit",
    "tcpstate_network_namespaces",
    "tcpstate_poll_duration_seconds",
    "tcpstate_poll_interval_seconds",
];
const NETSTAT: [&str; 4] = [
    "tcpstate_listen_overflows_total",
    "tcpstate_listen_drops_total",
    "tcpstate_timewait_overflows_total",
    "tcpstate_ephemeral_ports",
];
const RESETS: [&str; 2] = [
    "tcpstate_resets_sent_total",
    "tcpstate_resets_received_total",
];
const SYNACK_RETRANSMITS: [&str; 1] = ["tcpstate_synack_retransmits_total"];

/// Those of `families` with at least one sample.
fn exported<'a>(metrics: &Exposition, families: &[&'a str]) -> Vec<&'a str> {
    families
        .iter()
        .copied()
        .filter(|family| metrics.sum_if_any(family, &[]).is_some())
        .collect()
}

/// The values of `label` in the samples of `name`.
fn label_values(metrics: &Exposition, name: &str, label: &str) -> BTreeSet<String> {
    metrics
        .samples()
        .filter(|(series, _)| series.name == name)
        .filter_map(|(series, _)| series.label(label).map(str::to_owned))
        .collect()
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|value| value.to_string()).collect()
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn parts_turned_off_export_nothing_and_attach_no_program() {
    rerun_once_after_unrecorded_events(|| {
        let port = format!("--port={PORT}");
        let no_polls_no_resets =
            Daemon::start(&[&port, "--no-collector.sockdiag", "--no-collector.resets"]);
        // It polls at every scrape: its figures from the polls come at once.
        let no_netstat_no_synack = Daemon::start(&[
            &port,
            "--sockdiag.min-interval=0",
            "--no-collector.netstat",
            "--no-collector.synack_retransmits",
        ]);
        let daemons = [&no_polls_no_resets, &no_netstat_no_synack];
        let before = daemons.map(Daemon::scrape);
        let listen: SocketAddr = ([127, 0, 0, 1], PORT).into();
        // Leaves the client's end in TIME_WAIT for a minute.
        client_closes_first(listen, Duration::ZERO);
        abort(listen);
        // Every transition of the tracepoint, whatever is turned off.
        let want = expect(&closed_then_aborted());
        for (daemon, before) in daemons.iter().zip(&before) {
            until_transitions(daemon, before, PORT, &want, WAIT);
        }
        // A listener with a connection waiting in its accept queue.
        let listener = TcpListener::bind(listen).unwrap();
        let _waiting = TcpStream::connect(listen).unwrap();

        // The control polls: its timewait socket (and a first run's, if this is a rerun) and
        // accept queue appear.
        let polled = |metrics: &Exposition| {
            let port = PORT.to_string();
            let time_wait = [("state", "TIME_WAIT"), ("role", "client"), ("port", &port)];
            metrics.sum("tcpstate_sockets", &time_wait) >= 1.0
                && metrics.sum("tcpstate_listen_queue_length", &[("port", &port)]) == 1.0
        };
        let mut control = no_netstat_no_synack.scrape();
        assert!(
            eventually(WAIT, || {
                control = no_netstat_no_synack.scrape();
                polled(&control)
            }),
            "the polls find the TIME_WAIT socket and the waiting connection"
        );
        let unpolled = no_polls_no_resets.scrape();
        assert_eq!(
            unpolled.sum_if_any("tcpstate_sockets", &[("state", "TIME_WAIT")]),
            None,
            "no timewait socket without polls"
        );

        assert_eq!(exported(&unpolled, &SOCKDIAG), [] as [&str; 0]);
        assert_eq!(exported(&unpolled, &RESETS), [] as [&str; 0]);
        assert_eq!(exported(&unpolled, &NETSTAT), NETSTAT);
        assert_eq!(exported(&unpolled, &SYNACK_RETRANSMITS), SYNACK_RETRANSMITS);
        assert_eq!(exported(&control, &NETSTAT), [] as [&str; 0]);
        assert_eq!(exported(&control, &SYNACK_RETRANSMITS), [] as [&str; 0]);
        assert_eq!(exported(&control, &SOCKDIAG), SOCKDIAG);
        assert_eq!(exported(&control, &RESETS), RESETS);
        assert_eq!(
            control.delta(
                &before[1],
                "tcpstate_resets_received_total",
                &[("role", "server"), ("port", &PORT.to_string())]
            ),
            1.0,
            "the abort's reset"
        );

        let collectors = "tcpstate_scrape_collector_success";
        assert_eq!(
            label_values(&unpolled, collectors, "collector"),
            set(&["bpf", "netstat"])
        );
        assert_eq!(
            label_values(&control, collectors, "collector"),
            set(&["bpf", "sockdiag"])
        );
        let reasons = "tcpstate_recording_failures_total";
        let only_polls_find = "close_undelivered";
        assert!(!label_values(&unpolled, reasons, "reason").contains(only_polls_find));
        assert!(label_values(&control, reasons, "reason").contains(only_polls_find));

        // The programs of the parts turned off are neither loaded nor attached.
        let programs = "tcpstate_bpf_program_runs_total";
        assert_eq!(
            label_values(&unpolled, programs, "program"),
            set(&["primary", "nested", "synack_retransmit"])
        );
        assert_eq!(
            no_polls_no_resets.attached_tracepoints(),
            [
                "inet_sock_set_state",
                "inet_sock_set_state",
                "tcp_retransmit_synack"
            ]
        );
        assert_eq!(
            label_values(&control, programs, "program"),
            set(&["primary", "nested", "reset_sent", "reset_received"])
        );
        assert_eq!(
            no_netstat_no_synack.attached_tracepoints(),
            [
                "inet_sock_set_state",
                "inet_sock_set_state",
                "tcp_receive_reset",
                "tcp_send_reset"
            ]
        );

        // Without polls, the sockets view still finds a socket's addresses, on request.
        let response = no_polls_no_resets
            .get(&format!("/sockets.json?port={PORT}&state=LISTEN"))
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        let view: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(view["listed"], 1, "{view}");
        assert_eq!(view["sockets"][0]["local"], format!("127.0.0.1:{PORT}"));
        drop(listener);
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn check_loads_only_the_programs_left_on() {
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tcpstated"))
        .args([
            "--check",
            "--no-collector.resets",
            "--no-collector.synack_retransmits",
        ])
        .env("RUST_LOG", "info")
        .output()
        .expect("run tcpstated");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "programs record_state_change, record_nested_state_change, trace_state_change \
             loaded, verified, attached and detached"
        ),
        "{stderr}"
    );
}
