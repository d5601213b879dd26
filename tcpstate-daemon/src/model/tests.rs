use tcpstate_common::{MAX_BUCKETS, TcpState::*, family, role};

use super::*;
use tcpstate_common::{
    EventKey, TransitionKey, TransitionStats, counter, event_kind, recorder, transition_detail,
    transition_flag,
};
use transition_flag::{DURATION_OBSERVED, FROM_TRACKED, INFERRED, TO_TRACKED};

const CLIENT: Labels = Labels {
    port: 443,
    family: family::IPV4,
    role: role::CLIENT,
    cgroup: 0,
};
const NORMAL: u8 = FROM_TRACKED | TO_TRACKED | DURATION_OBSERVED;

fn entry(
    from: tcpstate_common::TcpState,
    to: tcpstate_common::TcpState,
    flags: u8,
    rec: u8,
    count: u64,
) -> (TransitionKey, TransitionStats) {
    let mut stats = TransitionStats::ZERO;
    stats.count = count;
    if flags & DURATION_OBSERVED != 0 {
        stats.duration_sum_ns = count * 1_000;
        stats.duration_buckets[1] = count;
    }
    let key = TransitionKey {
        labels: CLIENT,
        from: from as u8,
        to: to as u8,
        flags,
        recorder: rec,
        detail: 0,
        _padding: [0; 3],
    };
    (key, stats)
}

fn edge(from: tcpstate_common::TcpState, to: tcpstate_common::TcpState) -> EdgeKey {
    EdgeKey::new(CLIENT, from as u8, to as u8)
}

#[test]
fn a_client_life_gives_transitions_durations_and_no_leftover_gauge() {
    let entries = [
        entry(Close, SynSent, TO_TRACKED, recorder::PRIMARY, 3),
        entry(SynSent, Established, NORMAL, recorder::PRIMARY, 2),
        entry(SynSent, Established, NORMAL, recorder::NESTED, 1),
        entry(Established, FinWait1, NORMAL, recorder::PRIMARY, 2),
        entry(FinWait1, FinWait2, NORMAL, recorder::PRIMARY, 2),
        entry(
            FinWait2,
            Close,
            FROM_TRACKED | DURATION_OBSERVED,
            recorder::PRIMARY,
            2,
        ),
    ];
    let out = aggregate(&entries, 3, View::Raw);
    assert_eq!(
        out.transitions[&edge(SynSent, Established)],
        3,
        "recorders are merged"
    );
    assert_eq!(out.transitions[&edge(Close, SynSent)], 3);
    assert!(
        !out.durations.contains_key(&edge(Close, SynSent)),
        "no duration for CLOSE"
    );
    let handshake = &out.durations[&edge(SynSent, Established)];
    assert_eq!((handshake.count, handshake.sum_ns), (3, 3_000));
    assert_eq!(handshake.buckets, [0, 3, 0]);
    assert_eq!(handshake.cumulative(), [0, 3, 3]);
    // One connection still established, nothing else open.
    assert_eq!(out.sockets[&StateKey::new(CLIENT, Established as u8)], 1);
    assert_eq!(out.sockets[&StateKey::new(CLIENT, SynSent as u8)], 0);
    assert_eq!(out.sockets[&StateKey::new(CLIENT, FinWait2 as u8)], 0);
    assert!(
        !out.sockets
            .contains_key(&StateKey::new(CLIENT, Close as u8))
    );
}

#[test]
fn first_seen_sockets_count_their_transition_but_no_duration() {
    let entries = [entry(
        Established,
        FinWait1,
        TO_TRACKED,
        recorder::PRIMARY,
        5,
    )];
    let out = aggregate(&entries, MAX_BUCKETS, View::Raw);
    assert_eq!(out.transitions[&edge(Established, FinWait1)], 5);
    assert!(out.durations.is_empty());
    assert_eq!(out.sockets[&StateKey::new(CLIENT, FinWait1 as u8)], 5);
    assert!(
        !out.sockets
            .contains_key(&StateKey::new(CLIENT, Established as u8)),
        "never counted there"
    );
}

#[test]
fn inferred_transitions_move_gauges_but_are_not_exported() {
    let entries = [
        entry(Close, SynSent, TO_TRACKED, recorder::PRIMARY, 1),
        // SYN_SENT -> ESTABLISHED was missed; the next event leaves ESTABLISHED.
        entry(
            SynSent,
            Established,
            FROM_TRACKED | TO_TRACKED | INFERRED,
            recorder::PRIMARY,
            1,
        ),
        entry(
            Established,
            FinWait1,
            FROM_TRACKED | TO_TRACKED,
            recorder::PRIMARY,
            1,
        ),
    ];
    let out = aggregate(&entries, 3, View::Raw);
    assert_eq!(out.inferred_transitions, 1);
    assert!(!out.transitions.contains_key(&edge(SynSent, Established)));
    assert_eq!(out.sockets[&StateKey::new(CLIENT, SynSent as u8)], 0);
    assert_eq!(out.sockets[&StateKey::new(CLIENT, Established as u8)], 0);
    assert_eq!(out.sockets[&StateKey::new(CLIENT, FinWait1 as u8)], 1);
}

#[test]
fn per_cpu_values_and_counter_blocks_sum() {
    let (_, a) = entry(SynSent, Established, NORMAL, 0, 2);
    let (_, b) = entry(SynSent, Established, NORMAL, 0, 5);
    let total = sum_over_cpus([&a, &b]);
    assert_eq!(
        (
            total.count,
            total.duration_sum_ns,
            total.duration_buckets[1]
        ),
        (7, 7_000, 7)
    );

    let mut slots = vec![0u64; counter::SLOTS as usize];
    slots[counter::RECORDS_CREATED as usize] = 10;
    slots[(counter::COUNT + counter::RECORDS_CREATED) as usize] = 2;
    slots[counter::RECORDS_DELETED as usize] = 7;
    slots[(counter::COUNT + counter::NESTED_EVENTS_RECORDED) as usize] = 4;
    let counters = Counters::from_slots(&slots);
    assert_eq!(counters.records_created, 12);
    assert_eq!(counters.tracked_sockets(), 5);
    assert_eq!(counters.nested_events_recorded, 4);
    assert_eq!(events_lost(6, counters.nested_events_recorded), 2);
    assert_eq!(events_lost(3, 4), 0);
}

fn with_detail(
    mut entry: (TransitionKey, TransitionStats),
    detail: u8,
) -> (TransitionKey, TransitionStats) {
    entry.0.detail = detail;
    entry
}

#[test]
fn logical_view_hands_active_closes_to_time_wait() {
    use transition_detail::*;
    let entries = [
        with_detail(
            entry(FinWait2, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 4),
            TIME_WAIT_HANDOFF,
        ),
        with_detail(
            entry(Closing, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 1),
            TIME_WAIT_HANDOFF,
        ),
        // Orphans: FIN_WAIT1 -> (timewait FIN_WAIT2) is FIN_WAIT1 -> FIN_WAIT2; FIN_WAIT2 ->
        // (timewait FIN_WAIT2) is no transition at all.
        with_detail(
            entry(FinWait1, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 2),
            FIN_WAIT2_HANDOFF,
        ),
        with_detail(
            entry(FinWait2, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 3),
            FIN_WAIT2_HANDOFF,
        ),
        with_detail(
            entry(Established, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 5),
            NONE,
        ),
    ];
    let logical = aggregate(&entries, 3, View::Logical);
    assert_eq!(logical.transitions[&edge(FinWait2, TimeWait)], 4);
    assert_eq!(logical.transitions[&edge(Closing, TimeWait)], 1);
    assert_eq!(logical.transitions[&edge(FinWait1, FinWait2)], 2);
    assert_eq!(logical.transitions[&edge(Established, Close)], 5);
    assert!(!logical.transitions.contains_key(&edge(FinWait2, Close)));
    assert_eq!(logical.durations[&edge(FinWait2, TimeWait)].count, 4);
    assert!(
        !logical.durations.contains_key(&edge(FinWait2, Close)),
        "near-zero handoff time dropped"
    );

    let raw = aggregate(&entries, 3, View::Raw);
    assert_eq!(raw.transitions[&edge(FinWait2, Close)], 7);
    assert_eq!(raw.transitions[&edge(FinWait1, Close)], 2);
    assert!(!raw.transitions.contains_key(&edge(FinWait2, TimeWait)));
    // Gauges do not depend on the view.
    assert_eq!(raw.sockets, logical.sockets);
}

#[test]
fn a_state_set_again_is_only_in_the_raw_view() {
    let entries = [entry(FinWait1, FinWait1, FROM_TRACKED | TO_TRACKED, 0, 2)];
    assert!(aggregate(&entries, 3, View::Logical).transitions.is_empty());
    assert_eq!(
        aggregate(&entries, 3, View::Raw).transitions[&edge(FinWait1, FinWait1)],
        2
    );
    assert_eq!(
        aggregate(&entries, 3, View::Raw).sockets[&StateKey::new(CLIENT, FinWait1 as u8)],
        0
    );
}

#[test]
fn connect_failures_by_reason() {
    use transition_detail::*;
    let entries = [
        with_detail(
            entry(SynSent, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 2),
            CONNECT_REFUSED,
        ),
        with_detail(
            entry(SynSent, Close, FROM_TRACKED | DURATION_OBSERVED, 1, 1),
            CONNECT_REFUSED,
        ),
        with_detail(
            entry(SynSent, Close, FROM_TRACKED | DURATION_OBSERVED, 0, 3),
            CONNECT_TIMEOUT,
        ),
    ];
    let out = aggregate(&entries, 3, View::Logical);
    assert_eq!(
        out.connect_failures[&ReasonKey {
            labels: CLIENT,
            detail: CONNECT_REFUSED,
        }],
        3
    );
    assert_eq!(
        out.connect_failures[&ReasonKey {
            labels: CLIENT,
            detail: CONNECT_TIMEOUT,
        }],
        3
    );
    assert_eq!(out.transitions[&edge(SynSent, Close)], 6);
    assert_eq!(
        [
            CONNECT_REFUSED,
            CONNECT_TIMEOUT,
            CONNECT_RESET,
            CONNECT_OTHER,
            NONE
        ]
        .map(connect_failure_reason),
        ["refused", "timeout", "reset", "other", "other"]
    );
}

#[test]
fn gauges_add_the_kernels_the_baselines_and_the_censuss_sockets() {
    let key = StateKey::new(CLIENT, Established as u8);
    // 4 sockets first seen leaving ESTABLISHED (the baseline no longer holds them).
    let entries = [entry(Established, FinWait1, TO_TRACKED, 0, 4)];
    let kernel = aggregate(&entries, 3, View::Logical);
    let baseline = BTreeMap::from([(key, 6)]);
    let census = BTreeMap::from([(StateKey::new(CLIENT, TimeWait as u8), 2)]);
    let sockets = sockets_now(&kernel, &baseline, &census);
    assert_eq!(sockets[&key], 6);
    assert_eq!(sockets[&StateKey::new(CLIENT, FinWait1 as u8)], 4);
    assert_eq!(sockets[&StateKey::new(CLIENT, TimeWait as u8)], 2);
}

#[test]
fn events_split_by_kind() {
    let key = |kind, state| EventKey {
        labels: CLIENT,
        kind,
        state,
        _padding: [0; 6],
    };
    let out = events(&[
        (key(event_kind::RESET_SENT, 1), 2),
        (key(event_kind::RESET_RECEIVED, 1), 3),
        (key(event_kind::SYNACK_RETRANSMIT, 12), 4),
    ]);
    assert_eq!(out.resets_sent[&StateKey::new(CLIENT, 1)], 2);
    assert_eq!(out.resets_received[&StateKey::new(CLIENT, 1)], 3);
    assert_eq!(out.synack_retransmits[&CLIENT], 4);
}
