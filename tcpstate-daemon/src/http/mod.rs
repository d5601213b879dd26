//! The HTTP endpoints: `/` (landing page), the telemetry path (metrics), `/healthz`; `server`
//! keeps the connections.

mod connections;
mod server;
#[cfg(test)]
mod testing;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpSocket};

pub use server::{Limits, connections_within};

#[derive(Clone)]
pub struct WebState {
    pub registry: Registry,
    /// Whether the kernel programs are still loaded. `/healthz` asks it and nothing else: not
    /// the collector, whose lock a scrape holds.
    pub programs_loaded: Arc<dyn Fn() -> bool + Send + Sync>,
    pub telemetry_path: String,
}

/// The daemon's runtime: one thread for every connection (they only wait), and a small pool
/// for scrapes, which block (map reads, sock_diag polls, the collector's lock) and serialize on
/// the collector anyway.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
}

/// Connections the kernel queues until the server accepts them (capped by
/// `net.core.somaxconn`): tokio's default, 128, overflows under a burst of connections, and each
/// overflow costs a client a one-second SYN retransmission.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the listen address (inside the runtime) and sizes the connection cap to the fd limit,
/// which it raises to the hard limit first (systemd starts services at 1024).
pub fn listen(
    address: SocketAddr,
    max_connections: usize,
) -> anyhow::Result<(TcpListener, Limits)> {
    let listener = bind(address)?;
    let fd_limit = crate::sys::raise_fd_limit().unwrap_or_else(|error| {
        log::warn!("cannot read or raise the fd limit ({error}); assuming 1024");
        1024
    });
    let within = connections_within(fd_limit, max_connections);
    if within < max_connections {
        log::warn!(
            "serving at most {within} HTTP connections, not {max_connections}: the fd limit is \
             {fd_limit} (raise LimitNOFILE= in the systemd unit, or ulimit -n)"
        );
    }
    let limits = Limits {
        max_connections: within,
        ..Limits::default()
    };
    Ok((listener, limits))
}

/// Binds the listen address (inside the runtime), explaining the usual failures.
pub fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let listener = socket.and_then(|socket| {
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(LISTEN_BACKLOG)
    });
    listener.map_err(|error| {
        let hint = match error.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "address {address} is already in use (another tcpstated or exporter?): stop it or \
                 choose another address with --web.listen-address"
            ),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "address {address} is not an address of this host: fix --web.listen-address"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "not allowed to listen on {address} (ports below 1024 need CAP_NET_BIND_SERVICE)"
            ),
            _ => format!("cannot listen on {address}"),
        };
        anyhow::Error::new(error).context(hint)
    })
}

/// Serves the endpoints until `shutdown` resolves; then requests in flight get
/// `limits.shutdown_grace` before every connection is closed.
pub async fn serve(
    listener: TcpListener,
    state: WebState,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    server::serve(listener, router(state), limits, shutdown).await;
}

fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(landing_page))
        .route(&state.telemetry_path, get(metrics))
        .route("/healthz", get(health))
        .with_state(state)
}

async fn metrics(State(state): State<WebState>) -> Response {
    // Off the async thread: a scrape blocks, and health checks must not wait for it.
    let scrape = tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        TextEncoder::new()
            .encode(&state.registry.gather(), &mut body)
            .map(|()| body)
    })
    .await;
    let error = match scrape {
        Ok(Ok(body)) => {
            return ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response();
        }
        Ok(Err(error)) => format!("cannot encode metrics: {error}"),
        Err(error) => format!("the scrape failed: {error}"),
    };
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
}

async fn health(State(state): State<WebState>) -> Response {
    if (state.programs_loaded)() {
        (
            StatusCode::OK,
            "ok: kernel programs attached to sock:inet_sock_set_state\n",
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: kernel programs are not loaded\n",
        )
            .into_response()
    }
}

/// The state-machine page (`web/state_machine.html`): the TCP state diagram, filled in live by
/// its own script from the telemetry path, which is written into the page here.
async fn landing_page(State(state): State<WebState>) -> Html<String> {
    const PAGE: &str = include_str!("../web/state_machine.html");
    Html(
        PAGE.replace("__TELEMETRY_PATH__", &html_escape(&state.telemetry_path))
            .replace("__VERSION__", &html_escape(crate::metrics::VERSION)),
    )
}

/// Escapes text for an HTML attribute or element (the telemetry path is an operator's flag).
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Mutex, mpsc},
        time::Duration,
    };

    use prometheus::{core::Collector, proto::MetricFamily};

    use super::{
        testing::{TestServer, request},
        *,
    };

    /// A collector whose `collect()` says it started, then blocks until released.
    struct BlockingCollector {
        started: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Collector for BlockingCollector {
        fn desc(&self) -> Vec<&prometheus::core::Desc> {
            Vec::new()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let _ = self.started.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
            Vec::new()
        }
    }

    #[test]
    fn health_checks_answer_while_a_scrape_is_blocked_in_a_collector() {
        let (started, scrape_started) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let registry = Registry::new();
        registry
            .register(Box::new(BlockingCollector {
                started: Mutex::new(started),
                release: Mutex::new(released),
            }))
            .unwrap();
        let state = WebState {
            registry,
            programs_loaded: Arc::new(|| true),
            telemetry_path: "/metrics".into(),
        };
        let server = TestServer::start(router(state), Limits::default());

        let mut scraper = server.connect();
        let scrape = std::thread::spawn(move || request(&mut scraper, "/metrics"));
        scrape_started
            .recv_timeout(Duration::from_secs(5))
            .expect("the scrape reaches the collector");
        let health = request(&mut server.connect(), "/healthz");
        release.send(()).unwrap();
        let (status, body) = health.expect("/healthz answers while the scrape is blocked");
        assert_eq!(status, 200, "{body}");
        assert_eq!(scrape.join().unwrap().unwrap().0, 200);
    }
}
