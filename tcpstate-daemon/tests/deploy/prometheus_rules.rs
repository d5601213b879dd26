//! The Prometheus rules: promtool's checks and unit tests pass, and every alert has a runbook and
//! tests where it fires and where it must not.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::files::deploy_directory;
use crate::{files_ending, promtool, read};

#[test]
fn prometheus_rules_pass_promtool_checks_and_unit_tests() {
    let directory = deploy_directory().join("prometheus");
    let rules = files_ending(&directory, ".rules.yml");
    let mut check = vec!["check", "rules"];
    check.extend(rules.iter().map(String::as_str));
    promtool(&check, &directory);

    let tests_directory = directory.join("tests");
    let tests = files_ending(&tests_directory, ".test.yml");
    let mut test = vec!["test", "rules"];
    test.extend(tests.iter().map(String::as_str));
    let output = promtool(&test, &tests_directory);
    assert!(!output.contains("FAILED"), "{output}");

    promtool(&["check", "config", "prometheus.example.yml"], &directory);
}

/// `- alert: Name` blocks of a rule file: name -> the block's text.
fn alert_blocks(text: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let starts_rule = trimmed.starts_with("- alert:") || trimmed.starts_with("- record:");
        if starts_rule && let Some((name, block)) = current.take() {
            blocks.insert(name, block);
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            current = Some((name.trim().to_owned(), String::new()));
        }
        if let Some((_, block)) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    if let Some((name, block)) = current {
        blocks.insert(name, block);
    }
    blocks
}

#[test]
fn every_alert_has_a_runbook_and_tests_where_it_fires_and_where_it_must_not() {
    let directory = deploy_directory().join("prometheus");
    let mut alerts = BTreeMap::new();
    for file in files_ending(&directory, ".rules.yml") {
        alerts.extend(alert_blocks(&read(&directory.join(file))));
    }
    assert!(alerts.len() >= 8, "{:?}", alerts.keys());
    for (name, block) in &alerts {
        assert!(
            name.starts_with("Tcpstate"),
            "{name}: alerts are named Tcpstate*"
        );
        for annotation in ["summary:", "description:", "runbook:", "severity:"] {
            assert!(block.contains(annotation), "{name} has no {annotation}");
        }
        let runbook = block.split("runbook:").nth(1).unwrap_or_default();
        assert!(
            runbook.contains("Cause") && runbook.contains("First steps"),
            "{name}'s runbook says the cause and the first steps"
        );
    }

    // In the unit tests: for each alert, an `alertname:` followed by an empty `exp_alerts: []`
    // (must not fire) and one followed by expected alerts (fires).
    let tests_directory = directory.join("tests");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in files_ending(&tests_directory, ".test.yml") {
        let text = read(&tests_directory.join(file));
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(name) = line.trim().strip_prefix("alertname:") else {
                continue;
            };
            let name = name.trim().to_owned();
            let Some(expected) = lines.peek().map(|line| line.trim()) else {
                continue;
            };
            if expected == "exp_alerts: []" {
                quiet.insert(name);
            } else if expected == "exp_alerts:" {
                fires.insert(name);
            }
        }
    }
    for name in alerts.keys() {
        assert!(fires.contains(name), "no unit test where {name} fires");
        assert!(
            quiet.contains(name),
            "no unit test where {name} must not fire"
        );
    }
}
