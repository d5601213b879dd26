//! `tcpstate-hook-floor`: attaches the empty program `empty_hook_floor` alone to the
//! `inet_sock_set_state` BTF tracepoint and holds it until SIGINT or SIGTERM.
//!
//! The benchmark (`cargo xtask bench`) runs it as its floor: what any program on this hook costs
//! before doing anything, measured with the same embedded object, hook and attach type as
//! tcpstated. It prints `program_id=<id>` on stdout once attached, so the benchmark can read the
//! program's `run_time_ns` and `run_cnt` (bpf_stats).
#![forbid(unsafe_code)]

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context as _, anyhow};
use aya::{Btf, EbpfLoader, programs::BtfTracePoint};
use tcpstate_common::program;
use tcpstate_daemon::{loader::EBPF_OBJECT, preflight, sys};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcpstate-hook-floor: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    preflight::check_privileges()?;
    // Kernels since 5.11 charge BPF memory to the memory cgroup; older ones need the rlimit.
    let _ = sys::raise_memlock_rlimit();
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
    let name = program::EMPTY_HOOK_FLOOR;
    let tracepoint: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| {
            anyhow!("program {name} is missing from the embedded eBPF object: rebuild tcpstate")
        })?
        .try_into()?;
    tracepoint
        .load(program::TRACEPOINT, &btf)
        .with_context(|| format!("cannot load program {name}"))?;
    tracepoint
        .attach()
        .with_context(|| format!("cannot attach program {name} to {}", program::TRACEPOINT))?;
    let id = tracepoint.info()?.id();

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "program_id={id}")?;
    stdout.flush()?;
    drop(stdout);

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(sys::shutdown_signal());
    drop(ebpf); // detaches the program
    Ok(())
}
