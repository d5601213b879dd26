//! Figures of the daemon's network namespace the kernel keeps outside any tracepoint: the
//! listen-queue counters of /proc/net/netstat (`TcpExt`), and the ephemeral port range.

use std::collections::HashMap;

pub const PATH: &str = "/proc/net/netstat";

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

/// Parses the file's header/value line pairs; missing fields read as 0.
pub fn parse(text: &str) -> ListenCounters {
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
    ListenCounters {
        overflows: fields.get("ListenOverflows").copied().unwrap_or(0),
        drops: fields.get("ListenDrops").copied().unwrap_or(0),
        timewait_overflows: fields.get("TCPTimeWaitOverflow").copied().unwrap_or(0),
    }
}

pub fn read() -> std::io::Result<ListenCounters> {
    Ok(parse(&std::fs::read_to_string(PATH)?))
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

pub fn read_port_range() -> Option<(u16, u16)> {
    parse_port_range(&std::fs::read_to_string(PORT_RANGE_PATH).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcpext_fields() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeWaitOverflow\n\
                    TcpExt: 0 12 15 7\nIpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(
            parse(text),
            ListenCounters {
                overflows: 12,
                drops: 15,
                timewait_overflows: 7
            }
        );
        assert_eq!(parse("garbage\n"), ListenCounters::default());
        assert!(read().is_ok());
    }

    #[test]
    fn reads_the_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        assert!(read_port_range().is_some());
    }
}
