//! Prometheus metrics of `lb-agent run`, served at `http://lb.metrics_listen/metrics`.
//!
//! - [`exposition`]: builds the text of one scrape from counters and health.
//! - [`shares`]: ring shares counted from the kernel's rings.
//! - [`text`]: the text format, written straight into a string.
//! - [`server`]: the HTTP endpoint, and [`endpoint`]: its listener, rebound on reload.
//! - [`status_page`]: the HTML status page at `/`, from the same reading.
//! - [`flow_table`]: how many flows the flow table holds.
//!
//! Every scrape reads the pinned maps, like `lb-agent stats`, so the metrics
//! and `stats` always show the same kernel counters (summed over CPUs), and
//! the endpoint needs no handle on the loaded object.

pub mod decap;
pub mod endpoint;
pub mod exposition;
pub mod flow_table;
pub mod server;
pub mod shares;
pub mod source;
pub mod status_page;
mod text;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use prometheus::core::Collector as _;
use prometheus::process_collector::ProcessCollector;
use prometheus::{HistogramVec, TextEncoder};

pub use exposition::{Attachment, Programmed};

use crate::config::Config;
use crate::dataplane::Counters;
use crate::health::report::HealthTable;
use crate::health::supervisor::CheckObserver;
use crate::plan::Plan;
use crate::rates::Rates;

/// What the endpoint shows: the programmed config (replaced on reload), the
/// attachment, the health check histogram the checkers feed, the agent's
/// own process metrics, and the counters the status page last showed (its
/// rates are over the time since).
pub struct Metrics {
    programmed: RwLock<Arc<Programmed>>,
    attachment: Attachment,
    check_duration: HistogramVec,
    /// The config source's state, when the local file names one.
    source: std::sync::OnceLock<Arc<crate::source::status::SourceStatus>>,
    process: ProcessCollector,
    page_baseline: Mutex<Option<(Instant, Counters)>>,
    flow_occupancy: flow_table::Occupancy,
}

/// The live state read for one scrape or page: owned, lent to
/// [`exposition::Sample`].
struct Reading {
    counters: Counters,
    health: HealthTable,
    shares: shares::RingShares,
    flow_entries: u64,
    now_unix_ms: u64,
}

impl Reading {
    fn sample(&self) -> exposition::Sample<'_> {
        exposition::Sample {
            counters: &self.counters,
            health: &self.health,
            shares: &self.shares,
            flow_entries: self.flow_entries,
            now_unix_ms: self.now_unix_ms,
        }
    }
}

impl Metrics {
    /// Generation 1: the config the agent started with.
    pub fn new(config: Config, plan: Plan, attachment: Attachment) -> Arc<Metrics> {
        Arc::new(Metrics {
            programmed: RwLock::new(Arc::new(Programmed::new(config, plan, 1))),
            attachment,
            check_duration: exposition::check_duration_histogram(),
            source: std::sync::OnceLock::new(),
            // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_start_time_seconds, ...
            process: ProcessCollector::for_self(),
            page_baseline: Mutex::new(None),
            flow_occupancy: flow_table::Occupancy::default(),
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

    /// Reads the pinned counters, `HEALTH` map, rings and flow table now.
    fn read(&self, programmed: &Programmed) -> Result<Reading> {
        let dir = self.bpffs_dir();
        Ok(Reading {
            counters: crate::dataplane::read_pinned_counters(&dir)?,
            health: crate::health::report::read_pinned(&dir)?,
            shares: shares::RingShares::read_pinned(&dir, &programmed.plan)?,
            flow_entries: self.flow_occupancy.entries(&dir, programmed.config.lb.flow_table_size)?,
            now_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        })
    }

    /// One scrape: the balancer's metrics, then the process's.
    pub fn render(&self) -> Result<String> {
        let programmed = self.current();
        let reading = self.read(&programmed)?;
        let mut text = exposition::encode(&programmed, &self.attachment, &reading.sample(), &self.check_duration)?;
        TextEncoder::new().encode_utf8(&self.process.collect(), &mut text).context("encoding the process metrics")?;
        if let Some(status) = self.source.get() {
            text.push_str(&source::encode(status));
        }
        Ok(text)
    }

    /// The status page; its rates are over the time since the previous page
    /// (of any viewer), the first page has none.
    pub fn status_page(&self) -> Result<String> {
        let programmed = self.current();
        let reading = self.read(&programmed)?;
        let now = Instant::now();
        let rates = {
            let mut baseline = self.page_baseline.lock().unwrap_or_else(|e| e.into_inner());
            let rates = baseline.as_ref().and_then(|(at, before)| Rates::between(before, &reading.counters, now - *at));
            *baseline = Some((now, reading.counters.clone()));
            rates
        };
        Ok(status_page::render(&programmed, &self.attachment, &reading.sample(), rates.as_ref()))
    }
}

impl server::Render for Metrics {
    fn render(&self) -> Result<String> {
        Metrics::render(self)
    }

    fn status_page(&self) -> Option<Result<String>> {
        Some(Metrics::status_page(self))
    }
}
