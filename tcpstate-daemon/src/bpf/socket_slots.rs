//! The kernel's socket slot table (`SOCKET_SLOTS`, an mmapable array of `SocketRecord`), and
//! the daemon's side of its protocol: a slot's owner (the record's `cookie`) changes only by
//! compare-and-swap, and the daemon's one write is releasing a slot (a handoff it took, a
//! record it knows stale) whose owner is still the one it read.

use std::{
    io,
    mem::offset_of,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::atomic::Ordering,
};

use tcpstate_common::{
    SOCKET_SLOT_WINDOW, SocketRecord, TimewaitHandoff, slot_owner, socket_slot_window,
};

use crate::sys::mmap::{MappedArray, page_size};

const OWNER: usize = offset_of!(SocketRecord, cookie);
const STATE: usize = offset_of!(SocketRecord, state);
const NET_INODE: usize = offset_of!(SocketRecord, net_inode);

/// Slots mapped at a time while sweeping (1 MiB of records).
const SLOTS_PER_CHUNK: usize = 32768;

/// The table, seen through mappings made when needed and unmapped after: the kernel maps every
/// page of the table at once, so a lasting mapping would add the whole table (8 MiB by default)
/// to the daemon's resident memory.
pub struct SocketSlots {
    map: OwnedFd,
    slots: usize,
}

impl SocketSlots {
    /// The table `map` of `slots` records (a power of two).
    pub fn new(map: BorrowedFd<'_>, slots: u32) -> io::Result<Self> {
        Ok(SocketSlots {
            map: map.try_clone_to_owned()?,
            slots: slots as usize,
        })
    }

    /// Another handle on the same table (for another thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(SocketSlots {
            map: self.map.try_clone()?,
            slots: self.slots,
        })
    }

    /// Whether the socket with `cookie` has its record in a slot now, mapping only the pages
    /// its window lies in (for a few lookups: the kernel maps every page of a mapping at once,
    /// so a `view` of the whole table would add it all to the daemon's resident memory).
    pub fn holds(&self, cookie: u64) -> io::Result<bool> {
        let per_page = (page_size() / size_of::<SocketRecord>()).max(1);
        let first = socket_slot_window(cookie) as usize;
        let mut mapped: Option<(usize, MappedArray<SocketRecord>)> = None;
        for step in 0..SOCKET_SLOT_WINDOW as usize {
            let index = (first + step) & (self.slots - 1);
            let page = index - index % per_page;
            let view = match &mapped {
                Some((at, view)) if *at == page => view,
                _ => {
                    let count = per_page.min(self.slots - page);
                    let view = MappedArray::map(self.map.as_fd(), page, count)?;
                    &mapped.insert((page, view)).1
                }
            };
            if view.atomic_u64(index - page, OWNER).load(Ordering::Relaxed) == cookie {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A live view of the whole table.
    pub fn view(&self) -> io::Result<SlotsView> {
        Ok(SlotsView(MappedArray::map(
            self.map.as_fd(),
            0,
            self.slots,
        )?))
    }

    /// Hands `each` every live record of the table (not the handoffs), a chunk at a time, as
    /// the kernel has it now.
    pub fn for_each_live(&self, mut each: impl FnMut(&SocketRecord)) -> io::Result<()> {
        for first in (0..self.slots).step_by(SLOTS_PER_CHUNK) {
            let count = SLOTS_PER_CHUNK.min(self.slots - first);
            let view = MappedArray::<SocketRecord>::map(self.map.as_fd(), first, count)?;
            for index in 0..count {
                let owner = view.atomic_u64(index, OWNER).load(Ordering::Acquire);
                if owner != 0 && slot_owner::handoff_cookie(owner).is_none() {
                    let record = view.read(index);
                    // A slot claimed by another socket during the read is that socket's.
                    if record.cookie == owner {
                        each(&record);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sweeps the whole table, a chunk at a time: takes every handoff the slots hold, one by
    /// one (a busy host leaves hundreds of thousands between two scrapes: no list of them is
    /// built), and releases the records `sweep` knows to be stale. A slot is released (owner 0)
    /// only if its owner is still the one read: a handoff a new socket claimed meanwhile (maybe
    /// half overwritten) is skipped, lost to the claim as an LRU entry to eviction.
    pub fn sweep(&self, sweep: &mut impl SlotSweep) -> io::Result<()> {
        for first in (0..self.slots).step_by(SLOTS_PER_CHUNK) {
            let count = SLOTS_PER_CHUNK.min(self.slots - first);
            let view = SlotsView(MappedArray::map(self.map.as_fd(), first, count)?);
            for index in 0..count {
                view.sweep_slot(index, sweep);
            }
        }
        Ok(())
    }
}

/// What a sweep of the slot table (`SocketSlots::sweep`) does with the records it finds.
pub trait SlotSweep {
    /// A connection's handoff to its timewait socket (released from its slot).
    fn take_handoff(&mut self, cookie: u64, handoff: TimewaitHandoff);
    /// Whether the sweep wants to know the network namespace of the live records in `state`
    /// (one more read per record).
    fn wants_namespace(&self, _state: u8) -> bool {
        false
    }
    /// A live record in `state`, of the network namespace `net_inode` (for the states
    /// `wants_namespace` names).
    fn live(&mut self, _state: u8, _net_inode: u32) {}
    /// Whether the live record owned by `cookie`, in `state`, may be stale: a cheap first test,
    /// before the record is read whole (a table holds hundreds of thousands of live records).
    fn may_be_stale(&self, cookie: u64, state: u8) -> bool;
    /// Whether a live record belongs to a socket known to be gone: the kernel never delivered
    /// its last events to the programs, so nothing else frees it.
    fn is_stale(&self, record: &SocketRecord) -> bool;
    /// A stale record, released from its slot.
    fn release_stale(&mut self, record: SocketRecord);
}

/// A sweep that only frees the handoffs' slots, for a daemon without sock_diag polls
/// (`--no-collector.sockdiag`): nothing would follow their timewait sockets, and no record can
/// be proved stale.
pub struct ReleaseHandoffs;

impl SlotSweep for ReleaseHandoffs {
    fn take_handoff(&mut self, _: u64, _: TimewaitHandoff) {}

    fn may_be_stale(&self, _: u64, _: u8) -> bool {
        false
    }

    fn is_stale(&self, _: &SocketRecord) -> bool {
        false
    }

    fn release_stale(&mut self, _: SocketRecord) {}
}

/// Consecutive slots of the table, live: each read sees the slots as the kernel has them now.
pub struct SlotsView(MappedArray<SocketRecord>);

impl SlotsView {
    /// Whether the socket with `cookie` has its record in a slot now (the kernel's search:
    /// `socket_slot_window`, then `SOCKET_SLOT_WINDOW` slots on, wrapping around). Only
    /// `SocketSlots::view`, of the whole table, is public.
    pub fn holds(&self, cookie: u64) -> bool {
        let first = socket_slot_window(cookie) as usize;
        (0..SOCKET_SLOT_WINDOW as usize).any(|step| {
            let index = (first + step) & (self.0.len() - 1);
            self.0.atomic_u64(index, OWNER).load(Ordering::Relaxed) == cookie
        })
    }

    /// Takes the handoff or the stale record slot `index` holds, if it holds one (see
    /// `SocketSlots::sweep`).
    fn sweep_slot(&self, index: usize, sweep: &mut impl SlotSweep) {
        let owner = self.0.atomic_u64(index, OWNER);
        let seen = owner.load(Ordering::Acquire);
        if seen == 0 {
            return;
        }
        let handoff = slot_owner::handoff_cookie(seen);
        if handoff.is_none() {
            let state = self.0.read_u8(index, STATE);
            if sweep.wants_namespace(state) {
                sweep.live(state, self.0.read_u32(index, NET_INODE));
            }
            if !sweep.may_be_stale(seen, state) {
                return;
            }
        }
        let record = SocketRecord {
            cookie: seen,
            ..self.0.read(index)
        };
        if handoff.is_none() && !sweep.is_stale(&record) {
            return;
        }
        // The kernel writes a handoff's fields before its owner and a claim's owner before its
        // fields: the owner unchanged since `seen` means the read fields were the handoff's. A
        // stale record has no writer left.
        if owner
            .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        match handoff {
            Some(cookie) => sweep.take_handoff(
                cookie,
                TimewaitHandoff {
                    entered_ns: record.entered_ns,
                    labels: record.labels,
                    state: record.state,
                    _padding: [0; 3],
                    net_inode: record.net_inode,
                },
            ),
            None => sweep.release_stale(record),
        }
    }
}
