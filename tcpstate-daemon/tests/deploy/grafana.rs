//! The Grafana dashboard parses and is well formed, and the PromQL reader its check relies on.

use std::collections::{BTreeMap, BTreeSet};

use crate::read;
use crate::support::{
    files::dashboard_path,
    json::{self, Value, items},
    promql,
};

/// The panels of a dashboard, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in items(&dashboard["panels"]) {
        out.push(panel);
        out.extend(items(&panel["panels"]));
    }
    out
}

#[test]
fn grafana_dashboard_parses_and_is_well_formed() {
    let dashboard =
        json::parse_strict(&read(&dashboard_path())).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"].as_str(), Some("tcpstate-overview"));
    assert!(dashboard["title"].as_str().is_some());

    let variables: BTreeMap<&str, &Value> = items(&dashboard["templating"]["list"])
        .iter()
        .map(|variable| (variable["name"].as_str().unwrap(), variable))
        .collect();
    for name in ["datasource", "instance", "port", "role"] {
        assert!(variables.contains_key(name), "no variable {name}");
    }
    assert_eq!(
        variables["datasource"]["query"].as_str(),
        Some("prometheus")
    );

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut queries = 0;
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_f64().expect("panel id");
        assert!(ids.insert(id as u64), "duplicate panel id {id} ({title})");
        let grid = &panel["gridPos"];
        let [x, y, width, height] =
            ["x", "y", "w", "h"].map(|key| grid[key].as_f64().expect("gridPos") as u64);
        assert!(x + width <= 24, "{title} is wider than the dashboard");
        for column in x..x + width {
            for row in y..y + height {
                assert!(
                    cells.insert((column, row)),
                    "{title} overlaps another panel"
                );
            }
        }
        if panel["type"].as_str() == Some("row") {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some("${datasource}"),
            "{title} uses the datasource variable"
        );
        assert!(
            panel["description"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{title} explains itself (description)"
        );
        let targets = items(&panel["targets"]);
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expression = target["expr"].as_str().expect("expr");
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
           / on (instance) group_left () y:z > bool 2 * (w offset 1d) and v # comment w2"#,
    )
    .unwrap();
    let metrics: Vec<&str> = usage.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["x_bucket", "y:z", "w", "v"]);
    assert_eq!(usage.selectors[0].matchers.len(), 2);
    assert_eq!(usage.selectors[0].matchers[1].value, "$port");
    assert_eq!(usage.grouping_labels, ["family", "instance"]);
}
