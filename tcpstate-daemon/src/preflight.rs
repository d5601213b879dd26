//! Checks made before touching the kernel, so that a missing privilege is reported as such (with
//! what to do) rather than as an opaque EPERM from deep inside the loader.

use std::process::ExitCode;

use crate::capabilities::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CapabilitySet};

/// The capabilities missing to load and attach tracing programs, by name; empty when allowed.
/// CAP_BPF + CAP_PERFMON suffice since Linux 5.8; CAP_SYS_ADMIN alone also does.
pub fn missing_capabilities(effective: CapabilitySet) -> Vec<&'static str> {
    if effective.contains(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(capability, _)| !effective.contains(*capability))
        .map(|(_, name)| name)
        .collect()
}

/// The process lacks what loading eBPF programs takes.
#[derive(Debug, thiserror::Error)]
#[error(
    "missing capability {}: tcpstated loads eBPF programs, which needs root or CAP_BPF and \
     CAP_PERFMON (or CAP_SYS_ADMIN). Run it as root (sudo), or grant the capabilities \
     (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON; Kubernetes: \
     securityContext.capabilities.add: [BPF, PERFMON])",
    .0.join(" and ")
)]
pub struct MissingCapabilities(pub Vec<&'static str>);

pub fn check_privileges() -> Result<(), MissingCapabilities> {
    let missing = missing_capabilities(CapabilitySet::held_by_this_thread());
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingCapabilities(missing))
}

/// The `main` of a helper binary that loads an eBPF object (the benchmark's tcpstate-hook-floor
/// and tcpstate-witness): checks privileges, runs `run`, and reports its error as
/// `<name>: error: ...` with exit status 1. (No RLIMIT_MEMLOCK to raise: Linux 5.11+, which
/// tcpstate requires, charges BPF memory to the memory cgroup.)
pub fn run_bpf_helper(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    let outcome = check_privileges()
        .map_err(anyhow::Error::from)
        .and_then(|()| run());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_what_is_missing() {
        let missing = |held: &[u32]| missing_capabilities(CapabilitySet::of(held));
        assert_eq!(missing(&[]), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing(&[CAP_BPF]), ["CAP_PERFMON"]);
        assert!(missing(&[CAP_BPF, CAP_PERFMON]).is_empty());
        assert!(missing(&[CAP_SYS_ADMIN]).is_empty());
    }
}
