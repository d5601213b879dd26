//! The state machine: how often each transition happens, and how long sockets stay in a state
//! before each transition.

use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, with_socket};
use crate::labels;

pub(super) const TRANSITIONS: Family = Family {
    name: "tcpstate_transitions_total",
    help: "TCP state transitions seen by the kernel program, by old and new state.",
    kind: MetricType::COUNTER,
    labels: &["from", "to", "family", "role", "port"],
};

pub(super) const DURATIONS: Family = Family {
    name: "tcpstate_state_duration_seconds",
    help: "Time a socket spent in `state` before moving to `next`; observed only when the \
           socket was seen entering `state`.",
    kind: MetricType::HISTOGRAM,
    labels: &["state", "next", "family", "role", "port"],
};

pub(super) const FAMILIES: [&Family; 2] = [&TRANSITIONS, &DURATIONS];

pub(super) fn families(
    _: &Scrape<'_>,
    figures: &Figures,
    config: &CollectorConfig,
) -> Vec<MetricFamily> {
    let transitions = figures
        .transitions
        .iter()
        .filter_map(|(key, count)| {
            let from = labels::state(key.edge.from)?;
            let to = labels::state(key.edge.to)?;
            Some(counter_metric(
                with_socket(figures, &[("from", from), ("to", to)], &key.labels),
                *count as f64,
            ))
        })
        .collect();
    let durations = figures
        .durations
        .iter()
        .filter_map(|(key, histogram)| {
            let state = labels::state(key.edge.from)?;
            let next = labels::state(key.edge.to)?;
            let mut proto = Histogram::default();
            proto.set_sample_count(histogram.count);
            proto.set_sample_sum(histogram.sum_ns as f64 / 1e9);
            proto.set_bucket(
                config
                    .bucket_bounds
                    .iter()
                    .zip(histogram.cumulative())
                    .map(|(bound, cumulative)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(*bound);
                        bucket.set_cumulative_count(cumulative);
                        bucket
                    })
                    .collect(),
            );
            let labels = with_socket(figures, &[("state", state), ("next", next)], &key.labels);
            let mut metric = Metric::from_label(labels);
            metric.set_histogram(proto);
            Some(metric)
        })
        .collect();
    vec![TRANSITIONS.with(transitions), DURATIONS.with(durations)]
}
