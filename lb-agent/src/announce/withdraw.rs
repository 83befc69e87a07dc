//! `lb-agent withdraw`: removes the VIP routes when no agent is left to
//! health-check them. The systemd unit runs it after every stop
//! (`ExecStopPost=`, with `--service-result=${SERVICE_RESULT}`): a clean stop
//! (`success`: SIGTERM, `systemctl restart`) keeps the routes for the next
//! agent, anything else (kill -9, a crash, the watchdog, a failed start)
//! withdraws them. Without systemd, a supervisor's finish script runs it.
//!
//! It works from a config that no longer validates (a bad edit is a common
//! reason a start fails): then only its `[announce]` table is read.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::config::{self, announce::AnnounceConfig};
use crate::control::{self, Claim};

/// systemd's `$SERVICE_RESULT` of a clean stop: the agent exited 0 on a
/// signal it was sent on purpose, leaving balancer and routes to its successor.
pub const CLEAN: &str = "success";

/// Withdraws the routes unless `service_result` says the stop was clean;
/// returns what was done, for stdout.
pub fn run(config_path: &Path, service_result: Option<&str>) -> Result<String> {
    if service_result == Some(CLEAN) {
        return Ok(format!("clean stop (SERVICE_RESULT={CLEAN}): the VIP routes stay announced for the next agent"));
    }
    let why = match service_result {
        Some("") | None => "asked to".to_string(),
        Some(result) => format!("the agent stopped with SERVICE_RESULT={result}"),
    };
    let (announce, note) = match config::load(config_path) {
        Ok(config) => {
            // A running agent owns its routes; its lock says it runs.
            let _claim = Claim::take(&config.lb.run_dir, &config.lb.interface).map_err(|e| {
                if e.is::<control::lock::Held>() {
                    e.context("not withdrawing the routes of a running agent: use `lb-agent maintenance` to take it out of service")
                } else {
                    e
                }
            })?;
            (config.announce, String::new())
        }
        Err(e) => {
            let announce = announce_section_only(config_path).with_context(|| format!("{e}\nand its [announce] table cannot be read either"))?;
            (announce, " (the config does not validate: used its [announce] table alone)".to_string())
        }
    };
    let Some(announce) = announce else {
        return Ok(format!("{why}: no [announce] table, nothing to withdraw{note}"));
    };
    let n = remove_now(&announce)?;
    Ok(format!("{why}: withdrew {n} VIP route(s) from table {} proto {}{note}", announce.table, announce.protocol))
}

/// The `[announce]` table of a config file whose other parts may be invalid.
fn announce_section_only(path: &Path) -> Result<Option<AnnounceConfig>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
    let Some(section) = table.get("announce") else { return Ok(None) };
    let raw: config::announce::RawAnnounce = section.clone().try_into().with_context(|| format!("{}: [announce]", path.display()))?;
    let mut problems = Vec::new();
    match config::announce::resolve(raw, &mut problems) {
        Some(a) => Ok(Some(a)),
        None => {
            let lines: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
            anyhow::bail!("{}: {}", path.display(), lines.join("; "))
        }
    }
}

fn remove_now(announce: &AnnounceConfig) -> Result<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let handle = crate::nexthop::connect()?;
        super::remove_leftovers(&handle, announce).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file in the temp dir, removed on drop.
    struct Written(std::path::PathBuf);

    impl Drop for Written {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write(text: &str) -> Written {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("lbd-withdraw-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Written(path)
    }

    #[test]
    fn a_clean_stop_keeps_the_routes_without_reading_the_config() {
        let said = run(Path::new("/nonexistent/lb.toml"), Some(CLEAN)).unwrap();
        assert!(said.contains("stay announced"), "{said}");
    }

    #[test]
    fn an_invalid_config_still_names_its_announce_table() {
        let f = write("[lb]\ninterface = 7\n[announce]\ntable = 100\nprotocol = 99\n");
        assert!(config::load(&f.0).is_err());
        let a = announce_section_only(&f.0).unwrap().unwrap();
        assert_eq!((a.table, a.protocol), (100, 99));
        let none = write("[lb]\ninterface = 7\n");
        assert_eq!(announce_section_only(&none.0).unwrap(), None);
        let bad = write("[announce]\ntable = 254\n");
        let e = announce_section_only(&bad.0).unwrap_err().to_string();
        assert!(e.contains("announce.table"), "{e}");
    }
}
