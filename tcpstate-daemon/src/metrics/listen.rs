//! Listeners: their accept queues (sock_diag, at the last poll) and the listen overflow and
//! drop counters (`TcpExt`), each summed over the host's network namespaces.

use std::collections::BTreeMap;

use prometheus::proto::{Metric, MetricFamily, MetricType};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, gauge_metric, pairs};
use crate::{labels, sockets::census::ListenQueue};

pub(super) const LISTEN_QUEUE_LENGTH: Family = Family {
    name: "tcpstate_listen_queue_length",
    help: "Connections waiting in listeners' accept queues (sock_diag, at the last poll).",
    kind: MetricType::GAUGE,
    labels: &["port"],
};

pub(super) const LISTEN_QUEUE_LIMIT: Family = Family {
    name: "tcpstate_listen_queue_limit",
    help: "Listeners' accept queue limits (the listen() backlog, capped by net.core.somaxconn).",
    kind: MetricType::GAUGE,
    labels: &["port"],
};

pub(super) const LISTEN_OVERFLOWS: Family = Family {
    name: "tcpstate_listen_overflows_total",
    help: "Handshakes completed while the accept queue was full (TcpExt ListenOverflows, summed \
           over the host's network namespaces polled).",
    kind: MetricType::COUNTER,
    labels: &[],
};

pub(super) const LISTEN_DROPS: Family = Family {
    name: "tcpstate_listen_drops_total",
    help: "SYNs and handshake ACKs dropped by listeners, overflows included (TcpExt ListenDrops \
           summed over the host's network namespaces polled).",
    kind: MetricType::COUNTER,
    labels: &[],
};

pub(super) const FAMILIES: [&Family; 4] = [
    &LISTEN_QUEUE_LENGTH,
    &LISTEN_QUEUE_LIMIT,
    &LISTEN_OVERFLOWS,
    &LISTEN_DROPS,
];

pub(super) fn families(
    scrape: &Scrape<'_>,
    _: &Figures,
    config: &CollectorConfig,
) -> Vec<MetricFamily> {
    let queues = |value: fn(&ListenQueue) -> u64| -> Vec<Metric> {
        let Some(census) = scrape.census.filter(|_| config.collectors.sockdiag) else {
            return Vec::new();
        };
        // The census keeps queues by port and owner; this family is by port.
        let mut by_port = BTreeMap::<u16, u64>::new();
        for (key, queue) in census.listen_queues() {
            *by_port.entry(key.port).or_default() += value(queue);
        }
        by_port
            .into_iter()
            .map(|(port, total)| {
                gauge_metric(pairs(&[("port", &labels::port(port))]), total as f64)
            })
            .collect()
    };
    let mut families = vec![
        LISTEN_QUEUE_LENGTH.with(queues(|q| q.length)),
        LISTEN_QUEUE_LIMIT.with(queues(|q| q.limit)),
    ];
    if let Some(netstat) = scrape.netstat {
        families
            .push(LISTEN_OVERFLOWS.with(vec![counter_metric(vec![], netstat.overflows as f64)]));
        families.push(LISTEN_DROPS.with(vec![counter_metric(vec![], netstat.drops as f64)]));
    }
    families
}
