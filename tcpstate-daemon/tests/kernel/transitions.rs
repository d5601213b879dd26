//! The sequences of transitions the logical and the raw views export for whole connections:
//! closed by either side, aborted, refused, over IPv6.

use std::{
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use crate::support::{
    Daemon, expect, handshakes, read_to_eof, rerun_once_after_unrecorded_events, until_transitions,
};
use crate::{CLIENT_CLOSES, WAIT, abort, client_closes_first, connected_pair, expected};

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn connection_closed_by_the_client() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24001;
        let daemon = Daemon::watching(&[port]);
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
        let daemon = Daemon::watching(&[port]);
        let before = daemon.scrape();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let (listener, mut client, mut server) = connected_pair(listen);
        server.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut client, WAIT); // client in CLOSE_WAIT
        drop(client);
        read_to_eof(&mut server, WAIT);
        drop(server);
        drop(listener);
        let mut want = expect(&handshakes(1));
        want.extend(expected(&[
            ("server", "ESTABLISHED", "FIN_WAIT1"),
            ("client", "ESTABLISHED", "CLOSE_WAIT"),
            ("server", "FIN_WAIT1", "FIN_WAIT2"),
            ("client", "CLOSE_WAIT", "LAST_ACK"),
            ("server", "FIN_WAIT2", "TIME_WAIT"),
            ("client", "LAST_ACK", "CLOSE"),
            ("listener", "LISTEN", "CLOSE"),
        ]));
        until_transitions(&daemon, &before, port, &want, WAIT);
    });
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn abort_with_linger_zero_resets_both_sides() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24003;
        let daemon = Daemon::watching(&[port]);
        let before = daemon.scrape();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        abort(listen);
        let mut want = expect(&handshakes(1));
        want.extend(expected(&[
            ("client", "ESTABLISHED", "CLOSE"),
            ("server", "ESTABLISHED", "CLOSE"),
            ("listener", "LISTEN", "CLOSE"),
        ]));
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
        let daemon = Daemon::watching(&[port]);
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
        let daemon = Daemon::watching(&[port]);
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
