//! Scraping tcpstated: a minimal HTTP GET (no client dependency) and just enough of the text
//! exposition format to read the samples back.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::expect::EdgeCounts;

/// An HTTP/1.0 GET: status code and body.
pub fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn scrape(address: SocketAddr) -> anyhow::Result<Samples> {
    Ok(Samples::parse(&scrape_text(address)?))
}

/// The exposition text of one scrape (what the scrape latency times: parsing it is ours).
pub fn scrape_text(address: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = http_get(address, "/metrics")?;
    if status != 200 {
        bail!("scraping http://{address}/metrics answered {status}: {body}");
    }
    Ok(body)
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

/// `a="x",b="y"` (without braces) to a map. Label values here never hold quotes or commas.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((
                name.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

impl Samples {
    pub fn parse(text: &str) -> Samples {
        Samples(
            text.lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    let (name, labels) = match series.split_once('{') {
                        Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                        None => (series, BTreeMap::new()),
                    };
                    Some(Sample {
                        name: name.to_owned(),
                        labels,
                        value: value.parse().ok()?,
                    })
                })
                .collect(),
        )
    }

    /// Sum of `name`'s samples whose labels include all of `labels`; `None` if there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .0
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels.iter().all(|(label, value)| {
                        sample.labels.get(*label).map(String::as_str) == Some(*value)
                    })
            })
            .peekable();
        matching.peek()?;
        Some(matching.map(|sample| sample.value).sum())
    }

    /// `tcpstate_transitions_total` for `port`, IPv4, by (role, from, to).
    pub fn transitions_for_port(&self, port: u16) -> EdgeCounts {
        let port = port.to_string();
        let mut counts = EdgeCounts::new();
        for sample in &self.0 {
            let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
            if sample.name == "tcpstate_transitions_total"
                && label("port") == port
                && label("family") == "ipv4"
            {
                *counts
                    .entry((label("role"), label("from"), label("to")))
                    .or_default() += sample.value as u64;
            }
        }
        counts
    }

    /// `tcpstate_recording_failures_total` by reason.
    pub fn recording_failures(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter(|sample| sample.name == "tcpstate_recording_failures_total")
            .map(|sample| {
                let reason = sample.labels.get("reason").cloned().unwrap_or_default();
                (reason, sample.value as u64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP tcpstate_transitions_total State transitions.
# TYPE tcpstate_transitions_total counter
tcpstate_transitions_total{from=\"CLOSE\",to=\"SYN_SENT\",family=\"ipv4\",role=\"client\",port=\"28080\"} 812345
tcpstate_transitions_total{from=\"CLOSE\",to=\"SYN_SENT\",family=\"ipv6\",role=\"client\",port=\"28080\"} 7
tcpstate_transitions_total{from=\"CLOSE\",to=\"SYN_SENT\",family=\"ipv4\",role=\"client\",port=\"other\"} 3
tcpstate_recording_failures_total{reason=\"event_lost\"} 0
tcpstate_recording_failures_total{reason=\"out_of_sequence\"} 2
tcpstate_tracked_sockets 2000
process_resident_memory_bytes 1.2e7
";

    #[test]
    fn transitions_of_one_port_and_family_by_edge() {
        let counts = Samples::parse(EXPOSITION).transitions_for_port(28080);
        let edge = (
            "client".to_owned(),
            "CLOSE".to_owned(),
            "SYN_SENT".to_owned(),
        );
        assert_eq!(counts, EdgeCounts::from([(edge, 812345)]));
    }

    #[test]
    fn every_failure_reason_is_read() {
        let failures = Samples::parse(EXPOSITION).recording_failures();
        assert_eq!(failures.get("out_of_sequence"), Some(&2));
        assert_eq!(failures.get("event_lost"), Some(&0));
    }

    #[test]
    fn unlabelled_samples_and_exponents_parse() {
        let samples = Samples::parse(EXPOSITION);
        assert_eq!(samples.sum("tcpstate_tracked_sockets", &[]), Some(2000.0));
        assert_eq!(
            samples.sum("process_resident_memory_bytes", &[]),
            Some(1.2e7)
        );
        assert_eq!(samples.sum("no_such_metric", &[]), None);
    }
}
