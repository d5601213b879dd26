//! `tcpstate-hook-floor`: attaches the empty program `empty_hook_floor` alone to the
//! `inet_sock_set_state` BTF tracepoint and holds it until SIGINT or SIGTERM.
//!
//! The benchmark (`cargo xtask bench`) runs it as its floor: what any program on this hook costs
//! before doing anything, measured with the same hook and attach type as tcpstated, attached by
//! tcpstated's own code. The program is in the benchmark's object (bench/ebpf). It prints
//! `program_id=<id>` on stdout once attached, so the benchmark can read the program's
//! `run_time_ns` and `run_cnt` (bpf_stats).
#![forbid(unsafe_code)]

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use aya::{Btf, EbpfLoader};
use tcpstate_bench::EBPF_OBJECT;
use tcpstate_bench_common::program::EMPTY_HOOK_FLOOR;
use tcpstate_common::program::TRACEPOINT;
use tcpstate_daemon::{bpf::loader, preflight, sys};

fn main() -> ExitCode {
    preflight::run_bpf_helper("tcpstate-hook-floor", run)
}

fn run() -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context(
        "cannot read the kernel's BTF (/sys/kernel/btf/vmlinux): the hook needs a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y",
    )?;
    // The witness's global keeps its default and its map is created but stays unused: the
    // empty program reads nothing.
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(EBPF_OBJECT)
        .context("cannot load the benchmark's embedded eBPF object")?;
    let id = loader::attach_btf_tracepoint(&mut ebpf, EMPTY_HOOK_FLOOR, TRACEPOINT, &btf)?
        .info()?
        .id();

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "program_id={id}")?;
    stdout.flush()?;
    drop(stdout);

    sys::wait_for_shutdown_signal()?;
    drop(ebpf); // detaches the program
    Ok(())
}
