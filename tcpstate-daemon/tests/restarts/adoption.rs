//! A restarted daemon adopts the pinned state: a socket held in CLOSE_WAIT through a restart
//! (SIGTERM, then SIGKILL) keeps its role and port and gets its whole CLOSE_WAIT duration, and
//! the counters continue; a second daemon on the same state is refused; a daemon with other
//! programs turned off does not adopt it.

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

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_daemon_with_other_programs_turned_off_continues_the_maps_with_its_own() {
    let pins = PinFs::new("program-set");
    let run = |extra: &[&str], attached: &[&str]| {
        let mut args = vec![pins.pin_flag(), "--port=27230".to_owned()];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = crate::log_of_a_run(&args, |daemon| {
            assert_eq!(daemon.attached_tracepoints(), attached, "{extra:?}")
        });
        let [state] = pins.states().try_into().expect("one pinned state");
        (log, state)
    };
    let (adopted, attached_anew) = ("adopted the pinned programs", "attached to");
    let every_program = [
        "inet_sock_set_state",
        "inet_sock_set_state",
        "tcp_receive_reset",
        "tcp_retransmit_synack",
        "tcp_send_reset",
    ];
    let without_resets = [
        "inet_sock_set_state",
        "inet_sock_set_state",
        "tcp_retransmit_synack",
    ];
    let (log, first) = run(&[], &every_program);
    assert!(log.contains(attached_anew), "{log}");

    // Other programs, the same maps: another state, which continues the first's maps.
    let continued = |state: &str| {
        format!(
            "continued the maps of the pinned state {}",
            pins.pin_path().join(state).display()
        )
    };
    let (log, second) = run(&["--no-collector.resets"], &without_resets);
    assert!(
        log.contains(attached_anew) && !log.contains(adopted),
        "{log}"
    );
    assert!(log.contains(&continued(&first)), "{log}");
    assert_ne!(second, first);
    let programs = pins.pin_path().join(&second).join("programs");
    assert!(!programs.join("record_reset_sent").exists());
    assert!(programs.join("record_synack_retransmit").exists());

    // The polls and netstat are no part of the kernel state: adopted, and the figures the
    // polls keep are left alone without them, taken up again with them.
    let no_polls = [
        "--no-collector.resets",
        "--no-collector.sockdiag",
        "--no-collector.netstat",
    ];
    for flags in [&no_polls[..], &no_polls[..1]] {
        let (log, state) = run(flags, &without_resets);
        assert!(
            log.contains(adopted) && !log.contains("kept figures"),
            "{flags:?}: {log}"
        );
        assert_eq!(state, second);
    }

    // Every program again: the first configuration's state, continuing the maps again.
    let (log, fourth) = run(&no_polls[1..], &every_program);
    assert!(
        log.contains(attached_anew) && !log.contains(adopted),
        "{log}"
    );
    assert!(log.contains(&continued(&second)), "{log}");
    assert_eq!(fourth, first);
}

/// The figures of the polls in the pinned state's figure store: what follows the daemon's own.
fn census_kept(pins: &PinFs) -> Vec<u8> {
    use tcpstate_daemon::{
        bpf::{figure_store::FigureStore, pinning},
        kept::{DaemonFigures, Reader},
    };
    let [state] = pins.states().try_into().expect("one pinned state");
    let figures = pins.pin_path().join(state).join(pinning::FIGURES);
    let mut store = FigureStore::open(&figures).expect("the pinned figure store");
    let bytes = store.read().expect("readable").expect("figures kept");
    let mut input = Reader::new(&bytes);
    DaemonFigures::restore(&mut input).expect("the daemon's own figures");
    input.rest().to_vec()
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_daemon_without_polls_hands_on_the_figures_of_the_polls_as_they_were() {
    let pins = PinFs::new("no-polls-between");
    let port = 27231;
    let polling = ["--sockdiag.min-interval=0"];
    let first = daemon(&pins, port, &polling);
    // A connection its client closes first: the client's end stays a minute in TIME_WAIT.
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test port");
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0, "the client's FIN");
    drop(server);
    assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0, "the server's FIN");
    drop(client);
    let time_wait = [
        ("state", "TIME_WAIT"),
        ("role", "client"),
        ("port", &*port.to_string()),
    ];
    assert!(
        eventually(WAIT, || first.scrape().sum("tcpstate_sockets", &time_wait)
            == 1.0),
        "the polls follow the client's timewait socket"
    );
    assert!(first.stop().success());
    let followed = census_kept(&pins);

    let without_polls = daemon(&pins, port, &["--no-collector.sockdiag"]);
    let scraped = without_polls.scrape();
    assert_eq!(scraped.sum_if_any("tcpstate_sockets", &time_wait), None);
    assert!(without_polls.stop().success());
    assert!(
        census_kept(&pins) == followed,
        "the figures of the polls are handed on unchanged"
    );

    let polling_again = daemon(&pins, port, &polling);
    assert!(
        eventually(WAIT, || polling_again
            .scrape()
            .sum("tcpstate_sockets", &time_wait)
            == 1.0),
        "the polls follow it again"
    );
    assert!(polling_again.stop().success());
}
