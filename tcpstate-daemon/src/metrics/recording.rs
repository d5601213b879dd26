//! How well the kernel programs record: their records, their maps' use, and everything they
//! could not record exactly (`tcpstate_recording_failures_total`, all zero on a healthy host).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

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
        FAILURES.with(failures(scrape, figures, config)),
        NESTED_EVENTS.with(vec![counter_metric(
            vec![],
            counters.nested_events_recorded as f64,
        )]),
    ]
}

/// `tcpstate_recording_failures_total`, by reason: those of a part turned off are left out.
fn failures(
    scrape: &Scrape<'_>,
    figures: &Figures,
    config: &CollectorConfig,
) -> Vec<prometheus::proto::Metric> {
    let snapshot = scrape.snapshot;
    let counters = &snapshot.counters;
    let collectors = &config.collectors;
    // (`poll_error` stays: it also counts the sweeps of the kernel's records, which still run.)
    let turned_off = |reason: &str| match reason {
        "close_undelivered" => !collectors.sockdiag,
        "events_map_full" => !collectors.resets && !collectors.synack_retransmits,
        _ => false,
    };
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
    .filter(|(reason, _)| !turned_off(reason))
    .map(|(reason, count)| counter_metric(pairs(&[("reason", reason)]), count as f64))
    .collect()
}

/// Least time between two log lines of one failure reason.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Tells the daemon's log when a reason of `tcpstate_recording_failures_total` grows: at once
/// the first time, then at most one line per reason a minute, with the growth since the last
/// line. (The kernel programs only count: logging from them cost the events' path a few
/// nanoseconds; see docs/benchmarks.md.)
#[derive(Debug, Default)]
pub struct FailureLog {
    /// By reason: the count when its last line was written, and when.
    logged: BTreeMap<String, (u64, Instant)>,
}

impl FailureLog {
    /// Notes this scrape's failures (read from its families).
    pub fn note(&mut self, families: &[MetricFamily], now: Instant) {
        let Some(failures) = families.iter().find(|f| f.name() == FAILURES.name) else {
            return;
        };
        for metric in failures.get_metric() {
            let reason = metric
                .get_label()
                .iter()
                .find(|pair| pair.name() == "reason")
                .map(|pair| pair.value().to_owned())
                .unwrap_or_default();
            let count = metric.get_counter().get_value() as u64;
            let (logged, at) = self.logged.get(&reason).copied().unwrap_or((0, now));
            let first = !self.logged.contains_key(&reason);
            if count <= logged || (!first && now.duration_since(at) < LOG_INTERVAL) {
                continue;
            }
            log::warn!(
                "{} more events or sockets not recorded exactly, reason {reason} ({}): {count} \
                 since tcpstated started (tcpstate_recording_failures_total)",
                count - logged,
                meaning(&reason)
            );
            self.logged.insert(reason, (count, now));
        }
    }
}

/// What a failure reason means, for the log (README, "Metrics", says more).
fn meaning(reason: &str) -> &'static str {
    match reason {
        "transitions_map_full" => {
            "the TRANSITIONS map is full: transitions of new label sets go uncounted"
        }
        "events_map_full" => "the EVENTS map is full: resets or SYN-ACK retransmits go uncounted",
        "handoff_record_failed" => "timewait sockets whose handoff was lost get inferred labels",
        "socket_storage_unavailable" => "no memory for a socket's record: counted, not tracked",
        "unknown_state" => "a TCP state this tcpstated does not know: upgrade it",
        "record_delete_failed" => "a socket's record could not be deleted at CLOSE",
        "first_seen_record_failed" => {
            "sockets older than tcpstated moved unnoticed: their old state's gauge may stay high"
        }
        "event_lost" => "the kernel skipped events for the programs under load",
        "close_undelivered" => {
            "sockets whose CLOSE the kernel never ran a program for, found later"
        }
        "out_of_sequence" => "an event was lost earlier: the gauges are corrected",
        "map_read_error" => "a kernel map could not be read",
        "poll_error" => "a sock_diag poll failed",
        _ => "see README",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(counts: &[(&str, u64)]) -> Vec<MetricFamily> {
        let metrics = counts
            .iter()
            .map(|(reason, count)| counter_metric(pairs(&[("reason", reason)]), *count as f64))
            .collect();
        vec![FAILURES.with(metrics)]
    }

    #[test]
    fn a_growing_reason_is_logged_at_once_then_once_a_minute() {
        let mut log = FailureLog::default();
        let start = Instant::now();
        log.note(&failures(&[("event_lost", 0)]), start);
        assert!(log.logged.is_empty(), "nothing grew");
        log.note(&failures(&[("event_lost", 3)]), start);
        assert_eq!(log.logged["event_lost"], (3, start));
        // Within the minute: held back.
        log.note(
            &failures(&[("event_lost", 9)]),
            start + Duration::from_secs(30),
        );
        assert_eq!(log.logged["event_lost"], (3, start));
        let later = start + LOG_INTERVAL;
        log.note(&failures(&[("event_lost", 9)]), later);
        assert_eq!(log.logged["event_lost"], (9, later));
    }
}
