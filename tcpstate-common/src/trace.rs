//! The live event stream (`tcpstated trace`, `/events`): what the daemon tells the stream's
//! program (the global `TRACE_CONTROL`: whether anyone listens, and the filter), what that
//! program keeps per socket (`TRACE_SOCKETS`) and what it sends back (`TRACE_EVENTS`, a ring
//! buffer of [`TraceEvent`]). The program is attached only while someone listens: with nobody
//! listening, no instruction of the stream runs.

use crate::Labels;

/// Bytes of the `TRACE_EVENTS` ring buffer (a power of two, a multiple of the page size):
/// about 11,900 events of 80 bytes plus the ring's 8-byte header each.
pub const TRACE_RING_BYTES: u32 = 1 << 20;

/// Most ports the kernel's filter holds; a wider union of the subscribers' ports is not
/// filtered by port in the kernel (the daemon filters each subscriber's own).
pub const TRACE_MAX_PORTS: usize = 16;

/// Most cgroups the kernel's filter holds (see [`TRACE_MAX_PORTS`]).
pub const TRACE_MAX_CGROUPS: usize = 64;

/// [`TraceEvent::duration_ns`] when the socket was not seen entering its old state.
pub const TRACE_NO_DURATION: u64 = u64::MAX;

/// Value of `TRACE_SOCKETS` (socket cookie ->): the state a socket is in and since when, as the
/// stream's program last saw it (or the daemon copied it from the socket's record when the
/// stream started): the program runs after the counting ones, which have by then overwritten
/// the record's entry time, so it keeps its own to tell how long the old state lasted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracedSocket {
    /// `bpf_ktime_get_ns()` when the socket entered `state`.
    pub entered_ns: u64,
    pub labels: Labels,
    pub state: u8,
    pub _padding: [u8; 7],
}
const _: () = assert!(size_of::<TracedSocket>() == 24);

/// The global `TRACE_CONTROL` (in `.bss`), written by the daemon whenever its subscribers change:
/// the union of their filters. An event is sent when `subscribers` is not 0 and it passes
/// every part of the filter (an empty part passes everything).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceControl {
    /// Subscribers listening; 0: send nothing.
    pub subscribers: u32,
    /// Bit `1 << state` for each state an event must leave or enter; 0: any state.
    pub states: u32,
    /// Ports in use in `ports`; 0: any port.
    pub port_count: u32,
    /// Cgroups in use in `cgroups`; 0: any owner.
    pub cgroup_count: u32,
    /// A socket passes when its local or its remote port is one of these.
    pub ports: [u16; TRACE_MAX_PORTS],
    /// A socket passes when its owner (`Labels::cgroup`) is one of these.
    pub cgroups: [u32; TRACE_MAX_CGROUPS],
}
const _: () =
    assert!(size_of::<TraceControl>() == 16 + 2 * TRACE_MAX_PORTS + 4 * TRACE_MAX_CGROUPS);

impl TraceControl {
    /// Nobody listens.
    pub const OFF: Self = Self {
        subscribers: 0,
        states: 0,
        port_count: 0,
        cgroup_count: 0,
        ports: [0; TRACE_MAX_PORTS],
        cgroups: [0; TRACE_MAX_CGROUPS],
    };

    /// Whether an event of a socket with these ports and owner, touching the states whose bits
    /// are set in `states`, passes the filter.
    #[inline(always)]
    pub fn passes(&self, local_port: u16, remote_port: u16, states: u32, cgroup: u32) -> bool {
        self.passes_ports(local_port, remote_port)
            && self.passes_owner(cgroup)
            && self.passes_states(states)
    }

    /// Whether an event touching the states whose bits are set in `states` passes.
    #[inline(always)]
    pub fn passes_states(&self, states: u32) -> bool {
        self.states == 0 || self.states & states != 0
    }

    /// Whether a socket with these ports passes (a socket's ports never change: one that does
    /// not pass needs nothing kept). Bounded loops, for the verifier.
    #[inline(always)]
    pub fn passes_ports(&self, local_port: u16, remote_port: u16) -> bool {
        if self.port_count != 0 {
            let mut found = false;
            for index in 0..TRACE_MAX_PORTS {
                if index as u32 >= self.port_count {
                    break;
                }
                let port = self.ports[index];
                if port == local_port || port == remote_port {
                    found = true;
                    break;
                }
            }
            if !found {
                return false;
            }
        }
        true
    }

    /// Whether a socket of this owner passes (see `passes_ports`).
    #[inline(always)]
    pub fn passes_owner(&self, cgroup: u32) -> bool {
        if self.cgroup_count != 0 {
            for index in 0..TRACE_MAX_CGROUPS {
                if index as u32 >= self.cgroup_count {
                    break;
                }
                if self.cgroups[index] == cgroup {
                    return true;
                }
            }
            return false;
        }
        true
    }
}

/// One transition, as a program sends it into `TRACE_EVENTS`: the kernel's own edge with its
/// detail (the daemon derives the logical view from them, as for the aggregates).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the event.
    pub time_ns: u64,
    pub cookie: u64,
    /// Time spent in `from`, as the histogram counts it; [`TRACE_NO_DURATION`] if unknown.
    pub duration_ns: u64,
    pub labels: Labels,
    /// The address's 16 bytes as two little-endian words (`to_le_bytes` gives them back in
    /// network order): an IPv4 address in the first 4 bytes, an IPv6 one in all 16.
    pub local_address: [u64; 2],
    pub remote_address: [u64; 2],
    /// Host order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Kernel state numbers.
    pub from: u8,
    pub to: u8,
    /// [`crate::transition_flag`] bits.
    pub flags: u8,
    /// [`crate::transition_detail`] constant.
    pub detail: u8,
    /// [`crate::recorder`] constant: always `PRIMARY` (the stream's program sees every event
    /// the counting ones handled, whichever of them it was).
    pub recorder: u8,
    pub _padding: [u8; 7],
}
const _: () = assert!(size_of::<TraceEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, made only of integers and integer arrays, with every padding
    // byte an explicit field (checked by the size assertion beside it): any bit pattern is a
    // valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::TraceControl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TracedSocket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> TraceControl {
        TraceControl {
            subscribers: 1,
            ..TraceControl::OFF
        }
    }

    #[test]
    fn an_empty_filter_passes_everything() {
        assert!(control().passes(1, 2, 1 << 1, 0));
        assert!(control().passes(0, 0, 0, 77));
    }

    #[test]
    fn ports_match_either_end() {
        let mut filter = control();
        filter.ports[0] = 80;
        filter.ports[1] = 443;
        filter.port_count = 2;
        assert!(filter.passes(443, 50000, 2, 0));
        assert!(filter.passes(50000, 80, 2, 0));
        assert!(!filter.passes(8080, 50000, 2, 0));
        // Beyond the count, a port in the array is not part of the filter.
        filter.port_count = 1;
        assert!(!filter.passes(443, 50000, 2, 0));
    }

    #[test]
    fn states_and_owners_must_all_match() {
        let mut filter = control();
        filter.states = 1 << 8; // CLOSE_WAIT
        filter.cgroups[0] = 1234;
        filter.cgroup_count = 1;
        assert!(filter.passes(1, 2, 1 << 1 | 1 << 8, 1234));
        assert!(!filter.passes(1, 2, 1 << 1 | 1 << 4, 1234), "other states");
        assert!(!filter.passes(1, 2, 1 << 8, 4321), "another owner");
        filter.cgroup_count = TRACE_MAX_CGROUPS as u32;
        filter.cgroups[TRACE_MAX_CGROUPS - 1] = 4321;
        assert!(filter.passes(1, 2, 1 << 8, 4321), "the last slot counts");
    }
}
