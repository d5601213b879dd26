//! Figures of a network namespace the kernel keeps outside any tracepoint: the listen-queue
//! counters of its netstat file (`TcpExt`), the ephemeral port range and `tcp_fin_timeout`
//! (how long an orphaned connection's FIN_WAIT2 lasts). All are read for
//! the calling thread's namespace (`/proc/thread-self/net`, and `/proc/sys/net` files, which
//! answer for the namespace of the thread that opens them).

use std::collections::HashMap;

pub const PATH: &str = "/proc/thread-self/net/netstat";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenCounters {
    /// Handshakes completed while the accept queue was full (`ListenOverflows`).
    pub overflows: u64,
    /// SYNs or final ACKs dropped by a listener, overflows included (`ListenDrops`).
    pub drops: u64,
    /// Connections that closed without a timewait socket because `net.ipv4.tcp_max_tw_buckets`
    /// was reached (`TCPTimeWaitOverflow`).
    pub timewait_overflows: u64,
}

impl ListenCounters {
    /// Each counter plus `other`'s.
    pub fn plus(self, other: ListenCounters) -> ListenCounters {
        ListenCounters {
            overflows: self.overflows + other.overflows,
            drops: self.drops + other.drops,
            timewait_overflows: self.timewait_overflows + other.timewait_overflows,
        }
    }

    /// Whether any counter is below `earlier`'s: not the same namespace (an inode reused).
    pub fn went_back(&self, earlier: &ListenCounters) -> bool {
        self.overflows < earlier.overflows
            || self.drops < earlier.drops
            || self.timewait_overflows < earlier.timewait_overflows
    }
}

/// The `TcpExt` counters the daemon reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpExt {
    pub listen: ListenCounters,
    /// SYN and SYN-ACK retransmits (`TCPSynRetrans`): a namespace where it grows has
    /// handshakes waiting, maybe request sockets.
    pub syn_retransmits: u64,
}

/// Parses the file's header/value line pairs; missing fields read as 0.
pub fn parse(text: &str) -> ListenCounters {
    parse_tcp_ext(text).listen
}

/// Parses the file's header/value line pairs; missing fields read as 0.
pub fn parse_tcp_ext(text: &str) -> TcpExt {
    let mut fields = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse::<u64>() {
                fields.insert(name, value);
            }
        }
    }
    let field = |name| fields.get(name).copied().unwrap_or(0);
    TcpExt {
        listen: ListenCounters {
            overflows: field("ListenOverflows"),
            drops: field("ListenDrops"),
            timewait_overflows: field("TCPTimeWaitOverflow"),
        },
        syn_retransmits: field("TCPSynRetrans"),
    }
}

/// The calling thread's namespace's listen counters.
pub fn read() -> std::io::Result<ListenCounters> {
    Ok(read_tcp_ext()?.listen)
}

/// The calling thread's namespace's `TcpExt` counters.
pub fn read_tcp_ext() -> std::io::Result<TcpExt> {
    Ok(parse_tcp_ext(&std::fs::read_to_string(PATH)?))
}

pub const PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `net.ipv4.ip_local_port_range`: the ports connect() picks local ports from (inclusive).
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut bounds = text
        .split_whitespace()
        .map(|bound| bound.parse::<u16>().ok());
    match (bounds.next()??, bounds.next()??) {
        (low, high) if low <= high => Some((low, high)),
        _ => None,
    }
}

/// The calling thread's namespace's port range.
pub fn read_port_range() -> std::io::Result<(u16, u16)> {
    parse_port_range(&std::fs::read_to_string(PORT_RANGE_PATH)?).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{PORT_RANGE_PATH} holds no two ports, low then high"),
        )
    })
}

pub const FIN_TIMEOUT_PATH: &str = "/proc/sys/net/ipv4/tcp_fin_timeout";

/// The calling thread's namespace's `net.ipv4.tcp_fin_timeout`, in seconds.
pub fn read_fin_timeout() -> std::io::Result<u32> {
    let text = std::fs::read_to_string(FIN_TIMEOUT_PATH)?;
    text.trim().parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{FIN_TIMEOUT_PATH} holds no number of seconds: {text:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcpext_fields() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeWaitOverflow \
                    TCPSynRetrans\nTcpExt: 0 12 15 7 4\nIpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(
            parse(text),
            ListenCounters {
                overflows: 12,
                drops: 15,
                timewait_overflows: 7
            }
        );
        assert_eq!(parse_tcp_ext(text).syn_retransmits, 4);
        assert_eq!(parse("garbage\n"), ListenCounters::default());
        assert!(read().is_ok());
    }

    #[test]
    fn reads_the_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        assert!(read_port_range().is_ok());
        assert!(read_fin_timeout().is_ok_and(|seconds| seconds > 0));
    }
}
