//! The stream's maps, seen from the daemon: the filter it writes (the global `TRACE_CONTROL`,
//! through the `.bss` section's map), the ring it reads (`TRACE_EVENTS`), the drops it reports
//! (`TRACE_DROPS`).

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use tcpstate_common::{TraceControl, TraceEvent, TransitionKey, map, recorder};

/// The stream's maps as the loader takes them: the ring, which the reader waits on, and the
/// rest.
pub struct TraceMaps {
    pub ring: RingBuf<MapData>,
    pub kernel: KernelTrace,
}

/// The filter and the drops.
pub struct KernelTrace {
    control: Array<MapData, TraceControl>,
    drops: PerCpuArray<MapData, u64>,
}

impl TraceMaps {
    /// Takes the stream's maps (from the loaded object, or an adopted state's pins) and tells
    /// the programs nobody listens yet: an adopted state may hold an earlier daemon's filter.
    pub fn take(mut take: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        let mut kernel = KernelTrace {
            control: Array::try_from(take(map::TRACE_CONTROL)?)?,
            drops: PerCpuArray::try_from(take(map::TRACE_DROPS)?)?,
        };
        kernel.set_control(&TraceControl::OFF)?;
        Ok(TraceMaps {
            ring: RingBuf::try_from(take(map::TRACE_EVENTS)?)?,
            kernel,
        })
    }
}

impl KernelTrace {
    /// Tells the programs who listens, and for what.
    pub fn set_control(&mut self, control: &TraceControl) -> anyhow::Result<()> {
        self.control.set(0, control, 0)?;
        Ok(())
    }

    /// Events the ring had no room for, since the programs were loaded.
    pub fn drops(&self) -> u64 {
        (0..recorder::COUNT as u32)
            .filter_map(|index| self.drops.get(&index, 0).ok())
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .sum()
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
