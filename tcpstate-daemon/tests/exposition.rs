//! The golden exposition (node_exporter's `e2e-output.txt` habit): `/metrics` built from fixed
//! inputs that fill every family the daemon exports about TCP, gathered and encoded as the
//! HTTP endpoint does, compared byte for byte with a checked-in fixture, and linted with
//! `promtool check metrics`. A refactoring must leave the fixtures alone; a deliberate change
//! of the exposition rewrites them with `TCPSTATE_BLESS=1 cargo test --test exposition` and
//! shows up in the diff.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use prometheus::{Encoder as _, Registry, TextEncoder, core::Collector, proto::MetricFamily};
use tcpstate_common::{
    EventKey, Labels, PortSet, SocketRecord, TcpState, TimewaitHandoff, TransitionKey,
    TransitionStats, event_kind, family, program, recorder, role, transition_detail,
    transition_flag::{DURATION_OBSERVED, FROM_TRACKED, INFERRED, TO_TRACKED},
};
use tcpstate_daemon::{
    bpf::{maps::Snapshot, socket_slots::SlotSweep as _},
    config::Collectors,
    metrics::{CollectorConfig, PartRun, Parts, Scrape, exposition},
    model::{
        Counters, StateKey, View,
        ages::{Ages, add_age},
    },
    netstat::ListenCounters,
    sockets::{
        census::{Census, baseline::FirstListing},
        sock_diag::DiagSocket,
    },
    sys::ProgramStats,
    workload::{Workload, WorkloadTable},
};

const SECOND: u64 = 1_000_000_000;
/// When the daemon started (CLOCK_MONOTONIC).
const START: u64 = 1_000 * SECOND;
/// The daemon's network namespace.
const NET: u32 = 4_026_531_840;
const BOUNDS: [f64; 6] = [0.001, 0.01, 0.1, 1.0, 10.0, 60.0];
const SERVICE_PORTS: [u16; 2] = [443, 8080];

fn labels(port: u16, family: u8, role: u8) -> Labels {
    Labels {
        port,
        family,
        role,
        cgroup: 0,
    }
}

const CLIENT: Labels = Labels {
    port: 443,
    family: family::IPV4,
    role: role::CLIENT,
    cgroup: 0,
};
const SERVER: Labels = Labels {
    port: 8080,
    family: family::IPV6,
    role: role::SERVER,
    cgroup: 0,
};

/// A kernel aggregate: `count` transitions, and when the start was seen, `count` durations
/// spread over the buckets from `bucket` on (one above the last bound: only in the count).
fn entry(
    labels: Labels,
    (from, to): (TcpState, TcpState),
    flags: u8,
    (recorder, detail): (u8, u8),
    count: u64,
    bucket: usize,
) -> (TransitionKey, TransitionStats) {
    let mut stats = TransitionStats::ZERO;
    stats.count = count;
    if flags & DURATION_OBSERVED != 0 {
        for observed in 0..count {
            let index = bucket + observed as usize % 3;
            if index < BOUNDS.len() {
                stats.duration_buckets[index] += 1;
            }
            stats.duration_sum_ns += (BOUNDS[index.min(BOUNDS.len() - 1)] * 0.75 * 1e9) as u64;
        }
    }
    let key = TransitionKey::new(labels, from as u8, to as u8, flags, recorder, detail);
    (key, stats)
}

/// The kernel's side: every kind of aggregate, event, counter and program statistic.
fn snapshot() -> Snapshot {
    use TcpState::*;
    use transition_detail::*;
    const TRACKED: u8 = FROM_TRACKED | TO_TRACKED | DURATION_OBSERVED;
    const CLOSED: u8 = FROM_TRACKED | DURATION_OBSERVED;
    const SET_AGAIN: u8 = FROM_TRACKED | TO_TRACKED;
    const UNSEEN: u8 = FROM_TRACKED;
    const MISSED: u8 = FROM_TRACKED | TO_TRACKED | INFERRED;
    let primary = (recorder::PRIMARY, NONE);
    let nested = (recorder::NESTED, NONE);
    let timewait = (recorder::PRIMARY, TIME_WAIT_HANDOFF);
    let orphan = (recorder::PRIMARY, FIN_WAIT2_HANDOFF);
    let listener = labels(8080, family::IPV6, role::LISTENER);
    let unknown = labels(0, family::IPV4, role::UNKNOWN);
    let client6 = labels(0, family::IPV6, role::CLIENT);
    let transitions = vec![
        // A client's life, some events recorded by the nested program, one key found twice
        // (in a CPU's transition slot and in the hash map).
        entry(CLIENT, (Close, SynSent), TO_TRACKED, primary, 9, 0),
        entry(CLIENT, (SynSent, Established), TRACKED, primary, 5, 0),
        entry(CLIENT, (SynSent, Established), TRACKED, primary, 1, 2),
        entry(CLIENT, (SynSent, Established), TRACKED, nested, 1, 1),
        entry(CLIENT, (Established, FinWait1), TRACKED, primary, 4, 3),
        entry(CLIENT, (FinWait1, FinWait2), TRACKED, primary, 3, 0),
        entry(CLIENT, (FinWait1, FinWait1), SET_AGAIN, primary, 1, 0),
        entry(CLIENT, (FinWait2, Close), CLOSED, timewait, 2, 1),
        entry(CLIENT, (FinWait1, Close), CLOSED, timewait, 1, 2),
        entry(CLIENT, (FinWait1, Close), CLOSED, orphan, 1, 0),
        entry(CLIENT, (FinWait2, Close), CLOSED, orphan, 1, 0),
        entry(CLIENT, (SynSent, Close), CLOSED, (0, CONNECT_REFUSED), 2, 0),
        entry(CLIENT, (SynSent, Close), CLOSED, (1, CONNECT_REFUSED), 1, 0),
        entry(CLIENT, (SynSent, Close), CLOSED, (0, CONNECT_TIMEOUT), 1, 5),
        entry(client6, (SynSent, Close), CLOSED, (0, CONNECT_RESET), 1, 4),
        entry(client6, (SynSent, Close), UNSEEN, (1, CONNECT_OTHER), 1, 0),
        // A server's, on an IPv6 port exported by number; one event missed (inferred).
        entry(SERVER, (Listen, SynRecv), TO_TRACKED, primary, 6, 0),
        entry(SERVER, (SynRecv, Established), TRACKED, primary, 6, 0),
        entry(SERVER, (Established, CloseWait), TRACKED, primary, 4, 4),
        entry(SERVER, (CloseWait, LastAck), TRACKED, primary, 3, 0),
        entry(SERVER, (LastAck, Close), CLOSED, primary, 2, 1),
        entry(SERVER, (Established, Closing), TRACKED, primary, 1, 0),
        entry(SERVER, (Closing, Close), CLOSED, timewait, 1, 0),
        entry(SERVER, (CloseWait, LastAck), MISSED, primary, 1, 0),
        entry(SERVER, (Established, Close), CLOSED, primary, 1, 6),
        // A listener; sockets older than the daemon, first seen moving.
        entry(listener, (Close, Listen), TO_TRACKED, primary, 2, 0),
        entry(listener, (Listen, Close), CLOSED, primary, 1, 5),
        entry(unknown, (Established, FinWait1), TO_TRACKED, primary, 3, 0),
        entry(unknown, (CloseWait, LastAck), TO_TRACKED, primary, 1, 0),
        entry(unknown, (FinWait1, Close), 0, timewait, 1, 0),
    ];
    use event_kind::*;
    let event = |labels, kind, state: TcpState, count| {
        let key = EventKey {
            labels,
            kind,
            state: state as u8,
            _padding: [0; 6],
        };
        (key, count)
    };
    let events = vec![
        event(CLIENT, RESET_SENT, Established, 3),
        event(CLIENT, RESET_SENT, SynSent, 1),
        event(SERVER, RESET_RECEIVED, CloseWait, 2),
        event(unknown, RESET_RECEIVED, TimeWait, 1),
        event(listener, SYNACK_RETRANSMIT, NewSynRecv, 4),
        // The same family and port under another role: one series.
        event(SERVER, SYNACK_RETRANSMIT, NewSynRecv, 1),
        event(unknown, SYNACK_RETRANSMIT, NewSynRecv, 2),
    ];
    use program::*;
    let stats = |run_count, run_time_ns, recursion_misses| ProgramStats {
        run_time_ns,
        run_count,
        recursion_misses,
    };
    Snapshot {
        transitions,
        transitions_map_entries: 11,
        events,
        counters: Counters {
            failed_events_map_full: 1,
            failed_handoff_record: 2,
            records_created: 41,
            records_deleted: 29,
            nested_events_recorded: 5,
            failed_transitions_map_full: 3,
            failed_socket_storage: 4,
            failed_unknown_state: 6,
            failed_record_delete: 7,
            records_in_socket_storage: 8,
            failed_first_seen_record: 9,
        },
        programs: vec![
            (RECORD_STATE_CHANGE, stats(1_000, 250_000, 12)),
            (RECORD_NESTED_STATE_CHANGE, stats(1_000, 40_000, 0)),
            (RECORD_RESET_SENT, stats(4, 1_500, 1)),
            (RECORD_RESET_RECEIVED, stats(3, 1_250, 0)),
            (RECORD_SYNACK_RETRANSMIT, stats(7, 2_125_000_000, 2)),
        ],
        handoffs_lost: 10,
        read_errors: 11,
    }
}

fn diag(state: TcpState, timewait: bool, ports: (u16, u16), cookie: u64) -> DiagSocket {
    DiagSocket {
        family: family::IPV4,
        state: state as u8,
        timewait,
        local_port: ports.0,
        remote_port: ports.1,
        cookie,
        expires_ms: 0,
        ..DiagSocket::default()
    }
}

fn timewait(state: TcpState, ports: (u16, u16), cookie: u64, expires_ms: u32) -> DiagSocket {
    DiagSocket {
        expires_ms,
        ..diag(state, true, ports, cookie)
    }
}

fn listening(family: u8, port: u16, queue: u32, limit: u32, cookie: u64) -> DiagSocket {
    DiagSocket {
        family,
        receive_queue: queue,
        send_queue: limit,
        ..diag(TcpState::Listen, false, (port, 0), cookie)
    }
}

/// A poll whose sockets were all read at `now`.
fn poll(census: &mut Census, polled: &[DiagSocket], requests: &[DiagSocket], now: u64) {
    let read_at = |sockets: &[DiagSocket]| -> Vec<DiagSocket> {
        sockets
            .iter()
            .map(|socket| DiagSocket {
                seen_ns: now,
                ..*socket
            })
            .collect()
    };
    census.observe(&read_at(polled), &read_at(requests), now - SECOND / 10, now);
}

fn handoff(labels: Labels, state: TcpState, entered_ns: u64) -> TimewaitHandoff {
    TimewaitHandoff {
        entered_ns,
        labels,
        state: state as u8,
        _padding: [0; 3],
        net_inode: NET,
    }
}

/// The sock_diag side: a start-up baseline, two polls (listeners and their queues, request
/// sockets, timewait sockets with and without handoffs, orphans, closing sockets), the
/// handoffs the sweeps took, and sockets whose CLOSE never reached the programs.
/// How long the tracked sockets now in each state have been there: a server's CLOSE_WAIT
/// sockets, one of them leaked for an hour and a half, and a client's ESTABLISHED one.
fn ages() -> Ages {
    use TcpState::*;
    let now = START + 10_000 * SECOND;
    let mut ages = Ages::new();
    for (labels, state, age_seconds) in [
        (SERVER, CloseWait, 5),
        (SERVER, CloseWait, 400),
        (SERVER, CloseWait, 5400),
        (CLIENT, Established, 70),
    ] {
        let key = StateKey::new(labels, state as u8);
        add_age(&mut ages, key, now - age_seconds * SECOND, now);
    }
    ages
}

fn census() -> Census {
    use TcpState::*;
    let mut ports = PortSet::EMPTY;
    SERVICE_PORTS.iter().for_each(|port| ports.insert(*port));
    let unknown = labels(443, family::IPV4, role::UNKNOWN);
    let mut listing = FirstListing::new(NET);
    listing.add(100, unknown, Established as u8);
    listing.add(101, unknown, Established as u8);
    listing.add(102, unknown, CloseWait as u8);
    listing.add(103, labels(0, family::IPV6, role::LISTENER), Listen as u8);
    listing.add(104, unknown, LastAck as u8);
    listing.add(105, unknown, LastAck as u8);
    let bounds_ns = BOUNDS.iter().map(|bound| (bound * 1e9) as u64).collect();
    let mut census = Census::new(ports, bounds_ns, START, NET, listing.confirm(100..=105));
    census.baseline.first_seen(100);

    census.add_handoff(201, handoff(CLIENT, TimeWait, START + SECOND));
    census.add_handoff(202, handoff(CLIENT, FinWait2, START + SECOND / 2));
    census.add_handoff(204, handoff(SERVER, TimeWait, START + SECOND));
    let listeners = [
        listening(family::IPV4, 443, 3, 128, 10),
        listening(family::IPV6, 443, 1, 128, 11),
        listening(family::IPV4, 9000, 0, 4096, 12),
    ];
    let closing = [
        diag(LastAck, false, (443, 50_000), 105),
        diag(FinWait1, false, (40_001, 443), 300),
    ];
    let first = [
        timewait(TimeWait, (443, 50_001), 200, 58_000),
        timewait(TimeWait, (40_002, 443), 201, 59_000),
        timewait(FinWait2, (40_003, 443), 202, 50_000),
        timewait(TimeWait, (40_004, 8080), 203, 5_000),
        timewait(FinWait2, (40_005, 80), 205, 30_000),
    ];
    let requests = [
        diag(NewSynRecv, false, (443, 50_100), 400),
        diag(NewSynRecv, false, (443, 50_101), 401),
        DiagSocket {
            family: family::IPV6,
            ..diag(NewSynRecv, false, (8080, 50_102), 402)
        },
    ];
    let polled: Vec<DiagSocket> = [&listeners[..], &closing, &first].concat();
    poll(&mut census, &polled, &requests, START + 2 * SECOND);

    let second = [
        timewait(TimeWait, (443, 50_001), 200, 56_000),
        timewait(TimeWait, (40_003, 443), 202, 59_700),
        timewait(TimeWait, (40_005, 80), 205, 59_000),
    ];
    census.add_handoff(205, handoff(CLIENT, FinWait2, START + SECOND));
    let polled: Vec<DiagSocket> = [&listeners[..], &closing[1..], &second].concat();
    poll(&mut census, &polled, &requests[..1], START + 4 * SECOND);

    // A record left in FIN_WAIT1 whose timewait socket (200) a poll found without a handoff,
    // and one in LAST_ACK neither poll listed.
    let left_behind = |cookie, labels, state: TcpState| SocketRecord {
        entered_ns: START + SECOND / 2,
        labels,
        cookie,
        state: state as u8,
        net_inode: NET,
        ..SocketRecord::default()
    };
    let mut sweep = census.record_sweep(START + 5 * SECOND);
    for record in [
        left_behind(200, labels(443, family::IPV4, role::SERVER), FinWait1),
        left_behind(301, SERVER, LastAck),
    ] {
        assert!(sweep.is_stale(&record), "{record:?}");
        sweep.release_stale(record);
    }
    sweep.release_vanished_baseline();
    drop(sweep);
    census
}

/// Hands fixed families to a registry, as the daemon's collector does at a scrape.
struct Fixed(Vec<MetricFamily>);

impl Collector for Fixed {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.clone()
    }
}

/// `/metrics` as the HTTP endpoint writes it (the registry sorts families and series).
fn metrics(view: View) -> String {
    metrics_with(view, None)
}

fn metrics_with(view: View, workloads: Option<&WorkloadTable>) -> String {
    metrics_of(view, workloads, Collectors::ALL)
}

/// As [`metrics_with`], with only `collectors` on: the scrape then has what the collector
/// gives it (no poll or netstat figures of a part turned off).
fn metrics_of(view: View, workloads: Option<&WorkloadTable>, collectors: Collectors) -> String {
    let snapshot = snapshot();
    let census = census();
    let ages = ages();
    let config = CollectorConfig {
        bucket_bounds: BOUNDS.to_vec(),
        view,
        poll_min_interval: Duration::from_secs(1),
        socket_slots: 1 << 16,
        service_ports: SERVICE_PORTS.to_vec(),
        collectors,
    };
    let netstat = collectors.netstat;
    let scrape = Scrape {
        snapshot: &snapshot,
        census: Some(&census),
        netstat: Some(ListenCounters {
            overflows: 13,
            drops: 17,
            timewait_overflows: 19,
        })
        .filter(|_| netstat),
        port_range: Some((32768, 60999)).filter(|_| netstat),
        // The last poll failed in a namespace it entered (the poll errors below).
        parts: Parts {
            bpf: PartRun {
                took: Duration::from_micros(1250),
                succeeded: true,
            },
            sockdiag: Some(PartRun {
                took: Duration::from_millis(75),
                succeeded: false,
            })
            .filter(|_| collectors.sockdiag),
            netstat: Some(PartRun {
                took: Duration::from_micros(60),
                succeeded: true,
            })
            .filter(|_| netstat),
        },
        poll_errors: 3,
        workloads,
        ages: Some(&ages),
    };
    let registry = Registry::new();
    registry
        .register(Box::new(Fixed(exposition(&scrape, &config))))
        .unwrap();
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut body)
        .unwrap();
    mask_build(&String::from_utf8(body).unwrap())
}

/// The exposition with the build's revision, compiler and target replaced by placeholders:
/// they change with every commit and machine, the fixture must not.
fn mask_build(text: &str) -> String {
    use tcpstate_daemon::version::{REVISION, RUSTC_VERSION, TARGET};
    text.replace(
        &format!("revision=\"{REVISION}\",rustc_version=\"{RUSTC_VERSION}\",target=\"{TARGET}\""),
        "revision=\"REVISION\",rustc_version=\"RUSTC_VERSION\",target=\"TARGET\"",
    )
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn assert_matches_fixture(text: &str, name: &str) {
    let path = fixture(name);
    if std::env::var_os("TCPSTATE_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    if text != expected {
        let first_difference = text
            .lines()
            .zip(expected.lines())
            .position(|(got, want)| got != want)
            .unwrap_or_else(|| text.lines().count().min(expected.lines().count()));
        panic!(
            "the exposition differs from {} from line {}:\n  got:  {:?}\n  want: {:?}\n(a \
             deliberate change: rerun with TCPSTATE_BLESS=1 and review the fixture's diff)",
            path.display(),
            first_difference + 1,
            text.lines().nth(first_difference),
            expected.lines().nth(first_difference),
        );
    }
}

/// `promtool check metrics` (its linter: names, units, types, help); skipped, said, without it.
fn assert_promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "note: promtool is not installed (Debian package prometheus; `cargo xtask setup` \
                 installs it): the fixture was compared but not linted"
            );
            return;
        }
        Err(error) => panic!("cannot start promtool: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics rejects the exposition:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn golden_exposition_logical_view() {
    let text = metrics(View::Logical);
    assert_matches_fixture(&text, "exposition.prom");
    assert_promtool_accepts(&text);
}

#[test]
fn golden_exposition_raw_view() {
    let text = metrics(View::Raw);
    assert_matches_fixture(&text, "exposition-raw.prom");
    assert_promtool_accepts(&text);
}

/// With `--workloads`: every socket figure also carries its workload's `namespace`, `pod` and
/// `container`, and the self-metrics say how many workloads are named.
#[test]
fn golden_exposition_with_workloads() {
    let web = Workload {
        namespace: "shop".into(),
        pod: "web-7d4b9".into(),
        container: "nginx".into(),
    };
    let text = metrics_with(View::Logical, Some(&WorkloadTable::of(&[(0, web)])));
    assert_matches_fixture(&text, "exposition-workloads.prom");
    assert_promtool_accepts(&text);
}

/// The names of the families of an exposition.
fn family_names(text: &str) -> std::collections::BTreeSet<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect()
}

/// A part turned off (`--no-collector.NAME`) takes away its families, whole (no zeros), and its
/// samples of the families it shares; every other family stays.
#[test]
fn each_part_turned_off_takes_away_exactly_its_figures() {
    let all = metrics(View::Logical);
    let on = Collectors::ALL;
    let cases: [(Collectors, &[&str], &[&str]); 4] = [
        (
            Collectors {
                sockdiag: false,
                ..on
            },
            &[
                "tcpstate_listen_queue_length",
                "tcpstate_listen_queue_limit",
                "tcpstate_network_namespaces",
                "tcpstate_poll_duration_seconds",
                "tcpstate_poll_interval_seconds",
            ],
            &[
                r#"tcpstate_sockets{state="TIME_WAIT""#,
                r#"tcpstate_sockets{state="NEW_SYN_RECV""#,
                r#"tcpstate_transitions_total{from="TIME_WAIT""#,
                r#"{reason="close_undelivered"}"#,
                r#"{collector="sockdiag"}"#,
            ],
        ),
        (
            Collectors {
                netstat: false,
                ..on
            },
            &[
                "tcpstate_ephemeral_ports",
                "tcpstate_listen_drops_total",
                "tcpstate_listen_overflows_total",
                "tcpstate_timewait_overflows_total",
            ],
            &[r#"{collector="netstat"}"#],
        ),
        (
            Collectors {
                resets: false,
                ..on
            },
            &[
                "tcpstate_resets_received_total",
                "tcpstate_resets_sent_total",
            ],
            &[],
        ),
        (
            Collectors {
                synack_retransmits: false,
                ..on
            },
            &["tcpstate_synack_retransmits_total"],
            &[],
        ),
    ];
    for (collectors, families, samples) in cases {
        let text = metrics_of(View::Logical, None, collectors);
        let (before, after) = (family_names(&all), family_names(&text));
        assert!(after.is_subset(&before), "{collectors:?}");
        let gone: Vec<&str> = before.difference(&after).copied().collect();
        assert_eq!(gone, families, "{collectors:?}");
        for sample in samples {
            assert!(
                all.contains(sample) && !text.contains(sample),
                "{collectors:?}: {sample}"
            );
        }
        assert_promtool_accepts(&text);
    }
    // `events_map_full` counts the events of both event programs: it goes with the last.
    let reason = r#"{reason="events_map_full"}"#;
    let one_left = Collectors {
        resets: false,
        ..on
    };
    assert!(metrics_of(View::Logical, None, one_left).contains(reason));
    let none_left = Collectors {
        synack_retransmits: false,
        ..one_left
    };
    assert!(!metrics_of(View::Logical, None, none_left).contains(reason));
}
