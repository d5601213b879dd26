//! Builds the eBPF object (`tcpstate-ebpf`, target bpfel-unknown-none) with aya-build, into
//! OUT_DIR, from where `src/bpf/loader.rs` embeds it: the daemon binary is all a host needs, and it
//! can never ship a stale object. The toolchain's choice is in `build_ebpf.rs`.

mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build("tcpstate-ebpf", "../tcpstate-ebpf")
}
