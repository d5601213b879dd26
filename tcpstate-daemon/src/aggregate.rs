//! Turns the kernel's raw aggregates into the figures the metrics export. Pure logic: no maps,
//! no syscalls.
//!
//! The kernel keeps one entry per (labels, from, to, flags, recorder); the flags say what each
//! transition did to the per-state gauges (see `tcpstate_common::transition_flag`). Here the
//! entries are merged over flags and recorders into transitions, histograms and gauges.

use std::collections::BTreeMap;
use tcpstate_common::state::{CLOSE, FIN_WAIT1, FIN_WAIT2, SYN_SENT, TIME_WAIT};

use tcpstate_common::{
    EventKey, Labels, TransitionKey, TransitionStats, counter, event_kind, recorder,
    transition_detail, transition_flag,
};

/// Which sequence `tcpstate_transitions_total` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// TCP's state machine (RFC 9293): the active closer goes `... -> TIME_WAIT`, then
    /// `TIME_WAIT -> CLOSE` when its timewait socket ends; an orphaned FIN_WAIT2 lasts until the
    /// peer's FIN.
    Logical,
    /// The kernel's own `inet_sock_set_state` sequence (full sockets only): the active closer
    /// goes `... -> CLOSE` when a timewait socket takes over.
    Raw,
}

/// A transition edge: kernel state numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Edge {
    pub from: u8,
    pub to: u8,
}

/// A histogram in the daemon's configured buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Non-cumulative counts, one per configured bound.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
}

impl Histogram {
    /// Cumulative counts per configured bound, as Prometheus exposes them.
    pub fn cumulative(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .scan(0u64, |total, count| {
                *total += count;
                Some(*total)
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregates {
    pub transitions: BTreeMap<(Labels, Edge), u64>,
    /// Durations of `edge.from` before moving to `edge.to`.
    pub durations: BTreeMap<(Labels, Edge), Histogram>,
    /// Sockets now in a state (kernel state number).
    pub sockets: BTreeMap<(Labels, u8), i64>,
    /// Transitions the kernel inferred because an event of the socket was missed.
    pub inferred_transitions: u64,
    /// SYN_SENT -> CLOSE by labels and `transition_detail` (the reason).
    pub connect_failures: BTreeMap<(Labels, u8), u64>,
}

/// The logical edge of a kernel transition, or `None` when the logical view has no transition
/// there (an orphaned FIN_WAIT2 handed to a timewait socket stays in FIN_WAIT2).
pub fn logical_edge(key: &TransitionKey) -> Option<Edge> {
    match (key.detail, key.from) {
        (transition_detail::TIME_WAIT_HANDOFF, from) => Some(Edge {
            from,
            to: TIME_WAIT,
        }),
        (transition_detail::FIN_WAIT2_HANDOFF, FIN_WAIT1) => Some(Edge {
            from: FIN_WAIT1,
            to: FIN_WAIT2,
        }),
        (transition_detail::FIN_WAIT2_HANDOFF, _) => None,
        // A state set again (FIN_WAIT1 by close() after shutdown()) is no transition.
        (_, from) if from == key.to => None,
        (_, from) => Some(Edge { from, to: key.to }),
    }
}

/// Merges the kernel's entries (already summed over CPUs). `bucket_count` is the number of
/// configured bounds; the kernel's slots past it are never filled for real bounds.
pub fn aggregate(
    entries: &[(TransitionKey, TransitionStats)],
    bucket_count: usize,
    view: View,
) -> Aggregates {
    let mut out = Aggregates::default();
    for (key, stats) in entries {
        let flags = key.flags;
        let labels = key.labels;
        if flags & transition_flag::FROM_TRACKED != 0 {
            *out.sockets.entry((labels, key.from)).or_default() -= stats.count as i64;
        }
        if flags & transition_flag::TO_TRACKED != 0 {
            *out.sockets.entry((labels, key.to)).or_default() += stats.count as i64;
        }
        if flags & transition_flag::INFERRED != 0 {
            out.inferred_transitions += stats.count;
            continue;
        }
        if key.from == SYN_SENT && key.to == CLOSE {
            *out.connect_failures
                .entry((labels, key.detail))
                .or_default() += stats.count;
        }
        let edge = match view {
            View::Raw => Edge {
                from: key.from,
                to: key.to,
            },
            View::Logical => match logical_edge(key) {
                Some(edge) => edge,
                None => continue,
            },
        };
        *out.transitions.entry((labels, edge)).or_default() += stats.count;
        if flags & transition_flag::DURATION_OBSERVED != 0 {
            let histogram = out
                .durations
                .entry((labels, edge))
                .or_insert_with(|| Histogram {
                    buckets: vec![0; bucket_count],
                    ..Histogram::default()
                });
            histogram.count += stats.count;
            histogram.sum_ns += stats.duration_sum_ns;
            for (total, count) in histogram.buckets.iter_mut().zip(&stats.duration_buckets) {
                *total += count;
            }
        }
    }
    // A gauge cannot be negative; a transient -1 can only come from reading the per-CPU entries
    // while a socket moves between them.
    for value in out.sockets.values_mut() {
        *value = (*value).max(0);
    }
    out
}

/// Sums per-CPU values of one entry.
pub fn sum_over_cpus<'a>(values: impl IntoIterator<Item = &'a TransitionStats>) -> TransitionStats {
    values
        .into_iter()
        .fold(TransitionStats::ZERO, |mut total, cpu| {
            total.count += cpu.count;
            total.duration_sum_ns += cpu.duration_sum_ns;
            for (total, count) in total.duration_buckets.iter_mut().zip(&cpu.duration_buckets) {
                *total += count;
            }
            total
        })
}

/// The kernel's `COUNTERS`, summed over CPUs and recorders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub failed_events_map_full: u64,
    pub failed_handoff_record: u64,
    pub records_created: u64,
    pub records_deleted: u64,
    pub nested_events_recorded: u64,
    pub failed_transitions_map_full: u64,
    pub failed_socket_storage: u64,
    pub failed_unknown_state: u64,
    pub failed_record_delete: u64,
    pub records_in_socket_storage: u64,
    pub failed_first_seen_record: u64,
}

impl Counters {
    /// `slots[i]` is the sum over CPUs of `COUNTERS[i]`.
    pub fn from_slots(slots: &[u64]) -> Self {
        let total = |counter: u32| -> u64 {
            (0..recorder::COUNT as u32)
                .filter_map(|recorder| slots.get((recorder * counter::COUNT + counter) as usize))
                .sum()
        };
        Counters {
            records_created: total(counter::RECORDS_CREATED),
            records_deleted: total(counter::RECORDS_DELETED),
            nested_events_recorded: total(counter::NESTED_EVENTS_RECORDED),
            failed_transitions_map_full: total(counter::FAILED_TRANSITIONS_MAP_FULL),
            failed_socket_storage: total(counter::FAILED_SOCKET_STORAGE),
            failed_unknown_state: total(counter::FAILED_UNKNOWN_STATE),
            failed_record_delete: total(counter::FAILED_RECORD_DELETE),
            failed_events_map_full: total(counter::FAILED_EVENTS_MAP_FULL),
            failed_handoff_record: total(counter::FAILED_HANDOFF_RECORD),
            records_in_socket_storage: total(counter::RECORDS_IN_SOCKET_STORAGE),
            failed_first_seen_record: total(counter::FAILED_FIRST_SEEN_RECORD),
        }
    }

    /// Sockets with a record in the kernel now.
    pub fn tracked_sockets(&self) -> u64 {
        self.records_created.saturating_sub(self.records_deleted)
    }
}

/// Resets and SYN-ACK retransmits, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// By socket labels and state.
    pub resets_sent: BTreeMap<(Labels, u8), u64>,
    pub resets_received: BTreeMap<(Labels, u8), u64>,
    /// By the listener's labels.
    pub synack_retransmits: BTreeMap<Labels, u64>,
}

pub fn events(entries: &[(EventKey, u64)]) -> Events {
    let mut out = Events::default();
    for (key, count) in entries {
        match key.kind {
            event_kind::RESET_SENT => {
                *out.resets_sent.entry((key.labels, key.state)).or_default() += count
            }
            event_kind::RESET_RECEIVED => {
                *out.resets_received
                    .entry((key.labels, key.state))
                    .or_default() += count
            }
            event_kind::SYNACK_RETRANSMIT => {
                *out.synack_retransmits.entry(key.labels).or_default() += count
            }
            _ => {}
        }
    }
    out
}

/// The `reason` label of a connect failure.
pub fn connect_failure_reason(detail: u8) -> &'static str {
    match detail {
        transition_detail::CONNECT_REFUSED => "refused",
        transition_detail::CONNECT_TIMEOUT => "timeout",
        transition_detail::CONNECT_RESET => "reset",
        _ => "other",
    }
}

/// Sockets now in each state: the kernel's tracked ones, the sockets older than the programs
/// that have not moved since (the start-up baseline), and what the census counts (timewait and
/// request sockets).
pub fn sockets_now(
    kernel: &Aggregates,
    baseline: &BTreeMap<(Labels, u8), i64>,
    census: &BTreeMap<(Labels, u8), i64>,
) -> BTreeMap<(Labels, u8), i64> {
    let mut sockets = kernel.sockets.clone();
    for (key, count) in baseline.iter().chain(census) {
        *sockets.entry(*key).or_default() += count;
    }
    sockets
}

/// Adds `extra` (the census's transitions or durations) into `into`.
pub fn merge_transitions(
    into: &mut BTreeMap<(Labels, Edge), u64>,
    extra: &BTreeMap<(Labels, Edge), u64>,
) {
    for (key, count) in extra {
        *into.entry(*key).or_default() += count;
    }
}

pub fn merge_durations(
    into: &mut BTreeMap<(Labels, Edge), Histogram>,
    extra: &BTreeMap<(Labels, Edge), Histogram>,
) {
    for (key, histogram) in extra {
        let total = into.entry(*key).or_insert_with(|| Histogram {
            buckets: vec![0; histogram.buckets.len()],
            ..Histogram::default()
        });
        total.count += histogram.count;
        total.sum_ns += histogram.sum_ns;
        for (total, count) in total.buckets.iter_mut().zip(&histogram.buckets) {
            *total += count;
        }
    }
}

/// Events no program saw: the kernel skipped them for the primary program (recursion misses)
/// and the nested-event program did not record them either.
pub fn events_lost(primary_recursion_misses: u64, nested_events_recorded: u64) -> u64 {
    primary_recursion_misses.saturating_sub(nested_events_recorded)
}

#[cfg(test)]
mod tests {
    use tcpstate_common::{MAX_BUCKETS, TcpState::*, family, role};

    use super::*;
    use transition_flag::{DURATION_OBSERVED, FROM_TRACKED, INFERRED, TO_TRACKED};

    const CLIENT: Labels = Labels {
        port: 443,
        family: family::IPV4,
        role: role::CLIENT,
        _padding: [0; 4],
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

    fn edge(from: tcpstate_common::TcpState, to: tcpstate_common::TcpState) -> (Labels, Edge) {
        (
            CLIENT,
            Edge {
                from: from as u8,
                to: to as u8,
            },
        )
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
        assert_eq!(out.sockets[&(CLIENT, Established as u8)], 1);
        assert_eq!(out.sockets[&(CLIENT, SynSent as u8)], 0);
        assert_eq!(out.sockets[&(CLIENT, FinWait2 as u8)], 0);
        assert!(!out.sockets.contains_key(&(CLIENT, Close as u8)));
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
        assert_eq!(out.sockets[&(CLIENT, FinWait1 as u8)], 5);
        assert!(
            !out.sockets.contains_key(&(CLIENT, Established as u8)),
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
        assert_eq!(out.sockets[&(CLIENT, SynSent as u8)], 0);
        assert_eq!(out.sockets[&(CLIENT, Established as u8)], 0);
        assert_eq!(out.sockets[&(CLIENT, FinWait1 as u8)], 1);
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
            aggregate(&entries, 3, View::Raw).sockets[&(CLIENT, FinWait1 as u8)],
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
        assert_eq!(out.connect_failures[&(CLIENT, CONNECT_REFUSED)], 3);
        assert_eq!(out.connect_failures[&(CLIENT, CONNECT_TIMEOUT)], 3);
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
        let key = (CLIENT, Established as u8);
        // 4 sockets first seen leaving ESTABLISHED (the baseline no longer holds them).
        let entries = [entry(Established, FinWait1, TO_TRACKED, 0, 4)];
        let kernel = aggregate(&entries, 3, View::Logical);
        let baseline = BTreeMap::from([(key, 6)]);
        let census = BTreeMap::from([((CLIENT, TimeWait as u8), 2)]);
        let sockets = sockets_now(&kernel, &baseline, &census);
        assert_eq!(sockets[&key], 6);
        assert_eq!(sockets[&(CLIENT, FinWait1 as u8)], 4);
        assert_eq!(sockets[&(CLIENT, TimeWait as u8)], 2);
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
        assert_eq!(out.resets_sent[&(CLIENT, 1)], 2);
        assert_eq!(out.resets_received[&(CLIENT, 1)], 3);
        assert_eq!(out.synack_retransmits[&CLIENT], 4);
    }
}
