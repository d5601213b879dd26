//! `tcpstate-hook-floor`: attaches the empty program `empty_hook_floor` alone to the
//! `inet_sock_set_state` BTF tracepoint and holds it until SIGINT or SIGTERM.
//!
//! The benchmark (`cargo xtask bench`) runs it as its floor: what any program on this hook costs
//! before doing anything, measured with the same embedded object, hook and attach type as
//! tcpstated. It prints `program_id=<id>` on stdout once attached, so the benchmark can read the
//! program's `run_time_ns` and `run_cnt` (bpf_stats).
#![forbid(unsafe_code)]

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use aya::{Btf, EbpfLoader};
use tcpstate_common::program;
use tcpstate_daemon::{
    loader::{self, EBPF_OBJECT},
    preflight, sys,
};

fn main() -> ExitCode {
    preflight::run_bpf_helper("tcpstate-hook-floor", run)
}

fn run() -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context(
        "cannot read the kernel's BTF (/sys/kernel/btf/vmlinux): the hook needs a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y",
    )?;
    // The load-time globals (socket layout, buckets, ports) keep their defaults: only the
    // programs read them, and the empty program reads nothing. The object's maps are created
    // but stay unused.
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(EBPF_OBJECT)
        .context("cannot load the embedded eBPF object")?;
    let id = loader::attach_btf_tracepoint(
        &mut ebpf,
        program::EMPTY_HOOK_FLOOR,
        program::TRACEPOINT,
        &btf,
    )?
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
