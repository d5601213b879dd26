//! The kernel's `COUNTERS` and per-CPU statistics, summed.

use tcpstate_common::{TransitionStats, counter, recorder};

/// Sums per-CPU values of one entry.
pub fn sum_over_cpus<'a>(values: impl IntoIterator<Item = &'a TransitionStats>) -> TransitionStats {
    values
        .into_iter()
        .fold(TransitionStats::ZERO, |mut total, cpu| {
            total.count += cpu.count;
            total.duration_sum_ns += cpu.duration_sum_ns;
            for (total, count) in total.duration_buckets.iter_mut().zip(&cpu.duration_buckets) {
                *total += count;
            }
            total
        })
}

/// The kernel's `COUNTERS`, summed over CPUs and recorders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub failed_events_map_full: u64,
    pub failed_handoff_record: u64,
    pub records_created: u64,
    pub records_deleted: u64,
    pub nested_events_recorded: u64,
    pub failed_transitions_map_full: u64,
    pub failed_socket_storage: u64,
    pub failed_unknown_state: u64,
    pub failed_record_delete: u64,
    pub records_in_socket_storage: u64,
    pub failed_first_seen_record: u64,
}

impl Counters {
    /// `slots[i]` is the sum over CPUs of `COUNTERS[i]`.
    pub fn from_slots(slots: &[u64]) -> Self {
        let total = |counter: u32| -> u64 {
            (0..recorder::COUNT as u32)
                .filter_map(|recorder| slots.get((recorder * counter::COUNT + counter) as usize))
                .sum()
        };
        Counters {
            records_created: total(counter::RECORDS_CREATED),
            records_deleted: total(counter::RECORDS_DELETED),
            nested_events_recorded: total(counter::NESTED_EVENTS_RECORDED),
            failed_transitions_map_full: total(counter::FAILED_TRANSITIONS_MAP_FULL),
            failed_socket_storage: total(counter::FAILED_SOCKET_STORAGE),
            failed_unknown_state: total(counter::FAILED_UNKNOWN_STATE),
            failed_record_delete: total(counter::FAILED_RECORD_DELETE),
            failed_events_map_full: total(counter::FAILED_EVENTS_MAP_FULL),
            failed_handoff_record: total(counter::FAILED_HANDOFF_RECORD),
            records_in_socket_storage: total(counter::RECORDS_IN_SOCKET_STORAGE),
            failed_first_seen_record: total(counter::FAILED_FIRST_SEEN_RECORD),
        }
    }

    /// Sockets with a record in the kernel now.
    pub fn tracked_sockets(&self) -> u64 {
        self.records_created.saturating_sub(self.records_deleted)
    }
}

/// Events no program saw: the kernel skipped them for the primary program (recursion misses)
/// and the nested-event program did not record them either.
pub fn events_lost(primary_recursion_misses: u64, nested_events_recorded: u64) -> u64 {
    primary_recursion_misses.saturating_sub(nested_events_recorded)
}
