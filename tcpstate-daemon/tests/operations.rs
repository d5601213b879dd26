//! The operations kit against the real daemon on the real kernel (root; `cargo xtask test` runs
//! these with `--ignored --test-threads=1`):
//! - every metric and label the dashboard and the rules use is one tcpstated really exports;
//! - the state-machine page, in headless Chromium, shows the figures of /metrics (and its
//!   screenshot is docs/state-machine.png: `TCPSTATE_UPDATE_SCREENSHOT=1` rewrites it);
//! - a real Prometheus scrapes the daemon while the test makes known traffic, and its queries
//!   (transition rates, a quantile of a controlled duration, the alert expressions) give the
//!   expected values.
//!
//! Each test uses ports of its own (in the daemon's port set) and checks only those.

mod operations_support;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use operations_support::{
    chromium::Chromium,
    deploy_directory,
    json::Json,
    prometheus::{self, Prometheus, unix_now},
    promql,
};
use socket2::SockRef;
use support::{Daemon, Metrics, eventually};

const WAIT: Duration = Duration::from_secs(20);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The states of the metric contract (README, "Metrics"): the values of `state`, `from`, `to`,
/// `next`.
const STATES: [&str; 12] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];
const ROLES: [&str; 4] = ["client", "server", "listener", "unknown"];
const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];
/// `reason` of tcpstate_connect_failures_total.
const CONNECT_FAILURE_REASONS: [&str; 4] = ["refused", "timeout", "reset", "other"];

fn start_daemon(ports: &[u16]) -> Daemon {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Daemon::start(&["--port", &ports])
}

/// A listener whose server side reads each connection to its end (the client's FIN: CLOSE_WAIT
/// starts), holds it `hold`, then closes. Serves exactly `count` connections, at most `limit`
/// long; returns how many it served.
fn close_wait_server(
    listener: TcpListener,
    count: usize,
    hold: Duration,
    limit: Duration,
) -> JoinHandle<usize> {
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + limit;
        let mut workers = Vec::new();
        while workers.len() < count && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => workers.push(thread::spawn(move || {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                    thread::sleep(hold);
                })),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err(error) => panic!("accept: {error}"),
            }
        }
        let served = workers.len();
        workers
            .into_iter()
            .for_each(|worker| worker.join().unwrap());
        served
    })
}

fn refused_connect(port: u16) {
    let error = TcpStream::connect((LOOPBACK, port)).expect_err("nothing listens there");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

/// Connects and closes at once (the client closes first).
fn connect_and_close(port: u16) {
    drop(TcpStream::connect((LOOPBACK, port)).expect("connect"));
}

/// A listener with TCP_DEFER_ACCEPT of 1 s: it ignores a handshake's bare final ACK and, at the
/// end of that second, retransmits its SYN-ACK (`syn_ack_recalc` in net/ipv4/inet_connection_sock.c)
/// until data comes: a SYN-ACK retransmit without dropping packets.
fn listener_deferring_accept(port: u16) -> TcpListener {
    use std::os::fd::AsRawFd as _;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    let seconds: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value that outlives the call with its
    // exact size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        result,
        0,
        "setsockopt TCP_DEFER_ACCEPT: {}",
        std::io::Error::last_os_error()
    );
    socket
        .bind(&std::net::SocketAddr::from((LOOPBACK, port)).into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

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

fn exported(scrape: &Metrics) -> Exported {
    let mut out = Exported::new();
    for (series, _) in scrape.series() {
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_owned()).or_default();
        for (label, value) in support::parse_labels(labels) {
            entry.entry(label).or_default().insert(value);
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
    let daemon = start_daemon(&[port, refused, deferred]);
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
    for file in prometheus::rule_files() {
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

    let dashboard_path = deploy_directory().join("grafana/tcpstate.json");
    let dashboard = Json::parse(&std::fs::read_to_string(&dashboard_path).unwrap()).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for value in dashboard.walk() {
        if let Some(expression) = value.get("expr").as_str() {
            let title = dashboard
                .get("panels")
                .as_array()
                .iter()
                .find(|panel| panel.walk().iter().any(|inner| std::ptr::eq(*inner, value)))
                .and_then(|panel| panel.get("title").as_str())
                .unwrap_or("?");
            queries.push((format!("dashboard: {title}"), expression.to_owned()));
        }
    }
    for variable in dashboard.get("templating").get("list").as_array() {
        if let Some(query) = variable.get("definition").as_str() {
            let name = variable.get("name").as_str().unwrap_or("?");
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

fn page_figures(chromium: &mut Chromium, tab: &operations_support::chromium::Tab) -> PageFigures {
    let text = chromium.evaluate(tab, PAGE_FIGURES);
    let figures = Json::parse(text.as_str().expect("a JSON string")).expect("figures");
    let pairs = |key: &str| figures.get(key).as_object().cloned().unwrap_or_default();
    PageFigures {
        fetches: figures.get("fetches").as_f64().unwrap_or(0.0),
        status: figures.get("status").as_str().unwrap_or("").to_owned(),
        nodes: pairs("nodes")
            .into_iter()
            .map(|(state, value)| {
                let value = value.as_array();
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
                let value = value.as_array();
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
        links: figures
            .get("links")
            .as_array()
            .iter()
            .filter_map(|link| link.as_str().map(str::to_owned))
            .collect(),
    }
}

/// Waits (bounded) until the page has fetched the metrics `fetches` times.
fn wait_for_fetches(
    chromium: &mut Chromium,
    tab: &operations_support::chromium::Tab,
    fetches: f64,
) -> PageFigures {
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
    let daemon = start_daemon(&[quiet, busy, refused]);
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
    let stable = |metrics: &Metrics| {
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
    let png = chromium.screenshot(&tab);
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG"
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("state-machine.png");
    std::fs::write(&target, &png).unwrap();
    if std::env::var_os("TCPSTATE_UPDATE_SCREENSHOT").is_some_and(|value| value == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/state-machine.png");
        std::fs::write(&docs, &png).unwrap();
        eprintln!("wrote {}", docs.display());
    } else {
        eprintln!(
            "screenshot: {} (TCPSTATE_UPDATE_SCREENSHOT=1 updates docs/)",
            target.display()
        );
    }

    stop.store(true, Ordering::Relaxed);
    assert!(client.join().unwrap() > 0);
    server.join().unwrap();
    drop(held);
}

/// Every series of `port`'s sockets and transitions, for "did it settle" comparisons.
fn figures_of(metrics: &Metrics, port: &str) -> Vec<(String, f64)> {
    metrics
        .series()
        .filter(|(series, _)| {
            (series.starts_with("tcpstate_sockets{")
                || series.starts_with("tcpstate_transitions_total{"))
                && series.contains(&format!("port=\"{port}\""))
        })
        .map(|(series, value)| (series.clone(), *value))
        .collect()
}

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
    let daemon = start_daemon(&[port, refused]);
    let prometheus = Prometheus::start(daemon.address, &prometheus::rule_files());
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
    for (role, from, to) in [
        ("client", "CLOSE", "SYN_SENT"),
        ("client", "SYN_SENT", "ESTABLISHED"),
        ("client", "ESTABLISHED", "FIN_WAIT1"),
        ("server", "LISTEN", "SYN_RECV"),
        ("server", "SYN_RECV", "ESTABLISHED"),
        ("server", "ESTABLISHED", "CLOSE_WAIT"),
        ("server", "CLOSE_WAIT", "LAST_ACK"),
        ("server", "LAST_ACK", "CLOSE"),
    ] {
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
            .all(|rule| rule.get("health").as_str() == Some("ok"))),
        "every rule evaluates: {:?}",
        prometheus
            .rules()
            .iter()
            .filter(|rule| rule.get("health").as_str() != Some("ok"))
            .map(|rule| (rule.get("name").clone(), rule.get("lastError").clone()))
            .collect::<Vec<_>>()
    );
    let ours = [port.to_string(), refused.to_string()];
    let mut alert_queries = BTreeMap::new();
    for rule in rules
        .iter()
        .filter(|rule| rule.get("type").as_str() == Some("alerting"))
    {
        let name = rule.get("name").as_str().unwrap().to_owned();
        let query = rule.get("query").as_str().unwrap().to_owned();
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
