//! Whether the config source is reachable and which revision runs: written
//! by the follower and the main loop, read by metrics and `stats` (through
//! a small file in the run directory, as `stats` runs in another process).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

/// Shared between the follower task, the main loop and the metrics.
#[derive(Debug, Default)]
pub struct SourceStatus {
    up: AtomicBool,
    applied_revision: AtomicI64,
}

/// What `stats` shows of the source (the file's contents).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    pub key: String,
    pub up: bool,
    pub applied_revision: i64,
    pub last_error: Option<String>,
}

impl SourceStatus {
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
    pub fn applied_revision(&self) -> i64 {
        self.applied_revision.load(Ordering::Relaxed)
    }
    pub fn set_applied_revision(&self, revision: i64) {
        self.applied_revision.store(revision, Ordering::Relaxed);
    }
}

/// The report's file in the run directory.
pub fn report_path(run_dir: &Path) -> PathBuf {
    run_dir.join("source.json")
}

/// Writes the report for `stats` (best effort: a failure only costs `stats` its source line).
pub fn write_report(run_dir: &Path, report: &SourceReport) {
    let path = report_path(run_dir);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(report).map_err(std::io::Error::other).and_then(|bytes| std::fs::write(&tmp, bytes)).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!("cannot write {}: {e}", path.display());
    }
}

/// The report of the agent using `run_dir`, if it has a config source.
pub fn read_report(run_dir: &Path) -> Option<SourceReport> {
    serde_json::from_slice(&std::fs::read(report_path(run_dir)).ok()?).ok()
}
