//! The state-machine page, in headless Chromium, shows the last transitions of the stream
//! beside the diagram, newest first, for the port it selects.

use std::{
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Daemon, chromium::Chromium, rerun_once_after_unrecorded_events};
use crate::{CLOSE_WAIT_HOLD, ONE_CONNECTION, WAIT, address, client_closes_first};

/// The page's stream status and its rows of last transitions, newest first (nothing yet while
/// the page has no body: a tab is evaluated as soon as it opens).
const LAST_TRANSITIONS: &str = r##"JSON.stringify({
  stream: (document.body && document.body.dataset.stream) || "",
  status: (document.getElementById("stream-status") || {}).textContent || "",
  rows: [...document.querySelectorAll("#last-transitions tr[data-from]")].map((row) => ({
    role: row.dataset.role, from: row.dataset.from, to: row.dataset.to, port: row.dataset.port,
    text: row.textContent })),
})"##;

fn last_transitions(chromium: &mut Chromium, tab: &crate::support::chromium::Tab) -> Value {
    let text = chromium.evaluate(tab, LAST_TRANSITIONS);
    serde_json::from_str(text.as_str().expect("a JSON string")).expect("the page's figures")
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn the_page_shows_the_last_transitions_of_its_port() {
    rerun_once_after_unrecorded_events(|| {
        let (port, other) = (27040, 27041);
        let daemon = Daemon::watching(&[port, other]);
        let mut chromium = Chromium::start(1400, 960);
        let tab = chromium.open(&format!(
            "http://{}/?port={port}&interval=1",
            daemon.address
        ));
        let deadline = Instant::now() + WAIT;
        while last_transitions(&mut chromium, &tab)["stream"] != "ready" {
            assert!(Instant::now() < deadline, "the page's stream did not start");
            thread::sleep(Duration::from_millis(100));
        }

        // Another port's connection first: not this page's.
        let listener = TcpListener::bind(address(other)).unwrap();
        client_closes_first(&listener, other, Duration::ZERO);
        drop(listener);
        let listener = TcpListener::bind(address(port)).unwrap();
        client_closes_first(&listener, port, CLOSE_WAIT_HOLD);
        drop(listener);

        // The page keeps the last 10 of the connection's 12, newest first: the listener's close.
        let mut page = last_transitions(&mut chromium, &tab);
        let deadline = Instant::now() + WAIT;
        while !page["rows"].as_array().is_some_and(|rows| {
            rows.len() == 10 && rows[0]["from"] == "LISTEN" && rows[0]["to"] == "CLOSE"
        }) {
            assert!(Instant::now() < deadline, "the page shows {page:#}");
            thread::sleep(Duration::from_millis(100));
            page = last_transitions(&mut chromium, &tab);
        }
        let rows = page["rows"].as_array().unwrap();
        assert_eq!(rows[0]["role"], "listener");
        let expected: Vec<(&str, &str, &str)> = ONE_CONNECTION
            .iter()
            .flat_map(|socket| socket.iter().copied())
            .collect();
        for row in rows {
            assert_eq!(
                row["port"].as_str(),
                Some(port.to_string().as_str()),
                "{row}"
            );
            let text = |key: &str| row[key].as_str().unwrap_or_default();
            assert!(
                expected.contains(&(text("role"), text("from"), text("to"))),
                "{row} is not a transition of the connection"
            );
            assert!(text("text").contains(&format!("{} → {}", text("from"), text("to"))));
        }
        let status = page["status"].as_str().unwrap_or_default();
        assert!(status.starts_with("live"), "{status}");
    });
}
