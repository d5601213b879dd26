//! The sockets view (`/sockets.json`, `/sockets`): the sockets of a leak, found by the view
//! with their addresses, ages and the process that holds them, those older than the daemon or
//! recorded in socket-local storage too; bad queries refused.

use std::{
    net::{Shutdown, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::WAIT;
use crate::support::{Daemon, eventually, read_to_eof};

/// The port of the leak, and another one whose CLOSE_WAIT socket the port filter leaves out.
const PORT: u16 = 24016;
const OTHER_PORT: u16 = 24017;
/// The port of a leak older than the daemon.
const OLD_LEAK_PORT: u16 = 24018;
/// The port of a leak recorded in socket-local storage.
const STORAGE_LEAK_PORT: u16 = 24019;

/// `count` server sockets of `port` left in CLOSE_WAIT: their clients closed, the server never
/// does. Made a little apart, so that their ages order them. Returns (leaked, clients).
fn leak(listener: &TcpListener, count: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let address = listener.local_addr().unwrap();
    let mut leaked = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..count {
        let client = TcpStream::connect(address).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut server, WAIT);
        leaked.push(server);
        clients.push(client);
        thread::sleep(Duration::from_millis(50));
    }
    (leaked, clients)
}

fn json(daemon: &Daemon, query: &str) -> Value {
    let response = daemon.get(&format!("/sockets.json?{query}")).unwrap();
    assert_eq!(response.status, 200, "{query}: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

fn ages(list: &Value) -> Vec<f64> {
    list["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|socket| socket["age_seconds"].as_f64().unwrap())
        .collect()
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn the_sockets_view_lists_exactly_the_leaked_sockets_with_their_process() {
    let daemon = Daemon::watching(&[PORT, OTHER_PORT]);
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    let (leaked, clients) = leak(&listener, 3);
    // Open connections of the same port, and a leak of another port: not listed.
    let open: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
        .collect();
    let accepted: Vec<TcpStream> = (0..2).map(|_| listener.accept().unwrap().0).collect();
    let other = TcpListener::bind(("127.0.0.1", OTHER_PORT)).unwrap();
    let elsewhere = leak(&other, 1);

    let query = format!("state=CLOSE_WAIT&port={PORT}");
    let mut list = json(&daemon, &query);
    eventually(WAIT, || {
        list = json(&daemon, &query);
        list["matched"] == 3
    });
    assert_eq!(list["matched"], 3, "{list:#}");
    assert_eq!(list["listed"], 3);
    assert_eq!(list["unlocated"], 0, "{list:#}");
    let command = std::fs::read_to_string("/proc/self/comm").unwrap();
    let pid = u64::from(std::process::id());
    let listed: Vec<&Value> = list["sockets"].as_array().unwrap().iter().collect();
    // Oldest first: the order they were leaked in.
    for (socket, (server, client)) in listed.iter().zip(leaked.iter().zip(&clients)) {
        assert_eq!(socket["state"], "CLOSE_WAIT");
        assert_eq!(socket["role"], "server");
        assert_eq!(socket["port"], PORT.to_string());
        assert_eq!(socket["local"], server.local_addr().unwrap().to_string());
        assert_eq!(socket["remote"], client.local_addr().unwrap().to_string());
        assert_eq!(
            socket["processes"],
            serde_json::json!([{ "pid": pid, "command": command.trim_end() }]),
            "the test's own process holds it: {socket:#}"
        );
    }
    let first = ages(&list);
    assert!(first.windows(2).all(|pair| pair[0] >= pair[1]), "{first:?}");

    // Ages grow; min_age and limit choose among them.
    thread::sleep(Duration::from_millis(1500));
    let later = ages(&json(&daemon, &query));
    assert!(
        later
            .iter()
            .zip(&first)
            .all(|(now, then)| now - then >= 1.4),
        "{first:?} then {later:?}"
    );
    let oldest_two = json(&daemon, &format!("{query}&limit=2"));
    assert_eq!(
        (&oldest_two["matched"], &oldest_two["listed"]),
        (&3.into(), &2.into())
    );
    assert_eq!(oldest_two["sockets"][0]["local"], listed[0]["local"]);
    let none = json(&daemon, &format!("{query}&min_age=3600"));
    assert_eq!((&none["matched"], &none["listed"]), (&0.into(), &0.into()));
    // Without the port filter, the other port's leak too.
    let every_port = json(&daemon, "state=CLOSE_WAIT");
    let ports: Vec<&Value> = every_port["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|socket| &socket["port"])
        .collect();
    assert!(
        ports.contains(&&Value::from(OTHER_PORT.to_string())),
        "{every_port:#}"
    );

    let page = daemon.get("/sockets?state=CLOSE_WAIT").unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("/sockets.json?"),
        "the page asks the view"
    );
    assert!(daemon.get("/").unwrap().body.contains("href=\"/sockets\""));
    drop((leaked, clients, open, accepted, elsewhere));
}

/// A CLOSE_WAIT socket made before the daemon started never moves, so no kernel record names
/// it: the view still lists it (its age unknown), before a younger one the programs saw enter
/// CLOSE_WAIT, with its addresses and the test's own process.
#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_leak_older_than_the_daemon_is_listed_with_its_process_and_no_age() {
    let listener = TcpListener::bind(("127.0.0.1", OLD_LEAK_PORT)).unwrap();
    let made = Instant::now();
    let (old, old_clients) = leak(&listener, 1);
    let daemon = Daemon::watching(&[OLD_LEAK_PORT]);
    let started = Instant::now();
    let (young, young_clients) = leak(&listener, 1);

    let query = format!("state=CLOSE_WAIT&port={OLD_LEAK_PORT}");
    let mut list = json(&daemon, &query);
    eventually(WAIT, || {
        list = json(&daemon, &query);
        list["matched"] == 2
    });
    assert_eq!(
        (&list["matched"], &list["listed"]),
        (&2.into(), &2.into()),
        "{list:#}"
    );
    assert_eq!(list["unlocated"], 0, "{list:#}");
    let command = std::fs::read_to_string("/proc/self/comm").unwrap();
    let owner = serde_json::json!([{ "pid": std::process::id(), "command": command.trim_end() }]);
    let [older, younger] = [&list["sockets"][0], &list["sockets"][1]];
    assert_eq!(older["local"], old[0].local_addr().unwrap().to_string());
    assert_eq!(
        older["remote"],
        old_clients[0].local_addr().unwrap().to_string()
    );
    assert_eq!(older["age_seconds"], Value::Null, "{older:#}");
    // Labelled as the daemon labels a socket it has no record of: its role unknown.
    assert_eq!(
        (&older["role"], &older["port"]),
        (&"unknown".into(), &OLD_LEAK_PORT.to_string().into())
    );
    assert_eq!(older["processes"], owner, "{older:#}");
    assert_eq!(younger["local"], young[0].local_addr().unwrap().to_string());
    assert!(younger["age_seconds"].as_f64().is_some(), "{younger:#}");
    assert_eq!(younger["processes"], owner, "{younger:#}");
    // min_age leaves the young one out, not the one of unknown age.
    let old_only = json(&daemon, &format!("{query}&min_age=3600"));
    assert_eq!(old_only["matched"], 1, "{old_only:#}");

    // In the metrics, it is at least as old as the programs' attachment: a lower bound that
    // grows with time, so the leak alert's age threshold is reached.
    thread::sleep(Duration::from_millis(1500));
    let port = OLD_LEAK_PORT.to_string();
    let labels = [
        ("state", "CLOSE_WAIT"),
        ("port", &*port),
        ("role", "unknown"),
    ];
    let (since_start, since_made) = (started.elapsed(), made.elapsed());
    let age = daemon
        .scrape()
        .sum("tcpstate_socket_age_max_seconds", &labels);
    assert!(
        since_start.as_secs_f64() <= age && age <= since_made.as_secs_f64(),
        "the older leak's age {age} s: at least since the daemon started ({since_start:?}), \
         at most since it was made ({since_made:?})"
    );
    drop((old, old_clients, young, young_clients));
}

/// With a slot table of one window, most sockets are recorded in socket-local storage, which
/// user space cannot walk: the view finds them by listing the namespaces, with their records
/// (sock_diag reads socket storage), every one of the leak listed with its role and age.
#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_leak_recorded_in_socket_storage_is_listed_whole() {
    const LEAKED: usize = 12;
    let port = STORAGE_LEAK_PORT.to_string();
    let daemon = Daemon::start(&[&format!("--port={port}"), "--sockets.slots=8"]);
    let listener = TcpListener::bind(("127.0.0.1", STORAGE_LEAK_PORT)).unwrap();
    let leak_began = Instant::now();
    let (leaked, clients) = leak(&listener, LEAKED);
    let metrics = daemon.scrape();
    assert!(
        metrics.sum("tcpstate_socket_records_in_socket_storage_total", &[]) > 0.0,
        "records past the slot table's 8 slots go to socket storage"
    );
    let query = format!("state=CLOSE_WAIT&port={port}");
    let mut list = json(&daemon, &query);
    eventually(WAIT, || {
        list = json(&daemon, &query);
        list["matched"] == LEAKED
    });
    assert_eq!(list["matched"], LEAKED, "{list:#}");
    assert_eq!(list["unlocated"], 0, "{list:#}");
    let listed: Vec<&Value> = list["sockets"].as_array().unwrap().iter().collect();
    let mut locals: Vec<String> = listed
        .iter()
        .map(|socket| socket["local"].as_str().unwrap().to_owned())
        .collect();
    locals.sort();
    let mut expected: Vec<String> = leaked
        .iter()
        .map(|server| server.local_addr().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(locals, expected, "every socket of the leak, once");
    // Oldest first, each with the age and role its record (in a slot or in storage) gives.
    let ages = ages(&list);
    let most = leak_began.elapsed().as_secs_f64();
    assert!(
        ages.windows(2).all(|pair| pair[0] >= pair[1]) && ages.iter().all(|age| *age <= most),
        "ages {ages:?}, the leak began {most} s ago"
    );
    assert!(
        listed.iter().all(|socket| socket["role"] == "server"),
        "{list:#}"
    );
    let pid = u64::from(std::process::id());
    assert!(
        listed
            .iter()
            .all(|socket| socket["processes"][0]["pid"] == pid),
        "{list:#}"
    );
    drop((leaked, clients));
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn bad_queries_are_refused_saying_why_and_many_at_once_leave_the_daemon_serving() {
    let daemon = Daemon::watching(&[PORT]);
    for (query, says) in [
        ("state=OPEN", "unknown state"),
        ("limit=100000000", "give 1 to 1000"),
        ("colour=red", "unknown parameter"),
        ("min_age=soon", "give seconds"),
        ("workload=shop", "without --workloads"),
    ] {
        let response = daemon.get(&format!("/sockets.json?{query}")).unwrap();
        assert_eq!(response.status, 400, "{query}");
        assert!(response.body.contains(says), "{query}: {}", response.body);
    }
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let address = daemon.address;
            thread::spawn(move || {
                tcpstate_testkit::http::get(address, "/sockets.json?limit=1000", WAIT)
                    .map(|response| response.status)
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.join().unwrap().unwrap(), 200);
    }
    assert_eq!(daemon.get("/healthz").unwrap().status, 200);
    assert_eq!(
        daemon
            .scrape()
            .sum("tcpstate_recording_failures_total", &[]),
        0.0
    );
}
