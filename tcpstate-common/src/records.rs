//! What the kernel keeps per socket (its record in the slot table or in socket storage), and
//! what it leaves the daemon when a socket goes (timewait handoffs, the last closed sockets).

use crate::Labels;

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
    /// The inode number of the socket's network namespace: the daemon checks the record against
    /// that namespace's sock_diag polls.
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
    pub _padding: [u8; 3],
    /// The inode number of the connection's network namespace (its record's): the daemon
    /// looks for the timewait socket in that namespace's polls.
    pub net_inode: u32,
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, made only of integers and integer arrays, with every padding
    // byte an explicit field (checked by the size assertion beside it): any bit pattern is a
    // valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::SocketRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TimewaitHandoff {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DisplacedHandoff {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClosedSocket {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
