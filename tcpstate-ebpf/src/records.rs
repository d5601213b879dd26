//! Per-socket records: where each tracked socket's state and start time live.
//!
//! A record lives in a slot of `SOCKET_SLOTS`, a preallocated array: the first free slot of a
//! window of `SOCKET_SLOT_WINDOW` from the slot the socket's cookie hashes to, claimed with a
//! compare-and-swap of the slot's owner (its `cookie`) and given back at CLOSE with a store of
//! 0. No allocation, no lock: socket-local storage, which this replaces on the fast path, costs
//! a `kzalloc` with a memcg charge and two spinlocks with interrupts off per socket, over half
//! of the program's time when it held every record. The owner is the cookie, not the socket's
//! address, because the kernel never reuses a cookie, while a freed socket's address comes
//! back with the next socket the slab hands out.
//!
//! When the whole window is taken (a table sized too small for the host), the record goes to
//! socket-local storage instead, which has no capacity: slower, never lost.
//!
//! A socket handed to a timewait socket at CLOSE leaves its record in the slot as the handoff
//! for the daemon (its owner marked with `HANDOFF_OWNER`): no other map is written on the
//! connection's last event, and the next socket whose window passes there may take the slot,
//! moving the handoff to its CPU's `DISPLACED_HANDOFFS` ring (an array write: cheap even when
//! the churn laps the table between two scrapes and every new socket displaces one).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use tcpstate_common::{
    HANDOFF_OWNER, SOCKET_SLOT_WINDOW, SocketRecord, TimewaitHandoff, record_home, slot_owner,
    socket_slot_window,
};

use crate::{maps, sock::Sock};

/// The record of the socket with `cookie`, if it has one.
#[inline(always)]
pub fn find(sock: &Sock, cookie: u64) -> Option<&'static mut SocketRecord> {
    let first = socket_slot_window(cookie);
    for step in 0..SOCKET_SLOT_WINDOW {
        let slot = maps::socket_slot(first.wrapping_add(step))?;
        if slot.cookie == cookie {
            return Some(slot);
        }
    }
    sock.storage_record()
}

/// Gives the socket `initial` as its record: in the first claimable slot of its window, or else
/// in socket-local storage. `None` when both are unavailable. A claimable slot may still hold a
/// handoff the daemon has not taken: the handoff then moves to the CPU's `DISPLACED_HANDOFFS`
/// ring (false in `.1` if it was lost).
#[inline(always)]
pub fn create(
    sock: &Sock,
    initial: &mut SocketRecord,
    recorder: u8,
) -> (Option<&'static mut SocketRecord>, bool) {
    let first = socket_slot_window(initial.cookie);
    for step in 0..SOCKET_SLOT_WINDOW {
        let Some(slot) = maps::socket_slot(first.wrapping_add(step)) else {
            return (None, true);
        };
        let owner = slot.cookie;
        if !slot_owner::is_claimable(owner) {
            continue;
        }
        // Read before the claim overwrites it: nobody writes a handoff's fields, and a claim
        // or the daemon's take changes the owner, which makes the claim below fail.
        let displaced = slot_owner::handoff_cookie(owner).map(|cookie| {
            let handoff = TimewaitHandoff {
                entered_ns: slot.entered_ns,
                labels: slot.labels,
                state: slot.state,
                _padding: [0; 3],
                net_inode: slot.net_inode,
            };
            (cookie, handoff)
        });
        if claim(slot, owner, initial.cookie) {
            fill(slot, initial);
            let kept = displaced.is_none_or(|(cookie, handoff)| {
                maps::record_displaced_handoff(recorder, cookie, &handoff)
            });
            return (Some(slot), kept);
        }
    }
    initial.home = record_home::SOCKET_STORAGE;
    (sock.create_storage_record(initial), true)
}

/// Writes a claimed slot's record (its owner is already the socket's cookie).
#[inline(always)]
fn fill(slot: &mut SocketRecord, initial: &SocketRecord) {
    slot.entered_ns = initial.entered_ns;
    slot.labels = initial.labels;
    slot.state = initial.state;
    slot.home = record_home::SLOT;
    slot.net_inode = initial.net_inode;
}

/// Forgets the socket's record (at CLOSE); false if the kernel refused to delete it.
#[inline(always)]
pub fn delete(sock: &Sock, record: &mut SocketRecord) -> bool {
    if record.home == record_home::SLOT {
        // SAFETY: the record's owner, an aligned u64 of a map value valid for this run: one
        // store, which other CPUs' compare-and-swaps see whole.
        unsafe { core::ptr::write_volatile(&raw mut record.cookie, 0) };
        true
    } else {
        sock.delete_storage_record()
    }
}

/// Leaves a slot's record as the handoff of its connection to a timewait socket in `state`
/// since `entered_ns` (at the socket's CLOSE, instead of `delete`).
#[inline(always)]
pub fn hand_off(record: &mut SocketRecord, state: u8, entered_ns: u64) {
    let owner = record.cookie | HANDOFF_OWNER;
    // SAFETY: fields of a map value valid for this run, owned by this socket until the owner
    // store below. Volatile keeps the stores in this order: whoever sees the handoff owner
    // (the daemon, on x86's ordered stores) sees the handoff's fields.
    unsafe {
        core::ptr::write_volatile(&raw mut record.state, state);
        core::ptr::write_volatile(&raw mut record.entered_ns, entered_ns);
        core::ptr::write_volatile(&raw mut record.cookie, owner);
    }
}

/// Takes a claimable slot (owned by `owner`: free or a handoff) for `cookie`; false if another
/// CPU or the daemon changed its owner first (one socket's events never run concurrently, its
/// state changes hold the socket's lock). The BPF target has no
/// `AtomicU64::compare_exchange` in `core` (its spec claims no CAS), but the instruction
/// exists (BPF_CMPXCHG, which the verifier allows on map values).
#[inline(always)]
fn claim(slot: &mut SocketRecord, owner: u64, cookie: u64) -> bool {
    // SAFETY: the slot's owner, an aligned u64 of a map value valid for this run; every
    // concurrent access to it is atomic.
    let (_, claimed) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
            &raw mut slot.cookie,
            owner,
            cookie,
        )
    };
    claimed
}
