//! What the test binaries share, one copy of each helper (each binary includes this module):
//! a real `tcpstated` ([`Daemon`]), network namespaces of a test's own ([`Netns`]) and the sockets
//! `ss` lists there ([`SsSocket`]), the figures of a scrape ([`figures`]), one more run after
//! events the kernel did not hand over ([`rerun_once_after_unrecorded_events`]), and for the
//! operations kit a real Prometheus ([`prometheus`]), headless Chromium ([`chromium`]), JSON
//! ([`json`]) and PromQL ([`promql`]); a TLS client ([`tls`]). Scrapes are read by `tcpstate-testkit`, which the
//! benchmark shares.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part"
)]

pub mod chromium;
pub mod churn;
mod daemon;
pub mod figures;
pub mod files;
pub mod json;
mod netns;
pub mod prometheus;
pub mod promql;
mod rerun;
mod ss;
pub mod tls;

use std::{
    io::Read as _,
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

pub use daemon::{Daemon, free_local_address};
pub use figures::{
    ONCE_PER_CLIENT_FIRST_CLOSE, Transitions, expect, handshakes, recording_failures, sockets,
    transitions, until_transitions,
};
pub use netns::{Netns, NftTable, run_in_namespace_file, run_in_netns};
pub use rerun::{UNRECORDED_EVENTS, rerun_once_after_unrecorded_events};
pub use ss::SsSocket;
pub use tcpstate_testkit::Exposition;

/// `a,b,c`.
pub fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads until the peer's FIN (read returns 0), waiting at most `limit` for each read.
pub fn read_to_eof(stream: &mut TcpStream, limit: Duration) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).expect("the peer closes");
}

/// Polls `check` until it returns true, for at most `limit`; the events under test happen in
/// softirq and timers, a few milliseconds after the syscall that causes them returns.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command, panics with its stderr if it fails, returns its stdout.
pub fn run_checked(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sets TCP_SYNCNT (SYN retransmissions before connect() gives up; socket2 has no setter).
pub fn set_tcp_syncnt(socket: &impl std::os::fd::AsRawFd, count: i32) {
    // SAFETY: a plain setsockopt with a pointer to a live c_int and its exact size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            std::ptr::from_ref(&count).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        result,
        0,
        "setsockopt TCP_SYNCNT: {}",
        std::io::Error::last_os_error()
    );
}
