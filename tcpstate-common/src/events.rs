//! Counted events other than state changes: resets and SYN-ACK retransmits.

use crate::Labels;

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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, made only of integers and integer arrays, with every padding
    // byte an explicit field (checked by the size assertion beside it): any bit pattern is a
    // valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::EventKey {}
}
