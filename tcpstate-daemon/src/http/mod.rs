//! The HTTP endpoints: `/` (landing page), the telemetry path (metrics, gzip when asked for),
//! `/healthz`, the sockets view (`sockets`: `/sockets`, `/sockets.json`), `/events` (the live
//! event stream, `events`); `server` keeps the connections, `listen` binds the addresses,
//! `web_config`, `gate` and `tls` apply `--web.config.file`, `telemetry` counts requests.

mod connections;
mod events;
mod gate;
mod listen;
mod server;
mod sockets;
mod telemetry;
#[cfg(test)]
mod testing;
mod tls;
pub mod web_config;

use std::{future::Future, io::Write as _, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;

pub use listen::Bound;
pub use server::{Limits, connections_within};
pub use sockets::SocketsView;
pub use web_config::{WebConfigError, WebConfigSource};

use crate::config::ListenAddress;

#[derive(Clone)]
pub struct WebState {
    pub registry: Registry,
    /// Whether the kernel programs are still loaded. `/healthz` asks it and nothing else: not
    /// the collector, whose lock a scrape holds.
    pub programs_loaded: Arc<dyn Fn() -> bool + Send + Sync>,
    pub telemetry_path: String,
    /// `--web.config.file`, if given.
    pub web_config: Option<Arc<WebConfigSource>>,
    /// Answers `/sockets.json` (`None`: 404).
    pub sockets: Option<SocketsView>,
    /// The live event stream's subscribers (`/events`); `None`: no stream.
    pub events: Option<Arc<crate::trace::Hub>>,
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

/// Binds the listen addresses (inside the runtime) and sizes the connection cap to the fd
/// limit, which it raises to the hard limit first (systemd starts services at 1024).
pub fn listen(
    addresses: &[ListenAddress],
    max_connections: usize,
) -> anyhow::Result<(Vec<Bound>, Limits)> {
    let bound = addresses
        .iter()
        .map(|address| listen::bind(*address))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
    Ok((bound, limits))
}

/// Serves the endpoints until `shutdown` resolves; then requests in flight get
/// `limits.shutdown_grace` before every connection is closed.
pub async fn serve(
    listeners: Vec<TcpListener>,
    state: WebState,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = telemetry::HttpMetrics::register(&state.registry, &state.telemetry_path)?;
    let tls = state
        .web_config
        .clone()
        .filter(|source| source.tls)
        .map(|source| {
            Arc::new(tls::TlsAcceptance {
                source,
                failures: metrics.tls_handshake_failures.clone(),
            })
        });
    let router = router(state).layer(axum::middleware::from_fn_with_state(
        metrics,
        telemetry::count,
    ));
    server::serve(listeners, router, limits, tls, shutdown).await;
    Ok(())
}

/// The endpoints, behind the web configuration's gate if there is one.
fn router(state: WebState) -> Router {
    let gate = state
        .web_config
        .clone()
        .map(|source| Arc::new(gate::Gate::new(source)));
    let router = Router::new()
        .route("/", get(landing_page))
        .route(&state.telemetry_path, get(metrics))
        .route("/healthz", get(health))
        .route("/sockets", get(sockets::sockets_page))
        .route("/sockets.json", get(sockets::sockets_json))
        .route("/events", get(events::events))
        .with_state(state);
    match gate {
        Some(gate) => router.layer(axum::middleware::from_fn_with_state(gate, gate::gate)),
        None => router,
    }
}

async fn metrics(State(state): State<WebState>, request_headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(&request_headers);
    // Off the async thread: a scrape blocks, and health checks must not wait for it.
    let scrape = tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        TextEncoder::new().encode(&state.registry.gather(), &mut body)?;
        if gzip {
            body = compress(&body)?;
        }
        Ok::<_, prometheus::Error>(body)
    })
    .await;
    let error = match scrape {
        Ok(Ok(body)) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, prometheus::TEXT_FORMAT),
                    (header::VARY, "Accept-Encoding"),
                ],
                body,
            )
                .into_response();
            if gzip {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            return response;
        }
        Ok(Err(error)) => format!("cannot encode metrics: {error}"),
        Err(error) => format!("the scrape failed: {error}"),
    };
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
}

/// Whether `Accept-Encoding` takes gzip (Prometheus always sends `gzip`), not refused by `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// gzip at the fastest level: the exposition compresses about tenfold even so, and a scrape
/// should cost little CPU.
fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
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
            web_config: None,
            sockets: None,
            events: None,
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
