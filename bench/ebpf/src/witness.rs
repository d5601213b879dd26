//! The witness (`cargo xtask bench witness`, see `tcpstate_bench_common::witness`): counts of
//! the TCP state changes two kernel paths report, by transition.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    btf_maps::PerCpuArray,
    macros::btf_map,
    programs::SockOpsContext,
};
use tcpstate_bench_common::witness;

#[btf_map]
static WITNESS: PerCpuArray<u64, { witness::SLOTS as usize }> = PerCpuArray::new();

/// Where `struct sock` keeps `sk_protocol`, from the kernel's BTF: set at load time, so the
/// verifier sees a constant offset (read volatile, or the compiler would fold in this 0).
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFFSET: u32 = 0;

/// `IPPROTO_TCP`. The tracepoint also fires for SCTP (132) and MPTCP (262) sockets.
const IPPROTO_TCP: u16 = 6;

/// Whether the tracepoint's socket is a TCP one.
#[inline(always)]
pub fn is_tcp(sk: *mut c_void) -> bool {
    // SAFETY: a plain read of an initialised static; volatile so the loader's value is used.
    let offset = unsafe { core::ptr::read_volatile(&SK_PROTOCOL_OFFSET) };
    // SAFETY: `sk` is the BTF tracepoint's typed `struct sock *` and `offset` that of its
    // `sk_protocol` (u16) from the same BTF: the verifier checks the read against the kernel's
    // `struct sock` and makes the load fault-safe (BPF_PROBE_MEM).
    let protocol = unsafe { sk.cast::<u8>().add(offset as usize).cast::<u16>().read() };
    protocol == IPPROTO_TCP
}

/// One more `old -> new` delivered by the tracepoint.
#[inline(always)]
pub fn count_tracepoint(old: i32, new: i32) {
    add(witness::slot(witness::TRACEPOINT, old as u32, new as u32));
}

/// One more `old -> new` announced to sock_ops (`BPF_SOCK_OPS_STATE_CB`). The kernel announces
/// state changes only to sockets that asked: each socket asks at the first callback of its
/// life, when it connects, listens, or is established as a listener's child (its earlier
/// transitions come before any callback: the tracepoint alone reports those).
#[inline(always)]
pub fn count_sock_ops(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_STATE_CB => add(witness::slot(witness::SOCK_OPS, ctx.arg(0), ctx.arg(1))),
        BPF_SOCK_OPS_TCP_CONNECT_CB
        | BPF_SOCK_OPS_TCP_LISTEN_CB
        | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // Fails only for a socket that is not a full one, which these callbacks never get.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        _ => {}
    }
}

#[inline(always)]
fn add(slot: u32) {
    if let Some(count) = WITNESS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array slot, valid for this run. Atomic: sock_ops programs have no
        // recursion guard, so a softirq's state change can run this program again on the same
        // CPU in the middle of an update.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1u64) };
    }
}
