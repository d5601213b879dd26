//! What clients of `/events` may get wrong: unknown filters and huge limits (a clear 400), more
//! streams than the daemon serves (a 503 that says so), streams that never read (memory stays
//! bounded); the daemon keeps answering scrapes and counting through all of them.

use std::time::Duration;

use crate::support::{Daemon, eventually};
use crate::{Answer, EventStream, WAIT, churn};

/// Most streams a daemon serves at once at the default `--web.max-connections`.
const MAX_STREAMS: usize = 16;

fn refusal(daemon: &Daemon, query: &str) -> (u16, String) {
    match EventStream::open(daemon, query, None) {
        Answer::Refused { status, body } => (status, body),
        Answer::Stream(_) => panic!("/events?{query} was served"),
    }
}

fn answers_scrapes(daemon: &Daemon) {
    for path in ["/healthz", "/metrics"] {
        let response = daemon.get(path).expect("an answer");
        assert_eq!(response.status, 200, "{path}: {}", response.body);
    }
}

/// VmRSS of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn unknown_filters_and_huge_limits_are_refused_with_what_to_fix() {
    let daemon = Daemon::watching(&[27020]);
    let many_ports = (1..=17).map(|port| port.to_string()).collect::<Vec<_>>();
    let many_ports = format!("port={}", many_ports.join(","));
    for (query, expected) in [
        (
            "ports=80",
            "unknown parameter `ports`: /events takes port, state, workload",
        ),
        ("port=80&colour=red", "unknown parameter `colour`"),
        ("port=0", "`0` is not a port: give a number from 1 to 65535"),
        ("port=99999", "`99999` is not a port"),
        (many_ports.as_str(), "at most 16 ports"),
        (
            "state=OPEN",
            "`OPEN` is not a TCP state: give one of ESTABLISHED",
        ),
        (
            "limit=0",
            "`0` is not a valid limit: give a whole number from 1 to 1000000000",
        ),
        ("limit=99999999999999999999", "is not a valid limit"),
        (
            "queue=1000000",
            "is not a valid queue: give a whole number from 1 to 2048",
        ),
        ("workload=host", "this daemon runs without --workloads"),
        ("port=%zz", "is not percent-encoded correctly"),
    ] {
        let (status, body) = refusal(&daemon, query);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(expected), "{query}: {body}");
    }
    answers_scrapes(&daemon);
    // And a good query still streams.
    EventStream::ready(
        &daemon,
        "port=27020&state=established,close_wait&limit=5&queue=8",
    );
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn streams_past_the_most_are_refused_until_one_ends() {
    let daemon = Daemon::watching(&[27021]);
    let mut streams: Vec<EventStream> = (0..MAX_STREAMS)
        .map(|index| EventStream::ready(&daemon, &format!("port={}", 27021 + index % 2)))
        .collect();
    let (status, body) = refusal(&daemon, "port=27021");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("16 event streams are open, the most this daemon serves at once"),
        "{body}"
    );
    answers_scrapes(&daemon);
    // One ends: its place is free again.
    drop(streams.pop());
    let mut reopened = until_a_stream_opens(&daemon, 27021);
    assert_eq!(reopened.next().expect("an event").name, "ready");
}

/// Opens a stream of `port`'s transitions once the daemon has room again, making a connection
/// to `port` before each try: the daemon learns that a client went when a write to it fails.
fn until_a_stream_opens(daemon: &Daemon, port: u16) -> EventStream {
    let mut opened = None;
    let query = format!("port={port}");
    assert!(
        eventually(Duration::from_secs(30), || {
            churn(port, 1);
            if let Answer::Stream(stream) = EventStream::open(daemon, &query, None) {
                opened = Some(stream);
            }
            opened.is_some()
        }),
        "a stream opens once another ended"
    );
    opened.unwrap()
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn streams_that_never_read_cost_bounded_memory() {
    let port = 27022;
    let daemon = Daemon::watching(&[port]);
    let baseline = resident_kib(daemon.pid());
    // As many streams as the daemon serves, each with the largest queue, none ever read.
    let streams: Vec<EventStream> = (0..MAX_STREAMS)
        .map(|_| {
            let query = format!("port={port}&queue=2048");
            let Answer::Stream(mut stream) = EventStream::open(&daemon, &query, Some(4096)) else {
                panic!("/events?{query} was refused");
            };
            assert_eq!(stream.next().expect("an event").name, "ready");
            stream
        })
        .collect();
    let before = daemon.scrape();
    churn(port, 3000);
    answers_scrapes(&daemon);
    // Every queue is full by now; the kernel and the daemon counted everything regardless.
    let counted = |metrics: &crate::support::Exposition| {
        metrics.sum(
            "tcpstate_transitions_total",
            &[
                ("port", &port.to_string()),
                ("from", "CLOSE"),
                ("to", "SYN_SENT"),
            ],
        )
    };
    let mut after = daemon.scrape();
    assert!(
        eventually(WAIT, || {
            after = daemon.scrape();
            counted(&after) - counted(&before) == 3000.0
        }),
        "3000 connects counted: {}",
        counted(&after) - counted(&before)
    );
    let grown = resident_kib(daemon.pid()).saturating_sub(baseline);
    eprintln!("{MAX_STREAMS} streams that never read, after 3000 connections: +{grown} KiB");
    // 16 queues of 2048 transitions of about 500 bytes, shared by the streams of one filter,
    // plus each connection's buffers: far below this bound.
    assert!(grown < 64 * 1024, "the daemon grew by {grown} KiB");
    drop(streams);
    until_a_stream_opens(&daemon, port);
}
