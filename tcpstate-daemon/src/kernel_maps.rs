//! Reads the kernel's aggregates at scrape time. The daemon does no per-event work: everything
//! here is proportional to the number of distinct label sets, not to events or sockets.

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::ProgramFd,
};
use std::os::fd::{AsFd as _, AsRawFd as _};
use tcpstate_common::{TRANSITIONS_CAPACITY, TransitionKey, TransitionStats, counter};

use crate::{
    aggregate::{Counters, sum_over_cpus},
    sys::{self, ProgramStats},
};

pub struct KernelMaps {
    pub transitions: PerCpuHashMap<MapData, TransitionKey, TransitionStats>,
    pub counters: PerCpuArray<MapData, u64>,
    pub primary_program: ProgramFd,
    pub nested_program: ProgramFd,
}

/// One consistent-enough read of everything the kernel keeps.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Entries summed over CPUs.
    pub transitions: Vec<(TransitionKey, TransitionStats)>,
    pub counters: Counters,
    pub primary_program: ProgramStats,
    pub nested_program: ProgramStats,
    /// Keys that could not be read (an entry removed during the walk, which never happens today).
    pub read_errors: u64,
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
        let stats = |fd: &ProgramFd| sys::program_stats(&fd.as_fd().as_raw_fd());
        snapshot.primary_program = stats(&self.primary_program).unwrap_or_default();
        snapshot.nested_program = stats(&self.nested_program).unwrap_or_default();
        snapshot
    }

    /// Whether both programs are still loaded (the kernel answers for their fds).
    pub fn programs_alive(&self) -> bool {
        [&self.primary_program, &self.nested_program]
            .into_iter()
            .all(|fd| sys::program_stats(&fd.as_fd().as_raw_fd()).is_ok())
    }
}
