//! How well the kernel programs record: their records, their maps' use, and everything they
//! could not record exactly (`tcpstate_recording_failures_total`, all zero on a healthy host).

use prometheus::proto::{MetricFamily, MetricType};
use tcpstate_common::{TRANSITIONS_CAPACITY, map};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, gauge_metric, pairs};

pub(super) const TRACKED_SOCKETS: Family = Family {
    name: "tcpstate_tracked_sockets",
    help: "Sockets the kernel program keeps a record for (in the socket slot table, or in \
           socket-local storage when a socket's slots were taken).",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub(super) const RECORDS_IN_SOCKET_STORAGE: Family = Family {
    name: "tcpstate_socket_records_in_socket_storage_total",
    help: "Sockets tracked in socket-local storage because their slots in the socket slot \
           table were taken: nothing is lost, but their events cost more. Growing steadily: \
           raise --sockets.slots.",
    kind: MetricType::COUNTER,
    labels: &[],
};

pub(super) const MAP_ENTRIES: Family = Family {
    name: "tcpstate_map_entries",
    help: "Entries in a kernel aggregation map.",
    kind: MetricType::GAUGE,
    labels: &["map"],
};

pub(super) const MAP_CAPACITY: Family = Family {
    name: "tcpstate_map_capacity",
    help: "Capacity of a kernel map: TRANSITIONS (when full, new label sets are counted in \
           tcpstate_recording_failures_total{reason=\"transitions_map_full\"}) and \
           SOCKET_SLOTS (--sockets.slots).",
    kind: MetricType::GAUGE,
    labels: &["map"],
};

pub(super) const FAILURES: Family = Family {
    name: "tcpstate_recording_failures_total",
    help: "Events or sockets the kernel program could not record exactly, by reason. All zero \
           on a healthy host.",
    kind: MetricType::COUNTER,
    labels: &["reason"],
};

pub(super) const NESTED_EVENTS: Family = Family {
    name: "tcpstate_nested_events_recorded_total",
    help: "Events the kernel skipped for the primary program because it was already running \
           on the CPU, recorded by the second program instead (not lost).",
    kind: MetricType::COUNTER,
    labels: &[],
};

pub(super) const FAMILIES: [&Family; 6] = [
    &TRACKED_SOCKETS,
    &RECORDS_IN_SOCKET_STORAGE,
    &MAP_ENTRIES,
    &MAP_CAPACITY,
    &FAILURES,
    &NESTED_EVENTS,
];

pub(super) fn families(
    scrape: &Scrape<'_>,
    figures: &Figures,
    config: &CollectorConfig,
) -> Vec<MetricFamily> {
    let snapshot = scrape.snapshot;
    let counters = &snapshot.counters;
    let transitions_map = || pairs(&[("map", map::TRANSITIONS)]);
    vec![
        TRACKED_SOCKETS.with(vec![gauge_metric(
            vec![],
            counters.tracked_sockets() as f64,
        )]),
        MAP_ENTRIES.with(vec![gauge_metric(
            transitions_map(),
            snapshot.transitions_map_entries as f64,
        )]),
        RECORDS_IN_SOCKET_STORAGE.with(vec![counter_metric(
            vec![],
            counters.records_in_socket_storage as f64,
        )]),
        MAP_CAPACITY.with(vec![
            gauge_metric(transitions_map(), TRANSITIONS_CAPACITY.into()),
            gauge_metric(
                pairs(&[("map", map::SOCKET_SLOTS)]),
                config.socket_slots.into(),
            ),
        ]),
        FAILURES.with(failures(scrape, figures)),
        NESTED_EVENTS.with(vec![counter_metric(
            vec![],
            counters.nested_events_recorded as f64,
        )]),
    ]
}

/// `tcpstate_recording_failures_total`, by reason.
fn failures(scrape: &Scrape<'_>, figures: &Figures) -> Vec<prometheus::proto::Metric> {
    let snapshot = scrape.snapshot;
    let counters = &snapshot.counters;
    [
        ("transitions_map_full", counters.failed_transitions_map_full),
        ("events_map_full", counters.failed_events_map_full),
        (
            "handoff_record_failed",
            counters.failed_handoff_record + snapshot.handoffs_lost,
        ),
        ("socket_storage_unavailable", counters.failed_socket_storage),
        ("unknown_state", counters.failed_unknown_state),
        ("record_delete_failed", counters.failed_record_delete),
        (
            "first_seen_record_failed",
            counters.failed_first_seen_record,
        ),
        ("event_lost", snapshot.events_lost()),
        (
            "close_undelivered",
            scrape
                .census
                .map_or(0, |census| census.undelivered_closes()),
        ),
        ("out_of_sequence", figures.inferred_transitions),
        ("map_read_error", snapshot.read_errors),
        ("poll_error", scrape.poll_errors),
    ]
    .into_iter()
    .map(|(reason, count)| counter_metric(pairs(&[("reason", reason)]), count as f64))
    .collect()
}
