//! Resets, counted by the state they hit: an abort and a refused connect.

use std::{
    io::{ErrorKind, Read as _},
    net::TcpStream,
    time::Duration,
};

use socket2::SockRef;

use crate::checks::relevant;
use crate::support::{
    Netns, expect, handshakes, rerun_once_after_unrecorded_events, until_transitions,
};
use crate::traffic::{accept, at, connect, listen};
use crate::{WAIT, start};

// ---- Resets -------------------------------------------------------------------------------

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
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
