//! The real program in the real kernel: each test starts `tcpstated`, makes real connections on
//! loopback to a port of its own (in the daemon's port set, 24001-24019 and 24041; 27110 for
//! `privileges`), and checks the exact changes of the real `/metrics`. One module per subject.
//! They need root: `cargo xtask test` runs them (`--ignored`, one at a time).

#[path = "../support/mod.rs"]
mod support;

mod collectors;
mod durations;
mod exposition;
mod gauges;
mod lifecycle;
mod maps;
mod privileges;
mod sockets_view;
mod transitions;

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use support::{Transitions, expect, handshakes, read_to_eof};

const WAIT: Duration = Duration::from_secs(5);

/// `(role, from, to) -> 1` for each listed transition.
fn expected(items: &[(&str, &str, &str)]) -> Transitions {
    expect(
        &items
            .iter()
            .map(|&(role, from, to)| (role, from, to, 1))
            .collect::<Vec<_>>(),
    )
}

const CLIENT_CLOSES: [(&str, &str, &str); 12] = [
    ("listener", "CLOSE", "LISTEN"),
    ("client", "CLOSE", "SYN_SENT"),
    ("client", "SYN_SENT", "ESTABLISHED"),
    ("server", "LISTEN", "SYN_RECV"),
    ("server", "SYN_RECV", "ESTABLISHED"),
    ("client", "ESTABLISHED", "FIN_WAIT1"),
    ("server", "ESTABLISHED", "CLOSE_WAIT"),
    ("client", "FIN_WAIT1", "FIN_WAIT2"),
    ("server", "CLOSE_WAIT", "LAST_ACK"),
    // The peer's FIN: the connection moves to a timewait socket (logical view).
    ("client", "FIN_WAIT2", "TIME_WAIT"),
    ("server", "LAST_ACK", "CLOSE"),
    ("listener", "LISTEN", "CLOSE"),
];

/// The transitions of [`client_closes_first`] then [`abort`] on one port, with their counts.
fn closed_then_aborted() -> Vec<(&'static str, &'static str, &'static str, u64)> {
    let mut items: Vec<_> = CLIENT_CLOSES
        .map(|(role, from, to)| (role, from, to, 1))
        .into();
    items.extend(handshakes(1));
    items.extend([
        ("client", "ESTABLISHED", "CLOSE", 1),
        ("server", "ESTABLISHED", "CLOSE", 1),
        ("listener", "LISTEN", "CLOSE", 1),
    ]);
    items
}

/// A listener on `listen`, a client connected to it, and the server's end, accepted.
fn connected_pair(listen: SocketAddr) -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind(listen).expect("bind test port");
    let client = TcpStream::connect(listen).unwrap();
    let (server, _) = listener.accept().unwrap();
    (listener, client, server)
}

/// Client shuts down first, waits for the server's FIN; the server holds CLOSE_WAIT for `hold`.
fn client_closes_first(listen: SocketAddr, hold: Duration) {
    let (listener, mut client, mut server) = connected_pair(listen);
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut server, WAIT); // server now in CLOSE_WAIT, client in FIN_WAIT2
    thread::sleep(hold);
    drop(server); // CLOSE_WAIT -> LAST_ACK; the client's FIN_WAIT2 ends
    read_to_eof(&mut client, WAIT);
    drop(client);
    drop(listener);
}

/// A connection to `listen` aborted by its client (SO_LINGER 0: an RST), seen reset by the
/// server.
fn abort(listen: SocketAddr) {
    let (listener, client, mut server) = connected_pair(listen);
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // RST
    server.set_read_timeout(Some(WAIT)).unwrap();
    let reset = server.read(&mut [0u8; 1]);
    assert!(
        reset.is_err() || reset.is_ok_and(|n| n == 0),
        "server sees the reset"
    );
    drop((server, listener));
}
