//! What a scripted connection shows in the stream: exactly its transitions, each socket's in
//! order, with the durations the aggregates count; and what a filter lets through.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv6Addr, Shutdown, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::support::{Daemon, read_to_eof, rerun_once_after_unrecorded_events, until_transitions};
use crate::{
    CLOSE_WAIT_HOLD, EventStream, LOOPBACK, WAIT, address, assert_one_connection,
    client_closes_first, counted, edge,
};

fn unix_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_scripted_connection_streams_its_transitions_in_order_with_the_aggregates_durations() {
    rerun_once_after_unrecorded_events(|| {
        let port = 27001;
        let daemon = Daemon::watching(&[port]);
        let mut stream = EventStream::ready(&daemon, &format!("port={port}"));
        let before = daemon.scrape();
        let start = SystemTime::now();
        let listener = TcpListener::bind(address(port)).unwrap();
        client_closes_first(&listener, port, CLOSE_WAIT_HOLD);
        drop(listener);
        let (transitions, dropped) = stream.transitions_until(WAIT, |seen| seen.len() >= 12);
        let end = SystemTime::now();
        assert_eq!(dropped, 0);

        assert_one_connection(&transitions);

        // The same transitions in the aggregates, and the same durations: to the nanosecond
        // where the socket lives on (the stream's program reads the time the counting program
        // recorded), within its own clock read at a CLOSE (the record is gone by then).
        let after = until_transitions(&daemon, &before, port, &counted(&transitions), WAIT);
        let mut durations: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
        for transition in &transitions {
            if let Some(ns) = transition["duration_ns"].as_u64() {
                let total = durations.entry(edge(transition)).or_default();
                *total = (total.0 + 1, total.1 + ns);
            }
        }
        assert_eq!(
            durations.len(),
            9,
            "all but the three births: {durations:?}"
        );
        let label = port.to_string();
        for ((role, from, to), (count, sum_ns)) in &durations {
            let labels = [
                ("state", from.as_str()),
                ("next", to.as_str()),
                ("role", role.as_str()),
                ("port", label.as_str()),
            ];
            let name = |suffix: &str| format!("tcpstate_state_duration_seconds_{suffix}");
            assert_eq!(after.delta(&before, &name("count"), &labels), *count as f64);
            let sum = after.delta(&before, &name("sum"), &labels);
            let streamed = *sum_ns as f64 / 1e9;
            let tolerance = match to.as_str() {
                "CLOSE" | "TIME_WAIT" => 1e-3 * *count as f64,
                _ => 1e-9 * streamed.max(1e-6),
            };
            assert!(
                (sum - streamed).abs() <= tolerance,
                "{role} {from} -> {to}: {sum} s aggregated, {streamed} s streamed"
            );
        }
        let close_wait = durations[&("server".into(), "CLOSE_WAIT".into(), "LAST_ACK".into())];
        assert!(
            close_wait.1 >= CLOSE_WAIT_HOLD.as_nanos() as u64,
            "CLOSE_WAIT was held {CLOSE_WAIT_HOLD:?}"
        );

        // Wall-clock times within the test, and the connection's addresses.
        for transition in &transitions {
            let time = transition["time_unix_ns"].as_u64().unwrap();
            assert!(
                unix_ns(start) <= time && time <= unix_ns(end),
                "{transition}"
            );
            assert_eq!(transition["local_address"], "127.0.0.1");
            assert_eq!(transition["family"], "ipv4");
            assert_eq!(transition["port"], label.as_str());
        }
        let server_side = |t: &&Value| t["role"] != "client";
        assert!(
            transitions
                .iter()
                .filter(server_side)
                .all(|t| t["local_port"] == port)
        );
        let established = transitions
            .iter()
            .find(|t| t["role"] == "client" && t["to"] == "ESTABLISHED")
            .unwrap();
        assert_eq!(established["remote_port"], port);
        assert_eq!(established["remote_address"], "127.0.0.1");
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn filters_let_through_only_the_ports_and_states_asked_for() {
    rerun_once_after_unrecorded_events(|| {
        let (wanted, other) = (27002, 27003);
        let daemon = Daemon::watching(&[wanted, other]);
        let mut closing = EventStream::ready(&daemon, &format!("port={wanted}&state=CLOSE_WAIT"));
        let mut timewait = EventStream::ready(&daemon, &format!("port={wanted}&state=TIME_WAIT"));
        for port in [other, wanted, other] {
            let listener = TcpListener::bind(address(port)).unwrap();
            client_closes_first(&listener, port, Duration::ZERO);
        }
        let (seen, _) = closing.transitions_until(Duration::from_secs(2), |_| false);
        let edges: Vec<_> = seen.iter().map(edge).collect();
        assert_eq!(
            edges,
            [
                ("server".into(), "ESTABLISHED".into(), "CLOSE_WAIT".into()),
                ("server".into(), "CLOSE_WAIT".into(), "LAST_ACK".into()),
            ]
        );
        assert!(seen.iter().all(|t| t["local_port"] == wanted));
        // The logical view's TIME_WAIT, which the kernel calls CLOSE.
        let (seen, _) = timewait.transitions_until(Duration::from_secs(2), |_| false);
        let edges: Vec<_> = seen.iter().map(edge).collect();
        assert_eq!(
            edges,
            [("client".into(), "FIN_WAIT2".into(), "TIME_WAIT".into())]
        );
        assert_eq!(seen[0]["remote_port"], wanted);
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn ipv6_connections_show_their_addresses() {
    rerun_once_after_unrecorded_events(|| {
        let port = 27004;
        let daemon = Daemon::watching(&[port]);
        let mut stream = EventStream::ready(&daemon, &format!("port={port}&state=ESTABLISHED"));
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, port)).unwrap();
        let client = TcpStream::connect((Ipv6Addr::LOCALHOST, port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (seen, _) = stream.transitions_until(WAIT, |seen| seen.len() >= 2);
        let client_port = client.local_addr().unwrap().port();
        for transition in &seen {
            assert_eq!(transition["family"], "ipv6", "{transition}");
            assert_eq!(transition["local_address"], "::1");
            assert_eq!(transition["remote_address"], "::1");
        }
        let client_event = seen.iter().find(|t| t["role"] == "client").unwrap();
        assert_eq!(
            (&client_event["local_port"], &client_event["remote_port"]),
            (&client_port.into(), &port.into())
        );
        drop((client, server, listener));
    });
}

/// Whether the daemon's event stream program is attached: a third link on the state changes'
/// tracepoint beside the two counting programs' (the daemon's fds, `/proc/PID/fdinfo`).
fn stream_program_attached(daemon: &Daemon) -> bool {
    let on_state_changes = daemon
        .attached_tracepoints()
        .iter()
        .filter(|tracepoint| *tracepoint == "inet_sock_set_state")
        .count();
    assert!(
        (2..=3).contains(&on_state_changes),
        "{on_state_changes} links on inet_sock_set_state"
    );
    on_state_changes == 3
}

/// Waits up to [`WAIT`] for the daemon's stream program to be attached (`true`) or not.
fn until_stream_program(daemon: &Daemon, attached: bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while stream_program_attached(daemon) != attached && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    stream_program_attached(daemon) == attached
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn the_streams_program_runs_only_while_someone_listens() {
    let port = 27005;
    let daemon = Daemon::watching(&[port]);
    assert!(
        !stream_program_attached(&daemon),
        "nobody listens yet: no instruction of the stream may run on an event"
    );
    let first = EventStream::ready(&daemon, &format!("port={port}"));
    assert!(stream_program_attached(&daemon), "attached before `ready`");
    let second = EventStream::ready(&daemon, "");
    drop(first);
    thread::sleep(Duration::from_millis(500));
    assert!(
        stream_program_attached(&daemon),
        "one subscriber left of two: still attached"
    );
    drop(second);
    assert!(
        until_stream_program(&daemon, false),
        "detached once the last subscriber left"
    );
    // And again: a stream opened after the last one closed works.
    let mut again = EventStream::ready(&daemon, &format!("port={port}"));
    let listener = TcpListener::bind(address(port)).unwrap();
    client_closes_first(&listener, port, CLOSE_WAIT_HOLD);
    drop(listener);
    let (transitions, _) = again.transitions_until(WAIT, |seen| seen.len() >= 12);
    assert_one_connection(&transitions);
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_socket_in_its_state_before_its_stream_opened_shows_its_whole_duration() {
    rerun_once_after_unrecorded_events(|| {
        let port = 27006;
        let held = Duration::from_millis(1500);
        let daemon = Daemon::watching(&[port]);
        // A stream of another port already runs: its program skips this test's sockets, and
        // keeps nothing of them, until the filter changes.
        let _other = EventStream::ready(&daemon, "port=27007");
        let listener = TcpListener::bind(address(port)).unwrap();
        let mut client = TcpStream::connect((LOOPBACK, port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        thread::sleep(held);
        // Both ends entered ESTABLISHED before anyone listened for them.
        let mut stream = EventStream::ready(&daemon, &format!("port={port}"));
        client.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut server, WAIT);
        let leaving = |seen: &[Value]| {
            seen.iter()
                .filter(|t| t["from"] == "ESTABLISHED" && t["role"] != "listener")
                .count()
        };
        let (transitions, _) = stream.transitions_until(WAIT, |seen| leaving(seen) >= 2);
        let left = |role: &str, to: &str| {
            transitions
                .iter()
                .find(|t| t["role"] == role && t["from"] == "ESTABLISHED" && t["to"] == to)
                .unwrap_or_else(|| panic!("{role} ESTABLISHED -> {to}: {transitions:#?}"))
                ["duration_ns"]
                .as_u64()
        };
        for (role, to) in [("client", "FIN_WAIT1"), ("server", "CLOSE_WAIT")] {
            let duration = left(role, to).expect("a duration");
            assert!(
                duration >= held.as_nanos() as u64 && duration < (held + WAIT).as_nanos() as u64,
                "{role}: ESTABLISHED for {duration} ns, held {held:?} before the stream opened"
            );
        }
        drop((client, server, listener));
    });
}
