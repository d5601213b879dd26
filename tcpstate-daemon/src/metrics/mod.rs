//! The metrics: at each scrape, `collector` reads the kernel's maps and the census once, and
//! `exposition` turns them into metric families. Each file holds one group of families, each
//! family's definition beside the code that fills it: `transitions` (transitions and
//! durations), `sockets` (sockets per state), `events` (connect failures, resets, SYN-ACK
//! retransmits), `listen` (accept queues, listen overflows), `namespace` (TIME_WAIT's port
//! figures), `recording` (records, maps, failures), `programs` (the kernel's per-program
//! counters), `exporter` (the daemon about itself).

mod ages;
pub mod collector;
mod events;
mod exporter;
mod listen;
mod namespace;
mod programs;
mod recording;
mod sockets;
mod transitions;

use std::{collections::BTreeMap, time::Duration};

use prometheus::{
    core::Desc,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use tcpstate_common::Labels;

pub use collector::{KernelState, TcpStateCollector};
pub use exporter::{PartRun, Parts};

use crate::{
    bpf::maps::Snapshot,
    config::{Collectors, Flags},
    labels,
    model::{
        self, EdgeKey, Events, Histogram, ReasonKey, StateKey, View, ages::Ages, merge_durations,
        merge_transitions, sockets_now,
    },
    netstat::ListenCounters,
    sockets::census::Census,
    workload::{RETIRED, WorkloadTable},
};

pub use crate::version::VERSION;

/// One metric family's identity: name, help, type and label names.
pub(crate) struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

impl Family {
    fn desc(&self) -> Desc {
        Desc::new(
            self.name.into(),
            self.help.into(),
            self.labels.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
        .expect("metric names and labels are valid constants")
    }

    /// The family with these samples.
    fn with(&self, metrics: Vec<Metric>) -> MetricFamily {
        let mut out = MetricFamily::default();
        out.set_name(self.name.into());
        out.set_help(self.help.into());
        out.set_field_type(self.kind);
        out.set_metric(metrics);
        out
    }
}

/// Every family the collector exports, by group.
fn families() -> impl Iterator<Item = &'static Family> {
    transitions::FAMILIES
        .into_iter()
        .chain(sockets::FAMILIES)
        .chain(ages::FAMILIES)
        .chain(recording::FAMILIES)
        .chain(programs::FAMILIES)
        .chain(exporter::FAMILIES)
        .chain(events::FAMILIES)
        .chain(listen::FAMILIES)
        .chain(namespace::FAMILIES)
}

/// How the collector reads and presents.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub bucket_bounds: Vec<f64>,
    pub view: View,
    pub poll_min_interval: Duration,
    /// Entries of the kernel's socket slot table.
    pub socket_slots: u32,
    /// `--port`: the ports whose event families are exported as 0 before any event.
    pub service_ports: Vec<u16>,
    /// The parts of the collection that run: those turned off export no family.
    pub collectors: Collectors,
}

impl CollectorConfig {
    pub fn from_flags(flags: &Flags) -> Self {
        CollectorConfig {
            bucket_bounds: flags.buckets.seconds().to_vec(),
            view: flags.view,
            poll_min_interval: flags.poll_min_interval,
            socket_slots: flags.socket_slots,
            service_ports: flags.ports.clone(),
            collectors: flags.collectors(),
        }
    }
}

/// The registry `/metrics` serves: the collector, and the process's own figures.
pub fn registry(collector: TcpStateCollector) -> prometheus::Result<prometheus::Registry> {
    let registry = prometheus::Registry::new();
    registry.register(Box::new(collector))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Everything one scrape shows.
pub struct Scrape<'a> {
    pub snapshot: &'a Snapshot,
    pub census: Option<&'a Census>,
    pub netstat: Option<ListenCounters>,
    pub port_range: Option<(u16, u16)>,
    /// How each part of the collection went, the last time it ran.
    pub parts: Parts,
    pub poll_errors: u64,
    /// The workloads of the cgroups in this scrape's labels, when workloads are labelled.
    pub workloads: Option<&'a WorkloadTable>,
    /// How long the tracked sockets now in each state have been there.
    pub ages: Option<&'a Ages>,
}

/// The scrape's figures: the kernel's aggregates merged, with the census's transitions (in the
/// logical view) and sockets.
pub(crate) struct Figures {
    transitions: BTreeMap<EdgeKey, u64>,
    durations: BTreeMap<EdgeKey, Histogram>,
    sockets: BTreeMap<StateKey, i64>,
    connect_failures: BTreeMap<ReasonKey, u64>,
    inferred_transitions: u64,
    events: Events,
    ages: Ages,
    /// Labels carry a workload's index in it instead of a cgroup (see `by_workload`).
    workloads: Option<WorkloadTable>,
}

impl Figures {
    fn of(scrape: &Scrape<'_>, config: &CollectorConfig) -> Self {
        let snapshot = scrape.snapshot;
        let kernel = model::aggregate(
            &snapshot.transitions,
            config.bucket_bounds.len(),
            config.view,
        );
        let empty = BTreeMap::new();
        // What the census has from the polls, if they run (its baseline is listed at start-up).
        let polled = scrape.census.filter(|_| config.collectors.sockdiag);
        let sockets = sockets_now(
            &kernel,
            scrape.census.map_or(&empty, |c| c.baseline.counts()),
            &polled.map_or_else(BTreeMap::new, |census| census.sockets_now()),
        );
        let mut transitions = kernel.transitions;
        let mut durations = kernel.durations;
        if let (View::Logical, Some(census)) = (config.view, polled) {
            merge_transitions(&mut transitions, census.transitions());
            merge_durations(&mut durations, census.durations());
        }
        let figures = Figures {
            transitions,
            durations,
            sockets,
            connect_failures: kernel.connect_failures,
            inferred_transitions: kernel.inferred_transitions,
            events: model::events(&snapshot.events),
            ages: scrape.ages.cloned().unwrap_or_default(),
            workloads: None,
        };
        match scrape.workloads {
            Some(table) => figures.by_workload(table),
            None => figures,
        }
    }

    /// The figures by workload: each label set's cgroup replaced by its workload's index in
    /// `table`, the figures of cgroups of one workload added up.
    fn by_workload(self, table: &WorkloadTable) -> Self {
        let owner = |labels: Labels| Labels {
            cgroup: table.index(labels.cgroup),
            ..labels
        };
        let add = |total: &mut u64, count: u64| *total += count;
        Figures {
            transitions: rekey(
                self.transitions,
                |k| EdgeKey::new(owner(k.labels), k.edge.from, k.edge.to),
                add,
            ),
            durations: rekey(
                self.durations,
                |k| EdgeKey::new(owner(k.labels), k.edge.from, k.edge.to),
                |total, histogram| merge_durations_into(total, &histogram),
            ),
            sockets: rekey(
                self.sockets,
                |k| StateKey::new(owner(k.labels), k.state),
                |t, c| *t += c,
            ),
            connect_failures: rekey(
                self.connect_failures,
                |k| ReasonKey {
                    labels: owner(k.labels),
                    ..k
                },
                add,
            ),
            inferred_transitions: self.inferred_transitions,
            events: Events {
                resets_sent: rekey(
                    self.events.resets_sent,
                    |k| StateKey::new(owner(k.labels), k.state),
                    add,
                ),
                resets_received: rekey(
                    self.events.resets_received,
                    |k| StateKey::new(owner(k.labels), k.state),
                    add,
                ),
                synack_retransmits: rekey(self.events.synack_retransmits, owner, add),
            },
            ages: rekey(
                self.ages,
                |k| StateKey::new(owner(k.labels), k.state),
                |total, ages| total.merge(&ages),
            ),
            workloads: Some(table.clone()),
        }
    }

    /// The workload label pairs of the workload at index `owner` (a label set's `cgroup` once
    /// `by_workload`), none unless workloads are labelled.
    fn workload_pairs(&self, owner: u32) -> Vec<LabelPair> {
        let Some(table) = &self.workloads else {
            return Vec::new();
        };
        let workload = table.workload(owner);
        pairs(&[
            ("namespace", &workload.namespace),
            ("pod", &workload.pod),
            ("container", &workload.container),
        ])
    }
}

/// `map` with its keys replaced by `relabel`, the values of keys made equal merged by `merge`.
fn rekey<K: Ord + Copy + HasLabels, V>(
    map: BTreeMap<K, V>,
    relabel: impl Fn(K) -> K,
    merge: impl Fn(&mut V, V),
) -> BTreeMap<K, V> {
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let key = relabel(key);
        // A retired workload's figures are no longer exported.
        if key.labels().cgroup == RETIRED {
            continue;
        }
        match out.entry(key) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(value);
            }
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                merge(entry.get_mut(), value)
            }
        }
    }
    out
}

/// The keys `rekey` re-labels.
trait HasLabels {
    fn labels(&self) -> Labels;
}

impl HasLabels for EdgeKey {
    fn labels(&self) -> Labels {
        self.labels
    }
}

impl HasLabels for StateKey {
    fn labels(&self) -> Labels {
        self.labels
    }
}

impl HasLabels for ReasonKey {
    fn labels(&self) -> Labels {
        self.labels
    }
}

impl HasLabels for Labels {
    fn labels(&self) -> Labels {
        *self
    }
}

fn merge_durations_into(total: &mut Histogram, extra: &Histogram) {
    total.count += extra.count;
    total.sum_ns += extra.sum_ns;
    for (total, count) in total.buckets.iter_mut().zip(&extra.buckets) {
        *total += count;
    }
}

/// The metric families of one scrape. Pure: unit-tested without a kernel, and by the golden
/// exposition (tests/exposition.rs).
pub fn exposition(scrape: &Scrape<'_>, config: &CollectorConfig) -> Vec<MetricFamily> {
    let figures = Figures::of(scrape, config);
    let groups = [
        transitions::families,
        sockets::families,
        ages::families,
        recording::families,
        programs::families,
        exporter::families,
        events::families,
        listen::families,
        namespace::families,
    ];
    groups
        .iter()
        .flat_map(|group| group(scrape, &figures, config))
        // A family without samples (no transition yet) is omitted: the text format has no way
        // to write it, and the encoder rejects it.
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

/// `first`, then a socket's `family`, `role` and `port`, then its workload's labels if they
/// are on.
fn with_socket(figures: &Figures, first: &[(&str, &str)], socket: &Labels) -> Vec<LabelPair> {
    let mut all = pairs(first);
    for (name, value) in labels::socket_labels(socket) {
        all.extend(pairs(&[(name, &value)]));
    }
    all.extend(figures.workload_pairs(socket.cgroup));
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

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};
    use tcpstate_common::{
        Labels, TcpState, TransitionKey, TransitionStats, family, program, role, transition_flag::*,
    };

    use super::*;

    fn text(snapshot: &Snapshot, bounds: &[f64]) -> String {
        text_after_poll(snapshot, bounds, None)
    }

    fn text_after_poll(snapshot: &Snapshot, bounds: &[f64], last_poll: Option<PartRun>) -> String {
        let config = CollectorConfig {
            bucket_bounds: bounds.to_vec(),
            view: View::Logical,
            poll_min_interval: Duration::from_secs(1),
            socket_slots: tcpstate_common::DEFAULT_SOCKET_SLOTS,
            service_ports: Vec::new(),
            collectors: Collectors::ALL,
        };
        let scrape = Scrape {
            snapshot,
            census: None,
            netstat: Some(ListenCounters {
                overflows: 4,
                drops: 5,
                timewait_overflows: 6,
            }),
            port_range: Some((32768, 60999)),
            parts: Parts {
                bpf: PartRun {
                    took: Duration::from_millis(1),
                    succeeded: true,
                },
                sockdiag: last_poll,
                netstat: Some(PartRun {
                    took: Duration::from_micros(40),
                    succeeded: true,
                }),
            },
            poll_errors: 0,
            workloads: None,
            ages: None,
        };
        let families = exposition(&scrape, &config);
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_poll_gauges_show_the_interval_in_force() {
        let snapshot = Snapshot::default();
        let gauge = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix("tcpstate_poll_interval_seconds "))
                .map(str::to_owned)
        };
        assert_eq!(gauge(&text(&snapshot, &[1.0])).as_deref(), Some("1"));
        let slow_poll = PartRun {
            took: Duration::from_millis(300),
            succeeded: true,
        };
        let slow = text_after_poll(&snapshot, &[1.0], Some(slow_poll));
        assert_eq!(gauge(&slow).as_deref(), Some("6"));
        assert!(slow.contains("tcpstate_poll_duration_seconds 0.3"));
    }

    #[test]
    fn each_part_of_the_collection_says_how_long_it_took_and_whether_it_failed() {
        let snapshot = Snapshot::default();
        let before_any_poll = text(&snapshot, &[1.0]);
        for line in [
            r#"tcpstate_scrape_collector_duration_seconds{collector="bpf"} 0.001"#,
            r#"tcpstate_scrape_collector_duration_seconds{collector="netstat"} 0.00004"#,
            r#"tcpstate_scrape_collector_success{collector="bpf"} 1"#,
            r#"tcpstate_scrape_collector_success{collector="netstat"} 1"#,
        ] {
            assert!(
                before_any_poll.contains(line),
                "{line} in:\n{before_any_poll}"
            );
        }
        assert!(!before_any_poll.contains(r#"collector="sockdiag""#));
        let failed_poll = PartRun {
            took: Duration::from_millis(2),
            succeeded: false,
        };
        let failed = text_after_poll(&snapshot, &[1.0], Some(failed_poll));
        assert!(
            failed.contains(r#"tcpstate_scrape_collector_success{collector="sockdiag"} 0"#),
            "{failed}"
        );
    }

    #[test]
    fn exposes_the_contract_names_labels_and_exact_buckets() {
        let labels = Labels {
            port: 8080,
            family: family::IPV6,
            role: role::SERVER,
            cgroup: 0,
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
            detail: 0,
            _padding: [0; 3],
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
        let misses = |recursion_misses| crate::sys::ProgramStats {
            recursion_misses,
            ..Default::default()
        };
        snapshot.programs = vec![
            (program::RECORD_STATE_CHANGE, misses(10)),
            (program::RECORD_RESET_SENT, misses(1)),
        ];
        snapshot.counters.nested_events_recorded = 7;
        let body = text(&snapshot, &[1.0]);
        assert!(
            body.contains(r#"tcpstate_recording_failures_total{reason="event_lost"} 4"#),
            "(10 - 7) + 1: {body}"
        );
        assert!(body.contains("tcpstate_listen_overflows_total 4"), "{body}");
        assert!(
            body.contains(r#"tcpstate_ephemeral_ports{bound="high"} 60999"#),
            "{body}"
        );
        assert!(
            body.contains("tcpstate_nested_events_recorded_total 7"),
            "{body}"
        );
    }
}
