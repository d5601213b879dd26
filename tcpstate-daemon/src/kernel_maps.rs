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
    DISPLACED_HANDOFF_SLOTS, DisplacedHandoff, EventKey, Labels, MAX_BUCKETS, TimewaitHandoff,
    TransitionKey, TransitionSlot, TransitionStats, counter, program, recorder,
};

use crate::{
    aggregate::{Counters, sum_over_cpus},
    sys::{self, ProgramStats, SlotSweep},
};

pub struct KernelMaps {
    pub transitions: PerCpuHashMap<MapData, TransitionKey, TransitionStats>,
    /// `TRANSITION_SLOTS` (a per-CPU array read in batches, so kept as plain map data).
    pub transition_slots: MapData,
    pub counters: PerCpuArray<MapData, u64>,
    pub events: PerCpuHashMap<MapData, EventKey, u64>,
    /// `TIMEWAIT_HANDOFFS` (an LRU hash, drained in batches, so kept as plain map data).
    pub timewait_handoffs: MapData,
    /// `DISPLACED_HANDOFFS` (a per-CPU array read in batches, so kept as plain map data).
    pub displaced_handoffs: MapData,
    /// Per CPU, the sequence of the last displaced handoff taken from its ring.
    pub displaced_taken: Vec<u64>,
    /// Displaced handoffs overwritten in their ring before a sweep could take them.
    pub displaced_lost: u64,
    /// `FIRST_SEEN` (a hash, drained in batches, so kept as plain map data).
    pub first_seen: MapData,
    /// `SOCKET_SLOTS`, mapped: the records of tracked sockets, and the handoffs of the
    /// connections whose sockets had a slot.
    pub socket_slots: sys::SocketSlots,
    /// Every attached program, by name.
    pub programs: Vec<(&'static str, ProgramFd)>,
}

/// One consistent-enough read of everything the kernel keeps.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// `TRANSITIONS` entries summed over CPUs, then the used `TRANSITION_SLOTS` entries of
    /// every CPU: a key may come more than once (its sum is the count).
    pub transitions: Vec<(TransitionKey, TransitionStats)>,
    /// Entries of the `TRANSITIONS` map (not counting the slots).
    pub transitions_map_entries: usize,
    pub events: Vec<(EventKey, u64)>,
    pub counters: Counters,
    /// Kernel statistics of each program, by name.
    pub programs: Vec<(&'static str, ProgramStats)>,
    /// Handoffs displaced from the slot table and lost before the daemon took them.
    pub handoffs_lost: u64,
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
        snapshot.transitions_map_entries = snapshot.transitions.len();
        if self
            .read_transition_slots(&mut snapshot.transitions)
            .is_err()
        {
            snapshot.read_errors += 1;
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

    /// Appends the used `TRANSITION_SLOTS` entries of every CPU to `entries`, reading the
    /// per-CPU array in batches of at most 64 KiB: under the allocator's mmap threshold (a
    /// freed mmapped buffer would raise it, and the census's large maps would then grow on the
    /// heap, copied, instead of being remapped: the daemon's peak went up by 15 MB).
    fn read_transition_slots(
        &self,
        entries: &mut Vec<(TransitionKey, TransitionStats)>,
    ) -> std::io::Result<()> {
        const SLOT: usize = size_of::<TransitionSlot>();
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        let value_size = SLOT * cpus;
        let fd = self.transition_slots.fd().as_fd().as_raw_fd();
        sys::read_array(&fd, value_size, (64 << 10) / value_size, |values| {
            entries.extend(values.chunks_exact(SLOT).filter_map(decode_transition_slot));
        })
    }

    /// Sweeps the kernel's per-socket records (see `sys::SlotSweep`): takes (reads and releases)
    /// the records of connections handed to timewait sockets since the last sweep, those left
    /// in the slot table, then those of sockets tracked in socket storage; and releases the
    /// slots of records `sweep` knows to be stale.
    pub fn sweep_records(&mut self, sweep: &mut impl SlotSweep) -> std::io::Result<()> {
        const KEY: usize = size_of::<u64>();
        const VALUE: usize = size_of::<TimewaitHandoff>();
        self.socket_slots.sweep(sweep)?;
        self.take_displaced_handoffs(sweep)?;
        let (keys, values) =
            sys::drain_hash_map(&self.timewait_handoffs.fd().as_fd().as_raw_fd(), KEY, VALUE)?;
        for (key, value) in keys.chunks_exact(KEY).zip(values.chunks_exact(VALUE)) {
            sweep.take_handoff(decode_u64(key), decode_handoff(value));
        }
        Ok(())
    }

    /// Takes the handoffs new sockets displaced from the slot table since the last sweep, from
    /// each CPU's ring: those numbered after the last taken, up to the CPU's count (read first:
    /// the kernel writes an entry before counting it). An entry whose two sequence numbers do not
    /// both say so was overwritten (the ring went round before this sweep): counted lost.
    fn take_displaced_handoffs(&mut self, sweep: &mut impl SlotSweep) -> std::io::Result<()> {
        const ENTRY: usize = size_of::<DisplacedHandoff>();
        const SLOTS: u64 = DISPLACED_HANDOFF_SLOTS as u64;
        let index = u32::from(recorder::PRIMARY) * counter::COUNT + counter::HANDOFFS_DISPLACED;
        let counts: Vec<u64> = match self.counters.get(&index, 0) {
            Ok(per_cpu) => per_cpu.iter().copied().collect(),
            Err(error) => return Err(std::io::Error::other(error)),
        };
        self.displaced_taken.resize(counts.len(), 0);
        if counts == self.displaced_taken {
            return Ok(());
        }
        let cpus = counts.len();
        let mut ring = Vec::with_capacity(DISPLACED_HANDOFF_SLOTS as usize * cpus);
        let fd = self.displaced_handoffs.fd().as_fd().as_raw_fd();
        sys::read_array(&fd, ENTRY * cpus, (64 << 10) / (ENTRY * cpus), |values| {
            ring.extend(values.chunks_exact(ENTRY).map(decode_displaced_handoff));
        })?;
        for (cpu, (&count, taken)) in counts.iter().zip(&mut self.displaced_taken).enumerate() {
            for sequence in *taken + 1..=count {
                match ring.get((sequence % SLOTS) as usize * cpus + cpu) {
                    Some(entry) if entry.sequence == sequence && entry.sequence_end == sequence => {
                        sweep.take_handoff(entry.cookie, entry.handoff)
                    }
                    _ => self.displaced_lost += 1,
                }
            }
            *taken = count;
        }
        Ok(())
    }

    /// Takes (reads and deletes) the cookies of the sockets the programs first saw mid-life
    /// since the last call (see `baseline`).
    pub fn drain_first_seen(&self) -> std::io::Result<Vec<u64>> {
        const KEY: usize = size_of::<u64>();
        let (keys, _states) = sys::drain_hash_map(
            &self.first_seen.fd().as_fd().as_raw_fd(),
            KEY,
            size_of::<u8>(),
        )?;
        Ok(keys.chunks_exact(KEY).map(decode_u64).collect())
    }
}

fn decode_u64(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// A used `TransitionSlot` from its bytes (`#[repr(C)]`: 2 + 2 + `MAX_BUCKETS` u64s); `None`
/// for a free one.
fn decode_transition_slot(bytes: &[u8]) -> Option<(TransitionKey, TransitionStats)> {
    let mut words = bytes.chunks_exact(8).map(decode_u64);
    let mut next = || words.next().unwrap_or(0);
    let key = [next(), next()];
    if key == [0, 0] {
        return None;
    }
    let mut stats = TransitionStats {
        count: next(),
        duration_sum_ns: next(),
        duration_buckets: [0; MAX_BUCKETS],
    };
    for bucket in &mut stats.duration_buckets {
        *bucket = next();
    }
    Some((TransitionKey::from_words(key), stats))
}

/// `DisplacedHandoff` from its bytes (`#[repr(C)]`: two u64s, a `TimewaitHandoff`, a u64).
fn decode_displaced_handoff(bytes: &[u8]) -> DisplacedHandoff {
    DisplacedHandoff {
        sequence: decode_u64(&bytes[0..8]),
        cookie: decode_u64(&bytes[8..16]),
        handoff: decode_handoff(&bytes[16..40]),
        sequence_end: decode_u64(&bytes[40..48]),
    }
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
    fn transition_slots_decode_from_their_repr_c_bytes_and_free_ones_are_skipped() {
        let key = TransitionKey::new(
            Labels {
                port: 443,
                family: 2,
                role: 1,
                _padding: [0; 4],
            },
            2,
            1,
            3,
            0,
            0,
        );
        let mut words = vec![key.words()[0], key.words()[1], 7, 1234];
        words.extend((0..MAX_BUCKETS as u64).map(|bucket| bucket * 10));
        let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_ne_bytes()).collect();
        assert_eq!(bytes.len(), size_of::<TransitionSlot>());
        let (decoded_key, stats) = decode_transition_slot(&bytes).expect("a used slot");
        assert_eq!(decoded_key, key);
        assert_eq!((stats.count, stats.duration_sum_ns), (7, 1234));
        assert_eq!(stats.duration_buckets[3], 30);
        assert_eq!(
            decode_transition_slot(&[0; size_of::<TransitionSlot>()]),
            None
        );
    }

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
