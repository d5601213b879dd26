//! Sizes of the kernel's maps: fixed capacities, and the defaults of those the daemon sizes
//! at load time (`--sockets.slots`, `--transitions.slots`).

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

/// Capacity of the `EVENTS` map (one entry per event kind, state and label set).
pub const EVENTS_CAPACITY: u32 = 4096;

/// Capacity of the `TIMEWAIT_HANDOFFS` map: the handoffs of sockets tracked in socket-local
/// storage (past the slot table; a slot's handoff stays in its slot, see [`crate::HANDOFF_OWNER`])
/// between two scrapes (the daemon drains it at each). When more such connections close
/// between two scrapes, the oldest records give way (LRU), and those timewait sockets get
/// inferred labels.
pub const TIMEWAIT_HANDOFFS_CAPACITY: u32 = 65536;

/// Capacity of the `FIRST_SEEN` map: sockets older than the daemon that move between two
/// scrapes (the daemon drains it at each), and, at start-up, those that move while the daemon
/// lists them. Entries are allocated on insert: an empty map costs nothing.
pub const FIRST_SEEN_CAPACITY: u32 = 65536;

/// Entries of each CPU's `DISPLACED_HANDOFFS` ring (a power of two): displacements between two
/// scrapes past it are lost, and counted.
pub const DISPLACED_HANDOFF_SLOTS: u32 = 1024;

/// Slots of the `LAST_CLOSED` map.
pub const RECENTLY_CLOSED_SLOTS: u32 = 1024;
