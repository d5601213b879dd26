//! Command-line flags, validated into the daemon's configuration.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use tcpstate_common::{
    DEFAULT_SOCKET_SLOTS, DEFAULT_TRANSITION_SLOTS, SOCKET_SLOT_WINDOW, TRANSITIONS_CAPACITY,
};

use crate::{
    capabilities::{self, Keep},
    model::View,
};

mod buckets;
mod collectors;
mod log;
mod web;

use buckets::parse_buckets;
pub use buckets::{Buckets, DEFAULT_BUCKETS, MAX_BUCKET_SECONDS};
pub use collectors::{CollectorFlags, Collectors};
pub use log::{LogFormat, LogLevel};
pub use web::ListenAddress;

/// Default `--web.listen-address`: 9816 (in the exporter range and not used by common
/// exporters) on every address, IPv6 and IPv4.
pub const DEFAULT_LISTEN_ADDRESS: &str = ":9816";

/// Default `--web.max-connections`: a few Prometheus servers, probes and open pages need a
/// handful; the cap bounds the daemon's memory and file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Follows every TCP socket through its states with eBPF and serves Prometheus metrics:
/// transition counts, time spent in each state, and sockets per state.
///
/// Needs root, or CAP_BPF + CAP_PERFMON (+ CAP_SYS_RESOURCE on kernels without memcg
/// accounting of BPF memory), and a kernel with BTF (/sys/kernel/btf/vmlinux).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tcpstated",
    version = crate::version::LONG_VERSION,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Flags {
    /// A subcommand instead of the daemon (`tcpstated trace`).
    #[command(subcommand)]
    pub command: Option<crate::trace::command::Command>,

    /// Address on which to expose metrics and the web interface: HOST:PORT, [IPv6]:PORT, or
    /// :PORT for every address (IPv6 and IPv4). Repeat the flag to listen on several.
    #[arg(long = "web.listen-address", value_name = "ADDRESS", default_value = DEFAULT_LISTEN_ADDRESS,
          value_parser = web::parse_listen_address)]
    pub listen_addresses: Vec<ListenAddress>,

    /// Web configuration file in prometheus/exporter-toolkit's format: TLS, client
    /// certificates, basic auth, response headers. Checked at start-up; re-read when it or the
    /// certificates it names change.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Least severity logged: debug, info, warn or error (RUST_LOG, if set, overrides it).
    #[arg(long = "log.level", value_name = "LEVEL", default_value = "info", value_parser = log::parse_log_level)]
    pub log_level: LogLevel,

    /// Log line format: logfmt or json.
    #[arg(long = "log.format", value_name = "FORMAT", default_value = "logfmt", value_parser = log::parse_log_format)]
    pub log_format: LogFormat,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics",
          value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// Most HTTP connections open at once. At the cap, a new connection closes the one that
    /// has waited longest without a request in progress (idle between requests, or still
    /// sending its request), so idle clients cannot lock out a scrape.
    #[arg(long = "web.max-connections", value_name = "COUNT", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections, allow_negative_numbers = true)]
    pub max_connections: usize,

    /// Serve no live event stream (`/events`, what `tcpstated trace` and the page's last
    /// transitions read): it shows every connection's addresses, where /metrics shows counts.
    #[arg(long = "web.disable-events")]
    pub disable_events: bool,

    /// Service port to export by number in the `port` label (repeat the flag or give a comma
    /// list). A socket's service port is its local port for server and listener sockets and its
    /// remote port for client sockets; ports outside this set are labelled `other`. Default:
    /// none, so every socket is `other` and the series count stays small.
    #[arg(long = "port", value_name = "PORT", value_delimiter = ',', value_parser = parse_port,
          allow_negative_numbers = true)]
    pub ports: Vec<u16>,

    /// Upper bounds of the state-duration histogram buckets, in seconds: a comma list,
    /// strictly increasing, positive, at most 32 bounds (`+Inf` is implicit). The kernel
    /// program counts into exactly these buckets.
    #[arg(long = "buckets", value_name = "SECONDS,...", value_parser = parse_buckets,
          allow_hyphen_values = true,
          default_value = "0.0001,0.0005,0.001,0.005,0.01,0.05,0.1,0.5,1,5,10,30,60,120,300,600,1800,3600")]
    pub buckets: Buckets,

    /// Which sequence `tcpstate_transitions_total` shows: `logical` (TCP's state machine:
    /// the active closer goes `... -> TIME_WAIT` then `TIME_WAIT -> CLOSE`, an orphaned
    /// FIN_WAIT2 lasts until the peer's FIN) or `raw` (the kernel's own `inet_sock_set_state`
    /// sequence, as bcc's tcpstates shows it: the active closer goes `... -> CLOSE` when a
    /// timewait socket takes over).
    #[arg(long = "transitions.view", value_name = "VIEW", default_value = "logical", value_parser = parse_view)]
    pub view: View,

    /// Least time between two netlink sock_diag polls, in seconds. Polls are started by
    /// scrapes (never without one) and count the timewait sockets (TIME_WAIT, orphaned
    /// FIN_WAIT2), the request sockets (NEW_SYN_RECV) and the listeners' accept queues. A poll
    /// that takes under 20 ms runs within the scrape; slower ones run beside it, and the scrape
    /// shows the previous poll's figures. A poll walks every TCP socket of the host, so after a
    /// slow one the next waits at least 20 times as long: polls take at most 5% of one CPU.
    #[arg(long = "sockdiag.min-interval", value_name = "SECONDS", default_value = "1", value_parser = parse_interval,
          allow_negative_numbers = true)]
    pub poll_min_interval: Duration,

    /// Which network namespaces the sock_diag polls cover: `all` (every one of the host's:
    /// tcpstated enters each, which needs CAP_SYS_ADMIN, CAP_SYS_PTRACE for other users'
    /// processes' namespaces, and the host's PID namespace to find them) or `own` (the
    /// daemon's). The tracepoint's figures cover every namespace either way.
    #[arg(long = "sockdiag.namespaces", value_name = "WHICH", default_value = "all",
          value_parser = parse_namespaces)]
    pub namespaces: NamespaceScope,

    /// `--[no-]collector.NAME`: the parts of the collection turned off.
    #[command(flatten)]
    pub collector_flags: CollectorFlags,

    /// Slots of the kernel's socket table, where each tracked socket's record lives: a power of
    /// two, 32 bytes each (the default, 262144, takes 8 MiB of kernel memory). Give about twice
    /// the host's peak number of TCP sockets: a socket that finds no free slot near its hash is
    /// tracked in socket-local storage instead, which loses nothing but costs several times
    /// more per event (`tcpstate_socket_records_in_socket_storage_total` counts them).
    #[arg(long = "sockets.slots", value_name = "SLOTS", default_value_t = DEFAULT_SOCKET_SLOTS,
          value_parser = parse_socket_slots, allow_negative_numbers = true)]
    pub socket_slots: u32,

    /// Slots per CPU of the kernel's transition table, where the program counts each distinct
    /// (labels, transition) on its fast path: a power of two, 288 bytes each per CPU (the
    /// default, 512, takes 144 KiB per CPU). A transition whose slots are taken is counted in
    /// the kernel's hash map instead, which loses nothing but costs more per event; raise it
    /// when many ports are exported by number.
    #[arg(long = "transitions.slots", value_name = "SLOTS", default_value_t = DEFAULT_TRANSITION_SLOTS,
          value_parser = parse_transition_slots, allow_negative_numbers = true)]
    pub transition_slots: u32,

    /// Label every socket figure with its workload (`namespace`, `pod`, `container`): the
    /// cgroup v2 of the process that created the socket (an accepted socket's is its
    /// listener's), decoded into Kubernetes names, a systemd unit or a container name. Off by
    /// default: each workload multiplies the series, bounded by --workloads.max.
    #[arg(long = "workloads")]
    pub workloads: bool,

    /// Most distinct workloads labelled by name; further ones are labelled `container="other"`
    /// (tcpstate_workloads_folded counts them). The kernel's transition map is sized for it:
    /// 64 entries per workload.
    #[arg(long = "workloads.max", value_name = "COUNT", default_value_t = DEFAULT_MAX_WORKLOADS,
          value_parser = parse_max_workloads, allow_negative_numbers = true)]
    pub max_workloads: usize,

    /// Where the host's root file system is, for the container runtimes' state (`/run/containerd`,
    /// `/run/containers`, `/var/lib/docker`, ...): `/` on the host, the mount point of the
    /// host's `/` in a container.
    #[arg(long = "workloads.host-root", value_name = "PATH", default_value = "/")]
    pub host_root: std::path::PathBuf,

    /// Where the host's cgroup v2 hierarchy is mounted, to find each socket's group by its
    /// inode; default: this process's cgroup2 mount. In a container (whose own cgroup
    /// namespace hides the host's groups), the mount point of the host's.
    #[arg(long = "workloads.cgroup-root", value_name = "PATH")]
    pub cgroup_root: Option<std::path::PathBuf>,

    /// Directory on a BPF filesystem where the kernel state is pinned (programs, their
    /// attachments, maps, and the daemon's own figures), so that a restarted tcpstated of the
    /// same build and configuration adopts it: counters continue, open sockets keep their
    /// labels and times, no event is missed. Locked by the daemon using it; nothing there
    /// survives a reboot.
    #[arg(long = "bpf.pin-path", value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Keep nothing for the next daemon: a state left under --bpf.pin-path is adopted, then
    /// removed, and this daemon's ends with it (even on SIGKILL).
    #[arg(long = "no-bpf.persist")]
    pub no_persist: bool,

    /// Capabilities every thread keeps once tcpstated serves (its programs attached, the
    /// sockets older than it listed): `none`, `all` (nothing is dropped), or names separated
    /// by commas (`cap_net_raw,cap_syslog`). Whatever this says, the sock_diag poll thread
    /// keeps, of those tcpstated holds, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (other users'
    /// /proc/PID: their namespaces, the sockets view's processes), and CAP_SYS_ADMIN while its
    /// polls enter other network namespaces.
    #[arg(long = "capabilities.keep", value_name = "CAPABILITIES", default_value = "none",
          value_parser = capabilities::parse_keep)]
    pub keep_capabilities: Keep,

    /// Check that this host can run tcpstated with these flags, then exit without serving:
    /// the privileges, the kernel's BTF, loading every program these flags leave on (the
    /// kernel's verifier) and attaching it, then detaching. Exit status 0 if it can, 5 if this
    /// kernel cannot, 4 without the privilege.
    #[arg(long = "check")]
    pub check: bool,
}

/// Default `--bpf.pin-path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/tcpstate";

impl Flags {
    /// The parts of the collection that run (`--[no-]collector.NAME`).
    pub fn collectors(&self) -> Collectors {
        self.collector_flags.collectors()
    }

    /// Where the kernel state is pinned, and whether it outlives this daemon.
    pub fn pin_settings(&self) -> crate::bpf::pinning::PinSettings {
        crate::bpf::pinning::PinSettings {
            path: self.pin_path.clone(),
            persist: !self.no_persist,
        }
    }
}

/// Entries of the kernel's `TRANSITIONS` map: 64 per workload when `workloads` are labelled
/// (entries are allocated on first use: the capacity costs nothing until used).
pub fn transitions_capacity(workloads: Option<usize>) -> u32 {
    let per_workloads = workloads.map_or(0, |workloads| workloads.saturating_mul(64));
    TRANSITIONS_CAPACITY.max(u32::try_from(per_workloads).unwrap_or(u32::MAX))
}

/// Default `--workloads.max`.
pub const DEFAULT_MAX_WORKLOADS: usize = 500;

fn parse_max_workloads(text: &str) -> Result<usize, String> {
    const MOST: usize = 100_000;
    match text.trim().parse::<i64>() {
        Ok(count) if (1..=MOST as i64).contains(&count) => Ok(count as usize),
        _ => Err(format!(
            "`{text}` is not a number of workloads between 1 and {MOST}"
        )),
    }
}

/// `--sockets.slots`: a window's worth to 2^26 slots (2 GiB of kernel memory).
fn parse_socket_slots(text: &str) -> Result<u32, String> {
    parse_slots(text, SOCKET_SLOT_WINDOW..=1 << 26, "262144, 1048576")
}

/// `--transitions.slots`: one pair to 2^16 slots (18 MiB per CPU).
fn parse_transition_slots(text: &str) -> Result<u32, String> {
    parse_slots(text, 2..=1 << 16, "512, 4096")
}

fn parse_slots(
    text: &str,
    bounds: std::ops::RangeInclusive<u32>,
    examples: &str,
) -> Result<u32, String> {
    let range = format!(
        "a power of two between {} and {} (e.g. {examples})",
        bounds.start(),
        bounds.end()
    );
    match text.trim().parse::<i64>() {
        Ok(slots) => match u32::try_from(slots) {
            Ok(slots) if slots.is_power_of_two() && bounds.contains(&slots) => Ok(slots),
            _ => Err(format!("{slots} is not {range}")),
        },
        Err(_) => Err(format!("`{text}` is not a number of slots: give {range}")),
    }
}

/// `--web.max-connections`: 1 to 65536.
fn parse_max_connections(text: &str) -> Result<usize, String> {
    const MOST: usize = 65536;
    match text.trim().parse::<i64>() {
        Ok(count) if (1..=MOST as i64).contains(&count) => Ok(count as usize),
        _ => Err(format!(
            "`{text}` is not a number of connections between 1 and {MOST}"
        )),
    }
}

fn parse_view(text: &str) -> Result<View, String> {
    match text {
        "logical" => Ok(View::Logical),
        "raw" => Ok(View::Raw),
        _ => Err(format!("`{text}` is not a view: use `logical` or `raw`")),
    }
}

/// `--sockdiag.namespaces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    All,
    Own,
}

fn parse_namespaces(text: &str) -> Result<NamespaceScope, String> {
    match text {
        "all" => Ok(NamespaceScope::All),
        "own" => Ok(NamespaceScope::Own),
        _ => Err(format!("`{text}` is not a choice: use `all` or `own`")),
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.0..=3600.0).contains(&seconds) => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(format!(
            "`{text}` is not a number of seconds between 0 and 3600"
        )),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<i64>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(port) => Err(format!("port {port} is outside 1-65535")),
        Err(_) => Err(format!("`{text}` is not a port number (1-65535)")),
    }
}

fn parse_telemetry_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("`{text}` must start with `/`"));
    }
    if let Some(bad) = first_character_outside_url_paths(text) {
        return Err(format!(
            "`{}` contains {bad}, which cannot appear in a URL path: use letters, digits, \
             `/` and `-._~!$&'()*+,;=:@`, or `%` and two hex digits",
            text.escape_default()
        ));
    }
    if matches!(
        text,
        "/" | "/healthz" | "/sockets" | "/sockets.json" | "/events"
    ) {
        return Err(format!(
            "`{text}` is taken by the landing page, the health check, the sockets view or the \
             event stream"
        ));
    }
    Ok(text.to_owned())
}

/// The first character RFC 3986 does not allow in a path (pchar), described; `None` if all are
/// allowed. `{` and `}` are refused too (they are not pchars, and the router reads them as
/// parameters).
fn first_character_outside_url_paths(path: &str) -> Option<String> {
    let mut characters = path.chars().peekable();
    while let Some(character) = characters.next() {
        let allowed = character.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@".contains(character);
        if character == '%' {
            let hex = characters.next_if(char::is_ascii_hexdigit).is_some()
                && characters.next_if(char::is_ascii_hexdigit).is_some();
            if !hex {
                return Some("`%` without two hex digits".into());
            }
        } else if !allowed {
            return Some(match character {
                ' ' => "a space".into(),
                character if character.is_control() || character.is_whitespace() => {
                    format!("the control character {}", character.escape_unicode())
                }
                character => format!("`{character}`"),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("tcpstated").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let flags = parse(&[]).unwrap();
        assert_eq!(flags.listen_addresses, [ListenAddress::Everywhere(9816)]);
        assert_eq!(
            (flags.log_level, flags.log_format),
            (LogLevel::Info, LogFormat::Logfmt)
        );
        assert_eq!(flags.telemetry_path, "/metrics");
        assert_eq!(flags.namespaces, NamespaceScope::All);
        assert_eq!(
            flags.keep_capabilities,
            Keep::Only(capabilities::CapabilitySet::NONE)
        );
        assert!(!flags.check);
        assert_eq!(flags.collectors(), Collectors::ALL);
        let keep = parse(&["--capabilities.keep=cap_everything"]).unwrap_err();
        assert_eq!(keep.exit_code(), 2);
        assert!(keep.to_string().contains("is not a capability"), "{keep}");
        assert!(parse(&["--sockdiag.namespaces=own"]).is_ok());
        assert!(parse(&["--sockdiag.namespaces=some"]).is_err());
        assert!(flags.ports.is_empty());
        assert_eq!(flags.buckets, Buckets::default());
        assert_eq!(flags.buckets.nanoseconds()[0], 100_000);
        assert_eq!(
            *flags.buckets.nanoseconds().last().unwrap(),
            3_600_000_000_000
        );
    }

    #[test]
    fn collectors_turn_off_as_node_exporters_the_last_flag_winning() {
        let collectors = |args: &[&str]| parse(args).unwrap().collectors();
        let off = collectors(&[
            "--no-collector.sockdiag",
            "--no-collector.netstat",
            "--no-collector.resets",
            "--no-collector.synack_retransmits",
        ]);
        assert_eq!(
            off,
            Collectors {
                sockdiag: false,
                netstat: false,
                resets: false,
                synack_retransmits: false,
            }
        );
        assert_eq!(
            off.turned_off(),
            ["sockdiag", "netstat", "resets", "synack_retransmits"]
        );
        let netstat_off = collectors(&["--no-collector.netstat"]);
        assert_eq!(
            netstat_off,
            Collectors {
                netstat: false,
                ..Collectors::ALL
            }
        );
        assert_eq!(netstat_off.turned_off(), ["netstat"]);
        // `--collector.NAME` undoes an earlier `--no-collector.NAME`, and the other way round;
        // repeating one is no error (kingpin's `--[no-]collector.NAME`).
        assert_eq!(
            collectors(&["--no-collector.netstat", "--collector.netstat"]),
            Collectors::ALL
        );
        assert!(!collectors(&["--collector.resets", "--no-collector.resets"]).resets);
        assert!(!collectors(&["--no-collector.sockdiag", "--no-collector.sockdiag"]).sockdiag);
        assert!(collectors(&["--collector.synack_retransmits"]).synack_retransmits);
        for bad in ["--no-collector.sockstat", "--no-collector.netstat=false"] {
            assert_eq!(parse(&[bad]).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn slot_tables_take_powers_of_two_within_their_bounds() {
        let flags = parse(&["--sockets.slots", "1048576", "--transitions.slots", "2"]).unwrap();
        assert_eq!((flags.socket_slots, flags.transition_slots), (1 << 20, 2));
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.transition_slots, DEFAULT_TRANSITION_SLOTS);
        for (flag, bad) in [
            ("--sockets.slots", "4"),
            ("--sockets.slots", "1000"),
            ("--transitions.slots", "1"),
            ("--transitions.slots", "131072"),
            ("--transitions.slots", "many"),
        ] {
            let err = parse(&[flag, bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flag} {bad}");
            let text = err.to_string();
            assert!(
                text.contains("power of two") || text.contains("not a number"),
                "{text}"
            );
        }
    }

    #[test]
    fn ports_repeat_and_split_on_commas() {
        let flags = parse(&["--port", "80,443", "--port=8080"]).unwrap();
        assert_eq!(flags.ports, [80, 443, 8080]);
    }

    #[test]
    fn bad_ports_are_usage_errors() {
        for bad in ["0", "65536", "-1", "http"] {
            let err = parse(&["--port", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(
                err.to_string().contains("port") || err.to_string().contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_buckets_say_what_is_wrong() {
        let cases = [
            ("1,0.5", "strictly increasing"),
            ("0.1,0.1", "strictly increasing"),
            ("-1,2", "positive"),
            ("0", "positive"),
            ("1,abc", "not a number"),
            ("inf", "positive"),
        ];
        for (value, expected) in cases {
            let err = parse(&["--buckets", value]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(expected), "{value}: {err}");
        }
        let too_many = (1..=33)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            parse(&["--buckets", &too_many])
                .unwrap_err()
                .to_string()
                .contains("at most 32")
        );
        assert!(parse(&["--buckets", "0.25,1,2"]).is_ok());
    }

    #[test]
    fn bucket_bounds_stay_below_the_kernels_unused_sentinel() {
        // 1e300 used to panic; 18446744074 s wrapped to 0.29 s in u64 nanoseconds, or made a
        // false "bounds are equal".
        for value in ["1,1e300", "0.1,18446744074", "0.5,18446744074", "1e20"] {
            let err = parse(&["--buckets", value]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{value}");
            let text = err.to_string();
            assert!(
                text.contains("too large") && text.contains("18446744073"),
                "{value}: {text}"
            );
        }
        let largest = parse(&["--buckets", "0.1,18446744073"]).unwrap().buckets;
        assert_eq!(largest.nanoseconds()[1], 18_446_744_073_000_000_000);
        assert!(
            largest
                .nanoseconds()
                .iter()
                .all(|&bound| bound < tcpstate_common::DurationBuckets::UNUSED)
        );
    }

    #[test]
    fn negative_numbers_reach_the_value_parsers() {
        for (flag, expected) in [
            ("--port", "1-65535"),
            ("--sockdiag.min-interval", "between 0 and 3600"),
            ("--sockets.slots", "between 8 and 67108864"),
            ("--transitions.slots", "between 2 and 65536"),
            ("--web.max-connections", "between 1 and 65536"),
        ] {
            let joined = format!("{flag}=-1");
            for args in [vec![flag, "-1"], vec![joined.as_str()]] {
                let err = parse(&args).unwrap_err();
                assert_eq!(err.exit_code(), 2, "{args:?}");
                let text = err.to_string();
                assert!(text.contains(expected), "{args:?}: {text}");
            }
        }
    }

    #[test]
    fn slot_counts_out_of_range_say_the_range() {
        for (flag, value, expected) in [
            ("--sockets.slots", "1099511627776", "between 8 and 67108864"),
            ("--sockets.slots", "many", "between 8 and 67108864"),
            ("--transitions.slots", "4294967296", "between 2 and 65536"),
        ] {
            let err = parse(&[flag, value]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            let text = err.to_string();
            assert!(text.contains(expected), "{flag} {value}: {text}");
        }
    }

    #[test]
    fn connection_cap_is_a_positive_count() {
        assert_eq!(parse(&[]).unwrap().max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            parse(&["--web.max-connections", "8"])
                .unwrap()
                .max_connections,
            8
        );
        for bad in ["0", "65537", "some"] {
            let err = parse(&["--web.max-connections", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains("between 1 and 65536"), "{err}");
        }
    }

    #[test]
    fn telemetry_paths_no_url_can_reach_are_refused() {
        for bad in [
            "/my metrics",
            "/metrics\t",
            "/metrics?format=text",
            "/metrics#top",
            "/metrics\u{7}",
            "/métriques",
            "/metrics/{id}",
            "/metrics%zz",
        ] {
            let err = parse(&["--web.telemetry-path", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            let text = err.to_string();
            assert!(
                text.contains("cannot appear in a URL path"),
                "{bad:?}: {text}"
            );
        }
        for good in ["/prometheus/metrics", "/a-b_c.d~e", "/a%20b", "/x:y@z;v=1"] {
            assert_eq!(
                parse(&["--web.telemetry-path", good])
                    .unwrap()
                    .telemetry_path,
                good
            );
        }
    }

    #[test]
    fn telemetry_path_must_be_a_free_absolute_path() {
        assert!(parse(&["--web.telemetry-path", "metrics"]).is_err());
        assert!(parse(&["--web.telemetry-path", "/healthz"]).is_err());
        assert!(parse(&["--web.telemetry-path", "/events"]).is_err());
        assert!(parse(&["--web.telemetry-path", "/sockets.json"]).is_err());
        assert_eq!(
            parse(&["--web.telemetry-path", "/m"])
                .unwrap()
                .telemetry_path,
            "/m"
        );
    }
}
