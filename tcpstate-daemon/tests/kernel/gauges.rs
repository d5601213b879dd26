//! The `tcpstate_sockets` gauges, following open connections and back to zero.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
};

use crate::WAIT;
use crate::support::{Daemon, Exposition, eventually, sockets};
use tcpstate_testkit::Series;

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn gauges_follow_open_connections_and_return_to_zero() {
    let port = 24007;
    let daemon = Daemon::watching(&[port]);
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = TcpListener::bind(listen).unwrap();
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    let servers: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
    let open = |m: &Exposition| {
        (
            sockets(m, "ESTABLISHED", port, "client"),
            sockets(m, "ESTABLISHED", port, "server"),
            sockets(m, "LISTEN", port, "listener"),
        )
    };
    let mut metrics = daemon.scrape();
    eventually(WAIT, || {
        metrics = daemon.scrape();
        open(&metrics) == (3.0, 3.0, 1.0)
    });
    assert_eq!(open(&metrics), (3.0, 3.0, 1.0));
    assert!(metrics.sum("tcpstate_tracked_sockets", &[]) >= 7.0);

    for client in &clients {
        client.shutdown(Shutdown::Write).unwrap();
    }
    // The server may delay its ACK of the FINs (delayed ACK), so FIN_WAIT2 can come later.
    eventually(WAIT, || {
        metrics = daemon.scrape();
        sockets(&metrics, "CLOSE_WAIT", port, "server") == 3.0
            && sockets(&metrics, "FIN_WAIT2", port, "client") == 3.0
    });
    assert_eq!(
        sockets(&metrics, "CLOSE_WAIT", port, "server"),
        3.0,
        "servers have not closed"
    );
    assert_eq!(sockets(&metrics, "FIN_WAIT2", port, "client"), 3.0);

    drop(servers);
    drop(clients);
    drop(listener);
    // Everything closed; the clients closed first, so their connections wait in TIME_WAIT.
    let of_the_port = |series: &Series| series.matches("tcpstate_sockets", &[("port", "24007")]);
    let all_zero = |m: &Exposition| {
        m.samples()
            .filter(|(s, _)| of_the_port(s))
            .filter(|(s, _)| s.label("state") != Some("TIME_WAIT"))
            .all(|(_, v)| v == 0.0)
            // As many as `ss` lists: these 3, those of an earlier run still there (they last
            // 60 s), or none if the host's timewait table (tcp_max_tw_buckets) is full.
            && sockets(m, "TIME_WAIT", port, "client") == time_wait_in_ss(port)
    };
    eventually(WAIT, || {
        metrics = daemon.scrape();
        all_zero(&metrics)
    });
    let gauges: Vec<_> = metrics
        .samples()
        .filter(|(s, _)| of_the_port(s))
        .map(|(s, v)| format!("{s} {v}"))
        .collect();
    assert!(
        all_zero(&metrics),
        "every gauge of the port back to 0 but TIME_WAIT (as in ss): {gauges:?}"
    );
}

/// Timewait sockets of client connections to `port`, as `ss` lists them.
fn time_wait_in_ss(port: u16) -> f64 {
    let filter = format!("( dport = :{port} )");
    let output = Command::new("ss")
        .args(["-Htan", "state", "time-wait", &filter])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&output.stdout).lines().count() as f64
}

/// A CLOSE_WAIT leak the test makes (the server never closes after the client's FIN): the
/// socket's age grows with time and passes the 10 s threshold, which no duration histogram
/// could show (the socket never leaves its state).
#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_leaked_close_wait_socket_shows_its_age() {
    let port = 24015;
    let daemon = Daemon::watching(&[port]);
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = TcpListener::bind(listen).unwrap();
    let client = TcpStream::connect(listen).unwrap();
    let (mut leaked, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    crate::support::read_to_eof(&mut leaked, WAIT);
    let labels = |seconds: Option<&'static str>| {
        let mut labels = vec![("state", "CLOSE_WAIT"), ("role", "server")];
        labels.extend(seconds.map(|seconds| ("seconds", seconds)));
        labels
    };
    let port_label = port.to_string();
    let age = |m: &Exposition| {
        let mut labels = labels(None);
        labels.push(("port", &port_label));
        m.sum_if_any("tcpstate_socket_age_max_seconds", &labels)
    };
    let older_than_10s = |m: &Exposition| {
        let mut labels = labels(Some("10"));
        labels.push(("port", &port_label));
        m.sum("tcpstate_sockets_older_than", &labels)
    };
    let mut first = daemon.scrape();
    eventually(WAIT, || {
        first = daemon.scrape();
        age(&first).is_some()
    });
    let young = age(&first).expect("the CLOSE_WAIT socket's age");
    assert!(young < 5.0, "{young} s old just after the client's FIN");
    assert_eq!(older_than_10s(&first), 0.0);
    std::thread::sleep(std::time::Duration::from_secs(11));
    let later = daemon.scrape();
    let old = age(&later).expect("still in CLOSE_WAIT");
    assert!(old >= young + 10.0, "{young} s, then {old} s 11 s later");
    assert_eq!(older_than_10s(&later), 1.0, "the leaked socket, past 10 s");
    assert_eq!(
        later.sum(
            "tcpstate_sockets_older_than",
            &[
                ("state", "CLOSE_WAIT"),
                ("port", &port_label),
                ("seconds", "60")
            ]
        ),
        0.0
    );
    drop((leaked, client, listener));
}
