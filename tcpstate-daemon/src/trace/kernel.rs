//! The stream's kernel side, seen from the daemon: its program (`trace_state_change`), attached
//! while someone listens and detached when the last one leaves; the filter it writes (the
//! global `TRACE_CONTROL`, through the `.bss` section's map); the program's own socket records
//! (`TRACE_SOCKETS`), which it fills from the slot table when the stream starts and empties when
//! it stops; the ring it reads (`TRACE_EVENTS`); the drops it reports (`TRACE_DROPS`).

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray, RingBuf},
    programs::ProgramFd,
};
use tcpstate_common::{TraceControl, TraceEvent, TracedSocket, TransitionKey, map, program};

use crate::{bpf::socket_slots::SocketSlots, sys};

/// `BPF_NOEXIST`: the program's own entry, made since the stream started, is newer.
const NOT_IF_PRESENT: u64 = 1;

/// The stream's maps as the loader takes them: the ring, which the reader waits on, and the
/// rest.
pub struct TraceMaps {
    pub ring: RingBuf<MapData>,
    pub kernel: KernelTrace,
}

/// The program, the filter, the program's socket records and the drops.
pub struct KernelTrace {
    program: ProgramFd,
    /// While someone listens: the program's attachment (closing it detaches the program).
    link: Option<OwnedFd>,
    control: Array<MapData, TraceControl>,
    /// What `control` holds.
    current: TraceControl,
    sockets: HashMap<MapData, u64, TracedSocket>,
    drops: PerCpuArray<MapData, u64>,
    /// The counting programs' records, copied into `sockets` when the stream starts.
    slots: SocketSlots,
}

impl TraceMaps {
    /// Takes the stream's maps (from the loaded object, or an adopted state's pins) with its
    /// `program` (loaded, not attached) and the slot table; tells the program nobody listens
    /// yet and empties its records: an adopted state may hold an earlier daemon's.
    pub fn take(
        mut take: impl FnMut(&str) -> anyhow::Result<Map>,
        program: ProgramFd,
        slots: SocketSlots,
    ) -> anyhow::Result<Self> {
        let mut kernel = KernelTrace {
            program,
            link: None,
            control: Array::try_from(take(map::TRACE_CONTROL)?)?,
            current: TraceControl::OFF,
            sockets: HashMap::try_from(take(map::TRACE_SOCKETS)?)?,
            drops: PerCpuArray::try_from(take(map::TRACE_DROPS)?)?,
            slots,
        };
        kernel.stop()?;
        Ok(TraceMaps {
            ring: RingBuf::try_from(take(map::TRACE_EVENTS)?)?,
            kernel,
        })
    }
}

impl KernelTrace {
    /// Tells the program who listens, and for what: attaches it for the first subscriber,
    /// gives it the sockets' states and entry times whenever the filter changes, and detaches
    /// it when `control` is off.
    pub fn set_control(&mut self, control: &TraceControl) -> anyhow::Result<()> {
        if control.subscribers == 0 {
            return self.stop();
        }
        if *control == self.current && self.link.is_some() {
            return Ok(());
        }
        self.control.set(0, control, 0)?;
        self.current = *control;
        if self.link.is_none() {
            self.link = Some(self.attach()?);
        }
        // Also when the filter changes: the program kept nothing for sockets it filtered out.
        self.copy_records();
        Ok(())
    }

    /// Attaches the program once and detaches it (`--check`).
    pub fn check_attach(&self) -> anyhow::Result<()> {
        self.attach().map(drop)
    }

    fn attach(&self) -> anyhow::Result<OwnedFd> {
        sys::bpf::attach_btf_tracepoint(self.program.as_fd()).with_context(|| {
            format!(
                "cannot attach program {} (the event stream's)",
                program::TRACE_STATE_CHANGE
            )
        })
    }

    /// Detaches the program, then tells it nobody listens and empties its records.
    fn stop(&mut self) -> anyhow::Result<()> {
        self.link = None;
        self.control.set(0, TraceControl::OFF, 0)?;
        self.current = TraceControl::OFF;
        sys::bpf::drain_hash_map::<u64, TracedSocket>(self.sockets.map().fd().as_fd(), |_, _| {})
            .with_context(|| format!("cannot empty map {}", map::TRACE_SOCKETS))
    }

    /// Gives the program the state and entry time of every socket the slot table holds, so
    /// that the first transition it sends of each has its duration. Where the program already
    /// made its own entry (a transition since it was attached), that one stays.
    fn copy_records(&mut self) {
        let copied = self.slots.for_each_live(|record| {
            let traced = TracedSocket {
                entered_ns: record.entered_ns,
                labels: record.labels,
                state: record.state,
                _padding: [0; 7],
            };
            // Present: newer. Full: that socket's first duration is unknown.
            let _ = self.sockets.insert(record.cookie, traced, NOT_IF_PRESENT);
        });
        if let Err(error) = copied {
            log::warn!(
                "cannot read the socket slot table for the event stream ({error}): transitions \
                 of sockets that entered their state before the stream started have no duration"
            );
        }
    }

    /// Events the stream lost since the programs were loaded: those the ring had no room for,
    /// and those the kernel did not run the program for (it was already running on the CPU).
    pub fn drops(&self) -> u64 {
        let ring = self
            .drops
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum());
        let skipped = sys::program_stats(&self.program.as_fd().as_raw_fd())
            .map_or(0, |stats| stats.recursion_misses);
        ring + skipped
    }
}

/// The next record in the ring, decoded (`None` inside: too short to be a [`TraceEvent`]).
pub fn next_event(ring: &mut RingBuf<MapData>) -> Option<Option<TraceEvent>> {
    let item = ring.next()?;
    Some(decode_event(&item))
}

/// A [`TraceEvent`] from its bytes, field by field (safe code, in the layout's order).
pub fn decode_event(bytes: &[u8]) -> Option<TraceEvent> {
    let mut cursor = bytes.get(..size_of::<TraceEvent>())?;
    let mut take = |count: usize| {
        let (head, rest) = cursor.split_at(count);
        cursor = rest;
        head
    };
    let mut word = || u64::from_le_bytes(take(8).try_into().unwrap_or_default());
    let (time_ns, cookie, duration_ns, labels) = (word(), word(), word(), word());
    let local_address = [word(), word()];
    let remote_address = [word(), word()];
    let ports = word();
    let bytes = ports.to_le_bytes();
    Some(TraceEvent {
        time_ns,
        cookie,
        duration_ns,
        labels: TransitionKey::from_words([labels, 0]).labels,
        local_address,
        remote_address,
        local_port: u16::from_le_bytes([bytes[0], bytes[1]]),
        remote_port: u16::from_le_bytes([bytes[2], bytes[3]]),
        from: bytes[4],
        to: bytes[5],
        flags: bytes[6],
        detail: bytes[7],
        recorder: word() as u8,
        _padding: [0; 7],
    })
}

#[cfg(test)]
mod tests {
    use tcpstate_common::Labels;

    use super::*;

    #[test]
    fn events_decode_from_the_kernels_layout() {
        let event = TraceEvent {
            time_ns: 1,
            cookie: 2,
            duration_ns: 3,
            labels: Labels {
                port: 443,
                family: 10,
                role: 2,
                cgroup: 0xdead_beef,
            },
            local_address: [4, 5],
            remote_address: [6, 7],
            local_port: 443,
            remote_port: 50000,
            from: 1,
            to: 8,
            flags: 3,
            detail: 0,
            recorder: 1,
            _padding: [0; 7],
        };
        // The bytes as the kernel (little-endian, `#[repr(C)]`) lays them out.
        let mut bytes = Vec::new();
        for word in [1u64, 2, 3] {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend(443u16.to_le_bytes());
        bytes.extend([10, 2]);
        bytes.extend(0xdead_beef_u32.to_le_bytes());
        for word in [4u64, 5, 6, 7] {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend(443u16.to_le_bytes());
        bytes.extend(50000u16.to_le_bytes());
        bytes.extend([1, 8, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes.len(), size_of::<TraceEvent>());
        assert_eq!(decode_event(&bytes), Some(event));
        assert_eq!(decode_event(&bytes[..79]), None);
    }
}
