//! The time spent in a state, observed into the right histogram bucket.

use std::time::Duration;

use crate::support::{Daemon, rerun_once_after_unrecorded_events, until_transitions};
use crate::{CLIENT_CLOSES, WAIT, client_closes_first, expected};

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn close_wait_held_300ms_is_measured_in_the_right_bucket() {
    rerun_once_after_unrecorded_events(|| {
        let port = 24006;
        let daemon = Daemon::watching(&[port]);
        let before = daemon.scrape();
        client_closes_first(([127, 0, 0, 1], port).into(), Duration::from_millis(300));
        let after = until_transitions(&daemon, &before, port, &expected(&CLIENT_CLOSES), WAIT);
        let labels = |le: &'static str| {
            [
                ("state", "CLOSE_WAIT"),
                ("next", "LAST_ACK"),
                ("role", "server"),
                ("port", "24006"),
                ("le", le),
            ]
        };
        let bucket = |le| {
            after.delta(
                &before,
                "tcpstate_state_duration_seconds_bucket",
                &labels(le),
            )
        };
        assert_eq!(bucket("0.1"), 0.0, "300 ms is above the 0.1 s bucket");
        assert_eq!(bucket("0.5"), 1.0, "and within the 0.5 s bucket");
        assert_eq!(bucket("+Inf"), 1.0);
        let sum = after.delta(
            &before,
            "tcpstate_state_duration_seconds_sum",
            &labels("")[..4],
        );
        assert!(
            (0.3..0.4).contains(&sum),
            "CLOSE_WAIT lasted {sum} s, expected 0.3-0.4 s"
        );
    });
}
