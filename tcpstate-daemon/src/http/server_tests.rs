//! The accept loop and the connections' deadlines, on a loopback server.

use std::{io::Write as _, time::Duration};

use axum::{Router, routing::get};

use super::*;
use crate::http::testing::{TestServer, closed_by_server, request};

fn router() -> Router {
    Router::new().route("/", get(|| async { "hello" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "slow"
        }),
    )
}

fn limits() -> Limits {
    Limits {
        max_connections: 2,
        ..Limits::default()
    }
}

#[test]
fn a_new_connection_at_the_cap_closes_the_one_waiting_longest() {
    let server = TestServer::start(router(), limits());
    let mut oldest = server.connect();
    oldest.write_all(b"GET /me").unwrap();
    let mut kept_alive = server.connect();
    assert_eq!(request(&mut kept_alive, "/").unwrap().0, 200);
    // Two open: a third takes the place of the one that has waited longest.
    let mut newest = server.connect();
    assert_eq!(request(&mut newest, "/").unwrap(), (200, "hello".into()));
    assert!(
        closed_by_server(&mut oldest),
        "the oldest waiting one closed"
    );
    kept_alive
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(!closed_by_server(&mut kept_alive));
    assert_eq!(request(&mut kept_alive, "/").unwrap().0, 200);
}

#[test]
fn connections_with_a_request_in_progress_are_never_closed_for_new_ones() {
    let server = TestServer::start(
        router(),
        Limits {
            max_connections: 1,
            ..limits()
        },
    );
    let mut busy = server.connect();
    write!(busy, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Waits for the slow one to end, then is served.
    let mut waiting = server.connect();
    assert_eq!(request(&mut waiting, "/").unwrap(), (200, "hello".into()));
    let mut response = String::new();
    std::io::Read::read_to_string(&mut busy, &mut response).unwrap();
    assert!(response.ends_with("slow"), "{response}");
}

#[test]
fn a_request_head_not_finished_in_time_is_closed() {
    let server = TestServer::start(
        router(),
        Limits {
            header_read_timeout: Duration::from_millis(200),
            ..limits()
        },
    );
    let mut silent = server.connect();
    assert!(
        closed_by_server(&mut silent),
        "a connection that sends nothing"
    );
    let mut slow = server.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: te").unwrap();
    assert!(closed_by_server(&mut slow), "a head never finished");
}

#[test]
fn kept_alive_connections_outlast_the_header_timeout_until_the_idle_timeout() {
    let server = TestServer::start(
        router(),
        Limits {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(3),
            ..limits()
        },
    );
    let mut connection = server.connect();
    assert_eq!(request(&mut connection, "/").unwrap().0, 200);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        request(&mut connection, "/").unwrap().0,
        200,
        "reused after a wait longer than the header timeout"
    );
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(closed_by_server(&mut connection), "closed once idle 3 s");
}

#[test]
fn shutdown_ends_requests_in_flight_then_closes_everything() {
    let server = TestServer::start(
        router(),
        Limits {
            shutdown_grace: Duration::from_millis(500),
            ..limits()
        },
    );
    let mut half_sent = server.connect();
    half_sent.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut in_flight = server.connect();
    write!(in_flight, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let server_thread = server.shut_down();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut in_flight, &mut response).unwrap();
    assert!(
        response.ends_with("slow"),
        "answered within the grace: {response}"
    );
    assert!(closed_by_server(&mut half_sent));
    server_thread.join().unwrap();
}

#[test]
fn connections_fit_in_the_fd_limit() {
    assert_eq!(connections_within(1024, 256), 256);
    assert_eq!(connections_within(200, 256), 136);
    assert_eq!(connections_within(10, 256), 1);
}

#[test]
fn repeated_log_lines_are_let_through_once_a_period_with_a_count() {
    let mut log = RateLimited::new(Duration::from_secs(60));
    let start = Instant::now();
    assert_eq!(log.allow(start), Some(0));
    assert_eq!(log.allow(start + Duration::from_secs(1)), None);
    assert_eq!(log.allow(start + Duration::from_secs(59)), None);
    assert_eq!(log.allow(start + Duration::from_secs(60)), Some(2));
    assert_eq!(log.allow(start + Duration::from_secs(61)), None);
}
