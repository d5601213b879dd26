//! Opening a connection when segments are lost or the listener cannot keep up: a SYN dropped
//! once, SYNs always dropped (a timeout, told apart from a refusal), the handshake's final ACK
//! dropped (a request socket retransmitting its SYN-ACK), a full accept queue.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::checks::{assert_durations, edge, relevant, ss_count, until_metrics, until_ss};
use crate::support::{
    Exposition, Netns, expect, handshakes, rerun_once_after_unrecorded_events, sockets,
    until_transitions,
};
use crate::traffic::{accept, at, connect, connect_in_background, drop_bare_acks, listen};
use crate::{WAIT, start};

// ---- 1. SYN dropped once ------------------------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
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
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
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
            crate::support::set_tcp_syncnt(&socket, 1);
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
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn lost_final_ack_leaves_a_request_socket_that_retransmits_its_syn_ack() {
    rerun_once_after_unrecorded_events(|| {
        let port = 25004;
        let netns = Netns::new(port);
        let daemon = start(&netns, &[port], &[0.5, 5.0], &[]);
        // Bare ACKs to the listener's port are lost: a request socket waits.
        let rules = drop_bare_acks(&netns, "tcpstate_no_ack", port);
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
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
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

        let gauges = |metrics: &Exposition| {
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
