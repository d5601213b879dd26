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

async fn landing_page(State(state): State<WebState>) -> Html<String> {
    let path = &state.telemetry_path;
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tcpstated</title></head>\n\
         <body><h1>tcpstated {version}</h1>\n\
         <p>TCP socket state transitions and state durations, from eBPF.</p>\n\
         <ul><li><a href=\"{path}\">Metrics</a></li><li><a href=\"/healthz\">Health</a></li></ul>\n\
         </body></html>\n",
        version = crate::collector::VERSION
    ))
}
