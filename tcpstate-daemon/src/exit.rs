//! tcpstated's exit statuses (README, "Exit status"). Each failure a restart cannot cure has one
//! of its own, so that a unit can leave them alone (`RestartPreventExitStatus=`); systemd names
//! 4 and 5 after LSB's codes (`status=4/NOPERMISSION`, `status=5/NOTINSTALLED`).

use std::process::ExitCode;

use crate::{
    bpf::{btf::BtfError, loader::LoadError, pinning::PinError},
    preflight::MissingCapabilities,
};

/// Why tcpstated stopped, as its exit status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Anything else: an address in use, a file it cannot read, ...
    Runtime = 1,
    /// A flag or the web config file cannot be used (clap's status too).
    Usage = 2,
    /// Another tcpstated holds the pinned state at `--bpf.pin-path` (it may let go: a restart
    /// can cure this one).
    PinPathInUse = 3,
    /// It lacks the privilege to load and attach its programs (LSB's "insufficient
    /// privilege").
    NoPermission = 4,
    /// This kernel cannot run tcpstated: no BTF, a tracepoint, field or program type missing,
    /// or its programs refused (LSB's "not installed": what tcpstated needs is not there).
    KernelUnsupported = 5,
}

impl Failure {
    /// The failure `error` is, from the causes it carries.
    pub fn of(error: &anyhow::Error) -> Failure {
        for cause in error.chain() {
            if cause.is::<BtfError>() {
                return Failure::KernelUnsupported;
            }
            if cause.is::<MissingCapabilities>() {
                return Failure::NoPermission;
            }
            if let Some(PinError::InUse { .. }) = cause.downcast_ref::<PinError>() {
                return Failure::PinPathInUse;
            }
            match cause.downcast_ref::<LoadError>() {
                Some(LoadError::Denied(_)) => return Failure::NoPermission,
                Some(LoadError::Rejected { .. } | LoadError::Unsupported { .. }) => {
                    return Failure::KernelUnsupported;
                }
                None => {}
            }
        }
        Failure::Runtime
    }

    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn the_cause_decides_the_status_whatever_context_wraps_it() {
        let missing_btf = anyhow::Error::new(BtfError::Malformed("bad magic"))
            .context("--workloads needs the kernel's BTF");
        assert_eq!(Failure::of(&missing_btf), Failure::KernelUnsupported);
        let rejected = anyhow::Error::new(LoadError::Rejected {
            name: "record_state_change".into(),
            log: "R1 invalid mem access".into(),
        });
        assert_eq!(Failure::of(&rejected), Failure::KernelUnsupported);
        let denied = Err::<(), _>(MissingCapabilities(vec!["CAP_BPF"])).context("starting");
        assert_eq!(Failure::of(&denied.unwrap_err()), Failure::NoPermission);
        let pinned = anyhow::Error::new(PinError::InUse {
            path: "/sys/fs/bpf/tcpstate".into(),
        });
        assert_eq!(Failure::of(&pinned), Failure::PinPathInUse);
        let in_use = anyhow::anyhow!("address already in use");
        assert_eq!(Failure::of(&in_use), Failure::Runtime);
        assert_eq!(
            [Failure::Usage, Failure::KernelUnsupported].map(|failure| failure as u8),
            [2, 5]
        );
    }
}
