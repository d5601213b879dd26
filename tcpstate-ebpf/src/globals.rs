//! Load-time configuration: `.rodata` globals the daemon sets before the verifier sees them
//! (so the verifier sees the values as constants: `SOCKET_LAYOUT`'s offsets must be constants
//! to read `struct sock`), and their readers. Read only through volatile reads, or the compiler
//! would fold in these defaults.

use tcpstate_common::{
    AddressLayout, DEFAULT_SOCKET_SLOTS, DEFAULT_TRANSITION_SLOTS, DurationBuckets, MAX_BUCKETS,
    PortSet, SocketLayout,
};

/// Offsets of the `struct sock` fields the programs read, from the kernel's BTF.
#[unsafe(no_mangle)]
static SOCKET_LAYOUT: SocketLayout = SocketLayout {
    family: 0,
    local_port: 0,
    remote_port: 0,
    protocol: 0,
    state: 0,
    flags: 0,
    error: 0,
    net: 0,
    net_inode: 0,
    cookie: 0,
    owner_cgroup: 0,
    cgroup_node: 0,
    node_id: 0,
    _padding: 0,
};
/// Offsets of the addresses in `struct sock`, from the kernel's BTF (the event stream's). In a
/// section of its own (aya makes it a read-only map of its own too): in `.rodata`, whose
/// globals the linker orders by name, it came first and moved every global the events read
/// by 16 bytes, the slot masks onto another cache line.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".rodata.trace")]
static ADDRESS_LAYOUT: AddressLayout = AddressLayout {
    local: 0,
    remote: 0,
    local_v6: 0,
    remote_v6: 0,
    source_port: 0,
};
/// The histogram's bounds (`--buckets`), in nanoseconds.
#[unsafe(no_mangle)]
static DURATION_BUCKETS: DurationBuckets = DurationBuckets::EMPTY;
/// The ports exported by number (`--port`).
#[unsafe(no_mangle)]
static SERVICE_PORTS: PortSet = PortSet::EMPTY;
/// `SOCKET_SLOTS` entries minus one (`--sockets.slots`).
#[unsafe(no_mangle)]
static SOCKET_SLOT_MASK: u32 = DEFAULT_SOCKET_SLOTS - 1;
/// `TRANSITION_SLOTS` entries minus one (`--transitions.slots`).
#[unsafe(no_mangle)]
static TRANSITION_SLOT_MASK: u32 = DEFAULT_TRANSITION_SLOTS - 1;

/// The offset of one field of `struct sock` (see `SocketLayout`), read where it is used: an
/// event loads only the offsets it needs (a read of the whole layout loads all ten).
#[inline(always)]
pub fn socket_offset(field: impl FnOnce(&'static SocketLayout) -> &'static u32) -> u32 {
    // SAFETY: a plain read of a field of an initialised static; volatile so the loader's value
    // is used.
    unsafe { core::ptr::read_volatile(field(&SOCKET_LAYOUT)) }
}

/// The offset of one address field of `struct sock` (see `AddressLayout`).
#[inline(always)]
pub fn address_offset(field: impl FnOnce(&'static AddressLayout) -> &'static u32) -> u32 {
    // SAFETY: a plain read of a field of an initialised static; volatile so the loader's value
    // is used.
    unsafe { core::ptr::read_volatile(field(&ADDRESS_LAYOUT)) }
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

/// The socket slot table's size minus one (a power of two minus one).
#[inline(always)]
pub fn socket_slot_mask() -> u32 {
    // SAFETY: a plain read of an initialised static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&SOCKET_SLOT_MASK) }
}

/// The transition slot table's size minus one (a power of two minus one).
#[inline(always)]
pub fn transition_slot_mask() -> u32 {
    // SAFETY: a plain read of an initialised static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&TRANSITION_SLOT_MASK) }
}
