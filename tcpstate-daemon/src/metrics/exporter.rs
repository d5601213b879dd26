//! The exporter about itself: its build, the scrape's read of the maps, the sock_diag polls.

use prometheus::proto::{MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, gauge_metric, pairs};
use crate::{sockets::poller::poll_interval, version};

pub(super) const COLLECT_SECONDS: Family = Family {
    name: "tcpstate_collect_duration_seconds",
    help: "Time this scrape spent reading the kernel's maps.",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub(super) const BUILD_INFO: Family = Family {
    name: "tcpstate_build_info",
    help: "Always 1; the labels say which tcpstated build is running.",
    kind: MetricType::GAUGE,
    labels: &["version", "revision", "rustc_version", "target"],
};

pub(super) const POLL_DURATION: Family = Family {
    name: "tcpstate_poll_duration_seconds",
    help: "Time the last sock_diag poll took (timewait, request, listening and closing sockets).",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub(super) const POLL_INTERVAL: Family = Family {
    name: "tcpstate_poll_interval_seconds",
    help: "Least time between sock_diag polls now: --sockdiag.min-interval, or 20 times the last \
           poll's duration if longer (polls take at most 5% of one CPU); scrapes start polls.",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub(super) const WORKLOADS: Family = Family {
    name: "tcpstate_workloads",
    help: "Distinct workloads labelled by name so far (--workloads; at most --workloads.max).",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub(super) const WORKLOAD_GROUPS_FOLDED: Family = Family {
    name: "tcpstate_workload_groups_folded_total",
    help: "Cgroups whose workload came past --workloads.max and is labelled container=\"other\".",
    kind: MetricType::COUNTER,
    labels: &[],
};

pub(super) const FAMILIES: [&Family; 6] = [
    &COLLECT_SECONDS,
    &BUILD_INFO,
    &POLL_DURATION,
    &POLL_INTERVAL,
    &WORKLOADS,
    &WORKLOAD_GROUPS_FOLDED,
];

pub(super) fn families(
    scrape: &Scrape<'_>,
    _: &Figures,
    config: &CollectorConfig,
) -> Vec<MetricFamily> {
    let interval = poll_interval(
        config.poll_min_interval,
        scrape.last_poll_took.unwrap_or_default(),
    );
    let mut families = vec![
        COLLECT_SECONDS.with(vec![gauge_metric(vec![], scrape.read_seconds)]),
        BUILD_INFO.with(vec![gauge_metric(build_labels(), 1.0)]),
        POLL_INTERVAL.with(vec![gauge_metric(vec![], interval.as_secs_f64())]),
    ];
    if let Some(took) = scrape.last_poll_took {
        families.push(POLL_DURATION.with(vec![gauge_metric(vec![], took.as_secs_f64())]));
    }
    if let Some(table) = scrape.workloads {
        families.push(WORKLOADS.with(vec![gauge_metric(vec![], table.named as f64)]));
        families
            .push(WORKLOAD_GROUPS_FOLDED.with(vec![counter_metric(vec![], table.folded as f64)]));
    }
    families
}

/// node_exporter's habit (`version`, `revision`, `goversion`): which build, of which source,
/// built by which compiler for which target.
fn build_labels() -> Vec<prometheus::proto::LabelPair> {
    pairs(&[
        ("version", version::VERSION),
        ("revision", version::REVISION),
        ("rustc_version", version::RUSTC_VERSION),
        ("target", version::TARGET),
    ])
}
