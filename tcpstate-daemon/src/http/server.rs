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
    task::Poll,
    time::{Duration, Instant},
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{
    connections::{
        Activity, Connections, Phase, RateLimited, Registration, ResponseDone, TrackedBody,
        WatchedStream,
    },
    tls::{self, TlsAcceptance},
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

/// Serves `router` on `listeners` (over TLS with `tls`) until `shutdown` resolves, then gives
/// requests in flight `limits.shutdown_grace` and closes every connection.
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Router,
    limits: Limits,
    tls: Option<Arc<TlsAcceptance>>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Connections::default());
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut cap_log = RateLimited::new(LOG_EVERY);
    let mut accept_log = RateLimited::new(LOG_EVERY);
    let mut next_listener = 0;
    loop {
        let accepted = tokio::select! {
            () = shutdown.as_mut() => break,
            accepted = accept_any(&listeners, &mut next_listener) => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
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
            tls.clone(),
            stopped.clone(),
        ));
    }
    drop(listeners);
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

/// The next connection of any listener, taking them in turn so none starves the others.
async fn accept_any(listeners: &[TcpListener], next: &mut usize) -> std::io::Result<TcpStream> {
    std::future::poll_fn(|cx| {
        let count = listeners.len();
        for offset in 0..count {
            let index = (*next + offset) % count;
            if let Poll::Ready(accepted) = listeners[index].poll_accept(cx) {
                *next = (index + 1) % count;
                return Poll::Ready(accepted.map(|(stream, _)| stream));
            }
        }
        Poll::Pending
    })
    .await
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
    tls: Option<Arc<TlsAcceptance>>,
    mut stopped: watch::Receiver<bool>,
) {
    let activity = registration.activity.clone();
    let stream = WatchedStream {
        stream,
        activity: activity.clone(),
    };
    let Some(tls) = tls else {
        return serve_http(stream, router, activity, limits, stopped).await;
    };
    // The handshake is part of the request's head: the same deadline.
    let secured = tokio::select! {
        secured = tls::accept(stream, &tls) => secured,
        () = tokio::time::sleep(limits.header_read_timeout) => {
            tls.failures.inc();
            log::debug!("TLS handshake timed out");
            None
        }
        () = activity.close.notified() => None,
        _ = stopped.changed() => None,
    };
    if let Some(stream) = secured {
        serve_http(stream, router, activity, limits, stopped).await;
    }
}

/// HTTP/1.1 on a connection (plain or TLS), under its phase's deadline.
async fn serve_http(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    router: Router,
    activity: Arc<Activity>,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn({
        let activity = activity.clone();
        move |request| respond(router.clone(), activity.clone(), request)
    });
    let mut connection = pin!(
        http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(io), service)
    );
    let mut stopping = *stopped.borrow();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
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
#[path = "server_tests.rs"]
mod tests;
