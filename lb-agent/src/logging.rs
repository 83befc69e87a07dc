//! Logs through `tracing`: human-readable lines by default, one JSON object
//! per line with `--log-format json`; on stderr, since stdout carries command
//! output and the `ready:` line. The agent logs start, stop, reloads and
//! every health state change once; nothing per packet.

use anyhow::{Context as _, Result};
use tracing_subscriber::EnvFilter;

/// Level when neither `--log-level` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO lb_agent: message key=value`
    #[default]
    Text,
    /// `{"timestamp":...,"level":"INFO","fields":{"message":...},"target":...}`
    Json,
}

/// Installs the global subscriber. `level` (`--log-level`) wins over
/// `RUST_LOG`; both take `EnvFilter` directives such as `debug` or
/// `lb_agent=debug,aya=warn`.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l:?}: not a level or filter (try info, debug, lb_agent=debug)"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL)),
    };
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}
