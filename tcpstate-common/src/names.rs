//! Names both sides use for the object's programs, maps and load-time globals.

/// Names of the programs in the eBPF object.
pub mod program {
    /// Records every `inet_sock_set_state` event.
    pub const RECORD_STATE_CHANGE: &str = "record_state_change";
    /// Records the events the kernel does not give to `RECORD_STATE_CHANGE` because that program
    /// is already running on the CPU (a softirq state change interrupting a process-context one).
    pub const RECORD_NESTED_STATE_CHANGE: &str = "record_nested_state_change";
    /// `tcp:tcp_send_reset`: resets sent, by the socket's state.
    pub const RECORD_RESET_SENT: &str = "record_reset_sent";
    /// `tcp:tcp_receive_reset`: resets received, by the socket's state.
    pub const RECORD_RESET_RECEIVED: &str = "record_reset_received";
    /// `tcp:tcp_retransmit_synack`: SYN-ACKs retransmitted by a listener (the half-open queue's
    /// troubles, which `inet_sock_set_state` never shows).
    pub const RECORD_SYNACK_RETRANSMIT: &str = "record_synack_retransmit";
    /// The live event stream's program, on the same tracepoint: loaded with the others but
    /// attached only while the stream has subscribers, after the two that count.
    pub const TRACE_STATE_CHANGE: &str = "trace_state_change";
    /// The kernel function whose BTF tracepoint both state-change programs attach to (and the
    /// benchmark's floor and witness, in their own object).
    pub const TRACEPOINT: &str = "inet_sock_set_state";
}

/// Names of the maps in the eBPF object.
pub mod map {
    /// `ARRAY` of [`crate::SocketRecord`]: the slot table, where a socket's record lives when
    /// a slot of its window is free (see [`crate::socket_slot_window`]).
    pub const SOCKET_SLOTS: &str = "SOCKET_SLOTS";
    /// `SK_STORAGE`: socket -> [`crate::SocketRecord`], for sockets whose slot window was full.
    pub const SOCKET_RECORDS: &str = "SOCKET_RECORDS";
    /// `PERCPU_HASH`: [`crate::TransitionKey`] -> [`crate::TransitionStats`].
    pub const TRANSITIONS: &str = "TRANSITIONS";
    /// `PERCPU_ARRAY` of [`crate::TransitionSlot`]: the primary program's fast path in front of
    /// `TRANSITIONS` (see [`crate::TransitionKey::slot_pair`]).
    pub const TRANSITION_SLOTS: &str = "TRANSITION_SLOTS";
    /// `PERCPU_ARRAY`: [`crate::counter`] index -> `u64`.
    pub const COUNTERS: &str = "COUNTERS";
    /// `PERCPU_ARRAY` of one [`crate::HandledEvents`]: the events the primary program last
    /// handled on that CPU.
    pub const PRIMARY_HANDLED: &str = "PRIMARY_HANDLED";
    /// `PERCPU_HASH`: [`crate::EventKey`] -> `u64` count (resets, SYN-ACK retransmits).
    pub const EVENTS: &str = "EVENTS";
    /// `LRU_HASH`: socket cookie -> [`crate::TimewaitHandoff`], for sockets the kernel handed
    /// to a timewait socket (which inherits the cookie).
    pub const TIMEWAIT_HANDOFFS: &str = "TIMEWAIT_HANDOFFS";
    /// `ARRAY`: hash of the ports -> [`crate::ClosedSocket`].
    pub const LAST_CLOSED: &str = "LAST_CLOSED";
    /// `PERCPU_ARRAY` of [`crate::DisplacedHandoff`]: per CPU, a ring of the handoffs that new
    /// sockets displaced from the slot table before the daemon took them.
    pub const DISPLACED_HANDOFFS: &str = "DISPLACED_HANDOFFS";
    /// `HASH`: socket cookie -> `u8` state it left, for sockets the programs first saw mid-life
    /// (no record, not at their birth): the daemon takes them out of its start-up baseline.
    pub const FIRST_SEEN: &str = "FIRST_SEEN";
    /// `ARRAY` of one value, the object's `.bss` section: the global `TRACE_CONTROL`, a
    /// [`crate::TraceControl`] (whether anyone listens to the event stream, and its filter),
    /// which the daemon writes at run time. The section holds nothing else.
    pub const TRACE_CONTROL: &str = ".bss";
    /// `RINGBUF` of [`crate::TraceEvent`]: the transitions that passed `TRACE_CONTROL`.
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    /// `PERCPU_ARRAY` of one `u64`: events `TRACE_EVENTS` had no room for.
    pub const TRACE_DROPS: &str = "TRACE_DROPS";
    /// `HASH` (not preallocated): socket cookie -> [`crate::TracedSocket`], the stream's own
    /// record of each socket's state and entry time; emptied when the last subscriber leaves.
    pub const TRACE_SOCKETS: &str = "TRACE_SOCKETS";
}

pub mod global {
    /// [`crate::SocketLayout`]: field offsets of `struct sock`, read from the kernel's BTF.
    pub const SOCKET_LAYOUT: &str = "SOCKET_LAYOUT";
    /// [`crate::AddressLayout`]: field offsets of the addresses in `struct sock`, from BTF.
    pub const ADDRESS_LAYOUT: &str = "ADDRESS_LAYOUT";
    /// [`crate::DurationBuckets`]: histogram upper bounds in nanoseconds.
    pub const DURATION_BUCKETS: &str = "DURATION_BUCKETS";
    /// [`crate::PortSet`]: the ports exported by number.
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    /// `u32`: the number of `SOCKET_SLOTS` entries minus one (a power of two minus one).
    pub const SOCKET_SLOT_MASK: &str = "SOCKET_SLOT_MASK";
    /// `u32`: the number of `TRANSITION_SLOTS` entries minus one (a power of two minus one).
    pub const TRANSITION_SLOT_MASK: &str = "TRANSITION_SLOT_MASK";
}
