//! Waiting for traffic to leave after the routes are withdrawn: the routers
//! need a moment (BGP update, FIB change) and clients of stateless protocols
//! a little longer. Done when no VIP packet arrived for `quiet`, or after
//! `timeout` at the latest.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::dataplane;

/// How often the VIP packet counters are read while draining.
const POLL: Duration = Duration::from_millis(100);

/// How a drain ended.
#[derive(Clone, Copy, Debug)]
pub struct Drained {
    pub after: Duration,
    /// False: `timeout` passed with packets still arriving.
    pub quiet: bool,
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.quiet {
            write!(f, "traffic drained after {:.1} s", self.after.as_secs_f64())
        } else {
            write!(f, "packets still arriving after the drain timeout of {:.1} s", self.after.as_secs_f64())
        }
    }
}

/// Packets to any VIP so far (all CPUs), or None if the maps cannot be read.
fn vip_packets(bpffs_dir: &Path) -> Option<u64> {
    let counters = dataplane::read_pinned_counters(bpffs_dir).ok()?;
    Some(counters.vips.iter().map(|c| c.packets).sum())
}

/// Waits until no VIP packet arrived for `quiet`, or `timeout` passed.
pub async fn wait(bpffs_dir: &Path, timeout: Duration, quiet: Duration) -> Drained {
    let start = Instant::now();
    let mut last_count = vip_packets(bpffs_dir);
    let mut last_packet = start;
    loop {
        let now = Instant::now();
        if now.duration_since(last_packet) >= quiet {
            return Drained { after: now - start, quiet: true };
        }
        if now.duration_since(start) >= timeout {
            return Drained { after: now - start, quiet: false };
        }
        tokio::time::sleep(POLL).await;
        let count = vip_packets(bpffs_dir);
        if count != last_count {
            last_count = count;
            last_packet = Instant::now();
        }
    }
}
