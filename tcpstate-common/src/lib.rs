//! The kernel/user boundary of tcpstate, typed once.
//!
//! Everything that crosses between `tcpstate-ebpf` and `tcpstate-daemon` is defined here: the
//! map and global names, the `#[repr(C)]` layouts of keys and values (fixed-width integers and
//! explicit padding only), and the numbering of TCP states, roles and recording counters.
//! The `user` feature adds `aya::Pod` so the daemon can read the maps.
#![no_std]

pub mod state;

pub use state::{STATE_COUNT, TcpState};

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
    /// An empty program on the same tracepoint, for the benchmark's floor; never loaded by the
    /// daemon.
    pub const EMPTY_HOOK_FLOOR: &str = "empty_hook_floor";
    /// Counts the TCP state changes the tracepoint delivers, by transition (see [`crate::witness`]);
    /// never loaded by the daemon.
    pub const WITNESS_TRACEPOINT: &str = "witness_tracepoint";
    /// Counts the TCP state changes `tcp_set_state()` announces to sock_ops programs, by
    /// transition (see [`crate::witness`]); never loaded by the daemon.
    pub const WITNESS_SOCK_OPS: &str = "witness_sock_ops";
    /// The kernel function whose BTF tracepoint both programs attach to.
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
    /// `PERCPU_ARRAY`: [`crate::witness::slot`] -> `u64` count.
    pub const WITNESS: &str = "WITNESS";
}

/// The witness (`cargo xtask bench witness`): two programs count every TCP state change by
/// transition, one on the tracepoint tcpstated uses, one on sock_ops' state callback (which
/// `tcp_set_state()` calls just before the tracepoint, for every transition but the three that
/// begin a socket's life: connect, listen, a listener's new child). A sock_ops program has no
/// recursion guard and does not go through the tracepoint, so where the two counts of a
/// transition differ, the tracepoint did not deliver the difference to BPF.
pub mod witness {
    /// The source of a count.
    pub const TRACEPOINT: u32 = 0;
    pub const SOCK_OPS: u32 = 1;
    /// Slots of the `WITNESS` map: per source, one per pair of states (each below 16).
    pub const SLOTS: u32 = 2 * 16 * 16;

    /// The slot counting `old -> new` from `source`.
    pub const fn slot(source: u32, old: u32, new: u32) -> u32 {
        (source & 1) * 256 + (old & 15) * 16 + (new & 15)
    }

    /// The source and states a slot counts (the inverse of [`slot`]).
    pub const fn of_slot(slot: u32) -> (u32, u32, u32) {
        ((slot / 256) & 1, (slot / 16) & 15, slot & 15)
    }
}

/// Names of the load-time globals (`.rodata`), set by the daemon before the verifier sees them.
pub mod global {
    /// [`crate::SocketLayout`]: field offsets of `struct sock`, read from the kernel's BTF.
    pub const SOCKET_LAYOUT: &str = "SOCKET_LAYOUT";
    /// [`crate::DurationBuckets`]: histogram upper bounds in nanoseconds.
    pub const DURATION_BUCKETS: &str = "DURATION_BUCKETS";
    /// [`crate::PortSet`]: the ports exported by number.
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    /// `u32`: the number of `SOCKET_SLOTS` entries minus one (a power of two minus one).
    pub const SOCKET_SLOT_MASK: &str = "SOCKET_SLOT_MASK";
    /// `u32`: the number of `TRANSITION_SLOTS` entries minus one (a power of two minus one).
    pub const TRANSITION_SLOT_MASK: &str = "TRANSITION_SLOT_MASK";
}

/// Default capacity of the `TRANSITIONS` map. Entries are allocated on first use (no
/// preallocation), so the capacity costs nothing until used; one entry exists per distinct
/// (labels, from, to) seen.
pub const TRANSITIONS_CAPACITY: u32 = 16384;

/// Default number of `TRANSITION_SLOTS` entries (`--transitions.slots`): 288 bytes each per
/// CPU, so 144 KiB per CPU. A key takes the first free slot of its pair on each CPU, for good;
/// keys that find both taken (past about a hundred distinct keys, a few collide) are counted
/// in `TRANSITIONS` instead, which is slower but has the room.
pub const DEFAULT_TRANSITION_SLOTS: u32 = 512;

/// Default number of `SOCKET_SLOTS` entries (`--sockets.slots`): 32 bytes each, so 8 MiB. A
/// socket whose slot window is full is tracked in socket-local storage instead (slower, about
/// 280 bytes charged to the socket), so this sizes the fast path, not a limit.
pub const DEFAULT_SOCKET_SLOTS: u32 = 1 << 18;

/// Slots a socket may take, from the one its cookie hashes to on: a record lives in the first
/// free one. Eight keep the table usable to about half full (a random window of eight is full
/// with probability about 0.5^8) while a lookup reads at most four cache lines.
pub const SOCKET_SLOT_WINDOW: u32 = 8;

/// The first slot of a socket's window (before masking by the table size): the cookie's low
/// bits, unmixed. The kernel hands cookies out in sequence (in per-CPU batches), so sockets
/// born together sit side by side, two records per cache line, and the records of a churning
/// host's live sockets stay a compact, cache-hot stretch of the table (measured: 25 ns per
/// event less than with mixed cookies). The price: a long-lived run of more than a window of
/// consecutive sockets (a connection pool opened at once) sends the cookies that wrap onto it
/// to socket storage, a share of about its length over the table's size.
pub const fn socket_slot_window(cookie: u64) -> u32 {
    cookie as u32
}

/// Capacity of the `EVENTS` map (one entry per event kind, state and label set).
pub const EVENTS_CAPACITY: u32 = 4096;

/// Capacity of the `TIMEWAIT_HANDOFFS` map: the handoffs of sockets tracked in socket-local
/// storage (past the slot table; a slot's handoff stays in its slot, see [`HANDOFF_OWNER`])
/// between two scrapes (the daemon drains it at each). When more such connections close
/// between two scrapes, the oldest records give way (LRU), and those timewait sockets get
/// inferred labels.
pub const TIMEWAIT_HANDOFFS_CAPACITY: u32 = 65536;

/// Capacity of the `FIRST_SEEN` map: sockets older than the daemon that move between two
/// scrapes (the daemon drains it at each), and, at start-up, those that move while the daemon
/// lists them. Entries are allocated on insert: an empty map costs nothing.
pub const FIRST_SEEN_CAPACITY: u32 = 65536;

/// Largest number of histogram bounds the kernel program can hold.
pub const MAX_BUCKETS: usize = 32;

/// Address families, as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub mod family {
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 10;
}

/// How a socket came to be, which decides its `role` label and which port is its service port.
pub mod role {
    /// First seen mid-life (it existed before the daemon started).
    pub const UNKNOWN: u8 = 0;
    /// Active open: seen entering SYN_SENT. Service port = remote port.
    pub const CLIENT: u8 = 1;
    /// Accepted from a listener. Service port = local port.
    pub const SERVER: u8 = 2;
    /// Seen entering LISTEN. Service port = local port.
    pub const LISTENER: u8 = 3;
    pub const COUNT: usize = 4;
}

/// The port label value meaning "not in the configured port set".
pub const OTHER_PORT: u16 = 0;

/// Labels fixed for a socket's whole tracked life. Both the per-socket record and the aggregation
/// key embed this struct, so a new label dimension (network namespace, cgroup) is one new field
/// here plus its decoder in the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    /// Service port in host order, or [`OTHER_PORT`].
    pub port: u16,
    /// [`family`] constant.
    pub family: u8,
    /// [`role`] constant.
    pub role: u8,
    pub _padding: [u8; 4],
}
const _: () = assert!(size_of::<Labels>() == 8);

/// What the kernel keeps per tracked socket: in a `SOCKET_SLOTS` slot, or in socket-local
/// storage when the socket's slot window was full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// `bpf_ktime_get_ns()` when the socket entered `state`.
    pub entered_ns: u64,
    pub labels: Labels,
    /// The slot's owner: the socket's cookie, unique for the kernel's uptime, never reused
    /// (unlike the socket's address). 0: a free slot. With [`HANDOFF_OWNER`] set: the socket
    /// is gone, handed to a timewait socket that inherited the cookie (which lets the daemon
    /// match the two), and the record is a handoff for the daemon (see [`slot_owner`]).
    pub cookie: u64,
    /// The kernel state the socket is in, as far as this program saw.
    pub state: u8,
    /// [`record_home`] constant: where this record lives.
    pub home: u8,
    pub _padding: [u8; 2],
    /// The inode number of the socket's network namespace: the daemon can check only the
    /// sockets of its own namespace against sock_diag.
    pub net_inode: u32,
}

/// Where a [`SocketRecord`] lives.
pub mod record_home {
    pub const SLOT: u8 = 0;
    pub const SOCKET_STORAGE: u8 = 1;
}
const _: () = assert!(size_of::<SocketRecord>() == 32);

/// Marks a slot's owner as a timewait handoff: the record stays in its slot, with the
/// connection's labels, its timewait substate (`state`) and when it entered it (`entered_ns`),
/// until the daemon takes it (setting the owner to 0) or a new socket claims the slot (a
/// handoff slot is free to claim). Cookies count up from 1 and never reach this bit.
pub const HANDOFF_OWNER: u64 = 1 << 63;

/// What a slot's owner says.
pub mod slot_owner {
    use super::HANDOFF_OWNER;

    /// A new socket may claim the slot: free, or holding a handoff (whose loss costs the daemon
    /// only the timewait socket's labels and start time, never a live socket's record).
    pub const fn is_claimable(owner: u64) -> bool {
        owner == 0 || owner & HANDOFF_OWNER != 0
    }

    /// The cookie of the connection whose handoff the slot holds, if it holds one.
    pub const fn handoff_cookie(owner: u64) -> Option<u64> {
        if owner & HANDOFF_OWNER != 0 {
            Some(owner & !HANDOFF_OWNER)
        } else {
            None
        }
    }
}

/// Value of `TIMEWAIT_HANDOFFS`: what the daemon needs to follow a connection in its timewait
/// socket with the labels and times the full socket had.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimewaitHandoff {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the connection entered `state`.
    pub entered_ns: u64,
    pub labels: Labels,
    /// TIME_WAIT, or FIN_WAIT2 for an orphaned socket still waiting for the peer's FIN.
    pub state: u8,
    pub _padding: [u8; 7],
}
const _: () = assert!(size_of::<TimewaitHandoff>() == 24);

/// A handoff a new socket displaced from its slot (`DISPLACED_HANDOFFS`, a per-CPU ring): the
/// `sequence`-th displacement on that CPU (the primary program's `HANDOFFS_DISPLACED` counter),
/// written between two copies of its sequence number so that a reader can tell a whole entry
/// from one being written or overwritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisplacedHandoff {
    pub sequence: u64,
    pub cookie: u64,
    pub handoff: TimewaitHandoff,
    pub sequence_end: u64,
}
const _: () = assert!(size_of::<DisplacedHandoff>() == 48);

/// Entries of each CPU's `DISPLACED_HANDOFFS` ring (a power of two): displacements between two
/// scrapes past it are lost, and counted.
pub const DISPLACED_HANDOFF_SLOTS: u32 = 1024;

/// A socket that recently reached CLOSE (`LAST_CLOSED` map, in the slot of its ports' hash):
/// an abort moves the socket to CLOSE *before* sending its reset, so the reset program finds
/// here the state the socket was in and its labels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedSocket {
    /// The `struct sock` address, only compared, never dereferenced.
    pub socket: u64,
    pub labels: Labels,
    /// The state it left for CLOSE.
    pub state: u8,
    pub _padding: [u8; 7],
}
const _: () = assert!(size_of::<ClosedSocket>() == 24);

/// One `inet_sock_set_state` event: the socket's address (compared, never dereferenced), its
/// cookie and the states. The address alone would not tell sockets apart: a freed socket's
/// address comes back with the next socket the slab hands out, which then makes the same
/// transitions; the kernel never reuses a cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventToken {
    pub socket: u64,
    pub cookie: u64,
    pub old_state: u32,
    pub new_state: u32,
}
const _: () = assert!(size_of::<EventToken>() == 24);

/// The events the primary program handled on a CPU whose nested-event program run has not come
/// yet: a stack, one token per event, pushed by the primary program (before it records the event) and popped
/// by the nested-event program when the top is its own event. The nested-event program records
/// an event only if it is not here: the primary program was skipped for it (it was already
/// running on the CPU: the event arrived during its body or the kernel's bookkeeping around it).
/// A stack, not one slot: between the primary program's run for an event and the nested-event
/// program's for the same event, an interrupt may run any number of other events, each of them
/// pushed and popped in turn; the stack's top is the outer event again when they are done. (A
/// ring of the last events, which these pushed out, let a burst of four make the nested-event
/// program record an event the primary had handled.) An event whose nested-event run the kernel
/// skipped (it came while that program ran) is never popped: its token stays until overwritten,
/// below the next events' tokens or on top of the stack (when it came after the nested-event
/// program's pop for another event), so the stack is indexed modulo its size. Such a left-over
/// token never matches a later event: no other socket has its cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandledEvents {
    pub tokens: [EventToken; HANDLED_EVENTS],
    /// Tokens pushed and not popped: the top is at `depth - 1` (modulo `HANDLED_EVENTS`).
    pub depth: u32,
    pub _padding: u32,
}
pub const HANDLED_EVENTS: usize = 8;
const _: () = assert!(size_of::<HandledEvents>() == 24 * HANDLED_EVENTS + 8);

impl HandledEvents {
    /// Pushes the event the primary program is handling (before it records it).
    #[inline(always)]
    pub fn push(&mut self, token: EventToken) {
        if let Some(entry) = self.tokens.get_mut(self.depth as usize % HANDLED_EVENTS) {
            *entry = token;
        }
        self.depth = self.depth.wrapping_add(1);
    }

    /// Whether the primary program handled the event of `token`, for the nested-event program;
    /// pops it if it is on top.
    #[inline(always)]
    pub fn take(&mut self, token: &EventToken) -> Handled {
        let top = self.depth.wrapping_sub(1);
        if let Some(entry) = self.tokens.get_mut(top as usize % HANDLED_EVENTS)
            && entry == token
        {
            // Cleared (no socket is at address 0), so that it never matches again, even a
            // socket that connects again after a disconnect (same cookie). One store: in the BPF
            // program a whole token would be zeroed by a `memset` call.
            entry.socket = 0;
            self.depth = top;
            Handled::Top
        } else if self.tokens.iter().any(|seen| seen == token) {
            Handled::Below
        } else {
            Handled::NotSeen
        }
    }
}

/// Whether the primary program handled an event (see `HandledEvents::take`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// On top of the stack: the primary program handled this event.
    Top,
    /// Below the top: the primary handled it and an event whose nested-event run the kernel
    /// skipped was pushed since; or the same socket made the same transition before (it
    /// connected again after a disconnect) and that token was left over.
    Below,
    NotSeen,
}

/// Slots of the `LAST_CLOSED` map.
pub const RECENTLY_CLOSED_SLOTS: u32 = 1024;

/// Kinds of [`EventKey`].
pub mod event_kind {
    pub const RESET_SENT: u8 = 0;
    pub const RESET_RECEIVED: u8 = 1;
    pub const SYNACK_RETRANSMIT: u8 = 2;
}

/// Key of the `EVENTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    pub labels: Labels,
    /// [`event_kind`] constant.
    pub kind: u8,
    /// The socket's state when the event happened (kernel number).
    pub state: u8,
    pub _padding: [u8; 6],
}
const _: () = assert!(size_of::<EventKey>() == 16);

/// Why a socket reached CLOSE, where the kernel's own transition does not say
/// ([`TransitionKey::detail`]). Decided from `sk_err` and the socket's flags at the event.
pub mod transition_detail {
    pub const NONE: u8 = 0;
    /// FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE after the peer's FIN: the connection lives on in a
    /// timewait socket in TIME_WAIT. The logical view shows `... -> TIME_WAIT`.
    pub const TIME_WAIT_HANDOFF: u8 = 1;
    /// FIN_WAIT1/FIN_WAIT2 -> CLOSE of an orphaned socket before the peer's FIN: the connection
    /// lives on in a timewait socket in FIN_WAIT2, waiting for that FIN.
    pub const FIN_WAIT2_HANDOFF: u8 = 2;
    /// SYN_SENT -> CLOSE: connection refused (RST in answer to the SYN).
    pub const CONNECT_REFUSED: u8 = 3;
    /// SYN_SENT -> CLOSE: SYN retransmissions exhausted.
    pub const CONNECT_TIMEOUT: u8 = 4;
    /// SYN_SENT -> CLOSE: reset (other than a refusal).
    pub const CONNECT_RESET: u8 = 5;
    /// SYN_SENT -> CLOSE for any other reason (unreachable, closed by the application).
    pub const CONNECT_OTHER: u8 = 6;
}

/// Bits of [`TransitionKey::flags`]: what an aggregated transition means for the gauges and the
/// duration histogram. Keeping these in the key (rather than separate maps) keeps the kernel at
/// one map update per event while the daemon can still derive the exact gauges.
pub mod transition_flag {
    /// The socket was tracked in `from`: the `from` gauge loses one.
    pub const FROM_TRACKED: u8 = 1 << 0;
    /// The socket is tracked in `to` afterwards: the `to` gauge gains one.
    pub const TO_TRACKED: u8 = 1 << 1;
    /// The moment the socket entered `from` was seen: the duration histogram holds these.
    pub const DURATION_OBSERVED: u8 = 1 << 2;
    /// Not an event the kernel reported: the record's state did not match the event's old state,
    /// so at least one event was missed; this entry moves the socket from the recorded state to
    /// the event's old state for the gauges only.
    pub const INFERRED: u8 = 1 << 3;
}

/// Which program recorded an aggregate. The nested-event program gets its own slots so that its
/// non-atomic per-CPU updates can never interleave with the primary program's on the same value.
pub mod recorder {
    pub const PRIMARY: u8 = 0;
    pub const NESTED: u8 = 1;
    /// The reset and SYN-ACK programs (each counts only its own event kind).
    pub const EVENTS: u8 = 2;
    pub const COUNT: usize = 3;
}

/// Key of the `TRANSITIONS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransitionKey {
    pub labels: Labels,
    /// Kernel state numbers (see [`TcpState`]).
    pub from: u8,
    pub to: u8,
    /// [`transition_flag`] bits.
    pub flags: u8,
    /// [`recorder`] constant.
    pub recorder: u8,
    /// [`transition_detail`] constant.
    pub detail: u8,
    pub _padding: [u8; 3],
}
const _: () = assert!(size_of::<TransitionKey>() == 16);

impl TransitionKey {
    const ZERO: Self = Self {
        labels: Labels {
            port: 0,
            family: 0,
            role: 0,
            _padding: [0; 4],
        },
        from: 0,
        to: 0,
        flags: 0,
        recorder: 0,
        detail: 0,
        _padding: [0; 3],
    };

    /// The key with its padding (and the labels' padding) zeroed.
    #[inline(always)]
    pub const fn new(
        labels: Labels,
        from: u8,
        to: u8,
        flags: u8,
        recorder: u8,
        detail: u8,
    ) -> Self {
        let mut key = Self::ZERO;
        key.labels.port = labels.port;
        key.labels.family = labels.family;
        key.labels.role = labels.role;
        key.from = from;
        key.to = to;
        key.flags = flags;
        key.recorder = recorder;
        key.detail = detail;
        key
    }

    /// The key as two words, as `TRANSITION_SLOTS` holds it (never both 0: `from` is a state,
    /// 1 to 12).
    #[inline(always)]
    pub const fn words(&self) -> [u64; 2] {
        let labels = self.labels.port as u64
            | (self.labels.family as u64) << 16
            | (self.labels.role as u64) << 24;
        let edge = self.from as u64
            | (self.to as u64) << 8
            | (self.flags as u64) << 16
            | (self.recorder as u64) << 24
            | (self.detail as u64) << 32;
        [labels, edge]
    }

    pub fn from_words([labels, edge]: [u64; 2]) -> Self {
        let byte = |word: u64, index: u32| (word >> (8 * index)) as u8;
        let labels = Labels {
            port: labels as u16,
            family: byte(labels, 2),
            role: byte(labels, 3),
            _padding: [0; 4],
        };
        Self::new(
            labels,
            byte(edge, 0),
            byte(edge, 1),
            byte(edge, 2),
            byte(edge, 3),
            byte(edge, 4),
        )
    }

    /// The first of the two `TRANSITION_SLOTS` entries (an even index, at most `slot_mask`, the
    /// table's size minus one) where the key with these `words` may live. The primary program
    /// counts a transition there, in the first slot of the pair holding its key or else the
    /// first free one: an inlined array read and a compare, where a `TRANSITIONS` lookup calls
    /// into the kernel to hash the key and walk a bucket.
    #[inline(always)]
    pub const fn slot_pair([labels, edge]: [u64; 2], slot_mask: u32) -> u32 {
        let mixed =
            (labels ^ edge.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (mixed >> 32) as u32 & slot_mask & !1
    }
}

/// A `TRANSITION_SLOTS` entry (per CPU): a key, as [`TransitionKey::words`], or `[0, 0]` while
/// free, and its stats.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionSlot {
    pub key: [u64; 2],
    pub stats: TransitionStats,
}
const _: () = assert!(size_of::<TransitionSlot>() == 16 + size_of::<TransitionStats>());

/// Value of the `TRANSITIONS` map (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionStats {
    /// Number of transitions.
    pub count: u64,
    /// Sum of observed durations in nanoseconds (only with `DURATION_OBSERVED`).
    pub duration_sum_ns: u64,
    /// Non-cumulative bucket counts: `duration_buckets[i]` counts durations `d` with
    /// `bounds[i-1] < d <= bounds[i]`. Durations above the last bound are only in `count`.
    pub duration_buckets: [u64; MAX_BUCKETS],
}
const _: () = assert!(size_of::<TransitionStats>() == 8 * (2 + MAX_BUCKETS));

impl TransitionStats {
    pub const ZERO: Self = Self {
        count: 0,
        duration_sum_ns: 0,
        duration_buckets: [0; MAX_BUCKETS],
    };
}

/// Indexes of the `COUNTERS` map. Each recorder has its own block of `counter::COUNT` slots:
/// index = `recorder * counter::COUNT + counter`.
pub mod counter {
    /// Socket records created (sockets that started being tracked).
    pub const RECORDS_CREATED: u32 = 0;
    /// Socket records deleted at CLOSE.
    pub const RECORDS_DELETED: u32 = 1;
    /// Events the nested-event program recorded (the kernel skipped them for the primary one).
    pub const NESTED_EVENTS_RECORDED: u32 = 2;
    /// Failure: the `TRANSITIONS` map was full, the transition was not counted.
    pub const FAILED_TRANSITIONS_MAP_FULL: u32 = 3;
    /// Failure: the socket's slot window was full and no socket storage could be allocated
    /// either, the socket is not tracked.
    pub const FAILED_SOCKET_STORAGE: u32 = 4;
    /// Failure: a state number outside 1..=12, the event was not counted.
    pub const FAILED_UNKNOWN_STATE: u32 = 5;
    /// Failure: deleting a socket record at CLOSE failed.
    pub const FAILED_RECORD_DELETE: u32 = 6;
    /// Failure: the `EVENTS` map was full, a reset or SYN-ACK retransmit was not counted.
    pub const FAILED_EVENTS_MAP_FULL: u32 = 7;
    /// Failure: a `TIMEWAIT_HANDOFFS` record could not be written; that timewait socket gets
    /// inferred labels.
    pub const FAILED_HANDOFF_RECORD: u32 = 8;
    /// Records created in socket-local storage because the socket's slot window was full
    /// (included in `RECORDS_CREATED`).
    pub const RECORDS_IN_SOCKET_STORAGE: u32 = 9;
    /// Failure: a socket first seen mid-life could not be noted in `FIRST_SEEN`; if it is in
    /// the daemon's start-up baseline, its old state's gauge stays one too high.
    pub const FAILED_FIRST_SEEN_RECORD: u32 = 10;
    /// Handoffs a new socket displaced from the slot table before the daemon took them. The
    /// primary program's count is also its `DISPLACED_HANDOFFS` ring's sequence; the nested
    /// program's are lost (it writes no ring).
    pub const HANDOFFS_DISPLACED: u32 = 11;
    pub const COUNT: u32 = 12;
    /// Entries in the `COUNTERS` map.
    pub const SLOTS: u32 = COUNT * super::recorder::COUNT as u32;
}

/// Offsets in `struct sock` of the fields the program reads, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketLayout {
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_num`: local port, host order (u16).
    pub local_port: u32,
    /// `__sk_common.skc_dport`: remote port, network order (u16).
    pub remote_port: u32,
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// `__sk_common.skc_state` (u8): also right for timewait and request sockets.
    pub state: u32,
    /// `__sk_common.skc_flags` (unsigned long): `SOCK_DEAD`, `SOCK_DONE`, ...
    pub flags: u32,
    /// `sk_err` (int): the error a closing socket reports.
    pub error: u32,
    /// `__sk_common.skc_net.net` (`struct net *`): the socket's network namespace.
    pub net: u32,
    /// `ns.inum` (unsigned int) in `struct net`: the namespace's inode number (what
    /// `stat /proc/<pid>/ns/net` shows).
    pub net_inode: u32,
    /// `__sk_common.skc_cookie.counter` (s64): the socket's cookie, 0 until one is assigned.
    pub cookie: u32,
}
const _: () = assert!(size_of::<SocketLayout>() == 40);

/// Histogram upper bounds in nanoseconds, ascending; unused slots hold `u64::MAX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationBuckets {
    pub bounds_ns: [u64; MAX_BUCKETS],
}
const _: () = assert!(size_of::<DurationBuckets>() == 8 * MAX_BUCKETS);

impl DurationBuckets {
    pub const UNUSED: u64 = u64::MAX;
    pub const EMPTY: Self = Self {
        bounds_ns: [Self::UNUSED; MAX_BUCKETS],
    };

    /// Index of the bucket a duration falls in (see [`bucket_index`]).
    pub fn bucket_index(&self, duration_ns: u64) -> usize {
        bucket_index(|i| self.bounds_ns[i], duration_ns)
    }
}

/// Index of the histogram bucket a duration falls in: the first bound >= `duration_ns`, or
/// [`MAX_BUCKETS`] when it is above every bound. `bound_at(i)` reads bound `i` (`i <
/// MAX_BUCKETS`); the kernel passes a volatile read of its load-time global. A binary search with
/// a fixed number of steps: bounded for the verifier and cheap per event.
#[inline(always)]
pub fn bucket_index(bound_at: impl Fn(usize) -> u64, duration_ns: u64) -> usize {
    const _: () = assert!(MAX_BUCKETS.is_power_of_two());
    let mut below = 0usize; // bounds known to be < duration_ns
    let mut step = MAX_BUCKETS / 2;
    while step > 0 {
        if bound_at(below + step - 1) < duration_ns {
            below += step;
        }
        step /= 2;
    }
    // `below` is now at most MAX_BUCKETS - 1; the last bound needs its own check.
    if bound_at(below) < duration_ns {
        below += 1;
    }
    below
}

/// Bitmap of the ports exported by number (bit `p` set = port `p` is in the set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub words: [u64; 1024],
}
const _: () = assert!(size_of::<PortSet>() == 65536 / 8);

impl PortSet {
    pub const EMPTY: Self = Self { words: [0; 1024] };

    /// Which word holds `port`'s bit, and the bit's mask.
    #[inline(always)]
    pub const fn position(port: u16) -> (usize, u64) {
        ((port >> 6) as usize, 1u64 << (port & 63))
    }

    pub fn contains(&self, port: u16) -> bool {
        let (word, mask) = Self::position(port);
        self.words[word] & mask != 0
    }

    pub fn insert(&mut self, port: u16) {
        let (word, mask) = Self::position(port);
        self.words[word] |= mask;
    }

    /// The label a socket gets: `port` itself when it is in the set, else [`OTHER_PORT`].
    pub fn label(&self, port: u16) -> u16 {
        if self.contains(port) {
            port
        } else {
            OTHER_PORT
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made only of integers and integer arrays, with every
    // padding byte an explicit field (checked by the size assertions above), so any bit pattern
    // is a valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::Labels {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TransitionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TransitionStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TransitionSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DurationBuckets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TimewaitHandoff {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClosedSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DisplacedHandoff {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token of an event of socket `socket` (its address; its cookie is derived from it)
    /// from `old` to `new`.
    fn event(socket: u64, old: TcpState, new: TcpState) -> EventToken {
        event_of_cookie(socket, 1000 + socket, old, new)
    }

    fn event_of_cookie(socket: u64, cookie: u64, old: TcpState, new: TcpState) -> EventToken {
        EventToken {
            socket,
            cookie,
            old_state: old as u32,
            new_state: new as u32,
        }
    }

    #[test]
    fn each_event_the_primary_handled_is_on_top_for_its_nested_run() {
        let mut handled = HandledEvents::default();
        for socket in 1..=3 * HANDLED_EVENTS as u64 {
            let token = event(socket, TcpState::Established, TcpState::FinWait1);
            handled.push(token);
            assert_eq!(handled.take(&token), Handled::Top);
        }
        assert_eq!(handled.depth, 0);
    }

    #[test]
    fn an_interrupt_between_the_two_runs_leaves_the_outer_event_on_top() {
        // A refused connect's CLOSE in process context; a softirq runs many events, each
        // through both programs, between the primary's and the nested program's runs for it.
        // (A ring of the last four tokens lost the outer one: its CLOSE was counted twice.)
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::SynSent, TcpState::Close);
        handled.push(outer);
        for socket in 2..2 + 4 * HANDLED_EVENTS as u64 {
            let inner = event(socket, TcpState::FinWait1, TcpState::FinWait2);
            handled.push(inner);
            assert_eq!(handled.take(&inner), Handled::Top);
        }
        assert_eq!(handled.take(&outer), Handled::Top);
    }

    #[test]
    fn an_event_the_primary_skipped_is_not_seen() {
        // The primary, running for `outer`, is skipped for `inner` (same CPU, nested): the
        // nested program finds `inner` nowhere, and `outer` still on top afterwards.
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::Established, TcpState::FinWait1);
        let inner = event(2, TcpState::FinWait1, TcpState::FinWait2);
        handled.push(outer);
        assert_eq!(handled.take(&inner), Handled::NotSeen);
        assert_eq!(handled.take(&outer), Handled::Top);
    }

    #[test]
    fn a_skipped_nested_run_leaves_its_token_below_the_next_events() {
        // `inner` comes while the nested program runs for `outer`, before its check: the
        // primary pushes `inner`, the kernel skips the nested run for it.
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::CloseWait, TcpState::LastAck);
        let inner = event(2, TcpState::LastAck, TcpState::Close);
        handled.push(outer);
        handled.push(inner);
        assert_eq!(handled.take(&outer), Handled::Below);
        // Later events go on above the leftovers, even past the stack's size.
        for socket in 3..3 + 2 * HANDLED_EVENTS as u64 {
            let later = event(socket, TcpState::SynSent, TcpState::Established);
            handled.push(later);
            assert_eq!(handled.take(&later), Handled::Top);
        }
    }

    #[test]
    fn a_left_over_token_does_not_hide_the_event_of_a_later_socket_at_its_address() {
        // `left_over` comes after the nested program's pop for `outer`, before that program's
        // run ends: the primary pushes it, the kernel skips the nested run for it, and it stays
        // on top. Its socket is freed; the next one at the same address makes the same
        // transition, with its primary run skipped: the nested program must record it. (With
        // the address as the socket's identity, the left-over token matched and the event was
        // lost: one `FIN_WAIT2 -> CLOSE` in a benchmark run.)
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::Established, TcpState::FinWait1);
        handled.push(outer);
        assert_eq!(handled.take(&outer), Handled::Top);
        let left_over = event_of_cookie(2, 20, TcpState::FinWait2, TcpState::Close);
        handled.push(left_over);
        let reused = event_of_cookie(2, 21, TcpState::FinWait2, TcpState::Close);
        assert_eq!(handled.take(&reused), Handled::NotSeen);
    }

    #[test]
    fn a_popped_token_is_not_seen_again() {
        // The same socket making the same transition again (it connected again after a
        // disconnect: same address, same cookie), with its primary run skipped: the nested
        // program must record it.
        let mut handled = HandledEvents::default();
        let token = event(1, TcpState::FinWait2, TcpState::Close);
        handled.push(token);
        assert_eq!(handled.take(&token), Handled::Top);
        assert_eq!(handled.take(&token), Handled::NotSeen);
    }

    #[test]
    fn free_and_handoff_slots_are_claimable_live_ones_are_not() {
        let cookie = 0x1234_5678;
        assert!(slot_owner::is_claimable(0));
        assert!(!slot_owner::is_claimable(cookie));
        assert!(slot_owner::is_claimable(cookie | HANDOFF_OWNER));
        assert_eq!(
            slot_owner::handoff_cookie(cookie | HANDOFF_OWNER),
            Some(cookie)
        );
        assert_eq!(slot_owner::handoff_cookie(cookie), None);
        assert_eq!(slot_owner::handoff_cookie(0), None);
    }

    fn buckets(bounds: &[u64]) -> DurationBuckets {
        let mut buckets = DurationBuckets::EMPTY;
        buckets.bounds_ns[..bounds.len()].copy_from_slice(bounds);
        buckets
    }

    #[test]
    fn witness_slots_are_distinct_and_read_back() {
        let mut seen = [false; witness::SLOTS as usize];
        for source in [witness::TRACEPOINT, witness::SOCK_OPS] {
            for old in 0..16 {
                for new in 0..16 {
                    let slot = witness::slot(source, old, new);
                    assert!(!core::mem::replace(&mut seen[slot as usize], true));
                    assert_eq!(witness::of_slot(slot), (source, old, new));
                }
            }
        }
    }

    #[test]
    fn bucket_index_is_first_bound_at_or_above() {
        let b = buckets(&[10, 20, 30]);
        assert_eq!(b.bucket_index(0), 0);
        assert_eq!(b.bucket_index(10), 0, "le is inclusive");
        assert_eq!(b.bucket_index(11), 1);
        assert_eq!(b.bucket_index(20), 1);
        assert_eq!(b.bucket_index(30), 2);
        // Above the last real bound: the first unused slot, which the daemon ignores.
        assert_eq!(b.bucket_index(31), 3);
    }

    #[test]
    fn bucket_index_matches_linear_search_for_every_prefix() {
        let all: [u64; MAX_BUCKETS] = core::array::from_fn(|i| (i as u64 + 1) * 100);
        for used in 0..=MAX_BUCKETS {
            let b = buckets(&all[..used]);
            for d in (0..=3400).step_by(7).chain([u64::MAX - 1, u64::MAX]) {
                let expected = b
                    .bounds_ns
                    .iter()
                    .position(|&bound| d <= bound)
                    .unwrap_or(MAX_BUCKETS);
                assert_eq!(b.bucket_index(d), expected, "used={used} d={d}");
            }
        }
    }

    #[test]
    fn transition_keys_survive_their_slot_words() {
        let key = TransitionKey::new(
            Labels {
                port: 8443,
                family: 10,
                role: 3,
                _padding: [0; 4],
            },
            TcpState::FinWait1 as u8,
            TcpState::Close as u8,
            transition_flag::FROM_TRACKED | transition_flag::DURATION_OBSERVED,
            recorder::PRIMARY,
            transition_detail::FIN_WAIT2_HANDOFF,
        );
        assert_eq!(TransitionKey::from_words(key.words()), key);
        assert_ne!(key.words(), [0, 0], "a key never looks like a free slot");
        for slots in [2, 8, DEFAULT_TRANSITION_SLOTS] {
            let pair = TransitionKey::slot_pair(key.words(), slots - 1);
            assert!(
                pair.is_multiple_of(2) && pair + 1 < slots,
                "{pair} of {slots}"
            );
        }
    }

    #[test]
    fn port_set_labels_members_only() {
        let mut set = PortSet::EMPTY;
        set.insert(443);
        set.insert(65535);
        assert_eq!(set.label(443), 443);
        assert_eq!(set.label(65535), 65535);
        assert_eq!(set.label(80), OTHER_PORT);
        assert_eq!(set.label(0), OTHER_PORT);
    }
}
