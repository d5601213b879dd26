//! A restarted daemon adopts the pinned state: a socket held in CLOSE_WAIT through a restart
//! (SIGTERM, then SIGKILL) keeps its role and port and gets its whole CLOSE_WAIT duration, and
//! the counters continue; a second daemon on the same state is refused.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Daemon, Exposition, eventually};
use crate::{PinFs, WAIT, daemon};

/// `daemon`'s `/events?query`, read past its `ready` event.
fn events(daemon: &Daemon, query: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(daemon.address).expect("connect to the daemon");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /events?{query} HTTP/1.0\r\nHost: tcpstated\r\n\r\n"
    )
    .unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    while line.trim_end() != "event: ready" {
        line.clear();
        assert!(stream.read_line(&mut line).unwrap() > 0, "the stream ended");
    }
    stream
}

/// The next transition of an `events` stream.
fn next_transition(stream: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    let mut transition = false;
    loop {
        line.clear();
        assert!(stream.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end();
        if line == "event: transition" {
            transition = true;
        } else if let Some(data) = line.strip_prefix("data: ").filter(|_| transition) {
            return serde_json::from_str(data).expect("a transition's JSON");
        }
    }
}

/// The counters of `port` never went back between two scrapes.
fn assert_no_counter_went_back(before: &Exposition, after: &Exposition, port: &str) {
    for (series, value) in before.samples() {
        let name = series.name.as_str();
        let counter = name.ends_with("_total")
            || name.ends_with("_count")
            || name.ends_with("_sum")
            || name.ends_with("_bucket");
        if !counter || !name.starts_with("tcpstate_") || name.starts_with("tcpstate_http_") {
            continue;
        }
        if series.label("port").is_some_and(|label| label != port) {
            continue;
        }
        let now = after.value(series).unwrap_or(0.0);
        assert!(
            now >= value,
            "{series:?} went back from {value} to {now} through the restart"
        );
    }
}

/// A socket held in CLOSE_WAIT from before a restart by `signal` to after it: the second
/// daemon, started with `second_flags` too, continues the first one's counters and times it
/// whole.
pub fn close_wait_across_a_restart(signal: &str, port: u16, second_flags: &[&str]) {
    let pins = PinFs::new(&format!("close-wait-{signal}-{port}"));
    let first = daemon(&pins, port, &[]);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test port");
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let labels = [("port", &*port.to_string()), ("role", "server")];
    // The client's FIN: the server's socket enters CLOSE_WAIT (between these two instants).
    let before_close_wait = Instant::now();
    client.shutdown(Shutdown::Write).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(server.read(&mut byte).unwrap(), 0, "the client's FIN");
    let mut seen = first.scrape();
    assert!(
        eventually(WAIT, || {
            seen = first.scrape();
            seen.sum(
                "tcpstate_sockets",
                &[labels[0], labels[1], ("state", "CLOSE_WAIT")],
            ) == 1.0
        }),
        "the server's socket in CLOSE_WAIT before the restart"
    );
    let in_close_wait = Instant::now();
    thread::sleep(Duration::from_millis(500));

    match signal {
        "TERM" => assert!(first.stop().success(), "the first daemon exits 0"),
        _ => {
            let mut first = first;
            first.signal(signal);
            assert!(first.exit_within(WAIT).is_some(), "the first daemon dies");
        }
    }
    assert_eq!(
        pins.states().len(),
        1,
        "the state stays pinned: {:?}",
        pins.states()
    );
    let first_state = pins.states();
    // No daemon runs for a while: the programs still count.
    thread::sleep(Duration::from_millis(500));
    let second = daemon(&pins, port, second_flags);
    let second_state = pins.states();
    assert_eq!(second_state.len(), 1, "one state: {second_state:?}");
    assert_eq!(
        first_state == second_state,
        second_flags.is_empty(),
        "the same state is adopted, or another build's programs continue its maps: \
         {first_state:?}, then {second_state:?}"
    );
    let adopted = second.scrape();
    assert_eq!(
        adopted.sum(
            "tcpstate_sockets",
            &[labels[0], labels[1], ("state", "CLOSE_WAIT")]
        ),
        1.0,
        "the second daemon sees the socket in CLOSE_WAIT, as a server of port {port}"
    );
    assert_no_counter_went_back(&seen, &adopted, &port.to_string());
    thread::sleep(Duration::from_millis(500));
    // The adopted state's event stream works, and knows since when the socket is in CLOSE_WAIT.
    let mut stream = events(&second, &format!("port={port}&state=LAST_ACK"));

    let before_last_ack = Instant::now();
    drop(server);
    let after_last_ack = Instant::now();
    let streamed = next_transition(&mut stream);
    assert_eq!(
        (streamed["from"].as_str(), streamed["to"].as_str()),
        (Some("CLOSE_WAIT"), Some("LAST_ACK")),
        "{streamed}"
    );
    let edge = [
        labels[0],
        labels[1],
        ("state", "CLOSE_WAIT"),
        ("next", "LAST_ACK"),
    ];
    let mut after = second.scrape();
    assert!(
        eventually(WAIT, || {
            after = second.scrape();
            after.sum("tcpstate_state_duration_seconds_count", &edge) == 1.0
        }),
        "CLOSE_WAIT -> LAST_ACK of the server, timed, after the restart"
    );
    let duration = after.sum("tcpstate_state_duration_seconds_sum", &edge);
    let (least, most) = (
        (before_last_ack - in_close_wait).as_secs_f64(),
        (after_last_ack - before_close_wait).as_secs_f64(),
    );
    assert!(
        (least..=most).contains(&duration),
        "its CLOSE_WAIT lasted {duration} s: from before the restart to after it, between \
         {least} and {most} s"
    );
    assert_eq!(
        streamed["duration_ns"].as_u64(),
        Some((duration * 1e9).round() as u64),
        "the stream's CLOSE_WAIT duration is the histogram's"
    );
    assert_eq!(
        after.sum(
            "tcpstate_transitions_total",
            &[
                labels[0],
                labels[1],
                ("from", "ESTABLISHED"),
                ("to", "CLOSE_WAIT")
            ]
        ),
        1.0,
        "ESTABLISHED -> CLOSE_WAIT, counted by the first daemon, continued by the second"
    );
    assert_no_counter_went_back(&adopted, &after, &port.to_string());
    drop(client);
    assert!(second.stop().success());
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_close_wait_held_through_a_restart_keeps_its_labels_and_whole_duration() {
    close_wait_across_a_restart("TERM", 27201, &[]);
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_close_wait_held_through_a_sigkill_keeps_its_labels_and_whole_duration() {
    close_wait_across_a_restart("KILL", 27202, &[]);
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_second_daemon_on_the_same_pinned_state_is_refused() {
    let pins = PinFs::new("two-daemons");
    let first = daemon(&pins, 27203, &[]);
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_tcpstated"))
        .arg(pins.pin_flag())
        .arg(format!(
            "--web.listen-address={}",
            crate::support::free_local_address()
        ))
        .output()
        .expect("tcpstated runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "exit status 3: {stderr}");
    assert!(
        stderr.contains("another tcpstated is using the pinned state at")
            && stderr.contains("--bpf.pin-path"),
        "the error names the cause and what to do: {stderr}"
    );
    // The first one is untouched.
    assert_eq!(first.get("/healthz").unwrap().status, 200);
    assert_eq!(pins.states().len(), 1);
    assert!(first.stop().success());
}
