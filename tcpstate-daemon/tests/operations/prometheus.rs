//! A real Prometheus scrapes the daemon while the test makes known traffic, and its queries
//! (transition rates, a quantile of a controlled duration, the alert expressions) give the
//! expected values.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use crate::support::{
    Daemon, ONCE_PER_CLIENT_FIRST_CLOSE, eventually,
    files::rule_files,
    prometheus::{Prometheus, unix_now},
};
use crate::{LOOPBACK, WAIT, close_wait_server, connect_and_close, refused_connect};

// ---- A real Prometheus end to end -----------------------------------------------------------

/// Polls Prometheus (bounded) until `expression` evaluated now gives `want`; returns the time
/// of the evaluation that did.
fn until_value(prometheus: &Prometheus, expression: &str, want: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = unix_now();
        let value = prometheus.value_at(expression, Some(now));
        if value == Some(want) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{expression} is {value:?}, not {want}, after {WAIT:?}:\n{}",
            prometheus.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn one_value(prometheus: &Prometheus, expression: &str, time: Option<f64>) -> f64 {
    prometheus
        .value_at(expression, time)
        .unwrap_or_else(|| panic!("{expression} returned nothing"))
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn prometheus_scrapes_the_daemon_and_the_rules_give_the_expected_values() {
    let (port, refused) = (24221, 24222);
    const CONNECTIONS: usize = 20;
    const REFUSED: usize = 60;
    let hold = Duration::from_millis(300);
    let daemon = Daemon::watching(&[port, refused]);
    let prometheus = Prometheus::start(daemon.address, &rule_files());
    let selector =
        |labels: &str| format!("tcpstate_transitions_total{{port=\"{port}\", {labels}}}");
    let edge = |from: &str, to: &str| {
        format!(
            "sum({})",
            selector(&format!("from=\"{from}\", to=\"{to}\""))
        )
    };
    let refused_edge = format!(
        "sum(tcpstate_transitions_total{{port=\"{refused}\", from=\"SYN_SENT\", to=\"CLOSE\"}})"
    );

    // Warm-up: one connection of each kind makes the series exist, so that Prometheus has a
    // sample before the measured traffic (a counter's first sample is its baseline).
    let listener = TcpListener::bind((LOOPBACK, port)).unwrap();
    let server = close_wait_server(listener, 1 + CONNECTIONS, hold, Duration::from_secs(60));
    connect_and_close(port);
    refused_connect(refused);
    until_value(&prometheus, &edge("CLOSE_WAIT", "LAST_ACK"), 1.0);
    let before = until_value(&prometheus, &refused_edge, 1.0);

    // The measured traffic: 20 connections whose server holds CLOSE_WAIT 300 ms, 60 refused
    // connects.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| thread::spawn(move || connect_and_close(port)))
        .collect();
    clients
        .into_iter()
        .for_each(|client| client.join().unwrap());
    (0..REFUSED).for_each(|_| refused_connect(refused));
    assert_eq!(server.join().unwrap(), 1 + CONNECTIONS);
    until_value(
        &prometheus,
        &edge("LAST_ACK", "CLOSE"),
        (1 + CONNECTIONS) as f64,
    );
    let after = until_value(&prometheus, &refused_edge, (1 + REFUSED) as f64);

    // Exact increases between the two instants, per edge.
    let offset = format!("{}ms", ((after - before) * 1000.0).round() as u64);
    let increases: BTreeMap<(String, String, String), f64> = prometheus
        .query_at(
            &format!(
                "sum by (role, from, to) ({} - {} offset {offset})",
                selector(""),
                selector("")
            ),
            Some(after),
        )
        .into_iter()
        .map(|sample| {
            let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
            ((label("role"), label("from"), label("to")), sample.value)
        })
        .collect();
    for (role, from, to) in ONCE_PER_CLIENT_FIRST_CLOSE {
        let key = (role.to_owned(), from.to_owned(), to.to_owned());
        assert_eq!(
            increases.get(&key).copied(),
            Some(CONNECTIONS as f64),
            "{role} {from} -> {to} between the instants: {increases:?}"
        );
    }

    // The transition rate of the recording rule: 20 events in its 5-minute window. Prometheus
    // extrapolates a window's increase to its edges by at most 1.1 scrape intervals on each side
    // (and not below zero): with 10 samples or more, that is under 25% on top.
    let samples = format!(
        "count_over_time({}[5m])",
        selector("from=\"CLOSE_WAIT\", to=\"LAST_ACK\"")
    );
    assert!(
        eventually(Duration::from_secs(40), || prometheus
            .value(&samples)
            .is_some_and(|count| count >= 10.0)),
        "10 scrapes of the series"
    );
    let recorded = format!(
        "sum(tcpstate:transitions:rate5m{{port=\"{port}\", from=\"CLOSE_WAIT\", to=\"LAST_ACK\"}}) * 300"
    );
    let events = one_value(&prometheus, &recorded, None);
    assert!(
        (CONNECTIONS as f64..=CONNECTIONS as f64 * 1.25).contains(&events),
        "tcpstate:transitions:rate5m x 300 = {events}, for {CONNECTIONS} events"
    );

    // CLOSE_WAIT held 300 ms: every observation in the (0.1, 0.5] bucket of the default
    // buckets, so the quantiles interpolate linearly in it: p50 = 0.3, p90 = 0.46.
    let bucket = |le: &str| {
        format!(
            "tcpstate_state_duration_seconds_bucket{{port=\"{port}\", state=\"CLOSE_WAIT\", \
             next=\"LAST_ACK\"{le}}}"
        )
    };
    let buckets = bucket("");
    let count = (1 + CONNECTIONS) as f64;
    for (le, want) in [("0.1", 0.0), ("0.5", count)] {
        let expression = format!("sum({})", bucket(&format!(", le=\"{le}\"")));
        assert_eq!(
            one_value(&prometheus, &expression, Some(after)),
            want,
            "{expression}"
        );
    }
    for (quantile, want) in [(0.5, 0.3), (0.9, 0.46)] {
        let cumulative = format!("histogram_quantile({quantile}, sum by (le) ({buckets}))");
        let rated = format!("histogram_quantile({quantile}, sum by (le) (rate({buckets}[1m])))");
        for expression in [cumulative, rated] {
            let value = one_value(&prometheus, &expression, Some(after));
            assert!(
                (value - want).abs() < 1e-9,
                "{expression} = {value}, want {want}"
            );
        }
    }

    // The rules as Prometheus loaded them: all evaluate without error, and each alert's
    // expression gives what this traffic implies for the test's ports. Series of other ports
    // (port="other") and host-wide alerts (listen overflows, poll time, recording failures:
    // no port label) depend on the rest of this machine, not on the test; evaluating without
    // error is what is checked of them.
    let rules = prometheus.rules();
    assert!(rules.len() >= 25, "{} rules loaded", rules.len());
    assert!(
        eventually(WAIT, || prometheus
            .rules()
            .iter()
            .all(|rule| rule["health"].as_str() == Some("ok"))),
        "every rule evaluates: {:?}",
        prometheus
            .rules()
            .iter()
            .filter(|rule| rule["health"].as_str() != Some("ok"))
            .map(|rule| (rule["name"].clone(), rule["lastError"].clone()))
            .collect::<Vec<_>>()
    );
    let ours = [port.to_string(), refused.to_string()];
    let mut alert_queries = BTreeMap::new();
    for rule in rules
        .iter()
        .filter(|rule| rule["type"].as_str() == Some("alerting"))
    {
        let name = rule["name"].as_str().unwrap().to_owned();
        let query = rule["query"].as_str().unwrap().to_owned();
        alert_queries.insert(name, query);
    }
    for (name, query) in &alert_queries {
        let results: Vec<_> = prometheus
            .query(query)
            .into_iter()
            .filter(|sample| {
                sample
                    .labels
                    .get("port")
                    .is_some_and(|label| ours.contains(label))
            })
            .collect();
        match name.as_str() {
            // 61 connects to `refused`, all refused: a failure ratio of 1.
            "TcpstateConnectFailureRatioHigh" => {
                assert_eq!(results.len(), 1, "{name}: {results:?}");
                assert_eq!(results[0].labels.get("port"), Some(&refused.to_string()));
                assert!((results[0].value - 1.0).abs() < 1e-9, "{name}: {results:?}");
            }
            _ => assert!(results.is_empty(), "{name} must not fire here: {results:?}"),
        }
    }

    // The exporter going away: `up` drops to 0 and TcpstateExporterDown's expression says so.
    let instance = daemon.address.to_string();
    assert!(daemon.stop().success());
    until_value(
        &prometheus,
        &format!("up{{job=\"tcpstate\", instance=\"{instance}\"}}"),
        0.0,
    );
    let down = prometheus.query(&alert_queries["TcpstateExporterDown"]);
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].labels.get("instance"), Some(&instance));
}
