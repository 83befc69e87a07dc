//! The control socket, served by its own task with async I/O: each
//! connection gets its own task and deadlines, so a client that connects
//! and sends nothing (or never reads) delays no other client, no signal and
//! no health report. Requests go to the agent's main loop through a
//! channel, each with a oneshot for the answer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use super::protocol::{Answer, Request};

/// How long a client has to send its request line once connected.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take each of our lines.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once (clients are rare: an operator, systemd).
const MAX_CONNECTIONS: u32 = 16;
/// Requests waiting for the main loop; more are refused as busy.
const QUEUE: usize = 4;
/// Longest request line read (a drain names a VIP and a backend).
const MAX_LINE: u64 = 1024;
/// On stop, how long connections get to send the answers they have.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// A request taken by the control task, for the main loop to answer.
#[derive(Debug)]
pub struct Pending {
    pub request: Request,
    reply: oneshot::Sender<Answer>,
}

impl Pending {
    /// Sends the answer to the client (gone clients are ignored).
    pub fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// The running control task.
pub struct Server {
    accept: JoinHandle<()>,
    connections: Arc<Semaphore>,
    stopping: watch::Sender<bool>,
}

/// Serves `listener`; the main loop receives the requests.
pub fn start(listener: UnixListener) -> (Server, mpsc::Receiver<Pending>) {
    let (requests, received) = mpsc::channel(QUEUE);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS as usize));
    let (stopping, _) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, requests, connections.clone(), stopping.clone()));
    (Server { accept, connections, stopping }, received)
}

impl Server {
    /// Stops accepting; connections still waiting for a request line end at
    /// once, those with an answer get [`FLUSH_TIMEOUT`] to send it. Call it
    /// after dropping the request receiver, so that no answer is awaited.
    pub async fn stop(self) {
        let _ = self.stopping.send(true);
        self.accept.abort();
        if tokio::time::timeout(FLUSH_TIMEOUT, self.connections.acquire_many(MAX_CONNECTIONS)).await.is_err() {
            tracing::warn!("control socket: a client did not take its answer within {} s", FLUSH_TIMEOUT.as_secs());
        }
    }
}

async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<Pending>, connections: Arc<Semaphore>, stopping: watch::Sender<bool>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tracing::warn!("control socket: {MAX_CONNECTIONS} connections open already; closing a new one");
            continue;
        };
        let (requests, stopping) = (requests.clone(), stopping.subscribe());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, &requests, stopping).await {
                tracing::debug!("control socket: {e:#}");
            }
        });
    }
}

/// One connection: read the request, acknowledge it, hand it over, send the answer.
/// A connection still waiting for its request when the agent stops just ends.
async fn serve_connection(stream: UnixStream, requests: &mpsc::Sender<Pending>, mut stopping: watch::Receiver<bool>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    let read_request = tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_line(&mut line));
    tokio::select! {
        read = read_request => {
            read.with_context(|| format!("no request within {} s; closed", REQUEST_READ_TIMEOUT.as_secs()))?.context("reading a request")?;
        }
        _ = stopping.wait_for(|stop| *stop) => return Ok(()),
    }
    let request = match Request::decode(&line) {
        Ok(request) => request,
        Err(why) => return send(&mut write, &Answer::error(format!("unreadable request ({why})")).encode()).await,
    };
    let slot = match requests.try_reserve() {
        Ok(slot) => slot,
        Err(mpsc::error::TrySendError::Full(())) => {
            let busy = Answer::error(format!("busy: {QUEUE} requests are waiting already; try again in a moment"));
            return send(&mut write, &busy.encode()).await;
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            return send(&mut write, &Answer::error("the agent is stopping").encode()).await;
        }
    };
    // Acknowledged before it is handed over: a client that gave up (its
    // timeout passed while we were stopped) makes this fail, and the
    // request it no longer waits for is dropped.
    send(&mut write, &Answer::Accepted.encode()).await?;
    let word = request.word();
    let (reply, answer) = oneshot::channel();
    slot.send(Pending { request, reply });
    let answer = answer.await.unwrap_or_else(|_| Answer::error(format!("the agent stopped before it finished the {word} request")));
    send(&mut write, &answer.encode()).await
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, text: &str) -> Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await {
        Ok(written) => written.context("answering"),
        Err(_) => bail!("the client did not take our answer within {} s", WRITE_TIMEOUT.as_secs()),
    }
}
