//! What the benchmark reads from /proc: a process's BPF programs and maps (their fdinfo carries
//! the kernel's bpf_stats and memory figures, so no bpftool is needed), its CPU time and peak RSS,
//! and which other processes have programs on the hook.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::Context as _;
use nix::{
    sys::time::{TimeSpec, TimeValLike as _},
    time::clock_getcpuclockid,
    unistd::Pid,
};

/// `key:\tvalue` lines of a /proc fdinfo file.
pub fn parse_fdinfo(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// The counters of one loaded BPF program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgramStats {
    pub id: u32,
    /// Time spent in the program, counted only while `kernel.bpf_stats_enabled` = 1.
    pub run_time_ns: u64,
    /// Runs, counted only while `kernel.bpf_stats_enabled` = 1.
    pub run_count: u64,
    /// Events skipped because the program was already running on that CPU (always counted).
    pub recursion_misses: u64,
    pub verified_instructions: u64,
}

impl ProgramStats {
    fn from_fdinfo(fields: &BTreeMap<String, String>) -> Option<ProgramStats> {
        let number = |key: &str| fields.get(key).and_then(|value| value.parse().ok());
        Some(ProgramStats {
            id: number("prog_id")? as u32,
            run_time_ns: number("run_time_ns").unwrap_or(0),
            run_count: number("run_cnt").unwrap_or(0),
            recursion_misses: number("recursion_misses").unwrap_or(0),
            verified_instructions: number("verified_insns").unwrap_or(0),
        })
    }

    /// What happened between `earlier` and `self` (same program).
    pub fn since(&self, earlier: &ProgramStats) -> ProgramStats {
        ProgramStats {
            id: self.id,
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(earlier.recursion_misses),
            verified_instructions: self.verified_instructions,
        }
    }
}

/// One loaded BPF map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapStats {
    pub id: u32,
    pub map_type: u32,
    /// The kernel's memory figure for the map (`memlock`). For socket-local storage it covers
    /// the map itself, not the per-socket records, which are charged to each socket.
    pub memlock: u64,
}

impl MapStats {
    fn from_fdinfo(fields: &BTreeMap<String, String>) -> Option<MapStats> {
        let number = |key: &str| fields.get(key).and_then(|value| value.parse().ok());
        Some(MapStats {
            id: number("map_id")? as u32,
            map_type: number("map_type").unwrap_or(0) as u32,
            memlock: number("memlock").unwrap_or(0),
        })
    }
}

/// The fdinfo of each of `pid`'s file descriptors whose link target is `kind`
/// (`anon_inode:bpf-prog`, `anon_inode:bpf-map`, `anon_inode:bpf_link`).
fn fdinfo_of_kind(pid: u32, kind: &str) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let directory = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&directory)
        .with_context(|| format!("cannot list {directory}: is process {pid} gone?"))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() != kind {
            continue;
        }
        let fdinfo = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(entry.file_name());
        if let Ok(text) = fs::read_to_string(fdinfo) {
            found.push(parse_fdinfo(&text));
        }
    }
    Ok(found)
}

/// Every BPF program `pid` holds, once each.
pub fn programs_of(pid: u32) -> anyhow::Result<BTreeMap<u32, ProgramStats>> {
    Ok(fdinfo_of_kind(pid, "anon_inode:bpf-prog")?
        .iter()
        .filter_map(ProgramStats::from_fdinfo)
        .map(|stats| (stats.id, stats))
        .collect())
}

/// The programs of `pid` among `ids`; all of them when `ids` is empty (programs attached
/// through perf events, which [`programs_on`] cannot see).
pub fn programs_among(
    pid: u32,
    ids: &BTreeSet<u32>,
) -> anyhow::Result<BTreeMap<u32, ProgramStats>> {
    let mut programs = programs_of(pid)?;
    if !ids.is_empty() {
        programs.retain(|id, _| ids.contains(id));
    }
    Ok(programs)
}

/// Every BPF map `pid` holds, once each.
pub fn maps_of(pid: u32) -> anyhow::Result<BTreeMap<u32, MapStats>> {
    Ok(fdinfo_of_kind(pid, "anon_inode:bpf-map")?
        .iter()
        .filter_map(MapStats::from_fdinfo)
        .map(|stats| (stats.id, stats))
        .collect())
}

/// Ids of the programs `pid` has attached to `tracepoint` through BPF links (BTF and raw
/// tracepoints show `tp_name` in the link's fdinfo). Empty for programs attached another way
/// (bpftrace attaches classic tracepoints through perf events).
pub fn programs_on(pid: u32, tracepoint: &str) -> anyhow::Result<BTreeSet<u32>> {
    Ok(fdinfo_of_kind(pid, "anon_inode:bpf_link")?
        .iter()
        .filter(|link| link.get("tp_name").map(String::as_str) == Some(tracepoint))
        .filter_map(|link| link.get("prog_id")?.parse().ok())
        .collect())
}

/// The programs' work between two snapshots of one process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KernelWork {
    /// Sum of the run time of all the process's programs.
    pub run_time_ns: u64,
    /// Events that reached the hook: the largest runs + recursion misses of any one program
    /// (every program on the hook sees every event, run or skipped).
    pub events: u64,
    /// The largest run count of any one program: 0 while bpf_stats are off.
    pub runs: u64,
    pub recursion_misses: u64,
}

impl KernelWork {
    pub fn between(
        before: &BTreeMap<u32, ProgramStats>,
        after: &BTreeMap<u32, ProgramStats>,
    ) -> KernelWork {
        let mut work = KernelWork::default();
        for (id, now) in after {
            let delta = match before.get(id) {
                Some(then) => now.since(then),
                None => *now,
            };
            work.run_time_ns += delta.run_time_ns;
            work.recursion_misses += delta.recursion_misses;
            work.events = work.events.max(delta.run_count + delta.recursion_misses);
            work.runs = work.runs.max(delta.run_count);
        }
        work
    }

    /// `None` when nothing ran with bpf_stats on.
    pub fn nanoseconds_per_event(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.events as f64)
    }
}

/// CPU time of `pid`, in nanoseconds: the process's CPU-time clock (`clock_getcpuclockid`), which
/// is exact to the nanosecond and, unlike a sum over /proc/<pid>/task, keeps the time of threads
/// that have exited (tcpstated runs each slow sock_diag poll on a thread of its own).
pub fn cpu_time_ns(pid: u32) -> anyhow::Result<u64> {
    let raw = i32::try_from(pid).context("process id out of range")?;
    let clock = clock_getcpuclockid(Pid::from_raw(raw))
        .with_context(|| format!("cannot get the CPU-time clock of process {pid}"))?;
    let time = clock
        .now()
        .with_context(|| format!("cannot read the CPU-time clock of process {pid}"))?;
    Ok(nanoseconds(time))
}

/// A CPU-time clock's reading in nanoseconds (never negative).
fn nanoseconds(time: TimeSpec) -> u64 {
    u64::try_from(time.num_nanoseconds()).unwrap_or(0)
}

/// A `Name:   123 kB` line of /proc/<pid>/status or /proc/meminfo, in bytes.
pub fn parse_kilobytes(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kilobytes| kilobytes * 1024)
}

/// Peak resident memory of `pid` (VmHWM), in bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_kilobytes(&status, "VmHWM").context("no VmHWM in /proc/<pid>/status")
}

pub fn mem_available_bytes() -> anyhow::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    parse_kilobytes(&meminfo, "MemAvailable").context("no MemAvailable in /proc/meminfo")
}

/// Timewait sockets of the network namespace: `tw` of the `TCP:` line of /proc/net/sockstat.
pub fn parse_timewait_sockets(sockstat: &str) -> Option<u64> {
    let fields: Vec<&str> = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))?
        .split_whitespace()
        .collect();
    fields
        .windows(2)
        .find(|pair| pair[0] == "tw")
        .and_then(|pair| pair[1].parse().ok())
}

pub fn timewait_sockets() -> Option<u64> {
    parse_timewait_sockets(&fs::read_to_string("/proc/net/sockstat").ok()?)
}

/// Other processes with a BPF link on `tracepoint` (BTF tracepoints and raw tracepoints show
/// `tp_name` in the link's fdinfo), as `comm (pid)`. They run on every event of every
/// configuration, so they add the same cost to all of them and shrink every ratio.
pub fn other_programs_on(tracepoint: &str, ours: &[u32]) -> Vec<String> {
    let Ok(processes) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if ours.contains(&pid) || pid == std::process::id() {
            continue;
        }
        let Ok(links) = fdinfo_of_kind(pid, "anon_inode:bpf_link") else {
            continue;
        };
        if links
            .iter()
            .any(|link| link.get("tp_name").map(String::as_str) == Some(tracepoint))
        {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(format!("{} ({pid})", comm.trim()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\n\
        prog_type:\t26\nprog_jited:\t1\nprog_tag:\t67fe6b02a92feba7\nmemlock:\t8192\n\
        prog_id:\t335\nrun_time_ns:\t4200\nrun_cnt:\t100\nrecursion_misses:\t2\n\
        verified_insns:\t2819\n";

    #[test]
    fn program_fdinfo_gives_the_bpf_stats() {
        let stats = ProgramStats::from_fdinfo(&parse_fdinfo(PROGRAM_FDINFO)).unwrap();
        assert_eq!(
            stats,
            ProgramStats {
                id: 335,
                run_time_ns: 4200,
                run_count: 100,
                recursion_misses: 2,
                verified_instructions: 2819,
            }
        );
    }

    #[test]
    fn a_map_fdinfo_is_not_a_program() {
        let map = "map_type:\t5\nkey_size:\t16\nmemlock:\t284800\nmap_id:\t341\n";
        assert_eq!(ProgramStats::from_fdinfo(&parse_fdinfo(map)), None);
        assert_eq!(
            MapStats::from_fdinfo(&parse_fdinfo(map)),
            Some(MapStats {
                id: 341,
                map_type: 5,
                memlock: 284800
            })
        );
    }

    fn stats(
        id: u32,
        run_time_ns: u64,
        run_count: u64,
        recursion_misses: u64,
    ) -> (u32, ProgramStats) {
        let stats = ProgramStats {
            id,
            run_time_ns,
            run_count,
            recursion_misses,
            verified_instructions: 0,
        };
        (id, stats)
    }

    #[test]
    fn per_event_cost_sums_the_programs_and_counts_each_event_once() {
        // Primary and nested program on the same hook: both see all 1000 events; the primary
        // skipped 2 of them (recursion), the nested one ran for all.
        let before = BTreeMap::from([stats(1, 1_000, 10, 0), stats(2, 500, 10, 0)]);
        let after = BTreeMap::from([stats(1, 81_000, 1_008, 2), stats(2, 20_500, 1_010, 0)]);
        let work = KernelWork::between(&before, &after);
        assert_eq!(work.events, 1_000);
        assert_eq!(work.runs, 1_000);
        assert_eq!(work.run_time_ns, 100_000);
        assert_eq!(work.recursion_misses, 2);
        assert_eq!(work.nanoseconds_per_event(), Some(100.0));
    }

    #[test]
    fn without_bpf_stats_there_is_no_per_event_cost() {
        assert_eq!(KernelWork::default().nanoseconds_per_event(), None);
        // Recursion misses are counted even with the stats off; runs and time are not.
        let before = BTreeMap::from([stats(1, 0, 0, 0)]);
        let after = BTreeMap::from([stats(1, 0, 0, 3)]);
        assert_eq!(
            KernelWork::between(&before, &after).nanoseconds_per_event(),
            None
        );
    }

    #[test]
    fn kilobyte_lines_read_as_bytes() {
        let status =
            "Name:\ttcpstated\nVmPeak:\t  43000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 9000 kB\n";
        assert_eq!(parse_kilobytes(status, "VmHWM"), Some(12345 * 1024));
        assert_eq!(parse_kilobytes(status, "VmSwap"), None);
    }

    #[test]
    fn timewait_sockets_come_from_the_tcp_line() {
        let sockstat = "sockets: used 292\nTCP: inuse 12 orphan 0 tw 131072 alloc 20 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_timewait_sockets(sockstat), Some(131_072));
        assert_eq!(parse_timewait_sockets("UDP: inuse 1\n"), None);
    }

    #[test]
    fn cpu_time_keeps_the_time_of_threads_that_have_exited() {
        use nix::time::ClockId;

        let thread_cpu_ns = || nanoseconds(ClockId::CLOCK_THREAD_CPUTIME_ID.now().unwrap());
        let burn_ns = 30_000_000;
        let before = cpu_time_ns(std::process::id()).unwrap();
        let tid = std::thread::spawn(move || {
            let start = thread_cpu_ns();
            while thread_cpu_ns() - start < burn_ns {}
            nix::unistd::gettid()
        })
        .join()
        .unwrap();
        // join returns as the thread exits; the kernel unlists it from /proc a little later.
        let listed = format!("/proc/self/task/{tid}");
        for _ in 0..1000 {
            if !Path::new(&listed).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let after = cpu_time_ns(std::process::id()).unwrap();
        assert!(after - before >= burn_ns, "{} ns", after - before);
    }
}
