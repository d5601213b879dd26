//! The operations kit against the real daemon on the real kernel (root; `cargo xtask test` runs
//! these with `--ignored --test-threads=1`):
//! - every metric and label the dashboard and the rules use is one tcpstated really exports;
//! - the state-machine page, in headless Chromium, shows the figures of /metrics (and its
//!   screenshot is docs/state-machine.png: `TCPSTATE_UPDATE_SCREENSHOT=1` rewrites it);
//! - a real Prometheus scrapes the daemon while the test makes known traffic, and its queries
//!   (transition rates, a quantile of a controlled duration, the alert expressions) give the
//!   expected values.
//!
//! One module per subject. Each test uses ports of its own (in the daemon's port set, 24201-24223)
//! and checks only those.

#[path = "../support/mod.rs"]
mod support;

mod names;
mod page;
mod prometheus;
mod sockets_page;

use std::{
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

const WAIT: Duration = Duration::from_secs(20);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The states of the metric contract (README, "Metrics"): the values of `state`, `from`, `to`,
/// `next`.
const STATES: [&str; 12] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];
const ROLES: [&str; 4] = ["client", "server", "listener", "unknown"];
const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];
/// `reason` of tcpstate_connect_failures_total.
const CONNECT_FAILURE_REASONS: [&str; 4] = ["refused", "timeout", "reset", "other"];

/// A listener whose server side reads each connection to its end (the client's FIN: CLOSE_WAIT
/// starts), holds it `hold`, then closes. Serves exactly `count` connections, at most `limit`
/// long; returns how many it served.
fn close_wait_server(
    listener: TcpListener,
    count: usize,
    hold: Duration,
    limit: Duration,
) -> JoinHandle<usize> {
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + limit;
        let mut workers = Vec::new();
        while workers.len() < count && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => workers.push(thread::spawn(move || {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                    thread::sleep(hold);
                })),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err(error) => panic!("accept: {error}"),
            }
        }
        let served = workers.len();
        workers
            .into_iter()
            .for_each(|worker| worker.join().unwrap());
        served
    })
}

fn refused_connect(port: u16) {
    let error = TcpStream::connect((LOOPBACK, port)).expect_err("nothing listens there");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

/// Connects and closes at once (the client closes first).
fn connect_and_close(port: u16) {
    drop(TcpStream::connect((LOOPBACK, port)).expect("connect"));
}

/// A listener with TCP_DEFER_ACCEPT of 1 s: it ignores a handshake's bare final ACK and, at the
/// end of that second, retransmits its SYN-ACK (`syn_ack_recalc` in net/ipv4/inet_connection_sock.c)
/// until data comes: a SYN-ACK retransmit without dropping packets.
fn listener_deferring_accept(port: u16) -> TcpListener {
    use std::os::fd::AsRawFd as _;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    let seconds: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value that outlives the call with its
    // exact size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        result,
        0,
        "setsockopt TCP_DEFER_ACCEPT: {}",
        std::io::Error::last_os_error()
    );
    socket
        .bind(&std::net::SocketAddr::from((LOOPBACK, port)).into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.into()
}
