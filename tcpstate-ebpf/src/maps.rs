//! The program's maps and load-time globals, and small typed accessors over them.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{PerCpuArray, PerCpuHashMap, SkStorage},
    macros::btf_map,
};
use tcpstate_common::{
    DurationBuckets, MAX_BUCKETS, PortSet, SocketLayout, SocketRecord, TRANSITIONS_CAPACITY,
    TransitionKey, TransitionStats, counter,
};

/// Per-socket record, in socket-local storage: no capacity to size, freed with the socket, and
/// immune to the address reuse a global hash keyed by `struct sock *` suffers from.
#[btf_map]
pub static SOCKET_RECORDS: SkStorage<SocketRecord> = SkStorage::new();

/// The aggregates the daemon exports. Entries are allocated on first use (no preallocation: a
/// per-CPU preallocated map of this value size would cost megabytes per CPU for nothing).
#[btf_map]
static TRANSITIONS: PerCpuHashMap<
    TransitionKey,
    TransitionStats,
    { TRANSITIONS_CAPACITY as usize },
    { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::SLOTS as usize }> = PerCpuArray::new();

/// 1 while `record_state_change` runs on this CPU.
#[btf_map]
static PRIMARY_RUNNING: PerCpuArray<u32, 1> = PerCpuArray::new();

// Load-time configuration (`.rodata`, frozen before verification, so the verifier sees the
// values as constants: `SOCKET_LAYOUT`'s offsets must be constants to read `struct sock`).
// Read only through volatile reads, or the compiler would fold in these defaults.
#[unsafe(no_mangle)]
static SOCKET_LAYOUT: SocketLayout = SocketLayout {
    family: 0,
    local_port: 0,
    remote_port: 0,
    protocol: 0,
};
#[unsafe(no_mangle)]
static DURATION_BUCKETS: DurationBuckets = DurationBuckets::EMPTY;
#[unsafe(no_mangle)]
static SERVICE_PORTS: PortSet = PortSet::EMPTY;

/// The value new `TRANSITIONS` entries start from. A static so that inserting passes a pointer
/// to read-only map memory instead of 272 bytes of the 512-byte stack.
static ZERO_STATS: TransitionStats = TransitionStats::ZERO;

#[inline(always)]
pub fn socket_layout() -> SocketLayout {
    // SAFETY: a plain read of an initialised static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&SOCKET_LAYOUT) }
}

#[inline(always)]
pub fn duration_bound(index: usize) -> u64 {
    let bounds = &DURATION_BUCKETS.bounds_ns;
    if index < MAX_BUCKETS {
        // SAFETY: in bounds (checked above); volatile so the loader's value is used.
        unsafe { core::ptr::read_volatile(&bounds[index]) }
    } else {
        DurationBuckets::UNUSED
    }
}

#[inline(always)]
pub fn is_service_port(port: u16) -> bool {
    let (word, mask) = PortSet::position(port);
    let words = &SERVICE_PORTS.words;
    // `word` is at most 1023 by construction; the `get` keeps the verifier sure of it.
    match words.get(word) {
        Some(word) => {
            // SAFETY: a reference into an initialised static; volatile so the loader's value is
            // used.
            let bits = unsafe { core::ptr::read_volatile(word) };
            bits & mask != 0
        }
        None => false,
    }
}

pub fn set_primary_running(running: bool) {
    if let Some(flag) = PRIMARY_RUNNING.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot, valid for the program's run.
        unsafe { *flag = running as u32 };
    }
}

pub fn primary_running() -> bool {
    // SAFETY: a per-CPU array slot, valid for the program's run.
    PRIMARY_RUNNING
        .get_ptr(0)
        .is_some_and(|flag| unsafe { *flag } != 0)
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

/// The stats of `key`, created on first use; `None` when the map is full (counted by the caller).
#[inline(always)]
pub fn transition_stats(key: &TransitionKey) -> Option<*mut TransitionStats> {
    if let Some(stats) = TRANSITIONS.get_ptr_mut(key) {
        return Some(stats);
    }
    // Another CPU may insert the same key between the lookup and here: NOEXIST then fails
    // harmlessly and the second lookup finds its entry.
    let _ = TRANSITIONS.insert(key, &ZERO_STATS, BPF_NOEXIST.into());
    TRANSITIONS.get_ptr_mut(key)
}
