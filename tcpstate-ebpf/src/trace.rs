//! The live event stream: a program of its own (`trace_state_change`), which the daemon attaches
//! only while the stream has subscribers, after the two programs that count. It reads what they
//! left (the socket's record: its labels, and for this event its entry time) and keeps its own
//! record of each socket's state and entry time (`TRACE_SOCKETS`), since the counting programs
//! have overwritten the record's by the time it runs. Each transition that passes the
//! subscribers' filter (`TRACE_CONTROL`) goes into the `TRACE_EVENTS` ring buffer. A side
//! output: nothing here changes what the aggregates count, and with nobody listening none of it
//! runs (docs/ARCHITECTURE.md, "the live event stream").

use core::cell::UnsafeCell;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_RB_NO_WAKEUP},
    btf_maps::{HashMap, PerCpuArray, RingBuf},
    macros::btf_map,
    programs::BtfTracePointContext,
};
use tcpstate_common::{
    DEFAULT_SOCKET_SLOTS, Labels, TRACE_NO_DURATION, TRACE_RING_BYTES, TcpState, TraceControl,
    TraceEvent, TracedSocket, recorder,
    state::{CLOSE, FIN_WAIT2, TIME_WAIT},
    transition_detail, transition_flag,
};

use crate::{
    closed,
    labels::{first_seen_role, untracked_labels},
    records,
    sock::{Sock, now_ns},
    state_change::close_detail,
};

/// Whether anyone listens, and the union of the subscribers' filters: a global, in `.bss`,
/// which the daemon rewrites through that section's map.
#[unsafe(no_mangle)]
static TRACE_CONTROL: Control = Control(UnsafeCell::new(TraceControl::OFF));

#[repr(transparent)]
struct Control(UnsafeCell<TraceControl>);

// SAFETY: the program only reads it; the daemon rewrites it whole, and a read torn by that
// only mis-filters the events around the change.
unsafe impl Sync for Control {}

#[btf_map]
static TRACE_EVENTS: RingBuf<TraceEvent, { TRACE_RING_BYTES as usize }> = RingBuf::new();

/// Per CPU: events `TRACE_EVENTS` had no room for (the daemon reads too slowly).
#[btf_map]
static TRACE_DROPS: PerCpuArray<u64, 1> = PerCpuArray::new();

/// The stream's own record of each socket (see `TracedSocket`). Not preallocated: it takes
/// memory only while someone listens (the daemon empties it when the last one leaves); sized
/// by the daemon as the slot table.
#[btf_map]
static TRACE_SOCKETS: HashMap<
    u64,
    TracedSocket,
    { DEFAULT_SOCKET_SLOTS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// The filter, when someone listens.
#[inline(always)]
fn listening() -> Option<&'static TraceControl> {
    let control = TRACE_CONTROL.0.get();
    // SAFETY: a field of an initialised static (see `Control`); volatile, so that the
    // daemon's value is read on every event.
    let subscribers = unsafe { core::ptr::read_volatile(&raw const (*control).subscribers) };
    // SAFETY: as above; the filter is read only while someone listens.
    (subscribers != 0).then(|| unsafe { &*control })
}

/// One `inet_sock_set_state` event, after the counting programs.
#[inline(always)]
pub fn observe(ctx: &BtfTracePointContext) {
    let Some(control) = listening() else {
        return;
    };
    let sock = Sock::new(ctx.arg(0));
    if !sock.is_tcp() {
        return;
    }
    let (old, new): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    let (from, to) = (old as u8, new as u8);
    if old != i32::from(from)
        || new != i32::from(to)
        || !TcpState::is_valid(from)
        || !TcpState::is_valid(to)
    {
        return;
    }
    // A socket nobody asked for is left alone: no entry kept (the daemon fills them in again
    // from the slot table when the filter changes).
    let (local_port, remote_port) = (sock.source_port(), sock.remote_port());
    if !control.passes_ports(local_port, remote_port) {
        return;
    }
    let cookie = sock.cookie();
    let seen = TRACE_SOCKETS.get_ptr_mut(cookie);
    // SAFETY: a hash map value, valid for this run; this socket's events are serialised by its
    // lock, so no other CPU writes this entry meanwhile.
    let seen = seen.map(|seen| unsafe { &mut *seen });
    let record = if to == CLOSE {
        None
    } else {
        records::find(&sock, cookie)
    };
    // The time the counting program recorded for this event where it left it in the record, so
    // that the stream's durations are the histogram's.
    let now = match &record {
        Some(record) if record.state == to && from != to => record.entered_ns,
        _ => now_ns(),
    };
    let labels = match (&record, &seen) {
        (Some(record), _) => record.labels,
        (None, Some(seen)) => seen.labels,
        (None, None) => match closed::find(&sock) {
            Some(closed) => closed.labels,
            None => untracked_labels(&sock, first_seen_role(from, to)),
        },
    };
    if !control.passes_owner(labels.cgroup) {
        return;
    }
    let mut flags = 0;
    let mut duration = TRACE_NO_DURATION;
    match seen {
        // A state set again (FIN_WAIT1 by close() after shutdown()): it goes on.
        Some(_) if from == to => flags |= transition_flag::FROM_TRACKED,
        Some(seen) => {
            if seen.state == from {
                flags |= transition_flag::FROM_TRACKED | transition_flag::DURATION_OBSERVED;
                // Capped below the sentinel (a clock that went backwards gives 0).
                duration = now
                    .saturating_sub(seen.entered_ns)
                    .min(TRACE_NO_DURATION - 1);
            }
            if to == CLOSE {
                let _ = TRACE_SOCKETS.remove(cookie);
            } else {
                seen.entered_ns = now;
                seen.labels = labels;
                seen.state = to;
            }
        }
        None if to != CLOSE => {
            let traced = TracedSocket {
                entered_ns: now,
                labels,
                state: to,
                _padding: [0; 7],
            };
            // Full: this socket's next duration is unknown, nothing else.
            let _ = TRACE_SOCKETS.insert(cookie, traced, BPF_ANY.into());
        }
        None => {}
    }
    if to != CLOSE {
        flags |= transition_flag::TO_TRACKED;
    }
    let detail = if to == CLOSE {
        close_detail(&sock, from)
    } else {
        transition_detail::NONE
    };
    let transition = Transition {
        time_ns: now,
        cookie,
        duration_ns: duration,
        labels,
        ports: (local_port, remote_port),
        from,
        to,
        flags,
        detail,
    };
    send(control, &sock, &transition);
}

/// A transition as the stream tells it.
struct Transition {
    time_ns: u64,
    cookie: u64,
    /// [`TRACE_NO_DURATION`] when the start of `from` was not seen.
    duration_ns: u64,
    labels: Labels,
    /// Local and remote.
    ports: (u16, u16),
    from: u8,
    to: u8,
    flags: u8,
    detail: u8,
}

/// Sends `transition` of `sock` (whose ports and owner passed the filter) to the stream if its
/// states pass too; counts it in `TRACE_DROPS` if the ring is full.
#[inline(always)]
fn send(control: &TraceControl, sock: &Sock, transition: &Transition) {
    let (local_port, remote_port) = transition.ports;
    // The logical view's state too: the filter must not drop a `... -> TIME_WAIT`.
    let logical = match transition.detail {
        transition_detail::TIME_WAIT_HANDOFF => 1u32 << TIME_WAIT,
        transition_detail::FIN_WAIT2_HANDOFF => 1 << FIN_WAIT2,
        _ => 0,
    };
    let states = 1u32 << (transition.from & 31) | 1 << (transition.to & 31) | logical;
    let labels = transition.labels;
    if !control.passes_states(states) {
        return;
    }
    let Some(mut entry) = TRACE_EVENTS.reserve(0) else {
        count_drop();
        return;
    };
    let (local_address, remote_address) = sock.addresses(labels.family);
    let slot = entry.as_mut_ptr();
    // SAFETY: `slot` is the reserved entry, 80 bytes for this program alone until submitted;
    // every field is written (the padding too), field by field so that no `memcpy` call is
    // emitted.
    unsafe {
        (*slot).time_ns = transition.time_ns;
        (*slot).cookie = transition.cookie;
        (*slot).duration_ns = transition.duration_ns;
        (*slot).labels = labels;
        (*slot).local_address = local_address;
        (*slot).remote_address = remote_address;
        (*slot).local_port = local_port;
        (*slot).remote_port = remote_port;
        (*slot).from = transition.from;
        (*slot).to = transition.to;
        (*slot).flags = transition.flags;
        (*slot).detail = transition.detail;
        (*slot).recorder = recorder::PRIMARY;
        (*slot)._padding = [0; 7];
    }
    // The daemon polls the ring: no wakeup to schedule.
    entry.submit(BPF_RB_NO_WAKEUP.into());
}

#[inline(always)]
fn count_drop() {
    if let Some(count) = TRACE_DROPS.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot, only written by this program on this CPU.
        unsafe { *count += 1 };
    }
}
