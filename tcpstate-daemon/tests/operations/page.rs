//! The state-machine page, in headless Chromium, shows the figures of /metrics (and its
//! screenshot is docs/state-machine.png: `TCPSTATE_UPDATE_SCREENSHOT=1` rewrites it).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::SockRef;

use crate::support::{
    Daemon, Exposition,
    chromium::{Chromium, Tab, keep_screenshot},
    eventually,
    json::items,
};
use crate::{LOOPBACK, STATES, WAIT};

// ---- The state-machine page in headless Chromium --------------------------------------------

/// A background client making connections to `port` until stopped (at most `limit`): mostly
/// orderly, every 5th aborted with an RST (SO_LINGER 0), every 3rd followed by a refused
/// connect to `refused`.
fn background_traffic(
    port: u16,
    refused: u16,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> JoinHandle<usize> {
    thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut made = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect((LOOPBACK, port)) {
                let _ = stream.write_all(b"hello");
                if made % 5 == 4 {
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            }
            if made % 3 == 0 {
                let _ = TcpStream::connect((LOOPBACK, refused));
            }
            made += 1;
            thread::sleep(Duration::from_millis(15));
        }
        made
    })
}

/// A server for `background_traffic`: reads each connection to its end and closes, until
/// stopped (at most `limit`).
fn echo_until_stopped(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> JoinHandle<()> {
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + limit;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    })
}

/// The figures a page shows, read from its elements' data attributes and texts.
const PAGE_FIGURES: &str = r#"(() => {
  const status = document.getElementById("status");
  if (!status) return JSON.stringify({ fetches: 0, status: "loading" }); // not loaded yet
  return JSON.stringify({
    fetches: Number(document.body.dataset.fetches),
    status: status.className,
    nodes: Object.fromEntries([...document.querySelectorAll("g.node[data-sockets]")].map(
      (g) => [g.dataset.state, [Number(g.dataset.sockets), g.querySelector(".count").textContent]])),
    edges: Object.fromEntries([...document.querySelectorAll("g.edge")].map(
      (g) => [g.dataset.from + "->" + g.dataset.to,
              [Number(g.dataset.total), g.dataset.rate === "" ? null : Number(g.dataset.rate),
               g.querySelector(".rate").textContent]])),
    links: [...document.querySelectorAll("a")].map((a) => a.getAttribute("href")),
  });
})()"#;

struct PageFigures {
    fetches: f64,
    status: String,
    /// state -> (sockets, text shown)
    nodes: BTreeMap<String, (f64, String)>,
    /// "FROM->TO" -> (total, rate per second once known, text shown)
    edges: BTreeMap<String, (f64, Option<f64>, String)>,
    links: Vec<String>,
}

fn page_figures(chromium: &mut Chromium, tab: &Tab) -> PageFigures {
    let text = chromium.evaluate(tab, PAGE_FIGURES);
    let figures: Value =
        serde_json::from_str(text.as_str().expect("a JSON string")).expect("figures");
    let pairs = |key: &str| figures[key].as_object().cloned().unwrap_or_default();
    PageFigures {
        fetches: figures["fetches"].as_f64().unwrap_or(0.0),
        status: figures["status"].as_str().unwrap_or("").to_owned(),
        nodes: pairs("nodes")
            .into_iter()
            .map(|(state, value)| {
                let value = items(&value);
                (
                    state,
                    (
                        value[0].as_f64().unwrap_or(f64::NAN),
                        value[1].as_str().unwrap_or("").to_owned(),
                    ),
                )
            })
            .collect(),
        edges: pairs("edges")
            .into_iter()
            .map(|(edge, value)| {
                let value = items(&value);
                (
                    edge,
                    (
                        // null (NaN) before the page's first render
                        value[0].as_f64().unwrap_or(f64::NAN),
                        value[1].as_f64(),
                        value[2].as_str().unwrap_or("").to_owned(),
                    ),
                )
            })
            .collect(),
        links: items(&figures["links"])
            .iter()
            .filter_map(|link| link.as_str().map(str::to_owned))
            .collect(),
    }
}

/// Waits (bounded) until the page has fetched the metrics `fetches` times.
fn wait_for_fetches(chromium: &mut Chromium, tab: &Tab, fetches: f64) -> PageFigures {
    let deadline = Instant::now() + WAIT;
    loop {
        let figures = page_figures(chromium, tab);
        assert_ne!(
            figures.status, "error",
            "the page could not read the metrics"
        );
        if figures.fetches >= fetches {
            return figures;
        }
        assert!(
            Instant::now() < deadline,
            "the page fetched the metrics {} times in {WAIT:?}",
            figures.fetches
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn state_machine_page_shows_the_figures_of_metrics() {
    let (quiet, busy, refused) = (24211, 24212, 24213);
    let daemon = Daemon::watching(&[quiet, busy, refused]);
    let quiet_label = quiet.to_string();

    // Port `quiet`: 3 finished connections, 4 established pairs, 2 connections the client
    // half-closed (client FIN_WAIT2, server CLOSE_WAIT), then nothing moves.
    let listener = TcpListener::bind((LOOPBACK, quiet)).unwrap();
    for _ in 0..3 {
        let client = TcpStream::connect((LOOPBACK, quiet)).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(client);
        drop(server);
    }
    let mut held = Vec::new();
    for index in 0..6 {
        let client = TcpStream::connect((LOOPBACK, quiet)).unwrap();
        let (server, _) = listener.accept().unwrap();
        if index >= 4 {
            client.shutdown(std::net::Shutdown::Write).unwrap();
        }
        held.push((client, server));
    }
    let stable = |metrics: &Exposition| {
        metrics.sum(
            "tcpstate_sockets",
            &[("port", &quiet_label), ("state", "ESTABLISHED")],
        ) == 8.0
            && metrics.sum(
                "tcpstate_sockets",
                &[("port", &quiet_label), ("state", "CLOSE_WAIT")],
            ) == 2.0
    };
    let mut previous = daemon.scrape();
    assert!(
        eventually(WAIT, || {
            let now = daemon.scrape();
            let settled = stable(&now)
                && figures_of(&now, &quiet_label) == figures_of(&previous, &quiet_label);
            previous = now;
            settled
        }),
        "port {quiet} settles:\n{:?}",
        figures_of(&previous, &quiet_label)
    );

    // Port `busy`: traffic all along, for live rates.
    let stop = Arc::new(AtomicBool::new(false));
    let busy_listener = TcpListener::bind((LOOPBACK, busy)).unwrap();
    let server = echo_until_stopped(busy_listener, stop.clone(), Duration::from_secs(90));
    let client = background_traffic(busy, refused, stop.clone(), Duration::from_secs(90));

    let mut chromium = Chromium::start(1400, 960);
    let base = format!("http://{}", daemon.address);

    // The quiet port's page against /metrics, number by number.
    let tab = chromium.open(&format!("{base}/?port={quiet}&interval=1"));
    let page = wait_for_fetches(&mut chromium, &tab, 3.0);
    let metrics = daemon.scrape();
    assert!(
        page.links.contains(&"/metrics".to_owned()),
        "{:?}",
        page.links
    );
    assert!(
        page.links.contains(&"/healthz".to_owned()),
        "{:?}",
        page.links
    );
    for state in STATES.iter().filter(|state| **state != "CLOSE") {
        let want = metrics.sum(
            "tcpstate_sockets",
            &[("port", &quiet_label), ("state", state)],
        );
        let (sockets, text) = page
            .nodes
            .get(*state)
            .unwrap_or_else(|| panic!("no node {state}"));
        assert_eq!(
            *sockets, want,
            "sockets in {state} on the page and in /metrics"
        );
        assert_eq!(
            text.replace(',', "").parse::<f64>().ok(),
            Some(want),
            "{state} shows {text}"
        );
    }
    for (edge, (total, rate, text)) in &page.edges {
        let (from, to) = edge.split_once("->").unwrap();
        let want = metrics.sum(
            "tcpstate_transitions_total",
            &[("port", &quiet_label), ("from", from), ("to", to)],
        );
        assert_eq!(*total, want, "{edge}: total on the page and in /metrics");
        assert_eq!(*rate, Some(0.0), "{edge}: nothing moves on port {quiet}");
        assert_eq!(text, "0/s", "{edge}");
    }
    for (edge, count) in [
        ("CLOSE->LISTEN", 1.0),
        ("CLOSE->SYN_SENT", 9.0),
        ("SYN_SENT->ESTABLISHED", 9.0),
        ("LISTEN->SYN_RECV", 9.0),
        ("ESTABLISHED->CLOSE_WAIT", 5.0),
    ] {
        assert_eq!(page.edges[edge].0, count, "{edge} on port {quiet}");
    }

    // The busy port's page shows live rates.
    let tab = chromium.open(&format!("{base}/?port={busy}&interval=1"));
    let mut busy_page = wait_for_fetches(&mut chromium, &tab, 2.0);
    assert!(
        eventually(WAIT, || {
            busy_page = page_figures(&mut chromium, &tab);
            busy_page.edges["CLOSE->SYN_SENT"]
                .1
                .is_some_and(|rate| rate > 0.0)
        }),
        "connects per second on port {busy}: {:?}",
        busy_page.edges["CLOSE->SYN_SENT"]
    );
    assert!(busy_page.edges["CLOSE->SYN_SENT"].2.ends_with("/s"));

    // The whole host's page, for the screenshot.
    let tab = chromium.open(&format!("{base}/?interval=1"));
    chromium.set_viewport(&tab, 1400, 980);
    wait_for_fetches(&mut chromium, &tab, 4.0);
    keep_screenshot(&chromium.screenshot(&tab), "state-machine.png");

    stop.store(true, Ordering::Relaxed);
    assert!(client.join().unwrap() > 0);
    server.join().unwrap();
    drop(held);
}

/// Every series of `port`'s sockets and transitions, for "did it settle" comparisons.
fn figures_of(metrics: &Exposition, port: &str) -> Vec<(String, f64)> {
    metrics
        .samples()
        .filter(|(series, _)| {
            (series.name == "tcpstate_sockets" || series.name == "tcpstate_transitions_total")
                && series.label("port") == Some(port)
        })
        .map(|(series, value)| (series.to_string(), value))
        .collect()
}
