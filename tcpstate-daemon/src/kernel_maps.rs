//! Reads the kernel's aggregates at scrape time. The daemon does no per-event work: the
//! aggregates are proportional to the number of distinct label sets, not to events or sockets;
//! the sweep of the per-socket records, to the slot table's fixed size (and the handoffs since
//! the last scrape).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::ProgramFd,
};
use tcpstate_common::{
    EventKey, Labels, TimewaitHandoff, TransitionKey, TransitionStats, counter, program,
};

use crate::{
    aggregate::{Counters, sum_over_cpus},
    sys::{self, ProgramStats, SlotSweep},
};

pub struct KernelMaps {
    pub transitions: PerCpuHashMap<MapData, TransitionKey, TransitionStats>,
    pub counters: PerCpuArray<MapData, u64>,
    pub events: PerCpuHashMap<MapData, EventKey, u64>,
    /// `TIMEWAIT_HANDOFFS` (an LRU hash, drained in batches, so kept as plain map data).
    pub timewait_handoffs: MapData,
    /// `SOCKET_SLOTS`, mapped: the records of tracked sockets, and the handoffs of the
    /// connections whose sockets had a slot.
    pub socket_slots: sys::SocketSlots,
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

    /// Sweeps the kernel's per-socket records (see `sys::SlotSweep`): takes (reads and releases)
    /// the records of connections handed to timewait sockets since the last sweep, those left
    /// in the slot table, then those of sockets tracked in socket storage; and releases the
    /// slots of records `sweep` knows to be stale.
    pub fn sweep_records(&self, sweep: &mut impl SlotSweep) -> std::io::Result<()> {
        const KEY: usize = size_of::<u64>();
        const VALUE: usize = size_of::<TimewaitHandoff>();
        self.socket_slots.sweep(sweep)?;
        let (keys, values) =
            sys::drain_hash_map(&self.timewait_handoffs.fd().as_fd().as_raw_fd(), KEY, VALUE)?;
        for (key, value) in keys.chunks_exact(KEY).zip(values.chunks_exact(VALUE)) {
            sweep.take_handoff(decode_u64(key), decode_handoff(value));
        }
        Ok(())
    }

    /// Whether every program is still loaded (the kernel answers for their fds).
    pub fn programs_alive(&self) -> bool {
        self.programs
            .iter()
            .all(|(_, fd)| sys::program_stats(&fd.as_fd().as_raw_fd()).is_ok())
    }
}

fn decode_u64(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// `TimewaitHandoff` from its bytes (`#[repr(C)]`: u64, then `Labels` {u16, u8, u8, [u8; 4]},
/// then the state).
fn decode_handoff(bytes: &[u8]) -> TimewaitHandoff {
    TimewaitHandoff {
        entered_ns: decode_u64(&bytes[0..8]),
        labels: Labels {
            port: u16::from_ne_bytes([bytes[8], bytes[9]]),
            family: bytes[10],
            role: bytes[11],
            _padding: [0; 4],
        },
        state: bytes[16],
        _padding: [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoffs_decode_from_their_repr_c_bytes() {
        let handoff = TimewaitHandoff {
            entered_ns: 0x0102_0304_0506_0708,
            labels: Labels {
                port: 443,
                family: 10,
                role: 2,
                _padding: [0; 4],
            },
            state: 6,
            _padding: [0; 7],
        };
        let mut bytes = Vec::new();
        bytes.extend(handoff.entered_ns.to_ne_bytes());
        bytes.extend(443u16.to_ne_bytes());
        bytes.extend([10, 2, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes.len(), size_of::<TimewaitHandoff>());
        assert_eq!(decode_handoff(&bytes), handoff);
    }
}
