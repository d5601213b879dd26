//! Figures of the host's network namespaces: for the TIME_WAIT alerts, timewait sockets the
//! kernel refused (`TCPTimeWaitOverflow`, summed) and the narrowest ephemeral port range; and
//! how many namespaces the polls cover.

use prometheus::proto::{MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, gauge_metric, pairs};

pub(super) const TIMEWAIT_OVERFLOWS: Family = Family {
    name: "tcpstate_timewait_overflows_total",
    help: "Connections that closed without a timewait socket because net.ipv4.tcp_max_tw_buckets \
           was reached (TcpExt TCPTimeWaitOverflow, summed over the network namespaces polled, \
           those gone included).",
    kind: MetricType::COUNTER,
    labels: &[],
};

pub(super) const EPHEMERAL_PORTS: Family = Family {
    name: "tcpstate_ephemeral_ports",
    help: "Bounds of the ephemeral port range connect() draws local ports from \
           (net.ipv4.ip_local_port_range: the narrowest of the network namespaces polled).",
    kind: MetricType::GAUGE,
    labels: &["bound"],
};

pub(super) const NETWORK_NAMESPACES: Family = Family {
    name: "tcpstate_network_namespaces",
    help: "Network namespaces of the host the sock_diag polls know, by status: polled, or \
           unreadable (could not be entered at its last visit; the log says why).",
    kind: MetricType::GAUGE,
    labels: &["status"],
};

pub(super) const FAMILIES: [&Family; 3] =
    [&TIMEWAIT_OVERFLOWS, &EPHEMERAL_PORTS, &NETWORK_NAMESPACES];

pub(super) fn families(
    scrape: &Scrape<'_>,
    _: &Figures,
    config: &CollectorConfig,
) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    if let Some(netstat) = scrape.netstat {
        let overflows = netstat.timewait_overflows as f64;
        families.push(TIMEWAIT_OVERFLOWS.with(vec![counter_metric(vec![], overflows)]));
    }
    if let Some((low, high)) = scrape.port_range {
        let bound = |name, value: u16| gauge_metric(pairs(&[("bound", name)]), value.into());
        families.push(EPHEMERAL_PORTS.with(vec![bound("low", low), bound("high", high)]));
    }
    if let Some(census) = scrape.census.filter(|_| config.collectors.sockdiag) {
        let unreadable = census.unreadable_namespaces();
        let status = |name, count: usize| gauge_metric(pairs(&[("status", name)]), count as f64);
        families.push(NETWORK_NAMESPACES.with(vec![
            status("polled", census.namespaces().saturating_sub(unreadable)),
            status("unreadable", unreadable),
        ]));
    }
    families
}
