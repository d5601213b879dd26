//! The sockets that just reached CLOSE: an abort moves a socket to CLOSE *before* it sends its
//! reset, so the reset programs look here for the state it left and its labels.

use aya_ebpf::{btf_maps::Array, macros::btf_map};
use tcpstate_common::{ClosedSocket, Labels, RECENTLY_CLOSED_SLOTS};

use crate::sock::Sock;

/// Sockets that recently reached CLOSE (see `ClosedSocket`), one per slot chosen by a hash of
/// the ports. Shared by all CPUs, not per CPU: between an abort's CLOSE and its reset the task
/// can move to another CPU. Writes from two CPUs can race on a slot; a torn entry only fails to
/// match (that reset is then counted in CLOSE). The two ends of a connection have their ports
/// swapped, so on loopback the peer's CLOSE, which comes in between, lands in another slot.
#[btf_map]
static LAST_CLOSED: Array<ClosedSocket, { RECENTLY_CLOSED_SLOTS as usize }> = Array::new();

/// The slot of a socket: a hash of its ports (a pointer cannot be hashed: the verifier allows
/// no arithmetic on it).
#[inline(always)]
fn closed_slot(sock: &Sock) -> u32 {
    let ports = u32::from(sock.local_port()) << 16 | u32::from(sock.remote_port());
    // Fibonacci hashing: the top 10 bits of the product.
    ports.wrapping_mul(0x9E37_79B1) >> 22
}

/// Notes that `sock` just reached CLOSE from `state` (see `ClosedSocket`).
#[inline(always)]
pub fn note(sock: &Sock, labels: Labels, state: u8) {
    if let Some(slot) = LAST_CLOSED.get_ptr_mut(closed_slot(sock)) {
        // SAFETY: an array slot, valid for this run; a racing write from another CPU can only
        // make the entry unmatchable (see `LAST_CLOSED`).
        let slot = unsafe { &mut *slot };
        // Field by field: the padding stays as the map was created (zero), where a whole
        // `ClosedSocket` would be zeroed by a `memset` call.
        slot.socket = sock.address();
        slot.labels = labels;
        slot.state = state;
    }
}

/// The socket's entry among those that recently reached CLOSE, if any.
#[inline(always)]
pub fn find(sock: &Sock) -> Option<ClosedSocket> {
    LAST_CLOSED
        .get(closed_slot(sock))
        .filter(|closed| closed.socket == sock.address())
        .copied()
}
