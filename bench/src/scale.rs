//! Scale: tcpstated's scrapes with many tracked sockets. Connections are held open by two
//! subprocesses (see `hold`) while tcpstated, started before them, tracks every socket; then the
//! benchmark measures scrape latency, the daemon's CPU per scrape and while idle, and its memory
//! and its maps' memory.

use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Context,
    process::Process,
    procfs, prometheus,
    stats::median,
    sysctl::{self, Sysctl},
    tracer::{Config, Tracer},
};

/// Connections per holder process at most: its listener address is its own space of ~28k
/// source ports, kept under half full so connect() finds a free one in a probe or two.
const MOST_CONNECTIONS_PER_HOLDER: u64 = 12_000;
/// Holders started at once (each then runs flat out on its connects).
const HOLDERS_AT_ONCE: usize = 4;
/// File descriptors a holder keeps for itself beyond its sockets.
const HOLDER_SPARE_FILES: u64 = 256;
/// The sockets view's request the scale times: the most sockets one answer lists, among every
/// held connection (each one located with sock_diag and matched to its holder through /proc).
const VIEW_QUERY: &str = "state=ESTABLISHED&limit=1000";

/// Time between two scrapes. tcpstated polls sock_diag at scrape time, at most once per
/// `--sockdiag.min-interval` (1 s by default) and per 20 times the last poll's duration: spaced
/// beyond the first, every scrape pays its poll where polls are quick, as Prometheus's scrapes
/// (every 15 s or more) do; where a poll takes over 50 ms, only one scrape in several does.
const SCRAPE_SPACING: Duration = Duration::from_millis(1_100);
/// Sockets `ss` may list for the per-socket storage figure (its output is ~200 bytes a socket).
const MOST_SOCKETS_LISTED: u64 = 100_000;
/// Kept free beyond what the connections are expected to take.
const MEMORY_MARGIN: u64 = 2 << 30;

#[derive(Debug, Clone, Default)]
pub struct ScaleLevel {
    pub connections: u64,
    /// Network namespaces of the benchmark's own the connections are spread over (0: the
    /// host's).
    pub namespaces: usize,
    /// `tcpstate_tracked_sockets` while they are held.
    pub tracked_sockets: Option<f64>,
    /// Wall time of each scrape of /metrics, in milliseconds.
    pub scrape_ms: Vec<f64>,
    /// Wall time of the sockets view's largest answer (`VIEW_QUERY`), in milliseconds.
    pub view_ms: Option<f64>,
    /// Median of the daemon's own `tcpstate_collect_duration_seconds`, in milliseconds.
    pub collect_ms: Option<f64>,
    pub cpu_per_scrape_ms: f64,
    /// Median of the daemon's `tcpstate_poll_duration_seconds` over the scrapes, in milliseconds.
    pub poll_ms: Option<f64>,
    /// The daemon's `tcpstate_poll_interval_seconds` at the last scrape.
    pub poll_interval_seconds: Option<f64>,
    /// Daemon CPU while the connections are held and nobody scrapes, in ms per second.
    pub idle_cpu_ms_per_second: f64,
    /// Sum of `memlock` over tcpstated's maps.
    pub map_memlock_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Time to open all the connections.
    pub setup_seconds: f64,
    /// Timewait sockets on the host while measuring: sock_diag polls walk them too.
    pub host_timewait_sockets: Option<u64>,
    /// Drop of MemAvailable per held connection (both sockets, all kernel memory).
    pub memory_per_connection: Option<f64>,
}

impl ScaleLevel {
    pub fn median_scrape_ms(&self) -> Option<f64> {
        median(&self.scrape_ms)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ScaleOutcome {
    pub levels: Vec<ScaleLevel>,
    /// The same connections spread over 1, 10, 100 namespaces: a sock_diag poll per namespace
    /// walks every socket of the host.
    pub namespace_levels: Vec<ScaleLevel>,
    /// Socket-local storage charged to each tracked socket (`ss -m`'s `o`, with minus without
    /// tcpstated).
    pub storage_bytes_per_socket: Option<u64>,
    pub notes: Vec<String>,
}

/// Connections each holder process can keep: two descriptors per connection within its file
/// limit, and no more than [`MOST_CONNECTIONS_PER_HOLDER`].
pub fn connections_per_holder(file_limit: u64) -> u64 {
    (file_limit.saturating_sub(HOLDER_SPARE_FILES) / 2).clamp(1, MOST_CONNECTIONS_PER_HOLDER)
}

/// How `connections` split over holders of `per_holder` each: full ones, then the rest.
pub fn split_over_holders(connections: u64, per_holder: u64) -> Vec<u64> {
    let mut shares = vec![per_holder; (connections / per_holder) as usize];
    if !connections.is_multiple_of(per_holder) {
        shares.push(connections % per_holder);
    }
    shares
}

/// The hard `RLIMIT_NOFILE` of this process (what a child may raise its soft limit to without
/// privilege), from /proc/self/limits.
pub fn file_limit() -> anyhow::Result<u64> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    parse_hard_file_limit(&limits).context("no `Max open files` line in /proc/self/limits")
}

fn parse_hard_file_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let hard = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .nth(1)?;
    // "unlimited" does not happen for RLIMIT_NOFILE (fs.nr_open caps it), but be safe.
    Some(hard.parse().unwrap_or(1 << 20))
}

/// Holder processes needed for `connections`, for the port check.
pub fn holders_for(connections: u64) -> usize {
    let per_holder = connections_per_holder(file_limit().unwrap_or(1024));
    connections.div_ceil(per_holder) as usize
}

/// Connections that fit in `available` bytes at `per_connection` bytes each, keeping a margin,
/// rounded down to a multiple of 10,000 (never more than `wanted`).
pub fn feasible_connections(wanted: u64, per_connection: f64, available: u64) -> u64 {
    if per_connection <= 0.0 {
        return wanted;
    }
    let usable = available.saturating_sub(MEMORY_MARGIN) as f64;
    // 25% above the measured cost: the kernel's slabs grow in steps.
    let fitting = (usable / (per_connection * 1.25)) as u64;
    if fitting >= wanted {
        wanted
    } else {
        fitting / 10_000 * 10_000
    }
}

/// `o<bytes>` of each `skmem:(...)` in `ss -m` output: memory charged to the socket for options
/// and, here, for BPF socket-local storage (sockets past the slot table).
pub fn parse_socket_option_memory(ss_output: &str) -> Vec<u64> {
    ss_output
        .split("skmem:(")
        .skip(1)
        .filter_map(|rest| {
            rest.split(')')
                .next()?
                .split(',')
                .find_map(|field| field.strip_prefix('o')?.parse().ok())
        })
        .collect()
}

fn socket_option_memory(port: u16) -> anyhow::Result<Option<u64>> {
    let output = Command::new("ss")
        .args(["-tmnH", "state", "established"])
        .arg(format!("( sport = :{port} or dport = :{port} )"))
        .output()
        .context("cannot run ss (Debian package iproute2)")?;
    let values: Vec<f64> = parse_socket_option_memory(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .map(|value| value as f64)
        .collect();
    Ok(median(&values).map(|value| value as u64))
}

/// The holder processes of one level.
struct Held {
    holders: Vec<Process>,
    setup_seconds: f64,
}

impl Held {
    /// Holds `connections` in the host's namespace, or spread evenly over `namespaces`.
    fn open(context: &Context, connections: u64, namespaces: &[String]) -> anyhow::Result<Held> {
        let file_limit = file_limit()?;
        let per_holder = connections_per_holder(file_limit);
        let shares: Vec<(Option<&str>, u64)> = if namespaces.is_empty() {
            split_over_holders(connections, per_holder)
                .into_iter()
                .map(|share| (None, share))
                .collect()
        } else {
            let count = namespaces.len() as u64;
            namespaces
                .iter()
                .enumerate()
                .flat_map(|(index, name)| {
                    let here =
                        connections / count + u64::from((index as u64) < connections % count);
                    split_over_holders(here, per_holder)
                        .into_iter()
                        .map(move |share| (Some(name.as_str()), share))
                })
                .filter(|(_, share)| *share > 0)
                .collect()
        };
        let started = Instant::now();
        let mut held = Held {
            holders: Vec::new(),
            setup_seconds: 0.0,
        };
        for (batch_number, batch) in shares.chunks(HOLDERS_AT_ONCE).enumerate() {
            let mut starting = Vec::new();
            for (offset, (namespace, share)) in batch.iter().enumerate() {
                let index = batch_number * HOLDERS_AT_ONCE + offset;
                // Raising the soft limit to the hard one needs no privilege.
                let mut command = match namespace {
                    Some(name) => {
                        let mut command = Command::new("ip");
                        command.args(["netns", "exec", name, "prlimit"]);
                        command
                    }
                    None => Command::new("prlimit"),
                };
                command
                    .arg(format!("--nofile={file_limit}:{file_limit}"))
                    .arg("--")
                    .arg(&context.bench)
                    .args(["hold", "--port", &context.port.to_string()])
                    .args(["--index", &index.to_string()])
                    .args(["--connections", &share.to_string()]);
                let holder = Process::spawn("a connection holder", &mut command, true)?;
                starting.push((holder, *share));
            }
            for (mut holder, share) in starting {
                // Loopback connects run at thousands per second even on a busy machine.
                let patience = Duration::from_secs(60 + share / 200);
                let held_count: u64 = holder
                    .wait_for_line("held=", patience)?
                    .parse()
                    .context("bad held= line")?;
                if held_count != share {
                    bail!("a holder held {held_count} connections instead of {share}");
                }
                held.holders.push(holder);
            }
        }
        held.setup_seconds = started.elapsed().as_secs_f64();
        Ok(held)
    }

    /// Closing their stdin tells the holders to exit (which closes every socket).
    fn close(mut self) -> anyhow::Result<()> {
        for holder in &mut self.holders {
            drop(holder.stdin());
        }
        for holder in self.holders {
            holder.finish(Duration::from_secs(300))?;
        }
        Ok(())
    }
}

/// Raises the system-wide file limit when `connections` would not fit; the guard restores it.
fn file_limits_for(connections: u64) -> anyhow::Result<Option<Sysctl>> {
    let needed = 2 * connections + 200_000;
    if sysctl::read("fs.file-max")?.parse::<u64>().unwrap_or(0) >= needed {
        return Ok(None);
    }
    let guard = Sysctl::take("fs.file-max")?;
    guard.set(&needed.to_string())?;
    Ok(Some(guard))
}

/// Timewait sockets above which a level first waits for them to expire (60 s at most).
const QUIET_TIMEWAIT: u64 = 10_000;
/// Longest wait for timewait sockets to expire (TCP_TIMEWAIT_LEN is 60 s).
const TIMEWAIT_PATIENCE: Duration = Duration::from_secs(65);

/// Waits (bounded) until the host has few timewait sockets: tcpstated's sock_diag polls walk
/// them, so they would add to the scrape figures whatever the tracked sockets.
fn wait_for_timewait_to_expire() {
    let started = Instant::now();
    let mut said = false;
    while let Some(timewait) = procfs::timewait_sockets() {
        if timewait < QUIET_TIMEWAIT || started.elapsed() > TIMEWAIT_PATIENCE {
            break;
        }
        if !said {
            eprintln!(
                "bench: scale: waiting for {timewait} timewait sockets to expire (up to 60 s)"
            );
            said = true;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

pub fn measure(
    context: &Context,
    wanted_levels: &[u64],
    scrapes: usize,
    quiet_timewait: bool,
) -> anyhow::Result<ScaleOutcome> {
    let mut outcome = ScaleOutcome::default();
    // Smallest first: each level's memory per connection tells whether the next one fits.
    let mut levels = wanted_levels.to_vec();
    levels.sort_unstable();
    levels.dedup();
    let mut per_connection: Option<f64> = None;
    for wanted in levels {
        let available = procfs::mem_available_bytes()?;
        let connections = match per_connection {
            Some(bytes) => feasible_connections(wanted, bytes, available),
            None => wanted,
        };
        if connections < wanted {
            let note = format!(
                "{wanted} connections need about {:.1} GiB of kernel memory ({:.0} bytes per \
                 connection measured at the previous level, plus 25%) but {:.1} GiB is available \
                 (minus a 2 GiB margin): measured {connections} instead",
                per_connection.unwrap_or(0.0) * 1.25 * wanted as f64 / f64::from(1u32 << 30),
                per_connection.unwrap_or(0.0),
                available as f64 / f64::from(1u32 << 30),
            );
            eprintln!("bench: scale: {note}");
            outcome.notes.push(note);
        }
        if connections == 0 {
            continue;
        }
        if quiet_timewait {
            wait_for_timewait_to_expire();
        }
        eprintln!("bench: scale: holding {connections} connections under tcpstated");
        let _limits = file_limits_for(connections)?;
        let level = measure_level(context, connections, &[], scrapes, &mut outcome)?;
        per_connection = level.memory_per_connection.or(per_connection);
        outcome.levels.push(level);
    }
    Ok(outcome)
}

fn measure_level(
    context: &Context,
    connections: u64,
    namespaces: &[String],
    scrapes: usize,
    outcome: &mut ScaleOutcome,
) -> anyhow::Result<ScaleLevel> {
    let memory_before = procfs::mem_available_bytes()?;
    // The default (logical) view: its scrapes also poll sock_diag, a cost that may grow with
    // the sockets.
    let tracer = Tracer::start(Config::Tcpstated, &context.binaries, context.port, &[])?;
    let pid = tracer.pid().context("tcpstated has a pid")?;
    let address = tracer.metrics.context("tcpstated has an address")?;
    let held = Held::open(context, connections, namespaces)?;
    thread::sleep(Duration::from_secs(1));
    let memory_held = procfs::mem_available_bytes()?;
    let host_timewait_sockets = procfs::timewait_sockets();

    let mut level = ScaleLevel {
        connections,
        namespaces: namespaces.len(),
        setup_seconds: held.setup_seconds,
        host_timewait_sockets,
        memory_per_connection: Some(
            memory_before.saturating_sub(memory_held) as f64 / connections as f64,
        ),
        ..ScaleLevel::default()
    };
    // A first scrape outside the measurement (the first one allocates the daemon's buffers).
    prometheus::scrape(address)?;
    let idle_start = procfs::cpu_time_ns(pid)?;
    let idle = Duration::from_secs(2);
    thread::sleep(idle);
    level.idle_cpu_ms_per_second =
        procfs::cpu_time_ns(pid)?.saturating_sub(idle_start) as f64 / 1e6 / idle.as_secs_f64();

    let cpu_start = procfs::cpu_time_ns(pid)?;
    let mut collect_ms = Vec::new();
    let mut poll_ms = Vec::new();
    let mut last = None;
    for _ in 0..scrapes {
        thread::sleep(SCRAPE_SPACING);
        let started = Instant::now();
        let text = prometheus::scrape_text(address)?;
        level.scrape_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let samples = prometheus::Exposition::parse(&text)?;
        if let Some(seconds) = samples.sum_if_any("tcpstate_collect_duration_seconds", &[]) {
            collect_ms.push(seconds * 1e3);
        }
        if let Some(seconds) = samples.sum_if_any("tcpstate_poll_duration_seconds", &[]) {
            poll_ms.push(seconds * 1e3);
        }
        last = Some(samples);
    }
    level.cpu_per_scrape_ms =
        procfs::cpu_time_ns(pid)?.saturating_sub(cpu_start) as f64 / 1e6 / scrapes.max(1) as f64;
    let started = Instant::now();
    level.view_ms = prometheus::sockets_view(address, VIEW_QUERY)
        .ok()
        .map(|_| started.elapsed().as_secs_f64() * 1e3);
    level.collect_ms = median(&collect_ms);
    level.poll_ms = median(&poll_ms);
    level.poll_interval_seconds = last
        .as_ref()
        .and_then(|samples| samples.sum_if_any("tcpstate_poll_interval_seconds", &[]));
    level.tracked_sockets =
        last.and_then(|samples| samples.sum_if_any("tcpstate_tracked_sockets", &[]));
    level.map_memlock_bytes = procfs::maps_of(pid)?.values().map(|map| map.memlock).sum();
    level.peak_rss_bytes = procfs::peak_rss_bytes(pid)?;

    // The same sockets with and without tcpstated's records: freeing the map (when tcpstated
    // exits) deletes every record and uncharges it from its socket. Measured once, on the
    // smallest level (ss lists every socket).
    let measure_storage = outcome.storage_bytes_per_socket.is_none()
        && namespaces.is_empty()
        && connections <= MOST_SOCKETS_LISTED / 2;
    let traced = if measure_storage {
        socket_option_memory(context.port)?
    } else {
        None
    };
    tracer.stop()?;
    if let Some(traced) = traced {
        // The map is freed after an RCU grace period.
        thread::sleep(Duration::from_secs(1));
        if let Some(untraced) = socket_option_memory(context.port)? {
            outcome.storage_bytes_per_socket = Some(traced.saturating_sub(untraced));
        }
    }
    held.close()?;
    Ok(level)
}

/// Network namespaces of the benchmark's own, each with its loopback up, deleted when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(count: usize) -> anyhow::Result<Namespaces> {
        let mut namespaces = Namespaces(Vec::new());
        for index in 0..count {
            let name = format!("tcpstate-bench-{index}");
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            let added = Command::new("ip").args(["netns", "add", &name]).status()?;
            if !added.success() {
                bail!("cannot make network namespace {name} (ip netns add: {added})");
            }
            namespaces.0.push(name.clone());
            let up = Command::new("ip")
                .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
                .status()?;
            if !up.success() {
                bail!("cannot bring up the loopback of {name}");
            }
        }
        Ok(namespaces)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}

/// The same `connections` spread over each count of network namespaces in `counts`, the daemon
/// in the host's: every namespace's sock_diag dump walks every socket of the host, and the
/// polls must stay within their CPU budget and the scrapes flat.
pub fn measure_namespaces(
    context: &Context,
    connections: u64,
    counts: &[usize],
    scrapes: usize,
    outcome: &mut ScaleOutcome,
) -> anyhow::Result<()> {
    for &count in counts {
        eprintln!("bench: scale: holding {connections} connections in {count} namespaces");
        let namespaces = Namespaces::create(count)?;
        let _limits = file_limits_for(connections)?;
        let level = measure_level(context, connections, &namespaces.0, scrapes, outcome)?;
        outcome.namespace_levels.push(level);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_share_the_connections_within_their_file_limit() {
        // 20000 descriptors: (20000 - 256) / 2 = 9872 connections per holder.
        assert_eq!(connections_per_holder(20_000), 9_872);
        assert_eq!(connections_per_holder(1 << 20), 12_000);
        assert_eq!(split_over_holders(20_000, 9_872), vec![9_872, 9_872, 256]);
        assert_eq!(split_over_holders(1_000, 9_872), vec![1_000]);
        assert_eq!(split_over_holders(1_000_000, 9_872).len(), 102);
    }

    #[test]
    fn the_hard_file_limit_is_the_second_figure() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(parse_hard_file_limit(limits), Some(20_000));
    }

    #[test]
    fn feasible_connections_shrink_to_the_memory_available() {
        let gib = 1u64 << 30;
        // 10 KiB per connection, 1M wanted: 1M × 10 KiB × 1.25 ≈ 11.9 GiB.
        assert_eq!(
            feasible_connections(1_000_000, 10_240.0, 20 * gib),
            1_000_000
        );
        // With 8 GiB available, 6 GiB usable: 503,316 fit, rounded down to 500,000.
        assert_eq!(feasible_connections(1_000_000, 10_240.0, 8 * gib), 500_000);
        assert_eq!(feasible_connections(1_000_000, 10_240.0, gib), 0);
    }

    #[test]
    fn option_memory_is_read_from_each_socket_line() {
        let ss = "0 0 127.0.0.1:56700 127.0.0.1:19998\n\t skmem:(r0,rb131072,t0,tb2626560,f0,w0,o384,bl0,d2)\n\
                  0 0 127.0.0.1:19998 127.0.0.1:56700\n\t skmem:(r0,rb131072,t0,tb2626560,f0,w0,o0,bl0,d0)\n";
        assert_eq!(parse_socket_option_memory(ss), vec![384, 0]);
    }
}
