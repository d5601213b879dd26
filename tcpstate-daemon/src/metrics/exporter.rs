//! The exporter about itself: its build, how each part of the collection went (node_exporter's
//! `node_scrape_collector_*`), the sock_diag polls.

use std::time::Duration;

use prometheus::proto::{MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, gauge_metric, pairs};
use crate::{sockets::poller::poll_interval, version};

/// How one part of the collection went, the last time it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartRun {
    pub took: Duration,
    pub succeeded: bool,
}

/// The parts of the collection, node_exporter's collectors: each as it last ran (`None`: not
/// run, or turned off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// `bpf`: this scrape's read of the kernel's maps.
    pub bpf: PartRun,
    /// `sockdiag`: the last sock_diag poll, if there was one (maybe beside an earlier scrape).
    pub sockdiag: Option<PartRun>,
    /// `netstat`: this scrape's read of the daemon's namespace's netstat file and port range.
    pub netstat: Option<PartRun>,
}

pub(super) const COLLECTOR_DURATION: Family = Family {
    name: "tcpstate_scrape_collector_duration_seconds",
    help: "How long each part of the collection took the last time it ran: bpf (this scrape's \
           read of the kernel's maps), sockdiag (the last sock_diag poll, which may have run \
           beside an earlier scrape), netstat (this scrape's read of the netstat file and the \
           port range).",
    kind: MetricType::GAUGE,
    labels: &["collector"],
};

pub(super) const COLLECTOR_SUCCESS: Family = Family {
    name: "tcpstate_scrape_collector_success",
    help: "Whether each part of the collection succeeded the last time it ran (0: it failed, \
           and the log says why).",
    kind: MetricType::GAUGE,
    labels: &["collector"],
};

pub(super) const COLLECT_SECONDS: Family = Family {
    name: "tcpstate_collect_duration_seconds",
    help: "Time this scrape spent reading the kernel's maps (the collector=\"bpf\" duration).",
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
    help: "Time the last sock_diag poll took (timewait, request, listening and closing sockets; \
           the collector=\"sockdiag\" duration).",
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

pub(super) const FAMILIES: [&Family; 8] = [
    &COLLECTOR_DURATION,
    &COLLECTOR_SUCCESS,
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
    let parts = &scrape.parts;
    let interval = poll_interval(
        config.poll_min_interval,
        parts.sockdiag.map(|poll| poll.took).unwrap_or_default(),
    );
    let ran = [
        ("bpf", Some(parts.bpf)),
        ("sockdiag", parts.sockdiag),
        ("netstat", parts.netstat),
    ];
    let ran = ran
        .iter()
        .filter_map(|(collector, run)| Some((pairs(&[("collector", collector)]), (*run)?)));
    let mut families = vec![
        COLLECTOR_DURATION.with(
            ran.clone()
                .map(|(labels, run)| gauge_metric(labels, run.took.as_secs_f64()))
                .collect(),
        ),
        COLLECTOR_SUCCESS.with(
            ran.map(|(labels, run)| gauge_metric(labels, f64::from(u8::from(run.succeeded))))
                .collect(),
        ),
        COLLECT_SECONDS.with(vec![gauge_metric(vec![], parts.bpf.took.as_secs_f64())]),
        BUILD_INFO.with(vec![gauge_metric(build_labels(), 1.0)]),
    ];
    if config.collectors.sockdiag {
        families.push(POLL_INTERVAL.with(vec![gauge_metric(vec![], interval.as_secs_f64())]));
    }
    if let Some(poll) = parts.sockdiag {
        families.push(POLL_DURATION.with(vec![gauge_metric(vec![], poll.took.as_secs_f64())]));
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
