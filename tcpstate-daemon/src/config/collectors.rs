//! `--[no-]collector.NAME`: the parts of the collection an operator can turn off, spelled as
//! node_exporter's collectors. Every part is on by default; `--no-collector.NAME` turns it off
//! and `--collector.NAME` back on, the last one given winning (so an override can undo a
//! default given earlier on the command line).

/// Which parts of the collection run. A part turned off exports no family (not zeros), as a
/// node_exporter collector turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collectors {
    /// `sockdiag`: the sock_diag polls.
    pub sockdiag: bool,
    /// `netstat`: the reads of `/proc/net/netstat` and the ephemeral port range.
    pub netstat: bool,
    /// `resets`: the programs on `tcp_send_reset` and `tcp_receive_reset`.
    pub resets: bool,
    /// `synack_retransmits`: the program on `tcp_retransmit_synack`.
    pub synack_retransmits: bool,
}

impl Collectors {
    pub const ALL: Collectors = Collectors {
        sockdiag: true,
        netstat: true,
        resets: true,
        synack_retransmits: true,
    };

    /// The names of the parts turned off, as the flags spell them.
    pub fn turned_off(&self) -> Vec<&'static str> {
        [
            ("sockdiag", self.sockdiag),
            ("netstat", self.netstat),
            ("resets", self.resets),
            ("synack_retransmits", self.synack_retransmits),
        ]
        .into_iter()
        .filter(|(_, on)| !on)
        .map(|(name, _)| name)
        .collect()
    }
}

impl Default for Collectors {
    fn default() -> Self {
        Collectors::ALL
    }
}

/// The flags of `Collectors`: each part's `--no-collector.NAME`, and its `--collector.NAME`
/// (hidden: it only undoes the other). Each pair overrides itself: the last one given wins.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CollectorFlags {
    /// Turn off the sock_diag polls: no timewait (TIME_WAIT, orphaned FIN_WAIT2) or request
    /// (NEW_SYN_RECV) sockets in tcpstate_sockets, no TIME_WAIT -> CLOSE and orphaned
    /// FIN_WAIT2 transitions, no accept queues, no close_undelivered; the listen and
    /// TIME_WAIT overflow counters cover tcpstated's own network namespace only. The sockets
    /// older than tcpstated are still listed once at start-up, and the sockets view still
    /// answers (without timewait sockets). `--collector.sockdiag` turns them back on.
    #[arg(
        long = "no-collector.sockdiag",
        overrides_with_all = ["sockdiag_off", "sockdiag_on"]
    )]
    sockdiag_off: bool,
    #[arg(
        long = "collector.sockdiag",
        overrides_with_all = ["sockdiag_off", "sockdiag_on"],
        hide = true
    )]
    sockdiag_on: bool,

    /// Turn off the figures of /proc/net/netstat (which node_exporter's netstat collector
    /// exports too) and of the ephemeral port range: tcpstate_listen_overflows_total,
    /// tcpstate_listen_drops_total, tcpstate_timewait_overflows_total,
    /// tcpstate_ephemeral_ports. `--collector.netstat` turns them back on.
    #[arg(
        long = "no-collector.netstat",
        overrides_with_all = ["netstat_off", "netstat_on"]
    )]
    netstat_off: bool,
    #[arg(
        long = "collector.netstat",
        overrides_with_all = ["netstat_off", "netstat_on"],
        hide = true
    )]
    netstat_on: bool,

    /// Load no program on the tcp_send_reset and tcp_receive_reset tracepoints: no
    /// tcpstate_resets_sent_total, tcpstate_resets_received_total. Like --port, it changes
    /// the kernel state: a pinned state of the other setting is not adopted.
    /// `--collector.resets` turns them back on.
    #[arg(
        long = "no-collector.resets",
        overrides_with_all = ["resets_off", "resets_on"]
    )]
    resets_off: bool,
    #[arg(
        long = "collector.resets",
        overrides_with_all = ["resets_off", "resets_on"],
        hide = true
    )]
    resets_on: bool,

    /// Load no program on the tcp_retransmit_synack tracepoint: no
    /// tcpstate_synack_retransmits_total. Like --port, it changes the kernel state: a pinned
    /// state of the other setting is not adopted. `--collector.synack_retransmits` turns it
    /// back on.
    #[arg(
        long = "no-collector.synack_retransmits",
        overrides_with_all = ["synack_retransmits_off", "synack_retransmits_on"]
    )]
    synack_retransmits_off: bool,
    #[arg(
        long = "collector.synack_retransmits",
        overrides_with_all = ["synack_retransmits_off", "synack_retransmits_on"],
        hide = true
    )]
    synack_retransmits_on: bool,
}

impl CollectorFlags {
    /// The parts these flags leave on (an overridden flag reads as not given).
    pub fn collectors(&self) -> Collectors {
        Collectors {
            sockdiag: !self.sockdiag_off,
            netstat: !self.netstat_off,
            resets: !self.resets_off,
            synack_retransmits: !self.synack_retransmits_off,
        }
    }
}
