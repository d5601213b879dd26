//! The benchmark's kernel programs, apart from tcpstated's: the floor (`empty_hook_floor`) and
//! the witness (`witness.rs`). The benchmark's tools load them (`tcpstate-hook-floor`,
//! `tcpstate-witness`); tcpstated never does, and its object does not hold them.
#![no_std]
#![no_main]
// `atomic_xadd`: see `witness::add`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod witness;

use aya_ebpf::{
    macros::{btf_tracepoint, sock_ops},
    programs::{BtfTracePointContext, SockOpsContext},
};

/// Does nothing: attached alone to tcpstated's hook, the same BTF tracepoint with the same
/// attach type, to measure what the hook itself costs, the floor every program there pays.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn empty_hook_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Counts the TCP state changes this tracepoint delivers, by transition: one side of the
/// witness (`cargo xtask bench witness`, see `tcpstate_bench_common::witness`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn witness_tracepoint(ctx: BtfTracePointContext) -> i32 {
    if witness::is_tcp(ctx.arg(0)) {
        witness::count_tracepoint(ctx.arg(1), ctx.arg(2));
    }
    0
}

/// The other side of the witness: the state changes `tcp_set_state()` announces to sock_ops
/// programs, on sockets that asked for them (see `witness::count_sock_ops`).
#[sock_ops]
pub fn witness_sock_ops(ctx: SockOpsContext) -> u32 {
    witness::count_sock_ops(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
