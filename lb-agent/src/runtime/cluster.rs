//! An agent whose local file names a `[source]`: the cluster document it
//! starts from, the follower that hands it new revisions, applying them
//! like a reload, and the state it publishes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};

use super::{load_config, load_config_text, reload::reload, Running};
use crate::config::compose::{self, ClusterDoc};
use crate::config::{source::SourceConfig, Config};
use crate::control::exit_code::{coded, ExitCode};
use crate::source::{cache, etcd, follow, host_state::HostState, status::{self, SourceReport, SourceStatus}};

/// The config source of a running agent.
pub(super) struct Cluster {
    source: SourceConfig,
    /// The document the running config was composed with.
    pub(super) doc: ClusterDoc,
    follower: follow::Follower,
    /// Documents applied since the start.
    generation: u64,
    /// Why the newest revision seen was refused, until one is applied.
    last_error: Option<String>,
    seen_revision: i64,
}

/// Where a document came from, as errors and logs name it.
fn origin(key: &str, doc: &ClusterDoc) -> String {
    format!("etcd {key}@{}", doc.revision)
}

/// The local file composed with `doc` (or the local file alone when it has
/// no `[source]`). Errors exit with [`ExitCode::InvalidConfig`].
pub(super) fn load(path: &std::path::Path, doc: Option<&ClusterDoc>) -> Result<Config> {
    load_text(path, doc).map(|(config, _)| config)
}

/// [`load`], and the text of what runs (the file's, or the composed config's) for `record_running`.
pub(super) fn load_text(path: &std::path::Path, doc: Option<&ClusterDoc>) -> Result<(Config, String)> {
    let (local, text) = load_config_text(path)?;
    let (Some(source), Some(doc)) = (&local.source, doc) else { return Ok((local, text)) };
    compose::compose_text(&text, &path.display().to_string(), doc, &origin(&source.key, doc))
        .map_err(|e| coded(ExitCode::InvalidConfig, anyhow::anyhow!("invalid config:\n{e}")))
}

/// The config the agent runs now, for commands run beside it (`stats`,
/// `check`, `lookup`): the local file composed with the last applied
/// document (kept on disk), or the local file alone.
pub fn load_applied(path: &std::path::Path) -> Result<Config> {
    let local = load_config(path)?;
    let Some(source) = &local.source else { return Ok(local) };
    match cache::load(&source.cache, &source.key)? {
        Some(doc) => load(path, Some(&doc)),
        None => {
            tracing::warn!("no cluster document applied on this host yet ({} is absent): showing the local file alone", source.cache.display());
            Ok(local)
        }
    }
}

/// The config to start with: the local file, composed with etcd's document
/// if it validates, else with the last applied one (kept on disk). Fails
/// only when neither is usable, saying what to do.
pub(super) async fn initial(path: &std::path::Path) -> Result<(Config, String, Option<ClusterDoc>)> {
    let (local, text) = load_config_text(path)?;
    let Some(source) = local.source.clone() else { return Ok((local, text, None)) };
    let cached = cache::load(&source.cache, &source.key).unwrap_or_else(|e| {
        tracing::warn!("{e:#}; ignoring it");
        None
    });
    let fetched = async { etcd::connect(&source).await?.document(&source.key).await }.await;
    let from_etcd = match fetched {
        Ok((Some(doc), _)) => match load_text(path, Some(&doc)) {
            Ok((config, text)) => return Ok((config, text, Some(doc))),
            Err(e) => {
                tracing::error!("{}: refused, {e:#}", origin(&source.key, &doc));
                format!("revision {} of {} does not validate", doc.revision, source.key)
            }
        },
        Ok((None, _)) => format!("etcd has no document at {}", source.key),
        Err(e) => format!("{e:#}"),
    };
    let Some(doc) = cached else {
        return Err(coded(
            ExitCode::InvalidConfig,
            anyhow::anyhow!(
                "no cluster document to start from: {from_etcd}, and no cached one at {} \
                 (start etcd, or publish a valid document with `lb-agent cluster put`)",
                source.cache.display()
            ),
        ));
    };
    tracing::warn!("starting from the cached revision {} of {} ({}): {from_etcd}", doc.revision, source.key, source.cache.display());
    let (config, text) = load_text(path, Some(&doc)).context("the cached cluster document no longer validates with the local file")?;
    Ok((config, text, Some(doc)))
}

/// Starts following the source of a running agent started from `doc`.
pub(super) fn start(running: &Running, doc: ClusterDoc) -> Option<Cluster> {
    let source = running.config.source.clone()?;
    if let Err(e) = cache::store(&source.cache, &source.key, &doc) {
        tracing::warn!("cannot keep the cluster document for restarts: {e:#}");
    }
    let status = Arc::new(SourceStatus::default());
    status.set_applied_revision(doc.revision);
    let mut cluster = Cluster {
        follower: follow::spawn(source.clone(), HostState::default(), status),
        source,
        seen_revision: doc.revision,
        doc,
        generation: 1,
        last_error: None,
    };
    publish(running, &mut cluster);
    Some(cluster)
}

/// The status shared with metrics.
pub(super) fn status(cluster: &Cluster) -> Arc<SourceStatus> {
    cluster.follower.status.clone()
}

/// The next revision from the follower (pending forever without a source).
pub(super) async fn next_document(cluster: &mut Option<Cluster>) -> Option<ClusterDoc> {
    match cluster {
        Some(c) => c.follower.documents.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies a new revision like a reload: validated first, nothing changed
/// if it is refused; the outcome is published either way.
pub(super) async fn apply(running: &mut Running, doc: ClusterDoc) {
    let Some(key) = running.cluster.as_ref().map(|c| c.source.key.clone()) else { return };
    let revision = doc.revision;
    tracing::info!("config source: applying revision {revision} of {key}");
    let result = reload(running, Some(doc.clone())).await;
    let Some(mut cluster) = running.cluster.take() else { return };
    cluster.seen_revision = cluster.seen_revision.max(revision);
    match result {
        Ok(summary) => {
            tracing::info!("applied: revision {revision} of {key}: {summary}");
            if let Err(e) = cache::store(&cluster.source.cache, &key, &doc) {
                tracing::warn!("cannot keep the cluster document for restarts: {e:#}");
            }
            cluster.follower.status.set_applied_revision(revision);
            cluster.doc = doc;
            cluster.generation += 1;
            cluster.last_error = None;
        }
        Err(e) => {
            tracing::error!("refused: revision {revision} of {key}; revision {} keeps running: {e:#}", cluster.doc.revision);
            cluster.last_error = Some(format!("revision {revision}: {e:#}"));
        }
    }
    publish(running, &mut cluster);
    running.cluster = Some(cluster);
}

/// Republishes this host's state if anything in it changed (health,
/// announcements), and refreshes the report `stats` reads.
pub(super) fn refresh(running: &mut Running) {
    if let Some(mut cluster) = running.cluster.take() {
        publish(running, &mut cluster);
        running.cluster = Some(cluster);
    }
}

fn publish(running: &Running, cluster: &mut Cluster) {
    let mut state = host_state(running, cluster);
    cluster.follower.state.send_if_modified(|old| {
        state.updated_unix = old.updated_unix;
        if *old == state {
            return false;
        }
        state.updated_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        *old = state.clone();
        true
    });
    status::write_report(
        &running.config.lb.run_dir,
        &SourceReport {
            key: cluster.source.key.clone(),
            up: cluster.follower.status.up(),
            applied_revision: cluster.doc.revision,
            last_error: cluster.last_error.clone(),
        },
    );
}

fn host_state(running: &Running, cluster: &Cluster) -> HostState {
    let digests: std::collections::HashMap<_, u64> = running.plan.vips.iter().map(|v| (v.identity(), v.ring_digest)).collect();
    let vips = running
        .config
        .vips
        .iter()
        .map(|v| (crate::summary::endpoint(v.address, v.port, v.protocol), format!("{:016x}", digests.get(&v.identity()).copied().unwrap_or(0))))
        .collect();
    let supervisor = running.supervisor.lock().unwrap_or_else(|e| e.into_inner());
    let (backends_up, backends_down) = supervisor.backends_up_down();
    let announced = match running.announcer {
        Some(_) => supervisor.serving_addresses().iter().map(ToString::to_string).collect(),
        None => Vec::new(),
    };
    HostState {
        host: cluster.source.host_name.clone(),
        applied_revision: cluster.doc.revision,
        generation: cluster.generation,
        fingerprint: crate::summary::fingerprint(&running.config, &running.plan),
        vips,
        announced,
        backends_up,
        backends_down,
        last_error: cluster.last_error.clone(),
        seen_revision: cluster.seen_revision,
        updated_unix: 0,
    }
}
