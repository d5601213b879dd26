//! Every metric and label the dashboard and the rules use is one tcpstated really exports.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use socket2::SockRef;

use crate::support::{
    Daemon, Exposition, eventually,
    files::{dashboard_path, deploy_directory, rule_files},
    json::{self, items, walk},
    promql,
};
use crate::{
    CONNECT_FAILURE_REASONS, FAMILIES, LOOPBACK, ROLES, STATES, WAIT, close_wait_server,
    connect_and_close, listener_deferring_accept, refused_connect,
};

// ---- Every name the dashboard and the rules use is exported ---------------------------------

/// The `expr` of every rule of a rule file, with the rule's name: (name, is a recording, expr).
/// Reads the block scalars of our rule files (`expr: |` and indented lines, or one line);
/// Prometheus itself parses them in the end-to-end test.
fn rule_expressions(text: &str) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let mut name: Option<(String, bool)> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(record) = trimmed.strip_prefix("- record:") {
            name = Some((record.trim().to_owned(), true));
        } else if let Some(alert) = trimmed.strip_prefix("- alert:") {
            name = Some((alert.trim().to_owned(), false));
        } else if let Some(expression) = trimmed.strip_prefix("expr:") {
            let indent = line.len() - trimmed.len();
            let mut expression = expression.trim().to_owned();
            if expression == "|" || expression == ">" {
                expression.clear();
                while let Some(next) = lines.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    expression.push_str(next.trim());
                    expression.push('\n');
                    lines.next();
                }
            }
            let (rule, recording) = name.take().expect("expr after record: or alert:");
            out.push((rule, recording, expression));
        }
    }
    out
}

/// Label names and values of every series of one scrape: metric -> label -> values.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn exported(scrape: &Exposition) -> Exported {
    let mut out = Exported::new();
    for (series, _) in scrape.samples() {
        let entry = out.entry(series.name.clone()).or_default();
        for (label, value) in &series.labels {
            entry
                .entry(label.clone())
                .or_default()
                .insert(value.clone());
        }
        // Prometheus adds the target's labels to every series.
        for target_label in ["instance", "job"] {
            entry.entry(target_label.to_owned()).or_default();
        }
    }
    // Prometheus' own series for each target.
    out.insert(
        "up".into(),
        BTreeMap::from([
            ("instance".into(), BTreeSet::new()),
            ("job".into(), BTreeSet::new()),
        ]),
    );
    out
}

/// The label values a matcher may name: the contract's for states, roles, families and
/// connect-failure reasons, else those seen in the scrape.
fn allowed_values(exported: &Exported, metric: &str, label: &str) -> Option<BTreeSet<String>> {
    let contract: Option<&[&str]> = match label {
        "state" | "from" | "to" | "next" => Some(&STATES),
        "role" => Some(&ROLES),
        "family" => Some(&FAMILIES),
        "reason" if metric.starts_with("tcpstate_connect_failures") => {
            Some(&CONNECT_FAILURE_REASONS)
        }
        _ => None,
    };
    if let Some(values) = contract {
        return Some(values.iter().map(|value| value.to_string()).collect());
    }
    match label {
        "reason" | "map" | "program" => exported.get(metric)?.get(label).cloned(),
        _ => None,
    }
}

/// What is wrong with the names `expression` uses (empty: nothing).
fn check_names(
    context: &str,
    expression: &str,
    exported: &Exported,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let usage = match promql::analyze(&promql::expand_grafana_macros(expression)) {
        Ok(usage) => usage,
        Err(error) => return vec![format!("{context}: {error}")],
    };
    let mut labels_in_scope: BTreeSet<String> = ["instance", "job", "le"].map(String::from).into();
    for selector in &usage.selectors {
        let metric = selector.metric.as_str();
        if recorded.contains(metric) {
            // A recording rule's output: its labels are those of the metrics it reads.
            labels_in_scope.extend(exported.values().flat_map(|labels| labels.keys().cloned()));
            continue;
        }
        let Some(labels) = exported.get(metric) else {
            problems.push(format!("{context}: metric {metric} is not exported"));
            continue;
        };
        labels_in_scope.extend(labels.keys().cloned());
        for matcher in &selector.matchers {
            if !labels.contains_key(&matcher.label) {
                problems.push(format!(
                    "{context}: {metric} has no label {}",
                    matcher.label
                ));
                continue;
            }
            let Some(allowed) = allowed_values(exported, metric, &matcher.label) else {
                continue;
            };
            // Plain values and alternations of plain values (`a|b`) must be known values.
            let values: Vec<&str> = match matcher.operator.as_str() {
                "=" | "!=" => vec![matcher.value.as_str()],
                _ => matcher.value.split('|').collect(),
            };
            for value in values {
                let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain && !value.is_empty() && !allowed.contains(value) {
                    problems.push(format!(
                        "{context}: {metric}{{{}{}\"{value}\"}}: no such value",
                        matcher.label, matcher.operator
                    ));
                }
            }
        }
    }
    for label in &usage.grouping_labels {
        if !labels_in_scope.contains(label) {
            problems.push(format!(
                "{context}: groups by {label}, which no metric of it has"
            ));
        }
    }
    problems
}

/// `label_values(metric{...}, label)` of a Grafana variable as PromQL naming the label.
fn variable_query_as_promql(query: &str) -> Option<String> {
    let inner = query.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("sum by ({}) ({})", label.trim(), selector.trim()))
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn dashboard_and_rules_use_only_metrics_and_labels_the_daemon_exports() {
    let (port, refused, deferred) = (24201, 24202, 24203);
    // With --workloads: the dashboard and the rules may use the workload labels too.
    let ports = format!("--port={port},{refused},{deferred}");
    let daemon = Daemon::start(&[&ports, "--workloads"]);
    // Traffic that makes every family of series appear: a connection with its durations, a
    // listener, a refused connect, a SYN-ACK retransmitted, a connection aborted by an RST.
    let label = port.to_string();
    let listener = TcpListener::bind((LOOPBACK, port)).unwrap();
    let server = close_wait_server(listener, 1, Duration::from_millis(10), WAIT);
    connect_and_close(port);
    assert_eq!(server.join().unwrap(), 1);
    refused_connect(refused);

    let deferring = listener_deferring_accept(deferred);
    let mut client = TcpStream::connect((LOOPBACK, deferred)).unwrap();
    let mut scrape = daemon.scrape();
    assert!(
        eventually(WAIT, || {
            scrape = daemon.scrape();
            scrape.sum(
                "tcpstate_synack_retransmits_total",
                &[("port", &deferred.to_string())],
            ) >= 1.0
        }),
        "a SYN-ACK retransmitted within {WAIT:?}"
    );
    client.write_all(b"data").unwrap();
    let (_server, _) = deferring.accept().unwrap();
    SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);

    assert!(
        eventually(WAIT, || {
            scrape = daemon.scrape();
            scrape.sum(
                "tcpstate_transitions_total",
                &[("port", &label), ("from", "LAST_ACK"), ("to", "CLOSE")],
            ) == 1.0
                && scrape.sum(
                    "tcpstate_resets_sent_total",
                    &[("port", &deferred.to_string())],
                ) >= 1.0
        }),
        "the traffic is in /metrics"
    );
    let exported = exported(&scrape);

    // The rules, cross-checked with promtool's count so no rule escapes the reader.
    let rules_directory = deploy_directory().join("prometheus");
    let mut expressions = Vec::new();
    for file in rule_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let found = rule_expressions(&text);
        let check = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("promtool");
        let report = String::from_utf8_lossy(&check.stdout);
        let counted: usize = report
            .split("SUCCESS: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("promtool check rules: {report}"));
        assert_eq!(found.len(), counted, "rules read from {}", file.display());
        let name = file
            .strip_prefix(&rules_directory)
            .unwrap()
            .display()
            .to_string();
        expressions.extend(found.into_iter().map(|(rule, recording, expression)| {
            (format!("{name}: {rule}"), recording, rule, expression)
        }));
    }
    let recorded: BTreeSet<String> = expressions
        .iter()
        .filter(|(_, recording, _, _)| *recording)
        .map(|(_, _, rule, _)| rule.clone())
        .collect();

    let dashboard =
        json::parse_strict(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for value in walk(&dashboard) {
        if let Some(expression) = value["expr"].as_str() {
            let title = items(&dashboard["panels"])
                .iter()
                .find(|panel| walk(panel).iter().any(|inner| std::ptr::eq(*inner, value)))
                .and_then(|panel| panel["title"].as_str())
                .unwrap_or("?");
            queries.push((format!("dashboard: {title}"), expression.to_owned()));
        }
    }
    for variable in items(&dashboard["templating"]["list"]) {
        if let Some(query) = variable["definition"].as_str() {
            let name = variable["name"].as_str().unwrap_or("?");
            let expression = variable_query_as_promql(query)
                .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {query}"));
            queries.push((format!("dashboard variable {name}"), expression));
        }
    }
    assert!(queries.len() >= 20, "{} dashboard queries", queries.len());

    let mut problems = Vec::new();
    for (context, _, _, expression) in &expressions {
        problems.extend(check_names(context, expression, &exported, &recorded));
    }
    for (context, expression) in &queries {
        problems.extend(check_names(context, expression, &exported, &recorded));
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "names the daemon does not export:\n{}",
        problems.join("\n")
    );
}
