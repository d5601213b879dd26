//! How long the sockets now in each state have been there, read at the scrape: the kernel's
//! records of when each tracked socket entered its state, and for the timewait and request
//! sockets the polls follow, their handoff records or their timers (`sockets::timers`). What
//! the duration histograms never show for a socket that does not leave its state, such as a
//! leaked CLOSE_WAIT.

use prometheus::proto::{MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, gauge_metric, with_socket};
use crate::{labels, model::ages::THRESHOLDS_SECONDS};

pub(super) const AGE_MAX: Family = Family {
    name: "tcpstate_socket_age_max_seconds",
    help: "How long the oldest socket now in `state` has been in it: from the kernel's records \
           of tracked sockets, and for timewait and request sockets from their handoff records \
           or timers (full sockets older than tcpstated that have not moved since have no age).",
    kind: MetricType::GAUGE,
    labels: &["state", "family", "role", "port"],
};

pub(super) const OLDER_THAN: Family = Family {
    name: "tcpstate_sockets_older_than",
    help: "Sockets now in `state` (those with an age) that have been in it longer than \
           `seconds` (10, 60, 300, 1800, 3600): a CLOSE_WAIT socket minutes old is a leak.",
    kind: MetricType::GAUGE,
    labels: &["state", "family", "role", "port", "seconds"],
};

pub(super) const FAMILIES: [&Family; 2] = [&AGE_MAX, &OLDER_THAN];

pub(super) fn families(
    _: &Scrape<'_>,
    figures: &Figures,
    _: &CollectorConfig,
) -> Vec<MetricFamily> {
    let mut oldest = Vec::new();
    let mut older_than = Vec::new();
    for (key, ages) in &figures.ages {
        let Some(state) = labels::state(key.state) else {
            continue;
        };
        oldest.push(gauge_metric(
            with_socket(figures, &[("state", state)], &key.labels),
            ages.oldest_ns as f64 / 1e9,
        ));
        for (threshold, count) in THRESHOLDS_SECONDS.iter().zip(ages.older_than) {
            let mut labels = with_socket(figures, &[("state", state)], &key.labels);
            labels.extend(super::pairs(&[("seconds", &threshold.to_string())]));
            older_than.push(gauge_metric(labels, count as f64));
        }
    }
    vec![AGE_MAX.with(oldest), OLDER_THAN.with(older_than)]
}
