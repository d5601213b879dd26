//! The live event stream: while the daemon has subscribers (`TRACE_CONTROL`), each transition
//! that passes their filter goes into the `TRACE_EVENTS` ring buffer. A side output: nothing
//! here changes what the aggregates count. With nobody listening an event costs one load and a
//! branch (see `state_change::record_event`).

use core::cell::UnsafeCell;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    btf_maps::{PerCpuArray, RingBuf},
    macros::btf_map,
};
use tcpstate_common::{
    TRACE_RING_BYTES, TraceControl, TraceEvent, TransitionKey,
    state::{FIN_WAIT2, TIME_WAIT},
    transition_detail,
};

use crate::sock::Sock;

/// Whether anyone listens, and the union of the subscribers' filters: a global, in `.bss`,
/// which the daemon rewrites through that section's map. Not a map lookup: a global is one
/// load, a lookup a helper call to LLVM (the verifier inlines it only later).
#[unsafe(no_mangle)]
static TRACE_CONTROL: Control = Control(UnsafeCell::new(TraceControl::OFF));

#[repr(transparent)]
struct Control(UnsafeCell<TraceControl>);

// SAFETY: the programs only read it; the daemon rewrites it whole, and a read torn by that
// only mis-filters the events around the change.
unsafe impl Sync for Control {}

#[btf_map]
static TRACE_EVENTS: RingBuf<TraceEvent, { TRACE_RING_BYTES as usize }> = RingBuf::new();

/// Per CPU and recorder: events `TRACE_EVENTS` had no room for (the daemon reads too slowly).
/// Per recorder, so the nested-event program's increments never interleave with the
/// primary's on the same value.
#[btf_map]
static TRACE_DROPS: PerCpuArray<u64, { tcpstate_common::recorder::COUNT }> = PerCpuArray::new();

/// Whether anyone listens: the one load an event costs while nobody does.
#[inline(always)]
pub fn subscribed() -> bool {
    listening().is_some()
}

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

/// A transition as the aggregates count it.
pub struct Transition {
    pub time_ns: u64,
    pub cookie: u64,
    /// As `add` counts it: [`tcpstate_common::TRACE_NO_DURATION`] when the start of `from`
    /// was not seen.
    pub duration_ns: u64,
    /// The aggregation key's two words (see `state_change::key`).
    pub key: [u64; 2],
}

impl Transition {
    #[inline(always)]
    pub fn new(time_ns: u64, cookie: u64, key: [u64; 2], duration_ns: u64) -> Self {
        Transition {
            time_ns,
            cookie,
            duration_ns,
            key,
        }
    }
}

/// Sends `transition` of `sock` to the stream if someone listens and it passes their filter;
/// counts it in `TRACE_DROPS` if the ring is full. A subprogram: its callers share one copy.
#[cold]
#[inline(never)]
pub fn send(sock: &Sock, transition: &Transition) {
    let Some(control) = listening() else {
        return;
    };
    // SAFETY: `TransitionKey` is `#[repr(C)]`, 16 bytes of integers, its words its bytes in
    // little-endian order (bpfel), as `state_change::key` composes them.
    let key = unsafe { core::mem::transmute::<[u64; 2], TransitionKey>(transition.key) };
    let (local_port, remote_port) = (sock.source_port(), sock.remote_port());
    // The logical view's state too: the filter must not drop a `... -> TIME_WAIT`.
    let logical = match key.detail {
        transition_detail::TIME_WAIT_HANDOFF => 1u32 << TIME_WAIT,
        transition_detail::FIN_WAIT2_HANDOFF => 1 << FIN_WAIT2,
        _ => 0,
    };
    let states = 1u32 << (key.from & 31) | 1 << (key.to & 31) | logical;
    if !control.passes(local_port, remote_port, states, key.labels.cgroup) {
        return;
    }
    let Some(mut entry) = TRACE_EVENTS.reserve(0) else {
        count_drop(key.recorder);
        return;
    };
    let (local_address, remote_address) = sock.addresses(key.labels.family);
    let slot = entry.as_mut_ptr();
    // SAFETY: `slot` is the reserved entry, 80 bytes for this program alone until submitted;
    // every field is written (the padding too), field by field so that no `memcpy` call is
    // emitted.
    unsafe {
        (*slot).time_ns = transition.time_ns;
        (*slot).cookie = transition.cookie;
        (*slot).duration_ns = transition.duration_ns;
        (*slot).labels = key.labels;
        (*slot).local_address = local_address;
        (*slot).remote_address = remote_address;
        (*slot).local_port = local_port;
        (*slot).remote_port = remote_port;
        (*slot).from = key.from;
        (*slot).to = key.to;
        (*slot).flags = key.flags;
        (*slot).detail = key.detail;
        (*slot).recorder = key.recorder;
        (*slot)._padding = [0; 7];
    }
    // The daemon polls the ring: no wakeup to schedule.
    entry.submit(BPF_RB_NO_WAKEUP.into());
}

#[inline(always)]
fn count_drop(recorder: u8) {
    if let Some(count) = TRACE_DROPS.get_ptr_mut(u32::from(recorder)) {
        // SAFETY: a per-CPU array slot, only written by `recorder` on this CPU.
        unsafe { *count += 1 };
    }
}
