//! The operations kit in deploy/, checked without root: the Prometheus rules pass promtool and
//! their unit tests, every alert has a runbook and a test where it fires and one where it does
//! not, the Grafana dashboard parses and is well formed, the systemd unit verifies and is
//! hardened, the Kubernetes manifests keep to capabilities. (tests/operations.rs checks the
//! same files against a real daemon and a real Prometheus, as root.)

mod operations_support;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use operations_support::{deploy_directory, json::Json, promql};

fn promtool(args: &[&str], directory: &Path) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(directory)
        .output()
        .expect(
            "promtool is installed (Debian package prometheus; `cargo xtask setup` installs it)",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn files_ending(directory: &Path, suffix: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{suffix} in {}", directory.display());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

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

/// The panels of a dashboard, rows' nested panels included.
fn all_panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dashboard.get("panels").as_array() {
        out.push(panel);
        out.extend(panel.get("panels").as_array());
    }
    out
}

pub fn dashboard_path() -> PathBuf {
    deploy_directory().join("grafana/tcpstate.json")
}

#[test]
fn grafana_dashboard_parses_and_is_well_formed() {
    let dashboard = Json::parse(&read(&dashboard_path())).expect("the dashboard is valid JSON");
    assert_eq!(dashboard.get("uid").as_str(), Some("tcpstate-overview"));
    assert!(dashboard.get("title").as_str().is_some());

    let variables: BTreeMap<&str, &Json> = dashboard
        .get("templating")
        .get("list")
        .as_array()
        .iter()
        .map(|variable| (variable.get("name").as_str().unwrap(), variable))
        .collect();
    for name in ["datasource", "instance", "port", "role"] {
        assert!(variables.contains_key(name), "no variable {name}");
    }
    assert_eq!(
        variables["datasource"].get("query").as_str(),
        Some("prometheus")
    );

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut queries = 0;
    for panel in all_panels(&dashboard) {
        let title = panel.get("title").as_str().unwrap_or("?");
        let id = panel.get("id").as_f64().expect("panel id");
        assert!(ids.insert(id as u64), "duplicate panel id {id} ({title})");
        let grid = panel.get("gridPos");
        let [x, y, width, height] =
            ["x", "y", "w", "h"].map(|key| grid.get(key).as_f64().expect("gridPos") as u64);
        assert!(x + width <= 24, "{title} is wider than the dashboard");
        for column in x..x + width {
            for row in y..y + height {
                assert!(
                    cells.insert((column, row)),
                    "{title} overlaps another panel"
                );
            }
        }
        if panel.get("type").as_str() == Some("row") {
            continue;
        }
        assert_eq!(
            panel.get("datasource").get("uid").as_str(),
            Some("${datasource}"),
            "{title} uses the datasource variable"
        );
        assert!(
            panel
                .get("description")
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{title} explains itself (description)"
        );
        let targets = panel.get("targets").as_array();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expression = target.get("expr").as_str().expect("expr");
            queries += 1;
            assert!(
                expression.contains("instance=~\"$instance\""),
                "{title}: every query follows the instance variable: {expression}"
            );
            promql::analyze(&promql::expand_grafana_macros(expression))
                .unwrap_or_else(|error| panic!("{title}: {error}: {expression}"));
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

#[test]
fn promql_reader_finds_selectors_and_grouping_labels() {
    let usage = promql::analyze(
        r#"histogram_quantile(0.9, sum without (family) (rate(x_bucket{state="A", port=~"$port"}[5m])))
           / on (instance) group_left () y:z > 2 * (w offset 1d) and bool v # comment w2"#,
    )
    .unwrap();
    let metrics: Vec<&str> = usage.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["x_bucket", "y:z", "w", "v"]);
    assert_eq!(usage.selectors[0].matchers.len(), 2);
    assert_eq!(usage.selectors[0].matchers[1].value, "$port");
    assert_eq!(usage.grouping_labels, ["family", "instance"]);
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read(&deploy_directory().join("systemd/tcpstated.service"));
    let nofile: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("LimitNOFILE="))
        .and_then(|limit| limit.parse().ok())
        .expect("the unit sets LimitNOFILE= to a number");
    assert!(
        nofile > 1024
            && tcpstate_daemon::http::connections_within(
                nofile,
                tcpstate_daemon::config::DEFAULT_MAX_CONNECTIONS
            ) == tcpstate_daemon::config::DEFAULT_MAX_CONNECTIONS,
        "LimitNOFILE={nofile} leaves room for the default connection cap, above systemd's 1024"
    );
    for line in [
        "AmbientCapabilities=CAP_BPF CAP_PERFMON",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    // systemd-analyze checks the unit's syntax and scores its exposure; the ExecStart binary
    // must exist, so the check runs on a copy pointing at the binary under test.
    let directory = operations_support::temporary_directory("systemd");
    let copy = directory.join("tcpstated.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/tcpstated", env!("CARGO_BIN_EXE_tcpstated")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for tcpstated.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (systemd's OK is under 4.0; this unit was 1.6):\n{report}"
    );
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn kubernetes_daemonset_uses_capabilities_not_privileged() {
    let manifest = read(&deploy_directory().join("kubernetes/tcpstated.yaml"));
    let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    for line in [
        "kind: DaemonSet",
        "hostNetwork: true",
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
        "add: [\"BPF\", \"PERFMON\"]",
        "mountPath: /sys/kernel/btf",
        "path: /healthz",
        "prometheus.io/scrape: \"true\"",
    ] {
        assert!(lines.contains(&line), "tcpstated.yaml has `{line}`");
    }
    let btf_mount = manifest
        .split("mountPath: /sys/kernel/btf")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .map(str::trim);
    assert_eq!(btf_mount, Some("readOnly: true"));
    assert!(!manifest.contains("privileged: true"));
    assert!(!manifest.contains("SYS_ADMIN"));
    let monitor = read(&deploy_directory().join("kubernetes/servicemonitor.yaml"));
    assert!(monitor.contains("kind: ServiceMonitor"));
}
