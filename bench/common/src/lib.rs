//! What crosses between the benchmark's kernel programs (`tcpstate-bench-ebpf`) and its tools
//! (`tcpstate-hook-floor`, `tcpstate-witness`): the names of the object's programs, map and
//! global, and the witness's slots. tcpstated's own boundary is `tcpstate-common`; the
//! benchmark's programs hook the same tracepoint (`tcpstate_common::program::TRACEPOINT`).
#![no_std]

pub mod witness;

/// Names of the programs in the benchmark's eBPF object.
pub mod program {
    /// An empty program on tcpstated's tracepoint: the floor, what any program there costs.
    pub const EMPTY_HOOK_FLOOR: &str = "empty_hook_floor";
    /// Counts the TCP state changes the tracepoint delivers, by transition (see
    /// [`crate::witness`]).
    pub const WITNESS_TRACEPOINT: &str = "witness_tracepoint";
    /// Counts the TCP state changes `tcp_set_state()` announces to sock_ops programs, by
    /// transition (see [`crate::witness`]).
    pub const WITNESS_SOCK_OPS: &str = "witness_sock_ops";
}

/// Names of the maps in the benchmark's eBPF object.
pub mod map {
    /// `PERCPU_ARRAY`: [`crate::witness::slot`] -> `u64` count.
    pub const WITNESS: &str = "WITNESS";
}

/// Names of the load-time globals in the benchmark's eBPF object.
pub mod global {
    /// `u32`: the offset of `sk_protocol` (u16) in `struct sock`, from the kernel's BTF: the
    /// witness's tracepoint program counts TCP sockets only, as tcpstated's do.
    pub const SK_PROTOCOL_OFFSET: &str = "SK_PROTOCOL_OFFSET";
}
