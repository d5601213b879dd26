//! The Prometheus text exposition format (version 0.0.4), read back into samples: what a scrape
//! of `tcpstated` exposes, and the figures the tests and the benchmark take from it.
//!
//! A small parser of our own rather than `prometheus-parse`: that crate splits label pairs on
//! `,` and `=` (a label value holding either is misread), keeps no escapes, folds histogram
//! buckets into one value (the tests read `_bucket{le=...}` series one by one) and brings chrono
//! and regex along. This one reads what the format allows (escaped label values, `+Inf`/`NaN`,
//! timestamps) and rejects a malformed line with its number.

use std::{collections::BTreeMap, fmt};

/// A metric name and its labels: one series of a scrape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Series {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Whether this series is of metric `name` and has every pair of `labels` among its own.
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(label, value)| self.label(label) == Some(*value))
    }
}

/// As exposed: `name{label="value",...}`, labels in name order, values escaped.
impl fmt::Display for Series {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        formatter.write_str("{")?;
        for (index, (label, value)) in self.labels.iter().enumerate() {
            let separator = if index == 0 { "" } else { "," };
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            write!(formatter, "{separator}{label}=\"{escaped}\"")?;
        }
        formatter.write_str("}")
    }
}

/// `(role, from, to)` of `tcpstate_transitions_total`.
pub type Edge = (String, String, String);

/// Transition counts by edge.
pub type TransitionCounts = BTreeMap<Edge, u64>;

/// A line of the exposition that is not a sample, a comment or blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the exposition: {problem}: {text}")]
pub struct ParseError {
    /// From 1.
    pub line: usize,
    pub problem: &'static str,
    pub text: String,
}

/// The samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: BTreeMap<Series, f64>,
}

impl Exposition {
    pub fn parse(text: &str) -> Result<Exposition, ParseError> {
        let mut samples = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |problem| ParseError {
                line: index + 1,
                problem,
                text: line.to_owned(),
            };
            let (series, value) = parse_sample(line).map_err(error)?;
            if samples.insert(series, value).is_some() {
                return Err(error("the same series twice"));
            }
        }
        Ok(Exposition { samples })
    }

    /// Every sample, ordered by series.
    pub fn samples(&self) -> impl Iterator<Item = (&Series, f64)> {
        self.samples.iter().map(|(series, value)| (series, *value))
    }

    /// The value of one exact series.
    pub fn value(&self, series: &Series) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// Sum of the samples of `name` whose labels include every pair of `labels`; `None` when
    /// there is none.
    pub fn sum_if_any(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .samples()
            .filter(|(series, _)| series.matches(name, labels))
            .map(|(_, value)| value)
            .peekable();
        matching.peek()?;
        Some(matching.sum())
    }

    /// As [`Exposition::sum_if_any`], 0 when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum_if_any(name, labels).unwrap_or(0.0)
    }

    /// How much `name{labels}` grew since `before`.
    pub fn delta(&self, before: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels) - before.sum(name, labels)
    }

    /// `tcpstate_transitions_total` of the series with every pair of `labels` (a port, a
    /// family), by edge.
    pub fn transitions(&self, labels: &[(&str, &str)]) -> TransitionCounts {
        let mut counts = TransitionCounts::new();
        for (series, value) in self.samples() {
            if series.matches("tcpstate_transitions_total", labels) {
                let label = |name| series.label(name).unwrap_or_default().to_owned();
                *counts
                    .entry((label("role"), label("from"), label("to")))
                    .or_default() += value as u64;
            }
        }
        counts
    }

    /// `tcpstate_recording_failures_total` by reason.
    pub fn recording_failures(&self) -> BTreeMap<String, u64> {
        self.samples()
            .filter(|(series, _)| series.name == "tcpstate_recording_failures_total")
            .map(|(series, value)| {
                let reason = series.label("reason").unwrap_or_default();
                (reason.to_owned(), value as u64)
            })
            .collect()
    }
}

/// `name{labels} value [timestamp]`.
fn parse_sample(line: &str) -> Result<(Series, f64), &'static str> {
    let name_end = line
        .find(|character: char| character == '{' || character.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(index, character)| {
        character.is_ascii_alphabetic()
            || matches!(character, '_' | ':')
            || (index > 0 && character.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err("not a metric name");
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = BTreeMap::new();
    if let Some(braced) = rest.strip_prefix('{') {
        rest = parse_labels(braced, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or("not a value")?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| "not a timestamp in milliseconds")?;
    }
    if fields.next().is_some() {
        return Err("more after the timestamp");
    }
    let name = name.to_owned();
    Ok((Series { name, labels }, value))
}

/// Reads `label="value",...}` (after the `{`) into `labels`; the text after the `}`.
fn parse_labels<'a>(
    mut text: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, &'static str> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let name_end = text
            .find(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
            .ok_or("unterminated labels")?;
        let name = &text[..name_end];
        if name.is_empty() || name.starts_with(|character: char| character.is_ascii_digit()) {
            return Err("not a label name");
        }
        text = text[name_end..].trim_start();
        text = text.strip_prefix('=').ok_or("no `=` after a label name")?;
        text = text.trim_start();
        text = text
            .strip_prefix('"')
            .ok_or("a label value is not quoted")?;
        let mut value = String::new();
        let mut characters = text.char_indices();
        let after_value = loop {
            match characters.next().ok_or("unterminated label value")? {
                (at, '"') => break at + 1,
                (_, '\\') => match characters.next().ok_or("unterminated label value")?.1 {
                    'n' => value.push('\n'),
                    escaped @ ('\\' | '"') => value.push(escaped),
                    _ => return Err("unknown escape in a label value"),
                },
                (_, character) => value.push(character),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err("the same label twice");
        }
        text = text[after_value..].trim_start();
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err("no `,` or `}` after a label value");
        }
    }
}

/// A sample value: a decimal or exponent number, `+Inf`, `-Inf` or `NaN` (Go's spellings, which
/// Rust's float parser takes too).
fn parse_value(text: &str) -> Option<f64> {
    text.parse().ok()
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

    fn parse(text: &str) -> Exposition {
        Exposition::parse(text).unwrap()
    }

    #[test]
    fn transitions_of_one_port_and_family_by_edge() {
        let counts = parse(EXPOSITION).transitions(&[("port", "28080"), ("family", "ipv4")]);
        let edge = (
            "client".to_owned(),
            "CLOSE".to_owned(),
            "SYN_SENT".to_owned(),
        );
        assert_eq!(counts, TransitionCounts::from([(edge.clone(), 812345)]));
        let both_families = parse(EXPOSITION).transitions(&[("port", "28080")]);
        assert_eq!(both_families, TransitionCounts::from([(edge, 812352)]));
    }

    #[test]
    fn every_failure_reason_is_read() {
        let failures = parse(EXPOSITION).recording_failures();
        assert_eq!(failures.get("out_of_sequence"), Some(&2));
        assert_eq!(failures.get("event_lost"), Some(&0));
    }

    #[test]
    fn unlabelled_samples_and_exponents_parse() {
        let samples = parse(EXPOSITION);
        assert_eq!(
            samples.sum_if_any("tcpstate_tracked_sockets", &[]),
            Some(2000.0)
        );
        assert_eq!(
            samples.sum_if_any("process_resident_memory_bytes", &[]),
            Some(1.2e7)
        );
        assert_eq!(samples.sum_if_any("no_such_metric", &[]), None);
        assert_eq!(samples.sum("no_such_metric", &[]), 0.0);
    }

    #[test]
    fn sums_and_deltas_match_every_given_label() {
        let before = parse(EXPOSITION);
        let after = parse(&EXPOSITION.replace("} 7\n", "} 10\n"));
        let client = [("role", "client"), ("to", "SYN_SENT")];
        assert_eq!(
            after.sum("tcpstate_transitions_total", &client),
            812345.0 + 10.0 + 3.0
        );
        assert_eq!(
            after.delta(&before, "tcpstate_transitions_total", &client),
            3.0
        );
        assert_eq!(
            after.delta(&before, "tcpstate_transitions_total", &[("family", "ipv4")]),
            0.0
        );
    }

    #[test]
    fn escaped_label_values_infinities_and_timestamps_parse() {
        let text = "x_bucket{le=\"+Inf\",path=\"a,b=\\\"c\\\"\\\\\\n\"} +Inf 1700000000000\n\
                    y{a=\"1\",} NaN\n\
                    z -Inf\n\
                    v 2.5e-7\n\
                    w:rate5m { a = \"1\" } 3\n";
        let exposition = parse(text);
        let series: Vec<_> = exposition.samples().map(|(series, _)| series).collect();
        let bucket = series
            .iter()
            .find(|series| series.name == "x_bucket")
            .unwrap();
        assert_eq!(bucket.label("path"), Some("a,b=\"c\"\\\n"));
        assert_eq!(bucket.label("le"), Some("+Inf"));
        assert_eq!(exposition.sum("x_bucket", &[]), f64::INFINITY);
        assert!(exposition.sum("y", &[("a", "1")]).is_nan());
        assert_eq!(exposition.sum("z", &[]), f64::NEG_INFINITY);
        assert_eq!(exposition.sum("v", &[]), 2.5e-7);
        assert_eq!(exposition.sum("w:rate5m", &[("a", "1")]), 3.0);
        // What is read is written back as exposed, and reads the same again.
        let written: String = exposition
            .samples()
            .map(|(series, value)| format!("{series} {value}\n"))
            .collect();
        assert_eq!(
            bucket.to_string(),
            "x_bucket{le=\"+Inf\",path=\"a,b=\\\"c\\\"\\\\\\n\"}"
        );
        assert_eq!(parse(&written).samples().count(), 5);
    }

    #[test]
    fn malformed_lines_are_rejected_with_their_number() {
        for (text, problem) in [
            ("ok 1\nbad{a=\"1\" 2\n", "no `,` or `}` after a label value"),
            ("ok 1\n\nnovalue\n", "no value"),
            ("x{a=1} 1", "a label value is not quoted"),
            ("x{a=\"1\",a=\"2\"} 1", "the same label twice"),
            ("x{a=\"\\t\"} 1", "unknown escape in a label value"),
            ("x 1 2 3", "more after the timestamp"),
            ("x one", "not a value"),
            ("x 0x10", "not a value"),
            ("9x 1", "not a metric name"),
            ("x{a=\"1\"} 1\nx{a=\"1\"} 2", "the same series twice"),
        ] {
            let error = Exposition::parse(text).unwrap_err();
            assert_eq!(error.problem, problem, "{text:?}");
            assert_eq!(error.line, text.lines().count(), "{text:?}");
        }
    }
}
