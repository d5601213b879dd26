//! Sockets now in each state: the kernel's tracked ones, the baseline's and the census's.

use prometheus::proto::{MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, gauge_metric, with_socket};
use crate::labels;

pub(super) const SOCKETS: Family = Family {
    name: "tcpstate_sockets",
    help: "Tracked TCP sockets now in each state.",
    kind: MetricType::GAUGE,
    labels: &["state", "family", "role", "port"],
};

pub(super) const FAMILIES: [&Family; 1] = [&SOCKETS];

pub(super) fn families(
    _: &Scrape<'_>,
    figures: &Figures,
    _: &CollectorConfig,
) -> Vec<MetricFamily> {
    let sockets = figures
        .sockets
        .iter()
        .filter_map(|(key, count)| {
            let state = labels::state(key.state)?;
            Some(gauge_metric(
                with_socket(figures, &[("state", state)], &key.labels),
                *count as f64,
            ))
        })
        .collect();
    vec![SOCKETS.with(sockets)]
}
