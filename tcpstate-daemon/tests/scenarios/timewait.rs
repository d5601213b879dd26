//! TIME_WAIT, which no tracepoint reports: counted like ss, ended early on reuse or after 60 s,
//! followed on IPv6 too, and reached once by each of thousands of orphaned clients whose records
//! hand off past the slot table.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use socket2::SockRef;

use crate::checks::{
    TIMER_SLACK, assert_durations, assert_mean_duration, client_first_closes, edge, relevant,
    shown, ss_count, until_metrics, until_ss,
};
use crate::support::{
    Exposition, Netns, Transitions, eventually, expect, handshakes, read_to_eof,
    rerun_once_after_unrecorded_events, sockets, transitions, until_transitions,
};
use crate::traffic::{accept, at, close_clients_first, connect_from, listen};
use crate::{FAST_POLL, WAIT, start};

// ---- 7. TIME_WAIT -------------------------------------------------------------------------

/// The natural end of TIME_WAIT takes 60 s (TCP_TIMEWAIT_LEN, not tunable): this one test pays
/// it, because that end is read from the kernel's timer (to the millisecond), a different path
/// from the early ends (noticed by the next poll) that every other test can use instead. The
/// early end here is a new connect() reusing a client port (SO_REUSEADDR and a timestamped
/// timewait socket: the kernel kills the timewait socket and hands over its 4-tuple), at a
/// moment the test chooses.
#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs (takes 65 s)"]
fn time_wait_is_counted_like_ss_and_ends_early_on_reuse_or_after_60s() {
    rerun_once_after_unrecorded_events(|| {
        const N: usize = 6;
        const REUSED: usize = 2;
        let port = 25008;
        let client_ports: Vec<u16> = (25080..).take(N).collect();
        let netns = Netns::new(port);
        let daemon = start(
            &netns,
            &[port],
            &[0.1, 0.9, 59.9, 62.5, 120.0],
            &[FAST_POLL],
        );
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let clients = connect_from(&netns, &client_ports, port);
        let servers: Vec<TcpStream> = (0..N).map(|_| accept(&listener)).collect();
        let (entering, entered) = close_clients_first(&netns, port, clients, servers);

        let mut want = expect(&handshakes(N as u64));
        want.extend(expect(&client_first_closes(N as u64)));
        until_transitions(&daemon, &before, port, &want, WAIT);
        let time_wait_like_ss = |expected: usize| {
            let mut listed = netns.sockets();
            let metrics = until_metrics(
                &daemon,
                &netns,
                WAIT,
                "TIME_WAIT as ss lists it",
                |metrics| {
                    listed = netns.sockets();
                    sockets(metrics, "TIME_WAIT", port, "client")
                        == ss_count(&listed, "TIME-WAIT", port) as f64
                        && ss_count(&listed, "TIME-WAIT", port) == expected
                },
            );
            assert_eq!(sockets(&metrics, "TIME_WAIT", port, ""), expected as f64);
        };
        time_wait_like_ss(N);

        // 1 s into TIME_WAIT, new connections from two of the client ports end those timewait
        // sockets; they are then aborted (RST: no further TIME_WAIT).
        thread::sleep(Duration::from_secs(1).saturating_sub(entering.elapsed()));
        let reusing_from = Instant::now();
        let reusing = connect_from(&netns, &client_ports[..REUSED], port);
        for stream in &reusing {
            SockRef::from(stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        let accepted: Vec<TcpStream> = (0..REUSED).map(|_| accept(&listener)).collect();
        drop(reusing);
        drop(accepted);
        drop(listener);
        want.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "CLOSE", "SYN_SENT", (N + REUSED) as u64),
            ("client", "SYN_SENT", "ESTABLISHED", (N + REUSED) as u64),
            ("client", "ESTABLISHED", "CLOSE", REUSED as u64),
            ("server", "LISTEN", "SYN_RECV", (N + REUSED) as u64),
            ("server", "SYN_RECV", "ESTABLISHED", (N + REUSED) as u64),
            ("server", "ESTABLISHED", "CLOSE", REUSED as u64),
            ("client", "TIME_WAIT", "CLOSE", REUSED as u64),
        ]));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        let noticed = Instant::now();
        time_wait_like_ss(N - REUSED);
        // TIME_WAIT began between `entering` and `entered` (the servers' close) and ended at the
        // reusing connect(), from `reusing_from` on. The daemon knows that end to within one poll:
        // by the end of the scrape that showed it (`noticed`).
        let early = edge("TIME_WAIT", "CLOSE", "client", "25008");
        assert_durations(&after, &before, &early, REUSED as u64, (0.9, 59.9));
        assert_mean_duration(
            &after,
            &before,
            &early,
            REUSED as u64,
            (
                (reusing_from - entered).as_secs_f64() - TIMER_SLACK,
                (noticed - entering).as_secs_f64() + TIMER_SLACK,
            ),
        );

        // The others expire 60 s after they began (the timer wheel may fire up to 2 s late at
        // HZ=250). Scrape slowly meanwhile: the polls only need to see them go.
        let expired = |metrics: &Exposition| {
            transitions(metrics, &before, port)
                .get(&("client".into(), "TIME_WAIT".into(), "CLOSE".into()))
                .copied()
                == Some(N as u64)
        };
        let deadline = entering + Duration::from_secs(75);
        let mut last = daemon.scrape();
        while !expired(&last) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(250));
            last = daemon.scrape();
        }
        assert!(
            expired(&last),
            "every TIME_WAIT ended within 75 s; ss -tan shows\n{}{}",
            shown(&netns.sockets()),
            relevant(&last)
        );
        assert_eq!(
            transitions(&last, &before, port),
            want.into_iter()
                .map(|(key, count)| {
                    let natural = if key == ("client".into(), "TIME_WAIT".into(), "CLOSE".into()) {
                        (N - REUSED) as u64
                    } else {
                        0
                    };
                    (key, count + natural)
                })
                .collect::<Transitions>()
        );
        let bucket = |le: &str| {
            let mut labels = early.clone();
            labels.push(("le", le));
            last.delta(&before, "tcpstate_state_duration_seconds_bucket", &labels)
        };
        assert_eq!(
            [bucket("0.9"), bucket("59.9"), bucket("62.5")],
            [0.0, REUSED as f64, N as f64],
            "TIME_WAIT durations: {REUSED} ended early (after 0.9 s), the others in (59.9, 62.5] s"
        );
        assert_eq!(sockets(&last, "TIME_WAIT", port, ""), 0.0);
    });
}

// ---- IPv6 ---------------------------------------------------------------------------------

/// The logical view on IPv6: an orphaned FIN_WAIT2 and the TIME_WAIT after it, from timewait
/// sockets of the other family, counted as ss lists them.
#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn ipv6_timewait_sockets_are_followed_too() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25023;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[], &[FAST_POLL]);
        let before = daemon.scrape();
        let address = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let listener = netns
            .run(|| TcpListener::bind(address))
            .expect("bind [::1]");
        let client = netns
            .run(|| TcpStream::connect(address))
            .expect("connect [::1]");
        let server = accept(&listener);
        drop(listener);
        drop(client);
        until_ss(&netns, WAIT, "the client in FIN_WAIT2", |listed| {
            ss_count(listed, "FIN-WAIT-2", port) == 1
        });
        let v6 = |state: &str, role: &str, metrics: &Exposition| {
            metrics.sum(
                "tcpstate_sockets",
                &[
                    ("state", state),
                    ("role", role),
                    ("port", "25023"),
                    ("family", "ipv6"),
                ],
            )
        };
        until_metrics(&daemon, &netns, WAIT, "the orphan's FIN_WAIT2", |metrics| {
            v6("FIN_WAIT2", "client", metrics) == 1.0 && v6("CLOSE_WAIT", "server", metrics) == 1.0
        });
        drop(server);
        until_ss(&netns, WAIT, "the client in TIME_WAIT", |listed| {
            ss_count(listed, "TIME-WAIT", port) == 1
        });
        let mut want = expect(&handshakes(1));
        want.extend(expect(&[("listener", "LISTEN", "CLOSE", 1)]));
        want.extend(expect(&client_first_closes(1)));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        assert_eq!(
            after.delta(
                &before,
                "tcpstate_transitions_total",
                &[("port", "25023"), ("family", "ipv4")]
            ),
            0.0,
            "nothing counted as IPv4"
        );
        until_metrics(&daemon, &netns, WAIT, "the TIME_WAIT", |metrics| {
            v6("TIME_WAIT", "client", metrics) == 1.0 && v6("FIN_WAIT2", "client", metrics) == 0.0
        });
    });
}

/// Many connections held at once past a small slot table, then closed by the clients (close(),
/// so each client's FIN_WAIT2 goes on in a timewait socket): most records live in socket
/// storage and hand off through the handoff map, the others through their slots, which the
/// scrapes' own sockets may claim before a sweep takes them. Every logical transition counts
/// once (issue 36, defect 4: one `FIN_WAIT2 -> TIME_WAIT` was lost in every run).
#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn orphaned_clients_past_the_slot_table_each_reach_time_wait_once() {
    rerun_once_after_unrecorded_events(|| {
        const CONNECTIONS: u64 = 5000;
        let port = 25025;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[], &["--sockets.slots=64"]);
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let accepting = thread::spawn(move || {
            let servers: Vec<TcpStream> = (0..CONNECTIONS)
                .map(|_| listener.accept().unwrap().0)
                .collect();
            (listener, servers)
        });
        let clients: Vec<TcpStream> = netns.run(|| {
            (0..CONNECTIONS)
                .map(|_| TcpStream::connect(at(port)).expect("connect"))
                .collect()
        });
        let (listener, mut servers) = accepting.join().unwrap();
        drop(clients);
        for server in &mut servers {
            read_to_eof(server, WAIT);
        }
        drop(servers);
        drop(listener);
        // Each client leaves FIN_WAIT1 once, for FIN_WAIT2 or (the server's FIN carrying the
        // ACK of the client's) straight for TIME_WAIT; each reaches TIME_WAIT once.
        let flows = |m: &Exposition| {
            let client = |from: &str, to: &str| {
                m.delta(
                    &before,
                    "tcpstate_transitions_total",
                    &[
                        ("port", "25025"),
                        ("role", "client"),
                        ("from", from),
                        ("to", to),
                    ],
                ) as u64
            };
            [
                client("ESTABLISHED", "FIN_WAIT1"),
                client("FIN_WAIT1", "FIN_WAIT2") + client("FIN_WAIT1", "TIME_WAIT"),
                client("FIN_WAIT2", "TIME_WAIT") + client("FIN_WAIT1", "TIME_WAIT"),
            ]
        };
        let mut after = daemon.scrape();
        eventually(Duration::from_secs(20), || {
            after = daemon.scrape();
            flows(&after) == [CONNECTIONS; 3]
        });
        let failures = crate::support::recording_failures(&after, &before);
        let all = transitions(&after, &before, port);
        // Under load this kernel now and then runs no program for a closing socket's
        // FIN_WAIT1 -> FIN_WAIT2 -> CLOSE (docs/skipped-bpf-events.md). A record in socket
        // storage goes with its socket, so no failure counts it, but its gauge stays in
        // FIN_WAIT1 while ss lists no such socket: that is the kernel's skip, not this defect.
        let stuck_in_fin_wait1 = (sockets(&after, "FIN_WAIT1", port, "client") as usize)
            .saturating_sub(ss_count(&netns.sockets(), "FIN-WAIT-1", port));
        if flows(&after) != [CONNECTIONS; 3] && (!failures.is_empty() || stuck_in_fin_wait1 > 0) {
            panic!(
                "{} ({failures:?}, {stuck_in_fin_wait1} records left in FIN_WAIT1): clients \
                 leaving ESTABLISHED, FIN_WAIT1, entering TIME_WAIT: {:?}; all: {all:?}",
                crate::support::UNRECORDED_EVENTS,
                flows(&after)
            );
        }
        assert_eq!(
            flows(&after),
            [CONNECTIONS; 3],
            "clients leaving ESTABLISHED, leaving FIN_WAIT1, entering TIME_WAIT; all: {all:?}"
        );
        assert!(
            after.delta(
                &before,
                "tcpstate_socket_records_in_socket_storage_total",
                &[]
            ) > CONNECTIONS as f64,
            "most records live in socket storage"
        );
    });
}
