//! Prometheus metrics of `lb-agent run`, served at `http://lb.metrics_listen/metrics`.
//!
//! - [`exposition`]: builds the text of one scrape from counters and health.
//! - [`shares`]: ring shares counted from the kernel's rings.
//! - [`text`]: the text format, written straight into a string.
//! - [`server`]: the HTTP endpoint.
//!
//! Every scrape reads the pinned maps, like `lb-agent stats`, so the metrics
//! and `stats` always show the same kernel counters (summed over CPUs), and
//! the endpoint needs no handle on the loaded object.

pub mod decap;
pub mod exposition;
pub mod server;
pub mod shares;
pub mod source;
mod text;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use prometheus::HistogramVec;

pub use exposition::{Attachment, Programmed};

use crate::config::Config;
use crate::health::supervisor::CheckObserver;
use crate::plan::Plan;

/// What the endpoint shows: the programmed config (replaced on reload), the
/// attachment, and the health check histogram the checkers feed.
pub struct Metrics {
    programmed: RwLock<Arc<Programmed>>,
    attachment: Attachment,
    check_duration: HistogramVec,
    /// The config source's state, when the local file names one.
    source: std::sync::OnceLock<Arc<crate::source::status::SourceStatus>>,
}

impl Metrics {
    /// Generation 1: the config the agent started with.
    pub fn new(config: Config, plan: Plan, attachment: Attachment) -> Arc<Metrics> {
        Arc::new(Metrics {
            programmed: RwLock::new(Arc::new(Programmed::new(config, plan, 1))),
            attachment,
            check_duration: exposition::check_duration_histogram(),
            source: std::sync::OnceLock::new(),
        })
    }

    /// Call after a reload has programmed `config`: the fingerprint follows
    /// and the generation goes up by one.
    pub fn programmed(&self, config: Config, plan: Plan) {
        let mut current = self.programmed.write().unwrap_or_else(|e| e.into_inner());
        exposition::forget_removed_checks(&self.check_duration, &current.config, &config);
        let generation = current.generation + 1;
        *current = Arc::new(Programmed::new(config, plan, generation));
    }

    /// Adds `lb_config_source_*` to every scrape from now on.
    pub fn follow_source(&self, status: Arc<crate::source::status::SourceStatus>) {
        let _ = self.source.set(status);
    }

    /// Feeds [`crate::metrics::exposition::CHECK_DURATION_BUCKETS`] from the health supervisor.
    pub fn check_observer(&self) -> CheckObserver {
        let histogram = self.check_duration.clone();
        // Per VIP (see `exposition::check_duration_histogram`): the backend is not a label.
        Box::new(move |vip, _backend, took| histogram.with_label_values(&[vip]).observe(took.as_secs_f64()))
    }

    fn bpffs_dir(&self) -> PathBuf {
        self.current().config.lb.bpffs_dir.clone()
    }

    fn current(&self) -> Arc<Programmed> {
        self.programmed.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One scrape: reads the pinned counters and `HEALTH` map now.
    pub fn render(&self) -> Result<String> {
        let programmed = self.current();
        let dir = self.bpffs_dir();
        let counters = crate::dataplane::read_pinned_counters(&dir)?;
        let health = crate::health::report::read_pinned(&dir)?;
        let shares = shares::RingShares::read_pinned(&dir, &programmed.plan)?;
        let now_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let sample = exposition::Sample { counters: &counters, health: &health, shares: &shares, now_unix_ms };
        let mut text = exposition::encode(&programmed, &self.attachment, &sample, &self.check_duration)?;
        if let Some(status) = self.source.get() {
            text.push_str(&source::encode(status));
        }
        Ok(text)
    }
}

impl server::Render for Metrics {
    fn render(&self) -> Result<String> {
        Metrics::render(self)
    }
}
