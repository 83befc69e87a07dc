//! Runtime drains (`lb-agent drain` / `undrain`): one backend of one VIP
//! given weight 0 without editing the config file, recorded in
//! `lb.run_dir`/IFACE.drains.json so that restarts and reloads keep it.
//!
//! The rule between a drain and the file: a drain holds while the file
//! keeps that VIP (by name) with that backend at the weight and role it had
//! when drained. Once the file changes that backend (its weight or role) or
//! removes it, the file wins: the drain is dropped, and the reload's answer
//! and the agent's log say so. Undrain gives the backend its file weight.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Config, VipConfig};

/// Format version of the state file.
const FILE_VERSION: u32 = 1;

/// One drained backend of one VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The VIP's name.
    pub vip: String,
    pub backend: IpAddr,
    /// The file's weight and role of the backend when it was drained: the drain holds while they are unchanged.
    pub file_weight: u32,
    pub file_backup: bool,
}

/// Every runtime drain of one agent (one interface).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drains {
    pub v: u32,
    pub drains: Vec<Drain>,
}

impl Default for Drains {
    fn default() -> Drains {
        Drains { v: FILE_VERSION, drains: vec![] }
    }
}

/// A file config with the drains that still hold applied.
pub struct Applied {
    /// The config the dataplane gets: drained backends at weight 0.
    pub config: Config,
    /// The drains that hold.
    pub kept: Drains,
    /// Drains the file overrode, with why.
    pub dropped: Vec<String>,
}

pub fn path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.drains.json"))
}

impl Drains {
    /// Reads the state file; no file means no drains.
    pub fn read(run_dir: &Path, iface: &str) -> Result<Drains> {
        let path = path(run_dir, iface);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Drains { v: FILE_VERSION, drains: vec![] }),
            read => read.with_context(|| format!("reading the runtime drains {}", path.display()))?,
        };
        let drains: Drains = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a drains file of this agent; remove it (every runtime drain is then undone at the next start or reload)", path.display()))?;
        Ok(drains)
    }

    /// Replaces the state file (a new file renamed over it: a crash leaves the old or the new one).
    pub fn write(&self, run_dir: &Path, iface: &str) -> Result<()> {
        let path = path(run_dir, iface);
        let tmp = run_dir.join(format!(".{iface}.drains.json.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let text = serde_json::to_string_pretty(&Drains { v: FILE_VERSION, drains: self.drains.clone() }).expect("drains serialize");
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Whether `backend` of VIP `vip` (a name) is drained at runtime.
    pub fn holds(&self, vip: &str, backend: IpAddr) -> bool {
        self.drains.iter().any(|d| d.vip == vip && d.backend == backend)
    }

    /// `file` (a validated config as read from the file) with the drains
    /// that still hold by the module's rule.
    pub fn apply(&self, file: &Config) -> Applied {
        let mut config = file.clone();
        let mut kept = Drains { v: FILE_VERSION, drains: vec![] };
        let mut dropped = vec![];
        for d in &self.drains {
            let entry = config.vips.iter_mut().find(|v| v.name == d.vip).and_then(|v| v.backends.iter_mut().find(|b| b.address == d.backend));
            match entry {
                None => dropped.push(format!("drain of {} in VIP {:?} dropped: the file no longer has it", d.backend, d.vip)),
                Some(b) if b.weight != d.file_weight || b.backup != d.file_backup => dropped.push(format!(
                    "drain of {} in VIP {:?} dropped: the file changed it (weight {} -> {}, {} -> {})",
                    d.backend,
                    d.vip,
                    d.file_weight,
                    b.weight,
                    role(d.file_backup),
                    role(b.backup)
                )),
                Some(b) => {
                    b.weight = 0;
                    kept.drains.push(d.clone());
                }
            }
        }
        Applied { config, kept, dropped }
    }

    /// Adds a drain of `backend` in the VIP `vip` names (see [`find_vip`])
    /// of `running`, the config in effect (drains applied); returns the new
    /// drains and the config with it.
    pub fn drain(&self, running: &Config, vip: &str, backend: IpAddr) -> Result<(Drains, Config), String> {
        let v = find_vip(running, vip)?;
        if self.holds(&v.name, backend) {
            return Err(format!("{backend} of VIP {:?} is drained already", v.name));
        }
        let b = v.backends.iter().find(|b| b.address == backend).ok_or_else(|| no_backend(v, backend))?;
        if b.weight == 0 {
            return Err(format!("{backend} of VIP {:?} has weight 0 in the config file already", v.name));
        }
        if !v.backends.iter().any(|o| o.address != backend && o.weight > 0) {
            return Err(format!(
                "{backend} is the last backend of VIP {:?} with a weight: draining it would leave the VIP without backends; add or undrain another first",
                v.name
            ));
        }
        let mut next = self.clone();
        next.drains.push(Drain { vip: v.name.clone(), backend, file_weight: b.weight, file_backup: b.backup });
        let config = next.apply_to_running(running);
        Ok((next, config))
    }

    /// Removes a drain; returns the new drains and the config with the backend at its file weight.
    pub fn undrain(&self, running: &Config, vip: &str, backend: IpAddr) -> Result<(Drains, Config), String> {
        let v = find_vip(running, vip)?;
        v.backends.iter().find(|b| b.address == backend).ok_or_else(|| no_backend(v, backend))?;
        let Some(drain) = self.drains.iter().find(|d| d.vip == v.name && d.backend == backend) else {
            return Err(format!("{backend} of VIP {:?} is not drained at runtime (`lb-agent list` shows the drains)", v.name));
        };
        let mut config = running.clone();
        if let Some(b) = config.vips.iter_mut().find(|o| o.name == v.name).and_then(|o| o.backends.iter_mut().find(|b| b.address == backend)) {
            b.weight = drain.file_weight;
        }
        let mut next = self.clone();
        next.drains.retain(|d| d != drain);
        Ok((next, config))
    }

    /// `running` with every drain of `self` at weight 0.
    fn apply_to_running(&self, running: &Config) -> Config {
        let mut config = running.clone();
        for d in &self.drains {
            if let Some(b) = config.vips.iter_mut().find(|v| v.name == d.vip).and_then(|v| v.backends.iter_mut().find(|b| b.address == d.backend)) {
                b.weight = 0;
            }
        }
        config
    }
}

fn role(backup: bool) -> &'static str {
    if backup { "backup" } else { "primary" }
}

fn no_backend(v: &VipConfig, backend: IpAddr) -> String {
    let known: Vec<String> = v.backends.iter().map(|b| b.address.to_string()).collect();
    format!("VIP {:?} has no backend {backend} (its backends: {})", v.name, known.join(", "))
}

/// The VIP `spec` names: its name, or an address that exactly one VIP has.
pub fn find_vip<'a>(config: &'a Config, spec: &str) -> Result<&'a VipConfig, String> {
    if let Some(v) = config.vips.iter().find(|v| v.name == spec) {
        return Ok(v);
    }
    let names = || config.vips.iter().map(|v| format!("{:?}", v.name)).collect::<Vec<_>>().join(", ");
    let Ok(address) = spec.parse::<IpAddr>() else {
        return Err(format!("no VIP named {spec:?} (VIPs: {})", names()));
    };
    let mut matching = config.vips.iter().filter(|v| v.address == address);
    match (matching.next(), matching.next()) {
        (Some(v), None) => Ok(v),
        (None, _) => Err(format!("no VIP has the address {address} (VIPs: {})", names())),
        (Some(_), Some(_)) => Err(format!("several VIPs have the address {address}: name one (VIPs: {})", names())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::test_config::{TestBackend, TestConfig, TestVip};

    fn config(weight_12: u32, backup_13: bool) -> Config {
        let b = TestBackend::new;
        let web = TestVip::new("web", "192.0.2.10:80").backend(b("198.51.100.11")).backend(b("198.51.100.12").weight(weight_12));
        let web = web.backend(if backup_13 { b("198.51.100.13").backup() } else { b("198.51.100.13") });
        parse(&TestConfig::new().vip(web).to_toml(), "lb.toml").unwrap()
    }

    fn weight(c: &Config, backend: &str) -> u32 {
        c.vips[0].backends.iter().find(|b| b.address.to_string() == backend).unwrap().weight
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_drain_holds_across_reloads_until_the_file_changes_that_backend() {
        let file = config(3, false);
        let (drains, running) = Drains::default().drain(&file, "web", addr("198.51.100.12")).unwrap();
        assert_eq!(weight(&running, "198.51.100.12"), 0);
        assert_eq!(weight(&running, "198.51.100.11"), 1, "other backends untouched");
        // The same file again (a reload with other edits): the drain holds.
        let applied = drains.apply(&file);
        assert_eq!(weight(&applied.config, "198.51.100.12"), 0);
        assert_eq!((applied.kept, applied.dropped.len()), (drains.clone(), 0));
        // The file changes that backend's weight: the file wins.
        let applied = drains.apply(&config(5, false));
        assert_eq!(weight(&applied.config, "198.51.100.12"), 5);
        assert!(applied.kept.drains.is_empty());
        assert!(applied.dropped[0].contains("weight 3 -> 5"), "{:?}", applied.dropped);
        // A change of another backend's role does not touch the drain.
        assert_eq!(weight(&drains.apply(&config(3, true)).config, "198.51.100.12"), 0);
    }

    #[test]
    fn undrain_restores_the_file_weight_and_refusals_name_the_problem() {
        let file = config(3, false);
        let twelve = addr("198.51.100.12");
        let (drains, running) = Drains::default().drain(&file, "192.0.2.10", twelve).unwrap();
        assert!(drains.holds("web", twelve), "the VIP is found by address and recorded by name");
        assert!(drains.drain(&running, "web", twelve).unwrap_err().contains("drained already"));
        let (undrained, running) = drains.undrain(&running, "web", twelve).unwrap();
        assert_eq!(weight(&running, "198.51.100.12"), 3);
        assert!(undrained.drains.is_empty());
        assert!(undrained.undrain(&running, "web", twelve).unwrap_err().contains("not drained"));
        assert!(Drains::default().drain(&file, "api", twelve).unwrap_err().contains("no VIP named \"api\""));
        assert!(Drains::default().drain(&file, "web", addr("198.51.100.99")).unwrap_err().contains("has no backend 198.51.100.99"));
        // The last backend with a weight cannot be drained.
        let (d, r) = Drains::default().drain(&file, "web", addr("198.51.100.11")).unwrap();
        let (d, r) = d.drain(&r, "web", twelve).unwrap();
        assert!(d.drain(&r, "web", addr("198.51.100.13")).unwrap_err().contains("last backend"));
    }

    #[test]
    fn the_state_file_round_trips_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("lbg-drains-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Drains::read(&dir, "eth0").unwrap().drains.is_empty());
        let (drains, _) = Drains::default().drain(&config(3, false), "web", addr("198.51.100.12")).unwrap();
        drains.write(&dir, "eth0").unwrap();
        assert_eq!(Drains::read(&dir, "eth0").unwrap().drains, drains.drains);
        std::fs::write(path(&dir, "eth0"), "garbage").unwrap();
        assert!(format!("{:#}", Drains::read(&dir, "eth0").unwrap_err()).contains("remove it"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
