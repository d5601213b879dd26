//! What the kernel counts for each program: runs, run time (while `kernel.bpf_stats_enabled`),
//! and the events it skipped because the program was already running on the CPU.

use prometheus::proto::{Metric, MetricFamily, MetricType};
use tcpstate_common::program;

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, pairs};
use crate::sys::ProgramStats;

pub(super) const PROGRAM_RUNS: Family = Family {
    name: "tcpstate_bpf_program_runs_total",
    help: "Runs of each kernel program (counted only while sysctl kernel.bpf_stats_enabled=1).",
    kind: MetricType::COUNTER,
    labels: &["program"],
};

pub(super) const PROGRAM_RUN_SECONDS: Family = Family {
    name: "tcpstate_bpf_program_run_seconds_total",
    help: "CPU time spent in each kernel program (counted only while sysctl \
           kernel.bpf_stats_enabled=1).",
    kind: MetricType::COUNTER,
    labels: &["program"],
};

pub(super) const PROGRAM_RECURSION_MISSES: Family = Family {
    name: "tcpstate_bpf_program_recursion_misses_total",
    help: "Events the kernel skipped for each program because it was already running on the CPU.",
    kind: MetricType::COUNTER,
    labels: &["program"],
};

pub(super) const FAMILIES: [&Family; 3] = [
    &PROGRAM_RUNS,
    &PROGRAM_RUN_SECONDS,
    &PROGRAM_RECURSION_MISSES,
];

pub(super) fn families(scrape: &Scrape<'_>, _: &Figures, _: &CollectorConfig) -> Vec<MetricFamily> {
    let per_program = |value: fn(&ProgramStats) -> f64| -> Vec<Metric> {
        scrape
            .snapshot
            .programs
            .iter()
            .map(|(name, stats)| {
                counter_metric(pairs(&[("program", program_label(name))]), value(stats))
            })
            .collect()
    };
    vec![
        PROGRAM_RUNS.with(per_program(|s| s.run_count as f64)),
        PROGRAM_RUN_SECONDS.with(per_program(|s| s.run_time_ns as f64 / 1e9)),
        PROGRAM_RECURSION_MISSES.with(per_program(|s| s.recursion_misses as f64)),
    ]
}

/// The `program` label of a kernel program.
fn program_label(name: &str) -> &'static str {
    match name {
        program::RECORD_STATE_CHANGE => "primary",
        program::RECORD_NESTED_STATE_CHANGE => "nested",
        program::RECORD_RESET_SENT => "reset_sent",
        program::RECORD_RESET_RECEIVED => "reset_received",
        program::RECORD_SYNACK_RETRANSMIT => "synack_retransmit",
        _ => "other",
    }
}
