//! One more run for a test that failed on events the kernel did not hand to the programs.

use std::{
    io::Write as _,
    panic::{self, AssertUnwindSafe},
    thread,
};

/// How the panic message of a check begins when the daemon itself counted, meanwhile, events or
/// sockets it could not record (`tcpstate_recording_failures_total`). On these machines the
/// kernel's tracepoint dispatch now and then runs no BPF program for an event, without counting
/// it anywhere (docs/skipped-bpf-events.md: the `FIN_WAIT1 -> FIN_WAIT2` and `FIN_WAIT2 -> CLOSE`
/// of a closing client, mostly), and the daemon finds and counts the socket afterwards
/// (`close_undelivered`, `out_of_sequence`). [`rerun_once_after_unrecorded_events`] gives such a
/// test a second run.
pub const UNRECORDED_EVENTS: &str = "the daemon counted events it could not record";

/// Runs `test`, and runs it once more when it failed because the daemon counted events it could
/// not record (its panic message begins with [`UNRECORDED_EVENTS`]): those tests check what the
/// daemon makes of the kernel's events, which a skipped event says nothing about (the daemon's
/// finding and counting of such sockets has tests of its own). Any other failure, or a second
/// one, fails the test. The rerun is announced on the real stderr, past the test harness's
/// capture, so that it shows in the log of a passing run too.
pub fn rerun_once_after_unrecorded_events(test: impl Fn()) {
    rerun_once_announcing(test, |note| {
        // To the stderr handle itself: eprintln! would be captured with a passing test's output.
        let _ = writeln!(std::io::stderr(), "{note}");
    });
}

fn rerun_once_announcing(test: impl Fn(), announce: impl FnOnce(&str)) {
    let Err(failure) = panic::catch_unwind(AssertUnwindSafe(&test)) else {
        return;
    };
    let message = failure
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| failure.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    if !message.starts_with(UNRECORDED_EVENTS) {
        panic::resume_unwind(failure);
    }
    announce(&format!(
        "note: {} ran again: {}",
        thread::current().name().unwrap_or("a test"),
        message.lines().next().unwrap_or_default()
    ));
    test();
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_test_that_failed_on_unrecorded_events_runs_once_more_and_says_so() {
        let runs = Cell::new(0);
        let mut note = String::new();
        rerun_once_announcing(
            || {
                runs.set(runs.get() + 1);
                if runs.get() == 1 {
                    panic!("{UNRECORDED_EVENTS} ({{\"close_undelivered\": 1}})\n exported: {{}}");
                }
            },
            |said| note = said.to_owned(),
        );
        assert_eq!(runs.get(), 2);
        assert!(
            note.ends_with(" ran again: the daemon counted events it could not record ({\"close_undelivered\": 1})"),
            "{note}"
        );
    }

    #[test]
    #[should_panic(expected = "transitions for port 1")]
    fn any_other_failure_fails_at_once() {
        let runs = Cell::new(0);
        rerun_once_announcing(
            || {
                runs.set(runs.get() + 1);
                assert_eq!(runs.get(), 1, "ran twice");
                panic!("transitions for port 1 (left: exported, right: expected)");
            },
            |_| {},
        );
    }

    #[test]
    #[should_panic(expected = "the daemon counted events it could not record")]
    fn a_second_failure_on_unrecorded_events_fails() {
        rerun_once_announcing(|| panic!("{UNRECORDED_EVENTS} (again)"), |_| {});
    }
}
