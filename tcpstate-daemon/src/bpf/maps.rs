//! Reads the kernel's maps at scrape time, as their `Pod` types. The daemon does no per-event work: the
//! aggregates are proportional to the number of distinct label sets, not to events or sockets;
//! the sweep of the per-socket records, to the slot table's fixed size (and the handoffs since
//! the last scrape).

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::{
    maps::{Map, MapData, PerCpuArray, PerCpuHashMap},
    programs::ProgramFd,
};
use tcpstate_common::{
    DISPLACED_HANDOFF_SLOTS, DisplacedHandoff, EventKey, SocketRecord, TimewaitHandoff,
    TransitionKey, TransitionSlot, TransitionStats, counter, map, program, recorder,
};

use crate::{
    bpf::{
        loader::PROGRAMS,
        socket_slots::{SlotSweep, SocketSlots},
    },
    model::{Counters, events_lost, sum_over_cpus},
    sys::{self, ProgramStats},
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
    pub socket_slots: SocketSlots,
    /// `SOCKET_RECORDS` (socket storage), for sock_diag to tell tracked sockets.
    pub socket_records: MapData,
    /// Every attached program, by name.
    pub programs: Vec<(&'static str, ProgramFd)>,
    /// What the kernel counted for the programs upgrades replaced (see
    /// `kept::DaemonFigures::replaced_programs`), added to the running ones' figures.
    pub replaced_programs: Vec<(u64, ProgramStats)>,
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
        let state_change = events_lost(
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
    /// Takes the maps the daemon reads, each by name from `take` (the loaded object, or the
    /// pinned state); `programs`: every attached program, by name; `socket_slots`: the slot
    /// table's size.
    pub fn take(
        mut take: impl FnMut(&str) -> anyhow::Result<Map>,
        programs: Vec<(&'static str, ProgramFd)>,
        socket_slots: u32,
    ) -> anyhow::Result<Self> {
        Ok(KernelMaps {
            transitions: PerCpuHashMap::try_from(take(map::TRANSITIONS)?)?,
            transition_slots: match take(map::TRANSITION_SLOTS)? {
                Map::PerCpuArray(data) => data,
                _ => anyhow::bail!("map {} is not a per-CPU array", map::TRANSITION_SLOTS),
            },
            counters: PerCpuArray::try_from(take(map::COUNTERS)?)?,
            events: PerCpuHashMap::try_from(take(map::EVENTS)?)?,
            timewait_handoffs: match take(map::TIMEWAIT_HANDOFFS)? {
                Map::LruHashMap(data) => data,
                _ => anyhow::bail!("map {} is not an LRU hash", map::TIMEWAIT_HANDOFFS),
            },
            displaced_handoffs: match take(map::DISPLACED_HANDOFFS)? {
                Map::PerCpuArray(data) => data,
                _ => anyhow::bail!("map {} is not a per-CPU array", map::DISPLACED_HANDOFFS),
            },
            displaced_taken: Vec::new(),
            displaced_lost: 0,
            first_seen: match take(map::FIRST_SEEN)? {
                Map::HashMap(data) => data,
                _ => anyhow::bail!("map {} is not a hash", map::FIRST_SEEN),
            },
            socket_slots: map_socket_slots(take(map::SOCKET_SLOTS)?, socket_slots)?,
            socket_records: match take(map::SOCKET_RECORDS)? {
                Map::SkStorage(data) => data,
                _ => anyhow::bail!("map {} is not socket storage", map::SOCKET_RECORDS),
            },
            programs,
            replaced_programs: Vec::new(),
        })
    }

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
        snapshot.counters = self.counters(&mut snapshot.read_errors);
        snapshot.programs = self
            .programs
            .iter()
            .map(|(name, fd)| {
                let mut stats = sys::program_stats(&fd.as_fd().as_raw_fd()).unwrap_or_default();
                let index = PROGRAMS.iter().position(|(program, _)| program == name);
                for (replaced, earlier) in &self.replaced_programs {
                    if Some(*replaced as usize) == index {
                        stats += *earlier;
                    }
                }
                (*name, stats)
            })
            .collect();
        snapshot
    }

    /// The kernel's `COUNTERS`, summed (a counter that cannot be read counts in
    /// `read_errors`, and as 0).
    pub fn counters(&self, read_errors: &mut u64) -> Counters {
        let slots: Vec<u64> = (0..counter::SLOTS)
            .map(|index| match self.counters.get(&index, 0) {
                Ok(per_cpu) => per_cpu.iter().sum(),
                Err(_) => {
                    *read_errors += 1;
                    0
                }
            })
            .collect();
        Counters::from_slots(&slots)
    }

    /// Appends the used `TRANSITION_SLOTS` entries of every CPU to `entries`, reading the
    /// per-CPU array in batches of at most 64 KiB: under the allocator's mmap threshold (a
    /// freed mmapped buffer would raise it, and the census's large maps would then grow on the
    /// heap, copied, instead of being remapped: the daemon's peak went up by 15 MB).
    fn read_transition_slots(
        &self,
        entries: &mut Vec<(TransitionKey, TransitionStats)>,
    ) -> std::io::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        let chunk = (64 << 10) / (size_of::<TransitionSlot>() * cpus);
        let map = self.transition_slots.fd().as_fd();
        sys::bpf::read_per_cpu_array(map, cpus, chunk, |slots: &[TransitionSlot]| {
            // A free slot's key is [0, 0].
            entries.extend(
                slots
                    .iter()
                    .filter(|slot| slot.key != [0, 0])
                    .map(|slot| (TransitionKey::from_words(slot.key), slot.stats)),
            );
        })
    }

    /// Sweeps the kernel's per-socket records (see `SlotSweep`): takes (reads and releases)
    /// the records of connections handed to timewait sockets since the last sweep, those left
    /// in the slot table, then those of sockets tracked in socket storage; and releases the
    /// slots of records `sweep` knows to be stale.
    pub fn sweep_records(&mut self, sweep: &mut impl SlotSweep) -> std::io::Result<()> {
        self.socket_slots.sweep(sweep)?;
        self.take_displaced_handoffs(sweep)?;
        let map = self.timewait_handoffs.fd().as_fd();
        sys::bpf::drain_hash_map(map, |cookies: &[u64], handoffs: &[TimewaitHandoff]| {
            for (cookie, handoff) in cookies.iter().zip(handoffs) {
                sweep.take_handoff(*cookie, *handoff);
            }
        })
    }

    /// Takes the handoffs new sockets displaced from the slot table since the last sweep, from
    /// each CPU's ring: those numbered after the last taken, up to the CPU's count (read first:
    /// the kernel writes an entry before counting it). An entry whose two sequence numbers do not
    /// both say so was overwritten (the ring went round before this sweep): counted lost.
    fn take_displaced_handoffs(&mut self, sweep: &mut impl SlotSweep) -> std::io::Result<()> {
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
        let map = self.displaced_handoffs.fd().as_fd();
        let chunk = (64 << 10) / (size_of::<DisplacedHandoff>() * cpus);
        sys::bpf::read_per_cpu_array(map, cpus, chunk, |entries: &[DisplacedHandoff]| {
            ring.extend_from_slice(entries)
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
    /// since the last call (see `sockets::census::baseline`).
    pub fn drain_first_seen(&self) -> std::io::Result<Vec<u64>> {
        let mut cookies = Vec::new();
        let map = self.first_seen.fd().as_fd();
        sys::bpf::drain_hash_map(map, |keys: &[u64], _states: &[u8]| {
            cookies.extend_from_slice(keys)
        })?;
        Ok(cookies)
    }
}

/// A live view of the socket slot table (`slots` records): to tell tracked sockets from
/// untracked ones, and to take the timewait handoffs its slots hold.
fn map_socket_slots(map: Map, slots: u32) -> anyhow::Result<SocketSlots> {
    let Map::Array(data) = map else {
        anyhow::bail!("map {} is not an array", map::SOCKET_SLOTS);
    };
    let info = data.info()?;
    if info.max_entries() != slots || info.value_size() as usize != size_of::<SocketRecord>() {
        anyhow::bail!(
            "map {} has {} slots of {} bytes, not {slots} of {}",
            map::SOCKET_SLOTS,
            info.max_entries(),
            info.value_size(),
            size_of::<SocketRecord>()
        );
    }
    SocketSlots::new(data.fd().as_fd(), slots)
        .with_context(|| format!("cannot keep a descriptor of map {}", map::SOCKET_SLOTS))
}
