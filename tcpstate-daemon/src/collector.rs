//! The Prometheus collector: at each scrape, reads the kernel's maps once and turns them into
//! metric families. Every metric the daemon exports about TCP is born here.

use std::{sync::Mutex, time::Instant};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};
use tcpstate_common::Labels;

use crate::{
    aggregate::{Aggregates, aggregate, events_lost},
    kernel_maps::{KernelMaps, Snapshot, TRANSITIONS_MAP_CAPACITY},
    labels,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One metric family's identity: name, help, type and label names.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const TRANSITIONS: Family = Family {
    name: "tcpstate_transitions_total",
    help: "TCP state transitions seen by the kernel program, by old and new state.",
    kind: MetricType::COUNTER,
    labels: &["from", "to", "family", "role", "port"],
};
const DURATIONS: Family = Family {
    name: "tcpstate_state_duration_seconds",
    help: "Time a socket spent in `state` before moving to `next`; observed only when the \
           socket was seen entering `state`.",
    kind: MetricType::HISTOGRAM,
    labels: &["state", "next", "family", "role", "port"],
};
const SOCKETS: Family = Family {
    name: "tcpstate_sockets",
    help: "Tracked TCP sockets now in each state.",
    kind: MetricType::GAUGE,
    labels: &["state", "family", "role", "port"],
};
const TRACKED_SOCKETS: Family = Family {
    name: "tcpstate_tracked_sockets",
    help: "Sockets the kernel program keeps a record for (socket-local storage: no capacity \
           limit, freed with the socket).",
    kind: MetricType::GAUGE,
    labels: &[],
};
const MAP_ENTRIES: Family = Family {
    name: "tcpstate_map_entries",
    help: "Entries in a kernel aggregation map.",
    kind: MetricType::GAUGE,
    labels: &["map"],
};
const MAP_CAPACITY: Family = Family {
    name: "tcpstate_map_capacity",
    help: "Capacity of a kernel aggregation map; when full, new label sets are counted in \
           tcpstate_recording_failures_total{reason=\"transitions_map_full\"}.",
    kind: MetricType::GAUGE,
    labels: &["map"],
};
const FAILURES: Family = Family {
    name: "tcpstate_recording_failures_total",
    help: "Events or sockets the kernel program could not record exactly, by reason. All zero \
           on a healthy host.",
    kind: MetricType::COUNTER,
    labels: &["reason"],
};
const NESTED_EVENTS: Family = Family {
    name: "tcpstate_nested_events_recorded_total",
    help: "Events the kernel skipped for the primary program because it was already running \
           on the CPU, recorded by the second program instead (not lost).",
    kind: MetricType::COUNTER,
    labels: &[],
};
const PROGRAM_RUNS: Family = Family {
    name: "tcpstate_bpf_program_runs_total",
    help: "Runs of each kernel program (counted only while sysctl kernel.bpf_stats_enabled=1).",
    kind: MetricType::COUNTER,
    labels: &["program"],
};
const PROGRAM_RUN_SECONDS: Family = Family {
    name: "tcpstate_bpf_program_run_seconds_total",
    help: "CPU time spent in each kernel program (counted only while sysctl \
           kernel.bpf_stats_enabled=1).",
    kind: MetricType::COUNTER,
    labels: &["program"],
};
const PROGRAM_RECURSION_MISSES: Family = Family {
    name: "tcpstate_bpf_program_recursion_misses_total",
    help: "Events the kernel skipped for each program because it was already running on the CPU.",
    kind: MetricType::COUNTER,
    labels: &["program"],
};
const COLLECT_SECONDS: Family = Family {
    name: "tcpstate_collect_duration_seconds",
    help: "Time this scrape spent reading the kernel's maps.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const BUILD_INFO: Family = Family {
    name: "tcpstate_build_info",
    help: "Always 1; the labels say which tcpstated build is running.",
    kind: MetricType::GAUGE,
    labels: &["version"],
};

const FAMILIES: [&Family; 13] = [
    &TRANSITIONS,
    &DURATIONS,
    &SOCKETS,
    &TRACKED_SOCKETS,
    &MAP_ENTRIES,
    &MAP_CAPACITY,
    &FAILURES,
    &NESTED_EVENTS,
    &PROGRAM_RUNS,
    &PROGRAM_RUN_SECONDS,
    &PROGRAM_RECURSION_MISSES,
    &COLLECT_SECONDS,
    &BUILD_INFO,
];

pub struct TcpStateCollector {
    maps: Mutex<KernelMaps>,
    bucket_bounds: Vec<f64>,
    descs: Vec<Desc>,
}

impl TcpStateCollector {
    pub fn new(maps: KernelMaps, bucket_bounds: Vec<f64>) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|family| {
                Desc::new(
                    family.name.into(),
                    family.help.into(),
                    family.labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
                .expect("metric names and labels are valid constants")
            })
            .collect();
        TcpStateCollector {
            maps: Mutex::new(maps),
            bucket_bounds,
            descs,
        }
    }

    pub fn programs_alive(&self) -> bool {
        self.lock().programs_alive()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KernelMaps> {
        // A panic while holding the lock cannot leave the maps inconsistent: they are read-only here.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collector for TcpStateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let started = Instant::now();
        let snapshot = self.lock().read();
        let read_seconds = started.elapsed().as_secs_f64();
        exposition(&snapshot, &self.bucket_bounds, read_seconds)
    }
}

/// The metric families of one snapshot. Pure: unit-tested without a kernel.
pub fn exposition(
    snapshot: &Snapshot,
    bucket_bounds: &[f64],
    read_seconds: f64,
) -> Vec<MetricFamily> {
    let Aggregates {
        transitions,
        durations,
        sockets,
        inferred_transitions,
    } = aggregate(&snapshot.transitions, bucket_bounds.len());
    let counters = &snapshot.counters;

    let transitions = transitions
        .iter()
        .filter_map(|((socket, edge), count)| {
            let from = labels::state(edge.from)?;
            let to = labels::state(edge.to)?;
            Some(counter_metric(
                with_socket(&[("from", from), ("to", to)], socket),
                *count as f64,
            ))
        })
        .collect();

    let durations = durations
        .iter()
        .filter_map(|((socket, edge), histogram)| {
            let state = labels::state(edge.from)?;
            let next = labels::state(edge.to)?;
            let mut proto = Histogram::default();
            proto.set_sample_count(histogram.count);
            proto.set_sample_sum(histogram.sum_ns as f64 / 1e9);
            proto.set_bucket(
                bucket_bounds
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
            let mut metric =
                Metric::from_label(with_socket(&[("state", state), ("next", next)], socket));
            metric.set_histogram(proto);
            Some(metric)
        })
        .collect();

    let sockets = sockets
        .iter()
        .filter_map(|((socket, state), count)| {
            let state = labels::state(*state)?;
            Some(gauge_metric(
                with_socket(&[("state", state)], socket),
                *count as f64,
            ))
        })
        .collect();

    let lost = events_lost(
        snapshot.primary_program.recursion_misses,
        counters.nested_events_recorded,
    );
    let failures = [
        ("transitions_map_full", counters.failed_transitions_map_full),
        ("socket_storage_unavailable", counters.failed_socket_storage),
        ("unknown_state", counters.failed_unknown_state),
        ("record_delete_failed", counters.failed_record_delete),
        ("event_lost", lost),
        ("out_of_sequence", inferred_transitions),
        ("map_read_error", snapshot.read_errors),
    ]
    .into_iter()
    .map(|(reason, count)| counter_metric(pairs(&[("reason", reason)]), count as f64))
    .collect();

    let programs = [
        ("primary", &snapshot.primary_program),
        ("nested", &snapshot.nested_program),
    ];
    let per_program = |value: fn(&crate::sys::ProgramStats) -> f64| -> Vec<Metric> {
        programs
            .iter()
            .map(|(name, stats)| counter_metric(pairs(&[("program", name)]), value(stats)))
            .collect()
    };
    let transitions_map = || pairs(&[("map", tcpstate_common::map::TRANSITIONS)]);

    vec![
        family(&TRANSITIONS, transitions),
        family(&DURATIONS, durations),
        family(&SOCKETS, sockets),
        family(
            &TRACKED_SOCKETS,
            vec![gauge_metric(vec![], counters.tracked_sockets() as f64)],
        ),
        family(
            &MAP_ENTRIES,
            vec![gauge_metric(
                transitions_map(),
                snapshot.transitions.len() as f64,
            )],
        ),
        family(
            &MAP_CAPACITY,
            vec![gauge_metric(
                transitions_map(),
                TRANSITIONS_MAP_CAPACITY.into(),
            )],
        ),
        family(&FAILURES, failures),
        family(
            &NESTED_EVENTS,
            vec![counter_metric(
                vec![],
                counters.nested_events_recorded as f64,
            )],
        ),
        family(&PROGRAM_RUNS, per_program(|s| s.run_count as f64)),
        family(
            &PROGRAM_RUN_SECONDS,
            per_program(|s| s.run_time_ns as f64 / 1e9),
        ),
        family(
            &PROGRAM_RECURSION_MISSES,
            per_program(|s| s.recursion_misses as f64),
        ),
        family(&COLLECT_SECONDS, vec![gauge_metric(vec![], read_seconds)]),
        family(
            &BUILD_INFO,
            vec![gauge_metric(pairs(&[("version", VERSION)]), 1.0)],
        ),
    ]
    .into_iter()
    // A family without samples (no transition yet) is omitted: the text format has no way to
    // write it, and the encoder rejects it.
    .filter(|family| !family.get_metric().is_empty())
    .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<LabelPair> {
    items
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

fn with_socket(first: &[(&str, &str)], socket: &Labels) -> Vec<LabelPair> {
    let mut all = pairs(first);
    for (name, value) in labels::socket_labels(socket) {
        all.extend(pairs(&[(name, &value)]));
    }
    all
}

fn counter_metric(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

fn gauge_metric(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_gauge(gauge);
    metric
}

fn family(family: &Family, metrics: Vec<Metric>) -> MetricFamily {
    let mut out = MetricFamily::default();
    out.set_name(family.name.into());
    out.set_help(family.help.into());
    out.set_field_type(family.kind);
    out.set_metric(metrics);
    out
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};
    use tcpstate_common::{
        TcpState, TransitionKey, TransitionStats, family, role, transition_flag::*,
    };

    use super::*;

    fn text(snapshot: &Snapshot, bounds: &[f64]) -> String {
        let families = exposition(snapshot, bounds, 0.001);
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exposes_the_contract_names_labels_and_exact_buckets() {
        let labels = Labels {
            port: 8080,
            family: family::IPV6,
            role: role::SERVER,
            _padding: [0; 4],
        };
        let mut stats = TransitionStats::ZERO;
        stats.count = 2;
        stats.duration_sum_ns = 700_000_000; // 0.3 s + 0.4 s
        stats.duration_buckets[1] = 2; // both <= 0.5 s
        let key = TransitionKey {
            labels,
            from: TcpState::CloseWait as u8,
            to: TcpState::LastAck as u8,
            flags: FROM_TRACKED | TO_TRACKED | DURATION_OBSERVED,
            recorder: 0,
            _padding: [0; 4],
        };
        let snapshot = Snapshot {
            transitions: vec![(key, stats)],
            ..Snapshot::default()
        };
        let body = text(&snapshot, &[0.1, 0.5, 1.0]);
        let expected = [
            r#"tcpstate_transitions_total{from="CLOSE_WAIT",to="LAST_ACK",family="ipv6",role="server",port="8080"} 2"#,
            r#"tcpstate_state_duration_seconds_bucket{state="CLOSE_WAIT",next="LAST_ACK",family="ipv6",role="server",port="8080",le="0.1"} 0"#,
            r#"tcpstate_state_duration_seconds_bucket{state="CLOSE_WAIT",next="LAST_ACK",family="ipv6",role="server",port="8080",le="0.5"} 2"#,
            r#"tcpstate_state_duration_seconds_bucket{state="CLOSE_WAIT",next="LAST_ACK",family="ipv6",role="server",port="8080",le="1"} 2"#,
            r#"tcpstate_state_duration_seconds_bucket{state="CLOSE_WAIT",next="LAST_ACK",family="ipv6",role="server",port="8080",le="+Inf"} 2"#,
            r#"tcpstate_state_duration_seconds_sum{state="CLOSE_WAIT",next="LAST_ACK",family="ipv6",role="server",port="8080"} 0.7"#,
            r#"tcpstate_sockets{state="LAST_ACK",family="ipv6",role="server",port="8080"} 2"#,
            r#"tcpstate_recording_failures_total{reason="event_lost"} 0"#,
            r#"tcpstate_map_capacity{map="TRANSITIONS"} 16384"#,
            r#"tcpstate_build_info{version=""#,
            "# TYPE tcpstate_state_duration_seconds histogram",
            "# TYPE tcpstate_transitions_total counter",
        ];
        for line in expected {
            assert!(body.contains(line), "missing `{line}` in:\n{body}");
        }
    }

    #[test]
    fn lost_events_are_recursion_misses_not_recovered() {
        let mut snapshot = Snapshot::default();
        snapshot.primary_program.recursion_misses = 10;
        snapshot.counters.nested_events_recorded = 7;
        let body = text(&snapshot, &[1.0]);
        assert!(
            body.contains(r#"tcpstate_recording_failures_total{reason="event_lost"} 3"#),
            "{body}"
        );
        assert!(
            body.contains("tcpstate_nested_events_recorded_total 7"),
            "{body}"
        );
    }
}
