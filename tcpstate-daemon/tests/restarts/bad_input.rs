//! Bad pinned states and places: a state of an older layout, a state whose pins are foreign
//! objects, a pin path on no BPF filesystem. Each gives a clean start (the kernel programs
//! attached, counting from 0), one log line saying what happened, and nothing left that the
//! daemon cannot use.

use std::fs;

use crate::{PinFs, daemon};

/// A daemon on `pin_flag` whose log the test reads: started, stopped, its stderr returned.
fn log_of_a_run(pin_flag: &str, port: u16) -> String {
    crate::log_of_a_run(&[pin_flag, &format!("--port={port}")], |_| {})
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_state_of_an_older_layout_is_removed_with_one_line() {
    let pins = PinFs::new("older-layout");
    let older = pins.pin_path().join("v0-00000000000000ff");
    fs::create_dir_all(older.join("maps")).unwrap();
    let log = log_of_a_run(&pins.pin_flag(), 27210);
    assert!(!older.exists(), "the older state is removed");
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("v0-00000000000000ff"))
        .collect();
    assert_eq!(lines.len(), 1, "one line about it:\n{log}");
    assert!(lines[0].contains("layout 0"), "{}", lines[0]);
    assert_eq!(
        pins.states().len(),
        1,
        "only this daemon's state: {:?}",
        pins.states()
    );
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_state_with_foreign_pins_gives_a_clean_start() {
    let pins = PinFs::new("foreign-pins");
    assert!(daemon(&pins, 27211, &[]).stop().success());
    let [state] = pins.states().try_into().expect("one pinned state");
    let state = pins.pin_path().join(state);
    // A program pinned where a map should be, a map of another shape as the daemon's figures.
    fs::remove_file(state.join("maps/TRANSITIONS")).unwrap();
    fs::rename(
        state.join("programs/record_reset_sent"),
        state.join("maps/TRANSITIONS"),
    )
    .unwrap();
    fs::remove_file(state.join("figures")).unwrap();
    fs::rename(state.join("maps/FIRST_SEEN"), state.join("figures")).unwrap();
    let log = log_of_a_run(&pins.pin_flag(), 27211);
    assert!(
        log.contains("cannot adopt the pinned state") && log.contains("starting clean"),
        "the log says the state was not adopted and why:\n{log}"
    );
    assert_eq!(
        pins.states().len(),
        1,
        "a new state in its place: {:?}",
        pins.states()
    );
    assert!(state.join("maps/TRANSITIONS").exists() && state.join("figures").exists());
    // The new state is whole: a third daemon adopts it.
    let third = daemon(&pins, 27211, &[]);
    assert!(third.stop().success());
}

#[test]
#[ignore = "needs root: see tests/restarts/main.rs"]
fn a_pin_path_on_no_bpf_filesystem_starts_without_persistence() {
    let plain = std::env::temp_dir().join(format!("tcpstate-not-bpffs-{}", std::process::id()));
    fs::create_dir_all(&plain).unwrap();
    let pin_path = plain.join("tcpstate");
    let log = log_of_a_run(&format!("--bpf.pin-path={}", pin_path.display()), 27212);
    let _ = fs::remove_dir_all(&plain);
    assert!(
        log.contains("is not on a BPF filesystem") && log.contains("mount -t bpf bpf /sys/fs/bpf"),
        "one line says so and what to run:\n{log}"
    );
    assert!(!pin_path.exists(), "nothing made there");
}
