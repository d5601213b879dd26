//! Checks made before touching the kernel, so that a missing privilege is reported as such (with
//! what to do) rather than as an opaque EPERM from deep inside the loader.

use std::{fs, io, process::ExitCode};

const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set, from /proc/self/status (`CapEff`, a hex mask).
pub fn effective_capabilities() -> io::Result<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status")?)
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// Whether the process holds `capability` now (false if /proc cannot tell).
pub fn has_capability(capability: u32) -> bool {
    effective_capabilities().is_ok_and(|effective| effective & (1u64 << capability) != 0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// The capabilities missing to load and attach tracing programs, by name; empty when allowed.
/// CAP_BPF + CAP_PERFMON suffice since Linux 5.8; CAP_SYS_ADMIN alone also does.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect()
}

pub fn check_privileges() -> anyhow::Result<()> {
    let effective = match effective_capabilities() {
        Ok(effective) => effective,
        // Without /proc we cannot tell; the loader will report EPERM if it comes to that.
        Err(_) => return Ok(()),
    };
    let missing = missing_capabilities(effective);
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "missing capability {}: tcpstated loads eBPF programs, which needs root or CAP_BPF and \
         CAP_PERFMON (or CAP_SYS_ADMIN). Run it as root (sudo), or grant the capabilities \
         (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON; Kubernetes: \
         securityContext.capabilities.add: [BPF, PERFMON])",
        missing.join(" and ")
    )
}

/// The `main` of a helper binary that loads an eBPF object (the benchmark's tcpstate-hook-floor
/// and tcpstate-witness): checks privileges, runs `run`, and reports its error as
/// `<name>: error: ...` with exit status 1. (No RLIMIT_MEMLOCK to raise: Linux 5.11+, which
/// tcpstate requires, charges BPF memory to the memory cgroup.)
pub fn run_bpf_helper(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    let outcome = check_privileges().and_then(|()| run());
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
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert!(missing_capabilities(1 << CAP_BPF | 1 << CAP_PERFMON).is_empty());
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
    }

    #[test]
    fn reads_the_effective_set_from_proc_status() {
        let status = "Name:\ttcpstated\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert!(effective_capabilities().is_ok());
    }
}
