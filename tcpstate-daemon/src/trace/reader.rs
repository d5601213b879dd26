//! The reader: a thread of its own that reads the kernel's ring only while the stream has
//! subscribers, decodes each transition once and hands it to the subscribers whose filter it
//! passes. It alone writes the kernel's filter, so it also tells each new subscriber when the
//! kernel sends what it asked for. It polls the ring every 10 ms (the programs schedule no
//! wakeup per event): the ring holds about 11,900 events, so it drops events only past about a
//! million a second.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use serde_json::json;
use tokio::sync::watch;

use super::{
    event::{Clock, decode, workload_name},
    filter::{kernel_filter, workload_matches},
    hub::{Hub, Message, Subscriber},
    kernel::{KernelTrace, next_event},
};
use crate::workload::Resolver;
use tcpstate_common::{TraceControl, TraceEvent};

/// How often the reader drains the ring.
const POLL: Duration = Duration::from_millis(10);
/// How often it reports the kernel's drops and looks after the workloads' groups.
const TICK: Duration = Duration::from_millis(250);
/// How often a workload filter's groups are looked up again (new containers).
const GROUPS_REFRESH: Duration = Duration::from_secs(10);
/// Events read at most per poll: more than the ring holds.
const BATCH: usize = 16384;

pub struct Reader {
    hub: Arc<Hub>,
    kernel: KernelTrace,
    /// Decodes owners into workloads (`--workloads`): its own cache, unbounded by
    /// `--workloads.max` (a stream has no series to bound).
    resolver: Option<Resolver>,
    subscribers: Vec<Subscriber>,
    /// The groups of each subscriber's workload filter, and when they were looked up.
    groups: HashMap<u64, Vec<u32>>,
    groups_at: Instant,
    /// The kernel's drop count last reported.
    drops_seen: u64,
}

/// Starts the reader's thread, which runs until the process ends (idle while nobody listens).
pub fn spawn(
    hub: Arc<Hub>,
    ring: RingBuf<MapData>,
    kernel: KernelTrace,
    resolver: Option<Resolver>,
) -> std::io::Result<()> {
    let reader = Reader {
        hub,
        kernel,
        resolver,
        subscribers: Vec::new(),
        groups: HashMap::new(),
        groups_at: Instant::now(),
        drops_seen: 0,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tcpstate-trace".into())
        .spawn(move || runtime.block_on(reader.run(ring)))?;
    Ok(())
}

impl Reader {
    async fn run(mut self, mut ring: RingBuf<MapData>) {
        let mut changes = self.hub.watch();
        loop {
            while self.hub.count() == 0 {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            self.listen(&mut ring, &mut changes).await;
        }
    }

    /// Reads the ring until the last subscriber leaves.
    async fn listen(&mut self, ring: &mut RingBuf<MapData>, changes: &mut watch::Receiver<u64>) {
        self.drops_seen = self.kernel.drops();
        self.apply_changes();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() || self.hub.count() == 0 {
                        self.stop(ring);
                        return;
                    }
                    self.apply_changes();
                }
                _ = poll.tick() => {
                    self.drain(ring);
                    if last_tick.elapsed() >= TICK {
                        last_tick = Instant::now();
                        self.on_tick();
                    }
                }
            }
        }
    }

    /// Hands out the events in the ring (a batch at most).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let clock = Clock::now();
        for _ in 0..BATCH {
            match next_event(ring) {
                Some(Some(event)) => self.deliver(&event, &clock),
                Some(None) => {}
                None => return,
            }
        }
    }

    fn deliver(&mut self, event: &TraceEvent, clock: &Clock) {
        let Some(mut transition) = decode(event, clock) else {
            return;
        };
        if let Some(resolver) = &mut self.resolver {
            transition.workload = Some(resolver.workload(transition.cgroup));
        }
        let mut json: Option<Arc<str>> = None;
        for subscriber in &self.subscribers {
            if subscriber.ready.load(Ordering::Acquire) && subscriber.filter().matches(&transition)
            {
                let json = json.get_or_insert_with(|| transition.to_json().to_string().into());
                subscriber.offer(Message::Transition(json.clone()));
            }
        }
    }

    /// Takes the hub's subscribers, rewrites the kernel's filter, and tells the new ones.
    fn apply_changes(&mut self) {
        self.subscribers = self.hub.subscribers();
        let ids: BTreeSet<u64> = self.subscribers.iter().map(|s| s.id).collect();
        self.groups.retain(|id, _| ids.contains(id));
        self.look_up_groups(false);
        self.write_control();
        for subscriber in &self.subscribers {
            if !subscriber.ready.swap(true, Ordering::AcqRel) {
                subscriber.offer(Message::Ready(ready_event(subscriber).into()));
            }
        }
    }

    fn write_control(&mut self) {
        let control = kernel_filter(
            self.subscribers
                .iter()
                .map(|s| (s.filter(), self.groups.get(&s.id).map(Vec::as_slice))),
        );
        if let Err(error) = self.kernel.set_control(&control) {
            log::warn!("cannot set the event stream's kernel filter: {error:#}");
        }
    }

    /// Looks up the cgroups of each subscriber's workload filter: every one's (`again`), or
    /// only the new subscribers'.
    fn look_up_groups(&mut self, again: bool) {
        let filters: Vec<(u64, String)> = self
            .subscribers
            .iter()
            .filter(|s| again || !self.groups.contains_key(&s.id))
            .filter_map(|s| Some((s.id, s.filter().workload.clone()?)))
            .collect();
        for (id, wanted) in filters {
            let groups = self.resolver.as_mut().map_or_else(Vec::new, |resolver| {
                resolver
                    .groups_matching(|workload| workload_matches(&wanted, &workload_name(workload)))
            });
            self.groups.insert(id, groups);
        }
    }

    /// Reports the kernel's drops to every subscriber; looks the workloads' groups up again.
    fn on_tick(&mut self) {
        let drops = self.kernel.drops();
        let new = drops.saturating_sub(self.drops_seen);
        self.drops_seen = drops;
        if new > 0 {
            for subscriber in &self.subscribers {
                subscriber.dropped.ring.fetch_add(new, Ordering::AcqRel);
            }
        }
        if !self.groups.is_empty() && self.groups_at.elapsed() >= GROUPS_REFRESH {
            self.groups_at = Instant::now();
            self.look_up_groups(true);
            self.write_control();
        }
        if let Some(resolver) = &mut self.resolver {
            // Forgets groups gone for minutes (walks the hierarchy at most once a minute).
            resolver.retire_gone(&BTreeSet::new(), Instant::now());
        }
    }

    /// The last subscriber left: the kernel stops sending, and what it sent is discarded.
    fn stop(&mut self, ring: &mut RingBuf<MapData>) {
        if let Err(error) = self.kernel.set_control(&TraceControl::OFF) {
            log::warn!("cannot stop the event stream in the kernel: {error:#}");
        }
        while next_event(ring).is_some() {}
        self.subscribers.clear();
        self.groups.clear();
    }
}

/// The JSON of a subscriber's `ready` event: what it asked for.
fn ready_event(subscriber: &Subscriber) -> String {
    let filter = subscriber.filter();
    json!({
        "ports": filter.ports,
        "states": filter.states.iter().map(|state| state.name()).collect::<Vec<_>>(),
        "workload": filter.workload,
        "limit": subscriber.request.limit,
        "queue": subscriber.request.queue,
    })
    .to_string()
}
