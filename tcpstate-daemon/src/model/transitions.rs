//! Transition entries -> transitions, durations and gauges.

use std::collections::BTreeMap;

use tcpstate_common::{
    TransitionKey, TransitionStats,
    state::{CLOSE, FIN_WAIT1, FIN_WAIT2, SYN_SENT, TIME_WAIT},
    transition_detail, transition_flag,
};

use super::{Edge, EdgeKey, Histogram, ReasonKey, StateKey, View};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregates {
    pub transitions: BTreeMap<EdgeKey, u64>,
    /// Durations of `edge.from` before moving to `edge.to`.
    pub durations: BTreeMap<EdgeKey, Histogram>,
    /// Sockets now in a state (kernel state number).
    pub sockets: BTreeMap<StateKey, i64>,
    /// Transitions the kernel inferred because an event of the socket was missed.
    pub inferred_transitions: u64,
    /// SYN_SENT -> CLOSE by labels and `transition_detail` (the reason).
    pub connect_failures: BTreeMap<ReasonKey, u64>,
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
            *out.sockets
                .entry(StateKey::new(labels, key.from))
                .or_default() -= stats.count as i64;
        }
        if flags & transition_flag::TO_TRACKED != 0 {
            *out.sockets
                .entry(StateKey::new(labels, key.to))
                .or_default() += stats.count as i64;
        }
        if flags & transition_flag::INFERRED != 0 {
            out.inferred_transitions += stats.count;
            continue;
        }
        if key.from == SYN_SENT && key.to == CLOSE {
            *out.connect_failures
                .entry(ReasonKey {
                    labels,
                    detail: key.detail,
                })
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
        *out.transitions.entry(EdgeKey { labels, edge }).or_default() += stats.count;
        if flags & transition_flag::DURATION_OBSERVED != 0 {
            let histogram = out
                .durations
                .entry(EdgeKey { labels, edge })
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
