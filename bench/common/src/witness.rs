//! The witness (`cargo xtask bench witness`): two programs count every TCP state change by
//! transition, one on the tracepoint tcpstated uses, one on sock_ops' state callback (which
//! `tcp_set_state()` calls just before the tracepoint, for every transition but the three that
//! begin a socket's life: connect, listen, a listener's new child). A sock_ops program has no
//! recursion guard and does not go through the tracepoint, so where the two counts of a
//! transition differ, the tracepoint did not deliver the difference to BPF.

/// The source of a count.
pub const TRACEPOINT: u32 = 0;
pub const SOCK_OPS: u32 = 1;
/// Slots of the `WITNESS` map: per source, one per pair of states (each below 16).
pub const SLOTS: u32 = 2 * 16 * 16;

/// The slot counting `old -> new` from `source`.
pub const fn slot(source: u32, old: u32, new: u32) -> u32 {
    (source & 1) * 256 + (old & 15) * 16 + (new & 15)
}

/// The source and states a slot counts (the inverse of [`slot`]).
pub const fn of_slot(slot: u32) -> (u32, u32, u32) {
    ((slot / 256) & 1, (slot / 16) & 15, slot & 15)
}

#[cfg(test)]
mod tests {
    use crate::witness;

    #[test]
    fn witness_slots_are_distinct_and_read_back() {
        let mut seen = [false; witness::SLOTS as usize];
        for source in [witness::TRACEPOINT, witness::SOCK_OPS] {
            for old in 0..16 {
                for new in 0..16 {
                    let slot = witness::slot(source, old, new);
                    assert!(!core::mem::replace(&mut seen[slot as usize], true));
                    assert_eq!(witness::of_slot(slot), (source, old, new));
                }
            }
        }
    }
}
