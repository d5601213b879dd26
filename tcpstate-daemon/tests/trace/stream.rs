//! What a scripted connection shows in the stream: exactly its transitions, each socket's in
//! order, with the durations the aggregates count; and what a filter lets through.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, TcpListener, TcpStream},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::support::{Daemon, rerun_once_after_unrecorded_events, until_transitions};
use crate::{
    CLOSE_WAIT_HOLD, EventStream, WAIT, address, assert_one_connection, client_closes_first,
    counted, edge,
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

        // The same transitions in the aggregates, and the same durations to the nanosecond.
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
            assert!(
                (sum - streamed).abs() <= 1e-9 * streamed.max(1e-6),
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
