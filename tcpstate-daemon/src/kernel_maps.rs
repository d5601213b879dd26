//! Reads the kernel's aggregates at scrape time. The daemon does no per-event work: everything
//! here is proportional to the number of distinct label sets (and orphaned FIN_WAIT2 handoffs
//! since the last scrape), not to events or sockets.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::ProgramFd,
};
use tcpstate_common::{
    EventKey, OrphanFinWait2, TRANSITIONS_CAPACITY, TransitionKey, TransitionStats, counter,
    program,
};

use crate::{
    aggregate::{Counters, sum_over_cpus},
    sys::{self, ProgramStats},
};

pub struct KernelMaps {
    pub transitions: PerCpuHashMap<MapData, TransitionKey, TransitionStats>,
    pub counters: PerCpuArray<MapData, u64>,
    pub events: PerCpuHashMap<MapData, EventKey, u64>,
    pub orphan_fin_wait2: HashMap<MapData, u64, OrphanFinWait2>,
    /// Every attached program, by name.
    pub programs: Vec<(&'static str, ProgramFd)>,
}

/// One consistent-enough read of everything the kernel keeps.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Entries summed over CPUs.
    pub transitions: Vec<(TransitionKey, TransitionStats)>,
    pub events: Vec<(EventKey, u64)>,
    pub counters: Counters,
    /// Kernel statistics of each program, by name.
    pub programs: Vec<(&'static str, ProgramStats)>,
    /// Entries that could not be read (an entry removed during the walk, which never happens
    /// today).
    pub read_errors: u64,
}

impl Snapshot {
    pub fn program(&self, name: &str) -> ProgramStats {
        self.programs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }

    /// Events no program saw: the kernel's recursion misses of the state-change program that
    /// the nested-event program did not record, and those of the event programs.
    pub fn events_lost(&self) -> u64 {
        let state_change = crate::aggregate::events_lost(
            self.program(program::RECORD_STATE_CHANGE).recursion_misses,
            self.counters.nested_events_recorded,
        );
        let others: u64 = [
            program::RECORD_RESET_SENT,
            program::RECORD_RESET_RECEIVED,
            program::RECORD_SYNACK_RETRANSMIT,
        ]
        .iter()
        .map(|name| self.program(name).recursion_misses)
        .sum();
        state_change + others
    }
}

pub const TRANSITIONS_MAP_CAPACITY: u32 = TRANSITIONS_CAPACITY;

impl KernelMaps {
    pub fn read(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for entry in self.transitions.iter() {
            match entry {
                Ok((key, per_cpu)) => snapshot
                    .transitions
                    .push((key, sum_over_cpus(per_cpu.iter()))),
                Err(_) => snapshot.read_errors += 1,
            }
        }
        for entry in self.events.iter() {
            match entry {
                Ok((key, per_cpu)) => snapshot.events.push((key, per_cpu.iter().sum())),
                Err(_) => snapshot.read_errors += 1,
            }
        }
        let slots: Vec<u64> = (0..counter::SLOTS)
            .map(|index| match self.counters.get(&index, 0) {
                Ok(per_cpu) => per_cpu.iter().sum(),
                Err(_) => {
                    snapshot.read_errors += 1;
                    0
                }
            })
            .collect();
        snapshot.counters = Counters::from_slots(&slots);
        snapshot.programs = self
            .programs
            .iter()
            .map(|(name, fd)| {
                (
                    *name,
                    sys::program_stats(&fd.as_fd().as_raw_fd()).unwrap_or_default(),
                )
            })
            .collect();
        snapshot
    }

    /// Takes (reads and deletes) the kernel's records of orphaned FIN_WAIT2 handoffs.
    pub fn drain_orphans(&mut self) -> Vec<(u64, OrphanFinWait2)> {
        let cookies: Vec<u64> = self
            .orphan_fin_wait2
            .keys()
            .filter_map(Result::ok)
            .collect();
        let mut drained = Vec::with_capacity(cookies.len());
        for cookie in cookies {
            if let Ok(record) = self.orphan_fin_wait2.get(&cookie, 0) {
                drained.push((cookie, record));
            }
            let _ = self.orphan_fin_wait2.remove(&cookie);
        }
        drained
    }

    /// Whether every program is still loaded (the kernel answers for their fds).
    pub fn programs_alive(&self) -> bool {
        self.programs
            .iter()
            .all(|(_, fd)| sys::program_stats(&fd.as_fd().as_raw_fd()).is_ok())
    }
}
