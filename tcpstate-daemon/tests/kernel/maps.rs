//! Where records and counts live when the fast places are full: sockets past the slot table in
//! socket-local storage, transitions past the fast slots in the hash map, and records whose last
//! events never came, found and released.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::support::{
    Daemon, Exposition, eventually, expect, read_to_eof, rerun_once_after_unrecorded_events,
    sockets, until_transitions,
};
use crate::{CLIENT_CLOSES, WAIT, client_closes_first};

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
            read_to_eof(server, WAIT);
        }
        let half_closed = |m: &Exposition| {
            (
                sockets(m, "FIN_WAIT2", port, "client"),
                sockets(m, "CLOSE_WAIT", port, "server"),
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
            read_to_eof(client, WAIT);
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
        assert_server_durations_and_no_failures(&after, &before, "24010", CONNECTIONS);
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
        assert_server_durations_and_no_failures(&after, &before, "24012", CONNECTIONS);
        let in_map = after.sum("tcpstate_map_entries", &[("map", "TRANSITIONS")]);
        assert!(in_map >= 10.0, "{in_map} keys in the hash map");
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

    let undelivered = |m: &Exposition| {
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
            sockets(&after, state, port, "server") - sockets(&before, state, port, "server"),
            -1.0,
            "{state}"
        );
    }
    // Without its record, a timewait socket whose port has no listener is a client's.
    eventually(WAIT, || {
        after = daemon.scrape();
        sockets(&after, "TIME_WAIT", port, "server") == 1.0
    });
    assert_eq!(
        sockets(&after, "TIME_WAIT", port, "server"),
        1.0,
        "the timewait socket has the record's labels"
    );
}

/// Every server transition of `connections` client-first closes to `port` after the first (4 of
/// 5) has its duration, and nothing went unrecorded.
fn assert_server_durations_and_no_failures(
    after: &Exposition,
    before: &Exposition,
    port: &str,
    connections: u64,
) {
    let server = [("port", port), ("role", "server")];
    assert_eq!(
        after.delta(before, "tcpstate_state_duration_seconds_count", &server),
        (4 * connections) as f64,
        "every server transition after the first has its duration"
    );
    assert_eq!(
        after.sum("tcpstate_recording_failures_total", &[]),
        0.0,
        "recording failures"
    );
}
