//! `tcpstate-witness`: counts every TCP state change by transition through two kernel paths at
//! once, the `inet_sock_set_state` tracepoint (tcpstated's hook) and sock_ops' state callback,
//! until SIGINT or SIGTERM, then prints both counts of each transition. Where they differ, the
//! tracepoint did not deliver the difference to BPF (see `tcpstate_bench_common::witness`).
//!
//! The benchmark runs it (`cargo xtask bench witness`). Once attached it prints
//! `attached tracepoint=<program id> sock_ops=<program id>`; at the end, one line per transition
//! seen: `transition=<old>-><new> tracepoint=<count> sock_ops=<count>`, with the kernel's
//! names of the states. Only sockets born after the attach ask for sock_ops' state callbacks.
//! The programs are in the benchmark's object (bench/ebpf).
#![forbid(unsafe_code)]

use std::{fs, io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, EbpfLoader,
    maps::PerCpuArray,
    programs::{CgroupAttachMode, SockOps},
};
use tcpstate_bench::EBPF_OBJECT;
use tcpstate_bench_common::{global, map, program, witness};
use tcpstate_common::TcpState;
use tcpstate_daemon::{
    bpf::{btf::KernelBtf, loader},
    preflight, sys,
};

fn main() -> ExitCode {
    preflight::run_bpf_helper("tcpstate-witness", run)
}

fn run() -> anyhow::Result<()> {
    let cgroup_root = cgroup2_root()?;
    // The tracepoint's program filters TCP with `sk_protocol`, whose offset comes from BTF
    // (read as tcpstated reads it).
    let protocol_offset = KernelBtf::from_sys_fs()?.socket_layout()?.protocol;
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global(global::SK_PROTOCOL_OFFSET, &protocol_offset, true)
        .load(EBPF_OBJECT)
        .context("cannot load the benchmark's embedded eBPF object")?;

    let btf = Btf::from_sys_fs().context("cannot parse the kernel's BTF")?;
    let tracepoint_id = loader::attach_btf_tracepoint(
        &mut ebpf,
        program::WITNESS_TRACEPOINT,
        tcpstate_common::program::TRACEPOINT,
        &btf,
    )?
    .info()?
    .id();

    let name = program::WITNESS_SOCK_OPS;
    let sock_ops: &mut SockOps = ebpf
        .program_mut(name)
        .ok_or_else(|| loader::missing_program(name))?
        .try_into()?;
    sock_ops
        .load()
        .with_context(|| format!("cannot load program {name}"))?;
    let cgroup = fs::File::open(&cgroup_root)
        .with_context(|| format!("cannot open the cgroup {}", cgroup_root.display()))?;
    // Attached through a link, which runs beside any other sock_ops program of the cgroup.
    sock_ops
        .attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| {
            format!(
                "cannot attach program {name} to the cgroup {}",
                cgroup_root.display()
            )
        })?;
    let sock_ops_id = sock_ops.info()?.id();

    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "attached tracepoint={tracepoint_id} sock_ops={sock_ops_id}"
    )?;
    stdout.flush()?;

    sys::wait_for_shutdown_signal()?;

    let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(
        ebpf.map(map::WITNESS)
            .ok_or_else(|| anyhow!("map {} is missing: rebuild the benchmark", map::WITNESS))?,
    )?;
    let total = |slot: u32| -> anyhow::Result<u64> { Ok(counts.get(&slot, 0)?.iter().sum()) };
    for slot in 0..witness::SLOTS / 2 {
        let (_, old, new) = witness::of_slot(slot);
        let by_tracepoint = total(witness::slot(witness::TRACEPOINT, old, new))?;
        let by_sock_ops = total(witness::slot(witness::SOCK_OPS, old, new))?;
        if by_tracepoint != 0 || by_sock_ops != 0 {
            writeln!(
                stdout,
                "transition={}->{} tracepoint={by_tracepoint} sock_ops={by_sock_ops}",
                state_name(old),
                state_name(new)
            )?;
        }
    }
    stdout.flush()?;
    Ok(())
}

/// The kernel's name of a state, or its number if this build does not know it.
fn state_name(state: u32) -> String {
    u8::try_from(state)
        .ok()
        .and_then(|state| TcpState::try_from(state).ok())
        .map_or_else(|| state.to_string(), |state| state.name().to_owned())
}

/// Where the cgroup v2 hierarchy is mounted: a sock_ops program attached to its root sees
/// every socket of the host.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .context(
            "no cgroup v2 hierarchy is mounted (sock_ops programs attach to one): mount it with \
             `mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`",
        )
}
