use tcpstate_common::{
    Labels, OTHER_PORT, SocketRecord, TimewaitHandoff, role,
    state::{CLOSE, ESTABLISHED, NEW_SYN_RECV},
};

use super::{stale::STALE_RECORD_DELAY_NS, *};
use crate::bpf::socket_slots::SlotSweep as _;

const SECOND: u64 = 1_000_000_000;
const START: u64 = 1_000 * SECOND;
/// The daemon's network namespace.
const NET: u32 = 4026531833;

fn ports() -> PortSet {
    let mut ports = PortSet::EMPTY;
    ports.insert(443);
    ports
}

fn census() -> Census {
    Census::new(
        ports(),
        vec![SECOND / 10, SECOND / 2, SECOND, 30 * SECOND, 61 * SECOND],
        START,
        NET,
        Baseline::default(),
    )
}

fn tw(state: u8, cookie: u64, expires_ms: u32) -> DiagSocket {
    DiagSocket {
        family: 2,
        state,
        timewait: true,
        local_port: 40000,
        remote_port: 443,
        cookie,
        expires_ms,
        ..DiagSocket::default()
    }
}

fn listener(port: u16, queue: u32, limit: u32) -> DiagSocket {
    DiagSocket {
        state: LISTEN,
        timewait: false,
        local_port: port,
        remote_port: 0,
        receive_queue: queue,
        send_queue: limit,
        ..tw(LISTEN, 1, 0)
    }
}

fn client() -> Labels {
    Labels {
        port: 443,
        family: 2,
        role: role::CLIENT,
        cgroup: 0,
    }
}

fn edge(from: u8, to: u8) -> EdgeKey {
    EdgeKey::new(client(), from, to)
}

/// A poll whose sockets were all read at `now`.
fn poll(census: &mut Census, sockets: &[DiagSocket], now: u64) {
    let seen: Vec<DiagSocket> = sockets
        .iter()
        .map(|s| DiagSocket { seen_ns: now, ..*s })
        .collect();
    census.observe(&seen, &[], now, now);
}

fn handoff(state: u8, entered_ns: u64) -> TimewaitHandoff {
    TimewaitHandoff {
        entered_ns,
        labels: client(),
        state,
        _padding: [0; 3],
        net_inode: NET,
    }
}

#[test]
fn time_wait_is_counted_and_its_end_timed_by_the_timer() {
    let mut census = census();
    // Entered TIME_WAIT 2 s after start (58 s left on a 60 s timer at START + 2 s + 0).
    poll(&mut census, &[tw(TIME_WAIT, 7, 58_000)], START + 2 * SECOND);
    assert_eq!(census.sockets_now()[&StateKey::new(client(), TIME_WAIT)], 1);
    poll(
        &mut census,
        &[tw(TIME_WAIT, 7, 30_000)],
        START + 30 * SECOND,
    );
    // Gone at START + 90 s; its timer said it would end at START + 60 s.
    poll(&mut census, &[], START + 90 * SECOND);
    assert_eq!(census.transitions()[&edge(TIME_WAIT, CLOSE)], 1);
    let histogram = &census.durations()[&edge(TIME_WAIT, CLOSE)];
    assert_eq!((histogram.count, histogram.sum_ns), (1, 60 * SECOND));
    assert_eq!(histogram.buckets, [0, 0, 0, 0, 1]);
    assert!(
        !census
            .sockets_now()
            .contains_key(&StateKey::new(client(), TIME_WAIT))
    );
}

#[test]
fn orphaned_fin_wait2_ends_when_the_timer_restarts() {
    let mut census = census();
    let entered = START + 10 * SECOND;
    census.add_handoff(9, handoff(FIN_WAIT2, entered));
    // Seen in FIN_WAIT2, then in TIME_WAIT with 59.7 s left: the FIN came 300 ms after entry.
    poll(
        &mut census,
        &[tw(FIN_WAIT2, 9, 59_990)],
        entered + SECOND / 100,
    );
    assert_eq!(census.sockets_now()[&StateKey::new(client(), FIN_WAIT2)], 1);
    poll(
        &mut census,
        &[tw(TIME_WAIT, 9, 59_700)],
        entered + 6 * SECOND / 10,
    );
    assert_eq!(census.transitions()[&edge(FIN_WAIT2, TIME_WAIT)], 1);
    let histogram = &census.durations()[&edge(FIN_WAIT2, TIME_WAIT)];
    assert_eq!(histogram.sum_ns, 3 * SECOND / 10);
    assert_eq!(histogram.buckets, [0, 1, 0, 0, 0]);
    assert_eq!(census.sockets_now()[&StateKey::new(client(), TIME_WAIT)], 1);
}

#[test]
fn an_orphan_first_seen_in_time_wait_still_gets_its_fin_wait2() {
    let mut census = census();
    let entered = START + SECOND;
    census.add_handoff(5, handoff(FIN_WAIT2, entered));
    poll(
        &mut census,
        &[tw(TIME_WAIT, 5, 59_000)],
        entered + 2 * SECOND,
    );
    let histogram = &census.durations()[&edge(FIN_WAIT2, TIME_WAIT)];
    assert_eq!(histogram.sum_ns, SECOND);
}

#[test]
fn an_orphans_handoff_taken_after_its_socket_was_polled_in_time_wait_counts_its_fin_wait2() {
    let mut census = census();
    let entered = START + SECOND;
    // The poll lists the timewait socket (59 s left: in TIME_WAIT since START + 2 s) before
    // the sweep takes its handoff; then the handoff says it was an orphan's FIN_WAIT2.
    poll(&mut census, &[tw(TIME_WAIT, 5, 59_000)], START + 3 * SECOND);
    assert!(
        !census
            .transitions()
            .contains_key(&edge(FIN_WAIT2, TIME_WAIT))
    );
    census.add_handoff(5, handoff(FIN_WAIT2, entered));
    census.add_handoff(5, handoff(FIN_WAIT2, entered));
    assert_eq!(census.transitions()[&edge(FIN_WAIT2, TIME_WAIT)], 1);
    assert_eq!(
        census.durations()[&edge(FIN_WAIT2, TIME_WAIT)].sum_ns,
        SECOND
    );
    // One first polled in FIN_WAIT2 had its exit counted when the poll saw it move.
    poll(&mut census, &[tw(FIN_WAIT2, 6, 59_900)], START + 4 * SECOND);
    poll(&mut census, &[tw(TIME_WAIT, 6, 59_800)], START + 5 * SECOND);
    census.add_handoff(6, handoff(FIN_WAIT2, entered));
    assert_eq!(census.transitions()[&edge(FIN_WAIT2, TIME_WAIT)], 2);
}

#[test]
fn handoffs_give_labels_and_exact_starts_and_wait_two_polls() {
    let mut census = census();
    // A server socket's connection, on a port without a listener any more: inference would
    // call it a client's; its record says otherwise.
    let server = Labels {
        role: role::SERVER,
        ..client()
    };
    let entered = START + SECOND;
    census.add_handoff(
        11,
        TimewaitHandoff {
            labels: server,
            ..handoff(TIME_WAIT, entered)
        },
    );
    census.add_handoff(12, handoff(TIME_WAIT, entered));
    poll(
        &mut census,
        &[tw(TIME_WAIT, 11, 59_000)],
        entered + 2 * SECOND,
    );
    assert_eq!(census.sockets_now()[&StateKey::new(server, TIME_WAIT)], 1);
    // A record that arrives after its socket was first polled relabels it.
    poll(
        &mut census,
        &[tw(TIME_WAIT, 11, 58_000), tw(TIME_WAIT, 13, 59_500)],
        entered + 3 * SECOND,
    );
    census.add_handoff(
        13,
        TimewaitHandoff {
            labels: server,
            ..handoff(TIME_WAIT, entered + 2 * SECOND)
        },
    );
    // Record 12 was never matched: counted ended after two polls, without a duration.
    assert!(census.timewait.namespaces[&NET].handoffs.is_empty());
    assert_eq!(census.transitions()[&edge(TIME_WAIT, CLOSE)], 1);
    assert!(!census.durations().contains_key(&edge(TIME_WAIT, CLOSE)));
    poll(&mut census, &[], START + 100 * SECOND);
    let histogram = &census.durations()[&EdgeKey::new(server, TIME_WAIT, CLOSE)];
    // Ended when their timers said: 11 entered at START + 1 s and ended at START + 62 s (58 s
    // left at START + 4 s); 13 entered at START + 3 s and ended at START + 63.5 s.
    assert_eq!(
        (histogram.count, histogram.sum_ns),
        (2, 61 * SECOND + 60_500_000_000)
    );
}

#[test]
fn sockets_older_than_the_daemon_get_no_duration() {
    let mut census = census();
    // 10 s left at START + 1 s: entered TIME_WAIT 49 s before the daemon started.
    poll(&mut census, &[tw(TIME_WAIT, 3, 10_000)], START + SECOND);
    poll(&mut census, &[], START + 20 * SECOND);
    assert_eq!(census.transitions()[&edge(TIME_WAIT, CLOSE)], 1);
    assert!(census.durations().is_empty());
}

/// When each followed timewait and request socket entered its state, by cookie.
fn entries(census: &Census) -> BTreeMap<u64, (u8, Option<u64>)> {
    let mut entries = BTreeMap::new();
    census.for_each_polled_socket(|_, cookie, _, state, entered_ns| {
        entries.insert(cookie, (state, entered_ns));
    });
    entries
}

#[test]
fn ages_come_from_handoffs_else_from_the_timers() {
    let mut census = census();
    census.add_handoff(4, handoff(TIME_WAIT, START + 2 * SECOND + SECOND / 3));
    // Read at START + 5 s: socket 3 (10 s left) entered TIME_WAIT 50 s earlier, before the
    // daemon started: no duration, but its age. Socket 4's handoff is exact (to the ns, where
    // its timer says 57.333 s left). The FIN_WAIT2 one waits for its namespace's
    // tcp_fin_timeout, which this poll did not read.
    let at = START + 5 * SECOND;
    poll(
        &mut census,
        &[
            tw(TIME_WAIT, 3, 10_000),
            tw(TIME_WAIT, 4, 57_333),
            tw(FIN_WAIT2, 5, 40_000),
        ],
        at,
    );
    let entries = entries(&census);
    assert_eq!(entries[&3], (TIME_WAIT, Some(at - 50 * SECOND)));
    assert_eq!(
        entries[&4],
        (TIME_WAIT, Some(START + 2 * SECOND + SECOND / 3))
    );
    assert_eq!(entries[&5], (FIN_WAIT2, None));
}

#[test]
fn listeners_queues_and_request_sockets_by_port() {
    let mut census = census();
    let request = DiagSocket {
        state: NEW_SYN_RECV,
        timewait: false,
        local_port: 443,
        remote_port: 50000,
        ..tw(NEW_SYN_RECV, 4, 900)
    };
    census.observe(
        &[
            listener(443, 2, 2),
            listener(443, 1, 2),
            listener(8080, 0, 4096),
        ],
        &[request, request],
        START,
        START,
    );
    assert_eq!(
        census.listen_queues()[&ListenKey {
            port: 443,
            cgroup: 0
        }],
        ListenQueue {
            length: 3,
            limit: 4
        }
    );
    assert_eq!(
        census.listen_queues()[&ListenKey {
            port: OTHER_PORT,
            cgroup: 0
        }],
        ListenQueue {
            length: 0,
            limit: 4096
        }
    );
    let server = Labels {
        port: 443,
        family: 2,
        role: role::SERVER,
        cgroup: 0,
    };
    assert_eq!(
        census.sockets_now()[&StateKey::new(server, NEW_SYN_RECV)],
        2
    );
}

fn server() -> Labels {
    Labels {
        role: role::SERVER,
        ..client()
    }
}

/// A live record of this namespace's socket `cookie`, in `state` since `entered_ns`.
fn record(cookie: u64, state: u8, entered_ns: u64) -> SocketRecord {
    SocketRecord {
        entered_ns,
        labels: server(),
        cookie,
        state,
        net_inode: NET,
        ..SocketRecord::default()
    }
}

#[test]
fn a_record_left_behind_by_a_socket_in_timewait_is_released_and_counted() {
    let mut census = census();
    // The kernel never delivered FIN_WAIT1 -> FIN_WAIT2 -> CLOSE of a server's socket: its
    // record stays in FIN_WAIT1 while a poll finds its timewait socket, without handoff.
    let polled = START + 2 * SECOND;
    poll(&mut census, &[tw(TIME_WAIT, 21, 59_000)], polled);
    assert_eq!(census.sockets_now()[&StateKey::new(client(), TIME_WAIT)], 1);
    // Another namespace's record: the timewait socket, found by cookie, is proof enough.
    let left_behind = SocketRecord {
        net_inode: NET + 1,
        ..record(21, FIN_WAIT1, START + SECOND)
    };
    // Too soon after the poll (the full socket's CLOSE may be microseconds away): a live
    // record is left alone.
    let sweep = census.record_sweep(polled + STALE_RECORD_DELAY_NS / 2);
    assert!(!sweep.is_stale(&left_behind));
    drop(sweep);
    let mut sweep = census.record_sweep(polled + STALE_RECORD_DELAY_NS);
    assert!(sweep.is_stale(&left_behind));
    assert!(!sweep.is_stale(&SocketRecord {
        cookie: 22,
        ..left_behind
    }));
    sweep.release_stale(left_behind);
    assert_eq!(census.undelivered_closes(), 1);
    let sockets = census.sockets_now();
    assert_eq!(sockets[&StateKey::new(server(), FIN_WAIT1)], -1);
    // The timewait socket takes the record's labels.
    assert_eq!(sockets[&StateKey::new(server(), TIME_WAIT)], 1);
    assert_eq!(sockets[&StateKey::new(client(), TIME_WAIT)], 0);
    // Each timewait socket is checked once.
    assert!(!census.record_sweep(polled + SECOND).is_stale(&left_behind));
}

#[test]
fn a_record_whose_socket_two_polls_did_not_list_is_released() {
    let mut census = census();
    let listed = |cookie| DiagSocket {
        state: LAST_ACK,
        timewait: false,
        ..tw(LAST_ACK, cookie, 0)
    };
    let first = START + 5 * SECOND;
    census.observe(&[listed(31), listed(33)], &[], first, first + SECOND / 10);
    // One poll proves nothing: a dump may skip a socket.
    let gone = record(30, LAST_ACK, first - SECOND);
    assert!(!census.record_sweep(first + SECOND).is_stale(&gone));
    // The second dump skips socket 33.
    let second = first + 2 * SECOND;
    census.observe(&[listed(31)], &[], second, second + SECOND / 10);
    // Too soon after the last poll.
    assert!(!census.record_sweep(second + SECOND / 20).is_stale(&gone));
    let mut sweep = census.record_sweep(second + SECOND);
    // Gone: in a polled state since before both polls started, listed by neither.
    assert!(sweep.may_be_stale(30, LAST_ACK) && sweep.is_stale(&gone));
    // The sweep reads an ESTABLISHED record no further.
    assert!(!sweep.may_be_stale(30, ESTABLISHED));
    // Listed by one poll or both; entered its state after the first poll started; in a
    // state polls do not list; another namespace's: all left alone.
    assert!(!sweep.is_stale(&record(31, LAST_ACK, first - SECOND)));
    assert!(!sweep.is_stale(&record(33, LAST_ACK, first - SECOND)));
    assert!(!sweep.is_stale(&record(30, LAST_ACK, first + 1)));
    assert!(!sweep.is_stale(&record(30, ESTABLISHED, START)));
    assert!(!sweep.is_stale(&SocketRecord {
        net_inode: NET + 1,
        ..gone
    }));
    sweep.release_stale(gone);
    assert_eq!(census.undelivered_closes(), 1);
    assert_eq!(census.sockets_now()[&StateKey::new(server(), LAST_ACK)], -1);
}

#[test]
fn timewait_of_a_listening_port_is_the_servers() {
    let mut census = census();
    let server_tw = DiagSocket {
        local_port: 443,
        remote_port: 50000,
        ..tw(TIME_WAIT, 8, 59_000)
    };
    census.observe(
        &[listener(443, 0, 128), server_tw],
        &[],
        START + SECOND,
        START + SECOND,
    );
    let server = Labels {
        port: 443,
        family: 2,
        role: role::SERVER,
        cgroup: 0,
    };
    assert_eq!(census.sockets_now()[&StateKey::new(server, TIME_WAIT)], 1);
}

#[test]
fn sockets_older_than_the_daemon_that_two_polls_did_not_list_leave_the_baseline() {
    let unknown = Labels {
        role: role::UNKNOWN,
        ..client()
    };
    let mut listing = baseline::FirstListing::new(NET);
    listing.add(40, unknown, LAST_ACK);
    listing.add(41, unknown, LAST_ACK);
    listing.add(42, unknown, ESTABLISHED);
    let mut census = Census {
        baseline: listing.confirm([40, 41, 42]),
        ..census()
    };
    let listed = |cookie| DiagSocket {
        state: LAST_ACK,
        timewait: false,
        ..tw(LAST_ACK, cookie, 0)
    };
    let first = START + 5 * SECOND;
    census.observe(&[listed(41)], &[], first, first + SECOND / 10);
    // One poll proves nothing.
    census
        .record_sweep(first + SECOND)
        .release_vanished_baseline();
    assert_eq!(census.baseline.len(), 3);
    let second = first + 2 * SECOND;
    census.observe(&[], &[], second, second + SECOND / 10);
    census
        .record_sweep(second + SECOND)
        .release_vanished_baseline();
    // 40: listed by neither poll; 41: by the first; 42: ESTABLISHED, which polls do not list.
    assert_eq!(census.baseline.len(), 2);
    assert_eq!(
        census.baseline.counts()[&StateKey::new(unknown, LAST_ACK)],
        1
    );
    assert_eq!(census.undelivered_closes(), 1);
}
