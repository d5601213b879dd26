//! The programs' rare conditions, each counted in `COUNTERS` (the daemon exports the counts as
//! `tcpstate_recording_failures_total`) and told to the daemon's log through aya-log. Only
//! where something could not be recorded, never on an event's common path; and only at the 1st,
//! 2nd, 4th, 8th... occurrence on a CPU, so that a storm cannot fill the log's ring (the
//! daemon also writes at most one line per condition a minute).

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use tcpstate_common::counter;

use crate::maps;

/// Counts the failure `failed` (a `counter::FAILED_*`) of `recorder`, and reports it when due;
/// `states`: the event's old and new state numbers. The count is inline, as any counter's.
#[inline(always)]
pub fn failure<C: EbpfContext>(ctx: &C, recorder: u8, failed: u32, states: (u32, u32)) {
    due(ctx, failed, maps::count(recorder, failed), states);
}

/// Reports a failure counted `on_this_cpu` times on this CPU, if that is a power of two.
#[inline(always)]
pub fn due<C: EbpfContext>(ctx: &C, failed: u32, on_this_cpu: u64, states: (u32, u32)) {
    if on_this_cpu.is_power_of_two() {
        log(ctx, failed, on_this_cpu, states);
    }
}

/// Tells the daemon's log about a failure. A subprogram of its own: the log writers' code
/// stays out of the events' path.
#[inline(never)]
fn log<C: EbpfContext>(ctx: &C, failed: u32, on_this_cpu: u64, (old, new): (u32, u32)) {
    match failed {
        counter::FAILED_UNKNOWN_STATE => warn!(
            ctx,
            "state change {} -> {}: a state number this tcpstate does not know, not counted \
             (failure {} of its kind on this CPU)",
            old,
            new,
            on_this_cpu
        ),
        counter::FAILED_TRANSITIONS_MAP_FULL => warn!(
            ctx,
            "the TRANSITIONS map is full: a transition {} -> {} of a new label set was not \
             counted (failure {} of its kind on this CPU)",
            old,
            new,
            on_this_cpu
        ),
        counter::FAILED_EVENTS_MAP_FULL => warn!(
            ctx,
            "the EVENTS map is full: a reset or SYN-ACK retransmit was not counted (failure {} \
             of its kind on this CPU)",
            on_this_cpu
        ),
        counter::FAILED_SOCKET_STORAGE => warn!(
            ctx,
            "no slot and no socket storage for a new socket's record: it is counted, not \
             tracked (failure {} of its kind on this CPU)",
            on_this_cpu
        ),
        counter::FAILED_RECORD_DELETE => warn!(
            ctx,
            "a socket's record could not be deleted at CLOSE (failure {} of its kind on this \
             CPU)",
            on_this_cpu
        ),
        counter::FAILED_HANDOFF_RECORD => warn!(
            ctx,
            "a timewait handoff was lost: its timewait socket gets inferred labels (failure {} \
             of its kind on this CPU)",
            on_this_cpu
        ),
        counter::FAILED_FIRST_SEEN_RECORD => warn!(
            ctx,
            "the FIRST_SEEN map is full: a socket older than tcpstated moved unnoticed, its old \
             state's gauge may stay one too high (failure {} of its kind on this CPU)",
            on_this_cpu
        ),
        _ => {}
    }
}
