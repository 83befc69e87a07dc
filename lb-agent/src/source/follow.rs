//! The follower: one task per agent with a `[source]`. It hands every new
//! revision of the cluster document to the main loop (which validates and
//! applies it like a reload), and publishes this host's state under a lease
//! that it keeps alive. When etcd is unreachable it says so once, keeps
//! retrying (at most every [`MAX_RETRY`]), and on reconnecting catches up
//! with any revision it missed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use etcd_client::{EventType, PutOptions, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{ClusterDoc, etcd, host_state::HostState, status::SourceStatus};
use crate::config::source::SourceConfig;

/// Longest pause between two connection attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The running follower; dropping it stops the task (the lease then
/// expires, and this host's state disappears after `source.lease`).
pub struct Follower {
    /// New revisions of the document, oldest first, for the main loop.
    pub documents: mpsc::Receiver<ClusterDoc>,
    /// This host's state: the main loop sends, the follower publishes.
    pub state: watch::Sender<HostState>,
    pub status: Arc<SourceStatus>,
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following `source`; `seen` is the revision already applied (the
/// follower hands over only newer ones).
pub fn spawn(source: SourceConfig, initial: HostState, status: Arc<SourceStatus>) -> Follower {
    let (docs_tx, documents) = mpsc::channel(4);
    let seen = initial.applied_revision.max(initial.seen_revision);
    let (state, states) = watch::channel(initial);
    let task = tokio::spawn(run(source, docs_tx, states, status.clone(), seen));
    Follower { documents, state, status, task }
}

async fn run(source: SourceConfig, docs: mpsc::Sender<ClusterDoc>, mut states: watch::Receiver<HostState>, status: Arc<SourceStatus>, mut seen: i64) {
    let mut retry = FIRST_RETRY;
    let mut reported_down = false;
    loop {
        match session(&source, &docs, &mut states, &status, &mut seen).await {
            Ok(()) => return,
            Err(e) => {
                if !reported_down {
                    tracing::warn!(
                        "config source: {e:#}; forwarding goes on with revision {} of {}; retrying every {:?} (check that etcd runs and is reachable)",
                        status.applied_revision(),
                        source.key,
                        MAX_RETRY
                    );
                    reported_down = true;
                } else {
                    tracing::debug!("config source still down: {e:#}");
                }
                if status.up() {
                    retry = FIRST_RETRY;
                }
                status.set_up(false);
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
        if status.up() {
            reported_down = false;
        }
    }
}

/// One connection: catch up, publish, then watch and keep the lease alive
/// until something fails (Err) or the agent stops (Ok).
async fn session(source: &SourceConfig, docs: &mpsc::Sender<ClusterDoc>, states: &mut watch::Receiver<HostState>, status: &SourceStatus, seen: &mut i64) -> Result<()> {
    let mut etcd = etcd::connect(source).await?;
    let ttl = source.lease.as_secs().max(1) as i64;
    let mut client = etcd.client().clone();
    let lease = etcd.bounded("granting the host state's lease", client.lease_grant(ttl, None)).await?.id();
    let (mut keeper, mut keep_alive) = etcd.bounded("keeping the lease alive", client.lease_keep_alive(lease)).await?;

    let (doc, store_revision) = etcd.document(&source.key).await?;
    if !status.up() {
        tracing::info!("config source: etcd reachable; following {} from revision {}", source.key, store_revision + 1);
    }
    status.set_up(true);
    match doc {
        Some(doc) if doc.revision > *seen => {
            *seen = doc.revision;
            if docs.send(doc).await.is_err() {
                return Ok(());
            }
        }
        Some(_) => {}
        None => tracing::warn!("config source: no document at {} yet; publish one with `lb-agent cluster put`", source.key),
    }
    let host_key = source.host_key();
    let publisher = client.clone();
    let publish = |state: HostState| {
        let mut client = publisher.clone();
        let host_key = host_key.clone();
        async move {
            let value = serde_json::to_string(&state).expect("a host state serializes");
            client.put(host_key, value, Some(PutOptions::new().with_lease(lease))).await
        }
    };
    let first = states.borrow_and_update().clone();
    etcd.bounded("publishing this host's state", publish(first)).await?;
    etcd.bounded("recording this host as a member", client.put(source.member_key(), source.host_name.as_str(), None)).await?;

    let options = WatchOptions::new().with_start_revision(store_revision + 1);
    let mut watch = etcd.bounded(&format!("watching {}", source.key), client.watch(source.key.as_str(), Some(options))).await?;
    let mut tick = tokio::time::interval(source.lease / 3);
    tick.tick().await;
    loop {
        tokio::select! {
            message = watch.message() => {
                let message = message.context("the watch failed")?.context("etcd closed the watch")?;
                if message.canceled() {
                    bail!("etcd cancelled the watch of {}: {}", source.key, message.cancel_reason());
                }
                for event in message.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put if kv.mod_revision() > *seen => {
                            *seen = kv.mod_revision();
                            let text = match kv.value_str() {
                                Ok(t) => t.to_string(),
                                // Handed over anyway: the main loop refuses it and reports why.
                                Err(_) => String::from_utf8_lossy(kv.value()).into_owned(),
                            };
                            if docs.send(ClusterDoc { text, revision: kv.mod_revision() }).await.is_err() {
                                return Ok(());
                            }
                        }
                        EventType::Put => {}
                        EventType::Delete => tracing::warn!(
                            "config source: the document {} was deleted; keeping revision {} (publish one with `lb-agent cluster put`)",
                            source.key,
                            status.applied_revision()
                        ),
                    }
                }
            }
            _ = tick.tick() => {
                etcd.bounded("keeping the lease alive", keeper.keep_alive()).await?;
                let answer = tokio::time::timeout(etcd.timeout(), keep_alive.message())
                    .await
                    .map_err(|_| anyhow::anyhow!("no keep-alive answer within {:?}", etcd.timeout()))??
                    .context("etcd closed the keep-alive stream")?;
                if answer.ttl() <= 0 {
                    bail!("this host's lease expired (etcd was unreachable for longer than source.lease)");
                }
            }
            changed = states.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let state = states.borrow_and_update().clone();
                etcd.bounded("publishing this host's state", publish(state)).await?;
            }
            () = docs.closed() => return Ok(()),
        }
    }
}
