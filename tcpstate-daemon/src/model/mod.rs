//! The kernel's raw aggregates turned into the figures the metrics export. Pure logic: no
//! maps, no syscalls. `transitions` merges the transition entries into transitions, durations
//! and gauges; `counters` sums the counters; `events` splits resets and SYN-ACK retransmits;
//! `ages` says how long the sockets now in each state have been there.
//!
//! The kernel keeps one entry per (labels, from, to, flags, recorder); the flags say what each
//! transition did to the per-state gauges (see `tcpstate_common::transition_flag`).

pub mod ages;
mod counters;
mod events;
mod transitions;

use std::collections::BTreeMap;

use tcpstate_common::Labels;

pub use counters::{Counters, events_lost, sum_over_cpus};
pub use events::{Events, connect_failure_reason, events};
pub use transitions::{Aggregates, aggregate, logical_edge};

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

/// A socket's labels and a state: the key of the per-state gauges and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    pub labels: Labels,
    /// Kernel state number.
    pub state: u8,
}

impl StateKey {
    pub const fn new(labels: Labels, state: u8) -> Self {
        StateKey { labels, state }
    }
}

/// A socket's labels and a transition edge: the key of transitions and durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeKey {
    pub labels: Labels,
    pub edge: Edge,
}

impl EdgeKey {
    pub const fn new(labels: Labels, from: u8, to: u8) -> Self {
        EdgeKey {
            labels,
            edge: Edge { from, to },
        }
    }
}

/// A client's labels and why its connect failed (a `transition_detail` constant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReasonKey {
    pub labels: Labels,
    pub detail: u8,
}

/// Sockets now in each state: the kernel's tracked ones, the sockets older than the programs
/// that have not moved since (the start-up baseline), and what the census counts (timewait and
/// request sockets).
pub fn sockets_now(
    kernel: &Aggregates,
    baseline: &BTreeMap<StateKey, i64>,
    census: &BTreeMap<StateKey, i64>,
) -> BTreeMap<StateKey, i64> {
    let mut sockets = kernel.sockets.clone();
    for (key, count) in baseline.iter().chain(census) {
        *sockets.entry(*key).or_default() += count;
    }
    sockets
}

/// Adds `extra` (the census's transitions or durations) into `into`.
pub fn merge_transitions(into: &mut BTreeMap<EdgeKey, u64>, extra: &BTreeMap<EdgeKey, u64>) {
    for (key, count) in extra {
        *into.entry(*key).or_default() += count;
    }
}

pub fn merge_durations(
    into: &mut BTreeMap<EdgeKey, Histogram>,
    extra: &BTreeMap<EdgeKey, Histogram>,
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

#[cfg(test)]
mod tests;
