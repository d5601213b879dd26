//! The HTTP endpoints: `/` (landing page), the telemetry path (metrics), `/healthz`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::collector::TcpStateCollector;

#[derive(Clone)]
pub struct WebState {
    pub registry: Registry,
    pub collector: Arc<TcpStateCollector>,
    pub telemetry_path: String,
}

/// Binds the listen address, explaining the usual failures.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
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

pub async fn serve(
    listener: TcpListener,
    state: WebState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/", get(landing_page))
        .route(&state.telemetry_path, get(metrics))
        .route("/healthz", get(health))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn metrics(State(state): State<WebState>) -> Response {
    let families = state.registry.gather();
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        )
            .into_response(),
    }
}

async fn health(State(state): State<WebState>) -> Response {
    if state.collector.programs_alive() {
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
    const PAGE: &str = include_str!("web/state_machine.html");
    Html(
        PAGE.replace("__TELEMETRY_PATH__", &html_escape(&state.telemetry_path))
            .replace("__VERSION__", &html_escape(crate::collector::VERSION)),
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
