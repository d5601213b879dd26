//! Events other than state changes: connect failures by reason, resets by the socket's state,
//! SYN-ACK retransmits.

use std::collections::BTreeMap;

use prometheus::proto::{Metric, MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, pairs, with_socket};
use crate::{
    labels,
    model::{StateKey, connect_failure_reason},
};

pub(super) const CONNECT_FAILURES: Family = Family {
    name: "tcpstate_connect_failures_total",
    help: "Client connects that ended SYN_SENT -> CLOSE, by reason: refused (RST to the SYN), \
           timeout (SYN retransmissions exhausted), reset, other (unreachable, aborted).",
    kind: MetricType::COUNTER,
    labels: &["reason", "family", "port"],
};

pub(super) const RESETS_SENT: Family = Family {
    name: "tcpstate_resets_sent_total",
    help: "Resets sent, by the state of the socket that sent them.",
    kind: MetricType::COUNTER,
    labels: &["state", "family", "role", "port"],
};

pub(super) const RESETS_RECEIVED: Family = Family {
    name: "tcpstate_resets_received_total",
    help: "Resets received, by the state of the socket that received them.",
    kind: MetricType::COUNTER,
    labels: &["state", "family", "role", "port"],
};

pub(super) const SYNACK_RETRANSMITS: Family = Family {
    name: "tcpstate_synack_retransmits_total",
    help: "SYN-ACKs retransmitted by listeners because the handshake's final ACK did not come.",
    kind: MetricType::COUNTER,
    labels: &["family", "port"],
};

pub(super) const FAMILIES: [&Family; 4] = [
    &CONNECT_FAILURES,
    &RESETS_SENT,
    &RESETS_RECEIVED,
    &SYNACK_RETRANSMITS,
];

pub(super) fn families(
    _: &Scrape<'_>,
    figures: &Figures,
    _: &CollectorConfig,
) -> Vec<MetricFamily> {
    vec![
        CONNECT_FAILURES.with(connect_failures(figures)),
        RESETS_SENT.with(resets(figures, &figures.events.resets_sent)),
        RESETS_RECEIVED.with(resets(figures, &figures.events.resets_received)),
        SYNACK_RETRANSMITS.with(synack_retransmits(figures)),
    ]
}

/// By reason, family and port (the role is always the client's), and workload if labelled.
fn connect_failures(figures: &Figures) -> Vec<Metric> {
    let mut merged = BTreeMap::<(&str, &str, String, u32), u64>::new();
    for (key, count) in &figures.connect_failures {
        let reason = connect_failure_reason(key.detail);
        let family = labels::family(key.labels.family);
        let port = labels::port(key.labels.port);
        *merged
            .entry((reason, family, port, key.labels.cgroup))
            .or_default() += count;
    }
    merged
        .into_iter()
        .map(|((reason, family, port, owner), count)| {
            let mut labels = pairs(&[("reason", reason), ("family", family), ("port", &port)]);
            labels.extend(figures.workload_pairs(owner));
            counter_metric(labels, count as f64)
        })
        .collect()
}

fn resets(figures: &Figures, by_state: &BTreeMap<StateKey, u64>) -> Vec<Metric> {
    by_state
        .iter()
        .filter_map(|(key, count)| {
            let state = labels::state(key.state)?;
            Some(counter_metric(
                with_socket(figures, &[("state", state)], &key.labels),
                *count as f64,
            ))
        })
        .collect()
}

/// By the listener's family and port, and workload if labelled.
fn synack_retransmits(figures: &Figures) -> Vec<Metric> {
    let mut merged = BTreeMap::<(&str, String, u32), u64>::new();
    for (listener, count) in &figures.events.synack_retransmits {
        let family = labels::family(listener.family);
        let port = labels::port(listener.port);
        *merged.entry((family, port, listener.cgroup)).or_default() += count;
    }
    merged
        .into_iter()
        .map(|((family, port, owner), count)| {
            let mut labels = pairs(&[("family", family), ("port", &port)]);
            labels.extend(figures.workload_pairs(owner));
            counter_metric(labels, count as f64)
        })
        .collect()
}
