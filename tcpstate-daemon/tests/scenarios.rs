//! The whole life of TCP connections, scenario by scenario, on the real kernel (issue 3).
//!
//! Each test makes a network namespace of its own (`tcpstate-<port>-<pid>`, loopback only), runs
//! `tcpstated` inside it (its sock_diag figures, TIME_WAIT, request sockets and listen queues,
//! describe the daemon's own namespace), makes traffic there on service ports 25001-25023 (in the
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
//! They need root: `cargo test -p tcpstate-daemon --test scenarios -- --ignored --test-threads=1`.
//! One test waits for TIME_WAIT's natural end (65 s); the others take a few seconds each.

mod support;

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use support::{Daemon, Metrics, Netns, SsSocket, eventually};

/// Bound of every wait for something that happens at once or at the next poll.
const WAIT: Duration = Duration::from_secs(10);
/// Where each test's daemon serves inside the test's namespace (private to it).
const WEB_PORT: u16 = 25099;
/// The second daemon of a test that compares views.
const RAW_VIEW_WEB_PORT: u16 = 25098;

fn at(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// tcpstated in `netns`, exporting `ports` by number, with histogram bounds `buckets` (chosen by
/// each test at the edges of its tolerances; empty: the defaults).
fn start(netns: &Netns, ports: &[u16], buckets: &[f64], extra: &[&str]) -> Daemon {
    let mut args = vec![format!("--port={}", joined(ports))];
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

// ---- transitions ---------------------------------------------------------------------------

use support::{
    Transitions, expect, rerun_once_after_unrecorded_events, transitions, until_transitions,
};

/// The three-way handshake of `n` connections to a listener of this test, and the listener's
/// own `CLOSE -> LISTEN`.
fn handshakes(n: u64) -> Vec<(&'static str, &'static str, &'static str, u64)> {
    vec![
        ("listener", "CLOSE", "LISTEN", 1),
        ("client", "CLOSE", "SYN_SENT", n),
        ("client", "SYN_SENT", "ESTABLISHED", n),
        ("server", "LISTEN", "SYN_RECV", n),
        ("server", "SYN_RECV", "ESTABLISHED", n),
    ]
}

// ---- durations -----------------------------------------------------------------------------

/// The `tcpstate_state_duration_seconds` labels of `state -> next` for `port` and `role`.
fn edge<'a>(
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
fn assert_durations(
    after: &Metrics,
    before: &Metrics,
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
fn assert_mean_duration(
    after: &Metrics,
    before: &Metrics,
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

fn duration_count(after: &Metrics, before: &Metrics, labels: &[(&str, &str)]) -> f64 {
    after.delta(before, "tcpstate_state_duration_seconds_count", labels)
}

fn duration_sum(after: &Metrics, before: &Metrics, labels: &[(&str, &str)]) -> f64 {
    after.delta(before, "tcpstate_state_duration_seconds_sum", labels)
}

/// Slack for a duration the daemon derives from a kernel timer read in milliseconds and kept
/// in jiffies, against bounds the test measured with its own clock: the timer is set and read
/// in jiffies (4 ms at HZ=250), and jiffies advance at the tick, which on a loaded virtual
/// machine can come a tick late: two jiffies, plus margin.
const TIMER_SLACK: f64 = 0.012;

// ---- gauges and ss -------------------------------------------------------------------------

/// `tcpstate_sockets` for `state` and `port`, and `role` unless empty.
fn sockets(metrics: &Metrics, state: &str, port: u16, role: &str) -> f64 {
    let port = port.to_string();
    let mut labels = vec![("state", state), ("port", port.as_str())];
    if !role.is_empty() {
        labels.push(("role", role));
    }
    metrics.sum("tcpstate_sockets", &labels)
}

/// `ss -tan` sockets in ss state `state` (`TIME-WAIT`, ...) with `port` at either end.
fn ss_count(listed: &[SsSocket], state: &str, port: u16) -> usize {
    listed
        .iter()
        .filter(|socket| socket.state == state && socket.has_port(port))
        .count()
}

/// `ss -tan`'s lines, less the daemon's own HTTP connections (for failure messages).
fn shown(listed: &[SsSocket]) -> String {
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
fn until_ss(netns: &Netns, limit: Duration, what: &str, check: impl Fn(&[SsSocket]) -> bool) {
    let mut listed = netns.sockets();
    eventually(limit, || {
        listed = netns.sockets();
        check(&listed)
    });
    assert!(check(&listed), "{what}; ss -tan shows\n{}", shown(&listed));
}

/// Scrapes until `check` accepts the metrics, for at most `limit`; asserts it, with `what` and
/// the namespace's sockets in the message; returns the last scrape.
fn until_metrics(
    daemon: &Daemon,
    netns: &Netns,
    limit: Duration,
    what: &str,
    mut check: impl FnMut(&Metrics) -> bool,
) -> Metrics {
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
fn relevant(metrics: &Metrics) -> String {
    metrics
        .series()
        .filter(|(series, value)| {
            series.starts_with("tcpstate_")
                && !series.starts_with("tcpstate_state_duration_seconds_bucket")
                && !series.contains("port=\"other\"")
                && !series.contains(&format!("port=\"{WEB_PORT}\""))
                && **value != 0.0
        })
        .map(|(series, value)| format!("{series} {value}\n"))
        .collect()
}

// ---- traffic -------------------------------------------------------------------------------

fn listen(netns: &Netns, port: u16) -> TcpListener {
    netns
        .run(|| TcpListener::bind(at(port)))
        .expect("bind the test port")
}

fn connect(netns: &Netns, port: u16) -> TcpStream {
    netns.run(|| TcpStream::connect(at(port))).expect("connect")
}

/// A connect that does not wait: the socket stays in SYN_SENT while its SYNs go unanswered.
fn connect_in_background(netns: &Netns, port: u16) -> Socket {
    netns.run(|| {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_nonblocking(true).unwrap();
        match socket.connect(&at(port).into()) {
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => socket,
            other => panic!("non-blocking connect: {other:?}"),
        }
    })
}

/// Accepts one connection, waiting at most `WAIT` (a lost handshake must fail the test, not
/// hang it).
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    eventually(WAIT, || match listener.accept() {
        Ok((stream, _)) => {
            accepted = Some(stream);
            true
        }
        Err(error) if error.kind() == ErrorKind::WouldBlock => false,
        Err(error) => panic!("accept: {error}"),
    });
    let stream = accepted.expect("a connection to accept within the wait");
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Reads until the peer's FIN (read returns 0).
fn read_to_eof(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).expect("the peer closes");
}

// ---- 1. SYN dropped once ------------------------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn syn_dropped_once_delays_the_handshake_by_the_initial_rto() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25001;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[0.5, 0.9, 1.5, 5.0], &[]);
        // The first SYN of each connection (told apart by its client port) is lost; its
        // retransmission, one initial RTO (1 s, RFC 6298) later, passes.
        let rules = netns.nft(
            "tcpstate_first_syn",
            &format!(
                r#"
    table inet tcpstate_first_syn {{
        set syn_seen {{
            type inet_service
            timeout 10m
        }}
        chain input {{
            type filter hook input priority 0; policy accept;
            tcp dport {port} tcp flags & (syn | ack) == syn tcp sport @syn_seen accept
            tcp dport {port} tcp flags & (syn | ack) == syn add @syn_seen {{ tcp sport }} counter drop comment "first SYN"
        }}
    }}
    "#
            ),
        );
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let started = Instant::now();
        let client = connect(&netns, port);
        let took = started.elapsed();
        let server = accept(&listener);
        assert_eq!(rules.packets("first SYN"), 1, "one SYN was dropped");
        assert!(
            took > Duration::from_millis(900),
            "connect took {took:?}: it should have waited for the SYN's retransmission"
        );

        let after = until_transitions(&daemon, &before, port, &expect(&handshakes(1)), WAIT);
        // The retransmission timer fires 1 s after the SYN (plus timer-wheel slack, 32 ms at
        // HZ=250): SYN_SENT lasts 1.0-1.1 s; (0.9, 1.5] leaves room for a loaded machine.
        assert_durations(
            &after,
            &before,
            &edge("SYN_SENT", "ESTABLISHED", "client", "25001"),
            1,
            (0.9, 1.5),
        );
        assert_eq!(
            after.delta(
                &before,
                "tcpstate_connect_failures_total",
                &[("port", "25001")]
            ),
            0.0,
            "a retransmitted SYN is no failure"
        );
        drop((client, server, listener, rules));
    });
}

// ---- 2. SYNs always dropped: a connect timeout, told apart from a refusal --------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn connect_timeout_is_counted_apart_from_a_refusal() {
    rerun_once_after_unrecorded_events(|| {
        let (timeout_port, refused_port) = (25002, 25003);
        let netns = Netns::new(timeout_port);
        let daemon = start(
            &netns,
            &[timeout_port, refused_port],
            &[1.0, 2.9, 3.6, 10.0],
            &[],
        );
        let rules = netns.nft(
            "tcpstate_no_syn",
            &format!(
                r#"
    table inet tcpstate_no_syn {{
        chain input {{
            type filter hook input priority 0; policy accept;
            tcp dport {timeout_port} tcp flags & (syn | ack) == syn counter drop comment "SYN"
        }}
    }}
    "#
            ),
        );
        let before = daemon.scrape();

        // TCP_SYNCNT=1: connect() gives up with ETIMEDOUT 3 s after the first SYN (the budget of
        // one retransmission with exponential backoff, 1 s + 2 s; this kernel spends it on SYNs
        // 1 s apart, net.ipv4.tcp_syn_linear_timeouts).
        let timed_out = netns.run(|| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            support::set_tcp_syncnt(&socket, 1);
            socket.connect(&at(timeout_port).into())
        });
        assert_eq!(
            timed_out.map_err(|error| error.kind()),
            Err(ErrorKind::TimedOut)
        );
        assert!(
            rules.packets("SYN") >= 2,
            "the SYN and its retransmissions were dropped"
        );
        // Nothing listens on the other port: the kernel answers the SYN with an RST.
        let refused = netns.run(|| TcpStream::connect(at(refused_port)));
        assert_eq!(
            refused.map_err(|error| error.kind()).err(),
            Some(ErrorKind::ConnectionRefused)
        );

        let failed_connect = expect(&[
            ("client", "CLOSE", "SYN_SENT", 1),
            ("client", "SYN_SENT", "CLOSE", 1),
        ]);
        until_transitions(&daemon, &before, timeout_port, &failed_connect, WAIT);
        let after = until_transitions(&daemon, &before, refused_port, &failed_connect, WAIT);
        let failures = |port: u16, reason: &str| {
            let port = port.to_string();
            let mut labels = vec![("port", port.as_str()), ("family", "ipv4")];
            if !reason.is_empty() {
                labels.push(("reason", reason));
            }
            after.delta(&before, "tcpstate_connect_failures_total", &labels)
        };
        assert_eq!(
            (
                failures(timeout_port, "timeout"),
                failures(timeout_port, "")
            ),
            (1.0, 1.0),
            "the unanswered connect is one timeout, nothing else\n{}",
            relevant(&after)
        );
        assert_eq!(
            (
                failures(refused_port, "refused"),
                failures(refused_port, "")
            ),
            (1.0, 1.0),
            "the reset connect is one refusal, nothing else\n{}",
            relevant(&after)
        );
        // 3 s (1 s + 2 s of retransmission timeouts, plus timer-wheel slack of tens of ms).
        assert_durations(
            &after,
            &before,
            &edge("SYN_SENT", "CLOSE", "client", "25002"),
            1,
            (2.9, 3.6),
        );
        assert_durations(
            &after,
            &before,
            &edge("SYN_SENT", "CLOSE", "client", "25003"),
            1,
            (0.0, 1.0),
        );
        drop(rules);
    });
}

// ---- 3. Final ACK of the handshake dropped ------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn lost_final_ack_leaves_a_request_socket_that_retransmits_its_syn_ack() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25004;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[0.5, 5.0], &[]);
        // Bare ACKs to the listener's port are lost: the handshake's last segment (and the
        // client's answers to retransmitted SYN-ACKs). The client, which got the SYN-ACK, is
        // ESTABLISHED; the server keeps a request socket (NEW_SYN_RECV) and retransmits the
        // SYN-ACK from 1 s after the SYN on.
        let rules = netns.nft(
            "tcpstate_no_ack",
            &format!(
                r#"
    table inet tcpstate_no_ack {{
        chain input {{
            type filter hook input priority 0; policy accept;
            tcp dport {port} tcp flags & (fin | syn | rst | ack) == ack counter drop comment "bare ACK"
        }}
    }}
    "#
            ),
        );
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let mut client = connect(&netns, port);

        until_ss(&netns, WAIT, "one request socket", |listed| {
            ss_count(listed, "SYN-RECV", port) == 1
        });
        until_metrics(
            &daemon,
            &netns,
            WAIT,
            "the request socket counted as NEW_SYN_RECV and its SYN-ACK retransmission",
            |metrics| {
                sockets(metrics, "NEW_SYN_RECV", port, "") == 1.0
                    && metrics.delta(
                        &before,
                        "tcpstate_synack_retransmits_total",
                        &[("port", "25004"), ("family", "ipv4")],
                    ) >= 1.0
            },
        );
        // The namespace's TCPSynRetrans counts SYN and SYN-ACK retransmissions; no SYN is lost
        // here. Bracket a scrape with it (a retransmission may come in between).
        let low = netns.tcp_ext("TCPSynRetrans") as f64;
        let half_open = daemon.scrape();
        let high = netns.tcp_ext("TCPSynRetrans") as f64;
        let retransmitted = half_open.delta(
            &before,
            "tcpstate_synack_retransmits_total",
            &[("port", "25004")],
        );
        assert!(
            (low..=high).contains(&retransmitted),
            "{retransmitted} SYN-ACK retransmits, /proc/net/netstat counts {low}-{high}"
        );
        assert_eq!(
            sockets(&half_open, "NEW_SYN_RECV", port, ""),
            1.0,
            "the request socket, still"
        );
        assert_eq!(
            sockets(&half_open, "SYN_RECV", port, ""),
            0.0,
            "no full socket yet on the server side"
        );

        // The ACK gets through again: the next segment from the client (data, which carries the
        // ACK) completes the handshake.
        rules.remove();
        client.write_all(b"x").unwrap();
        let mut server = accept(&listener);
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).unwrap();
        until_transitions(&daemon, &before, port, &expect(&handshakes(1)), WAIT);
        let after = until_metrics(
            &daemon,
            &netns,
            WAIT,
            "the request socket is gone",
            |metrics| sockets(metrics, "NEW_SYN_RECV", port, "") == 0.0,
        );
        assert_eq!(
            after.delta(
                &before,
                "tcpstate_synack_retransmits_total",
                &[("port", "25004")]
            ),
            netns.tcp_ext("TCPSynRetrans") as f64
        );
        // The client had its SYN-ACK at once; the server's wait is in the request socket.
        assert_durations(
            &after,
            &before,
            &edge("SYN_SENT", "ESTABLISHED", "client", "25004"),
            1,
            (0.0, 0.5),
        );
    });
}

// ---- 4. A tiny backlog that never accepts -------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn full_accept_queue_overflows() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25005;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[], &[]);
        let before = daemon.scrape();
        let listener = netns.run(|| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            socket.bind(&at(port).into()).unwrap();
            socket.listen(1).unwrap();
            socket
        });
        // The accept queue takes backlog + 1 connections (the kernel's sk_acceptq_is_full is
        // `>`): two complete handshakes wait there, never accepted.
        let queued: Vec<TcpStream> = (0..2).map(|_| connect(&netns, port)).collect();
        until_ss(
            &netns,
            WAIT,
            "two connections in the accept queue",
            |listed| {
                listed.iter().any(|socket| {
                    socket.state == "LISTEN" && socket.local_port == port && socket.recv_q == 2
                })
            },
        );
        // Every further SYN finds the queue full and is dropped (ListenOverflows and ListenDrops);
        // those clients stay in SYN_SENT, retrying.
        let waiting: Vec<Socket> = (0..4)
            .map(|_| connect_in_background(&netns, port))
            .collect();
        until_ss(&netns, WAIT, "four connects waiting", |listed| {
            ss_count(listed, "SYN-SENT", port) == 4
        });

        let full = until_metrics(
            &daemon,
            &netns,
            WAIT,
            "the accept queue at its limit, and overflows counted",
            |metrics| {
                metrics.sum("tcpstate_listen_queue_length", &[("port", "25005")]) == 2.0
                    && metrics.sum("tcpstate_listen_queue_limit", &[("port", "25005")]) == 1.0
                    && metrics.sum("tcpstate_listen_overflows_total", &[]) >= 4.0
            },
        );
        // The counters keep growing with every retried SYN: bracket the scrape.
        let (overflows_low, drops_low) = (
            netns.tcp_ext("ListenOverflows"),
            netns.tcp_ext("ListenDrops"),
        );
        let scraped = daemon.scrape();
        let (overflows_high, drops_high) = (
            netns.tcp_ext("ListenOverflows"),
            netns.tcp_ext("ListenDrops"),
        );
        let overflows = scraped.sum("tcpstate_listen_overflows_total", &[]) as u64;
        let drops = scraped.sum("tcpstate_listen_drops_total", &[]) as u64;
        assert!(
            (overflows_low..=overflows_high).contains(&overflows),
            "tcpstate_listen_overflows_total {overflows}, /proc/net/netstat ListenOverflows {overflows_low}..{overflows_high}"
        );
        assert!(
            (drops_low..=drops_high).contains(&drops),
            "tcpstate_listen_drops_total {drops}, /proc/net/netstat ListenDrops {drops_low}..{drops_high}"
        );
        // As ss shows the listener: Recv-Q is the accept queue, Send-Q the backlog.
        let listed = netns.sockets();
        let ss_listener = listed
            .iter()
            .find(|socket| socket.state == "LISTEN" && socket.local_port == port)
            .expect("the listener");
        assert_eq!(
            (ss_listener.recv_q, ss_listener.send_q),
            (2, 1),
            "ss: accept queue and backlog"
        );

        let gauges = |metrics: &Metrics| {
            [
                sockets(metrics, "LISTEN", port, "listener"),
                sockets(metrics, "ESTABLISHED", port, "client"),
                sockets(metrics, "ESTABLISHED", port, "server"),
                sockets(metrics, "SYN_SENT", port, "client"),
                sockets(metrics, "NEW_SYN_RECV", port, ""),
            ]
        };
        assert_eq!(
            gauges(&full),
            [1.0, 2.0, 2.0, 4.0, 0.0],
            "LISTEN, ESTABLISHED client/server, SYN_SENT, NEW_SYN_RECV\n{}",
            relevant(&full)
        );
        let mut want = expect(&handshakes(2));
        *want
            .get_mut(&("client".into(), "CLOSE".into(), "SYN_SENT".into()))
            .unwrap() += 4;
        until_transitions(&daemon, &before, port, &want, WAIT);

        // The application gives up on the waiting connects: connect failures, neither refused nor
        // timed out.
        let giving_up = daemon.scrape();
        drop(waiting);
        want.extend(expect(&[("client", "SYN_SENT", "CLOSE", 4)]));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        assert_eq!(
            [
                after.delta(
                    &giving_up,
                    "tcpstate_connect_failures_total",
                    &[("port", "25005"), ("reason", "other")]
                ),
                after.delta(
                    &giving_up,
                    "tcpstate_connect_failures_total",
                    &[("port", "25005")]
                ),
            ],
            [4.0, 4.0],
            "connects aborted by the application\n{}",
            relevant(&after)
        );
        drop((queued, listener));
    });
}

// ---- 5. Simultaneous close ----------------------------------------------------------------

/// Shuts both ends of a loopback connection down for writing so that their FINs cross, as in
/// a simultaneous close on a long path: a token bucket on the namespace's loopback, emptied by
/// one datagram first, holds each segment about 26 ms (66 bytes at 20 kbit/s), so each side's
/// FIN leaves before the other's arrives. Timers cannot do this reliably: the two sides' RTOs
/// differ by a jiffy when their RTT samples do, and their retransmissions drift apart. The
/// returned guard removes the bucket (remove it before scraping: it slows every segment).
fn shut_down_together<'a>(netns: &'a Netns, one: &TcpStream, other: &TcpStream) -> Throttle<'a> {
    netns.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "20kbit", "burst", "100", "limit",
            "10000",
        ],
    );
    let throttle = Throttle(netns);
    netns
        .run(|| {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
                .send_to(&[0; 50], (Ipv4Addr::LOCALHOST, 25097))
        })
        .expect("send the datagram that empties the bucket");
    one.shutdown(Shutdown::Write).unwrap();
    other.shutdown(Shutdown::Write).unwrap();
    throttle
}

/// The token bucket of [`shut_down_together`], removed when dropped.
struct Throttle<'a>(&'a Netns);

impl Drop for Throttle<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .command("tc")
            .args(["qdisc", "del", "dev", "lo", "root"])
            .status();
    }
}

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn simultaneous_close_goes_through_closing() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25006;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[0.01, 0.1, 0.15, 1.0], &[]);
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let client = connect(&netns, port);
        let server = accept(&listener);
        drop(listener);

        // Each side receives a FIN that does not acknowledge its own (FIN_WAIT1 -> CLOSING), then
        // the ACK of its FIN (CLOSING -> TIME_WAIT).
        let throttle = shut_down_together(&netns, &client, &server);
        until_ss(&netns, WAIT, "both sides in TIME_WAIT", |listed| {
            ss_count(listed, "TIME-WAIT", port) == 2
        });
        drop(throttle);

        let mut want = expect(&handshakes(1));
        want.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "ESTABLISHED", "FIN_WAIT1", 1),
            ("client", "FIN_WAIT1", "CLOSING", 1),
            ("client", "CLOSING", "TIME_WAIT", 1),
            ("server", "ESTABLISHED", "FIN_WAIT1", 1),
            ("server", "FIN_WAIT1", "CLOSING", 1),
            ("server", "CLOSING", "TIME_WAIT", 1),
        ]));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        // Each segment waits ~26 ms in the bucket: the server's FIN_WAIT1 ends with the client's
        // FIN (~23 ms), the client's with the server's FIN (~50 ms); CLOSING lasts until the ACK
        // behind that FIN arrives (~26 ms for the client, ~80 ms for the server).
        for role in ["client", "server"] {
            assert_durations(
                &after,
                &before,
                &edge("FIN_WAIT1", "CLOSING", role, "25006"),
                1,
                (0.01, 0.1),
            );
            assert_durations(
                &after,
                &before,
                &edge("CLOSING", "TIME_WAIT", role, "25006"),
                1,
                (0.01, 0.15),
            );
        }
        until_metrics(&daemon, &netns, WAIT, "two TIME_WAIT sockets", |metrics| {
            sockets(metrics, "TIME_WAIT", port, "client") == 1.0
                && sockets(metrics, "TIME_WAIT", port, "server") == 1.0
                && sockets(metrics, "CLOSING", port, "") == 0.0
        });
        drop((client, server));
    });
}

// ---- 6. CLOSE_WAIT leak -------------------------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn close_wait_leak_shows_in_the_gauge_until_the_server_closes() {
    rerun_once_after_unrecorded_events(|| {
        const N: usize = 5;
        /// How long the server leaks its sockets after the clients closed.
        const LEAK: Duration = Duration::from_secs(3);
        let port = 25007;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[0.1, 2.9, 10.0], &[]);
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let clients: Vec<TcpStream> = (0..N).map(|_| connect(&netns, port)).collect();
        let servers: Vec<TcpStream> = (0..N).map(|_| accept(&listener)).collect();
        drop(listener);

        // The clients close (orphaned: FIN_WAIT2 in a timewait socket, waiting for the server's
        // FIN up to tcp_fin_timeout); the servers never do: CLOSE_WAIT.
        let closing = Instant::now();
        drop(clients);
        until_ss(&netns, WAIT, "the leak", |listed| {
            ss_count(listed, "CLOSE-WAIT", port) == N && ss_count(listed, "FIN-WAIT-2", port) == N
        });
        let leak = |metrics: &Metrics| {
            (
                sockets(metrics, "CLOSE_WAIT", port, "server"),
                sockets(metrics, "FIN_WAIT2", port, "client"),
            )
        };
        until_metrics(
            &daemon,
            &netns,
            WAIT,
            "N CLOSE_WAIT and FIN_WAIT2",
            |metrics| leak(metrics) == (N as f64, N as f64),
        );
        // It stays: scrape after scrape (polls included) while the leak lasts.
        for _ in 0..5 {
            thread::sleep(Duration::from_millis(250));
            let metrics = daemon.scrape();
            assert_eq!(
                leak(&metrics),
                (N as f64, N as f64),
                "CLOSE_WAIT (server) and FIN_WAIT2 (client) while the servers leak\n{}",
                relevant(&metrics)
            );
        }

        thread::sleep(LEAK.saturating_sub(closing.elapsed()));
        let held_at_least = closing.elapsed();
        drop(servers);
        let held_at_most = closing.elapsed();
        let mut want = expect(&handshakes(N as u64));
        want.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "ESTABLISHED", "FIN_WAIT1", N as u64),
            ("client", "FIN_WAIT1", "FIN_WAIT2", N as u64),
            ("client", "FIN_WAIT2", "TIME_WAIT", N as u64),
            ("server", "ESTABLISHED", "CLOSE_WAIT", N as u64),
            ("server", "CLOSE_WAIT", "LAST_ACK", N as u64),
            ("server", "LAST_ACK", "CLOSE", N as u64),
        ]));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        // CLOSE_WAIT began when each client's FIN arrived (during `drop(clients)`, microseconds on
        // loopback) and ended at the servers' close: at least LEAK (3 s), and as long as this
        // machine took to get there, measured here.
        let (shortest, longest) = (
            held_at_least.as_secs_f64() - 0.01,
            held_at_most.as_secs_f64() + 0.01,
        );
        assert_durations(
            &after,
            &before,
            &edge("CLOSE_WAIT", "LAST_ACK", "server", "25007"),
            N as u64,
            (2.9, f64::INFINITY),
        );
        assert_mean_duration(
            &after,
            &before,
            &edge("CLOSE_WAIT", "LAST_ACK", "server", "25007"),
            N as u64,
            (shortest, longest),
        );
        // The clients' FIN_WAIT2 lasted as long (less the ACK of their FIN, immediate here), in
        // their timewait sockets: from the kernel's timer, to the millisecond.
        assert_mean_duration(
            &after,
            &before,
            &edge("FIN_WAIT2", "TIME_WAIT", "client", "25007"),
            N as u64,
            (shortest - 0.05, longest + TIMER_SLACK),
        );
        until_metrics(&daemon, &netns, WAIT, "the leak is over", |metrics| {
            leak(metrics) == (0.0, 0.0) && sockets(metrics, "TIME_WAIT", port, "client") == N as f64
        });
    });
}

// ---- 7. TIME_WAIT -------------------------------------------------------------------------

/// The poll interval of the test daemons whose durations depend on when a poll notices a
/// timewait socket's early end.
const FAST_POLL: &str = "--sockdiag.min-interval=0.1";

/// Client-closed connections from fixed client ports (SO_REUSEADDR, so that a later connect
/// can reuse them): returns the streams, still open.
fn connect_from(netns: &Netns, ports: &[u16], to: u16) -> Vec<TcpStream> {
    ports
        .iter()
        .map(|&from| {
            netns.run(|| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                socket.set_reuse_address(true).unwrap();
                socket.bind(&at(from).into()).unwrap();
                socket.connect(&at(to).into()).unwrap();
                TcpStream::from(socket)
            })
        })
        .collect()
}

/// The client closes first and waits in FIN_WAIT2 until the server closes: the client's side
/// ends in TIME_WAIT. Waits (ss) for each step, so that every client leaves FIN_WAIT1 for
/// FIN_WAIT2 (not straight to TIME_WAIT on a FIN that carries the ACK): exact counts. Returns
/// when the servers' close began and ended: the clients entered TIME_WAIT in between.
fn close_clients_first(
    netns: &Netns,
    port: u16,
    clients: Vec<TcpStream>,
    mut servers: Vec<TcpStream>,
) -> (Instant, Instant) {
    let n = clients.len();
    for client in &clients {
        client.shutdown(Shutdown::Write).unwrap();
    }
    until_ss(netns, WAIT, "clients in FIN_WAIT2", |listed| {
        ss_count(listed, "FIN-WAIT-2", port) == n && ss_count(listed, "CLOSE-WAIT", port) == n
    });
    for server in &mut servers {
        read_to_eof(server);
    }
    let closing = Instant::now();
    drop(servers);
    let closed = Instant::now();
    until_ss(netns, WAIT, "clients in TIME_WAIT", |listed| {
        ss_count(listed, "TIME-WAIT", port) == n
    });
    drop(clients);
    (closing, closed)
}

/// The natural end of TIME_WAIT takes 60 s (TCP_TIMEWAIT_LEN, not tunable): this one test pays
/// it, because that end is read from the kernel's timer (to the millisecond), a different path
/// from the early ends (noticed by the next poll) that every other test can use instead. The
/// early end here is a new connect() reusing a client port (SO_REUSEADDR and a timestamped
/// timewait socket: the kernel kills the timewait socket and hands over its 4-tuple), at a
/// moment the test chooses.
#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation (takes 65 s)"]
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
        want.extend(expect(&[
            ("client", "ESTABLISHED", "FIN_WAIT1", N as u64),
            ("client", "FIN_WAIT1", "FIN_WAIT2", N as u64),
            ("client", "FIN_WAIT2", "TIME_WAIT", N as u64),
            ("server", "ESTABLISHED", "CLOSE_WAIT", N as u64),
            ("server", "CLOSE_WAIT", "LAST_ACK", N as u64),
            ("server", "LAST_ACK", "CLOSE", N as u64),
        ]));
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
        let expired = |metrics: &Metrics| {
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

// ---- 8. Orphaned FIN_WAIT2 ----------------------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn orphaned_fin_wait2_lasts_until_the_peers_fin() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25009;
        let netns = Netns::new(port);
        let buckets = [0.1, 0.3, 0.4, 1.0];
        let daemon = start(&netns, &[port], &buckets, &[]);
        // A second daemon in the same namespace shows the kernel's own sequence.
        let raw = Daemon::start_in(
            &netns,
            RAW_VIEW_WEB_PORT,
            &[
                "--port=25009",
                &format!("--buckets={}", joined(&buckets)),
                "--transitions.view=raw",
            ],
        );
        let (before, raw_before) = (daemon.scrape(), raw.scrape());
        let listener = listen(&netns, port);
        let client = connect(&netns, port);
        let server = accept(&listener);
        drop(listener);
        let client_port = client.local_addr().unwrap().port();

        // close(), not shutdown(): once the server acknowledges the FIN, the kernel moves the
        // client's connection into a timewait socket in substate FIN_WAIT2.
        let mut not_before = Instant::now();
        drop(client);
        // FIN_WAIT2 begins when the server's ACK arrives (at once on loopback): after the start of
        // the last listing that does not show it, before the end of the first that does. Listing
        // without pause keeps that window to a few ms.
        let deadline = Instant::now() + WAIT;
        let seen = loop {
            let listing = Instant::now();
            if netns
                .sockets()
                .iter()
                .any(|socket| socket.state == "FIN-WAIT-2" && socket.local_port == client_port)
            {
                break Instant::now();
            }
            not_before = listing;
            assert!(
                Instant::now() < deadline,
                "the client never reached FIN_WAIT2"
            );
        };
        // The server closes 310 ms later: its FIN ends the client's FIN_WAIT2.
        thread::sleep(Duration::from_millis(310));
        let server_closing = Instant::now();
        drop(server);
        let server_closed = Instant::now();

        let mut closed = expect(&handshakes(1));
        closed.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "ESTABLISHED", "FIN_WAIT1", 1),
            ("client", "FIN_WAIT1", "FIN_WAIT2", 1),
            ("server", "ESTABLISHED", "CLOSE_WAIT", 1),
            ("server", "CLOSE_WAIT", "LAST_ACK", 1),
            ("server", "LAST_ACK", "CLOSE", 1),
        ]));
        let mut logical = closed.clone();
        logical.extend(expect(&[("client", "FIN_WAIT2", "TIME_WAIT", 1)]));
        let after = until_transitions(&daemon, &before, port, &logical, WAIT);
        let (shortest, longest) = (
            (server_closing - seen).as_secs_f64() - TIMER_SLACK,
            (server_closed - not_before).as_secs_f64() + TIMER_SLACK,
        );
        // Within 300-400 ms, unless this machine was too slow to keep to that (then within what
        // it measured).
        let at_most = if longest <= 0.4 { 0.4 } else { f64::INFINITY };
        let fin_wait2 = edge("FIN_WAIT2", "TIME_WAIT", "client", "25009");
        assert_durations(&after, &before, &fin_wait2, 1, (0.3, at_most));
        assert_mean_duration(&after, &before, &fin_wait2, 1, (shortest, longest));

        // The raw view: the full socket leaves FIN_WAIT2 for CLOSE within microseconds.
        let mut raw_sequence = closed;
        raw_sequence.extend(expect(&[("client", "FIN_WAIT2", "CLOSE", 1)]));
        let raw_after = until_transitions(&raw, &raw_before, port, &raw_sequence, WAIT);
        assert_durations(
            &raw_after,
            &raw_before,
            &edge("FIN_WAIT2", "CLOSE", "client", "25009"),
            1,
            (0.0, 0.1),
        );
    });
}

// ---- 9. Sockets older than the daemon -----------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn connections_older_than_the_daemon_count_at_once_without_bogus_durations() {
    rerun_once_after_unrecorded_events(|| {
        const N: usize = 100;
        let port = 25010;
        let netns = Netns::new(port);
        let listener = listen(&netns, port);
        let clients: Vec<TcpStream> = (0..N).map(|_| connect(&netns, port)).collect();
        let servers: Vec<TcpStream> = (0..N).map(|_| accept(&listener)).collect();
        until_ss(&netns, WAIT, "the connections", |listed| {
            ss_count(listed, "ESTAB", port) == 2 * N
        });

        let daemon = start(&netns, &[port], &[], &[]);
        let first = daemon.scrape();
        // Both ends carry the service port: the server's local port, the client's remote port
        // (role unknown: the port label falls back to whichever end is in the set).
        assert_eq!(
            [
                sockets(&first, "ESTABLISHED", port, "unknown"),
                sockets(&first, "ESTABLISHED", port, ""),
                sockets(&first, "LISTEN", port, "listener"),
            ],
            [2.0 * N as f64, 2.0 * N as f64, 1.0],
            "the first scrape: ESTABLISHED (role unknown), ESTABLISHED (all roles), LISTEN\n{}",
            relevant(&first)
        );

        close_clients_first(&netns, port, clients, servers);
        drop(listener);
        let n = N as u64;
        let want = expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("unknown", "ESTABLISHED", "FIN_WAIT1", n),
            ("unknown", "FIN_WAIT1", "FIN_WAIT2", n),
            ("unknown", "FIN_WAIT2", "TIME_WAIT", n),
            ("unknown", "ESTABLISHED", "CLOSE_WAIT", n),
            ("unknown", "CLOSE_WAIT", "LAST_ACK", n),
            ("unknown", "LAST_ACK", "CLOSE", n),
        ]);
        let after = until_transitions(&daemon, &first, port, &want, WAIT);
        // No duration for a state whose start the daemon did not see: ESTABLISHED, LISTEN.
        for state in ["ESTABLISHED", "LISTEN"] {
            assert_eq!(
                after.delta(
                    &first,
                    "tcpstate_state_duration_seconds_count",
                    &[("state", state), ("port", "25010")]
                ),
                0.0,
                "durations of {state}, which began before the daemon"
            );
        }
        // The states they entered afterwards are timed.
        for (state, next) in [
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "TIME_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ] {
            assert_durations(
                &after,
                &first,
                &edge(state, next, "unknown", "25010"),
                n,
                (0.0, 10.0),
            );
        }
        until_metrics(
            &daemon,
            &netns,
            WAIT,
            "their TIME_WAIT, as ss shows it",
            |metrics| {
                sockets(metrics, "TIME_WAIT", port, "unknown") == N as f64
                    && sockets(metrics, "ESTABLISHED", port, "") == 0.0
            },
        );
        until_ss(&netns, WAIT, "ss agrees", |listed| {
            ss_count(listed, "TIME-WAIT", port) == N
        });
    });
}

/// Connections made and closed in a loop on `port` of `netns` until dropped: each client
/// writes a byte and closes (FIN_WAIT1, FIN_WAIT2, then TIME_WAIT), each server reads to the end
/// and closes (CLOSE_WAIT, LAST_ACK): sockets in every closing state at any moment.
struct Churn {
    clients_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    servers_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<thread::JoinHandle<u64>>,
    servers: Vec<thread::JoinHandle<u64>>,
}

impl Churn {
    /// Clients connect to `address`: a new address for each churn keeps the earlier churns'
    /// TIME_WAIT sockets out of its 4-tuples (connect() slows down to a crawl otherwise).
    fn start(netns: &Netns, listener: &TcpListener, address: SocketAddr) -> Churn {
        use std::sync::{Arc, atomic::AtomicBool};
        let clients_stop = Arc::new(AtomicBool::new(false));
        let servers_stop = Arc::new(AtomicBool::new(false));
        let servers = (0..2)
            .map(|_| {
                let listener = listener.try_clone().unwrap();
                let stop = servers_stop.clone();
                thread::spawn(move || serve_until(&listener, &stop))
            })
            .collect();
        let clients = (0..2)
            .map(|_| {
                let (name, stop) = (netns.name().to_owned(), clients_stop.clone());
                thread::spawn(move || {
                    support::run_in_netns(&name, || connect_until(address, &stop))
                })
            })
            .collect();
        Churn {
            clients_stop,
            servers_stop,
            clients,
            servers,
        }
    }

    /// Stops the clients, then the servers once they have accepted every connection; returns
    /// the connections made.
    fn stop(self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.clients_stop.store(true, Relaxed);
        let made = self.clients.into_iter().map(|t| t.join().unwrap()).sum();
        self.servers_stop.store(true, Relaxed);
        let served: u64 = self.servers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(made, served, "connections made and served");
        made
    }
}

/// Accepts, reads each connection to its end and closes it, until `stop` is set and no
/// connection waits.
fn serve_until(listener: &TcpListener, stop: &std::sync::atomic::AtomicBool) -> u64 {
    listener.set_nonblocking(true).unwrap();
    let mut served = 0;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let _ = stream.read_to_end(&mut Vec::new());
                served += 1;
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return served;
                }
                thread::sleep(Duration::from_micros(50))
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
}

fn connect_until(address: SocketAddr, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut made = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream.write_all(b"x").unwrap();
        made += 1;
    }
    made
}

/// States whose gauge the start-up baseline feeds (all but the polls' TIME_WAIT).
fn full_socket_states(per_state: BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
    per_state
        .into_iter()
        .filter(|(state, _)| *state != "TIME_WAIT")
        .collect()
}

/// A daemon started while connections churn reads its start-up baseline while sockets change
/// state under it: after the churn, its gauges must equal ss (issue 36, defect 3: restarts left
/// up to 92 phantom CLOSE_WAIT and FIN_WAIT1 sockets for good). Long-lived connections of the
/// same port and labels stay ESTABLISHED through it, so a socket lost from the baseline shows
/// too.
#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn a_daemon_started_under_churn_counts_every_socket_once() {
    const HELD: usize = 50;
    const RESTARTS: usize = 7;
    let port = 25024;
    let ports = [port];
    let netns = Netns::new(port);
    // A deep accept queue: the clients outrun the servers at times, and a SYN to a full queue
    // waits a second for its retransmission.
    let listener = netns.run(|| {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
            .expect("bind the test port");
        socket.listen(4096).unwrap();
        TcpListener::from(socket)
    });
    let held_clients: Vec<TcpStream> = (0..HELD).map(|_| connect(&netns, port)).collect();
    let held_servers: Vec<TcpStream> = (0..HELD).map(|_| accept(&listener)).collect();
    for restart in 1..=RESTARTS {
        let address = (Ipv4Addr::new(127, 0, 0, 1 + restart as u8), port).into();
        let churn = Churn::start(&netns, &listener, address);
        thread::sleep(Duration::from_millis(300));
        let daemon = start(&netns, &ports, &[], &[]);
        thread::sleep(Duration::from_millis(300));
        let made = churn.stop();
        until_ss(&netns, WAIT, "the churn's sockets closed", |listed| {
            listed.iter().all(|socket| {
                !socket.has_port(port)
                    || matches!(socket.state.as_str(), "TIME-WAIT" | "LISTEN" | "ESTAB")
            }) && ss_count(listed, "ESTAB", port) == 2 * HELD
        });
        let mut metrics = daemon.scrape();
        let mut listed = netns.sockets();
        eventually(WAIT, || {
            metrics = daemon.scrape();
            listed = netns.sockets();
            full_socket_states(per_state_from_metrics(&metrics, &ports))
                == full_socket_states(per_state_from_ss(&listed, &ports))
        });
        assert_eq!(
            full_socket_states(per_state_from_metrics(&metrics, &ports)),
            full_socket_states(per_state_from_ss(&listed, &ports)),
            "restart {restart} of {RESTARTS}, under a churn of {made} connections: \
             tcpstate_sockets (left) and ss -tan (right) per state\n{}",
            relevant(&metrics)
        );
        assert!(daemon.stop().success());
    }
    drop((held_clients, held_servers, listener));
}

/// Many connections held at once past a small slot table, then closed by the clients (close(),
/// so each client's FIN_WAIT2 goes on in a timewait socket): most records live in socket
/// storage and hand off through the handoff map, the others through their slots, which the
/// scrapes' own sockets may claim before a sweep takes them. Every logical transition counts
/// once (issue 36, defect 4: one `FIN_WAIT2 -> TIME_WAIT` was lost in every run).
#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
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
            read_to_eof(server);
        }
        drop(servers);
        drop(listener);
        // Each client leaves FIN_WAIT1 once, for FIN_WAIT2 or (the server's FIN carrying the
        // ACK of the client's) straight for TIME_WAIT; each reaches TIME_WAIT once.
        let flows = |m: &Metrics| {
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
        let failures = support::recording_failures(&after, &before);
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
                support::UNRECORDED_EVENTS,
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

// ---- tcpstate_sockets equals ss -tan ------------------------------------------------------

/// Every state, as tcpstate names them; `SYN_RECV` here stands for ss's SYN-RECV, which is
/// tcpstate's NEW_SYN_RECV (request sockets) plus SYN_RECV (full sockets).
const STATES: [&str; 10] = [
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

fn per_state_from_metrics(metrics: &Metrics, ports: &[u16]) -> BTreeMap<&'static str, u64> {
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

fn per_state_from_ss(listed: &[SsSocket], ports: &[u16]) -> BTreeMap<&'static str, u64> {
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

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn sockets_per_state_equal_ss_in_a_quiet_namespace() {
    let ports: Vec<u16> = (25011..=25019).collect();
    let &[
        established,
        half_closed,
        orphaned,
        time_wait,
        syn_sent,
        half_open,
        last_ack,
        fin_wait1,
        closing,
    ] = ports.as_slice()
    else {
        unreachable!()
    };
    let netns = Netns::new(established);
    // The daemon's own HTTP port is in the set too, so that the scrapes' connections (which
    // come and go, and leave TIME_WAIT on the daemon's side) are labelled apart.
    let mut port_set = ports.clone();
    port_set.push(WEB_PORT);
    let daemon = start(&netns, &port_set, &[], &[]);
    let rules = netns.nft(
        "tcpstate_mix",
        &format!(
            r#"
table inet tcpstate_mix {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {syn_sent} tcp flags & (syn | ack) == syn drop
        tcp dport {half_open} tcp flags & (fin | syn | rst | ack) == ack drop
    }}
}}
"#
        ),
    );
    let mut keep: Vec<TcpStream> = Vec::new();
    let mut listeners: Vec<TcpListener> = Vec::new();
    let pair = |port: u16, listeners: &mut Vec<TcpListener>| {
        if !listeners
            .iter()
            .any(|listener| listener.local_addr().unwrap().port() == port)
        {
            listeners.push(listen(&netns, port));
        }
        let client = connect(&netns, port);
        let server = accept(listeners.last().unwrap());
        (client, server)
    };

    // ESTABLISHED, both ends.
    for _ in 0..2 {
        let (client, server) = pair(established, &mut listeners);
        keep.extend([client, server]);
    }
    // Half closed: FIN_WAIT2 (a full socket: the client still holds it) and CLOSE_WAIT.
    for _ in 0..2 {
        let (client, server) = pair(half_closed, &mut listeners);
        client.shutdown(Shutdown::Write).unwrap();
        keep.extend([client, server]);
    }
    // Orphaned: FIN_WAIT2 in a timewait socket, and CLOSE_WAIT.
    for _ in 0..2 {
        let (client, server) = pair(orphaned, &mut listeners);
        drop(client);
        keep.push(server);
    }
    // TIME_WAIT.
    let (clients, servers): (Vec<_>, Vec<_>) =
        (0..3).map(|_| pair(time_wait, &mut listeners)).unzip();
    close_clients_first(&netns, time_wait, clients, servers);
    // SYN_SENT: the SYNs are lost.
    let waiting: Vec<Socket> = (0..2)
        .map(|_| connect_in_background(&netns, syn_sent))
        .collect();
    // A request socket (NEW_SYN_RECV): the handshake's last ACK is lost; the client is
    // ESTABLISHED.
    listeners.push(listen(&netns, half_open));
    keep.push(connect(&netns, half_open));
    // LAST_ACK: the client's ACK of the server's FIN is lost (the client is in TIME_WAIT).
    // FIN_WAIT1: the client's FIN is lost (the server stays ESTABLISHED).
    let (last_ack_client, last_ack_server) = pair(last_ack, &mut listeners);
    let (fin_wait1_client, fin_wait1_server) = pair(fin_wait1, &mut listeners);
    let (closing_client, closing_server) = pair(closing, &mut listeners);
    let late_rules = netns.nft(
        "tcpstate_mix_late",
        &format!(
            r#"
table inet tcpstate_mix_late {{
    set fin_passed {{
        type inet_service
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {last_ack} tcp flags & (fin | syn | rst | ack) == ack drop
        tcp dport {fin_wait1} tcp flags & fin == fin drop
        tcp dport {closing} tcp sport @fin_passed drop
        tcp sport {closing} tcp sport @fin_passed drop
        tcp dport {closing} tcp flags & fin == fin add @fin_passed {{ tcp sport }} accept
        tcp sport {closing} tcp flags & fin == fin add @fin_passed {{ tcp sport }} accept
        tcp dport {closing} drop
        tcp sport {closing} drop
    }}
}}
"#
        ),
    );
    last_ack_client.shutdown(Shutdown::Write).unwrap();
    fin_wait1_client.shutdown(Shutdown::Write).unwrap();
    let mut last_ack_server = last_ack_server;
    read_to_eof(&mut last_ack_server);
    drop(last_ack_server);
    // CLOSING: the FINs cross, then every later segment of that connection is lost: neither
    // side learns that its FIN arrived (first FIN from each side passes, nothing after).
    let throttle = shut_down_together(&netns, &closing_client, &closing_server);
    until_ss(&netns, WAIT, "CLOSING on both sides", |listed| {
        ss_count(listed, "CLOSING", closing) == 2
    });
    drop(throttle);

    let listed = netns.sockets();
    assert!(
        listed
            .iter()
            .all(|socket| socket.has_port(WEB_PORT)
                || ports.iter().any(|&port| socket.has_port(port))),
        "the namespace holds only this test's sockets:\n{}",
        shown(&listed)
    );
    let made = per_state_from_ss(&listed, &ports);
    assert_eq!(
        made,
        BTreeMap::from([
            ("LISTEN", 8),
            ("SYN_SENT", 2),
            ("SYN_RECV", 1),
            ("ESTABLISHED", 6),
            ("FIN_WAIT1", 1),
            ("FIN_WAIT2", 4),
            ("CLOSE_WAIT", 4),
            ("CLOSING", 2),
            ("LAST_ACK", 1),
            ("TIME_WAIT", 4),
        ]),
        "the sockets this test made, as ss lists them:\n{}",
        shown(&listed)
    );

    let mut listed = netns.sockets();
    let mut metrics = daemon.scrape();
    eventually(WAIT, || {
        metrics = daemon.scrape();
        listed = netns.sockets();
        per_state_from_metrics(&metrics, &ports) == per_state_from_ss(&listed, &ports)
    });
    assert_eq!(
        per_state_from_metrics(&metrics, &ports),
        per_state_from_ss(&listed, &ports),
        "tcpstate_sockets (left) and ss -tan (right) per state\n{}",
        relevant(&metrics)
    );
    assert_eq!(
        sockets(&metrics, "SYN_RECV", half_open, "")
            + sockets(&metrics, "NEW_SYN_RECV", half_open, ""),
        1.0
    );
    assert_eq!(
        sockets(&metrics, "NEW_SYN_RECV", half_open, ""),
        1.0,
        "the request socket is NEW_SYN_RECV"
    );
    drop((waiting, keep, listeners));
    drop((last_ack_client, fin_wait1_client, fin_wait1_server));
    drop((closing_client, closing_server));
    drop((rules, late_rules));
}

// ---- Resets -------------------------------------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn resets_are_counted_by_the_state_they_hit() {
    rerun_once_after_unrecorded_events(|| {
        let (abort_port, refused_port) = (25020, 25021);
        let netns = Netns::new(abort_port);
        let daemon = start(&netns, &[abort_port, refused_port], &[], &[]);
        let before = daemon.scrape();
        let listener = listen(&netns, abort_port);
        let client = connect(&netns, abort_port);
        let mut server = accept(&listener);
        drop(listener);
        // SO_LINGER 0: close() aborts the connection with an RST.
        SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        server.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(
            server.read(&mut [0u8; 1]).map_err(|error| error.kind()),
            Err(ErrorKind::ConnectionReset)
        );
        drop(server);
        let refused = netns.run(|| TcpStream::connect(at(refused_port)));
        assert_eq!(
            refused.map_err(|error| error.kind()).err(),
            Some(ErrorKind::ConnectionRefused)
        );

        let mut want = expect(&handshakes(1));
        want.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "ESTABLISHED", "CLOSE", 1),
            ("server", "ESTABLISHED", "CLOSE", 1),
        ]));
        let after = until_transitions(&daemon, &before, abort_port, &want, WAIT);
        let resets = |name: &str, port: &str, state: &str, role: &str| {
            let mut labels = vec![("port", port), ("family", "ipv4")];
            if !state.is_empty() {
                labels.extend([("state", state), ("role", role)]);
            }
            after.delta(&before, name, &labels)
        };
        let (sent, received) = (
            "tcpstate_resets_sent_total",
            "tcpstate_resets_received_total",
        );
        assert_eq!(
            [
                resets(sent, "25020", "ESTABLISHED", "client"),
                resets(sent, "25020", "", ""),
                resets(received, "25020", "ESTABLISHED", "server"),
                resets(received, "25020", "", ""),
            ],
            [1.0, 1.0, 1.0, 1.0],
            "the abort: one RST sent by the client and received by the server, both ESTABLISHED\n{}",
            relevant(&after)
        );
        // The refused connect: the client receives the RST in SYN_SENT.
        assert_eq!(
            [
                resets(received, "25021", "SYN_SENT", "client"),
                resets(received, "25021", "", ""),
            ],
            [1.0, 1.0],
            "the refusal: one RST received in SYN_SENT\n{}",
            relevant(&after)
        );
    });
}

// ---- shutdown() then close() -------------------------------------------------------------

/// A half close followed by close() before the FIN is acknowledged (what HTTP servers do): the
/// kernel calls tcp_set_state(FIN_WAIT1) again at close(), and the tracepoint reports
/// `FIN_WAIT1 -> FIN_WAIT1`. That is no transition of TCP's state machine: the logical view
/// must not count it, nor restart FIN_WAIT1's clock.
#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
fn close_after_shutdown_keeps_one_fin_wait1() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25022;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[0.5, 5.0], &[]);
        let before = daemon.scrape();
        let listener = listen(&netns, port);
        let client = connect(&netns, port);
        let server = accept(&listener);
        drop(listener);
        let rules = netns.nft(
            "tcpstate_no_fin",
            &format!(
                r#"
    table inet tcpstate_no_fin {{
        chain input {{
            type filter hook input priority 0; policy accept;
            tcp dport {port} tcp flags & fin == fin drop
        }}
    }}
    "#
            ),
        );
        let shutting = Instant::now();
        client.shutdown(Shutdown::Write).unwrap();
        let shut = Instant::now();
        thread::sleep(Duration::from_millis(300));
        drop(client);
        thread::sleep(Duration::from_millis(300));
        // The FIN gets through at its next retransmission (0.8 s or so after the shutdown), and
        // its ACK moves the client (orphaned by now: a timewait socket) to FIN_WAIT2.
        let removing = Instant::now();
        rules.remove();
        until_ss(&netns, WAIT, "the FIN through and acknowledged", |listed| {
            ss_count(listed, "CLOSE-WAIT", port) == 1 && ss_count(listed, "FIN-WAIT-2", port) == 1
        });
        let acknowledged = Instant::now();
        let mut want = expect(&handshakes(1));
        want.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "ESTABLISHED", "FIN_WAIT1", 1),
            ("client", "FIN_WAIT1", "FIN_WAIT2", 1),
            ("server", "ESTABLISHED", "CLOSE_WAIT", 1),
        ]));
        let after = until_transitions(&daemon, &before, port, &want, WAIT);
        // FIN_WAIT1 lasted from the shutdown until the FIN's acknowledgement, after the rule went.
        let fin_wait1 = edge("FIN_WAIT1", "FIN_WAIT2", "client", "25022");
        assert_durations(&after, &before, &fin_wait1, 1, (0.5, f64::INFINITY));
        assert_mean_duration(
            &after,
            &before,
            &fin_wait1,
            1,
            (
                (removing - shut).as_secs_f64(),
                (acknowledged - shutting).as_secs_f64(),
            ),
        );
        drop(server);
    });
}

// ---- IPv6 ---------------------------------------------------------------------------------

/// The logical view on IPv6: an orphaned FIN_WAIT2 and the TIME_WAIT after it, from timewait
/// sockets of the other family, counted as ss lists them.
#[test]
#[ignore = "needs root, ip netns and nft: see the module documentation"]
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
        let v6 = |state: &str, role: &str, metrics: &Metrics| {
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
        want.extend(expect(&[
            ("listener", "LISTEN", "CLOSE", 1),
            ("client", "ESTABLISHED", "FIN_WAIT1", 1),
            ("client", "FIN_WAIT1", "FIN_WAIT2", 1),
            ("client", "FIN_WAIT2", "TIME_WAIT", 1),
            ("server", "ESTABLISHED", "CLOSE_WAIT", 1),
            ("server", "CLOSE_WAIT", "LAST_ACK", 1),
            ("server", "LAST_ACK", "CLOSE", 1),
        ]));
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
