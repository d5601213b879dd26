//! The whole life of TCP connections, scenario by scenario, on the real kernel (issue 3): one
//! module per subject (opening, closing, TIME_WAIT, resets, gauges against ss, restarts), with
//! the traffic they make in `traffic` and what they expect of a scrape in `checks`.
//!
//! Each test makes a network namespace of its own (`tcpstate-<port>-<pid>`, loopback only), runs
//! `tcpstated` inside it (its sock_diag figures, TIME_WAIT, request sockets and listen queues,
//! describe the daemon's own namespace), makes traffic there on service ports 25001-25027 (in the
//! daemon's port set; the BPF program sees every namespace, the port label keeps tests apart;
//! 25080-25085 are fixed client ports, 25097-25099 the datagram sink and the daemons' HTTP) and,
//! where a scenario needs lost packets, drops them with nftables rules inside that namespace (on
//! the input hook: the sender believes the segment left, as on a lossy wire). Everything is
//! removed when the test ends, passing or not: the namespace (with its rules and qdisc) by a
//! drop guard.
//!
//! Figures polled from sock_diag are refreshed by scrapes, no more often than
//! `--sockdiag.min-interval`: tests keep scraping while they wait for them. Durations are only
//! asserted against delays the test itself controls (a sleep, a dropped segment's retransmission
//! timeout, a token bucket), each with the tolerance stated beside it; where the machine's own
//! speed adds to the delay (sleeps, ss listings on a loaded host), against bounds the test
//! measured around it.
//!
//! `namespaces` and `namespace_changes` are the exception: their daemon runs in the host's
//! namespace and covers every namespace, the traffic runs in several of the test's own, on
//! ports 26001-26099 (see `namespaces`).
//!
//! They need root: `cargo test -p tcpstate-daemon --test scenarios -- --ignored --test-threads=1`.
//! One test waits for TIME_WAIT's natural end (65 s); the others take a few seconds each.

#[path = "../support/mod.rs"]
mod support;

mod ages;
mod checks;
mod closing;
mod gauges;
mod handshake;
mod namespace_changes;
mod namespace_privileges;
mod namespaces;
mod resets;
mod restarts;
mod timewait;
mod traffic;

use std::time::Duration;

use support::{Daemon, Netns, joined};

/// Bound of every wait for something that happens at once or at the next poll.
const WAIT: Duration = Duration::from_secs(10);
/// Where each test's daemon serves inside the test's namespace (private to it).
const WEB_PORT: u16 = 25099;
/// The second daemon of a test that compares views.
const RAW_VIEW_WEB_PORT: u16 = 25098;

/// The poll interval of the test daemons whose durations depend on when a poll notices a
/// timewait socket's early end.
const FAST_POLL: &str = "--sockdiag.min-interval=0.1";

/// tcpstated in `netns`, exporting `ports` by number, with histogram bounds `buckets` (chosen by
/// each test at the edges of its tolerances; empty: the defaults). Its polls cover that
/// namespace only (`--sockdiag.namespaces=own`): a scenario's figures are its namespace's, and
/// its polls' timing does not depend on the host's sockets (`namespaces` tests the others).
fn start(netns: &Netns, ports: &[u16], buckets: &[f64], extra: &[&str]) -> Daemon {
    let mut args = vec![
        format!("--port={}", joined(ports)),
        "--sockdiag.namespaces=own".to_owned(),
    ];
    if !buckets.is_empty() {
        args.push(format!("--buckets={}", joined(buckets)));
    }
    args.extend(extra.iter().map(ToString::to_string));
    Daemon::start_in(
        netns,
        WEB_PORT,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}
