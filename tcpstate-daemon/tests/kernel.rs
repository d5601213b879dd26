//! The real program in the real kernel: each test starts `tcpstated`, makes real connections on
//! loopback to a port of its own (in the daemon's port set), and checks the exact changes of the
//! real `/metrics`. They need root: `cargo xtask test` runs them (`--ignored`, one at a time).

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use support::{
    Daemon, Metrics, Transitions, eventually, expect, rerun_once_after_unrecorded_events,
    until_transitions,
};

const WAIT: Duration = Duration::from_secs(5);

/// `(role, from, to) -> 1` for each listed transition.
fn expected(items: &[(&str, &str, &str)]) -> Transitions {
    expect(
        &items
            .iter()
            .map(|&(role, from, to)| (role, from, to, 1))
            .collect::<Vec<_>>(),
    )
}

fn sockets(metrics: &Metrics, port: u16, state: &str, role: &str) -> f64 {
    metrics.sum(
        "tcpstate_sockets",
        &[
            ("state", state),
            ("role", role),
            ("port", &port.to_string()),
        ],
    )
}

/// Timewait sockets of client connections to `port`, as `ss` lists them.
fn time_wait_in_ss(port: u16) -> f64 {
    let filter = format!("( dport = :{port} )");
    let output = Command::new("ss")
        .args(["-Htan", "state", "time-wait", &filter])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&output.stdout).lines().count() as f64
}

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

fn start(port: u16) -> Daemon {
    let args = port_args(port);
    Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Reads until the peer's FIN (read returns 0).
fn read_to_eof(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).expect("peer closes");
}

const CLIENT_CLOSES: [(&str, &str, &str); 12] = [
    ("listener", "CLOSE", "LISTEN"),
    ("client", "CLOSE", "SYN_SENT"),
    ("client", "SYN_SENT", "ESTABLISHED"),
    ("server", "LISTEN", "SYN_RECV"),
    ("server", "SYN_RECV", "ESTABLISHED"),
    ("client", "ESTABLISHED", "FIN_WAIT1"),
    ("server", "ESTABLISHED", "CLOSE_WAIT"),
    ("client", "FIN_WAIT1", "FIN_WAIT2"),
    ("server", "CLOSE_WAIT", "LAST_ACK"),
    // The peer's FIN: the connection moves to a timewait socket (logical view).
    ("client", "FIN_WAIT2", "TIME_WAIT"),
    ("server", "LAST_ACK", "CLOSE"),
    ("listener", "LISTEN", "CLOSE"),
];

/// Client shuts down first, waits for the server's FIN; the server holds CLOSE_WAIT for `hold`.
fn client_closes_first(listen: SocketAddr, hold: Duration) {
    let listener = TcpListener::bind(listen).expect("bind test port");
    let mut client = TcpStream::connect(listen).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut server); // server now in CLOSE_WAIT, client in FIN_WAIT2
    thread::sleep(hold);
    drop(server); // CLOSE_WAIT -> LAST_ACK; the client's FIN_WAIT2 ends
    read_to_eof(&mut client);
    drop(client);
    drop(listener);
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn connection_closed_by_the_client() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24001;
        let daemon = start(port);
        let before = daemon.scrape();
        client_closes_first(([127, 0, 0, 1], port).into(), Duration::ZERO);
        let after = until_transitions(&daemon, &before, port, &expected(&CLIENT_CLOSES), WAIT);
        assert_eq!(
            after.sum(
                "tcpstate_transitions_total",
                &[("port", "24001"), ("family", "ipv4")]
            ),
            12.0
        );
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn raw_view_shows_the_kernels_own_sequence() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24009;
        let daemon = Daemon::start(&["--port", "24009", "--transitions.view=raw"]);
        let before = daemon.scrape();
        client_closes_first(([127, 0, 0, 1], port).into(), Duration::ZERO);
        let raw: Vec<_> = CLIENT_CLOSES
            .iter()
            .map(|&(role, from, to)| {
                if to == "TIME_WAIT" {
                    (role, from, "CLOSE")
                } else {
                    (role, from, to)
                }
            })
            .collect();
        until_transitions(&daemon, &before, port, &expected(&raw), WAIT);
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn connection_closed_by_the_server() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24002;
        let daemon = start(port);
        let before = daemon.scrape();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(listen).unwrap();
        let mut client = TcpStream::connect(listen).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut client); // client in CLOSE_WAIT
        drop(client);
        read_to_eof(&mut server);
        drop(server);
        drop(listener);
        let want = expected(&[
            ("listener", "CLOSE", "LISTEN"),
            ("client", "CLOSE", "SYN_SENT"),
            ("client", "SYN_SENT", "ESTABLISHED"),
            ("server", "LISTEN", "SYN_RECV"),
            ("server", "SYN_RECV", "ESTABLISHED"),
            ("server", "ESTABLISHED", "FIN_WAIT1"),
            ("client", "ESTABLISHED", "CLOSE_WAIT"),
            ("server", "FIN_WAIT1", "FIN_WAIT2"),
            ("client", "CLOSE_WAIT", "LAST_ACK"),
            ("server", "FIN_WAIT2", "TIME_WAIT"),
            ("client", "LAST_ACK", "CLOSE"),
            ("listener", "LISTEN", "CLOSE"),
        ]);
        until_transitions(&daemon, &before, port, &want, WAIT);
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn abort_with_linger_zero_resets_both_sides() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24003;
        let daemon = start(port);
        let before = daemon.scrape();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(listen).unwrap();
        let client = TcpStream::connect(listen).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client); // RST
        server.set_read_timeout(Some(WAIT)).unwrap();
        let reset = server.read(&mut [0u8; 1]);
        assert!(
            reset.is_err() || reset.is_ok_and(|n| n == 0),
            "server sees the reset"
        );
        drop(server);
        drop(listener);
        let want = expected(&[
            ("listener", "CLOSE", "LISTEN"),
            ("client", "CLOSE", "SYN_SENT"),
            ("client", "SYN_SENT", "ESTABLISHED"),
            ("server", "LISTEN", "SYN_RECV"),
            ("server", "SYN_RECV", "ESTABLISHED"),
            ("client", "ESTABLISHED", "CLOSE"),
            ("server", "ESTABLISHED", "CLOSE"),
            ("listener", "LISTEN", "CLOSE"),
        ]);
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        let resets = |name, role| {
            after.delta(
                &before,
                name,
                &[("state", "ESTABLISHED"), ("role", role), ("port", "24003")],
            )
        };
        assert_eq!(resets("tcpstate_resets_sent_total", "client"), 1.0);
        assert_eq!(resets("tcpstate_resets_received_total", "server"), 1.0);
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn refused_connect() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24004;
        let daemon = start(port);
        let before = daemon.scrape();
        let refused = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        let want = expected(&[
            ("client", "CLOSE", "SYN_SENT"),
            ("client", "SYN_SENT", "CLOSE"),
        ]);
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        let refused_attempt = after.delta(
            &before,
            "tcpstate_state_duration_seconds_count",
            &[("state", "SYN_SENT"), ("next", "CLOSE"), ("port", "24004")],
        );
        assert_eq!(
            refused_attempt, 1.0,
            "the SYN_SENT time of the refused connect is observed"
        );
        let failures = |reason| {
            after.delta(
                &before,
                "tcpstate_connect_failures_total",
                &[("reason", reason), ("port", "24004")],
            )
        };
        assert_eq!((failures("refused"), failures("timeout")), (1.0, 0.0));
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn ipv6_on_loopback() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24005;
        let daemon = start(port);
        let before = daemon.scrape();
        client_closes_first(
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            Duration::ZERO,
        );
        let after = until_transitions(&daemon, &before, port, &expected(&CLIENT_CLOSES), WAIT);
        assert_eq!(
            after.delta(
                &before,
                "tcpstate_transitions_total",
                &[("port", "24005"), ("family", "ipv6")]
            ),
            12.0
        );
        assert_eq!(
            after.delta(
                &before,
                "tcpstate_transitions_total",
                &[("port", "24005"), ("family", "ipv4")]
            ),
            0.0
        );
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn close_wait_held_300ms_is_measured_in_the_right_bucket() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24006;
        let daemon = start(port);
        let before = daemon.scrape();
        client_closes_first(([127, 0, 0, 1], port).into(), Duration::from_millis(300));
        let after = until_transitions(&daemon, &before, port, &expected(&CLIENT_CLOSES), WAIT);
        let labels = |le: &'static str| {
            [
                ("state", "CLOSE_WAIT"),
                ("next", "LAST_ACK"),
                ("role", "server"),
                ("port", "24006"),
                ("le", le),
            ]
        };
        let bucket = |le| {
            after.delta(
                &before,
                "tcpstate_state_duration_seconds_bucket",
                &labels(le),
            )
        };
        assert_eq!(bucket("0.1"), 0.0, "300 ms is above the 0.1 s bucket");
        assert_eq!(bucket("0.5"), 1.0, "and within the 0.5 s bucket");
        assert_eq!(bucket("+Inf"), 1.0);
        let sum = after.delta(
            &before,
            "tcpstate_state_duration_seconds_sum",
            &labels("")[..4],
        );
        assert!(
            (0.3..0.4).contains(&sum),
            "CLOSE_WAIT lasted {sum} s, expected 0.3-0.4 s"
        );
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn gauges_follow_open_connections_and_return_to_zero() {
    let port = 24007;
    let daemon = start(port);
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = TcpListener::bind(listen).unwrap();
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    let servers: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
    let open = |m: &Metrics| {
        (
            sockets(m, port, "ESTABLISHED", "client"),
            sockets(m, port, "ESTABLISHED", "server"),
            sockets(m, port, "LISTEN", "listener"),
        )
    };
    let mut metrics = daemon.scrape();
    eventually(WAIT, || {
        metrics = daemon.scrape();
        open(&metrics) == (3.0, 3.0, 1.0)
    });
    assert_eq!(open(&metrics), (3.0, 3.0, 1.0));
    assert!(metrics.sum("tcpstate_tracked_sockets", &[]) >= 7.0);

    for client in &clients {
        client.shutdown(Shutdown::Write).unwrap();
    }
    // The server may delay its ACK of the FINs (delayed ACK), so FIN_WAIT2 can come later.
    eventually(WAIT, || {
        metrics = daemon.scrape();
        sockets(&metrics, port, "CLOSE_WAIT", "server") == 3.0
            && sockets(&metrics, port, "FIN_WAIT2", "client") == 3.0
    });
    assert_eq!(
        sockets(&metrics, port, "CLOSE_WAIT", "server"),
        3.0,
        "servers have not closed"
    );
    assert_eq!(sockets(&metrics, port, "FIN_WAIT2", "client"), 3.0);

    drop(servers);
    drop(clients);
    drop(listener);
    // Everything closed; the clients closed first, so their connections wait in TIME_WAIT.
    let all_zero = |m: &Metrics| {
        m.series()
            .filter(|(s, _)| s.starts_with("tcpstate_sockets{") && s.contains("port=\"24007\""))
            .filter(|(s, _)| !s.contains("state=\"TIME_WAIT\""))
            .all(|(_, v)| *v == 0.0)
            // As many as `ss` lists: these 3, those of an earlier run still there (they last
            // 60 s), or none if the host's timewait table (tcp_max_tw_buckets) is full.
            && sockets(m, port, "TIME_WAIT", "client") == time_wait_in_ss(port)
    };
    eventually(WAIT, || {
        metrics = daemon.scrape();
        all_zero(&metrics)
    });
    let gauges: Vec<_> = metrics
        .series()
        .filter(|(s, _)| s.starts_with("tcpstate_sockets{") && s.contains("port=\"24007\""))
        .collect();
    assert!(
        all_zero(&metrics),
        "every gauge of the port back to 0 but TIME_WAIT (as in ss): {gauges:?}"
    );
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn sockets_beyond_the_slot_table_are_tracked_in_socket_storage() {
    rerun_once_after_unrecorded_events(|| {
        // The smallest table (one window of 8 slots) and 20 connections held open at once: most
        // of their 41 sockets find no free slot and go to socket-local storage. Counts, durations
        // and gauges stay exact either way.
        const CONNECTIONS: u64 = 20;
        let port = 24010;
        let args = ["--port", "24010", "--sockets.slots", "8"];
        let daemon = Daemon::start(&args);
        let before = daemon.scrape();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(listen).unwrap();
        let mut clients: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|_| TcpStream::connect(listen).unwrap())
            .collect();
        let mut servers: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|_| listener.accept().unwrap().0)
            .collect();
        for client in &clients {
            client.shutdown(Shutdown::Write).unwrap();
        }
        for server in &mut servers {
            read_to_eof(server);
        }
        let half_closed = |m: &Metrics| {
            (
                sockets(m, port, "FIN_WAIT2", "client"),
                sockets(m, port, "CLOSE_WAIT", "server"),
            )
        };
        let mut metrics = daemon.scrape();
        eventually(WAIT, || {
            metrics = daemon.scrape();
            half_closed(&metrics) == (CONNECTIONS as f64, CONNECTIONS as f64)
        });
        assert_eq!(
            half_closed(&metrics),
            (CONNECTIONS as f64, CONNECTIONS as f64)
        );
        let in_storage = metrics.delta(
            &before,
            "tcpstate_socket_records_in_socket_storage_total",
            &[],
        );
        assert!(
            in_storage >= (2 * CONNECTIONS + 1 - 8) as f64,
            "{in_storage} sockets in socket storage, with 8 slots for 41"
        );

        drop(servers);
        for client in &mut clients {
            read_to_eof(client);
        }
        drop(clients);
        drop(listener);
        // One listener for all the connections.
        let want = expect(&CLIENT_CLOSES.map(|(role, from, to)| {
            (
                role,
                from,
                to,
                if role == "listener" { 1 } else { CONNECTIONS },
            )
        }));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        let labels = [("port", "24010"), ("role", "server")];
        assert_eq!(
            after.delta(&before, "tcpstate_state_duration_seconds_count", &labels),
            (4 * CONNECTIONS) as f64,
            "every server transition after the first has its duration"
        );
        assert_eq!(
            after.sum("tcpstate_recording_failures_total", &[]),
            0.0,
            "recording failures"
        );
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn transitions_past_the_fast_slots_are_counted_exactly_in_the_hash_map() {
    rerun_once_after_unrecorded_events(|| {
        // Eight pairs of fast slots per CPU for the twelve (labels, transition) keys of these
        // connections and about as many of the scrapes' own connections (port `other`), which
        // come first: on each CPU some keys of the port get a slot and the others are counted in
        // the TRANSITIONS hash map, and a key may be in a slot on one CPU and in the map on
        // another. The daemon's sums of counts and durations must be exact either way (reading
        // either the slots or the map alone fails this test; with one pair, the scrapes' keys
        // would take every slot).
        const CONNECTIONS: u64 = 10;
        let port = 24012;
        let daemon = Daemon::start(&["--port", "24012", "--transitions.slots", "16"]);
        let before = daemon.scrape();
        for _ in 0..CONNECTIONS {
            client_closes_first(([127, 0, 0, 1], port).into(), Duration::ZERO);
        }
        let want = expect(&CLIENT_CLOSES.map(|(role, from, to)| (role, from, to, CONNECTIONS)));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        let server = [("port", "24012"), ("role", "server")];
        assert_eq!(
            after.delta(&before, "tcpstate_state_duration_seconds_count", &server),
            (4 * CONNECTIONS) as f64,
            "every server transition after the first has its duration"
        );
        let in_map = after
            .value(r#"tcpstate_map_entries{map="TRANSITIONS"}"#)
            .unwrap_or_default();
        assert!(in_map >= 10.0, "{in_map} keys in the hash map");
        assert_eq!(
            after.sum("tcpstate_recording_failures_total", &[]),
            0.0,
            "recording failures"
        );
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn records_whose_last_events_never_came_are_released_and_counted() {
    // At saturation this kernel sometimes runs no BPF program at all for a socket's
    // FIN_WAIT1 -> FIN_WAIT2 and FIN_WAIT2 -> CLOSE (docs/benchmarks.md): its record stays in
    // FIN_WAIT1 after the socket is gone. No test can make the kernel skip them, so this one
    // makes two such records, before any scrape, in the daemon's real slot table:
    // - once the client's connection is handed to its timewait socket, it turns the handoff
    //   left in the slot back into a live record in FIN_WAIT1 (labelled a server's, to tell
    //   the labels apart): the timewait socket, which inherited the cookie, proves it stale;
    // - a LAST_ACK record of a socket that never existed, in a free slot: no poll lists it.
    // The daemon must release both slots, count them, take them out of their states' gauges
    // (to -1 here, since the kernel did count the first socket's exits and never saw the
    // second), and give the timewait socket the first record's labels.
    use std::os::unix::fs::MetadataExt as _;
    use tcpstate_common::{HANDOFF_OWNER, Labels, SocketRecord, role, slot_owner};
    let port = 24011;
    let args = ["--port", "24011", "--sockets.slots", "64"];
    let daemon = Daemon::start(&args);
    let before = daemon.scrape();
    client_closes_first(([127, 0, 0, 1], port).into(), Duration::ZERO);
    let mut slots = daemon.socket_slots();
    let client_handoff = |record: &SocketRecord| {
        slot_owner::handoff_cookie(record.cookie).is_some()
            && record.labels.port == port
            && record.labels.role == role::CLIENT
    };
    let mut found = None;
    eventually(WAIT, || {
        found = (0..slots.len()).find_map(|index| {
            let record = slots.get(&index, 0).ok()?;
            client_handoff(&record).then_some((index, record))
        });
        found.is_some()
    });
    let (index, handoff) = found.expect("the client's handoff is left in its slot");
    let net_inode = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_eq!(
        u64::from(handoff.net_inode),
        net_inode,
        "the kernel program reads the socket's network namespace"
    );
    let server = Labels {
        role: role::SERVER,
        ..handoff.labels
    };
    let left_behind = SocketRecord {
        cookie: handoff.cookie & !HANDOFF_OWNER,
        state: 4, // FIN_WAIT1
        labels: server,
        ..handoff
    };
    slots.set(index, left_behind, 0).unwrap();
    let free = (0..slots.len())
        .find(|free| slots.get(free, 0).is_ok_and(|record| record.cookie == 0))
        .expect("a free slot");
    let never_existed = SocketRecord {
        cookie: 1 << 62,
        state: 9, // LAST_ACK
        entered_ns: 1,
        ..left_behind
    };
    slots.set(free, never_existed, 0).unwrap();

    let undelivered = |m: &Metrics| {
        m.sum(
            "tcpstate_recording_failures_total",
            &[("reason", "close_undelivered")],
        )
    };
    let mut after = daemon.scrape();
    eventually(WAIT, || {
        after = daemon.scrape();
        undelivered(&after) >= 2.0
    });
    assert_eq!(undelivered(&after), 2.0, "two sockets' CLOSE never came");
    // Released (the scrapes' own sockets may have claimed the slots since).
    for (slot, record) in [(index, left_behind), (free, never_existed)] {
        assert_ne!(
            slots.get(&slot, 0).unwrap().cookie,
            record.cookie,
            "slot {slot} still holds its stale record"
        );
    }
    for state in ["FIN_WAIT1", "LAST_ACK"] {
        assert_eq!(
            sockets(&after, port, state, "server") - sockets(&before, port, state, "server"),
            -1.0,
            "{state}"
        );
    }
    // Without its record, a timewait socket whose port has no listener is a client's.
    eventually(WAIT, || {
        after = daemon.scrape();
        sockets(&after, port, "TIME_WAIT", "server") == 1.0
    });
    assert_eq!(
        sockets(&after, port, "TIME_WAIT", "server"),
        1.0,
        "the timewait socket has the record's labels"
    );
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn metrics_pass_promtool_and_report_no_failures() {
    let port = 24008;
    let daemon = start(port);
    client_closes_first(([127, 0, 0, 1], port).into(), Duration::ZERO);
    let body = daemon.scrape_text();
    for needle in [
        "tcpstate_transitions_total{",
        "tcpstate_state_duration_seconds_bucket{",
        "tcpstate_sockets{",
        "tcpstate_tracked_sockets ",
        "tcpstate_map_capacity{",
        "tcpstate_recording_failures_total{reason=\"event_lost\"}",
        "tcpstate_build_info{version=",
        "process_resident_memory_bytes ",
    ] {
        assert!(body.contains(needle), "missing {needle}");
    }
    let metrics = Metrics::parse(&body);
    assert_eq!(
        metrics.sum("tcpstate_recording_failures_total", &[]),
        0.0,
        "{body}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn landing_page_health_and_clean_shutdown() {
    let daemon = Daemon::start(&["--web.telemetry-path=/custom"]);
    let (status, page) = support::http_get(daemon.address, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("href=\"/custom\""), "{page}");
    let (status, health) = support::http_get(daemon.address, "/healthz").unwrap();
    assert_eq!((status, health.starts_with("ok")), (200, true), "{health}");
    assert_eq!(support::http_get(daemon.address, "/custom").unwrap().0, 200);
    assert_eq!(
        support::http_get(daemon.address, "/metrics").unwrap().0,
        404
    );
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM ends tcpstated cleanly: {status}");
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn errors_say_what_to_do_and_exit_codes_tell_usage_from_runtime() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tcpstated"))
            .args(args)
            .output()
            .expect("run tcpstated")
    };
    let usage = run(&["--buckets", "1,0.5"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("strictly increasing"));
    let usage = run(&["--port", "70000"]);
    assert_eq!(usage.status.code(), Some(2));

    // Without privileges (nobody, no capabilities): says which capabilities are missing.
    let unprivileged = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_tcpstated"))
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(unprivileged.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unprivileged.stderr);
    assert!(
        stderr.contains("missing capability CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let in_use = run(&["--web.listen-address", &address]);
    assert_eq!(in_use.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&in_use.stderr);
    assert!(
        stderr.contains("already in use") && stderr.contains("--web.listen-address"),
        "{stderr}"
    );
}

/// The benchmark's witness (`cargo xtask bench witness`): its sock_ops program attaches to the
/// cgroup v2 root and hears `tcp_set_state()` announce each transition of a real connection
/// that the tracepoint program also counts; the three births come through the tracepoint only.
#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn witness_hears_each_state_change_through_the_tracepoint_and_sock_ops() {
    let mut witness = Command::new(env!("CARGO_BIN_EXE_tcpstate-witness"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("tcpstate-witness starts");
    let mut stdout = std::io::BufReader::new(witness.stdout.take().unwrap());
    let mut attached = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut attached).unwrap();
    assert!(attached.starts_with("attached tracepoint="), "{attached}");

    client_closes_first(([127, 0, 0, 1], 24013).into(), Duration::ZERO);
    // The client's FIN_WAIT2 -> CLOSE comes with the server's last ACK, in a softirq.
    thread::sleep(Duration::from_millis(200));
    let status = Command::new("kill")
        .args(["-TERM", &witness.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut output = String::new();
    stdout.read_to_string(&mut output).unwrap();
    assert!(witness.wait().unwrap().success(), "{output}");

    // Other sockets of the host may add to either count: at least this connection's.
    let counts = |transition: &str| -> (u64, u64) {
        let line = output
            .lines()
            .find(|line| line.starts_with(&format!("transition={transition} ")))
            .unwrap_or_else(|| panic!("no {transition} in:\n{output}"));
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{name}=")))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name} count in {line}"))
        };
        (field("tracepoint"), field("sock_ops"))
    };
    for transition in [
        "SYN_SENT->ESTABLISHED",
        "SYN_RECV->ESTABLISHED",
        "ESTABLISHED->FIN_WAIT1",
        "FIN_WAIT1->FIN_WAIT2",
        "FIN_WAIT2->CLOSE",
        "ESTABLISHED->CLOSE_WAIT",
        "CLOSE_WAIT->LAST_ACK",
        "LAST_ACK->CLOSE",
        "LISTEN->CLOSE",
    ] {
        let (tracepoint, sock_ops) = counts(transition);
        assert!(tracepoint >= 1 && sock_ops >= 1, "{transition}:\n{output}");
    }
    for birth in ["CLOSE->SYN_SENT", "CLOSE->LISTEN", "LISTEN->SYN_RECV"] {
        let (tracepoint, sock_ops) = counts(birth);
        assert!(tracepoint >= 1 && sock_ops == 0, "{birth}:\n{output}");
    }
}
