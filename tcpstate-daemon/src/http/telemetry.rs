//! The HTTP server about itself, as node_exporter's promhttp and Prometheus' own server report:
//! requests by handler and status code, their duration, requests in flight, failed TLS
//! handshakes.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The server's self-metrics, registered in the registry `/metrics` serves.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    durations: HistogramVec,
    in_flight: IntGauge,
    pub tls_handshake_failures: IntCounter,
    telemetry_path: Arc<str>,
}

/// `handler` values besides the telemetry path; any other path is `other`.
const HANDLERS: [&str; 5] = ["/", "/healthz", "/sockets", "/sockets.json", "/events"];

impl HttpMetrics {
    pub fn register(registry: &Registry, telemetry_path: &str) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tcpstate_http_requests_total",
                "HTTP requests answered, by handler (path) and status code.",
            ),
            &["handler", "code"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "tcpstate_http_request_duration_seconds",
                "Time from a request's head to its response's head, by handler.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["handler"],
        )?;
        let in_flight = IntGauge::new(
            "tcpstate_http_requests_in_flight",
            "HTTP requests being answered now.",
        )?;
        let tls_handshake_failures = IntCounter::new(
            "tcpstate_http_tls_handshake_failures_total",
            "Connections closed because their TLS handshake failed (bad or missing client \
             certificate, plaintext to the TLS port, no common version or cipher suite).",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        // The known handlers' successes exist from the start (promhttp's habit), so a rate of
        // them is never "no data".
        for handler in HANDLERS.iter().copied().chain([telemetry_path]) {
            requests.with_label_values(&[handler, "200"]);
            durations.with_label_values(&[handler]);
        }
        Ok(HttpMetrics {
            requests,
            durations,
            in_flight,
            tls_handshake_failures,
            telemetry_path: telemetry_path.into(),
        })
    }

    fn handler<'a>(&'a self, path: &'a str) -> &'a str {
        if path == &*self.telemetry_path || HANDLERS.contains(&path) {
            path
        } else {
            "other"
        }
    }
}

/// The axum middleware, outermost: it sees every answer, refusals included.
pub async fn count(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let handler = metrics.handler(request.uri().path()).to_owned();
    let started = Instant::now();
    let _in_flight = InFlight::enter(&metrics.in_flight);
    let response = next.run(request).await;
    metrics
        .durations
        .with_label_values(&[&handler])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[handler.as_str(), response.status().as_str()])
        .inc();
    response
}

/// One request in flight, until dropped (also when its connection ends before the response).
struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
