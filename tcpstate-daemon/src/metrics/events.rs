//! Events other than state changes: connect failures by reason, resets by the socket's state,
//! SYN-ACK retransmits. The label values known in advance (reasons, families, the states a
//! reset can hit, the configured ports and `other`) are exported as 0 before any event, so that
//! `increase(...) > 0` tells a quiet host from a broken exporter and panels show 0, not "No data".

use std::collections::BTreeMap;

use prometheus::proto::{Metric, MetricFamily, MetricType};
use tcpstate_common::{OTHER_PORT, TcpState};

use super::{CollectorConfig, Family, Figures, Scrape, counter_metric, pairs};
use crate::{
    labels,
    model::{StateKey, connect_failure_reason},
    workload::Workload,
};

pub(super) const CONNECT_FAILURES: Family = Family {
    name: "tcpstate_connect_failures_total",
    help: "Client connects that ended SYN_SENT -> CLOSE, by reason: refused (RST to the SYN), \
           timeout (SYN retransmissions exhausted), reset, other (unreachable, aborted).",
    kind: MetricType::COUNTER,
    labels: &["reason", "family", "port"],
};

pub(super) const RESETS_SENT: Family = Family {
    name: "tcpstate_resets_sent_total",
    help: "Resets sent, by the state of the socket that sent them.",
    kind: MetricType::COUNTER,
    labels: &["state", "family", "role", "port"],
};

pub(super) const RESETS_RECEIVED: Family = Family {
    name: "tcpstate_resets_received_total",
    help: "Resets received, by the state of the socket that received them.",
    kind: MetricType::COUNTER,
    labels: &["state", "family", "role", "port"],
};

pub(super) const SYNACK_RETRANSMITS: Family = Family {
    name: "tcpstate_synack_retransmits_total",
    help: "SYN-ACKs retransmitted by listeners because the handshake's final ACK did not come.",
    kind: MetricType::COUNTER,
    labels: &["family", "port"],
};

pub(super) const FAMILIES: [&Family; 4] = [
    &CONNECT_FAILURES,
    &RESETS_SENT,
    &RESETS_RECEIVED,
    &SYNACK_RETRANSMITS,
];

/// The reasons of `tcpstate_connect_failures_total`.
const CONNECT_FAILURE_REASONS: [&str; 4] = ["refused", "timeout", "reset", "other"];

const FAMILY_VALUES: [&str; 2] = ["ipv4", "ipv6"];

/// The (role, state) pairs whose resets are exported as 0 before the first: a client's from
/// SYN_SENT on (a refused connect is a reset received in SYN_SENT), a server's from ESTABLISHED
/// on, through the closing states (an abort counts in the state it left). Resets of listeners,
/// request and timewait sockets (role `unknown`) appear when they happen.
const RESET_STATES: [(&str, TcpState); 13] = {
    use TcpState::*;
    [
        ("client", SynSent),
        ("client", Established),
        ("client", FinWait1),
        ("client", FinWait2),
        ("client", CloseWait),
        ("client", Closing),
        ("client", LastAck),
        ("server", Established),
        ("server", FinWait1),
        ("server", FinWait2),
        ("server", CloseWait),
        ("server", Closing),
        ("server", LastAck),
    ]
};

/// A series' label values, its workload's last (empty when workloads are not labelled).
type Series = (Vec<(&'static str, String)>, Vec<(String, String)>);

pub(super) fn families(
    _: &Scrape<'_>,
    figures: &Figures,
    config: &CollectorConfig,
) -> Vec<MetricFamily> {
    let ports = port_values(&config.service_ports);
    let host = host_pairs(figures);
    let mut families = vec![CONNECT_FAILURES.with(connect_failures(figures, &ports, &host))];
    // A part turned off has no program to count: no family, not zeros.
    if config.collectors.resets {
        let events = &figures.events;
        families.push(RESETS_SENT.with(resets(figures, &events.resets_sent, &ports, &host)));
        let received = resets(figures, &events.resets_received, &ports, &host);
        families.push(RESETS_RECEIVED.with(received));
    }
    if config.collectors.synack_retransmits {
        families.push(SYNACK_RETRANSMITS.with(synack_retransmits(figures, &ports, &host)));
    }
    families
}

/// The `port` values known in advance: the configured ports, and `other`.
fn port_values(service_ports: &[u16]) -> Vec<String> {
    let mut ports: Vec<String> = service_ports
        .iter()
        .map(|port| labels::port(*port))
        .collect();
    ports.push(labels::port(OTHER_PORT));
    ports.dedup();
    ports
}

/// The workload labels the zeros carry: the host's, when workloads are labelled (the figures
/// of sockets no workload owns), else none.
fn host_pairs(figures: &Figures) -> Vec<(String, String)> {
    if figures.workloads.is_none() {
        return Vec::new();
    }
    let host = Workload::host();
    vec![
        ("namespace".into(), host.namespace),
        ("pod".into(), host.pod),
        ("container".into(), host.container),
    ]
}

fn owner_pairs(figures: &Figures, owner: u32) -> Vec<(String, String)> {
    figures
        .workload_pairs(owner)
        .into_iter()
        .map(|pair| (pair.name().to_owned(), pair.value().to_owned()))
        .collect()
}

fn metrics(series: BTreeMap<Series, u64>) -> Vec<Metric> {
    series
        .into_iter()
        .map(|((labels, owner), count)| {
            let mut all: Vec<(&str, &str)> = labels
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            all.extend(
                owner
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            );
            counter_metric(pairs(&all), count as f64)
        })
        .collect()
}

/// By reason, family and port (the role is always the client's), and workload if labelled.
fn connect_failures(figures: &Figures, ports: &[String], host: &[(String, String)]) -> Vec<Metric> {
    let series = |reason: &str, family: &str, port: String| {
        vec![
            ("reason", reason.to_owned()),
            ("family", family.to_owned()),
            ("port", port),
        ]
    };
    let mut merged = BTreeMap::<Series, u64>::new();
    for reason in CONNECT_FAILURE_REASONS {
        for family in FAMILY_VALUES {
            for port in ports {
                merged.insert((series(reason, family, port.clone()), host.to_vec()), 0);
            }
        }
    }
    for (key, count) in &figures.connect_failures {
        let labels = series(
            connect_failure_reason(key.detail),
            labels::family(key.labels.family),
            labels::port(key.labels.port),
        );
        *merged
            .entry((labels, owner_pairs(figures, key.labels.cgroup)))
            .or_default() += count;
    }
    metrics(merged)
}

fn resets(
    figures: &Figures,
    by_state: &BTreeMap<StateKey, u64>,
    ports: &[String],
    host: &[(String, String)],
) -> Vec<Metric> {
    let series = |state: &str, family: &str, role: &str, port: String| {
        vec![
            ("state", state.to_owned()),
            ("family", family.to_owned()),
            ("role", role.to_owned()),
            ("port", port),
        ]
    };
    let mut merged = BTreeMap::<Series, u64>::new();
    for (role, state) in RESET_STATES {
        for family in FAMILY_VALUES {
            for port in ports {
                let labels = series(state.name(), family, role, port.clone());
                merged.insert((labels, host.to_vec()), 0);
            }
        }
    }
    for (key, count) in by_state {
        let Some(state) = labels::state(key.state) else {
            continue;
        };
        let labels = series(
            state,
            labels::family(key.labels.family),
            labels::role(key.labels.role),
            labels::port(key.labels.port),
        );
        *merged
            .entry((labels, owner_pairs(figures, key.labels.cgroup)))
            .or_default() += count;
    }
    metrics(merged)
}

/// By the listener's family and port, and workload if labelled.
fn synack_retransmits(
    figures: &Figures,
    ports: &[String],
    host: &[(String, String)],
) -> Vec<Metric> {
    let series = |family: &str, port: String| vec![("family", family.to_owned()), ("port", port)];
    let mut merged = BTreeMap::<Series, u64>::new();
    for family in FAMILY_VALUES {
        for port in ports {
            merged.insert((series(family, port.clone()), host.to_vec()), 0);
        }
    }
    for (listener, count) in &figures.events.synack_retransmits {
        let labels = series(labels::family(listener.family), labels::port(listener.port));
        *merged
            .entry((labels, owner_pairs(figures, listener.cgroup)))
            .or_default() += count;
    }
    metrics(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_values_give_a_bounded_number_of_zeros() {
        // Per port value: 4 reasons x 2 families, 13 (role, state) x 2 families x 2
        // directions, 2 families.
        let per_port = 4 * 2 + RESET_STATES.len() * 2 * 2 + 2;
        assert_eq!(per_port, 62);
        assert_eq!(port_values(&[]), ["other"]);
        let ten: Vec<u16> = (8000..8010).collect();
        assert_eq!(port_values(&ten).len() * per_port, 682);
    }
}
