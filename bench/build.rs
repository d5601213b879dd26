//! Builds the benchmark's eBPF object (`tcpstate-bench-ebpf`: the floor and the witness) with
//! aya-build into OUT_DIR, from where `src/lib.rs` embeds it, with the toolchain tcpstated's
//! object is built with (the daemon's `build_ebpf.rs`: one rule for both objects).

#[path = "../tcpstate-daemon/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build("tcpstate-bench-ebpf", "ebpf")
}
