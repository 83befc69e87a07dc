//! `lb-agent run --kernel-events`: the balancer's aya-log records (see
//! lb-ebpf's `events`: VIP packets not forwarded and why, flows placed or
//! moved) as log lines with target `lb_agent::kernel`. They are logged at
//! info level, since loading the program with them is already the opt-in.
//! Per packet, so for debugging only: the kernel drops records while its
//! 128 KiB ring buffer is full rather than slow the data path.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// Target of the forwarded records, for `--log-level` filters.
pub(crate) const TARGET: &str = "lb_agent::kernel";

/// Starts forwarding the records of the program pinned at `program_pin`
/// (found by id, so an adopted program works as well as a fresh one).
pub(crate) fn follow(program_pin: &Path) -> Result<JoinHandle<()>> {
    let info = ProgramInfo::from_pin(program_pin)
        .with_context(|| format!("reading the pinned program {}", program_pin.display()))?;
    let logger = EbpfLogger::init_from_id_with_logger(info.id(), Forward)
        .context("opening the balancer's aya-log ring buffer (AYA_LOGS)")?;
    // SAFETY: the logger owns the ring buffer's fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register(logger) }.context("watching the aya-log ring buffer")?;
    Ok(tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::warn!("kernel events stopped: {e}");
                    return;
                }
            }
        }
    }))
}

/// Hands aya-log's `log` records to `tracing`.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: TARGET, "{}", record.args());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn on_is_the_level_of_the_kernel_records() {
        // lb-ebpf logs every event with `debug!`; `ON` must let them through.
        assert_eq!(lb_common::events::ON, aya_log::Level::Debug as u8);
        assert!(lb_common::events::OFF < aya_log::Level::Error as u8);
    }
}
