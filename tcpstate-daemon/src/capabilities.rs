//! Capabilities: their names, and what each thread keeps once tcpstated serves
//! (`--capabilities.keep`). Loading and attaching the programs and the start-up baseline need
//! privilege; what comes after reads the kernel through descriptors opened then, which needs
//! none. So every thread drops everything `--capabilities.keep` does not name, but the
//! sock_diag poll thread, whose jobs read other users' `/proc/PID` (their network namespaces;
//! the processes holding a socket, for the sockets view) and enter other network namespaces.
//! docs/privileges.md says why this is safe and what each kernel check asks for.

use std::{fmt, fs, io};

use anyhow::{Context as _, bail};

use crate::sys::{self, capabilities::BoundingSet};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Every capability's name, by number (include/uapi/linux/capability.h, Linux 5.9 and later).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of capabilities (bit `n`: capability `n`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilitySet(pub u64);

impl CapabilitySet {
    pub const NONE: CapabilitySet = CapabilitySet(0);

    pub const fn of(capabilities: &[u32]) -> CapabilitySet {
        let mut bits = 0;
        let mut index = 0;
        while index < capabilities.len() {
            bits |= 1 << capabilities[index];
            index += 1;
        }
        CapabilitySet(bits)
    }

    pub fn contains(self, capability: u32) -> bool {
        self.0 & (1 << capability) != 0
    }

    pub fn union(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 | other.0)
    }

    pub fn within(self, other: CapabilitySet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The calling thread's effective set (none if the kernel cannot tell).
    pub fn held_by_this_thread() -> CapabilitySet {
        sys::capabilities::this_thread()
            .map_or(CapabilitySet::NONE, |held| CapabilitySet(held.effective))
    }
}

impl fmt::Display for CapabilitySet {
    /// `CAP_SYS_PTRACE, CAP_SYS_ADMIN`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = (0..64)
            .filter(|capability| self.contains(*capability))
            .map(|capability| match NAMES.get(capability as usize) {
                Some(name) => (*name).to_owned(),
                None => format!("capability {capability}"),
            })
            .collect();
        if names.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&names.join(", "))
    }
}

/// `--capabilities.keep`: what every thread keeps once tcpstated serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Every capability it started with, on every thread (nothing is dropped).
    All,
    /// These, where it holds them; `CapabilitySet::NONE` for `none`.
    Only(CapabilitySet),
}

/// Parses `--capabilities.keep`: `none`, `all`, or a comma list of names, written as
/// ebpf_exporter (`cap_bpf`), systemd (`CAP_BPF`) or Kubernetes (`BPF`) write them.
pub fn parse_keep(text: &str) -> Result<Keep, String> {
    match text.trim() {
        "all" => return Ok(Keep::All),
        "none" => return Ok(Keep::Only(CapabilitySet::NONE)),
        _ => {}
    }
    let mut set = CapabilitySet::NONE;
    for name in text.split(',').map(str::trim) {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        match NAMES.iter().position(|known| *known == full) {
            Some(capability) => set = set.union(CapabilitySet::of(&[capability as u32])),
            None => {
                return Err(format!(
                    "`{name}` is not a capability: give `none`, `all`, or capability names \
                     separated by commas (e.g. `cap_net_raw,cap_syslog`)"
                ));
            }
        }
    }
    Ok(Keep::Only(set))
}

/// What reading other users' `/proc/PID` takes: their `ns/net` and `fd/N` links
/// (CAP_SYS_PTRACE) and their `fd` directories (CAP_DAC_READ_SEARCH), to find network
/// namespaces and, for the sockets view, the processes holding a socket.
pub const OTHER_USERS_PROCESSES: CapabilitySet =
    CapabilitySet::of(&[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]);

/// What entering other network namespaces takes (setns).
pub const ENTERING_NAMESPACES: CapabilitySet = CapabilitySet::of(&[CAP_SYS_ADMIN]);

/// What the threads keep once tcpstated serves (each at most what it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfterStart {
    /// Every thread but the poll thread: the HTTP server, the scrapes.
    pub every_thread: CapabilitySet,
    /// The sock_diag poll thread.
    pub poll_thread: CapabilitySet,
}

impl AfterStart {
    /// What the threads keep with `--capabilities.keep` naming `kept`. The poll thread also
    /// keeps what reading other users' processes takes, and what entering other namespaces
    /// takes if `polls_enter_namespaces`; every thread keeps CAP_BPF if
    /// `bpf_needs_capability` (see [`bpf_needs_capability`]).
    pub fn plan(
        kept: CapabilitySet,
        polls_enter_namespaces: bool,
        bpf_needs_capability: bool,
    ) -> AfterStart {
        let mut every_thread = kept;
        if bpf_needs_capability {
            every_thread = every_thread.union(CapabilitySet::of(&[CAP_BPF]));
        }
        let mut poll_thread = every_thread.union(OTHER_USERS_PROCESSES);
        if polls_enter_namespaces {
            poll_thread = poll_thread.union(ENTERING_NAMESPACES);
        }
        AfterStart {
            every_thread,
            poll_thread,
        }
    }

    /// Lowers the calling thread, the poll thread, to what it keeps.
    pub fn confine_poll_thread(&self) -> io::Result<()> {
        confine_this_thread(self.poll_thread)
    }

    /// Lowers the calling thread, and so every thread it creates from now on, to what every
    /// thread keeps, then checks that no thread of the process (the poll thread,
    /// `poll_thread_id`, aside) holds more.
    pub fn enforce(&self, poll_thread_id: u32) -> anyhow::Result<()> {
        confine_this_thread(self.every_thread).context("cannot drop capabilities")?;
        let poll_thread = self.check_threads(poll_thread_id)?;
        log::info!(
            "capabilities dropped: the threads hold {}, the sock_diag poll thread {poll_thread}",
            CapabilitySet::held_by_this_thread(),
        );
        Ok(())
    }

    /// Checks, from /proc, that every thread of the process holds no more than planned;
    /// returns what the poll thread holds.
    fn check_threads(&self, poll_thread_id: u32) -> anyhow::Result<CapabilitySet> {
        let mut poll_thread = CapabilitySet::NONE;
        for task in fs::read_dir("/proc/self/task")?.flatten() {
            let Ok(status) = fs::read_to_string(task.path().join("status")) else {
                continue; // it ended meanwhile
            };
            let name = status_field(&status, "Name").unwrap_or_default();
            let held = ["CapPrm", "CapEff"]
                .iter()
                .filter_map(|field| status_field(&status, field))
                .filter_map(|mask| u64::from_str_radix(mask, 16).ok())
                .fold(CapabilitySet::NONE, |held, mask| {
                    held.union(CapabilitySet(mask))
                });
            let id = task.file_name().to_string_lossy().parse::<u32>().ok();
            let planned = if id == Some(poll_thread_id) {
                poll_thread = held;
                self.poll_thread
            } else {
                self.every_thread
            };
            if !held.within(planned) {
                bail!(
                    "thread {name} still holds {held} after dropping capabilities (it should \
                     hold at most {planned}): tcpstated does not serve with more privilege than \
                     it needs; report this as a bug"
                );
            }
        }
        Ok(poll_thread)
    }
}

/// Leaves the calling thread (and the threads it creates from now on) holding at most `set`.
fn confine_this_thread(set: CapabilitySet) -> io::Result<()> {
    let bounding = sys::capabilities::restrict_this_thread(set.0)?;
    if bounding == BoundingSet::Kept {
        log::debug!(
            "the bounding set stays (lowering it needs CAP_SETPCAP): with no new privileges set, \
             nothing can regain a capability from it"
        );
    }
    Ok(())
}

/// A `Name:\tvalue` line's value in /proc's `status`.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then_some(value.trim())
    })
}

/// Whether `read` (bpf() calls on descriptors opened already) fails on a thread that holds no
/// capability, where it succeeds with them: Linux before 5.19 refuses every bpf() command to
/// such a thread while `kernel.unprivileged_bpf_disabled` is set. Said in the log when so.
pub fn bpf_needs_capability(read: impl Fn() -> bool + Sync) -> bool {
    if !read() {
        return false; // it fails anyway: capabilities are not the cause
    }
    let without = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("privilege probe".into())
            .spawn_scoped(scope, || {
                confine_this_thread(CapabilitySet::NONE).is_ok() && read()
            })
            .map(|probe| probe.join().unwrap_or(false))
    });
    match without {
        Ok(true) => false,
        Ok(false) => {
            log::warn!(
                "this kernel refuses bpf() to threads without CAP_BPF, even on the maps \
                 tcpstated holds open (Linux before 5.19 with kernel.unprivileged_bpf_disabled \
                 set): every thread keeps CAP_BPF"
            );
            true
        }
        Err(error) => {
            log::warn!(
                "cannot try reading the maps without capabilities ({error}): every thread keeps \
                 CAP_BPF"
            );
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_takes_the_names_of_ebpf_exporter_systemd_and_kubernetes() {
        let bpf_and_raw = CapabilitySet::of(&[CAP_BPF, 13]);
        for text in ["cap_bpf,cap_net_raw", "CAP_BPF, CAP_NET_RAW", "bpf,NET_RAW"] {
            assert_eq!(parse_keep(text), Ok(Keep::Only(bpf_and_raw)), "{text}");
        }
        assert_eq!(parse_keep("none"), Ok(Keep::Only(CapabilitySet::NONE)));
        assert_eq!(parse_keep("all"), Ok(Keep::All));
        for bad in ["", "cap_bpf,", "cap_everything", "all,cap_bpf"] {
            let error = parse_keep(bad).unwrap_err();
            assert!(error.contains("is not a capability"), "{bad}: {error}");
        }
    }

    #[test]
    fn names_are_the_kernels() {
        assert_eq!(
            CapabilitySet::of(&[CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF]).to_string(),
            "CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF"
        );
        assert_eq!(CapabilitySet::NONE.to_string(), "none");
        assert_eq!(CapabilitySet(1 << 41).to_string(), "capability 41");
    }

    #[test]
    fn the_poll_thread_alone_keeps_what_entering_namespaces_needs() {
        let raw = CapabilitySet::of(&[13]);
        assert_eq!(
            AfterStart::plan(CapabilitySet::NONE, true, false),
            AfterStart {
                every_thread: CapabilitySet::NONE,
                poll_thread: CapabilitySet::of(&[
                    CAP_SYS_ADMIN,
                    CAP_SYS_PTRACE,
                    CAP_DAC_READ_SEARCH
                ]),
            }
        );
        let with_bpf = raw.union(CapabilitySet::of(&[CAP_BPF]));
        assert_eq!(
            AfterStart::plan(raw, false, true),
            AfterStart {
                every_thread: with_bpf,
                poll_thread: with_bpf.union(OTHER_USERS_PROCESSES),
            }
        );
    }

    #[test]
    fn reads_fields_of_proc_status() {
        let status = "Name:\tsock_diag poll\nCapPrm:\t0000000000280000\n";
        assert_eq!(status_field(status, "Name"), Some("sock_diag poll"));
        assert_eq!(status_field(status, "CapPrm"), Some("0000000000280000"));
        assert_eq!(status_field(status, "CapEff"), None);
    }
}
