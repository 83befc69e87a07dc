//! The client side of `lb-agent maintenance`: ask the running agent to
//! withdraw, drain and stop, then wait until it is gone.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Config;
use crate::control::{self, client, Request};

/// Extra time beyond the drain timeout for the agent to answer and exit.
const MARGIN: Duration = Duration::from_secs(10);
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Sends the request (`timeout`: for the agent's acknowledgement); returns
/// the summary of the agent's answer once it has exited.
pub fn request(config: &Config, timeout: Duration) -> Result<String> {
    let drain = config.announce.as_ref().map_or(Duration::ZERO, |a| a.drain_timeout);
    let (run_dir, iface) = (&config.lb.run_dir, &config.lb.interface);
    let limits = client::Limits { acknowledge: timeout, result: drain + MARGIN };
    let summary = client::request(run_dir, iface, &Request::Maintenance, limits)?;
    // The agent removes its control socket as the last thing before exiting.
    let deadline = Instant::now() + MARGIN;
    while control::socket_path(run_dir, iface).exists() {
        if Instant::now() >= deadline {
            bail!("{summary}\nbut the agent has not exited after {} s; check its log", MARGIN.as_secs());
        }
        std::thread::sleep(EXIT_POLL);
    }
    Ok(summary)
}
