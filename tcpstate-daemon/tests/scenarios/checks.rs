//! What the scenarios expect of a scrape and of `ss`: transitions of handshakes, durations within
//! bounds, gauges per state as ss lists them, waits that assert with the namespace's sockets and
//! the relevant samples in their message.

use std::{collections::BTreeMap, time::Duration};

use crate::WEB_PORT;
use crate::support::{Daemon, Exposition, Netns, SsSocket, eventually, sockets};

/// The orderly close of `n` connections whose client closes first and whose server closes
/// after the client's FIN: the client through FIN_WAIT2 into TIME_WAIT (its timewait socket, in
/// the logical view), the server through CLOSE_WAIT and LAST_ACK.
pub fn client_first_closes(n: u64) -> Vec<(&'static str, &'static str, &'static str, u64)> {
    vec![
        ("client", "ESTABLISHED", "FIN_WAIT1", n),
        ("client", "FIN_WAIT1", "FIN_WAIT2", n),
        ("client", "FIN_WAIT2", "TIME_WAIT", n),
        ("server", "ESTABLISHED", "CLOSE_WAIT", n),
        ("server", "CLOSE_WAIT", "LAST_ACK", n),
        ("server", "LAST_ACK", "CLOSE", n),
    ]
}

// ---- durations -----------------------------------------------------------------------------

/// The `tcpstate_state_duration_seconds` labels of `state -> next` for `port` and `role`.
pub fn edge<'a>(
    state: &'a str,
    next: &'a str,
    role: &'a str,
    port: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("state", state),
        ("next", next),
        ("role", role),
        ("port", port),
    ]
}

/// Asserts that `count` durations were observed for `labels` since `before`, each within
/// `(above, at_most]` seconds: none in the bucket `le=above` (skipped when `above` is 0), all in
/// the bucket `le=at_most` (both must be bounds of the daemon's `--buckets`; `at_most` may be
/// infinite: `+Inf`), and their sum in between.
pub fn assert_durations(
    after: &Exposition,
    before: &Exposition,
    labels: &[(&str, &str)],
    count: u64,
    (above, at_most): (f64, f64),
) {
    let observed = duration_count(after, before, labels);
    let sum = duration_sum(after, before, labels);
    let bucket = |le: f64| {
        let le = if le.is_infinite() {
            "+Inf".to_owned()
        } else {
            le.to_string()
        };
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        after.delta(before, "tcpstate_state_duration_seconds_bucket", &with_le)
    };
    let count = count as f64;
    assert_eq!(observed, count, "durations observed for {labels:?}");
    if count == 0.0 {
        return;
    }
    if above > 0.0 {
        assert_eq!(
            bucket(above),
            0.0,
            "durations of {labels:?} at or below {above} s (sum {sum} s)"
        );
    }
    assert_eq!(
        bucket(at_most),
        count,
        "durations of {labels:?} within {at_most} s (sum {sum} s)"
    );
    assert!(
        sum > count * above && sum <= count * at_most,
        "durations of {labels:?} sum to {sum} s for {count}, expected each in ({above}, {at_most}] s"
    );
}

/// Asserts that the `count` durations observed for `labels` since `before` average within
/// `[shortest, longest]` seconds: bounds the test measured around the delay it controls.
pub fn assert_mean_duration(
    after: &Exposition,
    before: &Exposition,
    labels: &[(&str, &str)],
    count: u64,
    (shortest, longest): (f64, f64),
) {
    assert_eq!(
        duration_count(after, before, labels),
        count as f64,
        "durations observed for {labels:?}"
    );
    let mean = duration_sum(after, before, labels) / count as f64;
    assert!(
        (shortest..=longest).contains(&mean),
        "durations of {labels:?} average {mean} s, the test measured {shortest}-{longest} s"
    );
}

pub fn duration_count(after: &Exposition, before: &Exposition, labels: &[(&str, &str)]) -> f64 {
    after.delta(before, "tcpstate_state_duration_seconds_count", labels)
}

pub fn duration_sum(after: &Exposition, before: &Exposition, labels: &[(&str, &str)]) -> f64 {
    after.delta(before, "tcpstate_state_duration_seconds_sum", labels)
}

/// Slack for a duration the daemon derives from a kernel timer read in milliseconds and kept
/// in jiffies, against bounds the test measured with its own clock: the timer is set and read
/// in jiffies (4 ms at HZ=250), and jiffies advance at the tick, which on a loaded virtual
/// machine can come a tick late: two jiffies, plus margin.
pub const TIMER_SLACK: f64 = 0.012;

// ---- gauges and ss -------------------------------------------------------------------------

/// `ss -tan` sockets in ss state `state` (`TIME-WAIT`, ...) with `port` at either end.
pub fn ss_count(listed: &[SsSocket], state: &str, port: u16) -> usize {
    listed
        .iter()
        .filter(|socket| socket.state == state && socket.has_port(port))
        .count()
}

/// `ss -tan`'s lines, less the daemon's own HTTP connections (for failure messages).
pub fn shown(listed: &[SsSocket]) -> String {
    listed
        .iter()
        .filter(|socket| !socket.has_port(WEB_PORT))
        .map(|socket| {
            format!(
                "  {} {} {} :{} :{}\n",
                socket.state, socket.recv_q, socket.send_q, socket.local_port, socket.peer_port
            )
        })
        .collect()
}

/// Lists the namespace's sockets until `check` accepts them, for at most `limit`; asserts it.
pub fn until_ss(netns: &Netns, limit: Duration, what: &str, check: impl Fn(&[SsSocket]) -> bool) {
    let mut listed = netns.sockets();
    eventually(limit, || {
        listed = netns.sockets();
        check(&listed)
    });
    assert!(check(&listed), "{what}; ss -tan shows\n{}", shown(&listed));
}

/// Scrapes until `check` accepts the metrics, for at most `limit`; asserts it, with `what` and
/// the namespace's sockets in the message; returns the last scrape.
pub fn until_metrics(
    daemon: &Daemon,
    netns: &Netns,
    limit: Duration,
    what: &str,
    mut check: impl FnMut(&Exposition) -> bool,
) -> Exposition {
    let mut last = daemon.scrape();
    eventually(limit, || {
        last = daemon.scrape();
        check(&last)
    });
    assert!(
        check(&last),
        "{what}; ss -tan shows\n{}last scrape:\n{}",
        shown(&netns.sockets()),
        relevant(&last)
    );
    last
}

/// The samples of a scrape a failed assertion should show: this project's, not the process's,
/// and not those of the daemon's own HTTP connections (port `other` or the web port).
pub fn relevant(metrics: &Exposition) -> String {
    let web_port = WEB_PORT.to_string();
    metrics
        .samples()
        .filter(|(series, value)| {
            series.name.starts_with("tcpstate_")
                && !series.name.starts_with("tcpstate_state_duration_seconds_bucket")
                && !matches!(series.label("port"), Some(port) if port == "other" || port == web_port)
                && *value != 0.0
        })
        .map(|(series, value)| format!("{series} {value}\n"))
        .collect()
}

// ---- tcpstate_sockets equals ss -tan ------------------------------------------------------

/// Every state, as tcpstate names them; `SYN_RECV` here stands for ss's SYN-RECV, which is
/// tcpstate's NEW_SYN_RECV (request sockets) plus SYN_RECV (full sockets).
pub const STATES: [&str; 10] = [
    "LISTEN",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "CLOSE_WAIT",
    "CLOSING",
    "LAST_ACK",
    "TIME_WAIT",
];

pub fn per_state_from_metrics(metrics: &Exposition, ports: &[u16]) -> BTreeMap<&'static str, u64> {
    STATES
        .iter()
        .map(|&state| {
            let count: f64 = ports
                .iter()
                .map(|&port| {
                    sockets(metrics, state, port, "")
                        + if state == "SYN_RECV" {
                            sockets(metrics, "NEW_SYN_RECV", port, "")
                        } else {
                            0.0
                        }
                })
                .sum();
            (state, count as u64)
        })
        .collect()
}

pub fn per_state_from_ss(listed: &[SsSocket], ports: &[u16]) -> BTreeMap<&'static str, u64> {
    STATES
        .iter()
        .map(|&state| {
            let count = listed
                .iter()
                .filter(|socket| {
                    socket.tcpstate_state() == state
                        && ports.iter().any(|&port| socket.has_port(port))
                })
                .count();
            (state, count as u64)
        })
        .collect()
}
