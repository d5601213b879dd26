//! The Prometheus collector: at each scrape, reads the kernel's maps once and turns them into
//! metric families. Every metric the daemon exports about TCP is born here.

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};
use tcpstate_common::{Labels, TcpState, program};

use crate::{
    aggregate::{
        View, aggregate, connect_failure_reason, events, merge_durations, merge_transitions,
        sockets_now,
    },
    census::{self, Census, ListenQueue},
    kernel_maps::{KernelMaps, Snapshot},
    labels,
    netstat::{self, ListenCounters},
    sock_diag::{self, DiagSocket},
    sys,
};

fn lock(state: &Mutex<KernelState>) -> MutexGuard<'_, KernelState> {
    // A panic while holding the lock leaves at worst a partly updated census.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
    help: "Sockets the kernel program keeps a record for (in the socket slot table, or in \
           socket-local storage when a socket's slots were taken).",
    kind: MetricType::GAUGE,
    labels: &[],
};
const RECORDS_IN_SOCKET_STORAGE: Family = Family {
    name: "tcpstate_socket_records_in_socket_storage_total",
    help: "Sockets tracked in socket-local storage because their slots in the socket slot \
           table were taken: nothing is lost, but their events cost more. Growing steadily: \
           raise --sockets.slots.",
    kind: MetricType::COUNTER,
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
    help: "Capacity of a kernel map: TRANSITIONS (when full, new label sets are counted in \
           tcpstate_recording_failures_total{reason=\"transitions_map_full\"}) and \
           SOCKET_SLOTS (--sockets.slots).",
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

const CONNECT_FAILURES: Family = Family {
    name: "tcpstate_connect_failures_total",
    help: "Client connects that ended SYN_SENT -> CLOSE, by reason: refused (RST to the SYN), \
           timeout (SYN retransmissions exhausted), reset, other (unreachable, aborted).",
    kind: MetricType::COUNTER,
    labels: &["reason", "family", "port"],
};
const RESETS_SENT: Family = Family {
    name: "tcpstate_resets_sent_total",
    help: "Resets sent, by the state of the socket that sent them.",
    kind: MetricType::COUNTER,
    labels: &["state", "family", "role", "port"],
};
const RESETS_RECEIVED: Family = Family {
    name: "tcpstate_resets_received_total",
    help: "Resets received, by the state of the socket that received them.",
    kind: MetricType::COUNTER,
    labels: &["state", "family", "role", "port"],
};
const SYNACK_RETRANSMITS: Family = Family {
    name: "tcpstate_synack_retransmits_total",
    help: "SYN-ACKs retransmitted by listeners because the handshake's final ACK did not come.",
    kind: MetricType::COUNTER,
    labels: &["family", "port"],
};
const LISTEN_QUEUE_LENGTH: Family = Family {
    name: "tcpstate_listen_queue_length",
    help: "Connections waiting in listeners' accept queues (sock_diag, at the last poll).",
    kind: MetricType::GAUGE,
    labels: &["port"],
};
const LISTEN_QUEUE_LIMIT: Family = Family {
    name: "tcpstate_listen_queue_limit",
    help: "Listeners' accept queue limits (the listen() backlog, capped by net.core.somaxconn).",
    kind: MetricType::GAUGE,
    labels: &["port"],
};
const LISTEN_OVERFLOWS: Family = Family {
    name: "tcpstate_listen_overflows_total",
    help: "Handshakes completed while the accept queue was full (TcpExt ListenOverflows of the \
           daemon's network namespace).",
    kind: MetricType::COUNTER,
    labels: &[],
};
const LISTEN_DROPS: Family = Family {
    name: "tcpstate_listen_drops_total",
    help: "SYNs and handshake ACKs dropped by listeners, overflows included (TcpExt ListenDrops \
           of the daemon's network namespace).",
    kind: MetricType::COUNTER,
    labels: &[],
};
const POLL_DURATION: Family = Family {
    name: "tcpstate_poll_duration_seconds",
    help: "Time the last sock_diag poll took (timewait, request, listening and closing sockets).",
    kind: MetricType::GAUGE,
    labels: &[],
};
const POLL_INTERVAL: Family = Family {
    name: "tcpstate_poll_interval_seconds",
    help: "Least time between sock_diag polls now: --sockdiag.min-interval, or 20 times the last \
           poll's duration if longer (polls take at most 5% of one CPU); scrapes start polls.",
    kind: MetricType::GAUGE,
    labels: &[],
};

const TIMEWAIT_OVERFLOWS: Family = Family {
    name: "tcpstate_timewait_overflows_total",
    help: "Connections that closed without a timewait socket because net.ipv4.tcp_max_tw_buckets \
           was reached (TcpExt TCPTimeWaitOverflow of the daemon's network namespace).",
    kind: MetricType::COUNTER,
    labels: &[],
};
const EPHEMERAL_PORTS: Family = Family {
    name: "tcpstate_ephemeral_ports",
    help: "Bounds of the ephemeral port range connect() draws local ports from \
           (net.ipv4.ip_local_port_range of the daemon's network namespace).",
    kind: MetricType::GAUGE,
    labels: &["bound"],
};

const FAMILIES: [&Family; 26] = [
    &TIMEWAIT_OVERFLOWS,
    &EPHEMERAL_PORTS,
    &TRANSITIONS,
    &DURATIONS,
    &SOCKETS,
    &TRACKED_SOCKETS,
    &RECORDS_IN_SOCKET_STORAGE,
    &MAP_ENTRIES,
    &MAP_CAPACITY,
    &FAILURES,
    &NESTED_EVENTS,
    &PROGRAM_RUNS,
    &PROGRAM_RUN_SECONDS,
    &PROGRAM_RECURSION_MISSES,
    &COLLECT_SECONDS,
    &BUILD_INFO,
    &CONNECT_FAILURES,
    &RESETS_SENT,
    &RESETS_RECEIVED,
    &SYNACK_RETRANSMITS,
    &LISTEN_QUEUE_LENGTH,
    &LISTEN_QUEUE_LIMIT,
    &LISTEN_OVERFLOWS,
    &LISTEN_DROPS,
    &POLL_DURATION,
    &POLL_INTERVAL,
];

/// How the collector reads and presents.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub bucket_bounds: Vec<f64>,
    pub view: View,
    pub poll_min_interval: Duration,
    /// Entries of the kernel's socket slot table.
    pub socket_slots: u32,
}

/// What the collector keeps between scrapes.
pub struct KernelState {
    pub maps: KernelMaps,
    pub census: Census,
    last_poll: Option<(Instant, Duration)>,
    poll_errors: u64,
}

impl KernelState {
    pub fn new(maps: KernelMaps, census: Census) -> Self {
        KernelState {
            maps,
            census,
            last_poll: None,
            poll_errors: 0,
        }
    }

    /// Folds a finished poll into the census.
    fn fold_poll(&mut self, poll: io::Result<Poll>, started: Instant) {
        match poll {
            Ok(poll) => {
                self.census.observe(
                    &poll.sockets,
                    &poll.requests,
                    poll.started_ns,
                    poll.finished_ns,
                );
                let large = poll.sockets.len() + poll.requests.len() > LARGE_POLL;
                drop(poll);
                if large {
                    sys::release_free_memory();
                }
            }
            Err(error) => {
                self.poll_errors += 1;
                log::warn!("sock_diag poll failed: {error}");
            }
        }
        self.last_poll = Some((started, started.elapsed()));
    }
}

/// Sockets in a poll past which the memory its lists took is handed back to the system once
/// folded in (otherwise the allocator keeps it, and the daemon's resident size stays at the
/// peak of the largest poll).
const LARGE_POLL: usize = 10_000;

/// One sock_diag poll's sockets.
struct Poll {
    /// In `census::POLLED_STATES`.
    sockets: Vec<DiagSocket>,
    requests: Vec<DiagSocket>,
    started_ns: u64,
    finished_ns: u64,
}

/// One dump, so the kernel walks its sockets once: the polled states and the request sockets.
fn poll_sockets() -> io::Result<Poll> {
    let started_ns = sys::monotonic_ns();
    let states = sock_diag::state_mask(&census::POLLED_STATES)
        | sock_diag::state_mask(&[TcpState::NewSynRecv as u8]);
    // sock_diag reports request sockets in SYN_RECV; full sockets in SYN_RECV are not asked for.
    let (requests, sockets) = sock_diag::dump(states, None)?
        .into_iter()
        .partition(|socket| socket.state == TcpState::SynRecv as u8 && !socket.timewait);
    Ok(Poll {
        sockets,
        requests,
        started_ns,
        finished_ns: sys::monotonic_ns(),
    })
}

/// A poll starts at least this many times the last poll's duration after the last one started:
/// however often scrapes come, polls take at most 1/20 (5%) of one CPU. A poll walks every socket
/// of the host, so on a host with a million connections one takes about a third of a second.
const POLL_SPACING: u32 = 20;

/// Least time between the starts of two polls, after one that took `last_took`.
fn poll_interval(min_interval: Duration, last_took: Duration) -> Duration {
    min_interval.max(last_took.saturating_mul(POLL_SPACING))
}

/// A poll that took longer than this runs next time beside the scrape rather than in it, so
/// the scrape's latency does not grow with the host's sockets (the kernel walks all of them,
/// whatever states are asked for: about 0.2 µs each). Below it, the scrape waits and shows the
/// freshest figures.
const INLINE_POLL_LIMIT: Duration = Duration::from_millis(20);

pub struct TcpStateCollector {
    state: Arc<Mutex<KernelState>>,
    /// A poll is running beside the scrapes.
    polling: Arc<AtomicBool>,
    config: CollectorConfig,
    descs: Vec<Desc>,
}

impl TcpStateCollector {
    pub fn new(state: KernelState, config: CollectorConfig) -> Self {
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
            state: Arc::new(Mutex::new(state)),
            polling: Arc::new(AtomicBool::new(false)),
            config,
            descs,
        }
    }

    fn lock(&self) -> MutexGuard<'_, KernelState> {
        lock(&self.state)
    }

    /// Starts a sock_diag poll if the last one is older than the least interval: in the scrape
    /// if polls are quick, beside it otherwise (see `INLINE_POLL_LIMIT`).
    fn poll_if_due(&self, state: &mut KernelState) {
        let due = match state.last_poll {
            Some((at, took)) => at.elapsed() >= poll_interval(self.config.poll_min_interval, took),
            None => true,
        };
        if !due || self.polling.load(Ordering::Acquire) {
            return;
        }
        let quick = state
            .last_poll
            .is_none_or(|(_, took)| took < INLINE_POLL_LIMIT);
        if quick {
            let started = Instant::now();
            state.fold_poll(poll_sockets(), started);
            return;
        }
        if let Err(error) = self.spawn_poll() {
            state.poll_errors += 1;
            log::warn!("cannot start a sock_diag poll: {error}");
        }
    }

    /// Polls sock_diag on a thread of its own, now: the first poll, at start-up, so the first
    /// scrape does not wait for it.
    pub fn start_background_poll(&self) {
        if let Err(error) = self.spawn_poll() {
            self.lock().poll_errors += 1;
            log::warn!("cannot start a sock_diag poll: {error}");
        }
    }

    /// Runs a poll on its own thread, which folds the result in when done; nothing if one is
    /// already running. The caller may hold the state's lock.
    fn spawn_poll(&self) -> io::Result<()> {
        if self.polling.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (shared, polling) = (self.state.clone(), self.polling.clone());
        let spawned = std::thread::Builder::new()
            .name("sock_diag poll".into())
            .spawn(move || {
                let started = Instant::now();
                let poll = poll_sockets();
                lock(&shared).fold_poll(poll, started);
                polling.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.polling.store(false, Ordering::Release);
        }
        spawned.map(drop)
    }
}

impl Collector for TcpStateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let started = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut snapshot = state.maps.read();
        match state.maps.drain_first_seen() {
            Ok(cookies) => cookies
                .into_iter()
                .for_each(|cookie| state.census.baseline.first_seen(cookie)),
            Err(error) => {
                snapshot.read_errors += 1;
                log::warn!("cannot read the sockets first seen by the kernel programs: {error}");
            }
        }
        let mut sweep = state.census.record_sweep(sys::monotonic_ns());
        if let Err(error) = state.maps.sweep_records(&mut sweep) {
            state.poll_errors += 1;
            log::warn!("cannot sweep the kernel's socket records: {error}");
        }
        sweep.release_vanished_baseline();
        snapshot.handoffs_lost = state.maps.displaced_lost;
        let read_seconds = started.elapsed().as_secs_f64();
        self.poll_if_due(state);
        let scrape = Scrape {
            snapshot: &snapshot,
            census: Some(&state.census),
            netstat: netstat::read().ok(),
            port_range: netstat::read_port_range(),
            read_seconds,
            last_poll_took: state.last_poll.map(|(_, took)| took),
            poll_errors: state.poll_errors,
        };
        exposition(&scrape, &self.config)
    }
}

/// Everything one scrape shows.
pub struct Scrape<'a> {
    pub snapshot: &'a Snapshot,
    pub census: Option<&'a Census>,
    pub netstat: Option<ListenCounters>,
    pub port_range: Option<(u16, u16)>,
    pub read_seconds: f64,
    /// How long the last sock_diag poll took, if there was one.
    pub last_poll_took: Option<Duration>,
    pub poll_errors: u64,
}

/// The metric families of one scrape. Pure: unit-tested without a kernel.
pub fn exposition(scrape: &Scrape<'_>, config: &CollectorConfig) -> Vec<MetricFamily> {
    let snapshot = scrape.snapshot;
    let bucket_bounds = &config.bucket_bounds;
    let kernel = aggregate(&snapshot.transitions, bucket_bounds.len(), config.view);
    let empty = BTreeMap::new();
    let sockets = sockets_now(
        &kernel,
        scrape.census.map_or(&empty, |c| c.baseline.counts()),
        &scrape
            .census
            .map_or_else(BTreeMap::new, |census| census.sockets_now()),
    );
    let mut transitions = kernel.transitions.clone();
    let mut durations = kernel.durations.clone();
    if let (View::Logical, Some(census)) = (config.view, scrape.census) {
        merge_transitions(&mut transitions, &census.transitions);
        merge_durations(&mut durations, &census.durations);
    }
    let counters = &snapshot.counters;
    let events = events(&snapshot.events);

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

    let connect_failures = kernel
        .connect_failures
        .iter()
        .fold(
            BTreeMap::<(&str, &str, String), u64>::new(),
            |mut merged, ((socket, detail), count)| {
                let key = (
                    connect_failure_reason(*detail),
                    labels::family(socket.family),
                    labels::port(socket.port),
                );
                *merged.entry(key).or_default() += count;
                merged
            },
        )
        .into_iter()
        .map(|((reason, family, port), count)| {
            counter_metric(
                pairs(&[("reason", reason), ("family", family), ("port", &port)]),
                count as f64,
            )
        })
        .collect();

    let resets = |by_state: &BTreeMap<(Labels, u8), u64>| -> Vec<Metric> {
        by_state
            .iter()
            .filter_map(|((socket, state), count)| {
                let state = labels::state(*state)?;
                Some(counter_metric(
                    with_socket(&[("state", state)], socket),
                    *count as f64,
                ))
            })
            .collect()
    };
    let synack_retransmits = events
        .synack_retransmits
        .iter()
        .fold(
            BTreeMap::<(&str, String), u64>::new(),
            |mut merged, (listener, count)| {
                *merged
                    .entry((labels::family(listener.family), labels::port(listener.port)))
                    .or_default() += count;
                merged
            },
        )
        .into_iter()
        .map(|((family, port), count)| {
            counter_metric(pairs(&[("family", family), ("port", &port)]), count as f64)
        })
        .collect();
    let queues = |value: fn(&ListenQueue) -> u64| -> Vec<Metric> {
        scrape
            .census
            .map(|census| {
                census
                    .listen_queues
                    .iter()
                    .map(|(port, queue)| {
                        gauge_metric(
                            pairs(&[("port", &labels::port(*port))]),
                            value(queue) as f64,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    let failures = [
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
            scrape.census.map_or(0, |census| census.undelivered_closes),
        ),
        ("out_of_sequence", kernel.inferred_transitions),
        ("map_read_error", snapshot.read_errors),
        ("poll_error", scrape.poll_errors),
    ]
    .into_iter()
    .map(|(reason, count)| counter_metric(pairs(&[("reason", reason)]), count as f64))
    .collect();

    let per_program = |value: fn(&crate::sys::ProgramStats) -> f64| -> Vec<Metric> {
        snapshot
            .programs
            .iter()
            .map(|(name, stats)| {
                counter_metric(pairs(&[("program", program_label(name))]), value(stats))
            })
            .collect()
    };
    let transitions_map = || pairs(&[("map", tcpstate_common::map::TRANSITIONS)]);
    let single = |value: f64| vec![gauge_metric(vec![], value)];
    let single_counter = |value: f64| vec![counter_metric(vec![], value)];

    let mut families = vec![
        family(&TRANSITIONS, transitions),
        family(&DURATIONS, durations),
        family(&SOCKETS, sockets),
        family(&TRACKED_SOCKETS, single(counters.tracked_sockets() as f64)),
        family(
            &MAP_ENTRIES,
            vec![gauge_metric(
                transitions_map(),
                snapshot.transitions_map_entries as f64,
            )],
        ),
        family(
            &RECORDS_IN_SOCKET_STORAGE,
            single_counter(counters.records_in_socket_storage as f64),
        ),
        family(
            &MAP_CAPACITY,
            vec![
                gauge_metric(
                    transitions_map(),
                    tcpstate_common::TRANSITIONS_CAPACITY.into(),
                ),
                gauge_metric(
                    pairs(&[("map", tcpstate_common::map::SOCKET_SLOTS)]),
                    config.socket_slots.into(),
                ),
            ],
        ),
        family(&FAILURES, failures),
        family(
            &NESTED_EVENTS,
            single_counter(counters.nested_events_recorded as f64),
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
        family(&COLLECT_SECONDS, single(scrape.read_seconds)),
        family(
            &BUILD_INFO,
            vec![gauge_metric(pairs(&[("version", VERSION)]), 1.0)],
        ),
        family(&CONNECT_FAILURES, connect_failures),
        family(&RESETS_SENT, resets(&events.resets_sent)),
        family(&RESETS_RECEIVED, resets(&events.resets_received)),
        family(&SYNACK_RETRANSMITS, synack_retransmits),
        family(&LISTEN_QUEUE_LENGTH, queues(|q| q.length)),
        family(&LISTEN_QUEUE_LIMIT, queues(|q| q.limit)),
        family(
            &POLL_INTERVAL,
            single(
                poll_interval(
                    config.poll_min_interval,
                    scrape.last_poll_took.unwrap_or_default(),
                )
                .as_secs_f64(),
            ),
        ),
    ];
    if let Some(netstat) = scrape.netstat {
        families.push(family(
            &LISTEN_OVERFLOWS,
            single_counter(netstat.overflows as f64),
        ));
        families.push(family(&LISTEN_DROPS, single_counter(netstat.drops as f64)));
        families.push(family(
            &TIMEWAIT_OVERFLOWS,
            single_counter(netstat.timewait_overflows as f64),
        ));
    }
    if let Some((low, high)) = scrape.port_range {
        let bound = |name, value: u16| gauge_metric(pairs(&[("bound", name)]), value.into());
        families.push(family(
            &EPHEMERAL_PORTS,
            vec![bound("low", low), bound("high", high)],
        ));
    }
    if let Some(took) = scrape.last_poll_took {
        families.push(family(&POLL_DURATION, single(took.as_secs_f64())));
    }
    families
        .into_iter()
        // A family without samples (no transition yet) is omitted: the text format has no way
        // to write it, and the encoder rejects it.
        .filter(|family| !family.get_metric().is_empty())
        .collect()
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
        text_after_poll(snapshot, bounds, None)
    }

    fn text_after_poll(
        snapshot: &Snapshot,
        bounds: &[f64],
        last_poll_took: Option<Duration>,
    ) -> String {
        let config = CollectorConfig {
            bucket_bounds: bounds.to_vec(),
            view: View::Logical,
            poll_min_interval: Duration::from_secs(1),
            socket_slots: tcpstate_common::DEFAULT_SOCKET_SLOTS,
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
            read_seconds: 0.001,
            last_poll_took,
            poll_errors: 0,
        };
        let families = exposition(&scrape, &config);
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn slow_polls_are_spaced_to_a_twentieth_of_one_cpu() {
        let second = Duration::from_secs(1);
        assert_eq!(poll_interval(second, Duration::from_millis(20)), second);
        assert_eq!(
            poll_interval(second, Duration::from_millis(337)),
            Duration::from_millis(6740)
        );
        assert_eq!(poll_interval(second, Duration::MAX), Duration::MAX);
        let snapshot = Snapshot::default();
        let gauge = |text: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix("tcpstate_poll_interval_seconds "))
                .map(str::to_owned)
        };
        assert_eq!(gauge(&text(&snapshot, &[1.0])).as_deref(), Some("1"));
        let slow = text_after_poll(&snapshot, &[1.0], Some(Duration::from_millis(300)));
        assert_eq!(gauge(&slow).as_deref(), Some("6"));
        assert!(slow.contains("tcpstate_poll_duration_seconds 0.3"));
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
