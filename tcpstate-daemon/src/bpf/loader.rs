//! Loads the embedded eBPF object with this host's configuration and attaches its programs.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{Map, MapError},
    programs::{BtfTracePoint, ProgramError},
};
use tcpstate_common::{DurationBuckets, PortSet, global, map, program};

use super::{btf::KernelBtf, maps::KernelMaps};
use crate::{
    config::{Buckets, Flags},
    sys,
};

/// The object `build.rs` compiled from `tcpstate-ebpf`, embedded so one binary is all a host needs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate"));

/// Loaded and attached programs. Dropping it detaches them.
pub struct Tracer {
    pub ebpf: Ebpf,
    pub maps: KernelMaps,
}

pub struct TracerConfig<'a> {
    pub buckets: &'a Buckets,
    pub ports: &'a [u16],
    /// Entries of the socket slot table (a power of two).
    pub socket_slots: u32,
    /// Entries per CPU of the transition slot table (a power of two).
    pub transition_slots: u32,
    /// Whether the programs read each socket's owner (its cgroup) into its labels, and for how
    /// many workloads the transition map is sized then.
    pub workloads: Option<usize>,
}

impl<'a> TracerConfig<'a> {
    pub fn from_flags(flags: &'a Flags) -> Self {
        TracerConfig {
            buckets: &flags.buckets,
            ports: &flags.ports,
            socket_slots: flags.socket_slots,
            transition_slots: flags.transition_slots,
            workloads: flags.workloads.then_some(flags.max_workloads),
        }
    }

    fn transitions_capacity(&self) -> u32 {
        crate::config::transitions_capacity(self.workloads)
    }
}

impl Tracer {
    pub fn attach(config: &TracerConfig<'_>) -> anyhow::Result<Self> {
        // The kernel's BTF is large: each parse below is dropped before the next one starts,
        // and the memory is handed back at the end, so the daemon's peak stays small.
        let (layout, addresses) = {
            let kernel_btf = KernelBtf::from_sys_fs()?;
            for (_, tracepoint) in PROGRAMS {
                kernel_btf.require_tracepoint(tracepoint)?;
            }
            let layout = kernel_btf.socket_layout()?;
            let layout = match config.workloads {
                Some(_) => kernel_btf.with_owner_cgroup(layout).context(
                    "--workloads reads each socket's cgroup (struct sock_cgroup_data.cgroup, \
                     Linux 5.15 and later): this kernel has no such field, run without \
                     --workloads",
                )?,
                None => layout,
            };
            (layout, kernel_btf.address_layout()?)
        };
        let buckets = duration_buckets(config.buckets);
        let ports = port_set(config.ports);
        let slot_mask = config.socket_slots - 1;
        let transition_slot_mask = config.transition_slots - 1;

        // No CO-RE relocations to make (the offsets above replace them): no target BTF, which
        // also drops the copy `EbpfLoader::new()` parses.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global(global::SOCKET_LAYOUT, &layout, true)
            .override_global(global::ADDRESS_LAYOUT, &addresses, true)
            .override_global(global::DURATION_BUCKETS, &buckets, true)
            .override_global(global::SERVICE_PORTS, &ports, true)
            .override_global(global::SOCKET_SLOT_MASK, &slot_mask, true)
            .override_global(global::TRANSITION_SLOT_MASK, &transition_slot_mask, true)
            .map_max_entries(map::SOCKET_SLOTS, config.socket_slots)
            .map_max_entries(map::TRANSITION_SLOTS, config.transition_slots)
            .map_max_entries(map::TRANSITIONS, config.transitions_capacity())
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;

        let btf = Btf::from_sys_fs().context("cannot parse the kernel's BTF")?;
        // Primary first: on each event the kernel runs them in attach order; the nested-event
        // program only acts while the primary one is mid-run on the CPU, so order is not
        // essential, but this keeps the common case's second call a cheap no-op.
        for (name, tracepoint) in PROGRAMS {
            attach_btf_tracepoint(&mut ebpf, name, tracepoint, &btf)?;
        }

        let program_fd = |ebpf: &Ebpf, name: &str| -> anyhow::Result<_> {
            let program = ebpf
                .program(name)
                .ok_or_else(|| anyhow!("program {name} vanished"))?;
            Ok(program.fd()?.try_clone()?)
        };
        drop(btf);
        sys::release_free_memory();
        let programs = PROGRAMS
            .iter()
            .map(|(name, _)| Ok((*name, program_fd(&ebpf, name)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let maps = KernelMaps::take(&mut ebpf, programs, config.socket_slots)?;
        Ok(Tracer { ebpf, maps })
    }

    /// Whether the programs are still loaded, for `/healthz` (which must not wait for the
    /// collector's lock: it holds its own descriptors).
    pub fn health_check(&self) -> anyhow::Result<impl Fn() -> bool + Send + Sync + 'static> {
        let program_fds = self
            .maps
            .programs
            .iter()
            .map(|(_, fd)| fd.try_clone())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(move || {
            program_fds
                .iter()
                .all(|fd| sys::program_stats(&fd.as_fd().as_raw_fd()).is_ok())
        })
    }

    /// The socket-storage map, for sock_diag to tell tracked sockets from untracked ones.
    pub fn socket_records_fd(&self) -> Option<RawFd> {
        match self.ebpf.map(map::SOCKET_RECORDS)? {
            Map::SkStorage(data) => Some(data.fd().as_fd().as_raw_fd()),
            _ => None,
        }
    }
}

/// The programs, each with the tracepoint it attaches to, in attach order.
pub const PROGRAMS: [(&str, &str); 5] = [
    (program::RECORD_STATE_CHANGE, program::TRACEPOINT),
    (program::RECORD_NESTED_STATE_CHANGE, program::TRACEPOINT),
    (program::RECORD_RESET_SENT, "tcp_send_reset"),
    (program::RECORD_RESET_RECEIVED, "tcp_receive_reset"),
    (program::RECORD_SYNACK_RETRANSMIT, "tcp_retransmit_synack"),
];

/// Loads the object's program `name` and attaches it to the BTF tracepoint `tracepoint`; errors
/// say what to do (privileges, the verifier's log, a stale build).
pub fn attach_btf_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
    tracepoint: &str,
    btf: &Btf,
) -> anyhow::Result<&'a mut BtfTracePoint> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| missing_program(name))?
        .try_into()?;
    program
        .load(tracepoint, btf)
        .map_err(|err| explain_program_error(name, err))?;
    program
        .attach()
        .map_err(|err| explain_program_error(name, err))?;
    Ok(program)
}

/// The object embedded in this build lacks program `name`.
pub fn missing_program(name: &str) -> anyhow::Error {
    anyhow!("program {name} is missing from the embedded eBPF object: rebuild tcpstate")
}

pub fn duration_buckets(buckets: &Buckets) -> DurationBuckets {
    let mut kernel = DurationBuckets::EMPTY;
    for (slot, bound) in kernel.bounds_ns.iter_mut().zip(buckets.nanoseconds()) {
        *slot = bound;
    }
    kernel
}

pub fn port_set(ports: &[u16]) -> PortSet {
    let mut set = PortSet::EMPTY;
    ports.iter().for_each(|port| set.insert(*port));
    set
}

const PRIVILEGE_HINT: &str = "loading eBPF programs needs root, or the capabilities CAP_BPF and \
     CAP_PERFMON (CAP_SYS_ADMIN on kernels older than 5.8): run as root, or grant them (systemd: \
     AmbientCapabilities=CAP_BPF CAP_PERFMON; Kubernetes: securityContext.capabilities.add)";

fn is_permission_error(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn explain_load_error(error: EbpfError) -> anyhow::Error {
    let denied = match &error {
        EbpfError::MapError(MapError::CreateError { io_error, .. }) => {
            is_permission_error(io_error)
        }
        EbpfError::BtfError(_) => false,
        _ => false,
    };
    if denied {
        anyhow::Error::new(error).context(PRIVILEGE_HINT)
    } else {
        anyhow::Error::new(error).context("cannot load the eBPF object")
    }
}

fn explain_program_error(name: &str, error: ProgramError) -> anyhow::Error {
    let denied = match &error {
        ProgramError::LoadError { io_error, .. } => is_permission_error(io_error),
        ProgramError::SyscallError(syscall) => is_permission_error(&syscall.io_error),
        _ => false,
    };
    if denied {
        return anyhow::Error::new(error).context(PRIVILEGE_HINT);
    }
    // A verifier rejection carries the verifier's log: show it whole, it says what failed.
    if let ProgramError::LoadError { verifier_log, .. } = &error {
        return anyhow!("the kernel's verifier rejected program {name}:\n{verifier_log}");
    }
    anyhow::Error::new(error).context(format!("cannot load or attach program {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_buckets_hold_the_configured_bounds_then_unused_slots() {
        let buckets = Buckets::new(vec![0.001, 1.0]).unwrap();
        let kernel = duration_buckets(&buckets);
        assert_eq!(
            &kernel.bounds_ns[..3],
            &[1_000_000, 1_000_000_000, DurationBuckets::UNUSED]
        );
        assert_eq!(
            kernel.bucket_index(2_000_000_000),
            2,
            "above the last bound: ignored slot"
        );
    }

    #[test]
    fn port_set_holds_exactly_the_configured_ports() {
        let set = port_set(&[22, 65535]);
        assert!(set.contains(22) && set.contains(65535));
        assert!(!set.contains(23) && !set.contains(0));
    }
}
