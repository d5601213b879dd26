//! The aggregation of state changes: one entry per (labels, from, to, flags, recorder, detail).

use crate::{Labels, MAX_BUCKETS};

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
            cgroup: 0,
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
        key.labels.cgroup = labels.cgroup;
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
            | (self.labels.role as u64) << 24
            | (self.labels.cgroup as u64) << 32;
        let edge = Self::edge_word(self.from, self.to, self.flags, self.recorder, self.detail);
        [labels, edge]
    }

    /// The second of [`Self::words`]: the transition and how it was recorded.
    #[inline(always)]
    pub const fn edge_word(from: u8, to: u8, flags: u8, recorder: u8, detail: u8) -> u64 {
        from as u64
            | (to as u64) << 8
            | (flags as u64) << 16
            | (recorder as u64) << 24
            | (detail as u64) << 32
    }

    pub fn from_words([labels, edge]: [u64; 2]) -> Self {
        let byte = |word: u64, index: u32| (word >> (8 * index)) as u8;
        let labels = Labels {
            port: labels as u16,
            family: byte(labels, 2),
            role: byte(labels, 3),
            cgroup: (labels >> 32) as u32,
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, made only of integers and integer arrays, with every padding
    // byte an explicit field (checked by the size assertion beside it): any bit pattern is a
    // valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::TransitionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TransitionStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TransitionSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_TRANSITION_SLOTS, TcpState};

    #[test]
    fn transition_keys_survive_their_slot_words() {
        let key = TransitionKey::new(
            Labels {
                port: 8443,
                family: 10,
                role: 3,
                cgroup: 0xdead_beef,
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
}
