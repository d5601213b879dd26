//! Ages of the sockets no kernel program saw enter their state, read off the timers sock_diag
//! reports: a request socket (the kernel programs never see one born) from its SYN-ACK timer,
//! and timewait sockets older than the daemon from theirs, in the metrics and in the sockets
//! view. Each age is checked against the time the test itself measured since the event, with
//! the tolerance stated beside it.

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::checks::{relevant, shown, ss_count, until_ss};
use crate::support::{Daemon, Exposition, Netns, eventually};
use crate::traffic::{accept, at, close_clients_first, connect, drop_bare_acks, listen};
use crate::{FAST_POLL, WAIT, start};

/// How much later than the truth a derived age may read: the kernel counts its timers in
/// jiffies (4 ms at HZ=250) and sock_diag reports them in whole milliseconds.
const LATE: f64 = 0.01;

/// `tcpstate_socket_age_max_seconds` of `state` and `port`, if exported.
fn age(metrics: &Exposition, state: &str, port: &str) -> Option<f64> {
    metrics.sum_if_any(
        "tcpstate_socket_age_max_seconds",
        &[("state", state), ("port", port)],
    )
}

/// Scrapes until `check` accepts the metrics (asserted, within `WAIT`); returns the last
/// scrape and when it was made (between the two instants).
fn scrape_until(
    daemon: &Daemon,
    netns: &Netns,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> (Exposition, (Instant, Instant)) {
    let mut last = None;
    eventually(WAIT, || {
        let before = Instant::now();
        let metrics = daemon.scrape();
        let scraped = (metrics, (before, Instant::now()));
        let done = check(&scraped.0);
        last = Some(scraped);
        done
    });
    let (metrics, read) = last.expect("scraped at least once");
    assert!(
        check(&metrics),
        "{what}; ss -tan shows\n{}last scrape:\n{}",
        shown(&netns.sockets()),
        relevant(&metrics)
    );
    (metrics, read)
}

/// `/sockets.json?{query}`'s answer, and when it was made (between the two instants).
fn view(daemon: &Daemon, query: &str) -> (Value, (Instant, Instant)) {
    let before = Instant::now();
    let response = daemon.get(&format!("/sockets.json?{query}")).unwrap();
    let read = (before, Instant::now());
    assert_eq!(response.status, 200, "{query}: {}", response.body);
    (serde_json::from_str(&response.body).unwrap(), read)
}

/// The `age_seconds` of a listed socket, which must have one.
fn listed_age(socket: &Value) -> f64 {
    socket["age_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("an age: {socket:#}"))
}

/// Asserts that `age` (s), read between the instants of `read`, is between the time since
/// `last` and the time since `first` (the bounds of the event, measured around it by the test),
/// less `early` (s) and plus [`LATE`].
fn assert_age(
    what: &str,
    age: f64,
    (first, last): (Instant, Instant),
    read: (Instant, Instant),
    early: f64,
) {
    let least = read.0.duration_since(last).as_secs_f64() - early;
    let most = read.1.duration_since(first).as_secs_f64() + LATE;
    assert!(
        (least..=most).contains(&age),
        "{what}: {age} s, expected {least:.3} to {most:.3} s"
    );
}

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn a_request_sockets_age_grows_from_its_syn_in_the_metrics_and_the_view() {
    let port = 25026;
    let port_label = port.to_string();
    let netns = Netns::new(port);
    let daemon = start(&netns, &[port], &[], &[FAST_POLL]);
    // Bare ACKs to the listener are lost: the server keeps a request socket and retransmits
    // its SYN-ACK 1 s after the SYN, then 2 s after that.
    let _rules = drop_bare_acks(&netns, "tcpstate_request_age", port);
    let listener = listen(&netns, port);
    let syn_sent = Instant::now();
    let client = connect(&netns, port);
    let syn_answered = Instant::now();
    until_ss(&netns, WAIT, "one request socket", |listed| {
        ss_count(listed, "SYN-RECV", port) == 1
    });
    // Read at once, then after its timer fired twice: each firing may come late by the
    // kernel's timer slack (up to an eighth of the timeout: 32 ms for 1 and 2 s at HZ=250),
    // and the next timeout counts from then, so the age may read short by that much.
    for (at_least, early) in [(Duration::ZERO, LATE), (Duration::from_millis(3_500), 0.08)] {
        thread::sleep(at_least.saturating_sub(syn_sent.elapsed()));
        let (metrics, read) = scrape_until(&daemon, &netns, "the request socket's age", |m| {
            age(m, "NEW_SYN_RECV", &port_label).is_some()
        });
        let syn = (syn_sent, syn_answered);
        let age = age(&metrics, "NEW_SYN_RECV", &port_label).unwrap();
        assert_age("the request socket in the metrics", age, syn, read, early);

        let (list, read) = view(&daemon, &format!("state=NEW_SYN_RECV&port={port}"));
        assert_eq!(list["matched"], 1, "{list:#}");
        let socket = &list["sockets"][0];
        assert_eq!(socket["role"], "server");
        assert_eq!(socket["local"], at(port).to_string());
        assert_eq!(socket["remote"], client.local_addr().unwrap().to_string());
        let age = listed_age(socket);
        assert_age("the request socket in the view", age, syn, read, early);
    }
    drop((client, listener));
}

#[test]
#[ignore = "needs root, ip netns and nft: see tests/scenarios/main.rs"]
fn timewait_sockets_older_than_the_daemon_have_their_age() {
    let port = 25027;
    let port_label = port.to_string();
    let netns = Netns::new(port);
    // Not the default (60 s, as TIME_WAIT): the daemon must read the namespace's own.
    netns.exec("sysctl", &["-qw", "net.ipv4.tcp_fin_timeout=30"]);
    let listener = listen(&netns, port);
    // A client that closes first, then its server: the client's end waits in TIME_WAIT.
    let (clients, servers) = (vec![connect(&netns, port)], vec![accept(&listener)]);
    let time_wait = close_clients_first(&netns, port, clients, servers);
    // A client closed (not shut down) whose server never closes: an orphan, its FIN acked,
    // waits for the server's FIN in a timewait socket in FIN_WAIT2 (tcp_fin_timeout).
    let orphan = connect(&netns, port);
    let server = accept(&listener);
    let orphaning = Instant::now();
    drop(orphan);
    until_ss(&netns, WAIT, "the orphan in FIN_WAIT2", |listed| {
        ss_count(listed, "FIN-WAIT-2", port) == 1
    });
    let fin_wait2 = (orphaning, Instant::now());
    thread::sleep(Duration::from_secs(1));

    let daemon = start(&netns, &[port], &[], &[FAST_POLL]);
    let ages = |m: &Exposition| {
        Some((
            age(m, "TIME_WAIT", &port_label)?,
            age(m, "FIN_WAIT2", &port_label)?,
        ))
    };
    let (metrics, read) = scrape_until(&daemon, &netns, "both ages", |m| ages(m).is_some());
    let (time_wait_age, fin_wait2_age) = ages(&metrics).unwrap();
    assert_age("TIME_WAIT", time_wait_age, time_wait, read, LATE);
    assert_age("FIN_WAIT2", fin_wait2_age, fin_wait2, read, LATE);

    let (list, read) = view(&daemon, &format!("state=TIME_WAIT,FIN_WAIT2&port={port}"));
    assert_eq!(list["matched"], 2, "{list:#}");
    // Oldest first: the TIME_WAIT socket was made first.
    let listed = list["sockets"].as_array().unwrap();
    assert_eq!(
        (&listed[0]["state"], &listed[1]["state"]),
        (&"TIME_WAIT".into(), &"FIN_WAIT2".into())
    );
    let (time_wait_age, fin_wait2_age) = (listed_age(&listed[0]), listed_age(&listed[1]));
    assert_age(
        "TIME_WAIT in the view",
        time_wait_age,
        time_wait,
        read,
        LATE,
    );
    assert_age(
        "FIN_WAIT2 in the view",
        fin_wait2_age,
        fin_wait2,
        read,
        LATE,
    );
    drop((server, listener));
}
