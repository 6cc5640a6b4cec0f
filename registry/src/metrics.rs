//! Prometheus metrics: requests by method and status, latencies, entries
//! stored, and the store's size, served as OpenMetrics text on `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::Code;
use tracing::warn;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The registry's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    acks: Family<OutcomeLabels, Counter>,
    entries_stored: Counter,
    entries_streamed: Counter,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ambishare_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let acks = Family::<OutcomeLabels, Counter>::default();
        let entries_stored = Counter::default();
        let entries_streamed = Counter::default();
        registry.register("requests", "gRPC requests by method and status code", requests.clone());
        registry.register(
            "request_duration_seconds",
            "gRPC request latency (streams: until the first reply)",
            latency.clone(),
        );
        registry.register("publish_acks", "Publish acknowledgements by outcome", acks.clone());
        registry.register("entries_stored", "Entries stored and flushed since start", entries_stored.clone());
        registry.register("entries_streamed", "Entries sent by StreamEntries", entries_streamed.clone());
        Metrics { registry, requests, latency, acks, entries_stored, entries_streamed }
    }

    /// Counts one request of `method` answered with `code` after `elapsed`.
    pub fn request(&self, method: &'static str, code: Code, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { method, code: code_name(code) }).inc();
        self.latency.get_or_create(&MethodLabels { method }).observe(elapsed.as_secs_f64());
    }

    pub fn ack(&self, outcome: &'static str) {
        self.acks.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn entries_stored(&self, n: u64) {
        self.entries_stored.inc_by(n);
    }

    /// Counts entries a stream has handed to its client's connection.
    pub fn entries_streamed(&self, n: u64) {
        self.entries_streamed.inc_by(n);
    }

    /// The metrics as OpenMetrics text. What the store holds is not among
    /// them: counting it walks the whole store (S3 lists every key), which a
    /// scrape every few seconds must not do; `ambishare-registry stats` does it.
    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|_| Error::Internal("encoding metrics".into()))?;
        Ok(out)
    }
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[derive(Clone)]
struct MetricsState {
    metrics: Arc<Metrics>,
}

async fn metrics_handler(State(state): State<MetricsState>) -> impl IntoResponse {
    match state.metrics.render() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "rendering metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new().route("/metrics", get(metrics_handler)).with_state(MetricsState { metrics });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(|e| Error::io("metrics endpoint", e))
}
