//! The Prometheus collector: at each scrape, reads the kernel's maps once, takes what the
//! kernel handed over since the last scrape into the census, starts a sock_diag poll if one is
//! due, and builds the families (`super::exposition`). Descriptors are built once; concurrent
//! scrapes serialize on the state's lock.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicBool},
    time::Instant,
};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
};

use super::{CollectorConfig, PartRun, Parts, Scrape, exposition, families, recording::FailureLog};
use crate::{
    bpf::{
        figure_store::FigureStore,
        loader::KeptState,
        maps::{KernelMaps, Snapshot},
        socket_slots::ReleaseHandoffs,
    },
    inspect::{self, ChooseError, Located, SocketList, SocketQuery},
    kept::{DaemonFigures, Reader, Unreadable, Writer},
    model::{
        self, StateKey, View,
        ages::{Ages, add_age},
    },
    netstat::{self, ListenCounters},
    sockets::{
        census::Census,
        poller::{PollRecord, PollThread},
        survey::PollPlan,
    },
    sys,
    workload::{Resolver, WorkloadTable},
};

/// What the collector keeps between scrapes.
pub struct KernelState {
    pub maps: KernelMaps,
    pub census: Census,
    polls: PollRecord,
    failure_log: FailureLog,
    /// The last read of the daemon's netstat file or port range failed (logged once).
    netstat_failing: bool,
    /// Decodes the labels' cgroups into workloads, when workloads are labelled.
    workloads: Option<Resolver>,
    /// Where the daemon's figures are kept for the next daemon, and since when the programs
    /// are attached.
    store: Option<FigureStore>,
    attached_ns: u64,
    /// A failed write of the figures was logged (once until one succeeds).
    store_failing: bool,
    /// Without polls: the census's figures an earlier daemon kept, handed on unread to the
    /// next one (nothing follows their timewait sockets meanwhile; a daemon that polls takes
    /// them up again, as after a stop).
    unpolled_census: Option<Vec<u8>>,
}

impl KernelState {
    pub fn new(maps: KernelMaps, census: Census) -> Self {
        KernelState {
            maps,
            census,
            polls: PollRecord::default(),
            failure_log: FailureLog::default(),
            netstat_failing: false,
            workloads: None,
            store: None,
            attached_ns: 0,
            store_failing: false,
            unpolled_census: None,
        }
    }

    /// Continues the figures an earlier daemon kept (`kept.earlier`, for a census taken with
    /// `kept.attached_ns()`), and keeps this one's in `kept.store` at each scrape. Without
    /// polls (`config`), the census's are handed on as they were.
    pub fn keeping(mut self, kept: KeptState, config: &CollectorConfig) -> Self {
        self.attached_ns = kept.attached_ns();
        if let Some(bytes) = kept.earlier.as_deref()
            && let Err(error) = self.restore(bytes, config.collectors.sockdiag)
        {
            log::warn!(
                "{error}: TIME_WAIT ends, close_undelivered and listen counters of gone \
                 namespaces start again from 0 (the kernel's counters continue)"
            );
        }
        self.store = kept.store;
        self
    }

    fn restore(&mut self, bytes: &[u8], polled: bool) -> Result<(), Unreadable> {
        let mut input = Reader::new(bytes);
        let figures = DaemonFigures::restore(&mut input)?;
        if polled {
            self.census.restore(&mut input)?;
            if !input.is_done() {
                return Err(Unreadable);
            }
        } else {
            self.unpolled_census = Some(input.rest().to_vec());
        }
        self.maps.displaced_taken = figures.displaced_taken;
        self.maps.displaced_lost = figures.displaced_lost;
        self.polls.errors = figures.poll_errors;
        self.maps
            .replaced_programs
            .extend(figures.replaced_programs);
        Ok(())
    }

    /// Writes the figures the next daemon continues: before the scrape's answer goes out, so
    /// that what Prometheus saw is never lost.
    fn keep(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        let mut out = Writer::default();
        DaemonFigures {
            attached_ns: self.attached_ns,
            displaced_taken: self.maps.displaced_taken.clone(),
            displaced_lost: self.maps.displaced_lost,
            poll_errors: self.polls.errors,
            replaced_programs: self.maps.replaced_programs.clone(),
        }
        .save(&mut out);
        match &self.unpolled_census {
            Some(census) => out.raw(census),
            None => self.census.save(&mut out),
        }
        match store.write(&out.into_bytes()) {
            Ok(()) => self.store_failing = false,
            Err(error) if !self.store_failing => {
                self.store_failing = true;
                log::warn!(
                    "cannot keep the daemon's figures in the pinned state ({error}): a restart \
                     would not continue them from this scrape"
                );
            }
            Err(_) => {}
        }
    }

    /// Labels every socket figure with its workload, decoded by `resolver`.
    pub fn with_workloads(self, resolver: Resolver) -> Self {
        KernelState {
            workloads: Some(resolver),
            ..self
        }
    }

    /// How long the tracked sockets now in each state have been there, from the slot table's
    /// records (a read error counts in `read_errors`).
    fn record_ages(&self, read_errors: &mut u64) -> Ages {
        let now = sys::monotonic_ns();
        let mut ages = Ages::new();
        let read = self.maps.socket_slots.for_each_live(|record| {
            let key = StateKey::new(record.labels, record.state);
            add_age(&mut ages, key, record.entered_ns, now);
        });
        if let Err(error) = read {
            *read_errors += 1;
            log::warn!("cannot read the kernel's socket records for their ages: {error}");
        }
        ages
    }

    /// Adds the sockets older than the programs' first attachment that have not moved since
    /// (the start-up baseline), as old as that attachment: a lower bound, so that a leak older
    /// than tcpstated still passes the thresholds once tcpstated has run that long.
    fn add_baseline_ages(&self, ages: &mut Ages) {
        let now = sys::monotonic_ns();
        self.census.baseline.for_each(|_, _, labels, state| {
            add_age(ages, StateKey::new(labels, state), self.attached_ns, now);
        });
    }

    /// Adds the ages of the timewait and request sockets the polls follow (after this scrape's
    /// poll, as their counts).
    fn add_polled_ages(&self, ages: &mut Ages) {
        let now = sys::monotonic_ns();
        self.census
            .for_each_polled_socket(|_, _, labels, state, entered_ns| {
                if let Some(entered_ns) = entered_ns {
                    add_age(ages, StateKey::new(labels, state), entered_ns, now);
                }
            });
    }

    /// The workloads of every cgroup this scrape's figures carry; those of groups gone a while
    /// with no socket left retire first.
    fn workload_table(&mut self, snapshot: &Snapshot) -> Option<WorkloadTable> {
        let resolver = self.workloads.as_mut()?;
        let census = &self.census;
        let kernel = model::aggregate(&snapshot.transitions, 0, View::Raw);
        let in_use = kernel
            .sockets
            .iter()
            .chain(&census.sockets_now())
            .chain(census.baseline.counts())
            .filter(|(_, count)| **count > 0)
            .map(|(key, _)| key.labels.cgroup)
            .collect();
        resolver.retire_gone(&in_use, Instant::now());
        let cgroups = snapshot
            .transitions
            .iter()
            .map(|(key, _)| key.labels.cgroup)
            .chain(snapshot.events.iter().map(|(key, _)| key.labels.cgroup))
            .chain(census.sockets_now().keys().map(|key| key.labels.cgroup))
            .chain(census.baseline.counts().keys().map(|key| key.labels.cgroup))
            .chain(census.transitions().keys().map(|key| key.labels.cgroup))
            .collect::<std::collections::BTreeSet<u32>>();
        Some(WorkloadTable::build(resolver, cgroups))
    }

    /// Takes what the kernel handed over since the last scrape: the sockets older than the
    /// daemon it first saw move, the timewait handoffs, the records left behind (without
    /// `polls`, the handoffs are only released: nothing would follow their timewait sockets).
    /// False if the records could not be swept.
    fn take_kernel_records(&mut self, read_errors: &mut u64, polls: bool) -> bool {
        match self.maps.drain_first_seen() {
            Ok(cookies) => cookies
                .into_iter()
                .for_each(|cookie| self.census.baseline.first_seen(cookie)),
            Err(error) => {
                *read_errors += 1;
                log::warn!("cannot read the sockets first seen by the kernel programs: {error}");
            }
        }
        let swept = if polls {
            let mut sweep = self.census.record_sweep(sys::monotonic_ns());
            let swept = self.maps.sweep_records(&mut sweep);
            sweep.release_vanished_baseline();
            swept
        } else {
            self.maps.sweep_records(&mut ReleaseHandoffs)
        };
        if let Err(error) = &swept {
            self.polls.errors += 1;
            log::warn!("cannot sweep the kernel's socket records: {error}");
        }
        swept.is_ok()
    }

    /// The netstat counters summed over the namespaces and the narrowest port range, the
    /// daemon's namespace's read now (the last poll's stand in for a failed read, which is
    /// logged when it starts failing), and how the read went.
    fn read_netstat(&mut self) -> (Option<ListenCounters>, Option<(u16, u16)>, Option<PartRun>) {
        let started = Instant::now();
        let counters = netstat::read();
        let port_range = netstat::read_port_range();
        let took = started.elapsed();
        let failure = match (&counters, &port_range) {
            (Err(error), _) => Some(format!("{}: {error}", netstat::PATH)),
            (_, Err(error)) => Some(format!("{}: {error}", netstat::PORT_RANGE_PATH)),
            _ => None,
        };
        if let Some(failure) = &failure
            && !self.netstat_failing
        {
            log::warn!(
                "cannot read {failure}; the listen and TIME_WAIT figures of tcpstated's network \
                 namespace show the last poll's until it can"
            );
        }
        self.netstat_failing = failure.is_some();
        let run = PartRun {
            took,
            succeeded: failure.is_none(),
        };
        let census = &self.census;
        (
            census.listen_counters(counters.ok()),
            census.port_range(port_range.ok()),
            Some(run),
        )
    }
}

fn lock(state: &Mutex<KernelState>) -> MutexGuard<'_, KernelState> {
    // A panic while holding the lock leaves at worst a partly updated census.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
pub struct TcpStateCollector {
    state: Arc<Mutex<KernelState>>,
    /// A poll is running beside the scrapes.
    polling: Arc<AtomicBool>,
    /// Where polls run (and whatever else enters other network namespaces).
    poll_thread: Arc<PollThread>,
    config: CollectorConfig,
    descs: Vec<Desc>,
}

impl TcpStateCollector {
    pub fn new(state: KernelState, config: CollectorConfig, poll_thread: PollThread) -> Self {
        TcpStateCollector {
            state: Arc::new(Mutex::new(state)),
            polling: Arc::new(AtomicBool::new(false)),
            poll_thread: Arc::new(poll_thread),
            config,
            descs: families().map(|family| family.desc()).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, KernelState> {
        lock(&self.state)
    }

    /// Starts a sock_diag poll if the last one is older than the least interval: in the scrape
    /// if polls are quick, beside it otherwise. The census plans it (which namespaces, how
    /// deep) under the lock.
    fn poll_if_due(&self, state: &mut KernelState) {
        if !self.config.collectors.sockdiag
            || !state.polls.due(self.config.poll_min_interval)
            || self.polling.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let plan = state.census.plan_poll();
        if state.polls.quick() {
            let started = Instant::now();
            let poll = self.poll_thread.run(plan);
            state.polls.fold(&mut state.census, poll, started);
            return;
        }
        if let Err(error) = self.spawn_poll(plan) {
            state.polls.failed_to_start();
            log::warn!("cannot start a sock_diag poll: {error}");
        }
    }

    /// Polls sock_diag on a thread of its own, now: the first poll, at start-up, so the first
    /// scrape does not wait for it.
    pub fn start_background_poll(&self) {
        if !self.config.collectors.sockdiag {
            return;
        }
        let plan = self.lock().census.plan_poll();
        if let Err(error) = self.spawn_poll(plan) {
            self.lock().polls.failed_to_start();
            log::warn!("cannot start a sock_diag poll: {error}");
        }
    }

    /// The sockets view's answer to `query` (see `inspect`): chosen under the lock, located
    /// on the poll thread without it, which also searches every namespace for the sockets
    /// recorded in socket storage if any ever were.
    pub fn sockets(&self, query: &SocketQuery) -> Result<SocketList, ChooseError> {
        let (mut choice, listing) = {
            let state = &mut *self.lock();
            let search_storage = state.maps.counters(&mut 0).records_in_socket_storage > 0;
            let slots = &state.maps.socket_slots;
            let (choice, mut listing) = inspect::choose(
                |each| slots.for_each_live(each),
                search_storage,
                slots.try_clone().ok(),
                &state.census,
                state.workloads.as_mut(),
                query,
                sys::monotonic_ns(),
            )?;
            // The maps live as long as the daemon: the descriptor outlasts the listing.
            listing.storage_map =
                search_storage.then(|| state.maps.socket_records.fd().as_fd().as_raw_fd());
            (choice, listing)
        };
        let located = self
            .poll_thread
            .run_job(move |home| listing.locate(std::path::Path::new("/proc"), home))
            .unwrap_or_else(|error| {
                log::warn!("sockets view: cannot locate the sockets: {error}");
                Located::default()
            });
        choice.add_unseen(&located);
        if !located.unseen.is_empty()
            && let Some(resolver) = self.lock().workloads.as_mut()
        {
            choice.name_workloads(resolver);
        }
        Ok(choice.answer(&located))
    }

    /// A poll beside the scrapes, folded in under the lock when done. The caller may hold it.
    fn spawn_poll(&self, plan: PollPlan) -> std::io::Result<()> {
        let shared = self.state.clone();
        self.poll_thread
            .spawn(&self.polling, plan, move |poll, started| {
                let state = &mut *lock(&shared);
                state.polls.fold(&mut state.census, poll, started);
            })
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
        let collectors = self.config.collectors;
        let swept = state.take_kernel_records(&mut snapshot.read_errors, collectors.sockdiag);
        snapshot.handoffs_lost = state.maps.displaced_lost;
        let mut ages = state.record_ages(&mut snapshot.read_errors);
        state.add_baseline_ages(&mut ages);
        let bpf = PartRun {
            took: started.elapsed(),
            succeeded: swept && snapshot.read_errors == 0,
        };
        self.poll_if_due(state);
        state.add_polled_ages(&mut ages);
        let sockdiag = match (state.polls.last_took(), state.polls.last_succeeded()) {
            (None, true) => None, // no poll yet
            (took, succeeded) => Some(PartRun {
                took: took.unwrap_or_default(),
                succeeded,
            }),
        };
        let (listen_counters, port_range, netstat) = match collectors.netstat {
            true => state.read_netstat(),
            false => (None, None, None),
        };
        let workloads = state.workload_table(&snapshot);
        let scrape = Scrape {
            snapshot: &snapshot,
            census: Some(&state.census),
            netstat: listen_counters,
            port_range,
            parts: Parts {
                bpf,
                sockdiag,
                netstat,
            },
            poll_errors: state.polls.errors,
            workloads: workloads.as_ref(),
            ages: Some(&ages),
        };
        let families = exposition(&scrape, &self.config);
        state.failure_log.note(&families, Instant::now());
        state.keep();
        families
    }
}
