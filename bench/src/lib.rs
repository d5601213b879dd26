//! What the benchmark's tools share (`tcpstate-hook-floor`, `tcpstate-witness`): its own eBPF
//! object, apart from tcpstated's. The benchmark itself is the `tcpstate-bench` binary
//! (`main.rs`).
#![forbid(unsafe_code)]

/// The object `build.rs` compiled from bench/ebpf (the floor and the witness), embedded like
/// tcpstated's.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate-bench-ebpf"));
