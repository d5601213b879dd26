//! tcpstate's kernel side: the entry points, one line each over the module of their hook.
//! `state_change` is what one `inet_sock_set_state` event does; `resets` and `synack` count
//! the events that tracepoint never shows; `records` keeps the per-socket records, `maps` and
//! `globals` the maps and the load-time configuration, `sock` the raw reads of `struct sock`,
//! `trace` the live event stream (a program the daemon attaches only while it has subscribers).
//! The benchmark's programs (its floor, its witness) are in its own object, bench/ebpf.
#![no_std]
#![no_main]
// `atomic_cxchg`: see `records::claim`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod closed;
mod globals;
mod labels;
mod maps;
mod records;
mod resets;
mod sock;
mod state_change;
mod synack;
mod trace;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcpstate_common::event_kind;

/// Every TCP state change of a full socket (`tcp_set_state` -> `inet_sock_set_state`).
/// The BTF tracepoint gives the typed `struct sock *` (readable at BTF-checked offsets, accepted
/// by `bpf_sk_storage_get`) and is cheaper per event than the classic tracepoint.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn record_state_change(ctx: BtfTracePointContext) -> i32 {
    state_change::record_primary(&ctx);
    0
}

/// The same tracepoint, second program, attached after the first: for each event the kernel
/// runs it after `record_state_change`. The kernel runs a BTF tracepoint program at most once
/// per CPU at a time and silently skips an event that arrives while it runs (a softirq state
/// change interrupting a process-context one, also during the kernel's bookkeeping around the
/// program; counted in its `recursion_misses`). The guard is per program, so this one still runs
/// then: it records exactly the events the primary program did not handle, into its own slots.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn record_nested_state_change(ctx: BtfTracePointContext) -> i32 {
    state_change::record_nested(&ctx);
    0
}

/// Resets this host sends (`tcp_v4_send_reset`/`tcp_v6_send_reset`, `tcp_send_active_reset`).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn record_reset_sent(ctx: BtfTracePointContext) -> i32 {
    resets::record(&ctx, event_kind::RESET_SENT);
    0
}

/// Resets this host receives (`tcp_reset`).
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn record_reset_received(ctx: BtfTracePointContext) -> i32 {
    resets::record(&ctx, event_kind::RESET_RECEIVED);
    0
}

/// SYN-ACKs a listener retransmits because the handshake's final ACK did not come.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn record_synack_retransmit(ctx: BtfTracePointContext) -> i32 {
    synack::record(&ctx);
    0
}

/// The live event stream, on the same tracepoint: attached by the daemon only while the stream
/// has subscribers (then after the two programs above, so it sees what they recorded).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn trace_state_change(ctx: BtfTracePointContext) -> i32 {
    trace::observe(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
