//! The sockets view's page, in headless Chromium, lists a leak made by the test with the
//! test's own process (its screenshot is docs/sockets-view.png: `TCPSTATE_UPDATE_SCREENSHOT=1`
//! rewrites it).

use std::net::{Shutdown, TcpListener, TcpStream};

use serde_json::Value;

use crate::support::{
    Daemon,
    chromium::{Chromium, keep_screenshot},
    eventually, read_to_eof,
};
use crate::{LOOPBACK, WAIT};

/// The rows the page shows, as the texts of their cells, once it has loaded.
const ROWS: &str = r##"(() => {
  const summary = document.getElementById("summary");
  if (!summary || summary.dataset.loaded === "0") return null;
  return JSON.stringify({
    summary: summary.textContent,
    rows: [...document.querySelectorAll("#sockets tr")].map(
      (row) => [...row.cells].map((cell) => cell.textContent)),
  });
})()"##;

#[test]
#[ignore = "needs root, a BPF-capable kernel and chromium: run with `cargo xtask test`"]
fn the_sockets_page_lists_a_leak_with_its_process() {
    let port = 24223;
    let daemon = Daemon::watching(&[port]);
    let listener = TcpListener::bind((LOOPBACK, port)).unwrap();
    let mut leaked = Vec::new();
    for _ in 0..3 {
        let client = TcpStream::connect((LOOPBACK, port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut server, WAIT);
        leaked.push((client, server));
    }
    let url = format!(
        "http://{}/sockets?state=CLOSE_WAIT&port={port}",
        daemon.address
    );
    let mut chromium = Chromium::start(1400, 420);
    let mut page = Value::Null;
    let listed = eventually(WAIT, || {
        let tab = chromium.open(&url);
        let loaded = eventually(WAIT, || {
            page = chromium.evaluate(&tab, ROWS);
            !page.is_null()
        });
        loaded && {
            let parsed: Value = serde_json::from_str(page.as_str().unwrap()).unwrap();
            page = parsed;
            page["rows"].as_array().is_some_and(|rows| rows.len() == 3)
        }
    });
    assert!(listed, "three leaked sockets on the page: {page:#}");
    let command = std::fs::read_to_string("/proc/self/comm").unwrap();
    let holder = format!("{} ({})", command.trim_end(), std::process::id());
    for (row, (client, server)) in page["rows"].as_array().unwrap().iter().zip(&leaked) {
        let cells: Vec<&str> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|cell| cell.as_str().unwrap())
            .collect();
        assert_eq!(cells[1], "CLOSE_WAIT", "{cells:?}");
        assert_eq!(cells[3], server.local_addr().unwrap().to_string());
        assert_eq!(cells[4], client.local_addr().unwrap().to_string());
        assert_eq!(cells[6], holder, "{cells:?}");
    }
    assert!(
        page["summary"]
            .as_str()
            .unwrap()
            .starts_with("3 of 3 sockets"),
        "{page:#}"
    );
    let tab = chromium.open(&url);
    eventually(WAIT, || !chromium.evaluate(&tab, ROWS).is_null());
    keep_screenshot(&chromium.screenshot(&tab), "sockets-view.png");
    drop(leaked);
}
