//! The maps the hooks share, and small typed accessors over them.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SkStorage},
    macros::btf_map,
};
use tcpstate_common::{
    DEFAULT_SOCKET_SLOTS, DEFAULT_TRANSITION_SLOTS, DISPLACED_HANDOFF_SLOTS, DisplacedHandoff,
    EVENTS_CAPACITY, EventKey, EventToken, FIRST_SEEN_CAPACITY, Handled, HandledEvents,
    SocketRecord, TIMEWAIT_HANDOFFS_CAPACITY, TRANSITIONS_CAPACITY, TimewaitHandoff, TransitionKey,
    TransitionSlot, TransitionStats, counter,
};

use crate::globals;

/// Per-socket records, one per slot (see `records`). Its size is set at load time
/// (`--sockets.slots`). Mmapable so the daemon can read the owners at start-up without a
/// syscall per slot.
#[btf_map]
static SOCKET_SLOTS: Array<
    SocketRecord,
    { DEFAULT_SOCKET_SLOTS as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

/// Per-socket records of sockets whose slot window was full: socket-local storage, no capacity
/// to size, freed with the socket.
#[btf_map]
pub static SOCKET_RECORDS: SkStorage<SocketRecord> = SkStorage::new();

/// The aggregates the daemon exports. Entries are allocated on first use (no preallocation: a
/// per-CPU preallocated map of this value size would cost megabytes per CPU for nothing).
#[btf_map]
static TRANSITIONS: PerCpuHashMap<
    TransitionKey,
    TransitionStats,
    { TRANSITIONS_CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// The primary program's fast path in front of `TRANSITIONS`: per CPU, each key in the first
/// free slot of its pair (see `TransitionKey::slot_pair`), kept for good. Its size is set at
/// load time (`--transitions.slots`). Only the primary
/// program writes here, and it never runs twice at once on a CPU, so an entry needs no lock;
/// the nested-event program, which can interrupt it, counts in `TRANSITIONS` only.
#[btf_map]
static TRANSITION_SLOTS: PerCpuArray<TransitionSlot, { DEFAULT_TRANSITION_SLOTS as usize }> =
    PerCpuArray::new();

/// Resets and SYN-ACK retransmits, by kind, state and labels.
#[btf_map]
static EVENTS: PerCpuHashMap<
    EventKey,
    u64,
    { EVENTS_CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// Connections handed to a timewait socket, by cookie: the daemon drains them at each scrape and
/// follows each timewait socket (which no tracepoint reports) with these labels and times. LRU:
/// past its capacity between two scrapes, the oldest records give way rather than the newest.
/// One LRU list per CPU (`BPF_F_NO_COMMON_LRU`): the shared list's lock, taken with interrupts
/// off at every insert, was a quarter of the program's time under churn; the price is that each
/// CPU evicts within its own share of the capacity.
#[btf_map]
static TIMEWAIT_HANDOFFS: LruHashMap<
    u64,
    TimewaitHandoff,
    { TIMEWAIT_HANDOFFS_CAPACITY as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// Per CPU, a ring of the handoffs new sockets displaced from `SOCKET_SLOTS` before the daemon
/// took them (see `record_displaced_handoff`). Only the primary program writes it.
#[btf_map]
static DISPLACED_HANDOFFS: PerCpuArray<DisplacedHandoff, { DISPLACED_HANDOFF_SLOTS as usize }> =
    PerCpuArray::new();

/// Sockets first seen mid-life (no record, and not at their birth), by cookie, with the state
/// they left: the sockets of the daemon's start-up baseline that have moved since, which the
/// daemon takes out of the baseline's gauges when it drains this at each scrape. Only the
/// first-seen path writes here: nothing per event on the tracked path.
#[btf_map]
static FIRST_SEEN: HashMap<
    u64,
    u8,
    { FIRST_SEEN_CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::SLOTS as usize }> = PerCpuArray::new();

/// The events `record_state_change` handled on this CPU whose nested-event run has not come
/// yet (see `HandledEvents`).
#[btf_map]
static PRIMARY_HANDLED: PerCpuArray<HandledEvents, 1> = PerCpuArray::new();

/// The value new `TRANSITIONS` entries start from. A static so that inserting passes a pointer
/// to read-only map memory instead of 272 bytes of the 512-byte stack.
static ZERO_STATS: TransitionStats = TransitionStats::ZERO;

/// The slot at `position` (taken modulo the table's size).
#[inline(always)]
pub fn socket_slot(position: u32) -> Option<&'static mut SocketRecord> {
    let slot = SOCKET_SLOTS.get_ptr_mut(position & globals::socket_slot_mask())?;
    // SAFETY: an array slot, valid for the program's run. Its owner field is only changed
    // atomically (see `records`); the rest only by the owning socket's events, which the
    // socket's lock serialises.
    Some(unsafe { &mut *slot })
}

/// Notes that the primary program handles `token` (before it records the event): pushes it on
/// this CPU's `HandledEvents`.
#[inline(always)]
pub fn note_primary_handled(token: EventToken) {
    if let Some(handled) = PRIMARY_HANDLED.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot, valid for the program's run. Its writers, the two
        // state-change programs, run on this CPU only and never each in itself; one may
        // interrupt the other between a read and a write of `depth`, which costs at most the
        // interrupted push or pop (see `HandledEvents`).
        unsafe { (*handled).push(token) };
    }
}

/// Whether the primary program handled the event of `token`, for the nested-event program (see
/// `HandledEvents::take`).
#[inline(always)]
pub fn take_primary_handled(token: &EventToken) -> Handled {
    match PRIMARY_HANDLED.get_ptr_mut(0) {
        // SAFETY: as in `note_primary_handled`.
        Some(handled) => unsafe { (*handled).take(token) },
        None => Handled::NotSeen,
    }
}

/// Adds one to a [`counter`] in `recorder`'s block.
#[inline(always)]
pub fn count(recorder: u8, counter: u32) {
    let index = recorder as u32 * counter::COUNT + counter;
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot, only written by `recorder` on this CPU.
        unsafe { *value += 1 };
    }
}

/// The stats of the key `words` (see `TransitionKey::words`) in this CPU's `TRANSITION_SLOTS`,
/// taking a free slot of its pair on first use; `None` when both slots hold other keys. Only
/// for the primary program (see the map).
#[inline(always)]
pub fn transition_slot_stats(words: [u64; 2]) -> Option<*mut TransitionStats> {
    let pair = TransitionKey::slot_pair(words, globals::transition_slot_mask());
    for index in [pair, pair + 1] {
        let slot = TRANSITION_SLOTS.get_ptr_mut(index)?;
        // SAFETY: a per-CPU array slot, valid for the program's run, written only by the
        // primary program on this CPU (see `TRANSITION_SLOTS`).
        let slot = unsafe { &mut *slot };
        if slot.key == words {
            return Some(&raw mut slot.stats);
        }
        if slot.key == [0, 0] {
            slot.key = words;
            return Some(&raw mut slot.stats);
        }
    }
    None
}

/// The stats of `key`, created on first use; `None` when the map is full (counted by the caller).
#[inline(always)]
pub fn transition_stats(key: &TransitionKey) -> Option<*mut TransitionStats> {
    if let Some(stats) = TRANSITIONS.get_ptr_mut(key) {
        return Some(stats);
    }
    // Another CPU may insert the same key between the lookup and here: NOEXIST then fails
    // harmlessly and the second lookup finds its entry.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a pointer to the static: by value, 272 bytes would be copied to the stack"
    )]
    let _ = TRANSITIONS.insert(key, &ZERO_STATS, BPF_NOEXIST.into());
    TRANSITIONS.get_ptr_mut(key)
}

/// Adds one to an `EVENTS` entry; false when the map is full (counted by the caller).
#[inline(always)]
pub fn count_event(key: &EventKey) -> bool {
    if let Some(count) = EVENTS.get_ptr_mut(key) {
        // SAFETY: a per-CPU map value valid for this run; each event kind has its own program
        // and its own keys, so no other writer interleaves on this CPU.
        unsafe { *count += 1 };
        return true;
    }
    EVENTS.insert(key, 1, BPF_NOEXIST.into()).is_ok()
        || EVENTS.get_ptr_mut(key).is_some_and(|count| {
            // SAFETY: as above (another CPU inserted the key first).
            unsafe { *count += 1 };
            true
        })
}

/// Leaves the daemon a connection's handoff to a timewait socket; false if the kernel refused.
#[inline(always)]
pub fn record_handoff(cookie: u64, handoff: &TimewaitHandoff) -> bool {
    TIMEWAIT_HANDOFFS
        .insert(cookie, handoff, BPF_ANY.into())
        .is_ok()
}

/// Keeps a handoff displaced from its slot for the daemon, in this CPU's ring; false if it is
/// lost (the nested program writes no ring: the primary one may be mid-write on this CPU).
#[inline(always)]
pub fn record_displaced_handoff(recorder: u8, cookie: u64, handoff: &TimewaitHandoff) -> bool {
    let index = recorder as u32 * counter::COUNT + counter::HANDOFFS_DISPLACED;
    let Some(count) = COUNTERS.get_ptr_mut(index) else {
        return false;
    };
    // SAFETY: a per-CPU array slot, only written by `recorder` on this CPU.
    let sequence = unsafe { *count } + 1;
    let kept = recorder == tcpstate_common::recorder::PRIMARY
        && match DISPLACED_HANDOFFS.get_ptr_mut(sequence as u32 & (DISPLACED_HANDOFF_SLOTS - 1)) {
            Some(entry) => {
                // SAFETY: a per-CPU array slot, valid for this run, written only by the primary
                // program on this CPU. Volatile keeps the order: a reader that finds both
                // sequence numbers equal has the fields written between them.
                unsafe {
                    core::ptr::write_volatile(&raw mut (*entry).sequence, sequence);
                    core::ptr::write_volatile(&raw mut (*entry).cookie, cookie);
                    core::ptr::write_volatile(&raw mut (*entry).handoff, *handoff);
                    core::ptr::write_volatile(&raw mut (*entry).sequence_end, sequence);
                }
                true
            }
            None => false,
        };
    // After the entry: the daemon reads the count first, then the entries up to it.
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(count, sequence) };
    kept
}

/// Notes that the socket with `cookie`, first seen now, left `state`; false if the kernel
/// refused (the map is full).
#[inline(always)]
pub fn note_first_seen(cookie: u64, state: u8) -> bool {
    FIRST_SEEN.insert(cookie, state, BPF_ANY.into()).is_ok()
}
