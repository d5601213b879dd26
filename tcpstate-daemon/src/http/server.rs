//! The HTTP server's connections: its own accept loop over hyper, so that idle or slow clients
//! cannot take the exporter offline. Each connection has a deadline for its phase (a request's
//! head, its response, the wait between requests); at the cap a new connection closes the one
//! that has waited longest without a request in progress; a shutdown gives requests in flight a
//! short grace, then closes everything.
//!
//! hyper's own `header_read_timeout` also runs while a kept-alive connection waits for its next
//! request, so it cannot allow both a short head and the minutes Prometheus waits between
//! scrapes on one connection: the deadlines are kept here instead, as Go's `ReadHeaderTimeout`
//! and `IdleTimeout` do.

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::connections::{
    Activity, Connections, Phase, RateLimited, Registration, ResponseDone, TrackedBody,
    WatchedStream,
};

/// What the server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (`--web.max-connections`).
    pub max_connections: usize,
    /// From a connection's start, or a later request's first byte, to the end of its head.
    pub header_read_timeout: Duration,
    /// Between two requests on a kept-alive connection: longer than Prometheus's scrape
    /// intervals, so it keeps reusing its connection.
    pub idle_timeout: Duration,
    /// From a request's head to the end of its response (a client that stops reading).
    pub response_timeout: Duration,
    /// After a shutdown signal, for the requests in flight; then every connection is closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            response_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// File descriptors kept for the daemon's own use (maps, programs, netlink, the runtime).
const RESERVED_FDS: u64 = 64;

/// The most connections that fit in `fd_limit` (the soft RLIMIT_NOFILE) beside the daemon's own
/// descriptors, and at most `wanted`.
pub fn connections_within(fd_limit: u64, wanted: usize) -> usize {
    let room = fd_limit.saturating_sub(RESERVED_FDS).max(1);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Largest request head a client may send (hyper's minimum; the daemon's requests are GETs).
const MAX_HEAD_BYTES: usize = 8192;

/// Least time between two log lines about the cap, or about failed accepts.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Pause after an accept failed for want of descriptors or memory, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves, then gives requests in flight
/// `limits.shutdown_grace` and closes every connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Connections::default());
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut cap_log = RateLimited::new(LOG_EVERY);
    let mut accept_log = RateLimited::new(LOG_EVERY);
    loop {
        let accepted = tokio::select! {
            () = shutdown.as_mut() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                let exhausted = matches!(
                    error.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if let Some(held_back) = accept_log.allow(Instant::now()) {
                    let hint = if exhausted {
                        ": out of file descriptors or memory; raise the fd limit (LimitNOFILE= \
                         in the systemd unit) or lower --web.max-connections"
                    } else {
                        ""
                    };
                    log::warn!(
                        "cannot accept an HTTP connection ({error}){hint}{}",
                        held_back_note(held_back)
                    );
                }
                if exhausted {
                    connections.make_room();
                    tokio::select! {
                        () = shutdown.as_mut() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                continue;
            }
        };
        if connections.count() >= limits.max_connections {
            let closed = connections.make_room();
            if let Some(held_back) = cap_log.allow(Instant::now()) {
                let action = if closed {
                    "closed the one waiting longest without a request for a new one"
                } else {
                    "all have a request in progress, so new ones wait until one ends"
                };
                log::warn!(
                    "HTTP connection cap reached: {} connections open (--web.max-connections); \
                     {action}{}",
                    limits.max_connections,
                    held_back_note(held_back)
                );
            }
            tokio::select! {
                () = shutdown.as_mut() => break,
                () = connections.room_for_one(limits.max_connections) => {}
            }
        }
        let registration = connections.register();
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            registration,
            limits,
            stopped.clone(),
        ));
    }
    drop(listener);
    stop.send_replace(true);
    let grace = tokio::time::timeout(limits.shutdown_grace, connections.all_closed()).await;
    if grace.is_err() {
        log::info!(
            "closing {} HTTP connections still open after the shutdown grace",
            connections.count()
        );
        connections.close_all();
        // Closed connections go within a turn of the runtime; the bound is a safety net.
        let _ = tokio::time::timeout(Duration::from_millis(200), connections.all_closed()).await;
    }
}

fn held_back_note(held_back: u64) -> String {
    match held_back {
        0 => String::new(),
        count => format!(" ({count} more since the last report)"),
    }
}

/// One connection, from accept to close.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    registration: Registration,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let activity = registration.activity.clone();
    let io = TokioIo::new(WatchedStream {
        stream,
        activity: activity.clone(),
    });
    let service = service_fn({
        let activity = activity.clone();
        move |request| respond(router.clone(), activity.clone(), request)
    });
    let mut connection = pin!(
        http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(io, service)
    );
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    log::debug!("HTTP connection ended: {error}");
                }
                return;
            }
            () = activity.close.notified() => return,
            () = tokio::time::sleep_until(deadline.into()) => {
                if activity.deadline(&limits) <= Instant::now() {
                    log::debug!("HTTP connection timed out: {:?}", activity.phase());
                    return;
                }
            }
            _ = stopped.changed(), if !stopping => {
                // Idle connections close now, the others after their response.
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers one request, marking the connection busy until the response is handed over whole.
async fn respond(
    mut router: Router,
    activity: Arc<Activity>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<TrackedBody>, Infallible> {
    activity.enter(Phase::Responding);
    let done = ResponseDone(activity);
    let response = tower_service::Service::call(&mut router, request).await?;
    Ok(response.map(|body| TrackedBody { body, _done: done }))
}

#[cfg(test)]
mod tests {
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
}
