use which::which;

/// Rebuilds the programs when `bpf-linker` changes, as tcpstate-ebpf's build script does (see
/// there why aya-build cannot declare it).
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (or `cargo install bpf-linker`)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
