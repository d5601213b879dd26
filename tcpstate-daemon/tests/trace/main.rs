//! The live event stream (`/events`, `tcpstated trace`) against the real daemon on the real
//! kernel (root; `cargo xtask test` runs these with `--ignored --test-threads=1`): each test
//! makes connections to ports of its own (27000-27099) and reads the stream as a client does.
//! One module per subject: `stream` (what a scripted connection shows, against the
//! aggregates), `churn` (a slow subscriber under churn), `bad_input` (what clients may get
//! wrong), `command` (the trace subcommand), `page` (the state-machine page's last
//! transitions).

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod churn;
mod command;
mod page;
mod stream;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use support::{Daemon, read_to_eof};

const WAIT: Duration = Duration::from_secs(10);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// One server-sent event: its name and its data, parsed.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    data: Value,
}

/// A client of `/events`, reading the stream as it comes (HTTP/1.0: the body is the stream).
struct EventStream {
    reader: BufReader<TcpStream>,
}

/// The daemon's answer to a GET of `/events`: a stream, or a refusal.
enum Answer {
    Stream(EventStream),
    Refused { status: u16, body: String },
}

impl EventStream {
    /// GETs `/events?query`, with a receive buffer of `receive_buffer` bytes if given (a slow
    /// reader's window stays small).
    fn open(daemon: &Daemon, query: &str, receive_buffer: Option<usize>) -> Answer {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        socket
            .connect(&daemon.address.into())
            .expect("connect to the daemon");
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET /events?{query} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            daemon.address
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("a status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        loop {
            line.clear();
            reader.read_line(&mut line).expect("a header");
            if line.trim_end().is_empty() {
                break;
            }
        }
        if status != 200 {
            let mut body = String::new();
            let _ = reader.read_to_string(&mut body);
            return Answer::Refused { status, body };
        }
        Answer::Stream(EventStream { reader })
    }

    /// Opens a stream and waits for its `ready` event (the kernel then sends what it asked for).
    fn ready(daemon: &Daemon, query: &str) -> EventStream {
        let Answer::Stream(mut stream) = EventStream::open(daemon, query, None) else {
            panic!("/events?{query} was refused");
        };
        let first = stream.next().expect("an event");
        assert_eq!(first.name, "ready", "{first:?}");
        stream
    }

    /// The next event (comments skipped); `None` when the stream ends or stays silent for the
    /// read timeout.
    fn next(&mut self) -> Option<Event> {
        let (mut name, mut data) = (String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(value) = line.strip_prefix("event: ") {
                name = value.to_owned();
            } else if let Some(value) = line.strip_prefix("data: ") {
                data.push_str(value);
            } else if line.is_empty() && !data.is_empty() {
                let data = serde_json::from_str(&data).expect("events carry JSON");
                return Some(Event { name, data });
            }
        }
    }

    /// Transitions until `done` says so (given those so far), at most `limit` long; also the
    /// drops reported meanwhile.
    fn transitions_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> (Vec<Value>, u64) {
        let deadline = Instant::now() + limit;
        let (mut transitions, mut dropped) = (Vec::new(), 0);
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while !done(&transitions) && Instant::now() < deadline {
            match self.next() {
                Some(event) if event.name == "transition" => transitions.push(event.data),
                Some(event) if event.name == "dropped" => {
                    dropped += event.data["dropped"].as_u64().expect("a count");
                }
                Some(_) | None => {}
            }
        }
        (transitions, dropped)
    }
}

/// `(role, from, to)` of a transition's JSON.
fn edge(transition: &Value) -> (String, String, String) {
    let text = |key: &str| transition[key].as_str().unwrap_or("?").to_owned();
    (text("role"), text("from"), text("to"))
}

/// `(role, from, to) -> count` of transitions.
fn counted(transitions: &[Value]) -> BTreeMap<(String, String, String), u64> {
    let mut counts = BTreeMap::new();
    for transition in transitions {
        *counts.entry(edge(transition)).or_default() += 1;
    }
    counts
}

/// Each socket's transitions of a connection whose client closes first, in order: the
/// listener's, the client's, the server's (the logical view: the client's socket goes on in
/// TIME_WAIT).
const ONE_CONNECTION: [&[(&str, &str, &str)]; 3] = [
    &[
        ("listener", "CLOSE", "LISTEN"),
        ("listener", "LISTEN", "CLOSE"),
    ],
    &[
        ("client", "CLOSE", "SYN_SENT"),
        ("client", "SYN_SENT", "ESTABLISHED"),
        ("client", "ESTABLISHED", "FIN_WAIT1"),
        ("client", "FIN_WAIT1", "FIN_WAIT2"),
        ("client", "FIN_WAIT2", "TIME_WAIT"),
    ],
    &[
        ("server", "LISTEN", "SYN_RECV"),
        ("server", "SYN_RECV", "ESTABLISHED"),
        ("server", "ESTABLISHED", "CLOSE_WAIT"),
        ("server", "CLOSE_WAIT", "LAST_ACK"),
        ("server", "LAST_ACK", "CLOSE"),
    ],
];

/// How long [`client_closes_first`] holds the server in CLOSE_WAIT for [`ONE_CONNECTION`]: past
/// the longest delayed ACK (200 ms), so the client's FIN is acknowledged alone and the client
/// goes through FIN_WAIT2.
const CLOSE_WAIT_HOLD: Duration = Duration::from_millis(250);

/// Asserts that `transitions` are those of [`ONE_CONNECTION`], exactly, each socket's (by
/// cookie) in order.
fn assert_one_connection(transitions: &[Value]) {
    let mut sockets: BTreeMap<u64, Vec<(String, String, String)>> = BTreeMap::new();
    for transition in transitions {
        let cookie = transition["cookie"].as_u64().expect("a cookie");
        sockets.entry(cookie).or_default().push(edge(transition));
    }
    let mut streamed: Vec<_> = sockets.into_values().collect();
    let mut expected: Vec<Vec<(String, String, String)>> = ONE_CONNECTION
        .iter()
        .map(|socket| {
            let owned = |(role, from, to): &(&str, &str, &str)| {
                (role.to_string(), from.to_string(), to.to_string())
            };
            socket.iter().map(owned).collect()
        })
        .collect();
    // By role: the listener's, the client's, the server's.
    streamed.sort_by_key(|socket| socket.first().map(|edge| edge.0.clone()));
    expected.sort_by_key(|socket| socket.first().map(|edge| edge.0.clone()));
    assert_eq!(
        streamed, expected,
        "each socket's transitions: {transitions:#?}"
    );
}

/// A connection to `port` whose client shuts down first and waits for the server's FIN (so its
/// own socket, still open, goes FIN_WAIT2 -> TIME_WAIT); the server holds CLOSE_WAIT for
/// `hold`.
fn client_closes_first(listener: &TcpListener, port: u16, hold: Duration) {
    let mut client = TcpStream::connect((LOOPBACK, port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buffer = [0u8; 4];
    server.read_exact(&mut buffer).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut server, WAIT);
    thread::sleep(hold);
    drop(server);
    read_to_eof(&mut client, WAIT);
}

/// `count` connections to `port` as [`client_closes_first`], without a hold; the listener is
/// bound and closed around them.
fn churn(port: u16, count: usize) {
    let listener = TcpListener::bind((LOOPBACK, port)).expect("bind the test port");
    for _ in 0..count {
        client_closes_first(&listener, port, Duration::ZERO);
    }
}

fn address(port: u16) -> SocketAddr {
    (LOOPBACK, port).into()
}
