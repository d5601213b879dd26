//! Turns the kernel's raw aggregates into the figures the metrics export. Pure logic: no maps,
//! no syscalls.
//!
//! The kernel keeps one entry per (labels, from, to, flags, recorder); the flags say what each
//! transition did to the per-state gauges (see `tcpstate_common::transition_flag`). Here the
//! entries are merged over flags and recorders into transitions, histograms and gauges.

use std::collections::BTreeMap;

use tcpstate_common::{Labels, TransitionKey, TransitionStats, counter, recorder, transition_flag};

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
}

/// Merges the kernel's entries (already summed over CPUs). `bucket_count` is the number of
/// configured bounds; the kernel's slots past it are never filled for real bounds.
pub fn aggregate(entries: &[(TransitionKey, TransitionStats)], bucket_count: usize) -> Aggregates {
    let mut out = Aggregates::default();
    for (key, stats) in entries {
        let flags = key.flags;
        let edge = Edge {
            from: key.from,
            to: key.to,
        };
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
    pub records_created: u64,
    pub records_deleted: u64,
    pub nested_events_recorded: u64,
    pub failed_transitions_map_full: u64,
    pub failed_socket_storage: u64,
    pub failed_unknown_state: u64,
    pub failed_record_delete: u64,
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
        }
    }

    /// Sockets with a record in the kernel now.
    pub fn tracked_sockets(&self) -> u64 {
        self.records_created.saturating_sub(self.records_deleted)
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
            _padding: [0; 4],
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
        let out = aggregate(&entries, 3);
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
        let out = aggregate(&entries, MAX_BUCKETS);
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
        let out = aggregate(&entries, 3);
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
}
