//! The agent's control surface in `lb.run_dir`: the lock that makes it the
//! one agent of its interface ([`lock`]), and the control socket that
//! `lb-agent reload` and `lb-agent maintenance` talk to ([`protocol`],
//! served by [`server`], used by [`client`]), with the exit codes those
//! commands end with ([`exit_code`]).

use std::path::{Path, PathBuf};

pub mod client;
pub mod drains;
pub mod exit_code;
pub mod lock;
pub mod protocol;
pub mod server;

pub use lock::Claim;
pub use protocol::{Answer, Request};
pub use server::Pending;

pub fn lock_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.lock"))
}

pub fn socket_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.sock"))
}

/// The copy of the config file the agent programmed last (see `runtime`).
pub fn running_config_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.running.toml"))
}
