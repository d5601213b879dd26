//! A slow subscriber under churn: what its queue could not hold is counted and told to it, not
//! lost in silence, and the aggregates count every transition all the same.

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Daemon, ONCE_PER_CLIENT_FIRST_CLOSE, Transitions, eventually, recording_failures,
    rerun_once_after_unrecorded_events, transitions,
};
use crate::{Answer, EventStream, WAIT, churn, edge};

/// Connections of the churn: about 10 transitions each, far more than the slow subscriber's
/// queue and the socket buffers between it and the daemon hold.
const CONNECTIONS: u64 = 2000;

/// Whether `exported` holds `connections` whole lives of `crate::client_closes_first`, and the
/// listener's: every socket made, and every one gone through its closing states (a client
/// may skip FIN_WAIT2, see `ONCE_PER_CLIENT_FIRST_CLOSE`).
fn whole_lives(exported: &Transitions, connections: u64) -> bool {
    let count = |role: &str, from: &str, to: &str| {
        let key = (role.to_owned(), from.to_owned(), to.to_owned());
        exported.get(&key).copied().unwrap_or(0)
    };
    let client_left_fin_wait1 =
        count("client", "FIN_WAIT1", "FIN_WAIT2") + count("client", "FIN_WAIT1", "TIME_WAIT");
    count("listener", "CLOSE", "LISTEN") == 1
        && count("listener", "LISTEN", "CLOSE") == 1
        && ONCE_PER_CLIENT_FIRST_CLOSE
            .iter()
            .all(|(role, from, to)| count(role, from, to) == connections)
        && client_left_fin_wait1 == connections
        && count("client", "FIN_WAIT2", "TIME_WAIT") == count("client", "FIN_WAIT1", "FIN_WAIT2")
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_slow_subscriber_is_told_what_it_missed_and_the_aggregates_stay_exact() {
    rerun_once_after_unrecorded_events(|| {
        let port = 27010;
        let daemon = Daemon::watching(&[port]);
        // Reads nothing while the churn runs: a queue of 16 transitions, a small window.
        let query = format!("port={port}&queue=16");
        let Answer::Stream(mut slow) = EventStream::open(&daemon, &query, Some(4096)) else {
            panic!("/events?{query} was refused");
        };
        assert_eq!(slow.next().expect("an event").name, "ready");
        let before = daemon.scrape();
        churn(port, CONNECTIONS as usize);

        // The aggregates: every life whole, as without a subscriber.
        let mut after = daemon.scrape();
        let settled = eventually(WAIT, || {
            after = daemon.scrape();
            whole_lives(&transitions(&after, &before, port), CONNECTIONS)
        });
        let exported = transitions(&after, &before, port);
        let failures = recording_failures(&after, &before);
        if !settled && !failures.is_empty() {
            panic!(
                "{} ({failures:?}); exported: {exported:?}",
                crate::support::UNRECORDED_EVENTS
            );
        }
        // Failures counted while the lives are whole are other traffic's (they are the host's).
        assert!(
            settled,
            "{CONNECTIONS} whole lives on port {port}: {exported:?}"
        );
        // The stream shows no timewait socket's end (sock_diag finds those).
        let streamable: u64 = exported
            .iter()
            .filter(|((_, from, _), _)| from != "TIME_WAIT")
            .map(|(_, count)| count)
            .sum();

        // The stream: what came, and what it was told it missed, add up to them.
        let mut queue_drops = 0;
        let mut ring_drops = 0;
        let mut received: Vec<Value> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (received.len() as u64) + queue_drops + ring_drops < streamable
            && std::time::Instant::now() < deadline
        {
            match slow.next() {
                Some(event) if event.name == "transition" => received.push(event.data),
                Some(event) if event.name == "dropped" => {
                    let count = event.data["dropped"].as_u64().expect("a count");
                    match event.data["cause"].as_str() {
                        Some("queue") => queue_drops += count,
                        Some("ring") => ring_drops += count,
                        cause => panic!("a drop of unknown cause {cause:?}"),
                    }
                    let message = event.data["message"].as_str().unwrap_or_default();
                    assert!(message.contains("dropped"), "{message}");
                }
                Some(event) => panic!("unexpected event {event:?}"),
                None => break,
            }
        }
        assert!(
            queue_drops > 0,
            "a slow subscriber is told it missed transitions"
        );
        let label = port.to_string();
        assert!(
            received
                .iter()
                .all(|t| t["port"].as_str() == Some(label.as_str())),
            "only the port asked for"
        );
        let total = received.len() as u64 + queue_drops;
        if ring_drops == 0 {
            assert_eq!(
                total,
                streamable,
                "received {} + dropped {queue_drops} = the {streamable} transitions counted",
                received.len()
            );
        } else {
            // The ring's drops are of any stream's filter: a bound, not a sum.
            assert!(
                total + ring_drops >= streamable,
                "{total} + {ring_drops} < {streamable}"
            );
        }
        // What came was counted too.
        for transition in &received {
            let (role, from, to) = edge(transition);
            assert!(
                exported.contains_key(&(role.clone(), from.clone(), to.clone())),
                "{role} {from} -> {to} streamed but not counted"
            );
        }
    });
}
