//! A restart into other programs: another build, or other flags that change the programs but
//! not what the maps hold (`--port`), continues the maps of the earlier state (counters, the
//! sockets' records and entry times, the daemon's figures); flags that change what the maps
//! hold (`--buckets`) start clean, saying so.

use crate::adoption::close_wait_across_a_restart;
use crate::support::{Daemon, eventually};
use crate::{PinFs, WAIT, daemon, log_of_a_run};

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_restart_with_another_port_continues_the_counters_and_the_sockets_timings() {
    close_wait_across_a_restart("TERM", 27240, &["--port=27241"]);
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_sigkill_then_a_restart_with_another_port_continues_too() {
    close_wait_across_a_restart("KILL", 27242, &["--port=27243"]);
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn new_ports_are_labelled_by_the_new_programs_and_other_buckets_start_clean() {
    let (port, added) = (27244, 27245);
    let pins = PinFs::new("upgrade-ports");
    let transitions = |daemon: &Daemon, port: u16| {
        daemon.scrape().sum(
            "tcpstate_transitions_total",
            &[
                ("port", &*port.to_string()),
                ("from", "CLOSE"),
                ("to", "LISTEN"),
            ],
        )
    };
    let listen_on = |port: u16| drop(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());

    let first = daemon(&pins, port, &[]);
    listen_on(port);
    assert!(eventually(WAIT, || transitions(&first, port) == 1.0));
    assert!(first.stop().success());

    // Another port: the same maps, new programs that label the added port.
    let (pin_flag, port_flag) = (pins.pin_flag(), format!("--port={port}"));
    let added_flag = format!("--port={added}");
    let log = log_of_a_run(&[&pin_flag, &port_flag, &added_flag], |second| {
        listen_on(added);
        assert!(
            eventually(WAIT, || transitions(second, added) == 1.0),
            "the new programs label the added port"
        );
        assert_eq!(
            transitions(second, port),
            1.0,
            "the first daemon's count goes on"
        );
    });
    assert_eq!(
        log.lines()
            .filter(|line| line.contains("continued the maps of the pinned state"))
            .count(),
        1,
        "one line says the maps were continued:\n{log}"
    );

    // Other buckets: what the histograms' slots mean changed, so a clean start, said once.
    let buckets = "--buckets=0.001,1,60";
    let log = log_of_a_run(&[&pin_flag, &port_flag, &added_flag, buckets], |third| {
        assert_eq!(transitions(third, port), 0.0, "a clean start");
        assert_eq!(pins.states().len(), 1, "{:?}", pins.states());
    });
    assert!(
        log.lines()
            .any(|line| line.contains("whose maps differ") && line.contains("not continued")),
        "the earlier state's removal is said:\n{log}"
    );
}
