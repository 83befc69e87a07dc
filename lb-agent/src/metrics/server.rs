//! The HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4) and a
//! one-line index at `/`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::{extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Metrics;

/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// Binds before the balancer attaches, so a taken port stops the agent
/// before it changes anything.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("lb.metrics_listen = \"{addr}\": cannot listen there (port taken by another agent? use another address, or \"off\")")
    })
}

/// Serves until the task is aborted.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>) -> JoinHandle<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(scrape))
        .route("/", get(|| async { "lb-agent: metrics at /metrics\n" }))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    })
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    // Map reads are syscalls and the ring shares a little computing: off the async workers.
    let rendered = tokio::task::spawn_blocking(move || metrics.render()).await;
    match rendered {
        Ok(Ok(text)) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("reading the counters: {e:#}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("scrape task failed: {e}\n")),
    }
}
