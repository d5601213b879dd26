//! What the tests read from a scrape beyond single sums: the transitions of a port and the
//! recording failures that grew since an earlier scrape, the sockets gauge, and the wait for the
//! transitions a test expects.

use std::{collections::BTreeMap, time::Duration};

use tcpstate_testkit::{Exposition, TransitionCounts};

use super::{Daemon, UNRECORDED_EVENTS, eventually};

/// `(role, from, to) -> count`.
pub type Transitions = TransitionCounts;

/// `(role, from, to) -> count` of the transitions exported for `port` since `before`, the edges
/// that grew only.
pub fn transitions(after: &Exposition, before: &Exposition, port: u16) -> Transitions {
    let port = port.to_string();
    let earlier = before.transitions(&[("port", &port)]);
    after
        .transitions(&[("port", &port)])
        .into_iter()
        .map(|(edge, count)| {
            let grown = count.saturating_sub(earlier.get(&edge).copied().unwrap_or(0));
            (edge, grown)
        })
        .filter(|(_, grown)| *grown != 0)
        .collect()
}

/// `(role, from, to)` of the transitions every connection whose client closes first makes
/// once, however its segments fall: the client then leaves FIN_WAIT1 for FIN_WAIT2, or for
/// TIME_WAIT when the server's FIN acknowledges its own.
pub const ONCE_PER_CLIENT_FIRST_CLOSE: [(&str, &str, &str); 8] = [
    ("client", "CLOSE", "SYN_SENT"),
    ("client", "SYN_SENT", "ESTABLISHED"),
    ("client", "ESTABLISHED", "FIN_WAIT1"),
    ("server", "LISTEN", "SYN_RECV"),
    ("server", "SYN_RECV", "ESTABLISHED"),
    ("server", "ESTABLISHED", "CLOSE_WAIT"),
    ("server", "CLOSE_WAIT", "LAST_ACK"),
    ("server", "LAST_ACK", "CLOSE"),
];

pub fn expect(items: &[(&str, &str, &str, u64)]) -> Transitions {
    let mut out = Transitions::new();
    for (role, from, to, count) in items {
        *out.entry((role.to_string(), from.to_string(), to.to_string()))
            .or_default() += count;
    }
    out
}

/// The three-way handshake of `n` connections to one listener, and the listener's own
/// `CLOSE -> LISTEN`.
pub fn handshakes(n: u64) -> Vec<(&'static str, &'static str, &'static str, u64)> {
    vec![
        ("listener", "CLOSE", "LISTEN", 1),
        ("client", "CLOSE", "SYN_SENT", n),
        ("client", "SYN_SENT", "ESTABLISHED", n),
        ("server", "LISTEN", "SYN_RECV", n),
        ("server", "SYN_RECV", "ESTABLISHED", n),
    ]
}

/// `reason -> count` of the recording failures counted since `before`, the reasons that grew only.
pub fn recording_failures(after: &Exposition, before: &Exposition) -> BTreeMap<String, u64> {
    let earlier = before.recording_failures();
    after
        .recording_failures()
        .into_iter()
        .filter_map(|(reason, count)| {
            let grown = count.checked_sub(earlier.get(&reason).copied().unwrap_or(0))?;
            (grown > 0).then_some((reason, grown))
        })
        .collect()
}

/// `tcpstate_sockets` for `state` and `port`, and `role` unless empty.
pub fn sockets(metrics: &Exposition, state: &str, port: u16, role: &str) -> f64 {
    let port = port.to_string();
    let mut labels = vec![("state", state), ("port", port.as_str())];
    if !role.is_empty() {
        labels.push(("role", role));
    }
    metrics.sum("tcpstate_sockets", &labels)
}

/// Scrapes (which also drives the sock_diag poller) until the transitions for `port` since
/// `before` equal `want`, for at most `limit`, then asserts it; returns the last scrape. When they
/// differ and the daemon counted recording failures meanwhile, the panic message begins with
/// [`UNRECORDED_EVENTS`].
pub fn until_transitions(
    daemon: &Daemon,
    before: &Exposition,
    port: u16,
    want: &Transitions,
    limit: Duration,
) -> Exposition {
    let mut last = daemon.scrape();
    eventually(limit, || {
        last = daemon.scrape();
        transitions(&last, before, port) == *want
    });
    let exported = transitions(&last, before, port);
    let failures = recording_failures(&last, before);
    if exported != *want && !failures.is_empty() {
        panic!(
            "{UNRECORDED_EVENTS} ({failures:?}), and the transitions for port {port} differ\n \
             exported: {exported:?}\n expected: {want:?}"
        );
    }
    assert_eq!(
        &exported, want,
        "transitions for port {port} (left: exported, right: expected)"
    );
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Exposition {
        Exposition::parse(text).unwrap()
    }

    #[test]
    fn recording_failures_lists_the_reasons_that_grew() {
        let before = parse(
            "tcpstate_recording_failures_total{reason=\"event_lost\"} 0\n\
             tcpstate_recording_failures_total{reason=\"close_undelivered\"} 2\n",
        );
        let after = parse(
            "tcpstate_recording_failures_total{reason=\"event_lost\"} 0\n\
             tcpstate_recording_failures_total{reason=\"close_undelivered\"} 3\n\
             tcpstate_recording_failures_total{reason=\"out_of_sequence\"} 1\n\
             tcpstate_transitions_total{role=\"client\"} 9\n",
        );
        let grown = recording_failures(&after, &before);
        assert_eq!(
            grown,
            BTreeMap::from([
                ("close_undelivered".to_owned(), 1),
                ("out_of_sequence".to_owned(), 1)
            ])
        );
        assert!(recording_failures(&after, &after).is_empty());
    }

    #[test]
    fn transitions_of_a_port_are_the_edges_that_grew_in_either_family() {
        let series = |family: &str, to: &str, count: u64| {
            format!(
                "tcpstate_transitions_total{{role=\"client\",from=\"CLOSE\",to=\"{to}\",\
                 family=\"{family}\",port=\"25001\"}} {count}\n"
            )
        };
        let before = parse(&(series("ipv4", "SYN_SENT", 2) + &series("ipv4", "LISTEN", 1)));
        let after = parse(
            &(series("ipv4", "SYN_SENT", 3)
                + &series("ipv6", "SYN_SENT", 1)
                + &series("ipv4", "LISTEN", 1)),
        );
        assert_eq!(
            transitions(&after, &before, 25001),
            expect(&[("client", "CLOSE", "SYN_SENT", 2)])
        );
        assert!(transitions(&after, &before, 25002).is_empty());
    }
}
