//! The HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4) and
//! the status page at `/` (a one-line index where there is none: decap).
//!
//! Served connection by connection with hyper so that no client can hold the
//! agent's resources: a request's head must arrive within
//! [`HEADER_READ_TIMEOUT`] (which also closes an idle keep-alive
//! connection), a connection lives at most [`CONNECTION_LIFETIME`], and at
//! most [`MAX_CONNECTIONS`] are open (see [`slots`]). A client that sends its
//! request and then shuts down its write side (`nc -N`) still gets the answer.

mod slots;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::{extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use slots::Slots;

/// What an endpoint serves at [`METRICS_PATH`]: the agent's metrics
/// ([`super::Metrics`]) or a backend's decap counters ([`super::decap`]).
pub trait Render: Send + Sync + 'static {
    /// The text exposition, read now (blocking: map reads are syscalls).
    fn render(&self) -> Result<String>;

    /// The HTML status page, read now; `None`: no page, an index line instead.
    fn status_page(&self) -> Option<Result<String>> {
        None
    }
}

/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// A request's head must be complete this long after the connection opened
/// (or after the previous answer, on a keep-alive connection): a scraper
/// sends it at once, a slowloris client is cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, answers included: far above a scrape of
/// the largest config (well under a second), below Prometheus' patience for
/// a reconnect to matter.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Open connections at most: a few Prometheus servers and curious humans
/// need a handful; the agent's file descriptors are for its health checks.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted (hyper's buffer): a scrape's is a few
/// hundred bytes.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;

/// Binds before the balancer attaches, so a taken port stops the agent
/// before it changes anything.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("lb.metrics_listen = \"{addr}\": cannot listen there (port taken by another agent? use another address, or \"off\")")
    })
}

/// Serves until the task is aborted.
pub fn spawn<R: Render>(listener: TcpListener, metrics: Arc<R>) -> JoinHandle<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(scrape::<R>))
        .route("/", get(page::<R>))
        .with_state(metrics);
    tokio::spawn(async move {
        let slots = Slots::new(MAX_CONNECTIONS);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: the process is short of descriptors; try again soon.
                    tracing::warn!("metrics endpoint: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = slots.take() else {
                // Every slot holds a request being answered: refuse (the stream closes here).
                continue;
            };
            let app = app.clone();
            let busy = slot.busy();
            let task = tokio::spawn(async move { serve_connection(stream, app, busy).await });
            let abort = task.abort_handle();
            slot.started(Box::new(move || abort.abort()));
            // The slot is freed when the connection ends, however it ends.
            tokio::spawn(async move {
                let _ = task.await;
                drop(slot);
            });
        }
    })
}

/// One connection, with the timeouts above; ends when the client closes, a
/// timeout fires, or the connection is evicted (its task aborted).
async fn serve_connection(stream: TcpStream, app: Router, busy: slots::Busy) {
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |request| {
        let answering = busy.answering();
        let response = hyper::service::Service::call(&app, request);
        async move {
            let response = response.await;
            drop(answering);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .half_close(true)
        .max_buf_size(MAX_REQUEST_BUFFER);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    // Errors are the client's (a timeout, a reset, a malformed request): nothing to log.
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

/// Scrapes rendered at once: each holds a few MB of text at 10,000 members,
/// so a crowd of clients waits its turn rather than multiplying that.
const CONCURRENT_RENDERS: usize = 2;
static RENDERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_RENDERS);

async fn scrape<R: Render>(State(metrics): State<Arc<R>>) -> impl IntoResponse {
    answer(move || Ok((prometheus::TEXT_FORMAT, metrics.render()?))).await
}

async fn page<R: Render>(State(metrics): State<Arc<R>>) -> impl IntoResponse {
    answer(move || match metrics.status_page() {
        Some(page) => Ok(("text/html; charset=utf-8", page?)),
        None => Ok(("text/plain", "lb-agent: metrics at /metrics\n".to_string())),
    })
    .await
}

/// Renders under [`RENDERING`], off the async workers: map reads are
/// syscalls and counting ring slots takes a few ms.
async fn answer(render: impl FnOnce() -> Result<(&'static str, String)> + Send + 'static) -> impl IntoResponse {
    let _turn = RENDERING.acquire().await.expect("the semaphore is never closed");
    match tokio::task::spawn_blocking(render).await {
        Ok(Ok((content_type, text))) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("reading the counters: {e:#}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("scrape task failed: {e}\n")),
    }
}
